"""Ground truth of a raw dataset for evaluation and box conversion: dataset.json classes, label maps,
nnDetection instance maps and box files, as boxes in original voxels.

Ground truth: label maps (NIfTI etc.) read with SimpleITK; one box per label value present
(`autodetr.boxes.boxes_from_label_map`, original voxel indices), class = label value. The nnDetection
instance form is accepted too: `labelsTr/case.nii.gz` holds instance ids 1..N and `labelsTr/case.json`
holds `{"instances": {"1": class_index, ...}}` with 0-based class indices into the dataset's foreground
classes (nnDetection: "Classes ... start with index 0"; its dataset.json has `"labels": {"0": "name", ...}`
without background). Class index i maps to the i-th foreground class sorted by label value; with an
nnDetection-style dataset.json that is label value i + 1 (the contiguous class index of the plan).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from autodetr.boxes import boxes_from_label_map
from autodetr.errors import InputError
from autodetr.prediction_files import case_name_from_file
from autodetr.preprocessing.raw_dataset import check_labels, label_entries, read_label_map

LABEL_FILE_ENDINGS = (".nii.gz", ".nii", ".mha", ".nrrd", ".nhdr", ".mhd")


@dataclass
class DatasetClasses:
    """Foreground classes of a dataset.json: label value -> name (sorted by value)."""

    names: dict[int, str]
    file_ending: str | None = None
    source: Path | None = None
    style: str = "nnunetv2"          # "nnunetv2" ({name: value}), "value_to_name" ({"1": name}), "nndetection"

    @property
    def values(self) -> list[int]:
        return sorted(self.names)

    def restrict(self, class_names: Sequence[str] | None) -> "DatasetClasses":
        if not class_names:
            return self
        by_name = {name: value for value, name in self.names.items()}
        unknown = [n for n in class_names if n not in by_name]
        if unknown:
            raise InputError(
                f"--classes: unknown class name(s) {unknown}; {self.source or 'dataset.json'} has {sorted(by_name)}"
            )
        return DatasetClasses({by_name[n]: n for n in class_names}, self.file_ending, self.source, self.style)


def read_dataset_classes(path: str | os.PathLike) -> DatasetClasses:
    """Foreground classes of a dataset.json, read as preprocessing reads them
    (`autodetr.preprocessing.raw_dataset.label_entries`: nnU-Net v2, nnU-Net v1 / MSD or nnDetection form,
    where class index i is label value i + 1), so label values agree with the plan's."""
    path = Path(path)
    try:
        content = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise InputError(f"{path}: cannot read dataset.json ({error})") from error
    if not isinstance(content, dict):
        raise InputError(f"{path}: dataset.json must hold an object")
    check_labels(content.get("labels"), path)
    entries, style = label_entries(content["labels"])
    return DatasetClasses(dict(entries), content.get("file_ending"), path, style)


def _label_files(folder: Path, file_ending: str | None) -> dict[str, Path]:
    endings = (file_ending,) if file_ending else LABEL_FILE_ENDINGS
    files: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if not path.is_file() or path.name.startswith("."):
            continue
        for ending in endings:
            if path.name.endswith(ending):
                files[path.name[: -len(ending)]] = path
                break
    return files


def _ground_truth_files(folder: Path, file_ending: str | None) -> dict[str, Path]:
    """Label maps of a labels folder, or its box files (`<case>.json`, see
    `autodetr.preprocessing.box_files`) when it holds no label maps; a folder with both raises InputError."""
    from autodetr.preprocessing.box_files import annotation_form, box_files

    files = _label_files(folder, file_ending)
    if file_ending is not None and annotation_form(folder, file_ending) == "boxes":
        return box_files(folder, file_ending)
    if not files:
        return {case: path for case, path in box_files(folder, ".nii.gz").items()
                if not any((folder / f"{case}{ending}").is_file() for ending in LABEL_FILE_ENDINGS)}
    return files


def read_box_ground_truth(path: Path, classes: DatasetClasses) -> tuple[np.ndarray, np.ndarray, tuple[int, ...] | None, list[str]]:
    """Boxes of one box file `labelsTr/<case>.json`: `(boxes, label_values, image shape or None, notes)`.

    World boxes are mapped into voxels with the geometry of the case's image (`imagesTr/<case>_0000*` for
    labelsTr, `imagesTs/` for labelsTs); without the image only `box_voxel` boxes can be read."""
    from autodetr.preprocessing.box_files import header_geometry, read_box_file

    case = path.name[: -len(".json")]
    images = path.parent.parent / path.parent.name.replace("labels", "images")
    found = sorted(images.glob(f"{case}_0000.*")) if images.is_dir() else []
    geometry = header_geometry(found[0]) if found else None
    declared = read_dataset_classes(classes.source) if classes.source is not None else classes   # all classes
    boxes, values = read_box_file(path, {name: value for value, name in declared.names.items()}, geometry)
    keep = np.isin(values, classes.values)                                                          # evaluated ones
    return boxes[keep], values[keep], None if geometry is None else tuple(geometry.image_shape), []


