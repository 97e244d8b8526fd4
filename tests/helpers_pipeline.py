"""Shared test helpers: a tiny trained pipeline (phantoms -> plans -> 2 briefly trained folds), built once
per test session, and a DICOM series writer.

`trained_pipeline(tmp_path_factory)` returns a `Pipeline` (roots, dataset name, model folder, test images);
tests that use it set the AUTODETR_* variables to `pipeline.roots` themselves (monkeypatch), because the
pipeline outlives any single test. The build is cached in this module, so several test files of one
session share it.
"""
from __future__ import annotations

import contextlib
import os
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import SimpleITK as sitk

DATASET_ID = 590
TRAINER_FOLDER = "autodetrTrainer_dqm__autodetrPlans"
TRAINED_FOLDS = (0, 1)
NUM_TRAINING_CASES = 5
NUM_TEST_CASES = 2
#: Planned input size (preprocessing) and network overrides (training) small enough that a few training
#: iterations take seconds on two CPU cores.
TINY_INPUT_SIZE = [24, 32, 32]
TINY_NETWORK = {
    "network.stem_channels": 8,
    "network.hidden_dim": 16,
    "network.msa.heads": 2,
    "network.msa.ffn_dim": 32,
    "network.decoder.layers": 1,
    "network.decoder.heads": 2,
    "network.decoder.points": 2,
    "network.decoder.ffn_dim": 32,
    "training.batch_size": 1,
}
TRAIN_ITERATIONS = 2


@dataclass
class Pipeline:
    roots: dict[str, Path]
    dataset_name: str
    model_folder: Path
    test_images: list[Path]  # imagesTs/<case>_0000.nii.gz
    raw_folder: Path
    build_seconds: float = 0.0


_CACHE: dict[str, Pipeline] = {}


@contextlib.contextmanager
def environment(roots: dict[str, Path]) -> Iterator[None]:
    """AUTODETR_raw / _preprocessed / _results set to `roots` inside the block, restored after."""
    saved = {kind: os.environ.get(f"AUTODETR_{kind}") for kind in roots}
    try:
        for kind, folder in roots.items():
            os.environ[f"AUTODETR_{kind}"] = str(folder)
        yield
    finally:
        for kind, value in saved.items():
            if value is None:
                os.environ.pop(f"AUTODETR_{kind}", None)
            else:
                os.environ[f"AUTODETR_{kind}"] = value


def tiny_plan(dataset_id: int = DATASET_ID) -> Path:
    """Plan and preprocess with the CPU preset at the tiny input size; returns the plans folder."""
    from autodetr.planners.plan_and_preprocess_api import plan_and_preprocess

    # the left-right mirror (off by default with class-anchored queries) is on, so --tta has a mirrored copy to fuse
    return plan_and_preprocess(dataset_id, preset="cpu", num_processes=1, input_size=TINY_INPUT_SIZE,
                               overrides={"training.augmentation.p_mirror": 0.25})


def train_tiny_folds(dataset_id: int = DATASET_ID, folds=TRAINED_FOLDS, iterations: int = TRAIN_ITERATIONS,
                     objective: str = "dqm") -> list[Path]:
    """A few training iterations per fold with the tiny network (`autodetr.training.train_api.train`, the
    API of `autodetr_train`); each fold folder gets checkpoints, plans.json and arguments.json."""
    from autodetr.atomic_io import read_json
    from autodetr.planners.plan_and_preprocess_api import plans_folder
    from autodetr.training.train_api import _resolve_dataset, train

    plans = read_json(plans_folder(_resolve_dataset(dataset_id)) / "plans.json")
    overrides = dict(TINY_NETWORK)
    overrides["network.stage_channels"] = [8 * (i + 1) for i in range(len(plans["network"]["stage_channels"]))]
    return [train(dataset_id, fold, objective=objective, epochs=1, iterations_per_epoch=iterations, num_workers=0,
                  overrides=overrides, progress_bar=False) for fold in folds]


