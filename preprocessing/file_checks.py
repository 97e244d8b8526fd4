"""Checks SimpleITK does not make: its NIfTI reader zero-fills a truncated file without a word, so a
NIfTI file's payload is measured against the size its header declares; and it reads NaN and infinite
voxels of a NIfTI file as 0, so float NIfTI data is checked with nibabel."""
from __future__ import annotations

import gzip
import struct
import zlib
from pathlib import Path

from autodetr.errors import InputError

CHUNK = 1 << 22


def _declared_nifti_size(header: bytes) -> int | None:
    """Bytes a NIfTI-1 / NIfTI-2 file must hold (header + voxel data), or None if not NIfTI."""
    for endian in "<>":
        if len(header) >= 348 and struct.unpack(endian + "i", header[:4])[0] == 348:
            dims = struct.unpack(endian + "8h", header[40:56])
            bitpix = struct.unpack(endian + "h", header[72:74])[0]
            offset = int(struct.unpack(endian + "f", header[108:112])[0])
            break
        if len(header) >= 540 and struct.unpack(endian + "i", header[:4])[0] == 540:
            bitpix = struct.unpack(endian + "h", header[14:16])[0]
            dims = struct.unpack(endian + "8q", header[16:80])
            offset = struct.unpack(endian + "q", header[168:176])[0]
            break
    else:
        return None
    count = 1
    for size in dims[1 : 1 + max(0, min(int(dims[0]), 7))]:
        count *= max(int(size), 1)
    return max(offset, 348) + count * max(int(bitpix), 8) // 8


def check_complete(path: Path) -> None:
    """Raise InputError if a NIfTI file (.nii, .nii.gz) is truncated or its gzip stream is broken."""
    path = Path(path)
    name = path.name.lower()
    if not (name.endswith(".nii") or name.endswith(".nii.gz")):
        return
    opener = gzip.open if name.endswith(".gz") else open
    try:
        with opener(path, "rb") as handle:
            header = handle.read(544)
            declared = _declared_nifti_size(header)
            if declared is None:
                if len(header) < 348:
                    raise InputError(f"{path}: cannot be read (truncated: {len(header)} bytes, shorter than a NIfTI header)")
                return  # not a NIfTI header: SimpleITK will say what it is
            total = len(header)
            while chunk := handle.read(CHUNK):
                total += len(chunk)
    except (EOFError, OSError, zlib.error) as error:
        raise InputError(f"{path}: cannot be read (truncated or corrupt compressed data: {error})") from None
    if total < declared:
        raise InputError(f"{path}: cannot be read (truncated: {total} of {declared} bytes)")


def count_non_finite_nifti(path: Path) -> int:
    """NaN / infinite voxels stored in a float NIfTI file (0 for other files and integer data)."""
    name = Path(path).name.lower()
    if not (name.endswith(".nii") or name.endswith(".nii.gz")):
        return 0
    import nibabel
    import numpy as np

    try:
        image = nibabel.load(str(path))
        if image.get_data_dtype().kind not in "fc":
            return 0
        return int(np.count_nonzero(~np.isfinite(np.asanyarray(image.dataobj))))
    except Exception:  # noqa: BLE001 - nibabel cannot read it: SimpleITK's reader reports the problem
        return 0
