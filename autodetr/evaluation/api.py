"""Evaluation API: the per-case prediction file format, ground truth from label maps, and evaluation of
cases, prediction folders and pooled cross-validation predictions.

Per-case prediction JSON (written by `autodetr_predict` and by training's validation, read here; the
format lives in `write_prediction` / `load_prediction`):

    {"case": "phantom_003",
     "box_convention": PREDICTION_BOX_CONVENTION,
     "image_shape": [D, H, W],                 # array order, as GetArrayFromImage returns it
     "spacing": [sz, sy, sx],                  # array order, like image_shape (SimpleITK's GetSpacing reversed)
     "origin": [x, y, z],                      # SimpleITK GetOrigin (physical x, y, z in mm)
     "direction": [9 values],                  # SimpleITK GetDirection (row-major 3x3; column j = index axis j of (x, y, z))
     "detections": [{"class_name": "liver", "label_value": 1, "score": 0.93,
                     "box_voxel": [z1, y1, x1, z2, y2, x2],
                     "box_world_mm": {"corners": [[x, y, z] * 8], "min": [x, y, z], "max": [x, y, z]}}, ...]}

`box_voxel` is a corner box in voxel indices of the original image with half-open edges (voxels 3..5 ->
z1 = 3, z2 = 6). `box_world_mm` gives the 8 corners of the box's outer voxel edges in physical space: edge
coordinate e is the continuous index e - 0.5 (SimpleITK places voxel centres on integer indices). The
geometry keys may be null when the writer does not know them (then `box_world_mm` is null too);
evaluation reads only `case`, `image_shape` (checked against the label map when present) and each
detection's `label_value`, `class_name`, `score` and `box_voxel`.

Ground truth: label maps (NIfTI etc.) read with SimpleITK; one box per label value present
(`autodetr.boxes.boxes_from_label_map`, original voxel indices), class = label value. The nnDetection
instance form is accepted too: `labelsTr/case.nii.gz` holds instance ids 1..N and `labelsTr/case.json`
holds `{"instances": {"1": class_index, ...}}` with 0-based class indices into the dataset's foreground
classes (nnDetection: "Classes ... start with index 0"; its dataset.json has `"labels": {"0": "name", ...}`
without background). Class index i maps to the i-th foreground class sorted by label value; with an
nnDetection-style dataset.json that is label value i + 1 (the contiguous class index of the plan).
"""
from __future__ import annotations

import itertools
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from autodetr.atomic_io import atomic_path, read_json, write_json
from autodetr.boxes import boxes_from_label_map
from autodetr.errors import InputError
from autodetr.evaluation.calibration import (
    DEFAULT_NUM_BINS,
    calibration_bins,
    detection_correctness,
    expected_calibration_error,
    reliability_diagram,
)
from autodetr.evaluation.coco import (
    COCO_IOU_THRESHOLDS,
    DEFAULT_MAX_DETS,
    NNDET_IOU_THRESHOLDS,
    CaseResult,
    summarize_cases,
)

__all__ = [
    "PREDICTION_BOX_CONVENTION", "CaseResult", "DatasetClasses", "image_geometry", "voxel_boxes_to_world",
    "write_prediction", "load_prediction", "read_prediction", "find_prediction_files",
    "read_dataset_classes", "read_ground_truth_case", "find_ground_truth", "evaluate_cases",
    "evaluate_folder", "find_cross_validation_predictions", "evaluate_cross_validation", "write_metrics",
]

PREDICTION_BOX_CONVENTION = (
    "voxel indices (z1, y1, x1, z2, y2, x2) in array order of the original image as read by SimpleITK "
    "(GetArrayFromImage), half-open: a box covering voxels 3..5 has z1=3, z2=6"
)
LABEL_FILE_ENDINGS = (".nii.gz", ".nii", ".mha", ".nrrd", ".nhdr", ".mhd")
METRIC_COLUMNS = ["label_value", "AP", "AP50", "AP75", "AR", "nnDet_mAP", "AP10", "false_positives_absent",
                  "num_gt", "num_detections"]


