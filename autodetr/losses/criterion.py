"""Set criterion of Organ-DETR (Eq. 8): L = lambda_cls L_cls + lambda_bbox L_bbox + lambda_seg L_seg.

Per decoder layer (the last one and every auxiliary output, each matched on its own):
- L_cls: cross-entropy over all N queries and the C + 1 classes; matched queries take their ground
  truth's class, the others class 0 (no object), weighted `no_object_weight` (DETR's eos_coef); weighted
  mean as in DETR.
- L_bbox = L1 + GIoU loss over the matched queries, each summed and divided by the number of POSITIVE
  queries of the batch (for DQM (1 + eta) * G, not M). The plan's weights: `loss.bbox` multiplies the
  L1 term and `loss.giou` the GIoU term (Eq. 8 puts both under lambda_bbox; the paper uses 5 for both).
L_seg (once, on the MSA levels): see `segmentation.py`. Samples without any ground truth are fine
(all queries background, no box terms).
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from autodetr.boxes import normalise_corners
from autodetr.plans import Plans
from autodetr.boxes_torch import centre_to_corners, elementwise_generalized_box_iou

from .matchers import HungarianMatcher, Match, build_matcher
from .segmentation import SegmentationTerm


def make_targets(
    boxes: Sequence[np.ndarray | torch.Tensor],
    classes: Sequence[np.ndarray | torch.Tensor],
    input_size: Sequence[int],
    device: torch.device | str = "cpu",
) -> list[dict[str, torch.Tensor]]:
    """Criterion targets from preprocessed npz content: per sample corner boxes [G, 6] in voxels of the
    network input and classes [G] in 1..C -> {labels, boxes (normalised centre)}."""
    targets = []
    for sample_boxes, sample_classes in zip(boxes, classes):
        corners = np.asarray(sample_boxes.cpu() if isinstance(sample_boxes, torch.Tensor) else sample_boxes, dtype=np.float64).reshape(-1, 6)
        normalised = normalise_corners(corners, tuple(int(s) for s in input_size))
        labels = torch.as_tensor(np.asarray(sample_classes.cpu() if isinstance(sample_classes, torch.Tensor) else sample_classes).reshape(-1), dtype=torch.int64)
        targets.append({"labels": labels.to(device), "boxes": torch.as_tensor(normalised, dtype=torch.float32, device=device)})
    return targets


class SetCriterion(nn.Module):
    """`SetCriterion(plans, matcher="dqm"|"hungarian")(outputs, targets, seg_target) -> (loss, components)`.

    components (python floats, UNWEIGHTED): `cls`, `l1`, `giou` of the last decoder layer, `cls_k`,
    `l1_k`, `giou_k` for auxiliary layer k, `seg`, `num_positive` (last layer) and `total` (weighted).
    """

    def __init__(self, plans: dict[str, Any], matcher: str | HungarianMatcher = "dqm", seg_strides: Sequence[Sequence[int]] | None = None) -> None:
        super().__init__()
        planned = Plans.of(plans)
        loss = planned.loss
        self.num_classes = planned.num_classes
        self.matcher = build_matcher(plans, matcher) if isinstance(matcher, str) else matcher
        self.weight_cls = float(loss["cls"])
        self.weight_l1 = float(loss["bbox"])
        self.weight_giou = float(loss["giou"])
        if seg_strides is None and (isinstance(plans, Plans) or "network" in plans):
            from autodetr.model.fine_segmentation import segmentation_strides

            seg_strides = segmentation_strides(plans)
        self.segmentation = SegmentationTerm.from_plans(plans, seg_strides)
        class_weight = torch.ones(self.num_classes + 1)
        class_weight[0] = float(loss["no_object_weight"])
        self.register_buffer("class_weight", class_weight)

    def layer_losses(self, output: dict[str, torch.Tensor], targets: Sequence[dict[str, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
        """(CE, L1, GIoU loss, number of positive queries) of one decoder layer's output."""
        logits, boxes = output["pred_logits"], output["pred_boxes"]
        matches: list[Match] = self.matcher(output, targets)
        batch_index = torch.cat([torch.full_like(rows, b) for b, (rows, _) in enumerate(matches)])
        query_index = torch.cat([rows for rows, _ in matches])
        target_classes = torch.zeros(logits.shape[:2], dtype=torch.int64, device=logits.device)
        target_classes[batch_index, query_index] = torch.cat([t["labels"][cols] for t, (_, cols) in zip(targets, matches)]).to(logits.device)
        loss_cls = F.cross_entropy(logits.float().transpose(1, 2), target_classes, weight=self.class_weight.to(logits.device))
        matched = boxes[batch_index, query_index].float()
        gt = torch.cat([t["boxes"][cols] for t, (_, cols) in zip(targets, matches)]).to(matched)
        num_positive = int(query_index.numel())
        normaliser = max(num_positive, 1)
        loss_l1 = F.l1_loss(matched, gt, reduction="sum") / normaliser
        giou = elementwise_generalized_box_iou(centre_to_corners(matched), centre_to_corners(gt))
        loss_giou = (1.0 - giou).sum() / normaliser
        return loss_cls, loss_l1, loss_giou, num_positive

    def forward(
        self,
        outputs: dict[str, Any],
        targets: Sequence[dict[str, torch.Tensor]],
        seg_target: torch.Tensor | None = None,
        images: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, dict[str, float]]:
        components: dict[str, float] = {}
        layers = [(str(k), aux) for k, aux in enumerate(outputs.get("aux_outputs", []))] + [("", outputs)]
        total = outputs["pred_logits"].new_zeros((), dtype=torch.float32)
        for suffix, output in layers:
            loss_cls, loss_l1, loss_giou, num_positive = self.layer_losses(output, targets)
            total = total + self.weight_cls * loss_cls + self.weight_l1 * loss_l1 + self.weight_giou * loss_giou
            tag = f"_{suffix}" if suffix else ""
            components[f"cls{tag}"] = float(loss_cls.detach())
            components[f"l1{tag}"] = float(loss_l1.detach())
            components[f"giou{tag}"] = float(loss_giou.detach())
            if not suffix:
                components["num_positive"] = float(num_positive)
        total = self.segmentation.add(total, components, outputs, seg_target, targets, images)
        components["total"] = float(total.detach())
        return total, components
