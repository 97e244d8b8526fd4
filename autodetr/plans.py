"""The plan: one typed view of `plans.json` (the idea of nnU-Net v2's `PlansManager`).

`plans.json` stays a plain, human-readable dict on disk (written by `autodetr.planners.planner`). Code reads
it through `Plans`:

- the defaults of every optional key live here, once (`TRAINING_DEFAULTS`, `DEFAULT_AUGMENTATION`,
  `LOSS_DEFAULTS`); a plan written by an older version is brought up to date in one place (`upgrade`);
- derived values have one formula each: eta (`eta_of`, Organ-DETR Eq. 5, clipped to [1, 5]) and the number
  of queries (`query_count`); `with_overrides` applies `--set KEY=VALUE` and recomputes them;
- accessors name what they hold (`num_classes`, `label_values`, `in_channels`, `eta`, ...).
"""
from __future__ import annotations

import copy
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from autodetr.errors import InputError

#: Query designs: rho queries per class at the organ atlas, or the paper's learned queries.
QUERY_KINDS = ("class_anchored", "learned")
#: Backbones the network builder knows (`network.backbone`; `autodetr.model.backbone.Backbone`).
BACKBONES = ("fpn", "resnet50", "resnet101")

#: Augmentation parameters (`plans["training"]["augmentation"]`), see `autodetr.training.augmentation`.
DEFAULT_AUGMENTATION: dict[str, Any] = {
    "enabled": True,
    "p_rotation": 0.2,
    "rotation_degrees": 15.0,
    "rotation_degrees_out_of_plane": 5.0,
    "p_scale": 0.2,
    "scale_range": [0.85, 1.15],
    "p_elastic": 0.1,
    "elastic_alpha": [0.0, 600.0],
    "elastic_sigma": [9.0, 13.0],
    "order_data": 1,
    "p_mirror": 0.25,
    "p_gamma": 0.3,
    "gamma_range": [0.7, 1.5],
    "p_noise": 0.1,
    "noise_variance": [0.0, 0.1],
    "p_brightness": 0.15,
    "brightness_range": [0.75, 1.25],
    "p_contrast": 0.15,
    "contrast_range": [0.75, 1.25],
    "p_fov_crop": 0.0,
    "fov_crop_fraction": [0.15, 0.0, 0.0],
    "p_shift": 0.0,
}

#: `plans["training"]` keys the trainer reads, with the values used when a plan lacks them.
TRAINING_DEFAULTS: dict[str, Any] = {
    "batch_size": 2,
    "learning_rate": 2e-4,
    "backbone_lr_factor": 1.0,
    "sampling_lr_factor": 0.1,
    "weight_decay": 1e-4,
    "warmup_iterations": 100,
    "grad_clip_norm": 0.1,
    "epochs": 100,
    "iterations_per_epoch": 50,
    "lr_schedule": "cosine",
    "final_lr_factor": 0.01,
    "amp": True,
    "find_unused_parameters": False,
    "augmentation": copy.deepcopy(DEFAULT_AUGMENTATION),
}

#: `plans["loss"]` keys with the values of a plan that lacks them (Organ-DETR Eq. 8; D-RMM's beta).
#: `drmm_location_beta` 0 keeps plans written before it existed training as they did.
LOSS_DEFAULTS: dict[str, Any] = {
    "cls": 2.0, "bbox": 5.0, "giou": 5.0, "seg": 2.0, "no_object_weight": 0.1,
    "matcher_cost": {"cls": 2.0, "l1": 5.0, "giou": 2.0},
    "drmm_beta": 0.5, "drmm_location_beta": 0.0,
    "seg_supervision": "masks", "seg_pairwise": 0.0,
}

#: Plan keys whose override changes a derived value (`Plans.with_overrides`).
DERIVED_FROM = ("matching.rho", "matching.lambda", "matching.M", "network.queries")
#: Derived plan keys: recomputed from `DERIVED_FROM` after an override of those (a plan may still set them).
DERIVED = ("matching.eta", "network.num_queries")


