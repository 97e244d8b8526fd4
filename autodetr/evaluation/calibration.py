"""Confidence calibration of detections: expected calibration error (D-RMM, Eq. 9) and reliability diagrams.

    ECE = sum_m |B_m| / n * |acc(B_m) - conf(B_m)|

over `num_bins` (10) equal-width confidence bins. As in Guo et al. (2017), whom the D-RMM paper cites
for ECE, bin m holds the confidences in ((m - 1) / M, m / M]; a confidence of exactly 0 goes to the first
bin. acc(B_m) is the fraction of the bin's detections that are correct, conf(B_m) their mean confidence,
n the number of detections.

When is a detection correct? It has IoU >= 0.5 with a ground truth box of the same class in its case,
and each ground truth may be claimed once (`one_to_one=True`, the default): within a case and class,
detections are taken in descending confidence (stable) and each claims the unmatched ground truth with
the highest IoU, exactly COCO's matching at IoU 0.5, so duplicates of an already found organ are
incorrect. This follows the paper's reading around Eq. 9 (Sec. 4.4): removing duplicates with NMS
"increased each bin's accuracy", and the NLL-only model is "under-confident because the confidences are
dispersed to multiple redundancies" - both only hold if a duplicate of a detected object counts as
wrong, i.e. accuracy is measured with one-to-one matching. `one_to_one=False` gives the looser reading
(any detection overlapping a same-class ground truth by IoU >= 0.5 is correct).
"""
from __future__ import annotations

import os
from typing import Sequence

import numpy as np

from autodetr.boxes import box_iou
from autodetr.evaluation.coco import CaseResult, greedy_match, iter_case_classes, resolve_classes

DEFAULT_NUM_BINS = 10


def detection_correctness(
    cases: Sequence[CaseResult],
    iou_threshold: float = 0.5,
    one_to_one: bool = True,
    classes: Sequence[int] | None = None,
    max_dets: int | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Confidence and correctness of every detection (see the module docstring).

    Returns `(scores [n], correct [n] bool, labels [n])`, cases in order, within a case by class then
    descending score. `classes` restricts to those labels (default: all); `max_dets` keeps only the first
    detections per case and class (default: all detections count).
    """
    class_ids = resolve_classes(cases, classes)
    scores, correct, labels = [], [], []
    for case in cases:
        for block in iter_case_classes(case, class_ids, max_dets):
            num_dets = len(block.det_boxes)
            if num_dets == 0:
                continue
            if len(block.gt_boxes) == 0:
                hit = np.zeros(num_dets, dtype=bool)
            else:
                ious = box_iou(block.det_boxes, block.gt_boxes)
                if one_to_one:
                    hit = greedy_match(ious, np.array([iou_threshold]))[0] >= 0
                else:
                    hit = np.any(ious >= min(iou_threshold, 1 - 1e-10), axis=1)
            scores.append(block.det_scores)
            correct.append(hit)
            labels.append(np.full(num_dets, class_ids[block.class_index], dtype=np.int64))
    if not scores:
        return np.zeros(0), np.zeros(0, dtype=bool), np.zeros(0, dtype=np.int64)
    return np.concatenate(scores), np.concatenate(correct), np.concatenate(labels)


def _check(scores: np.ndarray, correct: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    correct = np.asarray(correct, dtype=np.float64).reshape(-1)
    if scores.shape != correct.shape:
        raise ValueError(f"{scores.size} scores but {correct.size} correctness values")
    if scores.size and (not np.all(np.isfinite(scores)) or scores.min() < 0 or scores.max() > 1):
        raise ValueError("confidence scores must lie in [0, 1] for calibration")
    return scores, correct


def calibration_bins(scores: np.ndarray, correct: np.ndarray, num_bins: int = DEFAULT_NUM_BINS) -> dict:
    """Per-bin statistics: `edges [M + 1]`, `counts [M]`, `accuracy [M]`, `confidence [M]` (NaN when empty)."""
    scores, correct = _check(scores, correct)
    edges = np.arange(num_bins + 1, dtype=np.float64) / num_bins   # exact k / M, so 0.3 falls in (0.2, 0.3]
    bins = np.clip(np.searchsorted(edges, scores, side="left") - 1, 0, num_bins - 1)
    counts = np.bincount(bins, minlength=num_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        accuracy = np.bincount(bins, weights=correct, minlength=num_bins) / counts
        confidence = np.bincount(bins, weights=scores, minlength=num_bins) / counts
    accuracy[counts == 0] = np.nan
    confidence[counts == 0] = np.nan
    return {"edges": edges, "counts": counts, "accuracy": accuracy, "confidence": confidence}


def expected_calibration_error(scores: np.ndarray, correct: np.ndarray, num_bins: int = DEFAULT_NUM_BINS) -> float:
    """ECE of Eq. 9 (D-RMM; Guo et al. 2017) with `num_bins` equal-width bins; NaN without detections."""
    stats = calibration_bins(scores, correct, num_bins)
    total = stats["counts"].sum()
    if total == 0:
        return float("nan")
    filled = stats["counts"] > 0
    gaps = np.abs(stats["accuracy"][filled] - stats["confidence"][filled])
    return float(np.sum(stats["counts"][filled] / total * gaps))


def reliability_diagram(
    scores: np.ndarray,
    correct: np.ndarray,
    path: str | os.PathLike,
    num_bins: int = DEFAULT_NUM_BINS,
    title: str | None = None,
) -> float:
    """Write a reliability diagram (accuracy per confidence bin, mean confidence, the diagonal) as PNG.

    The ECE is in the title; a lower panel shows how many detections fall in each bin. Uses matplotlib's
    Agg canvas directly (no pyplot, no global backend change). The file is written atomically.
    Returns the ECE.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from autodetr.atomic_io import atomic_path

    stats = calibration_bins(scores, correct, num_bins)
    ece = expected_calibration_error(scores, correct, num_bins)
    edges, counts = stats["edges"], stats["counts"]
    centres = (edges[:-1] + edges[1:]) / 2
    width = edges[1] - edges[0]
    filled = counts > 0

    figure = Figure(figsize=(5, 6), dpi=100)
    FigureCanvasAgg(figure)
    top, bottom = figure.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    top.bar(centres[filled], stats["accuracy"][filled], width=width * 0.95, color="tab:blue",
            edgecolor="black", label="accuracy")
    gap_low = np.minimum(stats["accuracy"], stats["confidence"])[filled]
    gap_height = np.abs(stats["accuracy"] - stats["confidence"])[filled]
    top.bar(centres[filled], gap_height, bottom=gap_low, width=width * 0.95, color="tab:red", alpha=0.3,
            label="gap to confidence")
    top.plot(stats["confidence"][filled], stats["accuracy"][filled], "o", color="black", markersize=4,
             label="(mean confidence, accuracy)")
    top.plot([0, 1], [0, 1], "--", color="gray", label="perfect calibration")
    top.set_xlim(0, 1)
    top.set_ylim(0, 1)
    top.set_ylabel("accuracy (IoU >= 0.5, one-to-one)")
    top.legend(loc="upper left", fontsize=8)
    ece_text = "n/a (no detections)" if np.isnan(ece) else f"{ece:.4f}"
    top.set_title(f"{title + ': ' if title else ''}ECE = {ece_text} (n = {int(counts.sum())})")
    bottom.bar(centres, counts, width=width * 0.95, color="gray", edgecolor="black")
    bottom.set_xlabel("confidence")
    bottom.set_ylabel("detections")
    figure.tight_layout()
    with atomic_path(path, suffix=".png") as temporary:
        figure.savefig(temporary, format="png")
    return ece
