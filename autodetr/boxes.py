"""3D boxes: the one convention of the code base, in numpy and torch.

Convention (everywhere, unless a name says otherwise):
- Corner boxes are `(z1, y1, x1, z2, y2, x2)` in array-axis order, in voxel units, with half-open voxel
  edges: voxel i spans [i, i + 1), so a mask that occupies voxels 3..5 along z has z1 = 3, z2 = 6.
- The network predicts normalised centre boxes `(cz, cy, cx, d, h, w)` in [0, 1], relative to the
  network input grid (edge 0 to edge `input_size`), so `cz = (z1 + z2) / 2 / D`, `d = (z2 - z1) / D`.
- World coordinates are the image's own physical space (SimpleITK origin, spacing, direction).
- `torch.nn.functional.grid_sample` wants (x, y, z) in its last dimension: the single flip happens in
  `autodetr.model.sampling.to_grid_sample_coordinates`.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy import ndimage


def boxes_from_label_map(label_map: np.ndarray, values: list[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Bounding box of every label value present (semantic form: one box per value).

    Returns `(boxes [G, 6] float64 corner boxes, values [G] int64)`, sorted by value. `values`
    restricts the search to those label values (others are ignored).
    """
    label_map = np.asarray(label_map)
    if label_map.ndim != 3:
        raise ValueError(f"label map must be 3D, got shape {label_map.shape}")
    present = np.unique(label_map)
    present = present[present != 0]
    if values is not None:
        present = present[np.isin(present, np.asarray(values))]
    if present.size == 0:
        return np.zeros((0, 6), dtype=np.float64), np.zeros((0,), dtype=np.int64)
    max_value = int(present.max())
    slices = ndimage.find_objects(np.where(np.isin(label_map, present), label_map, 0).astype(np.int64), max_label=max_value)
    boxes, kept = [], []
    for value in present:
        found = slices[int(value) - 1]
        if found is None:
            continue
        boxes.append([found[0].start, found[1].start, found[2].start, found[0].stop, found[1].stop, found[2].stop])
        kept.append(int(value))
    return np.asarray(boxes, dtype=np.float64), np.asarray(kept, dtype=np.int64)


def corners_to_centre(boxes: np.ndarray) -> np.ndarray:
    """(z1, y1, x1, z2, y2, x2) -> (cz, cy, cx, d, h, w), any leading shape."""
    boxes = np.asarray(boxes, dtype=np.float64)
    low, high = boxes[..., :3], boxes[..., 3:]
    return np.concatenate([(low + high) / 2, high - low], axis=-1)


def centre_to_corners(boxes: np.ndarray) -> np.ndarray:
    """(cz, cy, cx, d, h, w) -> (z1, y1, x1, z2, y2, x2), any leading shape."""
    boxes = np.asarray(boxes, dtype=np.float64)
    centre, size = boxes[..., :3], boxes[..., 3:]
    return np.concatenate([centre - size / 2, centre + size / 2], axis=-1)


def normalise_corners(boxes: np.ndarray, grid_shape: tuple[int, int, int] | np.ndarray) -> np.ndarray:
    """Voxel corner boxes -> normalised centre boxes relative to `grid_shape` (the network input size)."""
    shape = np.asarray(grid_shape, dtype=np.float64)
    return corners_to_centre(boxes) / np.concatenate([shape, shape])


def denormalise_centre(boxes: np.ndarray, grid_shape: tuple[int, int, int] | np.ndarray) -> np.ndarray:
    """Normalised centre boxes -> voxel corner boxes on a grid of `grid_shape`."""
    shape = np.asarray(grid_shape, dtype=np.float64)
    return centre_to_corners(np.asarray(boxes, dtype=np.float64) * np.concatenate([shape, shape]))


def box_volume(boxes: np.ndarray) -> np.ndarray:
    """Volume of corner boxes (zero for empty or inverted boxes)."""
    boxes = np.asarray(boxes, dtype=np.float64)
    return np.prod(np.clip(boxes[..., 3:] - boxes[..., :3], 0, None), axis=-1)


def mirror_boxes(boxes: np.ndarray, axes: Sequence[int], shape: Sequence[int]) -> np.ndarray:
    """Corner boxes mirrored along `axes` of a grid of `shape` (edge 0 <-> edge shape)."""
    boxes = np.array(boxes, dtype=np.float64, copy=True).reshape(-1, 6)
    for axis in axes:
        low, high = boxes[:, axis].copy(), boxes[:, axis + 3].copy()
        boxes[:, axis], boxes[:, axis + 3] = shape[axis] - high, shape[axis] - low
    return boxes