def eta_of(rho: float, matching_ratio: float) -> int:
    """DQM duplicates eta = ceil(lambda * rho), clipped to [1, 5] (Organ-DETR Eq. 5)."""
    return int(min(5, max(1, math.ceil(float(matching_ratio) * float(rho) - 1e-9))))


def query_count(kind: str, rho: float, most_organs: int, num_classes: int) -> int:
    """N = rho * C for class-anchored queries (rho per class), N = rho * M for learned queries (Organ-DETR)."""
    if kind == "class_anchored":
        return int(math.ceil(rho)) * max(1, num_classes)
    if kind == "learned":
        return int(math.ceil(rho * most_organs))
    raise InputError(f"network.queries '{kind}': choose one of {', '.join(QUERY_KINDS)}")


def parse_override(text: str) -> tuple[str, object]:
    """`network.hidden_dim=128` -> ("network.hidden_dim", 128); values are JSON, else strings."""
    if "=" not in text:
        raise InputError(f"override '{text}': expected KEY=VALUE, e.g. network.hidden_dim=128")
    key, value = text.split("=", 1)
    try:
        return key.strip(), json.loads(value)
    except json.JSONDecodeError:
        return key.strip(), value


def set_path(plans: dict, dotted: str, value: object) -> None:
    """Set the existing key `dotted` (e.g. `network.msa.heads`) of a plans dict; InputError when absent."""
    node = plans
    keys = dotted.split(".")
    for key in keys[:-1]:
        if key not in node or not isinstance(node[key], dict):
            raise InputError(f"override '{dotted}': plans have no section '{key}'")
        node = node[key]
    if keys[-1] not in node:
        raise InputError(f"override '{dotted}': plans have no key '{keys[-1]}' (see plans.json for the keys)")
    node[keys[-1]] = value


def _fill(target: dict, defaults: Mapping[str, Any]) -> None:
    """Add every key of `defaults` missing from `target` (one level of nesting for dict values)."""
    for key, value in defaults.items():
        if key not in target:
            target[key] = copy.deepcopy(value)
        elif isinstance(value, dict) and isinstance(target[key], dict):
            for inner, inner_value in value.items():
                target[key].setdefault(inner, copy.deepcopy(inner_value))


def upgrade(plans: dict) -> dict:
    """Bring a plans dict written by an older version up to date, in place: the query kind of plans
    before class-anchored queries ("learned"), the backbone ("fpn"), the mask spread (0: off), the decoder's
    fine level (off), the MSA position encoding (absolute), the training and loss defaults (the shift
    augmentation off), the number of input channels, and eta where the plan did not store it."""
    network = plans.setdefault("network", {})
    network.setdefault("queries", "learned")
    network.setdefault("backbone", "fpn")
    network.setdefault("mask_spread", 0.0)  # plans before the mask spread: slot 0 alone starts at the mask box
    network.setdefault("decoder_fine_level", False)  # plans before it: the decoder samples the MSA levels only
    if isinstance(network.get("msa"), dict):
        network["msa"].setdefault("position", "absolute")  # plans before it: the paper's absolute encoding
    if "in_channels" not in network and "channel_names" in plans:
        network["in_channels"] = len(plans["channel_names"])
    _fill(plans.setdefault("training", {}), TRAINING_DEFAULTS)
    _fill(plans.setdefault("loss", {}), LOSS_DEFAULTS)
    matching = plans.get("matching")
    if matching and "eta" not in matching and "rho" in matching and "lambda" in matching:
        matching["eta"] = eta_of(matching["rho"], matching["lambda"])
    return plans


