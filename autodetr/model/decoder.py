"""3D Deformable DETR decoder with iterative box refinement (Zhu et al. 2020, with_box_refine).

Queries: a learned embedding split into query position and content (tgt). Reference boxes: layer 0
uses boxes predicted from the query position (sigmoid(Linear(query_pos)), 6-d, so every layer uses the
box-scaled sampling offsets of the 4-d reference variant); layer k > 0 uses the box refined by layer
k - 1, DETACHED. Layer k refines its reference box r_k into b_k = sigmoid(inverse_sigmoid(r_k) +
MLP_k(h_k)) with h_k the layer's output features.

Class-anchored queries (`anchors` given; `autodetr.model.anchors`): the layer-0 reference boxes are the
atlas anchors placed in each sample's valid region instead of a learned box, the query content is a
learned embedding per query, and the query position is computed from the current reference box in
every layer (a sine encoding of its six coordinates through an MLP, the idea of DAB-DETR, Liu et al.
2022), so a query's position always says where its box is.
"""
from __future__ import annotations

import math

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn

from .deformable_attention import MultiScaleDeformableAttention3D
from .dropout import FastDropout
from .anchors import full_valid_boxes, place_anchors, spread_boxes
from .heads import MLP, inverse_sigmoid

#: Sine frequencies per box coordinate of the anchored query position (2 x 6 x this features).
BOX_ENCODING_FREQUENCIES = 8


def box_sine_encoding(boxes: torch.Tensor, frequencies: int = BOX_ENCODING_FREQUENCIES) -> torch.Tensor:
    """`[..., 6]` normalised boxes -> `[..., 12 * frequencies]` sin / cos features (periods 2 .. 2 / 2^(F-1))."""
    scales = (2.0 ** torch.arange(frequencies, device=boxes.device, dtype=boxes.dtype)) * math.pi
    angles = boxes[..., None] * scales
    return torch.cat([angles.sin(), angles.cos()], dim=-1).flatten(-2)


@dataclass
class DecoderOutput:
    """features h_k [L_dec, B, N, f]; reference_boxes r_k [L_dec, B, N, 6] (the box layer k sampled around and
    refined from: r_0 learned, with gradient; r_k = b_{k-1}.detach()); refined_boxes b_k [L_dec, B, N, 6]."""

    features: torch.Tensor
    reference_boxes: torch.Tensor
    refined_boxes: torch.Tensor


class DeformableDecoderLayer(nn.Module):
    """Query self-attention, multi-scale deformable cross-attention, FFN; each with residual + LayerNorm."""

    def __init__(self, dim: int, heads: int, levels: int, points: int, ffn_dim: int, dropout: float,
                 projected_levels: int = 0) -> None:
        super().__init__()
        self.self_attention = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.dropout1 = FastDropout(dropout)
        self.norm1 = nn.LayerNorm(dim)
        self.cross_attention = MultiScaleDeformableAttention3D(dim, levels, heads, points, projected_levels)
        self.dropout2 = FastDropout(dropout)
        self.norm2 = nn.LayerNorm(dim)
        self.ffn = nn.Sequential(nn.Linear(dim, ffn_dim), nn.ReLU(inplace=True), FastDropout(dropout), nn.Linear(ffn_dim, dim))
        self.dropout3 = FastDropout(dropout)
        self.norm3 = nn.LayerNorm(dim)

    def forward(self, tgt, query_pos, reference_boxes, values, level_scales) -> torch.Tensor:
        q = k = tgt + query_pos
        attended = self.self_attention(q, k, tgt, need_weights=False)[0]
        tgt = self.norm1(tgt + self.dropout1(attended))
        attended = self.cross_attention(tgt + query_pos, reference_boxes, values, level_scales)
        tgt = self.norm2(tgt + self.dropout2(attended))
        return self.norm3(tgt + self.dropout3(self.ffn(tgt)))


