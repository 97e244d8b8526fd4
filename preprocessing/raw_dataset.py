"""Reading and validating a raw dataset (nnU-Net v2 layout, plus nnDetection's instance form).

A dataset is `DatasetXXX_Name/` with `imagesTr/<case>_0000<ending>` (one file per channel),
`labelsTr/<case><ending>`, optional `imagesTs/`, and `dataset.json` (`channel_names`, `labels`,
`numTraining`, `file_ending`).

Ground truth comes in two forms:
- semantic (nnU-Net): every label value of `dataset.json` is one organ class, and a case has one box per
  value present (the bounding box of all its voxels);
- instance (nnDetection): `labelsTr/<case>.json` holds `{"instances": {"1": 0, "2": 3, ...}}` mapping each
  instance id of the label map to a 0-based class id (the i-th foreground class by label value);
  `dataset.json` `labels` then maps class ids to names (`{"0": "liver", ...}`, class id i is label value
  i + 1, `label_entries`) or is in the nnU-Net form. Several boxes per class are allowed.

Every problem raises `InputError` with the file and what is wrong.
"""
from __future__ import annotations

import json
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

import numpy as np
import SimpleITK as sitk

from autodetr.atomic_io import missing_file_reason, read_json
from autodetr.boxes import boxes_from_label_map
from autodetr.errors import InputError
from autodetr.preprocessing.file_checks import check_complete, count_non_finite_nifti
from autodetr.preprocessing.headers import check_header, itk_read_reason, quiet_itk

REQUIRED_DATASET_KEYS = ("channel_names", "labels", "numTraining", "file_ending")
#: Endings of the 3D image formats autodetr reads (SimpleITK), and compression suffixes that are only their end.
IMAGE_ENDINGS = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
COMPRESSION_ENDINGS = (".gz", ".bz2", ".xz", ".zip", ".zst", ".z")
GEOMETRY_TOLERANCE = 1e-3
#: Names of label "0" that make a `{"0": name, ...}` mapping the nnU-Net v1 / MSD form (else nnDetection's).
BACKGROUND_NAMES = ("background", "bg", "clear label")


@dataclass(frozen=True)
class OrganClass:
    """One detection class: contiguous `index` (1..C, 0 is background), the user's `label_value`, `name`."""

    index: int
    label_value: int
    name: str


@dataclass
class RawCase:
    """Files of one case. `label_file` is None for test images."""

    case_id: str
    image_files: list[Path]
    label_file: Path | None = None
    instance_file: Path | None = None


@dataclass
class Geometry:
    """Image geometry in SimpleITK order (x, y, z) plus the array shape in numpy order (z, y, x)."""

    shape_zyx: tuple[int, int, int]
    spacing_xyz: tuple[float, float, float]
    origin_xyz: tuple[float, float, float]
    direction: tuple[float, ...]

    @property
    def spacing_zyx(self) -> np.ndarray:
        return np.asarray(self.spacing_xyz[::-1], dtype=np.float64)

    def to_json(self) -> dict:
        return {
            "shape_zyx": list(self.shape_zyx),
            "spacing_xyz": list(self.spacing_xyz),
            "origin_xyz": list(self.origin_xyz),
            "direction": list(self.direction),
        }

    @classmethod
    def from_json(cls, content: dict) -> "Geometry":
        return cls(
            tuple(content["shape_zyx"]),
            tuple(content["spacing_xyz"]),
            tuple(content["origin_xyz"]),
            tuple(content["direction"]),
        )

    @classmethod
    def from_image(cls, image: sitk.Image) -> "Geometry":
        return cls(
            tuple(int(s) for s in image.GetSize()[::-1]),
            tuple(float(s) for s in image.GetSpacing()),
            tuple(float(o) for o in image.GetOrigin()),
            tuple(float(d) for d in image.GetDirection()),
        )

    def matches(self, other: "Geometry") -> bool:
        return (
            self.shape_zyx == other.shape_zyx
            and np.allclose(self.spacing_xyz, other.spacing_xyz, rtol=GEOMETRY_TOLERANCE, atol=GEOMETRY_TOLERANCE)
            and np.allclose(self.origin_xyz, other.origin_xyz, atol=GEOMETRY_TOLERANCE * max(1.0, max(self.spacing_xyz)))
            and np.allclose(self.direction, other.direction, atol=GEOMETRY_TOLERANCE)
        )


