"""Multi-process training with DistributedDataParallel, started by `torchrun --nproc_per_node K`.

torchrun sets RANK, WORLD_SIZE and LOCAL_RANK (and MASTER_ADDR / MASTER_PORT); without them training
runs in one process. Backend: nccl on CUDA, gloo on the CPU. Rank 0 writes every file and validates;
all ranks take the same number of optimizer steps (gradients are averaged, so the effective batch is
K x batch size) and each rank draws its own batches (its rank enters the batch seed, and the training
cases are sharded when there are at least K of them).
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class DistributedInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def distributed_from_environment() -> DistributedInfo:
    """Rank information of torchrun's environment variables (one process without them)."""
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        return DistributedInfo(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", 0)))
    return DistributedInfo()


def init_distributed(info: DistributedInfo, device: torch.device) -> None:
    """Create the process group (nccl on CUDA, gloo otherwise) when running under torchrun."""
    if not info.enabled or dist.is_initialized():
        return
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend=backend, rank=info.rank, world_size=info.world_size)


def cleanup_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier(info: DistributedInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.barrier()


def any_rank(flag: bool, info: DistributedInfo, device: torch.device) -> bool:
    """True on every rank if `flag` is true on any rank (e.g. the time budget ran out on rank 0)."""
    if not info.enabled or not dist.is_initialized():
        return flag
    value = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item() > 0)


def average_scalar(value: float, info: DistributedInfo, device: torch.device) -> float:
    """Mean of a python float over all ranks (for logging)."""
    if not info.enabled or not dist.is_initialized():
        return value
    tensor = torch.tensor([float(value)], device=device, dtype=torch.float64 if device.type == "cpu" else torch.float32)
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return float(tensor.item()) / info.world_size
