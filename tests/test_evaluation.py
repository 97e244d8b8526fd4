"""Evaluation engine: COCO equivalence with pycocotools, 3D IoU, calibration, prediction files and the CLI."""
from __future__ import annotations

import contextlib
import io
import json

import numpy as np
import pytest

from autodetr.boxes import box_iou, boxes_from_label_map
from autodetr.errors import InputError
from autodetr.evaluation import api, calibration, coco, entrypoints
from autodetr.evaluation.coco import CaseResult

CLASSES = [1, 2, 3, 4]          # class 4 never has ground truth but is predicted


# ----------------------------------------------------------------------------------------------------
# random 2D cases and the pycocotools reference
# ----------------------------------------------------------------------------------------------------

def _random_box(rng: np.random.Generator) -> np.ndarray:
    """(y1, x1, y2, x2) on a 0.5 grid: exact in floating point, so both IoU implementations agree bit for bit
    (and IoUs exactly at a threshold occur)."""
    y1, x1 = rng.integers(0, 120, size=2) / 2
    h, w = rng.integers(2, 50, size=2) / 2
    return np.array([y1, x1, y1 + h, x1 + w])


def _random_cases(seed: int, num_cases: int = 14) -> list[CaseResult]:
    rng = np.random.default_rng(seed)
    cases = []
    for i in range(num_cases):
        gt_boxes, gt_labels, boxes, scores, labels = [], [], [], [], []
        for label in CLASSES[:3]:
            if rng.random() < 0.3:          # class absent from this case
                continue
            for _ in range(rng.integers(1, 4)):
                gt_boxes.append(_random_box(rng))
                gt_labels.append(label)
        empty_predictions = rng.random() < 0.2
        if not empty_predictions:
            for box, label in zip(gt_boxes, gt_labels):
                for _ in range(rng.choice([0, 1, 1, 1, 2, 3])):          # misses and duplicates
                    jitter = rng.integers(-4, 5, size=4) / 2
                    candidate = box + jitter
                    candidate[2:] = np.maximum(candidate[2:], candidate[:2] + 0.5)
                    boxes.append(candidate)
                    scores.append(rng.integers(0, 21) / 20)           # coarse scores: many ties
                    labels.append(label if rng.random() < 0.9 else int(rng.choice(CLASSES)))
            for _ in range(rng.integers(0, 4)):                      # background false positives
                boxes.append(_random_box(rng))
                scores.append(rng.integers(0, 21) / 20)
                labels.append(int(rng.choice(CLASSES)))
            if rng.random() < 0.3:                                   # many detections of one class: maxDets cut
                label = int(rng.choice(CLASSES[:3]))
                for _ in range(rng.integers(8, 16)):
                    boxes.append(_random_box(rng))
                    scores.append(rng.integers(0, 21) / 20)
                    labels.append(label)
        cases.append(CaseResult(
            f"case_{i:03d}",
            np.asarray(gt_boxes).reshape(-1, 4), np.asarray(gt_labels, dtype=np.int64),
            np.asarray(boxes).reshape(-1, 4), np.asarray(scores), np.asarray(labels, dtype=np.int64),
        ))
    return cases


def _xywh(box: np.ndarray) -> list[float]:
    y1, x1, y2, x2 = (float(v) for v in box)
    return [x1, y1, x2 - x1, y2 - y1]


