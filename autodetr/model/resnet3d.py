"""3D ResNet-50 / ResNet-101 encoders (He et al. 2016) with the plan's strides and widths.

Bottleneck blocks per stage: [3, 4, 6, 3] (ResNet-50) or [3, 4, 23, 3] (ResNet-101). The plan's
`stage_channels[i]` replaces ResNet's bottleneck width 64 * 2^i (stage output = 4 * width), its
`stage_strides` the stage strides and its stem the 7x7 conv + max-pool. A plan with a number of stages
other than 4 keeps the template for the first four stages and gives every further stage the last
template entry (3 blocks); ResNet-style normalisation is GroupNorm (batch 1-2 volumes).
"""
from __future__ import annotations

from typing import Sequence

from torch import nn

from .blocks import StagedEncoder, BottleneckBlock, ConvNormAct, as_triple

RESNET_BLOCKS = {"resnet50": (3, 4, 6, 3), "resnet101": (3, 4, 23, 3)}


def resnet_blocks_per_stage(depth_name: str, num_stages: int) -> list[int]:
    """Bottleneck count per stage for `num_stages` stages (template, then its last entry repeated)."""
    template = RESNET_BLOCKS[depth_name]
    return [template[min(i, len(template) - 1)] for i in range(num_stages)]


class ResNetEncoder(StagedEncoder):
    """Stem + bottleneck stages; returns one feature map per stage (finest first)."""

    def __init__(
        self,
        depth_name: str,
        in_channels: int,
        stem_channels: int,
        stem_stride: Sequence[int],
        stage_strides: Sequence[Sequence[int]],
        stage_channels: Sequence[int],
        norm: str = "group",
    ) -> None:
        super().__init__()
        if depth_name not in RESNET_BLOCKS:
            raise ValueError(f"unknown ResNet {depth_name!r}")
        self.stem = ConvNormAct(in_channels, stem_channels, as_triple(stem_stride), norm)
        blocks = resnet_blocks_per_stage(depth_name, len(stage_strides))
        self.stages = nn.ModuleList()
        self.out_channels: list[int] = []
        channels = stem_channels
        for stride, width, count in zip(stage_strides, stage_channels, blocks):
            layers = [BottleneckBlock(channels, int(width), as_triple(stride), norm)]
            channels = int(width) * BottleneckBlock.expansion
            layers += [BottleneckBlock(channels, int(width), (1, 1, 1), norm) for _ in range(count - 1)]
            self.stages.append(nn.Sequential(*layers))
            self.out_channels.append(channels)
