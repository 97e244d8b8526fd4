"""Organ-DETR (Sec. 3, Fig. 2): backbone -> MSA encoder -> multiscale segmentation head -> 3D deformable
decoder -> head. Built from a plans dict (`docs/architecture.md`).

`model(images [B, C_in, D, H, W])` returns
- `pred_logits` [B, N, C + 1] (logit 0 = no object), `pred_boxes` [B, N, 6] (sigmoid, normalised
  (cz, cy, cx, d, h, w) relative to the image's D, H, W): the last decoder layer;
- `aux_outputs`: `[{pred_logits, pred_boxes}]` of decoder layers 0 .. L_dec - 2;
- `seg_logits`: one `[B, C + 1, d_l, h_l, w_l]` per MSA level, COARSEST FIRST (P^(1) first); only
  computed in training mode or with `with_segmentation=True`, else an empty list;
- `query_features` [L_dec, B, N, f_e]: the output features h_k of every decoder layer;
- `reference_boxes` [L_dec, B, N, 6]: r_k, the reference box decoder layer k sampled around and refined
  from, normalised centre form, BEFORE the layer's delta: layer k's box is
  sigmoid(inverse_sigmoid(r_k) + delta_k(h_k)). r_0 is learned from the query position embedding and
  carries gradient; r_k (k > 0) is layer k - 1's refined box, detached (Deformable DETR box refinement).
With class-anchored queries (`anchors` [N, 6] from the organ atlas, `autodetr.model.anchors`) the decoder
starts every query at its class's anchor inside the sample's valid region (`valid_boxes`); with
`network.mask_enhanced_anchors` the segmentation head of the finest MSA level runs in every forward and
each class group's first query starts at the box of its soft mask where one is found; with
`network.fine_segmentation` a fine head (`autodetr.model.fine_segmentation`) adds one more, finer
segmentation output (last in `seg_logits`) and the mask boxes come from its grid; with
`network.decoder_fine_level` as well, the fine head's features, projected once to f_e (shared by all
decoder layers: a per-layer value projection of a stride-2 map costs more than the rest of the layer on a
CPU; the projection is applied to the sampled points, `autodetr.model.projected_level`), are one more
level the decoder's deformable attention samples (after the MSA levels), so box edges are read from the
stem's grid rather than only from the MSA levels (the finest of which has stride 4): the high-resolution
level Deformable DETR adds to its pyramid, and the U-Net decoder features Retina U-Net detects from.
A replacement head (e.g. D-RMM) is passed as `head=`: a module called as
`head(query_features, reference_boxes, refined_boxes) -> dict`, merged into the output.
"""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from autodetr.plans import Plans

from .anchors import mask_boxes, mask_extent_boxes, mask_spread_offsets
from .backbone import Backbone
from .decoder import DeformableDecoder
from .fine_segmentation import FineSegmentationHead, fine_segmentation_settings
from .heads import DETRHead, SegmentationHead
from .msa import MSAEncoder
from .projected_level import project_after_sampling


def level_scales(input_shape, level_shapes, strides, device=None) -> torch.Tensor:
    """[L, 3] factors input-normalised -> level-normalised coordinates: input / (stride * level shape)."""
    return torch.tensor(
        [[n / (s * m) for n, s, m in zip(input_shape, stride, shape)] for shape, stride in zip(level_shapes, strides)],
        dtype=torch.float32,
        device=device,
    )


