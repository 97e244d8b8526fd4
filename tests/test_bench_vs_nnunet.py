"""The reusable pieces of benchmarks/bench_vs_nnunet.py on tiny cases: nnU-Net raw-folder conversion, predicted
masks -> autodetr prediction files (evaluated by autodetr's evaluation), the budget trainer's installation,
measured subprocesses and the comparison table. The comparison itself is a benchmark, not a test."""
from __future__ import annotations

import ast
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import bench_vs_nnunet  # noqa: E402
import nnunet_peer  # noqa: E402

from autodetr.evaluation.api import evaluate_folder, load_prediction  # noqa: E402

LABELS = {"background": 0, "liver": 1, "spleen": 2, "kidney_left": 3}


def write_image(path: Path, array: np.ndarray, spacing_xyz=(0.8, 0.7, 2.5), origin=(-10.0, 5.0, 30.0)) -> sitk.Image:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing_xyz)
    image.SetOrigin(origin)
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path))
    return image


def tiny_label_map() -> np.ndarray:
    """[D, H, W] = [6, 10, 8]: liver in z 1..3, y 2..5, x 0..3; kidney_left in z 4, y 7..8, x 5..7; no spleen."""
    label_map = np.zeros((6, 10, 8), dtype=np.uint8)
    label_map[1:4, 2:6, 0:4] = 1
    label_map[4, 7:9, 5:8] = 3
    return label_map


def tiny_raw_dataset(root: Path) -> Path:
    folder = root / "Dataset500_Phantom"
    label_map = tiny_label_map()
    for split, case in (("Tr", "phantom_000"), ("Ts", "phantom_test_000")):
        write_image(folder / f"images{split}" / f"{case}_0000.nii.gz", label_map.astype(np.int16) * 100)
        write_image(folder / f"labels{split}" / f"{case}.nii.gz", label_map)
    dataset_json = {"channel_names": {"0": "CT"}, "labels": LABELS, "numTraining": 1, "file_ending": ".nii.gz",
                    "name": "Phantom", "phantom": {"seed": 0, "size": "small"}, "numTest": 0}
    (folder / "dataset.json").write_text(json.dumps(dataset_json))
    return folder


def test_convert_raw_dataset_links_training_folders_and_reduces_dataset_json(tmp_path: Path) -> None:
    source = tiny_raw_dataset(tmp_path / "raw")
    target = nnunet_peer.convert_raw_dataset(source, tmp_path / "nnunet" / "raw")
    assert target == tmp_path / "nnunet" / "raw" / "Dataset500_Phantom"
    assert (target / "imagesTr").is_symlink() and (target / "imagesTr" / "phantom_000_0000.nii.gz").is_file()
    assert (target / "labelsTr" / "phantom_000.nii.gz").is_file()
    assert not (target / "imagesTs").exists() and not (target / "labelsTs").exists()
    content = json.loads((target / "dataset.json").read_text())
    assert content == {"channel_names": {"0": "CT"}, "labels": LABELS, "numTraining": 1, "file_ending": ".nii.gz",
                       "name": "Phantom"}
    assert nnunet_peer.convert_raw_dataset(source, tmp_path / "nnunet" / "raw") == target   # a rerun is fine


def test_predicted_masks_become_prediction_files_that_evaluate_perfectly(tmp_path: Path) -> None:
    dataset = tiny_raw_dataset(tmp_path / "raw")
    masks = tmp_path / "masks"
    write_image(masks / "phantom_test_000.nii.gz", tiny_label_map())
    written = nnunet_peer.masks_to_predictions(masks, tmp_path / "predictions", dataset / "dataset.json")
    assert written == {"phantom_test_000": 2}
    content = load_prediction(tmp_path / "predictions" / "phantom_test_000.json")
    by_class = {d["class_name"]: d for d in content["detections"]}
    assert set(by_class) == {"liver", "kidney_left"}
    assert by_class["liver"]["box_voxel"] == [1, 2, 0, 4, 6, 4]            # half-open voxel corners (z, y, x)
    assert by_class["kidney_left"]["box_voxel"] == [4, 7, 5, 5, 9, 8]
    assert by_class["liver"]["label_value"] == 1 and by_class["liver"]["score"] == 1.0
    assert content["image_shape"] == [6, 10, 8] and content["spacing"] == pytest.approx([2.5, 0.7, 0.8])
    # world corners: outer voxel edges; x from -10 - 0.5 * 0.8 to -10 + 3.5 * 0.8
    assert by_class["liver"]["box_world_mm"]["min"] == pytest.approx([-10.4, 5.0 + 1.5 * 0.7, 30.0 + 0.5 * 2.5])
    assert content["score"] == "1" and content["mask"] == "phantom_test_000.nii.gz"

    metrics = evaluate_folder(tmp_path / "predictions", dataset)          # picks labelsTs (the predicted case)
    assert metrics["mAP"] == pytest.approx(1.0) and metrics["mAR"] == pytest.approx(1.0)
    assert metrics["per_class"]["spleen"]["AP"] == -1                      # no ground truth, no detection


