"""Image headers that SimpleITK reads wrongly without a word, or refuses in words of its own, named as
broken headers: a NIfTI `pixdim` that is NaN (read as 1 mm) or 0, a singular direction matrix, a NIfTI
qform and sform that disagree (ITK prints raw warnings and takes one of them). Every check reads the
header only, and names the file and the header field in one line."""
from __future__ import annotations

import contextlib
import re
import warnings
from pathlib import Path
from typing import Iterator

import numpy as np
import SimpleITK as sitk

from autodetr.errors import InputError

#: Origins of a qform and an sform further apart than this (mm), or directions / voxel sizes differing by
#: more than this relative amount, disagree (float32 header values of one affine agree to ~1e-5).
ORIGIN_TOLERANCE_MM = 1e-2
RELATIVE_TOLERANCE = 1e-3
#: A direction matrix whose determinant is this close to 0 has two axes pointing the same way.
SINGULAR_DETERMINANT = 1e-6
#: The header fields that hold spacing and direction, by file ending.
HEADER_FIELDS = {
    ".nii.gz": ("pixdim", "qform/sform"), ".nii": ("pixdim", "qform/sform"),
    ".mha": ("ElementSpacing", "TransformMatrix"), ".mhd": ("ElementSpacing", "TransformMatrix"),
    ".nrrd": ("space directions", "space directions"), ".nhdr": ("space directions", "space directions"),
}


def header_fields(path: Path) -> tuple[str, str]:
    """(spacing field, direction field) of the format of `path`."""
    name = Path(path).name.lower()
    return next((fields for ending, fields in HEADER_FIELDS.items() if name.endswith(ending)), ("spacing", "direction"))


@contextlib.contextmanager
def quiet_itk() -> Iterator[None]:
    """ITK's warnings (printed by C++ straight to stderr) off inside the block: problems are reported as
    one line each by the checks here."""
    shown = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)
    try:
        yield
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(shown)


def _round(values: np.ndarray) -> list[float]:
    return [float(v) + 0.0 for v in np.round(np.asarray(values, dtype=np.float64), 4)]  # + 0.0: no "-0.0"


def _nifti_header(path: Path):
    """The nibabel header of a NIfTI file, or None (not NIfTI, or unreadable: SimpleITK then says why)."""
    name = path.name.lower()
    if not (name.endswith(".nii") or name.endswith(".nii.gz")):
        return None
    import nibabel
    from nibabel.openers import ImageOpener

    try:  # the header as stored: nibabel.load would "fix" a zero pixdim to 1 first
        with warnings.catch_warnings(), ImageOpener(str(path)) as handle:
            warnings.simplefilter("ignore")
            first = handle.read(4)
            handle.seek(0)
            sizes = (int.from_bytes(first, "little"), int.from_bytes(first, "big"))  # sizeof_hdr: 348 or 540
            kind = nibabel.Nifti2Header if 540 in sizes else nibabel.Nifti1Header
            return kind.from_fileobj(handle, check=False)
    except Exception:  # noqa: BLE001 - not readable by nibabel: SimpleITK's reader reports the problem
        return None


def _check_pixdim(path: Path, header) -> None:
    pixdim = np.asarray(header["pixdim"][1:4], dtype=np.float64)
    for axis, value in enumerate(pixdim, start=1):
        if not np.isfinite(value) or value <= 0:
            raise InputError(f"{path}: invalid header: pixdim[{axis}] (the voxel size of axis {axis}) is {value:g}, "
                             "not a positive number of mm; fix the header (e.g. with nibabel) or remove the case")


