"""A structure of the phantom: a shape, how it looks, and its label (0 for unlabelled tissue)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from autodetr.phantom.appearance import Painter
from autodetr.phantom.shapes import Shape, SmoothDeformation, zyx


@dataclass
class Structure:
    """A shape with its appearance; label 0 for unlabelled tissue (muscle, bowel, ribs, ...)."""

    name: str
    shape: Shape
    painter: Painter
    label: int = 0
    deformation: SmoothDeformation | None = None
    in_cavity: bool = True  # clipped to the abdominal cavity (else to the body outline)
    fat_capsule_mm: float = 0.0  # fat around it (mm) that labelled organs painted later may not enter


def points(rng: np.random.Generator, g: float, spec: list[tuple[float, float, float]], jitter: float) -> np.ndarray:
    """(x, y, z) triples scaled by g -> [K, 3] zyx points with independent jitter (mm)."""
    return np.stack([zyx(x * g, y * g, z * g) + rng.uniform(-jitter, jitter, 3) for x, y, z in spec])
