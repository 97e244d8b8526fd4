"""Class-anchored queries: the decoder's queries come in class groups whose reference boxes start at the
organ atlas (`autodetr.planners.atlas`).

The idea is Focused Decoder's (Wittmann et al., 2023: queries tied to an organ's atlas region), combined
with Organ-DETR's dense query matching (Eq. 5) inside each group:

- Layout: query k serves class `k mod C` + 1 (interleaved, the same rule as D-RMM's class groups), so
  group c holds queries `c - 1, c - 1 + C, ...`, rho of them; slot j = k // C.
- Anchors (relative to the case's valid, i.e. unpadded, region): slot 0 is the class's median box;
  slots 1..rho-1 spread over its observed range (5th..95th percentile of each centre and size
  coordinate) on a Halton sequence (scipy.stats.qmc), so each group covers where its organ occurs.
- A case is padded at the high end to the input size, so an anchor is placed in each case's valid
  region (Deformable DETR's valid ratios, generalised to a valid box that augmentation may move):
  `box = valid_low + anchor * valid_size` per centre coordinate, `size * valid_size` per size.
- Mask-enhanced anchors (the idea of Mask DINO's mask-enhanced anchor box initialisation, Li et al.,
  CVPR 2023): when the segmentation head finds class c in a case, the group's slot-0 query starts at the
  box of that mask instead of the atlas median: `mask_extent_boxes` on the fine segmentation head's grid
  (`autodetr.model.fine_segmentation`, plans from the planner), or `mask_boxes` (soft moments) on the
  finest MSA level for plans without a fine head (detached, like
  the proposals of two-stage Deformable DETR). Dense segmentation learns far faster than box regression
  from queries, so the decoder starts near the organ and refines. Where the head finds nothing (always
  so for the untrained model: no class probability reaches `MASK_THRESHOLD`), the atlas anchor stays.
"""
from __future__ import annotations

import numpy as np
import torch
from scipy.stats import qmc

from autodetr.planners.atlas import OrganAtlas

#: Offset of the Halton sequence (its first point is the zero corner).
HALTON_SKIP = 1


def query_classes(num_queries: int, num_classes: int) -> torch.Tensor:
    """`[N]` int64 class index (1..C) of each query: `k mod C + 1`."""
    return torch.arange(num_queries, dtype=torch.int64) % max(1, num_classes) + 1


def slot_points(num_queries: int, num_classes: int) -> np.ndarray:
    """`[rho - 1, 6]` points in [0, 1)^6 of slots 1..rho-1 of a class group: the Halton sequence (module docstring)."""
    slots = int(np.ceil(num_queries / max(1, num_classes)))
    if slots <= 1:
        return np.zeros((0, 6))
    return qmc.Halton(d=6, scramble=False).random(slots - 1 + HALTON_SKIP)[HALTON_SKIP:]


def anchor_boxes(atlas: OrganAtlas, num_queries: int) -> torch.Tensor:
    """`[N, 6]` relative centre boxes of the class-anchored queries (module docstring)."""
    num_classes = atlas.num_classes
    spread = slot_points(num_queries, num_classes)
    anchors = np.empty((num_queries, 6), dtype=np.float64)
    for k in range(num_queries):
        index, slot = k % num_classes, k // num_classes
        if slot == 0:
            anchors[k] = atlas.median[index]
        else:
            anchors[k] = atlas.low[index] + spread[slot - 1] * (atlas.high[index] - atlas.low[index])
    anchors[:, 3:] = np.maximum(anchors[:, 3:], 1e-3)
    anchors[:, :3] = np.clip(anchors[:, :3], 1e-3, 1 - 1e-3)
    return torch.as_tensor(anchors, dtype=torch.float32)


