"""`autodetr_predict` as a Python API: find the trained model, read and preprocess every case exactly as
in training, predict with each chosen fold (and its test-time copies with `tta`), fuse, map back, write.

Pipeline per case:

1. read (`inputs.read_input_case`: image files or a DICOM series) and preprocess with the model's
   plans (`autodetr.preprocessing.preprocess_case.preprocess_image`: transpose, crop to the body,
   normalise, resample; a body larger than the planned input is scaled down, never cut);
2. pad at the high end of each axis to the plan's `input_size` with the normalised background (as in
   training), and run every fold model on the case and on its test-time copies (`tta_variants`: moved
   inside the padding, mirrored left-right, each only when training did the same);
3. each member's detections (`autodetr.detector.detect`: normalised centre boxes relative to the input
   size) -> preprocessed voxel corner boxes (`autodetr.boxes.denormalise_centre`), moved back by a
   copy's offset, clipped to the preprocessed case; mirrored copies are mirrored back (and lateral
   classes swapped back);
4. fuse all members per class by weighted box clustering (`autodetr.inference.ensemble`);
5. map the fused boxes to original voxels (`RestoreInfo.preprocessed_to_original`), clip to the image,
   and write `<case>.json` with world corners (and `<case>_boxes.nii.gz` with `save_masks`, the 3D Slicer
   ROI file `<case>.mrk.json` with `slicer`).

Memory strategy: all chosen folds' models are loaded once and kept in memory, cases are the outer loop.
Every case is then read and preprocessed once (the expensive part on CPU), written as soon as it is
done (so an interrupted run resumes per case), and the models are small next to the activations (the
CPU preset's network has about 1 M parameters; even the GPU preset's five folds hold well under 1 GB of
weights). Reading and preprocessing run ahead in `num_processes` worker processes while the main
process predicts.
"""
from __future__ import annotations

import os
import sys
import traceback
import warnings
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from autodetr.boxes import clip_boxes, denormalise_centre, mirror_boxes
from autodetr import paths
from autodetr.devices import resolve_device
from autodetr.errors import InputError
from autodetr.plans import Plans
from autodetr.inference.ensemble import DEFAULT_IOU_THRESHOLD, fuse_detections
from autodetr.inference.inputs import InputCase, discover_cases, read_input_case
from autodetr.inference.outputs import (
    mask_path,
    prediction_path,
    write_boxes_csv,
    write_box_mask,
    write_case_prediction,
    write_mask_from_prediction,
)
from autodetr.preprocessing.raw_dataset import Geometry
from autodetr.slicer_markups import markups_path, write_slicer_rois_from_prediction

DEFAULT_MODEL = paths.trainer_folder_name("dqm")
CHECKPOINT_NAMES = paths.CHECKPOINT_NAMES
#: Plans keys that must agree between the folds of one ensemble (they fix preprocessing and outputs).
SHARED_PLANS_KEYS = ("classes", "input_size", "spacing", "transpose_forward", "normalization",
                     "foreground_intensity_properties_per_channel", "resampling", "channel_names")


# ----------------------------------------------------------------------------------------------------
# finding the model
# ----------------------------------------------------------------------------------------------------

def _fold_folders(model_folder: Path) -> dict[str, Path]:
    """`{"0": fold_0, ..., "all": fold_all}` of the folders that hold a plans.json."""
    found = {}
    for path in sorted(model_folder.glob("fold_*")):
        name = path.name[len("fold_"):]
        if path.is_dir() and (name.isdigit() or name == "all") and (path / "plans.json").is_file():
            found[name] = path
    return found