# ----------------------------------------------------------------------------------------------------
# prediction files
# ----------------------------------------------------------------------------------------------------

def image_geometry(image: Any) -> dict:
    """`image_shape`, `spacing` (array order), `origin`, `direction` of a SimpleITK image, as
    `write_prediction` keyword arguments: `write_prediction(path, ..., **image_geometry(image))`."""
    size = image.GetSize()
    return {
        "image_shape": [int(s) for s in size[::-1]],
        "spacing": [float(s) for s in image.GetSpacing()[::-1]],
        "origin": [float(o) for o in image.GetOrigin()],
        "direction": [float(d) for d in image.GetDirection()],
    }


def voxel_boxes_to_world(
    boxes: np.ndarray, spacing: Sequence[float], origin: Sequence[float], direction: Sequence[float]
) -> np.ndarray:
    """Corner boxes `(z1, y1, x1, z2, y2, x2)` (voxel edges) -> physical corners `[P, 8, 3]` as (x, y, z) mm.

    `spacing` in array order (z, y, x); `origin`, `direction` as SimpleITK gives them. Corners are
    enumerated with z slowest, x fastest (z1y1x1, z1y1x2, z1y2x1, ...).
    """
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 6)
    spacing_xyz = np.asarray(spacing, dtype=np.float64)[::-1]
    origin = np.asarray(origin, dtype=np.float64)
    matrix = np.asarray(direction, dtype=np.float64).reshape(3, 3)
    corners = []
    for z, y, x in itertools.product((0, 3), (1, 4), (2, 5)):
        corners.append(np.stack([boxes[:, x], boxes[:, y], boxes[:, z]], axis=-1))   # edge coordinates (x, y, z)
    index = np.stack(corners, axis=1) - 0.5                                           # continuous index [P, 8, 3]
    return origin + (index * spacing_xyz) @ matrix.T


def write_prediction(
    path: str | os.PathLike,
    case: str,
    boxes: np.ndarray,
    scores: np.ndarray,
    label_values: np.ndarray,
    class_names: Mapping[int, str] | Sequence[str],
    image_shape: Sequence[int] | None = None,
    spacing: Sequence[float] | None = None,
    origin: Sequence[float] | None = None,
    direction: Sequence[float] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> None:
    """Write one case's detections in the per-case prediction JSON format (atomically).

    `boxes [P, 6]`: voxel corner boxes in the original image (see `PREDICTION_BOX_CONVENTION`);
    `scores [P]` in [0, 1]; `label_values [P]` (dataset.json label values). `class_names`: label value ->
    name, or one name per detection. Geometry (`image_shape` [D, H, W], `spacing` [sz, sy, sx], `origin`,
    `direction` as SimpleITK gives them; `**image_geometry(image)` fills all four): when spacing, origin
    and direction are all given, each detection gets `box_world_mm`. `extra`: more top-level keys (e.g.
    the folds or checkpoint used). Detections are written in descending score order.
    """
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 6) if np.size(boxes) else np.zeros((0, 6))
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    label_values = np.asarray(label_values, dtype=np.int64).reshape(-1)
    if not len(boxes) == len(scores) == len(label_values):
        raise ValueError(f"{len(boxes)} boxes, {len(scores)} scores and {len(label_values)} labels for case {case}")
    if isinstance(class_names, Mapping):
        names = [str(class_names.get(int(v), class_names.get(str(int(v)), str(int(v))))) for v in label_values]
    else:
        names = [str(n) for n in class_names]
        if len(names) != len(label_values):
            raise ValueError(f"{len(names)} class names for {len(label_values)} detections of case {case}")
    world = None
    if spacing is not None and origin is not None and direction is not None:
        world = voxel_boxes_to_world(boxes, spacing, origin, direction)
    order = np.argsort(-scores, kind="mergesort")
    detections = []
    for i in order:
        detection = {
            "class_name": names[i],
            "label_value": int(label_values[i]),
            "score": float(scores[i]),
            "box_voxel": [float(v) for v in boxes[i]],
            "box_world_mm": None,
        }
        if world is not None:
            detection["box_world_mm"] = {
                "corners": world[i].tolist(),
                "min": world[i].min(axis=0).tolist(),
                "max": world[i].max(axis=0).tolist(),
            }
        detections.append(detection)
    content = {
        "case": str(case),
        "box_convention": PREDICTION_BOX_CONVENTION,
        "image_shape": None if image_shape is None else [int(s) for s in image_shape],
        "spacing": None if spacing is None else [float(s) for s in spacing],
        "origin": None if origin is None else [float(o) for o in origin],
        "direction": None if direction is None else [float(d) for d in direction],
        "detections": detections,
    }
    for key, value in (extra or {}).items():
        if key in content:
            raise ValueError(f"extra key '{key}' would overwrite a key of the prediction format")
        content[key] = value
    write_json(path, content)


