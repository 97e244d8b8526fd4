"""The trainer: one fold of one dataset, one objective (`autodetr_train`; API in `train_api.py`).

Loop: per epoch `iterations_per_epoch` optimizer steps on augmented whole-volume batches (background
workers), then (when due) validation on the fold's validation cases, `checkpoint_last.pt`,
`checkpoint_best.pt` (best validation mAP), `training_log.txt` and `progress.png`. At the end (last epoch
or the `--max-minutes` budget): `checkpoint_final.pt`, a final validation that writes one prediction
JSON per validation case and `metrics.json` / `metrics.csv` into `validation/`.

Optimisation: AdamW; learning rate = base lr x factor(progress) with a linear warm-up over
`warmup_iterations` (at most a quarter of all iterations) and a cosine decay to `final_lr_factor`
(or a x0.1 step at 80 % of training with `lr_schedule: step`); backbone parameters take
`backbone_lr_factor` and the sampling offsets / reference point parameters of the deformable decoder
(`sampling_offsets`, `reference_points`, and this model's `initial_reference`) take `sampling_lr_factor`
of it, as in Deformable DETR; gradient norm clipping at `grad_clip_norm`. With `--max-minutes`, the
schedule's progress is the larger of the iteration fraction and the fraction of the time budget used,
so a time-budgeted run still ends its decay when the budget ends. Mixed precision on CUDA only
(bf16 autocast where supported, else fp16 with a GradScaler).

Reproducibility: the batch of (epoch, iteration) is a function of (seed, rank, epoch, iteration) (see
`dataset.py`), and torch's RNG (dropout) is reseeded from the same tuple before every step, so a
resumed run (from the end of an epoch or from any iteration) repeats the uninterrupted run's losses
for the same seed, whatever `--num-workers`. The RNG states are stored in the checkpoint as well.
"""
from __future__ import annotations

import math
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from torch import nn

from autodetr.atomic_io import read_json
from autodetr.detector import build_criterion, build_detector
from autodetr.errors import InputError
from autodetr.paths import CHECKPOINT_NAMES
from autodetr.plans import Plans
from autodetr.training.augmentation import training_transforms
from autodetr.training.checkpoint import capture_rng_state, load_checkpoint, restore_rng_state, save_checkpoint
from autodetr.training.dataset import (
    CaseCache,
    CaseFiles,
    DetectionDataLoader,
    batch_seed,
    case_left_right_axes,
    load_case,
)
from autodetr.training.distributed import DistributedInfo, any_rank, average_scalar, barrier

#: Auto validation interval: validate every k epochs so that validation takes at most this fraction
#: of the training time (measured after the first validation).
VALIDATION_TIME_FRACTION = 0.1
SAMPLING_PARAMETER_NAMES = ("sampling_offsets", "reference_points", "initial_reference")


@dataclass
class TrainingSetup:
    """Everything the trainer needs besides the plans (built by `train_api.train`)."""

    output_folder: Path
    preprocessed_folder: Path
    train_cases: list[str]
    val_cases: list[str]
    objective: str = "dqm"
    fold_label: str = "0"
    device: str = "cpu"
    num_workers: int = 0
    seed: int = 0
    resume: bool = False
    val_every: int | None = None  # None: automatic
    max_minutes: float | None = None
    progress_bar: bool = True
    validation_only: bool = False  # rerun the final validation of checkpoint_final.pt, train nothing
    distributed: DistributedInfo = field(default_factory=DistributedInfo)
    arguments: dict = field(default_factory=dict)
    pretrained: str | None = None  # start from these weights (`pretrained_start.source_folder`), not on resume