def _affine_parts(affine: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(voxel sizes, unit direction columns, origin) of a 4x4 voxel-to-world affine."""
    matrix = np.asarray(affine, dtype=np.float64)[:3, :3]
    sizes = np.linalg.norm(matrix, axis=0)
    return sizes, matrix / np.where(sizes > 0, sizes, 1.0), np.asarray(affine, dtype=np.float64)[:3, 3]


def _check_sform(path: Path, header) -> None:
    """A set sform (`sform_code` > 0) must be finite and non-singular."""
    sform = np.asarray(header.get_sform(), dtype=np.float64)
    if not np.isfinite(sform).all():
        raise InputError(f"{path}: invalid header: the sform (srow_x, srow_y, srow_z) holds NaN or infinite values")
    if abs(np.linalg.det(sform[:3, :3])) < SINGULAR_DETERMINANT:
        rows = [_round(row) for row in sform[:3, :3]]
        raise InputError(f"{path}: invalid header: the sform (srow_x, srow_y, srow_z) is singular (rows {rows}: "
                         "two axes point the same way or one has no length)")


def _check_qform_sform_agree(path: Path, header) -> None:
    """With both qform_code and sform_code set, the two affines must describe one geometry."""
    q_sizes, q_directions, q_origin = _affine_parts(header.get_qform())
    s_sizes, s_directions, s_origin = _affine_parts(header.get_sform())
    problems = []
    if not np.allclose(q_origin, s_origin, atol=ORIGIN_TOLERANCE_MM):
        problems.append(f"origin {_round(q_origin)} (qoffset_x/y/z) vs {_round(s_origin)} mm (srow_x/y/z[3])")
    if not np.allclose(q_directions, s_directions, atol=RELATIVE_TOLERANCE):
        problems.append(f"direction {_round(q_directions.T.ravel())} (quatern_b/c/d) vs {_round(s_directions.T.ravel())} (srow)")
    if not np.allclose(q_sizes, s_sizes, rtol=RELATIVE_TOLERANCE):
        problems.append(f"voxel size {_round(q_sizes)} (pixdim) vs {_round(s_sizes)} mm (srow)")
    if problems:
        raise InputError(f"{path}: invalid header: the qform and the sform disagree on {'; '.join(problems)}; "
                         "make them agree, or set qform_code or sform_code to 0 so the other one is used")


def check_nifti_header(path: Path) -> None:
    """pixdim, sform and qform of a NIfTI file (nothing for other files)."""
    header = _nifti_header(Path(path))
    if header is None:
        return
    _check_pixdim(path, header)
    if int(header["sform_code"]) > 0:
        _check_sform(path, header)
        if int(header["qform_code"]) > 0:
            _check_qform_sform_agree(path, header)


def check_geometry_header(path: Path) -> None:
    """Spacing and direction as SimpleITK's reader finds them in any format's header: positive finite
    spacings and a non-singular direction matrix (ITK refuses these with "Zero-valued spacing" or
    "(0 0 1)")."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        with quiet_itk():
            reader.ReadImageInformation()
    except RuntimeError:
        return  # not an image SimpleITK knows: read_image reports it
    if reader.GetDimension() != 3:
        return
    spacing_field, direction_field = header_fields(path)
    spacing = np.asarray(reader.GetSpacing(), dtype=np.float64)
    if not np.isfinite(spacing).all() or (spacing <= 0).any():
        raise InputError(f"{path}: invalid header: spacing {_round(spacing)} mm (x, y, z) has a zero, negative or "
                         f"non-numeric value (header field {spacing_field})")
    matrix = np.asarray(reader.GetDirection(), dtype=np.float64).reshape(3, 3)
    if not np.isfinite(matrix).all() or abs(np.linalg.det(matrix)) < SINGULAR_DETERMINANT:
        rows = [_round(row) for row in matrix]
        raise InputError(f"{path}: invalid header: the direction matrix {rows} is singular (header field "
                         f"{direction_field}): two axes point the same way or one has no direction")


def check_header(path: Path) -> None:
    """Refuse an image whose header holds an invalid spacing or direction, or (NIfTI) a pixdim that is not a
    positive number, a singular sform, or a qform and an sform that disagree; one line naming the field."""
    check_nifti_header(Path(path))
    check_geometry_header(Path(path))


def itk_read_reason(error: RuntimeError) -> str:
    """One line for SimpleITK's refusal to read a file: "invalid header: ..." for a header field it cannot
    parse (e.g. an NRRD `space directions` with NaN), else "cannot be read (<its last line>)"."""
    text = str(error).strip()
    parsing = re.search(r"trouble parsing (.+?) info \|(.*?)\|", text)
    if parsing:
        return f"invalid header: the field '{parsing.group(1)}' cannot be parsed ({parsing.group(2)[:120]})"
    lines = text.splitlines()
    return f"cannot be read ({(lines[-1] if lines else 'unreadable')[:160]})"