class DeformableDecoder(nn.Module):
    """N learned queries -> per-layer features, reference boxes and refined boxes (see `DecoderOutput`)."""

    def __init__(self, dim: int, num_queries: int, layers: int, heads: int, levels: int, points: int, ffn_dim: int,
                 dropout: float, anchors: torch.Tensor | None = None, mask_spread: torch.Tensor | None = None,
                 projected_levels: int = 0) -> None:
        """`projected_levels`: the last levels of `values` come already projected (see
        `MultiScaleDeformableAttention3D`)."""
        super().__init__()
        self.dim = dim
        self.anchored = anchors is not None
        # [N, 6] offsets of every query's anchor around its class's mask box (`anchors.mask_spread_offsets`);
        # derived from the plan, so not part of the state dict
        self.register_buffer("mask_spread", None if mask_spread is None else mask_spread.float().clone(), persistent=False)
        if self.anchored:
            if anchors.shape != (num_queries, 6):
                raise ValueError(f"anchors must be [{num_queries}, 6], got {list(anchors.shape)}")
            self.register_buffer("anchors", anchors.float().clone())
            self.query_content = nn.Embedding(num_queries, dim)
            self.query_position = MLP(12 * BOX_ENCODING_FREQUENCIES, dim, dim, 2)
        else:
            self.query_embed = nn.Embedding(num_queries, 2 * dim)
            self.initial_reference = nn.Linear(dim, 6)
            nn.init.xavier_uniform_(self.initial_reference.weight)
            nn.init.zeros_(self.initial_reference.bias)
        self.layers = nn.ModuleList(DeformableDecoderLayer(dim, heads, levels, points, ffn_dim, dropout, projected_levels)
                                    for _ in range(layers))
        self.box_refine = nn.ModuleList(MLP(dim, dim, 6, 3) for _ in range(layers))
        for mlp in self.box_refine:
            nn.init.zeros_(mlp.layers[-1].weight)
            nn.init.zeros_(mlp.layers[-1].bias)

    def _mask_anchored(self, reference: torch.Tensor, boxes: torch.Tensor, found: torch.Tensor) -> torch.Tensor:
        """Anchors `[B, N, 6]` with the mask boxes `[B, C, 6]` of the classes found `[B, C]` put in: slot 0 of
        each group, or every slot moved by its mask-spread offset (query k serves class k mod C)."""
        count = boxes.shape[1]
        boxes = boxes.to(reference.dtype)
        if self.mask_spread is None:
            first = torch.where(found[..., None], boxes, reference[:, :count])
            return torch.cat([first, reference[:, count:]], dim=1)
        slots = -(-reference.shape[1] // count)
        tiled = boxes.repeat(1, slots, 1)[:, : reference.shape[1]]
        tiled_found = found.repeat(1, slots)[:, : reference.shape[1]]
        return torch.where(tiled_found[..., None], spread_boxes(tiled, self.mask_spread.to(reference.dtype)), reference)

    def forward(self, values: Sequence[torch.Tensor], level_scales: torch.Tensor,
                valid_boxes: torch.Tensor | None = None,
                proposals: tuple[torch.Tensor, torch.Tensor] | None = None) -> DecoderOutput:
        """`valid_boxes` [B, 6]: each sample's unpadded region (normalised corners); `proposals`: mask boxes
        [B, C, 6] and found [B, C] (`anchors.mask_boxes`) that replace the first C queries' anchors (slot 0
        of each class group) where found -- every query's, moved by its `mask_spread` offset, when the decoder
        has them. Both for anchored queries only."""
        batch = values[0].shape[0]
        if self.anchored:
            if valid_boxes is None:
                valid_boxes = full_valid_boxes(batch, values[0].device)
            tgt = self.query_content.weight[None].expand(batch, -1, -1)
            reference = place_anchors(self.anchors, valid_boxes.to(values[0].dtype))
            if proposals is not None:
                reference = self._mask_anchored(reference, *proposals)
            query_pos = None
        else:
            query_pos, tgt = self.query_embed.weight.split(self.dim, dim=-1)
            query_pos = query_pos[None].expand(batch, -1, -1)
            tgt = tgt[None].expand(batch, -1, -1)
            reference = self.initial_reference(query_pos).sigmoid()
        features, references, refined = [], [], []
        for layer, refine in zip(self.layers, self.box_refine):
            if self.anchored:
                query_pos = self.query_position(box_sine_encoding(reference))
            tgt = layer(tgt, query_pos, reference, values, level_scales)
            boxes = (inverse_sigmoid(reference) + refine(tgt)).sigmoid()
            features.append(tgt)
            references.append(reference)
            refined.append(boxes)
            reference = boxes.detach()
        return DecoderOutput(torch.stack(features), torch.stack(references), torch.stack(refined))
