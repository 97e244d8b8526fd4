"""Cropping: nnU-Net's crop to non-zero, then (for CT) to the body.

nnU-Net's `crop_to_nonzero` removes zero padding only; a CT's air (-1000 HU) is not zero, so the body
crop is what shrinks a detection input. The body is the largest connected component above
`BODY_THRESHOLD_HU`, found on a strided copy for speed and grown by one stride so that nothing of the
body is lost. Labels never extend the crop at inference (there are none), so at training time the crop is
widened to hold every labelled voxel (a label outside the body is kept, not cut).
"""
from __future__ import annotations

import numpy as np
from nnunetv2.preprocessing.cropping.cropping import crop_to_nonzero
from scipy import ndimage

BODY_THRESHOLD_HU = -500.0
BODY_SEARCH_STRIDE = 2


def body_bounding_box(ct_hu: np.ndarray) -> list[list[int]] | None:
    """[[z0, z1], [y0, y1], [x0, x1]] (upper bound exclusive) of the largest component above -500 HU."""
    stride = BODY_SEARCH_STRIDE
    coarse = ct_hu[::stride, ::stride, ::stride] > BODY_THRESHOLD_HU
    if not coarse.any():
        return None
    components, count = ndimage.label(coarse)
    if count > 1:
        sizes = np.bincount(components.ravel())
        sizes[0] = 0
        coarse = components == int(np.argmax(sizes))
    found = ndimage.find_objects(coarse.astype(np.int8))[0]
    return [
        [max(0, (s.start - 1) * stride), min(n, (s.stop + 1) * stride)]
        for s, n in zip(found, ct_hu.shape)
    ]


def crop_case(
    image: np.ndarray, label_map: np.ndarray | None, ct_channels: list[int]
) -> tuple[np.ndarray, np.ndarray | None, list[list[int]]]:
    """Crop `[C, z, y, x]` (and the label map) to non-zero, then to the body; returns the bounding box
    in the input's voxel indices as [[lower, upper), ...] per axis."""
    _, _, nonzero_box = crop_to_nonzero(image, None)
    box = [list(map(int, b)) for b in nonzero_box]
    if ct_channels:
        sliced = tuple(slice(lo, hi) for lo, hi in box)
        body = body_bounding_box(image[ct_channels[0]][sliced])
        if body is not None:
            box = [[lo + b_lo, lo + b_hi] for (lo, _), (b_lo, b_hi) in zip(box, body)]
    if label_map is not None and label_map.any():
        labelled = ndimage.find_objects((label_map != 0).astype(np.int8))[0]
        box = [[min(lo, s.start), max(hi, s.stop)] for (lo, hi), s in zip(box, labelled)]
    slicer = tuple(slice(lo, hi) for lo, hi in box)
    cropped_label = None if label_map is None else label_map[slicer]
    return image[(slice(None),) + slicer], cropped_label, box