def _pycocotools_eval(cases: list[CaseResult]):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    images = [{"id": i + 1} for i in range(len(cases))]
    annotations = []
    for i, case in enumerate(cases):
        for box, label in zip(case.gt_boxes, case.gt_labels):
            xywh = _xywh(box)
            annotations.append({"id": len(annotations) + 1, "image_id": i + 1, "category_id": int(label),
                                "bbox": xywh, "area": xywh[2] * xywh[3], "iscrowd": 0})
    results = [
        {"image_id": i + 1, "category_id": int(label), "bbox": _xywh(box), "score": float(score)}
        for i, case in enumerate(cases)
        for box, score, label in zip(case.pred_boxes, case.pred_scores, case.pred_labels)
    ]
    with contextlib.redirect_stdout(io.StringIO()):
        ground_truth = COCO()
        ground_truth.dataset = {"images": images, "annotations": annotations,
                                "categories": [{"id": c, "name": str(c)} for c in CLASSES]}
        ground_truth.createIndex()
        detections = ground_truth.loadRes(results)
        evaluator = COCOeval(ground_truth, detections, iouType="bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return evaluator


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4, 5])
def test_matches_pycocotools(seed):
    cases = _random_cases(seed)
    assert any(len(c.pred_labels) == 0 for c in cases) or seed > 0
    reference = _pycocotools_eval(cases)
    summary = coco.summarize_cases(cases, classes=CLASSES)
    assert summary["mAP"] == pytest.approx(reference.stats[0], abs=1e-9)
    assert summary["AP50"] == pytest.approx(reference.stats[1], abs=1e-9)
    assert summary["AP75"] == pytest.approx(reference.stats[2], abs=1e-9)
    assert summary["mAR"] == pytest.approx(reference.stats[8], abs=1e-9)
    for m, max_dets in enumerate([1, 10, 100]):       # pycocotools' maxDets = [1, 10, 100]
        ours = coco.evaluate_detections(cases, classes=CLASSES, max_dets=max_dets)
        np.testing.assert_allclose(ours.precision, reference.eval["precision"][:, :, :, 0, m], rtol=0, atol=1e-9)
        np.testing.assert_allclose(ours.recall, reference.eval["recall"][:, :, 0, m], rtol=0, atol=1e-9)
        np.testing.assert_allclose(ours.scores, reference.eval["scores"][:, :, :, 0, m], rtol=0, atol=1e-9)
    # class 4 has no ground truth anywhere: -1, left out of the means; its detections are absent-organ FPs
    assert summary["per_class"]["4"]["AP"] == -1 and summary["per_class"]["4"]["AR"] == -1
    absent = sum(
        int(np.count_nonzero(c.pred_labels == label))
        for c in cases for label in CLASSES if not np.any(c.gt_labels == label)
    )
    assert summary["false_positives_absent"] == absent > 0
    per_class_ap = [v["AP"] for v in summary["per_class"].values() if v["AP"] > -1]
    assert summary["mAP"] == pytest.approx(np.mean(per_class_ap), abs=1e-12)


def test_equal_iou_tie_goes_to_the_later_ground_truth():
    """COCO's loop replaces its choice on equal IoU: the first detection takes ground truth B, so the second
    can still take A (taking A first would leave B unmatched)."""
    gt = np.array([[0, 0, 10, 10], [0, 4, 10, 14]], dtype=float)          # A, B
    dets = np.array([[0, 2, 10, 12], [0, 0, 10, 9]], dtype=float)        # IoU 2/3 with both; IoU .9 with A only
    assert box_iou(dets[:1], gt)[0, 0] == box_iou(dets[:1], gt)[0, 1]
    cases = [CaseResult("tie", gt, [1, 1], dets, [0.9, 0.8], [1, 1])]
    matches = coco.greedy_match(box_iou(dets, gt), np.array([0.5]))
    assert matches.tolist() == [[1, 0]]
    reference = _pycocotools_eval(cases)
    ours = coco.evaluate_detections(cases, classes=CLASSES)
    np.testing.assert_allclose(ours.precision, reference.eval["precision"][:, :, :, 0, 2], rtol=0, atol=1e-9)
    assert ours.recall[0, 0] == 1.0


