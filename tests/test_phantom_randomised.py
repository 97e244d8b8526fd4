"""Domain-randomised phantoms: contrast phases with real CT's enhancement, scan ranges cut anywhere, exact labels."""
from __future__ import annotations

import numpy as np
import pytest

from autodetr.boxes import boxes_from_label_map
from autodetr.phantom.anatomy import CLASS_NAMES, sample_anatomy
from autodetr.phantom.shapes import extent
from autodetr.phantom.spine import LUMBAR
from autodetr.phantom.variation import vary_anatomy
from autodetr.phantom.generator import GENERATOR_VERSION, generate_case
from autodetr.phantom.randomised import PHASE_HU, TISSUE_JITTER_HU

LIVER, AORTA, BLADDER = (CLASS_NAMES.index(name) + 1 for name in ("liver", "aorta", "urinary_bladder"))


def exact_boxes(case) -> None:
    """Every placed box is the bounding box of its label's voxels, and every label present has one."""
    found, values = boxes_from_label_map(case.label)
    assert {CLASS_NAMES[v - 1]: tuple(int(c) for c in box) for box, v in zip(found, values)} == case.placed_boxes


@pytest.fixture(scope="module")
def randomised_cases():
    return [generate_case(index, seed=11, size="small", appearance="randomised") for index in range(10)]


def test_contrast_phases_enhance_the_organs_as_real_ct(randomised_cases) -> None:
    phases = {case.info["phase"] for case in randomised_cases}
    assert len(phases) >= 3  # the phase is drawn per scan
    checked = 0
    for case in randomised_cases:
        liver = case.image[case.label == LIVER]
        if liver.size < 200:
            continue
        low, high = PHASE_HU[case.info["phase"]]["liver"]
        median = float(np.median(liver))  # texture, vessels and noise move voxels, not the median by much
        assert low - TISSUE_JITTER_HU - 25 <= median <= high + TISSUE_JITTER_HU + 25, (case.info, median)
        checked += 1
    assert checked >= 3
    portal = [float(np.median(c.image[c.label == LIVER])) for c in randomised_cases
              if c.info["phase"] == "portal_venous" and (c.label == LIVER).sum() >= 200]
    native = [float(np.median(c.image[c.label == LIVER])) for c in randomised_cases
              if c.info["phase"] == "native" and (c.label == LIVER).sum() >= 200]
    if portal and native:  # the enhanced liver is brighter than the unenhanced one
        assert min(portal) > max(native) - 2 * TISSUE_JITTER_HU


def test_randomised_scans_start_and_end_anywhere_with_exact_cut_labels(randomised_cases) -> None:
    extents = [case.image.shape[0] * case.spacing[0] for case in randomised_cases]
    assert max(extents) > 1.4 * min(extents)
    cut = 0
    for case in randomised_cases:
        exact_boxes(case)
        assert case.image.shape == case.label.shape
        cut += sum(box[0] == 0 or box[3] == case.label.shape[0] for box in case.placed_boxes.values())
    assert cut >= 3  # organs cut by the scan's ends keep the box of their voxels inside the scan
    assert any(len(case.placed_boxes) < len(CLASS_NAMES) - 1 for case in randomised_cases)  # partial ranges


def test_randomised_appearance_keeps_the_anatomy_and_partial_ranges_hold_their_organs() -> None:
    realistic = generate_case(3, seed=5, size="small")
    randomised = generate_case(3, seed=5, size="small", appearance="randomised", field_of_view="standard")
    assert randomised.info["appearance"] == "randomised" and realistic.info["appearance"] == "realistic"
    # same anatomy and scan range: the labels agree inside the randomised scan's (possibly smaller) window
    dy = int(round((randomised.origin[1] - realistic.origin[1]) / realistic.spacing[1]))
    dx = int(round((randomised.origin[2] - realistic.origin[2]) / realistic.spacing[2]))
    window = realistic.label[:, dy:dy + randomised.label.shape[1], dx:dx + randomised.label.shape[2]]
    np.testing.assert_array_equal(window, randomised.label)
    assert not np.array_equal(realistic.image[:, dy:dy + randomised.label.shape[1], dx:dx + randomised.label.shape[2]],
                              randomised.image)
    exact_boxes(randomised)
    upper = generate_case(3, seed=5, size="full", appearance="randomised", field_of_view="upper_abdomen")
    assert "liver" in upper.placed_boxes and "urinary_bladder" not in upper.placed_boxes
    exact_boxes(upper)


def _organ_extents(anatomy) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    return {s.name: extent(s.shape, s.deformation) for s in anatomy.structures
            if s.name in ("liver", "spleen", "stomach", "kidney_right")}


