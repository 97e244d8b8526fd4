"""Evaluation API: ground truth from label maps, and evaluation of cases, prediction folders and pooled
cross-validation predictions.

The per-case prediction JSON (its format, writer and reader) lives in `autodetr.prediction_files`; its
names are re-exported here.

Ground truth (label maps, nnDetection instance maps, box files) is read by
`autodetr.preprocessing.ground_truth`; its names are re-exported here.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from autodetr.atomic_io import atomic_path, write_json
from autodetr.errors import InputError
from autodetr.evaluation.calibration import (
    DEFAULT_NUM_BINS,
    calibration_bins,
    detection_correctness,
    expected_calibration_error,
    reliability_diagram,
)
from autodetr.evaluation.coco import (
    COCO_IOU_THRESHOLDS,
    DEFAULT_MAX_DETS,
    NNDET_IOU_THRESHOLDS,
    CaseResult,
    summarize_cases,
)
from autodetr.preprocessing.ground_truth import (
    DatasetClasses,
    find_ground_truth,
    read_dataset_classes,
    read_ground_truth_case,
)
from autodetr.prediction_files import (
    PREDICTION_BOX_CONVENTION,
    find_prediction_files,
    image_geometry,
    load_prediction,
    read_prediction,
    voxel_boxes_to_world,
    write_prediction,
)

__all__ = [
    "PREDICTION_BOX_CONVENTION", "CaseResult", "DatasetClasses", "image_geometry", "voxel_boxes_to_world",
    "write_prediction", "load_prediction", "read_prediction", "find_prediction_files",
    "read_dataset_classes", "read_ground_truth_case", "find_ground_truth", "evaluate_cases",
    "evaluate_folder", "find_cross_validation_predictions", "evaluate_cross_validation", "write_metrics",
]

METRIC_COLUMNS = ["label_value", "AP", "AP50", "AP75", "AR", "nnDet_mAP", "AP10", "false_positives_absent",
                  "num_gt", "num_detections"]


# ----------------------------------------------------------------------------------------------------
# evaluation
# ----------------------------------------------------------------------------------------------------

def _class_names_mapping(class_names: Mapping[int, str] | Sequence[str] | None) -> dict[int, str] | None:
    if class_names is None:
        return None
    if isinstance(class_names, Mapping):
        return {int(k): str(v) for k, v in class_names.items()}
    return {i + 1: str(name) for i, name in enumerate(class_names)}


def evaluate_cases(
    cases: Sequence[CaseResult],
    iou_thresholds: Sequence[float] = COCO_IOU_THRESHOLDS,
    class_names: Mapping[int, str] | Sequence[str] | None = None,
    nndet_iou_thresholds: Sequence[float] = NNDET_IOU_THRESHOLDS,
    max_dets: int | None = DEFAULT_MAX_DETS,
    num_bins: int = DEFAULT_NUM_BINS,
    reliability_path: str | os.PathLike | None = None,
) -> dict:
    """All metrics of a list of cases (e.g. training's validation) as a JSON-ready dict.

    `cases`: `CaseResult`s with labels as class ids. `class_names`: class id -> name, or a list of names
    for the contiguous class indices 1..C (e.g. `[c.name for c in Plans.of(plans).classes]`); it also fixes
    which classes are evaluated (others are ignored). Default: every label seen, named by its number.
    Returns `summarize_cases`' dict (mAP, AP50, AP75, mAR, nnDet_mAP, AP10, false_positives_absent,
    per_class ...) plus `ECE` (None without detections), per-class `ECE`, and `calibration` (bins).
    `reliability_path`: also write the reliability diagram PNG there.
    """
    names = _class_names_mapping(class_names)
    classes = sorted(names) if names is not None else None
    metrics = summarize_cases(cases, iou_thresholds, nndet_iou_thresholds, classes=classes, class_names=names,
                              max_dets=max_dets)
    scores, correct, labels = detection_correctness(cases, 0.5, one_to_one=True, classes=classes)
    clipped = np.clip(scores, 0.0, 1.0)
    if scores.size and not np.allclose(scores, clipped):
        metrics.setdefault("warnings", []).append("scores outside [0, 1] were clipped for calibration")
    ece = expected_calibration_error(clipped, correct, num_bins)
    metrics["ECE"] = None if math.isnan(ece) else ece
    bins = calibration_bins(clipped, correct, num_bins)
    metrics["calibration"] = {
        "definition": "Eq. 9 (D-RMM): sum_b |B_b|/n |acc(B_b) - conf(B_b)|; bins ((m-1)/M, m/M]; correct = "
                      "IoU >= 0.5 with a same-class ground truth, each ground truth claimed once (greedy by score)",
        "num_bins": num_bins,
        "num_detections": int(scores.size),
        "bin_edges": bins["edges"].tolist(),
        "bin_counts": bins["counts"].tolist(),
        "bin_accuracy": [None if math.isnan(v) else float(v) for v in bins["accuracy"]],
        "bin_confidence": [None if math.isnan(v) else float(v) for v in bins["confidence"]],
    }
    for entry in metrics["per_class"].values():
        mask = labels == entry["label_value"]
        value = expected_calibration_error(clipped[mask], correct[mask], num_bins)
        entry["ECE"] = None if math.isnan(value) else value
    if reliability_path is not None:
        reliability_diagram(clipped, correct, reliability_path, num_bins)
    return metrics


def write_metrics(metrics: dict, output_folder: str | os.PathLike) -> tuple[Path, Path]:
    """Write `metrics.json` and `metrics.csv` (one row per class plus a 'mean' row) into `output_folder`.

    CSV columns: label_value, AP, AP50, AP75, AR, nnDet_mAP, AP10, false_positives_absent, num_gt,
    num_detections; -1 marks a class without ground truth (as COCO). The 'mean' row holds the COCO means
    over classes with ground truth (mAP, AP50, AP75, mAR, nnDet_mAP, AP10) and the totals of the counts."""
    import pandas as pd

    output_folder = Path(output_folder)
    json_path = output_folder / "metrics.json"
    csv_path = output_folder / "metrics.csv"
    rows = {name: {column: entry.get(column) for column in METRIC_COLUMNS} for name, entry in metrics["per_class"].items()}
    rows["mean"] = {
        "label_value": None, "AP": metrics["mAP"], "AP50": metrics["AP50"], "AP75": metrics["AP75"],
        "AR": metrics["mAR"], "nnDet_mAP": metrics["nnDet_mAP"], "AP10": metrics["AP10"],
        "false_positives_absent": metrics["false_positives_absent"], "num_gt": metrics["num_gt"],
        "num_detections": metrics["num_detections"],
    }
    table = pd.DataFrame.from_dict(rows, orient="index", columns=METRIC_COLUMNS)
    table.index.name = "class"
    table["label_value"] = table["label_value"].astype("Int64")
    write_json(json_path, metrics)
    with atomic_path(csv_path, suffix=".csv") as temporary:
        table.to_csv(temporary)
    return json_path, csv_path


@dataclass(frozen=True)
class _EvaluationOptions:
    """What `evaluate_folder` and `evaluate_cross_validation` pass on besides the prediction files."""

    gt: str | os.PathLike
    output_folder: str | os.PathLike | None
    classes: Sequence[str] | None
    dataset_json: str | os.PathLike | None
    only_predicted: bool
    max_dets: int | None
    num_bins: int
    source: str          # the predictions' location, for messages and `metrics["predictions"]`


def _pair_cases(
    predictions: Mapping[str, Path],
    label_files: Mapping[str, Path],
    options: _EvaluationOptions,
    warnings: list[str],
) -> tuple[list[str], list[str], list[str]]:
    """`(evaluated, predicted without ground truth, ground truth without prediction)` case names; warns about both."""
    gt, source = options.gt, options.source
    predicted = set(predictions)
    without_gt = sorted(predicted - set(label_files))
    without_prediction = sorted(set(label_files) - predicted)
    evaluated = sorted(predicted & set(label_files))
    if not evaluated:
        example = ", ".join(sorted(predicted)[:5])
        raise InputError(
            f"{source}: none of the {len(predicted)} predicted cases ({example}{', ...' if len(predicted) > 5 else ''}) "
            f"has a label file in {gt}"
        )
    if without_gt:
        warnings.append(
            f"{len(without_gt)} predicted case(s) have no ground truth in {gt} and are not evaluated: "
            f"{_short_list(without_gt)}"
        )
    if without_prediction and not options.only_predicted:
        warnings.append(
            f"{len(without_prediction)} ground-truth case(s) have no prediction file in {source} and count as "
            f"empty predictions (use --only-predicted to leave them out): {_short_list(without_prediction)}"
        )
        evaluated = sorted(set(evaluated) | set(without_prediction))
    return evaluated, without_gt, without_prediction


def _read_case_prediction(
    prediction_file: Path, label_file: Path, shape: Sequence[int] | None, name_to_value: Mapping[str, int]
) -> tuple[np.ndarray, np.ndarray, np.ndarray, list]:
    """`(boxes, scores, labels, class names)` of one prediction file, its image shape checked against the
    label map's."""
    content = load_prediction(prediction_file)
    expected = content.get("image_shape")
    if expected is not None and shape is not None and tuple(int(s) for s in expected) != tuple(shape):
        raise InputError(
            f"{prediction_file}: image_shape {list(expected)} differs from the label map "
            f"{label_file} shape {list(shape)}"
        )
    labels = content["label_values"].copy()
    for n, name in enumerate(content["class_names"]):
        if name in name_to_value:          # the class name wins over a label value (robust to renumbering)
            labels[n] = name_to_value[name]
    return content["boxes"], content["scores"], labels, content["class_names"]


