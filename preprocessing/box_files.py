"""Box-only ground truth: `labelsTr/<case>.json` box files instead of label maps.

A box file lists one box per organ, in world millimetres (independent of the voxel order) and/or in the
image's voxel indices (array order, half-open, the README's convention):

    {"boxes": [{"class": "liver",
                "box_world_mm": {"min": [x, y, z], "max": [x, y, z]},
                "box_voxel": [z1, y1, x1, z2, y2, x2]}, ...]}

`class` is a class name of `dataset.json`. When both forms are given, `box_voxel` is used (it is exact);
a world box is mapped into voxels through the image geometry (origin, spacing, direction) as the
voxel box of its 8 corners. A box with a negative or zero size, an unknown class or a box outside the
image is refused with one line naming the file. A dataset holds either label maps or box files, never
both (`annotation_form`).

For preprocessing, a box case gets a box label map (each box filled with its label value, larger boxes
first; `box_label_map`): it widens the body crop to hold every box, gives the fingerprint its
foreground intensities (the voxels inside boxes) and carries the boxes through training's spatial
augmentation, where targets are the bounding boxes of the augmented map. The boxes themselves
(`CaseData.boxes`, the `boxes` of the npz) come from the box file, mapped exactly as mask boxes are.
"""
from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from autodetr.atomic_io import read_json
from autodetr.boxes import box_mask_array
from autodetr.errors import InputError
from autodetr.preprocessing.raw_dataset import (
    CaseData, Geometry, OrganClass, RawCase, list_cases, organ_classes, read_case, read_images,
)

MARKUPS_SUFFIX = ".mrk.json"
OUTSIDE_TOLERANCE_VOXELS = 1e-3
BOX_FILE_EXAMPLE = ('{"boxes": [{"class": "liver", "box_world_mm": {"min": [x, y, z], "max": [x, y, z]}}, ...]} '
                    '(or "box_voxel": [z1, y1, x1, z2, y2, x2])')


def _box_json_files(folder: Path) -> dict[str, Path]:
    """`<case>.json` files of a labels folder (3D Slicer `*.mrk.json` files and hidden files left out)."""
    files = {}
    for path in sorted(Path(folder).glob("*.json")):
        if not path.name.startswith(".") and not path.name.endswith(MARKUPS_SUFFIX):
            files[path.name[: -len(".json")]] = path
    return files


def box_files(folder: str | os.PathLike, file_ending: str) -> dict[str, Path]:
    """`{case: box file}` of a labels folder: `<case>.json` files without a `<case><file_ending>` label map
    (a JSON beside a label map is nnDetection's instance file)."""
    folder = Path(folder)
    return {case: path for case, path in _box_json_files(folder).items() if not (folder / f"{case}{file_ending}").is_file()}


def annotation_form(labels_folder: str | os.PathLike, file_ending: str) -> str:
    """`"boxes"` when the labels folder holds box files, else `"label_maps"`; a folder with both raises
    InputError (one line naming the folder and an example of each)."""
    folder = Path(labels_folder)
    if not folder.is_dir():
        return "label_maps"
    boxes = box_files(folder, file_ending)
    maps = sorted(p.name for p in folder.iterdir() if p.name.endswith(file_ending) and not p.name.startswith("."))
    if boxes and maps:
        raise InputError(
            f"{folder}: mixes label maps ({len(maps)}, e.g. {maps[0]}) and box files ({len(boxes)}, e.g. "
            f"{next(iter(boxes.values())).name}); a dataset uses one or the other "
            "(autodetr_masks_to_boxes converts label maps to box files)"
        )
    return "boxes" if boxes else "label_maps"


def world_box_to_voxel(
    low: Sequence[float], high: Sequence[float], spacing: Sequence[float], origin: Sequence[float],
    direction: Sequence[float],
) -> np.ndarray:
    """A world box (min, max as x, y, z mm) -> the voxel corner box `(z1, y1, x1, z2, y2, x2)` of its 8
    corners (exact inverse of `autodetr.evaluation.api.voxel_boxes_to_world` when the direction is a
    signed permutation). `spacing` in array order (z, y, x), `origin` and `direction` as SimpleITK's."""
    low, high = np.asarray(low, dtype=np.float64), np.asarray(high, dtype=np.float64)
    corners = np.asarray([[(low, high)[c][a] for a, c in enumerate(choice)]
                          for choice in np.ndindex(2, 2, 2)], dtype=np.float64)          # [8, 3] x, y, z
    matrix = np.asarray(direction, dtype=np.float64).reshape(3, 3)
    spacing_xyz = np.asarray(spacing, dtype=np.float64)[::-1]
    index_xyz = np.linalg.solve(matrix, (corners - np.asarray(origin, dtype=np.float64)).T).T / spacing_xyz
    edges_zyx = index_xyz[:, ::-1] + 0.5
    return np.concatenate([edges_zyx.min(axis=0), edges_zyx.max(axis=0)])


