"""The packaged model: organ boxes right after installation, with no training and no download."""
from __future__ import annotations

import json

import numpy as np
import pytest

from autodetr.boxes import box_iou
from autodetr.errors import InputError
from autodetr.inference.entrypoints import main as predict_main
from autodetr.phantom.generator import TEST_INDEX_OFFSET, generate_case, write_case
from autodetr.pretrained import available_models, pretrained_folder

NAME = "phantom-abdomen"
LARGE_ORGANS = ("liver", "spleen", "stomach")


def run_predict(argv: list[str]) -> int:
    """`autodetr_predict` as a user runs it: its exit code."""
    with pytest.raises(SystemExit) as exit_info:
        predict_main(argv)
    return int(exit_info.value.code or 0)


def test_the_packaged_model_is_small_half_precision_and_names_its_recipe() -> None:
    import torch

    assert NAME in available_models()
    folder = pretrained_folder(NAME)
    size = sum(p.stat().st_size for p in folder.iterdir())
    assert size < 8e6  # a few MB inside the package
    content = torch.load(folder / "checkpoint_final.pt", map_location="cpu", weights_only=True)
    assert all(t.dtype == torch.float16 for t in content["model"].values() if t.is_floating_point())
    record = json.loads((folder / "arguments.json").read_text())["pretrained"]
    assert record["name"] == NAME and record["version"] and "autodetr_demo" in record["recipe"] and record["steps"] > 0
    plans = json.loads((folder / "plans.json").read_text())
    assert plans["orientation"] == "LPS" and len(plans["classes"]) == 15


def test_unknown_pretrained_name_lists_the_available_ones(tmp_path, capsys) -> None:
    with pytest.raises(InputError, match=f"no such packaged model.*{NAME}"):
        pretrained_folder("phantom-thorax")
    assert run_predict(["-i", str(tmp_path), "-o", str(tmp_path / "out"), "--pretrained", "nope"]) == 2
    assert "available: " + NAME in capsys.readouterr().err


def test_the_packaged_model_finds_the_large_organs_of_a_new_phantom(tmp_path) -> None:
    """A held-out realistic phantom (an index no training set holds), predicted as a user would right after
    installing: the liver, spleen and stomach each inside their true box at IoU >= 0.5."""
    case = generate_case(TEST_INDEX_OFFSET + 3, seed=21, size="full")
    image = tmp_path / "scan_0000.nii.gz"
    write_case(case, image, tmp_path / "label.nii.gz")
    assert run_predict(["-i", str(image), "-o", str(tmp_path / "out"), "--pretrained", NAME, "-np", "1",
                        "--no-progress"]) == 0
    prediction = json.loads((tmp_path / "out" / "scan.json").read_text())
    assert prediction["pretrained"]["name"] == NAME  # the prediction names the model that made it
    best: dict[str, dict] = {}
    for detection in prediction["detections"]:  # written in descending score order
        best.setdefault(detection["class_name"], detection)
    for organ in LARGE_ORGANS:
        truth = np.asarray(case.placed_boxes[organ], float)[None]
        iou = float(box_iou(truth, np.asarray(best[organ]["box_voxel"], float)[None])[0, 0])
        assert iou >= 0.5, (organ, iou)
