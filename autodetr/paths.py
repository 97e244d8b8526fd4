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
    folder = Path(value)
    if folder.exists() and not folder.is_dir():
        raise InputError(f"{folder}: {variable} names a file, not a folder")
    return folder


def use_roots_under(base: str | os.PathLike) -> dict[str, Path]:
    """Point the three AUTODETR_* roots (raw, preprocessed, results) into `base`, creating them: a demo or a
    benchmark that never touches a user's own data. Returns the folders by kind."""
    roots = {kind: Path(base) / kind for kind in ROOT_VARIABLES}
    for kind, folder in roots.items():
        folder.mkdir(parents=True, exist_ok=True)
        os.environ[ROOT_VARIABLES[kind]] = str(folder)
    return roots


def raw_root() -> Path:
    return root("raw")


def preprocessed_root() -> Path:
    return root("preprocessed")


def results_root() -> Path:
    return root("results")


DATASET_PATTERN = re.compile(r"^Dataset(\d{3})_(.+)$")
#: Characters allowed in a dataset name after `DatasetXXX_` (no path separators, so a name is one folder).
_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")


def check_folder_name(name: str, what: str = "dataset") -> str:
    """Refuse a name that is not one plain folder name: separators, `..`, a leading dot, control characters."""
    if not _NAME_PATTERN.match(name) or ".." in name:
        raise InputError(f"{what} name '{name}': only letters, digits and _ . + - are allowed "
                         "(one folder name, no path separators or '..')")
    return name


def inside(root_folder: Path, *parts: str) -> Path:
    """`root_folder / parts...`, refused when its parts lead outside `root_folder` (`..`, absolute parts).
    Symbolic links inside the root are followed as usual (a dataset folder may link to another disk)."""
    base = os.path.normpath(os.path.abspath(root_folder))
    path = os.path.normpath(os.path.join(base, *parts))
    if os.path.commonpath([base, path]) != base:
        raise InputError(f"{Path(root_folder).joinpath(*parts)}: leads outside {base}")
    return Path(root_folder).joinpath(*parts)


def dataset_name_from_id(dataset: str | int, search_roots: list[Path] | None = None) -> str:
    """Resolve `501`, `"501"` or `"Dataset501_Name"` to the full dataset folder name.

    The raw root is searched first, then the preprocessed and results roots that are set.
    """
    text = str(dataset)
    match = DATASET_PATTERN.match(text)
    if match:
        check_folder_name(match.group(2))
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
    match = DATASET_PATTERN.match(dataset_name)
    if match:
        check_folder_name(match.group(2))
    if not match:
        raise InputError(f"'{dataset_name}' is not a dataset name of the form DatasetXXX_Name")
    return int(match.group(1))


# ----------------------------------------------------------------------------------------------------
# results layout: $AUTODETR_results/DatasetXXX_Name/autodetrTrainer_<objective>__<plans>/fold_<k>/
# ----------------------------------------------------------------------------------------------------

#: Plans name of the planner (the preprocessed folder `$AUTODETR_preprocessed/<dataset>/<plans name>`).
PLANS_NAME = "autodetrPlans"
TRAINER_NAME = "autodetrTrainer"
#: Checkpoints of a fold folder by their `--checkpoint` name.
CHECKPOINT_NAMES = {"best": "checkpoint_best.pt", "final": "checkpoint_final.pt", "last": "checkpoint_last.pt"}
#: The checkpoint a trained fold predicts with: the first of these that exists.
CHECKPOINT_PREFERENCE = (CHECKPOINT_NAMES["best"], CHECKPOINT_NAMES["final"], CHECKPOINT_NAMES["last"])


def parse_fold(fold: str | int) -> int | str:
    """`fold0`..`fold4`, `0`..`4` (any non-negative index of splits_final.json) or `all`."""
    text = str(fold).strip().lower()
    if text == "all" or text == "fold_all":
        return "all"
    for prefix in ("fold_", "fold"):
        if text.startswith(prefix):
            text = text[len(prefix):]
            break
    if not text.isdigit():
        raise InputError(f"fold '{fold}': expected fold0..fold4, 0..4 or all")
    return int(text)


def trainer_folder_name(objective: str, plans_name: str = PLANS_NAME) -> str:
    """`autodetrTrainer_<objective>__<plans name>`: the model folder of one objective and plan."""
    return f"{TRAINER_NAME}_{objective}__{plans_name}"


def fold_folder(dataset_name: str, fold: int | str, objective: str = "dqm", plans_name: str = PLANS_NAME) -> Path:
    """`$AUTODETR_results/<dataset>/<trainer folder>/fold_<fold>`."""
    return results_root() / dataset_name / trainer_folder_name(objective, plans_name) / f"fold_{fold}"