def test_3d_boxes_extruded_match_pycocotools():
    """Unit-depth 3D boxes have the 2D IoU, so the 3D path must reproduce pycocotools too."""
    cases = _random_cases(11)
    reference = _pycocotools_eval(cases)

    def extrude(boxes):
        boxes = np.asarray(boxes).reshape(-1, 4)
        zeros, ones = np.zeros((len(boxes), 1)), np.ones((len(boxes), 1))
        return np.concatenate([zeros, boxes[:, :2], ones, boxes[:, 2:]], axis=1)

    cases_3d = [CaseResult(c.case, extrude(c.gt_boxes), c.gt_labels, extrude(c.pred_boxes), c.pred_scores,
                           c.pred_labels) for c in cases]
    ours = coco.evaluate_detections(cases_3d, classes=CLASSES)
    np.testing.assert_allclose(ours.precision, reference.eval["precision"][:, :, :, 0, 2], rtol=0, atol=1e-9)
    summary = coco.summarize_cases(cases_3d, classes=CLASSES)
    assert summary["mAP"] == pytest.approx(reference.stats[0], abs=1e-9)
    assert summary["mAR"] == pytest.approx(reference.stats[8], abs=1e-9)


def test_3d_iou_equals_rasterised_overlap():
    rng = np.random.default_rng(3)
    low = rng.integers(0, 8, size=(12, 3))
    boxes = np.concatenate([low, low + rng.integers(1, 6, size=(12, 3))], axis=1).astype(float)
    masks = np.zeros((12, 14, 14, 14), dtype=bool)
    for n, (z1, y1, x1, z2, y2, x2) in enumerate(boxes.astype(int)):
        masks[n, z1:z2, y1:y2, x1:x2] = True
    ious = box_iou(boxes, boxes[::-1])
    for a in range(12):
        for b in range(12):
            inter = np.count_nonzero(masks[a] & masks[11 - b])
            union = np.count_nonzero(masks[a] | masks[11 - b])
            assert ious[a, b] == pytest.approx(inter / union, abs=1e-12)
    # and the box of a rasterised mask is the box itself (half-open edges)
    label_map = np.zeros((14, 14, 14), dtype=np.int64)
    label_map[masks[0]] = 5
    found, values = boxes_from_label_map(label_map)
    np.testing.assert_array_equal(found[0], boxes[0])
    assert values.tolist() == [5]


def test_nndet_thresholds_and_simple_values():
    gt = np.array([[0, 0, 0, 10, 10, 10]], dtype=float)
    shifted = np.array([[0, 0, 5, 10, 10, 15]], dtype=float)      # IoU 5 / 15: found for 0.10..0.30 only
    iou = box_iou(shifted, gt)[0, 0]
    assert iou == pytest.approx(1 / 3)
    case = CaseResult("a", gt, [1], shifted, [0.9], [1])
    summary = coco.summarize_cases([case])
    assert summary["mAP"] == 0.0 and summary["mAR"] == 0.0
    assert summary["nnDet_mAP"] == pytest.approx(5 / 9)
    assert summary["AP10"] == pytest.approx(1.0)     # COCO precision is tp / (tp + fp + eps)


# ----------------------------------------------------------------------------------------------------
# calibration
# ----------------------------------------------------------------------------------------------------

def test_ece_hand_computed():
    scores = np.array([0.05, 0.15, 0.15, 0.95, 0.95, 0.95, 0.95])
    correct = np.array([0, 0, 1, 1, 1, 1, 0], dtype=bool)
    # bins: (0, .1]: acc 0, conf .05; (.1, .2]: acc .5, conf .15; (.9, 1]: acc .75, conf .95
    expected = (1 * 0.05 + 2 * 0.35 + 4 * 0.2) / 7
    assert calibration.expected_calibration_error(scores, correct) == pytest.approx(expected, abs=1e-12)
    stats = calibration.calibration_bins(np.array([0.0, 0.1, 0.3, 0.30001, 1.0]), np.ones(5))
    assert stats["counts"].tolist() == [2, 0, 1, 1, 0, 0, 0, 0, 0, 1]     # right-closed bins, 0 in the first
    assert np.isnan(calibration.expected_calibration_error(np.zeros(0), np.zeros(0)))


