"""Torso outline: abdominal cavity, muscle wall, subcutaneous fat, air outside, and the scanner table.

The cross-section is a star-shaped curve around the cavity centre whose radius at angle theta is an
ellipse (semi-axes varying smoothly along z: waist, wider hips, slightly wider lower rib cage) times
a few random low-order harmonics; muscle and fat are radial offsets of it, and the back is flattened
where the patient lies on the table.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from autodetr.phantom.shapes import Grid

ANGLE_BINS = 720


@dataclass
class BodyOutline:
    centre_y: float  # cavity centre (x = 0)
    lateral: float  # cavity semi-axis along x at the waist, mm
    anterior: float  # cavity semi-axis towards -y
    posterior: float  # cavity semi-axis towards +y
    muscle: float  # muscle wall thickness, mm
    fat_lateral: float
    fat_anterior: float
    fat_posterior: float
    harmonics: np.ndarray  # [2 (top, bottom), H, 2 (amplitude, phase)] relative radius wobble
    z_modulation: np.ndarray  # [M, 3 (amplitude, wavelength mm, phase)] of the semi-axes along z
    hip_z: float  # below this z the body widens (pelvis)
    chest_z: float  # above this z the rib cage widens slightly
    z_span: tuple[float, float]  # z where the harmonics interpolate from bottom to top
    table_gap: float  # mm between the flattened back and the table top
    hu: dict[str, float]  # "fat", "muscle", "visceral_fat", "table", "table_foam"

    @classmethod
    def sample(cls, rng: np.random.Generator, scale: float, hip_z: float, chest_z: float,
               z_span: tuple[float, float]) -> "BodyOutline":
        fat = rng.uniform(8, 45)
        harmonics = np.stack([rng.uniform(0, 0.035, size=(2, 4)), rng.uniform(0, 2 * np.pi, size=(2, 4))], axis=-1)
        return cls(
            centre_y=10.0 * scale,
            lateral=125.0 * scale * rng.uniform(0.93, 1.07),
            anterior=90.0 * scale * rng.uniform(0.9, 1.12),
            posterior=100.0 * scale * rng.uniform(0.95, 1.05),
            muscle=rng.uniform(8, 14),
            fat_lateral=fat,
            fat_anterior=fat * rng.uniform(0.7, 1.3),
            fat_posterior=fat * rng.uniform(0.35, 0.7),
            harmonics=harmonics,
            z_modulation=np.stack([rng.uniform(0.0, 0.03, 2), rng.uniform(150, 400, 2),
                                   rng.uniform(0, 2 * np.pi, 2)], axis=-1),
            hip_z=hip_z,
            chest_z=chest_z,
            z_span=z_span,
            table_gap=rng.uniform(0, 4),
            hu={"fat": rng.uniform(-115, -90), "muscle": rng.uniform(42, 58), "visceral_fat": rng.uniform(-110, -85),
                "table": rng.uniform(150, 300), "table_foam": rng.uniform(-950, -850)},
        )

    def semi_axes(self, z: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Cavity (lateral, anterior, posterior) semi-axes at each z (mm)."""
        z = np.asarray(z, dtype=np.float64)
        modulation = 1 + sum(a * np.sin(2 * np.pi * z / w + p) for a, w, p in self.z_modulation)
        hips = 1 + 0.12 / (1 + np.exp((z - self.hip_z) / 25.0))
        chest = 1 + 0.05 / (1 + np.exp(-(z - self.chest_z) / 30.0))
        pelvis_depth = 1 - 0.06 / (1 + np.exp((z - self.hip_z + 30) / 25.0))
        return (self.lateral * modulation * hips * chest, self.anterior * modulation * pelvis_depth,
                self.posterior * modulation * pelvis_depth)

    def cavity_radius(self, z: float, theta: np.ndarray) -> np.ndarray:
        """Cavity boundary radius (mm, from (x=0, y=centre_y)) at angles theta (x = cos, y = sin)."""
        lateral, anterior, posterior = (float(v[0]) for v in self.semi_axes(np.array([z])))
        c, s = np.cos(theta), np.sin(theta)
        semi_y = np.where(s < 0, anterior, posterior)
        exponent = np.where(s < 0, 2.0, 2.6)  # flatter back
        radius = (np.abs(c / lateral) ** exponent + np.abs(s / semi_y) ** exponent) ** (-1 / exponent)
        low, high = self.z_span
        w = float(np.clip((z - low) / max(high - low, 1.0), 0, 1))
        wobble = 1.0
        for order in range(self.harmonics.shape[1]):
            amplitude = (1 - w) * self.harmonics[1, order, 0] + w * self.harmonics[0, order, 0]
            phase = (1 - w) * self.harmonics[1, order, 1] + w * self.harmonics[0, order, 1]
            wobble = wobble + amplitude * np.cos((order + 2) * theta + phase)
        return radius * wobble

    def fat_thickness(self, theta: np.ndarray) -> np.ndarray:
        s = np.sin(theta)
        vertical = np.where(s < 0, self.fat_anterior, self.fat_posterior)
        return self.fat_lateral * np.cos(theta) ** 2 + vertical * s ** 2

    def back_y(self) -> float:
        """y of the flattened back: the skin lies on the table along the whole scan."""
        zs = np.linspace(self.z_span[0], self.z_span[1], 40)
        posterior = min(float(self.cavity_radius(float(z), np.array([np.pi / 2]))[0]) for z in zs)
        return self.centre_y + 0.97 * (posterior + self.muscle + self.fat_posterior)

    def table_y(self, back_y: float | None = None) -> float:
        return (self.back_y() if back_y is None else back_y) + self.table_gap


