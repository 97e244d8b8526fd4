"""Multiscale segmentation loss (Organ-DETR Sec. 3): L_seg = sum_l (CE^(l) + DL^(l)).

Targets per level: the label map is reduced to each level's grid by a "small organs win" max-pool.
Level voxel j (stride s) covers label voxels [j s, (j + 1) s); it gets, among the classes present in that
block, the foreground class with the SMALLEST volume in the sample (background only if the block is all
background). Implemented as a max-pool of a per-voxel priority map (priority = rank of the class by
ascending volume), so it costs one channel, not C + 1. Nearest-neighbour sampling would drop organs
thinner than a stride and area averaging would fade them; this keeps every organ present in the full
map on every level (unless two organs compete for all the blocks of the smaller one), at the price of
dilating small organs by up to a stride.

Dice: soft Dice over the batch (nnU-Net batch dice, smooth 1e-5), foreground classes present in the
level target only (absent classes are left to CE, which keeps an empty target finite); 1 - mean Dice.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import torch
import torch.nn.functional as F

from autodetr.plans import Plans


def priority_map(labels: torch.Tensor, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample priority of every voxel's class and the inverse table.

    labels: [B, D, H, W] long in 0..C. Returns (priority [B, D, H, W] float, class_of_priority [B, C + 2]).
    Background has priority 0; present foreground classes 1.. with the smallest volume highest.
    """
    batch = labels.shape[0]
    flat = labels.reshape(batch, -1)
    counts = torch.zeros(batch, num_classes + 1, dtype=torch.int64, device=labels.device)
    counts.scatter_add_(1, flat, torch.ones_like(flat))
    counts[:, 0] = 0
    # sort present classes by descending volume; absent and background go first with priority 0
    key = torch.where(counts > 0, counts, torch.full_like(counts, torch.iinfo(torch.int64).max))
    key[:, 0] = torch.iinfo(torch.int64).max
    order = torch.argsort(key, dim=1, descending=True)  # absent/background first, then large -> small
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(num_classes + 1, device=labels.device).expand(batch, -1).contiguous())
    num_absent = (key == torch.iinfo(torch.int64).max).sum(dim=1, keepdim=True)
    priority = (ranks - num_absent + 1).clamp(min=0)  # [B, C + 1], 0 for background / absent
    priority[:, 0] = 0
    voxel_priority = torch.gather(priority, 1, flat).reshape(labels.shape).float()
    inverse = torch.zeros(batch, num_classes + 2, dtype=torch.int64, device=labels.device)
    inverse.scatter_(1, priority, torch.arange(num_classes + 1, device=labels.device).expand(batch, -1).contiguous())
    inverse[:, 0] = 0
    return voxel_priority, inverse


def downsample_labels(labels: torch.Tensor, shape: Sequence[int], num_classes: int, stride: Sequence[int] | None = None) -> torch.Tensor:
    """[B, D, H, W] label map -> [B, *shape] by the "smallest organ wins" max-pool (module docstring).

    `stride` defaults to ceil(D / d) per axis; the result is cropped / zero-padded to `shape`.
    """
    if tuple(labels.shape[1:]) == tuple(shape):
        return labels
    if stride is None:
        stride = [math.ceil(n / m) for n, m in zip(labels.shape[1:], shape)]
    stride = [int(s) for s in stride]
    priority, inverse = priority_map(labels.long(), num_classes)
    pad = [0, 0, 0, 0, 0, 0]
    for axis in range(3):  # pad any axis shorter than its stride so the pooling has one window
        missing = max(0, stride[axis] - labels.shape[1 + axis])
        pad[4 - 2 * axis + 1] = missing
    if any(pad):
        priority = F.pad(priority, pad)
    pooled = F.max_pool3d(priority[:, None], kernel_size=stride, stride=stride, ceil_mode=True)[:, 0]
    pooled = pooled[:, : shape[0], : shape[1], : shape[2]]
    pooled = F.pad(pooled, [0, shape[2] - pooled.shape[3], 0, shape[1] - pooled.shape[2], 0, shape[0] - pooled.shape[1]])
    pooled = pooled.long()
    return torch.gather(inverse, 1, pooled.reshape(pooled.shape[0], -1)).reshape(pooled.shape)


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, smooth: float = 1e-5) -> torch.Tensor:
    """1 - mean batch soft Dice over the foreground classes present in `target` (0 if none)."""
    num_channels = logits.shape[1]
    probabilities = logits.float().softmax(1)
    one_hot = F.one_hot(target, num_channels).permute(0, 4, 1, 2, 3).to(probabilities.dtype)
    dims = (0, 2, 3, 4)
    intersection = (probabilities * one_hot).sum(dims)
    denominator = probabilities.sum(dims) + one_hot.sum(dims)
    dice = (2 * intersection + smooth) / (denominator + smooth)
    present = one_hot.sum(dims) > 0
    present[0] = False
    if not bool(present.any()):
        return logits.sum() * 0.0
    return 1.0 - dice[present].mean()


