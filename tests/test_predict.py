"""autodetr_predict: fold fusion, input discovery, DICOM input, outputs, world coordinates, failures, reruns."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk

from autodetr.inference.ensemble import fuse_detections, weighted_box_clustering
from autodetr.inference.inputs import discover_cases, group_image_files
from autodetr.inference.outputs import CSV_COLUMNS, box_mask_array

# ----------------------------------------------------------------------------------------------------
# fusion (pure numpy)
# ----------------------------------------------------------------------------------------------------

BOX_A = np.array([[10.0, 20.0, 30.0, 40.0, 50.0, 60.0]])
BOX_B = np.array([[100.0, 100.0, 100.0, 120.0, 130.0, 140.0]])


def test_identical_boxes_of_all_folds_give_the_same_box_and_score():
    fused = fuse_detections([BOX_A] * 5, [np.array([0.8])] * 5, [np.array([3])] * 5)
    assert len(fused) == 1
    np.testing.assert_allclose(fused.boxes, BOX_A)
    np.testing.assert_allclose(fused.scores, [0.8])
    assert fused.labels.tolist() == [3] and fused.support.tolist() == [5]


def test_a_fold_missing_a_class_lowers_the_fused_score():
    boxes = [BOX_A, BOX_A, np.zeros((0, 6))]
    scores = [np.array([0.9]), np.array([0.9]), np.zeros(0)]
    labels = [np.array([1]), np.array([1]), np.zeros(0, dtype=int)]
    fused = fuse_detections(boxes, scores, labels)
    np.testing.assert_allclose(fused.scores, [0.9 * 2 / 3])
    np.testing.assert_allclose(fused.boxes, BOX_A)
    assert fused.support.tolist() == [2]
    # the same class found by all three scores higher
    assert fuse_detections([BOX_A] * 3, [np.array([0.9])] * 3, [np.array([1])] * 3).scores[0] > fused.scores[0]


def test_non_overlapping_boxes_form_separate_clusters():
    fused = fuse_detections([BOX_A, BOX_B], [np.array([0.6]), np.array([0.4])], [np.array([2]), np.array([2])])
    assert len(fused) == 2
    np.testing.assert_allclose(fused.boxes, np.concatenate([BOX_A, BOX_B]))
    np.testing.assert_allclose(fused.scores, [0.3, 0.2])
    assert fused.support.tolist() == [1, 1]
    best = fuse_detections([BOX_A, BOX_B], [np.array([0.6]), np.array([0.4])], [np.array([2]), np.array([2])], max_per_class=1)
    np.testing.assert_allclose(best.boxes, BOX_A)


def test_overlapping_boxes_are_averaged_by_score_and_classes_stay_apart():
    shifted = BOX_A + np.array([2.0, 0, 0, 2.0, 0, 0])
    fused = fuse_detections([BOX_A, shifted, BOX_A], [np.array([0.9]), np.array([0.3]), np.array([0.5])],
                            [np.array([1]), np.array([1]), np.array([2])])
    assert fused.labels.tolist() == [1, 2]
    iou = 28 / 32  # the shifted box overlaps 28 of 32 z-voxels... of a union of 32
    expected = (0.9 * BOX_A + 0.3 * iou * shifted) / (0.9 + 0.3 * iou)
    np.testing.assert_allclose(fused.boxes[0], expected[0])
    np.testing.assert_allclose(fused.scores, [(0.9 + 0.3) / 3, 0.5 / 3])
    np.testing.assert_allclose(fused.boxes[1], BOX_A[0])


def test_clustering_takes_each_members_best_box_once_and_validates_input():
    boxes = np.concatenate([BOX_A, BOX_A + 1, BOX_A])
    _, scores, support = weighted_box_clustering(boxes, np.array([0.6, 0.4, 0.2]), np.array([0, 0, 1]), 2)
    np.testing.assert_allclose(scores, [(0.6 + 0.2) / 2])
    assert support.tolist() == [2]
    with pytest.raises(ValueError):
        weighted_box_clustering(boxes, np.array([0.6, 0.4, 0.2]), np.array([0, 0, 2]), 2)
    empty = fuse_detections([np.zeros((0, 6))] * 2, [np.zeros(0)] * 2, [np.zeros(0, dtype=int)] * 2)
    assert len(empty) == 0 and empty.boxes.shape == (0, 6)


# ----------------------------------------------------------------------------------------------------
# inputs and outputs without a model
# ----------------------------------------------------------------------------------------------------

def test_image_files_are_grouped_by_channel_suffix(tmp_path):
    names = ["a_0000.nii.gz", "b.nii.gz", "scan_2021.nrrd", "c_0000.mha", "c_0001.mha"]
    files = [tmp_path / n for n in names]
    one = {c.case_id: c for c in group_image_files(files, 1)}
    assert one["a"].image_files == [tmp_path / "a_0000.nii.gz"] and one["a"].error is None
    assert one["b"].image_files == [tmp_path / "b.nii.gz"]
    assert one["scan_2021"].error is None  # a 4-digit suffix that cannot be a channel is part of the name
    assert "channel" in one["c"].error  # two channels for a one-channel model
    two = {c.case_id: c for c in group_image_files(files, 2)}
    assert two["c"].error is None and [p.name for p in two["c"].image_files] == ["c_0000.mha", "c_0001.mha"]
    assert two["a"].error is not None


def test_discover_rejects_missing_input_and_flags_clashing_files(tmp_path):
    from autodetr.errors import InputError

    with pytest.raises(InputError, match="does not exist"):
        discover_cases(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no images"):
        discover_cases(tmp_path / "empty")
    folder = tmp_path / "clash"
    folder.mkdir()
    image = sitk.Image(4, 4, 4, sitk.sitkInt16)
    sitk.WriteImage(image, str(folder / "x.nii.gz"))
    sitk.WriteImage(image, str(folder / "x.mha"))
    (case,) = discover_cases(folder)  # one case with an error: reported, the other cases go on
    assert case.case_id == "x" and "several files" in case.error


def test_box_mask_draws_half_open_boxes_smaller_on_top():
    mask = box_mask_array(np.array([[0, 0, 0, 6, 6, 6], [3, 3, 3, 5, 5, 5.0]]), np.array([1, 300]), (8, 8, 8))
    assert mask.dtype == np.uint16
    assert (mask == 300).sum() == 8 and mask[3, 3, 3] == 300 and mask[5, 5, 5] == 1
    assert (mask > 0).sum() == 216


# ----------------------------------------------------------------------------------------------------
# end to end with a briefly trained 2-fold model (tests/helpers_pipeline.py, built once per session)
# ----------------------------------------------------------------------------------------------------

import hashlib  # noqa: E402

import helpers_pipeline  # noqa: E402

from autodetr.inference.entrypoints import main as predict_main  # noqa: E402

JSON_KEYS = {"case", "box_convention", "image_shape", "spacing", "origin", "direction", "detections"}
DETECTION_KEYS = {"class_name", "label_value", "score", "box_voxel", "box_world_mm"}


@pytest.fixture(scope="session")
def pipeline(tmp_path_factory):
    return helpers_pipeline.trained_pipeline(tmp_path_factory)


@pytest.fixture
def pipeline_env(pipeline, monkeypatch):
    for kind, folder in pipeline.roots.items():
        monkeypatch.setenv(f"AUTODETR_{kind}", str(folder))
    return pipeline


def run_predict(argv: list[str]) -> int:
    with pytest.raises(SystemExit) as exit_:
        predict_main(argv + ["--no-progress"])
    return exit_.value.code


def read_output(path: Path) -> dict:
    return json.loads(Path(path).read_text())


def check_world_corners(content: dict) -> None:
    """Every detection's world corners are SimpleITK's physical points of its voxel edges (and agree with
    `autodetr.preprocessing.restore.box_world_summary`)."""
    from autodetr.inference.outputs import geometry_from_prediction
    from autodetr.preprocessing.restore import box_world_summary

    geometry = geometry_from_prediction(content)
    for detection in content["detections"]:
        box = np.asarray(detection["box_voxel"])
        expected = helpers_pipeline.voxel_corners_world(content, box)
        np.testing.assert_allclose(detection["box_world_mm"]["corners"], expected, atol=1e-6)
        np.testing.assert_allclose(detection["box_world_mm"]["min"], expected.min(0), atol=1e-6)
        np.testing.assert_allclose(detection["box_world_mm"]["max"], expected.max(0), atol=1e-6)
        summary = box_world_summary(box, geometry)
        np.testing.assert_allclose(summary["min"], expected.min(0), atol=1e-6)
        np.testing.assert_allclose(summary["max"], expected.max(0), atol=1e-6)


def test_predict_nifti_folder_writes_json_csv_and_masks(pipeline_env, tmp_path):
    pipeline = pipeline_env
    output = tmp_path / "out"
    # -d left out: the results root holds one dataset; default model autodetrTrainer_dqm__autodetrPlans, both folds
    assert run_predict(["-i", str(pipeline.raw_folder / "imagesTs"), "-o", str(output), "--save-masks", "-np", "2",
                        "--disable-tta"]) == 0
    plans = json.loads((pipeline.model_folder / "fold_0" / "plans.json").read_text())
    classes = {c["label_value"]: c["name"] for c in plans["classes"]}
    total = 0
    for image_file in pipeline.test_images:
        case = image_file.name[: -len("_0000.nii.gz")]
        content = read_output(output / f"{case}.json")
        assert JSON_KEYS <= set(content) and content["case"] == case
        assert "half-open" in content["box_convention"]
        image = sitk.ReadImage(str(image_file))
        assert content["image_shape"] == list(image.GetSize()[::-1])
        np.testing.assert_allclose(content["spacing"], image.GetSpacing()[::-1])
        assert content["folds"] == ["0", "1"] and content["ensemble"]["members"] == 2
        detections = content["detections"]
        assert len(detections) == len(classes)  # threshold 0: the best fused box of every class
        assert all(DETECTION_KEYS <= set(d) for d in detections)
        assert {d["label_value"]: d["class_name"] for d in detections} == classes
        scores = [d["score"] for d in detections]
        assert scores == sorted(scores, reverse=True) and all(0 <= s <= 1 for s in scores)
        for d in detections:
            box = np.asarray(d["box_voxel"])
            assert np.all(box[:3] <= box[3:]) and np.all(box >= 0) and np.all(box[3:] <= content["image_shape"])
        check_world_corners(content)
        total += len(detections)
        # mask: same grid as the input, boxes drawn with label values
        mask = sitk.ReadImage(str(output / f"{case}_boxes.nii.gz"))
        assert mask.GetSize() == image.GetSize()
        np.testing.assert_allclose(mask.GetSpacing(), image.GetSpacing(), rtol=1e-6)
        np.testing.assert_allclose(mask.GetOrigin(), image.GetOrigin(), atol=1e-4)
        np.testing.assert_allclose(mask.GetDirection(), image.GetDirection(), atol=1e-6)
        assert set(np.unique(sitk.GetArrayFromImage(mask)).tolist()) - {0} <= set(classes)
    table = pd.read_csv(output / "boxes.csv")
    assert list(table.columns) == CSV_COLUMNS and len(table) == total
    assert set(table["case"]) == {p.name[: -len("_0000.nii.gz")] for p in pipeline.test_images}
    first_case = pipeline.test_images[0].name[: -len("_0000.nii.gz")]
    best = read_output(output / f"{first_case}.json")["detections"][0]
    row = table[(table["case"] == first_case) & (table["label_value"] == best["label_value"])].iloc[0]
    np.testing.assert_allclose(row[["z1", "y1", "x1", "z2", "y2", "x2"]].to_numpy(float), best["box_voxel"])
    np.testing.assert_allclose(row[["world_min_x", "world_min_y", "world_min_z"]].to_numpy(float), best["box_world_mm"]["min"])
    assert row["score"] == pytest.approx(best["score"])
    # the evaluation module reads what was written
    from autodetr.evaluation.api import evaluate_folder

    metrics = evaluate_folder(output, pipeline.raw_folder / "labelsTs", dataset_json=pipeline.raw_folder / "dataset.json")
    assert 0.0 <= metrics["mAP"] <= 1.0


def test_dicom_series_input_gives_the_nifti_prediction(pipeline, tmp_path):
    image = sitk.ReadImage(str(pipeline.test_images[0]))
    helpers_pipeline.write_dicom_series(image, tmp_path / "dicom" / "patient" / "study" / "series_1", "Phantom test / CT")
    nifti = tmp_path / "nifti" / "single.nii.gz"
    nifti.parent.mkdir()
    sitk.WriteImage(sitk.Cast(image, sitk.sitkInt16), str(nifti))
    model = str(pipeline.model_folder)
    assert run_predict(["-i", str(tmp_path / "dicom"), "-o", str(tmp_path / "out_dicom"), "-m", model, "-np", "1"]) == 0
    assert run_predict(["-i", str(nifti), "-o", str(tmp_path / "out_nifti"), "-m", model, "-np", "1"]) == 0
    from_dicom = read_output(tmp_path / "out_dicom" / "Phantom_test_CT.json")
    from_nifti = read_output(tmp_path / "out_nifti" / "single.json")
    assert from_dicom["case"] == "Phantom_test_CT" and "DICOM series" in from_dicom["source"]
    assert from_dicom["image_shape"] == from_nifti["image_shape"]
    np.testing.assert_allclose(from_dicom["origin"], from_nifti["origin"], atol=1e-4)
    np.testing.assert_allclose(from_dicom["direction"], from_nifti["direction"], atol=1e-6)
    by_class = {d["label_value"]: d for d in from_nifti["detections"]}
    assert len(from_dicom["detections"]) == len(by_class)
    for detection in from_dicom["detections"]:
        other = by_class[detection["label_value"]]
        assert detection["score"] == pytest.approx(other["score"], abs=1e-4)
        np.testing.assert_allclose(detection["box_world_mm"]["min"], other["box_world_mm"]["min"], atol=0.05)
        np.testing.assert_allclose(detection["box_world_mm"]["max"], other["box_world_mm"]["max"], atol=0.05)
    check_world_corners(from_dicom)


def test_world_coordinates_with_a_non_identity_direction(pipeline, tmp_path, monkeypatch):
    """An image and its reoriented copy (permuted and flipped axes: direction not identity). A model that
    answers the true liver and kidney boxes (given in the network's normalised input frame) must give the
    same world boxes for both, equal to the ground truth's world boxes; and with the trained model, every
    written world corner is SimpleITK's physical point of the voxel edge."""
    from autodetr.boxes import boxes_from_label_map, normalise_corners
    from autodetr.evaluation.api import voxel_boxes_to_world
    from autodetr.inference import predict_api
    from autodetr.inference.outputs import geometry_keywords
    from autodetr.preprocessing.preprocess_case import preprocess_image
    from autodetr.preprocessing.raw_dataset import Geometry

    image_file = pipeline.test_images[0]
    case = image_file.name[: -len("_0000.nii.gz")]
    original = sitk.ReadImage(str(image_file))
    label = sitk.ReadImage(str(pipeline.raw_folder / "labelsTs" / f"{case}.nii.gz"))
    folder = tmp_path / "in"
    folder.mkdir()
    versions = {"original": (original, label)}
    for orientation in ("PIL", "RAI"):
        versions[orientation] = (helpers_pipeline.reoriented(original, orientation), helpers_pipeline.reoriented(label, orientation))
    assert versions["PIL"][0].GetDirection() != original.GetDirection()
    plans = json.loads((pipeline.model_folder / "fold_0" / "plans.json").read_text())
    index_of_value = {c["label_value"]: c["index"] for c in plans["classes"]}
    answers: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    copies: dict[str, int] = {}  # test-time copies per version: itself, the mirror and the shifts
    truth_world: dict[str, np.ndarray] = {}
    for name, (image, label_image) in versions.items():
        sitk.WriteImage(image, str(folder / f"{name}.mha"))
        geometry = Geometry.from_image(image)
        boxes, values = boxes_from_label_map(sitk.GetArrayFromImage(label_image))
        keep = np.isin(values, [1, 3])  # liver and kidney_left (a lateral class)
        truth_world[name] = voxel_boxes_to_world(boxes[keep], **{k: v for k, v in geometry_keywords(geometry).items() if k != "image_shape"})
        prepared = preprocess_image(sitk.GetArrayFromImage(image)[None].astype(np.float32), geometry, plans)
        in_preprocessed = prepared.restore.original_to_preprocessed(boxes[keep])
        padded = predict_api.pad_to_input(prepared.image, plans["input_size"])
        labels = np.asarray([index_of_value[int(v)] for v in values[keep]])
        answers[hashlib.sha1(padded.tobytes()).hexdigest()] = (normalise_corners(in_preprocessed, plans["input_size"]), labels)
        # the left-right mirrored copy (--tta): a perfect model sees the left kidney on the right, as kidney_right
        lateral = predict_api.lateral_axis(geometry, plans["transpose_forward"])
        if name == "original":  # identity direction: the image x axis is the left-right axis
            assert lateral == plans["transpose_forward"].index(2)
        mirrored = predict_api.pad_to_input(np.flip(prepared.image, axis=lateral + 1), plans["input_size"])
        mirrored_boxes = predict_api.mirror_boxes(in_preprocessed, [lateral], prepared.image.shape[1:])
        answers[hashlib.sha1(mirrored.tobytes()).hexdigest()] = (
            normalise_corners(mirrored_boxes, plans["input_size"]), predict_api.swap_lateral_labels(labels, plans["lateral_pairs"]))
        # the shifted copies: the case moved inside its padding, its boxes with it
        offsets = predict_api.shift_offsets(prepared.image.shape[1:], plans["input_size"])
        assert len(offsets) == len(predict_api.SHIFT_FRACTIONS)  # the test cases leave room on every axis
        copies[name] = 2 + len(offsets)
        for offset in offsets:
            shifted = predict_api.place_in_input(prepared.image, plans["input_size"], offset)
            assert np.array_equal(shifted[(slice(None),) + tuple(slice(o, o + n) for o, n in zip(offset, prepared.image.shape[1:]))],
                                  prepared.image)
            answers[hashlib.sha1(shifted.tobytes()).hexdigest()] = (
                normalise_corners(in_preprocessed + np.tile(offset, 2), plans["input_size"]), labels)

    def oracle(self, member, padded, valid_shape, offset=(0, 0, 0)):
        boxes, labels = answers[hashlib.sha1(np.ascontiguousarray(padded, dtype=np.float32).tobytes()).hexdigest()]
        return boxes, np.ones(len(labels)), labels

    monkeypatch.setattr(predict_api.EnsemblePredictor, "_forward", oracle)
    predict_api.predict(folder, tmp_path / "oracle", model=str(pipeline.model_folder), num_processes=1, progress=False,
                        tta=False)
    summary = predict_api.predict(folder, tmp_path / "oracle_tta", model=str(pipeline.model_folder), num_processes=1,
                                  progress=False)
    assert not summary.failed  # every mirrored and shifted copy was one the oracle expected
    reference = None
    for result_folder, name in [(f, n) for f in ("oracle", "oracle_tta") for n in versions]:
        content = read_output(tmp_path / result_folder / f"{name}.json")
        assert content["ensemble"]["members"] == 2 * (copies[name] if result_folder == "oracle_tta" else 1)
        check_world_corners(content)
        world = {d["label_value"]: d["box_world_mm"] for d in content["detections"]}
        assert sorted(world) == [1, 3] and all(d["score"] == 1.0 for d in content["detections"])
        for value, truth in zip([1, 3], truth_world[name]):
            np.testing.assert_allclose(world[value]["min"], truth.min(0), atol=1e-3)
            np.testing.assert_allclose(world[value]["max"], truth.max(0), atol=1e-3)
        reference = reference or world
        for value in (1, 3):  # same world place whatever the voxel order
            np.testing.assert_allclose(world[value]["min"], reference[value]["min"], atol=1e-3)
            np.testing.assert_allclose(world[value]["max"], reference[value]["max"], atol=1e-3)
    monkeypatch.undo()
    # the trained model on the reoriented copy: geometry stored, world corners exact
    predict_api.predict(folder / "PIL.mha", tmp_path / "model", model=str(pipeline.model_folder), num_processes=1, progress=False,
                        tta=False)
    content = read_output(tmp_path / "model" / "PIL.json")
    reoriented = versions["PIL"][0]
    assert content["direction"] == pytest.approx(list(reoriented.GetDirection()))
    assert content["image_shape"] == list(reoriented.GetSize()[::-1])
    check_world_corners(content)


def test_tta_is_the_default_and_fuses_the_mirrored_and_shifted_copies(pipeline, tmp_path):
    """By default (as nnU-Net) each fold also predicts the copies its training transforms make: the
    left-right mirror (the pipeline's plans train with p_mirror > 0) and one copy per shift offset
    (p_shift > 0); --disable-tta predicts the case alone."""
    from autodetr.atomic_io import read_json
    from autodetr.inference import predict_api
    from autodetr.preprocessing.preprocess_case import preprocess_image
    from autodetr.preprocessing.raw_dataset import Geometry

    image_file = pipeline.test_images[0]
    plans = read_json(pipeline.model_folder / "fold_0" / "plans.json")
    assert plans["training"]["augmentation"]["p_mirror"] > 0 and plans["training"]["augmentation"]["p_shift"] > 0
    image = sitk.ReadImage(str(image_file))
    prepared = preprocess_image(sitk.GetArrayFromImage(image)[None].astype(np.float32), Geometry.from_image(image), plans)
    offsets = predict_api.shift_offsets(prepared.image.shape[1:], plans["input_size"])
    assert len(offsets) >= 4
    case = image_file.name[:-len('_0000.nii.gz')]
    for flags, tta, members in (([], True, 2 + len(offsets)), (["--disable-tta"], False, 1)):
        output = tmp_path / f"tta_{tta}"
        assert run_predict(["-i", str(image_file), "-o", str(output), "-m", str(pipeline.model_folder), "-f", "0", "-np", "1"]
                           + flags) == 0
        content = read_output(output / f"{case}.json")
        assert content["tta"] is tta and content["folds"] == ["0"] and content["ensemble"]["members"] == members
        check_world_corners(content)


def test_broken_file_is_reported_others_written_and_rerun_skips_done(pipeline, tmp_path, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    for image_file in pipeline.test_images:
        (folder / image_file.name).write_bytes(image_file.read_bytes())
    good = pipeline.test_images[0].read_bytes()
    (folder / "broken_0000.nii.gz").write_bytes(good[: len(good) // 3])
    output = tmp_path / "out"
    argv = ["-i", str(folder), "-o", str(output), "-m", str(pipeline.model_folder), "-np", "1"]
    assert run_predict(argv) == 1
    error = capsys.readouterr().err
    failed_lines = [line for line in error.splitlines() if line.startswith("failed:")]
    assert len(failed_lines) == 1 and "broken" in failed_lines[0]
    cases = [p.name[: -len("_0000.nii.gz")] for p in pipeline.test_images]
    for case in cases:
        assert (output / f"{case}.json").is_file()
    assert not (output / "broken.json").exists()
    assert set(pd.read_csv(output / "boxes.csv")["case"]) == set(cases)
    stamps = {case: (output / f"{case}.json").stat().st_mtime_ns for case in cases}
    # rerun: finished cases are skipped, the broken one fails again
    assert run_predict(argv) == 1
    captured = capsys.readouterr()
    assert "2 skipped" in captured.out and "broken" in captured.err
    assert {case: (output / f"{case}.json").stat().st_mtime_ns for case in cases} == stamps
    (folder / "broken_0000.nii.gz").unlink()
    assert run_predict(argv) == 0
    assert run_predict(argv + ["--overwrite"]) == 0
    assert all((output / f"{case}.json").stat().st_mtime_ns != stamps[case] for case in cases)


def test_model_and_fold_choice_errors_are_clear(pipeline_env, tmp_path, capsys):
    image = str(pipeline_env.test_images[0])
    assert run_predict(["-i", image, "-o", str(tmp_path / "a"), "-f", "3"]) == 2
    assert "fold_3" in capsys.readouterr().err
    assert run_predict(["-i", image, "-o", str(tmp_path / "b"), "-m", "autodetrTrainer_drmm__autodetrPlans"]) == 2
    assert "autodetrTrainer_dqm__autodetrPlans" in capsys.readouterr().err  # lists what is available
    assert run_predict(["-i", image, "-o", str(tmp_path / "c"), "-f", "0", "--checkpoint", "final"]) == 0


def test_dicom_series_with_a_missing_slice_is_refused_by_name(pipeline, tmp_path, capsys):
    image = sitk.ReadImage(str(pipeline.test_images[0]))
    folder = tmp_path / "dicom" / "series_gap"
    helpers_pipeline.write_dicom_series(image, folder, "Gap series")
    slices = sorted(folder.iterdir())
    slices[len(slices) // 2].unlink()  # one slice missing: ITK would average the spacing
    nifti = tmp_path / "dicom" / "other.nii.gz"
    sitk.WriteImage(sitk.Cast(image, sitk.sitkInt16), str(nifti))
    assert run_predict(["-i", str(tmp_path / "dicom"), "-o", str(tmp_path / "out"), "-m", str(pipeline.model_folder), "-np", "1"]) != 0
    message = capsys.readouterr().err
    assert "Gap_series" in message and "not evenly spaced" in message
    assert (tmp_path / "out" / "other.json").is_file()  # the other case is still predicted
    assert not (tmp_path / "out" / "Gap_series.json").exists()


@pytest.mark.parametrize("shape", [(8, 16, 16), (1, 1, 1)])
def test_an_image_without_a_body_predicts_nothing_with_a_warning(pipeline, tmp_path, shape):
    air = sitk.GetImageFromArray(np.full(shape, -1000, dtype=np.int16))
    path = tmp_path / "in" / "air.nii.gz"
    path.parent.mkdir()
    sitk.WriteImage(air, str(path))
    with pytest.warns(UserWarning, match="no body found"):
        assert run_predict(["-i", str(path), "-o", str(tmp_path / "out"), "-m", str(pipeline.model_folder), "-np", "1"]) == 0
    assert read_output(tmp_path / "out" / "air.json")["detections"] == []


def test_atlas_prior_predictions_are_the_folds_prior_on_each_case(pipeline_env, tmp_path, capsys):
    """`predict_atlas_prior` on raw images writes, per case, the same atlas prior boxes as the trainer's
    validation baseline computes from the preprocessed case; a broken file fails alone, by name."""
    from autodetr.atomic_io import read_json
    from autodetr.inference.atlas_prior import predict_atlas_prior
    from autodetr.planners.atlas import OrganAtlas, prior_detections_in_original
    from autodetr.preprocessing.restore import RestoreInfo

    pipeline = pipeline_env
    fold_folder = pipeline.model_folder / "fold_0"
    plans = read_json(fold_folder / "plans.json")
    preprocessed = pipeline.roots["preprocessed"] / pipeline.dataset_name / "autodetrPlans"
    validation = read_json(preprocessed.parent / "splits_final.json")[0]["val"]
    folder = tmp_path / "in"
    folder.mkdir()
    for case_id in validation:
        (folder / f"{case_id}_0000.nii.gz").symlink_to(pipeline.raw_folder / "imagesTr" / f"{case_id}_0000.nii.gz")
    (folder / "broken_0000.nii.gz").write_bytes(b"not an image")
    summary = predict_atlas_prior(folder, tmp_path / "out", fold_folder, progress=False)
    assert sorted(summary.written) == sorted(validation) and list(summary.failed) == ["broken"]
    assert "broken" in capsys.readouterr().err and not (tmp_path / "out" / "broken.json").exists()
    atlas = OrganAtlas.from_json(plans["atlas"])
    value_of = {c["index"]: c["label_value"] for c in plans["classes"]}
    for case_id in validation:
        restore = RestoreInfo.from_json(read_json(preprocessed / f"{case_id}.json")["restore"])
        boxes, scores, labels = prior_detections_in_original(atlas, restore)
        detections = read_json(tmp_path / "out" / f"{case_id}.json")["detections"]
        by_label = {d["label_value"]: d for d in detections}
        assert sorted(by_label) == sorted(value_of[int(c)] for c in labels)
        for box, score, label in zip(boxes, scores, labels):
            written = by_label[value_of[int(label)]]
            np.testing.assert_allclose(written["box_voxel"], box, atol=1e-6)
            assert written["score"] == pytest.approx(score)


def test_predict_atlas_prior_fuses_the_chosen_folds_priors(pipeline_env, tmp_path, capsys):
    """`autodetr_predict --atlas-prior` over folds 0 and 1: per case one box per class, lying between the two
    folds' own prior boxes (fused as the fold models' boxes are), the files and boxes.csv of a normal
    prediction; --checkpoint with it is refused in one line."""
    from autodetr.atomic_io import read_json
    from autodetr.planners.atlas import OrganAtlas, prior_detections_in_original
    from autodetr.preprocessing.restore import RestoreInfo

    pipeline = pipeline_env
    preprocessed = pipeline.roots["preprocessed"] / pipeline.dataset_name / "autodetrPlans"
    case_id = sorted(read_json(preprocessed.parent / "splits_final.json")[0]["val"])[0]
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / f"{case_id}_0000.nii.gz").symlink_to(pipeline.raw_folder / "imagesTr" / f"{case_id}_0000.nii.gz")
    model = str(pipeline.model_folder)
    assert run_predict(["-i", str(folder), "-o", str(tmp_path / "prior"), "-m", model, "-f", "0", "1", "--atlas-prior"]) == 0
    assert "atlas prior of model" in capsys.readouterr().out
    content = read_output(tmp_path / "prior" / f"{case_id}.json")
    assert (tmp_path / "prior" / "boxes.csv").is_file()
    restore = RestoreInfo.from_json(read_json(preprocessed / f"{case_id}.json")["restore"])
    per_fold = []
    for fold in ("fold_0", "fold_1"):
        plans = read_json(pipeline.model_folder / fold / "plans.json")
        boxes, _, labels = prior_detections_in_original(OrganAtlas.from_json(plans["atlas"]), restore)
        value_of = {c["index"]: c["label_value"] for c in plans["classes"]}
        per_fold.append({value_of[int(c)]: box for c, box in zip(labels, boxes)})
    detections = {d["label_value"]: np.asarray(d["box_voxel"]) for d in content["detections"]}
    assert len(detections) == len(content["detections"]) and sorted(detections) == sorted(set(per_fold[0]) | set(per_fold[1]))
    assert any(not np.allclose(per_fold[0][v], per_fold[1][v]) for v in set(per_fold[0]) & set(per_fold[1]))
    for value, box in detections.items():
        candidates = np.stack([fold[value] for fold in per_fold if value in fold])
        assert np.all(box >= candidates.min(0) - 1e-6) and np.all(box <= candidates.max(0) + 1e-6)
        if len(candidates) == 2 and not np.allclose(candidates[0], candidates[1]):  # an average, not one fold's box
            assert not np.allclose(box, candidates[0]) and not np.allclose(box, candidates[1])

    assert run_predict(["-i", str(folder), "-o", str(tmp_path / "final"), "-m", model, "--atlas-prior", "--checkpoint", "final"]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "--atlas-prior" in error[0] and not (tmp_path / "final").exists()
