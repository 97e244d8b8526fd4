"""5-fold cross-validation splits (nnU-Net's KFold with its fixed seed), kept in `splits_final.json`."""
from __future__ import annotations

import warnings
from pathlib import Path

from nnunetv2.utilities.crossval_split import generate_crossval_split

from autodetr.atomic_io import read_json, write_json
from autodetr.errors import InputError

SPLIT_SEED = 12345
NUM_FOLDS = 5


def make_splits(case_ids: list[str], num_folds: int = NUM_FOLDS, seed: int = SPLIT_SEED) -> list[dict[str, list[str]]]:
    """`num_folds` disjoint validation folds covering all cases. With fewer cases than folds there is one
    fold per case (and a single case trains and validates on itself), with a warning."""
    case_ids = sorted(case_ids)
    if len(case_ids) < 2:
        warnings.warn(f"only {len(case_ids)} case(s): one fold that validates on its training case", stacklevel=2)
        return [{"train": list(case_ids), "val": list(case_ids)}]
    if len(case_ids) < num_folds:
        warnings.warn(f"only {len(case_ids)} cases: {len(case_ids)} folds instead of {num_folds}", stacklevel=2)
        num_folds = len(case_ids)
    return [{"train": [str(c) for c in s["train"]], "val": [str(c) for c in s["val"]]}
            for s in generate_crossval_split(case_ids, seed=seed, n_splits=num_folds)]


def read_splits(path: Path) -> list[dict[str, list[str]]]:
    """`splits_final.json`: a list of {"train": [case ids], "val": [case ids]}; InputError naming the file."""
    splits = read_json(path, expected=list)
    for number, fold in enumerate(splits):
        if not (isinstance(fold, dict) and all(isinstance(fold.get(k), list) for k in ("train", "val"))
                and all(isinstance(c, str) for k in ("train", "val") for c in fold[k])):
            raise InputError(f"{path}: fold {number} must be {{\"train\": [case ids], \"val\": [case ids]}}; "
                             "delete the file to make new splits")
    return splits


def load_or_make_splits(path: Path, case_ids: list[str]) -> list[dict[str, list[str]]]:
    """Reuse `splits_final.json` if it exists and names only known cases; otherwise write new splits."""
    path = Path(path)
    if path.is_file():
        splits = read_splits(path)
        named = {c for fold in splits for c in fold["train"] + fold["val"]}
        if named == set(case_ids):
            return splits
        warnings.warn(f"{path}: cases differ from the dataset, writing new splits", stacklevel=2)
    splits = make_splits(case_ids)
    write_json(path, splits)
    return splits
