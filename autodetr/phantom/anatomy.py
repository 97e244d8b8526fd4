"""Organ shapes and positions of one random patient, independent of any voxel grid.

Patient frame (mm, LPS): x = patient left, y = posterior, z = superior; z = 0 is the centre of L1 and
the cavity is centred near x = 0. Points are written `zyx(x=..., y=..., z=...)` and stored in array
order (z, y, x). `g` is the patient's overall size factor.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from autodetr.phantom.appearance import Bone, Hollow, Uniform
from autodetr.phantom.body import BodyOutline
from autodetr.phantom.shapes import Difference, SmoothDeformation, Superquadric, TubeChain, extent, frame, rotation, zyx
from autodetr.phantom.spine import LUMBAR, Spine
from autodetr.phantom.structure import Structure, points
from autodetr.phantom.tissue import unlabelled_structures

CLASS_NAMES: list[str] = ["liver", "spleen", "kidney_left", "kidney_right", "stomach", "gallbladder", "pancreas",
                          "aorta", "inferior_vena_cava", "urinary_bladder", *LUMBAR]
"""Labelled classes; the label value of a class is its position in this list + 1."""

PRIORITY: list[str] = [*LUMBAR, "aorta", "inferior_vena_cava", "kidney_left", "kidney_right", "gallbladder",
                       "pancreas", "liver", "spleen", "stomach", "urinary_bladder"]
"""Order in which labelled organs are drawn: an organ never overwrites one drawn before it."""

GALLBLADDER_ABSENT = 0.25
PERIRENAL_FAT_SHARE = (0.15, 0.4)
"""Perirenal fat thickness as a share of the patient's lateral subcutaneous fat (8-45 mm): 1-22 mm, lean to obese."""


@dataclass
class Anatomy:
    outline: BodyOutline
    structures: list[Structure]  # in painting order: unlabelled first, then organs in PRIORITY order
    landmarks: dict[str, float]  # z (mm) of liver_top, bladder_floor, bladder_top, L1, L5
    info: dict = field(default_factory=dict)


def _label(name: str) -> int:
    return CLASS_NAMES.index(name) + 1


def _hu(rng: np.random.Generator, contrast: bool) -> dict[str, float]:
    """Hounsfield values of one scan (native or portal-venous/arterial contrast for the vessels)."""
    values = {
        "liver": rng.uniform(55, 65), "spleen": rng.uniform(42, 50), "kidney": rng.uniform(27, 35),
        "gallbladder": rng.uniform(5, 15), "pancreas": rng.uniform(35, 45), "bladder": rng.uniform(5, 15),
        "stomach_wall": rng.uniform(40, 55), "stomach_content": rng.uniform(5, 25), "bowel_wall": rng.uniform(35, 50),
        "cortical": rng.uniform(550, 750), "cancellous": rng.uniform(220, 320), "disc": rng.uniform(80, 110),
        "csf": rng.uniform(10, 25), "muscle": rng.uniform(45, 60), "lung": rng.uniform(-880, -820),
        "heart": rng.uniform(35, 45),
        "artery": rng.uniform(150, 220) if contrast else rng.uniform(38, 48),
        "vein": rng.uniform(100, 140) if contrast else rng.uniform(35, 45),
    }
    values["ivc"] = values["vein"] if contrast else rng.uniform(35, 45)
    return values


