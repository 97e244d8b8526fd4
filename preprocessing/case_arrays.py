"""A preprocessed case as arrays: padding to the network input, the left-right axis of the array, and the
boxes of an npz without its image. Shared by training (data loader, validation) and inference."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from autodetr.atomic_io import NPZ_ERRORS
from autodetr.errors import InputError

#: Original array axis of the image x axis (arrays are (z, y, x)).
ORIGINAL_X_AXIS = 2


def left_right_axis(transpose_forward: Sequence[int], direction: Sequence[float] | None = None) -> int:
    """The preprocessed-array axis that runs between the patient's left and right.

    The world x axis (LPS / RAS: right <-> left) is carried by the image index axis whose direction
    column has the largest |x| component (SimpleITK direction, row-major; identity: index axis x, i.e.
    original array axis 2). Preprocessing transposes the array with `transpose_forward`, so that
    original axis ends up at `transpose_forward.index(axis)`."""
    original_axis = ORIGINAL_X_AXIS
    if direction is not None and len(direction) == 9:
        matrix = np.asarray(direction, dtype=np.float64).reshape(3, 3)
        index_axis_xyz = int(np.argmax(np.abs(matrix[0])))  # column j = index axis j (x, y, z)
        original_axis = 2 - index_axis_xyz
    return list(transpose_forward).index(original_axis)


def load_case_boxes(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """`boxes [G, 6]` and `classes [G]` of one npz, without decompressing its image."""
    try:
        with np.load(path, allow_pickle=False) as content:
            return (content["boxes"].astype(np.float64).reshape(-1, 6), content["classes"].astype(np.int64).reshape(-1))
    except NPZ_ERRORS as error:
        raise InputError(f"{path}: cannot read preprocessed case ({type(error).__name__}: {error}); "
                         "rerun autodetr_plan_and_preprocess") from None


def pad_to_input(image: np.ndarray, seg: np.ndarray | None, input_size: Sequence[int], source: object = "case") -> tuple[np.ndarray, np.ndarray | None]:
    """Pad `image [C, D, H, W]` (with its minimum) and `seg [D, H, W]` (with 0) at the high end of each
    axis to `input_size` (the network input; normalised boxes are relative to it)."""
    shape = image.shape[1:]
    size = [int(s) for s in input_size]
    if any(s > t for s, t in zip(shape, size)):
        raise InputError(f"{source}: preprocessed shape {list(shape)} exceeds the plan's input_size {size}; "
                         "preprocess again with these plans")
    padding = [(0, 0)] + [(0, t - s) for s, t in zip(shape, size)]
    padded = np.pad(image, padding, mode="constant", constant_values=float(image.min()) if image.size else 0.0)
    padded_seg = None if seg is None else np.pad(seg, padding[1:], mode="constant", constant_values=0)
    return padded.astype(np.float32, copy=False), padded_seg
