"""Broken image headers are named as such (docs/refusals.md, issue 34): the file (image or label, whichever
is broken), the header field, one line, no raw ITK warning, nothing written.

Headers are broken the way real files are: the bytes of a valid file's header are changed in place."""
from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from test_bad_input import assert_clean_failure, make_dataset, run, write_image

from autodetr.errors import InputError
from autodetr.preprocessing.raw_dataset import read_image

#: Byte offsets in a NIfTI-1 header.
PIXDIM = 76          # 8 float32: pixdim[0..7]
SROW_X, SROW_Z = 280, 312  # 4 float32 each (srow_y between)


def patch_nifti(path: Path, offset: int, values: tuple[float, ...]) -> None:
    """Overwrite float32 header values of a .nii.gz file at `offset`."""
    raw = bytearray(gzip.decompress(path.read_bytes()))
    raw[offset: offset + 4 * len(values)] = struct.pack(f"<{len(values)}f", *values)
    path.write_bytes(gzip.compress(bytes(raw)))


def _case_files(folder: Path, case: str = "case_001") -> tuple[Path, Path]:
    return folder / "imagesTr" / f"{case}_0000.nii.gz", folder / "labelsTr" / f"{case}.nii.gz"


def _refused(capfd, roots: dict, *words: str) -> str:
    code, err = run(capfd, "-d", "601")
    assert_clean_failure(code, err, roots, "invalid header", *words)
    assert "WARNING" not in err and "ITK" not in err, err  # no raw ITK output
    return next(line for line in err.splitlines() if line.startswith("error:"))


@pytest.mark.parametrize("axis, value, shown", [(3, float("nan"), "is nan"), (2, 0.0, "is 0"), (1, -1.0, "is -1")])
def test_invalid_pixdim_is_named(roots, capfd, axis, value, shown):
    image, _ = _case_files(make_dataset(roots["raw"], num_cases=3))
    patch_nifti(image, PIXDIM + 4 * axis, (value,))
    line = _refused(capfd, roots, str(image), f"pixdim[{axis}]", shown)
    assert "spacing" not in line.split("pixdim")[0]  # named as a header problem, not an outlier spacing


def test_singular_sform_is_named(roots, capfd):
    image, _ = _case_files(make_dataset(roots["raw"], num_cases=3))
    patch_nifti(image, SROW_Z, (0.0, 0.0, 0.0, 0.0))
    _refused(capfd, roots, str(image), "sform", "singular")


@pytest.mark.parametrize("ending, field, old, new", [
    (".mha", "TransformMatrix", b"TransformMatrix = 1 0 0 0 1 0 0 0 1", b"TransformMatrix = 1 0 0 0 1 0 0 0 0"),
    (".nrrd", "space directions", b"space directions: (1,0,0) (0,1,0) (0,0,2)", b"space directions: (1,0,0) (0,1,0) (1,0,0)"),
], ids=["mha", "nrrd"])
def test_singular_direction_matrix_is_named(roots, capfd, ending, field, old, new):
    folder = make_dataset(roots["raw"], num_cases=3)
    for path in list(folder.rglob("*.nii.gz")):
        target = path.with_name(path.name.replace(".nii.gz", ending))
        write_image(target, sitk.GetArrayFromImage(read_image(path)))
        path.unlink()
    content = (folder / "dataset.json").read_text().replace('".nii.gz"', f'"{ending}"')
    (folder / "dataset.json").write_text(content)
    image = folder / "imagesTr" / f"case_001_0000{ending}"
    header = image.read_bytes()
    assert old in header
    image.write_bytes(header.replace(old, new))
    _refused(capfd, roots, str(image), "direction matrix", "singular", field)


def test_unparsable_nrrd_field_is_named(tmp_path):
    path = tmp_path / "scan.nrrd"
    write_image(path, np.zeros((4, 5, 6), np.int16))
    path.write_bytes(path.read_bytes().replace(b"(0,1,0)", b"(0,nan,0)"))
    with pytest.raises(InputError, match="scan.nrrd: invalid header: the field 'space directions' cannot be parsed"):
        read_image(path)


def _move_sform_origin(path: Path) -> None:
    """srow_x[3] (the sform's x origin) 10 mm off the qform's."""
    patch_nifti(path, SROW_X, (-1.0, 0.0, 0.0, 10.0))


def test_qform_sform_disagreement_blames_the_image_not_the_label(roots, capfd):
    image, label = _case_files(make_dataset(roots["raw"], num_cases=3))
    _move_sform_origin(image)
    line = _refused(capfd, roots, str(image), "qform and the sform disagree", "origin", "qoffset", "srow")
    assert str(label) not in line and "label geometry" not in line


def test_qform_sform_disagreement_in_image_and_label_is_refused(roots, capfd):
    """Both files carry the same disagreement: before, the case was accepted with the sform's origin."""
    image, label = _case_files(make_dataset(roots["raw"], num_cases=3))
    _move_sform_origin(image)
    _move_sform_origin(label)
    _refused(capfd, roots, str(image), "qform and the sform disagree")


def test_qform_sform_disagreement_in_the_label_blames_the_label(roots, capfd):
    _, label = _case_files(make_dataset(roots["raw"], num_cases=3))
    _move_sform_origin(label)
    _refused(capfd, roots, str(label), "qform and the sform disagree")


def test_consistent_headers_still_read(tmp_path):
    """A file SimpleITK writes (qform and sform both set, equal) passes every check, ITK warnings restored."""
    path = tmp_path / "ok.nii.gz"
    write_image(path, np.zeros((4, 5, 6), np.int16), spacing=(0.7, 0.7, 2.5))
    assert read_image(path).GetSpacing() == pytest.approx((0.7, 0.7, 2.5))
    assert sitk.ProcessObject.GetGlobalWarningDisplay()