@dataclass
class BoxGeometry:
    """What a box file is checked and mapped against: the image's array shape and SimpleITK geometry
    (`spacing` in array order z, y, x, as in prediction files)."""

    image_shape: Sequence[int]
    spacing: Sequence[float]
    origin: Sequence[float]
    direction: Sequence[float]

    @classmethod
    def from_image(cls, image: Any) -> "BoxGeometry":
        return cls([int(s) for s in image.GetSize()[::-1]], [float(s) for s in image.GetSpacing()[::-1]],
                   [float(o) for o in image.GetOrigin()], [float(d) for d in image.GetDirection()])


def _numbers(value: Any, count: int) -> list[float] | None:
    if not isinstance(value, list) or len(value) != count:
        return None
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value):
        return None
    return [float(v) for v in value]


def read_box_file(
    path: str | os.PathLike, class_values: Mapping[str, int], geometry: BoxGeometry | None
) -> tuple[np.ndarray, np.ndarray]:
    """Boxes of one box file: `(boxes [G, 6] voxel corner boxes, label_values [G])`, checked.

    `class_values`: class name -> label value (dataset.json). `geometry`: the case's image; without it
    only `box_voxel` boxes can be read and the image bounds are not checked. Every problem raises
    InputError with the file, the box number and class, and what is wrong."""
    path = Path(path)
    content = read_json(path)
    entries = content.get("boxes") if isinstance(content, dict) else None
    if not isinstance(entries, list):
        raise InputError(f"{path}: not a box file; expected {BOX_FILE_EXAMPLE}")
    boxes, values = [], []
    for n, entry in enumerate(entries):
        name = entry.get("class") if isinstance(entry, dict) else None
        where = f"{path}: box {n}" + (f" ({name})" if isinstance(name, str) else "")
        if not isinstance(name, str):
            raise InputError(f"{where}: needs a 'class' name; expected {BOX_FILE_EXAMPLE}")
        if name not in class_values:
            raise InputError(f"{where}: unknown class '{name}'; dataset.json has {', '.join(sorted(class_values))}")
        box = _box_of_entry(entry, where, geometry)
        if geometry is not None:
            box = _inside_image(box, where, geometry.image_shape)
        boxes.append(box)
        values.append(class_values[name])
    return np.asarray(boxes, dtype=np.float64).reshape(-1, 6), np.asarray(values, dtype=np.int64)


def _box_of_entry(entry: dict, where: str, geometry: BoxGeometry | None) -> np.ndarray:
    if "box_voxel" in entry:
        box = _numbers(entry["box_voxel"], 6)
        if box is None:
            raise InputError(f"{where}: 'box_voxel' must be 6 finite numbers [z1, y1, x1, z2, y2, x2]")
        box = np.asarray(box)
        if np.any(box[3:] <= box[:3]):
            raise InputError(f"{where}: negative or zero size, box_voxel {box.tolist()} has an upper corner "
                             "not above its lower corner")
        return box
    world = entry.get("box_world_mm")
    low = _numbers(world.get("min"), 3) if isinstance(world, dict) else None
    high = _numbers(world.get("max"), 3) if isinstance(world, dict) else None
    if low is None or high is None:
        raise InputError(f"{where}: needs 'box_world_mm' {{\"min\": [x, y, z], \"max\": [x, y, z]}} or 'box_voxel'")
    if any(h <= lo for lo, h in zip(low, high)):
        raise InputError(f"{where}: negative or zero size, box_world_mm max {high} is not above min {low}")
    if geometry is None:
        raise InputError(f"{where}: 'box_world_mm' needs the image geometry, but the case's image was not found; "
                         "give 'box_voxel' or put the image beside the labels (imagesTr)")
    return world_box_to_voxel(low, high, geometry.spacing, geometry.origin, geometry.direction)