OUTSIDE, BODY_WALL, CAVITY = 0, 1, 2


def rasterise_body(outline: BodyOutline, grid: Grid, hu: np.ndarray, zone: np.ndarray) -> None:
    """Fill `hu` (air, table, fat, muscle, visceral fat) and `zone` (OUTSIDE, BODY_WALL, CAVITY) slice by slice."""
    y = grid.axis(1)[:, None] - outline.centre_y
    x = grid.axis(2)[None, :]
    radius2d = np.sqrt(x ** 2 + y ** 2).astype(np.float32)
    theta = np.arctan2(y, x)
    bins = np.round((theta + np.pi) / (2 * np.pi) * ANGLE_BINS).astype(np.int64) % ANGLE_BINS
    table_theta = np.arange(ANGLE_BINS) * 2 * np.pi / ANGLE_BINS - np.pi
    fat = outline.fat_thickness(table_theta)
    back_y = outline.back_y()
    back = grid.axis(1)[:, None] <= back_y
    y_world = grid.axis(1)[:, None] + 0 * x
    x_world = x + 0 * y
    table_top = outline.table_y(back_y) - 0.0004 * x_world ** 2  # table top curved up at the sides
    table = (y_world >= table_top) & (y_world < table_top + 6)
    foam = (y_world >= table_top + 6) & (y_world < table_top + 45) & (np.abs(x_world) < 230)
    background = np.full(radius2d.shape, -1000.0, dtype=np.float32)
    background[foam] = outline.hu["table_foam"]
    background[table & (np.abs(x_world) < 240)] = outline.hu["table"]
    lookup = np.array([outline.hu["visceral_fat"], outline.hu["muscle"], outline.hu["fat"]], dtype=np.float32)
    tolerance = 0.25 * min(grid.spacing[1], grid.spacing[2])
    previous = None
    for k, z in enumerate(grid.axis(0)):
        r_cavity = outline.cavity_radius(float(z), table_theta).astype(np.float32)
        if previous is not None and np.abs(r_cavity - previous).max() < tolerance:
            hu[k], zone[k] = hu[k - 1], zone[k - 1]  # outline moved less than a quarter voxel: reuse
            continue
        previous = r_cavity
        r_muscle = r_cavity + np.float32(outline.muscle)
        r_skin = r_muscle + fat.astype(np.float32)
        layer = (radius2d > r_cavity[bins]).view(np.int8) + (radius2d > r_muscle[bins]).view(np.int8)
        inside = (radius2d <= r_skin[bins]) & back
        hu[k] = np.where(inside, lookup[layer], background)
        zone[k] = np.where(inside, np.where(layer == 0, CAVITY, BODY_WALL), OUTSIDE)
