"""A decoder value level that is projected after it is sampled, not before.

`network.decoder_fine_level` gives the deformable decoder one more value level: the fine segmentation
head's features (stride 2, `c_in` channels), projected to the hidden size f_e by a 1x1x1 convolution and a
GroupNorm (`OrganDETR.decoder_fine_level`). The decoder reads that map at a few hundred points per query
group, yet projecting the whole map, normalising it, and zero-filling the gradient of the f_e-channel map
in every layer's backward cost about a fifth of a CPU training step on the CPU plan.

Both steps are affine in the features of one sample: the convolution is y = W x + b, and GroupNorm only
subtracts each group's mean and divides by its standard deviation (statistics of the whole map, computed
here from the mean and covariance of x: for channel c, mean(y_c) = W_c mean(x) + b_c and
var(y_c) = W_c Cov(x) W_c^T), then scales and shifts per channel. So the projected map is A_b x + k_b per
sample b, and trilinear sampling, being linear, commutes with it: sample(A x + k) = A sample(x) +
k sample(1), where sample(1) (the share of a point's trilinear weight inside the map; grid_sample reads
zeros outside) comes from a channel of ones. `AffineProjectedLevel` keeps x with that channel and the
per-sample matrix [A | k]; the deformable attention samples x (c_in + 1 channels instead of f_e) and
applies the matrix to the samples. The result equals sampling the projected map, up to float rounding,
with the same parameters (checkpoints do not change).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class AffineProjectedLevel:
    """A value level as raw features and the per-sample affine map onto the hidden size.

    features: `[B, c_in + 1, d, h, w]`, the last channel all ones; matrix: `[B, f_e, c_in + 1]`."""

    features: torch.Tensor
    matrix: torch.Tensor

    def sample(self, grid: torch.Tensor) -> torch.Tensor:
        """Trilinear samples of the projected map at `grid` `[B, heads, Q, P, 3]` (grid_sample's (x, y, z),
        `align_corners=False`, zeros outside), split into heads as the deformable attention splits a
        projected map's channels: `[B * heads, f_e / heads, Q, P]`."""
        batch, heads, queries, points, _ = grid.shape
        inputs = self.features.shape[1]
        flat_grid = grid.reshape(batch, heads * queries * points, 1, 1, 3).to(self.features.dtype)
        sampled = F.grid_sample(self.features, flat_grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        sampled = sampled.reshape(batch, inputs, heads, queries, points)
        matrix = self.matrix.reshape(batch, heads, -1, inputs).to(sampled.dtype)
        return torch.einsum("bkhqp,bhdk->bhdqp", sampled, matrix).reshape(batch * heads, -1, queries, points)


def project_after_sampling(projection: nn.Sequential, features: torch.Tensor) -> AffineProjectedLevel:
    """`projection` (a 1x1x1 `Conv3d` then a `GroupNorm`) of `features` `[B, c_in, d, h, w]` as an
    `AffineProjectedLevel`: what `projection(features)` would give wherever it is sampled."""
    conv, norm = projection[0], projection[1]
    if not isinstance(conv, nn.Conv3d) or conv.kernel_size != (1, 1, 1) or not isinstance(norm, nn.GroupNorm):
        raise TypeError("project_after_sampling needs Sequential(Conv3d with a 1x1x1 kernel, GroupNorm)")
    batch, inputs = features.shape[:2]
    channels, groups = conv.out_channels, norm.num_groups
    flat = features.reshape(batch, inputs, -1)
    mean = flat.mean(dim=-1)  # [B, c_in]
    centred = flat - mean[..., None]
    covariance = centred @ centred.transpose(1, 2) / flat.shape[-1]  # [B, c_in, c_in]
    weight = conv.weight.reshape(channels, inputs)
    bias = conv.bias if conv.bias is not None else weight.new_zeros(channels)
    channel_mean = mean @ weight.T + bias  # [B, f_e]: mean of each projected channel
    channel_var = torch.einsum("ci,bij,cj->bc", weight, covariance, weight)  # [B, f_e]
    per_group = channels // groups
    group_mean = channel_mean.reshape(batch, groups, per_group).mean(dim=-1)  # [B, G]
    group_var = (channel_var.reshape(batch, groups, per_group)
                 + (channel_mean.reshape(batch, groups, per_group) - group_mean[..., None]) ** 2).mean(dim=-1)
    scale = torch.rsqrt(group_var + norm.eps).repeat_interleave(per_group, dim=1)  # [B, f_e]
    if norm.affine:
        scale = scale * norm.weight
    shift = scale * (bias - group_mean.repeat_interleave(per_group, dim=1))
    if norm.affine:
        shift = shift + norm.bias
    matrix = torch.cat([scale[..., None] * weight, shift[..., None]], dim=-1)  # [B, f_e, c_in + 1]
    ones = features.new_ones((batch, 1, *features.shape[2:]))
    return AffineProjectedLevel(torch.cat([features, ones], dim=1), matrix)