def undeclared_detections(prediction_file: Path, labels: np.ndarray, class_names: Sequence[object],
                          declared: Sequence[int], dataset_json: object) -> str | None:
    """The warning for detections whose class (by name and by label value) is none of dataset.json's:
    they cannot be scored, so they are named instead of ignored without a word."""
    unknown = sorted({int(v) for v in labels} - {int(v) for v in declared})
    if not unknown:
        return None
    count = int(np.isin(labels, unknown).sum())
    names = sorted({str(n) for n, v in zip(class_names, labels) if int(v) in unknown})
    return (f"{prediction_file}: {count} detection(s) with label_value {unknown} (class_name {', '.join(names)}) "
            f"are of no class declared in {dataset_json} (label values {sorted(int(v) for v in declared)}); "
            "not scored: predictions of another model or dataset?")


def _read_cases(
    evaluated: Sequence[str],
    predictions: Mapping[str, Path],
    label_files: Mapping[str, Path],
    dataset_classes: DatasetClasses,
    declared: Sequence[int],
    warnings: list[str],
) -> list[CaseResult]:
    """Ground truth and predictions of the evaluated cases (a case without prediction file has no detections)."""
    name_to_value = {name: value for value, name in dataset_classes.names.items()}
    cases = []
    for case in evaluated:
        gt_boxes, gt_labels, shape, case_notes = read_ground_truth_case(label_files[case], dataset_classes, declared)
        warnings.extend(case_notes)
        if case in predictions:
            boxes, scores, labels, names = _read_case_prediction(predictions[case], label_files[case], shape, name_to_value)
            note = undeclared_detections(predictions[case], labels, names, declared, dataset_classes.source or "dataset.json")
            warnings.extend([note] if note else [])
        else:
            boxes, scores, labels = np.zeros((0, 6)), np.zeros(0), np.zeros(0, dtype=np.int64)
        cases.append(CaseResult(case, gt_boxes, gt_labels, boxes, scores, labels))
    return cases


