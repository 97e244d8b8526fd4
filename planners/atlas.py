"""Organ atlas: where each class usually lies, relative to the preprocessed (cropped) body.

Every preprocessed case is the body crop of its CT, so a box divided by the case's preprocessed shape
is a position relative to the body, comparable across patients whatever their size. Per class the atlas
holds, in that relative centre form `(cz, cy, cx, d, h, w)`:

- `median`: the median box (per coordinate) over the cases that contain the class;
- `low` / `high`: the 5th / 95th percentiles (the class's observed range; the starting offsets of its
  anchored queries spread over it);
- `frequency`: the fraction of cases that contain the class (an absent organ's prior score).

A fold's detector takes its atlas only from that fold's training cases (`atlas_from_preprocessed` at
training start), so no validation case informs its own prior. A class that no training case contains
gets the whole body as its box and frequency 0.

The "atlas prior" is the detector that never looks at the image: it predicts every class's median box on
every case, scored by the class frequency (`prior_detections`, `prior_scores`). It is the baseline every trained
model is measured against.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from autodetr.atomic_io import read_json
from autodetr.boxes import denormalise_centre, normalise_corners

#: Percentiles of the observed range per class.
RANGE_PERCENTILES = (5.0, 95.0)
#: Relative box of a class no training case contains: the whole body.
UNSEEN_BOX = (0.5, 0.5, 0.5, 1.0, 1.0, 1.0)
#: Smallest relative size kept in the atlas (a box is never degenerate).
MIN_RELATIVE_SIZE = 1e-3
#: Score of the atlas prior's box of a class: this factor x the class frequency (an IoU-like score: the
#: trained detector's scores estimate the IoU of their box; per class the prior's score is a constant,
#: so only its order across classes, never its AP, depends on the factor).
PRIOR_SCORE_FACTOR = 0.5


@dataclass
class OrganAtlas:
    """Per class (index c - 1 for class c): `median`, `low`, `high` `[C, 6]` relative centre boxes,
    `frequency` `[C]`, `cases` `[C]` (how many cases contain the class), `num_cases`, and `source`."""

    median: np.ndarray
    low: np.ndarray
    high: np.ndarray
    frequency: np.ndarray
    cases: np.ndarray
    num_cases: int
    source: str

    @property
    def num_classes(self) -> int:
        return int(self.median.shape[0])

    def to_json(self) -> dict[str, Any]:
        def rounded(values: np.ndarray) -> list:
            return np.round(np.asarray(values, dtype=np.float64), 6).tolist()

        return {"median": rounded(self.median), "low": rounded(self.low), "high": rounded(self.high),
                "frequency": rounded(self.frequency), "cases": [int(v) for v in self.cases],
                "num_cases": int(self.num_cases), "source": self.source,
                "convention": "per class c (row c - 1): (cz, cy, cx, d, h, w) relative to the preprocessed body crop; "
                              f"low / high = percentiles {list(RANGE_PERCENTILES)}"}

    @classmethod
    def from_json(cls, content: dict[str, Any]) -> "OrganAtlas":
        return cls(
            median=np.asarray(content["median"], dtype=np.float64).reshape(-1, 6),
            low=np.asarray(content["low"], dtype=np.float64).reshape(-1, 6),
            high=np.asarray(content["high"], dtype=np.float64).reshape(-1, 6),
            frequency=np.asarray(content["frequency"], dtype=np.float64).reshape(-1),
            cases=np.asarray(content.get("cases", [0] * len(content["frequency"])), dtype=np.int64).reshape(-1),
            num_cases=int(content.get("num_cases", 0)),
            source=str(content.get("source", "")),
        )

    @classmethod
    def uninformed(cls, num_classes: int, source: str = "no training cases: every class spans the body") -> "OrganAtlas":
        """The atlas of no data: every class is the whole body, frequency 0.5."""
        box = np.tile(np.asarray(UNSEEN_BOX, dtype=np.float64), (num_classes, 1))
        return cls(box.copy(), box.copy(), box.copy(), np.full(num_classes, 0.5), np.zeros(num_classes, np.int64), 0, source)


def relative_boxes(corner_boxes: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """Corner boxes in preprocessed voxels -> centre boxes relative to the case's shape (the body crop)."""
    return normalise_corners(np.asarray(corner_boxes, dtype=np.float64).reshape(-1, 6), np.asarray(shape, dtype=np.float64))


