"""The atlas prior's predictions on new cases: the baseline a trained model is read against.

For every case of an input folder, each class's median box of a trained fold's training cases (the fold's
organ atlas, `autodetr.planners.atlas`) is placed in the case's cropped body and mapped back to the
original image exactly as the network's boxes are, without looking at a voxel inside the body. The files
have the prediction format of `autodetr_predict`, so `autodetr_evaluate` scores model and prior alike, on
the same cases. A detector that does not beat these boxes has learned only where organs usually lie.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

from autodetr.atomic_io import read_json
from autodetr.errors import InputError
from autodetr.planners.atlas import OrganAtlas, prior_detections_in_original
from autodetr.plans import Plans

from .inputs import discover_cases
from .outputs import prediction_path, write_case_prediction
from .predict_api import CasePrefetcher, PredictSummary


def predict_atlas_prior(input_path: str | os.PathLike, output_folder: str | os.PathLike, fold_folder: str | os.PathLike,
                        num_processes: int = 1, progress: bool = True) -> PredictSummary:
    """Write `<output_folder>/<case>.json` with the atlas prior of the trained fold in `fold_folder` (its
    `plans.json` holds the atlas of its own training cases) for every case of `input_path`. A case that
    cannot be read is reported on stderr and listed in the summary's `failed`; the others are written."""
    from tqdm import tqdm

    plans_file = Path(fold_folder) / "plans.json"
    if not plans_file.is_file():
        raise InputError(f"{plans_file}: missing; train the fold first")
    plans = read_json(plans_file)
    view = Plans.of(plans)
    if not view.has_atlas:
        raise InputError(f"{plans_file}: the plan has no organ atlas; rerun autodetr_plan_and_preprocess and train again")
    atlas = OrganAtlas.from_json(view.atlas_json)
    cases = discover_cases(input_path, view.in_channels, exclude=output_folder)
    output = Path(output_folder)
    output.mkdir(parents=True, exist_ok=True)
    summary = PredictSummary(folds=[Path(fold_folder).name])
    prefetcher = CasePrefetcher(cases, plans, num_processes)
    try:
        for case, prepared in tqdm(prefetcher, total=len(cases), desc="Atlas prior", unit="case", disable=not progress,
                                   file=sys.stderr):
            if isinstance(prepared, str):
                summary.failed[case.case_id] = prepared
                tqdm.write(f"failed: {case.case_id}: {prepared}", file=sys.stderr)
                continue
            boxes, scores, labels = prior_detections_in_original(atlas, prepared.restore)
            label_values = [view.label_values[int(c)] for c in labels]
            write_case_prediction(prediction_path(output, case.case_id), case.case_id, boxes, scores, label_values,
                                  view.class_names, prepared.restore.geometry,
                                  extra={"model": "atlas prior (image not looked at)", "fold_folder": str(fold_folder)})
            summary.written.append(case.case_id)
    finally:
        prefetcher.close()
    return summary