def resolve_model_folder(dataset: str | int | None = None, model: str | None = None) -> Path:
    """The `<trainer>__<plans>` folder to predict with.

    `model`: a folder (path) holding `fold_k/` sub-folders (a fold folder itself is accepted too), or a
    trainer folder name under `$AUTODETR_results/DatasetXXX_Name/` (default `autodetrTrainer_dqm__autodetrPlans`).
    `dataset`: id or name; may be left out when only one dataset has results."""
    if model is not None and (os.sep in model or Path(model).is_dir()):
        folder = Path(model)
        if not folder.is_dir():
            raise InputError(f"{folder}: model folder does not exist")
        return folder

    results = paths.results_root()
    if dataset is None:
        candidates = sorted(p.name for p in results.iterdir() if p.is_dir() and paths.DATASET_PATTERN.match(p.name)) \
            if results.is_dir() else []
        if not candidates:
            raise InputError(f"{results}: no trained datasets (DatasetXXX_Name folders); train one first or give -m PATH")
        if len(candidates) > 1:
            raise InputError(f"{results} holds results of several datasets ({', '.join(candidates)}); choose one with -d")
        dataset_name = candidates[0]
    else:
        roots = [results] + [Path(os.environ[v]) for k, v in paths.ROOT_VARIABLES.items() if k != "results" and os.environ.get(v)]
        dataset_name = paths.dataset_name_from_id(dataset, roots)
    base = results / dataset_name
    name = model or DEFAULT_MODEL
    folder = base / name
    if not folder.is_dir():
        available = sorted(p.name for p in base.iterdir() if p.is_dir()) if base.is_dir() else []
        hint = f"available: {', '.join(available)}" if available else "no trained models there"
        raise InputError(f"{folder}: no such trained model ({hint}); choose one with -m")
    return folder


def select_folds(model_folder: Path, folds: Sequence[str | int] | None) -> list[Path]:
    """Fold folders to ensemble: the given ones (`0 1 2`, or `all` for fold_all), by default every
    numbered `fold_k` (or `fold_all` when there is no numbered fold). A folder that is itself a fold
    folder (holds plans.json and a checkpoint) is used alone."""
    model_folder = Path(model_folder)
    if (model_folder / "plans.json").is_file() and any((model_folder / n).is_file() for n in CHECKPOINT_NAMES.values()):
        if folds:
            raise InputError(f"{model_folder} is a single fold folder; give its parent folder to choose folds")
        return [model_folder]
    available = _fold_folders(model_folder)
    if not available:
        raise InputError(f"{model_folder}: no trained folds (fold_k/ folders with plans.json)")
    if not folds:
        numbered = [available[k] for k in sorted((k for k in available if k.isdigit()), key=int)]
        return numbered or [available["all"]]
    chosen = []
    for fold in folds:
        key = str(fold).strip()
        key = key[len("fold_"):] if key.startswith("fold_") else key
        if key not in available:
            raise InputError(f"{model_folder / ('fold_' + key)}: fold not trained (available: {', '.join(sorted(available))})")
        if available[key] not in chosen:
            chosen.append(available[key])
    return chosen


# ----------------------------------------------------------------------------------------------------
# the ensemble of fold models
# ----------------------------------------------------------------------------------------------------

@dataclass
class Member:
    fold: str
    model: Any
    objective: str
    checkpoint: str


@dataclass
class Variant:
    """One test-time copy: `axes` mirrored (preprocessed axes), `swap` lateral classes back, and the
    case placed at voxel `offset` inside its padded input (the training shift; zero: the low corner)."""

    axes: tuple[int, ...] = ()
    swap: bool = False
    offset: tuple[int, ...] = (0, 0, 0)


def lateral_axis(geometry: Geometry, transpose_forward: Sequence[int], orientation: str = "LPS") -> int:
    """The preprocessed axis that runs closest to the patient's left-right (world x) direction in the reoriented array (the
    training data loader's own rule, `autodetr.training.dataset.left_right_axis`)."""
    from autodetr.preprocessing.case_arrays import left_right_axis
    from autodetr.preprocessing.orientation import Reorientation

    return left_right_axis(transpose_forward, Reorientation.planned(orientation, geometry.direction).direction(geometry.direction))


def training_mirrored_left_right(plans: dict) -> bool:
    """Whether the trainer's augmentation mirrored the left-right axis (`p_mirror` > 0 in the fold's
    `training.augmentation`; trainers that do not record it are assumed to have)."""
    options = Plans.of(plans).augmentation
    return bool(options["enabled"]) and float(options["p_mirror"]) > 0


def training_shifted(plans: dict) -> bool:
    """Whether the trainer's augmentation moved cases inside their padding (`p_shift` > 0)."""
    options = Plans.of(plans).augmentation
    return bool(options["enabled"]) and float(options["p_shift"]) > 0


