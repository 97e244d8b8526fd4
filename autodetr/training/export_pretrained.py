"""Write a trained fold as a packaged model: half-precision weights, its plans and a record of where it came from."""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from autodetr.atomic_io import write_json
from autodetr.errors import InputError
from autodetr.detector import find_checkpoint
from autodetr.training.checkpoint import load_checkpoint, save_checkpoint


def export_pretrained(fold_folder: str | Path, destination: str | Path, record: dict[str, Any]) -> Path:
    """Copy the fold's plans and arguments into `destination` and its weights (best, else final, else last
    checkpoint) as `checkpoint_final.pt` in float16, without optimizer or RNG state. `record` (name, version,
    recipe, figures) goes into the checkpoint and into `arguments.json` under "pretrained", so every
    prediction made with it names it."""
    fold_folder, destination = Path(fold_folder), Path(destination)
    for name in ("plans.json", "arguments.json"):
        if not (fold_folder / name).is_file():
            raise InputError(f"{fold_folder / name}: missing; {fold_folder} is not a trained fold folder")
    content = load_checkpoint(find_checkpoint(fold_folder, None))
    state = content["model"] if isinstance(content, dict) and "model" in content else content
    half = {key: value.half() if value.is_floating_point() else value for key, value in state.items()}
    destination.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(fold_folder / "plans.json", destination / "plans.json")
    arguments = json.loads((fold_folder / "arguments.json").read_text())
    keep = {key: arguments[key] for key in ("objective", "seed", "max_minutes") if key in arguments}
    write_json(destination / "arguments.json", {**keep, "pretrained": record})
    save_checkpoint(destination / "checkpoint_final.pt", {"model": half, "pretrained": record})
    return destination
