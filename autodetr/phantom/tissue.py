"""Unlabelled tissue around the organs: lung bases and heart, bowel, vessel branches, muscles, other bones.

They are drawn before the labelled organs, which paint over them; they make the background look like
an abdomen (bowel loops with fluid and gas, enhancing vessels, psoas, ribs, pelvis) rather than empty fat.
"""
from __future__ import annotations

import numpy as np

from autodetr.phantom.appearance import Hollow, Painter, Uniform
from autodetr.phantom.body import BodyOutline
from autodetr.phantom.shapes import Difference, Slab, SmoothDeformation, Superquadric, TubeChain, Union, frame, rotation, zyx
from autodetr.phantom.spine import Spine
from autodetr.phantom.structure import Structure, points


def unlabelled_structures(rng: np.random.Generator, c: dict) -> list[Structure]:
    """Lung bases, heart, bowel, vessel branches, muscles and the other bones (painting order).

    `c` holds what they attach to: scale "g", "hu" values, the "spine", "bone" painter, the "outline" and
    landmarks of the organs ("liver_top", "left_top", "aorta", "ivc", "kidney_hila", ...).
    """
    g, hu, spine = c["g"], c["hu"], c["spine"]
    result = _thorax_floor(g, hu, c["liver_top"], c["left_top"])
    result += _bowel(rng, g, hu, c["stomach_end"])
    result += _vessel_branches(g, hu, spine, c)
    result += _muscles(rng, g, hu, spine)
    result += _bones(rng, g, hu, spine, c["bone"], c["outline"])
    return result


def _thorax_floor(g: float, hu: dict[str, float], liver_top: float, left_top: float) -> list[Structure]:
    """Lungs above two diaphragm domes (right one higher, over the liver) and the heart in front."""
    domes = []
    for centre, semi in (((-55, 5), (95, 115, 105), ), ((60, 10), (85, 115, 100))):
        top = liver_top + 6 if centre[0] < 0 else left_top + 6
        domes.append((zyx(centre[0] * g, centre[1] * g, top - semi[0] * g), np.array(semi, dtype=float) * g))
    # One structure: above the domes; the first ~5 % of the level range is the diaphragm muscle, then lung.
    thorax = Difference(Slab(liver_top - 75 * g), Union([Superquadric(p, s) for p, s in domes]))
    heart = Superquadric(zyx(12 * g, -40 * g, liver_top + 60 * g), np.array([55, 50, 65]) * g, rotation(30, 0, 0))
    return [Structure("lung_bases", thorax, Hollow(hu["muscle"], hu["lung"], 0.1)),
            Structure("heart", heart, Uniform(hu["heart"]))]


def _bowel(rng: np.random.Generator, g: float, hu: dict[str, float], stomach_end: np.ndarray) -> list[Structure]:
    """Colon frame with stool and gas, duodenal C-loop, a few small-bowel loops with fluid."""
    result: list[Structure] = []
    colon = points(rng, g, [(-75, -15, -165), (-88, 5, -100), (-88, 0, -40), (-75, -35, -5), (-30, -65, -35),
                             (30, -65, -35), (80, -15, 10), (90, 15, -60), (85, 10, -130), (55, -25, -180),
                             (10, -15, -200), (0, 40, -215), (0, 45, -290)], 8.0)
    colon_radii = np.array([26, 22, 22, 22, 20, 20, 20, 18, 18, 18, 17, 17, 15]) * g * rng.uniform(0.85, 1.15)
    result.append(Structure("colon", TubeChain(colon, colon_radii),
                            Hollow(hu["bowel_wall"], rng.uniform(-60, 20), 0.15, air_level_y=rng.uniform(-90, -20) * g,
                                   bubbles=0.15, mottle=40.0)))
    duodenum = np.concatenate([stomach_end[None], points(rng, g, [(-25, -40, 4), (-45, -15, -10),
                                                                   (-48, -8, -50), (-15, -12, -62),
                                                                   (20, -22, -50)], 4.0)])
    result.append(Structure("duodenum", TubeChain(duodenum, np.full(len(duodenum), 12 * g)),
                            Hollow(hu["bowel_wall"], rng.uniform(5, 30), 0.2)))
    low, high = np.array([-215, -80, -90]) * g, np.array([-35, 5, 90]) * g
    for loop in range(int(rng.integers(10, 16))):
        point = rng.uniform(low, high)
        direction = rng.normal(size=3)
        path = [point]
        for _ in range(int(rng.integers(6, 10))):
            direction = direction / np.linalg.norm(direction) + 0.9 * rng.normal(size=3)
            point = np.clip(point + 30 * g * direction / np.linalg.norm(direction), low, high)
            path.append(point)
        air = rng.uniform(-80, -30) * g if rng.random() < 0.3 else None
        result.append(Structure(f"small_bowel_{loop}", TubeChain(np.stack(path), np.full(len(path), 11 * g * rng.uniform(0.85, 1.2))),
                                Hollow(hu["bowel_wall"], rng.uniform(5, 35), 0.22, air_level_y=air)))
    return result


