"""Fine segmentation head: a short U-Net decoder path from the finest MSA level down to the stem (and
optionally the input) resolution, whose mask gives precise boxes for the mask-enhanced anchors.

The MSA levels are coarse (the finest has stride 4, about 20 mm on the CPU plan), and a box read from a
mask on that grid misses an organ's extent by up to a voxel on each side: 3D IoU falls below 0.75 for
most abdominal organs. This head follows the top-down path of Retina U-Net (Jaeger et al. 2020, the
detector of nnDetection) and the U-Net decoder of nnU-Net: the finest encoded level is reduced to
`channels`, upsampled to the stem's grid and summed with a 1x1x1 projection of the stem features (a skip
connection), then refined by a 3x3x3 conv; with `stride` 1 the same step is repeated once more at the
input resolution with the image itself as the skip. A zero-initialised 1x1x1 classifier turns that into a
correction added to the finest MSA level's logits upsampled to the fine grid, so the untrained head
equals the coarse head and training sharpens borders rather than learning every organ again. Its logits [B, C + 1, ...] are one more level of the
multiscale segmentation loss (Organ-DETR Eq. 8's L_seg; targets pooled as for the MSA levels), and the
first query of every class group starts at the box of the class's mask on this grid
(`autodetr.model.anchors.mask_extent_boxes`), the mask-enhanced anchors of Mask DINO (Li et al. 2023).
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from autodetr.plans import Plans

from .backbone import encoder_level_strides, feature_level_strides, upsample_to
from .blocks import ConvNormAct, as_triple

Triple = tuple[int, int, int]


def fine_segmentation_settings(network: dict[str, Any]) -> dict[str, Any] | None:
    """The plan's `network.fine_segmentation` block ({"stride": [z, y, x], "channels": c}) with the stride as
    a tuple; None when absent or empty. The stride is the stem's (the stem features are the skip) or 1."""
    settings = network.get("fine_segmentation")
    if not settings:
        return None
    stride = as_triple(settings["stride"])
    stem = as_triple(network["stem_stride"])
    if stride not in (stem, (1, 1, 1)):
        raise ValueError(f"network.fine_segmentation.stride must be the stem stride {list(stem)} or 1, got {list(stride)}")
    return {"stride": stride, "channels": int(settings.get("channels", 32))}


def segmentation_strides(plans: dict[str, Any]) -> list[Triple]:
    """Cumulative stride of every segmentation output of the model, in `seg_logits` order: the MSA levels
    coarsest first, then the fine head's grid when the plan has one."""
    strides = feature_level_strides(plans)
    settings = fine_segmentation_settings(Plans.of(plans).network)
    if settings is not None:
        strides.append(settings["stride"])
    return strides


class FineSegmentationHead(nn.Module):
    """Finest MSA level + stem features (+ image) -> segmentation logits at the stem's (or input) stride."""

    def __init__(self, network: dict[str, Any], num_classes: int) -> None:
        super().__init__()
        settings = fine_segmentation_settings(network)
        if settings is None:
            raise ValueError("the plan has no network.fine_segmentation block")
        norm = network.get("norm", "group")
        channels = settings["channels"]
        hidden = int(network["hidden_dim"])
        stem_stride = as_triple(network["stem_stride"])
        finest = encoder_level_strides(network)[len(network["stage_strides"]) - int(network["num_feature_levels"])]
        self.ratio_to_stem: Triple = tuple(f // s for f, s in zip(finest, stem_stride))  # type: ignore[assignment]
        self.stem_stride = stem_stride
        self.full_resolution = settings["stride"] != stem_stride
        self.reduce = nn.Conv3d(hidden, channels, 1)
        self.stem_skip = nn.Conv3d(int(network["stem_channels"]), channels, 1)
        self.stem_block = ConvNormAct(channels, channels, (1, 1, 1), norm)
        if self.full_resolution:
            self.image_skip = nn.Conv3d(int(network.get("in_channels", 1)), channels, 1)
            self.image_block = ConvNormAct(channels, channels, (1, 1, 1), norm)
        self.classifier = nn.Conv3d(channels, num_classes + 1, 1)
        nn.init.zeros_(self.classifier.weight)  # starts as the finest MSA level's logits, upsampled
        nn.init.zeros_(self.classifier.bias)

    def forward_with_features(self, finest_level: torch.Tensor, finest_logits: torch.Tensor, stem_features: torch.Tensor,
                              images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits, features [B, channels, ...]) on the fine grid: the finest MSA level's logits upsampled
        (trilinear) plus a learned correction from the skip path's features, so the head finds every organ
        the coarse head finds from the start and learns to sharpen its borders (coarse-to-fine residual
        refinement). The features are also a decoder level with `network.decoder_fine_level`."""
        x = upsample_to(self.reduce(finest_level), self.ratio_to_stem, stem_features.shape[2:])
        x = self.stem_block(x + self.stem_skip(stem_features))
        if self.full_resolution:
            x = upsample_to(x, self.stem_stride, images.shape[2:])
            x = self.image_block(x + self.image_skip(images))
        coarse = F.interpolate(finest_logits, size=tuple(x.shape[2:]), mode="trilinear", align_corners=False)
        return coarse + self.classifier(x), x

    def forward(self, finest_level: torch.Tensor, finest_logits: torch.Tensor, stem_features: torch.Tensor,
                images: torch.Tensor) -> torch.Tensor:
        """Logits on the fine grid (see `forward_with_features`)."""
        return self.forward_with_features(finest_level, finest_logits, stem_features, images)[0]
