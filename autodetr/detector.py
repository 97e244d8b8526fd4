"""The detector: the one place that ties the Organ-DETR network to a training objective.

Used by training (`autodetr.training`) and by inference (`autodetr.inference`), so both build exactly
the same module for a given `(plans, objective)` and read detections the same way.

Objectives (`OBJECTIVES`):

- `"dqm"` (default, Organ-DETR): the DETR class/box head, trained with the set criterion of Eq. 8 and
  the dense query matcher (every ground truth gets 1 + eta queries) plus the multiscale segmentation
  loss. Inference: per class the query with the highest class probability.
- `"hungarian"`: the same network and loss with one-to-one Hungarian matching (Deformable DETR).
- `"drmm"` (D-RMM, seed 004): the DETR class/box head is REPLACED by a `DRMMHead` (objectness, class
  probabilities without background, Cauchy location mu and scale gamma per query and decoder layer);
  its output is stored under `outputs["drmm"]` (final layer dict + `aux_outputs`) and `pred_logits` /
  `pred_boxes` are absent. Loss: `DRMMLoss` (NLL + beta * MCM over all decoder layers) plus
  `lambda_seg * L_seg` of the network's multiscale segmentation head, as under DQM. No matching.

  Decision -- the DETR class/box head gets no loss under drmm, because it does not exist: a head
  without a loss only costs time and leaves parameters without gradient (DDP would need
  `find_unused_parameters`). The D-RMM head is applied to the decoder's query features and to the
  decoder's REFINED boxes b_k (with gradient), and its own location delta is held at zero (the rows
  of its box MLP's last layer that produce the delta are zero and receive zero gradient). So
  `mu_k = b_k` exactly: the D-RMM location of layer k is the decoder's iterative box refinement,
  trained by the D-RMM likelihood, and layer k + 1 samples around `mu_k.detach()` -- the iteration
  structure of the D-RMM paper (Fig. 3). (Applying the head to the layers' INPUT reference boxes
  instead would leave the decoder's refinement MLPs without any gradient, so every layer would sample
  around the layer-0 reference.) gamma, objectness and class come from the D-RMM head. With
  `network.drmm.class_groups` (the planner writes true; a plan without the key means
  false, the paper's free class head) query k is dedicated to class k mod C: see
  `autodetr.model.drmm_head` for why the free class head collapses on organ data.
  Inference: `drmm_select_detections` (score p_kc * o_k, the best query per class; no NMS).

Queries (`network.queries`): `"class_anchored"` (the planner's default) or `"learned"`
(the paper's configuration: N learned queries over all classes, global matching; also what a plan
without the key means, so older folds load). Class-anchored queries (`autodetr.model.anchors`) come in
class groups whose reference boxes start at the organ atlas (the plan's `atlas`, the fold's training
cases); dqm / hungarian then use the `GroupedDETRHead` (one "class c or nothing" score per query) and
the grouped matching and loss of `autodetr.losses.grouped`; drmm uses its class groups on the same
anchors. The untrained detector predicts exactly the atlas prior (median box per class, score = class
frequency): the decoder's box refinement and the score layers start at zero.

`detect(outputs, objective)` gives the same list-of-dicts for every objective, `to_original_voxels` maps
its boxes to the original image, and `load_trained_detector(fold_folder)` rebuilds a trained fold
(plans.json + arguments.json + checkpoint).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from autodetr.errors import InputError
from autodetr.paths import CHECKPOINT_PREFERENCE
from autodetr.plans import QUERY_KINDS, Plans

__all__ = [
    "OBJECTIVES", "QUERY_KINDS", "CHECKPOINT_PREFERENCE", "query_kind", "fused_queries_of", "plan_atlas", "initial_score_logits", "build_detector",
    "build_criterion", "detect", "to_original_voxels", "load_trained_detector", "find_checkpoint",
]

OBJECTIVES = ("dqm", "hungarian", "drmm")
#: Checkpoints `load_trained_detector` looks for, in this order (best validation mAP first).


def check_objective(objective: str) -> str:
    if objective not in OBJECTIVES:
        raise InputError(f"unknown objective '{objective}': choose one of {', '.join(OBJECTIVES)}")
    return objective


#: Score logit of the non-median queries of a group below the median query's (untrained detector).
SPREAD_SLOT_LOGIT_OFFSET = 2.0


def query_kind(plans: dict[str, Any]) -> str:
    """`network.queries` (`autodetr.plans.Plans.query_kind`; "learned" for plans written before the key)."""
    return Plans.of(plans).query_kind


def fused_queries_of(plans: dict[str, Any], objective: str) -> int:
    """How many queries of a class group inference fuses into the class's box: the number training matched
    to each organ, 1 + eta with DQM on class-anchored queries (Organ-DETR Eq. 5), else 1 (the best query)."""
    planned = Plans.of(plans)
    if check_objective(objective) == "dqm" and planned.query_kind == "class_anchored":
        return 1 + planned.eta
    return 1


def plan_atlas(plans: dict[str, Any]):
    """The organ atlas of the plan, or the uninformed one when the plan has none."""
    from autodetr.planners.atlas import OrganAtlas

    planned = Plans.of(plans)
    num_classes = planned.num_classes
    if planned.has_atlas:
        atlas = OrganAtlas.from_json(planned.atlas_json)
        if atlas.num_classes != num_classes:
            raise InputError(f"plans atlas has {atlas.num_classes} classes, the plan {num_classes}")
        return atlas
    return OrganAtlas.uninformed(num_classes)


def initial_score_logits(atlas, num_queries: int) -> torch.Tensor:
    """`[N]` untrained score logits: the atlas prior's score (`planners.atlas.prior_scores`) for a group's
    median query, lower by `SPREAD_SLOT_LOGIT_OFFSET` for the rest, so the untrained detector is the atlas
    prior: the median box of every class with the prior's score."""
    from autodetr.planners.atlas import prior_scores

    score = torch.as_tensor(prior_scores(atlas.frequency), dtype=torch.float64)
    logits = torch.log(score / (1 - score)).float()
    queries = torch.arange(num_queries)
    slot_offset = torch.where(queries < atlas.num_classes, 0.0, -SPREAD_SLOT_LOGIT_OFFSET)
    return logits[queries % atlas.num_classes] + slot_offset


