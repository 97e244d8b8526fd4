"""Segmentation loss from boxes alone: the multiscale L_seg of Organ-DETR (Sec. 3) for datasets without masks.

A box says where its organ is not (outside the box) and that the organ reaches every face of the box; it does
not say which voxels inside are organ. Per segmentation level (the same levels as the mask loss):

- **Partial-label cross-entropy** (weak mask without a hard inside target): a voxel outside every box is
  background; a voxel inside the boxes of classes S may be background or any class of S, and the loss is
  `-log sum_{k in S + {0}} p_k`. So no class is ever pushed into a voxel that cannot hold it, and nothing is
  forced where the box only contains the organ; overlapping boxes of different classes (the aorta, the vena
  cava and the vertebrae) all stay allowed in their overlap, which the softmax head needs.
- **Projection loss** (BoxInst, Tian et al., CVPR 2021, Eq. 2, in 3D): the organ touches every slice of its
  box along each axis, so the maximum of `p_c` over each slice of the box's cross-section must be 1 inside the
  box's range and 0 outside it. Per axis, `L_proj = 1 - Dice(max-projection, box profile)` with BoxInst's
  squared denominator; the profile is the share of each level voxel's block the box covers, so a box edge
  inside a coarse voxel is not rounded. The mean over the three axes and over every box of the batch.

- **Pairwise affinity loss** (BoxInst Eq. 3-4, in 3D, weight `loss.seg_pairwise`): two neighbouring voxels
  of a box (along each axis) whose intensities are alike, `exp(-|I_i - I_j| / theta) >= tau` on the input
  averaged to the level's grid (the largest difference over channels), likely hold the same tissue, so
  `-log(p_i p_j + (1 - p_i)(1 - p_j))` of the box's class. It shapes the mask inside the box along the
  organ's edges, where the projection says nothing. Off by default (weight 0): at BoxInst's weight 1 it
  lowered box-only phantoms from 0.414 to 0.329 mAP at 700 CPU steps (docs/benchmarks.md, box-only training);
  BoxInst warms it up over 10k steps.

`L = CE_partial + L_proj + w_pair L_pair` per level, summed over levels like the mask loss (CE + Dice). The
projection is exactly what the mask-enhanced anchors read (`autodetr.model.anchors.mask_extent_boxes` takes a
class's box from where the slice maximum of its probability crosses 0.5), so the anchors learn from the
boxes directly.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F

from autodetr.boxes_torch import centre_to_corners


#: BoxInst's affinity: neighbours count as alike when exp(-|dI| / theta) >= tau. theta in units of the
#: normalised input (z-scores of the foreground, e.g. about 150-250 HU for CT), so alike means within
#: about 0.12 units (20-30 HU): organ and fat, bone or air differ by far more, most organs from each other too.
AFFINITY_THETA = 0.1
AFFINITY_TAU = 0.3


def block_coverage(low: torch.Tensor, high: torch.Tensor, length: int, stride: float) -> torch.Tensor:
    """`[G, length]` share of each level voxel's block `[j s, (j + 1) s)` (input voxels) inside `[low, high)`."""
    starts = torch.arange(length, device=low.device, dtype=low.dtype) * stride
    overlap = torch.minimum(starts + stride, high[:, None]) - torch.maximum(starts, low[:, None])
    return (overlap / stride).clamp(0.0, 1.0)


def level_profiles(corners: torch.Tensor, grid: Sequence[int], stride: Sequence[float]) -> list[torch.Tensor]:
    """Per axis `[G, n_axis]` block coverage of boxes given as input-voxel corners `[G, 6]` (z1 y1 x1 z2 y2 x2)."""
    return [block_coverage(corners[:, axis], corners[:, axis + 3], int(grid[axis]), float(stride[axis])) for axis in range(3)]


