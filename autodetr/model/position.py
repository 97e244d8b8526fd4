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


def sine_position_encoding_3d(
    shape: Sequence[int],
    stride: Sequence[int],
    input_shape: Sequence[int],
    dim: int,
    temperature: float = 10000.0,
    device=None,
    dtype=torch.float32,
) -> torch.Tensor:
    """DETR-style sine/cosine encoding of (z, y, x), channels-last `[d, h, w, dim]`.

    Each axis gets `2 * (dim // 6)` channels (sin half, cos half) in the order z, y, x; the remaining
    `dim - 6 * (dim // 6)` channels are zero.
    """
    per_axis = 2 * (dim // 6)
    if per_axis == 0:
        raise ValueError(f"hidden dim {dim} is too small for a 3D sine encoding (need >= 6)")
    half = per_axis // 2
    frequencies = temperature ** (torch.arange(half, device=device, dtype=torch.float32) / half)
    axes = []
    for size, step, full in zip(shape, stride, input_shape):
        position = level_centres(int(size), int(step), int(full), device=device) * (2 * math.pi)
        angles = position[:, None] / frequencies[None, :]
        axes.append(torch.cat([angles.sin(), angles.cos()], dim=-1))  # [size, per_axis]
    d, h, w = (int(s) for s in shape)
    encoding = torch.zeros(d, h, w, dim, device=device, dtype=torch.float32)
    encoding[..., 0:per_axis] = axes[0][:, None, None, :]
    encoding[..., per_axis:2 * per_axis] = axes[1][None, :, None, :]
    encoding[..., 2 * per_axis:3 * per_axis] = axes[2][None, None, :, :]
    return encoding.to(dtype)
