"""Matching and loss of class-anchored queries (`autodetr.model.anchors`): DQM / Hungarian inside groups.

Matching: a ground truth of class c is matched only to queries of group c (the queries whose
`query_classes` is c), with the DETR cost of `matchers.matching_cost` restricted to that group
(score = sigmoid of the query's one logit instead of a softmax probability). DQM (Organ-DETR Eq. 5)
gives it the 1 + eta best queries of its group, Hungarian one; several instances of one class share
their group through the same exact assignment (`matchers.assign_with_copies`). Every other query of
the group, and every query of an absent class, is background.

Loss per decoder layer (each layer matched on its own, as in DETR):
- score: Quality Focal Loss (Li et al., Generalized Focal Loss, NeurIPS 2020, Eq. 5) with the IoU of the
  matched query's box with its ground truth (detached) as soft target, 0 for background:
  `|y - sigmoid(s)|^beta * BCE(s, y)`, summed and divided by the number of positive queries. So the
  score estimates the box's IoU and ranks detections by quality across cases (the IoU-aware
  classification of VarifocalNet and Focused Decoder), and an absent organ learns a low score;
- box: L1 + GIoU loss over the matched queries (Eq. 8), divided by the number of positive queries.
Plus `lambda_seg * L_seg` of the multiscale segmentation head (Eq. 8), once.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from autodetr.boxes_torch import centre_to_corners, elementwise_box_iou, elementwise_generalized_box_iou, generalized_box_iou_pairwise
from autodetr.plans import Plans

from .matchers import HungarianMatcher, Match, assign_with_copies, dqm_duplicates
from .segmentation import SegmentationTerm

#: Exponent of the Quality Focal Loss modulating factor (GFL's default).
QFL_BETA = 2.0


class GroupedMatcher(HungarianMatcher):
    """Per sample, `(query indices, ground-truth indices)` with every ground truth matched to `copies`
    distinct queries of its own class group (module docstring); weights as `HungarianMatcher`'s."""

    def cost(self, logits: torch.Tensor, boxes: torch.Tensor, truth_boxes: torch.Tensor) -> torch.Tensor:
        """[n, g] DETR cost of queries (score logits [n], boxes [n, 6]) against ground truths [g, 6]."""
        boxes, truth_boxes = boxes.float(), truth_boxes.float()
        return (self.weight_class * (-logits.float().sigmoid()[:, None]) + self.weight_l1 * torch.cdist(boxes, truth_boxes, p=1)
                - self.weight_giou * generalized_box_iou_pairwise(centre_to_corners(boxes), centre_to_corners(truth_boxes)))

    @torch.no_grad()
    def forward(self, outputs: dict[str, Any], targets: Sequence[dict[str, torch.Tensor]]) -> list[Match]:
        classes = outputs["query_classes"]
        matches = []
        for logits, boxes, target in zip(outputs["pred_objectness"], outputs["pred_boxes"], targets):
            labels = target["labels"]
            unique = labels.numel() == torch.unique(labels).numel()
            matches.append((self._one_per_class if unique else self._by_assignment)(logits, boxes, target, classes))
        return matches

    def _by_assignment(self, logits: torch.Tensor, boxes: torch.Tensor, target: dict[str, torch.Tensor],
                       classes: torch.Tensor) -> Match:
        """Any number of instances per class: one exact assignment per class group (`assign_with_copies`)."""
        rows_all, columns_all = [], []
        labels = target["labels"]
        for label in torch.unique(labels).tolist():
            group = torch.nonzero(classes == label).flatten()
            truths = torch.nonzero(labels == label).flatten()
            if group.numel() == 0:
                continue
            cost = self.cost(logits[group], boxes[group], target["boxes"][truths])
            rows, columns = assign_with_copies(cost.cpu().numpy(), self.copies)
            rows_all.append(group[torch.as_tensor(rows, device=group.device)])
            columns_all.append(truths[torch.as_tensor(columns, device=truths.device)])
        if not rows_all:
            empty = torch.zeros(0, dtype=torch.int64, device=logits.device)
            return empty, empty.clone()
        rows, columns = torch.cat(rows_all).to(logits.device), torch.cat(columns_all).to(logits.device)
        order = torch.argsort(rows)
        return rows[order], columns[order]

    def _one_per_class(self, logits: torch.Tensor, boxes: torch.Tensor, target: dict[str, torch.Tensor],
                       classes: torch.Tensor) -> Match:
        """Every class at most once (organs): the exact assignment is, per ground truth, the `copies`
        cheapest queries of its group (groups are disjoint, so nothing competes); one batched top-k."""
        labels, truth_boxes = target["labels"], target["boxes"].float()
        if labels.numel() == 0:
            empty = torch.zeros(0, dtype=torch.int64, device=logits.device)
            return empty, empty.clone()
        cost = self.cost(logits, boxes, truth_boxes)
        in_group = classes[:, None] == labels[None, :]
        cost = torch.where(in_group, cost, torch.full_like(cost, float("inf")))
        group_size = int(in_group.sum(0).min())
        if group_size == 0:  # a class without queries: leave its ground truth unmatched
            keep = in_group.any(0)
            rows, columns = self._one_per_class(logits, boxes, {"labels": labels[keep], "boxes": truth_boxes[keep]}, classes)
            return rows, torch.nonzero(keep).flatten()[columns]
        count = min(self.copies, group_size)
        rows = cost.topk(count, dim=0, largest=False).indices  # [count, G]
        columns = torch.arange(labels.numel(), device=logits.device).expand(count, -1)
        order = torch.argsort(rows.flatten())
        return rows.flatten()[order], columns.flatten()[order]


