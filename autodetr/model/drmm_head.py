"""D-RMM head: mixture-model parameters per decoder layer and query (seed 004, Section 3.2).

The D-RMM objective (Yoo et al., "End-to-End Multi-Object Detection with a Regularized Mixture Model")
treats the set of ground-truth boxes of an image as samples of a mixture density with one component per
query. This head turns the Organ-DETR decoder state into that mixture; the loss lives in
`autodetr.losses.drmm`, the NMS-free inference in `drmm_select_detections` below.

Inputs (see docs/architecture.md):
- `query_features` `[L_dec, B, N, hidden]`: decoder hidden state after every layer;
- `reference_boxes` `[L_dec, B, N, 6]`: the normalised centre-form `(cz, cy, cx, d, h, w)` reference box
  that decoder layer `l` attended around (its input anchor), in (0, 1).

Per layer and query k the head predicts (all float32, also under autocast):
- objectness `o_k = sigmoid(logit)`, returned as `log_objectness = logsigmoid(logit)` `[B, N]`;
- class probabilities `p_k` over the C organ classes, softmax without a background class, returned as
  `class_log_probs = log_softmax` `[B, N, C]` (class c in 1..C is column c - 1), or the fixed one-hot
  of the query's class group (see "Class groups" below);
- box location `mu_k` `[B, N, 6]`, normalised centre form like the ground truth: a delta on the
  inverse sigmoid of the reference box, `mu = sigmoid(inverse_sigmoid(reference) + delta)` (Deformable
  DETR box refinement; the paper adds a delta to the proposal in corner form, Fig. 4, which is the same
  idea in this code base's box convention). The last layer of the delta MLP starts at zero, so mu
  starts at the reference box. The reference is used as given: the decoder decides whether it passes a
  detached reference (Deformable DETR detaches between layers);
- Cauchy scale `gamma_k` `[B, N, 6]` = `softplus(raw) + floor`, with a floor proportional to the
  predicted box size: `floor = max(scale_floor * size, min_scale)` per coordinate, where `size` is
  `(d, h, w, d, h, w)` of mu: a centre coordinate's floor follows the box extent along its axis, a size
  coordinate's floor follows that size itself (DESIGN.md: about 0.04 * box size, the default here;
  the planner writes `network.drmm.scale_floor = 0.1`, which found 14/14 organs of the one-case overfit
  run where 0.04 found 11/14, together with the loss's location gradient balance). The size inside the
  floor is detached, so the NLL cannot shrink boxes just to sharpen the density; `min_scale` keeps the
  floor positive for degenerate (near zero size) boxes.

Class groups (`class_groups=True`, the planner's default for organ data; the paper's free class head is
`class_groups=False`): query k is dedicated to class `c(k) = k mod C` (+1), its class distribution is
the one-hot `p_k = e_c(k)` (log probability 0 for c(k), `OTHER_GROUP_LOG_PROB` for every other class)
and the head has no class layer. The likelihood of a ground truth of class c is then a mixture over
the queries of group c only, still weighted by `pi_k = o_k / sum_j o_j` over all queries, and the
inference score `p_kc * o_k` is `o_k` within the group. Why (measured, `tests/test_overfit.py` and
docs/architecture.md): with a free class head the mixture has a degenerate optimum on organ data --
one query explains m ground truths of m classes with `p = 1/m` and `pi = m / G`, so `pi * p` equals
that of m dedicated queries, and only a broader Cauchy scale tells them apart. Ownership is decided
in the first few steps by the nearest query in 6-d box space, and stacked organs of the same shape
(vertebrae L1-L5, aorta and vena cava) share their nearest query; its objectness then grows and the
other queries' objectness and responsibilities fall to zero, so no gradient moves them. On one tiny
phantom case the free head kept 4-8 distinct owners for 14 organs (5-6 found with IoU > 0.5 after
300-600 steps, whatever the initial scale, objectness prior, MCM weight or a learnable class prior);
with class groups every organ has its own owner from the first step (11/14 after 300 steps, 13/14
after 600; 11-14/14 after 300 steps over three seeds with the location gradient balance of
`autodetr.losses.drmm`, where the free head still finds 5/14). Organ datasets have at most one instance per class, so a class group of
`N / C` queries per class loses nothing; for instance data with many instances of a class, the
group of that class still has `N / C` components.

Mixing weights are not a separate output: `pi_k = o_k / sum_j o_j` over the queries of a sample
(Section 3.2), `log_mixing_weights(log_objectness)` computes them in log space.

`forward` returns the final layer's dict plus `aux_outputs`, the list of the earlier layers' dicts
(first layer first), like the DETR output. `forward_layer` runs one layer's head on its own, so a
decoder can use `mu` of layer l (detached) as the reference of layer l + 1, as the paper's iteration
structure does (Fig. 3).
"""
from __future__ import annotations

