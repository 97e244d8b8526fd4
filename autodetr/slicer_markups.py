"""Boxes as 3D Slicer ROI markups (`<case>.mrk.json`), so a user drags the file and the image into Slicer.

Slicer's markups JSON (schema v1.0.3) stores one markup per box: `type` "ROI", `coordinateSystem` "LPS"
(ITK / SimpleITK physical space is LPS already, so world points are written unchanged), `center`,
`size` (mm along the ROI's own axes) and `orientation` (row-major 3x3; column j is the ROI's axis j in
world space, the same layout as SimpleITK's direction), plus one control point at the centre.

A box in voxel indices of an image with a non-identity direction is an oriented box in world space;
its ROI takes the image direction as orientation, so the ROI's 8 corners
(centre +- size / 2 along the orientation columns) are the box's 8 world corners
(`autodetr.evaluation.api.voxel_boxes_to_world`). A direction with determinant -1 (a flipped axis) is
written with its third column negated: Slicer expects a rotation, and a box is symmetric about its
centre, so the corners are the same.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np

from autodetr.atomic_io import write_json
from autodetr.errors import InputError

MARKUPS_SCHEMA = (
    "https://raw.githubusercontent.com/slicer/slicer/master/Modules/Loadable/Markups/Resources/Schema/"
    "markups-schema-v1.0.3.json#"
)
MARKUPS_SUFFIX = ".mrk.json"


def markups_path(folder: str | os.PathLike, case_id: str) -> Path:
    """`<folder>/<case>.mrk.json`."""
    return Path(folder) / f"{case_id}{MARKUPS_SUFFIX}"


def is_markups_file(path: str | os.PathLike) -> bool:
    """True for `*.mrk.json` files (they sit beside prediction and box JSONs and are no case of their own)."""
    return Path(path).name.endswith(MARKUPS_SUFFIX)


def roi_orientation(direction: Sequence[float]) -> np.ndarray:
    """The image direction as a rotation (unit columns; third column negated when it is a reflection)."""
    matrix = np.asarray(direction, dtype=np.float64).reshape(3, 3)
    matrix = matrix / np.linalg.norm(matrix, axis=0, keepdims=True)
    if np.linalg.det(matrix) < 0:
        matrix[:, 2] = -matrix[:, 2]
    return matrix


def roi_markup(
    box_voxel: Sequence[float],
    spacing: Sequence[float],
    origin: Sequence[float],
    direction: Sequence[float],
    name: str,
    description: str = "",
) -> dict:
    """One Slicer ROI markup for a voxel corner box `(z1, y1, x1, z2, y2, x2)` (half-open edges).

    `spacing` in array order (z, y, x), `origin` and `direction` as SimpleITK gives them (the prediction
    file's geometry keys)."""
    from autodetr.prediction_files import voxel_boxes_to_world

    corners = voxel_boxes_to_world(np.asarray(box_voxel, dtype=np.float64), spacing, origin, direction)[0]
    centre = corners.mean(axis=0)
    # corners run z slowest, x fastest: 1, 2 and 4 step along index axes x, y and z from corner 0
    size = np.linalg.norm(corners[[1, 2, 4]] - corners[0], axis=1)
    orientation = roi_orientation(direction)
    point = {
        "id": "1", "label": name, "description": description, "associatedNodeID": "",
        "position": centre.tolist(), "orientation": orientation.reshape(-1).tolist(),
        "selected": True, "locked": False, "visibility": True, "positionStatus": "defined",
    }
    return {
        "type": "ROI",
        "name": name,
        "description": description,
        "coordinateSystem": "LPS",
        "coordinateUnits": "mm",
        "locked": False,
        "fixedNumberOfControlPoints": False,
        "labelFormat": "%N-%d",
        "lastUsedControlPointNumber": 1,
        "roiType": "Box",
        "insideOut": False,
        "center": centre.tolist(),
        "size": size.tolist(),
        "orientation": orientation.reshape(-1).tolist(),
        "controlPoints": [point],
        "measurements": [],
        "display": {"visibility": True, "opacity": 1.0, "propertiesLabelVisibility": True,
                    "pointLabelsVisibility": False, "fillOpacity": 0.1},
    }


def roi_corners(markup: dict) -> np.ndarray:
    """The 8 world corners `[8, 3]` of an ROI markup: centre +- size / 2 along its orientation columns."""
    centre = np.asarray(markup["center"], dtype=np.float64)
    half = np.asarray(markup["size"], dtype=np.float64) / 2
    axes = np.asarray(markup["orientation"], dtype=np.float64).reshape(3, 3)
    signs = np.asarray([[sz, sy, sx] for sz in (-1, 1) for sy in (-1, 1) for sx in (-1, 1)], dtype=np.float64)[:, ::-1]
    return centre + (signs * half) @ axes.T


def write_slicer_rois(
    path: str | os.PathLike,
    boxes: np.ndarray,
    names: Sequence[str],
    descriptions: Sequence[str],
    spacing: Sequence[float],
    origin: Sequence[float],
    direction: Sequence[float],
) -> Path:
    """Write `<case>.mrk.json` with one ROI per voxel corner box (atomically); returns the path."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 6)
    markups = [roi_markup(box, spacing, origin, direction, str(name), str(text))
               for box, name, text in zip(boxes, names, descriptions)]
    write_json(path, {"@schema": MARKUPS_SCHEMA, "markups": markups})
    return Path(path)


def write_slicer_rois_from_prediction(prediction_file: str | os.PathLike, path: str | os.PathLike) -> Path:
    """`<case>.mrk.json` of a prediction JSON: one ROI per detection, the class name as its name and
    label, `score 0.931` as its description."""
    from autodetr.prediction_files import load_prediction

    content = load_prediction(prediction_file)
    if any(content.get(key) is None for key in ("spacing", "origin", "direction")):
        raise InputError(f"{prediction_file}: no image geometry (spacing, origin, direction); cannot place Slicer ROIs")
    names = [name if name else str(value) for name, value in zip(content["class_names"], content["label_values"])]
    descriptions = [f"score {score:.4f}" for score in content["scores"]]
    return write_slicer_rois(path, content["boxes"], names, descriptions,
                             content["spacing"], content["origin"], content["direction"])
