"""`autodetr_train` as a Python API: `train(dataset, fold, ...)` -> the fold's output folder.

Output: `$AUTODETR_results/DatasetXXX_Name/autodetrTrainer_<objective>__<plans>/fold_<k>/` (`fold_all` for
fold "all"): checkpoint_{last,best,final}.pt, training_log.txt, progress.png, plans.json (the exact
plans used, after every override), arguments.json (all arguments), validation/ (one prediction JSON per
validation case and metrics.json / metrics.csv from the evaluator).
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

from autodetr.atomic_io import read_json, write_json
from autodetr.detector import OBJECTIVES, check_objective
from autodetr.errors import InputError
from autodetr.devices import resolve_device
from autodetr.paths import (
    CHECKPOINT_NAMES,
    PLANS_NAME,
    check_folder_name,
    dataset_name_from_id,
    fold_folder,
    parse_fold,
    preprocessed_root,
    trainer_folder_name,
)
from autodetr.plans import BACKBONES, TRAINING_DEFAULTS, Plans, apply_overrides


def default_num_workers(world_size: int = 1, device: str = "cuda") -> int:
    """One background process per spare core, at most 4, shared by the ranks of this machine. On a CPU
    with at most 4 cores none: the network's threads use every core, and a worker competing with them
    made a step slower (2 cores: 0.87 it/s with one worker, 0.95 without)."""
    cores = os.cpu_count() or 1
    if device == "cpu" and cores <= 4:
        return 0
    return max(0, min(4, (cores - world_size) // max(1, world_size)))


@dataclass(frozen=True)
class ScheduleOptions:
    """Schedule values given for this run (None: the plan's `training` value)."""

    epochs: int | None = None
    iterations_per_epoch: int | None = None
    batch_size: int | None = None
    learning_rate: float | None = None

    def overrides(self) -> dict[str, object]:
        """`training.<key>` overrides of the values given; a value <= 0 is an InputError."""
        given = {key: value for key, value in asdict(self).items() if value is not None}
        for key, value in given.items():
            if value <= 0:
                raise InputError(f"{key.replace('_', ' ')} must be positive, got {value}")
        return {f"training.{key}": value for key, value in given.items()}


@dataclass(frozen=True)
class RunOptions:
    """How this run trains (not what: that is the plan): device, workers, seed, resume, validation
    interval, time budget, progress bar."""

    device: str | None = None
    num_workers: int | None = None
    resume: bool = False
    seed: int = 0
    val_every: int | None = None
    max_minutes: float | None = None
    progress_bar: bool = True
    validation_only: bool = False

    def check(self) -> "RunOptions":
        """One InputError line naming the first option out of range."""
        if int(self.seed) < 0:
            raise InputError(f"--seed must be >= 0, got {self.seed}")
        if self.val_every is not None and self.val_every < 1:
            raise InputError(f"--val-every must be at least 1, got {self.val_every}")
        if self.max_minutes is not None and self.max_minutes <= 0:
            raise InputError(f"--max-minutes must be positive, got {self.max_minutes}")
        if self.num_workers is not None and int(self.num_workers) < 0:
            raise InputError(f"--num-workers must be >= 0, got {self.num_workers}")
        if self.validation_only and self.resume:
            raise InputError("--val reruns the validation of a finished fold; it does not combine with --resume")
        return self


def train(
    dataset: str | int,
    fold: str | int = 0,
    objective: str = "dqm",
    plans_name: str = PLANS_NAME,
    epochs: int | None = None,
    iterations_per_epoch: int | None = None,
    batch_size: int | None = None,
    learning_rate: float | None = None,
    device: str | None = None,
    num_workers: int | None = None,
    resume: bool = False,
    seed: int = 0,
    backbone: str | None = None,
    val_every: int | None = None,
    max_minutes: float | None = None,
    overrides: Sequence[str] | dict | None = None,
    progress_bar: bool = True,
    validation_only: bool = False,
    pretrained: str | None = None,
) -> Path:
    """Train one fold (see the module docstring); returns the fold folder. `validation_only`: train
    nothing, rerun the final validation of the fold's checkpoint_final.pt (`autodetr_train --val`). Under torchrun every rank
    calls this; rank 0 writes the files. The keywords are grouped into `ScheduleOptions` and `RunOptions`
    for `train_fold`."""
    schedule = ScheduleOptions(epochs, iterations_per_epoch, batch_size, learning_rate)
    run = RunOptions(device, num_workers, resume, seed, val_every, max_minutes, progress_bar, validation_only)
    return train_fold(dataset, fold, objective, plans_name, schedule, run, backbone, overrides, pretrained)


def train_fold(dataset: str | int, fold: str | int, objective: str, plans_name: str, schedule: ScheduleOptions,
               run: RunOptions, backbone: str | None = None, overrides: Sequence[str] | dict | None = None,
               pretrained: str | None = None) -> Path:
    """`train` with its options grouped: resolve the fold, its plans and device, then run the trainer.
    `pretrained`: start from those weights (`autodetr.training.pretrained_start`); not when resuming."""
    from autodetr.training.distributed import distributed_from_environment
    from autodetr.training.trainer import TrainingSetup

    check_objective(objective)
    run.check()
    fold_value = parse_fold(fold)
    dataset_name = _resolve_dataset(dataset)
    plans_dir = preprocessed_root() / dataset_name / check_folder_name(plans_name, "plans")
    train_cases, val_cases = fold_cases(dataset_name, plans_dir, fold_value)
    output = fold_folder(dataset_name, fold_value, objective, plans_name)
    if run.validation_only and not (output / CHECKPOINT_NAMES["final"]).is_file():
        raise InputError(f"--val: {output / CHECKPOINT_NAMES['final']} does not exist; the fold has not finished training")
    # --val validates the fold as it was trained: its own plans
    plans = fold_plans(plans_dir, output, fold_value, train_cases, run.resume or run.validation_only, backbone, overrides,
                       schedule, require_last=not run.validation_only)
    if pretrained is not None and not (run.resume or run.validation_only):
        plans = pretrained_plans(plans, pretrained)
    planned = Plans.of(plans)
    info = distributed_from_environment()
    device_name = training_device(run.device, info)
    workers = default_num_workers(info.world_size, device_name) if run.num_workers is None else int(run.num_workers)
    arguments = {
        "dataset": str(dataset), "dataset_name": dataset_name, "fold": fold_value, "objective": objective,
        "plans_name": plans_name, **{key: planned.training[key] for key in asdict(schedule)},
        "device": device_name, "num_workers": workers, "resume": bool(run.resume), "seed": int(run.seed),
        "backbone": planned.backbone, "val_every": run.val_every, "max_minutes": run.max_minutes,
        "overrides": list(overrides.items()) if isinstance(overrides, dict) else list(overrides or []),
        "world_size": info.world_size, "train_cases": train_cases, "val_cases": val_cases,
        "trainer": trainer_folder_name(objective, plans_name), "preprocessed_folder": str(plans_dir),
        "pretrained_start": pretrained,
    }
    setup = TrainingSetup(
        output_folder=output, preprocessed_folder=plans_dir, train_cases=train_cases, val_cases=val_cases,
        objective=objective, fold_label=str(fold_value), device=device_name, num_workers=workers, seed=int(run.seed),
        resume=bool(run.resume), val_every=run.val_every, max_minutes=run.max_minutes, progress_bar=run.progress_bar,
        validation_only=run.validation_only, distributed=info, arguments=arguments,
        pretrained=None if run.resume or run.validation_only else pretrained,
    )
    return run_fold(plans, setup)


def pretrained_plans(plans: dict, pretrained: str) -> dict:
    """The fold's plans with the network of the `--pretrained` source; InputError when no class is shared."""
    from autodetr.training.pretrained_start import class_mapping, plans_from_source, source_folder

    folder, _ = source_folder(pretrained)
    source_plans = read_json(folder / "plans.json")
    class_mapping(plans, source_plans)  # refuses a dataset with no class in common, before anything is built
    return plans_from_source(plans, source_plans)


def fold_cases(dataset_name: str, plans_dir: Path, fold: int | str) -> tuple[list[str], list[str]]:
    """(training cases, validation cases) of `fold` in the dataset's splits_final.json (`all`: every case
    trains, none validates); InputError when the plans or the splits are missing or the fold is not there."""
    plans_file = plans_dir / "plans.json"
    if not plans_file.is_file():
        raise InputError(f"{plans_file}: no plans; run autodetr_plan_and_preprocess -d {dataset_name} first")
    splits_file = preprocessed_root() / dataset_name / "splits_final.json"
    if not splits_file.is_file():
        raise InputError(f"{splits_file}: no splits; run autodetr_plan_and_preprocess -d {dataset_name} first")
    splits = read_json(splits_file)
    if fold == "all":
        train_cases = sorted({c for split in splits for c in split["train"] + split["val"]})
        val_cases: list[str] = []
    else:
        if not 0 <= int(fold) < len(splits):
            raise InputError(f"fold {fold}: {splits_file} has folds 0..{len(splits) - 1}")
        train_cases, val_cases = list(splits[int(fold)]["train"]), list(splits[int(fold)]["val"])
    if not train_cases:
        raise InputError(f"fold {fold} of {splits_file} has no training cases")
    return train_cases, val_cases


def fold_plans(plans_dir: Path, output: Path, fold: int | str, train_cases: Sequence[str], resume: bool,
               backbone: str | None, overrides: Sequence[str] | dict | None, schedule: ScheduleOptions,
               require_last: bool = True) -> dict:
    """The plans a fold trains with: the dataset's plans (or, resuming, the fold's own), upgraded, with the
    backbone, `--set` overrides and schedule options applied, and the atlas of the fold's training cases."""
    if resume and require_last and not (output / CHECKPOINT_NAMES["last"]).is_file():
        raise InputError(f"--resume: {output / CHECKPOINT_NAMES['last']} does not exist; train without --resume first")
    # resuming continues with the plans the fold was trained with; new overrides apply on top
    base = read_json(output / "plans.json") if resume and (output / "plans.json").is_file() else read_json(plans_dir / "plans.json")
    planned = Plans(base)
    if backbone is not None:
        if backbone not in BACKBONES:
            raise InputError(f"--backbone {backbone}: choose {', '.join(BACKBONES)}")
        planned = planned.with_overrides({"network.backbone": backbone})
    planned = planned.with_overrides(overrides).with_overrides(schedule.overrides())
    previous = Plans(base).atlas_json or {}
    if not (resume and previous.get("fold") == str(fold)):
        planned = planned.with_atlas(fold_atlas(plans_dir, train_cases, planned.num_classes, fold))
    return planned.to_dict()


def training_device(device: str | None, info) -> str:
    """The torch device of this rank: `--device` resolved (`autodetr.devices`), `cuda` made each rank's own
    GPU under torchrun (else cuda:0); CPU ranks share the cores."""
    import torch

    name = resolve_device(device)
    if name == "mps":
        raise InputError("--device mps: training runs on cpu or cuda")
    if name == "cuda":
        name = f"cuda:{info.local_rank}" if info.enabled else "cuda:0"
    if info.enabled and name == "cpu":
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // info.world_size))
    return name


def run_fold(plans: dict, setup) -> Path:
    """Write the fold's plans.json and arguments.json (rank 0) and run the trainer; returns the fold folder."""
    import torch

    from autodetr.training.distributed import cleanup_distributed, init_distributed
    from autodetr.training.trainer import Trainer

    init_distributed(setup.distributed, torch.device(setup.device))
    try:
        if setup.distributed.is_main and not setup.validation_only:  # --val keeps the fold's own files
            output = Path(setup.output_folder)
            output.mkdir(parents=True, exist_ok=True)
            write_json(output / "plans.json", plans)
            write_json(output / "arguments.json", setup.arguments)
        return Trainer(plans, setup).run()
    finally:
        cleanup_distributed()


def fold_atlas(plans_dir: Path, train_cases: Sequence[str], num_classes: int, fold: int | str) -> dict:
    """The organ atlas of a fold's training cases only (no validation case informs its own prior), as
    JSON for the plan's `atlas`: the class-anchored queries start at it and checkpoints carry it."""
    from autodetr.planners.atlas import atlas_from_preprocessed

    atlas = atlas_from_preprocessed(plans_dir, train_cases, num_classes,
                                    source=f"fold {fold}: its {len(train_cases)} training cases, computed at training start")
    return {**atlas.to_json(), "fold": str(fold)}


def _resolve_dataset(dataset: str | int) -> str:
    roots = [preprocessed_root()]
    for variable in ("AUTODETR_raw", "AUTODETR_results"):
        if os.environ.get(variable):
            roots.append(Path(os.environ[variable]))
    return dataset_name_from_id(dataset, roots)


__all__ = ["train", "train_fold", "ScheduleOptions", "RunOptions", "parse_fold", "fold_folder", "trainer_folder_name", "apply_overrides",
           "TRAINING_DEFAULTS", "OBJECTIVES"]
