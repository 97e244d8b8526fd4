"""What autodetr refuses (docs/refusals.md): one bad file never ruins a dataset, never gives a traceback,
never escapes its root; concurrent runs and killed runs leave nothing inconsistent behind.

Each test builds a tiny dataset in tmp_path (tests/test_bad_input.py) and asserts the exit code, one
`error:` line naming the file, no traceback and no output left behind."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from test_bad_input import assert_clean_failure, make_dataset, run, write_image

from autodetr.atomic_io import read_json, remove_stale_partials, write_json
from autodetr.errors import InputError

DATASET = "Dataset601_Tiny"
REPO = Path(__file__).resolve().parents[1]


def plans_folder(roots: dict) -> Path:
    return roots["preprocessed"] / DATASET / "autodetrPlans"


def plan_ok(capsys, *argv: str) -> str:
    code, err = run(capsys, "-d", "601", *argv)
    assert code == 0, err
    return err


def error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("error:")]


def edit_dataset_json(folder: Path, **changes) -> None:
    content = json.loads((folder / "dataset.json").read_text())
    content.update(changes)
    (folder / "dataset.json").write_text(json.dumps(content))


# ----------------------------------------------------------------------------------------------------
# 1. one bad scan never moves the plan for everyone
# ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("ending, value", [(".mha", np.inf), (".mha", np.nan), (".nii.gz", np.nan), (".nrrd", -np.inf)])
def test_non_finite_voxels_refused_naming_the_file(roots, capsys, ending, value):
    folder = make_dataset(roots["raw"], num_cases=3)
    for path in list(folder.rglob("*.nii.gz")):
        array = sitk.GetArrayFromImage(sitk.ReadImage(str(path)))
        if path.parent.name == "imagesTr":
            array = array.astype(np.float32)
            if path.name.startswith("case_001"):
                array[4:6, 5:8, 5:8] = value
        path.unlink()
        write_image(path.with_name(path.name.replace(".nii.gz", ending)), array)
    edit_dataset_json(folder, file_ending=ending)
    code, err = run(capsys, "-d", "601")
    assert_clean_failure(code, err, roots, f"case_001_0000{ending}", "NaN or infinite")


def _tiny_case_dataset(roots: Path, num_cases: int = 5) -> Path:
    return make_dataset(roots, num_cases=num_cases)


def test_huge_intensity_does_not_flatten_normalisation(roots, capsys):
    folder = _tiny_case_dataset(roots["raw"])
    rng = np.random.default_rng(0)
    for path in sorted((folder / "imagesTr").glob("*.nii.gz")):  # organs with a spread of intensities
        array = sitk.GetArrayFromImage(sitk.ReadImage(str(path))).astype(np.float32)
        array[2:10, 3:13, 3:13] += rng.normal(0, 30, (8, 10, 10)).astype(np.float32)
        if "case_002" in path.name:
            array[4, 5, 5] = 1e30  # inside the liver label
        write_image(path, array)
    plan_ok(capsys)
    plans = read_json(plans_folder(roots) / "plans.json")
    properties = plans["foreground_intensity_properties_per_channel"]["0"]
    assert properties["std"] < 1e3 and abs(properties["mean"]) < 1e3
    for case in ("case_000", "case_002"):
        image = np.load(plans_folder(roots) / f"{case}.npz", allow_pickle=False)["image"]
        assert np.isfinite(image).all()
        assert image.max() - image.min() > 1.0, f"{case}: normalised to a constant"


def test_spacing_outlier_left_out_of_planning_with_warning(roots, capsys):
    folder = _tiny_case_dataset(roots["raw"], num_cases=5)
    plan_ok(capsys, "--no-preprocess")
    reference = read_json(plans_folder(roots) / "plans.json")
    path = folder / "imagesTr" / "case_003_0000.nii.gz"
    write_image(path, sitk.GetArrayFromImage(sitk.ReadImage(str(path))), spacing=(100.0, 100.0, 200.0))
    label = folder / "labelsTr" / "case_003.nii.gz"
    write_image(label, sitk.GetArrayFromImage(sitk.ReadImage(str(label))), spacing=(100.0, 100.0, 200.0))
    with pytest.warns(UserWarning, match="case_003_0000.nii.gz: spacing"):
        err = plan_ok(capsys, "--clean")
    plans = read_json(plans_folder(roots) / "plans.json")
    assert plans["spacing"] == reference["spacing"] and plans["input_size"] == reference["input_size"]
    assert len(plans["warnings"]) == 1 and "case_003_0000.nii.gz" in plans["warnings"][0]
    assert "100x" in plans["warnings"][0]
    assert (plans_folder(roots) / "case_003.npz").is_file()  # still a training case, at the planned spacing
    assert "Traceback" not in err


def test_case_smaller_than_a_feature_map_refused(roots, capsys):
    folder = _tiny_case_dataset(roots["raw"], num_cases=5)
    for sub, name in (("imagesTr", "case_004_0000.nii.gz"), ("labelsTr", "case_004.nii.gz")):
        path = folder / sub / name
        write_image(path, sitk.GetArrayFromImage(sitk.ReadImage(str(path))), spacing=(0.01, 0.01, 0.02))
    code, err = run(capsys, "-d", "601")
    assert_clean_failure(code, err, roots, "case_004_0000.nii.gz", "smallest feature map")


# ----------------------------------------------------------------------------------------------------
# 2. one line, not a traceback
# ----------------------------------------------------------------------------------------------------

BAD_DATASET_JSON = {
    "file_ending_number": ({"file_ending": 5}, "file_ending"),
    "channel_names_list": ({"channel_names": ["CT"]}, "channel_names"),
    "channel_names_gap": ({"channel_names": {"1": "CT"}}, "channel_names"),
    "label_string": ({"labels": {"background": 0, "liver": "one", "spleen": 2}}, "'liver'"),
    "label_null": ({"labels": {"background": 0, "liver": None, "spleen": 2}}, "'liver'"),
    "labels_list": ({"labels": ["liver"]}, "labels"),
}


@pytest.mark.parametrize("change, words", BAD_DATASET_JSON.values(), ids=BAD_DATASET_JSON.keys())
def test_dataset_json_wrong_types(roots, capsys, change, words):
    folder = make_dataset(roots["raw"])
    edit_dataset_json(folder, **change)
    code, err = run(capsys, "-d", "601")
    assert_clean_failure(code, err, roots, "dataset.json", words)


@pytest.mark.parametrize("content, words", [
    (b"42", "JSON object"), (b'["a"]', "JSON object"), (b'{"labels": \xff\xfe}', "UTF-8"),
    (b'{"labels": {"a": 1', "not valid JSON"),
])
def test_dataset_json_not_an_object(roots, capsys, content, words):
    folder = make_dataset(roots["raw"])
    (folder / "dataset.json").write_bytes(content)
    code, err = run(capsys, "-d", "601")
    assert_clean_failure(code, err, roots, "dataset.json", words)


@pytest.mark.parametrize("name", ["dataset_fingerprint.json", "splits_final.json"])
def test_corrupt_cache_file_named(roots, capsys, name):
    make_dataset(roots["raw"], num_cases=3)
    plan_ok(capsys)
    path = roots["preprocessed"] / DATASET / name
    path.write_text('{"case_ids": [')
    code, err = run(capsys, "-d", "601")
    lines = error_lines(err)
    assert code != 0 and len(lines) == 1 and name in lines[0] and "Traceback" not in err


@pytest.mark.parametrize("name, content, words", [
    ("splits_final.json", "{not json", "not valid JSON"),
    ("splits_final.json", "[1, 2]", "fold 0"),
    ("autodetrPlans/plans.json", "[]", "JSON object"),
    ("autodetrPlans/plans.json", b"\xff\xfe", "UTF-8"),
])
def test_training_refuses_corrupt_plans_or_splits(roots, capsys, name, content, words):
    from autodetr.training.entrypoints import main as train_main

    make_dataset(roots["raw"], num_cases=3)
    plan_ok(capsys)
    path = roots["preprocessed"] / DATASET / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(SystemExit) as exit_info:
        train_main(["601", "0", "--epochs", "1", "--iters-per-epoch", "1", "--num-workers", "0"])
    err = capsys.readouterr().err
    lines = error_lines(err)
    assert exit_info.value.code != 0 and len(lines) == 1 and "Traceback" not in err
    assert Path(name).name in lines[0] and words in lines[0]


def test_truncated_preprocessed_case_named_on_load(roots, capsys):
    from autodetr.training.dataset import load_case

    make_dataset(roots["raw"], num_cases=3)
    plan_ok(capsys)
    npz = plans_folder(roots) / "case_001.npz"
    npz.write_bytes(npz.read_bytes()[: npz.stat().st_size // 2])
    with pytest.raises(InputError, match="case_001.npz: cannot read preprocessed case"):
        load_case(npz)


def test_long_case_name_within_file_name_limit(roots, capsys):
    folder = make_dataset(roots["raw"], num_cases=2)
    long_id = "c" * 235
    for sub, old, new in (("imagesTr", "case_001_0000.nii.gz", f"{long_id}_0000.nii.gz"),
                          ("labelsTr", "case_001.nii.gz", f"{long_id}.nii.gz")):
        (folder / sub / old).rename(folder / sub / new)
    plan_ok(capsys)
    assert (plans_folder(roots) / f"{long_id}.npz").is_file()
    assert not list(plans_folder(roots).glob(".*partial*"))


def test_root_that_is_a_file(roots, capsys, monkeypatch, tmp_path):
    make_dataset(roots["raw"])
    not_a_folder = tmp_path / "a_file"
    not_a_folder.write_text("x")
    monkeypatch.setenv("AUTODETR_preprocessed", str(not_a_folder))
    code, err = run(capsys, "-d", "601")
    lines = error_lines(err)
    assert code != 0 and len(lines) == 1 and "a_file" in lines[0] and "Traceback" not in err


@pytest.mark.parametrize("below", ["a_file/out/x.json", "proc"])
def test_unwritable_output_is_one_line(tmp_path, below):
    (tmp_path / "a_file").write_text("x")
    target = Path("/proc/autodetr_test/x.json") if below == "proc" else tmp_path / below
    with pytest.raises(InputError, match=f"{target}: cannot write"):
        write_json(target, {"a": 1})


def test_full_disk_is_one_line(roots, tmp_path):
    """A file-size limit (RLIMIT_FSIZE) stands in for a full disk: writes fail with EFBIG."""
    make_dataset(roots["raw"], num_cases=2)
    script = textwrap.dedent("""
        import resource, sys
        resource.setrlimit(resource.RLIMIT_FSIZE, (200, 200))
        from autodetr.planners.entrypoints import plan_and_preprocess_entry
        plan_and_preprocess_entry(["-d", "601", "-np", "1", "--preset", "cpu"])
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, encoding="utf-8", errors="replace", timeout=120,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    lines = error_lines(result.stderr)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert len(lines) == 1 and "cannot write" in lines[0] and "File too large" in lines[0], result.stderr
    assert not list(roots["preprocessed"].rglob(".*partial*"))


