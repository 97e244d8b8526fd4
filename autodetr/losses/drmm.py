"""D-RMM loss: mixture negative log-likelihood + maximum component maximization (seed 004, Section 3.3).

For one image with queries k = 1..K and a ground truth g = (b_g, c_g) (box in normalised centre form
`(cz, cy, cx, d, h, w)`, the same form as the head's mu; class c_g in 1..C, column c_g - 1 of p):

    component_k(g) = pi_k * F(b_g; mu_k, gamma_k) * p_k(c_g),   pi_k = o_k / sum_j o_j
    F(b; mu, gamma) = prod_{d=1..6} 1 / (pi * gamma_d * (1 + ((b_d - mu_d) / gamma_d)^2))   (Eq. 3)
    NLL(g) = -log sum_k component_k(g)                                                          (Eq. 5)
    MCM(g) = -log(max_k component_k(g) / sum_k component_k(g))                                  (Eq. 6-8)
    L      = NLL + beta * MCM, beta = 0.5, summed over decoder layers                           (Sec. 3.3)

Reading choices (the text extraction of the paper garbles some of the formulas):
- Eq. 6 reads "-log max(g|X) / p(g|X)"; the consistent reading is -log of the ratio, which is >= 0, zero
  when one component carries all the likelihood and log K for K equal components (Fig. 5, Table 4
  reports exp(-L_MCM) = max / p in (0, 1]).
- Stop-gradient (Appendix B, Table 7, best row): inside MCM the Cauchy factor F is detached, pi and p
  are not. NLL has no stop-gradient. `detach_class_in_mcm=True` gives the third row of Table 7.
- The paper models corner coordinates (l, t, r, b); here the six coordinates are the centre-form box of
  the code base. The factorised density is the same formula on the other parametrisation.
- Normalisation: the paper's loss is per ground truth (Eq. 4) and its validation losses are averages
  per instance (Tables 4, 9); it gives no per-image weighting. Default `normalisation="instance"`: each
  layer's loss is the mean over all ground truths of the batch. `normalisation="sample"`: mean over the
  ground truths of each sample, then mean over the samples that have ground truth.
- Samples without ground truth: the paper has no term for them. Objectness enters the objective only
  through pi, normalised per image, so an image without objects contributes nothing (no gradient,
  not even to push objectness down), and within an image objectness is learned only relative to the
  other queries. Such samples contribute exactly 0 here; a batch without any ground truth gives a
  zero loss that is still connected to the graph (zero gradients, no NaN).
- Numerics: everything in log space (logsumexp over queries), float32 with autocast disabled; the
  per-coordinate log density is written log F_d = log gamma - 2 log hypot(gamma, b - mu) - log pi,
  which stays finite for tiny and huge scales and far-off boxes.
- The total can be negative: densities in normalised units exceed 1 for sharp components.
- Location gradient balance (`location_beta`, plans `loss.drmm_location_beta`, default 1; 0 is the
  plain gradient): the gradient that reaches mu_{k,d} is multiplied by `w = gamma_{k,d}^beta /
  mean(gamma^beta)` (gamma detached). The loss VALUE is unchanged (mu enters as
  `mu.detach() + w * (mu - mu.detach())`), only the step direction changes, as in beta-NLL for
  Gaussian likelihoods (Seitzer et al., ICLR 2022). Why: d(-log F_d)/d mu_d = -2 (b_d - mu_d) /
  (gamma_d^2 + (b_d - mu_d)^2) is about 1 / gamma_d for a coordinate that already fits (gamma at its
  floor) and only 2 / |b_d - mu_d| for one that is far off; every query's six coordinates share the
  decoder's parameters, so the fitted coordinates' gradients, 10-100x larger, drown the far one and a
  box stays stuck with five good coordinates and one wrong (measured on one phantom case: 7-9 of 14
  organs found after 300-600 steps with beta 0, 11-14 of 14 with beta 1, see `tests/test_overfit.py`).
  Weighting by gamma makes both of order one.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import torch
from torch import nn

from autodetr.model.drmm_head import log_mixing_weights
from autodetr.plans import Plans

from .segmentation import SegmentationTerm

__all__ = ["DRMMLoss", "balance_location_gradient", "cauchy_log_density", "drmm_gt_terms"]

_LOG_PI = math.log(math.pi)


def cauchy_log_density(boxes: torch.Tensor, mu: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
    """Sum over the last dimension of the log Cauchy density log F(b_d; mu_d, gamma_d) (broadcasting)."""
    diff = boxes - mu
    per_coordinate = torch.log(gamma) - 2.0 * torch.log(torch.hypot(gamma, diff)) - _LOG_PI
    return per_coordinate.sum(dim=-1)


def _pad_targets(targets: Sequence[dict], num_classes: int, device: torch.device):
    """Targets -> padded `boxes [B, G, 6]`, zero-based `classes [B, G]`, `valid [B, G]` (G = max count)."""
    counts = [int(t["labels"].numel()) for t in targets]
    max_count = max(counts, default=0)
    batch = len(targets)
    boxes = torch.full((batch, max(max_count, 1), 6), 0.5, dtype=torch.float32, device=device)
    classes = torch.zeros((batch, max(max_count, 1)), dtype=torch.int64, device=device)
    valid = torch.zeros((batch, max(max_count, 1)), dtype=torch.bool, device=device)
    for b, (target, count) in enumerate(zip(targets, counts)):
        if count == 0:
            continue
        target_boxes = torch.as_tensor(target["boxes"], device=device).float().reshape(-1, 6)
        if target_boxes.shape[0] != count:
            raise ValueError(f"sample {b}: {target_boxes.shape[0]} boxes but {count} labels")
        boxes[b, :count] = target_boxes
        classes[b, :count] = torch.as_tensor(target["labels"], device=device).long().reshape(-1) - 1
        valid[b, :count] = True
    if valid.any():
        chosen = classes[valid]
        low, high = int(chosen.min()), int(chosen.max())
        if low < 0 or high >= num_classes:
            raise ValueError(f"ground-truth labels must be in 1..{num_classes}, got {low + 1}..{high + 1}")
    return boxes, classes, valid


def drmm_gt_terms(
    layer_output: dict,
    targets: Sequence[dict],
    detach_cauchy_in_mcm: bool = True,
    detach_class_in_mcm: bool = False,
    location_beta: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-ground-truth NLL and MCM of one layer's head output.

    `location_beta` > 0 rescales the gradient reaching mu (not the value; module docstring).

    `layer_output`: `{"log_objectness" [B, N], "class_log_probs" [B, N, C], "mu" [B, N, 6], "gamma" [B, N, 6]}`;
    `targets`: B dicts `{"labels": [G_b] in 1..C, "boxes": [G_b, 6] normalised centre form}`.
    Returns float32 `(nll [G], mcm [G], sample_index [G])` over all G = sum G_b ground truths, in
    sample order. Runs in float32 with autocast disabled.
    """
    log_objectness = layer_output["log_objectness"]
    device = log_objectness.device
    if len(targets) != log_objectness.shape[0]:
        raise ValueError(f"{len(targets)} targets for a batch of {log_objectness.shape[0]}")
    with torch.autocast(device_type=device.type, enabled=False):
        log_pi = log_mixing_weights(log_objectness.float())  # [B, N]
        class_log_probs = layer_output["class_log_probs"].float()  # [B, N, C]
        mu = layer_output["mu"].float()
        gamma = layer_output["gamma"].float()
        if location_beta > 0 and mu.requires_grad:
            mu = balance_location_gradient(mu, gamma, location_beta)
        batch, num_queries, num_classes = class_log_probs.shape
        boxes, classes, valid = _pad_targets(targets, num_classes, device)
        log_cauchy = cauchy_log_density(boxes[:, None, :, :], mu[:, :, None, :], gamma[:, :, None, :])  # [B, N, G]
        index = classes[:, None, :].expand(batch, num_queries, classes.shape[1])
        log_class = class_log_probs.gather(2, index)  # [B, N, G]
        log_component = log_pi[:, :, None] + log_cauchy + log_class
        nll = -torch.logsumexp(log_component, dim=1)  # [B, G]
        mcm_component = (
            log_pi[:, :, None]
            + (log_cauchy.detach() if detach_cauchy_in_mcm else log_cauchy)
            + (log_class.detach() if detach_class_in_mcm else log_class)
        )
        mcm = torch.logsumexp(mcm_component, dim=1) - mcm_component.max(dim=1).values  # [B, G], >= 0
        sample_index = torch.arange(batch, device=device)[:, None].expand_as(valid)
        return nll[valid], mcm[valid], sample_index[valid]


