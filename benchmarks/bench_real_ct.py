"""A trained model on the real CT example: per-organ IoU of its highest-scored box against the labelled box.

    python benchmarks/bench_real_ct.py -m $AUTODETR_results/Dataset500_Phantom/autodetrTrainer_dqm__autodetrPlans
    python benchmarks/bench_real_ct.py -d 500 -f 0 --name realistic

The example is `../shared/data/totalseg_example/` (one patient, TotalSegmentator labels whose names match
the phantom's classes): `ct.nii.gz` (30 slices, labelled by `seg.nii.gz`) is predicted and scored, and
`ct_full.nii.gz` (112 slices of the same patient, no labels) is predicted and drawn. Each prediction runs
`autodetr_predict` as its own process (`-np 1`; wall time and peak memory of that process). Per organ class
of the model present in the labelled crop: the labelled box (cut by the scan's ends where the organ is
cut), the model's highest-scored box of that class (none: IoU 0), their IoU; then the mean IoU and the
share at IoU >= 0.5, and per organ how its box misses (centre offset in mm and size over the labelled size, per
axis). Written to `benchmarks/output/bench_real_ct/<name>/`: `bench_real_ct.json`, the
prediction files and two pictures (shown in the scan's LPS order: patient right on the image's left in the
axial view).

The example only measures: it never enters training. A model that reads it well must read other real
scans as well, so no setting is chosen on it alone.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np
import SimpleITK as sitk

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from nnunet_peer import format_table, run_measured  # noqa: E402

from autodetr.demo.pictures import DrawnBox, draw_case  # noqa: E402
from autodetr.evaluation.highest_box import FOUND_IOU, box_error, highest_box_ious, highest_scored, summarise  # noqa: E402
from autodetr.prediction_files import load_prediction  # noqa: E402
from autodetr.preprocessing.orientation import Reorientation  # noqa: E402

DEFAULT_DATA = ROOT.parent / "shared" / "data" / "totalseg_example"
PREDICT = "import sys; from autodetr.inference.entrypoints import main; sys.exit(main(sys.argv[1:]))"
FORCED_ORDER = ("from autodetr.preprocessing.orientation import Reorientation; "
                "planned = Reorientation.planned.__func__; "
                "Reorientation.planned = classmethod(lambda cls, orientation, direction: planned(cls, '{orientation}', direction)); ")


def parse_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    model = parser.add_mutually_exclusive_group(required=True)
    model.add_argument("-m", "--model", type=Path, help="trained model folder (autodetrTrainer_<objective>__autodetrPlans)")
    model.add_argument("-d", "--dataset", help="dataset id or name whose dqm model to use (as autodetr_predict -d)")
    parser.add_argument("-f", "--folds", nargs="+", default=None, help="folds to use (default: autodetr_predict's)")
    parser.add_argument("--disable-tta", action="store_true", help="predict without the test-time copies")
    parser.add_argument("--orientation", choices=["plan", "LPS", "stored"], default="plan",
                        help=("'plan': as the model's plans say (plans made before reorientation keep the stored "
                              "order); 'LPS' / 'stored': force the canonical order or the stored one, to compare "
                              "the same weights both ways"))
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder of the real example")
    parser.add_argument("--name", default="model", help="name of this row (output sub-folder)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "output" / "bench_real_ct",
                        help="output root; this run writes into <out>/<name>")
    return parser.parse_args(argv)


def predict(args: argparse.Namespace, image: Path, output: Path) -> dict:
    """`autodetr_predict` on one image in its own process: the measured figures and the prediction."""
    program = PREDICT if args.orientation == "plan" else FORCED_ORDER.format(orientation=args.orientation) + PREDICT
    command = [sys.executable, "-c", program, "-i", str(image), "-o", str(output), "-np", "1", "--overwrite"]
    command += ["-m", str(args.model)] if args.model else ["-d", str(args.dataset)]
    if args.folds:
        command += ["-f", *args.folds]
    if args.disable_tta:
        command.append("--disable-tta")
    figures = run_measured(command, dict(os.environ), output / "predict.log")
    case = image.name.split(".")[0]
    return {**figures, "prediction": load_prediction(output / f"{case}.json")}


def model_class_names(args: argparse.Namespace) -> list[str]:
    """The organ classes the model detects (from the plans of its first fold folder)."""
    from autodetr.inference.predict_api import resolve_model_folder

    folder = resolve_model_folder(None if args.model else args.dataset, str(args.model) if args.model else None)
    plans_file = folder / "plans.json" if (folder / "plans.json").is_file() else next(folder.glob("fold_*/plans.json"))
    return [entry["name"] for entry in json.loads(plans_file.read_text())["classes"]]


def canonical_view(image: sitk.Image) -> tuple[np.ndarray, np.ndarray, Reorientation]:
    """The image's HU array and spacing (z, y, x) in the canonical LPS order, with the map to it."""
    reorientation = Reorientation.from_direction(image.GetDirection())
    array = sitk.GetArrayFromImage(image)
    return np.ascontiguousarray(reorientation.array(array)), reorientation.spacing(image.GetSpacing()[::-1]), reorientation


