"""On the real CT: preprocessed ground-truth boxes map back to the original world boxes."""
from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from autodetr.atomic_io import read_json, read_npz
from autodetr.planners.plan_and_preprocess_api import plan_and_preprocess
from autodetr.preprocessing.restore import RestoreInfo, box_world_summary
from tests.conftest import shared_data, write_real_ct_dataset


def world_boxes_from_label(label: sitk.Image) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Per label value, the world-space (x, y, z) min and max over the edges of its voxels, computed
    with SimpleITK's own index-to-point transform (independent of autodetr's mapping)."""
    array = sitk.GetArrayFromImage(label)
    spacing_half = np.asarray(label.GetSpacing()) / 2
    direction = np.asarray(label.GetDirection()).reshape(3, 3)
    assert np.allclose(np.abs(direction), np.round(np.abs(direction))), "axis-aligned directions only"
    half_extent = np.abs(direction) @ spacing_half
    boxes = {}
    for value in np.unique(array[array > 0]):
        zyx = np.argwhere(array == value)
        points = np.asarray([label.TransformIndexToPhysicalPoint([int(i) for i in p[::-1]]) for p in (zyx.min(0), zyx.max(0))])
        low, high = points.min(0) - half_extent, points.max(0) + half_extent
        boxes[int(value)] = (low, high)
    return boxes


def check_roundtrip(raw_folder, preprocessed_folder, label_path) -> int:
    plans = read_json(preprocessed_folder / "plans.json")
    value_of_index = {c["index"]: c["label_value"] for c in plans["classes"]}
    content = read_npz(preprocessed_folder / "real_000.npz")
    restore = RestoreInfo.from_json(read_json(preprocessed_folder / "real_000.json")["restore"])
    label = sitk.ReadImage(str(label_path))
    expected = world_boxes_from_label(label)
    assert sorted(value_of_index[int(c)] for c in content["classes"]) == sorted(expected)
    original = restore.preprocessed_to_original(content["boxes"])
    tolerance = np.asarray(label.GetSpacing()).max() / 2
    for box, index in zip(original, content["classes"]):
        world = box_world_summary(box, restore.geometry)
        low, high = expected[value_of_index[int(index)]]
        np.testing.assert_allclose(world["min"], low, atol=tolerance)
        np.testing.assert_allclose(world["max"], high, atol=tolerance)
    return len(original)


def test_real_ct_boxes_map_back_to_world(roots):
    raw_folder = write_real_ct_dataset(roots["raw"])
    folder = plan_and_preprocess(501, preset="cpu", num_processes=1)
    assert check_roundtrip(raw_folder, folder, raw_folder / "labelsTr" / "real_000.nii.gz") == 41
    content = read_npz(folder / "real_000.npz")
    plans = read_json(folder / "plans.json")
    assert content["image"].shape[0] == 1
    assert all(s <= i for s, i in zip(content["image"].shape[1:], plans["input_size"]))
    assert content["seg"].shape == content["image"].shape[1:]
    assert set(np.unique(content["seg"])) <= set(range(len(plans["classes"]) + 1))


@pytest.mark.parametrize("orientation", ["LPS", "PIL"])
def test_real_ct_reoriented_gives_same_world_boxes(roots, orientation):
    """A reoriented copy (other direction matrix, permuted / flipped array) yields the same world boxes."""
    data = shared_data()
    raw_folder = write_real_ct_dataset(roots["raw"])
    for sub, name, source in (("imagesTr", "real_000_0000.nii.gz", "ct.nii.gz"), ("labelsTr", "real_000.nii.gz", "seg.nii.gz")):
        target = raw_folder / sub / name
        target.unlink()
        sitk.WriteImage(sitk.DICOMOrient(sitk.ReadImage(str(data / source)), orientation), str(target))
    reoriented = sitk.ReadImage(str(raw_folder / "labelsTr" / "real_000.nii.gz"))
    assert reoriented.GetDirection() != sitk.ReadImage(str(data / "seg.nii.gz")).GetDirection()
    folder = plan_and_preprocess(501, preset="cpu", num_processes=1)
    check_roundtrip(raw_folder, folder, raw_folder / "labelsTr" / "real_000.nii.gz")
    # the world boxes of the reoriented case equal those of the original files
    original_world = world_boxes_from_label(sitk.ReadImage(str(data / "seg.nii.gz")))
    reoriented_world = world_boxes_from_label(reoriented)
    for value, (low, high) in original_world.items():
        np.testing.assert_allclose(reoriented_world[value][0], low, atol=1e-3)
        np.testing.assert_allclose(reoriented_world[value][1], high, atol=1e-3)
