"""One case's intensities never move the other cases' normalisation (docs/refusals.md, issue 34).

Three small phantoms are planned and preprocessed without the bad case (the reference) and with it; the
good cases' preprocessed arrays must be bit-identical. The target spacing and input size are given on the
command line, so only the intensity statistics could differ. A scan far outside the physical CT range is
left out of the intensity statistics with a warning naming its file; a constant image is refused, naming
its file, and leaves the earlier run's arrays as they were."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from test_bad_input import assert_clean_failure, run

from autodetr.atomic_io import read_json
from autodetr.phantom.generator import make_phantom_dataset

DATASET_ID = 611
GOOD = ("phantom_000", "phantom_001", "phantom_002")
BAD = "phantom_009"  # a copy of phantom_001 (same geometry) with broken intensities
FIXED_GEOMETRY = ("--spacing", "8", "8", "8", "--input-size", "32", "32", "32")


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_phantom_dataset(tmp_path_factory.mktemp("phantoms"), dataset_id=DATASET_ID, num_cases=len(GOOD),
                                num_test_cases=0, size="small", seed=3, num_processes=1)


def _plans_folder(roots: dict, phantoms: Path) -> Path:
    return roots["preprocessed"] / phantoms.name / "autodetrPlans"


def _arrays(folder: Path) -> dict[str, np.ndarray]:
    return {case: np.load(folder / f"{case}.npz", allow_pickle=False)["image"] for case in GOOD}


def _plan(capsys) -> tuple[int, str]:
    """`autodetr_plan_and_preprocess` at the fixed geometry: (exit code, stderr)."""
    return run(capsys, "-d", str(DATASET_ID), *FIXED_GEOMETRY)


@pytest.fixture(scope="module")
def reference(phantoms: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, np.ndarray], dict]:
    """Preprocessed arrays and intensity properties of the good cases alone."""
    from autodetr.planners.plan_and_preprocess_api import plan_and_preprocess

    base = tmp_path_factory.mktemp("reference")
    with pytest.MonkeyPatch.context() as patch:
        for kind in ("raw", "preprocessed", "results"):
            (base / kind).mkdir()
            patch.setenv(f"AUTODETR_{kind}", str(base / kind))
        shutil.copytree(phantoms, base / "raw" / phantoms.name)
        folder = plan_and_preprocess(DATASET_ID, preset="cpu", num_processes=1, spacing=[8.0] * 3, input_size=[32] * 3)
        plans = read_json(folder / "plans.json")
        return _arrays(folder), plans["foreground_intensity_properties_per_channel"]


def _add_bad_case(raw_folder: Path, change) -> Path:
    """`raw_folder` with BAD: phantom_001's image passed through `change(image, label)`, its label copied."""
    image = sitk.ReadImage(str(raw_folder / "imagesTr" / "phantom_001_0000.nii.gz"))
    label_file = raw_folder / "labelsTr" / "phantom_001.nii.gz"
    bad = sitk.GetImageFromArray(change(sitk.GetArrayFromImage(image), sitk.GetArrayFromImage(sitk.ReadImage(str(label_file)))))
    bad.CopyInformation(image)
    path = raw_folder / "imagesTr" / f"{BAD}_0000.nii.gz"
    sitk.WriteImage(bad, str(path))
    shutil.copyfile(label_file, raw_folder / "labelsTr" / f"{BAD}.nii.gz")
    content = json.loads((raw_folder / "dataset.json").read_text())
    content["numTraining"] = len(GOOD) + 1
    (raw_folder / "dataset.json").write_text(json.dumps(content))
    return path


def _huge_organ(image: np.ndarray, label: np.ndarray) -> np.ndarray:
    image = image.astype(np.float32)
    image[label == 1] = 1e30  # every voxel of one organ
    return image


def _wrapped_uint16(image: np.ndarray, label: np.ndarray) -> np.ndarray:
    return image.astype(np.int16).view(np.uint16)  # a real export bug: -1000 HU stored as 64536


