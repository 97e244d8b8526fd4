"""Convolution building blocks of the 3D backbones: norm factory, conv-norm-act, residual blocks.

Every strided convolution uses kernel `max(3, 2 s - 1)` and padding `kernel // 2` per axis, so an axis
of length D always becomes ceil(D / s): level shapes are `ceil(input / cumulative_stride)`, which the
rest of the model (positions, window alignment, sampling ratios) relies on.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

Triple = tuple[int, int, int]


def as_triple(value: int | Sequence[int]) -> Triple:
    """An int or a 3-sequence -> a 3-tuple of ints."""
    if isinstance(value, int):
        return (value, value, value)
    values = tuple(int(v) for v in value)
    if len(values) != 3:
        raise ValueError(f"expected 3 values (z, y, x), got {value}")
    return values  # type: ignore[return-value]


def strided_kernel(stride: Sequence[int]) -> tuple[Triple, Triple]:
    """(kernel, padding) per axis for a 3D conv with `stride` that maps D to ceil(D / s)."""
    kernel = tuple(max(3, 2 * int(s) - 1) for s in stride)
    return kernel, tuple(k // 2 for k in kernel)  # type: ignore[return-value]


def make_norm(kind: str, channels: int) -> nn.Module:
    """`group` (GroupNorm with gcd(channels, 16) groups, safe for 1-voxel maps) or `instance` norm."""
    if kind == "group":
        return nn.GroupNorm(math.gcd(channels, 16), channels)
    if kind == "instance":
        return nn.InstanceNorm3d(channels, affine=True)
    raise ValueError(f"unknown norm {kind!r} (expected 'group' or 'instance')")


def make_activation() -> nn.Module:
    return nn.LeakyReLU(0.01, inplace=True)


class ConvNormAct(nn.Sequential):
    """3D conv (ceil-preserving kernel for its stride) + norm + LeakyReLU."""

    def __init__(self, in_channels: int, out_channels: int, stride: Sequence[int] = (1, 1, 1), norm: str = "group") -> None:
        kernel, padding = strided_kernel(stride)
        super().__init__(
            nn.Conv3d(in_channels, out_channels, kernel, stride=tuple(stride), padding=padding, bias=False),
            make_norm(norm, out_channels),
            make_activation(),
        )


class _Shortcut(nn.Sequential):
    def __init__(self, in_channels: int, out_channels: int, stride: Sequence[int], norm: str) -> None:
        super().__init__(
            nn.Conv3d(in_channels, out_channels, 1, stride=tuple(stride), bias=False),
            make_norm(norm, out_channels),
        )


def _needs_projection(in_channels: int, out_channels: int, stride: Sequence[int]) -> bool:
    return in_channels != out_channels or any(int(s) != 1 for s in stride)


class BasicResidualBlock(nn.Module):
    """Two 3x3x3 convs with norm + LeakyReLU and an identity / 1x1x1 projection shortcut (FPN encoder)."""

    def __init__(self, in_channels: int, out_channels: int, stride: Sequence[int] = (1, 1, 1), norm: str = "group") -> None:
        super().__init__()
        kernel, padding = strided_kernel(stride)
        self.conv1 = nn.Conv3d(in_channels, out_channels, kernel, stride=tuple(stride), padding=padding, bias=False)
        self.norm1 = make_norm(norm, out_channels)
        self.conv2 = nn.Conv3d(out_channels, out_channels, 3, padding=1, bias=False)
        self.norm2 = make_norm(norm, out_channels)
        self.act = make_activation()
        self.shortcut = _Shortcut(in_channels, out_channels, stride, norm) if _needs_projection(in_channels, out_channels, stride) else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act(self.norm1(self.conv1(x)))
        out = self.norm2(self.conv2(out))
        return self.act(out + self.shortcut(x))


class BottleneckBlock(nn.Module):
    """ResNet bottleneck: 1x1x1 -> 3x3x3 (strided) -> 1x1x1 (x expansion), projection shortcut."""

    expansion = 4

    def __init__(self, in_channels: int, width: int, stride: Sequence[int] = (1, 1, 1), norm: str = "group") -> None:
        super().__init__()
        out_channels = width * self.expansion
        kernel, padding = strided_kernel(stride)
        self.conv1 = nn.Conv3d(in_channels, width, 1, bias=False)
        self.norm1 = make_norm(norm, width)
        self.conv2 = nn.Conv3d(width, width, kernel, stride=tuple(stride), padding=padding, bias=False)
        self.norm2 = make_norm(norm, width)
        self.conv3 = nn.Conv3d(width, out_channels, 1, bias=False)
        self.norm3 = make_norm(norm, out_channels)
        self.act = make_activation()
        self.shortcut = _Shortcut(in_channels, out_channels, stride, norm) if _needs_projection(in_channels, out_channels, stride) else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act(self.norm1(self.conv1(x)))
        out = self.act(self.norm2(self.conv2(out)))
        out = self.norm3(self.conv3(out))
        return self.act(out + self.shortcut(x))


class StagedEncoder(nn.Module):
    """Base of the encoders: `self.stem` then `self.stages`; returns every stage's output, finest first."""

    stem: nn.Module
    stages: nn.ModuleList

    def forward_with_stem(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """(stem output, every stage's output finest first)."""
        stem = x = self.stem(x)
        features = []
        for stage in self.stages:
            x = stage(x)
            features.append(x)
        return stem, features

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.forward_with_stem(x)[1]