def find_ground_truth(
    gt: str | os.PathLike,
    predicted_cases: Sequence[str] = (),
    dataset_json: str | os.PathLike | None = None,
) -> tuple[dict[str, Path], DatasetClasses, list[str]]:
    """Locate label files: `({case: label file}, classes, notes)`.

    `gt` is a raw dataset folder (with labelsTr/ and maybe labelsTs/ and dataset.json: the labels folder
    that holds the predicted cases is used) or a label folder (dataset.json beside it or in its parent,
    unless `dataset_json` is given)."""
    gt = Path(gt)
    notes: list[str] = []
    if not gt.is_dir():
        raise InputError(f"{gt}: ground truth folder does not exist")
    if (gt / "labelsTr").is_dir():
        candidates = [gt / "labelsTr"] + ([gt / "labelsTs"] if (gt / "labelsTs").is_dir() else [])
        json_path = Path(dataset_json) if dataset_json else gt / "dataset.json"
    else:
        candidates = [gt]
        if dataset_json:
            json_path = Path(dataset_json)
        elif (gt / "dataset.json").is_file():
            json_path = gt / "dataset.json"
        else:
            json_path = gt.parent / "dataset.json"
    if not json_path.is_file():
        raise InputError(f"{json_path}: dataset.json not found (needed for the class names; give it with --dataset-json)")
    classes = read_dataset_classes(json_path)
    listings = {folder: _ground_truth_files(folder, classes.file_ending) for folder in candidates}
    predicted = set(predicted_cases)
    chosen = max(candidates, key=lambda folder: (len(predicted & set(listings[folder])), folder.name == "labelsTr"))
    if len(candidates) > 1:
        notes.append(f"ground truth from {chosen}")
    files = listings[chosen]
    if not files:
        ending = classes.file_ending or "/".join(LABEL_FILE_ENDINGS)
        raise InputError(f"{chosen}: no label files ({ending})")
    return files, classes, notes


def read_ground_truth_case(path: str | os.PathLike, classes: DatasetClasses, declared: Sequence[int] | None = None
                           ) -> tuple[np.ndarray, np.ndarray, tuple[int, ...], list[str]]:
    """Boxes of one label file: `(boxes [G, 6], label_values [G], image shape, notes)`.

    `declared`: every label value of dataset.json (default: those of `classes`); a value of the label map
    outside it is refused, so a typo in the labels cannot silently drop ground truth.

    Semantic form: one box per label value of `classes` present. nnDetection instance form (a
    `<case>.json` with "instances" beside the label file): one box per instance, its class from the JSON.
    Label maps are read by the training reader (`raw_dataset.read_label_map`)."""
    path = Path(path)
    if path.name.endswith(".json"):      # a box file (box-only dataset)
        return read_box_ground_truth(path, classes)
    label_map = read_label_map(path)[0]
    instance_json = path.parent / f"{case_name_from_file(path, LABEL_FILE_ENDINGS)}.json"
    if instance_json.is_file():
        return _instance_boxes(label_map, path, instance_json, classes, declared)
    return _semantic_boxes(label_map, path, classes, declared)


def _semantic_boxes(label_map: np.ndarray, path: Path, classes: DatasetClasses, declared: Sequence[int] | None
                    ) -> tuple[np.ndarray, np.ndarray, tuple[int, ...], list[str]]:
    """One box per evaluated label value present; undeclared values refused, other declared ones noted."""
    boxes, values = boxes_from_label_map(label_map, values=classes.values)
    present = np.unique(label_map)
    undeclared = np.setdiff1d(present, [0] + list(classes.values if declared is None else declared))
    if undeclared.size:
        raise InputError(f"{path}: label values {undeclared.tolist()} are not declared in "
                         f"{classes.source or 'dataset.json'}")
    unknown = np.setdiff1d(present, [0] + classes.values)
    notes = [f"{path.name}: label values {unknown.tolist()} are not evaluated classes, ignored"] if unknown.size else []
    return boxes, values, label_map.shape, notes


def _instance_boxes(label_map: np.ndarray, path: Path, instance_json: Path, classes: DatasetClasses,
                    declared: Sequence[int] | None) -> tuple[np.ndarray, np.ndarray, tuple[int, ...], list[str]]:
    """One box per instance of an nnDetection instance map, its label value the `i`-th declared class
    value for class index `i` (as training reads it); instances of classes not evaluated are left out."""
    try:
        instances = json.loads(instance_json.read_text()).get("instances")
    except (OSError, json.JSONDecodeError, AttributeError) as error:
        raise InputError(f"{instance_json}: cannot read instance JSON ({error})") from error
    if not isinstance(instances, dict):
        raise InputError(f"{instance_json}: 'instances' must map instance ids to class indices")
    all_values = sorted(classes.values if declared is None else declared)
    boxes, ids = boxes_from_label_map(label_map)
    mapping = {str(k): v for k, v in instances.items()}
    labels = []
    for instance_id in (int(i) for i in ids):
        if str(instance_id) not in mapping:
            raise InputError(f"{instance_json}: instance {instance_id} is in {path.name} but not in 'instances'")
        class_index = mapping[str(instance_id)]
        if isinstance(class_index, bool) or not isinstance(class_index, int):
            raise InputError(f"{instance_json}: class of instance {instance_id} must be an integer, got {class_index!r}")
        if not 0 <= class_index < len(all_values):
            raise InputError(
                f"{instance_json}: instance {instance_id} has class index {class_index}, but the dataset has "
                f"{len(all_values)} classes (0-based)"
            )
        labels.append(all_values[class_index])
    values = np.asarray(labels, dtype=np.int64)
    keep = np.isin(values, classes.values)
    return boxes[keep].reshape(-1, 6), values[keep], label_map.shape, []