@dataclass
class CaseData:
    """A read case: image `[C, z, y, x]` float32, optional ground truth (label values per box)."""

    case_id: str
    image: np.ndarray
    geometry: Geometry
    label_map: np.ndarray | None = None
    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 6)))
    box_label_values: np.ndarray = field(default_factory=lambda: np.zeros((0,), dtype=np.int64))
    instance_classes: dict[int, int] | None = None  # instance id -> label value (instance form only)


def load_dataset_json(dataset_folder: Path) -> dict:
    """Read and check `dataset.json` (keys, their types, label values); InputError naming the file."""
    path = Path(dataset_folder) / "dataset.json"
    if not path.is_file():
        raise InputError(f"{path}: missing dataset.json (see README, 'Dataset format')")
    content = read_json(path, expected=dict, unique_keys=True)
    missing = [key for key in REQUIRED_DATASET_KEYS if key not in content]
    if missing:
        raise InputError(f"{path}: missing required key(s) {', '.join(missing)}")
    check_dataset_json(content, path)
    return content


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_dataset_json(content: dict, path: Path | str = "dataset.json") -> None:
    """Types and values of the keys autodetr reads, as nnU-Net v2 defines them (README, 'Dataset format')."""
    ending = content["file_ending"]
    if not isinstance(ending, str) or not ending.startswith(".") or "/" in ending:
        raise InputError(f"{path}: 'file_ending' must be a file ending such as \".nii.gz\", got {ending!r}")
    if ending.lower() in COMPRESSION_ENDINGS:
        raise InputError(f"{path}: 'file_ending' {ending!r} is only the compression suffix; give the whole ending of "
                         f"the image files, e.g. \".nii.gz\" for case_000_0000.nii.gz (one of {', '.join(IMAGE_ENDINGS)})")
    channels = content["channel_names"]
    if not isinstance(channels, dict) or not channels:
        raise InputError(f"{path}: 'channel_names' must be a non-empty mapping such as {{\"0\": \"CT\"}}, got {channels!r}")
    if sorted(channels) != [str(i) for i in range(len(channels))]:
        raise InputError(f"{path}: 'channel_names' keys must be \"0\"..\"{len(channels) - 1}\", got {sorted(channels)}")
    bad_names = [k for k, v in channels.items() if not isinstance(v, str) or not v.strip()]
    if bad_names:
        raise InputError(f"{path}: 'channel_names' entry {bad_names[0]} must be a name such as \"CT\", got {channels[bad_names[0]]!r}")
    number = content["numTraining"]
    if not _is_int(number) or number < 1:
        raise InputError(f"{path}: 'numTraining' must be a positive integer, got {number!r}")
    check_labels(content["labels"], path)


def check_labels(labels: object, path: Path | str = "dataset.json") -> None:
    """The `labels` of a dataset.json in one of the forms `label_entries` reads; InputError naming the file."""
    if not isinstance(labels, dict) or not labels:
        raise InputError(f"{path}: 'labels' must be a non-empty mapping")
    values = list(labels.values())
    if all(isinstance(v, str) for v in values):  # nnDetection / MSD form: "<integer>": "name"
        bad = [k for k in labels if not str(k).isdigit()]
        if bad:
            raise InputError(f"{path}: label '{bad[0]}' maps to a name; in this form every key must be a "
                             "non-negative integer (e.g. {\"0\": \"liver\"})")
        return
    for name, value in labels.items():
        if isinstance(value, (list, tuple)):
            raise InputError(f"{path}: label '{name}' is a region {value}; region-based labels are not organ classes")
        if not _is_int(value) or value < 0:
            raise InputError(f"{path}: label '{name}' has value {value!r}, expected a non-negative integer")
    seen: dict[int, str] = {}
    for name, value in labels.items():
        if value in seen:
            raise InputError(f"{path}: label value {value} is used twice ('{seen[value]}' and '{name}'); "
                             "each class needs its own value")
        seen[value] = name
    if not any(v != 0 for v in values):
        raise InputError(f"{path}: 'labels' has no foreground class (only background 0)")