def _inside_image(box: np.ndarray, where: str, shape: Sequence[int]) -> np.ndarray:
    shape_array = np.asarray(shape, dtype=np.float64)
    tolerance = OUTSIDE_TOLERANCE_VOXELS
    if np.any(box[:3] < -tolerance) or np.any(box[3:] > shape_array + tolerance):
        raise InputError(f"{where}: outside the image, voxel box {np.round(box, 3).tolist()} is not within "
                         f"[0, 0, 0, {', '.join(str(int(s)) for s in shape)}] (z1, y1, x1, z2, y2, x2)")
    return np.concatenate([np.clip(box[:3], 0, shape_array), np.clip(box[3:], 0, shape_array)])


def box_file_content(
    boxes: np.ndarray, label_values: Sequence[int], class_names: Mapping[int, str], geometry: BoxGeometry
) -> dict:
    """A box file's content: each box with its class name, world min / max and voxel box."""
    from autodetr.prediction_files import voxel_boxes_to_world

    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 6)
    world = voxel_boxes_to_world(boxes, geometry.spacing, geometry.origin, geometry.direction)
    return {"boxes": [
        {"class": class_names[int(value)],
         "box_world_mm": {"min": corners.min(axis=0).tolist(), "max": corners.max(axis=0).tolist()},
         "box_voxel": [float(v) for v in box]}
        for box, value, corners in zip(boxes, label_values, world)
    ]}


def box_label_map(boxes: np.ndarray, label_values: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """The boxes drawn as their label values on the image grid (larger boxes first), int32."""
    if not len(boxes):
        return np.zeros(tuple(int(s) for s in shape), dtype=np.int32)
    return box_mask_array(boxes, label_values, tuple(int(s) for s in shape)).astype(np.int32)


# ----------------------------------------------------------------------------------------------------
# box-only raw datasets
# ----------------------------------------------------------------------------------------------------

@dataclass
class BoxRawCase(RawCase):
    """A training case whose ground truth is a box file (`labelsTr/<case>.json`)."""

    box_file: Path | None = None


def list_box_cases(dataset_folder: str | os.PathLike, dataset_json: dict) -> list[BoxRawCase]:
    """Training cases of a box-only dataset: every image needs its `labelsTr/<case>.json`."""
    folder = Path(dataset_folder)
    files = box_files(folder / "labelsTr", dataset_json["file_ending"])
    cases = []
    for case in list_cases(folder, dataset_json, labels=None):
        if case.case_id not in files:
            raise InputError(f"{case.image_files[0]}: image without box file (expected "
                             f"{folder / 'labelsTr' / (case.case_id + '.json')})")
        cases.append(BoxRawCase(case.case_id, case.image_files, box_file=files[case.case_id]))
    classes = {c.name: c.label_value for c in organ_classes(dataset_json, instance_form=False)}
    for case in cases:   # every box file checked against its image's header before anything is written
        read_box_file(case.box_file, classes, header_geometry(case.image_files[0]))
    return cases


def header_geometry(image_file: str | os.PathLike) -> BoxGeometry:
    """The `BoxGeometry` of an image file, from its header only."""
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(image_file))
    try:
        reader.ReadImageInformation()
    except RuntimeError as error:
        raise InputError(f"{image_file}: cannot be read ({str(error).strip().splitlines()[-1][:160]})") from None
    return BoxGeometry([int(s) for s in reader.GetSize()[::-1]], [float(s) for s in reader.GetSpacing()[::-1]],
                       [float(o) for o in reader.GetOrigin()], [float(d) for d in reader.GetDirection()])


def geometry_of(geometry: Geometry) -> BoxGeometry:
    """A read image's `Geometry` as the `BoxGeometry` box files are checked against."""
    return BoxGeometry(list(geometry.shape_zyx), [float(s) for s in geometry.spacing_zyx],
                       list(geometry.origin_xyz), list(geometry.direction))


def read_any_case(raw_case: RawCase, classes: list[OrganClass]) -> CaseData:
    """`raw_dataset.read_case`, and for a box case: its images, the boxes of its box file and their box
    label map (see the module docstring)."""
    if not isinstance(raw_case, BoxRawCase) or raw_case.box_file is None:
        return read_case(raw_case, classes)
    image, geometry = read_images(raw_case.image_files)
    boxes, values = read_box_file(raw_case.box_file, {c.name: c.label_value for c in classes}, geometry_of(geometry))
    if not len(boxes):
        warnings.warn(f"{raw_case.box_file}: no boxes, the case has zero boxes", stacklevel=2)
    return CaseData(raw_case.case_id, image, geometry, label_map=box_label_map(boxes, values, geometry.shape_zyx),
                    boxes=boxes, box_label_values=values)
