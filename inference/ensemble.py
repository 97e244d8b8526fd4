"""Fusing the detections of several ensemble members (folds, mirrored test-time copies) into one set.

Weighted box clustering, in the spirit of nnDetection's WBC (Jaeger et al. 2018, Retina U-Net; Baumgartner
et al. 2021, nnDetection), for corner boxes of any dimension (3D `(z1, y1, x1, z2, y2, x2)`, 2D works too):

Per class, repeatedly take the highest-scoring remaining box as the seed of a cluster; the cluster is every
remaining box of that class with IoU >= `iou_threshold` with the seed (the seed included). Then

- fused box   = average of the cluster's boxes weighted by `score * IoU(box, seed)` (the seed weighs its
  score): confident boxes that agree with the seed pull hardest;
- fused score = sum over members of the member's best score in the cluster, divided by the number of
  members. A member that found nothing there counts as score 0, so a class that only some folds detect
  gets a proportionally lower score (this equals nnDetection's weighted-mean score scaled by
  present / expected predictions when every member gives one box per class, as Organ-DETR does).

Everything is plain numpy; no torch.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from autodetr.boxes import box_iou

DEFAULT_IOU_THRESHOLD = 0.3


@dataclass
class FusedDetections:
    """Fused boxes `[K, 2 * dims]`, scores `[K]`, labels `[K]`, and `support [K]`: how many members
    contributed to each cluster. Sorted by label, then descending score."""

    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray
    support: np.ndarray

    def __len__(self) -> int:
        return int(self.scores.shape[0])


def weighted_box_clustering(
    boxes: np.ndarray,
    scores: np.ndarray,
    members: np.ndarray,
    num_members: int,
    iou_threshold: float = DEFAULT_IOU_THRESHOLD,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cluster the boxes of ONE class. `boxes [P, 2d]`, `scores [P]`, `members [P]` (which member, 0..M-1,
    gave each box). Returns `(fused boxes [K, 2d], fused scores [K], support [K])`, by descending score."""
    boxes = np.asarray(boxes, dtype=np.float64)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    members = np.asarray(members, dtype=np.int64).reshape(-1)
    width = boxes.shape[-1] if boxes.ndim == 2 and boxes.size else 6
    boxes = boxes.reshape(-1, width)
    if not len(boxes) == len(scores) == len(members):
        raise ValueError(f"{len(boxes)} boxes, {len(scores)} scores, {len(members)} member ids")
    if num_members < 1:
        raise ValueError("num_members must be at least 1")
    if len(members) and (members.min() < 0 or members.max() >= num_members):
        raise ValueError(f"member ids must be in 0..{num_members - 1}")
    order = np.argsort(-scores, kind="mergesort")
    boxes, scores, members = boxes[order], scores[order], members[order]
    iou = box_iou(boxes, boxes) if len(boxes) else np.zeros((0, 0))
    remaining = np.ones(len(boxes), dtype=bool)
    fused_boxes, fused_scores, support = [], [], []
    for seed in range(len(boxes)):
        if not remaining[seed]:
            continue
        cluster = remaining & (iou[seed] >= iou_threshold)
        cluster[seed] = True  # a degenerate (zero-volume) seed still forms its own cluster
        remaining &= ~cluster
        index = np.flatnonzero(cluster)
        weights = scores[index] * np.where(index == seed, 1.0, iou[seed, index])
        if weights.sum() > 0:
            box = (boxes[index] * weights[:, None]).sum(0) / weights.sum()
        else:  # all scores zero: plain average
            box = boxes[index].mean(0)
        best_per_member = {}
        for i in index:
            best_per_member[members[i]] = max(best_per_member.get(members[i], -np.inf), scores[i])
        fused_boxes.append(box)
        fused_scores.append(sum(best_per_member.values()) / num_members)
        support.append(len(best_per_member))
    if not fused_boxes:
        return np.zeros((0, width)), np.zeros(0), np.zeros(0, dtype=np.int64)
    fused_boxes_array = np.asarray(fused_boxes)
    fused_scores_array = np.asarray(fused_scores)
    support_array = np.asarray(support, dtype=np.int64)
    order = np.argsort(-fused_scores_array, kind="mergesort")
    return fused_boxes_array[order], fused_scores_array[order], support_array[order]


def fuse_detections(
    boxes: Sequence[np.ndarray],
    scores: Sequence[np.ndarray],
    labels: Sequence[np.ndarray],
    iou_threshold: float = DEFAULT_IOU_THRESHOLD,
    max_per_class: int | None = None,
) -> FusedDetections:
    """Fuse the detections of M members: `boxes[m] [P_m, 2d]`, `scores[m] [P_m]`, `labels[m] [P_m]`.

    Clusters per class (`weighted_box_clustering`); `max_per_class` keeps the best fused clusters of each
    class (None: all). With a single member and `max_per_class` None, the boxes come back unchanged."""
    num_members = len(boxes)
    if not num_members == len(scores) == len(labels):
        raise ValueError(f"{len(boxes)} box arrays, {len(scores)} score arrays, {len(labels)} label arrays")
    if num_members == 0:
        raise ValueError("nothing to fuse: no ensemble members")
    width = next((np.asarray(b).shape[-1] for b in boxes if np.asarray(b).size), 6)
    all_boxes = np.concatenate([np.asarray(b, dtype=np.float64).reshape(-1, width) for b in boxes])
    all_scores = np.concatenate([np.asarray(s, dtype=np.float64).reshape(-1) for s in scores])
    all_labels = np.concatenate([np.asarray(lab, dtype=np.int64).reshape(-1) for lab in labels])
    all_members = np.concatenate([np.full(np.asarray(s).size, m, dtype=np.int64) for m, s in enumerate(scores)])
    out_boxes, out_scores, out_labels, out_support = [], [], [], []
    for label in np.unique(all_labels):
        mask = all_labels == label
        fused_boxes, fused_scores, support = weighted_box_clustering(
            all_boxes[mask], all_scores[mask], all_members[mask], num_members, iou_threshold
        )
        if max_per_class is not None:
            fused_boxes, fused_scores, support = fused_boxes[:max_per_class], fused_scores[:max_per_class], support[:max_per_class]
        out_boxes.append(fused_boxes)
        out_scores.append(fused_scores)
        out_labels.append(np.full(len(fused_scores), label, dtype=np.int64))
        out_support.append(support)
    if not out_boxes:
        return FusedDetections(np.zeros((0, width)), np.zeros(0), np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64))
    return FusedDetections(np.concatenate(out_boxes), np.concatenate(out_scores), np.concatenate(out_labels),
                           np.concatenate(out_support))