def _evaluate_prediction_files(predictions: dict[str, Path], options: _EvaluationOptions, warnings: list[str]) -> dict:
    """Evaluate `{case: prediction file}` against the ground truth `options.gt` (`evaluate_folder`'s result)."""
    output_folder = options.output_folder
    label_files, dataset_classes, notes = find_ground_truth(options.gt, list(predictions), options.dataset_json)
    declared = list(dataset_classes.values)
    dataset_classes = dataset_classes.restrict(options.classes)
    evaluated, without_gt, without_prediction = _pair_cases(predictions, label_files, options, warnings)
    cases = _read_cases(evaluated, predictions, label_files, dataset_classes, declared, warnings)
    reliability = Path(output_folder) / "reliability.png" if output_folder is not None else None
    metrics = evaluate_cases(cases, class_names=dataset_classes.names, max_dets=options.max_dets,
                             num_bins=options.num_bins, reliability_path=reliability)
    metrics["warnings"] = warnings + notes + metrics.get("warnings", [])
    metrics["cases"] = [c.case for c in cases]
    metrics["predictions_without_ground_truth"] = without_gt
    metrics["ground_truth_without_prediction"] = without_prediction
    metrics["predictions"] = options.source
    metrics["ground_truth"] = str(options.gt)
    metrics["output_folder"] = None if output_folder is None else str(output_folder)
    if output_folder is not None:
        write_metrics(metrics, output_folder)
    return metrics


def _short_list(items: Sequence[str], limit: int = 10) -> str:
    return ", ".join(items[:limit]) + (f", ... ({len(items) - limit} more)" if len(items) > limit else "")


