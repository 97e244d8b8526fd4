"""Each bad raw dataset gives one clear line naming the file, a non-zero exit, and no output."""
from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from autodetr.planners.entrypoints import plan_and_preprocess_entry


def write_image(path: Path, array: np.ndarray, spacing=(1.0, 1.0, 2.0)) -> None:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing[: image.GetDimension()] if image.GetDimension() <= 3 else spacing + (1.0,))
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path))


def make_dataset(raw: Path, num_cases: int = 2) -> Path:
    """A small valid dataset: a bright block labelled 1 and a smaller one labelled 2 in a CT-like volume."""
    folder = raw / "Dataset601_Tiny"
    for index in range(num_cases):
        image = np.full((12, 16, 16), -1000, np.int16)
        image[2:10, 3:13, 3:13] = 40
        label = np.zeros(image.shape, np.uint8)
        label[3:6, 4:8, 4:8] = 1
        label[6:9, 8:12, 8:12] = 2
        write_image(folder / "imagesTr" / f"case_{index:03d}_0000.nii.gz", image)
        write_image(folder / "labelsTr" / f"case_{index:03d}.nii.gz", label)
    (folder / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "CT"}, "labels": {"background": 0, "liver": 1, "spleen": 2},
        "numTraining": num_cases, "file_ending": ".nii.gz",
    }))
    return folder


def run(capsys, *argv: str) -> tuple[int, str]:
    with pytest.raises(SystemExit) as exit_info:
        plan_and_preprocess_entry(["-np", "1", "--preset", "cpu", *argv])
    return exit_info.value.code, capsys.readouterr().err


def assert_clean_failure(code: int, err: str, roots: dict, *words: str) -> None:
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert code != 0
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for word in words:
        assert word in lines[0], lines[0]
    written = [p for p in roots["preprocessed"].rglob("*") if p.is_file()]
    assert written == [], f"output left behind: {written}"


def test_valid_dataset_runs(roots, capsys):
    make_dataset(roots["raw"], num_cases=5)
    with pytest.raises(SystemExit) as exit_info:
        plan_and_preprocess_entry(["-d", "601", "-np", "1", "--preset", "cpu"])
    assert exit_info.value.code == 0
    assert (roots["preprocessed"] / "Dataset601_Tiny" / "autodetrPlans" / "case_004.npz").is_file()


def test_unknown_dataset_id(roots, capsys):
    make_dataset(roots["raw"])
    code, err = run(capsys, "-d", "777")
    assert_clean_failure(code, err, roots, "777")


def test_missing_root_variable(roots, capsys, monkeypatch):
    monkeypatch.delenv("AUTODETR_raw")
    code, err = run(capsys, "-d", "601")
    assert code != 0 and "AUTODETR_raw" in err and "env.example" in err


def test_missing_dataset_json(roots, capsys):
    folder = make_dataset(roots["raw"])
    (folder / "dataset.json").unlink()
    code, err = run(capsys, "-d", "601")
    assert_clean_failure(code, err, roots, "dataset.json", "missing")


def test_dataset_json_missing_key(roots, capsys):
    folder = make_dataset(roots["raw"])
    content = json.loads((folder / "dataset.json").read_text())
    del content["file_ending"]
    (folder / "dataset.json").write_text(json.dumps(content))
    code, err = run(capsys, "-d", "601")
    assert_clean_failure(code, err, roots, "dataset.json", "file_ending")


def test_image_without_label(roots, capsys):
    folder = make_dataset(roots["raw"])
    (folder / "labelsTr" / "case_001.nii.gz").unlink()
    code, err = run(capsys, "-d", "601")
    assert_clean_failure(code, err, roots, "case_001_0000.nii.gz", "without label")


def test_label_geometry_differs(roots, capsys):
    folder = make_dataset(roots["raw"])
    label = np.zeros((12, 16, 16), np.uint8)
    label[3:6, 4:8, 4:8] = 1
    write_image(folder / "labelsTr" / "case_001.nii.gz", label, spacing=(1.0, 1.0, 3.0))
    code, err = run(capsys, "-d", "601")
    assert_clean_failure(code, err, roots, "case_001.nii.gz", "geometry")


def test_undeclared_label_value(roots, capsys):
    folder = make_dataset(roots["raw"])
    label = np.zeros((12, 16, 16), np.uint8)
    label[3:6, 4:8, 4:8] = 7
    write_image(folder / "labelsTr" / "case_000.nii.gz", label)
    code, err = run(capsys, "-d", "601")
    assert_clean_failure(code, err, roots, "case_000.nii.gz", "[7]", "not declared")


@pytest.mark.parametrize("shape, words", [((16, 16), "2D"), ((2, 12, 16, 16), "4D")])
def test_wrong_dimension(roots, capsys, shape, words):
    folder = make_dataset(roots["raw"])
    path = folder / "imagesTr" / "case_000_0000.nii.gz"
    if len(shape) == 4:
        image = sitk.JoinSeries([sitk.GetImageFromArray(np.zeros(shape[1:], np.int16))] * shape[0])
        sitk.WriteImage(image, str(path))
    else:
        write_image(path, np.zeros(shape, np.int16))
    code, err = run(capsys, "-d", "601")
    assert_clean_failure(code, err, roots, "case_000_0000.nii.gz", words)


def test_truncated_file(roots, capsys):
    folder = make_dataset(roots["raw"])
    path = folder / "imagesTr" / "case_001_0000.nii.gz"
    raw_bytes = gzip.decompress(path.read_bytes())
    path.write_bytes(gzip.compress(raw_bytes[: len(raw_bytes) // 2]))
    code, err = run(capsys, "-d", "601")
    assert_clean_failure(code, err, roots, "case_001_0000.nii.gz", "cannot be read")


def test_garbage_file(roots, capsys):
    folder = make_dataset(roots["raw"])
    (folder / "imagesTr" / "case_001_0000.nii.gz").write_bytes(b"not an image at all")
    code, err = run(capsys, "-d", "601")
    assert_clean_failure(code, err, roots, "case_001_0000.nii.gz", "cannot be read")


def test_empty_label_map_warns_and_gives_zero_boxes(roots, capsys):
    folder = make_dataset(roots["raw"], num_cases=5)
    write_image(folder / "labelsTr" / "case_002.nii.gz", np.zeros((12, 16, 16), np.uint8))
    with pytest.warns(UserWarning, match="empty label map"):
        from autodetr.preprocessing.raw_dataset import list_cases, load_dataset_json, organ_classes, read_case

        dataset_json = load_dataset_json(folder)
        case = [c for c in list_cases(folder, dataset_json) if c.case_id == "case_002"][0]
        assert len(read_case(case, organ_classes(dataset_json, False)).boxes) == 0
    with pytest.raises(SystemExit) as exit_info:
        plan_and_preprocess_entry(["-d", "601", "-np", "1", "--preset", "cpu"])
    assert exit_info.value.code == 0
    content = np.load(roots["preprocessed"] / "Dataset601_Tiny" / "autodetrPlans" / "case_002.npz", allow_pickle=False)
    assert content["boxes"].shape == (0, 6)
