"""The identity of a plan's preprocessing: a hash of every plan value that changes a preprocessed case.

Each `<case>.npz` carries the identity it was made with (array `plan_identity`), so a case made by another
plan (e.g. a concurrent or interrupted run with another `--input-size`) is detected when it is loaded."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from autodetr.atomic_io import NPZ_ERRORS, read_json
from autodetr.errors import InputError
from autodetr.plans import Plans

#: Plan keys that preprocessing reads.
PREPROCESSING_KEYS = (
    "classes", "channel_names", "transpose_forward", "spacing", "input_size", "normalization",
    "foreground_intensity_properties_per_channel", "resampling",
)
IDENTITY_KEY = "plan_identity"


def preprocessing_identity(plans: dict) -> str:
    """16 hex digits of the SHA-256 of the plan's preprocessing values (canonical JSON)."""
    planned = Plans.of(plans)
    values = {key: planned.value(key) for key in PREPROCESSING_KEYS}
    if planned.value("orientation") is not None:  # plans made before reorientation keep their identity
        values["orientation"] = planned.value("orientation")
    text = json.dumps(values, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def identity_array(plans: dict) -> np.ndarray:
    """The identity as a numpy string array, as stored in an npz (no pickle needed)."""
    return np.asarray(preprocessing_identity(plans))


def stored_identity(npz: Path) -> str | None:
    """The identity an npz was made with; None when it has none. InputError for an unreadable file."""
    try:
        with np.load(npz, allow_pickle=False) as content:
            return str(content[IDENTITY_KEY]) if IDENTITY_KEY in content.files else None
    except NPZ_ERRORS as error:
        raise InputError(f"{npz}: cannot read preprocessed case ({type(error).__name__}: {error}); "
                         "rerun autodetr_plan_and_preprocess") from None


def check_cases_match_plans(folder: Path, npz_files: list[Path]) -> None:
    """Refuse preprocessed cases not made with `folder/plans.json` (nothing to check without a plans.json)."""
    plans_file = Path(folder) / "plans.json"
    if not plans_file.is_file():
        return
    expected = preprocessing_identity(read_json(plans_file, expected=dict))
    for npz in npz_files:
        found = stored_identity(npz)
        if found != expected:
            made = "without a plan identity" if found is None else f"with plan {found}"
            raise InputError(
                f"{npz}: preprocessed {made}, but {plans_file} is plan {expected}; rerun "
                "autodetr_plan_and_preprocess for these plans"
            )