#: Where the shifted test-time copies place the case, as fractions of the free room per axis (room =
#: input size - case size): eighths along the diagonal of the padding, the far corner included. Eight
#: copies measured best among the layouts tried (held-out phantoms, benchmark dqm model: mAP 0.371 without
#: copies, 0.414 far corner + middle, 0.434 quarters, 0.445 eighths, 0.446 sixteenths, 0.411 the 8 corners
#: of the room, 0.436 8 random offsets).
SHIFT_FRACTIONS = tuple((k / 8, k / 8, k / 8) for k in range(1, 9))


def shift_offsets(shape: Sequence[int], input_size: Sequence[int]) -> list[tuple[int, ...]]:
    """Distinct non-zero voxel offsets of the shifted test-time copies of a case of `shape`."""
    room = [max(int(n) - int(s), 0) for n, s in zip(input_size, shape)]
    offsets: list[tuple[int, ...]] = []
    for fractions in SHIFT_FRACTIONS:
        offset = tuple(int(round(f * r)) for f, r in zip(fractions, room))
        if any(offset) and offset not in offsets:
            offsets.append(offset)
    return offsets


def tta_variants(plans: dict, geometry: Geometry, shape: Sequence[int] | None = None) -> list[Variant]:
    """The identity plus, when training mirrored left-right, the copy mirrored along the case's
    left-right axis, whose predictions get the plan's `lateral_pairs` swapped back; and, when training
    shifted cases inside their padding and the case's preprocessed `shape` leaves room, the copies
    placed at `shift_offsets` (their boxes move back by the offset).

    Only the transforms training used are sensible test-time copies: the trainer flips the left-right
    axis (with kidney_left <-> kidney_right swapped) and never the head-foot or front-back axes, because
    an organ's position is one of its strongest cues; a model never shown an upside-down body would only
    add noise to the ensemble. Without lateral pairs nothing needs swapping back."""
    planned = Plans.of(plans)
    variants = [Variant()]
    if training_mirrored_left_right(planned):
        variants.append(Variant((lateral_axis(geometry, planned.transpose_forward, planned.orientation),), True))
    if shape is not None and training_shifted(planned):
        variants.extend(Variant(offset=offset) for offset in shift_offsets(shape, planned.input_size))
    return variants


def swap_lateral_labels(labels: np.ndarray, pairs: Sequence[Sequence[int]]) -> np.ndarray:
    """Class indices with each lateral pair (a, b) exchanged."""
    labels = np.asarray(labels, dtype=np.int64)
    swapped = labels.copy()
    for a, b in pairs:
        swapped[labels == a] = b
        swapped[labels == b] = a
    return swapped


def pad_to_input(image: np.ndarray, input_size: Sequence[int]) -> np.ndarray:
    """`[C, d, h, w]` padded at the high end of each axis to `input_size` with the normalised background,
    exactly as the training data loader pads (`autodetr.training.dataset.pad_to_input`: the image minimum)."""
    from autodetr.preprocessing.case_arrays import pad_to_input as training_pad

    padded, _ = training_pad(np.ascontiguousarray(image, dtype=np.float32), None, input_size)
    return padded


def place_in_input(image: np.ndarray, input_size: Sequence[int], offset: Sequence[int] = (0, 0, 0)) -> np.ndarray:
    """`pad_to_input`, then the case moved by `offset` voxels into its padding (each offset at most the
    axis's padding, so only padding wraps round), as the training shift places it."""
    padded = pad_to_input(image, input_size)
    if any(offset):
        padded = np.roll(padded, shift=tuple(int(o) for o in offset), axis=(1, 2, 3))
    return padded