def _case_name_from_file(path: Path, endings: Sequence[str] = (".json",)) -> str:
    for ending in endings:
        if path.name.endswith(ending):
            return path.name[: -len(ending)]
    return path.stem


def load_prediction(path: str | os.PathLike) -> dict:
    """Read and validate one prediction JSON; returns its content with `boxes [P, 6]`, `scores [P]`,
    `label_values [P]` and `class_names [P]` arrays added (detections in file order).

    Raises InputError (naming the file) when the file is not valid JSON or not in the format."""
    path = Path(path)
    content = read_json(path)
    if not isinstance(content, dict) or not isinstance(content.get("detections"), list):
        raise InputError(f"{path}: not a prediction file (needs a 'detections' list)")
    content.setdefault("case", _case_name_from_file(path))
    if not isinstance(content["case"], str) or not content["case"]:
        raise InputError(f"{path}: 'case' must be a non-empty string")
    boxes, scores, labels, names = [], [], [], []
    for n, detection in enumerate(content["detections"]):
        where = f"{path}: detection {n}"
        if not isinstance(detection, dict):
            raise InputError(f"{where} is not an object")
        box = detection.get("box_voxel")
        if not isinstance(box, list) or len(box) != 6:
            raise InputError(f"{where}: 'box_voxel' must be a list of 6 numbers (z1, y1, x1, z2, y2, x2)")
        score = detection.get("score")
        value = detection.get("label_value")
        try:
            box = [float(v) for v in box]
            score = float(score)
        except (TypeError, ValueError) as error:
            raise InputError(f"{where}: 'box_voxel' and 'score' must be numbers") from error
        if not (isinstance(value, int) and not isinstance(value, bool)):
            if isinstance(value, float) and value.is_integer():
                value = int(value)
            else:
                raise InputError(f"{where}: 'label_value' must be an integer, got {value!r}")
        if not all(math.isfinite(v) for v in box) or not math.isfinite(score):
            raise InputError(f"{where}: non-finite box or score")
        if box[3] < box[0] or box[4] < box[1] or box[5] < box[2]:
            raise InputError(f"{where}: box_voxel {box} has an upper corner below its lower corner")
        boxes.append(box)
        scores.append(score)
        labels.append(value)
        names.append(detection.get("class_name"))
    content["boxes"] = np.asarray(boxes, dtype=np.float64).reshape(-1, 6)
    content["scores"] = np.asarray(scores, dtype=np.float64)
    content["label_values"] = np.asarray(labels, dtype=np.int64)
    content["class_names"] = names
    shape = content.get("image_shape")
    if shape is not None and (not isinstance(shape, list) or len(shape) != 3):
        raise InputError(f"{path}: 'image_shape' must be [D, H, W] or null")
    return content


