"""`autodetr_plan_and_preprocess` as a Python API: fingerprint -> plans -> preprocessed cases -> splits.

Output under `$AUTODETR_preprocessed/DatasetXXX_Name/`:
`dataset.json`, `dataset_fingerprint.json`, `splits_final.json`, and per plans name
`<plans_name>/plans.json` with the cases `<plans_name>/<case>.npz` + `<case>.json`.
"""
from __future__ import annotations

import shutil
import warnings
from pathlib import Path

from autodetr.atomic_io import read_json, write_json
from autodetr.errors import InputError
from autodetr.locking import folder_lock
from autodetr.paths import check_folder_name, dataset_name_from_id, inside, preprocessed_root, raw_root
from autodetr.plans import Plans
from autodetr.planners.fingerprint import check_cases_fit_plan, ct_channel_indices, extract_fingerprint, planning_warnings
from autodetr.planners.intensity import normalisation_decision
from autodetr.planners.planner import PLANS_NAME, plan_experiment
from autodetr.preprocessing.identity import preprocessing_identity
from autodetr.preprocessing.preprocess_dataset import preprocess_dataset
from autodetr.preprocessing.raw_dataset import (
    check_num_training, is_instance_form, list_cases, load_dataset_json, no_cases_reason, organ_classes,
)
from autodetr.preprocessing.splits import load_or_make_splits
from autodetr.preprocessing.box_files import annotation_form, list_box_cases


def default_preset() -> str:
    """`gpu` when CUDA is available, else `cpu`."""
    import torch

    return "gpu" if torch.cuda.is_available() else "cpu"


def plans_folder(dataset_name: str, plans_name: str = PLANS_NAME) -> Path:
    return preprocessed_root() / dataset_name / plans_name


def load_plans(dataset_name: str, plans_name: str = PLANS_NAME) -> dict:
    path = plans_folder(dataset_name, plans_name) / "plans.json"
    if not path.is_file():
        raise InputError(f"{path}: no plans; run autodetr_plan_and_preprocess -d {dataset_name} first")
    return read_json(path, expected=dict)


def _clear_folder(folder: Path, keep: set[str]) -> None:
    """Delete everything in `folder` except the names in `keep` (`--clean` under the folder's lock)."""
    for path in folder.iterdir():
        if path.name in keep:
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()


def _cached_fingerprint(path: Path, case_ids: list[str]) -> dict | None:
    """The fingerprint of an earlier run if it is of these cases and of this fingerprint version."""
    if not path.is_file():
        return None
    try:
        fingerprint = read_json(path, expected=dict)
    except InputError as error:
        raise InputError(f"{error}; or rerun with --clean to compute it again") from None
    if fingerprint.get("case_ids") != case_ids or "planning_outliers" not in fingerprint or "intensity_outliers" not in fingerprint:
        return None  # another dataset, or an older fingerprint version
    return fingerprint


def _read_raw_dataset(raw_folder: Path) -> tuple[dict, str, list, list]:
    """`(dataset.json, annotation form, organ classes, training cases)` of a raw dataset folder, checked."""
    dataset_json = load_dataset_json(raw_folder)
    annotation = annotation_form(raw_folder / "labelsTr", dataset_json["file_ending"])  # label maps or box files
    instance_form = annotation == "label_maps" and is_instance_form(raw_folder)
    classes = organ_classes(dataset_json, instance_form)
    raw_cases = list_box_cases(raw_folder, dataset_json) if annotation == "boxes" else list_cases(raw_folder, dataset_json)
    if not raw_cases:
        raise InputError(no_cases_reason(raw_folder / "imagesTr", dataset_json["file_ending"]))
    check_num_training(raw_folder, dataset_json, len(raw_cases))
    return dataset_json, annotation, classes, raw_cases


def _remove_stale_cases(folder: Path, plans_file: Path, plans: dict) -> None:
    """Delete the preprocessed cases of an earlier plan whose preprocessing differs from `plans`."""
    if plans_file.is_file() and preprocessing_identity(read_json(plans_file)) != preprocessing_identity(plans):
        for stale in list(folder.glob("*.npz")) + [p for p in folder.glob("*.json") if p.name != "plans.json"]:
            stale.unlink()


def plan_and_preprocess(
    dataset: str | int,
    preset: str | None = None,
    plans_name: str = PLANS_NAME,
    num_processes: int = 2,
    preprocess: bool = True,
    clean: bool = False,
    **plan_options,
) -> Path:
    """Run the whole first half of the pipeline for one dataset; returns the plans folder.

    The plans folder is locked for the run (a second run on it is refused), the dataset is checked before
    anything is written, and a case that would move the plan for everyone is refused or left out of the
    planning with a warning (listed in `plans["warnings"]`)."""
    raw = raw_root()
    dataset_name = dataset_name_from_id(dataset, [raw])
    check_folder_name(plans_name, "plans")
    raw_folder = inside(raw, dataset_name)
    if not raw_folder.is_dir():
        raise InputError(f"{raw_folder}: dataset folder missing")
    dataset_json, annotation, classes, raw_cases = _read_raw_dataset(raw_folder)
    case_ids = [c.case_id for c in raw_cases]

    output = inside(preprocessed_root(), dataset_name)
    folder = output / plans_name
    with folder_lock(folder, "autodetr_plan_and_preprocess") as lock:
        if clean:
            _clear_folder(folder, {lock.name})
        fingerprint_file = output / "dataset_fingerprint.json"
        fingerprint = None if clean else _cached_fingerprint(fingerprint_file, case_ids)
        if fingerprint is None:
            fingerprint = extract_fingerprint(raw_cases, classes, dataset_json, num_processes)
        plans = plan_experiment(
            fingerprint, dataset_json, classes, dataset_name, preset=preset or default_preset(),
        box_annotations=annotation == "boxes", **plan_options
        )
        plans["plans_name"] = plans_name
        plans["decisions"]["normalization"] = normalisation_decision(
            fingerprint["foreground_intensity_properties_per_channel"], fingerprint["intensity_outliers"],
            ct_channel_indices(dataset_json))
        notes = planning_warnings(fingerprint, raw_cases)
        if notes:
            plans["warnings"] = notes
            for note in notes:
                warnings.warn(note, stacklevel=2)
        check_cases_fit_plan(fingerprint, raw_cases, plans)
        write_json(fingerprint_file, fingerprint)
        write_json(output / "dataset.json", dataset_json)
        plans_file = folder / "plans.json"
        _remove_stale_cases(folder, plans_file, plans)   # a different plan invalidates the preprocessed cases
        write_json(plans_file, plans)
        if preprocess:
            preprocess_dataset(raw_cases, classes, plans, folder, num_processes)
            write_dataset_atlas(plans, folder, case_ids, plans_file)
        load_or_make_splits(output / "splits_final.json", case_ids)
    return folder


def write_dataset_atlas(plans: dict, folder: Path, case_ids: list[str], plans_file: Path) -> None:
    """Store the organ atlas of all preprocessed training cases in plans.json (for reading; each fold's
    detector recomputes it from its own training cases at training start)."""
    from autodetr.planners.atlas import atlas_from_preprocessed

    atlas = atlas_from_preprocessed(folder, case_ids, Plans.of(plans).num_classes,
                                    source=f"all {len(case_ids)} training cases after preprocessing")
    plans["atlas"] = atlas.to_json()
    plans["decisions"]["atlas"] = (
        "per class median box, 5th-95th percentile range and presence frequency, relative to the preprocessed body "
        "crop; this copy covers every training case, a fold's detector takes its own from the fold's training "
        "cases only (autodetr.planners.atlas)"
    )
    write_json(plans_file, plans)
