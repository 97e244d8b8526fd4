"""Phantom API: generate one case in memory, write one case, write a whole raw dataset (nnU-Net v2 layout).

Images are stored as int16 HU, labels as uint8, with LPS direction identity: array index x grows towards
the patient's left, y towards posterior, z towards superior (SimpleITK/DICOM convention).
"""
from __future__ import annotations

import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy.ndimage import distance_transform_edt

from autodetr.atomic_io import atomic_path, read_json, write_json
from autodetr.errors import InputError
from autodetr.phantom.anatomy import CLASS_NAMES, sample_anatomy
from autodetr.phantom.appearance import Context
from autodetr.phantom.body import BODY_WALL, CAVITY, rasterise_body
from autodetr.phantom.geometry import SIZES, sample_grid
from autodetr.boxes import boxes_from_label_map
from autodetr.phantom.randomised import (APPEARANCES, FIELDS_OF_VIEW, add_scanner_effects, in_plane_window,
                                         randomise_appearance, sample_field_of_view)
from autodetr.phantom.scanner import add_blurred_noise
from autodetr.phantom.shapes import Grid, evaluate
from autodetr.phantom.variation import vary_anatomy

TEST_INDEX_OFFSET = 1_000_000
"""Held-out cases use generator indices from here on, so they never depend on --num-cases."""
FILE_ENDING = ".nii.gz"
GENERATOR_VERSION = 2
"""2: perirenal fat keeps the organs painted after the kidneys off them (`anatomy._perirenal_fat`)."""
ANATOMIES = ("standard", "varied", "mixed")
"""standard: the phantom's patients as drawn (the default); varied: organ sizes and heights redrawn as wide as
between real patients (`autodetr.phantom.variation`); mixed: each case one or the other, varied with chance
MIXED_VARIED_SHARE (drawn from the case's own stream, so a mixed folder's varied cases are the varied folder's)."""
MIXED_VARIED_SHARE = 0.5


@dataclass
class PhantomCase:
    """One generated scan. Arrays are [z, y, x]; spacing and origin are in the same (z, y, x) order."""

    image: np.ndarray  # int16 HU
    label: np.ndarray  # uint8, value = CLASS_NAMES index + 1
    spacing: tuple[float, float, float]  # mm
    origin: tuple[float, float, float]  # world mm of the centre of voxel [0, 0, 0]
    placed_boxes: dict[str, tuple[int, int, int, int, int, int]]  # corner boxes (half-open voxels), present only
    info: dict = field(default_factory=dict)
    direction: tuple[float, ...] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)  # SimpleITK order (LPS identity)

    def to_sitk(self) -> tuple[sitk.Image, sitk.Image]:
        """(image, label) as SimpleITK images with spacing, origin and direction set."""
        images = []
        for array in (self.image, self.label):
            image = sitk.GetImageFromArray(array)
            image.SetSpacing(tuple(float(v) for v in self.spacing[::-1]))
            image.SetOrigin(tuple(float(v) for v in self.origin[::-1]))
            image.SetDirection(self.direction)
            images.append(image)
        return images[0], images[1]


def _streams(seed: int, index: int) -> dict[str, np.random.Generator]:
    """Independent generators per (seed, case index); anatomy and field of view do not depend on size."""
    if seed < 0 or index < 0:
        raise InputError(f"seed and case index must be >= 0, got seed={seed}, index={index}")
    names = ("anatomy", "fov", "noise", "grid_small", "grid_full", "appearance", "variation", "anatomy_choice")
    # spawn keys are positional: a stream added at the end leaves the earlier ones (and old phantoms) unchanged
    children = np.random.SeedSequence(entropy=seed, spawn_key=(index,)).spawn(len(names))
    return {name: np.random.default_rng(child) for name, child in zip(names, children)}


def default_field_of_view(appearance: str) -> str:
    """The scan range a phantom of `appearance` gets unless told: the standard one for realistic
    phantoms, anywhere from chest to pelvis for randomised ones."""
    return "random" if appearance == "randomised" else "standard"