def partial_label_cross_entropy(logits: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """Mean over voxels of `-log sum_{k allowed} p_k` (module docstring); `allowed` [B, C + 1, d, h, w] bool."""
    logits = logits.float()
    masked = logits.masked_fill(~allowed, float("-inf"))
    return (torch.logsumexp(logits, 1) - torch.logsumexp(masked, 1)).mean()


def axis_views(profiles: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Each axis's `[G, n]` inside-the-box indicator shaped to broadcast over `[G, d, h, w]`."""
    views = []
    for axis, profile in enumerate(profiles):
        shape = [profile.shape[0], 1, 1, 1]
        shape[1 + axis] = profile.shape[-1]
        views.append((profile > 0).reshape(shape))
    return views


def projection_dice_loss(probability: torch.Tensor, profiles: Sequence[torch.Tensor], eps: float = 1e-5) -> torch.Tensor:
    """BoxInst's projection term in 3D: `probability` [G, d, h, w] (each box's class channel), `profiles` the
    box's coverage per axis; mean over boxes and axes of `1 - Dice(max over the box's cross-section, profile)`."""
    views = axis_views(profiles)
    losses = []
    for axis in range(3):
        first, second = (views[a] for a in range(3) if a != axis)
        other = tuple(1 + a for a in range(3) if a != axis)
        projected = probability.masked_fill(~(first & second), 0.0).amax(other)  # [G, n_axis]
        target = profiles[axis]
        dice = (2 * (projected * target).sum(-1) + eps) / ((projected ** 2).sum(-1) + (target ** 2).sum(-1) + eps)
        losses.append(1.0 - dice)
    return torch.stack(losses).mean()


def pairwise_affinity_loss(probability: torch.Tensor, image: torch.Tensor, inside: torch.Tensor,
                           theta: float = AFFINITY_THETA, tau: float = AFFINITY_TAU) -> torch.Tensor:
    """BoxInst's pairwise term in 3D: `probability` [G, d, h, w] (each box's class channel), `image` [G, C, d, h, w]
    (the input on the level's grid), `inside` [G, d, h, w] the box; mean over the alike neighbour pairs inside
    the box (along each axis) of `-log(p_i p_j + (1 - p_i)(1 - p_j))`; 0 when there is none."""
    terms = []
    for axis in range(3):
        length = probability.shape[1 + axis]
        if length < 2:
            continue
        dim = 1 + axis  # of probability and inside; of image: dim + 1
        difference = (image.narrow(dim + 1, 0, length - 1) - image.narrow(dim + 1, 1, length - 1)).abs().amax(1)
        alike = ((torch.exp(-difference / theta) >= tau) & inside.narrow(dim, 0, length - 1)
                 & inside.narrow(dim, 1, length - 1))
        if not bool(alike.any()):
            continue
        p_i, p_j = probability.narrow(dim, 0, length - 1), probability.narrow(dim, 1, length - 1)
        same = p_i * p_j + (1.0 - p_i) * (1.0 - p_j)
        terms.append(-torch.log(same[alike].clamp_min(1e-6)))
    if not terms:
        return probability.new_zeros(())
    return torch.cat(terms).mean()


def box_supervised_level_loss(logits: torch.Tensor, targets: Sequence[dict[str, torch.Tensor]],
                              input_shape: Sequence[int], stride: Sequence[float],
                              images: torch.Tensor | None = None, pairwise_weight: float = 0.0) -> torch.Tensor:
    """`CE_partial + L_proj (+ pairwise_weight * L_pair)` of one level: `logits` [B, C + 1, d, h, w], `targets`
    per sample `labels` [G] (1..C) and `boxes` [G, 6] normalised centre boxes of the input of shape
    `input_shape`; `images` [B, C_in, *input_shape] the network input (needed for the pairwise term)."""
    batch, channels, grid = logits.shape[0], logits.shape[1], tuple(logits.shape[2:])
    allowed = torch.zeros((batch, channels) + grid, dtype=torch.bool, device=logits.device)
    allowed[:, 0] = True
    probabilities = logits.float().softmax(1)
    use_pairwise = pairwise_weight > 0 and images is not None
    level_images = F.adaptive_avg_pool3d(images.float(), grid) if use_pairwise else None
    boxed, box_profiles, box_images, box_inside = [], [[], [], []], [], []
    scale = torch.tensor(list(input_shape) * 2, dtype=torch.float32, device=logits.device)
    for sample, target in enumerate(targets):
        if not len(target["labels"]):
            continue
        corners = centre_to_corners(target["boxes"].to(logits.device).float()) * scale
        profiles = level_profiles(corners, grid, stride)
        views = axis_views(profiles)
        inside = views[0] & views[1] & views[2]
        labels = target["labels"].to(logits.device).long()
        for index, label in enumerate(labels.tolist()):
            allowed[sample, label] |= inside[index]
        boxed.append(probabilities[sample, labels])
        for axis in range(3):
            box_profiles[axis].append(profiles[axis])
        if use_pairwise:
            box_images.append(level_images[sample].expand(len(labels), *level_images.shape[1:]))
            box_inside.append(inside)
    loss = partial_label_cross_entropy(logits, allowed)
    if boxed:
        loss = loss + projection_dice_loss(torch.cat(boxed), [torch.cat(p) for p in box_profiles])
        if use_pairwise:
            loss = loss + pairwise_weight * pairwise_affinity_loss(torch.cat(boxed), torch.cat(box_images), torch.cat(box_inside))
    return loss


def multiscale_box_supervised_loss(seg_logits: Sequence[torch.Tensor], targets: Sequence[dict[str, torch.Tensor]],
                                   input_shape: Sequence[int], strides: Sequence[Sequence[int]] | None = None,
                                   images: torch.Tensor | None = None, pairwise_weight: float = 0.0,
                                   ) -> tuple[torch.Tensor, list[float]]:
    """Sum over levels of `box_supervised_level_loss`; per-level strides default to ceil(input / grid)."""
    total = seg_logits[0].new_zeros((), dtype=torch.float32)
    per_level = []
    for index, logits in enumerate(seg_logits):
        stride = strides[index] if strides is not None else [math.ceil(n / m) for n, m in zip(input_shape, logits.shape[2:])]
        level = box_supervised_level_loss(logits, targets, input_shape, [float(s) for s in stride], images, pairwise_weight)
        per_level.append(float(level.detach()))
        total = total + level
    return total, per_level
