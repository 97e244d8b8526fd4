"""Self-configuring planner: fingerprint -> plans.json.

Every decision is stored with the values it came from under `plans["decisions"]`, so a user can read why
the planner chose what it chose. Decisions, in order:

1. Base spacing: nnU-Net's full-resolution target spacing (median, with its anisotropy rule).
2. Transpose: the coarsest axis first, as nnU-Net does.
3. Spacing and input size together: organs need global context, so the network sees the whole cropped
   body. Starting from the base spacing, the finest axes are coarsened first (towards isotropy), then all
   axes, until the 95th percentile of cropped body extents (mm) fits the preset's voxel budget. Bodies
   larger than that are scaled down at preprocessing, never cut (inference never drops a part of a volume).
4. Topology: nnU-Net's `get_pool_and_conv_props` gives strides per level for the planned spacing and input
   size (and pads the input size to a multiple of the total stride). The CPU preset moves the first
   downsampling into the stem, which makes a CPU iteration about ten times cheaper.
5. Queries: class-anchored, rho per class (N = rho * C), starting at the organ atlas (`atlas.py`; the
   paper's N = rho * M learned queries with `network.queries=learned`); DQM duplicates
   eta = ceil(lambda * rho) clipped to [1, 5] (Organ-DETR Eq. 5; paper: rho 10, lambda 0.2).
6. Loss weights of Organ-DETR Eq. 8 (2 / 5 / 2) and the Hungarian cost weights of Deformable DETR; a
   dataset annotated with boxes only (box files) has no organ masks, so its segmentation head learns from
   the boxes (`loss.seg_supervision` "boxes").
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np
from nnunetv2.experiment_planning.experiment_planners.default_experiment_planner import ExperimentPlanner
from nnunetv2.experiment_planning.experiment_planners.network_topology import get_pool_and_conv_props
from nnunetv2.preprocessing.resampling.default_resampling import ANISO_THRESHOLD

from autodetr.errors import InputError
from autodetr.paths import PLANS_NAME
from autodetr.preprocessing.orientation import CANONICAL
from autodetr.preprocessing.raw_dataset import OrganClass
from autodetr.plans import DERIVED_FROM, TRAINING_DEFAULTS, eta_of, query_count, recompute_derived, set_path


#: Budgets per preset. Voxel budgets: CPU measured on 2 cores (docs/architecture.md), GPU after the
#: 160 x 160 x 256 whole-CT inputs of the 3D DETR literature.
PRESETS: dict[str, dict] = {
    "cpu": {
        "voxel_budget": 80 * 80 * 80,
        "stem_channels": 16, "base_channels": 16, "max_channels": 128, "blocks_per_stage": 1,
        "hidden_dim": 64, "num_feature_levels": 3,
        "msa": {"patch_size": 2, "heads": 8, "depth": 1, "dropout": 0.0, "bias": False, "ffn_dim": 128, "position": "absolute"},
        "decoder": {"layers": 3, "heads": 8, "points": 4, "ffn_dim": 256, "dropout": 0.0},
        "stride_in_stem": True, "batch_size": 2, "max_num_pool": 5,
        "learning_rate": 1e-3, "grad_clip_norm": 1.0, "seg_loss_weight": 4.0,
    },
    "gpu": {
        "voxel_budget": 160 * 160 * 256,
        "stem_channels": 32, "base_channels": 32, "max_channels": 320, "blocks_per_stage": 2,
        "hidden_dim": 256, "num_feature_levels": 3,
        "msa": {"patch_size": 2, "heads": 64, "depth": 2, "dropout": 0.3, "bias": False, "ffn_dim": 1024, "position": "absolute"},
        "decoder": {"layers": 6, "heads": 8, "points": 4, "ffn_dim": 1024, "dropout": 0.1},
        "stride_in_stem": False, "batch_size": 2, "max_num_pool": 5,
        "learning_rate": 2e-4, "grad_clip_norm": 0.1, "seg_loss_weight": 2.0,
    },
}
MIN_FEATURE_MAP_SIZE = 4
#: Probability of the training shift (`training.augmentation.p_shift`; absent from a plan: 0).
SHIFT_PROBABILITY = 0.5
#: Probability of the elastic deformation (`training.augmentation.p_elastic`; absent from a plan: 0.1).
ELASTIC_PROBABILITY = 0.0
#: Query design: "class_anchored" (rho queries per class at the organ atlas) or "learned" (the paper's).
QUERIES_DEFAULT = "class_anchored"
DEFAULT_RHO = 10
DEFAULT_LAMBDA = 0.2
LATERAL_SUFFIXES = (("_left", "_right"), ("left_", "right_"))


#: Channels of the fine segmentation head (`autodetr.model.fine_segmentation`).
FINE_SEGMENTATION_CHANNELS = 16
#: Mask spread s (`network.mask_spread`, `autodetr.model.anchors`): where the segmentation finds a class,
#: every query of its group starts within s box sizes of the mask box, sized by 1 +- s.
MASK_SPREAD = 0.2
#: `network.decoder_fine_level`: the decoder also samples the fine segmentation head's features
#: (`autodetr.model.organ_detr`).
DECODER_FINE_LEVEL = True

def base_target_spacing(fingerprint: dict) -> np.ndarray:
    """nnU-Net's full-resolution target spacing (z, y, x), computed by nnU-Net's own planner method."""
    planner_state = SimpleNamespace(
        dataset_fingerprint={"spacings": fingerprint["spacings"], "shapes_after_crop": fingerprint["shapes_after_crop"]},
        overwrite_target_spacing=None,
        anisotropy_threshold=ANISO_THRESHOLD,
    )
    return np.asarray(ExperimentPlanner.determine_fullres_target_spacing(planner_state), dtype=np.float64)


def transpose_from_spacing(spacing: np.ndarray) -> tuple[list[int], list[int]]:
    """Coarsest axis first (nnU-Net's rule); the backward permutation undoes it."""
    coarsest = int(np.argmax(spacing))
    forward = [coarsest] + [axis for axis in range(3) if axis != coarsest]
    backward = [forward.index(axis) for axis in range(3)]
    return forward, backward


def fit_spacing_to_budget(spacing: np.ndarray, extent_mm: np.ndarray, voxel_budget: int) -> np.ndarray:
    """Coarsen `spacing` until `extent_mm / spacing` holds at most `voxel_budget` voxels: the finest axes
    first (towards isotropy), then all axes together, in 2 % steps."""
    spacing = np.asarray(spacing, dtype=np.float64).copy()
    while np.prod(np.ceil(extent_mm / spacing)) > voxel_budget:
        finest = spacing < spacing.max() * 0.999
        spacing[finest if finest.any() else slice(None)] *= 1.02
    return spacing


def lateral_pairs(classes: list[OrganClass]) -> list[list[int]]:
    """Pairs of class indices that swap under a left-right mirror (kidney_left / kidney_right, ...)."""
    by_name = {c.name.lower(): c.index for c in classes}
    pairs = []
    for left_marker, right_marker in LATERAL_SUFFIXES:
        for name, index in by_name.items():
            if left_marker in name:
                partner = by_name.get(name.replace(left_marker, right_marker))
                if partner is not None and [index, partner] not in pairs:
                    pairs.append([index, partner])
    return pairs


@dataclass
class PlannedGeometry:
    """Spacing, input size and strides of a plan, in the transposed (coarsest axis first) order."""

    forward: list[int]
    backward: list[int]
    spacing: np.ndarray
    base_spacing: np.ndarray
    input_size: list[int]
    strides: list[list[int]]


def plan_geometry(fingerprint: dict, budget: dict, preset: str, spacing: list[float] | None,
                  input_size: list[int] | None, decisions: dict[str, str]) -> PlannedGeometry:
    """Axis order, target spacing (nnU-Net's, coarsened to the preset's voxel budget), input size and the
    per-level strides (nnU-Net's `get_pool_and_conv_props`), each with its decision line."""
    base = base_target_spacing(fingerprint)
    forward, backward = transpose_from_spacing(base)
    decisions["transpose_forward"] = f"coarsest axis of base spacing {np.round(base, 3).tolist()} first (nnU-Net rule)"
    extent_p95 = np.asarray(fingerprint["body_extent_mm_zyx"]["p95"])[forward]
    base_t = base[forward]
    if spacing is not None:
        target = np.asarray(spacing, dtype=np.float64)[forward]
        decisions["spacing"] = "given on the command line"
    else:
        target = fit_spacing_to_budget(base_t, extent_p95, budget["voxel_budget"])
        decisions["spacing"] = (
            f"nnU-Net full-resolution spacing {np.round(base_t, 3).tolist()} coarsened (finest axes first) until the "
            f"95th percentile body extent {np.round(extent_p95, 1).tolist()} mm fits the {preset} budget of "
            f"{budget['voxel_budget']} voxels"
        )
    wanted_size = np.maximum(np.ceil(extent_p95 / target), MIN_FEATURE_MAP_SIZE).astype(int)
    if input_size is not None:
        wanted_size = np.asarray(input_size, dtype=int)[forward]
    _, pool_kernels, _, padded_size, divisible_by = get_pool_and_conv_props(
        target.tolist(), wanted_size.tolist(), MIN_FEATURE_MAP_SIZE, budget["max_num_pool"]
    )
    decisions["input_size"] = (
        f"95th percentile body extent / spacing = {wanted_size.tolist()} voxels"
        + (" (given on the command line)" if input_size is not None else "")
        + f", padded to a multiple of the total stride {list(map(int, divisible_by))} (nnU-Net get_pool_and_conv_props);"
        " larger bodies are scaled down to fit at preprocessing, never cut"
    )
    return PlannedGeometry(forward, backward, target, base_t, [int(s) for s in padded_size],
                           [list(map(int, k)) for k in pool_kernels[1:]])


def _stem_and_stage_strides(budget: dict, strides: list[list[int]]) -> tuple[list[int], list[list[int]]]:
    """(stem stride, stage strides): the CPU preset downsamples first in the stem, the GPU preset does not."""
    if budget["stride_in_stem"] and strides:
        return strides[0], strides[1:]
    return [1, 1, 1], strides


def _record_topology_decisions(budget: dict, strides: list[list[int]], num_levels: int,
                               decisions: dict[str, str]) -> None:
    """The reasons for the strides, the query design and the mask-enhanced anchors."""
    decisions["network"] = (
        f"strides per level {strides} from get_pool_and_conv_props(spacing, input size, min feature map "
        f"{MIN_FEATURE_MAP_SIZE}); {'first stride in the stem (CPU preset)' if budget['stride_in_stem'] else 'full-resolution stem'}; "
        f"the {num_levels} coarsest levels go to the MSA encoder"
    )
    decisions["queries"] = (
        "class_anchored: rho queries per class, starting at the class's atlas box and spread over its observed "
        "range; matching inside each class group (autodetr.model.anchors). 'learned' is the paper's configuration "
        "(N = rho * M learned queries over all classes, global matching)"
    )
    decisions["mask_enhanced_anchors"] = (
        "each class group's first query starts at the box of the class's mask from the fine segmentation head "
        "where one is found, else at the atlas median (Mask DINO's mask-enhanced anchors; autodetr.model.anchors)"
    )


def _record_head_decisions(stem_stride: list[int], decisions: dict[str, str]) -> None:
    """The reasons for the mask spread, the fine segmentation head, the decoder's fine level and D-RMM groups."""
    decisions["mask_spread"] = (
        f"mask spread {MASK_SPREAD}: where the segmentation finds a class, every query of its group starts around the "
        f"mask box (centre within {MASK_SPREAD} box sizes, size x 1 +- {MASK_SPREAD}; DINO's jittered anchors), not only "
        "the first; queries at fixed atlas positions memorise the training cases' positions (fold 0 of the training "
        "benchmark, 20-minute probes, 1 thread: mAP 0.203 without, 0.331 with)"
    )
    decisions["fine_segmentation"] = (
        f"a fine segmentation head at the stem's stride {list(stem_stride)} ({FINE_SEGMENTATION_CHANNELS} channels, "
        "skip from the stem, Retina U-Net style, a correction of the finest MSA level's logits): one more level of "
        "L_seg, and the grid the mask-enhanced anchors take their boxes from (the finest MSA level is too coarse "
        "for boxes that reach IoU 0.75; autodetr.model.fine_segmentation)"
    )
    decisions["decoder_fine_level"] = (
        f"{str(DECODER_FINE_LEVEL).lower()}: whether the decoder's deformable attention also samples the fine "
        "segmentation head's stride-2 features (projected after sampling, autodetr.model.projected_level), besides "
        "the MSA levels, so box edges are read from a 9.8 mm grid on the CPU plan instead of 19.6 mm. Fold 0 of the "
        "training benchmark, dqm, 20 minutes, 2 threads: held-out mAP / mAR / AP75 0.598 / 0.636 / 0.643 with it "
        "(2083 steps) against 0.560 / 0.597 / 0.601 without (2654 steps), the lumbar vertebrae's AR 0.62-0.72 -> "
        "0.79-0.83; validation mAR 0.587 both. Projected after sampling, it adds about 10% to a CPU step"
    )
    decisions["drmm"] = (
        "D-RMM class groups (query k serves class k mod C) when N >= C: a free class head lets one query "
        "explain several neighbouring organs (autodetr.model.drmm_head)"
    )


def plan_network(budget: dict, strides: list[list[int]], backbone: str, in_channels: int, num_queries: int,
                 num_classes: int, decisions: dict[str, str]) -> dict:
    """`plans["network"]`: backbone stages from the strides, the preset's widths, class-anchored queries with
    mask-enhanced anchors read from the fine segmentation head."""
    stem_stride, stage_strides = _stem_and_stage_strides(budget, strides)
    num_levels = min(budget["num_feature_levels"], len(stage_strides))
    _record_topology_decisions(budget, strides, num_levels, decisions)
    _record_head_decisions(stem_stride, decisions)
    return {
        "backbone": backbone,
        "in_channels": in_channels,
        "stem_channels": budget["stem_channels"],
        "stem_stride": stem_stride,
        "stage_strides": stage_strides,
        "stage_channels": [min(budget["base_channels"] * 2 ** (i + 1), budget["max_channels"]) for i in range(len(stage_strides))],
        "blocks_per_stage": [budget["blocks_per_stage"]] * len(stage_strides),
        "num_feature_levels": num_levels,
        "hidden_dim": budget["hidden_dim"],
        "msa": copy.deepcopy(budget["msa"]),
        "decoder": copy.deepcopy(budget["decoder"]),
        "queries": QUERIES_DEFAULT,
        "mask_enhanced_anchors": True,
        "mask_spread": MASK_SPREAD,
        "fine_segmentation": {"stride": list(stem_stride), "channels": FINE_SEGMENTATION_CHANNELS},
        "decoder_fine_level": DECODER_FINE_LEVEL,
        "num_queries": num_queries,
        "drmm": {"class_groups": num_queries >= num_classes, "scale_floor": 0.1},
    }


def plan_recipe(budget: dict, preset: str, box_annotations: bool, decisions: dict[str, str]) -> tuple[dict, dict]:
    """(`plans["loss"]`, `plans["training"]`) of the preset: Eq. 8 weights, optimiser and schedule."""
    loss = {
        "cls": 2.0, "bbox": 5.0, "giou": 5.0, "seg": budget["seg_loss_weight"], "no_object_weight": 0.1,
        "matcher_cost": {"cls": 2.0, "l1": 5.0, "giou": 2.0},
        "drmm_beta": 0.5, "drmm_location_beta": 1.0, "seg_supervision": "boxes" if box_annotations else "masks",
        "seg_pairwise": 0.0,
    }
    training = {
        **copy.deepcopy(TRAINING_DEFAULTS),
        "batch_size": budget["batch_size"],
        "learning_rate": budget["learning_rate"],
        "grad_clip_norm": budget["grad_clip_norm"],
        "epochs": 100 if preset == "cpu" else 500,
        "iterations_per_epoch": 50 if preset == "cpu" else 250,
    }
    decisions["loss"] = (
        f"Organ-DETR Eq. 8 weights lambda_cls 2, lambda_bbox 5 (L1 and GIoU), lambda_seg {budget['seg_loss_weight']} "
        "(the paper's 2 on the gpu preset; 4 on the cpu preset, where the mask boxes the anchors start from carry most "
        "of the localisation: fold 0 of the training benchmark, 10-minute probes, mAP 0.199 with 2, 0.246 with 4)"
    )
    decisions["training"] = (
        f"{preset} preset recipe: AdamW lr {budget['learning_rate']}, gradient clipping at {budget['grad_clip_norm']}; "
        "the backbone learns at the full rate (backbone_lr_factor 1: it starts from scratch, Deformable DETR's 0.1 is "
        "for pretrained backbones)"
    )
    if QUERIES_DEFAULT == "class_anchored":
        training["augmentation"]["p_mirror"] = 0.0
        decisions["augmentation"] = (
            "no left-right mirror: a mirrored body puts every unpaired organ on the wrong side of its class anchor "
            "(set training.augmentation.p_mirror > 0 for learned queries)"
        )
    training["augmentation"]["p_shift"] = SHIFT_PROBABILITY
    decisions["shift"] = (
        f"training.augmentation.p_shift {SHIFT_PROBABILITY}: half the training samples move by a random "
        "offset inside their padding, so organs do not always sit at the same input coordinates (fold 0 of the training "
        "benchmark, 20-minute probes, 1 thread: validation mAP 0.397 against 0.284-0.290 without, 12 held-out "
        "phantoms 0.326 against 0.273-0.293)"
    )
    training["augmentation"]["p_elastic"] = ELASTIC_PROBABILITY
    decisions["elastic"] = (
        f"training.augmentation.p_elastic {ELASTIC_PROBABILITY}: no elastic deformation, as nnU-Net v2's default "
        "trainer; rotation and scaling stay. On the cpu preset an elastic sample costs about 0.22 s of augmentation "
        "(a training step of batch 2 about 0.4 s), and 2.5-minute probes of fold 0 of the training benchmark made "
        "335 steps without it against 300 with p 0.1 (2 threads); with it off and the faster rotation and scaling, the 20-minute benchmark's dqm row went from 2085 "
        "to 2556 steps and from held-out mAP 0.525 / mAR 0.563 to 0.566 / 0.597"
    )
    decisions["batch_size"] = f"{preset} preset"
    if box_annotations:
        decisions["loss.seg_supervision"] = (
            "boxes: the dataset has box files, no organ masks, so the segmentation head learns from the boxes "
            "(autodetr.losses.box_segmentation): outside every box a voxel is background, inside the boxes of "
            "classes S it may be background or any class of S, and the highest probability of each slice of a "
            "box must reach 1 along every axis (BoxInst's projection loss, in 3D). That projection is what the "
            "mask-enhanced anchors read, so they move off the atlas as with masks. Box-only phantoms at 700 CPU "
            "steps: 0.414 mAP, against 0.316 with the segmentation weight 0 (every query on its atlas anchor) and "
            "0.481 from the label maps (docs/benchmarks.md#box-only-training)"
        )
        decisions["loss.seg_pairwise"] = (
            "0: BoxInst's pairwise term (neighbouring voxels of a box with alike intensities pushed to the same "
            "label) at its paper weight 1 lowered box-only phantoms from 0.414 to 0.329 mAP at 700 CPU steps "
            "(docs/benchmarks.md#box-only-training); BoxInst warms it up over 10k steps, so a long GPU run may "
            "still gain from it (--set loss.seg_pairwise=1)"
        )
    return loss, training


def _record_query_decisions(rho: float, matching_ratio: float, num_classes: int, decisions: dict[str, str]) -> None:
    """The reasons for the canonical orientation, the number of queries N and the DQM duplicates eta."""
    decisions["orientation"] = (
        "every scan is brought to the canonical LPS array order (a signed axis permutation from its direction "
        "matrix) before preprocessing, so organs sit where training saw them whatever order a file stores; the real "
        "example, stored as diag(-1, -1, 1), had its liver on the spleen's side without it (docs/real_ct.md)")
    decisions["num_queries"] = f"N = rho * C = {rho} * {num_classes} (class-anchored: rho queries per class)"
    decisions["eta"] = f"ceil(lambda * rho) = ceil({matching_ratio} * {rho}), clipped to [1, 5] (Organ-DETR Eq. 5)"


def plan_experiment(
    fingerprint: dict,
    dataset_json: dict,
    classes: list[OrganClass],
    dataset_name: str,
    preset: str = "cpu",
    rho: float = DEFAULT_RHO,
    matching_ratio: float = DEFAULT_LAMBDA,
    spacing: list[float] | None = None,
    input_size: list[int] | None = None,
    backbone: str = "fpn",
    overrides: dict | None = None,
    box_annotations: bool = False,
) -> dict:
    """Make the plans dict (see docs/architecture.md for the keys the network and trainer read)."""
    if preset not in PRESETS:
        raise InputError(f"unknown preset '{preset}', choose one of {sorted(PRESETS)}")
    budget = PRESETS[preset]
    decisions: dict[str, str] = {}
    geometry = plan_geometry(fingerprint, budget, preset, spacing, input_size, decisions)
    most_organs = max(1, int(fingerprint["detection"]["organs_per_case"]["max"]))
    num_queries = query_count(QUERIES_DEFAULT, rho, most_organs, len(classes))
    _record_query_decisions(rho, matching_ratio, len(classes), decisions)
    channel_names = dataset_json["channel_names"]
    network = plan_network(budget, geometry.strides, backbone, len(channel_names), num_queries, len(classes), decisions)
    loss, training = plan_recipe(budget, preset, box_annotations, decisions)
    plans = {
        "plans_name": PLANS_NAME,
        "dataset_name": dataset_name,
        "preset": preset,
        "classes": [{"index": c.index, "label_value": c.label_value, "name": c.name} for c in classes],
        "lateral_pairs": lateral_pairs(classes),
        "channel_names": channel_names,
        "orientation": CANONICAL,
        "transpose_forward": geometry.forward,
        "transpose_backward": geometry.backward,
        "spacing": [float(s) for s in geometry.spacing],
        "base_spacing": [float(s) for s in geometry.base_spacing],
        "input_size": geometry.input_size,
        "normalization": {
            str(k): ("CTNormalization" if str(v).strip().lower() == "ct" else "ZScoreNormalization")
            for k, v in channel_names.items()
        },
        "foreground_intensity_properties_per_channel": fingerprint["foreground_intensity_properties_per_channel"],
        "resampling": {"image_order": 3, "label_order": 0, "order_z": 0, "anisotropy_threshold": ANISO_THRESHOLD},
        "network": network,
        "matching": {"rho": rho, "lambda": matching_ratio, "eta": eta_of(rho, matching_ratio), "M": most_organs},
        "loss": loss,
        "training": training,
        "decisions": decisions,
    }
    for key, value in (overrides or {}).items():
        set_path(plans, key, value)
        decisions[key] = "given on the command line"
    if any(k in DERIVED_FROM for k in (overrides or {})):
        recompute_derived(plans)
    return plans