def recompute_derived(plans: dict) -> dict:
    """eta and N again from rho, lambda, M and the query kind, in place (after an override)."""
    matching, network = plans["matching"], plans["network"]
    matching["eta"] = eta_of(matching["rho"], matching["lambda"])
    kind = str(network.get("queries", "learned"))
    num_classes = len(plans["classes"])
    network["num_queries"] = query_count(kind, float(matching["rho"]), int(matching["M"]), num_classes)
    plans.setdefault("decisions", {})["num_queries"] = (
        f"N = rho * C = {matching['rho']} * {num_classes} (class-anchored: rho queries per class)"
        if kind == "class_anchored" else
        f"N = rho * M = {matching['rho']} * {matching['M']} (M: most organs in a training case)"
    )
    return plans


def apply_overrides(plans: dict, overrides: Sequence[str] | Mapping[str, object] | None) -> dict:
    """`--set KEY=VALUE` (dotted keys, JSON values) on a plans dict, in place; an unknown key is an
    InputError. After an override of a key in `DERIVED_FROM` the derived values are recomputed, except
    those given explicitly in the same overrides."""
    if not overrides:
        return plans
    items = list(overrides.items()) if isinstance(overrides, Mapping) else [parse_override(text) for text in overrides]
    for key, value in items:
        set_path(plans, key, value)
    if any(key in DERIVED_FROM for key, _ in items):
        recompute_derived(plans)
        for key, value in items:
            if key in DERIVED:
                set_path(plans, key, value)
    return plans


@dataclass(frozen=True)
class PlannedClass:
    """One organ class of the plan: contiguous `index` 1..C, its `label_value` in the label maps, its name."""

    index: int
    label_value: int
    name: str


