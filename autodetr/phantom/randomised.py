"""Domain-randomised phantoms: the same anatomy, with appearance and field of view drawn far wider than a
realistic scan's, so that a detector trained on them reads real CT of any phase, scanner and scan range.

The idea is SynthSeg's (Billot et al., Medical Image Analysis 2023): a network trained on images synthesised
from label maps with randomised contrast, resolution and artefacts generalises to real scans it never saw.
Here the label maps are the phantom's anatomy; what is drawn per scan:

- **contrast phase** (`PHASES`): native, arterial, portal-venous or delayed, each with the organ enhancement
  of real CT (`PHASE_HU`: e.g. the portal-venous liver at 95-135 HU, a heterogeneous spleen and the
  kidney's bright cortex around a darker medulla in the arterial phase), then every tissue moved by up to
  `TISSUE_JITTER_HU` on top, well beyond the realistic phantom's ranges;
- **texture inside organs**: smooth texture, vessels in the liver (brighter than the parenchyma after
  contrast, darker before), cysts and lesions in liver, kidneys and spleen, gallstones, a calcified aorta,
  oral contrast or gas in the stomach and bowel, a fattier or denser pancreas;
- **scanner**: noise (5-45 HU), in-plane blur (a soft to sharp kernel), slice thickness (blur along z),
  a smooth intensity bias, and sometimes streaks radiating from a point (metal or beam hardening);
- **field of view** (`sample_field_of_view`): a scan that starts and ends anywhere from the lower chest to
  the pelvis, 80-480 mm long, so organs are cut at either end and the scan's ends say nothing about where
  an organ lies. `FIELDS_OF_VIEW` also names fixed partial ranges (upper abdomen, pelvis) for measuring.

Labels and boxes stay exact: the label map is rasterised on the same grid, and a box is the bounding box of
the organ's voxels inside the scan. Organ sizes and heights can be varied as well (`--anatomy varied`,
`autodetr.phantom.variation`).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from autodetr.phantom.anatomy import Anatomy
from autodetr.phantom.appearance import Bone, Hollow, Painter, Parenchyma, Uniform
from autodetr.phantom.geometry import FieldOfView, sample_field_of_view as standard_field_of_view
from autodetr.phantom.scanner import add_blurred_noise
from autodetr.phantom.shapes import Grid
from autodetr.phantom.structure import Structure

APPEARANCES = ("realistic", "randomised")
PHASES = ("native", "arterial", "portal_venous", "delayed")
FIELDS_OF_VIEW = ("standard", "random", "upper_abdomen", "pelvis")
"""standard: liver dome to bladder or iliac crest (the realistic phantom's); random: anywhere from the lower
chest to the pelvis, 80-480 mm; upper_abdomen: liver dome to the lower pole of the kidneys; pelvis: L4 to
below the bladder."""

#: HU range of each enhancing tissue per phase (native values as in unenhanced CT; arterial: aorta bright,
#: kidney cortex bright around a darker medulla, spleen heterogeneous; portal-venous: liver 95-135 HU;
#: delayed: everything washing out).
PHASE_HU: dict[str, dict[str, tuple[float, float]]] = {
    "native": {"liver": (45, 70), "spleen": (38, 55), "kidney": (25, 42), "kidney_cortex": (25, 42),
               "pancreas": (20, 50), "artery": (30, 50), "portal": (30, 50), "vein": (30, 50), "heart": (30, 50),
               "bowel_wall": (30, 50)},
    "arterial": {"liver": (55, 85), "spleen": (70, 150), "kidney": (40, 90), "kidney_cortex": (140, 260),
                 "pancreas": (80, 140), "artery": (200, 450), "portal": (80, 160), "vein": (40, 90), "heart": (150, 350),
                 "bowel_wall": (60, 120)},
    "portal_venous": {"liver": (95, 135), "spleen": (100, 135), "kidney": (140, 220), "kidney_cortex": (140, 220),
                      "pancreas": (80, 120), "artery": (130, 220), "portal": (140, 220), "vein": (90, 170),
                      "heart": (120, 200), "bowel_wall": (60, 110)},
    "delayed": {"liver": (60, 95), "spleen": (60, 95), "kidney": (90, 160), "kidney_cortex": (90, 160),
                "pancreas": (60, 90), "artery": (80, 130), "portal": (80, 130), "vein": (80, 130), "heart": (80, 130),
                "bowel_wall": (50, 90)},
}
#: Every tissue's value moves by up to this much (uniform), beyond the phase's range.
TISSUE_JITTER_HU = 25.0

ARTERIES = ("aorta", "iliac_artery", "renal_artery", "sma")
PORTAL_VEINS = ("portal_vein", "splenic_vein", "smv")
SYSTEMIC_VEINS = ("inferior_vena_cava", "iliac_vein", "renal_vein")
MUSCLES = ("psoas", "quadratus_lumborum", "erector_spinae", "gluteus")


def _draw(rng: np.random.Generator, low: float, high: float) -> float:
    return float(rng.uniform(low, high) + rng.uniform(-TISSUE_JITTER_HU, TISSUE_JITTER_HU))


def _content(rng: np.random.Generator, oral_contrast: bool) -> float:
    """Content of a hollow organ: water or food, or positive oral contrast."""
    return float(rng.uniform(150, 500)) if oral_contrast and rng.random() < 0.7 else float(rng.uniform(-20, 60))


@dataclass
class _ScanStyle:
    """What one randomised scan drew: its phase, the enhancing tissues' values, oral contrast, muscle, bone."""

    phase: str
    table: dict[str, float]
    oral_contrast: bool
    muscle: float
    bone: Bone
    rng: np.random.Generator

    def lesion(self, base: float) -> float:
        """A lesion darker or brighter than its organ."""
        return float(base + self.rng.choice([-1, 1]) * self.rng.uniform(25, 80))


def randomise_appearance(anatomy: Anatomy, rng: np.random.Generator) -> dict:
    """Replace every structure's painter (and the body's tissue values) with a randomised one; returns what
    was drawn (phase, flags) for the case's info."""
    phase = str(rng.choice(PHASES))
    table = {name: _draw(rng, *span) for name, span in PHASE_HU[phase].items()}
    oral_contrast = bool(rng.random() < 0.3)
    muscle = _draw(rng, 35, 60)
    fat = _draw(rng, -120, -80)
    anatomy.outline.hu.update(fat=fat, visceral_fat=fat + rng.uniform(-15, 15), muscle=muscle)
    bone = Bone(_draw(rng, 350, 1100), _draw(rng, 90, 330), shell_mm=float(rng.uniform(1.0, 3.0)))
    style = _ScanStyle(phase, table, oral_contrast, muscle, bone, rng)
    for structure in anatomy.structures:
        painter = _organ_painter(structure, style) or _tissue_painter(structure, style)
        if painter is not None:
            structure.painter = painter
    return {"phase": phase, "oral_contrast": oral_contrast}


def _organ_painter(structure: Structure, style: _ScanStyle) -> Painter | None:
    """The randomised look of a solid abdominal organ (labelled ones and the heart), None for others."""
    name, table, rng = structure.name, style.table, style.rng
    if name == "liver":
        vessel = table["portal"] if style.phase != "native" else table["liver"] - rng.uniform(10, 30)
        return Parenchyma(table["liver"], rng.uniform(2, 12), vessel=vessel, vessel_width=rng.uniform(0.05, 0.12),
                          lesion=(style.lesion(table["liver"]) if rng.random() < 0.5 else rng.uniform(0, 20))
                          if rng.random() < 0.4 else None, lesion_fraction=rng.uniform(0.005, 0.05))
    if name == "spleen":
        heterogeneous = style.phase == "arterial"
        return Parenchyma(table["spleen"], rng.uniform(20, 45) if heterogeneous else rng.uniform(2, 8),
                          (8.0, 20.0) if heterogeneous else (15.0, 40.0),
                          lesion=style.lesion(table["spleen"]) if rng.random() < 0.1 else None,
                          lesion_fraction=rng.uniform(0.01, 0.04))
    if name.startswith("kidney_"):
        return Parenchyma(table["kidney"], rng.uniform(2, 10), cortex=table["kidney_cortex"], cortex_level=rng.uniform(0.7, 0.85),
                          lesion=rng.uniform(0, 20) if rng.random() < 0.3 else None, lesion_fraction=rng.uniform(0.01, 0.06))
    if name == "pancreas":
        return Parenchyma(table["pancreas"] - rng.uniform(0, 40), rng.uniform(5, 30), (5.0, 15.0))
    if name == "gallbladder":
        return Parenchyma(_draw(rng, -5, 30), rng.uniform(0, 5), lesion=rng.uniform(200, 800) if rng.random() < 0.15 else None,
                          lesion_fraction=rng.uniform(0.02, 0.08))
    if name == "urinary_bladder":
        excreted = style.phase == "delayed" and rng.random() < 0.5
        return Uniform(rng.uniform(80, 400) if excreted else _draw(rng, -5, 25), rng.uniform(0, 4))
    if name == "heart":
        return Uniform(table["heart"], rng.uniform(0, 10))
    return None


def _tissue_painter(structure: Structure, style: _ScanStyle) -> Painter | None:
    """The randomised look of hollow organs, vessels, muscles and bones, None for what keeps its look."""
    name, table, rng, old = structure.name, style.table, style.rng, structure.painter
    if name == "stomach":
        return Hollow(table["bowel_wall"], _content(rng, style.oral_contrast), old.wall_fraction,
                      air_level_y=old.air_level_y if rng.random() < 0.7 else None, bubbles=rng.uniform(0, 0.1),
                      mottle=rng.uniform(0, 40))
    if name in ("colon", "duodenum") or name.startswith("small_bowel_"):
        colon = name == "colon"
        content = float(rng.uniform(-80, 40)) if colon and rng.random() < 0.6 else _content(rng, style.oral_contrast)
        return Hollow(table["bowel_wall"], content, old.wall_fraction, air_level_y=old.air_level_y,
                      bubbles=rng.uniform(0, 0.3) if colon else rng.uniform(0, 0.05),
                      mottle=rng.uniform(0, 60) if colon else rng.uniform(0, 15))
    if name in ARTERIES:
        return Parenchyma(table["artery"], rng.uniform(0, 8), lesion=rng.uniform(300, 1000) if rng.random() < 0.4 else None,
                          lesion_fraction=rng.uniform(0.01, 0.06))
    if name in PORTAL_VEINS:
        return Uniform(table["portal"], rng.uniform(0, 8))
    if name in SYSTEMIC_VEINS:
        return Uniform(table["vein"], rng.uniform(0, 15))
    if name == "lung_bases":
        return Hollow(style.muscle, _draw(rng, -900, -780), old.wall_fraction, mottle=rng.uniform(0, 40))
    if name in MUSCLES:
        return Uniform(style.muscle + rng.uniform(-10, 10), rng.uniform(0, 6))
    if name == "spinal_canal":
        return Uniform(_draw(rng, 5, 35))
    if name == "discs":
        return Uniform(_draw(rng, 60, 120))
    return style.bone if isinstance(old, Bone) else None


def sample_field_of_view(rng: np.random.Generator, anatomy: Anatomy, kind: str) -> FieldOfView:
    """The scan range of `kind` (FIELDS_OF_VIEW); in-plane as the standard one."""
    fov = standard_field_of_view(rng, anatomy)
    marks = anatomy.landmarks
    chest, floor = marks["liver_top"] + 120.0, marks["bladder_floor"] - 50.0
    if kind == "standard":
        return fov
    if kind == "random":
        extent = float(rng.uniform(80.0, 480.0))
        centre = float(rng.uniform(floor + 40.0, chest - 40.0))
        fov.z_low, fov.z_high = max(centre - extent / 2, floor), min(centre + extent / 2, chest)
    elif kind == "upper_abdomen":
        fov.z_high = marks["liver_top"] + float(rng.uniform(0, 30))
        fov.z_low = marks["L1"] - float(rng.uniform(90, 130))  # the lower poles of the kidneys lie near L3
    elif kind == "pelvis":
        fov.z_high = marks["L5"] + float(rng.uniform(40, 80))
        fov.z_low = marks["bladder_floor"] - float(rng.uniform(20, 50))
    else:
        raise ValueError(f"field of view must be one of {FIELDS_OF_VIEW}, got {kind!r}")
    fov.protocol = kind
    return fov


def in_plane_window(shape: tuple[int, ...], rng: np.random.Generator) -> tuple[tuple[int, int], tuple[int, int]] | None:
    """Half the time, the rows and columns `((y0, y1), (x0, x1))` a real scan's smaller, often non-square
    reconstruction window would keep: up to 12 % of the width and 10 % of the height off each side, so a
    slim window cuts the body's sides as real scans do; else None (the whole square field of view)."""
    if rng.random() >= 0.5:
        return None
    height, width = shape[1], shape[2]
    y0, y1 = (int(rng.uniform(0, 0.10) * height) for _ in range(2))
    x0, x1 = (int(rng.uniform(0, 0.12) * width) for _ in range(2))
    return (y0, height - y1), (x0, width - x1)


def add_scanner_effects(hu: np.ndarray, grid: Grid, rng: np.random.Generator) -> None:
    """Bias, streaks, slice thickness, blur and noise of a randomised scanner, in place."""
    spacing = np.asarray(grid.spacing, dtype=np.float64)
    amplitude = rng.uniform(0, 30)
    for axis in range(3):  # smooth additive bias: one low-frequency cosine per axis
        coordinate = np.arange(hu.shape[axis]) * spacing[axis]
        wave = amplitude / 3 * np.cos(2 * np.pi * coordinate / rng.uniform(200, 700) + rng.uniform(0, 2 * np.pi))
        hu += wave.astype(np.float32).reshape([-1 if a == axis else 1 for a in range(3)])
    if rng.random() < 0.3:
        hu += _streaks(hu.shape, spacing, rng)[None]
    thickness = rng.uniform(0, 0.6)  # slice thickness beyond the spacing, as a Gaussian along z (voxels)
    if thickness > 0.1 and hu.shape[0] > 1:
        ndimage.gaussian_filter1d(hu, thickness, axis=0, output=hu, mode="nearest")
    add_blurred_noise(hu, spacing[1], rng.uniform(0.4, 2.0), rng.uniform(5, 45), rng)


def _streaks(shape: tuple[int, ...], spacing: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """In-plane streaks radiating from one point near the centre, alternately bright and dark, fading
    with distance (metal or beam hardening): `[H, W]` HU added to every slice."""
    height, width = shape[1], shape[2]
    y = (np.arange(height) - height * rng.uniform(0.35, 0.65)) * spacing[1]
    x = (np.arange(width) - width * rng.uniform(0.35, 0.65)) * spacing[2]
    angle = np.arctan2(y[:, None], x[None, :])
    radius = np.hypot(y[:, None], x[None, :])
    count = int(rng.integers(4, 16))
    pattern = np.cos(count * angle + rng.uniform(0, 2 * np.pi)) ** 15 * np.sign(np.cos(angle * 3 + rng.uniform(0, 6)))
    return (rng.uniform(30, 150) * pattern * np.exp(-radius / rng.uniform(60, 200))).astype(np.float32)