def trained_pipeline(tmp_path_factory) -> Pipeline:
    """Build (once per session) phantoms -> tiny plans -> folds 0 and 1 trained a few iterations."""
    if "pipeline" in _CACHE:
        return _CACHE["pipeline"]
    from autodetr.phantom.generator import make_phantom_dataset

    base = Path(tmp_path_factory.mktemp("pipeline"))
    roots = {kind: base / kind for kind in ("raw", "preprocessed", "results")}
    for folder in roots.values():
        folder.mkdir()
    start = time.perf_counter()
    with environment(roots):
        raw_folder = make_phantom_dataset(roots["raw"], dataset_id=DATASET_ID, num_cases=NUM_TRAINING_CASES,
                                          num_test_cases=NUM_TEST_CASES, size="small", seed=11, num_processes=1)
        tiny_plan(DATASET_ID)
        train_tiny_folds(DATASET_ID)
    dataset_name = raw_folder.name
    pipeline = Pipeline(roots, dataset_name, roots["results"] / dataset_name / TRAINER_FOLDER,
                        sorted((raw_folder / "imagesTs").glob("*_0000.nii.gz")), raw_folder,
                        time.perf_counter() - start)
    _CACHE["pipeline"] = pipeline
    return pipeline


def write_dicom_series(image: sitk.Image, folder: Path, description: str, series_number: int = 1,
                       uid_root: str = "1.2.826.0.1.3680043.2.1125.7") -> str:
    """Write a 3D image as a CT DICOM series, one file per slice along the image's third index axis.

    Tags as a scanner writes them: Image Position (0020|0032) of each slice through the image geometry,
    Image Orientation (0020|0037) from the first two direction columns, Pixel Spacing (0028|0030, row
    then column spacing), Slice Thickness, Instance Number (0020|0013), and one Series / Study / Frame
    of Reference UID. Pixels are stored as int16 (Hounsfield units). Returns the series UID."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    image = sitk.Cast(sitk.Round(image), sitk.sitkInt16) if image.GetPixelID() != sitk.sitkInt16 else image
    direction = image.GetDirection()
    spacing = image.GetSpacing()
    series_uid = f"{uid_root}.{series_number}.{zlib.crc32(description.encode())}"
    study_uid = f"{uid_root}.99"
    orientation = "\\".join(f"{v:.6f}" for v in (direction[0], direction[3], direction[6], direction[1], direction[4], direction[7]))
    common = {
        "0008|0060": "CT",
        "0008|0008": "ORIGINAL\\PRIMARY\\AXIAL",
        "0008|103e": description,
        "0010|0010": "Phantom^Test",
        "0010|0020": "PHANTOM",
        "0020|000d": study_uid,
        "0020|000e": series_uid,
        "0020|0011": str(series_number),
        "0020|0052": f"{uid_root}.98",
        "0020|0037": orientation,
        "0028|0030": f"{spacing[1]:.6f}\\{spacing[0]:.6f}",
        "0018|0050": f"{spacing[2]:.6f}",
    }
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for k in range(image.GetDepth()):
        slice_image = image[:, :, k]
        for tag, value in common.items():
            slice_image.SetMetaData(tag, value)
        position = image.TransformIndexToPhysicalPoint((0, 0, k))
        slice_image.SetMetaData("0020|0032", "\\".join(f"{v:.6f}" for v in position))
        slice_image.SetMetaData("0020|0013", str(k + 1))
        slice_image.SetMetaData("0008|0018", f"{series_uid}.{k + 1}")
        writer.SetFileName(str(folder / f"slice_{k:04d}.dcm"))
        writer.Execute(slice_image)
    return series_uid


def reoriented(image: sitk.Image, orientation: str = "RAI") -> sitk.Image:
    """The same physical image with another voxel order (`sitk.DICOMOrient`): a non-identity direction."""
    return sitk.DICOMOrient(image, orientation)


def voxel_corners_world(image_geometry: dict, box: np.ndarray) -> np.ndarray:
    """World corners (x, y, z) of a half-open voxel box via SimpleITK's own index-to-point transform."""
    reference = sitk.Image([int(s) for s in image_geometry["image_shape"][::-1]], sitk.sitkUInt8)
    reference.SetSpacing([float(s) for s in image_geometry["spacing"][::-1]])
    reference.SetOrigin(image_geometry["origin"])
    reference.SetDirection(image_geometry["direction"])
    corners = []
    for z in (box[0], box[3]):
        for y in (box[1], box[4]):
            for x in (box[2], box[5]):
                corners.append(reference.TransformContinuousIndexToPhysicalPoint((x - 0.5, y - 0.5, z - 0.5)))
    return np.asarray(corners)