import copy
import math
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from .heads import MLP, inverse_sigmoid

__all__ = ["DRMMDecoderHead", "DRMMHead", "OTHER_GROUP_LOG_PROB", "drmm_select_detections", "inverse_sigmoid", "log_mixing_weights", "query_class_log_probs"]

#: log p_k(c) of a class outside the query's group (`class_groups=True`): exp() is exactly 0 in float32,
#: while sums and products with 0 stay finite (no -inf arithmetic, no NaN).
OTHER_GROUP_LOG_PROB = -1.0e4


def query_class_log_probs(num_queries: int, num_classes: int, device: torch.device | None = None) -> torch.Tensor:
    """Class groups: `[N, C]` log one-hot class distribution, query k -> class column `k mod C`."""
    if num_queries < num_classes:
        raise ValueError(f"class groups need at least one query per class: {num_queries} queries, {num_classes} classes")
    log_probs = torch.full((num_queries, num_classes), OTHER_GROUP_LOG_PROB, device=device)
    queries = torch.arange(num_queries, device=device)
    log_probs[queries, queries % num_classes] = 0.0
    return log_probs


def log_mixing_weights(log_objectness: torch.Tensor) -> torch.Tensor:
    """log pi_k = log o_k - logsumexp_j log o_j over the queries (last dimension), `[B, N] -> [B, N]`."""
    log_objectness = log_objectness.float()
    return log_objectness - torch.logsumexp(log_objectness, dim=-1, keepdim=True)


class _LayerHead(nn.Module):
    """The D-RMM head of one decoder layer."""

    def __init__(
        self, hidden_dim: int, num_classes: int, mlp_layers: int, init_scale: float, objectness_prior: float, class_groups: bool
    ):
        super().__init__()
        self.class_embed = None if class_groups else nn.Linear(hidden_dim, num_classes)
        self.objectness_embed = nn.Linear(hidden_dim, 1)
        # 12 outputs: 6 box deltas (on inverse-sigmoid scale) + 6 raw Cauchy scales.
        self.box_embed = MLP(hidden_dim, hidden_dim, 12, mlp_layers)
        if self.class_embed is not None:
            nn.init.zeros_(self.class_embed.bias)
        nn.init.constant_(self.objectness_embed.bias, math.log(objectness_prior / (1.0 - objectness_prior)))
        last = self.box_embed.layers[-1]
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
        with torch.no_grad():
            # softplus^-1(init_scale): the scale above the floor starts at init_scale (normalised units).
            last.bias[6:] = math.log(math.expm1(init_scale))


