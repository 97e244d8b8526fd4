"""COCO-style detection metrics for 2D and 3D corner boxes, with the semantics of pycocotools' COCOeval.

Boxes follow `autodetr.boxes`: 3D `(z1, y1, x1, z2, y2, x2)`, 2D `(y1, x1, y2, x2)`, half-open voxel edges;
IoU is `autodetr.boxes.box_iou` (volume = product of the edge differences, like COCO's `w * h`).

What is reproduced from `pycocotools.cocoeval.COCOeval` (iouType='bbox', area range 'all'):
- per case (COCO "image") and class: detections sorted by descending score with a stable sort
  (mergesort, ties keep input order) and cut to the first `max_dets`;
- greedy matching in that order: each detection takes the unmatched ground truth with the highest IoU,
  provided that IoU >= the threshold (COCO compares with `min(t, 1 - 1e-10)`; among equal IoUs the
  ground truth listed last wins, as in COCO's loop);
- per class, detections of all cases are pooled and stably sorted by descending score (ties keep case
  order, then in-case order), precision `tp / (tp + fp + eps)` with its monotone envelope, sampled at
  the 101 recall points `0:0.01:1` (`searchsorted(..., side='left')`, 0 past the last recall reached);
- recall = matched / number of ground truths (recall reached with all `max_dets` detections per case);
- a class without any ground truth in the whole data set has precision and recall -1 and is left out
  of every mean (COCO's `s[s > -1]`); detections of a class in a case without ground truth of that
  class are false positives (they count in that class's precision).
Crowd and ignore regions, and the small/medium/large area ranges, are not used (our data has none).

The main entry points are `evaluate_detections` (arrays, like `COCOeval.eval`) and `summarize_cases`
(the numbers a report needs: mAP, AP50, AP75, mAR, per-class values, nnDetection's mAP over
IoU 0.10:0.05:0.50, and false positives on absent organs).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator, Mapping, Sequence

import numpy as np

from autodetr.boxes import box_iou

# Same expressions as pycocotools' Params.setDetParams, so the float values are identical.
COCO_IOU_THRESHOLDS = np.linspace(0.5, 0.95, int(np.round((0.95 - 0.5) / 0.05)) + 1, endpoint=True)
NNDET_IOU_THRESHOLDS = np.linspace(0.1, 0.5, int(np.round((0.5 - 0.1) / 0.05)) + 1, endpoint=True)
RECALL_THRESHOLDS = np.linspace(0.0, 1.00, int(np.round((1.00 - 0.0) / 0.01)) + 1, endpoint=True)
DEFAULT_MAX_DETS = 100


@dataclass
class CaseResult:
    """Ground truth and predictions of one case (a COCO "image"), as plain arrays.

    `gt_boxes [G, 2 * dims]`, `gt_labels [G]` (class ids, e.g. dataset.json label values),
    `pred_boxes [P, 2 * dims]`, `pred_scores [P]`, `pred_labels [P]`. dims is 3 (corner boxes
    `(z1, y1, x1, z2, y2, x2)`) or 2 (`(y1, x1, y2, x2)`); empty arrays may have any shape with 0 rows.
    """

    case: str
    gt_boxes: np.ndarray
    gt_labels: np.ndarray
    pred_boxes: np.ndarray
    pred_scores: np.ndarray
    pred_labels: np.ndarray

    def __post_init__(self) -> None:
        self.gt_labels = np.asarray(self.gt_labels, dtype=np.int64).reshape(-1)
        self.pred_labels = np.asarray(self.pred_labels, dtype=np.int64).reshape(-1)
        self.pred_scores = np.asarray(self.pred_scores, dtype=np.float64).reshape(-1)
        self.gt_boxes = _as_boxes(self.gt_boxes, len(self.gt_labels), f"case {self.case}: gt_boxes")
        self.pred_boxes = _as_boxes(self.pred_boxes, len(self.pred_labels), f"case {self.case}: pred_boxes")
        if len(self.pred_scores) != len(self.pred_labels):
            raise ValueError(
                f"case {self.case}: {len(self.pred_scores)} scores but {len(self.pred_labels)} predicted labels"
            )
        if not np.all(np.isfinite(self.pred_scores)):
            raise ValueError(f"case {self.case}: prediction scores must be finite")
        widths = {b.shape[1] for b in (self.gt_boxes, self.pred_boxes) if b.shape[1] > 0}
        if len(widths) > 1:
            raise ValueError(f"case {self.case}: ground truth and predicted boxes differ in dimension")

    @property
    def dims(self) -> int | None:
        """Box dimensionality (2 or 3), None when the case has no box at all."""
        for boxes in (self.gt_boxes, self.pred_boxes):
            if boxes.shape[1] > 0:
                return boxes.shape[1] // 2
        return None


def _as_boxes(boxes: np.ndarray, count: int, what: str) -> np.ndarray:
    boxes = np.asarray(boxes, dtype=np.float64)
    if boxes.size == 0:
        width = boxes.shape[-1] if boxes.ndim == 2 else 0
        boxes = boxes.reshape(0, width)
    if boxes.ndim != 2 or boxes.shape[1] not in (0, 4, 6):
        raise ValueError(f"{what}: expected [N, 4] or [N, 6] corner boxes, got shape {boxes.shape}")
    if boxes.shape[0] != count:
        raise ValueError(f"{what}: {boxes.shape[0]} boxes but {count} labels")
    if not np.all(np.isfinite(boxes)):
        raise ValueError(f"{what}: box coordinates must be finite")
    return boxes


def greedy_match(ious: np.ndarray, iou_thresholds: np.ndarray) -> np.ndarray:
    """COCO's greedy matching of one case and class, for all IoU thresholds at once.

    `ious [D, G]`: detections already in score order. Returns `[T, D]` int: index of the matched ground
    truth per threshold, -1 where the detection is unmatched (a false positive).
    """
    ious = np.asarray(ious, dtype=np.float64)
    thresholds = np.asarray(iou_thresholds, dtype=np.float64).reshape(-1)
    num_thresholds = len(thresholds)
    num_dets, num_gt = ious.shape
    matches = np.full((num_thresholds, num_dets), -1, dtype=np.int64)
    if num_dets == 0 or num_gt == 0:
        return matches
    limits = np.minimum(thresholds, 1 - 1e-10)
    taken = np.zeros((num_thresholds, num_gt), dtype=bool)
    rows = np.arange(num_thresholds)
    for d in range(num_dets):
        candidates = np.where(taken, -np.inf, ious[d][None, :])
        # last index of the maximum: COCO's loop replaces its choice on equal IoU
        best = num_gt - 1 - np.argmax(candidates[:, ::-1], axis=1)
        ok = candidates[rows, best] >= limits
        matches[ok, d] = best[ok]
        taken[rows[ok], best[ok]] = True
    return matches


@dataclass
class CaseClassBlock:
    """Ground truth and score-sorted detections of one class in one case."""

    class_index: int
    gt_boxes: np.ndarray          # [G, 2 * dims]
    det_boxes: np.ndarray         # [D, 2 * dims], descending score, at most max_dets
    det_scores: np.ndarray        # [D]
    det_indices: np.ndarray       # [D] indices into the case's prediction arrays
    num_dets_total: int           # detections of this class in the case before the max_dets cut


def iter_case_classes(case: CaseResult, classes: np.ndarray, max_dets: int | None) -> Iterator[CaseClassBlock]:
    """Yield the (class, case) blocks that have ground truth or detections, classes in `classes` order."""
    class_position = {int(c): k for k, c in enumerate(classes)}
    present = np.union1d(case.gt_labels, case.pred_labels)
    # stable: by label, then descending score, ties in input order (COCO's mergesort)
    order = np.lexsort((-case.pred_scores, case.pred_labels))
    sorted_labels = case.pred_labels[order]
    dims = case.dims or 3
    for label in present:
        k = class_position.get(int(label))
        if k is None:
            continue
        gt = case.gt_boxes[case.gt_labels == label].reshape(-1, 2 * dims)
        start, stop = np.searchsorted(sorted_labels, label, side="left"), np.searchsorted(sorted_labels, label, side="right")
        indices = order[start:stop]
        total = len(indices)
        if max_dets is not None:
            indices = indices[:max_dets]
        yield CaseClassBlock(
            class_index=k,
            gt_boxes=gt,
            det_boxes=case.pred_boxes[indices].reshape(-1, 2 * dims),
            det_scores=case.pred_scores[indices],
            det_indices=indices,
            num_dets_total=total,
        )


@dataclass
class DetectionEvaluation:
    """Accumulated results, laid out like `COCOeval.eval` for area 'all' and one maxDets value.

    precision [T, R, K], recall [T, K], scores [T, R, K]: -1 for classes without ground truth.
    """

    iou_thresholds: np.ndarray
    recall_thresholds: np.ndarray
    classes: np.ndarray
    max_dets: int | None
    precision: np.ndarray
    recall: np.ndarray
    scores: np.ndarray
    num_gt: np.ndarray                     # [K] ground truths per class
    num_detections: np.ndarray             # [K] evaluated detections per class (after the max_dets cut)
    false_positives_absent: np.ndarray     # [K] detections of the class in cases without its ground truth
    cases_absent_with_detections: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))

    def select_thresholds(self, iou_thresholds: Sequence[float]) -> "DetectionEvaluation":
        """The same evaluation restricted to some of its IoU thresholds."""
        return self.take_rows([self.threshold_index(t) for t in iou_thresholds])

    def take_rows(self, rows: Sequence[int] | slice) -> "DetectionEvaluation":
        """The same evaluation restricted to some rows (IoU thresholds) of its arrays."""
        return DetectionEvaluation(
            iou_thresholds=self.iou_thresholds[rows],
            recall_thresholds=self.recall_thresholds,
            classes=self.classes,
            max_dets=self.max_dets,
            precision=self.precision[rows],
            recall=self.recall[rows],
            scores=self.scores[rows],
            num_gt=self.num_gt,
            num_detections=self.num_detections,
            false_positives_absent=self.false_positives_absent,
            cases_absent_with_detections=self.cases_absent_with_detections,
        )

    def threshold_index(self, iou_threshold: float) -> int:
        found = np.flatnonzero(np.isclose(self.iou_thresholds, iou_threshold, rtol=0, atol=1e-12))
        if found.size == 0:
            raise KeyError(f"IoU threshold {iou_threshold} was not evaluated ({self.iou_thresholds.tolist()})")
        return int(found[0])

    def has_threshold(self, iou_threshold: float) -> bool:
        return bool(np.any(np.isclose(self.iou_thresholds, iou_threshold, rtol=0, atol=1e-12)))

    def average_precision(self, iou_threshold: float | None = None, class_index: int | None = None) -> float:
        """COCO's summarize for AP: mean over thresholds (or one), recall points, classes (or one); -1 if none."""
        values = self.precision
        if iou_threshold is not None:
            values = values[[self.threshold_index(iou_threshold)]]
        if class_index is not None:
            values = values[:, :, [class_index]]
        return _mean_valid(values)

    def average_recall(self, iou_threshold: float | None = None, class_index: int | None = None) -> float:
        """COCO's summarize for AR (recall with max_dets per case), averaged like average_precision."""
        values = self.recall
        if iou_threshold is not None:
            values = values[[self.threshold_index(iou_threshold)]]
        if class_index is not None:
            values = values[:, [class_index]]
        return _mean_valid(values)