def atlas_from_cases(
    boxes: Sequence[np.ndarray], classes: Sequence[np.ndarray], shapes: Sequence[Sequence[int]], num_classes: int,
    source: str,
) -> OrganAtlas:
    """The atlas of cases given as corner boxes (preprocessed voxels), class indices 1..C and shapes."""
    per_class: list[list[np.ndarray]] = [[] for _ in range(num_classes)]
    for case_boxes, case_classes, shape in zip(boxes, classes, shapes):
        relative = relative_boxes(case_boxes, shape)
        seen = set()
        for box, label in zip(relative, np.asarray(case_classes).reshape(-1)):
            index = int(label) - 1
            if 0 <= index < num_classes and index not in seen:  # a case counts once per class
                seen.add(index)
                per_class[index].append(box)
    atlas = OrganAtlas.uninformed(num_classes, source)
    atlas.num_cases = len(boxes)
    for index, found in enumerate(per_class):
        atlas.cases[index] = len(found)
        atlas.frequency[index] = len(found) / max(1, len(boxes))
        if not found:
            continue
        values = np.stack(found)
        atlas.median[index] = np.median(values, axis=0)
        atlas.low[index], atlas.high[index] = np.percentile(values, RANGE_PERCENTILES, axis=0)
    for array in (atlas.median, atlas.low, atlas.high):
        array[:, 3:] = np.maximum(array[:, 3:], MIN_RELATIVE_SIZE)
    return atlas


def atlas_from_preprocessed(folder: Path, case_ids: Sequence[str], num_classes: int, source: str | None = None) -> OrganAtlas:
    """The atlas of preprocessed cases `<folder>/<case>.npz` (boxes, classes) + `<case>.json` (shape)."""
    from autodetr.preprocessing.case_arrays import load_case_boxes

    boxes, classes, shapes = [], [], []
    for case_id in case_ids:
        case_boxes, case_classes = load_case_boxes(Path(folder) / f"{case_id}.npz")
        boxes.append(case_boxes)
        classes.append(case_classes)
        shapes.append(read_json(Path(folder) / f"{case_id}.json")["restore"]["preprocessed_shape"])
    return atlas_from_cases(boxes, classes, shapes, num_classes, source or f"{len(case_ids)} preprocessed training cases")


def prior_scores(frequency: np.ndarray) -> np.ndarray:
    """The atlas prior's score per class: `PRIOR_SCORE_FACTOR x frequency`, kept in [0.005, 0.5]."""
    return np.clip(PRIOR_SCORE_FACTOR * np.asarray(frequency, dtype=np.float64), 0.005, 0.5)


def prior_detections(atlas: OrganAtlas, shape: Sequence[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The atlas prior on one case of preprocessed `shape`: (corner boxes in preprocessed voxels [C, 6],
    scores `prior_scores` [C], class indices 1..C [C]). Classes no training case contains are left out."""
    keep = atlas.cases > 0
    corners = denormalise_centre(atlas.median[keep], np.asarray(shape, dtype=np.float64))
    labels = np.nonzero(keep)[0].astype(np.int64) + 1
    return corners, prior_scores(atlas.frequency[keep]), labels


def prior_detections_in_original(atlas: OrganAtlas, restore: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`prior_detections` of one case mapped back through its body crop and resampling (`restore`, the
    case's `RestoreInfo`): (corner boxes in original voxels [C, 6], clipped to the image, scores, class
    indices 1..C), exactly as the trained detector's boxes are mapped back."""
    corners, scores, labels = prior_detections(atlas, restore.preprocessed_shape)
    return restore.boxes_in_original(corners), scores, labels
