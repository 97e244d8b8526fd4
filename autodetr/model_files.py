"""Reading the files of a trained fold: its checkpoints and its `plans.json`, each refused in one line that
says what the file is not (never torch's advice to load with `weights_only=False`, never a KeyError).

Checkpoints load with `torch.load(..., weights_only=True)`: tensors, numbers, strings, lists and dicts only,
so no pickled code runs. A fold's `plans.json` must hold the keys the network reads
(`NETWORK_PLAN_KEYS`), and to predict new images those preprocessing reads too (`REQUIRED_PLAN_KEYS`)."""
from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import Any

from autodetr.atomic_io import missing_file_reason, read_json
from autodetr.errors import InputError

#: Keys of a plans.json that building the network reads, and those preprocessing a new image reads too.
NETWORK_PLAN_KEYS = ("classes", "network", "matching")
REQUIRED_PLAN_KEYS = NETWORK_PLAN_KEYS + (
    "channel_names", "spacing", "input_size", "normalization", "foreground_intensity_properties_per_channel",
    "resampling",
)
CLASS_KEYS = ("index", "label_value", "name")
NOT_A_CHECKPOINT = "not an autodetr checkpoint"


def _check_checkpoint_file(path: Path) -> None:
    """Refuse what torch.load would misreport: a missing, empty or non-zip file (torch.save writes zip archives)."""
    if not path.is_file():
        raise InputError(f"{path}: checkpoint {missing_file_reason(path)}")
    size = path.stat().st_size
    if size == 0:
        raise InputError(f"{path}: {NOT_A_CHECKPOINT}: the file is empty (0 bytes); copy it again or choose another checkpoint")
    if not zipfile.is_zipfile(path):
        raise InputError(f"{path}: {NOT_A_CHECKPOINT}: not an archive written by torch.save ({size} bytes, "
                         "no zip directory: another kind of file, or truncated)")


def _check_checkpoint_content(path: Path, content: Any) -> dict[str, Any]:
    """The loaded content as a dict with the network weights under `model` (or a bare state dict)."""
    import torch

    if not isinstance(content, dict):
        raise InputError(f"{path}: {NOT_A_CHECKPOINT}: it holds a {type(content).__name__}, not a dict of weights")
    weights = content.get("model", content)
    if not isinstance(weights, dict) or not weights or not all(isinstance(v, torch.Tensor) for v in weights.values()):
        raise InputError(f"{path}: {NOT_A_CHECKPOINT}: no network weights (expected a 'model' dict of tensors)")
    return content


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """A checkpoint's content, loaded with `torch.load(..., weights_only=True)` on the CPU; InputError naming
    the file when it is missing, empty, not a torch.save archive, damaged, holds pickled objects other than
    tensors and plain values, or holds no network weights."""
    import torch

    path = Path(path)
    _check_checkpoint_file(path)
    try:
        content = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise InputError(f"{path}: {NOT_A_CHECKPOINT}: it holds Python objects other than tensors, numbers and "
                         "strings, which autodetr never loads (no pickled code runs)") from None
    except Exception as error:  # noqa: BLE001 - a damaged archive: torch raises RuntimeError, EOFError, ...
        first = (str(error).strip().splitlines() or [type(error).__name__])[0][:160]
        raise InputError(f"{path}: {NOT_A_CHECKPOINT}, or a damaged one: the torch.save archive cannot be read "
                         f"({type(error).__name__}: {first})") from None
    return _check_checkpoint_content(path, content)


def check_plans(plans: Any, path: str | Path, keys: tuple[str, ...] = REQUIRED_PLAN_KEYS) -> dict:
    """`plans` (the content of `path`) if it holds every key of `keys` and a class list of
    `{"index", "label_value", "name"}` entries; else InputError naming the file and the key."""
    if not isinstance(plans, dict):
        raise InputError(f"{path}: expected a JSON object at the top level, got {type(plans).__name__}")
    missing = [key for key in keys if key not in plans]
    if missing:
        raise InputError(f"{path}: not a complete autodetr plan: missing key(s) {', '.join(missing)} "
                         "(copy the fold's plans.json again, or rerun autodetr_plan_and_preprocess and train)")
    classes = plans["classes"]
    if not isinstance(classes, list) or not classes:
        raise InputError(f"{path}: 'classes' must be a non-empty list of {{\"index\", \"label_value\", \"name\"}}")
    for n, entry in enumerate(classes):
        if not isinstance(entry, dict) or any(key not in entry for key in CLASS_KEYS):
            raise InputError(f"{path}: 'classes' entry {n} must be an object with keys {', '.join(CLASS_KEYS)}, "
                             f"got {entry!r}"[:300])
    return plans


def read_plans(path: str | Path, keys: tuple[str, ...] = REQUIRED_PLAN_KEYS) -> dict:
    """A plans.json, read (`read_json`) and checked for `keys` (`check_plans`; `NETWORK_PLAN_KEYS` where
    only the network is built); InputError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: {missing_file_reason(path)}")
    return check_plans(read_json(path, expected=dict), path, keys)
