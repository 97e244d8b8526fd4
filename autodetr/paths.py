"""Root folders (from environment variables, as in nnU-Net) and dataset name resolution."""
from __future__ import annotations

import os
import re
from pathlib import Path

from autodetr.errors import InputError

ROOT_VARIABLES = {
    "raw": "AUTODETR_raw",
    "preprocessed": "AUTODETR_preprocessed",
    "results": "AUTODETR_results",
}


def root(kind: str) -> Path:
    """Return the root folder named by `AUTODETR_<kind>`; a clear error if it is not set."""
    variable = ROOT_VARIABLES[kind]
    value = os.environ.get(variable)
    if not value:
        raise InputError(
            f"environment variable {variable} is not set: export {variable}=/path/to/folder "
            f"(see env.example)"
        )
    return Path(value)


def raw_root() -> Path:
    return root("raw")


def preprocessed_root() -> Path:
    return root("preprocessed")


def results_root() -> Path:
    return root("results")


_DATASET_PATTERN = re.compile(r"^Dataset(\d{3})_(.+)$")


def dataset_name_from_id(dataset: str | int, search_roots: list[Path] | None = None) -> str:
    """Resolve `501`, `"501"` or `"Dataset501_Name"` to the full dataset folder name.

    The raw root is searched first, then the preprocessed and results roots that are set.
    """
    text = str(dataset)
    match = _DATASET_PATTERN.match(text)
    if match:
        return text
    if not text.isdigit():
        raise InputError(f"dataset '{text}' is neither an id (e.g. 501) nor a name (e.g. Dataset501_Organs)")
    wanted = f"Dataset{int(text):03d}_"
    if search_roots is None:
        search_roots = []
        for kind, variable in ROOT_VARIABLES.items():
            if os.environ.get(variable):
                search_roots.append(Path(os.environ[variable]))
        if not search_roots:
            raw_root()  # raises the message naming the variable
    found = set()
    for folder in search_roots:
        if folder.is_dir():
            found.update(p.name for p in folder.iterdir() if p.is_dir() and p.name.startswith(wanted))
    if not found:
        where = ", ".join(str(p) for p in search_roots)
        raise InputError(f"unknown dataset id {int(text)}: no folder {wanted}* in {where}")
    if len(found) > 1:
        raise InputError(f"dataset id {int(text)} is ambiguous: {sorted(found)}")
    return found.pop()


def dataset_id(dataset_name: str) -> int:
    match = _DATASET_PATTERN.match(dataset_name)
    if not match:
        raise InputError(f"'{dataset_name}' is not a dataset name of the form DatasetXXX_Name")
    return int(match.group(1))
