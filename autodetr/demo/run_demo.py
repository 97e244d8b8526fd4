"""`autodetr_demo`: the whole chain on the embedded default data set, in one output folder.

phantom data set (if missing) -> plan + preprocess (CPU preset) -> train on all training cases for a
bounded time -> predict the held-out phantom cases (and `--image` if given) -> evaluate, beside the atlas
prior of the same training cases on the same held-out cases (the baseline that never looks at the image)
-> pictures, training curve and an offline `index.html`.
"""
from __future__ import annotations

import html
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from autodetr.atomic_io import atomic_path, read_json
from autodetr.boxes import boxes_from_label_map
from autodetr.errors import InputError
from autodetr.demo.defaults import DEFAULT_MINUTES, DEFAULT_NUM_CASES
from autodetr.demo.pictures import DrawnBox, draw_case
from autodetr.paths import use_roots_under

DEMO_DATASET_ID = 500
DEMO_DATASET = "Dataset500_Phantom"
METRIC_COLUMNS = ("AP", "AP50", "AP75", "AR")


@dataclass
class DemoResult:
    output: Path
    metrics: dict
    pictures: list[Path] = field(default_factory=list)
    index_html: Path | None = None
    training_curve: Path | None = None
    failed_cases: list[str] = field(default_factory=list)
    atlas_metrics: dict | None = None  # the atlas prior of the same training cases on the same test cases


def comparison_lines(result: DemoResult) -> list[str]:
    """The model's held-out summary beside the atlas prior's on the same cases (the baseline)."""
    def summary(metrics: dict) -> str:
        return " ".join(f"{key} {metrics.get(key, float('nan')):.3f}" for key in ("mAP", "AP50", "AP75", "mAR"))

    lines = [f"trained model, {result.metrics.get('num_cases', 0)} held-out cases: {summary(result.metrics)}"]
    if result.atlas_metrics is not None:
        lines.append(f"atlas prior (each organ's median training box, image not looked at), same cases: "
                     f"{summary(result.atlas_metrics)}")
    return lines


def _boxes_of_prediction(path: Path) -> list[DrawnBox]:
    content = read_json(path)
    return [DrawnBox(np.asarray(d["box_voxel"]), d["class_name"], d["score"]) for d in content["detections"]]


def _ground_truth_boxes(label_file: Path, names_by_value: dict[int, str]) -> list[DrawnBox]:
    label = sitk.GetArrayFromImage(sitk.ReadImage(str(label_file)))
    boxes, values = boxes_from_label_map(label)
    return [DrawnBox(b, names_by_value.get(int(v), str(v))) for b, v in zip(boxes, values)]


def draw_predictions(prediction_folder: Path, image_files: dict[str, Path], label_files: dict[str, Path],
                     names_by_value: dict[int, str], picture_folder: Path) -> list[Path]:
    """One PNG per predicted case (ground truth dashed where a label file is known)."""
    pictures = []
    for case_id, image_file in sorted(image_files.items()):
        prediction = prediction_folder / f"{case_id}.json"
        if not prediction.is_file():
            continue
        image = sitk.ReadImage(str(image_file))
        truth = _ground_truth_boxes(label_files[case_id], names_by_value) if case_id in label_files else None
        pictures.append(draw_case(
            sitk.GetArrayFromImage(image).astype(np.float32), tuple(image.GetSpacing()[::-1]),
            _boxes_of_prediction(prediction), truth, picture_folder / f"{case_id}.png", title=case_id,
        ))
    return pictures


def metrics_table(metrics: dict) -> list[tuple[str, ...]]:
    """Rows (class, AP, AP50, AP75, AR) plus the mean row, as text."""
    def cell(value) -> str:
        return "-" if value is None or (isinstance(value, float) and value < 0) else f"{value:.3f}"

    rows = [(name, *(cell(values.get(k)) for k in METRIC_COLUMNS)) for name, values in metrics.get("per_class", {}).items()]
    rows.append(("mean", cell(metrics.get("mAP")), cell(metrics.get("AP50")), cell(metrics.get("AP75")), cell(metrics.get("mAR"))))
    return rows