def _vessel_branches(g: float, hu: dict[str, float], spine: Spine, c: dict) -> list[Structure]:
    """Unlabelled branches of the aorta, IVC and portal system, with the density of their parent vessel."""
    result: list[Structure] = []
    for side in (1, -1):
        iliac_a = np.stack([c["bifurcation"], zyx(35 * g * side, spine.y(c["bifurcation"][0]) - 25 * g, c["bifurcation"][0] - 35 * g),
                            zyx(62 * g * side, -25 * g, -215 * g), zyx(75 * g * side, -45 * g, -265 * g)])
        result.append(Structure("iliac_artery", TubeChain(iliac_a, np.array([7.0, 6.5, 6, 5.5]) * g), Uniform(hu["artery"])))
        iliac_v = np.stack([c["confluence"], zyx(40 * g * side, spine.y(c["confluence"][0]) - 15 * g, c["confluence"][0] - 35 * g),
                            zyx(65 * g * side, -12 * g, -220 * g), zyx(80 * g * side, -32 * g, -265 * g)])
        result.append(Structure("iliac_vein", TubeChain(iliac_v, np.array([9.0, 8.5, 8, 7.5]) * g), Uniform(hu["ivc"])))
    ivc_at_kidneys = c["ivc"][3]
    for name, hilum in c["kidney_hila"].items():
        vein = np.stack([hilum, zyx(0.5 * (hilum[2] + ivc_at_kidneys[2]), ivc_at_kidneys[1] - 8 * g, hilum[0] - 5),
                         ivc_at_kidneys]) if name == "kidney_left" else np.stack([hilum, ivc_at_kidneys])
        result.append(Structure("renal_vein", TubeChain(vein, np.full(len(vein), 5.0 * g)), Uniform(hu["vein"])))
        artery = np.stack([c["aorta"][4] + zyx(0, 0, 15), hilum + zyx(0, 6 * g, 0)])
        result.append(Structure("renal_artery", TubeChain(artery, np.full(2, 3.5 * g)), Uniform(hu["artery"])))
    confluence_pv = zyx(-5 * g, -22 * g, -14 * g)
    splenic = np.stack([c["spleen_hilum"], *(p + zyx(0, 12 * g, 0) for p in c["pancreas"][:1:-1]), confluence_pv])
    result.append(Structure("splenic_vein", TubeChain(splenic, np.full(len(splenic), 5.0 * g)), Uniform(hu["vein"])))
    portal = np.stack([confluence_pv, zyx(-30 * g, -18 * g, 15 * g), zyx(-48 * g, -10 * g, 32 * g)])
    result.append(Structure("portal_vein", TubeChain(portal, np.array([7, 7, 6]) * g), Uniform(hu["vein"])))
    sma = np.stack([c["aorta"][3], c["aorta"][3] + zyx(-4 * g, -22 * g, -20), zyx(2 * g, -50 * g, -115 * g)])
    result.append(Structure("sma", TubeChain(sma, np.full(3, 4.0 * g)), Uniform(hu["artery"])))
    smv = np.stack([confluence_pv, zyx(-14 * g, -48 * g, -115 * g)])
    result.append(Structure("smv", TubeChain(smv, np.full(2, 5.0 * g)), Uniform(hu["vein"])))
    return result


