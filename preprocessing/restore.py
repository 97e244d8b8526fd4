"""Mapping boxes between preprocessed voxels, original voxels and world millimetres.

Preprocessing is, per axis, an affine map of voxel edges: reorient to the canonical order (a signed axis
permutation, `autodetr.preprocessing.orientation`), transpose, then subtract the crop's lower bound, then
scale by (preprocessed size / cropped size) (nnU-Net's resampling maps the volume's edges onto each other). `RestoreInfo` holds what is needed to invert it, and is stored as `<case>.json`.

World coordinates: a half-open voxel box [i1, i2) spans continuous indices i1 - 0.5 .. i2 - 0.5 (a
voxel's centre is its integer index in ITK), mapped through origin, spacing and direction.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import numpy as np

from autodetr.preprocessing.orientation import Reorientation
from autodetr.preprocessing.raw_dataset import Geometry


@dataclass
class RestoreInfo:
    geometry: Geometry
    transpose_forward: list[int]
    crop_box: list[list[int]]  # in transposed original voxels, [lower, upper) per axis
    cropped_shape: list[int]
    preprocessed_shape: list[int]
    spacing: list[float]  # effective spacing of the preprocessed grid (transposed axis order)
    reorientation: Reorientation = field(default_factory=Reorientation)  # original -> canonical array order

    @property
    def _scale(self) -> np.ndarray:
        return np.asarray(self.preprocessed_shape, np.float64) / np.asarray(self.cropped_shape, np.float64)

    @property
    def _offset(self) -> np.ndarray:
        return np.asarray([lo for lo, _ in self.crop_box], np.float64)

    def original_to_preprocessed(self, boxes: np.ndarray) -> np.ndarray:
        """Corner boxes in original voxels (z, y, x order) -> preprocessed voxels."""
        boxes = self.reorientation.boxes(boxes, self.geometry.shape_zyx)
        order = list(self.transpose_forward) + [a + 3 for a in self.transpose_forward]
        transposed = boxes[:, order]
        return (transposed - np.tile(self._offset, 2)) * np.tile(self._scale, 2)

    def preprocessed_to_original(self, boxes: np.ndarray) -> np.ndarray:
        """Corner boxes in preprocessed voxels -> original voxels (z, y, x order of the original array)."""
        boxes = np.asarray(boxes, np.float64).reshape(-1, 6)
        transposed = boxes / np.tile(self._scale, 2) + np.tile(self._offset, 2)
        backward = [self.transpose_forward.index(a) for a in range(3)]
        return self.reorientation.boxes_back(transposed[:, backward + [b + 3 for b in backward]], self.geometry.shape_zyx)

    @property
    def oriented_direction(self) -> tuple[float, ...]:
        """Direction matrix of the reoriented array (close to identity unless an old case was not reoriented)."""
        return self.reorientation.direction(self.geometry.direction)

    def boxes_in_original(self, boxes: np.ndarray) -> np.ndarray:
        """Corner boxes in preprocessed voxels -> original voxels, clipped to the original image: how every
        predicted box (network, fold ensemble, atlas prior) is mapped back. `[0, 6]` for no boxes."""
        from autodetr.boxes import clip_boxes

        return clip_boxes(self.preprocessed_to_original(boxes), self.geometry.shape_zyx)

    def to_json(self) -> dict:
        return {
            "geometry": self.geometry.to_json(),
            "transpose_forward": list(self.transpose_forward),
            "crop_box": self.crop_box,
            "cropped_shape": list(self.cropped_shape),
            "preprocessed_shape": list(self.preprocessed_shape),
            "spacing": list(self.spacing),
            "reorientation": self.reorientation.to_json(),
        }

    @classmethod
    def from_json(cls, content: dict) -> "RestoreInfo":
        return cls(
            Geometry.from_json(content["geometry"]),
            list(content["transpose_forward"]),
            [list(b) for b in content["crop_box"]],
            list(content["cropped_shape"]),
            list(content["preprocessed_shape"]),
            list(content["spacing"]),
            Reorientation.from_json(content.get("reorientation")),
        )


def continuous_index_to_world(index_zyx: np.ndarray, geometry: Geometry) -> np.ndarray:
    """Continuous ITK indices given in (z, y, x) order -> world points (x, y, z) in mm."""
    index_xyz = np.asarray(index_zyx, np.float64)[..., ::-1]
    direction = np.asarray(geometry.direction, np.float64).reshape(3, 3)
    scaled = index_xyz * np.asarray(geometry.spacing_xyz, np.float64)
    return np.asarray(geometry.origin_xyz, np.float64) + scaled @ direction.T


def box_corners_world(box_zyx: np.ndarray, geometry: Geometry) -> np.ndarray:
    """The 8 world corners (x, y, z) mm of a half-open voxel corner box (z1, y1, x1, z2, y2, x2)."""
    box = np.asarray(box_zyx, np.float64)
    low, high = box[:3] - 0.5, box[3:] - 0.5
    corners = np.asarray([[(low, high)[c][a] for a, c in enumerate(choice)] for choice in itertools.product((0, 1), repeat=3)])
    return continuous_index_to_world(corners, geometry)


def box_world_summary(box_zyx: np.ndarray, geometry: Geometry) -> dict:
    """World corners plus their axis-aligned min and max (mm, x y z), as written in predictions."""
    corners = box_corners_world(box_zyx, geometry)
    return {"corners": corners.tolist(), "min": corners.min(0).tolist(), "max": corners.max(0).tolist()}