def drawn(boxes: np.ndarray, names: list[str], reorientation: Reorientation, shape: tuple, scores=None) -> list[DrawnBox]:
    canonical = reorientation.boxes(boxes, shape)
    return [DrawnBox(box, name, None if scores is None else float(score))
            for box, name, score in zip(canonical, names, scores if scores is not None else [None] * len(names))]


def highest_per_class(prediction: dict) -> tuple[np.ndarray, list[str]]:
    """The highest-scored box of every class in a prediction."""
    order = sorted(highest_scored(prediction["scores"], prediction["class_names"]).values())
    return prediction["boxes"][order], [prediction["class_names"][k] for k in order]


def main(argv: list[str] | None = None) -> int:
    args = parse_arguments(argv)
    crop_file, label_file, full_file = (args.data / name for name in ("ct.nii.gz", "seg.nii.gz", "ct_full.nii.gz"))
    label_names = {int(value): name for value, name in json.loads((args.data / "labels.json").read_text()).items()}
    output = args.out / args.name
    output.mkdir(parents=True, exist_ok=True)

    crop = predict(args, crop_file, output / "crop")
    full = predict(args, full_file, output / "full")
    prediction = crop["prediction"]
    label_image = sitk.ReadImage(str(label_file))
    organs = highest_box_ious(sitk.GetArrayFromImage(label_image), label_names, model_class_names(args),
                              prediction["boxes"], prediction["scores"], prediction["class_names"])
    summary = summarise(organs)

    spacing = label_image.GetSpacing()[::-1]
    errors = [box_error(organ, spacing) for organ in organs]
    rows = [[organ.name, round(organ.iou, 3), None if organ.score is None else round(organ.score, 3),
             None if error is None else " ".join(f"{int(round(v)):+d}" for v in error["centre_offset_mm"]),
             None if error is None else " ".join(f"{v:.2f}" for v in error["size_ratio"])]
            for organ, error in zip(organs, errors)]
    rows.append(["mean", round(summary["mean_iou"], 3), None, None, None])
    print(f"\nreal example {crop_file.name} ({args.name}): IoU of the highest-scored box per organ; how it misses, "
          "per axis of the file's array (z y x): centre offset (mm) and size over the labelled size")
    print(format_table(["organ", "IoU", "score", "centre offset mm", "size ratio"], rows))
    print(f"\n{summary['with_a_box']} of {summary['organs']} organs with a box; mean IoU {summary['mean_iou']:.3f}; "
          f"{summary['share_iou_0_5']:.0%} at IoU >= {FOUND_IOU}")
    for name, run in (("crop", crop), ("full", full)):
        print(f"predict {name}: {run['wall_s']} s, peak RSS {run['peak_rss_mb']} MB")

    crop_image = sitk.ReadImage(str(crop_file))
    array, spacing, reorientation = canonical_view(crop_image)
    shape = crop_image.GetSize()[::-1]
    best_boxes, best_names = highest_per_class(prediction)
    scored = [organ.name for organ in organs]
    keep = [k for k, name in enumerate(best_names) if name in scored]
    draw_case(array, tuple(spacing), drawn(best_boxes[keep], [best_names[k] for k in keep], reorientation, shape),
              drawn(np.asarray([organ.truth for organ in organs]).reshape(-1, 6), scored, reorientation, shape),
              output / "real_ct_crop.png", title=f"{args.name}: real CT crop, mean IoU {summary['mean_iou']:.2f}")
    full_image = sitk.ReadImage(str(full_file))
    array, spacing, reorientation = canonical_view(full_image)
    full_boxes, full_names = highest_per_class(full["prediction"])
    draw_case(array, tuple(spacing), drawn(full_boxes, full_names, reorientation, full_image.GetSize()[::-1]), None,
              output / "real_ct_full.png", title=f"{args.name}: real CT, 112 slices, highest-scored box per class")

    result = {
        "name": args.name, "model": str(args.model or args.dataset), "folds": args.folds, "tta": not args.disable_tta,
        "orientation": args.orientation,
        "summary": summary,
        "organs": [{**organ.__dict__, "error": error} for organ, error in zip(organs, errors)],
        "predict": {name: {k: v for k, v in run.items() if k != "prediction"} for name, run in (("crop", crop), ("full", full))},
    }
    (output / "bench_real_ct.json").write_text(json.dumps(result, indent=2))
    print(f"written to {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
