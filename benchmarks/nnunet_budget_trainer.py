"""`nnUNetTrainerBudget`: nnU-Net v2's default trainer, stopped by a wall-clock budget (the peer of
`benchmarks/bench_vs_nnunet.py`).

nnU-Net finds the trainer named by `nnUNetv2_train -tr NAME` (and `nnUNetv2_predict`, which looks it up again
to build the network) by class name with `nnunetv2.utilities.find_objects.recursive_find_trainer_class_by_name`:
it imports the modules of the installed `nnunetv2/training/nnUNetTrainer` folder first, then walks its
subpackages in name order (`primus` before `variants`), then the folders of `$nnUNet_extTrainer`. Importing
`primus` imports timm and torchvision, which fails wherever torchvision does not match torch (here:
"RuntimeError: operator torchvision::nms does not exist" with torch 2.13.0+cpu and torchvision 0.28.0), so a
trainer in `variants/` or in `$nnUNet_extTrainer` is never reached. `bench_vs_nnunet.py` therefore copies this
file at start to the top level of that folder as `nnUNetTrainerBudget.py` (`nnunet_peer.install_trainer`),
where it is found before any subpackage is imported, and leaves it there (nnUNetv2_predict needs it for the
trained model; rerunning the benchmark rewrites it only when this file changed).

What it changes against `nnUNetTrainer` (everything else, network, loss, augmentation, sampling, optimizer,
initial learning rate, 250 iterations per epoch, is nnU-Net's):

- training stops once `$nnUNetTrainerBudget_minutes` minutes (default 20) have passed since `run_training`
  started; the clock is read after every training iteration, the running epoch is closed as usual (its
  validation step and logging) and `checkpoint_final.pth` is written by nnU-Net's own `on_train_end`;
- the poly learning rate (exponent 0.9, as nnU-Net's `PolyLRScheduler`) is set before every iteration
  from the larger of the epoch fraction and the fraction of the budget used, so it decays over the budget
  instead of over 1000 epochs that a CPU never reaches (autodetr_train --max-minutes does the same);
- 5 validation iterations per epoch instead of 50: with fold `all` nnU-Net validates on the training
  cases, so the pseudo Dice only feeds the log and checkpoint_best;
- no final validation (`perform_actual_validation`), which would predict every training case after the
  budget; the benchmark predicts the held-out cases with `nnUNetv2_predict` instead;
- `$nnUNetTrainerBudget_threads`, when set, is the number of torch threads on CPU (`nnUNetv2_train
  -device cpu` otherwise takes every core);
- `budget_summary.json` in the fold folder: iterations, epochs, seconds, iterations per second, patch
  and batch size, last learning rate and training loss, and why training stopped.
"""
from __future__ import annotations

import json
import os
import time

import numpy as np
import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

BUDGET_ENVIRONMENT = "nnUNetTrainerBudget_minutes"
THREADS_ENVIRONMENT = "nnUNetTrainerBudget_threads"
SUMMARY_FILE = "budget_summary.json"


class nnUNetTrainerBudget(nnUNetTrainer):
    """nnUNetTrainer that trains for a wall-clock budget (see the module docstring for every change)."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.budget_seconds = 60.0 * float(os.environ.get(BUDGET_ENVIRONMENT, "20"))
        self.num_val_iterations_per_epoch = 5
        self.budget_start: float | None = None
        self.iterations_done = 0
        self.stopped_by = "epochs"
        threads = os.environ.get(THREADS_ENVIRONMENT)
        if threads and self.device.type == "cpu":
            torch.set_num_threads(int(threads))
        self.print_to_log_file(f"nnUNetTrainerBudget: wall-clock budget {self.budget_seconds / 60.0:g} min, "
                               f"{torch.get_num_threads()} torch thread(s)")

    def elapsed(self) -> float:
        """Seconds since `run_training` started (0 before)."""
        return 0.0 if self.budget_start is None else time.monotonic() - self.budget_start

    def out_of_time(self) -> bool:
        return self.elapsed() >= self.budget_seconds

    def budget_learning_rate(self) -> float:
        """Poly learning rate at progress max(epoch fraction, budget fraction)."""
        progress = max(self.current_epoch / self.num_epochs, self.elapsed() / self.budget_seconds)
        return self.initial_lr * (1.0 - min(progress, 1.0)) ** 0.9

    def train_step(self, batch: dict) -> dict:
        learning_rate = self.budget_learning_rate()
        for group in self.optimizer.param_groups:
            group["lr"] = learning_rate
        return super().train_step(batch)

    def run_training(self) -> None:
        """nnU-Net's training loop, left when the budget is used up (checked after every iteration; at least
        one iteration is always made)."""
        self.budget_start = time.monotonic()
        self.on_train_start()
        while self.current_epoch < self.num_epochs and (self.iterations_done == 0 or not self.out_of_time()):
            self.on_epoch_start()
            self.on_train_epoch_start()
            train_outputs = []
            for _ in range(self.num_iterations_per_epoch):
                train_outputs.append(self.train_step(next(self.dataloader_train)))
                self.iterations_done += 1
                if self.out_of_time():
                    self.stopped_by = "budget"
                    break
            self.on_train_epoch_end(train_outputs)
            with torch.no_grad():
                self.on_validation_epoch_start()
                val_outputs = [self.validation_step(next(self.dataloader_val))
                               for _ in range(self.num_val_iterations_per_epoch)]
                self.on_validation_epoch_end(val_outputs)
            self.on_epoch_end()
        if self.out_of_time():
            self.stopped_by = "budget"
        training_seconds = self.elapsed()
        self.on_train_end()
        self.write_summary(training_seconds)

    def write_summary(self, training_seconds: float) -> None:
        """`budget_summary.json`: what the budget bought."""
        if self.local_rank != 0:
            return
        try:
            last_loss = float(self.logger.get_value("train_losses", step=-1))
        except (IndexError, KeyError, TypeError, ValueError):
            last_loss = None
        summary = {
            "trainer": type(self).__name__,
            "budget_minutes": self.budget_seconds / 60.0,
            "stopped_by": self.stopped_by,
            "training_seconds": round(training_seconds, 1),
            "iterations": self.iterations_done,
            "epochs": int(self.current_epoch),
            "iterations_per_second": round(self.iterations_done / training_seconds, 4) if training_seconds > 0 else None,
            "batch_size": int(self.batch_size),
            "patch_size": [int(s) for s in self.configuration_manager.patch_size],
            "spacing": [float(s) for s in self.configuration_manager.spacing],
            "torch_threads": torch.get_num_threads(),
            "last_learning_rate": float(self.optimizer.param_groups[0]["lr"]),
            "last_train_loss": None if last_loss is None or not np.isfinite(last_loss) else last_loss,
            "parameters": int(sum(p.numel() for p in self.network.parameters())),
        }
        with open(os.path.join(self.output_folder, SUMMARY_FILE), "w") as handle:
            json.dump(summary, handle, indent=2)

    def perform_actual_validation(self, save_probabilities: bool = False) -> None:
        self.print_to_log_file("nnUNetTrainerBudget: final validation skipped (held-out cases are predicted "
                               "with nnUNetv2_predict)")
