"""Box-only datasets: `autodetr_masks_to_boxes`, box-file validation, and a box-only phantom that plans,
preprocesses (boxes mapped as mask boxes are), trains a few steps and evaluates."""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

sys.path.insert(0, str(Path(__file__).parent))
import helpers_pipeline  # noqa: E402

MASK_ID, BOX_ID = 593, 594


def run_cli(entry, argv: list[str]) -> int:
    with pytest.raises(SystemExit) as exit_:
        entry(argv)
    return exit_.value.code


@pytest.fixture(scope="module")
def datasets(tmp_path_factory) -> dict:
    """A tiny phantom (label maps) and its box-only copy made by autodetr_masks_to_boxes."""
    from autodetr.phantom.generator import make_phantom_dataset
    from autodetr.preprocessing.entrypoints import masks_to_boxes_entry

    base = Path(tmp_path_factory.mktemp("boxes"))
    roots = {kind: base / kind for kind in ("raw", "preprocessed", "results")}
    for folder in roots.values():
        folder.mkdir()
    masks = make_phantom_dataset(roots["raw"], dataset_id=MASK_ID, num_cases=4, num_test_cases=0, size="small", seed=3)
    boxes = roots["raw"] / f"Dataset{BOX_ID}_PhantomBoxes"
    assert run_cli(masks_to_boxes_entry, ["-i", str(masks), "-o", str(boxes), "--with-images", "--slicer"]) == 0
    return {"roots": roots, "masks": masks, "boxes": boxes}


def test_converter_writes_the_label_maps_boxes(datasets):
    from autodetr.boxes import boxes_from_label_map
    from autodetr.evaluation.api import voxel_boxes_to_world

    masks, boxes = datasets["masks"], datasets["boxes"]
    names = {value: name for name, value in json.loads((masks / "dataset.json").read_text())["labels"].items()}
    assert json.loads((boxes / "dataset.json").read_text())["labels"] == json.loads((masks / "dataset.json").read_text())["labels"]
    label_maps = sorted((masks / "labelsTr").glob("*.nii.gz"))
    assert len(label_maps) == 4 and len(list((boxes / "imagesTr").glob("*_0000.nii.gz"))) == 4
    for label_file in label_maps:
        case = label_file.name[: -len(".nii.gz")]
        image = sitk.ReadImage(str(label_file))
        expected, values = boxes_from_label_map(sitk.GetArrayFromImage(image))
        content = json.loads((boxes / "labelsTr" / f"{case}.json").read_text())
        assert [b["class"] for b in content["boxes"]] == [names[int(v)] for v in values]
        np.testing.assert_array_equal([b["box_voxel"] for b in content["boxes"]], expected)
        world = voxel_boxes_to_world(expected, image.GetSpacing()[::-1], image.GetOrigin(), image.GetDirection())
        np.testing.assert_allclose([b["box_world_mm"]["min"] for b in content["boxes"]], world.min(axis=1), atol=1e-9)
        np.testing.assert_allclose([b["box_world_mm"]["max"] for b in content["boxes"]], world.max(axis=1), atol=1e-9)
        markups = json.loads((boxes / "labelsTr" / f"{case}.mrk.json").read_text())["markups"]
        assert [m["name"] for m in markups] == [b["class"] for b in content["boxes"]]


def test_converter_help_explains_every_flag(capsys):
    from autodetr.preprocessing.entrypoints import build_masks_to_boxes_parser

    parser = build_masks_to_boxes_parser()
    assert all(action.help for action in parser._actions)
    assert run_cli(parser.parse_args, ["--help"]) == 0
    assert "--with-images" in capsys.readouterr().out