class EnsemblePredictor:
    """The fold models of one trained model, loaded once, predicting preprocessed cases."""

    def __init__(
        self,
        fold_folders: Sequence[Path],
        checkpoint: str | None = None,
        device: str = "cpu",
        tta: bool = True,
        iou_threshold: float = DEFAULT_IOU_THRESHOLD,
        max_per_class: int = 1,
    ) -> None:
        import torch

        from autodetr.detector import load_trained_detector

        self.device = torch.device(device)
        self.tta = tta
        self.iou_threshold = iou_threshold
        self.max_per_class = max_per_class
        self.members: list[Member] = []
        self.plans: dict | None = None
        self.arguments: dict = {}
        file_name = CHECKPOINT_NAMES[checkpoint] if checkpoint else None
        for folder in fold_folders:
            if file_name is not None and not (Path(folder) / file_name).is_file():
                raise InputError(f"{Path(folder) / file_name}: missing (training unfinished?); choose another with --checkpoint")
            model, plans, arguments = load_trained_detector(folder, self.device, checkpoint=file_name)
            if self.plans is None:
                self.plans, self.arguments = plans, arguments
            else:
                ours, theirs = Plans.of(self.plans), Plans.of(plans)
                different = [k for k in SHARED_PLANS_KEYS if theirs.value(k) != ours.value(k)]
                if different:
                    raise InputError(f"{folder}: plans differ from {fold_folders[0]} in {', '.join(different)}; "
                                     "folds of one ensemble must share their plans")
            fold = Path(folder).name.removeprefix("fold_")
            self.members.append(Member(fold, model, str(arguments.get("objective", "dqm")), str(arguments.get("checkpoint", ""))))
        if self.plans is None:
            raise InputError("no folds to predict with")
        self._use_plans(self.plans)

    @property
    def pretrained(self) -> dict | None:
        """The record of a packaged model (`autodetr.pretrained`: name, version, recipe), None for a trained one."""
        return self.arguments.get("pretrained")

    @classmethod
    def from_network(cls, network: Any, plans: dict, objective: str, device: Any, tta: bool = False) -> "EnsemblePredictor":
        """A predictor of one live network: training's validation predicts through it (with `tta` for the
        final validation, as nnU-Net's final validation mirrors), as nnU-Net's trainer hands its network to
        `nnUNetPredictor`, so validation and `autodetr_predict` cannot drift apart. The caller keeps the
        network in eval mode while predicting."""
        import torch

        predictor = cls.__new__(cls)
        predictor.device = torch.device(device)
        predictor.tta, predictor.iou_threshold, predictor.max_per_class = tta, DEFAULT_IOU_THRESHOLD, 1
        predictor.members = [Member("live", network, objective, "")]
        predictor.plans, predictor.arguments = plans, {"objective": objective}
        predictor._use_plans(plans)
        return predictor

    def _use_plans(self, plans: dict) -> None:
        self.view = view = Plans.of(plans)  # read once; per-case steps use it, not the dict
        self.input_size = view.input_size
        self.class_names = view.class_names
        self.label_values = view.label_values
        self.num_channels = view.in_channels
        self.lateral_pairs = view.lateral_pairs

    def _forward(self, member: Member, image: np.ndarray, valid_shape: Sequence[int],
                 offset: Sequence[int] = (0, 0, 0)) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Detections of one padded input; `valid_shape` is the case's unpadded shape, placed at `offset`."""
        import torch

        from autodetr.detector import detect, fused_queries_of
        from autodetr.model.anchors import valid_boxes_from_shapes

        tensor = torch.from_numpy(np.ascontiguousarray(image)[None]).to(self.device)
        valid_boxes = valid_boxes_from_shapes([list(valid_shape)], self.input_size, self.device)
        if any(offset):
            low = torch.as_tensor([o / n for o, n in zip(offset, self.input_size)], dtype=valid_boxes.dtype,
                                  device=self.device)
            valid_boxes = valid_boxes + torch.cat([low, low])[None]
        with torch.inference_mode():
            outputs = member.model(tensor, valid_boxes=valid_boxes)
            result = detect(outputs, member.objective, max_per_class=self.max_per_class,
                            fused_queries=fused_queries_of(self.view, member.objective))[0]
        return result["boxes"].numpy(), result["scores"].numpy(), result["labels"].numpy()

    def predict_preprocessed(self, image: np.ndarray, geometry: Geometry) -> dict[str, Any]:
        """Fused detections of a preprocessed case `[C, d, h, w]`: `boxes` in preprocessed voxels,
        `scores`, `labels` (class indices), `support`, `members` (how many predictions were fused)."""
        shape = image.shape[1:]
        variants = tta_variants(self.view, geometry, shape) if self.tta else [Variant()]
        pairs = self.lateral_pairs
        all_boxes, all_scores, all_labels = [], [], []
        for variant in variants:
            flipped = np.flip(image, axis=[a + 1 for a in variant.axes]) if variant.axes else image
            padded = place_in_input(flipped, self.input_size, variant.offset)
            for member in self.members:
                boxes, scores, labels = self._forward(member, padded, shape, variant.offset)
                boxes = denormalise_centre(boxes, self.input_size) - np.tile(np.asarray(variant.offset, dtype=float), 2)
                boxes = clip_boxes(boxes, shape)
                if variant.axes:
                    boxes = mirror_boxes(boxes, variant.axes, shape)
                if variant.swap and pairs:
                    labels = swap_lateral_labels(labels, pairs)
                all_boxes.append(boxes)
                all_scores.append(scores)
                all_labels.append(labels)
        fused = fuse_detections(all_boxes, all_scores, all_labels, self.iou_threshold, self.max_per_class)
        return {"boxes": fused.boxes, "scores": fused.scores, "labels": fused.labels, "support": fused.support,
                "members": len(all_boxes)}

    def predict_image(self, image: np.ndarray, geometry: Geometry) -> dict[str, Any]:
        """Preprocess an original image `[C, z, y, x]` and predict: `boxes` in original voxels, `scores`,
        `label_values`, plus the preprocessed-space result under `preprocessed`."""
        from autodetr.preprocessing.preprocess_case import preprocess_image

        return self.predict_case(preprocess_image(image, geometry, self.plans))

    def predict_case(self, case) -> dict[str, Any]:
        """Predict a `PreprocessedCase` and map the result back to its original image."""
        restore = case.restore
        result = self.predict_preprocessed(case.image, restore.geometry)
        original = restore.boxes_in_original(result["boxes"])
        label_values = np.asarray([self.label_values[int(c)] for c in result["labels"]], dtype=np.int64)
        return {"boxes": original, "scores": result["scores"], "label_values": label_values,
                "support": result["support"], "members": result["members"], "preprocessed": result}