def clip_boxes(boxes: np.ndarray, grid_shape: tuple[int, int, int] | np.ndarray) -> np.ndarray:
    """Clip corner boxes to [0, shape] along each axis."""
    boxes = np.array(boxes, dtype=np.float64, copy=True)
    shape = np.asarray(grid_shape, dtype=np.float64)
    boxes[..., :3] = np.clip(boxes[..., :3], 0, shape)
    boxes[..., 3:] = np.clip(boxes[..., 3:], 0, shape)
    return boxes


def _pairwise_intersection_union(boxes_a: np.ndarray, boxes_b: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]:
    """Intersection and union volumes of every pair, plus the float64 inputs and the dimension."""
    boxes_a = np.asarray(boxes_a, dtype=np.float64)
    boxes_b = np.asarray(boxes_b, dtype=np.float64)
    dims = boxes_a.shape[-1] // 2
    low = np.maximum(boxes_a[:, None, :dims], boxes_b[None, :, :dims])
    high = np.minimum(boxes_a[:, None, dims:], boxes_b[None, :, dims:])
    intersection = np.prod(np.clip(high - low, 0, None), axis=-1)
    volume_a = np.prod(np.clip(boxes_a[:, dims:] - boxes_a[:, :dims], 0, None), axis=-1)
    volume_b = np.prod(np.clip(boxes_b[:, dims:] - boxes_b[:, :dims], 0, None), axis=-1)
    union = volume_a[:, None] + volume_b[None, :] - intersection
    return intersection, union, boxes_a, boxes_b, dims


def box_iou(boxes_a: np.ndarray, boxes_b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of corner boxes, [A, 6] x [B, 6] -> [A, B] (2D boxes (y1, x1, y2, x2) work too)."""
    intersection, union, _, _, _ = _pairwise_intersection_union(boxes_a, boxes_b)
    return np.where(union > 0, intersection / np.where(union > 0, union, 1.0), 0.0)


def generalized_box_iou(boxes_a: np.ndarray, boxes_b: np.ndarray) -> np.ndarray:
    """Pairwise generalised IoU (Rezatofighi et al. 2019) of corner boxes, [A, 6] x [B, 6] -> [A, B].

    GIoU = IoU - (|E| - |U|) / |E| with E the smallest box enclosing both; in [-1, 1]. Works for 2D
    boxes `(y1, x1, y2, x2)` too. A pair whose enclosing box has zero volume gets its IoU (0).
    """
    intersection, union, boxes_a, boxes_b, dims = _pairwise_intersection_union(boxes_a, boxes_b)
    iou = np.where(union > 0, intersection / np.where(union > 0, union, 1.0), 0.0)
    enclosing_low = np.minimum(boxes_a[:, None, :dims], boxes_b[None, :, :dims])
    enclosing_high = np.maximum(boxes_a[:, None, dims:], boxes_b[None, :, dims:])
    enclosing = np.prod(np.clip(enclosing_high - enclosing_low, 0, None), axis=-1)
    penalty = np.where(enclosing > 0, (enclosing - union) / np.where(enclosing > 0, enclosing, 1.0), 0.0)
    return iou - penalty


def box_voxel_ranges(box: np.ndarray, shape: tuple[int, int, int]) -> list[slice]:
    """Voxels whose centres lie in the half-open box (at least the voxel holding the box centre)."""
    ranges = []
    for axis in range(3):
        low, high = float(box[axis]), float(box[axis + 3])
        start = int(np.ceil(low - 0.5))
        stop = int(np.ceil(high - 0.5))
        if stop <= start:
            start = int(np.floor((low + high) / 2))
            stop = start + 1
        start, stop = max(0, start), min(int(shape[axis]), stop)
        ranges.append(slice(start, max(start, stop)))
    return ranges


def box_mask_array(boxes: np.ndarray, label_values: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """Filled boxes drawn as their label values; larger boxes first, so a box inside another stays visible."""
    label_values = np.asarray(label_values, dtype=np.int64)
    dtype = np.uint8 if (label_values.max(initial=0) <= 255) else np.uint16
    mask = np.zeros(tuple(int(s) for s in shape), dtype=dtype)
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 6)
    volumes = np.prod(np.clip(boxes[:, 3:] - boxes[:, :3], 0, None), axis=1)
    for i in np.argsort(-volumes, kind="mergesort"):
        mask[tuple(box_voxel_ranges(boxes[i], shape))] = label_values[i]
    return mask
