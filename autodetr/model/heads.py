"""Prediction heads: box MLP, DETR class/box head (pluggable), multiscale segmentation head."""
from __future__ import annotations

import math
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


class GroupedDETRHead(nn.Module):
    """Score head of class-anchored queries: query k predicts "class c(k) or nothing" with one logit.

    Output (merged into the model output): `pred_objectness` [B, N] logits (score = sigmoid, trained as
    the IoU of the query's box with its ground truth: `autodetr.losses.grouped`), `pred_boxes` [B, N, 6],
    `query_classes` [N] (1..C), and `aux_outputs` of the earlier layers. The score layers start at zero
    weight, so the untrained score of query k is `sigmoid(initial_logits[k])` (a per-query learned bias
    shared by all layers, initialised from the atlas: `autodetr.detector.initial_score_logits`).
    """

    def __init__(self, hidden_dim: int, num_layers: int, classes_of_queries: torch.Tensor, initial_logits: torch.Tensor) -> None:
        super().__init__()
        self.score_embed = nn.ModuleList(nn.Linear(hidden_dim, 1) for _ in range(num_layers))
        for layer in self.score_embed:
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)
        self.query_bias = nn.Parameter(initial_logits.float().clone())
        self.register_buffer("query_classes", classes_of_queries.long().clone())

    def forward(self, query_features: torch.Tensor, reference_boxes: torch.Tensor, refined_boxes: torch.Tensor) -> dict[str, Any]:
        per_layer = [
            {"pred_objectness": embed(features)[..., 0] + self.query_bias, "pred_boxes": boxes, "query_classes": self.query_classes}
            for embed, features, boxes in zip(self.score_embed, query_features, refined_boxes)
        ]
        return {**per_layer[-1], "aux_outputs": per_layer[:-1]}


class SegmentationHead(nn.Module):
    """Multiscale segmentation head (Sec. 3): a 1x1x1 conv per MSA level to C + 1 channels (training only)."""

    def __init__(self, hidden_dim: int, num_classes: int, num_levels: int) -> None:
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv3d(hidden_dim, num_classes + 1, 1) for _ in range(num_levels))
        for conv in self.convs:  # background starts as likely as all organs together (prior init, RetinaNet)
            with torch.no_grad():
                conv.bias.zero_()
                conv.bias[0] = math.log(max(1, num_classes))

    def forward(self, levels: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        return [conv(level) for conv, level in zip(self.convs, levels)]
