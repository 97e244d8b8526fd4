"""The procedural phantom: determinism, labels and boxes, anatomy, HU, geometry, and the CLI."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from autodetr.boxes import boxes_from_label_map
from autodetr.errors import InputError
from autodetr.phantom import CLASS_NAMES, case_grid, generate_case, make_phantom_dataset
from autodetr.phantom.entrypoints import main
from autodetr.phantom.geometry import MATRIX_RANGES, SPACING_RANGES


def _value(name: str) -> int:
    return CLASS_NAMES.index(name) + 1


def _centroid(label: np.ndarray, name: str) -> np.ndarray:
    return np.argwhere(label == _value(name)).mean(axis=0)


def _boxes_by_name(label: np.ndarray) -> dict[str, tuple[int, ...]]:
    """The corner box of every class in `label`, by class name (as `PhantomCase.placed_boxes`)."""
    boxes, values = boxes_from_label_map(label)
    return {CLASS_NAMES[v - 1]: tuple(int(c) for c in box) for box, v in zip(boxes, values)}


def _interior(mask: np.ndarray, iterations: int = 1) -> np.ndarray:
    return ndimage.binary_erosion(mask, iterations=iterations)


def test_class_names_are_the_documented_fifteen():
    assert CLASS_NAMES[:2] == ["liver", "spleen"]
    assert {"kidney_left", "kidney_right", "stomach", "gallbladder", "pancreas", "aorta", "inferior_vena_cava",
            "urinary_bladder"} <= set(CLASS_NAMES)
    assert CLASS_NAMES[-5:] == [f"vertebrae_L{k}" for k in range(1, 6)]
    assert len(set(CLASS_NAMES)) == len(CLASS_NAMES) == 15


def test_same_seed_gives_identical_case_and_other_seed_differs():
    first, again = generate_case(3, seed=7, size="small"), generate_case(3, seed=7, size="small")
    assert first.image.dtype == np.int16 and first.label.dtype == np.uint8
    np.testing.assert_array_equal(first.image, again.image)
    np.testing.assert_array_equal(first.label, again.label)
    assert first.spacing == again.spacing and first.origin == again.origin
    assert first.placed_boxes == again.placed_boxes
    other = generate_case(3, seed=8, size="small")
    assert other.image.shape != first.image.shape or not np.array_equal(other.image, first.image)
    assert other.placed_boxes != first.placed_boxes
    neighbour = generate_case(4, seed=7, size="small")
    assert neighbour.placed_boxes != first.placed_boxes


def test_placed_boxes_are_the_boxes_of_the_label_map():
    for index in range(3):
        case = generate_case(index, seed=0, size="small")
        assert _boxes_by_name(case.label) == case.placed_boxes
        shape = np.array(case.label.shape * 2)
        for box in case.placed_boxes.values():
            assert np.all(np.array(box[3:]) > np.array(box[:3])) and np.all(np.array(box) <= shape)


def test_every_class_appears_and_some_organs_are_missing_in_some_cases():
    cases = [generate_case(index, seed=0, size="small") for index in range(12)]
    present = [set(case.placed_boxes) for case in cases]
    assert set().union(*present) == set(CLASS_NAMES)
    assert any("gallbladder" not in names for names in present), "gallbladder should be absent in some cases"
    assert any("gallbladder" in names for names in present)
    for case, names in zip(cases, present):
        # The spine, liver and large organs are always in the field of view.
        assert {"liver", "spleen", "kidney_left", "kidney_right", "aorta", *CLASS_NAMES[-5:]} <= names
        for name in set(CLASS_NAMES) - names:
            assert not np.any(case.label == _value(name))
    assert len({case.image.shape for case in cases}) > 1, "case shapes should vary"


def test_anatomy_is_where_it_belongs():
    """LPS storage: +x = patient left, +y = posterior, +z = superior."""
    for index in range(4):
        case = generate_case(index, seed=1, size="small")
        label = case.label
        centre = {name: _centroid(label, name) for name in case.placed_boxes}
        assert centre["liver"][2] < centre["spleen"][2]  # liver on the patient's right
        assert centre["kidney_right"][2] < centre["kidney_left"][2]
        assert centre["inferior_vena_cava"][2] < centre["aorta"][2]
        assert centre["aorta"][1] < centre["vertebrae_L3"][1]  # aorta in front of the spine
        assert centre["kidney_left"][1] > centre["aorta"][1]  # kidneys posterior, retroperitoneal
        lumbar = [centre[f"vertebrae_L{k}"][0] for k in range(1, 6)]
        assert all(upper > lower for upper, lower in zip(lumbar, lumbar[1:]))  # L1 on top of L5
        assert centre["liver"][0] > centre["vertebrae_L3"][0]
        if "urinary_bladder" in centre:
            assert centre["urinary_bladder"][0] < centre["vertebrae_L5"][0]
        if "gallbladder" in centre:
            assert abs(centre["gallbladder"][2] - centre["liver"][2]) < abs(centre["gallbladder"][2] - centre["spleen"][2])


def test_perirenal_fat_keeps_liver_and_spleen_off_the_kidneys():
    """A fat plane separates each kidney from liver and spleen (as in real CT), at the patient's drawn thickness;
    the labels stay exact (the boxes are the label map's)."""
    for index, appearance in ((0, "realistic"), (3, "randomised")):
        case = generate_case(index, seed=0, size="full", appearance=appearance, field_of_view="standard")
        assert _boxes_by_name(case.label) == case.placed_boxes
        for kidney, neighbour in (("kidney_right", "liver"), ("kidney_left", "spleen")):
            distance = ndimage.distance_transform_edt(case.label != CLASS_NAMES.index(kidney) + 1, sampling=case.spacing)
            gap = distance[case.label == CLASS_NAMES.index(neighbour) + 1].min()
            thickness = case.info["perirenal_fat_mm"][kidney]
            assert 1.0 <= thickness <= 25.0
            assert gap > thickness, (index, kidney, neighbour, gap, thickness)


def test_hounsfield_units_are_plausible_small():
    case = generate_case(0, seed=0, size="small")
    image, label = case.image.astype(np.float64), case.label
    liver = image[_interior(label == _value("liver"))].mean()
    assert 50 <= liver <= 70
    bone = np.mean([image[label == _value(f"vertebrae_L{k}")].mean() for k in range(1, 6)])
    assert bone > 250 and bone > liver + 150
    assert image[:3, :3, :3].mean() < -900  # air in the corner, outside the body
    assert image.min() >= -1024


def test_full_case_geometry_and_hounsfield_units():
    case = generate_case(0, seed=0, size="full")
    spacing = case.spacing
    assert SPACING_RANGES["full"]["slice"][0] <= spacing[0] <= SPACING_RANGES["full"]["slice"][1]
    assert SPACING_RANGES["full"]["inplane"][0] <= spacing[1] == spacing[2] <= SPACING_RANGES["full"]["inplane"][1]
    assert 256 <= case.image.shape[1] == case.image.shape[2] <= 512
    extent_mm = case.image.shape[0] * spacing[0]
    assert 250 < extent_mm < 600
    image, label = case.image.astype(np.float64), case.label
    interior = {name: _interior(label == _value(name), 2) for name in ("liver", "spleen", "kidney_left", "urinary_bladder")}
    assert 53 <= image[interior["liver"]].mean() <= 67
    assert 38 <= image[interior["spleen"]].mean() <= 54
    assert 20 <= image[interior["kidney_left"]].mean() <= 40
    assert image[interior["urinary_bladder"]].mean() <= 20
    vertebra = label == _value("vertebrae_L3")
    in_plane = np.zeros((3, 3, 3), dtype=bool)
    in_plane[1] = ndimage.generate_binary_structure(2, 1)
    shell = vertebra & ~ndimage.binary_erosion(vertebra, in_plane, iterations=2)
    core = ndimage.binary_erosion(vertebra, in_plane, iterations=6)
    assert core.sum() > 100
    assert image[shell].mean() > image[core].mean() + 100  # cortical shell brighter than cancellous bone
    assert 150 <= image[core].mean() <= 400
    # Subcutaneous fat and muscle exist: a clear fat peak between -130 and -70 HU inside the body.
    body = image > -500
    assert np.mean((image[body] > -130) & (image[body] < -70)) > 0.1


def test_spacing_and_matrix_ranges_per_size():
    for size in ("small", "full"):
        grids = [case_grid(index, seed=0, size=size) for index in range(25)]
        spacing = np.array([grid.spacing for grid in grids])
        shapes = np.array([grid.shape for grid in grids])
        ranges = SPACING_RANGES[size]
        assert np.all((spacing[:, 0] >= ranges["slice"][0]) & (spacing[:, 0] <= ranges["slice"][1]))
        assert np.all((spacing[:, 1:] >= ranges["inplane"][0]) & (spacing[:, 1:] <= ranges["inplane"][1]))
        low, high = MATRIX_RANGES[size]["inplane"]
        assert np.all((shapes[:, 1:] >= low) & (shapes[:, 1:] <= high))
        assert spacing[:, 0].std() > 0 and spacing[:, 1].std() > 0, "spacing should vary across cases"
        if size == "small":
            assert np.all((shapes[:, 0] >= 32) & (shapes[:, 0] <= 52))
    case = generate_case(5, seed=0, size="small")
    grid = case_grid(5, seed=0, size="small")
    assert case.image.shape == grid.shape and case.spacing == grid.spacing


def _read(path: Path) -> tuple[np.ndarray, sitk.Image]:
    image = sitk.ReadImage(str(path))
    return sitk.GetArrayFromImage(image), image


def test_cli_writes_a_complete_nnunet_dataset(tmp_path: Path):
    with pytest.raises(SystemExit) as exit_info:
        main(["-d", "501", "--size", "small", "--num-cases", "3", "--num-test-cases", "2", "--seed", "4",
              "--output", str(tmp_path), "-np", "1", "--no-progress"])
    assert exit_info.value.code == 0
    folder = tmp_path / "Dataset501_Phantom"
    info = json.loads((folder / "dataset.json").read_text())
    assert info["channel_names"] == {"0": "CT"}
    assert info["file_ending"] == ".nii.gz"
    assert info["labels"] == {"background": 0, **{name: i + 1 for i, name in enumerate(CLASS_NAMES)}}
    assert info["numTraining"] == 3 == len(list((folder / "imagesTr").glob("*.nii.gz")))
    for split, count in (("Tr", 3), ("Ts", 2)):
        images = sorted((folder / f"images{split}").glob("*_0000.nii.gz"))
        labels = sorted((folder / f"labels{split}").glob("*.nii.gz"))
        assert len(images) == len(labels) == count
        for image_path in images:
            case_id = image_path.name[: -len("_0000.nii.gz")]
            image, image_itk = _read(image_path)
            label, label_itk = _read(folder / f"labels{split}" / f"{case_id}.nii.gz")
            assert image.dtype == np.int16 and label.dtype == np.uint8 and image.shape == label.shape
            assert image_itk.GetSpacing() == label_itk.GetSpacing()
            assert image_itk.GetOrigin() == label_itk.GetOrigin()
            assert image_itk.GetDirection() == (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
            assert set(np.unique(label).tolist()) <= set(info["labels"].values())
    # What is written is exactly what the API generates for (seed, index): boxes, arrays and geometry.
    label, label_itk = _read(folder / "labelsTr" / "phantom_002.nii.gz")
    image, _ = _read(folder / "imagesTr" / "phantom_002_0000.nii.gz")
    case = generate_case(2, seed=4, size="small")
    np.testing.assert_array_equal(image, case.image)
    assert _boxes_by_name(label) == case.placed_boxes
    np.testing.assert_allclose(label_itk.GetSpacing(), case.spacing[::-1], rtol=1e-6)
    np.testing.assert_allclose(label_itk.GetOrigin(), case.origin[::-1], atol=1e-3)


def test_rerun_keeps_complete_cases_and_finishes_incomplete_ones(tmp_path: Path):
    folder = make_phantom_dataset(tmp_path, dataset_id=502, num_cases=2, num_test_cases=1, size="small", seed=1)
    kept = folder / "imagesTr" / "phantom_000_0000.nii.gz"
    redo = folder / "imagesTr" / "phantom_001_0000.nii.gz"
    before = kept.stat().st_mtime_ns, redo.read_bytes()
    (folder / "labelsTr" / "phantom_001.nii.gz").unlink()  # case 1 incomplete, as after an interruption
    (folder / "dataset.json").unlink()
    partial = folder / "imagesTr" / ".phantom_001_0000.nii.gz.abc.partial.nii.gz"
    partial.write_bytes(b"")
    make_phantom_dataset(tmp_path, dataset_id=502, num_cases=2, num_test_cases=1, size="small", seed=1)
    assert kept.stat().st_mtime_ns == before[0]
    assert (folder / "labelsTr" / "phantom_001.nii.gz").is_file() and redo.read_bytes() == before[1]
    assert not partial.exists() and (folder / "dataset.json").is_file()
    with pytest.raises(InputError, match="overwrite"):
        make_phantom_dataset(tmp_path, dataset_id=502, num_cases=2, num_test_cases=1, size="small", seed=2)


def test_parallel_generation_matches_serial(tmp_path: Path):
    serial = make_phantom_dataset(tmp_path / "a", dataset_id=503, num_cases=2, num_test_cases=0, size="small", seed=5)
    parallel = make_phantom_dataset(tmp_path / "b", dataset_id=503, num_cases=2, num_test_cases=0, size="small",
                                    seed=5, num_processes=2)
    for name in ("imagesTr/phantom_000_0000.nii.gz", "labelsTr/phantom_001.nii.gz"):
        np.testing.assert_array_equal(_read(serial / name)[0], _read(parallel / name)[0])


def test_cli_uses_autodetr_raw_and_names_it_when_missing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture):
    monkeypatch.delenv("AUTODETR_raw", raising=False)
    with pytest.raises(SystemExit) as exit_info:
        main(["--size", "small", "--num-cases", "1", "--num-test-cases", "0", "--no-progress"])
    assert exit_info.value.code == 2
    assert "AUTODETR_raw" in capsys.readouterr().err
    monkeypatch.setenv("AUTODETR_raw", str(tmp_path))
    with pytest.raises(SystemExit) as exit_info:
        main(["--size", "small", "--num-cases", "1", "--num-test-cases", "0", "-np", "1", "--no-progress"])
    assert exit_info.value.code == 0
    assert json.loads((tmp_path / "Dataset500_Phantom" / "dataset.json").read_text())["numTraining"] == 1
