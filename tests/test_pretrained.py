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


def user_plans(names: list[str]) -> dict:
    """Plans of a dataset with the classes `names` (atlas rows taken from the packaged model's by name, a new
    class gets the whole body), otherwise the packaged model's."""
    source = json.loads((pretrained_folder(NAME) / "plans.json").read_text())
    plans = json.loads(json.dumps(source))
    by_name = {c["name"]: c["index"] for c in source["classes"]}
    plans["classes"] = [{"index": k + 1, "label_value": k + 1, "name": name} for k, name in enumerate(names)]
    atlas = plans["atlas"]
    for key in ("median", "low", "high"):
        atlas[key] = [source["atlas"][key][by_name[n] - 1] if n in by_name else [0.5, 0.5, 0.5, 1.0, 1.0, 1.0] for n in names]
    for key in ("frequency", "cases"):
        atlas[key] = [source["atlas"][key][by_name[n] - 1] if n in by_name else 0 for n in names]
    plans["network"]["num_queries"] = 10 * len(names)
    return plans


def test_classes_are_matched_by_name_and_new_ones_start_fresh() -> None:
    import torch

    from autodetr.detector import build_detector
    from autodetr.training.pretrained_start import plans_from_source, transfer_weights

    source_plans = json.loads((pretrained_folder(NAME) / "plans.json").read_text())
    source_state = torch.load(pretrained_folder(NAME) / "checkpoint_final.pt", weights_only=True)["model"]
    plans = plans_from_source(user_plans(["spleen", "liver", "portal_vein"]), source_plans)
    torch.manual_seed(0)
    network = build_detector(plans, "dqm")
    fresh = {k: v.clone() for k, v in network.state_dict().items()}
    counts = transfer_weights(network, source_state, plans, source_plans)
    assert counts["class_mapped"] >= 4 and counts["copied"] > 50
    state = network.state_dict()
    seg = "fine_segmentation.classifier.weight"
    index = {c["name"]: c["index"] for c in source_plans["classes"]}
    spleen, liver = index["spleen"], index["liver"]
    assert torch.equal(state[seg][1], source_state[seg][spleen].float())  # user class 1 = spleen
    assert torch.equal(state[seg][2], source_state[seg][liver].float())
    assert torch.equal(state[seg][0], source_state[seg][0].float())  # background
    assert torch.equal(state[seg][3], fresh[seg][3])  # portal_vein: the model lacks it, fresh weights
    queries = "decoder.query_content.weight"  # query k: class k mod 3 + 1, slot k // 3
    assert torch.equal(state[queries][3 + 1], source_state[queries][15 + liver - 1].float())  # liver, slot 1
    assert torch.equal(state[queries][2], fresh[queries][2])
    assert torch.equal(state["decoder.anchors"], fresh["decoder.anchors"])  # anchors from the user's atlas


def test_a_dataset_sharing_no_class_with_the_model_is_refused() -> None:
    from autodetr.training.pretrained_start import class_mapping

    source_plans = json.loads((pretrained_folder(NAME) / "plans.json").read_text())
    with pytest.raises(InputError, match="shares no class with the pretrained model"):
        class_mapping(user_plans(["left_lung", "heart"]), source_plans)


def test_fine_tuning_two_steps_from_the_packaged_model(roots) -> None:
    """`autodetr_train DATASET 0 --pretrained phantom-abdomen` on a tiny phantom dataset: the weights start at
    the packaged ones and move, the classes' heads stay the packaged model's to within a few steps' change."""
    import torch

    from autodetr.phantom.generator import make_phantom_dataset
    from autodetr.planners.plan_and_preprocess_api import plan_and_preprocess
    from autodetr.training.train_api import train

    make_phantom_dataset(roots["raw"], dataset_id=591, num_cases=3, num_test_cases=0, size="small", seed=4)
    plan_and_preprocess(591, preset="cpu", num_processes=1, input_size=[32, 32, 32])
    fold = train(591, 0, epochs=1, iterations_per_epoch=2, num_workers=0, progress_bar=False, pretrained=NAME)
    source = torch.load(pretrained_folder(NAME) / "checkpoint_final.pt", weights_only=True)["model"]
    tuned = torch.load(fold / "checkpoint_final.pt", weights_only=True)["model"]
    assert json.loads((fold / "arguments.json").read_text())["pretrained_start"] == NAME
    moved = [k for k in tuned if k in source and tuned[k].is_floating_point()
             and not torch.allclose(tuned[k].float(), source[k].float(), atol=1e-3)]
    assert moved  # training changed the weights
    seg = "fine_segmentation.classifier.weight"  # the same 15 classes in the same order: heads kept
    assert (tuned[seg].float() - source[seg].float()).abs().max() < 0.05
    assert "started from" in (fold / "training_log.txt").read_text()