class Plans:
    """Typed, read-only view of a plans dict (upgraded on construction; the dict itself is not changed)."""

    def __init__(self, plans: Mapping[str, Any]) -> None:
        self._data = upgrade(copy.deepcopy(dict(plans)))

    @classmethod
    def of(cls, plans: "Plans | Mapping[str, Any]") -> "Plans":
        """`plans` itself when it is a `Plans`, else a view of the dict."""
        return plans if isinstance(plans, Plans) else cls(plans)

    @classmethod
    def load(cls, path: Path) -> "Plans":
        from autodetr.atomic_io import read_json

        return cls(read_json(Path(path)))

    def to_dict(self) -> dict[str, Any]:
        """A deep copy of the (upgraded) plans dict, e.g. to write next to a model."""
        return copy.deepcopy(self._data)

    def with_overrides(self, overrides: Sequence[str] | Mapping[str, object] | None) -> "Plans":
        """A new `Plans` with `--set KEY=VALUE` overrides applied (`apply_overrides`)."""
        return Plans(apply_overrides(self.to_dict(), overrides))

    # identity ---------------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return str(self._data.get("plans_name", ""))

    @property
    def dataset_name(self) -> str:
        return str(self._data.get("dataset_name", ""))

    # classes ----------------------------------------------------------------------------------
    @property
    def classes(self) -> list[PlannedClass]:
        return [PlannedClass(int(c["index"]), int(c["label_value"]), str(c["name"])) for c in self._data["classes"]]

    @property
    def num_classes(self) -> int:
        return len(self._data["classes"])

    @property
    def class_names(self) -> dict[int, str]:
        """label value -> organ name."""
        return {c.label_value: c.name for c in self.classes}

    @property
    def label_values(self) -> dict[int, int]:
        """contiguous class index (1..C) -> label value."""
        return {c.index: c.label_value for c in self.classes}

    @property
    def lateral_pairs(self) -> list[list[int]]:
        return [list(pair) for pair in self._data.get("lateral_pairs") or []]

    # geometry ---------------------------------------------------------------------------------
    @property
    def input_size(self) -> list[int]:
        return [int(s) for s in self._data["input_size"]]

    @property
    def spacing(self) -> list[float]:
        return [float(s) for s in self._data["spacing"]]

    @property
    def transpose_forward(self) -> list[int] | None:
        value = self._data.get("transpose_forward")
        return None if value is None else [int(a) for a in value]

    # preprocessing ----------------------------------------------------------------------------
    def value(self, key: str) -> Any:
        """The plan's top-level `key` as stored (None when absent), e.g. for identity hashes."""
        return copy.deepcopy(self._data.get(key))

    @property
    def orientation(self) -> str:
        """"LPS": scans are brought to the canonical array order before preprocessing
        (`autodetr.preprocessing.orientation`); "stored": kept as stored (plans made before reorientation,
        whose models learned the order their training scans were stored in)."""
        return str(self._data.get("orientation", "stored"))

    def normalization(self, channel: int) -> str:
        """nnU-Net normalisation scheme name of input channel `channel`."""
        return str(self._data["normalization"][str(channel)])

    def intensity_properties(self, channel: int) -> dict[str, float]:
        """Foreground intensity statistics of channel `channel` (from the fingerprint)."""
        return dict(self._data["foreground_intensity_properties_per_channel"][str(channel)])

    @property
    def ct_channels(self) -> list[int]:
        """Input channels normalised as CT (Hounsfield units)."""
        return sorted(int(k) for k, v in self._data["normalization"].items() if v == "CTNormalization")

    @property
    def resampling(self) -> dict[str, Any]:
        """Interpolation orders and the anisotropy threshold of resampling."""
        return dict(self._data["resampling"])

    @property
    def in_channels(self) -> int:
        """Image channels the network takes (`network.in_channels`; 1 for a plan without either key)."""
        return int(self._data["network"].get("in_channels", 1))

    # network and matching ---------------------------------------------------------------------
    @property
    def network(self) -> dict[str, Any]:
        return self._data["network"]

    @property
    def backbone(self) -> str:
        return str(self._data["network"].get("backbone", "fpn"))

    @property
    def drmm_settings(self) -> dict[str, Any]:
        """`network.drmm` (empty for plans written before it: the paper's D-RMM head)."""
        return dict(self._data["network"].get("drmm") or {})

    @property
    def query_kind(self) -> str:
        kind = str(self._data["network"]["queries"])
        if kind not in QUERY_KINDS:
            raise InputError(f"network.queries '{kind}': choose one of {', '.join(QUERY_KINDS)}")
        return kind

    @property
    def num_queries(self) -> int:
        return int(self._data["network"]["num_queries"])

    @property
    def eta(self) -> int:
        """DQM duplicates: `matching.eta` as planned (or set), else `eta_of(rho, lambda)`."""
        matching = self._data["matching"]
        return int(matching["eta"]) if "eta" in matching else eta_of(matching["rho"], matching["lambda"])

    # training, loss, atlas --------------------------------------------------------------------
    @property
    def training(self) -> dict[str, Any]:
        """`plans["training"]` with every default filled in."""
        return self._data["training"]

    @property
    def loss(self) -> dict[str, Any]:
        """`plans["loss"]` with every default filled in."""
        return self._data["loss"]

    @property
    def augmentation(self) -> dict[str, Any]:
        """`training.augmentation` over `DEFAULT_AUGMENTATION`."""
        return {**DEFAULT_AUGMENTATION, **(self._data["training"].get("augmentation") or {})}

    @property
    def matcher_cost(self) -> dict[str, float]:
        """Matching cost weights (class, L1, GIoU) of `loss.matcher_cost`."""
        return {key: float(value) for key, value in self._data["loss"]["matcher_cost"].items()}

    @property
    def has_atlas(self) -> bool:
        return "atlas" in self._data

    @property
    def atlas_json(self) -> dict[str, Any] | None:
        return self._data.get("atlas")

    def with_atlas(self, atlas_json: Mapping[str, Any]) -> "Plans":
        """A new `Plans` whose organ atlas is `atlas_json` (a fold's own atlas at training start)."""
        data = self.to_dict()
        data["atlas"] = copy.deepcopy(dict(atlas_json))
        return Plans(data)