def test_anatomical_variety_lowers_organs_as_real_patients_and_keeps_the_diaphragm() -> None:
    """Randomised patients: the liver, spleen and stomach reach below L1 in many (in the realistic anatomy
    they end near it), organs grow down from their top, and the draw is deterministic per stream."""
    below_l1 = {"liver": 0, "spleen": 0, "stomach": 0}
    kidney_shifts = []
    for index in range(12):
        plain = sample_anatomy(np.random.default_rng(index))
        varied = sample_anatomy(np.random.default_rng(index))
        drawn = vary_anatomy(varied, np.random.default_rng(100 + index))
        assert drawn == vary_anatomy(sample_anatomy(np.random.default_rng(index)), np.random.default_rng(100 + index))
        before, after = _organ_extents(plain), _organ_extents(varied)
        l1_bottom = plain.landmarks["L1"] - 15.0
        for name in below_l1:
            assert after[name][1][0] == pytest.approx(before[name][1][0], abs=6.0)  # the top stays (diaphragm)
            below_l1[name] += after[name][0][0] < l1_bottom - 10
        assert after["liver"][0][0] <= before["liver"][0][0] + 9.0  # the liver only grows downward
        kidney_shifts.append(after["kidney_right"][0][0] - before["kidney_right"][0][0])
        assert after["kidney_right"][0][0] == pytest.approx(before["kidney_right"][0][0] + drawn["kidney_right_shift_mm"], abs=3.5)
    assert all(count >= 4 for count in below_l1.values()), below_l1
    assert min(kidney_shifts) < -10 and max(kidney_shifts) > 0  # kidneys sit lower or higher


def test_varied_anatomy_is_opt_in_recorded_and_never_mixed_into_a_standard_folder(tmp_path) -> None:
    """`--anatomy varied` changes the organs but not the spine; the dataset records it, and resuming a folder
    written without it (dataset.json from before the option) with it is refused rather than mixed."""
    import json

    from autodetr.errors import InputError
    from autodetr.phantom.generator import make_phantom_dataset

    standard = generate_case(2, seed=3, size="small", appearance="randomised", field_of_view="standard")
    varied = generate_case(2, seed=3, size="small", appearance="randomised", field_of_view="standard", anatomy="varied")
    assert standard.image.shape == varied.image.shape and varied.info["anatomy"] == "varied"
    kept = [CLASS_NAMES.index(name) + 1 for name in ("aorta", *LUMBAR)]
    np.testing.assert_array_equal(np.isin(standard.label, kept) * standard.label, np.isin(varied.label, kept) * varied.label)
    assert not np.array_equal(standard.label == LIVER, varied.label == LIVER)
    exact_boxes(varied)
    with pytest.raises(InputError, match="anatomy must be one of"):
        generate_case(0, anatomy="lobulated")

    folder = tmp_path / "Dataset530_Phantom"
    folder.mkdir()
    (folder / "dataset.json").write_text(json.dumps({"phantom": {"seed": 0, "size": "small", "appearance": "randomised",
                                                                 "field_of_view": "random",
                                                                 "generator_version": GENERATOR_VERSION}}))
    with pytest.raises(InputError, match="anatomy standard.*--overwrite.*anatomy varied"):
        make_phantom_dataset(tmp_path, dataset_id=530, num_cases=1, num_test_cases=0, size="small",
                             appearance="randomised", anatomy="varied")
    assert not (folder / "imagesTr").exists() or not any((folder / "imagesTr").iterdir())
    make_phantom_dataset(tmp_path, dataset_id=530, num_cases=1, num_test_cases=0, size="small", appearance="randomised")
    assert json.loads((folder / "dataset.json").read_text())["phantom"]["anatomy"] == "standard"


def test_mixed_anatomy_draws_each_case_standard_or_varied_and_keeps_both_kinds_as_they_are() -> None:
    """`--anatomy mixed`: every case is exactly the standard or the varied folder's same case (its label map
    and image), recorded in its info, and both kinds occur."""
    drawn = {}
    for index in range(6):
        mixed = generate_case(index, seed=4, size="small", appearance="randomised", anatomy="mixed")
        kind = mixed.info["anatomy"]
        assert kind in ("standard", "varied")
        same = generate_case(index, seed=4, size="small", appearance="randomised", anatomy=kind)
        np.testing.assert_array_equal(mixed.label, same.label)
        np.testing.assert_array_equal(mixed.image, same.image)
        exact_boxes(mixed)
        drawn[index] = kind
    assert set(drawn.values()) == {"standard", "varied"}, drawn
