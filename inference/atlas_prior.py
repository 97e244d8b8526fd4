"""The atlas prior's predictions on new cases: the baseline a trained model is read against
(`autodetr_predict --atlas-prior`).

For every case, each chosen fold's organ atlas (each class's median box of that fold's training cases,
`autodetr.planners.atlas`) is placed in the case's cropped body, the folds' boxes are fused by weighted
box clustering exactly as the fold models' boxes are, and the result is mapped back to the original image
as the network's boxes are, without looking at a voxel inside the body. The files have the format of
`autodetr_predict` (same folder layout, `boxes.csv`, masks and Slicer ROIs on request), so
`autodetr_evaluate` scores model and prior alike, on the same cases. A detector that does not beat these
boxes has learned only where organs usually lie.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from autodetr.errors import InputError
from autodetr.model_files import read_plans
from autodetr.planners.atlas import OrganAtlas, prior_detections
from autodetr.plans import Plans

from .ensemble import DEFAULT_IOU_THRESHOLD, fuse_detections
from .predict_api import ModelSelection, PredictOptions, PredictSummary, predict_cases

#: What the prediction files name as the model of each fold member.
PRIOR_CHECKPOINT = "atlas prior (image not looked at)"


@dataclass(frozen=True)
class PriorMember:
    """One fold's atlas, in the place of a fold model (`EnsemblePredictor.members`)."""

    fold: str
    atlas: OrganAtlas
    checkpoint: str = PRIOR_CHECKPOINT


class AtlasPriorPredictor:
    """The atlas priors of the chosen folds, predicting preprocessed cases with `EnsemblePredictor`'s
    interface (`predict_case`, `members`, `class_names`), so `autodetr_predict` writes them the same way."""

    pretrained = None  # the prior is no packaged model

    def __init__(self, fold_folders: Sequence[Path], iou_threshold: float = DEFAULT_IOU_THRESHOLD) -> None:
        self.iou_threshold = iou_threshold
        self.members: list[PriorMember] = []
        view = None
        for folder in fold_folders:
            plans_file = Path(folder) / "plans.json"
            if not plans_file.is_file():
                raise InputError(f"{plans_file}: missing; train the fold first")
            fold_view = Plans.of(read_plans(plans_file))
            if not fold_view.has_atlas:
                raise InputError(f"{plans_file}: the plan has no organ atlas; rerun autodetr_plan_and_preprocess and train again")
            view = view or fold_view
            self.members.append(PriorMember(Path(folder).name.removeprefix("fold_"), OrganAtlas.from_json(fold_view.atlas_json)))
        if view is None:
            raise InputError("no folds to take the atlas prior from")
        self.class_names = view.class_names
        self.label_values = view.label_values

    def predict_case(self, case: Any) -> dict[str, Any]:
        """The fused prior of a `PreprocessedCase`, mapped back to its original image (the keys of
        `EnsemblePredictor.predict_case`)."""
        restore = case.restore
        shape = restore.preprocessed_shape
        detections = [prior_detections(member.atlas, shape) for member in self.members]
        fused = fuse_detections([d[0] for d in detections], [d[1] for d in detections], [d[2] for d in detections],
                                self.iou_threshold, max_per_class=1)
        boxes = restore.boxes_in_original(fused.boxes)
        label_values = np.asarray([self.label_values[int(c)] for c in fused.labels], dtype=np.int64)
        return {"boxes": boxes, "scores": fused.scores, "label_values": label_values, "support": fused.support,
                "members": len(detections), "preprocessed": None}


def predict_atlas_prior(input_path: str | os.PathLike, output_folder: str | os.PathLike, fold_folder: str | os.PathLike,
                        num_processes: int = 1, progress: bool = True) -> PredictSummary:
    """Write `<output_folder>/<case>.json` with the atlas prior of the trained fold in `fold_folder` (its
    `plans.json` holds the atlas of its own training cases) for every case of `input_path`, overwriting
    earlier files. A case that cannot be read is reported on stderr and listed in the summary's `failed`;
    the others are written."""
    return predict_cases(input_path, output_folder, ModelSelection(model=str(Path(fold_folder))),
                         PredictOptions(num_processes=num_processes, overwrite=True, progress=progress, atlas_prior=True))
