"""Preprocess all training cases of a dataset into `<plans folder>/<case>.npz` + `<case>.json`.

Parallel over cases, with a progress bar. Writes are atomic (temporary name, then rename); a rerun skips
cases whose two files are complete, readable and made with the same plan (`plan_identity`), redoes the
others, and removes temporary files left by a killed run.
"""
from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np

from autodetr.atomic_io import remove_stale_partials, write_json, write_npz
from autodetr.errors import InputError
from autodetr.parallel import progress_map
from autodetr.plans import Plans
from autodetr.preprocessing.identity import IDENTITY_KEY, identity_array, preprocessing_identity
from autodetr.preprocessing.preprocess_case import preprocess_image
from autodetr.preprocessing.box_files import read_any_case
from autodetr.preprocessing.raw_dataset import OrganClass, RawCase, class_index_map

NPZ_KEYS = ("image", "seg", "boxes", "classes")
#: Fewest voxels per axis of a preprocessed case: the planner's smallest feature map.
MIN_CASE_SIZE = 4


def case_is_complete(folder: Path, case_id: str, identity: str | None = None) -> bool:
    """Both files exist, the JSON parses and the npz holds every array (its zip directory is intact);
    with `identity`, the npz was also made with that plan identity."""
    npz, restore = Path(folder) / f"{case_id}.npz", Path(folder) / f"{case_id}.json"
    if not (npz.is_file() and restore.is_file()):
        return False
    try:
        json.loads(restore.read_text())
        with zipfile.ZipFile(npz) as archive:
            names = {n.removesuffix(".npy") for n in archive.namelist()}
            if not (set(NPZ_KEYS) <= names and archive.testzip() is None):
                return False
        if identity is None:
            return True
        with np.load(npz, allow_pickle=False) as content:
            return IDENTITY_KEY in content.files and str(content[IDENTITY_KEY]) == identity
    except (OSError, ValueError, EOFError, zipfile.BadZipFile):
        return False


def preprocess_training_case(raw_case: RawCase, classes: list[OrganClass], plans: dict, output_folder: Path) -> str:
    """Read, preprocess and write one training case; returns its id."""
    case = read_any_case(raw_case, classes)  # label map or box file (its box label map)
    index_of_value = {c.label_value: c.index for c in classes}
    box_classes = np.asarray([index_of_value[int(v)] for v in case.box_label_values], dtype=np.int64)
    result = preprocess_image(case.image, case.geometry, plans, class_index_map(case, classes), case.boxes, box_classes)
    too_small = [int(s) for s in result.restore.preprocessed_shape]
    if min(too_small) < MIN_CASE_SIZE:
        raise InputError(
            f"{raw_case.image_files[0]}: only {too_small} voxels at the planned spacing {Plans.of(plans).spacing} mm, "
            f"fewer than the network's smallest feature map ({MIN_CASE_SIZE} per axis); check its spacing "
            f"{list(case.geometry.spacing_xyz)} (x, y, z) or remove the case"
        )
    write_npz(
        Path(output_folder) / f"{case.case_id}.npz",
        image=result.image.astype(np.float32), seg=result.seg, boxes=result.boxes, classes=result.classes,
        **{IDENTITY_KEY: identity_array(plans)},
    )
    write_json(
        Path(output_folder) / f"{case.case_id}.json",
        {"case_id": case.case_id, "restore": result.restore.to_json(), "image_files": [str(p) for p in raw_case.image_files]},
    )
    return case.case_id


def preprocess_dataset(raw_cases: list[RawCase], classes: list[OrganClass], plans: dict, output_folder: Path, num_processes: int = 2) -> list[str]:
    """Preprocess every case not already complete; returns the ids written now."""
    output_folder = Path(output_folder)
    output_folder.mkdir(parents=True, exist_ok=True)
    remove_stale_partials(output_folder)
    identity = preprocessing_identity(plans)
    todo = [c for c in raw_cases if not case_is_complete(output_folder, c.case_id, identity)]
    arguments = [(case, classes, plans, output_folder) for case in todo]
    return progress_map(preprocess_training_case, arguments, num_processes, "Preprocessing")