def build_detector(plans: dict[str, Any], objective: str = "dqm") -> nn.Module:
    """The Organ-DETR network of `plans` with the head of `objective` (see the module docstring)."""
    from autodetr.model import build_model
    from autodetr.model.heads import GroupedDETRHead

    check_objective(objective)
    planned = Plans.of(plans)
    anchored = planned.query_kind == "class_anchored"
    network = planned.network
    num_queries = planned.num_queries
    anchors = None
    if anchored:
        from autodetr.model.anchors import anchor_boxes, query_classes

        atlas = plan_atlas(plans)
        if num_queries < atlas.num_classes:
            raise InputError(f"class-anchored queries need at least one query per class: {num_queries} queries for "
                             f"{atlas.num_classes} classes; raise matching.rho or set network.queries=learned")
        anchors = anchor_boxes(atlas, num_queries)
    if objective == "drmm":
        from autodetr.model.drmm_head import DRMMDecoderHead

        num_classes = planned.num_classes
        drmm = planned.drmm_settings  # plans written before these keys existed: the paper's head
        class_groups = bool(drmm.get("class_groups", False)) or anchored
        if class_groups and num_queries < num_classes:
            raise InputError(
                f"D-RMM class groups need at least one query per class: {num_queries} queries for "
                f"{num_classes} classes; raise matching.rho or set network.drmm.class_groups=false"
            )
        head = DRMMDecoderHead(
            int(network["hidden_dim"]), num_classes, int(network["decoder"]["layers"]), class_groups,
            float(drmm.get("scale_floor", 0.04)),
        )
        return build_model(plans, head=head, anchors=anchors)
    if anchored:
        head = GroupedDETRHead(int(network["hidden_dim"]), int(network["decoder"]["layers"]),
                               query_classes(num_queries, atlas.num_classes), initial_score_logits(atlas, num_queries))
        return build_model(plans, head=head, anchors=anchors)
    return build_model(plans)


def build_criterion(plans: dict[str, Any], objective: str = "dqm") -> nn.Module:
    """The training loss of `objective`: `criterion(outputs, targets, seg_target) -> (loss, components)`.

    dqm / hungarian: `SetCriterion(plans, matcher=objective)` (Eq. 8); drmm: `DRMMCriterion`."""
    check_objective(objective)
    if objective == "drmm":
        from autodetr.losses.drmm import DRMMCriterion

        return DRMMCriterion(plans)
    if query_kind(plans) == "class_anchored":
        from autodetr.losses.grouped import GroupedSetCriterion

        return GroupedSetCriterion(plans, matcher=objective)
    from autodetr.losses.criterion import SetCriterion

    return SetCriterion(plans, matcher=objective)