def empty_result() -> dict[str, Any]:
    """`EnsemblePredictor.predict_case`'s result with no detection."""
    return {"boxes": np.zeros((0, 6)), "scores": np.zeros(0), "label_values": np.zeros(0, dtype=np.int64),
            "support": np.zeros(0), "members": 0, "preprocessed": None}


# ----------------------------------------------------------------------------------------------------
# cases in, files out
# ----------------------------------------------------------------------------------------------------

def ct_range_of_scan(image: np.ndarray, ct_channels: list[int]) -> str | None:
    """Why a CT channel of a scan to predict lies far outside the physical HU range (wrapped unsigned 16-bit
    values, or many voxels above it: `autodetr.planners.intensity.ct_range_problem`, with no labels), or None."""
    from autodetr.planners.intensity import ct_range_problem

    for channel in ct_channels:
        problem = ct_range_problem(image[channel], np.zeros(image.shape[1:], dtype=bool))
        if problem:
            return problem
    return None


def refuse_constant_channels(image: np.ndarray, ct_channels: list[int], source: object) -> None:
    """Refuse a scan `[C, z, y, x]` with a constant or near-constant channel, naming `source`
    (`autodetr.planners.intensity.check_not_constant`, the planning refusal's sibling)."""
    from autodetr.planners.intensity import check_not_constant

    for channel in range(image.shape[0]):
        check_not_constant(image[channel], source, channel in ct_channels)


def _load_and_preprocess(case: InputCase, plans: dict):
    """Worker: read and preprocess one case; returns the PreprocessedCase or an error line."""
    from autodetr.preprocessing.preprocess_case import preprocess_image

    try:
        image, geometry = read_input_case(case)
        planned = Plans.of(plans)
        if image.shape[0] != planned.in_channels:
            raise InputError(f"{case.source}: {image.shape[0]} channel(s), the model takes {planned.in_channels}")
        prepared = preprocess_image(image, geometry, planned)
        if prepared.body_found:  # an all-air scan is no body (a warning), any other constant scan is refused
            refuse_constant_channels(image, planned.ct_channels, case.source)
        prepared.intensity_problem = ct_range_of_scan(image, planned.ct_channels)
        return prepared
    except InputError as error:
        return str(error)
    except Exception as error:  # noqa: BLE001 - a broken case must not stop the others
        if os.environ.get("AUTODETR_DEBUG"):
            traceback.print_exc()
        return f"{type(error).__name__}: {error}"