def read_prediction(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`(boxes [P, 6] float64 voxel corner boxes, scores [P] float64, label_values [P] int64)` of one file."""
    content = load_prediction(path)
    return content["boxes"], content["scores"], content["label_values"]


def find_prediction_files(folder: str | os.PathLike) -> tuple[dict[str, Path], list[str]]:
    """Prediction files of a folder (top level `*.json`): `({case: path}, skipped file names)`.

    JSON files without a 'detections' list (e.g. run information) are skipped; two files for one case
    raise InputError."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{folder}: prediction folder does not exist")
    found: dict[str, Path] = {}
    skipped: list[str] = []
    for path in sorted(folder.glob("*.json")):
        if path.name.endswith(".mrk.json"):      # 3D Slicer ROIs written beside the predictions
            continue
        try:
            content = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise InputError(f"{path}: not a readable JSON file ({error})") from error
        if not isinstance(content, dict) or "detections" not in content:
            skipped.append(path.name)
            continue
        case = content.get("case") or _case_name_from_file(path)
        if case in found:
            raise InputError(f"{path}: case '{case}' is also predicted in {found[case]}")
        found[str(case)] = path
    return found, skipped


# ----------------------------------------------------------------------------------------------------
# ground truth
# ----------------------------------------------------------------------------------------------------

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

    def value_of_class_index(self, class_index: int) -> int | None:
        """nnDetection's 0-based class index -> label value (i-th foreground class by value)."""
        values = self.values
        return values[class_index] if 0 <= class_index < len(values) else None

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
    """Foreground classes of a dataset.json in nnU-Net v2 (`{"background": 0, "liver": 1}`), nnU-Net v1 /
    MSD (`{"0": "background", "1": "liver"}`) or nnDetection (`{"0": "liver", "1": "spleen"}`: class
    index i becomes label value i + 1) form."""
    path = Path(path)
    try:
        content = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise InputError(f"{path}: cannot read dataset.json ({error})") from error
    labels = content.get("labels") if isinstance(content, dict) else None
    if not isinstance(labels, dict) or not labels:
        raise InputError(f"{path}: needs a non-empty 'labels' object")
    file_ending = content.get("file_ending")
    keys_numeric = all(str(k).lstrip("-").isdigit() for k in labels)
    values_are_names = all(isinstance(v, str) for v in labels.values())
    names: dict[int, str] = {}
    if keys_numeric and values_are_names:
        background = labels.get("0")
        if background is not None and background.lower() in ("background", "bg", "clear label"):
            style = "value_to_name"
            for key, name in labels.items():
                if int(key) != 0:
                    names[int(key)] = name
        else:
            style = "nndetection"
            for key, name in labels.items():
                names[int(key) + 1] = name
    else:
        style = "nnunetv2"
        for name, value in labels.items():
            if isinstance(value, (list, tuple)):
                raise InputError(f"{path}: label '{name}' is a region {value}; region-based labels are not supported")
            if isinstance(value, bool) or not isinstance(value, (int, str)) or not str(value).lstrip("-").isdigit():
                raise InputError(f"{path}: label '{name}' has value {value!r}, expected an integer")
            if int(value) != 0:
                if int(value) in names:
                    raise InputError(f"{path}: label value {int(value)} is used twice")
                names[int(value)] = str(name)
    if not names:
        raise InputError(f"{path}: 'labels' has no foreground class")
    return DatasetClasses(dict(sorted(names.items())), file_ending, path, style)


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
    `<case>.json` with "instances" beside the label file): one box per instance, its class from the JSON."""
    import SimpleITK as sitk

    path = Path(path)
    if path.name.endswith(".json"):      # a box file (box-only dataset)
        return read_box_ground_truth(path, classes)
    try:
        label_map = sitk.GetArrayFromImage(sitk.ReadImage(str(path)))
    except RuntimeError as error:
        raise InputError(f"{path}: cannot read label map ({str(error).strip().splitlines()[-1]})") from error
    if label_map.ndim != 3:
        raise InputError(f"{path}: label map must be 3D, got shape {label_map.shape}")
    if np.issubdtype(label_map.dtype, np.floating):
        if not np.all(np.mod(label_map, 1) == 0):
            raise InputError(f"{path}: label map has non-integer values")
    label_map = label_map.astype(np.int64, copy=False)
    notes: list[str] = []
    case = _case_name_from_file(path, LABEL_FILE_ENDINGS)
    instance_json = path.parent / f"{case}.json"
    instances = None
    if instance_json.is_file():
        try:
            instances = json.loads(instance_json.read_text()).get("instances")
        except (OSError, json.JSONDecodeError, AttributeError) as error:
            raise InputError(f"{instance_json}: cannot read instance JSON ({error})") from error
    if instances is None:
        boxes, values = boxes_from_label_map(label_map, values=classes.values)
        present = np.unique(label_map)
        undeclared = np.setdiff1d(present, [0] + list(classes.values if declared is None else declared))
        if undeclared.size:
            raise InputError(f"{path}: label values {undeclared.tolist()} are not declared in "
                             f"{classes.source or 'dataset.json'}")
        unknown = np.setdiff1d(present, [0] + classes.values)
        if unknown.size:
            notes.append(f"{path.name}: label values {unknown.tolist()} are not evaluated classes, ignored")
        return boxes, values, label_map.shape, notes
    if not isinstance(instances, dict):
        raise InputError(f"{instance_json}: 'instances' must map instance ids to class indices")
    boxes, ids = boxes_from_label_map(label_map)
    labels = []
    keep = []
    mapping = {str(k): v for k, v in instances.items()}
    for n, instance_id in enumerate(ids):
        if str(int(instance_id)) not in mapping:
            raise InputError(f"{instance_json}: instance {int(instance_id)} is in {path.name} but not in 'instances'")
        class_index = mapping[str(int(instance_id))]
        if isinstance(class_index, bool) or not isinstance(class_index, int):
            raise InputError(f"{instance_json}: class of instance {int(instance_id)} must be an integer, got {class_index!r}")
        value = classes.value_of_class_index(class_index)
        if value is None:
            raise InputError(
                f"{instance_json}: instance {int(instance_id)} has class index {class_index}, but the dataset has "
                f"{len(classes.values)} classes (0-based)"
            )
        keep.append(n)
        labels.append(value)
    return boxes[keep].reshape(-1, 6), np.asarray(labels, dtype=np.int64), label_map.shape, notes


# ----------------------------------------------------------------------------------------------------
# evaluation
# ----------------------------------------------------------------------------------------------------

def _class_names_mapping(class_names: Mapping[int, str] | Sequence[str] | None) -> dict[int, str] | None:
    if class_names is None:
        return None
    if isinstance(class_names, Mapping):
        return {int(k): str(v) for k, v in class_names.items()}
    return {i + 1: str(name) for i, name in enumerate(class_names)}


def evaluate_cases(
    cases: Sequence[CaseResult],
    iou_thresholds: Sequence[float] = COCO_IOU_THRESHOLDS,
    class_names: Mapping[int, str] | Sequence[str] | None = None,
    nndet_iou_thresholds: Sequence[float] = NNDET_IOU_THRESHOLDS,
    max_dets: int | None = DEFAULT_MAX_DETS,
    num_bins: int = DEFAULT_NUM_BINS,
    reliability_path: str | os.PathLike | None = None,
) -> dict:
    """All metrics of a list of cases (e.g. training's validation) as a JSON-ready dict.

    `cases`: `CaseResult`s with labels as class ids. `class_names`: class id -> name, or a list of names
    for the contiguous class indices 1..C (e.g. `[c["name"] for c in plans["classes"]]`); it also fixes
    which classes are evaluated (others are ignored). Default: every label seen, named by its number.
    Returns `summarize_cases`' dict (mAP, AP50, AP75, mAR, nnDet_mAP, AP10, false_positives_absent,
    per_class ...) plus `ECE` (None without detections), per-class `ECE`, and `calibration` (bins).
    `reliability_path`: also write the reliability diagram PNG there.
    """
    names = _class_names_mapping(class_names)
    classes = sorted(names) if names is not None else None
    metrics = summarize_cases(cases, iou_thresholds, nndet_iou_thresholds, classes=classes, class_names=names,
                              max_dets=max_dets)
    scores, correct, labels = detection_correctness(cases, 0.5, one_to_one=True, classes=classes)
    clipped = np.clip(scores, 0.0, 1.0)
    if scores.size and not np.allclose(scores, clipped):
        metrics.setdefault("warnings", []).append("scores outside [0, 1] were clipped for calibration")
    ece = expected_calibration_error(clipped, correct, num_bins)
    metrics["ECE"] = None if math.isnan(ece) else ece
    bins = calibration_bins(clipped, correct, num_bins)
    metrics["calibration"] = {
        "definition": "Eq. 9 (D-RMM): sum_b |B_b|/n |acc(B_b) - conf(B_b)|; bins ((m-1)/M, m/M]; correct = "
                      "IoU >= 0.5 with a same-class ground truth, each ground truth claimed once (greedy by score)",
        "num_bins": num_bins,
        "num_detections": int(scores.size),
        "bin_edges": bins["edges"].tolist(),
        "bin_counts": bins["counts"].tolist(),
        "bin_accuracy": [None if math.isnan(v) else float(v) for v in bins["accuracy"]],
        "bin_confidence": [None if math.isnan(v) else float(v) for v in bins["confidence"]],
    }
    for entry in metrics["per_class"].values():
        mask = labels == entry["label_value"]
        value = expected_calibration_error(clipped[mask], correct[mask], num_bins)
        entry["ECE"] = None if math.isnan(value) else value
    if reliability_path is not None:
        reliability_diagram(clipped, correct, reliability_path, num_bins)
    return metrics


def write_metrics(metrics: dict, output_folder: str | os.PathLike) -> tuple[Path, Path]:
    """Write `metrics.json` and `metrics.csv` (one row per class plus a 'mean' row) into `output_folder`.

    CSV columns: label_value, AP, AP50, AP75, AR, nnDet_mAP, AP10, false_positives_absent, num_gt,
    num_detections; -1 marks a class without ground truth (as COCO). The 'mean' row holds the COCO means
    over classes with ground truth (mAP, AP50, AP75, mAR, nnDet_mAP, AP10) and the totals of the counts."""
    import pandas as pd

    output_folder = Path(output_folder)
    json_path = output_folder / "metrics.json"
    csv_path = output_folder / "metrics.csv"
    rows = {name: {column: entry.get(column) for column in METRIC_COLUMNS} for name, entry in metrics["per_class"].items()}
    rows["mean"] = {
        "label_value": None, "AP": metrics["mAP"], "AP50": metrics["AP50"], "AP75": metrics["AP75"],
        "AR": metrics["mAR"], "nnDet_mAP": metrics["nnDet_mAP"], "AP10": metrics["AP10"],
        "false_positives_absent": metrics["false_positives_absent"], "num_gt": metrics["num_gt"],
        "num_detections": metrics["num_detections"],
    }
    table = pd.DataFrame.from_dict(rows, orient="index", columns=METRIC_COLUMNS)
    table.index.name = "class"
    table["label_value"] = table["label_value"].astype("Int64")
    write_json(json_path, metrics)
    with atomic_path(csv_path, suffix=".csv") as temporary:
        table.to_csv(temporary)
    return json_path, csv_path


def _evaluate_prediction_files(
    predictions: dict[str, Path],
    gt: str | os.PathLike,
    output_folder: str | os.PathLike | None,
    classes: Sequence[str] | None,
    dataset_json: str | os.PathLike | None,
    only_predicted: bool,
    max_dets: int | None,
    num_bins: int,
    warnings: list[str],
    source: str,
) -> dict:
    label_files, dataset_classes, notes = find_ground_truth(gt, list(predictions), dataset_json)
    declared = list(dataset_classes.values)
    dataset_classes = dataset_classes.restrict(classes)
    predicted = set(predictions)
    without_gt = sorted(predicted - set(label_files))
    without_prediction = sorted(set(label_files) - predicted)
    evaluated = sorted(predicted & set(label_files))
    if not evaluated:
        example = ", ".join(sorted(predicted)[:5])
        raise InputError(
            f"{source}: none of the {len(predicted)} predicted cases ({example}{', ...' if len(predicted) > 5 else ''}) "
            f"has a label file in {gt}"
        )
    if without_gt:
        warnings.append(
            f"{len(without_gt)} predicted case(s) have no ground truth in {gt} and are not evaluated: "
            f"{_short_list(without_gt)}"
        )
    if without_prediction and not only_predicted:
        warnings.append(
            f"{len(without_prediction)} ground-truth case(s) have no prediction file in {source} and count as "
            f"empty predictions (use --only-predicted to leave them out): {_short_list(without_prediction)}"
        )
        evaluated = sorted(set(evaluated) | set(without_prediction))
    name_to_value = {name: value for value, name in dataset_classes.names.items()}
    cases = []
    for case in evaluated:
        gt_boxes, gt_labels, shape, case_notes = read_ground_truth_case(label_files[case], dataset_classes, declared)
        warnings.extend(case_notes)
        if case in predictions:
            content = load_prediction(predictions[case])
            expected = content.get("image_shape")
            if expected is not None and shape is not None and tuple(int(s) for s in expected) != tuple(shape):
                raise InputError(
                    f"{predictions[case]}: image_shape {list(expected)} differs from the label map "
                    f"{label_files[case]} shape {list(shape)}"
                )
            labels = content["label_values"].copy()
            for n, name in enumerate(content["class_names"]):
                if name in name_to_value:          # the class name wins over a label value (robust to renumbering)
                    labels[n] = name_to_value[name]
            boxes, scores = content["boxes"], content["scores"]
        else:
            boxes, scores, labels = np.zeros((0, 6)), np.zeros(0), np.zeros(0, dtype=np.int64)
        cases.append(CaseResult(case, gt_boxes, gt_labels, boxes, scores, labels))
    reliability = Path(output_folder) / "reliability.png" if output_folder is not None else None
    metrics = evaluate_cases(cases, class_names=dataset_classes.names, max_dets=max_dets, num_bins=num_bins,
                             reliability_path=reliability)
    metrics["warnings"] = warnings + notes + metrics.get("warnings", [])
    metrics["cases"] = [c.case for c in cases]
    metrics["predictions_without_ground_truth"] = without_gt
    metrics["ground_truth_without_prediction"] = without_prediction
    metrics["predictions"] = source
    metrics["ground_truth"] = str(gt)
    metrics["output_folder"] = None if output_folder is None else str(output_folder)
    if output_folder is not None:
        write_metrics(metrics, output_folder)
    return metrics


def _short_list(items: Sequence[str], limit: int = 10) -> str:
    return ", ".join(items[:limit]) + (f", ... ({len(items) - limit} more)" if len(items) > limit else "")


def evaluate_folder(
    prediction_folder: str | os.PathLike,
    gt: str | os.PathLike,
    output_folder: str | os.PathLike | None = None,
    classes: Sequence[str] | None = None,
    dataset_json: str | os.PathLike | None = None,
    only_predicted: bool = False,
    max_dets: int | None = DEFAULT_MAX_DETS,
    num_bins: int = DEFAULT_NUM_BINS,
) -> dict:
    """Evaluate a folder of per-case prediction JSONs against label maps (see `find_ground_truth`).

    `classes`: class names to evaluate (default: all of dataset.json). Ground-truth cases without a
    prediction count as empty predictions (warning) unless `only_predicted`; predicted cases without
    ground truth are left out (warning). With `output_folder`, writes metrics.json, metrics.csv and
    reliability.png there. Returns the metrics dict (`evaluate_cases`' keys plus `warnings`, `cases`,
    `predictions_without_ground_truth`, `ground_truth_without_prediction`)."""
    predictions, skipped = find_prediction_files(prediction_folder)
    warnings: list[str] = []
    if skipped:
        warnings.append(f"skipped {len(skipped)} JSON file(s) that are not predictions: {_short_list(skipped)}")
    if not predictions:
        raise InputError(f"{prediction_folder}: no prediction JSON files")
    return _evaluate_prediction_files(predictions, gt, output_folder, classes, dataset_json, only_predicted,
                                      max_dets, num_bins, warnings, str(prediction_folder))


def find_cross_validation_predictions(
    dataset: str | int,
    model: str | None = None,
    results_folder: str | os.PathLike | None = None,
    num_folds: int = 5,
) -> tuple[dict[str, Path], Path, list[str]]:
    """Pooled validation predictions `<results>/DatasetXXX_Name/<trainer>__<plans>/fold_k/validation/*.json`.

    Returns `({case: file}, model folder, warnings)`. `model` names the `<trainer>__<plans>` folder (needed
    when there are several); `results_folder` overrides `$AUTODETR_results`."""
    from autodetr import paths

    results = Path(results_folder) if results_folder is not None else paths.results_root()
    search_roots = [results]
    if os.environ.get(paths.ROOT_VARIABLES["raw"]):
        search_roots.append(paths.raw_root())
    name = paths.dataset_name_from_id(dataset, search_roots=search_roots)
    base = results / name
    if not base.is_dir():
        raise InputError(f"{base}: no results folder for dataset {name}")
    if model is None:
        models = sorted(d.name for d in base.iterdir() if d.is_dir() and any(d.glob("fold_*/validation")))
        if not models:
            raise InputError(f"{base}: no <trainer>__<plans>/fold_k/validation folders")
        if len(models) > 1:
            raise InputError(f"{base}: several trained models {models}; choose one with --model")
        model = models[0]
    model_folder = base / model
    if not model_folder.is_dir():
        raise InputError(f"{model_folder}: model folder does not exist")
    warnings: list[str] = []
    pooled: dict[str, Path] = {}
    missing = []
    for fold in range(num_folds):
        folder = model_folder / f"fold_{fold}" / "validation"
        if not folder.is_dir():
            missing.append(fold)
            continue
        files, skipped = find_prediction_files(folder)
        if skipped:
            warnings.append(f"{folder}: skipped {len(skipped)} non-prediction JSON file(s): {_short_list(skipped)}")
        for case, path in files.items():
            if case in pooled:
                raise InputError(f"{path}: case '{case}' is also a validation case in {pooled[case]}")
            pooled[case] = path
    if len(missing) == num_folds or not pooled:
        raise InputError(f"{model_folder}: no validation predictions in fold_0..fold_{num_folds - 1}")
    if missing:
        warnings.append(f"folds {missing} have no validation predictions; pooling the others")
    return pooled, model_folder, warnings


def evaluate_cross_validation(
    dataset: str | int,
    model: str | None = None,
    results_folder: str | os.PathLike | None = None,
    gt: str | os.PathLike | None = None,
    output_folder: str | os.PathLike | None = None,
    classes: Sequence[str] | None = None,
    dataset_json: str | os.PathLike | None = None,
    only_predicted: bool = False,
    max_dets: int | None = DEFAULT_MAX_DETS,
    num_bins: int = DEFAULT_NUM_BINS,
    num_folds: int = 5,
) -> dict:
    """Evaluate the pooled validation predictions of all folds (see `find_cross_validation_predictions`).

    Ground truth defaults to the raw dataset `$AUTODETR_raw/DatasetXXX_Name`, the output folder to
    `<model folder>/cv_evaluation`."""
    from autodetr import paths

    predictions, model_folder, warnings = find_cross_validation_predictions(dataset, model, results_folder, num_folds)
    if gt is None:
        gt = paths.raw_root() / model_folder.parent.name
    if output_folder is None:
        output_folder = model_folder / "cv_evaluation"
    return _evaluate_prediction_files(predictions, gt, output_folder, classes, dataset_json, only_predicted,
                                      max_dets, num_bins, warnings, f"{model_folder}/fold_*/validation")
