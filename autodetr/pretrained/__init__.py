"""Models that ship inside the package: organ boxes right after `pip install`, no training, no download.

Each packaged model is a fold folder under this package (`plans.json`, `arguments.json`,
`checkpoint_final.pt` with half-precision weights and a `pretrained` record: name, version and the recipe that
trained it), so `autodetr_predict --pretrained NAME` reads it exactly as it reads a trained fold. The one model:

- `phantom-abdomen`: 15 abdominal classes (liver, spleen, kidneys, stomach, gallbladder, pancreas, aorta, IVC,
  urinary bladder, vertebrae L1-L5), trained only on domain-randomised phantoms
  (`autodetr_demo --appearance randomised`), for real CT of any phase and scan range.
"""
from __future__ import annotations

from pathlib import Path

from autodetr.errors import InputError

PACKAGE_FOLDER = Path(__file__).resolve().parent


def available_models() -> list[str]:
    """Names of the packaged models (folders holding plans.json and a checkpoint)."""
    return sorted(p.name for p in PACKAGE_FOLDER.iterdir()
                  if p.is_dir() and (p / "plans.json").is_file() and (p / "checkpoint_final.pt").is_file())


def pretrained_folder(name: str) -> Path:
    """The fold folder of packaged model `name`; an unknown name is refused, listing the available ones."""
    available = available_models()
    if name not in available:
        raise InputError(f"--pretrained {name!r}: no such packaged model (available: {', '.join(available) or 'none'})")
    return PACKAGE_FOLDER / name