def test_ece_perfectly_calibrated_detections_is_zero():
    """In every bin the fraction of correct detections equals the confidence: ECE ~ 0, via the matcher."""
    cases = []
    gt = np.array([[0, 0, 0, 8, 8, 8]], dtype=float)
    far = np.array([[20, 20, 20, 28, 28, 28]], dtype=float)
    for b in range(10):
        confidence = (b + 0.5) / 10
        for n in range(20):
            hit = n < round(confidence * 20)
            cases.append(CaseResult(f"c{b}_{n}", gt, [1], gt if hit else far, [confidence], [1]))
    scores, correct, _ = calibration.detection_correctness(cases)
    assert correct.mean() == pytest.approx(0.5)
    assert calibration.expected_calibration_error(scores, correct) == pytest.approx(0.0, abs=1e-12)


def test_correctness_claims_each_ground_truth_once():
    gt = np.array([[0, 0, 0, 8, 8, 8]], dtype=float)
    duplicates = np.array([[0, 0, 0, 8, 8, 8], [0, 0, 0, 8, 8, 7], [0, 0, 0, 8, 8, 8]], dtype=float)
    case = CaseResult("a", gt, [1], duplicates, [0.6, 0.9, 0.6], [1, 1, 1])
    scores, correct, _ = calibration.detection_correctness([case])
    assert scores.tolist() == [0.9, 0.6, 0.6] and correct.tolist() == [True, False, False]
    _, loose, _ = calibration.detection_correctness([case], one_to_one=False)
    assert loose.tolist() == [True, True, True]
    other_class = CaseResult("b", gt, [1], gt, [0.7], [2])
    assert calibration.detection_correctness([other_class])[1].tolist() == [False]


def test_reliability_diagram_png(tmp_path):
    rng = np.random.default_rng(0)
    scores = rng.random(200)
    correct = rng.random(200) < scores
    path = tmp_path / "plot" / "reliability.png"
    ece = calibration.reliability_diagram(scores, correct, path)
    assert ece == pytest.approx(calibration.expected_calibration_error(scores, correct))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 1000
    calibration.reliability_diagram(np.zeros(0), np.zeros(0), tmp_path / "empty.png")
    assert (tmp_path / "empty.png").stat().st_size > 0


# ----------------------------------------------------------------------------------------------------
# prediction files
# ----------------------------------------------------------------------------------------------------

def test_prediction_roundtrip_and_world_corners(tmp_path):
    sitk = pytest.importorskip("SimpleITK")
    image = sitk.Image(14, 12, 10, sitk.sitkUInt8)          # x, y, z sizes -> array shape (10, 12, 14)
    image.SetSpacing((0.8, 0.7, 2.5))
    image.SetOrigin((-10.0, 5.0, 30.0))
    angle = 0.3
    image.SetDirection((np.cos(angle), -np.sin(angle), 0, np.sin(angle), np.cos(angle), 0, 0, 0, 1))
    boxes = np.array([[1, 2, 3, 4, 6, 9], [0, 0, 0, 10, 12, 14]], dtype=float)
    path = tmp_path / "case_x.json"
    api.write_prediction(path, "case_x", boxes, [0.4, 0.9], [2, 1], {1: "liver", 2: "spleen"},
                         **api.image_geometry(image))
    content = json.loads(path.read_text())
    assert content["case"] == "case_x" and content["image_shape"] == [10, 12, 14]
    assert content["spacing"] == [2.5, 0.7, 0.8]
    assert content["box_convention"] == api.PREDICTION_BOX_CONVENTION
    first = content["detections"][0]                          # sorted by score
    assert first["class_name"] == "liver" and first["label_value"] == 1 and first["score"] == 0.9
    read_boxes, read_scores, read_labels = api.read_prediction(path)
    np.testing.assert_array_equal(read_boxes, boxes[::-1])
    assert read_scores.tolist() == [0.9, 0.4] and read_labels.tolist() == [1, 2]
    corners = np.asarray(content["detections"][1]["box_world_mm"]["corners"])
    z1, y1, x1, z2, y2, x2 = boxes[0]
    expected = [image.TransformContinuousIndexToPhysicalPoint((x - 0.5, y - 0.5, z - 0.5))
                for z in (z1, z2) for y in (y1, y2) for x in (x1, x2)]
    np.testing.assert_allclose(corners, expected, atol=1e-9)
    np.testing.assert_allclose(content["detections"][1]["box_world_mm"]["min"], np.min(expected, axis=0), atol=1e-9)
    # without geometry, the world box is left out
    api.write_prediction(tmp_path / "bare.json", "bare", np.zeros((0, 6)), [], [], {})
    assert api.read_prediction(tmp_path / "bare.json")[0].shape == (0, 6)


