"""Plan + preprocess on a tiny phantom set: plans, npz, restore JSON and splits as a user relies on."""
from __future__ import annotations

import json

import numpy as np
import SimpleITK as sitk

from autodetr.atomic_io import read_json, read_npz
from autodetr.boxes import boxes_from_label_map
from autodetr.phantom.generator import make_phantom_dataset
from autodetr.planners.entrypoints import plan_and_preprocess_entry
from autodetr.planners.plan_and_preprocess_api import plan_and_preprocess
from autodetr.preprocessing.preprocess_dataset import case_is_complete
from autodetr.preprocessing.restore import RestoreInfo

PLAN_KEYS = {
    "plans_name", "dataset_name", "preset", "classes", "lateral_pairs", "channel_names", "transpose_forward",
    "transpose_backward", "spacing", "base_spacing", "input_size", "normalization",
    "foreground_intensity_properties_per_channel", "resampling", "network", "matching", "loss", "training", "decisions",
}
NETWORK_KEYS = {
    "backbone", "in_channels", "stem_channels", "stem_stride", "stage_strides", "stage_channels", "blocks_per_stage",
    "num_feature_levels", "hidden_dim", "msa", "decoder", "num_queries",
}


def test_plan_and_preprocess_tiny_phantoms(roots):
    raw_folder = make_phantom_dataset(roots["raw"], dataset_id=500, num_cases=6, num_test_cases=1, size="small", seed=3, num_processes=1)
    folder = plan_and_preprocess(500, preset="cpu", num_processes=2)
    plans = read_json(folder / "plans.json")
    assert PLAN_KEYS <= set(plans)
    assert NETWORK_KEYS <= set(plans["network"])
    for key in ("spacing", "input_size", "network", "num_queries", "eta", "transpose_forward"):
        assert key in plans["decisions"], key
    matching = plans["matching"]
    assert 1 <= matching["eta"] <= 5 and matching["eta"] == int(np.ceil(matching["lambda"] * matching["rho"]))
    # class-anchored queries (the default): rho per class; the atlas of all cases and its decision are in the plan
    assert plans["network"]["queries"] == "class_anchored"
    assert plans["network"]["num_queries"] == int(np.ceil(matching["rho"])) * len(plans["classes"])
    assert plans["atlas"]["num_cases"] == 6 and len(plans["atlas"]["median"]) == len(plans["classes"])
    assert "atlas" in plans["decisions"] and "queries" in plans["decisions"]
    assert plans["training"]["augmentation"]["p_mirror"] == 0.0  # a mirrored body contradicts the anchors
    assert plans["training"]["augmentation"]["p_shift"] > 0 and "shift" in plans["decisions"]  # organs move on the input grid
    names = [c["name"] for c in plans["classes"]]
    assert sorted(plans["lateral_pairs"][0]) == sorted([names.index("kidney_left") + 1, names.index("kidney_right") + 1])

    fingerprint = read_json(folder.parent / "dataset_fingerprint.json")
    assert fingerprint["detection"]["per_class"]["liver"]["presence_frequency"] > 0
    assert fingerprint["detection"]["organs_per_case"]["max"] == matching["M"]

    dataset_json = json.loads((raw_folder / "dataset.json").read_text())
    value_to_index = {c["label_value"]: c["index"] for c in plans["classes"]}
    case_ids = sorted(p.name[: -len("_0000.nii.gz")] for p in (raw_folder / "imagesTr").glob("*_0000.nii.gz"))
    for case_id in case_ids:
        content = read_npz(folder / f"{case_id}.npz")
        restore = RestoreInfo.from_json(read_json(folder / f"{case_id}.json")["restore"])
        assert content["image"].dtype == np.float32 and content["image"].ndim == 4
        assert all(s <= i for s, i in zip(content["image"].shape[1:], plans["input_size"]))
        assert abs(float(content["image"].mean())) < 5  # normalised, not HU
        label = sitk.GetArrayFromImage(sitk.ReadImage(str(raw_folder / "labelsTr" / f"{case_id}{dataset_json['file_ending']}")))
        boxes, values = boxes_from_label_map(label)
        assert sorted(content["classes"].tolist()) == sorted(value_to_index[int(v)] for v in values)
        back = restore.preprocessed_to_original(content["boxes"])
        order = np.argsort(content["classes"])
        np.testing.assert_allclose(back[order], boxes[np.argsort([value_to_index[int(v)] for v in values])], atol=1e-3)
        # every ground truth class is present in the resampled segmentation map
        assert set(content["classes"].tolist()) <= set(np.unique(content["seg"]).tolist())

    splits = read_json(folder.parent / "splits_final.json")
    assert len(splits) == 5
    validation = [set(fold["val"]) for fold in splits]
    assert set.union(*validation) == set(case_ids)
    assert sum(len(v) for v in validation) == len(case_ids)
    for fold in splits:
        assert set(fold["train"]) | set(fold["val"]) == set(case_ids) and not set(fold["train"]) & set(fold["val"])


def test_rerun_skips_finished_and_redoes_broken(roots):
    make_phantom_dataset(roots["raw"], dataset_id=500, num_cases=5, num_test_cases=0, size="small", seed=4, num_processes=1)
    folder = plan_and_preprocess(500, preset="cpu", num_processes=1)
    splits_before = (folder.parent / "splits_final.json").read_text()
    finished = folder / "phantom_000.npz"
    stamp = finished.stat().st_mtime_ns
    broken = folder / "phantom_001.npz"
    broken.write_bytes(broken.read_bytes()[:100])
    assert not case_is_complete(folder, "phantom_001")
    try:
        plan_and_preprocess_entry(["-d", "Dataset500_Phantom", "-np", "1", "--preset", "cpu"])
    except SystemExit as exit_info:
        assert exit_info.code == 0
    assert finished.stat().st_mtime_ns == stamp
    assert case_is_complete(folder, "phantom_001")
    assert (folder.parent / "splits_final.json").read_text() == splits_before
    assert not list(folder.glob("*.partial*"))


def test_overrides_reach_the_plan(roots):
    make_phantom_dataset(roots["raw"], dataset_id=500, num_cases=5, num_test_cases=0, size="small", seed=5, num_processes=1)
    try:
        plan_and_preprocess_entry([
            "-d", "500", "--preset", "cpu", "--no-preprocess", "--rho", "5", "--lambda", "0.4",
            "--set", "network.hidden_dim=48", "--set", "training.batch_size=1",
        ])
    except SystemExit as exit_info:
        assert exit_info.code == 0
    plans = read_json(roots["preprocessed"] / "Dataset500_Phantom" / "autodetrPlans" / "plans.json")
    assert plans["network"]["hidden_dim"] == 48 and plans["training"]["batch_size"] == 1
    assert plans["matching"]["eta"] == 2 and plans["network"]["num_queries"] == 5 * len(plans["classes"])
