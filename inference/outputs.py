"""What `autodetr_predict` writes: per case `<case>.json` (the evaluation module's prediction format),
`boxes.csv` over all cases, and optionally `<case>_boxes.nii.gz` box masks on the original grid.

All writes are atomic (`autodetr.atomic_io`): an interrupted run leaves no half-written file, so a rerun
can trust every `<case>.json` it finds.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import numpy as np
import SimpleITK as sitk

from autodetr.atomic_io import atomic_path
from autodetr.evaluation.api import find_prediction_files, load_prediction, write_prediction
from autodetr.preprocessing.raw_dataset import Geometry

CSV_NAME = "boxes.csv"
MASK_SUFFIX = "_boxes.nii.gz"
CSV_COLUMNS = [
    "case", "class_name", "label_value", "score", "z1", "y1", "x1", "z2", "y2", "x2",
    "world_min_x", "world_min_y", "world_min_z", "world_max_x", "world_max_y", "world_max_z",
]


def prediction_path(output_folder: Path, case_id: str) -> Path:
    return Path(output_folder) / f"{case_id}.json"


def mask_path(output_folder: Path, case_id: str) -> Path:
    return Path(output_folder) / f"{case_id}{MASK_SUFFIX}"


def geometry_keywords(geometry: Geometry) -> dict:
    """`write_prediction`'s geometry arguments (array-order shape and spacing, SimpleITK origin and direction)."""
    return {
        "image_shape": [int(s) for s in geometry.shape_zyx],
        "spacing": [float(s) for s in geometry.spacing_zyx],
        "origin": [float(o) for o in geometry.origin_xyz],
        "direction": [float(d) for d in geometry.direction],
    }


def geometry_from_prediction(content: Mapping[str, Any]) -> Geometry:
    """The original image geometry stored in a prediction file."""
    return Geometry(
        tuple(int(s) for s in content["image_shape"]),
        tuple(float(s) for s in content["spacing"][::-1]),
        tuple(float(o) for o in content["origin"]),
        tuple(float(d) for d in content["direction"]),
    )


def write_case_prediction(
    path: Path,
    case_id: str,
    boxes: np.ndarray,
    scores: np.ndarray,
    label_values: np.ndarray,
    class_names: Mapping[int, str],
    geometry: Geometry,
    extra: Mapping[str, Any] | None = None,
) -> None:
    """One case's detections (original voxel corner boxes) with their world-mm corners, atomically."""
    write_prediction(path, case_id, boxes, scores, label_values, class_names, extra=extra, **geometry_keywords(geometry))


def box_voxel_ranges(box: np.ndarray, shape: tuple[int, int, int]) -> list[slice]:
    """Voxels whose centres lie in the half-open box (at least the voxel holding the box centre)."""
    ranges = []
    for axis in range(3):
        low, high = float(box[axis]), float(box[axis + 3])
        start = int(np.ceil(low - 0.5))
        stop = int(np.ceil(high - 0.5))
        if stop <= start:
            start = int(np.floor((low + high) / 2))
            stop = start + 1
        start, stop = max(0, start), min(int(shape[axis]), stop)
        ranges.append(slice(start, max(start, stop)))
    return ranges


def box_mask_array(boxes: np.ndarray, label_values: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """Filled boxes drawn as their label values; larger boxes first, so a box inside another stays visible."""
    label_values = np.asarray(label_values, dtype=np.int64)
    dtype = np.uint8 if (label_values.max(initial=0) <= 255) else np.uint16
    mask = np.zeros(tuple(int(s) for s in shape), dtype=dtype)
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 6)
    volumes = np.prod(np.clip(boxes[:, 3:] - boxes[:, :3], 0, None), axis=1)
    for i in np.argsort(-volumes, kind="mergesort"):
        mask[tuple(box_voxel_ranges(boxes[i], shape))] = label_values[i]
    return mask


def write_box_mask(path: Path, boxes: np.ndarray, label_values: np.ndarray, geometry: Geometry) -> None:
    """`<case>_boxes.nii.gz`: the boxes on the original image grid (same size, spacing, origin, direction)."""
    image = sitk.GetImageFromArray(box_mask_array(boxes, label_values, geometry.shape_zyx))
    image.SetSpacing(geometry.spacing_xyz)
    image.SetOrigin(geometry.origin_xyz)
    image.SetDirection(geometry.direction)
    with atomic_path(path, suffix=".nii.gz") as temporary:
        sitk.WriteImage(image, str(temporary), useCompression=True)


def write_mask_from_prediction(prediction_file: Path, path: Path) -> None:
    """Draw the box mask of an existing prediction JSON (a rerun that adds `--save-masks`)."""
    content = load_prediction(prediction_file)
    write_box_mask(path, content["boxes"], content["label_values"], geometry_from_prediction(content))


def write_boxes_csv(output_folder: Path) -> Path:
    """Rebuild `boxes.csv` from every prediction JSON in `output_folder` (one row per detection)."""
    import pandas as pd

    output_folder = Path(output_folder)
    files, _ = find_prediction_files(output_folder)
    rows = []
    for case, path in sorted(files.items()):
        content = load_prediction(path)
        for detection in content["detections"]:
            world = detection.get("box_world_mm") or {}
            low = world.get("min") or [np.nan] * 3
            high = world.get("max") or [np.nan] * 3
            rows.append([case, detection["class_name"], int(detection["label_value"]), float(detection["score"]),
                         *[float(v) for v in detection["box_voxel"]], *low, *high])
    table = pd.DataFrame(rows, columns=CSV_COLUMNS)
    csv = output_folder / CSV_NAME
    with atomic_path(csv, suffix=".csv") as temporary:
        table.to_csv(temporary, index=False)
    return csv
