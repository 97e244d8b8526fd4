"""Dataset fingerprint: nnU-Net's statistics (spacings, shapes after crop, foreground intensities),
plus the detection statistics the planner needs (box sizes per class in mm, presence frequency per
class, organs per case, boxes that touch the volume border, body extent in mm).

One bad case never moves the plan for everyone: a case whose spacing is far from the others' is left out of
the spacing and size planning (`planning_outliers`), one whose CT values lie far outside the physical range
out of the intensity statistics (`intensity_outliers`, `autodetr.planners.intensity`), each with a warning
naming the file; a constant image is refused."""
from __future__ import annotations

import numpy as np

from autodetr.errors import InputError
from autodetr.parallel import progress_map
from autodetr.plans import Plans
from autodetr.planners.intensity import case_intensities, check_some_case_in_range, intensity_properties
from autodetr.preprocessing.cropping import crop_case
from autodetr.preprocessing.orientation import Reorientation
from autodetr.preprocessing.box_files import read_any_case
from autodetr.preprocessing.raw_dataset import OrganClass, RawCase

FOREGROUND_SAMPLES_TOTAL = 10_000_000


def ct_channel_indices(dataset_json: dict) -> list[int]:
    """Channels named CT (case-insensitive) get CT normalisation and the body crop."""
    return [int(k) for k, name in dataset_json["channel_names"].items() if str(name).strip().lower() == "ct"]


def analyse_case(raw_case: RawCase, classes: list[OrganClass], ct_channels: list[int], num_samples: int) -> dict:
    """Statistics of one training case (runs in a worker process)."""
    case = read_any_case(raw_case, classes)  # label map or box file
    reorientation = Reorientation.from_direction(case.geometry.direction)  # statistics in canonical axis order
    intensities = case_intensities(case.image, case.label_map, ct_channels, num_samples, raw_case.image_files)
    image_cropped, _, _ = crop_case(case.image, case.label_map, ct_channels)
    spacing = reorientation.spacing(case.geometry.spacing_zyx)
    shape = np.asarray(reorientation.shape(case.geometry.shape_zyx))
    boxes = reorientation.boxes(case.boxes, case.geometry.shape_zyx)
    extents_mm = (boxes[:, 3:] - boxes[:, :3]) * spacing if len(boxes) else np.zeros((0, 3))
    touches = (boxes[:, :3] <= 0).any(1) | (boxes[:, 3:] >= shape).any(1) if len(boxes) else np.zeros(0, bool)
    return {
        "case_id": case.case_id,
        "spacing": spacing.tolist(),
        "shape_before_crop": shape.tolist(),
        "shape_after_crop": list(reorientation.shape(image_cropped.shape[1:])),
        "foreground_intensities": intensities["samples"],
        "intensity_percentiles": intensities["percentiles"],
        "intensity_outlier": intensities["outlier"],
        "box_label_values": case.box_label_values.tolist(),
        "box_extents_mm": extents_mm.tolist(),
        "box_touches_border": touches.tolist(),
    }


def _percentiles(values: np.ndarray) -> dict:
    values = np.asarray(values, dtype=np.float64)
    return {
        "min": values.min(0).tolist(),
        "p05": np.percentile(values, 5, axis=0).tolist(),
        "median": np.median(values, axis=0).tolist(),
        "p95": np.percentile(values, 95, axis=0).tolist(),
        "max": values.max(0).tolist(),
    }


#: A case is left out of the spacing and size statistics when its spacing differs from the dataset's median
#: by more than this factor on an axis (CT slices of 0.5 to 5 mm in one dataset are normal; 100 mm or 0.01 mm
#: are not), and by more than SPREAD_LIMIT robust standard deviations
#: (1.4826 x median absolute deviation, in log space) of that axis, so a spread-out real dataset
#: (e.g. 0.6 to 5 mm slices) keeps all its cases.
SPACING_OUTLIER_FACTOR = 8.0
SPREAD_LIMIT = 3.0
MIN_CASES_FOR_OUTLIERS = 3


def spacing_outliers(case_ids: list[str], spacings: np.ndarray) -> dict[str, str]:
    """Cases whose spacing lies far outside the dataset's: `{case_id: reason}` (see SPACING_OUTLIER_FACTOR)."""
    spacings = np.asarray(spacings, dtype=np.float64)
    if len(spacings) < MIN_CASES_FOR_OUTLIERS:
        return {}
    logs = np.log(np.maximum(spacings, 1e-12))
    centre = np.median(logs, axis=0)
    spread = 1.4826 * np.median(np.abs(logs - centre), axis=0)
    limit = np.maximum(np.log(SPACING_OUTLIER_FACTOR), SPREAD_LIMIT * spread)
    median = np.exp(centre)
    outliers = {}
    for case_id, spacing, log in zip(case_ids, spacings, logs):
        far = np.abs(log - centre) > limit
        if far.any():
            ratio = float(np.max(np.exp(np.abs(log - centre))[far]))
            outliers[case_id] = (
                f"spacing {np.round(spacing, 4).tolist()} mm (z, y, x) is {ratio:.3g}x from the dataset median "
                f"{np.round(median, 4).tolist()} mm; left out of the spacing and input size planning"
            )
    return outliers


