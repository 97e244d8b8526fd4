"""DICOM input: every series below a folder (searched recursively) is one case.

Series are found with GDCM (`sitk.ImageSeriesReader.GetGDCMSeriesIDs` per folder; a series split over
several folders is merged by its Series Instance UID) and read with `sitk.ImageSeriesReader`, which sorts
the slices by position and applies the rescale slope / intercept (Hounsfield units for CT).

Case ids: the Series Description (0008|103e) made filesystem-safe (letters, digits, `.`, `_`, `-`); the
Series Instance UID when there is no description; 8 hex digits of a hash of the UID are appended when
several series would get the same id.
"""
from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from autodetr.errors import InputError

DESCRIPTION_TAG = "0008|103e"


@dataclass
class DicomSeries:
    case_id: str
    series_uid: str
    description: str
    files: list[str]


def safe_name(text: str, max_length: int = 80) -> str:
    """`text` reduced to characters that are safe in file names on every system."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", text.strip()).strip("._-")
    return name[:max_length]


def _read_tag(path: str, tag: str) -> str:
    reader = sitk.ImageFileReader()
    reader.SetFileName(path)
    try:
        reader.ReadImageInformation()
        return reader.GetMetaData(tag).strip() if reader.HasMetaDataKey(tag) else ""
    except RuntimeError:
        return ""


def _series_in_folder(folder: str) -> list[str]:
    try:
        return list(sitk.ImageSeriesReader.GetGDCMSeriesIDs(folder))
    except RuntimeError:
        return []


def _slice_positions(files: list[str]) -> list[float] | None:
    """Each slice's position along the slice normal (Image Position . normal of Image Orientation), in mm;
    None when a file lacks the tags."""
    positions = []
    for path in files:
        try:
            p = [float(v) for v in _read_tag(path, "0020|0032").split("\\")]
            o = [float(v) for v in _read_tag(path, "0020|0037").split("\\")]
            normal = (o[1] * o[5] - o[2] * o[4], o[2] * o[3] - o[0] * o[5], o[0] * o[4] - o[1] * o[3])
            positions.append(sum(a * b for a, b in zip(p, normal)))
        except (ValueError, IndexError):
            return None
    return positions


def _sort_by_position(files: list[str]) -> list[str]:
    """Slices of a series spread over several folders, sorted along the slice normal (GDCM sorts only
    within one folder); files without position tags keep their order."""
    keys = _slice_positions(files)
    if keys is None:
        return files
    return [f for _, f in sorted(zip(keys, files), key=lambda pair: pair[0])]


#: Largest deviation of a slice gap from the median gap (fraction of it) that still counts as even spacing.
SLICE_GAP_TOLERANCE = 0.2


def check_slice_spacing(files: list[str], name: str) -> None:
    """Refuse a series whose slices are not evenly spaced (a missing or duplicated slice): ITK would read
    it with an averaged spacing and every box would be placed wrongly along the slice axis."""
    positions = _slice_positions(files)
    if positions is None or len(positions) < 3:
        return
    gaps = np.diff(np.sort(np.asarray(positions, dtype=np.float64)))
    median = float(np.median(gaps))
    uneven = np.nonzero(np.abs(gaps - median) > SLICE_GAP_TOLERANCE * max(median, 1e-6))[0]
    if median <= 0 or uneven.size:
        where = int(uneven[0]) if uneven.size else 0
        raise InputError(
            f"DICOM series {name} ({len(files)} files in {Path(files[0]).parent}): slices are not evenly spaced "
            f"({gaps[where]:.3g} mm between slices {where + 1} and {where + 2}, {median:.3g} mm elsewhere; a missing or "
            "duplicated slice?)")


def find_dicom_series(
    folder: str | os.PathLike, skip_suffixes: tuple[str, ...] = (), exclude: str | os.PathLike | None = None
) -> list[DicomSeries]:
    """All DICOM series below `folder` (recursively), sorted by case id. Folders whose files all end in
    one of `skip_suffixes` (e.g. NIfTI images) are not scanned, nor the folder `exclude` and its subfolders."""
    files_by_uid: dict[str, list[str]] = {}
    excluded = Path(exclude).resolve() if exclude is not None else None
    for directory, subdirectories, file_names in os.walk(folder):
        if excluded is not None:
            subdirectories[:] = [d for d in subdirectories if Path(directory, d).resolve() != excluded]
        subdirectories.sort()
        visible = [n for n in file_names if not n.startswith(".")]
        if not visible or all(n.lower().endswith(skip_suffixes) for n in visible if skip_suffixes):
            continue
        for uid in _series_in_folder(directory):
            names = list(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(directory, uid))
            files_by_uid.setdefault(uid, []).extend(names)
    series = []
    for uid, files in files_by_uid.items():
        if len({os.path.dirname(f) for f in files}) > 1:
            files = _sort_by_position(files)
        description = _read_tag(files[0], DESCRIPTION_TAG)
        series.append(DicomSeries("", uid, description, files))
    base_names = [safe_name(s.description) or safe_name(s.series_uid) or "dicom_series" for s in series]
    for entry, base in zip(series, base_names):
        if base_names.count(base) > 1:
            base = f"{base}_{hashlib.sha1(entry.series_uid.encode()).hexdigest()[:8]}"
        entry.case_id = base
    seen: dict[str, int] = {}
    for entry in sorted(series, key=lambda s: (s.case_id, s.series_uid)):  # still equal: number them
        count = seen.get(entry.case_id, 0)
        seen[entry.case_id] = count + 1
        if count:
            entry.case_id = f"{entry.case_id}_{count + 1}"
    return sorted(series, key=lambda s: s.case_id)


def read_dicom_series(files: list[str], name: str) -> sitk.Image:
    """Read one series as a 3D image; problems (incl. unevenly spaced slices) raise InputError naming it."""
    check_slice_spacing(files, name)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(list(files))
    try:
        image = reader.Execute()
    except RuntimeError as error:
        lines = str(error).strip().splitlines()
        raise InputError(f"DICOM series {name} ({len(files)} files in {Path(files[0]).parent}): cannot be read "
                         f"({(lines[-1] if lines else 'unreadable')[:160]})") from None
    if image.GetDimension() != 3:
        raise InputError(f"DICOM series {name}: expected a 3D image, got {image.GetDimension()}D")
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(f"DICOM series {name}: expected one value per voxel (e.g. CT), got "
                         f"{image.GetNumberOfComponentsPerPixel()} (colour or vector image)")
    if image.GetSize()[2] < 2:
        raise InputError(f"DICOM series {name}: a single slice is not a volume")
    return image