def _liver_and_gallbladder(rng: np.random.Generator, g: float, hu: dict[str, float]
                           ) -> tuple[dict[str, Structure], float, bool]:
    """Liver and (in ~75 % of patients) gallbladder; also the liver's top z and whether the gallbladder is there."""
    organs: dict[str, Structure] = {}
    # --- liver: large tapered ellipsoid in the right upper quadrant, thin left lobe towards +x
    liver_centre = zyx(-50 * g, -5 * g, 40 * g) + rng.uniform(-8, 8, 3)
    liver_semi = np.array([80, 82, 100]) * g * rng.uniform(0.9, 1.12) * rng.uniform(0.92, 1.08, 3)
    liver = Superquadric(liver_centre, liver_semi, rotation(rng.uniform(-10, 10), rng.uniform(-8, 8), rng.uniform(-8, 8)),
                         taper=(2, rng.uniform(0.45, 0.65)))
    liver_def = SmoothDeformation.random(rng, 7.0)
    organs["liver"] = Structure("liver", liver, Uniform(hu["liver"], 2.5), _label("liver"), liver_def)
    liver_top = float(extent(liver, liver_def)[1][0])

    # --- gallbladder: pear under the liver, neck up and back, fundus down and forward; absent in ~25 %
    gallbladder_present = bool(rng.random() >= GALLBLADDER_ABSENT)
    gb_centre = liver_centre + zyx(12 * g, -35 * g - liver_centre[1], -50 * g) + rng.uniform(-7, 7, 3)
    gb_axis = zyx(-0.2, 0.55, 0.75) + rng.uniform(-0.15, 0.15, 3)
    gb_semi = np.array([33, 14, 14]) * g * rng.uniform(0.7, 1.2)
    gallbladder = Superquadric(gb_centre, gb_semi, frame(gb_axis, zyx(1, 0, 0)), taper=(0, rng.uniform(0.35, 0.55)))
    gb_def = SmoothDeformation.random(rng, 2.5)
    if gallbladder_present:
        organs["gallbladder"] = Structure("gallbladder", gallbladder, Uniform(hu["gallbladder"]), _label("gallbladder"),
                                          gb_def)
    return organs, liver_top, gallbladder_present


def _kidneys(rng: np.random.Generator, g: float, hu: dict[str, float]
             ) -> tuple[dict[str, Structure], dict[str, np.ndarray]]:
    """Both kidneys (beans beside the spine, right one lower; hilum notch anteromedial) and their hila."""
    organs: dict[str, Structure] = {}
    kidney_hila = {}
    for name, side, centre in (("kidney_left", 1, (75, 38, -12)), ("kidney_right", -1, (-72, 40, -32))):
        k_centre = zyx(*centre) * g + rng.uniform(-8, 8, 3)
        long_axis = zyx(-0.25 * side, 0.2, 1.0) + rng.uniform(-0.12, 0.12, 3)
        hilum_dir = zyx(-0.8 * side, -0.6, 0.0) + rng.uniform(-0.15, 0.15, 3)
        k_frame = frame(long_axis, hilum_dir)
        semi = np.array([55, 28, 22]) * g * rng.uniform(0.88, 1.12, 3)
        notch = Superquadric(k_centre + k_frame[:, 1] * semi[1] * 1.05, np.array([0.4, 0.5, 0.55]) * semi, k_frame)
        kidney = Difference(Superquadric(k_centre, semi, k_frame), notch)
        kidney_hila[name] = k_centre + k_frame[:, 1] * semi[1] * 0.9
        organs[name] = Structure(name, kidney, Uniform(hu["kidney"], 3.0), _label(name), SmoothDeformation.random(rng, 3.0))
    return organs, kidney_hila


def _perirenal_fat(rng: np.random.Generator, outline: BodyOutline, organs: dict[str, Structure]) -> None:
    """Give each kidney its perirenal fat: a capsule that liver, spleen and the other organs painted after the
    kidneys may not enter (in real CT a fat plane separates the kidneys from liver and spleen: on the shared
    example 2 % of the right kidney's surface lies within 4 mm of the liver, 0 % of the left's of the spleen;
    `benchmarks/organ_contact.py`). Thicker in patients with more subcutaneous fat."""
    share = rng.uniform(*PERIRENAL_FAT_SHARE)
    for name in ("kidney_left", "kidney_right"):
        organs[name].fat_capsule_mm = max(1.0, outline.fat_lateral * share * rng.uniform(0.8, 1.2))


def _spleen(rng: np.random.Generator, g: float, hu: dict[str, float]) -> tuple[Structure, float, np.ndarray]:
    """Spleen (a crescent against the left posterolateral wall), its top z and its hilum."""
    sp_centre = zyx(85 * g, 42 * g, 48 * g) + rng.uniform(-8, 8, 3)
    sp_frame = frame(zyx(0.1, -0.35, 1.0) + rng.uniform(-0.15, 0.15, 3), zyx(0.7, 0.7, 0.0))
    sp_semi = np.array([52, 20, 48]) * g * rng.uniform(0.78, 1.22) * rng.uniform(0.92, 1.08, 3)
    spleen = Difference(Superquadric(sp_centre, sp_semi, sp_frame),
                        Superquadric(sp_centre - sp_frame[:, 1] * sp_semi[1] * 1.5, sp_semi * [0.8, 0.9, 0.75], sp_frame))
    spleen_def = SmoothDeformation.random(rng, 5.0)
    structure = Structure("spleen", spleen, Uniform(hu["spleen"], 3.0), _label("spleen"), spleen_def)
    spleen_hilum = sp_centre - sp_frame[:, 1] * sp_semi[1] * 0.8
    return structure, float(extent(spleen, spleen_def)[1][0]), spleen_hilum