def build_grouped_matcher(plans: dict[str, Any], kind: str = "dqm") -> GroupedMatcher:
    """`dqm` (1 + eta queries per ground truth) or `hungarian` (one), cost weights of the plan."""
    cost = Plans.of(plans).matcher_cost
    weights = dict(weight_class=float(cost["cls"]), weight_l1=float(cost["l1"]), weight_giou=float(cost["giou"]))
    if kind == "dqm":
        return GroupedMatcher(**weights, copies=1 + dqm_duplicates(plans))
    if kind == "hungarian":
        return GroupedMatcher(**weights, copies=1)
    raise ValueError(f"unknown matcher {kind!r} (expected 'dqm' or 'hungarian')")


def quality_focal_loss(logits: torch.Tensor, target: torch.Tensor, beta: float = QFL_BETA) -> torch.Tensor:
    """Element-wise QFL (module docstring): `|y - sigmoid(s)|^beta * BCE(s, y)`."""
    modulation = (target - logits.sigmoid()).abs().pow(beta)
    return modulation * F.binary_cross_entropy_with_logits(logits, target, reduction="none")


class GroupedSetCriterion(nn.Module):
    """`criterion(outputs, targets, seg_target) -> (loss, components)` for class-anchored queries.

    components (floats, unweighted): `cls`, `l1`, `giou` (last layer), `cls_k`, `l1_k`, `giou_k` (auxiliary
    layer k), `iou` (mean IoU of the last layer's matched boxes), `seg`, `num_positive`, `total`."""

    def __init__(self, plans: dict[str, Any], matcher: str = "dqm") -> None:
        super().__init__()
        from autodetr.model.fine_segmentation import segmentation_strides

        loss = Plans.of(plans).loss
        self.matcher = build_grouped_matcher(plans, matcher)
        self.weight_cls = float(loss["cls"])
        self.weight_l1 = float(loss["bbox"])
        self.weight_giou = float(loss["giou"])
        self.segmentation = SegmentationTerm.from_plans(
            plans, segmentation_strides(plans) if isinstance(plans, Plans) or "network" in plans else None)

    def layer_losses(self, output: dict[str, torch.Tensor], targets: Sequence[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        logits, boxes = output["pred_objectness"].float(), output["pred_boxes"].float()
        matches = self.matcher(output, targets)
        batch_index = torch.cat([torch.full_like(rows, b) for b, (rows, _) in enumerate(matches)])
        query_index = torch.cat([rows for rows, _ in matches])
        matched = boxes[batch_index, query_index]
        gt = torch.cat([t["boxes"][cols] for t, (_, cols) in zip(targets, matches)]).to(matched)
        normaliser = max(int(query_index.numel()), 1)
        corners, gt_corners = centre_to_corners(matched), centre_to_corners(gt)
        iou = elementwise_box_iou(corners.detach(), gt_corners).clamp(0, 1)
        target = torch.zeros_like(logits)
        target[batch_index, query_index] = iou
        loss_cls = quality_focal_loss(logits, target).sum() / normaliser
        loss_l1 = F.l1_loss(matched, gt, reduction="sum") / normaliser
        loss_giou = (1.0 - elementwise_generalized_box_iou(corners, gt_corners)).sum() / normaliser
        return {"cls": loss_cls, "l1": loss_l1, "giou": loss_giou, "iou": iou.mean() if iou.numel() else iou.new_zeros(()),
                "num_positive": torch.tensor(float(query_index.numel()))}

    def forward(self, outputs: dict[str, Any], targets: Sequence[dict[str, torch.Tensor]],
                seg_target: torch.Tensor | None = None, images: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, float]]:
        components: dict[str, float] = {}
        layers = [(f"_{k}", aux) for k, aux in enumerate(outputs.get("aux_outputs", []))] + [("", outputs)]
        total = outputs["pred_objectness"].new_zeros((), dtype=torch.float32)
        for tag, output in layers:
            terms = self.layer_losses(output, targets)
            total = total + self.weight_cls * terms["cls"] + self.weight_l1 * terms["l1"] + self.weight_giou * terms["giou"]
            for key in ("cls", "l1", "giou"):
                components[f"{key}{tag}"] = float(terms[key].detach())
            if not tag:
                components["iou"] = float(terms["iou"])
                components["num_positive"] = float(terms["num_positive"])
        total = self.segmentation.add(total, components, outputs, seg_target, targets, images)
        components["total"] = float(total.detach())
        return total, components


@torch.no_grad()
def select_grouped_detections(outputs: dict[str, Any], max_per_class: int = 1,
                              fused_queries: int = 1) -> list[dict[str, torch.Tensor]]:
    """Per sample and class c, the `max_per_class` queries of group c with the highest score (sigmoid of
    the logit; Organ-DETR's "best query per organ"): `boxes` [K, 6], `scores` [K], `labels` [K].

    With one detection per class and `fused_queries` k > 1, the box is the score-weighted mean of the
    boxes of the group's k best queries and the score stays the best query's. DQM trains 1 + eta queries
    of each group on its organ (Eq. 5), so at inference they are k estimates of one box, and their
    weighted mean is the weighted box fusion nnDetection applies to its test-time copies (measured on the
    training benchmark's dqm model, 12 phantoms not used in training, with test-time copies: mAR 0.597 ->
    0.606, mAP 0.566 -> 0.576; the Hungarian model, which matches one query per organ, gains nothing)."""
    scores_all = outputs["pred_objectness"].float().sigmoid()
    boxes_all = outputs["pred_boxes"].float()
    classes = outputs["query_classes"]
    fuse = max_per_class == 1 and fused_queries > 1
    results = []
    for scores, boxes in zip(scores_all, boxes_all):
        kept_boxes, kept_scores, kept_labels = [], [], []
        for label in sorted(set(classes.tolist())):
            group = torch.nonzero(classes == label).flatten()
            top = scores[group].topk(min(fused_queries if fuse else max_per_class, group.numel()))
            if fuse:
                weights = top.values / top.values.sum().clamp(min=1e-12)
                kept_boxes.append((weights[:, None] * boxes[group[top.indices]]).sum(0, keepdim=True))
                kept_scores.append(top.values[:1])
                kept_labels.append(torch.full_like(top.indices[:1], label))
                continue
            kept_boxes.append(boxes[group[top.indices]])
            kept_scores.append(top.values)
            kept_labels.append(torch.full_like(top.indices, label))
        results.append({"boxes": torch.cat(kept_boxes).cpu(), "scores": torch.cat(kept_scores).cpu(),
                        "labels": torch.cat(kept_labels).cpu()})
    return results
