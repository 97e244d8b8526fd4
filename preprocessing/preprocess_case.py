"""Preprocess one case as the plan says: reorient (canonical LPS array order), transpose, crop (non-zero + body), normalise, resample, fit.

The same function serves training (with labels) and inference (image only), so a new scan is prepared
exactly as the training cases were. Steps reuse nnU-Net v2's functions (cropping, CT / z-score
normalisation, anisotropy-aware resampling). Ground-truth boxes are computed on the original label map
and mapped forward with the exact affine voxel mapping (not recomputed from the resampled label map),
so a box mapped back is the original box up to float rounding.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from nnunetv2.preprocessing.normalization.default_normalization_schemes import CTNormalization, ZScoreNormalization
from nnunetv2.preprocessing.resampling.default_resampling import compute_new_shape, resample_data_or_seg_to_shape

from autodetr.plans import Plans
from autodetr.preprocessing.cropping import BODY_THRESHOLD_HU, crop_case
from autodetr.preprocessing.orientation import Reorientation
from autodetr.preprocessing.raw_dataset import Geometry
from autodetr.preprocessing.restore import RestoreInfo

#: Fewest voxels on every axis of a body to detect organs in (a 1-voxel image has none).
MIN_BODY_VOXELS = 2
NORMALIZERS = {"CTNormalization": CTNormalization, "ZScoreNormalization": ZScoreNormalization}


@dataclass
class PreprocessedCase:
    image: np.ndarray  # [C, D, H, W] float32
    seg: np.ndarray | None  # [D, H, W] int16 class indices
    boxes: np.ndarray  # [G, 6] corner boxes in preprocessed voxels
    classes: np.ndarray  # [G] class indices 1..C
    restore: RestoreInfo
    body_found: bool = True  # False: all air or under MIN_BODY_VOXELS voxels on an axis (nothing to detect)
    intensity_problem: str | None = None  # why a CT channel lies outside the physical HU range (set by the caller)


def fitted_shape(cropped_shape: np.ndarray, spacing: np.ndarray, target_spacing: np.ndarray, input_size: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Shape at the target spacing, scaled down uniformly if it exceeds the input size on any axis.

    Returns (new shape, effective spacing). Scaling keeps the aspect ratio, so nothing is cut."""
    new_shape = compute_new_shape(cropped_shape, spacing, target_spacing)
    scale = min(1.0, float(np.min(input_size / np.maximum(new_shape, 1))))
    if scale < 1.0:
        new_shape = np.minimum(np.floor(np.asarray(cropped_shape) * spacing / target_spacing * scale), input_size)
    new_shape = np.maximum(new_shape.astype(int), 1)
    effective_spacing = np.asarray(cropped_shape) * spacing / new_shape
    return new_shape, effective_spacing


def normalise(image: np.ndarray, plans: dict) -> np.ndarray:
    """nnU-Net's normalisation per channel, with the fingerprint's foreground intensity statistics."""
    planned = Plans.of(plans)
    out = np.empty(image.shape, dtype=np.float32)
    for channel in range(image.shape[0]):
        scheme = NORMALIZERS[planned.normalization(channel)]
        properties = planned.intensity_properties(channel)
        out[channel] = scheme(use_mask_for_norm=False, intensityproperties=properties).run(image[channel].copy())
    return out


def preprocess_image(
    image: np.ndarray,
    geometry: Geometry,
    plans: dict,
    class_map: np.ndarray | None = None,
    boxes: np.ndarray | None = None,
    box_classes: np.ndarray | None = None,
) -> PreprocessedCase:
    """Preprocess `image` `[C, z, y, x]` (original array order) and optionally its class-index map and
    corner boxes (original voxels) into the network's grid."""
    planned = Plans.of(plans)
    forward = planned.transpose_forward
    reorientation = Reorientation.planned(planned.orientation, geometry.direction)
    spacing = reorientation.spacing(geometry.spacing_zyx)[forward]
    image = reorientation.array(image).transpose([0] + [a + 1 for a in forward])
    label = None if class_map is None else reorientation.array(class_map).transpose(forward)
    ct_channels = planned.ct_channels
    image, label, crop_box = crop_case(image, label, ct_channels)
    cropped_shape = np.asarray(image.shape[1:])
    body_found = bool(np.all(cropped_shape >= MIN_BODY_VOXELS)) and (
        not ct_channels or bool((image[ct_channels[0]] > BODY_THRESHOLD_HU).any()))
    image = normalise(image, planned)
    target = np.asarray(planned.spacing, dtype=np.float64)
    new_shape, effective_spacing = fitted_shape(cropped_shape, spacing, target, np.asarray(planned.input_size))
    options = planned.resampling
    image = resample_data_or_seg_to_shape(
        image, new_shape, spacing, effective_spacing, is_seg=False, order=options["image_order"],
        order_z=options["order_z"], force_separate_z=None, separate_z_anisotropy_threshold=options["anisotropy_threshold"],
    ).astype(np.float32)
    seg = None
    if label is not None:
        seg = resample_data_or_seg_to_shape(
            label[None].astype(np.int16), new_shape, spacing, effective_spacing, is_seg=True,
            order=options["label_order"], order_z=0, force_separate_z=None,
            separate_z_anisotropy_threshold=options["anisotropy_threshold"],
        )[0].astype(np.int16)
    restore = RestoreInfo(
        geometry=geometry,
        transpose_forward=forward,
        crop_box=crop_box,
        cropped_shape=cropped_shape.tolist(),
        preprocessed_shape=[int(s) for s in new_shape],
        spacing=[float(s) for s in effective_spacing],
        reorientation=reorientation,
    )
    mapped = np.zeros((0, 6), dtype=np.float32)
    if boxes is not None and len(boxes):
        mapped = restore.original_to_preprocessed(boxes).astype(np.float32)
    classes = np.zeros((0,), np.int64) if box_classes is None else np.asarray(box_classes, dtype=np.int64)
    return PreprocessedCase(image, seg, mapped, classes, restore, body_found)
