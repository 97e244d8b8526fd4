"""The `--device` convention of every command: `auto` (cuda when available, else cpu), `cpu`, `cuda` or
`cuda:N` (and `mps` on Apple silicon)."""
from __future__ import annotations

from autodetr.errors import InputError

DEVICE_HELP = "torch device: auto (cuda if available, else cpu; the default), cpu, cuda, cuda:N, mps"


def resolve_device(device: str | None) -> str:
    """`auto` (or None) -> `cuda` when available, else `cpu`; any other value is checked against what this
    machine has, with one line naming the problem."""
    import torch

    name = "auto" if device is None else str(device).strip().lower()
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise InputError(f"--device {name}: no CUDA device is available (torch {torch.__version__}); use --device cpu")
        index = name.partition(":")[2]
        if index and (not index.isdigit() or int(index) >= torch.cuda.device_count()):
            raise InputError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif name == "mps":
        if not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
            raise InputError("--device mps: MPS is not available")
    elif name != "cpu":
        raise InputError(f"--device {name}: not a device (use auto, cpu, cuda, cuda:N or mps)")
    return name
