"""Canonical orientation: every scan is read into the same anatomical array order before anything else.

A CT's array order is a storage choice: DICOM series read by ITK usually come with the identity direction
(LPS: array x grows towards the patient's left, y towards posterior, z towards superior), while NIfTI
files written from RAS tools often carry a direction of diag(-1, -1, 1), so the same anatomy sits
mirrored in x and y of the array; sagittal or coronal acquisitions permute the axes. A detector whose
class anchors and features are tied to array positions learns one of those orders and finds the organs
on the wrong side of every other one. As TotalSegmentator (which reorients to a canonical orientation
before its network) and `SimpleITK.DICOMOrient` do, preprocessing therefore brings each array to the
canonical LPS order (array axes (z, y, x) along world (S, P, L)) with a signed axis permutation: the
index axis closest to each world axis, flipped where it points the other way. This is exact (no
resampling); an oblique scan takes the nearest permutation, its residual rotation is left as it is.

`Reorientation` maps arrays, shapes, spacings and half-open corner boxes between the original array
and the canonical one; `RestoreInfo` stores it per case, so boxes go back to the original voxels.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy.optimize import linear_sum_assignment

IDENTITY_DIRECTION = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
#: The plans' `orientation` of the canonical order (new plans); "stored" keeps the stored order.
CANONICAL = "LPS"


@dataclass(frozen=True)
class Reorientation:
    """Canonical array axis k (numpy order z, y, x) holds original array axis `source_axes[k]`, reversed
    where `flipped[k]`."""

    source_axes: tuple[int, int, int] = (0, 1, 2)
    flipped: tuple[bool, bool, bool] = (False, False, False)

    @classmethod
    def from_direction(cls, direction: Sequence[float] | None) -> "Reorientation":
        """The signed permutation closest to SimpleITK's row-major `direction` (identity if None).

        Column j of the matrix is the world direction (x, y, z) of index axis j (x, y, z); the assignment
        of index axes to world axes maximises the summed |cosine|, so every axis is used once."""
        if direction is None or len(direction) != 9:
            return cls()
        matrix = np.asarray(direction, dtype=np.float64).reshape(3, 3)
        if not np.all(np.isfinite(matrix)):
            return cls()
        world_axes, index_axes = linear_sum_assignment(-np.abs(matrix))
        source, flipped = [0, 0, 0], [False, False, False]
        for world, index in zip(world_axes, index_axes):
            canonical = 2 - int(world)  # world x -> array axis 2, z -> array axis 0
            source[canonical] = 2 - int(index)
            flipped[canonical] = bool(matrix[world, index] < 0)
        return cls(tuple(source), tuple(flipped))

    @property
    def is_identity(self) -> bool:
        return self.source_axes == (0, 1, 2) and not any(self.flipped)

    def array(self, array: np.ndarray) -> np.ndarray:
        """`array [..., z, y, x]` in the original order -> the canonical order (a view)."""
        lead = array.ndim - 3
        out = array.transpose(list(range(lead)) + [lead + a for a in self.source_axes])
        flip_axes = tuple(lead + k for k in range(3) if self.flipped[k])
        return np.flip(out, flip_axes) if flip_axes else out

    def shape(self, shape_zyx: Sequence[int]) -> tuple[int, int, int]:
        """Original array shape -> canonical array shape."""
        return tuple(int(shape_zyx[a]) for a in self.source_axes)

    def spacing(self, spacing_zyx: Sequence[float]) -> np.ndarray:
        """Original spacing (array order) -> canonical spacing (array order)."""
        return np.asarray([float(spacing_zyx[a]) for a in self.source_axes], dtype=np.float64)

    def boxes(self, boxes: np.ndarray, original_shape_zyx: Sequence[int]) -> np.ndarray:
        """Half-open corner boxes `[N, 6]` in original voxels -> canonical voxels (a flipped axis of size n
        maps [lo, hi) to [n - hi, n - lo))."""
        boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 6)
        order = list(self.source_axes) + [a + 3 for a in self.source_axes]
        out = boxes[:, order].copy()
        size = self.shape(original_shape_zyx)
        for k in range(3):
            if self.flipped[k]:
                out[:, [k, k + 3]] = size[k] - out[:, [k + 3, k]]
        return out

    def boxes_back(self, boxes: np.ndarray, original_shape_zyx: Sequence[int]) -> np.ndarray:
        """Canonical corner boxes -> original voxels (inverse of `boxes`)."""
        boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 6).copy()
        size = self.shape(original_shape_zyx)
        for k in range(3):
            if self.flipped[k]:
                boxes[:, [k, k + 3]] = size[k] - boxes[:, [k + 3, k]]
        backward = [self.source_axes.index(a) for a in range(3)]
        return boxes[:, backward + [b + 3 for b in backward]]

    def direction(self, direction: Sequence[float]) -> tuple[float, ...]:
        """The direction matrix of the canonical array (row-major, SimpleITK order): close to identity."""
        matrix = np.asarray(direction, dtype=np.float64).reshape(3, 3)
        columns = []
        for index_axis in range(3):  # canonical index axis x, y, z = array axis 2, 1, 0
            canonical = 2 - index_axis
            column = matrix[:, 2 - self.source_axes[canonical]]
            columns.append(-column if self.flipped[canonical] else column)
        return tuple(float(v) for v in np.stack(columns, axis=1).ravel())

    def to_json(self) -> dict:
        return {"source_axes": list(self.source_axes), "flipped": list(self.flipped)}

    @classmethod
    def planned(cls, orientation: str, direction: Sequence[float] | None) -> "Reorientation":
        """What a plan's `orientation` asks for a scan of `direction`: the canonical order for "LPS", the
        stored order (identity) for "stored" (plans made before reorientation)."""
        return cls.from_direction(direction) if orientation == CANONICAL else cls()

    @classmethod
    def from_json(cls, content: dict | None) -> "Reorientation":
        """Restore JSONs written before reorientation have none: their arrays were kept as stored."""
        if not content:
            return cls()
        return cls(tuple(int(a) for a in content["source_axes"]), tuple(bool(f) for f in content["flipped"]))
