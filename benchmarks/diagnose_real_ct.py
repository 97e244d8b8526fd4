"""Why a model's boxes miss on the real CT example: what its segmentation head calls each labelled organ.

    python benchmarks/diagnose_real_ct.py -m MODEL_FOLDER/fold_all --name NAME

The detector's queries start from the boxes of its segmentation head's masks (mask-enhanced anchors) and the
decoder refines them, so a box that misses usually starts from a mask that misses. For one fold on the
labelled crop of `../shared/data/totalseg_example/` (one forward pass, no test-time copies), per organ:

- the IoU with the labelled box of the mask's box (`mask_extent_boxes` of the finest segmentation output) and
  of the detector's highest-scored box of that class;
- where the organ's labelled voxels go: the share the segmentation head gives each class (argmax of the finest
  output, on the preprocessed grid), e.g. "kidney_right: liver 76 %, background 19 %".

Writes `diagnose_real_ct.json` and a picture (`segmentation.png`: five axial slices of the preprocessed crop,
its labels and the head's argmax) into `benchmarks/output/diagnose_real_ct/<name>/`. It measures one patient:
read it to find what to change in the phantoms or the model, never to choose a setting.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from nnunet_peer import format_table  # noqa: E402

from autodetr.boxes import box_iou, boxes_from_label_map, clip_boxes, denormalise_centre  # noqa: E402
from autodetr.detector import detect, fused_queries_of, load_trained_detector  # noqa: E402
from autodetr.inference.inputs import InputCase, read_input_case  # noqa: E402
from autodetr.inference.predict_api import place_in_input  # noqa: E402
from autodetr.model.anchors import mask_extent_boxes, valid_boxes_from_shapes  # noqa: E402
from autodetr.plans import Plans  # noqa: E402
from autodetr.preprocessing.preprocess_case import preprocess_image  # noqa: E402

DEFAULT_DATA = ROOT.parent / "shared" / "data" / "totalseg_example"


def parse_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("-m", "--fold", type=Path, required=True, help="trained fold folder (plans.json, checkpoint)")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder of the real example")
    parser.add_argument("--name", default="model", help="name of this run (output sub-folder)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "output" / "diagnose_real_ct",
                        help="output root; this run writes into <out>/<name>")
    return parser.parse_args(argv)


def class_index_map(label_map: np.ndarray, label_names: dict[int, str], class_names: list[str]) -> np.ndarray:
    """The example's label values -> the model's class indices (1..C; 0 for structures it does not know)."""
    lookup = np.zeros(int(label_map.max()) + 1, dtype=np.int16)
    for value, name in label_names.items():
        if name in class_names and value < len(lookup):
            lookup[value] = class_names.index(name) + 1
    return lookup[label_map]


def forward(model: torch.nn.Module, plans: Plans, image: np.ndarray, objective: str) -> tuple[dict, torch.Tensor]:
    """One pass over the preprocessed case placed at the input's low corner; returns the detections and the
    finest segmentation probabilities `[C + 1, d, h, w]` of the padded input."""
    shape = image.shape[1:]
    tensor = torch.from_numpy(np.ascontiguousarray(place_in_input(image, plans.input_size))[None])
    with torch.inference_mode():
        outputs = model(tensor, valid_boxes=valid_boxes_from_shapes([list(shape)], plans.input_size, "cpu"),
                        with_segmentation=True)
        detections = detect(outputs, objective, max_per_class=1, fused_queries=fused_queries_of(plans, objective))[0]
    return {"outputs": outputs, **detections}, outputs["seg_logits"][-1][0].float().softmax(0)


def to_preprocessed_corners(boxes: np.ndarray, input_size, shape) -> np.ndarray:
    return clip_boxes(denormalise_centre(np.asarray(boxes, np.float64).reshape(-1, 6), list(input_size)), shape)


def where_voxels_go(truth: np.ndarray, predicted: np.ndarray, names: list[str], organ: int) -> dict[str, float]:
    """Share of organ `organ`'s labelled voxels the head gives each class (largest first, over 1 %)."""
    values, counts = np.unique(predicted[truth == organ], return_counts=True)
    shares = {(["background", *names])[int(v)]: float(c) / counts.sum() for v, c in zip(values, counts)}
    return {k: round(v, 3) for k, v in sorted(shares.items(), key=lambda item: -item[1]) if v >= 0.01}


