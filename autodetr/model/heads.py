"""Prediction heads: box MLP, DETR class/box head (pluggable), multiscale segmentation head."""
from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn


def inverse_sigmoid(x: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """logit(x) with x clamped to [eps, 1 - eps] (Deformable DETR)."""
    x = x.clamp(0, 1)
    return torch.log(x.clamp(min=eps) / (1 - x).clamp(min=eps))


class MLP(nn.Module):
    """`layers` linear layers with ReLU in between (the DETR box head)."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int, layers: int) -> None:
        super().__init__()
        dims = [in_dim] + [hidden_dim] * (layers - 1) + [out_dim]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for index, layer in enumerate(self.layers):
            x = layer(x)
            if index < len(self.layers) - 1:
                x = torch.relu(x)
        return x


class DETRHead(nn.Module):
    """Class head (C + 1 logits, index 0 = no object) per decoder layer; boxes are the decoder's refined boxes.

    The interface of a pluggable head: `forward(query_features [L, B, N, f], reference_boxes [L, B, N, 6],
    refined_boxes [L, B, N, 6]) -> dict` whose keys are merged into the model output.
    """

    def __init__(self, hidden_dim: int, num_classes: int, num_layers: int) -> None:
        super().__init__()
        self.class_embed = nn.ModuleList(nn.Linear(hidden_dim, num_classes + 1) for _ in range(num_layers))

    def forward(self, query_features: torch.Tensor, reference_boxes: torch.Tensor, refined_boxes: torch.Tensor) -> dict[str, Any]:
        logits = [embed(features) for embed, features in zip(self.class_embed, query_features)]
        per_layer = [{"pred_logits": lg, "pred_boxes": bx} for lg, bx in zip(logits, refined_boxes)]
        return {**per_layer[-1], "aux_outputs": per_layer[:-1]}


class SegmentationHead(nn.Module):
    """Multiscale segmentation head (Sec. 3): a 1x1x1 conv per MSA level to C + 1 channels (training only)."""

    def __init__(self, hidden_dim: int, num_classes: int, num_levels: int) -> None:
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv3d(hidden_dim, num_classes + 1, 1) for _ in range(num_levels))

    def forward(self, levels: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        return [conv(level) for conv, level in zip(self.convs, levels)]
