"""The fingerprint's foreground intensity statistics, robust to one bad case.

Per case (in the fingerprint's worker): up to `num_samples` foreground voxels per channel, sampled as
nnU-Net samples them (a per-case cap, so a big case does not outweigh the others), that case's 0.5 / 50 /
99.5 percentiles, and two checks:

- a constant or near-constant image (`NEAR_CONSTANT_FRACTION` of its voxels within `near_constant_tolerance`
  of one value) is refused, naming the file: it shows no organ, and its value moved the dataset's mean;
- a CT channel far outside the physical range (`CT_PHYSICAL_RANGE_HU`) over more than
  `LABELLED_OUT_OF_RANGE_FRACTION` of the labelled voxels, or above it over more than
  `IMAGE_OUT_OF_RANGE_FRACTION` of the whole image, or with negative HU wrapped around by an unsigned 16-bit
  type, makes the case an intensity outlier: it is left out of the intensity statistics with a warning naming
  the file (and still preprocessed, clipped as every case). Below these fractions a case's own 0.5 / 99.5
  percentiles stay in the physical range, so the medians below hold whatever the number of cases.

Over the dataset (`intensity_properties`): the clip bounds and the median are the medians over cases of each
case's percentiles, and the mean and std those of the pooled samples clipped to these bounds, so one case can
move neither the bounds nor (beyond its share of clipped samples) the mean. The keys are nnU-Net's.
"""
from __future__ import annotations

import numpy as np

from autodetr.errors import InputError

#: Hounsfield units a CT voxel can hold: air is -1000, dense bone about 3000; metal may exceed the top over a
#: few voxels, which the fraction below tolerates.
CT_PHYSICAL_RANGE_HU = (-1100.0, 4000.0)
#: A case is an intensity outlier when more than this fraction of its labelled voxels is outside the
#: physical range (at most this, its own 0.5 / 99.5 percentiles stay inside), or more than the second
#: fraction of all its voxels is above it (a metal implant stays below that).
LABELLED_OUT_OF_RANGE_FRACTION = 0.005
IMAGE_OUT_OF_RANGE_FRACTION = 0.01
#: Values of int16 HU -1..-32768 stored in an unsigned 16-bit type (air, -1000 HU, becomes 64536).
WRAPPED_RANGE = (32768.0, 65535.0)
#: An image is near-constant when this fraction of its voxels lies within the tolerance of one value.
NEAR_CONSTANT_FRACTION = 0.998
#: Most voxels checked for a near-constant image (a regular subsample of larger images).
CONSTANT_CHECK_VOXELS = 2_000_000
PERCENTILES = (0.5, 50.0, 99.5)
LEFT_OUT = "; left out of the intensity statistics (fix the scan or remove the case)"


def near_constant_tolerance(value: float, is_ct: bool) -> float:
    """Spread below which an image counts as constant: 1 HU for CT, else 1e-3 of the value's size."""
    return 1.0 if is_ct else 1e-3 * max(1.0, abs(float(value)))


