"""The per-case prediction file: one JSON per case, written by `autodetr_predict` and by training's
validation, read by evaluation and the 3D Slicer export.

Format (`write_prediction` / `load_prediction`):

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
"""
from __future__ import annotations

import itertools
import json
import math
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from autodetr.atomic_io import read_json, write_json
from autodetr.errors import InputError

PREDICTION_BOX_CONVENTION = (
    "voxel indices (z1, y1, x1, z2, y2, x2) in array order of the original image as read by SimpleITK "
    "(GetArrayFromImage), half-open: a box covering voxels 3..5 has z1=3, z2=6"
)

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


def _detection_class_names(
    class_names: Mapping[int, str] | Sequence[str], label_values: np.ndarray, case: str
) -> list[str]:
    """One class name per detection: looked up by label value in a mapping, or given one per detection."""
    if isinstance(class_names, Mapping):
        return [str(class_names.get(int(v), class_names.get(str(int(v)), str(int(v))))) for v in label_values]
    names = [str(n) for n in class_names]
    if len(names) != len(label_values):
        raise ValueError(f"{len(names)} class names for {len(label_values)} detections of case {case}")
    return names


def _detection_entries(
    boxes: np.ndarray, scores: np.ndarray, label_values: np.ndarray, names: Sequence[str], world: np.ndarray | None
) -> list[dict]:
    """The `detections` list of a prediction file, in descending score order (`world`: corners or None)."""
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
    return detections


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
    names = _detection_class_names(class_names, label_values, case)
    world = None
    if spacing is not None and origin is not None and direction is not None:
        world = voxel_boxes_to_world(boxes, spacing, origin, direction)
    detections = _detection_entries(boxes, scores, label_values, names, world)
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


def case_name_from_file(path: Path, endings: Sequence[str] = (".json",)) -> str:
    """The case name of a file: its name without the first matching ending (else its stem)."""
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
    content.setdefault("case", case_name_from_file(path))
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
        case = content.get("case") or case_name_from_file(path)
        if case in found:
            raise InputError(f"{path}: case '{case}' is also predicted in {found[case]}")
        found[str(case)] = path
    return found, skipped