def write_index_html(result: DemoResult, path: Path) -> Path:
    """An offline page with the metrics table, the training curve and every case picture."""
    rows = "\n".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in metrics_table(result.metrics))
    header = "".join(f"<th>{c}</th>" for c in ("class",) + METRIC_COLUMNS)
    figures = "\n".join(
        f'<figure><img src="{html.escape(str(p.relative_to(path.parent)))}" alt="{p.stem}"><figcaption>{html.escape(p.stem)}</figcaption></figure>'
        for p in result.pictures
    )
    curve = (f'<h2>Training</h2><img src="{html.escape(str(result.training_curve.relative_to(path.parent)))}" alt="training curve">'
             if result.training_curve else "")
    comparison = "\n".join(f"<p>{html.escape(line)}</p>" for line in comparison_lines(result))
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>autodetr demo</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:1200px}} table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:2px 8px;text-align:right}} td:first-child{{text-align:left}}
img{{max-width:100%}} figure{{margin:1em 0}}</style></head><body>
<h1>autodetr demo</h1>
<p>Organ boxes predicted on held-out phantom CTs. Metrics: COCO-style 3D box AP over IoU 0.50:0.95, AP50, AP75, AR.
mAP {result.metrics.get('mAP', float('nan')):.3f}, mAR {result.metrics.get('mAR', float('nan')):.3f}.</p>
{comparison}
<table><tr>{header}</tr>
{rows}
</table>
{curve}
<h2>Cases</h2>
{figures}
</body></html>
"""
    with atomic_path(path, suffix=".html") as temporary:
        temporary.write_text(page)
    return path


class StageEstimate:
    """Prints each demo stage with an estimate of the time left, from the stage costs measured on a 2-core
    CPU for full-size phantoms (per case: generation about 3 s, planning and preprocessing about 5 s,
    prediction and pictures about 2 s; training takes its budget)."""

    SECONDS_PER_CASE = {1: 3.0, 2: 5.0, 3: 0.0, 4: 1.5, 5: 0.5}

    def __init__(self, training_minutes: float, cases: int, size: str) -> None:
        scale = 1.0 if size == "full" else 0.2
        self.seconds = {stage: per_case * cases * scale for stage, per_case in self.SECONDS_PER_CASE.items()}
        self.seconds[3] = 60.0 * float(training_minutes) + 20.0

    def announce(self, stage: int, text: str) -> None:
        left = sum(seconds for number, seconds in self.seconds.items() if number >= stage)
        print(f"[{stage}/5] {text} (about {max(1, round(left / 60))} min left in all)", flush=True)


def run_demo(output: Path, minutes: float = DEFAULT_MINUTES, size: str = "full", num_cases: int = DEFAULT_NUM_CASES, num_test_cases: int = 4,
             image: Path | None = None, device: str | None = None, seed: int = 0, num_processes: int = 2,
             appearance: str = "realistic", field_of_view: str | None = None, anatomy: str = "standard") -> DemoResult:
    """Run the demo into `output` (see the module docstring); returns where everything is."""
    from autodetr.evaluation.api import evaluate_folder
    from autodetr.inference.atlas_prior import predict_atlas_prior
    from autodetr.inference.predict_api import predict
    from autodetr.phantom.generator import PhantomSettingsError, make_phantom_dataset
    from autodetr.planners.plan_and_preprocess_api import plan_and_preprocess
    from autodetr.training.train_api import train

    output = Path(output).resolve()
    roots = use_roots_under(output)  # the demo never touches a user's own data
    started = time.perf_counter()
    estimate = StageEstimate(minutes, num_cases + num_test_cases, size)
    estimate.announce(1, f"phantom data set ({size}, {appearance}, {anatomy} anatomy, {num_cases} training + {num_test_cases} test cases)")
    try:
        raw_folder = make_phantom_dataset(roots["raw"], dataset_id=DEMO_DATASET_ID, num_cases=num_cases,
                                          num_test_cases=num_test_cases, size=size, seed=seed,
                                          num_processes=num_processes, progress=True, appearance=appearance,
                                          field_of_view=field_of_view, anatomy=anatomy)
    except PhantomSettingsError as error:  # the demo has no --overwrite: a run folder holds one demo
        raise InputError(f"{output} holds a demo whose phantoms were made with {error.found} (by this or an older "
                         f"autodetr), not {error.wanted}: give another --out or remove that folder") from None
    estimate.announce(2, "plan and preprocess (CPU preset)")
    plan_and_preprocess(DEMO_DATASET_ID, preset="cpu", num_processes=num_processes)
    estimate.announce(3, f"train on all training cases for {minutes:g} minutes")
    fold_folder = train(DEMO_DATASET_ID, "all", max_minutes=minutes, device=device, seed=seed, epochs=10_000)
    estimate.announce(4, "predict the held-out cases" + (f" and {image}" if image else ""))
    predictions = output / "predictions"
    summary = predict(raw_folder / "imagesTs", predictions, dataset=DEMO_DATASET_ID, folds=["all"], device=device or "auto",
                      num_processes=1, overwrite=True)
    failed = list(getattr(summary, "failed", []) or [])
    if image is not None:
        summary_image = predict(image, output / "predictions_image", dataset=DEMO_DATASET_ID, folds=["all"],
                                device=device or "auto", num_processes=1, overwrite=True)
        failed += list(getattr(summary_image, "failed", []) or [])
    estimate.announce(5, "evaluate and draw")
    metrics = evaluate_folder(predictions, raw_folder, output_folder=output / "evaluation")
    predict_atlas_prior(raw_folder / "imagesTs", output / "predictions_atlas_prior", fold_folder)
    atlas_metrics = evaluate_folder(output / "predictions_atlas_prior", raw_folder, output_folder=output / "evaluation_atlas_prior")
    dataset_json = read_json(raw_folder / "dataset.json")
    names_by_value = {int(v): k for k, v in dataset_json["labels"].items() if int(v) != 0}
    ending = dataset_json["file_ending"]
    test_images = {p.name[: -len("_0000" + ending)]: p for p in (raw_folder / "imagesTs").glob(f"*_0000{ending}")}
    test_labels = {p.name[: -len(ending)]: p for p in (raw_folder / "labelsTs").glob(f"*{ending}")}
    result = DemoResult(output=output, metrics=metrics, failed_cases=failed, atlas_metrics=atlas_metrics)
    result.pictures = draw_predictions(predictions, test_images, test_labels, names_by_value, output / "pictures")
    if image is not None:
        from autodetr.inference.inputs import discover_cases

        for case in discover_cases(image, 1):
            if case.image_files and Path(case.image_files[0]).suffix in (".gz", ".nii", ".nrrd", ".mha"):
                result.pictures += draw_predictions(output / "predictions_image", {case.case_id: Path(case.image_files[0])}, {},
                                                    names_by_value, output / "pictures")
    curve = fold_folder / "progress.png"
    if curve.is_file():
        result.training_curve = output / "training_curve.png"
        shutil.copyfile(curve, result.training_curve)
    result.index_html = write_index_html(result, output / "index.html")
    print(f"\ndone in {(time.perf_counter() - started) / 60:.1f} minutes")
    return result
