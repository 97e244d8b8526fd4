"""Shared fixtures: isolated AUTODETR_* roots and the real CT from ../shared."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data" / "totalseg_example"


@pytest.fixture
def roots(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    """Fresh raw / preprocessed / results roots for one test."""
    folders = {kind: tmp_path / kind for kind in ("raw", "preprocessed", "results")}
    for kind, folder in folders.items():
        folder.mkdir()
        monkeypatch.setenv(f"AUTODETR_{kind}", str(folder))
    return folders


def shared_data() -> Path:
    """The real CT example; missing data fails in CI and skips elsewhere."""
    if not (SHARED_DATA / "ct.nii.gz").is_file():
        if os.environ.get("CI"):
            pytest.fail(f"{SHARED_DATA} is missing: CI needs ../shared beside the repository")
        pytest.skip(f"{SHARED_DATA} not available")
    return SHARED_DATA


def write_real_ct_dataset(raw_root: Path, dataset_id: int = 501, image_file: str = "ct.nii.gz") -> Path:
    """A one-case raw dataset (nnU-Net layout) from the real CT and its TotalSegmentator labels."""
    data = shared_data()
    folder = raw_root / f"Dataset{dataset_id:03d}_RealCT"
    (folder / "imagesTr").mkdir(parents=True)
    (folder / "labelsTr").mkdir()
    (folder / "imagesTr" / "real_000_0000.nii.gz").symlink_to(data / image_file)
    (folder / "labelsTr" / "real_000.nii.gz").symlink_to(data / "seg.nii.gz")
    names = json.loads((data / "labels.json").read_text())
    dataset_json = {
        "channel_names": {"0": "CT"},
        "labels": {"background": 0, **{name: int(value) for value, name in names.items()}},
        "numTraining": 1,
        "file_ending": ".nii.gz",
    }
    (folder / "dataset.json").write_text(json.dumps(dataset_json, indent=2))
    return folder