def label_entries(labels: Mapping[str, object]) -> tuple[list[tuple[int, str]], str]:
    """`([(label value, name)] of the foreground classes sorted by value, form)` of checked `labels`
    (`check_labels`), the one reading of dataset.json classes for preprocessing and evaluation. Forms:

    - `"nnunetv2"`: `{"background": 0, "liver": 1}`;
    - `"value_to_name"` (nnU-Net v1 / MSD): `{"0": "background", "1": "liver"}`;
    - `"nndetection"`: `{"0": "liver", "1": "spleen"}`, class index i (0-based, nnDetection: "Classes ...
      start with index 0") is label value i + 1, so background stays 0 and values are the plan's indices.
    """
    if all(isinstance(v, str) for v in labels.values()):
        if str(labels.get("0", "")).strip().lower() in BACKGROUND_NAMES:
            entries, form = [(int(k), str(n)) for k, n in labels.items() if int(k) != 0], "value_to_name"
        else:
            entries, form = [(int(k) + 1, str(n)) for k, n in labels.items()], "nndetection"
    else:
        entries, form = [(int(v), str(n)) for n, v in labels.items() if int(v) != 0], "nnunetv2"  # type: ignore[call-overload]
    return sorted(entries), form


def check_num_training(dataset_folder: Path, dataset_json: dict, num_found: int) -> None:
    """`numTraining` must equal the number of training cases found (nnU-Net checks this too)."""
    if dataset_json["numTraining"] != num_found:
        raise InputError(
            f"{Path(dataset_folder) / 'dataset.json'}: 'numTraining' is {dataset_json['numTraining']} but imagesTr "
            f"holds {num_found} case(s); correct numTraining or the files"
        )


def is_instance_form(dataset_folder: Path) -> bool:
    """nnDetection instance form: `labelsTr/*.json` files beside the label maps."""
    labels = Path(dataset_folder) / "labelsTr"
    return labels.is_dir() and any(labels.glob("*.json"))


def organ_classes(dataset_json: dict, instance_form: bool) -> list[OrganClass]:
    """Detection classes (`label_entries`), sorted by label value, with contiguous indices 1..C. The
    nnDetection form needs instance files (`labelsTr/<case>.json`) beside the label maps."""
    entries, form = label_entries(dataset_json["labels"])
    if form == "nndetection" and not instance_form:
        raise InputError(
            "dataset.json: 'labels' maps class ids to names (nnDetection instance form), but labelsTr has no "
            "<case>.json instance files; use {\"background\": 0, \"liver\": 1, ...} for label maps"
        )
    return [OrganClass(index + 1, value, name) for index, (value, name) in enumerate(entries)]


def _case_id_from_image(path: Path, file_ending: str) -> tuple[str, int] | None:
    name = path.name
    if not name.endswith(file_ending):
        return None
    stem = name[: -len(file_ending)]
    match = re.match(r"^(.*)_(\d{4})$", stem)
    if not match:
        return None
    return match.group(1), int(match.group(2))


