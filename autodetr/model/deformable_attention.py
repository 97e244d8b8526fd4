"""3D multi-scale deformable attention (Deformable DETR, Zhu et al. 2020, Eq. 3), plain PyTorch.

Each query predicts, per head, level and point, a 3D sampling offset and an attention weight; the
value map of every level is sampled trilinearly with grid_sample (through
`sampling.to_grid_sample_coordinates`) and the samples are summed with the weights (softmax over
levels x points). Reference boxes are normalised centre boxes `(cz, cy, cx, d, h, w)` relative to the
network input; as in Deformable DETR's 4-d reference-box variant,
    location = centre + offset / n_points * size * 0.5 .
A level's grid may extend past the input (ceil shapes): input-normalised locations are multiplied by
`level_scales[l] = input_size / (stride_l * shape_l)` to become normalised to that level's grid.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

from .projected_level import AffineProjectedLevel
from .sampling import multi_scale_deformable_sampling


def fibonacci_directions(count: int) -> torch.Tensor:
    """`count` roughly uniform unit directions (z, y, x) on the sphere, scaled to max-norm 1."""
    index = torch.arange(count, dtype=torch.float64) + 0.5
    polar = torch.acos(1 - 2 * index / count)
    azimuth = math.pi * (1 + 5 ** 0.5) * index
    directions = torch.stack([polar.cos(), polar.sin() * azimuth.sin(), polar.sin() * azimuth.cos()], dim=-1)
    return (directions / directions.abs().max(dim=-1, keepdim=True).values).float()


class MultiScaleDeformableAttention3D(nn.Module):
    """query [B, Q, C] + reference boxes [B, Q, 6] + value maps (list of [B, C, d, h, w]) -> [B, Q, C]."""

    def __init__(self, dim: int, levels: int, heads: int, points: int, projected_levels: int = 0) -> None:
        """`projected_levels`: how many of the last levels come already projected (their maps skip
        `value_proj`: a fine level whose per-layer projection would cost more than the whole layer)."""
        super().__init__()
        if dim % heads:
            raise ValueError(f"hidden dim {dim} is not divisible by {heads} decoder heads")
        self.dim, self.levels, self.heads, self.points = dim, levels, heads, points
        self.projected_levels = int(projected_levels)
        self.sampling_offsets = nn.Linear(dim, heads * levels * points * 3)
        self.attention_weights = nn.Linear(dim, heads * levels * points)
        self.value_proj = nn.Linear(dim, dim)
        self.output_proj = nn.Linear(dim, dim)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Deformable DETR initialisation: zero offset weights, offset biases on a per-head direction
        (here 3D directions on a sphere) scaled by the point index; uniform attention; Xavier projections."""
        nn.init.zeros_(self.sampling_offsets.weight)
        grid = fibonacci_directions(self.heads)[:, None, None, :].repeat(1, self.levels, self.points, 1)
        grid = grid * torch.arange(1, self.points + 1, dtype=torch.float32)[None, None, :, None]
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(grid.reshape(-1))
        nn.init.zeros_(self.attention_weights.weight)
        nn.init.zeros_(self.attention_weights.bias)
        nn.init.xavier_uniform_(self.value_proj.weight)
        nn.init.zeros_(self.value_proj.bias)
        nn.init.xavier_uniform_(self.output_proj.weight)
        nn.init.zeros_(self.output_proj.bias)

    def sampling_locations(self, query: torch.Tensor, reference_boxes: torch.Tensor) -> torch.Tensor:
        """[B, Q, heads, L, P, 3] input-normalised (z, y, x) sampling locations."""
        batch, num_queries, _ = query.shape
        offsets = self.sampling_offsets(query).reshape(batch, num_queries, self.heads, self.levels, self.points, 3)
        centre = reference_boxes[:, :, None, None, None, :3]
        size = reference_boxes[:, :, None, None, None, 3:]
        return centre + offsets / self.points * size * 0.5

    def forward(
        self,
        query: torch.Tensor,
        reference_boxes: torch.Tensor,
        values: Sequence[torch.Tensor | AffineProjectedLevel],
        level_scales: torch.Tensor,
    ) -> torch.Tensor:
        """level_scales: [L, 3] factor from input-normalised to level-normalised coordinates. A projected
        level (the last `projected_levels`) is a map of `dim` channels or an `AffineProjectedLevel`."""
        batch, num_queries, _ = query.shape
        head_dim = self.dim // self.heads
        projected = []
        first_projected = len(values) - self.projected_levels
        for index, value in enumerate(values):
            if isinstance(value, AffineProjectedLevel):
                projected.append(value)  # projected where it is sampled
                continue
            v = value if index >= first_projected else self.value_proj(value.permute(0, 2, 3, 4, 1)).permute(0, 4, 1, 2, 3)
            projected.append(v.reshape(batch * self.heads, head_dim, *v.shape[2:]))
        locations = self.sampling_locations(query, reference_boxes) * level_scales[None, None, None, :, None, :]
        weights = self.attention_weights(query).reshape(batch, num_queries, self.heads, self.levels * self.points)
        weights = weights.softmax(-1).reshape(batch, num_queries, self.heads, self.levels, self.points)
        return self.output_proj(multi_scale_deformable_sampling(projected, locations, weights))
