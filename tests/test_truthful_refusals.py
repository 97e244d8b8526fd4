"""Refusals that tell the truth (docs/refusals.md, issue 34): a file that is no checkpoint is called so
(never torch's advice to load it with weights_only=False), a dataset.json ending is explained, a symlink loop
is named, a plan without classes is one line, a prediction of no declared class is named, a refused write
exits as the docs say, and autodetr_predict reads no file of its output folder that is not a prediction."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from test_bad_input import assert_clean_failure, make_dataset, run

from autodetr.errors import InputError
from autodetr.evaluation import api
from autodetr.evaluation.entrypoints import main as evaluate_main
from autodetr.inference.entrypoints import main as predict_main
from autodetr.phantom.generator import TEST_INDEX_OFFSET, generate_case, write_case
from autodetr.pretrained import pretrained_folder
from autodetr.training.checkpoint import load_checkpoint

REPO = Path(__file__).resolve().parents[1]


def _exit_code(main, argv: list[str]) -> int:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    return int(exit_info.value.code or 0)


def _error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("error:")]


@pytest.fixture
def scan(tmp_path: Path) -> Path:
    """A folder with one small phantom scan to predict."""
    case = generate_case(TEST_INDEX_OFFSET + 3, seed=21, size="small")
    write_case(case, tmp_path / "in" / "scan_0000.nii.gz", tmp_path / "label.nii.gz")
    return tmp_path / "in"


def _fold_copy(tmp_path: Path) -> Path:
    """A copy of the packaged model's fold folder, to break."""
    fold = tmp_path / "model" / "fold_0"
    shutil.copytree(pretrained_folder("phantom-abdomen"), fold)
    return fold


def _predict(fold: Path, scan: Path, output: Path, *extra: str) -> int:
    return _exit_code(predict_main, ["-i", str(scan), "-o", str(output), "-m", str(fold), "-np", "1", "--no-progress",
                                     "--disable-tta", *extra])


# ----------------------------------------------------------------------------------------------------
# checkpoints
# ----------------------------------------------------------------------------------------------------

class _Payload:
    """An object torch.save pickles: weights_only=True refuses to build it."""


@pytest.mark.parametrize("content, words", [
    (os.urandom(4096), "not an archive written by torch.save"),
    (b"", "the file is empty (0 bytes)"),
    ("payload", "Python objects other than tensors"),
    ("no_weights", "no network weights"),
], ids=["random_bytes", "zero_bytes", "pickled_object", "no_weights"])
def test_file_that_is_no_checkpoint_is_called_so(tmp_path, capsys, scan, content, words):
    fold = _fold_copy(tmp_path)
    checkpoint = fold / "checkpoint_final.pt"
    if content == "payload":
        torch.save({"model": {"w": torch.zeros(1)}, "extra": _Payload()}, checkpoint)
    elif content == "no_weights":
        torch.save({"epoch": 3}, checkpoint)
    else:
        checkpoint.write_bytes(content)
    assert _predict(fold, scan, tmp_path / "out") == 2
    err = capsys.readouterr().err
    lines = _error_lines(err)
    assert len(lines) == 1 and "Traceback" not in err, err
    assert str(checkpoint) in lines[0] and "not an autodetr checkpoint" in lines[0] and words in lines[0]
    assert "weights_only=False" not in err and "weights_only` set to `False" not in err
    with pytest.raises(InputError, match="not an autodetr checkpoint") as refused:  # training's loader: the same line
        load_checkpoint(checkpoint)
    assert "False" not in str(refused.value)


def test_plans_without_classes_is_one_line(tmp_path, capsys, scan):
    fold = _fold_copy(tmp_path)
    plans = json.loads((fold / "plans.json").read_text())
    del plans["classes"]
    (fold / "plans.json").write_text(json.dumps(plans))
    assert _predict(fold, scan, tmp_path / "out") == 2
    err = capsys.readouterr().err
    lines = _error_lines(err)
    assert len(lines) == 1 and "Traceback" not in err and "KeyError" not in err, err
    assert str(fold / "plans.json") in lines[0] and "missing key(s) classes" in lines[0]
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------------------------------
# dataset.json file_ending, symlink loops
# ----------------------------------------------------------------------------------------------------