def check_not_constant(image: np.ndarray, path: object, is_ct: bool) -> None:
    """Refuse a constant or near-constant image `[z, y, x]` (`NEAR_CONSTANT_FRACTION` of its voxels within
    `near_constant_tolerance`), naming `path`."""
    flat = image.ravel()
    step = max(1, flat.size // CONSTANT_CHECK_VOXELS)
    sample = flat[::step].astype(np.float64)
    tail = (1.0 - NEAR_CONSTANT_FRACTION) / 2 * 100
    low, median, high = np.percentile(sample, (tail, 50.0, 100.0 - tail))
    tolerance = near_constant_tolerance(median, is_ct)
    if high - low <= tolerance:
        share = float(np.mean(np.abs(sample - median) <= tolerance)) * 100
        exact = "constant" if float(sample.min()) == float(sample.max()) else "near-constant"
        raise InputError(f"{path}: {exact} image ({share:.1f} % of the voxels are within {tolerance:g} of {median:g}); "
                         "no organ can be seen in it: fix or remove the case")


def _wrapped_fraction(image: np.ndarray) -> float:
    """Fraction of voxels in `WRAPPED_RANGE` when none is negative (0 otherwise)."""
    if float(image.min()) < 0:
        return 0.0
    return float(np.mean((image >= WRAPPED_RANGE[0]) & (image <= WRAPPED_RANGE[1])))


def ct_range_problem(image: np.ndarray, foreground: np.ndarray) -> str | None:
    """Why a CT channel `[z, y, x]` lies far outside the physical HU range (None when it does not):
    wrap-around of negative HU, labelled voxels outside `CT_PHYSICAL_RANGE_HU`, or voxels above it."""
    low, high = CT_PHYSICAL_RANGE_HU
    wrapped = _wrapped_fraction(image)
    if wrapped > IMAGE_OUT_OF_RANGE_FRACTION:
        return (f"{wrapped:.0%} of the voxels are {WRAPPED_RANGE[0]:g}..{WRAPPED_RANGE[1]:g} and none is negative: "
                f"negative HU wrapped around by an unsigned 16-bit type (air stored as {np.median(image):g}; "
                "re-export the scan as signed int16)")
    if foreground.any():
        values = image[foreground]
        outside = float(np.mean((values < low) | (values > high)))
        if outside > LABELLED_OUT_OF_RANGE_FRACTION:
            return (f"{outside:.1%} of the labelled voxels are outside the physical CT range {low:g}..{high:g} HU "
                    f"(from {values.min():.3g} to {values.max():.3g})")
    above = float(np.mean(image > high))
    if above > IMAGE_OUT_OF_RANGE_FRACTION:
        return f"{above:.1%} of the voxels are above {high:g} HU, outside the physical CT range (up to {image.max():.3g})"
    return None


def sample_foreground(channel: np.ndarray, foreground: np.ndarray, num_samples: int, seed: int = 1234) -> np.ndarray:
    """`num_samples` foreground voxels drawn with replacement (nnU-Net's per-case cap), float32; empty without foreground."""
    values = channel[foreground]
    if not len(values):
        return np.zeros(0, np.float32)
    return np.random.RandomState(seed).choice(values, num_samples, replace=True).astype(np.float32)


def case_intensities(image: np.ndarray, label: np.ndarray | None, ct_channels: list[int], num_samples: int,
                     image_files: list) -> dict:
    """Per-case intensity record of a cropped image `[C, z, y, x]`: refuses a near-constant channel; returns
    `{"samples": [per channel], "percentiles": [per channel, (p0.5, p50, p99.5) or None], "outlier":
    {"channel", "reason"} or None}`."""
    foreground = label > 0 if label is not None else np.zeros(image.shape[1:], bool)
    samples, percentiles, outlier = [], [], None
    for channel in range(image.shape[0]):
        check_not_constant(image[channel], image_files[channel], channel in ct_channels)
        values = sample_foreground(image[channel], foreground, num_samples)
        samples.append(values)
        percentiles.append(np.percentile(values.astype(np.float64), PERCENTILES).tolist() if len(values) else None)
        problem = ct_range_problem(image[channel], foreground) if channel in ct_channels else None
        if problem and outlier is None:
            outlier = {"channel": channel, "reason": problem + LEFT_OUT}
    return {"samples": samples, "percentiles": percentiles, "outlier": outlier}


def _channel_properties(samples: list[np.ndarray], percentiles: list[list[float]]) -> dict:
    """nnU-Net's intensity keys of one channel from its included cases (see the module docstring)."""
    if not samples:
        samples, percentiles = [np.zeros(1, np.float32)], [[0.0, 0.0, 0.0]]
    per_case = np.asarray(percentiles, dtype=np.float64)
    lower, median, upper = np.median(per_case, axis=0)
    pooled = np.concatenate(samples).astype(np.float64)
    clipped = np.clip(pooled, lower, upper)  # what CT normalisation sees
    return {
        "mean": float(clipped.mean()), "median": float(median), "std": float(clipped.std()),
        "min": float(pooled.min()), "max": float(pooled.max()),
        "percentile_99_5": float(upper), "percentile_00_5": float(lower),
    }


def intensity_properties(results: list[dict], num_channels: int, outliers: dict[str, dict]) -> dict:
    """`foreground_intensity_properties_per_channel` over the cases that are no intensity outlier."""
    properties = {}
    for channel in range(num_channels):
        kept = [r for r in results if r["case_id"] not in outliers and len(r["foreground_intensities"][channel])]
        properties[str(channel)] = _channel_properties(
            [r["foreground_intensities"][channel] for r in kept], [r["intensity_percentiles"][channel] for r in kept])
    return properties


def check_some_case_in_range(results: list[dict], outliers: dict[str, dict], image_file) -> None:
    """Refuse a dataset whose every case is an intensity outlier (then its CT channel is not in HU)."""
    if results and len(outliers) == len(results):
        case_id, outlier = next(iter(outliers.items()))
        raise InputError(f"{image_file(case_id, outlier['channel'])}: {outlier['reason'].removesuffix(LEFT_OUT)}; and so is "
                         f"every other case: is channel {outlier['channel']} really CT in Hounsfield units? "
                         "(name it otherwise in dataset.json channel_names, or fix the scans)")


def normalisation_decision(properties: dict, outliers: dict[str, dict], ct_channels: list[int]) -> str:
    """The plan's decision line for the intensity normalisation."""
    parts = []
    for channel, values in properties.items():
        scheme = "CTNormalization" if int(channel) in ct_channels else "ZScoreNormalization"
        parts.append(f"channel {channel}: {scheme}, clip {values['percentile_00_5']:.4g}..{values['percentile_99_5']:.4g}, "
                     f"mean {values['mean']:.4g}, std {values['std']:.4g}")
    left_out = f"; left out (outside the physical CT range): {', '.join(sorted(outliers))}" if outliers else ""
    return ("foreground intensities sampled per case (nnU-Net's cap per case); clip bounds and median are the "
            "medians over cases of each case's 0.5 / 50 / 99.5 percentiles, mean and std those of the pooled samples "
            "clipped to the bounds, so one case cannot move them; " + "; ".join(parts) + left_out)
