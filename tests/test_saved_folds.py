"""Models trained before a change of plan handling or network construction still load and predict the same
boxes: `tests/data/saved_folds/` holds small fold folders written by an earlier version
(`tests/data/make_saved_folds.py`), with the detections their networks gave then."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from autodetr.detector import detect, load_trained_detector

SAVED = Path(__file__).resolve().parent / "data" / "saved_folds"
FOLDS = sorted(p.name for p in SAVED.iterdir() if p.is_dir())


def test_the_saved_folds_cover_every_objective_and_query_kind() -> None:
    objectives = {json.loads((SAVED / f / "arguments.json").read_text())["objective"] for f in FOLDS}
    kinds = {json.loads((SAVED / f / "plans.json").read_text())["network"].get("queries", "learned") for f in FOLDS}
    assert objectives == {"dqm", "hungarian", "drmm"} and kinds == {"learned", "class_anchored"}


@pytest.mark.parametrize("fold", FOLDS)
def test_a_saved_fold_predicts_the_boxes_it_predicted_when_written(fold: str) -> None:
    model, plans, arguments = load_trained_detector(SAVED / fold)   # strict: every weight must fit
    image = torch.from_numpy(np.load(SAVED / "input.npy", allow_pickle=False))
    with torch.no_grad():
        detections = detect(model(image), arguments["objective"])[0]
    expected = json.loads((SAVED / fold / "detections.json").read_text())
    assert detections["labels"].tolist() == expected["labels"]
    np.testing.assert_allclose(detections["boxes"].numpy(), expected["boxes"], atol=1e-5)
    np.testing.assert_allclose(detections["scores"].numpy(), expected["scores"], atol=1e-5)
