"""Per-organ IoU of the highest-scored box: how a detector reads on one scan with a label map of other names.

A real scan labelled by another tool (e.g. TotalSegmentator's 117 structures) is scored per organ class
the detector knows: its ground-truth box is the bounding box of the voxels with that class's name (cut by
the scan's field of view where the organ is cut, as it is), and the detector's answer is its
highest-scored box of that class (none: IoU 0). The summary gives the mean IoU over the organs present,
how many have a box at all and the share at IoU >= 0.5. mAP over one case says less than this.
`box_error` says how a box misses: its centre's offset (mm) and its size over the labelled size per axis, so
a box drawn the right size in the wrong place reads apart from one drawn too short in the right place.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

from autodetr.boxes import box_iou, boxes_from_label_map, corners_to_centre

#: IoU at which an organ counts as found in the right place.
FOUND_IOU = 0.5


@dataclass
class OrganScore:
    name: str
    truth: list[float]  # corner box (z1, y1, x1, z2, y2, x2), voxels of the scored image
    predicted: list[float] | None  # the highest-scored box of the class, None if the detector gave none
    score: float | None
    iou: float


def highest_scored(scores: np.ndarray, predicted_names: Sequence[str]) -> dict[str, int]:
    """Index of the highest-scored detection of every class name present."""
    best: dict[str, int] = {}
    for k, name in enumerate(predicted_names):
        if name not in best or scores[k] > scores[best[name]]:
            best[name] = k
    return best


def highest_box_ious(label_map: np.ndarray, label_names: Mapping[int, str], class_names: Sequence[str],
                     boxes: np.ndarray, scores: np.ndarray, predicted_names: Sequence[str]) -> list[OrganScore]:
    """One `OrganScore` per detector class present in `label_map` (value -> name in `label_names`), in the
    order of `class_names`; predictions are corner boxes `[P, 6]` with scores and class names."""
    values_by_name = {name: int(value) for value, name in label_names.items()}
    wanted = [name for name in class_names if name in values_by_name]
    truth_boxes, truth_values = boxes_from_label_map(label_map, [values_by_name[name] for name in wanted])
    truth = {int(value): box for box, value in zip(truth_boxes, truth_values)}
    boxes = np.asarray(boxes, np.float64).reshape(-1, 6)
    scores = np.asarray(scores, np.float64).reshape(-1)
    best_of = highest_scored(scores, list(predicted_names))
    result = []
    for name in wanted:
        box = truth.get(values_by_name[name])
        if box is None:  # named but no voxel in this scan
            continue
        if name not in best_of:
            result.append(OrganScore(name, box.tolist(), None, None, 0.0))
            continue
        best = best_of[name]
        iou = float(box_iou(box[None], boxes[best][None])[0, 0])
        result.append(OrganScore(name, box.tolist(), boxes[best].tolist(), float(scores[best]), iou))
    return result


def box_error(organ: OrganScore, spacing: Sequence[float]) -> dict | None:
    """How `organ`'s predicted box misses its labelled box, per array axis (z, y, x; `spacing` in mm, same order):
    the centre's offset in mm (predicted minus labelled, signed along the array's axes) and the size ratio
    (predicted over labelled extent; 1 is the right size). None where the detector gave no box."""
    if organ.predicted is None:
        return None
    truth, predicted = corners_to_centre(np.asarray([organ.truth, organ.predicted], np.float64))
    offset = (predicted[:3] - truth[:3]) * np.asarray(spacing, np.float64)
    size = predicted[3:] / np.maximum(truth[3:], 1e-9)
    return {"centre_offset_mm": [round(float(v), 1) for v in offset], "size_ratio": [round(float(v), 2) for v in size]}


def summarise(organs: Sequence[OrganScore]) -> dict:
    """Mean IoU, organs with a box, share at IoU >= FOUND_IOU, over the organs present."""
    ious = np.asarray([organ.iou for organ in organs], np.float64)
    return {
        "organs": len(organs),
        "with_a_box": sum(organ.predicted is not None for organ in organs),
        "mean_iou": float(ious.mean()) if len(ious) else float("nan"),
        "share_iou_0_5": float((ious >= FOUND_IOU).mean()) if len(ious) else float("nan"),
        "per_organ": {organ.name: round(organ.iou, 4) for organ in organs},
    }