def _stomach(rng: np.random.Generator, g: float, hu: dict[str, float]) -> tuple[Structure, float, np.ndarray]:
    """Stomach (J-shaped tube from the fundus to the pylorus, air in front), its top z and its centre-line points."""
    fill = rng.uniform(0.75, 1.15)
    st_points = points(rng, g, [(48, 12, 92), (62, -18, 62), (55, -45, 28), (22, -58, 8), (-8, -48, 6)], 6.0)
    st_radii = np.array([36, 36, 30, 22, 12]) * g * np.array([fill, fill, fill, np.sqrt(fill), 1.0])
    stomach = TubeChain(st_points, st_radii)
    air_level = rng.uniform(-70, -25) * g
    stomach_def = SmoothDeformation.random(rng, 5.0)
    structure = Structure("stomach", stomach,
                          Hollow(hu["stomach_wall"], hu["stomach_content"], 4.0 / float(st_radii[:3].mean()),
                                 air_level_y=air_level),
                          _label("stomach"), stomach_def)
    return structure, float(extent(stomach, stomach_def)[1][0]), st_points


def _pancreas(rng: np.random.Generator, g: float, hu: dict[str, float]) -> tuple[Structure, np.ndarray]:
    """Pancreas (head in the duodenal C, body in front of the aorta, tail to the spleen) and its points."""
    pa_points = points(rng, g, [(-28, -22, -30), (-5, -38, -18), (30, -32, -6), (62, -6, 6), (82, 18, 16)], 5.0)
    pa_radii = np.array([15, 11, 11, 9, 7]) * g * rng.uniform(0.85, 1.15)
    structure = Structure("pancreas", TubeChain(pa_points, pa_radii), Uniform(hu["pancreas"], 4.0),
                          _label("pancreas"), SmoothDeformation.random(rng, 4.0))
    return structure, pa_points


def _aorta(rng: np.random.Generator, g: float, hu: dict[str, float], spine: Spine) -> tuple[Structure, np.ndarray]:
    """Aorta (left-anterior of the spine, bifurcating at L4) and its centre-line points."""
    aorta_radius = 12.5 * g * rng.uniform(0.85, 1.2)
    aorta_z = [200.0, 100.0, 30.0, 0.0, -spine.pitch, -2 * spine.pitch, -3 * spine.pitch + 5]
    aorta_x = [32, 28, 14, 12, 11, 9, 6]
    aorta_points = []
    for z, x in zip(aorta_z, aorta_x):
        front = spine.y(z) - spine.half_depth(z)
        y = spine.y(z) - 0.7 * spine.half_depth(z) - 4 * g if z > 60 else front - aorta_radius - 2
        aorta_points.append(zyx(x * g + spine.x(z), y, z) + rng.uniform(-2, 2, 3))
    aorta_points = np.stack(aorta_points)
    aorta_radii = aorta_radius * np.linspace(1.0, 0.8, len(aorta_points))
    structure = Structure("aorta", TubeChain(aorta_points, aorta_radii), Uniform(hu["artery"]), _label("aorta"),
                          SmoothDeformation.random(rng, 2.0))
    return structure, aorta_points


def _inferior_vena_cava(rng: np.random.Generator, g: float, hu: dict[str, float], spine: Spine, liver_top: float
                        ) -> tuple[Structure, np.ndarray]:
    """Inferior vena cava (right of the aorta, from above the liver to the confluence at L5) and its points."""
    ivc_radius = 11.5 * g * rng.uniform(0.85, 1.2)
    ivc_points = [zyx(-18 * g, -8 * g, liver_top + 15), zyx(-25 * g, -2 * g, liver_top - 40)]
    for z, x in ((0.0, -24), (-spine.pitch, -22), (-2 * spine.pitch, -22), (-3 * spine.pitch, -21),
                 (-4 * spine.pitch + 10, -13)):
        ivc_points.append(zyx(x * g + spine.x(z), spine.y(z) - spine.half_depth(z) - ivc_radius - 1, z))
    ivc_points = np.stack(ivc_points) + rng.uniform(-2, 2, (len(ivc_points), 3))
    structure = Structure("inferior_vena_cava", TubeChain(ivc_points, np.full(len(ivc_points), ivc_radius)),
                          Uniform(hu["ivc"]), _label("inferior_vena_cava"), SmoothDeformation.random(rng, 2.0))
    return structure, ivc_points


