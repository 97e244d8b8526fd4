"""Small complete plans for tests, examples and benchmarks: the network section is fixed and tiny (not a
planner's choice); everything derived (eta, the number of queries) and every default (loss, training)
comes from `autodetr.plans`, so these plans cannot drift from the planner's."""
from __future__ import annotations

import copy
from typing import Any, Sequence

from autodetr.plans import LOSS_DEFAULTS, TRAINING_DEFAULTS, eta_of, query_count


def make_test_plans(
    num_classes: int = 3,
    input_size: Sequence[int] = (16, 24, 32),
    backbone: str = "fpn",
    hidden_dim: int = 24,
    num_queries: int | None = None,
    stem_stride: Sequence[int] = (1, 2, 2),
    stage_strides: Sequence[Sequence[int]] = ((1, 1, 1), (2, 2, 2), (2, 2, 2)),
    stage_channels: Sequence[int] = (8, 16, 24),
    blocks_per_stage: Sequence[int] = (1, 1, 1),
    num_feature_levels: int = 2,
    msa_heads: int = 4,
    msa_depth: int = 1,
    decoder_layers: int = 2,
    decoder_heads: int = 4,
    decoder_points: int = 2,
    dropout: float = 0.0,
    rho: int = 4,
    matching_lambda: float = 0.2,
) -> dict[str, Any]:
    """A complete, tiny plans dict (all keys of docs/architecture.md) that runs in well under a second on CPU."""
    classes = [{"index": i, "label_value": i, "name": f"organ_{i}"} for i in range(1, num_classes + 1)]
    queries = int(num_queries) if num_queries is not None else query_count("learned", rho, num_classes, num_classes)
    return {
        "input_size": [int(s) for s in input_size],
        "classes": classes,
        "network": {
            "backbone": backbone,
            "in_channels": 1,
            "norm": "group",
            "stem_channels": int(stage_channels[0]),
            "stem_stride": [int(s) for s in stem_stride],
            "stage_strides": [[int(s) for s in st] for st in stage_strides],
            "stage_channels": [int(c) for c in stage_channels],
            "blocks_per_stage": [int(b) for b in blocks_per_stage],
            "num_feature_levels": num_feature_levels,
            "hidden_dim": hidden_dim,
            "msa": {"patch_size": 2, "heads": msa_heads, "depth": msa_depth, "dropout": dropout, "bias": False, "ffn_dim": 2 * hidden_dim, "position": "absolute"},
            "decoder": {"layers": decoder_layers, "heads": decoder_heads, "points": decoder_points, "ffn_dim": 2 * hidden_dim, "dropout": dropout},
            "queries": "learned",
            "num_queries": queries,
            "drmm": {"class_groups": queries >= num_classes, "scale_floor": 0.1},
        },
        "matching": {"rho": rho, "lambda": matching_lambda, "eta": eta_of(rho, matching_lambda), "M": num_classes},
        "loss": {**copy.deepcopy(LOSS_DEFAULTS), "drmm_location_beta": 1.0},
        "training": {**copy.deepcopy(TRAINING_DEFAULTS), "batch_size": 1, "backbone_lr_factor": 0.1},
    }