class CasePrefetcher:
    """Reads and preprocesses cases in `num_processes` worker processes, up to `num_processes + 1` cases
    ahead of the consumer; iterating yields `(case, PreprocessedCase or error string)` in input order.

    The first cases are submitted on construction, so reading overlaps with loading the models. Workers
    are spawned (not forked): the main process holds torch threads and maybe a CUDA context. With one
    process (or one case) everything runs in this process, lazily."""

    def __init__(self, cases: Sequence[InputCase], plans: dict, num_processes: int) -> None:
        import multiprocessing

        self.queue = list(cases)
        self.plans = plans
        self.ahead = num_processes + 1
        self.pool = None
        self.pending: list[tuple[InputCase, Future]] = []
        if num_processes > 1 and len(self.queue) > 1:
            from autodetr.parallel import worker_pool  # workers die with this process

            self.pool = worker_pool(min(num_processes, len(self.queue)), mp_context=multiprocessing.get_context("spawn"))
            self._submit()

    def _submit(self) -> None:
        while self.queue and len(self.pending) < self.ahead:
            case = self.queue.pop(0)
            self.pending.append((case, self.pool.submit(_load_and_preprocess, case, self.plans)))

    def __iter__(self) -> Iterator[tuple[InputCase, Any]]:
        if self.pool is None:
            while self.queue:
                case = self.queue.pop(0)
                yield case, _load_and_preprocess(case, self.plans)
            return
        try:
            while self.pending:
                case, future = self.pending.pop(0)
                try:
                    result = future.result()
                except Exception as error:  # noqa: BLE001 - e.g. a worker killed for memory
                    result = f"{type(error).__name__}: {error}"
                self._submit()
                yield case, result
        finally:
            self.close()

    def close(self) -> None:
        if self.pool is not None:
            for _, future in self.pending:
                future.cancel()
            self.pool.shutdown(wait=True, cancel_futures=True)
            self.pool = None


@dataclass
class PredictSummary:
    written: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    csv: Path | None = None
    model_folder: Path | None = None
    folds: list[str] = field(default_factory=list)


def _is_done(output_folder: Path, case_id: str) -> bool:
    path = prediction_path(output_folder, case_id)
    if not path.is_file():
        return False
    try:
        from autodetr.prediction_files import load_prediction

        load_prediction(path)
        return True
    except InputError:
        return False


def _cases_to_predict(
    cases: Sequence[InputCase], output: Path, overwrite: bool, writing: "CaseOutputs", summary: PredictSummary
) -> list[InputCase]:
    """The cases still to predict; finished ones (unless `overwrite`) go to `summary.skipped` and get missing extras."""
    todo = []
    for case in cases:
        if not overwrite and _is_done(output, case.case_id):
            summary.skipped.append(case.case_id)
            writing.complete_extras(case.case_id)
        else:
            todo.append(case)
    return todo


def _predict_and_write(
    prefetcher: CasePrefetcher,
    predictor: "EnsemblePredictor",
    writing: "CaseOutputs",
    summary: PredictSummary,
    total: int,
    progress: bool,
) -> None:
    """Predict and write each prefetched case; a failing case is reported on stderr and in `summary.failed`."""
    from tqdm import tqdm

    bar = tqdm(total=total, desc="Predicting", unit="case", disable=not progress, file=sys.stderr)
    for case, prepared in prefetcher:
        try:
            writing.write(case, prepared, predictor)
            summary.written.append(case.case_id)
        except Exception as error:  # noqa: BLE001 - report and go on with the other cases
            summary.failed[case.case_id] = failure_reason(error)
            tqdm.write(f"failed: {case.case_id}: {summary.failed[case.case_id]}", file=sys.stderr)
        bar.update()
    bar.close()