# ----------------------------------------------------------------------------------------------------
# 3. bad declarations
# ----------------------------------------------------------------------------------------------------

BAD_DECLARATIONS = {
    "duplicate_value": ({"labels": {"background": 0, "liver": 1, "liver_copy": 1, "spleen": 2}}, "used twice"),
    "float_value": ({"labels": {"background": 0, "liver": 1.5, "spleen": 2}}, "1.5"),
    "negative_value": ({"labels": {"background": 0, "liver": -1, "spleen": 2}}, "-1"),
    "numTraining_string": ({"numTraining": "2"}, "numTraining"),
    "numTraining_mismatch": ({"numTraining": 7}, "numTraining"),
    "no_foreground": ({"labels": {"background": 0}}, "no foreground"),
}


@pytest.mark.parametrize("change, words", BAD_DECLARATIONS.values(), ids=BAD_DECLARATIONS.keys())
def test_bad_declarations_refused(roots, capsys, change, words):
    folder = make_dataset(roots["raw"])
    edit_dataset_json(folder, **change)
    code, err = run(capsys, "-d", "601")
    assert_clean_failure(code, err, roots, "dataset.json", words)


def test_duplicate_key_in_dataset_json_refused(roots, capsys):
    folder = make_dataset(roots["raw"])
    text = (folder / "dataset.json").read_text().replace('"liver": 1', '"liver": 1, "liver": 3')
    (folder / "dataset.json").write_text(text)
    code, err = run(capsys, "-d", "601")
    assert_clean_failure(code, err, roots, "dataset.json", "'liver' appears twice")