def _urinary_bladder(rng: np.random.Generator, g: float, hu: dict[str, float]) -> tuple[Structure, float, float]:
    """Urinary bladder (on the pelvic floor behind the pubis, sized by its filling) and its floor and top z."""
    b_fill = rng.uniform(0.6, 1.15)
    b_semi = np.array([35, 35, 45]) * g * b_fill * rng.uniform(0.9, 1.1, 3)
    bladder_floor = -272 * g + rng.uniform(-8, 8)
    b_centre = zyx(rng.uniform(-6, 6), -30 * g + rng.uniform(-6, 6), bladder_floor + b_semi[0])
    bladder = Superquadric(b_centre, b_semi, rotation(0, 0, rng.uniform(-10, 10)))
    bladder_def = SmoothDeformation.random(rng, 4.0)
    structure = Structure("urinary_bladder", bladder, Uniform(hu["bladder"]), _label("urinary_bladder"), bladder_def)
    bladder_low, bladder_high = extent(bladder, bladder_def)
    return structure, float(bladder_low[0]), float(bladder_high[0])


def sample_anatomy(rng: np.random.Generator) -> Anatomy:
    """Draw one patient: body outline, unlabelled tissue and the labelled organs."""
    g = rng.uniform(0.9, 1.1)
    contrast = bool(rng.random() < 0.6)
    hu = _hu(rng, contrast)
    spine = Spine.sample(rng, g)
    bone = Bone(hu["cortical"], hu["cancellous"])

    organs, liver_top, gallbladder_present = _liver_and_gallbladder(rng, g, hu)
    kidneys, kidney_hila = _kidneys(rng, g, hu)
    organs.update(kidneys)
    organs["spleen"], spleen_top, spleen_hilum = _spleen(rng, g, hu)
    organs["stomach"], stomach_top, st_points = _stomach(rng, g, hu)
    left_top = max(spleen_top, stomach_top)
    organs["pancreas"], pa_points = _pancreas(rng, g, hu)
    organs["aorta"], aorta_points = _aorta(rng, g, hu, spine)
    organs["inferior_vena_cava"], ivc_points = _inferior_vena_cava(rng, g, hu, spine, liver_top)
    organs["urinary_bladder"], bladder_floor, bladder_top = _urinary_bladder(rng, g, hu)

    # --- lumbar vertebrae (labelled): similar bones, told apart only by their place in the chain
    for name in LUMBAR:
        organs[name] = Structure(name, spine.vertebra_shape(name), bone, _label(name), None, in_cavity=False)

    landmarks = {"liver_top": liver_top, "bladder_floor": bladder_floor, "bladder_top": bladder_top,
                 "L1": spine.centre("vertebrae_L1")[0], "L5": spine.centre("vertebrae_L5")[0]}
    outline = BodyOutline.sample(rng, g, hip_z=landmarks["L5"] - 40 * g, chest_z=liver_top - 40 * g,
                                 z_span=(bladder_floor - 40, liver_top + 40))

    context = {"g": g, "hu": hu, "spine": spine, "bone": bone, "liver_top": liver_top,
               "left_top": left_top, "stomach_end": st_points[-1],
               "bifurcation": aorta_points[-1], "confluence": ivc_points[-1], "aorta": aorta_points, "ivc": ivc_points,
               "kidney_hila": kidney_hila, "spleen_hilum": spleen_hilum, "pancreas": pa_points, "outline": outline}
    unlabelled = unlabelled_structures(rng, context)
    _perirenal_fat(rng, outline, organs)  # drawn last: every draw before it is as it was without the capsule
    structures = unlabelled + [organs[name] for name in PRIORITY if name in organs]
    info = {"contrast": contrast, "scale": g, "gallbladder_present": gallbladder_present,
            "perirenal_fat_mm": {name: round(organs[name].fat_capsule_mm, 2) for name in ("kidney_left", "kidney_right")}}
    return Anatomy(outline, structures, landmarks, info)