def predict(
    input_path: str | os.PathLike,
    output_folder: str | os.PathLike,
    dataset: str | int | None = None,
    model: str | None = None,
    folds: Sequence[str | int] | None = None,
    checkpoint: str | None = None,
    device: str = "auto",
    tta: bool = True,
    num_processes: int = 2,
    save_masks: bool = False,
    score_threshold: float = 0.0,
    overwrite: bool = False,
    iou_threshold: float = DEFAULT_IOU_THRESHOLD,
    max_per_class: int = 1,
    progress: bool = True,
    slicer: bool = False,
    atlas_prior: bool = False,
) -> PredictSummary:
    """Predict every case of `input_path` into `output_folder` (see the module docstring).

    A case that cannot be read or predicted is reported on stderr (one line: case and reason) and
    listed in the summary's `failed`; the others are still written. Finished cases (`<case>.json`
    exists) are skipped unless `overwrite`. `boxes.csv` is rebuilt at the end from the case files of the
    input's cases (no other file of the output folder is read).
    `slicer`: also write `<case>.mrk.json`, one 3D Slicer ROI per detection (`autodetr.slicer_markups`).
    `atlas_prior`: write the chosen folds' atlas prior instead of the networks' boxes (no network runs;
    `autodetr.inference.atlas_prior`), the baseline to read the model's files against.
    The keywords are grouped into `ModelSelection` and `PredictOptions` for `predict_cases`."""
    selection = ModelSelection(dataset, model, None if folds is None else tuple(folds), checkpoint)
    options = PredictOptions(device, tta, num_processes, save_masks, score_threshold, overwrite, iou_threshold,
                             max_per_class, progress, slicer, atlas_prior)
    return predict_cases(input_path, output_folder, selection, options)


@dataclass(frozen=True)
class ModelSelection:
    """Which trained model predicts: `dataset` and `model` (trainer__plans folder), the `folds` to ensemble
    (None: every trained fold) and the `checkpoint` name (None: best, else final, else last)."""

    dataset: str | int | None = None
    model: str | None = None
    folds: Sequence[str | int] | None = None
    checkpoint: str | None = None


@dataclass(frozen=True)
class PredictOptions:
    """How cases are predicted and written (`predict`'s keywords of the same names)."""

    device: str = "auto"
    tta: bool = True
    num_processes: int = 2
    save_masks: bool = False
    score_threshold: float = 0.0
    overwrite: bool = False
    iou_threshold: float = DEFAULT_IOU_THRESHOLD
    max_per_class: int = 1
    progress: bool = True
    slicer: bool = False
    atlas_prior: bool = False


def predict_cases(input_path: str | os.PathLike, output_folder: str | os.PathLike, selection: ModelSelection,
                  options: PredictOptions) -> PredictSummary:
    """`predict` with its options grouped: find the model and the cases, then predict and write each case."""
    from autodetr.atomic_io import remove_stale_partials

    check_prediction_options(selection.checkpoint, options.score_threshold, options.iou_threshold, options.max_per_class)
    if options.atlas_prior and selection.checkpoint:
        raise InputError("--atlas-prior runs no network: --checkpoint does not apply to it")
    output = Path(output_folder)
    if output.exists() and not output.is_dir():
        raise InputError(f"{output}: output exists and is not a folder")
    model_folder = resolve_model_folder(selection.dataset, selection.model)
    fold_folders = select_folds(model_folder, selection.folds)
    plans = read_model_plans(fold_folders)
    remove_stale_partials(output)
    cases = discover_cases(input_path, Plans.of(plans).in_channels, exclude=output)
    output.mkdir(parents=True, exist_ok=True)
    summary = PredictSummary(model_folder=model_folder, folds=[f.name for f in fold_folders])
    writing = CaseOutputs(output, model_folder, options.tta, options.iou_threshold, options.score_threshold,
                          options.save_masks, options.slicer)
    todo = _cases_to_predict(cases, output, options.overwrite, writing, summary)
    if todo:
        prefetcher = CasePrefetcher(todo, plans, options.num_processes)  # starts reading while the models load
        try:
            predictor = build_predictor(fold_folders, selection, options)
        except BaseException:
            prefetcher.close()
            raise
        _predict_and_write(prefetcher, predictor, writing, summary, len(todo), options.progress)
    summary.csv = write_boxes_csv(output, [case.case_id for case in cases])  # only our files: not a notes.json
    return summary


def build_predictor(fold_folders: Sequence[Path], selection: ModelSelection, options: PredictOptions) -> Any:
    """The fold models (`EnsemblePredictor`), or with `options.atlas_prior` the folds' atlas priors
    (`AtlasPriorPredictor`: no network, no device)."""
    if options.atlas_prior:
        from autodetr.inference.atlas_prior import AtlasPriorPredictor

        return AtlasPriorPredictor(fold_folders, options.iou_threshold)
    return EnsemblePredictor(fold_folders, selection.checkpoint, resolve_device(options.device), options.tta,
                             options.iou_threshold, options.max_per_class)