def _mean_valid(values: np.ndarray) -> float:
    valid = values[values > -1]
    return float(np.mean(valid)) if valid.size else -1.0


def resolve_classes(cases: Sequence[CaseResult], classes: Sequence[int] | None) -> np.ndarray:
    if classes is not None:
        return np.asarray(list(classes), dtype=np.int64).reshape(-1)
    labels = [c.gt_labels for c in cases] + [c.pred_labels for c in cases]
    return np.unique(np.concatenate(labels)) if labels else np.zeros(0, dtype=np.int64)


def _check_dims(cases: Sequence[CaseResult]) -> None:
    dims = {c.dims for c in cases if c.dims is not None}
    if len(dims) > 1:
        raise ValueError(f"cases mix 2D and 3D boxes (dims {sorted(dims)})")


@dataclass
class _PooledMatches:
    """Per class: ground-truth count, absent-class false positives, and every case's scores and match flags."""

    num_gt: np.ndarray                     # [K]
    false_positives_absent: np.ndarray     # [K]
    cases_absent: np.ndarray               # [K]
    scores: list[list[np.ndarray]]         # per class, one [D] array per (case, class) block with detections
    matched: list[list[np.ndarray]]        # per class, one [T, D] bool array per such block

    @classmethod
    def empty(cls, num_classes: int) -> "_PooledMatches":
        """Zero counts and no detections for `num_classes` classes."""
        return cls(
            num_gt=np.zeros(num_classes, dtype=np.int64),
            false_positives_absent=np.zeros(num_classes, dtype=np.int64),
            cases_absent=np.zeros(num_classes, dtype=np.int64),
            scores=[[] for _ in range(num_classes)],
            matched=[[] for _ in range(num_classes)],
        )