class WarmupDecaySchedule:
    """Per-iteration learning rate factor: linear warm-up, then cosine (or step) decay (module docstring)."""

    def __init__(self, optimizer: torch.optim.Optimizer, total_iterations: int, warmup_iterations: int,
                 final_factor: float = 0.01, kind: str = "cosine") -> None:
        if kind not in ("cosine", "step"):
            raise InputError(f"training.lr_schedule '{kind}': choose cosine or step")
        self.optimizer = optimizer
        self.total = max(1, int(total_iterations))
        self.warmup = max(0, min(int(warmup_iterations), self.total // 4))
        self.final_factor = float(final_factor)
        self.kind = kind
        self.base_lrs = [float(group["lr"]) for group in optimizer.param_groups]
        self.factor = 0.0
        self.set_progress(0)

    def compute_factor(self, step: int, time_fraction: float = 0.0) -> float:
        if step < self.warmup:
            return (step + 1) / (self.warmup + 1)
        progress = (step - self.warmup) / max(1, self.total - self.warmup)
        progress = min(1.0, max(progress, time_fraction))
        if self.kind == "step":
            return 1.0 if progress < 0.8 else 0.1
        return self.final_factor + (1.0 - self.final_factor) * 0.5 * (1.0 + math.cos(math.pi * progress))

    def set_progress(self, step: int, time_fraction: float = 0.0) -> None:
        self.factor = self.compute_factor(step, time_fraction)
        for group, base in zip(self.optimizer.param_groups, self.base_lrs):
            group["lr"] = base * self.factor

    def state_dict(self) -> dict:
        return {"total": self.total, "warmup": self.warmup, "final_factor": self.final_factor, "kind": self.kind,
                "base_lrs": list(self.base_lrs), "factor": self.factor}

    def load_state_dict(self, state: dict) -> None:
        # the base learning rates and the length come from the current run (they may have been changed
        # on purpose when resuming); only the last factor is restored
        self.factor = float(state.get("factor", self.factor))
        for group, base in zip(self.optimizer.param_groups, self.base_lrs):
            group["lr"] = base * self.factor


def parameter_groups(model: nn.Module, training: dict) -> list[dict]:
    """AdamW groups: backbone (lr x backbone_lr_factor), sampling offsets / reference points (lr x
    sampling_lr_factor), the rest (lr)."""
    lr = float(training["learning_rate"])
    groups: dict[str, list] = {"backbone": [], "sampling": [], "other": []}
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        if any(key in name for key in SAMPLING_PARAMETER_NAMES):
            groups["sampling"].append(parameter)
        elif name.startswith("backbone."):
            groups["backbone"].append(parameter)
        else:
            groups["other"].append(parameter)
    factors = {"backbone": float(training["backbone_lr_factor"]), "sampling": float(training["sampling_lr_factor"]), "other": 1.0}
    return [{"params": params, "lr": lr * factors[name], "name": name} for name, params in groups.items() if params]


class TrainingLog:
    """`training_log.txt` (appended, time-stamped lines); also printed on stdout."""

    def __init__(self, path: Path, enabled: bool = True, echo: bool = True) -> None:
        self.path = path
        self.enabled = enabled
        self.echo = echo

    def __call__(self, message: str) -> None:
        if not self.enabled:
            return
        line = f"{datetime.now().strftime('%Y-%m-%d %H:%M:%S')} {message}"
        with open(self.path, "a") as handle:
            handle.write(line + "\n")
        if self.echo:
            print(line, flush=True)


def _format_components(components: dict[str, float], keys: Sequence[str] | None = None) -> str:
    shown = [k for k in (keys or sorted(components)) if k in components and not k.startswith("num_")]
    return " ".join(f"{k} {components[k]:.4f}" for k in shown)


def empty_history() -> dict[str, Any]:
    return {"epoch": [], "train_loss": [], "train_components": {}, "lr": [], "iterations_per_second": [],
            "epoch_seconds": [], "validation": [], "iteration_loss": [], "optimizer_steps": 0}


class Trainer:
    """Train one fold; `run()` returns the output folder. Rank 0 writes all files."""

    def __init__(self, plans: dict, setup: TrainingSetup) -> None:
        self.plans = plans
        self.setup = setup
        self.view = view = Plans.of(plans)
        self.training = view.training
        self.dist = setup.distributed
        self.device = torch.device(setup.device)
        self.output = Path(setup.output_folder)
        self.is_main = self.dist.is_main
        self.epochs = int(self.training["epochs"])
        self.iterations = int(self.training["iterations_per_epoch"])
        self.batch_size = int(self.training["batch_size"])
        if self.epochs < 1 or self.iterations < 1 or self.batch_size < 1:
            raise InputError("epochs, iterations per epoch and batch size must be at least 1")
        self.input_size = view.input_size
        self.num_classes = view.num_classes
        self.class_names = view.class_names
        self.label_value = view.label_values
        if self.is_main:
            self.output.mkdir(parents=True, exist_ok=True)
        self.log = TrainingLog(self.output / "training_log.txt", enabled=self.is_main)
        self.history = empty_history()
        self.best_map = -math.inf
        self.epoch = 0
        self.iteration = 0  # next iteration inside self.epoch
        self.global_step = 0
        self.elapsed_before = 0.0  # training seconds of earlier invocations (resume)
        self.accumulator = self._empty_accumulator()
        self.val_every = setup.val_every
        self.final_done = False  # final validation and checkpoint_final.pt written for the current position
        self._predictors: dict[bool, Any] = {}  # inference predictors of the live network, by tta
        self.start_time = time.monotonic()

    # ------------------------------------------------------------------------------------------ setup
    def _empty_accumulator(self) -> dict:
        return {"count": 0, "loss_sum": 0.0, "components": {}, "seconds": 0.0}

    def _build(self) -> None:
        torch.manual_seed(self.setup.seed)
        self.network = build_detector(self.plans, self.setup.objective).to(self.device)
        self.criterion = build_criterion(self.plans, self.setup.objective).to(self.device)
        self.model: nn.Module = self.network
        if self.dist.enabled:
            from torch.nn.parallel import DistributedDataParallel

            # every parameter receives a gradient under each objective (the D-RMM detector has no DETR head)
            self.model = DistributedDataParallel(
                self.network, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=bool(self.training["find_unused_parameters"]),
            )
        self.optimizer = torch.optim.AdamW(
            parameter_groups(self.network, self.training), lr=float(self.training["learning_rate"]),
            weight_decay=float(self.training["weight_decay"]),
        )
        self.schedule = WarmupDecaySchedule(
            self.optimizer, self.epochs * self.iterations, int(self.training["warmup_iterations"]),
            float(self.training["final_lr_factor"]), str(self.training["lr_schedule"]),
        )
        use_amp = self.device.type == "cuda" and bool(self.training["amp"])
        self.amp_dtype = None
        if use_amp:
            self.amp_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)
        all_cases = sorted(set(self.setup.train_cases) | set(self.setup.val_cases))
        from autodetr.training.dataset import case_files

        files = case_files(self.setup.preprocessed_folder, all_cases)
        by_id = {f.case_id: f for f in files}
        transpose = self.view.transpose_forward
        self.lr_axes = case_left_right_axes(files, transpose) if transpose is not None else {}
        train_files = [by_id[c] for c in self.setup.train_cases]
        if self.dist.enabled and len(train_files) >= self.dist.world_size:
            train_files = train_files[self.dist.rank::self.dist.world_size]
        self.train_files = train_files
        self.val_files = [by_id[c] for c in self.setup.val_cases]
        self.transforms = training_transforms(self.plans, augment=True)
        self.case_cache = CaseCache()  # decompressed training cases, kept across epochs without workers

    def _autocast(self):
        if self.amp_dtype is None:
            return nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    def _load_network(self, name: str) -> dict:
        """The fold's checkpoint `name` read and its weights loaded into the network; one InputError line
        when it was trained with another objective or does not fit the network of the plans."""
        path = self.output / name
        content = load_checkpoint(path)
        if content.get("objective") not in (None, self.setup.objective):
            raise InputError(f"{path}: trained with objective {content.get('objective')}, not {self.setup.objective}")
        try:
            self.network.load_state_dict(content["model"])
        except RuntimeError as error:
            raise InputError(f"{path}: the checkpoint does not fit the network of the current plans ({error})") from error
        return content

    def _start_from_pretrained(self) -> None:
        """Weights of the pretrained source, classes matched by name (`pretrained_start`)."""
        from autodetr.detector import find_checkpoint
        from autodetr.training.pretrained_start import source_folder, transfer_weights

        folder, checkpoint = source_folder(str(self.setup.pretrained))
        path = checkpoint or find_checkpoint(folder)
        content = load_checkpoint(path)
        source_plans = read_json(folder / "plans.json")
        counts = transfer_weights(self.network, content["model"] if "model" in content else content, self.plans,
                                  source_plans)
        self.log(f"started from {path}: {counts['copied']} tensors copied, {counts['class_mapped']} mapped by "
                      f"class name, {counts['kept']} kept")

    def _resume(self) -> None:
        name = CHECKPOINT_NAMES["last"]
        content = self._load_network(name)
        self.optimizer.load_state_dict(content["optimizer"])
        self.schedule.load_state_dict(content.get("scheduler", {}))
        if content.get("scaler"):
            self.scaler.load_state_dict(content["scaler"])
        self.epoch = int(content["epoch"])
        self.iteration = int(content["iteration"])
        self.global_step = int(content["global_step"])
        self.best_map = float(content.get("best_map", -math.inf))
        self.history = content.get("history") or empty_history()
        self.accumulator = content.get("accumulator") or self._empty_accumulator()
        self.elapsed_before = float(content.get("elapsed_seconds", 0.0))
        self.final_done = bool(content.get("final_done", False))
        if content.get("val_every_auto") and self.setup.val_every is None:
            self.val_every = int(content["val_every_auto"])
        if "rng" in content and self.dist.rank == 0:
            restore_rng_state(content["rng"])
        self.log(f"resumed from {name}: epoch {self.epoch + 1}, {self.iteration}/{self.iterations} iterations of it "
                 f"done, {self.global_step} optimizer steps so far")

    # ------------------------------------------------------------------------------------- checkpoints
    def _checkpoint_content(self, rng_state: dict | None = None) -> dict:
        return {
            "model": self.network.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.schedule.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else {},
            "epoch": self.epoch,
            "iteration": self.iteration,
            "global_step": self.global_step,
            "best_map": self.best_map if math.isfinite(self.best_map) else -1.0,
            "history": self.history,
            "accumulator": self.accumulator,
            "elapsed_seconds": self._elapsed(),
            "final_done": self.final_done,
            "val_every_auto": self.val_every if self.setup.val_every is None else None,
            "rng": rng_state if rng_state is not None else capture_rng_state(),
            "objective": self.setup.objective,
            "seed": self.setup.seed,
            "world_size": self.dist.world_size,
        }

    def _save(self, name: str, rng_state: dict | None = None) -> None:
        if self.is_main:
            save_checkpoint(self.output / name, self._checkpoint_content(rng_state))

    def _elapsed(self) -> float:
        return self.elapsed_before + (time.monotonic() - self.start_time)

    def _time_fraction(self) -> float:
        if not self.setup.max_minutes:
            return 0.0
        return self._elapsed() / (60.0 * float(self.setup.max_minutes))

    def _out_of_time(self) -> bool:
        return bool(self.setup.max_minutes) and self._elapsed() >= 60.0 * float(self.setup.max_minutes)

    # ---------------------------------------------------------------------------------------- training
    def _augmenter(self, epoch: int, start: int):
        from batchgenerators.dataloading.multi_threaded_augmenter import MultiThreadedAugmenter
        from batchgenerators.dataloading.single_threaded_augmenter import SingleThreadedAugmenter

        workers = max(0, int(self.setup.num_workers))
        loader = DetectionDataLoader(
            self.train_files, self.batch_size, self.input_size, self.lr_axes, self.setup.seed, epoch, start,
            self.iterations, rank=self.dist.rank, num_workers=max(1, workers), cache=self.case_cache if workers == 0 else None,
        )
        if workers == 0:
            return SingleThreadedAugmenter(loader, self.transforms)
        import signal

        augmenter = MultiThreadedAugmenter(loader, self.transforms, workers, num_cached_per_queue=2,
                                           seeds=[int(batch_seed(self.setup.seed, self.dist.rank, epoch, 2**31 + w)[0]) for w in range(workers)],
                                           pin_memory=self.device.type == "cuda")
        # The workers inherit a handler that only records Ctrl-C (they ignore it): the main process saves a
        # checkpoint and shuts them down. A Ctrl-C that arrives while they start is raised afterwards.
        received: list[int] = []
        previous = signal.signal(signal.SIGINT, lambda number, frame: received.append(number)) if _is_main_thread() else None
        try:
            augmenter._start()
        finally:
            if previous is not None:
                signal.signal(signal.SIGINT, previous)
        if received:
            _shutdown(augmenter)
            raise KeyboardInterrupt
        return augmenter

    def _to_device(self, batch: dict) -> tuple[torch.Tensor, list[dict], torch.Tensor, torch.Tensor | None]:
        images = torch.from_numpy(np.ascontiguousarray(batch["data"], dtype=np.float32)).to(self.device, non_blocking=True)
        valid = batch.get("valid_boxes")
        valid_boxes = None if valid is None else torch.from_numpy(np.asarray(valid, dtype=np.float32)).to(self.device)
        seg = torch.from_numpy(np.asarray(batch["seg"], dtype=np.int64)).to(self.device, non_blocking=True)
        targets = [
            {"labels": torch.from_numpy(np.asarray(labels, dtype=np.int64)).to(self.device),
             "boxes": torch.from_numpy(np.asarray(boxes, dtype=np.float32).reshape(-1, 6)).to(self.device)}
            for boxes, labels in zip(batch["target_boxes"], batch["target_labels"])
        ]
        return images, targets, seg, valid_boxes

    def _train_step(self, batch: dict, epoch: int, iteration: int) -> tuple[float, dict[str, float]]:
        torch.manual_seed(int(batch_seed(self.setup.seed, self.dist.rank, epoch, iteration)[0]))
        images, targets, seg, valid_boxes = self._to_device(batch)
        self.model.train()
        with self._autocast():
            outputs = self.model(images, valid_boxes=valid_boxes)
        loss, components = self.criterion(outputs, targets, seg, images)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.optimizer)
        clip = float(self.training["grad_clip_norm"] or 0)
        parameters = [p for p in self.network.parameters() if p.grad is not None]
        if clip > 0:
            norm = torch.nn.utils.clip_grad_norm_(parameters, clip)
        else:
            norm = torch.linalg.vector_norm(torch.stack([p.grad.detach().float().norm() for p in parameters])) if parameters else torch.zeros(())
        if self.scaler.is_enabled() or bool(torch.isfinite(norm)):
            self.scaler.step(self.optimizer)  # gradients are averaged over ranks: all ranks agree on skipping
        else:
            self.log(f"warning: non-finite gradient norm at epoch {epoch} iteration {iteration}; step skipped")
        self.scaler.update()
        components = dict(components)
        components["grad_norm"] = float(norm)
        return float(loss.detach()), components

    def _record_iteration(self, loss: float, components: dict[str, float], seconds: float) -> None:
        self.final_done = False
        acc = self.accumulator
        acc["count"] += 1
        acc["loss_sum"] += loss
        acc["seconds"] += seconds
        for key, value in components.items():
            if isinstance(value, (int, float)) and math.isfinite(value):
                acc["components"][key] = acc["components"].get(key, 0.0) + float(value)
        self.history["iteration_loss"].append(loss)
        self.history["optimizer_steps"] = self.global_step

    def _finish_epoch_record(self, epoch: int, complete: bool) -> None:
        acc = self.accumulator
        count = max(1, acc["count"])
        loss = average_scalar(acc["loss_sum"] / count, self.dist, self.device)
        components = {k: v / count for k, v in acc["components"].items()}
        speed = acc["count"] / acc["seconds"] if acc["seconds"] > 0 else float("nan")
        lr = self.optimizer.param_groups[-1]["lr"]
        history = self.history
        if history["epoch"] and history["epoch"][-1] == epoch + 1:
            self._drop_last_epoch_record()  # recorded before an interruption, recorded again now
        history["epoch"].append(epoch + 1)  # 1-based, as in the log
        history["train_loss"].append(loss)
        history["lr"].append(lr)
        history["iterations_per_second"].append(speed)
        history["epoch_seconds"].append(acc["seconds"])
        for key in set(history["train_components"]) | set(components):
            values = history["train_components"].setdefault(key, [float("nan")] * (len(history["epoch"]) - 1))
            values.append(components.get(key, float("nan")))
        shown = self._shown_components()
        partial = "" if complete else f" (stopped after {acc['count']}/{self.iterations} iterations)"
        self.log(
            f"epoch {epoch + 1}/{self.epochs}{partial}: train_loss {loss:.4f} ({_format_components(components, shown)}) "
            f"lr {lr:.3e} it/s {speed:.2f} ({acc['seconds']:.1f} s, {self.global_step} steps, "
            f"{self.dist.world_size} x batch {self.batch_size})"
        )

    def _shown_components(self) -> list[str]:
        return ["cls", "l1", "giou", "seg"] if self.setup.objective != "drmm" else ["nll", "mcm", "seg"]

    def _validation_due(self, epoch: int, final: bool) -> bool:
        if not self.val_files:
            return False
        if final:
            return True
        k = self.val_every
        if k is None:
            return True  # first validation of an automatic interval: measure it
        return (epoch + 1) % max(1, int(k)) == 0

    def _train_iterations(self, augmenter: Iterator[dict], bar: Any, epoch: int) -> bool:
        """The epoch's remaining optimizer steps; True when a rank ran out of the time budget (stop early)."""
        while self.iteration < self.iterations:
            started = time.monotonic()
            batch = next(augmenter)
            self.schedule.set_progress(self.global_step, self._time_fraction())
            loss, components = self._train_step(batch, epoch, self.iteration)
            self.iteration += 1
            self.global_step += 1
            self._record_iteration(loss, components, time.monotonic() - started)
            if bar is not None:
                bar.set_postfix(loss=f"{loss:.3f}", refresh=False)
                bar.update()
            if any_rank(self._out_of_time(), self.dist, self.device):
                return True
        return False

    def run(self) -> Path:
        self._build()
        if self.setup.validation_only:
            return self._validate_final_checkpoint()
        if self.setup.resume:
            self._resume()
        elif self.is_main:
            for stale in ("training_log.txt",):
                (self.output / stale).unlink(missing_ok=True)
        self.start_time = time.monotonic()
        if self.is_main and not self.setup.resume:
            self._write_header()
            self._log_atlas_prior()
        if self.setup.pretrained is not None and not self.setup.resume:
            self._start_from_pretrained()  # every rank: DDP copied the weights at construction
        augmenter = None
        stop = False
        try:
            while self.epoch < self.epochs and not stop:
                epoch = self.epoch
                epoch_start = time.monotonic()
                if self.iteration < self.iterations:
                    augmenter = self._augmenter(epoch, self.iteration)
                    bar = self._progress_bar(epoch)
                    stop = self._train_iterations(augmenter, bar, epoch)
                    if bar is not None:
                        bar.close()
                    _shutdown(augmenter)
                    augmenter = None
                complete = self.iteration >= self.iterations
                self._finish_epoch_record(epoch, complete)
                train_seconds = time.monotonic() - epoch_start
                if complete:
                    self.epoch, self.iteration = epoch + 1, 0
                    self.accumulator = self._empty_accumulator()
                self._end_of_epoch(epoch, self.epoch >= self.epochs or stop, train_seconds)
            if self.epoch >= self.epochs and not self.final_done:
                # resumed after an interruption during the final validation or checkpoint
                self._end_of_epoch(self.epoch - 1, True, 0.0)
        except KeyboardInterrupt:
            _shutdown(augmenter)
            if self.is_main:
                self._save(CHECKPOINT_NAMES["last"])
                self.log(f"interrupted at epoch {self.epoch + 1}, iteration {self.iteration}: checkpoint_last.pt saved; "
                         "continue with --resume")
            raise
        finally:
            _shutdown(augmenter)
        if self.is_main:
            best = f"best validation mAP {self.best_map:.4f}" if math.isfinite(self.best_map) else "no validation"
            self.log(f"done: {self.global_step} optimizer steps, {best}, {self._elapsed() / 60:.1f} min")
        return self.output

    def _validate_final_checkpoint(self) -> Path:
        """`autodetr_train --val`: the final validation of checkpoint_final.pt again, with the current
        inference code (as nnU-Net's `--val`); validation/ is rewritten, no checkpoint is touched."""
        name = CHECKPOINT_NAMES["final"]
        content = self._load_network(name)
        self.history = content.get("history") or empty_history()
        self.global_step = int(content.get("global_step", 0))
        if self.is_main:
            self.log(f"validation only (--val): {name}, {self.global_step} optimizer steps")
            self._validate(max(int(content["epoch"]) - 1, 0), True, 0.0, save_best=False)
        return self.output

    def _end_of_epoch(self, epoch: int, final: bool, train_seconds: float) -> None:
        """Validation when due, checkpoint_last (+ checkpoint_final at the end), progress.png; all ranks wait."""
        rng_state = capture_rng_state()
        if self.is_main and self._validation_due(epoch, final):
            self._validate(epoch, final, train_seconds)
            restore_rng_state(rng_state)
        if final:
            self.final_done = True
        if self.is_main:
            self._save(CHECKPOINT_NAMES["last"], rng_state)
            if final:
                self._save(CHECKPOINT_NAMES["final"], rng_state)
            self._plot()
        barrier(self.dist)

    def _drop_last_epoch_record(self) -> None:
        history = self.history
        for key in ("epoch", "train_loss", "lr", "iterations_per_second", "epoch_seconds"):
            if history[key]:
                history[key].pop()
        for values in history["train_components"].values():
            if values:
                values.pop()

    def _progress_bar(self, epoch: int):
        if not (self.setup.progress_bar and self.is_main):
            return None
        from tqdm import tqdm

        if self.setup.max_minutes:
            return BudgetProgress(self, epoch)
        return tqdm(total=self.iterations, initial=self.iteration, desc=f"epoch {epoch + 1}/{self.epochs}",
                    unit="it", leave=False, mininterval=1.0, file=sys.stderr, dynamic_ncols=True)

    def _write_header(self) -> None:
        world = self.dist.world_size
        self.log(
            f"autodetr_train {self.view.dataset_name} fold {self.setup.fold_label} objective "
            f"{self.setup.objective}: {len(self.setup.train_cases)} training / {len(self.val_files)} validation cases, "
            f"input {self.input_size}, batch {self.batch_size} x {world} process(es), {self.epochs} epochs x "
            f"{self.iterations} iterations ({self.epochs * self.iterations} optimizer steps), device {self.device}, "
            f"workers {self.setup.num_workers}, seed {self.setup.seed}"
            + (f", time budget {self.setup.max_minutes} min" if self.setup.max_minutes else "")
        )
        parameters = sum(p.numel() for p in self.network.parameters())
        self.log(f"network: {parameters / 1e6:.2f} M parameters; amp {self.amp_dtype}")

    def _plot(self) -> None:
        from autodetr.training.progress_plot import plot_progress

        try:
            plot_progress(self.history, self.output / "progress.png", components=self._shown_components(),
                          title=f"{self.view.dataset_name} fold {self.setup.fold_label} {self.setup.objective}")
        except Exception as error:  # a plot must never stop training
            self.log(f"warning: progress.png not written ({error})")

    # -------------------------------------------------------------------------------------- validation
    @torch.no_grad()
    def predict_case(self, files: CaseFiles, tta: bool = False) -> dict[str, Any]:
        """Detections of one preprocessed case in original-image voxels (and the case's ground truth), by
        the inference predictor on the live network (`EnsemblePredictor.from_network`; with `tta`, its
        test-time copies as `autodetr_predict` makes them by default)."""
        from autodetr.preprocessing.restore import RestoreInfo

        case = load_case(files.npz)
        restore = RestoreInfo.from_json(read_json(files.restore_json)["restore"])
        self.network.eval()
        result = self.predictor(tta).predict_preprocessed(case["image"], restore.geometry)
        original = restore.boxes_in_original(result["boxes"])
        labels = [self.label_value[int(c)] for c in result["labels"]]
        gt = restore.preprocessed_to_original(case["boxes"]) if len(case["boxes"]) else np.zeros((0, 6))
        gt_labels = [self.label_value[int(c)] for c in case["classes"]]
        return {"case": files.case_id, "boxes": original, "scores": np.asarray(result["scores"], dtype=np.float64),
                "labels": np.asarray(labels, dtype=np.int64), "gt_boxes": gt, "gt_labels": np.asarray(gt_labels, dtype=np.int64),
                "restore": restore}

    def predictor(self, tta: bool = False):
        """The inference predictor of the live network, with or without test-time copies (built once each)."""
        predictors = self._predictors
        if tta not in predictors:
            from autodetr.inference.predict_api import EnsemblePredictor

            model = self.network.module if hasattr(self.network, "module") else self.network
            predictors[tta] = EnsemblePredictor.from_network(model, self.plans, self.setup.objective, self.device, tta=tta)
        return predictors[tta]

    def atlas_prior_metrics(self) -> dict:
        """The atlas prior's validation metrics on this fold (`atlas_prior_metrics`)."""
        return atlas_prior_metrics(self.plans, self.val_files)

    def _log_atlas_prior(self) -> None:
        if not (self.is_main and self.val_files and "atlas" in self.plans):
            return
        metrics = self.atlas_prior_metrics()
        entry = {key: _number(metrics.get(key)) for key in ("mAP", "AP50", "AP75", "mAR", "ECE")}
        self.history["atlas_prior"] = entry
        self.log("atlas prior (median box per class from this fold's training cases, image not looked at) on the "
                 "validation cases: " + " ".join(f"{k} {v:.4f}" for k, v in entry.items()))

    def _validate(self, epoch: int, final: bool, train_seconds: float, save_best: bool = True) -> dict:
        from autodetr.evaluation.api import CaseResult, evaluate_cases, write_metrics
        from autodetr.prediction_files import write_prediction

        started = time.monotonic()
        folder = self.output / "validation"
        cases = []
        for files in self.val_files:  # the final validation predicts as autodetr_predict does: with TTA
            result = self.predict_case(files, tta=final)
            cases.append(CaseResult(result["case"], result["gt_boxes"], result["gt_labels"], result["boxes"],
                                    result["scores"], result["labels"]))
            if final:
                geometry = result["restore"].geometry
                write_prediction(
                    folder / f"{result['case']}.json", result["case"], result["boxes"], result["scores"], result["labels"],
                    self.class_names, image_shape=list(geometry.shape_zyx), spacing=geometry.spacing_zyx.tolist(),
                    origin=list(geometry.origin_xyz), direction=list(geometry.direction),
                    extra={"fold": self.setup.fold_label, "objective": self.setup.objective, "epoch": epoch + 1,
                           "checkpoint": CHECKPOINT_NAMES["final"]},
                )
        metrics = evaluate_cases(cases, class_names=self.class_names,
                                 reliability_path=folder / "reliability.png" if final else None)
        seconds = time.monotonic() - started
        if final:
            metrics["epoch"] = epoch + 1
            metrics["checkpoint"] = CHECKPOINT_NAMES["final"]
            metrics["tta"] = True
            write_metrics(metrics, folder)
        entry = {"epoch": epoch + 1, "mAP": _number(metrics.get("mAP")), "AP50": _number(metrics.get("AP50")),
                 "AP75": _number(metrics.get("AP75")), "mAR": _number(metrics.get("mAR")),
                 "ECE": _number(metrics.get("ECE")), "seconds": seconds}
        self.history["validation"].append(entry)
        self.log(f"validation after epoch {epoch + 1}: mAP {entry['mAP']:.4f} AP50 {entry['AP50']:.4f} "
                 f"AP75 {entry['AP75']:.4f} mAR {entry['mAR']:.4f} ECE {entry['ECE']:.4f} "
                 f"({len(cases)} cases, {seconds:.1f} s)" + (" [final, with test-time copies as autodetr_predict, predictions in validation/]" if final else ""))
        if self.val_every is None and self.setup.val_every is None and train_seconds > 0 and not final:
            self.val_every = max(1, math.ceil(seconds / (VALIDATION_TIME_FRACTION * train_seconds)))
            self.log(f"validation every {self.val_every} epoch(s) (validation {seconds:.1f} s, epoch {train_seconds:.1f} s: "
                     f"at most {VALIDATION_TIME_FRACTION:.0%} of the time)")
        value = entry["mAP"]
        if save_best and math.isfinite(value) and value > self.best_map:
            self.best_map = value
            self._save(CHECKPOINT_NAMES["best"])
            self.log(f"new best validation mAP {value:.4f}: checkpoint_best.pt")
        return metrics