class DRMMHead(nn.Module):
    """Mixture-model head on the Organ-DETR decoder (one head per decoder layer unless `share_layers`).

    Args:
        hidden_dim: decoder width (`network.hidden_dim` of the plan).
        num_classes: C, the number of organ classes (no background class).
        num_layers: decoder layers L_dec (the leading dimension of the inputs).
        share_layers: one head for all layers instead of one per layer.
        mlp_layers: depth of the box/scale MLP (3, as Deformable DETR's box head).
        scale_floor: floor of gamma relative to the predicted box size (0.04; plans: 0.1).
        min_scale: absolute floor of gamma in normalised units (for near zero size boxes).
        init_scale: initial softplus part of gamma, normalised units.
        objectness_prior: initial objectness o of every query.
        class_groups: query k is dedicated to class `k mod C` (one-hot p, no class layer; module docstring).
    """

    def __init__(
        self,
        hidden_dim: int,
        num_classes: int,
        num_layers: int,
        share_layers: bool = False,
        mlp_layers: int = 3,
        scale_floor: float = 0.04,
        min_scale: float = 1e-4,
        init_scale: float = 0.05,
        objectness_prior: float = 0.1,
        class_groups: bool = False,
    ):
        super().__init__()
        if num_classes < 1 or num_layers < 1 or hidden_dim < 1:
            raise ValueError("hidden_dim, num_classes and num_layers must be positive")
        if not 0.0 < objectness_prior < 1.0:
            raise ValueError(f"objectness_prior must be in (0, 1), got {objectness_prior}")
        if scale_floor < 0 or min_scale <= 0 or init_scale <= 0:
            raise ValueError("scale_floor must be >= 0, min_scale and init_scale > 0")
        self.hidden_dim = hidden_dim
        self.num_classes = num_classes
        self.num_layers = num_layers
        self.share_layers = share_layers
        self.scale_floor = float(scale_floor)
        self.min_scale = float(min_scale)
        self.class_groups = bool(class_groups)
        head = _LayerHead(hidden_dim, num_classes, mlp_layers, init_scale, objectness_prior, self.class_groups)
        count = 1 if share_layers else num_layers
        self.heads = nn.ModuleList([head] + [copy.deepcopy(head) for _ in range(count - 1)])

    def scale_floor_of(self, mu: torch.Tensor) -> torch.Tensor:
        """The gamma floor for boxes `mu [..., 6]`: `max(scale_floor * (d, h, w, d, h, w), min_scale)`, detached."""
        size = mu[..., 3:].detach()
        return (self.scale_floor * torch.cat([size, size], dim=-1)).clamp(min=self.min_scale)

    def forward_layer(self, layer: int, features: torch.Tensor, reference: torch.Tensor) -> dict[str, torch.Tensor]:
        """One layer: `features [B, N, hidden]`, `reference [B, N, 6]` -> the per-layer dict (float32)."""
        if features.shape[:-1] != reference.shape[:-1] or reference.shape[-1] != 6:
            raise ValueError(f"features {tuple(features.shape)} and reference boxes {tuple(reference.shape)} do not match")
        if not 0 <= layer < self.num_layers:
            raise ValueError(f"layer {layer} outside 0..{self.num_layers - 1}")
        head = self.heads[0 if self.share_layers else layer]
        if head.class_embed is None:
            class_log_probs = query_class_log_probs(features.shape[-2], self.num_classes, features.device).expand(
                *features.shape[:-1], self.num_classes
            )
        else:
            class_log_probs = F.log_softmax(head.class_embed(features).float(), dim=-1)
        objectness_logits = head.objectness_embed(features).float().squeeze(-1)
        box_raw = head.box_embed(features).float()
        mu = torch.sigmoid(inverse_sigmoid(reference.float()) + box_raw[..., :6])
        gamma = F.softplus(box_raw[..., 6:]) + self.scale_floor_of(mu)
        return {
            "log_objectness": F.logsigmoid(objectness_logits),
            "class_log_probs": class_log_probs,
            "mu": mu,
            "gamma": gamma,
        }

    def forward(self, query_features: torch.Tensor, reference_boxes: torch.Tensor) -> dict:
        """`query_features [L, B, N, hidden]`, `reference_boxes [L, B, N, 6]` -> final layer dict + `aux_outputs`."""
        if query_features.dim() != 4 or reference_boxes.dim() != 4:
            raise ValueError("expected query_features [L, B, N, hidden] and reference_boxes [L, B, N, 6]")
        if query_features.shape[0] != self.num_layers and not self.share_layers:
            raise ValueError(f"head built for {self.num_layers} decoder layers, got {query_features.shape[0]}")
        if query_features.shape[0] != reference_boxes.shape[0]:
            raise ValueError("query_features and reference_boxes have different numbers of layers")
        layers = [
            self.forward_layer(0 if self.share_layers else index, query_features[index], reference_boxes[index])
            for index in range(query_features.shape[0])
        ]
        output = dict(layers[-1])
        output["aux_outputs"] = layers[:-1]
        return output


