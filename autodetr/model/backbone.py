"""Backbones: 3D residual encoder (Retina U-Net / FPN style) or 3D ResNet, FPN neck, level projection.

Levels are the outputs of the encoder stages (not the stem); level i has cumulative stride
`stem_stride * prod(stage_strides[:i + 1])` per axis and shape `ceil(input / stride)`. The FPN
top-down pathway (Lin et al. 2017) runs over the `num_feature_levels` (L_h) coarsest levels only; each
of its outputs is mapped to `hidden_dim` (f_e) channels by a 1x1x1 conv (Organ-DETR Sec. 3, "Feature
extraction backbone"), giving {P^(l)}. ORDER: the backbone returns the maps COARSEST FIRST, i.e. index
0 is the paper's P^(1), the highest-level map; the MSA encoder, the segmentation head and the decoder
keep that order.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from autodetr.plans import BACKBONES, Plans

from .blocks import StagedEncoder, BasicResidualBlock, ConvNormAct, as_triple
from .resnet3d import RESNET_BLOCKS, ResNetEncoder

Triple = tuple[int, int, int]


def encoder_level_strides(network: dict[str, Any]) -> list[Triple]:
    """Cumulative stride of every encoder stage output (finest first)."""
    current = as_triple(network["stem_stride"])
    strides = []
    for stride in network["stage_strides"]:
        current = tuple(c * s for c, s in zip(current, as_triple(stride)))  # type: ignore[assignment]
        strides.append(current)
    return strides


def feature_level_strides(plans: dict[str, Any]) -> list[Triple]:
    """Cumulative strides of the L_h levels the MSA encoder sees, COARSEST FIRST (P^(1) first)."""
    network = Plans.of(plans).network
    strides = encoder_level_strides(network)
    num_levels = int(network["num_feature_levels"])
    if not 1 <= num_levels <= len(strides):
        raise ValueError(f"num_feature_levels={num_levels} but the encoder has {len(strides)} stages")
    return list(reversed(strides[-num_levels:]))


def feature_level_shapes(plans: dict[str, Any], input_shape: Sequence[int] | None = None) -> list[Triple]:
    """Shapes of the L_h levels (coarsest first) for `input_shape` (default: the plan's input size)."""
    shape = input_shape if input_shape is not None else Plans.of(plans).input_size
    return [tuple(math.ceil(int(n) / s) for n, s in zip(shape, stride)) for stride in feature_level_strides(plans)]  # type: ignore[misc]


class ResidualEncoder(StagedEncoder):
    """Stem conv (stem_stride) + stages of basic residual blocks (first block strided); finest first."""

    def __init__(
        self,
        in_channels: int,
        stem_channels: int,
        stem_stride: Sequence[int],
        stage_strides: Sequence[Sequence[int]],
        stage_channels: Sequence[int],
        blocks_per_stage: Sequence[int],
        norm: str = "group",
    ) -> None:
        super().__init__()
        if not (len(stage_strides) == len(stage_channels) == len(blocks_per_stage)):
            raise ValueError("stage_strides, stage_channels and blocks_per_stage need the same length")
        self.stem = ConvNormAct(in_channels, stem_channels, as_triple(stem_stride), norm)
        self.stages = nn.ModuleList()
        self.out_channels: list[int] = []
        channels = stem_channels
        for stride, out_channels, count in zip(stage_strides, stage_channels, blocks_per_stage):
            layers = [BasicResidualBlock(channels, int(out_channels), as_triple(stride), norm)]
            layers += [BasicResidualBlock(int(out_channels), int(out_channels), (1, 1, 1), norm) for _ in range(int(count) - 1)]
            self.stages.append(nn.Sequential(*layers))
            channels = int(out_channels)
            self.out_channels.append(channels)


def upsample_to(x: torch.Tensor, ratio: Sequence[int], shape: Sequence[int]) -> torch.Tensor:
    """Nearest upsampling by an integer `ratio` per axis, cropped to `shape` (exact positional alignment:
    fine voxel i takes coarse voxel i // ratio)."""
    if any(r != 1 for r in ratio):
        x = F.interpolate(x, scale_factor=tuple(float(r) for r in ratio), mode="nearest")
    return x[..., : shape[0], : shape[1], : shape[2]]


class FPNNeck(nn.Module):
    """Top-down FPN over the given levels (inputs and outputs COARSEST FIRST), 1x1 lateral + 3x3 output convs."""

    def __init__(self, in_channels: Sequence[int], out_channels: int, ratios: Sequence[Triple], norm: str = "group") -> None:
        super().__init__()
        self.ratios = [tuple(r) for r in ratios]  # ratios[i]: stride of level i over level i + 1 (i + 1 finer)
        self.lateral = nn.ModuleList(nn.Conv3d(c, out_channels, 1) for c in in_channels)
        self.output = nn.ModuleList(ConvNormAct(out_channels, out_channels, (1, 1, 1), norm) for _ in in_channels)

    def forward(self, features: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        merged = self.lateral[0](features[0])
        outputs = [self.output[0](merged)]
        for index in range(1, len(features)):
            lateral = self.lateral[index](features[index])
            merged = lateral + upsample_to(merged, self.ratios[index - 1], lateral.shape[2:])
            outputs.append(self.output[index](merged))
        return outputs


class Backbone(nn.Module):
    """Encoder + FPN neck + 1x1x1 projection to f_e: image [B, C_in, D, H, W] -> L_h maps, coarsest first."""

    def __init__(self, network: dict[str, Any]) -> None:
        super().__init__()
        norm = network.get("norm", "group")
        kind = network.get("backbone", "fpn")
        common = dict(
            in_channels=int(network.get("in_channels", 1)),
            stem_channels=int(network["stem_channels"]),
            stem_stride=network["stem_stride"],
            stage_strides=network["stage_strides"],
            stage_channels=network["stage_channels"],
            norm=norm,
        )
        if kind == "fpn":
            self.encoder: nn.Module = ResidualEncoder(blocks_per_stage=network["blocks_per_stage"], **common)
        elif kind in RESNET_BLOCKS:
            self.encoder = ResNetEncoder(kind, **common)
        else:
            raise ValueError(f"unknown backbone {kind!r} (expected one of {', '.join(BACKBONES)})")
        strides = encoder_level_strides(network)
        self.num_levels = int(network["num_feature_levels"])
        if not 1 <= self.num_levels <= len(strides):
            raise ValueError(f"num_feature_levels={self.num_levels} but the encoder has {len(strides)} stages")
        used = list(range(len(strides) - self.num_levels, len(strides)))[::-1]  # coarsest first
        self.used_levels = used
        self.strides: list[Triple] = [strides[i] for i in used]
        ratios = [tuple(a // b for a, b in zip(self.strides[i], self.strides[i + 1])) for i in range(len(used) - 1)]
        hidden_dim = int(network["hidden_dim"])
        fpn_channels = int(network.get("fpn_channels", hidden_dim))
        self.neck = FPNNeck([self.encoder.out_channels[i] for i in used], fpn_channels, ratios, norm)  # type: ignore[index]
        self.projection = nn.ModuleList(
            nn.Sequential(nn.Conv3d(fpn_channels, hidden_dim, 1), nn.GroupNorm(math.gcd(32, hidden_dim), hidden_dim))
            for _ in used
        )

    def forward_with_stem(self, images: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """(stem features, the L_h projected maps coarsest first)."""
        stem, features = self.encoder.forward_with_stem(images)
        pyramid = self.neck([features[i] for i in self.used_levels])
        return stem, [project(level) for project, level in zip(self.projection, pyramid)]

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        return self.forward_with_stem(images)[1]