class BudgetProgress:
    """Progress bar of a `--max-minutes` run: the time budget used and left (not "epoch 1/10000"), with the
    epoch, the optimizer steps and the loss; `update()` after every step."""

    def __init__(self, trainer: "Trainer", epoch: int) -> None:
        from tqdm import tqdm

        self.trainer, self.epoch = trainer, epoch
        total = int(round(60.0 * float(trainer.setup.max_minutes)))
        self.bar = tqdm(total=total, initial=min(total, int(trainer._elapsed())), unit="s", leave=False, mininterval=1.0,
                        file=sys.stderr, dynamic_ncols=True,
                        bar_format="{desc}{percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} s of the budget, ~{remaining} left{postfix}")
        self._describe()

    def _describe(self) -> None:
        self.bar.set_description(f"epoch {self.epoch + 1}, step {self.trainer.global_step}", refresh=False)

    def set_postfix(self, refresh: bool = False, **values: Any) -> None:
        self.bar.set_postfix(refresh=refresh, **values)

    def update(self) -> None:
        self._describe()
        self.bar.update(max(0, min(self.bar.total, int(self.trainer._elapsed())) - self.bar.n))

    def close(self) -> None:
        self.bar.close()


def atlas_prior_metrics(plans: dict, val_files: Sequence[CaseFiles]) -> dict:
    """Metrics of the atlas prior of the plan's `atlas` (`autodetr.planners.atlas.prior_detections`: every
    class's median box, the image never looked at) on preprocessed cases, in original voxels like the
    trained detector's validation: the baseline a fold must beat."""
    from autodetr.evaluation.api import CaseResult, evaluate_cases
    from autodetr.planners.atlas import OrganAtlas, prior_detections_in_original
    from autodetr.preprocessing.restore import RestoreInfo
    from autodetr.preprocessing.case_arrays import load_case_boxes

    view = Plans.of(plans)
    atlas = OrganAtlas.from_json(view.atlas_json)
    label_value = view.label_values
    cases = []
    for files in val_files:
        restore = RestoreInfo.from_json(read_json(files.restore_json)["restore"])
        boxes, scores, labels = prior_detections_in_original(atlas, restore)
        gt_boxes, gt_classes = load_case_boxes(files.npz)
        gt = restore.preprocessed_to_original(gt_boxes) if len(gt_boxes) else np.zeros((0, 6))
        cases.append(CaseResult(files.case_id, gt, np.asarray([label_value[int(c)] for c in gt_classes], dtype=np.int64),
                                boxes, scores, np.asarray([label_value[int(c)] for c in labels], dtype=np.int64)))
    return evaluate_cases(cases, class_names=view.class_names)


def _number(value: Any) -> float:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return float("nan")
    return value


def _is_main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def _shutdown(augmenter: Any) -> None:
    if augmenter is not None and hasattr(augmenter, "_finish"):
        try:
            augmenter._finish()
        except Exception:
            pass