def list_cases(dataset_folder: Path, dataset_json: dict, images: str = "imagesTr", labels: str | None = "labelsTr") -> list[RawCase]:
    """All cases of `images` with their channel files and (if `labels`) their label file."""
    folder = Path(dataset_folder)
    image_folder = folder / images
    if not image_folder.is_dir():
        raise InputError(f"{image_folder}: folder missing")
    ending = dataset_json["file_ending"]
    num_channels = len(dataset_json["channel_names"])
    channels: dict[str, dict[int, Path]] = {}
    for path in sorted(image_folder.iterdir()):
        if path.name.startswith("."):
            continue
        parsed = _case_id_from_image(path, ending)
        if parsed is None:
            continue
        channels.setdefault(parsed[0], {})[parsed[1]] = path
    cases = []
    for case_id, files in sorted(channels.items()):
        if sorted(files) != list(range(num_channels)):
            raise InputError(
                f"{image_folder / (case_id + '_0000' + ending)}: expected channels 0..{num_channels - 1}, found {sorted(files)}"
            )
        label_file = instance_file = None
        if labels is not None:
            label_file = folder / labels / f"{case_id}{ending}"
            if label_file.is_symlink() and not label_file.is_file():
                raise InputError(f"{label_file}: {missing_file_reason(label_file)}")
            if not label_file.is_file():
                raise InputError(f"{files[0]}: image without label (expected {label_file})")
            candidate = folder / labels / f"{case_id}.json"
            instance_file = candidate if candidate.is_file() else None
        cases.append(RawCase(case_id, [files[c] for c in range(num_channels)], label_file, instance_file))
    return cases


def no_cases_reason(image_folder: Path, ending: str) -> str:
    """Why a training image folder gives no case: no file with the ending, or files with it that are not
    named `<case>_<4-digit channel><ending>`."""
    folder = Path(image_folder)
    matching = sorted(p.name for p in folder.iterdir() if p.name.endswith(ending) and not p.name.startswith(".")) \
        if folder.is_dir() else []
    if matching:
        return (f"{folder}: {len(matching)} file(s) end in {ending} but none is named <case>_<4-digit channel>{ending} "
                f"(e.g. case_000_0000{ending}), such as {matching[0]}")
    return f"{folder}: no training images ending in {ending}"