def balance_location_gradient(mu: torch.Tensor, gamma: torch.Tensor, beta: float) -> torch.Tensor:
    """`mu` with the same value whose gradient is multiplied by `gamma^beta / mean(gamma^beta)` (detached)."""
    weight = gamma.detach() ** beta
    weight = weight / weight.mean().clamp(min=torch.finfo(weight.dtype).tiny)
    return mu.detach() + weight * (mu - mu.detach())


def _graph_zero(output: dict) -> torch.Tensor:
    """A float32 zero connected to every tensor of a head output (zero gradients, no NaN)."""
    total = None
    for layer in [output] + list(output.get("aux_outputs", [])):
        for key in ("log_objectness", "class_log_probs", "mu", "gamma"):
            term = layer[key].float().sum() * 0.0
            total = term if total is None else total + term
    return total


class DRMMLoss(nn.Module):
    """D-RMM objective `sum over layers of mean_g (NLL + beta * MCM)`.

    Args:
        beta: MCM weight (paper and the plan's `loss.drmm_beta`: 0.5).
        normalisation: "instance" (mean over all ground truths of the batch, default) or "sample"
            (mean per sample, then over samples with ground truth).
        detach_cauchy_in_mcm: stop-gradient on F inside MCM (paper's best setting, default True).
        detach_class_in_mcm: also stop-gradient on p inside MCM (Table 7, third row; default False).
        aux_loss: also sum the loss of `outputs["aux_outputs"]` (the earlier decoder layers).
        location_beta: gradient balance of the box location (module docstring); 0 = plain gradient.

    `forward(outputs, targets)`: `outputs` is a `DRMMHead` output (final layer dict with optional
    `aux_outputs`), `targets` a list of `{"labels" [G] in 1..C, "boxes" [G, 6] normalised centre}`.
    Returns `(loss, components)`, `loss` a float32 scalar tensor and `components` a dict of floats:
    `nll`, `mcm` (summed over layers, so loss = nll + beta * mcm), `nll_final`, `mcm_final`,
    `max_component_ratio` (final layer mean of exp(-MCM), the paper's Table 9 statistic; 1 without
    ground truth) and `num_gt`.
    """

    def __init__(
        self,
        beta: float = 0.5,
        normalisation: str = "instance",
        detach_cauchy_in_mcm: bool = True,
        detach_class_in_mcm: bool = False,
        aux_loss: bool = True,
        location_beta: float = 0.0,
    ):
        super().__init__()
        if normalisation not in ("instance", "sample"):
            raise ValueError(f"normalisation must be 'instance' or 'sample', got {normalisation!r}")
        if beta < 0 or location_beta < 0:
            raise ValueError(f"beta and location_beta must be >= 0, got {beta}, {location_beta}")
        self.beta = float(beta)
        self.normalisation = normalisation
        self.detach_cauchy_in_mcm = detach_cauchy_in_mcm
        self.detach_class_in_mcm = detach_class_in_mcm
        self.aux_loss = aux_loss
        self.location_beta = float(location_beta)

    @classmethod
    def from_plans(cls, plans: dict, **kwargs) -> "DRMMLoss":
        """Build with `beta` = `loss.drmm_beta` and `location_beta` = `loss.drmm_location_beta` of the plan
        (defaults in `autodetr.plans.LOSS_DEFAULTS`: 0.5, and 0 for plans written before the key existed)."""
        loss = Plans.of(plans).loss
        kwargs.setdefault("location_beta", float(loss["drmm_location_beta"]))
        return cls(beta=float(loss["drmm_beta"]), **kwargs)

    def _reduce(self, values: torch.Tensor, sample_index: torch.Tensor, batch: int) -> torch.Tensor:
        if self.normalisation == "instance":
            return values.sum() / values.numel()
        sums = torch.zeros(batch, dtype=values.dtype, device=values.device).index_add(0, sample_index, values)
        counts = torch.bincount(sample_index, minlength=batch).to(values.dtype)
        has_gt = counts > 0
        return (sums[has_gt] / counts[has_gt]).mean()

    def forward(self, outputs: dict, targets: Sequence[dict]) -> tuple[torch.Tensor, dict[str, float]]:
        layers = ([*outputs.get("aux_outputs", [])] if self.aux_loss else []) + [outputs]
        batch = outputs["log_objectness"].shape[0]
        device = outputs["log_objectness"].device
        with torch.autocast(device_type=device.type, enabled=False):
            total = _graph_zero(outputs)
            nll_sum = mcm_sum = 0.0
            nll_last = mcm_last = 0.0
            ratio_last = 1.0
            num_gt = 0
            for layer in layers:
                nll, mcm, sample_index = drmm_gt_terms(
                    layer, targets, self.detach_cauchy_in_mcm, self.detach_class_in_mcm, self.location_beta
                )
                num_gt = int(nll.numel())
                if num_gt == 0:
                    nll_last = mcm_last = 0.0
                    ratio_last = 1.0
                    continue
                nll_layer = self._reduce(nll, sample_index, batch)
                mcm_layer = self._reduce(mcm, sample_index, batch)
                total = total + nll_layer + self.beta * mcm_layer
                nll_last, mcm_last = float(nll_layer.detach()), float(mcm_layer.detach())
                ratio_last = float(torch.exp(-mcm.detach()).mean())
                nll_sum += nll_last
                mcm_sum += mcm_last
        components = {
            "nll": nll_sum,
            "mcm": mcm_sum,
            "nll_final": nll_last,
            "mcm_final": mcm_last,
            "max_component_ratio": ratio_last,
            "num_gt": float(num_gt),
        }
        return total, components


class DRMMCriterion(nn.Module):
    """D-RMM loss on `outputs["drmm"]` plus `lambda_seg * L_seg` on `outputs["seg_logits"]`.

    `criterion(outputs, targets, seg_target) -> (loss, components)`; components: the `DRMMLoss` floats
    (`nll`, `mcm`, ...), `seg` (unweighted) and `total`.
    """

    def __init__(self, plans: dict[str, Any]) -> None:
        super().__init__()
        from autodetr.model.fine_segmentation import segmentation_strides

        self.drmm = DRMMLoss.from_plans(plans)
        self.segmentation = SegmentationTerm.from_plans(plans, segmentation_strides(plans))

    def forward(
        self, outputs: dict[str, Any], targets: Sequence[dict[str, torch.Tensor]], seg_target: torch.Tensor | None = None,
        images: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, dict[str, float]]:
        total, components = self.drmm(outputs["drmm"], targets)
        components = dict(components)
        total = self.segmentation.add(total, components, outputs, seg_target, targets, images)
        components["total"] = float(total.detach())
        return total, components