def aggregate(results: list[dict], classes: list[OrganClass], num_channels: int) -> dict:
    """Combine per-case statistics into the fingerprint (nnU-Net keys kept as nnU-Net names them)."""
    intensity_outliers = {r["case_id"]: r["intensity_outlier"] for r in results if r.get("intensity_outlier")}
    outliers = spacing_outliers([r["case_id"] for r in results], np.asarray([r["spacing"] for r in results]))
    planned = [r for r in results if r["case_id"] not in outliers] or results
    spacings = np.asarray([r["spacing"] for r in planned])
    shapes = np.asarray([r["shape_after_crop"] for r in planned])
    relative = [np.prod(r["shape_after_crop"]) / np.prod(r["shape_before_crop"]) for r in results]
    per_class = {}
    for organ in classes:
        extents = [e for r in results for v, e in zip(r["box_label_values"], r["box_extents_mm"]) if v == organ.label_value]
        cases_with = sum(organ.label_value in r["box_label_values"] for r in results)
        per_class[organ.name] = {
            "label_value": organ.label_value,
            "presence_frequency": cases_with / len(results),
            "num_boxes": len(extents),
            "box_size_mm_zyx": _percentiles(extents) if extents else None,
        }
    organs_per_case = [len(r["box_label_values"]) for r in results]
    touching = [t for r in results for t in r["box_touches_border"]]
    return {
        "num_cases": len(results),
        "case_ids": [r["case_id"] for r in results],
        "planning_outliers": outliers,
        "spacings_all": [r["spacing"] for r in results],
        "shapes_after_crop_all": [r["shape_after_crop"] for r in results],
        "spacings": spacings.tolist(),
        "shapes_after_crop": shapes.tolist(),
        "intensity_outliers": intensity_outliers,
        "foreground_intensity_properties_per_channel": intensity_properties(results, num_channels, intensity_outliers),
        "median_relative_size_after_cropping": float(np.median(relative)),
        "body_extent_mm_zyx": _percentiles(shapes * spacings),
        "detection": {
            "per_class": per_class,
            "organs_per_case": {
                "min": int(np.min(organs_per_case)), "median": float(np.median(organs_per_case)),
                "max": int(np.max(organs_per_case)),
            },
            "boxes_touching_border": int(np.sum(touching)),
            "fraction_of_boxes_touching_border": float(np.mean(touching)) if touching else 0.0,
        },
    }


def extract_fingerprint(
    raw_cases: list[RawCase], classes: list[OrganClass], dataset_json: dict, num_processes: int = 2
) -> dict:
    """Fingerprint of the training cases, read in `num_processes` worker processes."""
    ct_channels = ct_channel_indices(dataset_json)
    num_samples = int(FOREGROUND_SAMPLES_TOTAL // max(1, len(raw_cases)))
    num_samples = min(num_samples, 100_000)
    arguments = [(case, classes, ct_channels, num_samples) for case in raw_cases]
    results = progress_map(analyse_case, arguments, num_processes, "Fingerprint")
    fingerprint = aggregate(results, classes, len(dataset_json["channel_names"]))
    check_some_case_in_range(results, fingerprint["intensity_outliers"],
                             lambda case_id, channel: _image_file(raw_cases, case_id, channel))
    return fingerprint


def _image_file(raw_cases: list[RawCase], case_id: str, channel: int = 0) -> str:
    for case in raw_cases:
        if case.case_id == case_id:
            return str(case.image_files[min(channel, len(case.image_files) - 1)])
    return case_id


def planning_warnings(fingerprint: dict, raw_cases: list[RawCase]) -> list[str]:
    """One line per case left out of the planning statistics (spacing) or the intensity statistics (CT
    values outside the physical range), naming its image file."""
    spacing = [f"{_image_file(raw_cases, case_id)}: {reason}" for case_id, reason in fingerprint.get("planning_outliers", {}).items()]
    intensity = [f"{_image_file(raw_cases, case_id, outlier['channel'])}: {outlier['reason']}"
                 for case_id, outlier in fingerprint.get("intensity_outliers", {}).items()]
    return spacing + intensity


def check_cases_fit_plan(fingerprint: dict, raw_cases: list[RawCase], plans: dict, min_size: int = 4) -> None:
    """Refuse a case that the plan would shrink below `min_size` voxels on an axis (fewer than the
    network's smallest feature map), e.g. one written with a spacing of 0.01 mm."""
    from autodetr.preprocessing.preprocess_case import fitted_shape

    planned = Plans.of(plans)
    forward = planned.transpose_forward
    target = np.asarray(planned.spacing, dtype=np.float64)
    input_size = np.asarray(planned.input_size)
    for case_id, spacing, shape in zip(fingerprint["case_ids"], fingerprint["spacings_all"], fingerprint["shapes_after_crop_all"]):
        new_shape, _ = fitted_shape(np.asarray(shape)[forward], np.asarray(spacing)[forward], target, input_size)
        if new_shape.min() < min_size:
            raise InputError(
                f"{_image_file(raw_cases, case_id)}: would be only {new_shape.tolist()} voxels at the planned spacing "
                f"{np.round(target, 3).tolist()} mm, fewer than the network's smallest feature map ({min_size} per axis); "
                f"its spacing {np.round(spacing, 4).tolist()} mm (z, y, x) is implausible: fix its header or remove the case"
            )
