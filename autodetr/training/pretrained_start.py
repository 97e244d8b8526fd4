"""Start a training from a packaged model or another fold's weights (nnU-Net's `-pretrained_weights`).

Classes are matched by name. A class-anchored detector has three kinds of class-specific weights:

- per-class output channels (channel 0 background, channel c class c): the segmentation heads' classifiers and a
  learned-query head's class layer; a matched class takes the source class's channel, background takes
  background;
- per-query rows (query k serves class `k mod C + 1` in slot `k // C`, `autodetr.model.anchors`): the query
  content and the query score bias; a matched class's slot j takes the source class's slot j;
- the anchors and the query classes, rebuilt from the user's own atlas and classes (never copied).

A class the source lacks keeps its fresh initialisation and starts at the user's atlas anchors; every other
weight of the same shape is copied. The network's architecture comes from the source (its plans' `network`
section and `matching.rho`), with the query count of the user's classes; spacing and input size stay the user's.
"""
from __future__ import annotations

import copy
import re
from pathlib import Path

import numpy as np
import torch

from autodetr.errors import InputError
from autodetr.model_files import NETWORK_PLAN_KEYS, read_plans
from autodetr.plans import Plans, query_count
from autodetr.pretrained import available_models, pretrained_folder

CLASS_CHANNELS = re.compile(r"(segmentation_head\.convs\.\d+|fine_segmentation\.classifier|head\.class_embed\.\d+)\.(weight|bias)$")
QUERY_ROWS = re.compile(r"(decoder\.query_content\.weight|decoder\.query_embed\.weight|head\.query_bias)$")
REBUILT = re.compile(r"(decoder\.anchors|head\.query_classes|decoder\.mask_spread)$")


def source_folder(pretrained: str) -> tuple[Path, Path | None]:
    """(fold folder, checkpoint file or None for the folder's default) of `--pretrained`: a packaged model's
    name, a fold folder, or a checkpoint file inside a fold folder."""
    path = Path(pretrained)
    if path.is_file():
        read_plans(path.parent / "plans.json", NETWORK_PLAN_KEYS)  # no classes: one line, not a KeyError
        return path.parent, path
    if path.is_dir():
        if not (path / "plans.json").is_file():
            raise InputError(f"--pretrained {path}: not a fold folder (no plans.json)")
        read_plans(path / "plans.json", NETWORK_PLAN_KEYS)
        return path, None
    if pretrained in available_models() or not any(sep in pretrained for sep in "/\\"):
        return pretrained_folder(pretrained), None
    raise InputError(f"--pretrained {pretrained}: no such file or folder")


def class_mapping(user_plans: dict, source_plans: dict) -> dict[int, int]:
    """User class index -> source class index, by name; InputError when no class is shared."""
    source = {c.name: c.index for c in Plans.of(source_plans).classes}
    mapping = {c.index: source[c.name] for c in Plans.of(user_plans).classes if c.name in source}
    if not mapping:
        names = ", ".join(sorted(source))
        raise InputError(f"the dataset shares no class with the pretrained model (its classes: {names}); "
                         "classes are matched by name")
    return mapping


def plans_from_source(user_plans: dict, source_plans: dict) -> dict:
    """The user's plans with the source's network and rho, the query count of the user's classes."""
    plans = copy.deepcopy(user_plans)
    network = copy.deepcopy(source_plans["network"])
    stride = [int(a) * int(np.prod([s[k] for s in network["stage_strides"]])) for k, a in enumerate(network["stem_stride"])]
    if any(int(size) % step for size, step in zip(plans["input_size"], stride)):
        raise InputError(f"the plan's input size {plans['input_size']} is not a multiple of the pretrained network's "
                         f"stride {stride} on every axis; plan with autodetr_plan_and_preprocess --input-size")
    rho = float(source_plans["matching"]["rho"])
    plans["matching"]["rho"] = rho
    network["num_queries"] = query_count(str(network.get("queries", "class_anchored")), rho,
                                         int(plans["matching"]["M"]), len(plans["classes"]))
    plans["network"] = network
    plans.setdefault("decisions", {})["network"] = "from the pretrained model (autodetr_train --pretrained)"
    return plans


def transfer_weights(network: torch.nn.Module, source_state: dict[str, torch.Tensor], user_plans: dict,
                     source_plans: dict) -> dict[str, int]:
    """Copy the source weights into `network` (module docstring); returns counts of what was copied."""
    mapping = class_mapping(user_plans, source_plans)
    user_classes, source_classes = len(user_plans["classes"]), len(source_plans["classes"])
    state = network.state_dict()
    counts = {"copied": 0, "class_mapped": 0, "kept": 0}
    for key, target in state.items():
        source = source_state.get(key)
        if source is None or REBUILT.search(key):
            counts["kept"] += 1
            continue
        source = source.to(target.dtype)
        if CLASS_CHANNELS.search(key) and target.shape[1:] == source.shape[1:]:
            target[0] = source[0]
            for user, origin in mapping.items():
                target[user] = source[origin]
            counts["class_mapped"] += 1
        elif QUERY_ROWS.search(key) and target.shape[1:] == source.shape[1:]:
            source_slots = source.shape[0] // source_classes
            for k in range(target.shape[0]):
                user, slot = k % user_classes + 1, k // user_classes
                if user in mapping and slot < source_slots:
                    target[k] = source[slot * source_classes + mapping[user] - 1]
            counts["class_mapped"] += 1
        elif target.shape == source.shape:
            target.copy_(source)
            counts["copied"] += 1
        else:
            counts["kept"] += 1
    network.load_state_dict(state)
    return counts