def _muscles(rng: np.random.Generator, g: float, hu: dict[str, float], spine: Spine) -> list[Structure]:
    """Psoas, quadratus lumborum, erector spinae and gluteus on both sides (not clipped to the cavity)."""
    result: list[Structure] = []
    muscle = Uniform(hu["muscle"])
    bulk = rng.uniform(0.8, 1.2)
    l1, l3, l5 = (spine.centre(f"vertebrae_L{k}") for k in (1, 3, 5))
    for side in (1, -1):
        psoas = np.stack([zyx(side * (spine.half_width("vertebrae_L1") + 6 * g), l1[1] + 6 * g, l1[0] + 10),
                          zyx(side * (spine.half_width("vertebrae_L3") + 14 * g), l3[1] + 4 * g, l3[0]),
                          zyx(side * (spine.half_width("vertebrae_L5") + 24 * g), l5[1] - 2 * g, l5[0]),
                          zyx(side * 62 * g, -5 * g, l5[0] - 70 * g), zyx(side * 78 * g, -35 * g, -262 * g)])
        result.append(Structure("psoas", TubeChain(psoas, np.array([7, 15, 21, 19, 15]) * g * bulk), muscle, in_cavity=False))
        quadratus = np.stack([zyx(side * 55 * g, l1[1] + 38 * g, l1[0] + 10), zyx(side * 62 * g, l3[1] + 40 * g, l3[0]),
                              zyx(side * 70 * g, l5[1] + 35 * g, l5[0] - 15)])
        result.append(Structure("quadratus_lumborum", TubeChain(quadratus, np.array([8, 13, 8]) * g * bulk), muscle,
                                in_cavity=False))
        erector = [Superquadric(zyx(side * 36 * g + spine.x(z), y + 26 * g, z), np.array([spine.pitch * 0.8, 28 * g, 24 * g]) * bulk)
                   for z, y in spine.canal_points()]
        result.append(Structure("erector_spinae", Union(erector), muscle, in_cavity=False))
        gluteus = Superquadric(zyx(side * 82 * g, 58 * g, l5[0] - 95 * g), np.array([80, 36, 46]) * g * bulk,
                               rotation(-25 * side, 0, 0))
        result.append(Structure("gluteus", gluteus, muscle, deformation=SmoothDeformation.random(rng, 5.0),
                                in_cavity=False))
    return result


def _bones(rng: np.random.Generator, g: float, hu: dict[str, float], spine: Spine, bone: Painter,
           outline: BodyOutline) -> list[Structure]:
    """Spine beyond the lumbar chain (discs, canal content, thoracic vertebrae with ribs, sacrum) and the pelvis."""
    result: list[Structure] = []
    l5 = spine.centre("vertebrae_L5")
    result.append(Structure("spinal_canal", spine.canal_shape(), Uniform(hu["csf"]), in_cavity=False))
    result.append(Structure("discs", spine.disc_shape(), Uniform(hu["disc"]), in_cavity=False))
    for name in spine.thoracic_names():
        result.append(Structure(name, spine.vertebra_shape(name), bone, in_cavity=False))
        result.append(Structure(f"ribs_{name}", spine.rib_shape(name, outline), bone, in_cavity=False))
    result.append(Structure("sacrum", spine.sacrum_shape(), bone, in_cavity=False))
    for side in (1, -1):
        up = zyx(0.26 * side, 0, 0.96)
        width = zyx(0.64 * side, -0.77, 0)
        wing = Superquadric(zyx(85 * g * side, l5[1], l5[0] - 25 * g), np.array([55, 55, 7]) * g, frame(up, width))
        acetabulum = Superquadric(zyx(78 * g * side, 0, -232 * g), np.array([40, 32, 13]) * g,
                                  rotation(-20 * side, 0, 0))
        result.append(Structure("ilium", Union([wing, acetabulum]), bone,
                                deformation=SmoothDeformation.random(rng, 5.0), in_cavity=False))
        femur = TubeChain(np.stack([zyx(92 * g * side, -5 * g, -270 * g), zyx(125 * g * side, 0, -300 * g),
                                    zyx(132 * g * side, 5 * g, -420 * g)]), np.array([23, 16, 14]) * g)
        result.append(Structure("femur", femur, bone, in_cavity=False))
        pubis = TubeChain(np.stack([zyx(75 * g * side, -25 * g, -262 * g), zyx(8 * g * side, -80 * g, -268 * g)]),
                          np.array([8.0, 6.5]) * g)
        result.append(Structure("pubis", pubis, bone, in_cavity=False))
        ischium = TubeChain(np.stack([zyx(80 * g * side, 10 * g, -262 * g), zyx(58 * g * side, 30 * g, -305 * g)]),
                            np.array([12.0, 11.0]) * g)
        result.append(Structure("ischium", ischium, bone, in_cavity=False))
    return result