def test_evaluation_refuses_undeclared_label_value(roots, capsys, tmp_path):
    from autodetr.evaluation import api
    from autodetr.evaluation.entrypoints import main as evaluate_main

    folder = make_dataset(roots["raw"], num_cases=2)
    label = np.zeros((12, 16, 16), np.uint8)
    label[3:6, 4:8, 4:8] = 1
    label[7:9, 8:10, 8:10] = 99
    write_image(folder / "labelsTr" / "case_000.nii.gz", label)
    predictions = tmp_path / "pred"
    for case in ("case_000", "case_001"):
        api.write_prediction(predictions / f"{case}.json", case, np.zeros((0, 6)), [], [], {1: "liver", 2: "spleen"})
    with pytest.raises(SystemExit) as exit_info:
        evaluate_main(["-p", str(predictions), "-g", str(folder), "-o", str(tmp_path / "out")])
    err = capsys.readouterr().err
    lines = error_lines(err)
    assert exit_info.value.code != 0 and len(lines) == 1 and "Traceback" not in err
    assert "case_000.nii.gz" in lines[0] and "[99]" in lines[0]
    assert not (tmp_path / "out" / "metrics.json").exists()


# ----------------------------------------------------------------------------------------------------
# 4. paths stay inside their roots
# ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("argv", [
    ["-d", "Dataset601_Tiny/../../escaped"],
    ["-d", "Dataset601_../escaped"],
    ["-d", "601", "--plans-name", "../../escaped"],
    ["-d", "601", "--plans-name", "/tmp/escaped"],
])
def test_paths_do_not_escape_their_roots(roots, capsys, argv, tmp_path):
    make_dataset(roots["raw"])
    code, err = run(capsys, *argv)
    assert_clean_failure(code, err, roots, "name")
    assert not (tmp_path / "escaped").exists() and not Path("/tmp/escaped").exists()


