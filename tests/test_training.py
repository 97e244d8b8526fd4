"""autodetr_train end to end on a tiny phantom dataset (CPU, a few seconds per run).

One module-scoped dataset: 6 small phantom cases planned at a coarse spacing with a tiny network, so an
optimizer step takes about 0.1 s on two cores. The AUTODETR_* variables are set only while a test runs
(`dataset_env`), never for the rest of the session.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch

DATASET_ID = 591
TINY_NETWORK = {
    "network.hidden_dim": 32,
    "network.stem_channels": 8,
    "network.stage_channels": [16, 32],
    "network.msa": {"patch_size": 2, "heads": 4, "depth": 1, "dropout": 0.1, "bias": False, "ffn_dim": 64},
    "network.decoder": {"layers": 2, "heads": 4, "points": 2, "ffn_dim": 64, "dropout": 0.0},
    "matching.rho": 3,
}
SHORT = {"epochs": 2, "iterations_per_epoch": 3, "num_workers": 0, "device": "cpu", "progress_bar": False}


@contextmanager
def environment(values: dict[str, str]):
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Raw phantom (6 small cases) planned with the cpu preset, a 12 mm grid and a tiny network."""
    from autodetr.phantom import make_phantom_dataset
    from autodetr.planners.plan_and_preprocess_api import plan_and_preprocess

    base = tmp_path_factory.mktemp("training_data")
    roots = {kind: base / kind for kind in ("raw", "preprocessed")}
    for folder in roots.values():
        folder.mkdir()
    env = {f"AUTODETR_{kind}": str(folder) for kind, folder in roots.items()}
    env["AUTODETR_results"] = str(base / "unused_results")
    with environment(env):
        make_phantom_dataset(roots["raw"], DATASET_ID, num_cases=6, num_test_cases=0, size="small", seed=0)
        folder = plan_and_preprocess(DATASET_ID, preset="cpu", num_processes=1, spacing=[12.0, 12.0, 12.0],
                                     overrides=TINY_NETWORK)
    plans = json.loads((folder / "plans.json").read_text())
    return {"env": env, "plans_folder": folder, "plans": plans, "name": folder.parent.name}


@pytest.fixture
def dataset_env(tiny_dataset: dict, tmp_path: Path):
    """The dataset's roots plus a fresh results root, set while the test runs; yields the results root."""
    results = tmp_path / "results"
    env = dict(tiny_dataset["env"], AUTODETR_results=str(results))
    with environment(env):
        yield results


def _train(fold="0", **kwargs) -> Path:
    from autodetr.training.train_api import train

    options = dict(SHORT)
    options.update(kwargs)
    return train(DATASET_ID, fold, **options)


def _checkpoint(folder: Path, name: str) -> dict:
    return torch.load(folder / name, map_location="cpu", weights_only=True)


REFERENCE_SEED = 7


