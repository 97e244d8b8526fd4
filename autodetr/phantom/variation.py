"""Anatomical variety of phantoms (`--anatomy varied`): organ sizes and heights as varied as between patients.

The realistic phantom's organs vary by about 10 % in size and 8 mm in place, and its liver, spleen and
stomach all end near the first lumbar vertebra. Between real patients they vary far more (textbook ranges,
e.g. Gray's Anatomy; imaging surveys of liver span and spleen size): the right lobe of the liver reaches
anywhere from L1 to the iliac crest (a long right lobe or Riedel's lobe lies lateral to the right kidney),
the spleen's lower pole lies between T12 and L3 (larger in splenomegaly), the greater curvature and antrum of
the stomach hang down to L2-L4, and a kidney sits up to a vertebra higher or lower (ptosis). The hypothesis: a
detector that saw only the narrow range learns where an organ must end rather than seeing where it does, so on
a slab that cuts an organ its box stops where the phantom's would.

`vary_anatomy` redraws those sizes and heights per patient (`autodetr_make_phantom --anatomy varied`; SynthSeg's
idea applied to the label maps themselves: Billot et al., Medical Image Analysis 2023, deform and rescale the
training label maps).
Organs grow downward from their top (the diaphragm holds the liver dome and the spleen's upper pole), so the
landmarks the field of view and the body outline were drawn from stay where they are. Labels stay exact: the
label map is rasterised from the varied shapes.

Decision -- not the default: trained on 96 randomised phantoms for 40 CPU minutes (about 3300 steps) beside the
same recipe without it, it moved the real example's liver (0.72 -> 0.78 IoU) and stomach (0.31 -> 0.39) but lost
the right kidney (0.31 -> 0.13, now read as liver) and mean IoU 0.373 -> 0.367, and cost 0.02-0.05 mAP on
realistic, randomised and partial-field-of-view phantoms (docs/real_ct.md). Again with the kidneys in their
fat (generator 2), 80 minutes (5825 steps) against the packaged 1.3 (6050): mean IoU 0.433 against 0.451 (liver,
left kidney, stomach, pancreas up; right kidney 0.45 -> 0.37, 76 % of it read as liver; spleen, aorta, L2 down),
0.04 mAP less on standard phantoms, 0.07 more on varied ones, the smallest partial-field-of-view gaps yet.
Half of each (`--anatomy mixed`, 6359 steps) beat both: mean IoU 0.473 (L1 0.21 -> 0.47, right kidney 0.45 ->
0.51), 0.607 mean mAP of the three phantom sets against 1.3's 0.589 (standard sets within 0.015, varied +0.07);
it trains the packaged phantom-abdomen 1.4.
"""
from __future__ import annotations

import numpy as np

from autodetr.phantom.anatomy import Anatomy
from autodetr.phantom.shapes import Stretched, Superquadric, TubeChain, Union, extent, rotation, zyx

#: Chance of a long right liver lobe (a tongue lateral to the right kidney, Riedel's lobe at its longest).
LONG_RIGHT_LOBE = 0.5


def _structures(anatomy: Anatomy) -> dict:
    return {structure.name: structure for structure in anatomy.structures if structure.label}


def _grow_down(structure, factors: np.ndarray) -> None:
    """Scale `structure` by `factors` (z, y, x) about the centre of its top (its highest point stays)."""
    low, high = extent(structure.shape, structure.deformation)
    anchor = np.array([high[0], (low[1] + high[1]) / 2, (low[2] + high[2]) / 2])
    structure.shape = Stretched(structure.shape, anchor, np.asarray(factors, dtype=np.float64))


def _long_right_lobe(rng: np.random.Generator, liver) -> float:
    """Add a tongue of liver below the right lobe, lateral and posterior (where it wraps the right kidney);
    returns how far (mm) it reaches below the liver's lowest point."""
    low, high = extent(liver.shape, liver.deformation)
    reach = float(rng.uniform(20, 80))
    bottom, top = low[0] - reach, low[0] + float(rng.uniform(40, 70))
    centre = zyx(low[2] + rng.uniform(30, 50), (low[1] + high[1]) / 2 + rng.uniform(0, 25), (bottom + top) / 2)
    semi = np.array([(top - bottom) / 2, rng.uniform(30, 45), rng.uniform(22, 35)])
    tongue = Superquadric(centre, semi, rotation(rng.uniform(-10, 10), 0, rng.uniform(-15, 5)))
    liver.shape = Union([liver.shape, tongue])
    return reach


def vary_anatomy(anatomy: Anatomy, rng: np.random.Generator) -> dict:
    """Redraw the sizes and heights of liver (and gallbladder with it), spleen, stomach and kidneys, in place;
    returns what was drawn (for the case's info)."""
    organs = _structures(anatomy)
    drawn: dict = {}
    liver_factors = np.array([rng.uniform(0.95, 1.35), rng.uniform(0.9, 1.15), rng.uniform(0.9, 1.15)])
    _grow_down(organs["liver"], liver_factors)
    if "gallbladder" in organs:  # it hangs under the liver: moved as the liver grows
        liver = organs["liver"].shape
        organs["gallbladder"].shape = Stretched(organs["gallbladder"].shape, liver.anchor, liver.factors)
    drawn["liver_height_factor"] = round(float(liver_factors[0]), 3)
    drawn["long_right_lobe_mm"] = round(_long_right_lobe(rng, organs["liver"]), 1) if rng.random() < LONG_RIGHT_LOBE else 0.0

    spleen_factors = np.array([rng.uniform(0.9, 1.6), *np.full(2, rng.uniform(0.85, 1.3))])
    _grow_down(organs["spleen"], spleen_factors)  # longer than wide when enlarged: the lower pole descends
    drawn["spleen_height_factor"] = round(float(spleen_factors[0]), 3)

    stomach = organs["stomach"]
    drop = float(rng.uniform(0, 60))  # the antrum and greater curvature hang lower
    lowered = np.array(stomach.shape.points, dtype=np.float64)
    lowered[2:, 0] -= drop * np.array([0.6, 1.0, 0.8])[: len(lowered) - 2]
    stomach.shape = TubeChain(lowered, stomach.shape.radii)
    drawn["stomach_drop_mm"] = round(drop, 1)

    for name in ("kidney_left", "kidney_right"):
        shift = float(rng.uniform(-30, 12))  # negative: lower (ptosis)
        kidney = organs[name]
        kidney.shape = Stretched(kidney.shape, np.zeros(3), np.ones(3), np.array([shift, 0.0, 0.0]))
        drawn[f"{name}_shift_mm"] = round(shift, 1)
    return drawn
