"""Training and evaluation read a dataset's classes and label maps the same way, in every dataset.json form,
so a label value means one organ to the plan and to the evaluator."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from autodetr.errors import InputError
from autodetr.preprocessing.ground_truth import read_dataset_classes, read_ground_truth_case
from autodetr.preprocessing.raw_dataset import RawCase, organ_classes, read_case

FORMS = {
    "nnunetv2": ({"background": 0, "liver": 1, "kidney": 3}, False),
    "value_to_name": ({"0": "background", "1": "liver", "3": "kidney"}, False),
    "nndetection": ({"0": "liver", "1": "kidney"}, True),
}


def write_volume(path: Path, array: np.ndarray) -> Path:
    sitk.WriteImage(sitk.GetImageFromArray(array), str(path))
    return path


def instance_case(folder: Path, instances: dict[str, int]) -> RawCase:
    """A case whose label map holds instances 1 and 2 and whose `<case>.json` gives their classes."""
    folder.mkdir(parents=True, exist_ok=True)
    label_map = np.zeros((6, 8, 10), dtype=np.int16)
    label_map[1:3, 1:4, 1:5] = 1
    label_map[3:6, 4:8, 5:9] = 2
    image = write_volume(folder / "c1_0000.nii.gz", np.zeros(label_map.shape, dtype=np.int16))
    label = write_volume(folder / "c1.nii.gz", label_map)
    (folder / "c1.json").write_text(json.dumps({"instances": instances}))
    return RawCase("c1", [image], label, folder / "c1.json")


@pytest.mark.parametrize("form", sorted(FORMS))
def test_plan_and_evaluator_give_each_name_the_same_label_value(tmp_path: Path, form: str) -> None:
    labels, instance_form = FORMS[form]
    path = tmp_path / "dataset.json"
    path.write_text(json.dumps({"labels": labels}))
    planned = {c.label_value: c.name for c in organ_classes({"labels": labels}, instance_form)}
    evaluated = read_dataset_classes(path)
    assert planned == evaluated.names and evaluated.style == form
    assert 0 not in planned                                      # background is never a class


@pytest.mark.parametrize("form", ["nnunetv2", "nndetection"])
def test_instance_boxes_get_the_same_labels_for_training_and_evaluation(tmp_path: Path, form: str) -> None:
    labels, _ = FORMS[form]
    (tmp_path / "dataset.json").write_text(json.dumps({"labels": labels}))
    case = instance_case(tmp_path / "labelsTr", {"1": 1, "2": 0})  # instance 1 is the kidney, 2 the liver
    classes = organ_classes({"labels": labels}, instance_form=True)
    training = read_case(case, classes)
    evaluated = read_dataset_classes(tmp_path / "dataset.json")
    boxes, values, _, _ = read_ground_truth_case(case.label_file, evaluated)
    value_of = {c.name: c.label_value for c in classes}
    kidney = value_of["kidney"]
    assert training.box_label_values.tolist() == values.tolist() == [kidney, value_of["liver"]]
    np.testing.assert_array_equal(training.boxes, boxes)
    # evaluating only the kidney keeps the kidney box: class index 1 still means the second declared class
    kidney_only = evaluated.restrict(["kidney"])
    _, values, _, _ = read_ground_truth_case(case.label_file, kidney_only, declared=evaluated.values)
    assert values.tolist() == [kidney]


def test_training_reader_refuses_a_non_integer_label_map(tmp_path: Path) -> None:
    image = write_volume(tmp_path / "c1_0000.nii.gz", np.zeros((4, 4, 4), dtype=np.int16))
    label_map = np.zeros((4, 4, 4), dtype=np.float32)
    label_map[1:3, 1:3, 1:3] = 1.5
    label = write_volume(tmp_path / "c1.nii.gz", label_map)
    classes = organ_classes({"labels": {"background": 0, "liver": 1}}, instance_form=False)
    with pytest.raises(InputError, match=r"c1\.nii\.gz: label map has non-integer values"):
        read_case(RawCase("c1", [image], label, None), classes)
