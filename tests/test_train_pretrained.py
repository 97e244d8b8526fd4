"""`benchmarks/train_pretrained.py --from-demo` packages a run only when it was trained by the recipe it records."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from conftest import REPO_ROOT

sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
import train_pretrained  # noqa: E402


def _run_folder(root: Path, anatomy: str | None, minutes: float = 80.0, num_training: int = 96) -> Path:
    raw = root / "raw" / "Dataset500_Phantom"
    raw.mkdir(parents=True)
    phantom = {"seed": 0, "size": "full", "appearance": "randomised", "field_of_view": "random", "generator_version": 2}
    if anatomy is not None:
        phantom["anatomy"] = anatomy
    (raw / "dataset.json").write_text(json.dumps({"numTraining": num_training, "phantom": phantom}))
    fold = root / "results" / "Dataset500_Phantom" / "autodetrTrainer_dqm__autodetrPlans" / "fold_all"
    fold.mkdir(parents=True)
    (fold / "arguments.json").write_text(json.dumps({"max_minutes": minutes}))
    return root


@pytest.mark.parametrize("anatomy, argv, problem", [
    ("varied", [], "anatomy varied (recipe: mixed)"),
    ("standard", [], "anatomy standard (recipe: mixed)"),
    ("mixed", ["--anatomy", "varied"], "anatomy mixed (recipe: varied)"),
    (None, [], "anatomy standard (recipe: mixed)"),  # recorded before anatomy was
])
def test_a_run_of_other_phantoms_is_refused(tmp_path, capsys, anatomy, argv, problem):
    run = _run_folder(tmp_path / "run", anatomy)
    destination = tmp_path / "packaged"
    with pytest.raises(SystemExit) as exit_info:
        train_pretrained.main(["--from-demo", str(run), "--destination", str(destination), *argv])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and str(run) in error[0] and problem in error[0]
    assert not destination.exists()


def test_a_run_of_another_budget_or_case_count_is_refused(tmp_path, capsys):
    run = _run_folder(tmp_path / "run", "mixed", minutes=20.0, num_training=64)
    with pytest.raises(SystemExit) as exit_info:
        train_pretrained.main(["--from-demo", str(run), "--destination", str(tmp_path / "packaged")])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert "num_training 64 (recipe: 96)" in error and "minutes 20.0 (recipe: 80" in error


def test_the_recipe_run_passes_the_check(tmp_path):
    mixed = train_pretrained.check_run_follows_recipe(_run_folder(tmp_path / "mixed", "mixed"),
                                                      train_pretrained.parse_arguments(["--from-demo", "x"]))
    assert mixed[1]["anatomy"] == "mixed"
    run = _run_folder(tmp_path / "run", "varied")
    args = train_pretrained.parse_arguments(["--from-demo", str(run), "--anatomy", "varied"])
    fold, phantom = train_pretrained.check_run_follows_recipe(run, args)
    assert fold.name == "fold_all" and phantom["generator_version"] == 2 and phantom["anatomy"] == "varied"


def test_a_folder_that_is_no_run_is_refused(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        train_pretrained.main(["--from-demo", str(tmp_path), "--destination", str(tmp_path / "packaged")])
    assert exit_info.value.code == 2
    assert "not a finished autodetr_demo run folder" in capsys.readouterr().err
