"""Inference-time selection of detections (Organ-DETR Sec. 3, DQM: "selects the best-predicted query per
class/organ whose prediction score is the highest")."""
from __future__ import annotations

from typing import Any

import torch


@torch.no_grad()
def select_detections(outputs: dict[str, Any], max_per_class: int = 1) -> list[dict[str, torch.Tensor]]:
    """Per sample and per class c in 1..C, the `max_per_class` queries with the highest softmax probability
    of class c (score = p_c over the C + 1 logits; the same query may win several classes).

    Returns one dict per sample: `boxes` [K, 6] normalised centre boxes, `scores` [K], `labels` [K] in
    1..C, sorted by label then descending score; K = C * min(max_per_class, N). No threshold, no NMS.
    """
    probabilities = outputs["pred_logits"].float().softmax(-1)[..., 1:]  # [B, N, C]
    boxes = outputs["pred_boxes"].float()
    batch, num_queries, num_classes = probabilities.shape
    keep = min(max_per_class, num_queries)
    scores, indices = probabilities.topk(keep, dim=1)  # [B, keep, C]
    results = []
    for sample in range(batch):
        sample_scores = scores[sample].transpose(0, 1).reshape(-1)  # class-major
        sample_indices = indices[sample].transpose(0, 1).reshape(-1)
        labels = torch.arange(1, num_classes + 1, device=boxes.device).repeat_interleave(keep)
        results.append({"boxes": boxes[sample, sample_indices].cpu(), "scores": sample_scores.cpu(), "labels": labels.cpu()})
    return results