def _check_style(size: str, appearance: str, field_of_view: str, anatomy: str = "standard") -> None:
    if size not in SIZES:
        raise InputError(f"size must be one of {', '.join(SIZES)}, got {size!r}")
    if appearance not in APPEARANCES:
        raise InputError(f"appearance must be one of {', '.join(APPEARANCES)}, got {appearance!r}")
    if anatomy not in ANATOMIES:
        raise InputError(f"anatomy must be one of {', '.join(ANATOMIES)}, got {anatomy!r}")
    if field_of_view not in FIELDS_OF_VIEW:
        raise InputError(f"field of view must be one of {', '.join(FIELDS_OF_VIEW)}, got {field_of_view!r}")


def case_anatomy(anatomy: str, rng: np.random.Generator) -> str:
    """The anatomy ("standard" or "varied") one case of a folder of `anatomy` gets."""
    if anatomy != "mixed":
        return anatomy
    return "varied" if rng.random() < MIXED_VARIED_SHARE else "standard"


def case_grid(index: int, seed: int = 0, size: str = "small", field_of_view: str = "standard") -> Grid:
    """The voxel grid a case will have (cheap: samples the anatomy, rasterises nothing)."""
    streams = _streams(seed, index)
    fov = sample_field_of_view(streams["fov"], sample_anatomy(streams["anatomy"]), field_of_view)
    return sample_grid(streams[f"grid_{size}"], fov, size)


def generate_case(index: int, seed: int = 0, size: str = "small", appearance: str = "realistic",
                  field_of_view: str | None = None, anatomy: str = "standard") -> PhantomCase:
    """Generate case `index` of the phantom with `seed`; deterministic, independent of other cases.

    `appearance` "randomised" draws the contrast phase, tissue values, textures and scanner effects far
    wider than a real scan's (`autodetr.phantom.randomised`); the anatomy (and so the labels, for the
    same field of view) is the realistic case's. `anatomy` "varied" redraws the sizes and heights of liver,
    spleen, stomach and kidneys (`autodetr.phantom.variation`; spine, vessels and body stay); "mixed" draws
    per case which of the two (`case_anatomy`). `field_of_view`: FIELDS_OF_VIEW, default per appearance."""
    field_of_view = field_of_view or default_field_of_view(appearance)
    _check_style(size, appearance, field_of_view, anatomy)
    streams = _streams(seed, index)
    patient = sample_anatomy(streams["anatomy"])
    drawn_anatomy = case_anatomy(anatomy, streams["anatomy_choice"])
    style = {"variation": vary_anatomy(patient, streams["variation"])} if drawn_anatomy == "varied" else {}
    if appearance == "randomised":
        style.update(randomise_appearance(patient, streams["appearance"]))
    fov = sample_field_of_view(streams["fov"], patient, field_of_view)
    grid = sample_grid(streams[f"grid_{size}"], fov, size)
    noise = streams["noise"]

    hu = np.empty(grid.shape, dtype=np.float32)
    zone = np.empty(grid.shape, dtype=np.uint8)
    label = np.zeros(grid.shape, dtype=np.uint8)
    reserved = np.zeros(grid.shape, dtype=bool)  # fat capsules: no labelled organ painted later enters them
    rasterise_body(patient.outline, grid, hu, zone)
    boxes: dict[str, tuple[int, ...]] = {}
    for structure in patient.structures:
        found = evaluate(structure.shape, grid, structure.deformation)
        if found is None:
            continue
        region, level = found
        mask = level <= 1
        zone_region = zone[region]
        mask &= (zone_region == CAVITY) if structure.in_cavity else (zone_region >= BODY_WALL)
        if structure.label:
            mask &= (label[region] == 0) & ~reserved[region]
        if not mask.any():
            continue
        context = Context(level, grid.region_axes(region), grid.spacing, noise)
        structure.painter.paint(hu[region], mask, context)
        if structure.label:
            label[region][mask] = structure.label
            boxes[structure.name] = _mask_box(mask, region)
            if structure.fat_capsule_mm > 0:
                _reserve_capsule(label, structure.label, boxes[structure.name], structure.fat_capsule_mm, grid.spacing,
                                 reserved)
    if appearance == "randomised":
        add_scanner_effects(hu, grid, noise)
    else:
        _add_noise(hu, grid, size, noise)
    np.rint(hu, out=hu)
    np.clip(hu, -1024, 3071, out=hu)
    image = hu.astype(np.int16)
    del hu
    origin = (grid.origin[0] + fov.table_z, grid.origin[1], grid.origin[2])
    placed = {name: boxes[name] for name in CLASS_NAMES if name in boxes}
    window = in_plane_window(image.shape, streams["appearance"]) if appearance == "randomised" else None
    if window is not None:  # a smaller, non-square in-plane field of view that may cut the body's sides
        (y0, y1), (x0, x1) = window
        image, label = image[:, y0:y1, x0:x1].copy(), label[:, y0:y1, x0:x1].copy()
        origin = (origin[0], origin[1] + y0 * grid.spacing[1], origin[2] + x0 * grid.spacing[2])
        found, values = boxes_from_label_map(label)
        placed = {CLASS_NAMES[int(v) - 1]: tuple(int(c) for c in box) for box, v in zip(found, values)}
    info = {**patient.info, **style, "protocol": fov.protocol, "index": index, "seed": seed, "size": size,
            "appearance": appearance, "anatomy": drawn_anatomy}
    return PhantomCase(image, label, tuple(float(s) for s in grid.spacing), tuple(float(o) for o in origin), placed, info)