def test_mean_probability_scores_from_nnunet_probabilities(tmp_path: Path) -> None:
    label_map = tiny_label_map().astype(np.int64)
    probabilities = np.zeros((4,) + label_map.shape, dtype=np.float32)
    probabilities[1][label_map == 1] = 0.8
    probabilities[3][label_map == 3] = 0.5
    probabilities[3][4, 7, 5] = 0.2                                        # one kidney voxel less sure
    scores = nnunet_peer.mean_probability_scores(label_map, probabilities, [1, 3])
    assert scores == pytest.approx([0.8, (0.5 * 5 + 0.2) / 6])
    assert nnunet_peer.mean_probability_scores(label_map, probabilities, [2]) == pytest.approx([0.0])

    dataset = tiny_raw_dataset(tmp_path / "raw")
    masks = tmp_path / "masks"
    write_image(masks / "phantom_test_000.nii.gz", tiny_label_map())
    np.savez_compressed(masks / "phantom_test_000.npz", probabilities=probabilities)
    nnunet_peer.masks_to_predictions(masks, tmp_path / "predictions", dataset / "dataset.json", with_probabilities=True)
    content = load_prediction(tmp_path / "predictions" / "phantom_test_000.json")
    assert {d["class_name"]: d["score"] for d in content["detections"]} == pytest.approx(
        {"liver": 0.8, "kidney_left": (0.5 * 5 + 0.2) / 6})
    assert content["score"] == "mean probability"


def test_no_masks_is_an_error(tmp_path: Path) -> None:
    dataset = tiny_raw_dataset(tmp_path / "raw")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no predicted masks"):
        nnunet_peer.masks_to_predictions(tmp_path / "empty", tmp_path / "predictions", dataset / "dataset.json")


def test_autodetr_spacing_in_nnunet_order() -> None:
    plans = {"spacing": [4.9, 1.5, 2.0], "transpose_forward": [0, 2, 1], "transpose_backward": [0, 2, 1]}
    assert nnunet_peer.nnunet_spacing(plans) == [4.9, 2.0, 1.5]
    assert nnunet_peer.nnunet_spacing({"spacing": [3.0, 2.0, 1.0]}) == [3.0, 2.0, 1.0]


def test_nnunet_environment_points_inside_the_work_folder(tmp_path: Path) -> None:
    env = nnunet_peer.nnunet_environment(tmp_path / "nnunet", 2.5, threads=1, workers=0, base={"PATH": "/bin"})
    assert env["nnUNet_raw"] == str(tmp_path / "nnunet" / "raw")
    assert env["nnUNet_preprocessed"] == str(tmp_path / "nnunet" / "preprocessed")
    assert env["nnUNet_results"] == str(tmp_path / "nnunet" / "results")
    assert env["nnUNetTrainerBudget_minutes"] == "2.5" and env["nnUNetTrainerBudget_threads"] == "1"
    assert env["nnUNet_n_proc_DA"] == "0" and env["PATH"] == "/bin"
    assert nnunet_peer.model_folder(nnunet_peer.nnunet_roots(tmp_path), "Dataset500_Phantom", "autodetr_spacing") == (
        tmp_path / "results" / "Dataset500_Phantom" / "nnUNetTrainerBudget__nnUNetPlans_autodetrSpacing__3d_fullres"
        / "fold_all")