def _match_block(block: CaseClassBlock, thresholds: np.ndarray) -> np.ndarray:
    """`[T, D]` matched ground-truth index of each detection of one block per threshold (-1: unmatched)."""
    if len(block.gt_boxes):
        return greedy_match(box_iou(block.det_boxes, block.gt_boxes), thresholds)
    return np.full((len(thresholds), len(block.det_boxes)), -1, dtype=np.int64)


def _match_cases(
    cases: Sequence[CaseResult],
    class_ids: np.ndarray,
    thresholds: np.ndarray,
    max_dets: int | None,
    absent_score_threshold: float,
) -> _PooledMatches:
    """COCO's per-case matching (`COCOeval.evaluate`), pooled per class over all cases in case order."""
    pooled = _PooledMatches.empty(len(class_ids))
    for case in cases:
        for block in iter_case_classes(case, class_ids, max_dets):
            k = block.class_index
            pooled.num_gt[k] += len(block.gt_boxes)
            if len(block.gt_boxes) == 0 and block.num_dets_total:
                mask = (case.pred_labels == class_ids[k]) & (case.pred_scores >= absent_score_threshold)
                count = int(np.count_nonzero(mask))
                pooled.false_positives_absent[k] += count
                pooled.cases_absent[k] += int(count > 0)
            if len(block.det_boxes) == 0:
                continue
            matches = _match_block(block, thresholds)
            pooled.scores[k].append(block.det_scores)
            pooled.matched[k].append(matches >= 0)
    return pooled