def test_compression_suffix_as_file_ending_says_what_the_ending_must_be(roots, capsys):
    folder = make_dataset(roots["raw"])
    content = json.loads((folder / "dataset.json").read_text())
    content["file_ending"] = ".gz"
    (folder / "dataset.json").write_text(json.dumps(content))
    code, err = run(capsys, "-d", "601")
    assert_clean_failure(code, err, roots, "dataset.json", "'file_ending' '.gz' is only the compression suffix", '".nii.gz"')
    assert "no training images" not in err


def test_ending_that_matches_files_with_other_names_says_so(roots, capsys):
    folder = make_dataset(roots["raw"])
    for path in (folder / "imagesTr").iterdir():
        path.rename(path.with_name(path.name.replace("_0000.nii.gz", ".nii.gz")))  # no channel suffix
    code, err = run(capsys, "-d", "601")
    assert_clean_failure(code, err, roots, "imagesTr", "end in .nii.gz but none is named <case>_<4-digit channel>.nii.gz")


@pytest.mark.parametrize("which", ["image", "label"])
def test_symlink_loop_is_named(roots, capsys, which):
    folder = make_dataset(roots["raw"], num_cases=3)
    path = folder / ("imagesTr/case_001_0000.nii.gz" if which == "image" else "labelsTr/case_001.nii.gz")
    path.unlink()
    path.symlink_to(path.name)  # a link to itself
    code, err = run(capsys, "-d", "601")
    assert_clean_failure(code, err, roots, str(path), "symlink loop")
    assert "file not found" not in err and "without label" not in err


def test_symlink_loop_given_to_predict_is_named(tmp_path, capsys):
    loop = tmp_path / "scan_0000.nii.gz"
    loop.symlink_to(loop.name)
    assert _exit_code(predict_main, ["-i", str(loop), "-o", str(tmp_path / "out"), "--pretrained", "phantom-abdomen",
                                     "-np", "1", "--no-progress"]) == 2
    lines = _error_lines(capsys.readouterr().err)
    assert len(lines) == 1 and str(loop) in lines[0] and "symlink loop" in lines[0]


# ----------------------------------------------------------------------------------------------------
# evaluation, refused writes, the prediction output folder
# ----------------------------------------------------------------------------------------------------

def test_evaluation_names_a_detection_of_no_declared_class(roots, capsys, tmp_path):
    folder = make_dataset(roots["raw"], num_cases=2)
    predictions = tmp_path / "pred"
    boxes = np.asarray([[3, 4, 4, 6, 8, 8], [6, 8, 8, 9, 12, 12]], float)
    api.write_prediction(predictions / "case_000.json", "case_000", boxes, [0.9, 0.8], [1, 99],
                         {1: "liver", 99: "tumour"})
    api.write_prediction(predictions / "case_001.json", "case_001", boxes[:1], [0.9], [1], {1: "liver"})
    assert _exit_code(evaluate_main, ["-p", str(predictions), "-g", str(folder), "-o", str(tmp_path / "out")]) == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    named = [line for line in warnings if "case_000.json" in line]
    assert len(named) == 1 and "label_value [99]" in named[0] and "tumour" in named[0] and "not scored" in named[0]
    assert not any("case_001.json" in line for line in warnings)
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert any("label_value [99]" in w for w in metrics["warnings"])


