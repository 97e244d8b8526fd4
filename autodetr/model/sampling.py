"""The one place where (z, y, x) becomes grid_sample's (x, y, z), and the deformable sampling kernel.

Convention (see `autodetr.boxes`): a normalised point `(z, y, x)` lies in [0, 1] per axis, measured in
voxel EDGES: voxel i of an axis of length D spans [i / D, (i + 1) / D), so its centre is (i + 0.5) / D.
`torch.nn.functional.grid_sample` with `align_corners=False` uses the same edge convention on [-1, 1]
but wants the last dimension ordered (x, y, z) = (W, H, D). Every grid_sample call of the code base
goes through `to_grid_sample_coordinates`.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .projected_level import AffineProjectedLevel


def to_grid_sample_coordinates(points_zyx: torch.Tensor) -> torch.Tensor:
    """Normalised (z, y, x) in [0, 1] (voxel edges) -> grid_sample (x, y, z) in [-1, 1], align_corners=False.

    The axis flip happens here and nowhere else.
    """
    return points_zyx.flip(-1) * 2.0 - 1.0


def sample_volume(volume: torch.Tensor, points_zyx: torch.Tensor) -> torch.Tensor:
    """Trilinear sample of `volume` [B, C, D, H, W] at normalised points [B, K, 3] (z, y, x) -> [B, C, K].

    Points outside the volume read zeros (padding_mode="zeros").
    """
    batch, num_points = points_zyx.shape[0], points_zyx.shape[1]
    grid = to_grid_sample_coordinates(points_zyx).reshape(batch, num_points, 1, 1, 3)
    sampled = F.grid_sample(volume, grid.to(volume.dtype), mode="bilinear", padding_mode="zeros", align_corners=False)
    return sampled.reshape(batch, volume.shape[1], num_points)


def multi_scale_deformable_sampling(
    values: list[torch.Tensor | AffineProjectedLevel],
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
) -> torch.Tensor:
    """Multi-scale deformable attention core (Deformable DETR Eq. 3) in 3D, plain PyTorch on grid_sample.

    values: one tensor per level, `[B * heads, head_dim, d_l, h_l, w_l]`, or an `AffineProjectedLevel`
    (`autodetr.model.projected_level`: features projected after sampling); the first is a tensor.
    sampling_locations: `[B, Q, heads, L, P, 3]` normalised (z, y, x) RELATIVE TO EACH LEVEL's grid.
    attention_weights: `[B, Q, heads, L, P]` (softmax-normalised over L * P by the caller).
    Returns `[B, Q, heads * head_dim]`: sum over levels and points of weight * trilinear sample.
    """
    batch, num_queries, heads, levels, points, _ = sampling_locations.shape
    head_dim = values[0].shape[1]
    # [B, Q, heads, L, P, 3] -> [B, heads, L, Q, P, 3]
    grids = to_grid_sample_coordinates(sampling_locations).permute(0, 2, 3, 1, 4, 5)
    sampled_levels = []
    for level, value in enumerate(values):
        if isinstance(value, AffineProjectedLevel):
            sampled_levels.append(value.sample(grids[:, :, level]))  # [B * heads, head_dim, Q, P]
            continue
        grid = grids[:, :, level].reshape(batch * heads, num_queries, points, 1, 3).to(value.dtype)
        # -> [B * heads, head_dim, Q, P, 1]
        sampled = F.grid_sample(value, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        sampled_levels.append(sampled.squeeze(-1))
    # [B * heads, head_dim, Q, L, P]
    stacked = torch.stack(sampled_levels, dim=3)
    weights = attention_weights.permute(0, 2, 1, 3, 4).reshape(batch * heads, 1, num_queries, levels, points)
    output = (stacked * weights.to(stacked.dtype)).sum(dim=(-1, -2))  # [B * heads, head_dim, Q]
    return output.reshape(batch, heads * head_dim, num_queries).transpose(1, 2)
