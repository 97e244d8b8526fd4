"""`autodetr_masks_to_boxes` as a Python API: label maps -> box files (`labelsTr/<case>.json`).

Reads a raw dataset's label maps (nnU-Net semantic form, or nnDetection's instance form) with the
evaluation's ground-truth reader, so a converted box is exactly the box evaluation and preprocessing
take from the label map, and writes per case
`{"boxes": [{"class", "box_world_mm": {"min", "max"}, "box_voxel"}]}` (see `box_files`), plus the
dataset.json (labels in nnU-Net v2 form, `{"background": 0, "liver": 1}`) and, with `with_images`, the
images (hard links where possible), so the output is a box-only raw dataset. `slicer` also writes
`labelsTr/<case>.mrk.json` (3D Slicer ROIs) for viewing the ground truth beside the predictions.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from autodetr.atomic_io import atomic_path, write_json
from autodetr.errors import InputError
from autodetr.preprocessing.box_files import box_file_content, header_geometry


def _dataset_folder(labels_folder: Path) -> Path | None:
    """The raw dataset folder above a labels folder (the one with imagesTr), if any."""
    for candidate in (labels_folder.parent, labels_folder):
        if (candidate / "imagesTr").is_dir():
            return candidate
    return None


def _link_or_copy(source: Path, target: Path) -> None:
    with atomic_path(target, suffix="".join(source.suffixes)) as temporary:
        temporary.unlink()
        try:
            os.link(source, temporary)
        except OSError:
            shutil.copy2(source, temporary)


def masks_to_boxes(
    input_folder: str | os.PathLike,
    output_folder: str | os.PathLike,
    slicer: bool = False,
    with_images: bool = False,
    dataset_json: str | os.PathLike | None = None,
) -> list[Path]:
    """Convert every label map of `input_folder` (a raw dataset folder with labelsTr/ and dataset.json, or a
    labels folder with dataset.json beside it or in its parent) into `output_folder/labelsTr/<case>.json`.

    Returns the box files written. Every write is atomic; a bad label map or dataset.json raises
    InputError naming the file."""
    from autodetr.preprocessing.ground_truth import find_ground_truth, read_ground_truth_case
    from autodetr.slicer_markups import markups_path, write_slicer_rois

    input_folder, output = Path(input_folder), Path(output_folder)
    if output.resolve() == input_folder.resolve() or output.resolve() == (input_folder / "labelsTr").resolve():
        raise InputError(f"{output}: the output folder must differ from the input (box files would sit beside label maps)")
    label_files, classes, _ = find_ground_truth(input_folder, dataset_json=dataset_json)
    labels_folder = next(iter(label_files.values())).parent
    written = []
    for case, label_file in sorted(label_files.items()):
        boxes, values, _, _ = read_ground_truth_case(label_file, classes)
        geometry = header_geometry(label_file)
        target = output / "labelsTr" / f"{case}.json"
        write_json(target, box_file_content(boxes, values, classes.names, geometry))
        written.append(target)
        if slicer:
            write_slicer_rois(markups_path(target.parent, case), boxes, [classes.names[int(v)] for v in values],
                              [""] * len(boxes), geometry.spacing, geometry.origin, geometry.direction)
    source_json = json.loads(Path(classes.source).read_text()) if classes.source else {}
    source_json["labels"] = {"background": 0, **{name: value for value, name in sorted(classes.names.items())}}
    source_json.setdefault("file_ending", classes.file_ending or ".nii.gz")
    write_json(output / "dataset.json", source_json)
    dataset = _dataset_folder(labels_folder)
    if with_images:
        if dataset is None:
            raise InputError(f"{labels_folder}: --with-images needs the raw dataset's imagesTr beside the labels folder")
        for images in ("imagesTr", "imagesTs"):
            for path in sorted((dataset / images).glob("*")) if (dataset / images).is_dir() else []:
                if path.is_file() and not path.name.startswith(".") and not (output / images / path.name).is_file():
                    _link_or_copy(path, output / images / path.name)
    return written