def draw(image: np.ndarray, truth: np.ndarray, predicted: np.ndarray, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    slices = np.linspace(1, image.shape[0] - 2, 5).round().astype(int)
    figure, axes = plt.subplots(3, len(slices), figsize=(3 * len(slices), 8))
    for column, z in enumerate(slices):
        axes[0, column].imshow(image[z], cmap="gray", vmin=-1.5, vmax=1.5)
        axes[0, column].set_title(f"slice {z}")
        for row, labels in ((1, truth), (2, predicted)):
            axes[row, column].imshow(labels[z], cmap="tab20", vmin=0, vmax=19, interpolation="nearest")
    for axis in axes.flat:
        axis.axis("off")
    axes[1, 0].set_title("labels", loc="left")
    axes[2, 0].set_title("segmentation head (argmax)", loc="left")
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=70)
    plt.close(figure)


def main(argv: list[str] | None = None) -> int:
    args = parse_arguments(argv)
    model, plans_dict, arguments = load_trained_detector(args.fold)
    plans = Plans.of(plans_dict)
    objective = str(arguments.get("objective", "dqm"))
    names = [plans.class_names[k] for k in sorted(plans.class_names)]
    label_names = {int(v): n for v, n in json.loads((args.data / "labels.json").read_text()).items()}
    image, geometry = read_input_case(InputCase("ct", [args.data / "ct.nii.gz"]))
    labels = class_index_map(sitk.GetArrayFromImage(sitk.ReadImage(str(args.data / "seg.nii.gz"))), label_names, names)
    case = preprocess_image(image, geometry, plans_dict, class_map=labels)
    shape = case.image.shape[1:]

    detections, probabilities = forward(model, plans, case.image, objective)
    stride = model.fine_stride or (1, 1, 1)
    mask_boxes, found = mask_extent_boxes(probabilities.log()[None], stride, tuple(plans.input_size))
    mask_boxes = to_preprocessed_corners(mask_boxes[0].numpy(), plans.input_size, shape)
    final_boxes = to_preprocessed_corners(detections["boxes"].numpy(), plans.input_size, shape)
    final_labels = detections["labels"].numpy()
    argmax = probabilities.argmax(0).numpy()
    for axis, step in enumerate(stride):  # back to the preprocessed grid
        argmax = np.repeat(argmax, step, axis=axis)
    argmax = argmax[: shape[0], : shape[1], : shape[2]]

    truth_boxes, truth_values = boxes_from_label_map(case.seg)
    truth_of = {int(v): box for box, v in zip(truth_boxes, truth_values)}
    organs = []
    for index, name in enumerate(names, start=1):
        if index not in truth_of:
            continue
        truth = truth_of[index][None]
        mask_iou = float(box_iou(truth, mask_boxes[index - 1][None])[0, 0]) if found[0, index - 1] else 0.0
        kept = np.flatnonzero(final_labels == index)
        final_iou = float(box_iou(truth, final_boxes[kept[:1]])[0, 0]) if len(kept) else 0.0
        organs.append({"name": name, "mask_box_iou": round(mask_iou, 3), "final_box_iou": round(final_iou, 3),
                       "voxels_go_to": where_voxels_go(case.seg, argmax, names, index)})

    rows = [[o["name"], o["mask_box_iou"], o["final_box_iou"],
             ", ".join(f"{k} {v:.0%}" for k, v in list(o["voxels_go_to"].items())[:3])] for o in organs]
    means = [round(float(np.mean([o[key] for o in organs])), 3) for key in ("mask_box_iou", "final_box_iou")]
    rows.append(["mean", *means, ""])
    print(f"\n{args.name}: the segmentation head on the real crop (one pass, preprocessed grid {tuple(shape)})")
    print(format_table(["organ", "mask box IoU", "final box IoU", "labelled voxels called (argmax)"], rows))
    output = args.out / args.name
    output.mkdir(parents=True, exist_ok=True)
    draw(case.image[0], case.seg, argmax, output / "segmentation.png", f"{args.name}: real crop, labels and head")
    (output / "diagnose_real_ct.json").write_text(json.dumps(
        {"name": args.name, "fold": str(args.fold), "mean_mask_box_iou": means[0], "mean_final_box_iou": means[1],
         "organs": organs}, indent=2))
    print(f"written to {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