def test_world_boxes_map_back_onto_voxel_boxes_for_a_flipped_rotated_direction():
    from autodetr.evaluation.api import voxel_boxes_to_world
    from autodetr.preprocessing.box_files import world_box_to_voxel

    direction = [0.0, 0.0, -1.0, -1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    box = np.array([2.0, 3.0, 4.0, 9.0, 11.0, 7.0])
    spacing, origin = [2.5, 1.3, 0.8], [-40.0, 17.5, 103.0]
    corners = voxel_boxes_to_world(box, spacing, origin, direction)[0]
    np.testing.assert_allclose(world_box_to_voxel(corners.min(0), corners.max(0), spacing, origin, direction), box, atol=1e-9)


def box_dataset_copy(datasets: dict, tmp_path: Path, dataset_id: int) -> Path:
    folder = tmp_path / "raw" / f"Dataset{dataset_id}_Broken"
    shutil.copytree(datasets["boxes"], folder)
    return folder


@pytest.mark.parametrize("problem, expected", [
    ("negative", "negative or zero size"),
    ("unknown", "unknown class 'tumour'"),
    ("outside", "outside the image"),
    ("world_outside", "outside the image"),
    ("not_boxes", "not a box file"),
])
def test_a_wrong_box_file_is_refused_with_one_line_naming_it(datasets, tmp_path, monkeypatch, capsys, problem, expected):
    from autodetr.planners.entrypoints import plan_and_preprocess_entry

    (tmp_path / "raw").mkdir()
    monkeypatch.setenv("AUTODETR_raw", str(tmp_path / "raw"))
    monkeypatch.setenv("AUTODETR_preprocessed", str(tmp_path / "preprocessed"))
    folder = box_dataset_copy(datasets, tmp_path, 595)
    broken = sorted((folder / "labelsTr").glob("*[0-9].json"))[1]
    content = json.loads(broken.read_text())
    box = content["boxes"][0]
    if problem == "negative":
        box["box_voxel"][3] = box["box_voxel"][0] - 2
    elif problem == "unknown":
        box["class"] = "tumour"
    elif problem == "outside":
        box["box_voxel"][5] = 10_000
    elif problem == "world_outside":
        del box["box_voxel"]
        box["box_world_mm"]["max"][0] += 5000.0
    else:
        content = {"instances": {"1": 0}}
    broken.write_text(json.dumps(content))
    code = run_cli(plan_and_preprocess_entry, ["-d", "595", "-np", "1", "--preset", "cpu", "--no-preprocess"])
    error = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert code == 2
    assert len(error) == 1 and str(broken) in error[0] and expected in error[0], error
    assert not (tmp_path / "preprocessed" / folder.name / "dataset_fingerprint.json").exists()


def test_a_dataset_mixing_label_maps_and_box_files_is_refused(datasets, tmp_path, monkeypatch, capsys):
    from autodetr.evaluation.entrypoints import main as evaluate_main
    from autodetr.planners.entrypoints import plan_and_preprocess_entry

    (tmp_path / "raw").mkdir()
    monkeypatch.setenv("AUTODETR_raw", str(tmp_path / "raw"))
    monkeypatch.setenv("AUTODETR_preprocessed", str(tmp_path / "preprocessed"))
    folder = box_dataset_copy(datasets, tmp_path, 596)
    case = sorted((folder / "labelsTr").glob("*[0-9].json"))[0].name[: -len(".json")]
    (folder / "labelsTr" / f"{case}.json").unlink()
    shutil.copy(datasets["masks"] / "labelsTr" / f"{case}.nii.gz", folder / "labelsTr" / f"{case}.nii.gz")
    assert run_cli(plan_and_preprocess_entry, ["-d", "596", "-np", "1", "--preset", "cpu", "--no-preprocess"]) == 2
    error = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(error) == 1 and "mixes label maps (1," in error[0] and "box files (3," in error[0], error
    assert str(folder / "labelsTr") in error[0]
    predictions = tmp_path / "predictions"
    predictions.mkdir()
    assert run_cli(evaluate_main, ["-p", str(predictions), "-g", str(folder)]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_box_only_dataset_plans_preprocesses_trains_and_evaluates(datasets, monkeypatch):
    from autodetr.atomic_io import read_json
    from autodetr.evaluation.api import evaluate_folder
    from autodetr.evaluation.entrypoints import main as evaluate_main

    roots = datasets["roots"]
    with helpers_pipeline.environment(roots):
        mask_plans = helpers_pipeline.tiny_plan(MASK_ID)
        box_plans = helpers_pipeline.tiny_plan(BOX_ID)
        plans = read_json(box_plans / "plans.json")
        mask_loss = read_json(mask_plans / "plans.json")["loss"]
        # the segmentation head learns from the boxes, at the weight it has with masks
        assert plans["loss"]["seg"] == mask_loss["seg"] > 0
        assert plans["loss"]["seg_supervision"] == "boxes" and mask_loss["seg_supervision"] == "masks"
        assert "box files" in plans["decisions"]["loss.seg_supervision"]
        for key in ("spacing", "input_size", "classes", "transpose_forward"):
            assert plans[key] == read_json(mask_plans / "plans.json")[key]
        cases = sorted(p.name for p in box_plans.glob("*.npz"))
        assert len(cases) == 4
        for name in cases:
            with np.load(box_plans / name) as box_case, np.load(mask_plans / name) as mask_case:
                # the boxes are mapped into preprocessed voxels exactly as the label maps' boxes are
                np.testing.assert_allclose(box_case["boxes"], mask_case["boxes"], atol=1e-4)
                np.testing.assert_array_equal(box_case["classes"], mask_case["classes"])
                assert box_case["image"].shape == mask_case["image"].shape
                # the seg holds the boxes drawn as class regions: its boxes are the target boxes
                from autodetr.boxes import boxes_from_label_map

                seg_boxes, seg_classes = boxes_from_label_map(box_case["seg"])
                assert sorted(seg_classes.tolist()) == sorted(box_case["classes"].tolist())
        fold = helpers_pipeline.train_tiny_folds(BOX_ID, folds=(0,), iterations=2)[0]
        validation = fold / "validation"
        assert sorted(validation.glob("*.json"))
        metrics = evaluate_folder(validation, datasets["boxes"], only_predicted=True)
        reference = evaluate_folder(validation, datasets["masks"], only_predicted=True)
        assert metrics["num_gt"] == reference["num_gt"] > 0
        assert metrics["mAP"] == pytest.approx(reference["mAP"])
        assert run_cli(evaluate_main, ["-p", str(validation), "-g", str(datasets["boxes"]), "-o",
                                       str(roots["results"] / "box_eval"), "--only-predicted"]) == 0
        assert (roots["results"] / "box_eval" / "metrics.json").is_file()