def test_training_plans_name_does_not_escape(roots, capsys):
    from autodetr.training.entrypoints import main as train_main

    make_dataset(roots["raw"], num_cases=3)
    plan_ok(capsys)
    with pytest.raises(SystemExit) as exit_info:
        train_main(["601", "0", "--plans", "../../x"])
    lines = error_lines(capsys.readouterr().err)
    assert exit_info.value.code != 0 and len(lines) == 1 and "plans name" in lines[0]


# ----------------------------------------------------------------------------------------------------
# 5. concurrency: one run per plans folder; every npz carries its plan identity
# ----------------------------------------------------------------------------------------------------

def test_second_run_on_a_locked_plans_folder_is_refused(roots, capsys):
    make_dataset(roots["raw"], num_cases=2)
    folder = plans_folder(roots)
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import sys, time
            from autodetr.locking import folder_lock
            with folder_lock({str(folder)!r}, "test"):
                print("locked", flush=True)
                time.sleep(60)
        """)], stdout=subprocess.PIPE, text=True, encoding="utf-8", errors="replace")
    try:
        assert holder.stdout.readline().strip() == "locked"
        code, err = run(capsys, "-d", "601")
        lines = error_lines(err)
        assert code != 0 and len(lines) == 1 and "Traceback" not in err
        assert str(folder) in lines[0] and f"pid {holder.pid}" in lines[0]
        assert not list(folder.glob("*.npz")) and not (folder / "plans.json").exists()
    finally:
        holder.kill()
        holder.wait()
    plan_ok(capsys)  # the lock died with its holder
    assert (folder / "case_001.npz").is_file() and not (folder / ".autodetr.lock").exists()


def test_npz_of_another_plan_is_detected_and_redone(roots, capsys):
    from autodetr.training.dataset import case_files

    make_dataset(roots["raw"], num_cases=3)
    plan_ok(capsys, "--input-size", "16", "16", "16")
    folder = plans_folder(roots)
    stale = folder / "case_001.npz"
    stale_bytes = stale.read_bytes()
    plan_ok(capsys, "--input-size", "32", "32", "32")
    stale.write_bytes(stale_bytes)  # what a concurrent run with the first plan could leave behind
    with pytest.raises(InputError, match="case_001.npz: preprocessed with plan"):
        case_files(folder, ["case_000", "case_001", "case_002"])
    plan_ok(capsys, "--input-size", "32", "32", "32")  # a rerun redoes the mismatched case
    assert len(case_files(folder, ["case_000", "case_001", "case_002"])) == 3


# ----------------------------------------------------------------------------------------------------
# 6. workers die with their parent; a killed writer's temporary file is removed on the next run
# ----------------------------------------------------------------------------------------------------

WORKER_SCRIPT = """
import os, sys, time
from pathlib import Path
from autodetr.atomic_io import write_json
from autodetr.parallel import progress_map