def test_budget_trainer_is_installed_at_the_top_of_nnunets_trainer_folder(tmp_path: Path) -> None:
    source = nnunet_peer.TRAINER_SOURCE.read_text()
    tree = ast.parse(source)
    classes = {node.name: [ast.unparse(b) for b in node.bases] for node in tree.body if isinstance(node, ast.ClassDef)}
    assert classes == {nnunet_peer.TRAINER_NAME: ["nnUNetTrainer"]}
    for name in (nnunet_peer.BUDGET_ENVIRONMENT, nnunet_peer.THREADS_ENVIRONMENT, nnunet_peer.SUMMARY_FILE):
        assert f'"{name}"' in source
    assert (nnunet_peer.nnunet_trainer_folder() / "nnUNetTrainer.py").is_file()

    folder = tmp_path / "nnUNetTrainer"
    with pytest.raises(FileNotFoundError, match="not nnU-Net's trainer folder"):
        nnunet_peer.install_trainer(tmp_path)
    folder.mkdir()
    (folder / "nnUNetTrainer.py").write_text("")
    path, written = nnunet_peer.install_trainer(folder)
    assert (path, written) == (folder / "nnUNetTrainerBudget.py", True) and path.read_text() == source
    assert nnunet_peer.install_trainer(folder) == (path, False)            # identical: left alone
    path.write_text("# older version\n")
    assert nnunet_peer.install_trainer(folder) == (path, True) and path.read_text() == source
    assert sorted(p.name for p in folder.iterdir()) == ["nnUNetTrainer.py", "nnUNetTrainerBudget.py"]


def test_run_measured_reports_time_memory_and_failures(tmp_path: Path) -> None:
    figures = nnunet_peer.run_measured([sys.executable, "-c", "x = bytearray(80_000_000); print('done')"], {},
                                       tmp_path / "logs" / "ok.log", interval_s=0.05)
    assert figures["wall_s"] >= 0 and figures["peak_rss_mb"] >= 75
    assert "done" in (tmp_path / "logs" / "ok.log").read_text()
    with pytest.raises(nnunet_peer.StageError, match=r"exited with 3[\s\S]*going down"):
        nnunet_peer.run_measured(["sh", "-c", "echo going down; exit 3"], {"PATH": "/bin:/usr/bin"},
                                 tmp_path / "logs" / "bad.log")


def test_comparison_table_one_column_per_tool() -> None:
    tools = {
        "autodetr": {"configuration": "dqm, input 96x64x96", "error": None,
                     "metrics": {"mAP": 0.0512, "mAR": 0.08, "AP50": 0.2, "AP75": 0.0,
                                 "per_class": {"liver": {"AP": 0.25, "AP50": 0.9, "AR": 0.3},
                                               "spleen": {"AP": -1.0, "AP50": -1.0, "AR": -1.0}}},
                     "training": {"steps": 1446, "iterations_per_second": 1.234},
                     "stages": {"train": {"wall_s": 1210.04, "peak_rss_mb": 1440.2, "peak_tree_rss_mb": 2001.0},
                                "evaluate": {"wall_s": 0.93}}},
        "nnU-Net v2": {"configuration": None, "stages": {}, "training": {}, "metrics": None,
                       "error": "nnUNetv2_train exited with 1 after 3.0 s (log x):\nTraceback ..."},
    }
    header, rows = nnunet_peer.comparison_rows(tools)
    assert header == ["measure", "autodetr", "nnU-Net v2"]
    table = dict((row[0], row[1:]) for row in rows)
    assert table["mAP"] == [0.0512, None] and table["training steps"] == [1446, None]
    assert table["liver AP / AP50 / AR"] == ["0.25 / 0.90 / 0.30", None]
    assert table["spleen AP / AP50 / AR"] == ["no GT / no GT / no GT", None]
    assert table["train peak MB (process / tree)"] == ["1440 / 2001", None]
    assert table["evaluate s"] == ["0.9", "-"] and "evaluate peak MB (process / tree)" not in table   # in-process
    assert table["error"] == [None, "nnUNetv2_train exited with 1 after 3.0 s (log x):"]
    text = nnunet_peer.comparison_table(tools).splitlines()
    assert text[0].split() == ["measure", "autodetr", "nnU-Net", "v2"]
    assert set(text[1]) == {"-", " "}
    mean_line = next(line for line in text if line.startswith("mAP "))
    assert mean_line.split() == ["mAP", "0.051", "-"]
    assert next(line for line in text if line.startswith("train s")).split() == ["train", "s", "1210.0", "-"]
    widths = {len(line) for line in text[2:] if not line.startswith(("configuration", "error"))}
    assert max(widths) <= len(text[1])


def test_command_line_defaults_and_refusals() -> None:
    args = bench_vs_nnunet.parse_arguments([])
    assert (args.minutes, args.num_cases, args.num_test_cases, args.size) == (20.0, 20, 5, "full")
    assert args.tool_names == ["autodetr", "nnunet"] and args.nnunet_configuration == "autodetr_spacing"
    assert args.work.is_absolute()
    for bad in (["--tools", "yolo"], ["--minutes", "0"], ["--num-test-cases", "0"]):
        with pytest.raises(SystemExit):
            bench_vs_nnunet.parse_arguments(bad)
