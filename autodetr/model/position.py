"""3D sine positional encoding in physical (input-normalised) coordinates, shared by all levels.

The voxel j of a level with cumulative stride s covers input voxels [j * s, (j + 1) * s), so its centre
is at (j + 0.5) * s / D_input in normalised input coordinates. Encoding that position (not the index j)
makes the encodings of different levels agree at the same physical location, which the cross-level
attention of the MSA encoder relies on.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch


def level_centres(size: int, stride: int, input_size: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """Normalised input-space centres of the voxels of one axis of a level, shape [size]."""
    return (torch.arange(size, device=device, dtype=dtype) + 0.5) * (stride / input_size)


def sine_encode(coordinates: torch.Tensor, dim: int, temperature: float = 10000.0) -> torch.Tensor:
    """DETR-style sine/cosine encoding of normalised (z, y, x) coordinates `[..., 3]` -> `[..., dim]`.

    Each axis gets `2 * (dim // 6)` channels (sin half, cos half) in the order z, y, x; the remaining
    `dim - 6 * (dim // 6)` channels are zero."""
    per_axis = 2 * (dim // 6)
    if per_axis == 0:
        raise ValueError(f"hidden dim {dim} is too small for a 3D sine encoding (need >= 6)")
    half = per_axis // 2
    frequencies = temperature ** (torch.arange(half, device=coordinates.device, dtype=torch.float32) / half)
    angles = coordinates.float()[..., None] * (2 * math.pi) / frequencies  # [..., 3, half]
    axes = torch.cat([angles.sin(), angles.cos()], dim=-1).flatten(-2)  # [..., 3 * per_axis]
    padding = dim - 3 * per_axis
    return torch.nn.functional.pad(axes, (0, padding)) if padding else axes


def level_coordinates(shape: Sequence[int], stride: Sequence[int], input_shape: Sequence[int], device=None) -> torch.Tensor:
    """`[d, h, w, 3]` normalised input-space centres (z, y, x) of the voxels of a level."""
    axes = [level_centres(int(size), int(step), int(full), device=device) for size, step, full in zip(shape, stride, input_shape)]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1)


def sine_position_encoding_3d(
    shape: Sequence[int],
    stride: Sequence[int],
    input_shape: Sequence[int],
    dim: int,
    temperature: float = 10000.0,
    device=None,
    dtype=torch.float32,
) -> torch.Tensor:
    """DETR-style sine/cosine encoding (`sine_encode`) of every voxel centre of a level, channels-last
    `[d, h, w, dim]`."""
    return sine_encode(level_coordinates(shape, stride, input_shape, device), dim, temperature).to(dtype)