def _reserve_capsule(label: np.ndarray, value: int, box: tuple[int, ...], thickness_mm: float,
                     spacing: tuple[float, float, float], reserved: np.ndarray) -> None:
    """Mark every voxel within `thickness_mm` of the organ labelled `value` (corner box `box`) in `reserved`."""
    pad = [int(np.ceil(thickness_mm / s)) + 1 for s in spacing]
    window = tuple(slice(max(0, box[a] - pad[a]), min(label.shape[a], box[a + 3] + pad[a])) for a in range(3))
    distance = distance_transform_edt(label[window] != value, sampling=spacing)
    reserved[window] |= distance <= thickness_mm


def _mask_box(mask: np.ndarray, region: tuple[slice, slice, slice]) -> tuple[int, int, int, int, int, int]:
    low, high = [], []
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        occupied = np.flatnonzero(mask.any(axis=other))
        low.append(region[axis].start + int(occupied[0]))
        high.append(region[axis].start + int(occupied[-1]) + 1)
    return (*low, *high)


def _add_noise(hu: np.ndarray, grid: Grid, size: str, rng: np.random.Generator) -> None:
    """Gaussian noise, then an in-plane Gaussian blur (reconstruction kernel / partial volume)."""
    blur_mm = rng.uniform(0.6, 1.1)
    target_std = rng.uniform(8, 20) if size == "full" else rng.uniform(4, 10)
    add_blurred_noise(hu, grid.spacing[1], blur_mm, target_std, rng)


def write_case(case: PhantomCase, image_path: str | os.PathLike, label_path: str | os.PathLike) -> None:
    """Write image and label as compressed NIfTI, each atomically."""
    image, label = case.to_sitk()
    for item, path in ((label, label_path), (image, image_path)):
        with atomic_path(path, suffix=FILE_ENDING) as temporary:
            sitk.WriteImage(item, str(temporary), True)


