"""What `autodetr_predict` writes: per case `<case>.json` (the evaluation module's prediction format),
`boxes.csv` over the cases of the input, and optionally `<case>_boxes.nii.gz` box masks on the original grid.

All writes are atomic (`autodetr.atomic_io`): an interrupted run leaves no half-written file, so a rerun
can trust every `<case>.json` it finds.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import SimpleITK as sitk

from autodetr.atomic_io import atomic_path
from autodetr.boxes import box_mask_array
from autodetr.prediction_files import find_prediction_files, load_prediction, write_prediction
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


def write_boxes_csv(output_folder: Path, case_ids: Sequence[str] | None = None) -> Path:
    """Rebuild `boxes.csv` (one row per detection) from the prediction files `<case>.json` of `case_ids` that
    exist in `output_folder`; no other file of the folder is read (a user's notes.json is none of ours).
    Without `case_ids`, from every prediction JSON of the folder."""
    import pandas as pd

    output_folder = Path(output_folder)
    if case_ids is None:
        files, _ = find_prediction_files(output_folder)
    else:
        files = {case: prediction_path(output_folder, case) for case in case_ids
                 if prediction_path(output_folder, case).is_file()}
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