@torch.no_grad()
def detect(outputs: dict[str, Any], objective: str = "dqm", max_per_class: int = 1,
           fused_queries: int = 1) -> list[dict[str, torch.Tensor]]:
    """Detections of a batch of network outputs, one dict per sample: `boxes` [K, 6] normalised centre
    boxes (relative to the network input), `scores` [K] in [0, 1], `labels` [K] int64 in 1..C (class
    indices of the plan). The best `max_per_class` queries per class (organs: 1), no threshold, no NMS.
    Class-anchored queries with `fused_queries` k > 1 give each class the score-weighted box of its
    group's k best queries (`fused_queries_of`, `autodetr.losses.grouped.select_grouped_detections`).
    Tensors are float32 / int64 on the CPU."""
    check_objective(objective)
    if objective == "drmm":
        from autodetr.model.drmm_head import drmm_select_detections

        if "drmm" not in outputs:
            raise ValueError("detect(objective='drmm') needs the D-RMM head output under outputs['drmm']")
        selected = drmm_select_detections(outputs["drmm"], max_per_class=max_per_class)
    elif "pred_objectness" in outputs:
        from autodetr.losses.grouped import select_grouped_detections

        selected = select_grouped_detections(outputs, max_per_class=max_per_class, fused_queries=fused_queries)
    else:
        from autodetr.model.postprocess import select_detections

        if "pred_logits" not in outputs:
            raise ValueError(f"detect(objective='{objective}') needs pred_logits / pred_boxes (a DETR head output)")
        selected = select_detections(outputs, max_per_class=max_per_class)
    return [
        {"boxes": s["boxes"].detach().float().cpu(), "scores": s["scores"].detach().float().cpu(),
         "labels": s["labels"].detach().long().cpu()}
        for s in selected
    ]


def to_original_voxels(boxes: Any, input_size: Sequence[int], restore: Any) -> "np.ndarray":
    """Normalised centre boxes `[K, 6]` of the network input -> corner boxes in original-image voxels.

    The input is the preprocessed case padded at the high end to `input_size`, so the boxes are first
    made voxel corners of that grid, clipped to the preprocessed image (`restore.preprocessed_shape`),
    mapped back with `restore.preprocessed_to_original` (a `preprocessing.restore.RestoreInfo`) and
    clipped to the original image shape."""

    from autodetr.boxes import clip_boxes, denormalise_centre

    values = boxes.detach().cpu().numpy() if isinstance(boxes, torch.Tensor) else np.asarray(boxes)
    corners = denormalise_centre(values.reshape(-1, 6).astype(np.float64), [int(v) for v in input_size])
    corners = clip_boxes(corners, restore.preprocessed_shape)
    return restore.boxes_in_original(corners)


def find_checkpoint(fold_folder: str | Path, checkpoint: str | None = None) -> Path:
    """The checkpoint file of a trained fold: `checkpoint` (a file name in the folder or a path) or the
    first of `CHECKPOINT_PREFERENCE` that exists."""
    folder = Path(fold_folder)
    if checkpoint is not None:
        path = Path(checkpoint)
        path = path if path.is_file() else folder / checkpoint
        if not path.is_file():
            from autodetr.atomic_io import missing_file_reason

            raise InputError(f"{path}: checkpoint {missing_file_reason(path)}")
        return path
    for name in CHECKPOINT_PREFERENCE:
        if (folder / name).is_file() or (folder / name).is_symlink():  # a broken link is named when read
            return folder / name
    raise InputError(f"{folder}: no checkpoint ({', '.join(CHECKPOINT_PREFERENCE)}); train this fold first")


def load_trained_detector(
    fold_folder: str | Path, device: str | torch.device = "cpu", checkpoint: str | None = None
) -> tuple[nn.Module, dict, dict]:
    """Rebuild a trained fold: `(model in eval mode on device, plans, arguments)`.

    Reads `plans.json` and `arguments.json` (its `objective` picks the head) of `fold_folder` and the
    weights of `checkpoint_best.pt`, else `checkpoint_final.pt`, else `checkpoint_last.pt` (or the
    `checkpoint` given), with `torch.load(..., weights_only=True)`."""
    from autodetr.atomic_io import read_json
    from autodetr.model_files import NETWORK_PLAN_KEYS, read_checkpoint, read_plans

    folder = Path(fold_folder)
    for name in ("plans.json", "arguments.json"):
        if not (folder / name).is_file():
            raise InputError(f"{folder / name}: missing; {folder} is not a trained fold folder")
    plans = read_plans(folder / "plans.json", NETWORK_PLAN_KEYS)
    arguments = read_json(folder / "arguments.json", expected=dict)
    objective = check_objective(str(arguments.get("objective", "dqm")))
    path = find_checkpoint(folder, checkpoint)
    content = read_checkpoint(path)  # weights_only=True; one line for a file that is no checkpoint
    state = content["model"] if "model" in content else content
    model = build_detector(plans, objective)
    try:
        model.load_state_dict(state)
    except RuntimeError as error:
        raise InputError(f"{path}: weights do not fit the network of {folder / 'plans.json'} ({error})") from error
    model.to(device).eval()
    arguments = dict(arguments)
    arguments["checkpoint"] = str(path)
    return model, plans, arguments