def work(index, folder):
    Path(folder, f"pid_{index}").write_text(str(os.getpid()))
    time.sleep(4)
    write_json(Path(folder, f"result_{index}.json"), {"index": index})

if __name__ == "__main__":
    progress_map(work, [(i, sys.argv[1]) for i in range(2)], 2, "test")
"""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    status = Path(f"/proc/{pid}/stat")
    return not (status.is_file() and status.read_text().split(") ")[-1].startswith("Z"))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="parent-death signal is Linux only")
def test_workers_die_with_their_parent(tmp_path):
    script = tmp_path / "workers.py"
    script.write_text(WORKER_SCRIPT)
    parent = subprocess.Popen([sys.executable, str(script), str(tmp_path)], stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while len(list(tmp_path.glob("pid_*"))) < 2:
        assert time.monotonic() < deadline and parent.poll() is None, "workers did not start"
        time.sleep(0.05)
    workers = [int(p.read_text()) for p in tmp_path.glob("pid_*")]
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    deadline = time.monotonic() + 3
    while any(_alive(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(_alive(pid) for pid in workers)
    time.sleep(4.5)  # past the moment the workers would have written
    assert not list(tmp_path.glob("result_*")) and not list(tmp_path.glob(".*partial*"))


def test_stale_partial_file_removed_on_next_run(roots, capsys):
    make_dataset(roots["raw"], num_cases=2)
    plan_ok(capsys)
    folder = plans_folder(roots)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, encoding="utf-8", errors="replace")
    dead_pid = int(dead.stdout)
    stale = folder / f".case_001.npz.{dead_pid}-abcdefgh.partial.npz"
    live = folder / f".case_000.npz.{os.getpid()}-abcdefgh.partial.npz"
    stale.write_bytes(b"half")
    live.write_bytes(b"being written")
    plan_ok(capsys)
    assert not stale.exists() and live.exists()
    live.unlink()
    assert remove_stale_partials(folder) == []
