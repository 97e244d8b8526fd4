"""What `autodetr_predict -i INPUT` accepts, turned into a list of cases.

- a folder of images (`.nii.gz`, `.nii`, `.nrrd`, `.mha`, `.mhd`, `.nhdr`), top level only. The nnU-Net
  channel suffix is optional: `case_0000.nii.gz` is case `case`; a model with several input channels
  takes `case_0000`, `case_0001`, ... as one case. A file without the suffix is a one-channel case named
  by its file name (`scan.nii.gz` -> `scan`).
- a single image file (its other channels, if the model needs them, are found beside it);
- DICOM: every series in the folder and its subfolders is one case (`autodetr.inference.dicom`). A folder
  may hold images and DICOM series together.

Problems that concern one case only (missing channel, two files for one case) do not stop the others: the
case carries an `error` and is reported with the failures.
"""
from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from autodetr.atomic_io import missing_file_reason
from autodetr.errors import InputError
from autodetr.inference.dicom import DicomSeries, find_dicom_series, read_dicom_series
from autodetr.preprocessing.raw_dataset import Geometry, image_array, read_images

IMAGE_ENDINGS = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd", ".nhdr")
_CHANNEL = re.compile(r"^(.*)_(\d{4})$")


@dataclass
class InputCase:
    """One case to predict: image files (one per channel) or a DICOM series, or an `error`."""

    case_id: str
    image_files: list[Path] = field(default_factory=list)
    dicom: DicomSeries | None = None
    error: str | None = None

    @property
    def source(self) -> str:
        if self.dicom is not None:
            return f"DICOM series {self.dicom.series_uid} ({len(self.dicom.files)} files in {Path(self.dicom.files[0]).parent})"
        return ", ".join(str(p) for p in self.image_files)


def image_ending(path: Path) -> str | None:
    name = path.name.lower()
    return next((e for e in IMAGE_ENDINGS if name.endswith(e)), None)


def _stem(path: Path) -> str:
    ending = image_ending(path)
    return path.name[: -len(ending)] if ending else path.name


def group_image_files(files: list[Path], num_channels: int) -> list[InputCase]:
    """Group image files into cases by the `_XXXX` channel suffix (see the module docstring)."""
    groups: dict[str, dict[int, list[Path]]] = defaultdict(lambda: defaultdict(list))
    for path in sorted(files):
        stem = _stem(path)
        match = _CHANNEL.match(stem)
        if match:
            groups[match.group(1)][int(match.group(2))].append(path)
        else:
            groups[stem][-1].append(path)  # no suffix: channel 0 of a case named by the whole stem
    cases: list[InputCase] = []
    for case_id, channels in groups.items():
        if -1 in channels:  # "scan.nii.gz" (and maybe "scan_0000.nii.gz" too)
            plain = channels.pop(-1)
            channels.setdefault(0, [])
            channels[0] = plain + channels[0]
        duplicates = {c: p for c, p in channels.items() if len(p) > 1}
        if duplicates:
            channel, paths = next(iter(duplicates.items()))
            cases.append(InputCase(case_id, sorted(p for ps in channels.values() for p in ps),
                                   error=f"several files for channel {channel}: {', '.join(p.name for p in paths)}"))
            continue
        found = sorted(channels)
        if found == list(range(num_channels)):
            cases.append(InputCase(case_id, [channels[c][0] for c in found]))
        elif num_channels == 1 and 0 not in channels:
            # `_2021`-like suffixes that are not channels: each file is its own case
            for channel in found:
                path = channels[channel][0]
                cases.append(InputCase(_stem(path), [path]))
        else:
            cases.append(InputCase(
                case_id, [channels[c][0] for c in found],
                error=f"the model takes {num_channels} channel(s) (files {case_id}_0000 .. {case_id}_{num_channels - 1:04d}), "
                      f"found channel(s) {found}",
            ))
    return cases


def discover_cases(input_path: str | Path, num_channels: int = 1, exclude: str | Path | None = None) -> list[InputCase]:
    """All cases of `input_path` (folder, image file or DICOM folder), sorted by case id. `exclude`: a
    folder to leave out of the search (the output folder, when it lies inside the input folder).

    Raises InputError when the input does not exist, holds nothing readable, or two cases share an id."""
    path = Path(input_path)
    if not path.exists():
        reason = missing_file_reason(path) if path.is_symlink() else "input does not exist"
        raise InputError(f"{path}: {reason}")
    if exclude is not None and path.is_dir() and Path(exclude).resolve() == path.resolve():
        raise InputError(f"{path}: the output folder must not be the input folder")
    cases: list[InputCase] = []
    if path.is_file():
        if image_ending(path):
            siblings = [p for p in path.parent.iterdir() if p.is_file() and image_ending(p)]
            stem = _stem(path)
            match = _CHANNEL.match(stem)
            if match and num_channels > 1:
                wanted = {f"{match.group(1)}_{c:04d}" for c in range(num_channels)}
                files = [p for p in siblings if _stem(p) in wanted]
            else:
                files = [path]
            cases = group_image_files(files, num_channels)
            if match and num_channels == 1 and len(cases) == 1 and cases[0].error is None:
                cases[0].case_id = match.group(1) if match.group(2) == "0000" else stem
        else:  # a DICOM file: its series
            series = [s for s in find_dicom_series(path.parent) if str(path) in s.files
                      or any(Path(f).resolve() == path.resolve() for f in s.files)]
            if not series:
                raise InputError(f"{path}: neither an image ({', '.join(IMAGE_ENDINGS)}) nor part of a DICOM series")
            cases = [InputCase(s.case_id, dicom=s) for s in series]
    else:
        images = [p for p in sorted(path.iterdir())  # a broken link is a case that fails, naming the link
                  if (p.is_file() or p.is_symlink()) and not p.name.startswith(".") and image_ending(p)]
        cases = group_image_files(images, num_channels)
        cases += [InputCase(s.case_id, dicom=s) for s in find_dicom_series(
            path, skip_suffixes=IMAGE_ENDINGS + (".json", ".csv", ".txt", ".md"), exclude=exclude)]
        if not cases:
            raise InputError(f"{path}: no images ({', '.join(IMAGE_ENDINGS)}) and no DICOM series found")
    counts: dict[str, int] = defaultdict(int)
    for case in cases:
        counts[case.case_id] += 1
    clashes = sorted(c for c, n in counts.items() if n > 1)
    if clashes:
        where = "; ".join(" / ".join(c.source for c in cases if c.case_id == name) for name in clashes[:3])
        raise InputError(f"{path}: several inputs give the same case id {clashes[:3]} ({where}); rename one")
    for case in cases:
        if case.dicom is not None and num_channels != 1:
            case.error = f"the model takes {num_channels} channels, a DICOM series gives one"
    return sorted(cases, key=lambda c: c.case_id)


def read_input_case(case: InputCase) -> tuple[np.ndarray, Geometry]:
    """The case's image `[C, z, y, x]` float32 and its geometry; InputError for unreadable input."""
    if case.error is not None:
        raise InputError(f"{case.source}: {case.error}")
    if case.dicom is not None:
        image = read_dicom_series(case.dicom.files, case.case_id)
        array = image_array(image, Path(case.dicom.files[0]).parent, np.float32)[None]
        return array, Geometry.from_image(image)
    return read_images(case.image_files)
