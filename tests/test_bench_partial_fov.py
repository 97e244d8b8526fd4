"""The partial-field-of-view benchmark reuses its test patients only when they are what it would make now."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from conftest import REPO_ROOT

sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
import bench_partial_fov  # noqa: E402


def test_test_patients_of_another_generator_version_are_made_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    made: list[int] = []

    def fake_write(index: int, image: Path, label: Path) -> None:
        image.write_bytes(b"image")
        label.write_bytes(b"label")
        made.append(index)

    monkeypatch.setattr(bench_partial_fov, "generate_case", lambda index, *settings: index)
    monkeypatch.setattr(bench_partial_fov, "write_case", fake_write)
    args = bench_partial_fov.parse_arguments(["-m", str(tmp_path), "--num-cases", "2"])
    folder = tmp_path / "data" / "pelvis"
    bench_partial_fov.write_test_set(folder, args, "pelvis")
    assert len(made) == 2
    bench_partial_fov.write_test_set(folder, args, "pelvis")
    assert len(made) == 2  # same generator and settings: reused

    record = json.loads((folder / "dataset.json").read_text())
    record["phantom"]["generator_version"] -= 1
    (folder / "dataset.json").write_text(json.dumps(record))
    bench_partial_fov.write_test_set(folder, args, "pelvis")
    assert len(made) == 4  # another generator version: made again

    (folder / "dataset.json").unlink()  # an interrupted run of unknown version
    stale = folder / "imagesTs" / "phantom_test_009_0000.nii.gz"
    stale.write_bytes(b"old")
    bench_partial_fov.write_test_set(folder, args, "pelvis")
    assert len(made) == 6 and not stale.exists()