def dataset_json(num_training: int, num_test: int, seed: int, size: str, appearance: str = "realistic",
                 field_of_view: str = "standard", anatomy: str = "standard") -> dict:
    """The nnU-Net v2 dataset.json of the phantom."""
    return {
        "channel_names": {"0": "CT"},
        "labels": {"background": 0, **{name: index + 1 for index, name in enumerate(CLASS_NAMES)}},
        "numTraining": num_training,
        "file_ending": FILE_ENDING,
        "name": "Phantom",
        "description": ("Procedural abdominal CT phantom (autodetr_make_phantom): int16 HU images, LPS direction "
                        "identity, 15 organ classes; held-out cases in imagesTs with labels in labelsTs."),
        "reference": "autodetr.phantom (generated, no patient data)",
        "licence": "CC0-1.0",
        "tensorImageSize": "3D",
        "numTest": num_test,
        "phantom": {"seed": seed, "size": size, "appearance": appearance, "field_of_view": field_of_view,
                    "anatomy": anatomy,
                    "generator_version": GENERATOR_VERSION},
    }


@dataclass(frozen=True)
class _Task:
    index: int
    seed: int
    size: str
    image_path: Path
    label_path: Path
    appearance: str = "realistic"
    field_of_view: str = "standard"
    anatomy: str = "standard"


def _run_task(task: _Task) -> str:
    write_case(generate_case(task.index, task.seed, task.size, task.appearance, task.field_of_view, task.anatomy),
               task.image_path, task.label_path)
    return task.image_path.name


def _case_ids(prefix: str, count: int) -> list[str]:
    width = max(3, len(str(max(count - 1, 0))))
    return [f"{prefix}_{i:0{width}d}" for i in range(count)]


def _check_arguments(dataset_id: int, num_cases: int, num_test_cases: int, size: str, seed: int,
                     num_processes: int) -> None:
    if not 1 <= dataset_id <= 999:
        raise InputError(f"dataset id must be between 1 and 999, got {dataset_id}")
    if num_cases < 1:
        raise InputError(f"--num-cases must be at least 1, got {num_cases}")
    if num_test_cases < 0:
        raise InputError(f"--num-test-cases must be >= 0, got {num_test_cases}")
    if seed < 0:
        raise InputError(f"--seed must be >= 0, got {seed}")
    if num_processes < 1:
        raise InputError(f"-np must be at least 1, got {num_processes}")


class PhantomSettingsError(InputError):
    """A phantom folder written with other settings (or another generator version) than asked for."""

    def __init__(self, folder: Path, found: dict[str, object], wanted: dict[str, object]) -> None:
        self.folder = folder
        described = lambda values: ", ".join(f"{key} {values.get(key)}" for key in wanted)  # noqa: E731
        self.found, self.wanted = described(found), described(wanted)
        super().__init__(f"{folder} was generated with {self.found}; use --overwrite to regenerate it with {self.wanted}")


def _check_dataset_folder(raw_root: Path, folder: Path, dataset_id: int, overwrite: bool, wanted: dict[str, object]
                          ) -> None:
    """Refuse a dataset id taken by another dataset, or a phantom folder generated with other settings."""
    if raw_root.is_dir():
        clashing = [p.name for p in raw_root.glob(f"Dataset{dataset_id:03d}_*") if p.is_dir() and p != folder]
        if clashing:
            raise InputError(f"dataset id {dataset_id} is already used by {clashing[0]} in {raw_root}: pick another -d")
    json_path = folder / "dataset.json"
    if json_path.is_file() and not overwrite:
        previous = read_json(json_path).get("phantom", {})
        found = {"appearance": "realistic", "field_of_view": "standard", "anatomy": "standard", "generator_version": 1,
                 **previous}  # written before any of them existed
        if any(found.get(key) != value for key, value in wanted.items()):
            raise PhantomSettingsError(folder, found, wanted)


def _clean_split_folder(sub: Path, expected: set[str], overwrite: bool) -> None:
    """Create `sub`, drop partial files of a killed run and (with `overwrite`) files this phantom would not write."""
    sub.mkdir(parents=True, exist_ok=True)
    for stale in sub.glob(".*.partial*"):  # left by a killed run
        stale.unlink()
    unexpected = sorted(p for p in sub.iterdir() if p.name.endswith(FILE_ENDING) and p.name not in expected)
    if unexpected and not overwrite:
        raise InputError(f"{sub} holds files this phantom would not write (e.g. {unexpected[0].name}); "
                         f"use --overwrite to remove them, or another dataset id")
    for path in unexpected:
        if path.is_file() or path.is_symlink():
            path.unlink()