def test_refused_write_exits_as_the_docs_say(roots, capsys, tmp_path):
    """docs/refusals.md: exit 2 for bad input, 1 when the file system refuses a write."""
    assert "2 for bad input, 1 when the file system refuses a write" in " ".join((REPO / "docs" / "refusals.md").read_text().split())
    folder = make_dataset(roots["raw"], num_cases=2)
    predictions = tmp_path / "pred"
    for case in ("case_000", "case_001"):
        api.write_prediction(predictions / f"{case}.json", case, np.zeros((0, 6)), [], [], {1: "liver"})
    (tmp_path / "a_file").write_text("x")
    assert _exit_code(evaluate_main, ["-p", str(predictions), "-g", str(folder), "-o", str(tmp_path / "a_file" / "out")]) == 1
    lines = _error_lines(capsys.readouterr().err)
    assert len(lines) == 1 and "a_file" in lines[0] and "cannot write" in lines[0]
    assert _exit_code(evaluate_main, ["-p", str(tmp_path / "missing"), "-g", str(folder)]) == 2  # bad input: 2


def test_predict_reads_no_file_of_its_output_folder_that_is_not_a_prediction(tmp_path, capsys, scan):
    output = tmp_path / "out"
    output.mkdir()
    (output / "notes.json").write_text("{my notes, not JSON")
    assert _exit_code(predict_main, ["-i", str(scan), "-o", str(output), "--pretrained", "phantom-abdomen", "-np", "1",
                                     "--no-progress", "--disable-tta"]) == 0
    err = capsys.readouterr().err
    assert "notes.json" not in err and not _error_lines(err)
    table = (output / "boxes.csv").read_text()
    assert "scan," in table and "notes" not in table
    assert (output / "notes.json").read_text() == "{my notes, not JSON"


def test_predict_names_a_scan_whose_ct_values_wrapped_around(tmp_path, recwarn, scan):
    """The planning check's sibling at prediction: a scan stored as uint16 with negative HU wrapped (a real
    export bug) is predicted, with a warning naming the file; the unwrapped scan gets none."""
    import SimpleITK as sitk

    source = scan / "scan_0000.nii.gz"
    image = sitk.ReadImage(str(source))
    wrapped = sitk.GetImageFromArray((sitk.GetArrayFromImage(image).astype(np.int32) % 65536).astype(np.uint16))
    wrapped.CopyInformation(image)
    (tmp_path / "wrapped").mkdir()
    sitk.WriteImage(wrapped, str(tmp_path / "wrapped" / "scan_0000.nii.gz"))
    for folder, expect_warning in ((scan, False), (tmp_path / "wrapped", True)):
        output = tmp_path / f"out_{folder.name}"
        assert _exit_code(predict_main, ["-i", str(folder), "-o", str(output), "--pretrained", "phantom-abdomen",
                                         "-np", "1", "--no-progress", "--disable-tta"]) == 0
        named = [str(w.message) for w in recwarn if "unsigned 16-bit" in str(w.message)]
        recwarn.clear()
        assert bool(named) == expect_warning, named
        if expect_warning:
            assert str(folder / "scan_0000.nii.gz") in named[0] and "predicted anyway" in named[0]
            assert (output / "scan.json").is_file()


@pytest.mark.parametrize("value", [0.0, 40.0])
def test_predict_refuses_a_constant_scan_and_predicts_the_others(tmp_path, capsys, scan, value):
    """The planning refusal's sibling at prediction: a constant scan that is not air (an all-0 export, a
    scan of one soft-tissue value) is named and gets no prediction file; the good scan beside it is predicted."""
    import SimpleITK as sitk

    good = sitk.ReadImage(str(scan / "scan_0000.nii.gz"))
    constant = sitk.GetImageFromArray(np.full(sitk.GetArrayFromImage(good).shape, value, dtype=np.int16))
    constant.CopyInformation(good)
    sitk.WriteImage(constant, str(scan / "flat_0000.nii.gz"))
    output = tmp_path / "out"
    assert _exit_code(predict_main, ["-i", str(scan), "-o", str(output), "--pretrained", "phantom-abdomen",
                                     "-np", "1", "--no-progress", "--disable-tta"]) != 0
    named = [line for line in capsys.readouterr().err.splitlines() if "constant image" in line]
    assert len(named) == 1 and named[0].startswith("failed: flat: ") and str(scan / "flat_0000.nii.gz") in named[0], named
    assert (output / "scan.json").is_file() and not (output / "flat.json").exists()
