"""Canonical orientation: a scan preprocesses to the same arrays whatever voxel order it was stored in, and
boxes go back to the voxels of the stored order."""
from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk

from autodetr.preprocessing.ground_truth import boxes_from_label_map
from autodetr.preprocessing.orientation import Reorientation
from autodetr.preprocessing.preprocess_case import preprocess_image
from autodetr.preprocessing.raw_dataset import Geometry
from tests.conftest import shared_data

LIVER, SPLEEN = 5, 1  # TotalSegmentator label values in the shared example


def ct_plans(spacing=(6.0, 6.0, 6.0), input_size=(32, 48, 48)) -> dict:
    return {
        "input_size": list(input_size), "spacing": list(spacing), "transpose_forward": [0, 1, 2], "orientation": "LPS",
        "normalization": {"0": "CTNormalization"},
        "foreground_intensity_properties_per_channel": {"0": {"mean": 40.0, "std": 60.0, "percentile_00_5": -200.0,
                                                              "percentile_99_5": 400.0}},
        "resampling": {"image_order": 1, "label_order": 0, "order_z": 0, "anisotropy_threshold": 3.0},
    }


def read(path) -> tuple[sitk.Image, np.ndarray]:
    image = sitk.ReadImage(str(path))
    return image, sitk.GetArrayFromImage(image)


@pytest.mark.parametrize("direction", [(1, 0, 0, 0, 1, 0, 0, 0, 1), (-1, 0, 0, 0, -1, 0, 0, 0, 1),
                                       (0, 0, 1, -1, 0, 0, 0, -1, 0), (0.98, 0.2, 0, -0.2, 0.98, 0, 0, 0, -1)])
def test_reorientation_is_a_signed_permutation_whose_boxes_follow_the_array(direction) -> None:
    reorientation = Reorientation.from_direction([float(v) for v in direction])
    assert sorted(reorientation.source_axes) == [0, 1, 2]
    np.testing.assert_allclose(np.asarray(reorientation.direction(direction)).reshape(3, 3).diagonal() > 0.9, True)
    rng = np.random.default_rng(0)
    array = np.zeros((7, 9, 11), np.int16)
    array[1:4, 2:7, 5:11] = 1
    canonical = reorientation.array(array)
    assert canonical.shape == reorientation.shape(array.shape)
    box = np.asarray([[1, 2, 5, 4, 7, 11]], float)
    mapped = reorientation.boxes(box, array.shape)
    found, _ = boxes_from_label_map(np.ascontiguousarray(canonical))
    np.testing.assert_array_equal(mapped, found)
    boxes = rng.uniform(0, 6, (5, 6))
    boxes[:, 3:] += boxes[:, :3]
    np.testing.assert_allclose(reorientation.boxes_back(reorientation.boxes(boxes, array.shape), array.shape), boxes)
    assert Reorientation.from_json(json.loads(json.dumps(reorientation.to_json()))) == reorientation


def test_the_real_scan_preprocesses_alike_in_every_voxel_order_with_its_organs_in_lps_order() -> None:
    """The shared example is stored RAS-like (direction diag(-1, -1, 1)): reoriented, its liver lies at low
    x (patient right) and its spine at high y (posterior), as in an LPS phantom, and the same scan stored in
    other voxel orders gives the same preprocessed arrays and ground-truth boxes, which map back to its own
    voxels."""
    data = shared_data()
    image, array = read(data / "ct.nii.gz")
    label, label_array = read(data / "seg.nii.gz")
    assert image.GetDirection()[0] < 0  # the stored order is not LPS
    plans = ct_plans()
    results = {}
    for orientation in ("stored", "LPS", "RAI", "PIL"):
        img, lab = (image, label) if orientation == "stored" else (sitk.DICOMOrient(image, orientation), sitk.DICOMOrient(label, orientation))
        values_map = sitk.GetArrayFromImage(lab).astype(np.int16)
        boxes, values = boxes_from_label_map(values_map)
        case = preprocess_image(sitk.GetArrayFromImage(img)[None].astype(np.float32), Geometry.from_image(img), plans,
                                values_map, boxes, values)
        np.testing.assert_allclose(case.restore.preprocessed_to_original(case.boxes), boxes, atol=1e-4)  # float32 boxes
        results[orientation] = (case, dict(zip(values.tolist(), case.boxes)))
    reference, reference_boxes = results["LPS"]
    for orientation, (case, by_value) in results.items():
        np.testing.assert_allclose(case.image, reference.image, atol=1e-5, err_msg=orientation)
        np.testing.assert_array_equal(case.seg, reference.seg)
        for value, box in by_value.items():
            np.testing.assert_allclose(box, reference_boxes[value], atol=1e-4)
    liver, spleen = reference_boxes[LIVER], reference_boxes[SPLEEN]
    width = reference.image.shape[3]
    assert (liver[2] + liver[5]) / 2 < width / 2 < (spleen[2] + spleen[5]) / 2  # liver on the patient's right
    spine = reference_boxes[31]  # vertebra L1 lies behind the liver's centre
    assert (spine[1] + spine[4]) / 2 > (liver[1] + liver[4]) / 2
    # plans made before reorientation ("stored") keep the stored order, as their models were trained on it
    values_map = sitk.GetArrayFromImage(label).astype(np.int16)
    boxes, values = boxes_from_label_map(values_map)
    stored = preprocess_image(array[None].astype(np.float32), Geometry.from_image(image), {**plans, "orientation": "stored"},
                              values_map, boxes, values)
    stored_liver = dict(zip(values.tolist(), stored.boxes))[LIVER]
    assert (stored_liver[2] + stored_liver[5]) / 2 > width / 2