def mask_spread_offsets(num_queries: int, num_classes: int, spread: float) -> torch.Tensor:
    """`[N, 6]` offsets of the mask-spread anchors (module docstring): 0 for slot 0 (the mask box itself),
    `spread * u` for slot j >= 1 with `u` in [-1, 1]^6 the Halton point of the atlas spread's slot j."""
    points = slot_points(num_queries, num_classes)
    table = np.concatenate([np.zeros((1, 6)), (2.0 * points - 1.0) * float(spread)])
    return torch.as_tensor(table[np.arange(num_queries) // max(1, num_classes)], dtype=torch.float32)


def spread_boxes(boxes: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """Centre boxes `[B, N, 6]` moved by `offsets [N, 6]`: centre + offset * size, size * (1 + offset)."""
    centre, size = boxes[..., :3], boxes[..., 3:]
    moved = torch.cat([centre + offsets[:, :3] * size, size * (1 + offsets[:, 3:])], dim=-1)
    return moved.clamp(1e-4, 1 - 1e-4)


def full_valid_boxes(batch: int, device: torch.device | None = None) -> torch.Tensor:
    """`[B, 6]` valid boxes covering the whole input (no padding)."""
    return torch.tensor([[0.0, 0.0, 0.0, 1.0, 1.0, 1.0]], device=device).expand(batch, 6)


def valid_boxes_from_shapes(shapes: "np.ndarray | list", input_size: list[int], device: torch.device | None = None) -> torch.Tensor:
    """`[B, 6]` normalised corner boxes of unpadded shapes `[B, 3]` inside the padded input."""
    shapes_t = torch.as_tensor(np.asarray(shapes, dtype=np.float32).reshape(-1, 3), device=device)
    size = torch.as_tensor([float(s) for s in input_size], device=device)
    return torch.cat([torch.zeros_like(shapes_t), shapes_t / size], dim=-1)


def place_anchors(anchors: torch.Tensor, valid_boxes: torch.Tensor) -> torch.Tensor:
    """Relative anchors `[N, 6]` placed in each sample's valid box `[B, 6]` (normalised corners) ->
    `[B, N, 6]` normalised centre boxes of the network input."""
    low, high = valid_boxes[:, None, :3], valid_boxes[:, None, 3:]
    extent = (high - low).clamp(min=1e-6)
    centre = low + anchors[None, :, :3] * extent
    size = anchors[None, :, 3:] * extent
    return torch.cat([centre, size], dim=-1).clamp(1e-4, 1 - 1e-4)


#: Class probability above which a voxel counts for a mask box.
MASK_THRESHOLD = 0.5
#: Least soft voxel mass (sum of probability - threshold) for a class to count as found.
MASK_MIN_MASS = 0.25


def mask_boxes(seg_logits: torch.Tensor, stride: "tuple[int, int, int]", input_shape: "tuple[int, int, int]") -> tuple[torch.Tensor, torch.Tensor]:
    """Boxes of the soft masks of one segmentation level: `seg_logits` [B, C + 1, d, h, w] ->
    (`boxes` [B, C, 6] normalised centre boxes of the input, `found` [B, C] bool), no gradient.

    Weights `w = relu(p_c - MASK_THRESHOLD)`; per axis the box centre is the weighted mean of the voxel
    centres and the size `sqrt(12 var + s^2)` (exact for a solid block of voxels of width s)."""
    with torch.no_grad():
        probabilities = seg_logits.detach().float().softmax(1)[:, 1:]
        weights = (probabilities - MASK_THRESHOLD).clamp(min=0)
        mass = weights.flatten(2).sum(-1)  # [B, C]
        centres, sizes = [], []
        for axis in range(3):
            other = tuple(2 + a for a in range(3) if a != axis)
            marginal = weights.sum(other)  # [B, C, n]
            step = float(stride[axis]) / float(input_shape[axis])
            coordinate = (torch.arange(marginal.shape[-1], device=marginal.device, dtype=marginal.dtype) + 0.5) * step
            mean = (marginal * coordinate).sum(-1) / mass.clamp(min=1e-6)
            variance = ((marginal * coordinate ** 2).sum(-1) / mass.clamp(min=1e-6) - mean ** 2).clamp(min=0)
            centres.append(mean)
            sizes.append(torch.sqrt(12 * variance + step ** 2))
        boxes = torch.cat([torch.stack(centres, -1), torch.stack(sizes, -1)], -1).clamp(1e-4, 1 - 1e-4)
        return boxes, mass > MASK_MIN_MASS


def _edge(profile_max: torch.Tensor, inner: torch.Tensor, outer: torch.Tensor, step: float) -> torch.Tensor:
    """Where the slice-maximum probability crosses `MASK_THRESHOLD` between the fine slices `outer` (below it,
    or -1 / n past the grid) and `inner` (above it), in input voxels: linear interpolation between the two
    slice centres, the grid's border when the mask touches it."""
    length = profile_max.shape[-1]
    inside_grid = (outer >= 0) & (outer < length)
    p_inner = profile_max.gather(-1, inner[..., None])[..., 0]
    p_outer = profile_max.gather(-1, outer.clamp(0, length - 1)[..., None])[..., 0]
    fraction = ((MASK_THRESHOLD - p_outer) / (p_inner - p_outer).clamp(min=1e-6)).clamp(0, 1)
    crossing = (outer.float() + 0.5 + fraction * (inner - outer).float()) * step
    border = torch.where(outer < 0, torch.zeros_like(crossing), torch.full_like(crossing, length * step))
    return torch.where(inside_grid, crossing, border)


def mask_extent_boxes(seg_logits: torch.Tensor, stride: "tuple[int, int, int]", input_shape: "tuple[int, int, int]") -> tuple[torch.Tensor, torch.Tensor]:
    """Boxes of the masks of a fine segmentation grid: `seg_logits` [B, C + 1, d, h, w] at `stride` ->
    (`boxes` [B, C, 6] normalised centre boxes of the input, `found` [B, C] bool), no gradient.

    A voxel belongs to class c where its probability exceeds `MASK_THRESHOLD`. Per axis, the box spans the
    unbroken run of mask-holding slices around the slice with most mask voxels: the bounding box of the
    mask, as boxes are taken from a segmentation network's output (nnU-Net, TotalSegmentator), except that
    stray voxels separated from the organ by an empty slice are left out. Each edge is placed between the
    last slice in and the first slice out where the slice's highest probability crosses the threshold
    (linear interpolation between slice centres), so a box on a grid of stride s is not quantised to s.
    A class counts as found when its mask covers at least one voxel of the grid."""
    with torch.no_grad():
        probabilities = seg_logits.detach().float().softmax(1)[:, 1:]  # [B, C, d, h, w]
        masks = probabilities > MASK_THRESHOLD
        found = masks.flatten(2).any(-1)
        lows, highs = [], []
        for axis in range(3):
            other = tuple(2 + a for a in range(3) if a != axis)
            counts = masks.sum(other)  # [B, C, n]: mask voxels per slice
            profile_max = probabilities.amax(other)
            length = counts.shape[-1]
            index = torch.arange(length, device=counts.device)
            peak = counts.argmax(-1, keepdim=True)
            empty = counts == 0
            first = torch.where(empty & (index < peak), index, -1).amax(-1) + 1  # first slice of the run
            last = torch.where(empty & (index > peak), index, length).amin(-1) - 1
            step = float(stride[axis])
            lows.append(_edge(profile_max, first, first - 1, step) / float(input_shape[axis]))
            highs.append(_edge(profile_max, last, last + 1, step) / float(input_shape[axis]))
        low, high = torch.stack(lows, -1), torch.stack(highs, -1).clamp(max=1.0)
        high = torch.maximum(high, low)
        boxes = torch.cat([(low + high) / 2, high - low], -1).clamp(1e-4, 1 - 1e-4)
        return boxes, found
