"""Hungarian matcher (DETR) and Dense Query Matching (Organ-DETR Sec. 3, Eq. 5).

Matching cost of query i and ground truth j (DETR):
    C_ij = w_cls * (-p_i(class_j)) + w_L1 * |b_i - g_j|_1 + w_giou * (-GIoU(b_i, g_j)),
p = softmax over the C + 1 logits, boxes in normalised centre form (GIoU on their corners).

DQM: every ground truth is matched to exactly 1 + eta DISTINCT queries, eta = ceil(lambda * rho)
(Eq. 5; the paper's text: "DQM strictly assigns 1 + eta queries to each ground truth"). This is an
assignment problem with every ground-truth column of C repeated 1 + eta times, solved exactly by
`scipy.optimize.linear_sum_assignment`; the remaining queries are background. If the queries cannot
cover it (N < (1 + eta) * G), every ground truth gets k = max(1, N // G) copies instead (the largest
equal share); if even N < G, plain rectangular Hungarian matching leaves G - N ground truths unmatched.
With eta = 0, DQM is the Hungarian matcher.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from autodetr.boxes_torch import centre_to_corners, generalized_box_iou_pairwise
from autodetr.plans import Plans

Match = tuple[torch.Tensor, torch.Tensor]  # (query indices [K], ground-truth indices [K]), int64


def matching_cost(
    logits: torch.Tensor, boxes: torch.Tensor, labels: torch.Tensor, gt_boxes: torch.Tensor,
    weight_class: float, weight_l1: float, weight_giou: float,
) -> torch.Tensor:
    """[N, G] matching cost of one sample (logits [N, C + 1], boxes [N, 6], labels [G], gt_boxes [G, 6])."""
    probabilities = logits.float().softmax(-1)[:, labels]
    boxes, gt_boxes = boxes.float(), gt_boxes.float()
    cost_l1 = torch.cdist(boxes, gt_boxes, p=1)
    cost_giou = -generalized_box_iou_pairwise(centre_to_corners(boxes), centre_to_corners(gt_boxes))
    return weight_class * (-probabilities) + weight_l1 * cost_l1 + weight_giou * cost_giou


def assign_with_copies(cost: np.ndarray, copies: int) -> tuple[np.ndarray, np.ndarray]:
    """Min-cost assignment of each column (ground truth) to `copies` distinct rows (queries).

    Returns (rows, columns) sorted by row, columns indexing the ORIGINAL columns. Reduces `copies` to
    max(1, N // G) when the rows cannot cover every copy (see the module docstring).
    """
    num_queries, num_targets = cost.shape
    if num_targets == 0 or num_queries == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    copies = max(1, min(int(copies), num_queries // num_targets))
    cost = np.nan_to_num(np.asarray(cost, dtype=np.float64), nan=1e6, posinf=1e6, neginf=-1e6)
    rows, columns = linear_sum_assignment(np.repeat(cost, copies, axis=1))
    columns = columns // copies
    order = np.argsort(rows)
    return rows[order].astype(np.int64), columns[order].astype(np.int64)


def dqm_duplicates(plans: dict[str, Any]) -> int:
    """eta of Eq. 5: `autodetr.plans.Plans.eta` (the planned `matching.eta`, else ceil(lambda * rho) in [1, 5])."""
    from autodetr.plans import Plans

    return Plans.of(plans).eta


class HungarianMatcher(torch.nn.Module):
    """One-to-one (copies = 1) or one-to-(1 + eta) (DQM) bipartite matcher."""

    def __init__(self, weight_class: float = 2.0, weight_l1: float = 5.0, weight_giou: float = 2.0, copies: int = 1) -> None:
        super().__init__()
        self.weight_class, self.weight_l1, self.weight_giou = weight_class, weight_l1, weight_giou
        self.copies = int(copies)

    @torch.no_grad()
    def forward(self, outputs: dict[str, Any], targets: Sequence[dict[str, torch.Tensor]]) -> list[Match]:
        """outputs: pred_logits [B, N, C + 1], pred_boxes [B, N, 6]; targets: per sample labels [G], boxes [G, 6]."""
        matches = []
        for logits, boxes, target in zip(outputs["pred_logits"], outputs["pred_boxes"], targets):
            device = logits.device
            if len(target["labels"]) == 0:
                empty = torch.zeros(0, dtype=torch.int64, device=device)
                matches.append((empty, empty.clone()))
                continue
            cost = matching_cost(logits, boxes, target["labels"], target["boxes"], self.weight_class, self.weight_l1, self.weight_giou)
            rows, columns = assign_with_copies(cost.cpu().numpy(), self.copies)
            matches.append((torch.as_tensor(rows, device=device), torch.as_tensor(columns, device=device)))
        return matches


class DenseQueryMatcher(HungarianMatcher):
    """DQM (Eq. 5): each ground truth gets exactly 1 + eta distinct queries."""

    def __init__(self, weight_class: float = 2.0, weight_l1: float = 5.0, weight_giou: float = 2.0, eta: int = 2) -> None:
        super().__init__(weight_class, weight_l1, weight_giou, copies=1 + int(eta))
        self.eta = int(eta)


def build_matcher(plans: dict[str, Any], kind: str = "dqm") -> HungarianMatcher:
    """`dqm` or `hungarian` with the cost weights of the plan's `loss.matcher_cost`."""
    cost = Plans.of(plans).matcher_cost
    weights = dict(weight_class=float(cost["cls"]), weight_l1=float(cost["l1"]), weight_giou=float(cost["giou"]))
    if kind == "dqm":
        return DenseQueryMatcher(**weights, eta=dqm_duplicates(plans))
    if kind == "hungarian":
        return HungarianMatcher(**weights)
    raise ValueError(f"unknown matcher {kind!r} (expected 'dqm' or 'hungarian')")
