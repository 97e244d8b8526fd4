"""Scan geometry of a case: the field of view (in mm, from the anatomy) and the voxel grid (per size)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from autodetr.phantom.anatomy import Anatomy
from autodetr.phantom.shapes import Grid

SIZES = ("small", "full")
SPACING_RANGES: dict[str, dict[str, tuple[float, float]]] = {
    "full": {"slice": (1.0, 5.0), "inplane": (0.6, 1.0)},
    "small": {"slice": (6.0, 9.0), "inplane": (6.0, 7.0)},
}
"""Slice spacing (z) and in-plane spacing (y = x) in mm, per size."""
MATRIX_RANGES: dict[str, dict[str, tuple[int, int]]] = {
    "full": {"inplane": (256, 512)},
    "small": {"slices": (32, 52), "inplane": (48, 64)},
}
"""Voxel counts per size (in-plane matrix is square; the slice count of full follows from the z extent)."""


@dataclass
class FieldOfView:
    """What the scan covers, in the patient frame (mm)."""

    z_low: float
    z_high: float
    centre_y: float
    centre_x: float
    width: float  # side of the square in-plane field of view
    protocol: str  # "abdomen_pelvis" or "abdomen" (stops at the iliac crest: no bladder)
    table_z: float  # offset added to z for world coordinates (table position)


def sample_field_of_view(rng: np.random.Generator, anatomy: Anatomy) -> FieldOfView:
    """Top near the liver dome (sometimes cutting it), bottom below the bladder or at the iliac crest."""
    marks, outline = anatomy.landmarks, anatomy.outline
    protocol = "abdomen_pelvis" if rng.random() < 0.75 else "abdomen"
    z_high = marks["liver_top"] + rng.uniform(-20, 45)
    if protocol == "abdomen_pelvis":
        z_low = marks["bladder_floor"] + rng.uniform(-40, 20)
    else:
        z_low = marks["L5"] + rng.uniform(-45, 0)
    body_front = outline.centre_y - outline.anterior - outline.muscle - outline.fat_anterior
    body_centre_y = (body_front + outline.back_y()) / 2
    return FieldOfView(z_low=float(z_low), z_high=float(z_high), centre_y=float(body_centre_y + rng.uniform(-15, 15)),
                       centre_x=float(rng.uniform(-15, 15)), width=float(rng.uniform(330, 460)), protocol=protocol,
                       table_z=float(rng.uniform(-400, 400)))


def sample_grid(rng: np.random.Generator, fov: FieldOfView, size: str) -> Grid:
    """Voxel grid (patient frame) covering `fov` at a spacing drawn from SPACING_RANGES[size]."""
    if size not in SIZES:
        raise ValueError(f"size must be one of {SIZES}, got {size!r}")
    spacing_range = SPACING_RANGES[size]
    extent = fov.z_high - fov.z_low
    inplane = float(rng.uniform(*spacing_range["inplane"]))
    low, high = MATRIX_RANGES[size]["inplane"]
    matrix = int(np.clip(round(fov.width / inplane), low, high))
    if size == "full":
        slice_spacing = float(rng.uniform(*spacing_range["slice"]))
        slices = int(round(extent / slice_spacing)) + 1
    else:
        target = int(rng.integers(36, 49))
        slice_spacing = float(np.clip(extent / target, *spacing_range["slice"]))
        slices = int(np.clip(round(extent / slice_spacing) + 1, *MATRIX_RANGES["small"]["slices"]))
    z_low = fov.z_high - (slices - 1) * slice_spacing
    origin = (z_low, fov.centre_y - (matrix - 1) / 2 * inplane, fov.centre_x - (matrix - 1) / 2 * inplane)
    return Grid((slices, matrix, matrix), (slice_spacing, inplane, inplane), origin)