class OrganDETR(nn.Module):
    """The full detector; see the module docstring for the output dict."""

    def __init__(self, plans: dict[str, Any], head: nn.Module | None = None, anchors: torch.Tensor | None = None) -> None:
        super().__init__()
        planned = Plans.of(plans)
        network = planned.network
        num_classes = planned.num_classes
        hidden = int(network["hidden_dim"])
        levels = int(network["num_feature_levels"])
        msa, dec = network["msa"], network["decoder"]
        self.num_classes = num_classes
        self.backbone = Backbone(network)
        self.encoder = MSAEncoder(
            levels, hidden, int(msa["patch_size"]), int(msa["heads"]), int(msa["depth"]),
            int(msa.get("ffn_dim", 4 * hidden)), float(msa.get("dropout", 0.0)), bool(msa.get("bias", False)),
            str(msa.get("position", "absolute")),
        )
        self.segmentation_head = SegmentationHead(hidden, num_classes, levels)
        self.mask_enhanced = anchors is not None and bool(network.get("mask_enhanced_anchors", False))
        spread = float(network["mask_spread"])  # 0 in plans written before it (`Plans.upgrade`)
        mask_spread = mask_spread_offsets(int(network["num_queries"]), num_classes, spread) if self.mask_enhanced and spread > 0 else None
        fine = fine_segmentation_settings(network)
        self.decoder_fine_level = None
        if bool(network.get("decoder_fine_level", False)):
            if fine is None:
                raise ValueError("network.decoder_fine_level needs network.fine_segmentation (its features are the level)")
            self.decoder_fine_level = nn.Sequential(nn.Conv3d(fine["channels"], hidden, 1),
                                                    nn.GroupNorm(math.gcd(32, hidden), hidden))
        self.decoder = DeformableDecoder(
            hidden, int(network["num_queries"]), int(dec["layers"]), int(dec["heads"]),
            levels + (1 if self.decoder_fine_level is not None else 0),
            int(dec["points"]), int(dec.get("ffn_dim", 4 * hidden)), float(dec.get("dropout", 0.0)), anchors=anchors,
            mask_spread=mask_spread, projected_levels=1 if self.decoder_fine_level is not None else 0,
        )
        self.head = head if head is not None else DETRHead(hidden, num_classes, int(dec["layers"]))
        self.fine_segmentation = FineSegmentationHead(network, num_classes) if fine is not None else None
        self.fine_stride = fine["stride"] if fine is not None else None

    def forward(self, images: torch.Tensor, with_segmentation: bool | None = None,
                valid_boxes: torch.Tensor | None = None) -> dict[str, Any]:
        """`valid_boxes` [B, 6]: each sample's unpadded region as normalised corners (class-anchored
        queries place their anchors in it; None: the whole input)."""
        input_shape = tuple(images.shape[2:])
        stem, features = self.backbone.forward_with_stem(images)
        strides = self.backbone.strides
        encoded = self.encoder(features, strides, input_shape)
        scales = level_scales(input_shape, [tuple(f.shape[2:]) for f in encoded], strides, images.device)
        if with_segmentation is None:
            with_segmentation = self.training
        needs_masks = with_segmentation or self.mask_enhanced or self.decoder_fine_level is not None
        seg_logits = self.segmentation_head(encoded) if needs_masks else []
        values = list(encoded)
        if seg_logits and self.fine_segmentation is not None:
            fine_logits, fine_features = self.fine_segmentation.forward_with_features(encoded[-1], seg_logits[-1], stem, images)
            seg_logits.append(fine_logits)
            if self.decoder_fine_level is not None:
                values.append(project_after_sampling(self.decoder_fine_level, fine_features))
                scales = torch.cat([scales, level_scales(input_shape, [tuple(fine_features.shape[2:])], [self.fine_stride],
                                                         images.device)])
        proposals = None
        if self.mask_enhanced and self.fine_stride is not None:
            proposals = mask_extent_boxes(seg_logits[-1], self.fine_stride, input_shape)
        elif self.mask_enhanced:
            proposals = mask_boxes(seg_logits[-1], strides[-1], input_shape)
        decoded = self.decoder(values, scales, valid_boxes, proposals)
        outputs: dict[str, Any] = dict(self.head(decoded.features, decoded.reference_boxes, decoded.refined_boxes))
        outputs["seg_logits"] = seg_logits if with_segmentation else []
        outputs["query_features"] = decoded.features
        outputs["reference_boxes"] = decoded.reference_boxes
        return outputs
