"""3D Slicer ROI export (`<case>.mrk.json`): schema fields, and ROI corners on the box's world corners for
identity, rotated and flipped image directions; `autodetr_predict --slicer` writes one ROI per detection."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from autodetr.evaluation.api import find_prediction_files, image_geometry, write_prediction
from autodetr.slicer_markups import MARKUPS_SCHEMA, roi_corners, write_slicer_rois_from_prediction

sys.path.insert(0, str(Path(__file__).parent))
import helpers_pipeline  # noqa: E402


def rotation(axis: int, degrees: float) -> np.ndarray:
    angle = np.radians(degrees)
    c, s = np.cos(angle), np.sin(angle)
    i, j = [a for a in range(3) if a != axis]
    matrix = np.eye(3)
    matrix[i, i], matrix[i, j], matrix[j, i], matrix[j, j] = c, -s, s, c
    return matrix


DIRECTIONS = {
    "identity": np.eye(3),
    "rotated": rotation(2, 30) @ rotation(0, 20),
    "flipped_permuted": np.array([[0.0, 0, -1], [-1, 0, 0], [0, 1, 0]]),       # det -1: a reflection
    "rotated_flipped": rotation(1, 25) @ np.diag([1.0, -1.0, 1.0]),
}
BOXES = np.array([[2.0, 3.0, 4.0, 9.0, 11.0, 7.0], [0.0, 0.0, 0.0, 12.0, 14.0, 10.0], [5.0, 5.0, 5.0, 6.0, 6.0, 6.0]])


def tiny_image(direction: np.ndarray) -> sitk.Image:
    image = sitk.Image([10, 14, 12], sitk.sitkInt16)     # x, y, z: array shape (12, 14, 10)
    image.SetSpacing([0.8, 1.3, 2.5])
    image.SetOrigin([-40.0, 17.5, 103.0])
    image.SetDirection(direction.reshape(-1).tolist())
    return image


def match_corner_sets(found: np.ndarray, expected: np.ndarray, atol: float) -> None:
    """The same 8 corners within `atol` mm: every expected corner has a found one nearby and vice versa
    (a flat box has coinciding corners)."""
    distances = np.linalg.norm(found[:, None] - expected[None], axis=-1)
    assert found.shape == expected.shape == (8, 3)
    assert distances.min(axis=0).max() <= atol and distances.min(axis=1).max() <= atol


def test_markups_file_has_the_schema_fields(tmp_path):
    image = tiny_image(DIRECTIONS["rotated"])
    prediction = tmp_path / "case_a.json"
    write_prediction(prediction, "case_a", BOXES[:2], [0.93, 0.4], [1, 3], {1: "liver", 3: "kidney_left"},
                     **image_geometry(image))
    path = write_slicer_rois_from_prediction(prediction, tmp_path / "case_a.mrk.json")
    content = json.loads(path.read_text())
    assert content["@schema"] == MARKUPS_SCHEMA
    assert content["@schema"].endswith("markups-schema-v1.0.3.json#")
    assert [m["name"] for m in content["markups"]] == ["liver", "kidney_left"]   # descending score
    for markup, score in zip(content["markups"], (0.93, 0.4)):
        assert markup["type"] == "ROI" and markup["coordinateSystem"] == "LPS"
        assert markup["coordinateUnits"] == "mm" and markup["roiType"] == "Box"
        for key, length in (("center", 3), ("size", 3), ("orientation", 9)):
            assert len(markup[key]) == length and all(isinstance(v, float) for v in markup[key])
        point, = markup["controlPoints"]
        assert point["label"] == markup["name"] and point["positionStatus"] == "defined"
        assert point["position"] == markup["center"]
        assert f"{score:.4f}" in markup["description"] and point["description"] == markup["description"]
        axes = np.asarray(markup["orientation"]).reshape(3, 3)
        np.testing.assert_allclose(axes.T @ axes, np.eye(3), atol=1e-9)
        assert np.linalg.det(axes) == pytest.approx(1.0)                       # a rotation, as Slicer expects
    # the evaluation and boxes.csv never take a markups file for a prediction
    files, skipped = find_prediction_files(tmp_path)
    assert list(files) == ["case_a"] and skipped == []


@pytest.mark.parametrize("name", sorted(DIRECTIONS))
def test_roi_corners_are_the_boxes_world_corners(tmp_path, name):
    image = tiny_image(DIRECTIONS[name])
    prediction = tmp_path / "case.json"
    write_prediction(prediction, "case", BOXES, [0.9, 0.8, 0.7], [1, 2, 3], {1: "a", 2: "b", 3: "c"},
                     **image_geometry(image))
    detections = json.loads(prediction.read_text())["detections"]
    markups = json.loads(write_slicer_rois_from_prediction(prediction, tmp_path / "case.mrk.json").read_text())["markups"]
    assert len(markups) == len(detections) == 3
    geometry = image_geometry(image)
    for markup, detection in zip(markups, detections):
        corners = np.asarray(detection["box_world_mm"]["corners"])
        match_corner_sets(roi_corners(markup), corners, atol=0.01)
        # and the corners are SimpleITK's own physical points of the voxel edges (LPS)
        match_corner_sets(roi_corners(markup), helpers_pipeline.voxel_corners_world(geometry, np.asarray(detection["box_voxel"])),
                          atol=0.01)
        spacing_xyz = np.asarray(image.GetSpacing())
        box = np.asarray(detection["box_voxel"])
        np.testing.assert_allclose(markup["size"], (box[3:] - box[:3])[::-1] * spacing_xyz, atol=1e-9)


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    return helpers_pipeline.trained_pipeline(tmp_path_factory)


def test_predict_with_slicer_writes_one_roi_per_detection(pipeline, tmp_path, monkeypatch):
    from autodetr.inference.entrypoints import main as predict_main

    for kind, folder in pipeline.roots.items():
        monkeypatch.setenv(f"AUTODETR_{kind}", str(folder))
    image_file = pipeline.test_images[0]
    reoriented = tmp_path / "in" / "case_pil.mha"
    reoriented.parent.mkdir()
    sitk.WriteImage(helpers_pipeline.reoriented(sitk.ReadImage(str(image_file)), "PIL"), str(reoriented))
    output = tmp_path / "out"
    for extra in ([], ["--slicer"]):   # a rerun with --slicer adds the markups of finished cases
        with pytest.raises(SystemExit) as exit_:
            predict_main(["-i", str(reoriented), "-o", str(output), "-f", "0", "-np", "1", "--no-progress"] + extra)
        assert exit_.value.code == 0
    prediction = json.loads((output / "case_pil.json").read_text())
    markups = json.loads((output / "case_pil.mrk.json").read_text())["markups"]
    assert [m["name"] for m in markups] == [d["class_name"] for d in prediction["detections"]]
    assert len(markups) > 0
    for markup, detection in zip(markups, prediction["detections"]):
        match_corner_sets(roi_corners(markup), np.asarray(detection["box_world_mm"]["corners"]), atol=0.01)
    assert "case_pil.mrk.json" not in (output / "boxes.csv").read_text()