def check_prediction_options(checkpoint: str | None, score_threshold: float, iou_threshold: float, max_per_class: int) -> None:
    """One line naming the first prediction option out of range."""
    if checkpoint is not None and checkpoint not in CHECKPOINT_NAMES:
        raise InputError(f"--checkpoint must be one of {', '.join(CHECKPOINT_NAMES)}, got '{checkpoint}'")
    if not 0.0 <= score_threshold <= 1.0:
        raise InputError(f"--score-threshold must be in [0, 1], got {score_threshold}")
    if not 0.0 < iou_threshold <= 1.0:
        raise InputError(f"--iou-threshold must be in (0, 1], got {iou_threshold}")
    if max_per_class < 1:
        raise InputError(f"--max-per-class must be at least 1, got {max_per_class}")


def read_model_plans(fold_folders: Sequence[Path]) -> dict:
    """The plans of the first fold, after checking every fold's arguments.json and plans.json read (one line
    naming a corrupt file or a plan without `classes`, not a traceback while loading)."""
    from autodetr.atomic_io import read_json
    from autodetr.model_files import read_plans

    for fold_folder in fold_folders:
        if (fold_folder / "arguments.json").is_file():
            read_json(fold_folder / "arguments.json", expected=dict)
    plans = [read_plans(fold_folder / "plans.json") for fold_folder in fold_folders]  # a missing key: one line
    return plans[0]


def failure_reason(error: Exception) -> str:
    """One line for a case that failed: the InputError's message, else the exception's type and text
    (with the traceback on stderr when AUTODETR_DEBUG is set)."""
    if os.environ.get("AUTODETR_DEBUG") and not isinstance(error, InputError):
        traceback.print_exc()
    reason = str(error) if isinstance(error, InputError) else f"{type(error).__name__}: {error}"
    return " ".join(reason.split())


@dataclass
class CaseOutputs:
    """What `predict` writes per case: the prediction JSON, and on request the box mask and Slicer ROIs."""

    output: Path
    model_folder: Path
    tta: bool
    iou_threshold: float
    score_threshold: float
    save_masks: bool
    slicer: bool

    def complete_extras(self, case_id: str) -> None:
        """For a case predicted earlier: add the box mask / Slicer ROIs now asked for and still missing."""
        if self.save_masks and not mask_path(self.output, case_id).is_file():
            write_mask_from_prediction(prediction_path(self.output, case_id), mask_path(self.output, case_id))
        if self.slicer and not markups_path(self.output, case_id).is_file():
            write_slicer_rois_from_prediction(prediction_path(self.output, case_id), markups_path(self.output, case_id))

    def write(self, case: InputCase, prepared: Any, predictor: "EnsemblePredictor") -> None:
        """Predict one prepared case (or report its read error) and write its files."""
        if isinstance(prepared, str):
            raise InputError(prepared)
        if not prepared.body_found:  # all air or a few voxels: organ boxes there would be noise
            result = empty_result()
            warnings.warn(f"{case.source}: no body found (all air or under 2 voxels on an axis); nothing predicted",
                          stacklevel=1)
        else:
            result = predictor.predict_case(prepared)
        if prepared.intensity_problem:
            warnings.warn(f"{case.source}: {prepared.intensity_problem}; predicted anyway, its boxes may be wrong",
                          stacklevel=1)
        keep = result["scores"] >= self.score_threshold
        geometry = prepared.restore.geometry
        extra = {
            "source": case.source,
            "model": str(self.model_folder),
            "folds": [m.fold for m in predictor.members],
            "checkpoints": [Path(m.checkpoint).name for m in predictor.members],
            "pretrained": predictor.pretrained,  # name and version of a packaged model, else None
            "tta": self.tta,
            "ensemble": {"method": "weighted box clustering", "iou_threshold": self.iou_threshold,
                         "members": result["members"], "support": result["support"][keep].tolist()},
            "score_threshold": self.score_threshold,
        }
        write_case_prediction(prediction_path(self.output, case.case_id), case.case_id, result["boxes"][keep],
                              result["scores"][keep], result["label_values"][keep], predictor.class_names,
                              geometry, extra)
        if self.save_masks:
            write_box_mask(mask_path(self.output, case.case_id), result["boxes"][keep], result["label_values"][keep], geometry)
        if self.slicer:
            write_slicer_rois_from_prediction(prediction_path(self.output, case.case_id), markups_path(self.output, case.case_id))
