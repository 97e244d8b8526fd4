"""Checkpoints: model, optimizer, scheduler, grad scaler, position (epoch, iteration), RNG states and the
training history, loadable with `torch.load(..., weights_only=True)` (only tensors, numbers, strings,
lists, tuples and dicts: numpy's RNG state is stored as a list of ints). Written atomically."""
from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from autodetr.atomic_io import atomic_path
from autodetr.errors import OutputError

CHECKPOINT_VERSION = 1


def capture_rng_state() -> dict[str, Any]:
    """torch (CPU and CUDA), numpy (global) and python `random` states, in weights_only-safe types."""
    name, keys, position, has_gauss, cached = np.random.get_state()
    version, internal, gauss = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"name": str(name), "keys": [int(k) for k in keys], "position": int(position),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "python": {"version": int(version), "internal": [int(v) for v in internal], "gauss": gauss},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"].cpu() if isinstance(state["torch"], torch.Tensor) else torch.as_tensor(state["torch"], dtype=torch.uint8))
    numpy_state = state["numpy"]
    np.random.set_state((numpy_state["name"], np.asarray(numpy_state["keys"], dtype=np.uint32), numpy_state["position"],
                         numpy_state["has_gauss"], numpy_state["cached_gaussian"]))
    python_state = state["python"]
    random.setstate((python_state["version"], tuple(python_state["internal"]), python_state["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        states = state["cuda"]
        if len(states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(states)


def save_checkpoint(path: str | Path, content: dict[str, Any]) -> None:
    """`torch.save` to a temporary name next to `path`, then rename (never a half-written checkpoint)."""
    content = dict(content)
    content.setdefault("version", CHECKPOINT_VERSION)
    with atomic_path(path, suffix=".pt") as temporary:
        try:
            torch.save(content, temporary)
        except RuntimeError as error:  # torch's writer reports a full disk as a RuntimeError, not an OSError
            raise OutputError(f"{path}: cannot write ({str(error).strip()[:160]})") from None


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """`autodetr.model_files.read_checkpoint`: weights_only=True, one line for a file that is no checkpoint."""
    from autodetr.model_files import read_checkpoint

    return read_checkpoint(path)
