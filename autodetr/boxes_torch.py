"""3D box utilities in torch (differentiable), same convention as `autodetr.boxes`.

Corner boxes are `(z1, y1, x1, z2, y2, x2)`; centre boxes `(cz, cy, cx, d, h, w)`. The functions work
in any consistent unit (voxels or normalised). `*_pairwise` functions return `[A, B]` matrices, the
`elementwise_*` ones compare matched pairs `[K, 6]` x `[K, 6]` -> `[K]` (for the loss).
"""
from __future__ import annotations

import torch

_EPS = 1e-7


def centre_to_corners(boxes: torch.Tensor) -> torch.Tensor:
    """(cz, cy, cx, d, h, w) -> (z1, y1, x1, z2, y2, x2), any leading shape."""
    centre, size = boxes[..., :3], boxes[..., 3:]
    return torch.cat([centre - size / 2, centre + size / 2], dim=-1)


def corners_to_centre(boxes: torch.Tensor) -> torch.Tensor:
    """(z1, y1, x1, z2, y2, x2) -> (cz, cy, cx, d, h, w), any leading shape."""
    low, high = boxes[..., :3], boxes[..., 3:]
    return torch.cat([(low + high) / 2, high - low], dim=-1)


def box_volume(boxes: torch.Tensor) -> torch.Tensor:
    """Volume of corner boxes, zero for empty or inverted boxes; any leading shape."""
    return (boxes[..., 3:] - boxes[..., :3]).clamp(min=0).prod(dim=-1)


def clip_boxes(boxes: torch.Tensor, upper: float | torch.Tensor | tuple[float, float, float] = 1.0) -> torch.Tensor:
    """Clip corner boxes to [0, upper] per axis (`upper` = 1 for normalised boxes, the grid shape for voxels)."""
    upper_t = torch.as_tensor(upper, dtype=boxes.dtype, device=boxes.device)
    if upper_t.ndim == 0:
        upper_t = upper_t.expand(3)
    upper6 = torch.cat([upper_t, upper_t])
    return torch.minimum(boxes.clamp(min=0), upper6)


def _pair_terms(boxes_a: torch.Tensor, boxes_b: torch.Tensor, pairwise: bool):
    if pairwise:
        boxes_a, boxes_b = boxes_a[:, None, :], boxes_b[None, :, :]
    low = torch.maximum(boxes_a[..., :3], boxes_b[..., :3])
    high = torch.minimum(boxes_a[..., 3:], boxes_b[..., 3:])
    intersection = (high - low).clamp(min=0).prod(dim=-1)
    union = box_volume(boxes_a) + box_volume(boxes_b) - intersection
    enclosing_low = torch.minimum(boxes_a[..., :3], boxes_b[..., :3])
    enclosing_high = torch.maximum(boxes_a[..., 3:], boxes_b[..., 3:])
    enclosing = (enclosing_high - enclosing_low).clamp(min=0).prod(dim=-1)
    return intersection, union, enclosing


def box_iou_pairwise(boxes_a: torch.Tensor, boxes_b: torch.Tensor) -> torch.Tensor:
    """Pairwise IoU of corner boxes, [A, 6] x [B, 6] -> [A, B]."""
    intersection, union, _ = _pair_terms(boxes_a, boxes_b, pairwise=True)
    return intersection / union.clamp(min=_EPS)


def generalized_box_iou_pairwise(boxes_a: torch.Tensor, boxes_b: torch.Tensor) -> torch.Tensor:
    """Pairwise generalised IoU (Rezatofighi et al. 2019), [A, 6] x [B, 6] -> [A, B], differentiable.

    GIoU = IoU - (|E| - |U|) / |E|, E the enclosing box. Volumes are clamped at a tiny epsilon, so
    degenerate (zero-size) boxes give finite values and gradients.
    """
    intersection, union, enclosing = _pair_terms(boxes_a, boxes_b, pairwise=True)
    union = union.clamp(min=_EPS)
    enclosing = enclosing.clamp(min=_EPS)
    return intersection / union - (enclosing - union) / enclosing


def elementwise_box_iou(boxes_a: torch.Tensor, boxes_b: torch.Tensor) -> torch.Tensor:
    """IoU of matched pairs, [K, 6] x [K, 6] -> [K]."""
    intersection, union, _ = _pair_terms(boxes_a, boxes_b, pairwise=False)
    return intersection / union.clamp(min=_EPS)


def elementwise_generalized_box_iou(boxes_a: torch.Tensor, boxes_b: torch.Tensor) -> torch.Tensor:
    """Generalised IoU of matched pairs, [K, 6] x [K, 6] -> [K] (the GIoU loss is `1 - this`)."""
    intersection, union, enclosing = _pair_terms(boxes_a, boxes_b, pairwise=False)
    union = union.clamp(min=_EPS)
    enclosing = enclosing.clamp(min=_EPS)
    return intersection / union - (enclosing - union) / enclosing