def test_bad_prediction_file_names_the_file(tmp_path):
    bad = tmp_path / "broken.json"
    bad.write_text('{"case": "x", "detections": [{"score": 0.5, "label_value": 1, "box_voxel": [1, 2, 3]}]}')
    with pytest.raises(InputError, match="broken.json.*box_voxel"):
        api.read_prediction(bad)
    bad.write_text("{not json")
    with pytest.raises(InputError, match="broken.json"):
        api.read_prediction(bad)


# ----------------------------------------------------------------------------------------------------
# CLI on tiny NIfTI data
# ----------------------------------------------------------------------------------------------------

CLASS_NAMES = {1: "liver", 2: "spleen", 3: "kidney"}


def _write_label(sitk, path, label_map):
    image = sitk.GetImageFromArray(label_map.astype(np.uint8))
    image.SetSpacing((0.8, 0.8, 2.0))
    image.SetOrigin((1.0, 2.0, 3.0))
    sitk.WriteImage(image, str(path))
    return image


def _make_dataset(tmp_path):
    """Raw dataset with two cases (liver and spleen; kidney is in dataset.json but in no case)."""
    sitk = pytest.importorskip("SimpleITK")
    root = tmp_path / "raw" / "Dataset001_Tiny"
    (root / "labelsTr").mkdir(parents=True)
    (root / "dataset.json").write_text(json.dumps({
        "labels": {"background": 0, "liver": 1, "spleen": 2, "kidney": 3}, "file_ending": ".nii.gz",
        "channel_names": {"0": "CT"}, "numTraining": 2,
    }))
    geometry = {}
    for name, offset in (("case_a", 0), ("case_b", 1)):
        label_map = np.zeros((8, 10, 12), dtype=np.int64)
        label_map[1 + offset:5, 2:7, 1:6] = 1
        label_map[2:7, 3 + offset:9, 7:11] = 2
        image = _write_label(sitk, root / "labelsTr" / f"{name}.nii.gz", label_map)
        geometry[name] = (label_map, api.image_geometry(image))
    return root, geometry


def _write_predictions(folder, geometry, drop=(), extra=()):
    """Perfect predictions from the label maps; `drop`: (case, label) to leave out; `extra`: (case, label, box)."""
    folder.mkdir(parents=True, exist_ok=True)
    for case, (label_map, geo) in geometry.items():
        boxes, values = boxes_from_label_map(label_map)
        keep = [i for i, v in enumerate(values) if (case, int(v)) not in drop]
        boxes, values = boxes[keep], values[keep]
        scores = list(np.linspace(0.9, 0.8, len(values)))
        for extra_case, label, box in extra:
            if extra_case == case:
                boxes = np.concatenate([boxes, np.asarray([box], dtype=float)])
                values = np.concatenate([values, [label]])
                scores.append(0.3)
        api.write_prediction(folder / f"{case}.json", case, boxes, scores, values, CLASS_NAMES, **geo)


def _run_cli(argv):
    with pytest.raises(SystemExit) as exit_info:
        entrypoints.main([str(a) for a in argv])
    return exit_info.value.code