@torch.no_grad()
def drmm_select_detections(head_output: dict, max_per_class: int = 1, score_threshold: float = 0.0) -> list[dict]:
    """NMS-free D-RMM inference (Section 3.4) on the final layer of a `DRMMHead` output.

    Score of query k for class c: `p_kc * o_k`. For every class, the `max_per_class` best queries are
    kept (organs: 1, the best query per class); no NMS and no exclusivity across classes (a query may be
    the best one of two classes, as in the paper's top-k over all query-class pairs). Detections scoring
    below `score_threshold` are dropped.

    Returns a list (one per sample) of `{"boxes": [K, 6] normalised centre form (mu), "scores": [K],
    "labels": [K] int64 in 1..C}`, ordered by label and, within a label, by decreasing score; float32
    on the input's device.
    """
    if max_per_class < 1:
        raise ValueError(f"max_per_class must be >= 1, got {max_per_class}")
    log_objectness = head_output["log_objectness"].float()
    class_log_probs = head_output["class_log_probs"].float()
    mu = head_output["mu"].float()
    scores = torch.exp(class_log_probs + log_objectness.unsqueeze(-1))  # [B, N, C]
    batch, num_queries, num_classes = scores.shape
    k = min(max_per_class, num_queries)
    top_scores, top_queries = scores.topk(k, dim=1)  # [B, k, C]
    results = []
    for b in range(batch):
        sample_scores = top_scores[b].transpose(0, 1).reshape(-1)  # [C * k], class-major
        sample_queries = top_queries[b].transpose(0, 1).reshape(-1)
        labels = torch.arange(1, num_classes + 1, device=scores.device).repeat_interleave(k)
        keep = sample_scores >= score_threshold
        results.append(
            {
                "boxes": mu[b, sample_queries[keep]],
                "scores": sample_scores[keep],
                "labels": labels[keep].to(torch.int64),
            }
        )
    return results


class DRMMDecoderHead(nn.Module):
    """Pluggable Organ-DETR head (the D-RMM objective of `autodetr.detector`) (`head(query_features, reference_boxes, refined_boxes) -> dict`) that
    returns `{"drmm": DRMMHead output}` with mu tied to the decoder's refined boxes (module docstring)."""

    def __init__(
        self, hidden_dim: int, num_classes: int, num_layers: int, class_groups: bool = False, scale_floor: float = 0.04
    ) -> None:
        super().__init__()
        self.drmm = DRMMHead(hidden_dim, num_classes, num_layers, class_groups=class_groups, scale_floor=scale_floor)
        for layer_head in self.drmm.heads:
            last = layer_head.box_embed.layers[-1]
            with torch.no_grad():
                last.weight[:6].zero_()
                last.bias[:6].zero_()
            last.weight.register_hook(_zero_location_rows)
            last.bias.register_hook(_zero_location_rows)

    def forward(self, query_features: torch.Tensor, reference_boxes: torch.Tensor, refined_boxes: torch.Tensor) -> dict[str, Any]:
        return {"drmm": self.drmm(query_features, refined_boxes)}


def _zero_location_rows(gradient: torch.Tensor) -> torch.Tensor:
    gradient = gradient.clone()
    gradient[:6] = 0
    return gradient