def _planned_tasks(folder: Path, num_cases: int, num_test_cases: int, size: str, seed: int, overwrite: bool,
                   appearance: str, field_of_view: str, anatomy: str = "standard") -> list[_Task]:
    """The cases still to write (all with `overwrite`), after preparing imagesTr/labelsTr and imagesTs/labelsTs."""
    planned: dict[str, list[tuple[int, str]]] = {
        "Tr": list(enumerate(_case_ids("phantom", num_cases))),
        "Ts": [(TEST_INDEX_OFFSET + i, case) for i, case in enumerate(_case_ids("phantom_test", num_test_cases))],
    }
    tasks = []
    for split, cases in planned.items():
        images, labels = folder / f"images{split}", folder / f"labels{split}"
        expected = {f"{case}_0000{FILE_ENDING}" for _, case in cases} | {f"{case}{FILE_ENDING}" for _, case in cases}
        for sub in (images, labels):
            _clean_split_folder(sub, expected, overwrite)
        for index, case in cases:
            image_path, label_path = images / f"{case}_0000{FILE_ENDING}", labels / f"{case}{FILE_ENDING}"
            if overwrite or not (image_path.is_file() and label_path.is_file()):
                tasks.append(_Task(index, seed, size, image_path, label_path, appearance, field_of_view, anatomy))
    return tasks


def _run_tasks(tasks: list[_Task], size: str, num_processes: int, progress: bool) -> None:
    """Write the cases of `tasks`, in this process or in `num_processes` spawned workers."""
    from tqdm import tqdm

    with tqdm(total=len(tasks), desc=f"phantom {size} cases", unit="case", disable=not progress) as bar:
        if num_processes == 1 or len(tasks) <= 1:
            for task in tasks:
                _run_task(task)
                bar.update()
        else:
            with ProcessPoolExecutor(min(num_processes, len(tasks)), mp_context=get_context("spawn")) as pool:
                for _ in pool.map(_run_task, tasks):
                    bar.update()


def make_phantom_dataset(raw_root: str | os.PathLike, dataset_id: int = 500, num_cases: int = 20,
                         num_test_cases: int = 5, size: str = "full", seed: int = 0, num_processes: int = 1,
                         overwrite: bool = False, progress: bool = False, appearance: str = "realistic",
                         field_of_view: str | None = None, anatomy: str = "standard") -> Path:
    """Write `DatasetXXX_Phantom` under `raw_root` and return its folder.

    Training cases are `phantom_000 ...` (imagesTr/labelsTr), held-out cases `phantom_test_000 ...`
    (imagesTs/labelsTs). Cases whose image and label both exist are kept unless `overwrite`;
    dataset.json is written last.
    """
    field_of_view = field_of_view or default_field_of_view(appearance)
    _check_style(size, appearance, field_of_view, anatomy)
    _check_arguments(dataset_id, num_cases, num_test_cases, size, seed, num_processes)
    raw_root = Path(raw_root)
    folder = raw_root / f"Dataset{dataset_id:03d}_Phantom"
    wanted = {"seed": seed, "size": size, "appearance": appearance, "field_of_view": field_of_view, "anatomy": anatomy,
              "generator_version": GENERATOR_VERSION}  # cases of another generator version differ: never mix them
    _check_dataset_folder(raw_root, folder, dataset_id, overwrite, wanted)
    json_path = folder / "dataset.json"
    tasks = _planned_tasks(folder, num_cases, num_test_cases, size, seed, overwrite, appearance, field_of_view, anatomy)
    if overwrite and json_path.is_file():
        json_path.unlink()
    _run_tasks(tasks, size, num_processes, progress)
    write_json(json_path, dataset_json(num_cases, num_test_cases, seed, size, appearance, field_of_view, anatomy))
    return folder
