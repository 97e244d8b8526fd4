"""The pieces of benchmarks/bench_vs_retinanet.py that are ours, on tiny cases: the box convention between
MONAI (`xyzxyz`) and autodetr (`z1, y1, x1, z2, y2, x2`), anchor shapes from k-means, one box per class, the
held-out cases preprocessed as autodetr_predict does, the peer's raw boxes written as prediction files (a
perfect peer scores AP 1 with autodetr's evaluation), and the shared benchmark loop. Nothing here needs MONAI;
the two tests that run MONAI (its own box semantics, and the peer script end to end) use the peer's virtual
environment (benchmarks/peers/setup_retinanet.sh) and skip when it is absent, as in CI. The comparison
itself is a benchmark, not a test."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from helpers_pipeline import trained_pipeline

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import bench_vs_nnunet  # noqa: E402
import bench_vs_retinanet  # noqa: E402
import retinanet_peer  # noqa: E402

from autodetr.boxes import boxes_from_label_map  # noqa: E402
from autodetr.errors import InputError  # noqa: E402
from autodetr.evaluation.api import evaluate_folder, load_prediction  # noqa: E402
from autodetr.preprocessing.restore import RestoreInfo  # noqa: E402

#: The peer's Python: $AUTODETR_RETINANET_PYTHON, else the environment setup_retinanet.sh makes.
PEER_PYTHON = Path(os.environ.get("AUTODETR_RETINANET_PYTHON", retinanet_peer.DEFAULT_PEER_PYTHON))


def peer_python() -> Path:
    """The peer environment's Python with MONAI's detection importable; skips the test otherwise."""
    if not PEER_PYTHON.is_file():
        pytest.skip(f"no RetinaNet peer environment at {PEER_PYTHON} (bash benchmarks/peers/setup_retinanet.sh); "
                    "MONAI is not installed in CI")
    probe = subprocess.run([str(PEER_PYTHON), "-c", "import monai.apps.detection.networks.retinanet_detector"],
                           capture_output=True, text=True, timeout=300)
    if probe.returncode != 0:
        pytest.skip(f"{PEER_PYTHON} cannot import MONAI's detection: {probe.stderr.strip()[-200:]}")
    return PEER_PYTHON


# ----------------------------------------------------------------------------------------------------
# box convention

def test_monai_boxes_are_autodetrs_numbers_in_the_same_order() -> None:
    autodetr_box = [[1.0, 2.0, 3.5, 4.0, 7.0, 9.25], [0.0, 0.0, 0.0, 5.0, 6.0, 7.0]]
    monai = retinanet_peer.autodetr_to_monai(autodetr_box)
    assert monai.dtype == np.float32 and monai.shape == (2, 6)
    np.testing.assert_array_equal(monai, np.asarray(autodetr_box, dtype=np.float32))   # x of xyzxyz = array axis 0
    np.testing.assert_array_equal(retinanet_peer.monai_to_autodetr(monai), autodetr_box)
    assert retinanet_peer.autodetr_to_monai([]).shape == (0, 6)
    assert retinanet_peer.monai_to_autodetr([2, 3, 4, 5, 6, 7]).shape == (1, 6)

    # MONAI's convert_box_to_mask fills mask[x1:x2, y1:y2, z1:z2] of a [D, H, W] array (its documented
    # semantics, checked against MONAI itself below); autodetr reads that mask's box back as the same numbers
    monai_box = np.asarray([1, 2, 0, 3, 5, 4])
    mask = np.zeros((4, 6, 5), dtype=np.uint8)
    mask[monai_box[0]:monai_box[3], monai_box[1]:monai_box[4], monai_box[2]:monai_box[5]] = 1
    boxes, values = boxes_from_label_map(mask, [1])
    np.testing.assert_array_equal(boxes[0], retinanet_peer.monai_to_autodetr(monai_box)[0])


def test_the_convention_is_monais_own() -> None:
    """MONAI's own code: its box mask and its anchor grid put box coordinate k along array axis k."""
    python = peer_python()
    script = (
        "import json, sys, torch\n"
        "from monai.apps.detection.transforms.box_ops import convert_box_to_mask\n"
        "from monai.apps.detection.utils.anchor_utils import AnchorGeneratorWithAnchorShape\n"
        "box, shape = json.loads(sys.argv[1]), json.loads(sys.argv[2])\n"
        "mask = convert_box_to_mask(torch.tensor([box]), torch.tensor([1]), shape, bg_label=0)[0]\n"
        "generator = AnchorGeneratorWithAnchorShape(feature_map_scales=[1], base_anchor_shapes=[[2, 2, 2]])\n"
        "anchors = generator(torch.zeros(1, 1, *shape), [torch.zeros(1, 1, *shape)])[0]\n"
        "print(json.dumps({'mask': mask.tolist(), 'anchor_high': anchors[:, 3:].max(0).values.tolist()}))\n"
    )
    autodetr_box, shape = [1.0, 2.0, 0.0, 3.0, 5.0, 4.0], [4, 6, 5]
    monai_box = retinanet_peer.autodetr_to_monai(autodetr_box)[0].tolist()
    done = subprocess.run([str(python), "-c", script, json.dumps(monai_box), json.dumps(shape)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    mask = np.asarray(result["mask"])
    assert mask.shape == tuple(shape)
    boxes, _ = boxes_from_label_map(mask, [1])
    np.testing.assert_array_equal(boxes[0], autodetr_box)
    assert result["anchor_high"] == [float(s) for s in shape]   # anchor centres run over axis k's length


# ----------------------------------------------------------------------------------------------------
# anchors and one box per class

def test_anchor_shapes_are_the_kmeans_centres_of_the_box_sizes() -> None:
    rng = np.random.default_rng(0)
    small = np.exp(np.log([4.0, 6.0, 5.0]) + rng.normal(0, 0.05, (30, 3)))
    long = np.exp(np.log([50.0, 10.0, 9.0]) + rng.normal(0, 0.05, (20, 3)))
    large = np.exp(np.log([28.0, 27.0, 38.0]) + rng.normal(0, 0.05, (10, 3)))
    sizes = np.concatenate([large, small, long])
    centres = retinanet_peer.kmeans_box_shapes(sizes, 3)
    geometric = [np.exp(np.log(group).mean(0)) for group in (small, long, large)]   # ordered by volume
    np.testing.assert_allclose(centres, geometric, rtol=1e-6)
    shapes = retinanet_peer.anchor_base_shapes(sizes, 3, [1, 2, 4])               # middle level = the centres
    np.testing.assert_allclose(shapes, np.asarray(geometric) / 2, atol=0.006)
    assert len(retinanet_peer.kmeans_box_shapes([[3, 3, 3], [3, 3, 3]], 3)) == 1      # one distinct size
    with pytest.raises(ValueError):
        retinanet_peer.kmeans_box_shapes(np.zeros((0, 3)), 3)


def test_highest_box_per_class_keeps_one_box_per_class() -> None:
    boxes = np.arange(5 * 6, dtype=np.float64).reshape(5, 6)
    scores = [0.2, 0.9, 0.5, 0.7, 0.1]
    classes = [3, 1, 3, 1, 2]
    kept_boxes, kept_scores, kept_classes = retinanet_peer.highest_box_per_class(boxes, scores, classes)
    assert kept_classes.tolist() == [1, 2, 3] and kept_scores.tolist() == [0.9, 0.1, 0.5]
    np.testing.assert_array_equal(kept_boxes, boxes[[1, 4, 2]])
    assert retinanet_peer.highest_box_per_class(np.zeros((0, 6)), [], [])[0].shape == (0, 6)
    with pytest.raises(ValueError):
        retinanet_peer.highest_box_per_class(boxes, scores[:4], classes)


# ----------------------------------------------------------------------------------------------------
# held-out cases in, prediction files out

def pipeline_plans(pipeline) -> dict:
    return json.loads((pipeline.roots["preprocessed"] / pipeline.dataset_name / "autodetrPlans" / "plans.json").read_text())


def perfect_raw_predictions(held_out: Path, raw_folder: Path, labels: Path, plans: dict, decoy_first: bool = False) -> dict:
    """What a perfect peer writes: each organ's true box on the preprocessed grid (score 0.9), a shifted decoy
    (0.3; 0.95 with `decoy_first`) and a box of a class the plan does not know (score 1). Returns the true
    original boxes per case, {case: {label value: box}}."""
    index_of = {int(c["label_value"]): int(c["index"]) for c in plans["classes"]}
    truth = {}
    for case_file in sorted(held_out.glob("*.json")):
        case_json = json.loads(case_file.read_text())
        case, restore = case_json["case_id"], RestoreInfo.from_json(case_json["restore"])
        label_map = sitk.GetArrayFromImage(sitk.ReadImage(str(labels / f"{case}.nii.gz")))
        boxes, values = boxes_from_label_map(label_map, sorted(index_of))
        truth[case] = {int(v): b for b, v in zip(boxes, values)}
        on_grid = restore.original_to_preprocessed(boxes)
        decoys = on_grid + np.tile(np.asarray(restore.preprocessed_shape) * 0.3, 2)
        classes = [index_of[int(v)] for v in values]
        raw = {"case": case, "image_shape": restore.preprocessed_shape,
               "boxes": on_grid.tolist() + decoys.tolist() + [on_grid[0].tolist()],
               "scores": [0.9] * len(classes) + [0.95 if decoy_first else 0.3] * len(classes) + [1.0],
               "classes": classes + classes + [len(plans["classes"]) + 7]}
        (raw_folder / f"{case}.json").write_text(json.dumps(raw))
    return truth


def test_held_out_cases_are_preprocessed_as_autodetr_predict_does(tmp_path: Path, tmp_path_factory) -> None:
    from autodetr.inference.inputs import discover_cases, read_input_case
    from autodetr.preprocessing.preprocess_case import preprocess_image

    pipeline = trained_pipeline(tmp_path_factory)
    plans = pipeline_plans(pipeline)
    cases = retinanet_peer.preprocess_held_out(pipeline.raw_folder / "imagesTs", plans, tmp_path / "held_out")
    assert cases == [p.name.removesuffix("_0000.nii.gz") for p in pipeline.test_images]
    first = discover_cases(pipeline.raw_folder / "imagesTs")[0]
    expected = preprocess_image(*read_input_case(first), plans)
    with np.load(tmp_path / "held_out" / f"{first.case_id}.npz", allow_pickle=False) as content:
        assert content.files == ["image"]
        np.testing.assert_array_equal(content["image"], expected.image)
    case_json = json.loads((tmp_path / "held_out" / f"{first.case_id}.json").read_text())
    assert case_json["restore"] == expected.restore.to_json() and case_json["body_found"] is True
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no images"):
        retinanet_peer.preprocess_held_out(tmp_path / "empty", plans, tmp_path / "nothing")


def test_perfect_peer_boxes_become_prediction_files_that_score_ap_1(tmp_path: Path, tmp_path_factory) -> None:
    pipeline = trained_pipeline(tmp_path_factory)
    plans = pipeline_plans(pipeline)
    held_out, raw, predictions = tmp_path / "held_out", tmp_path / "raw", tmp_path / "predictions"
    retinanet_peer.preprocess_held_out(pipeline.raw_folder / "imagesTs", plans, held_out)
    raw.mkdir()
    truth = perfect_raw_predictions(held_out, raw, pipeline.raw_folder / "labelsTs", plans)
    written = retinanet_peer.raw_to_prediction_files(raw, held_out, plans, predictions)
    assert written == {case: len(boxes) for case, boxes in truth.items()} and min(written.values()) >= 3
    for case, boxes in truth.items():
        content = load_prediction(predictions / f"{case}.json")
        assert sorted(content["label_values"].tolist()) == sorted(boxes)             # one box per class, known ones
        for value, box in zip(content["label_values"], content["boxes"]):
            np.testing.assert_allclose(box, boxes[int(value)], atol=1e-6)            # back on the original grid
        assert content["detections"][0]["box_world_mm"] is not None and content["raw_detections"] == 2 * len(boxes) + 1
    metrics = evaluate_folder(predictions, pipeline.raw_folder)
    assert metrics["mAP"] == pytest.approx(1.0) and metrics["mAR"] == pytest.approx(1.0)

    perfect_raw_predictions(held_out, raw, pipeline.raw_folder / "labelsTs", plans, decoy_first=True)
    retinanet_peer.raw_to_prediction_files(raw, held_out, plans, tmp_path / "decoys")
    assert evaluate_folder(tmp_path / "decoys", pipeline.raw_folder)["mAP"] < 0.5   # the decoys were kept instead


def test_raw_predictions_that_do_not_fit_are_refused(tmp_path: Path, tmp_path_factory) -> None:
    pipeline = trained_pipeline(tmp_path_factory)
    plans = pipeline_plans(pipeline)
    held_out, raw = tmp_path / "held_out", tmp_path / "raw"
    cases = retinanet_peer.preprocess_held_out(pipeline.raw_folder / "imagesTs", plans, held_out)
    raw.mkdir()
    with pytest.raises(FileNotFoundError, match="wrote no prediction"):
        retinanet_peer.raw_to_prediction_files(raw, held_out, plans, tmp_path / "predictions")
    perfect_raw_predictions(held_out, raw, pipeline.raw_folder / "labelsTs", plans)
    content = json.loads((raw / f"{cases[0]}.json").read_text())
    (raw / f"{cases[0]}.json").write_text(json.dumps(dict(content, image_shape=[1, 2, 3])))
    with pytest.raises(ValueError, match="preprocessed to"):
        retinanet_peer.raw_to_prediction_files(raw, held_out, plans, tmp_path / "predictions")
    (raw / f"{cases[0]}.json").write_text(json.dumps(dict(content, scores=[0.5])))
    with pytest.raises(ValueError, match="1 scores"):
        retinanet_peer.read_raw_prediction(raw / f"{cases[0]}.json")
    (raw / f"{cases[0]}.json").write_text(json.dumps({"case": cases[0]}))
    with pytest.raises(ValueError, match="missing"):
        retinanet_peer.read_raw_prediction(raw / f"{cases[0]}.json")


# ----------------------------------------------------------------------------------------------------
# the peer script, with MONAI

def test_peer_trains_and_predicts_with_monai(tmp_path: Path, tmp_path_factory) -> None:
    python = peer_python()
    pipeline = trained_pipeline(tmp_path_factory)
    plans = pipeline_plans(pipeline)
    plans_folder = pipeline.roots["preprocessed"] / pipeline.dataset_name / "autodetrPlans"
    held_out, model, raw = tmp_path / "held_out", tmp_path / "model", tmp_path / "raw"
    retinanet_peer.preprocess_held_out(pipeline.raw_folder / "imagesTs", plans, held_out)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    for arguments in (["train", "--cases", plans_folder, "--output", model, "--minutes", 5, "--max-steps", 2],
                      ["predict", "--model", model, "--cases", held_out, "--output", raw]):
        done = subprocess.run([str(python), str(retinanet_peer.PEER_SCRIPT), *map(str, arguments)], env=env,
                              capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stdout + done.stderr
    summary = json.loads((model / "summary.json").read_text())
    assert summary["iterations"] == 2 and summary["num_cases"] == len(list(plans_folder.glob("*.npz")))
    config = json.loads((model / "config.json").read_text())
    assert len(config["anchor_shapes"]) == 3 and config["num_classes"] == len(plans["classes"])
    assert bench_vs_retinanet.retinanet_configuration(model).startswith("ResNet basic 2-2-2-2, widths 16-128, FPN 64")
    written = retinanet_peer.raw_to_prediction_files(raw, held_out, plans, tmp_path / "predictions")
    assert set(written) == {p.stem for p in held_out.glob("*.npz")}
    for case, count in written.items():
        content = retinanet_peer.read_raw_prediction(raw / f"{case}.json")
        assert len(content["boxes"]) > 0 and set(content["classes"].tolist()) <= set(range(1, len(plans["classes"]) + 1))
        assert count == len(set(content["classes"].tolist()))
    assert "mAP" in evaluate_folder(tmp_path / "predictions", pipeline.raw_folder)


# ----------------------------------------------------------------------------------------------------
# the benchmark's command line and its shared loop

def test_command_line_defaults_and_refusals() -> None:
    args = bench_vs_retinanet.parse_arguments([])
    assert (args.minutes, args.num_cases, args.num_test_cases, args.size) == (20.0, 20, 5, "full")
    assert args.tool_names == ["autodetr", "atlas_prior", "retinanet"]
    assert args.peer_python == retinanet_peer.DEFAULT_PEER_PYTHON and args.work.name == "bench_vs_retinanet"
    assert bench_vs_retinanet.parse_arguments(["--tools", "retinanet", "--threads", "1"]).tool_names == ["retinanet"]
    for bad in (["--tools", "nnunet"], ["--minutes", "0"], ["--num-cases", "1"], ["--threads", "0"]):
        with pytest.raises(SystemExit):
            bench_vs_retinanet.parse_arguments(bad)


def test_run_tools_keeps_going_after_a_failing_tool_and_reports(tmp_path: Path) -> None:
    args = bench_vs_retinanet.parse_arguments(["--tools", "autodetr,retinanet", "--work", str(tmp_path), "--minutes", "1"])

    def fails(*_: object) -> None:
        raise bench_vs_nnunet.StageError("peer exited with 1\nTraceback ...")

    def works(_args, _env, _data, _logs, tool: dict) -> None:
        tool.update(configuration="tiny", metrics={"mAP": 0.5, "mAR": 0.6, "AP50": 1.0, "AP75": 0.0, "per_class": {}},
                    training={"steps": 3, "iterations_per_second": 1.5}, stages={"train": {"wall_s": 2.0}})

    figures: dict = {"tools": {}}
    bench_vs_nnunet.run_tools(args, {}, tmp_path, {"autodetr": works, "retinanet": fails},
                              {"autodetr": "autodetr (dqm)", "retinanet": "MONAI RetinaNet"}, figures)
    assert figures["tools"]["MONAI RetinaNet"]["error"] == "peer exited with 1\nTraceback ..."
    assert figures["tools"]["autodetr (dqm)"]["training"]["steps"] == 3
    assert bench_vs_nnunet.report(figures, "title", tmp_path / "out.json") == 1
    written = json.loads((tmp_path / "out.json").read_text())
    table = dict((line.split()[0], line.split()[1:]) for line in written["table"].splitlines()[2:])
    assert table["mAP"] == ["0.500", "-"] and table["error"] == ["-", "peer", "exited", "with", "1"]
