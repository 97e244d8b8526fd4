"""Training data: preprocessed cases (`<case>.npz` + `<case>.json`), padding to the network input, and
the batchgenerators data loader.

Determinism: batch number `i` of epoch `e` on rank `r` is drawn from numpy's global RNG seeded with
`SeedSequence([seed, r, e, i])` right before the cases are chosen (python's `random` too: batchgenerators'
Gaussian noise draws its variance from it); the augmentation transforms that follow use the same global
RNGs in the same process. So a batch depends only on (seed, rank, epoch,
iteration): not on the number of background workers, not on what ran before, and a resumed run draws
exactly the batches the uninterrupted run would have drawn. With `k` workers, worker `w` makes batches
`start + w, start + w + k, ...` and `MultiThreadedAugmenter` hands them out round-robin, in order.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from batchgenerators.dataloading.data_loader import DataLoader

from autodetr.atomic_io import NPZ_ERRORS, read_json
from autodetr.errors import InputError
from autodetr.preprocessing.case_arrays import left_right_axis, pad_to_input
from autodetr.preprocessing.orientation import Reorientation
from autodetr.preprocessing.identity import check_cases_match_plans

def batch_seed(seed: int, rank: int, epoch: int, iteration: int) -> np.ndarray:
    """32-bit words for `np.random.seed`, from (seed, rank, epoch, iteration in epoch)."""
    return np.random.SeedSequence([int(seed), int(rank), int(epoch), int(iteration)]).generate_state(4)


@dataclass
class CaseFiles:
    case_id: str
    npz: Path
    restore_json: Path


def case_files(folder: Path, case_ids: Sequence[str]) -> list[CaseFiles]:
    """The npz and JSON of every case id; InputError naming the first missing file, or the first npz made
    with another plan than `folder/plans.json` (see `autodetr.preprocessing.identity`)."""
    folder = Path(folder)
    files = []
    for case_id in case_ids:
        entry = CaseFiles(case_id, folder / f"{case_id}.npz", folder / f"{case_id}.json")
        for path in (entry.npz, entry.restore_json):
            if not path.is_file():
                raise InputError(f"{path}: preprocessed case missing; run autodetr_plan_and_preprocess again")
        files.append(entry)
    check_cases_match_plans(folder, [entry.npz for entry in files])
    return files


def load_case(path: Path) -> dict[str, np.ndarray]:
    """`image [C, D, H, W]` float32, `seg [D, H, W]` int16, `boxes [G, 6]`, `classes [G]` of one npz."""
    try:
        with np.load(path, allow_pickle=False) as content:
            return {
                "image": content["image"].astype(np.float32, copy=False),
                "seg": content["seg"].astype(np.int16, copy=False),
                "boxes": content["boxes"].astype(np.float32, copy=False).reshape(-1, 6),
                "classes": content["classes"].astype(np.int64, copy=False).reshape(-1),
            }
    except NPZ_ERRORS as error:  # a truncated file: BadZipFile, EOFError, zlib.error, ...
        raise InputError(f"{path}: cannot read preprocessed case ({type(error).__name__}: {error}); "
                         "rerun autodetr_plan_and_preprocess") from None


def case_left_right_axes(files: Sequence[CaseFiles], transpose_forward: Sequence[int]) -> dict[str, int]:
    """Left-right axis (preprocessed array) of every case, from the direction of its reoriented array
    (restore JSON: the stored direction and the reorientation applied to it)."""
    axes = {}
    for entry in files:
        direction = None
        try:
            restore = read_json(entry.restore_json)["restore"]
            direction = Reorientation.from_json(restore.get("reorientation")).direction(restore["geometry"]["direction"])
        except (KeyError, TypeError, ValueError, OSError, InputError):
            direction = None
        axes[entry.case_id] = left_right_axis(transpose_forward, direction)
    return axes


#: Bytes of decompressed cases one data loader process keeps in memory (see `CaseCache`).
CASE_CACHE_BYTES = 1 << 30


class CaseCache:
    """Decompressed cases of one data loader kept in memory, first come first kept, up to `max_bytes`.

    A preprocessed case is a compressed npz, and inflating it cost about 12 ms of a 450 ms training step on
    the CPU plan (2 cases per batch); nnU-Net unpacks its npz files to npy for the same reason. A case is
    read once and kept while the budget lasts; with uniform sampling a case-level LRU would hit no more
    often, and nothing is evicted. The arrays are read-only: a transform that wrote into them would change
    every later batch of that case, so it fails loudly instead."""

    def __init__(self, max_bytes: int = CASE_CACHE_BYTES) -> None:
        self.max_bytes = int(max_bytes)
        self.used_bytes = 0
        self.cases: dict[Path, dict[str, np.ndarray]] = {}

    def load(self, path: Path) -> dict[str, np.ndarray]:
        """`load_case(path)`, from memory after the first time while the budget lasts."""
        case = self.cases.get(path)
        if case is not None:
            return case
        case = load_case(path)
        size = sum(array.nbytes for array in case.values())
        if self.used_bytes + size <= self.max_bytes:
            for array in case.values():
                array.setflags(write=False)
            self.cases[path] = case
            self.used_bytes += size
        return case


class DetectionDataLoader(DataLoader):
    """Batches of whole, padded cases for iterations `[start, stop)` of one epoch (see the module docstring).

    A batch is a dict: `data [B, C, D, H, W]` float32, `seg [B, 1, D, H, W]` int16, `keys` (case ids),
    `lr_axis [B]` (the left-right axis of each case's preprocessed array), `valid_boxes [B, 6]` (voxel corners
    of each case's unpadded region), `exact_boxes` (per sample, the case's exact boxes from preprocessing:
    `(corners [G, 6] voxel corners, classes [G])`, see `augmentation.DetectionTargetsTransform`) and
    `iteration`.
    """

    def __init__(
        self,
        files: Sequence[CaseFiles],
        batch_size: int,
        input_size: Sequence[int],
        lr_axes: dict[str, int],
        seed: int,
        epoch: int,
        start: int,
        stop: int,
        rank: int = 0,
        num_workers: int = 1,
        cache: CaseCache | None = None,
    ) -> None:
        super().__init__(list(files), batch_size, num_threads_in_multithreaded=max(1, num_workers),
                         seed_for_shuffle=seed, return_incomplete=False, shuffle=False, infinite=True)
        if not files:
            raise InputError("no training cases")
        self.files = list(files)
        self.input_size = [int(s) for s in input_size]
        self.lr_axes = dict(lr_axes)
        self.seed, self.epoch, self.rank = int(seed), int(epoch), int(rank)
        self.start, self.stop = int(start), int(stop)
        self.produced = 0
        self.cache = cache if cache is not None else CaseCache()  # the trainer's lives across epochs

    def next_iteration(self) -> int:
        return self.start + self.thread_id + self.produced * self.number_of_threads_in_multithreaded

    def generate_train_batch(self) -> dict:
        iteration = self.next_iteration()
        if iteration >= self.stop:
            raise StopIteration
        self.produced += 1
        seeds = batch_seed(self.seed, self.rank, self.epoch, iteration)
        np.random.seed(seeds)
        random.seed(int(seeds[0]) << 32 | int(seeds[1]))  # batchgenerators' noise variance uses `random`
        replace = len(self.files) < self.batch_size
        chosen = np.random.choice(len(self.files), self.batch_size, replace=replace)
        images, segs, keys, axes, valid, exact = [], [], [], [], [], []
        for index in chosen:
            entry = self.files[int(index)]
            case = self.cache.load(entry.npz)
            valid.append([0, 0, 0, *case["image"].shape[1:]])
            exact.append((case["boxes"].astype(np.float64), case["classes"]))
            image, seg = pad_to_input(case["image"], case["seg"], self.input_size, entry.npz)
            images.append(image)
            segs.append(seg[None])
            keys.append(entry.case_id)
            axes.append(self.lr_axes.get(entry.case_id, 0))
        return {
            "data": np.stack(images),
            "seg": np.stack(segs),
            "keys": keys,
            "lr_axis": np.asarray(axes, dtype=np.int64),
            "valid_boxes": np.asarray(valid, dtype=np.float64),
            "exact_boxes": exact,
            "iteration": iteration,
        }