def multiscale_segmentation_loss(
    seg_logits: Sequence[torch.Tensor],
    labels: torch.Tensor,
    strides: Sequence[Sequence[int]] | None = None,
) -> tuple[torch.Tensor, list[float]]:
    """L_seg = sum over levels of CE + soft Dice; returns (loss, per-level values).

    seg_logits: per level [B, C + 1, d, h, w]; labels: [B, D, H, W] long (0..C); strides: optional
    per-level cumulative strides (same order as seg_logits) for exact block pooling.
    """
    total = seg_logits[0].new_zeros(()) if len(seg_logits) else labels.new_zeros((), dtype=torch.float32)
    per_level = []
    for index, logits in enumerate(seg_logits):
        num_classes = logits.shape[1] - 1
        stride = None if strides is None else strides[index]
        target = downsample_labels(labels, logits.shape[2:], num_classes, stride)
        level_loss = F.cross_entropy(logits.float(), target) + soft_dice_loss(logits, target)
        per_level.append(float(level_loss.detach()))
        total = total + level_loss
    return total, per_level


def add_segmentation_term(
    total: torch.Tensor, components: dict[str, float], outputs: dict, seg_target: torch.Tensor | None, weight: float,
    strides: Sequence[Sequence[int]] | None, targets: Sequence[dict[str, torch.Tensor]] | None = None,
    supervision: str = "masks", images: torch.Tensor | None = None, pairwise_weight: float = 0.0,
) -> torch.Tensor:
    """`total + weight * L_seg` of the model output's `seg_logits` (Eq. 8's last term), recording the unweighted
    value as `components["seg"]`; `total` unchanged when there is no target, no segmentation output or a zero
    weight. `strides` are used when there is one per level. `supervision` "masks": L_seg of the label map
    `seg_target`; "boxes": the box-supervised loss of the `targets` boxes
    (`autodetr.losses.box_segmentation`), `seg_target` giving the input's shape, with BoxInst's pairwise term
    weighted `pairwise_weight` on the network input `images`."""
    seg_logits = outputs.get("seg_logits") or []
    if seg_target is None or not len(seg_logits) or weight <= 0:
        return total
    level_strides = strides if strides is not None and len(strides) == len(seg_logits) else None
    if supervision == "boxes":
        from autodetr.losses.box_segmentation import multiscale_box_supervised_loss

        if targets is None:
            raise ValueError("box-supervised segmentation needs the batch's box targets")
        loss, _ = multiscale_box_supervised_loss(seg_logits, targets, tuple(seg_target.shape[1:]), level_strides,
                                                 images, pairwise_weight)
    else:
        loss, _ = multiscale_segmentation_loss(seg_logits, seg_target.to(seg_logits[0].device).long(), level_strides)
    components["seg"] = float(loss.detach())
    return total + weight * loss


@dataclass(frozen=True)
class SegmentationTerm:
    """The `lambda_seg * L_seg` term of Eq. 8 as a plan sets it, shared by every criterion: its weight
    (`loss.seg`), per-level strides, what it learns from (`loss.seg_supervision`) and the weight of the
    box supervision's pairwise term (`loss.seg_pairwise`)."""

    weight: float
    strides: Sequence[Sequence[int]] | None
    supervision: str = "masks"
    pairwise_weight: float = 0.0

    @classmethod
    def from_plans(cls, plans: Any, strides: Sequence[Sequence[int]] | None) -> "SegmentationTerm":
        loss = Plans.of(plans).loss
        return cls(float(loss["seg"]), strides, str(loss["seg_supervision"]), float(loss["seg_pairwise"]))

    def add(self, total: torch.Tensor, components: dict[str, float], outputs: dict, seg_target: torch.Tensor | None,
            targets: Sequence[dict[str, torch.Tensor]], images: torch.Tensor | None = None) -> torch.Tensor:
        """`add_segmentation_term` with this term's settings."""
        return add_segmentation_term(total, components, outputs, seg_target, self.weight, self.strides, targets,
                                     self.supervision, images, self.pairwise_weight)