def test_cli_perfect_prediction(tmp_path, capsys):
    root, geometry = _make_dataset(tmp_path)
    predictions = tmp_path / "pred"
    _write_predictions(predictions, geometry)
    (predictions / "run_info.json").write_text('{"folds": [0]}')          # not a prediction: skipped
    out = tmp_path / "out"
    assert _run_cli(["-p", predictions, "-g", root, "-o", out]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["mAP"] == pytest.approx(1.0) and metrics["mAR"] == pytest.approx(1.0)
    assert metrics["AP50"] == pytest.approx(1.0) and metrics["AP75"] == pytest.approx(1.0)
    assert metrics["nnDet_mAP"] == pytest.approx(1.0)
    assert metrics["per_class"]["kidney"]["AP"] == -1
    assert metrics["false_positives_absent"] == 0
    assert metrics["ECE"] == pytest.approx(0.15, abs=1e-9)     # all correct, confidence 0.85 on average
    import pandas as pd

    table = pd.read_csv(out / "metrics.csv", index_col=0)
    assert list(table.index) == ["liver", "spleen", "kidney", "mean"]
    for column in ["AP", "AP50", "AP75", "AR", "nnDet_mAP", "false_positives_absent"]:
        assert column in table.columns
    assert table.loc["mean", "AP"] == pytest.approx(1.0) and table.loc["kidney", "AP"] == -1
    png = out / "reliability.png"
    assert png.stat().st_size > 0 and png.read_bytes()[:4] == b"\x89PNG"
    captured = capsys.readouterr()
    assert "mAP 1.0000" in captured.out and "run_info.json" in captured.err


def test_cli_missing_organ_lowers_recall_and_absent_organ_fp(tmp_path):
    root, geometry = _make_dataset(tmp_path)
    predictions = tmp_path / "pred"
    _write_predictions(predictions, geometry, drop={("case_b", 2)}, extra=[("case_a", 3, [0, 0, 0, 2, 2, 2])])
    out = tmp_path / "out"
    assert _run_cli(["-p", predictions, "-g", root, "-o", out]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    spleen = metrics["per_class"]["spleen"]
    assert spleen["AR"] == pytest.approx(0.5)
    assert spleen["AP"] == pytest.approx(51 / 101)           # precision 1 up to recall 0.5, then 0
    assert metrics["mAR"] == pytest.approx(0.75)
    assert metrics["false_positives_absent"] == 1 and metrics["per_class"]["kidney"]["false_positives_absent"] == 1
    assert metrics["per_class"]["kidney"]["AP"] == -1


def test_cli_missing_cases_and_label_folder_form(tmp_path, capsys):
    root, geometry = _make_dataset(tmp_path)
    predictions = tmp_path / "pred"
    _write_predictions(predictions, {"case_a": geometry["case_a"]})
    api.write_prediction(predictions / "case_z.json", "case_z", np.zeros((0, 6)), [], [], CLASS_NAMES)
    out = tmp_path / "out"
    # label folder given directly: dataset.json found in its parent
    assert _run_cli(["-p", predictions, "-g", root / "labelsTr", "-o", out, "--classes", "liver", "spleen"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["ground_truth_without_prediction"] == ["case_b"]
    assert metrics["predictions_without_ground_truth"] == ["case_z"]
    assert metrics["mAR"] == pytest.approx(0.5) and set(metrics["per_class"]) == {"liver", "spleen"}
    err = capsys.readouterr().err
    assert "case_b" in err and "case_z" in err
    assert _run_cli(["-p", predictions, "-g", root, "-o", out, "--only-predicted"]) == 0
    assert json.loads((out / "metrics.json").read_text())["mAR"] == pytest.approx(1.0)
    # nothing matches: one clear error line, exit code 2
    lonely = tmp_path / "lonely"
    api.write_prediction(lonely / "case_q.json", "case_q", np.zeros((0, 6)), [], [], CLASS_NAMES)
    capsys.readouterr()
    assert _run_cli(["-p", lonely, "-g", root, "-o", out]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "case_q" in err and len(err.splitlines()) == 1
    assert _run_cli(["-p", predictions, "-g", root, "--classes", "heart"]) == 2


def test_nndetection_instance_form(tmp_path):
    sitk = pytest.importorskip("SimpleITK")
    labels = tmp_path / "Task001_Inst" / "labelsTr"
    labels.mkdir(parents=True)
    (labels.parent / "dataset.json").write_text(json.dumps({"labels": {"0": "liver", "1": "spleen"}, "dim": 3}))
    instance_map = np.zeros((8, 10, 12), dtype=np.int64)
    instance_map[1:4, 1:4, 1:4] = 1          # instance 1: class index 1 (spleen)
    instance_map[5:8, 5:9, 6:11] = 2         # instance 2: class index 0 (liver)
    instance_map[1:3, 6:9, 8:10] = 3         # instance 3: class index 1 (a second spleen box)
    image = _write_label(sitk, labels / "c1.nii.gz", instance_map)
    (labels / "c1.json").write_text(json.dumps({"instances": {"1": 1, "2": 0, "3": 1}}))
    boxes, ids = boxes_from_label_map(instance_map)
    values = np.array([2, 1, 2])             # nnDetection class index i -> label value i + 1
    predictions = tmp_path / "pred"
    api.write_prediction(predictions / "c1.json", "c1", boxes, [0.9, 0.8, 0.7], values, {1: "liver", 2: "spleen"},
                         **api.image_geometry(image))
    metrics = api.evaluate_folder(predictions, labels, output_folder=tmp_path / "out")
    assert metrics["num_gt"] == 3 and metrics["per_class"]["spleen"]["num_gt"] == 2
    assert metrics["mAP"] == pytest.approx(1.0)
    # swapping the classes of the predictions makes everything wrong
    api.write_prediction(predictions / "c1.json", "c1", boxes, [0.9, 0.8, 0.7], [1, 2, 1], ["liver", "spleen", "liver"])
    assert api.evaluate_folder(predictions, labels)["mAP"] == 0.0


def test_cli_cross_validation(tmp_path, monkeypatch):
    root, geometry = _make_dataset(tmp_path)
    monkeypatch.setenv("AUTODETR_raw", str(tmp_path / "raw"))
    results = tmp_path / "results"
    model = results / "Dataset001_Tiny" / "Trainer__Plans"
    for fold, case in enumerate(["case_a", "case_b"]):
        _write_predictions(model / f"fold_{fold}" / "validation", {case: geometry[case]})
    assert _run_cli(["--cv", "1", "--results-folder", results]) == 0
    metrics = json.loads((model / "cv_evaluation" / "metrics.json").read_text())
    assert metrics["num_cases"] == 2 and metrics["mAP"] == pytest.approx(1.0)
    assert any("folds [2, 3, 4]" in w for w in metrics["warnings"])
    # a case validated in two folds is an error
    _write_predictions(model / "fold_2" / "validation", {"case_a": geometry["case_a"]})
    assert _run_cli(["--cv", "Dataset001_Tiny", "--results-folder", results]) == 2


def test_evaluate_cases_api_for_training():
    gt = np.array([[0, 0, 0, 8, 8, 8], [10, 10, 10, 20, 20, 20]], dtype=float)
    case = CaseResult("v1", gt, [1, 2], gt[:1], [0.95], [1])
    metrics = api.evaluate_cases([case], class_names=["liver", "spleen"])
    assert metrics["per_class"]["liver"]["AP"] == pytest.approx(1.0)
    assert metrics["per_class"]["spleen"]["AP"] == 0.0 and metrics["per_class"]["spleen"]["AR"] == 0.0
    assert metrics["mAP"] == pytest.approx(0.5) and metrics["ECE"] == pytest.approx(0.05)
    json.dumps(metrics)                      # JSON-ready