@pytest.mark.parametrize("change, words", [
    (_huge_organ, "of the labelled voxels are outside the physical CT range -1100..4000 HU"),
    (_wrapped_uint16, "negative HU wrapped around by an unsigned 16-bit type"),
], ids=["1e30_in_one_organ", "uint16_wrap_around"])
def test_out_of_range_case_is_named_and_changes_no_other_case(roots, capsys, phantoms, reference, change, words):
    raw_folder = roots["raw"] / phantoms.name
    shutil.copytree(phantoms, raw_folder)
    bad = _add_bad_case(raw_folder, change)
    with pytest.warns(UserWarning, match=f"{bad.name}: .*{words}") as caught:
        code, err = _plan(capsys)
    assert code == 0 and "Traceback" not in err, err
    plans = read_json(_plans_folder(roots, phantoms) / "plans.json")
    assert len(plans["warnings"]) == 1 and str(bad) in plans["warnings"][0]
    assert "left out of the intensity statistics" in plans["warnings"][0]
    assert any(str(bad) in str(w.message) for w in caught)
    assert plans["foreground_intensity_properties_per_channel"] == reference[1]
    assert BAD in plans["decisions"]["normalization"]
    arrays = _arrays(_plans_folder(roots, phantoms))
    for case in GOOD:
        np.testing.assert_array_equal(arrays[case], reference[0][case], err_msg=case)
    assert (_plans_folder(roots, phantoms) / f"{BAD}.npz").is_file()  # still a training case, clipped


@pytest.mark.parametrize("value", [-1000.0, 0.0, "near"], ids=["constant_air", "constant_zero", "near_constant"])
def test_constant_image_refused_naming_it_and_no_other_case_changes(roots, capsys, phantoms, reference, value):
    raw_folder = roots["raw"] / phantoms.name
    shutil.copytree(phantoms, raw_folder)
    code, err = _plan(capsys)
    assert code == 0, err
    folder = _plans_folder(roots, phantoms)
    before = {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}

    def constant(image: np.ndarray, label: np.ndarray) -> np.ndarray:
        if value == "near":  # air with sub-HU noise
            return (-1000.0 + np.random.default_rng(0).uniform(0, 0.4, image.shape)).astype(np.float32)
        return np.full(image.shape, value, np.int16)

    bad = _add_bad_case(raw_folder, constant)
    code, err = _plan(capsys)
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert str(bad) in lines[0] and "constant image" in lines[0] and "fix or remove the case" in lines[0]
    after = {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}
    assert after == before  # nothing rewritten, nothing half-written
    for case in GOOD:
        np.testing.assert_array_equal(_arrays(folder)[case], reference[0][case], err_msg=case)


def test_constant_image_refused_before_anything_is_written(roots, capsys, phantoms):
    raw_folder = roots["raw"] / phantoms.name
    shutil.copytree(phantoms, raw_folder)
    bad = _add_bad_case(raw_folder, lambda image, label: np.full(image.shape, -1000, np.int16))
    code, err = _plan(capsys)
    assert_clean_failure(code, err, roots, str(bad), "constant image")


def test_every_case_out_of_range_is_refused(roots, capsys, phantoms):
    """When no case is in the physical range, the channel is not CT in HU: refused, not planned on nothing."""
    raw_folder = roots["raw"] / phantoms.name
    shutil.copytree(phantoms, raw_folder)
    for path in (raw_folder / "imagesTr").glob("*.nii.gz"):
        image = sitk.ReadImage(str(path))
        wrapped = sitk.GetImageFromArray(_wrapped_uint16(sitk.GetArrayFromImage(image), None))
        wrapped.CopyInformation(image)
        sitk.WriteImage(wrapped, str(path))
    code, err = _plan(capsys)
    assert_clean_failure(code, err, roots, "phantom_000_0000.nii.gz", "wrapped around",
                         "re-export the scan as signed int16); and so is every other case", "really CT in Hounsfield units")