def _accumulate_class(
    det_scores: np.ndarray, matched: np.ndarray, num_gt: int, recall_points: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Precision `[T, R]`, recall `[T]` and scores `[T, R]` of one class with ground truth and detections.

    `det_scores [D]` and `matched [T, D]` are the class's pooled detections in case order; they are stably
    sorted by descending score, and the precision envelope is sampled at `recall_points`."""
    nd = len(det_scores)
    order = np.argsort(-det_scores, kind="mergesort")
    sorted_scores = det_scores[order]
    matched = matched[:, order]
    tp_sum = np.cumsum(matched, axis=1).astype(np.float64)
    fp_sum = np.cumsum(~matched, axis=1).astype(np.float64)
    rc = tp_sum / num_gt
    pr = tp_sum / (fp_sum + tp_sum + np.spacing(1))
    envelope = np.maximum.accumulate(pr[:, ::-1], axis=1)[:, ::-1]
    precision = np.zeros((len(matched), len(recall_points)))
    scores = np.zeros((len(matched), len(recall_points)))
    for t in range(len(matched)):
        indices = np.searchsorted(rc[t], recall_points, side="left")
        valid = indices < nd
        precision[t, valid] = envelope[t, indices[valid]]
        scores[t, valid] = sorted_scores[indices[valid]]
    return precision, rc[:, -1], scores


def _accumulate(
    pooled: _PooledMatches, num_thresholds: int, recall_points: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """COCO's `accumulate`: `(precision [T, R, K], recall [T, K], scores [T, R, K], num_detections [K])`.

    -1 for a class without ground truth, 0 for a class with ground truth but no detection."""
    num_r, num_k = len(recall_points), len(pooled.num_gt)
    precision = -np.ones((num_thresholds, num_r, num_k))
    recall = -np.ones((num_thresholds, num_k))
    scores = -np.ones((num_thresholds, num_r, num_k))
    num_detections = np.zeros(num_k, dtype=np.int64)
    for k in range(num_k):
        det_scores = np.concatenate(pooled.scores[k]) if pooled.scores[k] else np.zeros(0)
        num_detections[k] = len(det_scores)
        if pooled.num_gt[k] == 0:
            continue
        if len(det_scores) == 0:
            precision[:, :, k] = 0.0
            recall[:, k] = 0.0
            scores[:, :, k] = 0.0
            continue
        matched = np.concatenate(pooled.matched[k], axis=1)
        precision[:, :, k], recall[:, k], scores[:, :, k] = _accumulate_class(
            det_scores, matched, pooled.num_gt[k], recall_points
        )
    return precision, recall, scores, num_detections


def evaluate_detections(
    cases: Sequence[CaseResult],
    iou_thresholds: Sequence[float] = COCO_IOU_THRESHOLDS,
    classes: Sequence[int] | None = None,
    max_dets: int | None = DEFAULT_MAX_DETS,
    recall_thresholds: Sequence[float] = RECALL_THRESHOLDS,
    absent_score_threshold: float = 0.0,
) -> DetectionEvaluation:
    """Match and accumulate like `COCOeval.evaluate(); COCOeval.accumulate()` (area 'all', one maxDets).

    `classes`: class ids to evaluate, in output order (default: every label seen in ground truth or
    predictions, sorted); detections of other labels are ignored. `max_dets`: detections kept per case
    and class (COCO's maxDets, None for all). `absent_score_threshold`: a detection with at least this
    score, of a class the case has no ground truth of, counts in `false_positives_absent` (all its
    detections, before the `max_dets` cut). Ties between equal scores of different cases follow case order.
    """
    _check_dims(cases)
    thresholds = np.asarray(iou_thresholds, dtype=np.float64).reshape(-1)
    recall_points = np.asarray(recall_thresholds, dtype=np.float64).reshape(-1)
    class_ids = resolve_classes(cases, classes)
    pooled = _match_cases(cases, class_ids, thresholds, max_dets, absent_score_threshold)
    precision, recall, scores, num_detections = _accumulate(pooled, len(thresholds), recall_points)
    return DetectionEvaluation(
        iou_thresholds=thresholds,
        recall_thresholds=recall_points,
        classes=class_ids,
        max_dets=max_dets,
        precision=precision,
        recall=recall,
        scores=scores,
        num_gt=pooled.num_gt,
        num_detections=num_detections,
        false_positives_absent=pooled.false_positives_absent,
        cases_absent_with_detections=pooled.cases_absent,
    )


def _optional_ap(evaluation: DetectionEvaluation, threshold: float, class_index: int | None = None) -> float | None:
    """`average_precision` at one IoU threshold, None when that threshold was not evaluated."""
    if not evaluation.has_threshold(threshold):
        return None
    return evaluation.average_precision(threshold, class_index)


def _class_summary(coco: DetectionEvaluation, nndet: DetectionEvaluation, k: int) -> dict:
    """`summarize_cases`' `per_class` entry of class index `k` (COCO and nnDetection thresholds)."""
    return {
        "label_value": int(coco.classes[k]),
        "AP": coco.average_precision(class_index=k),
        "AP50": _optional_ap(coco, 0.5, k),
        "AP75": _optional_ap(coco, 0.75, k),
        "AR": coco.average_recall(class_index=k),
        "nnDet_mAP": nndet.average_precision(class_index=k) if len(nndet.iou_thresholds) else None,
        "AP10": _optional_ap(nndet, 0.1, k),
        "false_positives_absent": int(coco.false_positives_absent[k]),
        "cases_absent_with_detections": int(coco.cases_absent_with_detections[k]),
        "num_gt": int(coco.num_gt[k]),
        "num_detections": int(coco.num_detections[k]),
    }


def summarize_cases(
    cases: Sequence[CaseResult],
    iou_thresholds: Sequence[float] = COCO_IOU_THRESHOLDS,
    nndet_iou_thresholds: Sequence[float] = NNDET_IOU_THRESHOLDS,
    classes: Sequence[int] | None = None,
    class_names: Mapping[int, str] | None = None,
    max_dets: int | None = DEFAULT_MAX_DETS,
    absent_score_threshold: float = 0.0,
) -> dict:
    """All box metrics of a data set as plain values (JSON-ready).

    Keys: `mAP` (mean over `iou_thresholds`, recall points and classes with ground truth, COCO's
    stats[0]), `AP50`, `AP75` (None when 0.5 / 0.75 is not among `iou_thresholds`), `mAR` (COCO's
    AR@max_dets, stats[8]: recall averaged over thresholds and classes), `nnDet_mAP` (same as mAP over
    `nndet_iou_thresholds`, nnDetection's mAP_IoU_0.10_0.50_0.05_MaxDet_100), `AP10` (nnDetection's main
    AP at IoU 0.1, when 0.1 is among `nndet_iou_thresholds`), `false_positives_absent` (total over
    classes), and `per_class`: {name: {label_value, AP, AP50, AP75, AR, nnDet_mAP, AP10,
    false_positives_absent, cases_absent_with_detections, num_gt, num_detections}}. A class without
    ground truth has -1 for every AP/AR value (left out of the means, as in COCO).
    """
    coco_t = np.asarray(iou_thresholds, dtype=np.float64).reshape(-1)
    nndet_t = np.asarray(nndet_iou_thresholds, dtype=np.float64).reshape(-1)
    everything = evaluate_detections(
        cases, np.concatenate([coco_t, nndet_t]), classes=classes, max_dets=max_dets,
        absent_score_threshold=absent_score_threshold,
    )
    coco = everything.take_rows(slice(0, len(coco_t)))
    nndet = everything.take_rows(slice(len(coco_t), len(coco_t) + len(nndet_t)))
    names = dict(class_names or {})
    per_class = {names.get(int(value), str(int(value))): _class_summary(coco, nndet, k)
                 for k, value in enumerate(coco.classes)}
    return {
        "mAP": coco.average_precision(),
        "AP50": _optional_ap(coco, 0.5),
        "AP75": _optional_ap(coco, 0.75),
        "mAR": coco.average_recall(),
        "nnDet_mAP": nndet.average_precision() if len(nndet_t) else None,
        "AP10": _optional_ap(nndet, 0.1),
        "false_positives_absent": int(coco.false_positives_absent.sum()),
        "num_cases": len(cases),
        "num_gt": int(coco.num_gt.sum()),
        "num_detections": int(coco.num_detections.sum()),
        "iou_thresholds": [float(t) for t in coco_t],
        "nndet_iou_thresholds": [float(t) for t in nndet_t],
        "max_dets": max_dets,
        "per_class": per_class,
    }
