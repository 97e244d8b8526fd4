"""Writes `tests/data/saved_folds/`: small trained-fold folders (plans.json, arguments.json,
checkpoint_final.pt) and the detections their networks gave for `input.npy` when they were written.

`tests/test_saved_folds.py` checks that today's code rebuilds each fold and gives the same detections, so
a change of plan handling or network construction cannot silently break models trained before it. The
committed folders were written by the code of the commit that added this script; rerun it only to add a
fold of a new plan format (never to "fix" a failing comparison):

    python tests/data/make_saved_folds.py
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from autodetr.detector import build_detector, detect
from autodetr.model.testing import make_test_plans
from autodetr.planners.atlas import OrganAtlas

FOLDER = Path(__file__).resolve().parent / "saved_folds"
INPUT_SIZE = (16, 24, 32)


def learned_dqm_plan() -> dict:
    """The paper's configuration as plans before class-anchored queries were written: no query kind, no
    backbone default, no training section, no D-RMM location weight."""
    plans = make_test_plans(num_classes=3, input_size=INPUT_SIZE, hidden_dim=16, stage_channels=(4, 8, 16))
    plans["network"].pop("queries", None)
    del plans["training"], plans["loss"]["drmm_location_beta"]
    return plans


def anchored_plan(fine_segmentation: bool) -> dict:
    """Class-anchored queries at an organ atlas (with or without the fine segmentation head)."""
    plans = make_test_plans(num_classes=3, input_size=INPUT_SIZE, hidden_dim=16, stage_channels=(4, 8, 16))
    plans["network"]["queries"] = "class_anchored"
    plans["network"]["mask_enhanced_anchors"] = True
    plans["network"]["num_queries"] = 2 * 3
    if fine_segmentation:
        plans["network"]["fine_segmentation"] = {"stride": plans["network"]["stem_stride"], "channels": 8}
    centres = np.array([[0.3, 0.4, 0.5], [0.6, 0.5, 0.4], [0.5, 0.7, 0.3]])
    sizes = np.array([[0.3, 0.2, 0.25], [0.2, 0.3, 0.2], [0.25, 0.2, 0.3]])
    median = np.concatenate([centres, sizes], axis=1)   # (cz, cy, cx, d, h, w) relative to the body crop
    atlas = OrganAtlas(median=median, low=median - 0.05, high=median + 0.05, frequency=np.array([1.0, 0.9, 0.8]),
                       cases=np.array([10, 9, 8]), num_cases=10, source="tests/data/make_saved_folds.py")
    plans["atlas"] = atlas.to_json()
    return plans


FOLDS = {
    "learned_dqm": (learned_dqm_plan, "dqm"),
    "anchored_dqm": (lambda: anchored_plan(False), "dqm"),
    "anchored_fine_hungarian": (lambda: anchored_plan(True), "hungarian"),
    "anchored_drmm": (lambda: anchored_plan(False), "drmm"),
}


def randomise(model: torch.nn.Module, seed: int) -> None:
    """Every parameter drawn at random (zero-initialised layers too), so each one affects the output."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.1)


def main() -> None:
    image = np.random.default_rng(0).normal(size=(1, 1, *INPUT_SIZE)).astype(np.float32)
    FOLDER.mkdir(parents=True, exist_ok=True)
    np.save(FOLDER / "input.npy", image, allow_pickle=False)
    for seed, (name, (make_plan, objective)) in enumerate(FOLDS.items()):
        folder = FOLDER / name
        folder.mkdir(exist_ok=True)
        plans = make_plan()
        model = build_detector(plans, objective).eval()
        randomise(model, seed)
        with torch.no_grad():
            detections = detect(model(torch.from_numpy(image)), objective)[0]
        (folder / "plans.json").write_text(json.dumps(plans, indent=1))
        (folder / "arguments.json").write_text(json.dumps({"objective": objective}))
        torch.save({"model": model.state_dict()}, folder / "checkpoint_final.pt")
        (folder / "detections.json").write_text(json.dumps({key: value.tolist() for key, value in detections.items()}))
        print(name, sum(p.numel() for p in model.parameters()), "parameters")


if __name__ == "__main__":
    main()