def evaluate_folder(
    prediction_folder: str | os.PathLike,
    gt: str | os.PathLike,
    output_folder: str | os.PathLike | None = None,
    classes: Sequence[str] | None = None,
    dataset_json: str | os.PathLike | None = None,
    only_predicted: bool = False,
    max_dets: int | None = DEFAULT_MAX_DETS,
    num_bins: int = DEFAULT_NUM_BINS,
) -> dict:
    """Evaluate a folder of per-case prediction JSONs against label maps (see `find_ground_truth`).

    `classes`: class names to evaluate (default: all of dataset.json). Ground-truth cases without a
    prediction count as empty predictions (warning) unless `only_predicted`; predicted cases without
    ground truth are left out (warning). With `output_folder`, writes metrics.json, metrics.csv and
    reliability.png there. Returns the metrics dict (`evaluate_cases`' keys plus `warnings`, `cases`,
    `predictions_without_ground_truth`, `ground_truth_without_prediction`)."""
    predictions, skipped = find_prediction_files(prediction_folder)
    warnings: list[str] = []
    if skipped:
        warnings.append(f"skipped {len(skipped)} JSON file(s) that are not predictions: {_short_list(skipped)}")
    if not predictions:
        raise InputError(f"{prediction_folder}: no prediction JSON files")
    options = _EvaluationOptions(gt, output_folder, classes, dataset_json, only_predicted, max_dets, num_bins,
                                 str(prediction_folder))
    return _evaluate_prediction_files(predictions, options, warnings)


def find_cross_validation_predictions(
    dataset: str | int,
    model: str | None = None,
    results_folder: str | os.PathLike | None = None,
    num_folds: int = 5,
) -> tuple[dict[str, Path], Path, list[str]]:
    """Pooled validation predictions `<results>/DatasetXXX_Name/<trainer>__<plans>/fold_k/validation/*.json`.

    Returns `({case: file}, model folder, warnings)`. `model` names the `<trainer>__<plans>` folder (needed
    when there are several); `results_folder` overrides `$AUTODETR_results`."""
    from autodetr import paths

    results = Path(results_folder) if results_folder is not None else paths.results_root()
    search_roots = [results]
    if os.environ.get(paths.ROOT_VARIABLES["raw"]):
        search_roots.append(paths.raw_root())
    name = paths.dataset_name_from_id(dataset, search_roots=search_roots)
    base = results / name
    if not base.is_dir():
        raise InputError(f"{base}: no results folder for dataset {name}")
    if model is None:
        models = sorted(d.name for d in base.iterdir() if d.is_dir() and any(d.glob("fold_*/validation")))
        if not models:
            raise InputError(f"{base}: no <trainer>__<plans>/fold_k/validation folders")
        if len(models) > 1:
            raise InputError(f"{base}: several trained models {models}; choose one with --model")
        model = models[0]
    model_folder = base / model
    if not model_folder.is_dir():
        raise InputError(f"{model_folder}: model folder does not exist")
    warnings: list[str] = []
    pooled: dict[str, Path] = {}
    missing = []
    for fold in range(num_folds):
        folder = model_folder / f"fold_{fold}" / "validation"
        if not folder.is_dir():
            missing.append(fold)
            continue
        files, skipped = find_prediction_files(folder)
        if skipped:
            warnings.append(f"{folder}: skipped {len(skipped)} non-prediction JSON file(s): {_short_list(skipped)}")
        for case, path in files.items():
            if case in pooled:
                raise InputError(f"{path}: case '{case}' is also a validation case in {pooled[case]}")
            pooled[case] = path
    if len(missing) == num_folds or not pooled:
        raise InputError(f"{model_folder}: no validation predictions in fold_0..fold_{num_folds - 1}")
    if missing:
        warnings.append(f"folds {missing} have no validation predictions; pooling the others")
    return pooled, model_folder, warnings


def evaluate_cross_validation(
    dataset: str | int,
    model: str | None = None,
    results_folder: str | os.PathLike | None = None,
    gt: str | os.PathLike | None = None,
    output_folder: str | os.PathLike | None = None,
    classes: Sequence[str] | None = None,
    dataset_json: str | os.PathLike | None = None,
    only_predicted: bool = False,
    max_dets: int | None = DEFAULT_MAX_DETS,
    num_bins: int = DEFAULT_NUM_BINS,
    num_folds: int = 5,
) -> dict:
    """Evaluate the pooled validation predictions of all folds (see `find_cross_validation_predictions`).

    Ground truth defaults to the raw dataset `$AUTODETR_raw/DatasetXXX_Name`, the output folder to
    `<model folder>/cv_evaluation`."""
    from autodetr import paths

    predictions, model_folder, warnings = find_cross_validation_predictions(dataset, model, results_folder, num_folds)
    if gt is None:
        gt = paths.raw_root() / model_folder.parent.name
    if output_folder is None:
        output_folder = model_folder / "cv_evaluation"
    options = _EvaluationOptions(gt, output_folder, classes, dataset_json, only_predicted, max_dets, num_bins,
                                 f"{model_folder}/fold_*/validation")
    return _evaluate_prediction_files(predictions, options, warnings)