def read_image(path: Path) -> sitk.Image:
    """Read one 3D image; missing (a symlink loop named as such), unreadable, truncated, 2D and 4D files and
    broken headers (`autodetr.preprocessing.headers`) raise InputError."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: {missing_file_reason(path)}")
    check_complete(path)
    check_header(path)  # a NaN or zero voxel size, a singular direction, a qform and sform that disagree
    try:
        with quiet_itk():
            image = sitk.ReadImage(str(path))
    except RuntimeError as error:
        raise InputError(f"{path}: {itk_read_reason(error)}") from None
    if image.GetDimension() != 3:
        raise InputError(f"{path}: expected a 3D image, got {image.GetDimension()}D (size {image.GetSize()})")
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(f"{path}: expected one value per voxel, got {image.GetNumberOfComponentsPerPixel()} (vector image)")
    return image


def image_array(image: sitk.Image, path: Path, dtype) -> np.ndarray:
    """The voxels of a SimpleITK image as `dtype` (None: as stored); InputError naming `path` when its data cannot be read."""
    try:
        voxels = sitk.GetArrayFromImage(image)
        return voxels if dtype is None else voxels.astype(dtype, copy=False)
    except RuntimeError as error:  # lazily read truncated data
        raise InputError(f"{path}: cannot be read ({str(error).strip()[:160]})") from None


def read_label_map(path: Path) -> tuple[np.ndarray, Geometry]:
    """A 3D label map as int32 with its geometry; non-integer voxel values raise InputError (a float
    map would otherwise be truncated silently). Used for training and for evaluation alike."""
    image = read_image(path)
    voxels = image_array(image, path, None)
    if np.issubdtype(voxels.dtype, np.floating) and not np.all(np.mod(voxels, 1) == 0):
        raise InputError(f"{path}: label map has non-integer values")
    return voxels.astype(np.int32, copy=False), Geometry.from_image(image)


def read_images(image_files: list[Path]) -> tuple[np.ndarray, Geometry]:
    """Read the channels of one case into `[C, z, y, x]` float32; all channels share one geometry."""
    arrays, geometry = [], None
    for path in image_files:
        image = read_image(path)
        this = Geometry.from_image(image)
        if geometry is not None and not geometry.matches(this):
            raise InputError(f"{path}: geometry differs from channel 0 ({image_files[0].name})")
        geometry = geometry or this
        array = image_array(image, path, np.float32)
        check_finite(array, path)
        arrays.append(array)
    return np.stack(arrays), geometry


def check_finite(array: np.ndarray, path: Path) -> None:
    """Refuse NaN and infinite voxels (values beyond float32 included): one such voxel makes every
    normalised image NaN. SimpleITK reads them as 0 from NIfTI, so the file itself is checked too."""
    bad = int(np.count_nonzero(~np.isfinite(array))) or count_non_finite_nifti(path)
    if bad:
        raise InputError(f"{path}: {bad} voxel(s) are NaN or infinite; replace them (e.g. with the background "
                         "value) or remove the case")


def read_instance_classes(path: Path) -> dict[int, int]:
    try:
        content = json.loads(Path(path).read_text())
        return {int(k): int(v) for k, v in content["instances"].items()}
    except (json.JSONDecodeError, KeyError, ValueError, AttributeError, TypeError, OSError):
        raise InputError(f"{path}: expected {{\"instances\": {{\"<id>\": <class>, ...}}}}") from None


def read_case(raw_case: RawCase, classes: list[OrganClass]) -> CaseData:
    """Read image and ground truth of one case and check them against each other and the classes."""
    image, geometry = read_images(raw_case.image_files)
    case = CaseData(raw_case.case_id, image, geometry)
    if raw_case.label_file is None:
        return case
    label_map, label_geometry = read_label_map(raw_case.label_file)
    if not geometry.matches(label_geometry):
        raise InputError(
            f"{raw_case.label_file}: label geometry differs from its image "
            f"(size {label_geometry.shape_zyx[::-1]} vs {geometry.shape_zyx[::-1]}, "
            f"spacing {np.round(label_geometry.spacing_xyz, 4).tolist()} vs {np.round(geometry.spacing_xyz, 4).tolist()}, "
            f"or origin/direction)"
        )
    present = np.unique(label_map)
    present = present[present != 0]
    known_values = {c.label_value for c in classes}
    if raw_case.instance_file is not None:
        instances = read_instance_classes(raw_case.instance_file)
        unknown_ids = sorted(set(present.tolist()) - set(instances))
        if unknown_ids:
            raise InputError(f"{raw_case.label_file}: instance ids {unknown_ids} missing in {raw_case.instance_file.name}")
        values = sorted(known_values)  # class index i (0-based) -> the i-th foreground label value
        unknown_classes = sorted(c for c in set(instances.values()) if not 0 <= c < len(values))
        if unknown_classes:
            raise InputError(f"{raw_case.instance_file}: classes {unknown_classes} not declared in dataset.json")
        instances = {instance: values[c] for instance, c in instances.items()}
        boxes, ids = boxes_from_label_map(label_map)
        case.boxes = boxes
        case.box_label_values = np.asarray([instances[int(i)] for i in ids], dtype=np.int64)
        case.instance_classes = instances
    else:
        unknown = sorted(set(present.tolist()) - known_values)
        if unknown:
            raise InputError(f"{raw_case.label_file}: label values {unknown} not declared in dataset.json")
        case.boxes, case.box_label_values = boxes_from_label_map(label_map)
    if present.size == 0:
        warnings.warn(f"{raw_case.label_file}: empty label map, the case has zero boxes", stacklevel=2)
    case.label_map = label_map
    return case


def class_index_map(case: CaseData, classes: list[OrganClass]) -> np.ndarray:
    """The label map as contiguous class indices (0 background), as the segmentation loss wants it."""
    if case.label_map is None:
        raise ValueError("case has no label map")
    index_of_value = {c.label_value: c.index for c in classes}
    if case.instance_classes is not None:
        lookup = {instance: index_of_value[value] for instance, value in case.instance_classes.items()}
    else:
        lookup = index_of_value
    size = max(int(case.label_map.max()), max(lookup, default=0)) + 1
    table = np.zeros(size, dtype=np.int16)
    for value, index in lookup.items():
        if 0 < value < size:
            table[value] = index
    return table[np.clip(case.label_map, 0, size - 1)]