@pytest.fixture(scope="module")
def reference_run(tiny_dataset: dict, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Fold 0, dqm, 2 epochs x 3 iterations, seed 7, no background worker: the uninterrupted run."""
    results = tmp_path_factory.mktemp("reference_results")
    with environment(dict(tiny_dataset["env"], AUTODETR_results=str(results))):
        folder = _train("fold0", seed=REFERENCE_SEED)
    return folder


def test_end_to_end_outputs(reference_run: Path, tiny_dataset: dict) -> None:
    from matplotlib.image import imread

    from autodetr.detector import load_trained_detector
    from autodetr.evaluation.api import load_prediction

    folder = reference_run
    assert folder.parent.name == "autodetrTrainer_dqm__autodetrPlans" and folder.name == "fold_0"
    assert folder.parent.parent.name == tiny_dataset["name"]
    for name in ("checkpoint_last.pt", "checkpoint_best.pt", "checkpoint_final.pt", "training_log.txt",
                 "progress.png", "plans.json", "arguments.json"):
        assert (folder / name).is_file(), name
    image = imread(folder / "progress.png")
    assert image.ndim == 3 and image.shape[0] > 200 and image.shape[1] > 200
    arguments = json.loads((folder / "arguments.json").read_text())
    assert arguments["objective"] == "dqm" and arguments["fold"] == 0 and arguments["seed"] == REFERENCE_SEED
    plans = json.loads((folder / "plans.json").read_text())
    assert plans["network"]["hidden_dim"] == 32 and plans["training"]["epochs"] == 2
    assert "augmentation" in plans["training"]
    log = (folder / "training_log.txt").read_text()
    assert "epoch 2/2" in log and "train_loss" in log and "it/s" in log and "mAP" in log

    splits = json.loads((tiny_dataset["plans_folder"].parent / "splits_final.json").read_text())
    val_cases = sorted(splits[0]["val"])
    written = sorted(p.stem for p in (folder / "validation").glob("*.json") if p.name != "metrics.json")
    assert written == val_cases
    for case in val_cases:
        content = load_prediction(folder / "validation" / f"{case}.json")
        assert len(content["detections"]) == len(plans["classes"])
        first = content["detections"][0]
        assert first["box_world_mm"] is not None and len(first["box_world_mm"]["corners"]) == 8
        shape = content["image_shape"]
        assert np.all(content["boxes"][:, 3:] <= np.asarray(shape) + 1e-6) and np.all(content["boxes"][:, :3] >= -1e-6)
    metrics = json.loads((folder / "validation" / "metrics.json").read_text())
    for key in ("mAP", "AP50", "AP75", "mAR"):
        assert isinstance(metrics[key], float) and math.isfinite(metrics[key]) and 0 <= metrics[key] <= 1

    final = _checkpoint(folder, "checkpoint_final.pt")
    assert final["global_step"] == 6 and final["epoch"] == 2 and final["iteration"] == 0
    assert len(final["history"]["iteration_loss"]) == 6
    assert all(math.isfinite(v) for v in final["history"]["iteration_loss"])
    assert [v["epoch"] for v in final["history"]["validation"]][-1] == 2

    model, loaded_plans, loaded_arguments = load_trained_detector(folder, "cpu")
    assert loaded_arguments["objective"] == "dqm" and loaded_plans == plans
    assert loaded_arguments["checkpoint"].endswith("checkpoint_best.pt")
    assert not model.training

    # the fold's organ atlas comes from its training cases only, and the checkpoint carries its anchors
    from autodetr.model.anchors import anchor_boxes
    from autodetr.planners.atlas import OrganAtlas

    train_cases = sorted(splits[0]["train"])
    assert plans["atlas"]["fold"] == "0" and plans["atlas"]["num_cases"] == len(train_cases)
    atlas = OrganAtlas.from_json(plans["atlas"])
    assert torch.allclose(final["model"]["decoder.anchors"], anchor_boxes(atlas, plans["network"]["num_queries"]))
    assert "atlas prior" in log


def test_resume_gives_the_same_losses(dataset_env: Path, reference_run: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Interrupted right after its first epoch (as Ctrl-C would), then --resume: the per-iteration losses
    of the uninterrupted run."""
    from autodetr.training import trainer as trainer_module

    straight = _checkpoint(reference_run, "checkpoint_final.pt")["history"]["iteration_loss"]
    original = trainer_module.Trainer._finish_epoch_record

    def interrupt_after_first_epoch(self, epoch, complete):
        original(self, epoch, complete)
        if epoch == 0:
            raise KeyboardInterrupt

    monkeypatch.setattr(trainer_module.Trainer, "_finish_epoch_record", interrupt_after_first_epoch)
    with pytest.raises(KeyboardInterrupt):
        _train(seed=REFERENCE_SEED)
    monkeypatch.setattr(trainer_module.Trainer, "_finish_epoch_record", original)
    folder = dataset_env / reference_run.parent.parent.name / reference_run.parent.name / "fold_0"
    interrupted = _checkpoint(folder, "checkpoint_last.pt")
    assert interrupted["global_step"] == 3 and not (folder / "checkpoint_final.pt").exists()
    _train(seed=REFERENCE_SEED, resume=True)
    resumed = _checkpoint(folder, "checkpoint_final.pt")
    assert resumed["global_step"] == 6
    np.testing.assert_allclose(resumed["history"]["iteration_loss"], straight, rtol=1e-6, atol=1e-6)
    assert resumed["history"]["epoch"] == [1, 2]
    assert "resumed from checkpoint_last.pt" in (folder / "training_log.txt").read_text()


def _sigint_as_from_a_terminal() -> None:
    """In the child before exec: SIGINT neither ignored nor blocked, as in a process started from a shell.
    Both are inherited, and the pytest process may carry either from an earlier test's libraries."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


def test_ctrl_c_saves_and_resume_matches(dataset_env: Path, reference_run: Path) -> None:
    """SIGINT to the CLI in its second epoch (with a background worker): exit 130 and checkpoint_last.pt;
    --resume finishes with the losses of the uninterrupted run (made without a worker)."""
    straight = _checkpoint(reference_run, "checkpoint_final.pt")["history"]["iteration_loss"]
    command = [sys.executable, "-m", "autodetr.training.entrypoints", str(DATASET_ID), "0", "--epochs", "2",
               "--iters-per-epoch", "3", "--device", "cpu", "--num-workers", "1", "--seed", str(REFERENCE_SEED),
               "--no-progress-bar"]
    folder = dataset_env / reference_run.parent.parent.name / reference_run.parent.name / "fold_0"
    log = folder / "training_log.txt"
    log.unlink(missing_ok=True)  # an earlier run's log already says "epoch 1/2": only this run's may count
    process = subprocess.Popen(command, env=dict(os.environ), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               encoding="utf-8", errors="replace", preexec_fn=_sigint_as_from_a_terminal)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and process.poll() is None:
        if log.is_file() and "epoch 1/2" in log.read_text():
            break
        time.sleep(0.02)
    assert process.poll() is None, process.communicate()
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    # exit 130, or death by SIGINT after the checkpoint was saved: a shell reports $? 130 for both. The second
    # happened in 2 of 40 standalone runs, when the signal landed while the second epoch's augmenter started
    # its worker (the log then says "interrupted at epoch 2, iteration 0"); its cause is not yet understood.
    assert process.returncode in (130, -signal.SIGINT), stderr
    assert "interrupted" in stderr
    assert "interrupted" in log.read_text()
    assert 3 <= _checkpoint(folder, "checkpoint_last.pt")["global_step"] <= 6
    subprocess.run(command + ["--resume"], env=dict(os.environ), check=True, capture_output=True, timeout=300)
    resumed = _checkpoint(folder, "checkpoint_final.pt")
    np.testing.assert_allclose(resumed["history"]["iteration_loss"], straight, rtol=1e-6, atol=1e-6)
    assert (folder / "validation" / "metrics.json").is_file()


def test_ddp_two_processes_on_cpu(dataset_env: Path, tiny_dataset: dict) -> None:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "autodetr.training.entrypoints", str(DATASET_ID), "fold1", "--epochs", "2",
               "--iters-per-epoch", "2", "--device", "cpu", "--num-workers", "0", "--no-progress-bar"]
    result = subprocess.run(command, env=env, capture_output=True, text=True, encoding="utf-8", errors="replace", timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    folder = dataset_env / tiny_dataset["name"] / "autodetrTrainer_dqm__autodetrPlans" / "fold_1"
    final = _checkpoint(folder, "checkpoint_final.pt")
    assert final["world_size"] == 2
    assert final["global_step"] == 2 * 2  # as many optimizer steps as one process would take
    assert json.loads((folder / "arguments.json").read_text())["world_size"] == 2
    log = (folder / "training_log.txt").read_text()
    assert "2 x batch" in log and "4 steps" in log
    assert log.count("autodetr_train ") == 1  # only rank 0 writes
    assert (folder / "validation" / "metrics.json").is_file()


@pytest.mark.parametrize("objective", ["drmm", "hungarian"])
def test_other_objectives_train_one_epoch(dataset_env: Path, objective: str) -> None:
    from autodetr.detector import load_trained_detector

    folder = _train("0", objective=objective, epochs=1, iterations_per_epoch=2)
    assert folder.parent.name == f"autodetrTrainer_{objective}__autodetrPlans"
    final = _checkpoint(folder, "checkpoint_final.pt")
    assert final["objective"] == objective and final["global_step"] == 2
    assert all(math.isfinite(v) for v in final["history"]["iteration_loss"])
    metrics = json.loads((folder / "validation" / "metrics.json").read_text())
    assert math.isfinite(metrics["mAP"])
    model, _, arguments = load_trained_detector(folder, "cpu")
    assert arguments["objective"] == objective
    assert ("drmm" in model(torch.zeros(1, 1, *model_input(folder)))) == (objective == "drmm")


def test_paper_configuration_is_a_plan_switch(dataset_env: Path, tiny_dataset: dict) -> None:
    """`--set network.queries="learned"`: the paper's N = rho * M learned queries with global DQM."""
    from autodetr.detector import load_trained_detector

    folder = _train("0", epochs=1, iterations_per_epoch=2, overrides=['network.queries="learned"'])
    plans = json.loads((folder / "plans.json").read_text())
    matching = plans["matching"]
    assert plans["network"]["queries"] == "learned" and plans["network"]["num_queries"] == matching["rho"] * matching["M"]
    model, _, _ = load_trained_detector(folder, "cpu")
    outputs = model(torch.zeros(1, 1, *model_input(folder)))
    assert outputs["pred_logits"].shape[1:] == (plans["network"]["num_queries"], len(plans["classes"]) + 1)


def model_input(folder: Path) -> list[int]:
    return json.loads((folder / "plans.json").read_text())["input_size"]


def test_fold_all_trains_without_validation(dataset_env: Path) -> None:
    folder = _train("all", epochs=1, iterations_per_epoch=1)
    assert folder.name == "fold_all"
    assert (folder / "checkpoint_final.pt").is_file() and not (folder / "checkpoint_best.pt").exists()
    assert not (folder / "validation").exists()


def test_bad_input_is_one_line(dataset_env: Path) -> None:
    from autodetr.errors import InputError
    from autodetr.training.entrypoints import main

    with pytest.raises(InputError, match="fold"):
        _train("fold9")
    with pytest.raises(InputError, match="resume"):
        _train("3", resume=True)
    with pytest.raises(InputError, match="no key"):
        _train("0", overrides=["training.no_such_key=1"])
    with pytest.raises(SystemExit) as exit_info:
        main(["999", "0", "--device", "cpu"])
    assert exit_info.value.code == 2


def test_val_reruns_the_final_validation_and_keeps_the_checkpoints(dataset_env: Path) -> None:
    """`autodetr_train DATASET FOLD --val` (nnU-Net's --val): the finished fold's final validation again,
    with test-time copies as autodetr_predict; validation/ is rewritten with the same figures, no checkpoint
    or plans file changes; refused in one line for a fold that has not finished."""
    import hashlib

    from autodetr.errors import InputError
    from autodetr.training.entrypoints import main

    folder = _train("0", epochs=1, iterations_per_epoch=2)
    kept = ("checkpoint_last.pt", "checkpoint_best.pt", "checkpoint_final.pt", "plans.json", "arguments.json")
    digest = {name: hashlib.sha1((folder / name).read_bytes()).hexdigest() for name in kept}
    before = json.loads((folder / "validation" / "metrics.json").read_text())
    assert before["tta"] is True
    shutil.rmtree(folder / "validation")
    with pytest.raises(SystemExit) as exit_info:
        main([str(DATASET_ID), "0", "--val", "--device", "cpu", "--num-workers", "0", "--no-progress-bar"])
    assert exit_info.value.code == 0
    after = json.loads((folder / "validation" / "metrics.json").read_text())
    assert {k: after[k] for k in ("mAP", "AP75", "mAR", "ECE", "epoch")} == {k: before[k] for k in ("mAP", "AP75", "mAR", "ECE", "epoch")}
    splits = json.loads((Path(os.environ["AUTODETR_preprocessed"]) / folder.parent.parent.name / "splits_final.json").read_text())
    assert sorted(p.stem for p in (folder / "validation").glob("*.json") if p.name != "metrics.json") == sorted(splits[0]["val"])
    assert {name: hashlib.sha1((folder / name).read_bytes()).hexdigest() for name in kept} == digest
    assert "validation only (--val)" in (folder / "training_log.txt").read_text()
    with pytest.raises(InputError, match="--val"):
        _train("1", validation_only=True)
    with pytest.raises(InputError, match="--val"):
        _train("0", validation_only=True, resume=True)
