"""Organ-DETR network: backbone, MSA encoder, 3D deformable decoder, heads (see organ_detr.py)."""
from __future__ import annotations

from typing import Any

from torch import nn

from .organ_detr import OrganDETR
from .postprocess import select_detections


def build_model(plans: dict[str, Any], head: nn.Module | None = None, anchors=None) -> OrganDETR:
    """The Organ-DETR network of a plan; `head` replaces the DETR class/box head (e.g. D-RMM); `anchors`
    [N, 6] makes the queries class-anchored (`autodetr.model.anchors`)."""
    return OrganDETR(plans, head=head, anchors=anchors)


__all__ = ["OrganDETR", "build_model", "select_detections"]
