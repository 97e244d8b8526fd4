"""Train (or take) the packaged model `phantom-abdomen` and write it into `autodetr/pretrained/phantom-abdomen/`.

    python benchmarks/train_pretrained.py                         # trains: about 90 minutes on a 2-core CPU
    python benchmarks/train_pretrained.py --from-demo RUN_FOLDER  # exports a finished run of the same command

The recipe is the demo's, on domain-randomised phantoms, seeded:

    autodetr_demo --appearance randomised --seed 0 --minutes 80 --num-cases 96 --anatomy mixed --out RUN_FOLDER

(96 full-size randomised phantoms of seed 0 with scan ranges anywhere from chest to pelvis, CPU preset, fold
`all`, 80 minutes of training; the number of steps depends on the machine and is recorded). `--from-demo` refuses
a run whose phantoms or budget are not the recipe's (`--minutes`, `--num-cases`, `--anatomy`). The fold's weights
are written in float16 with a record (name, version, recipe, steps, the phantom generator version, the demo's
held-out phantom mAP and, with `--real-ct`, the real-example figure of `benchmarks/bench_real_ct.py`) that every
prediction made with it carries.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from datetime import date
from pathlib import Path

from autodetr.errors import InputError, cli_main
from autodetr.phantom.generator import ANATOMIES
from autodetr.pretrained import PACKAGE_FOLDER
from autodetr.training.export_pretrained import export_pretrained
from autodetr.training.checkpoint import load_checkpoint

NAME = "phantom-abdomen"
VERSION = "1.4"
MINUTES, NUM_CASES, ANATOMY = 80, 96, "mixed"


def parse_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--from-demo", type=Path, default=None, help="a finished run folder of the recipe (skip training)")
    parser.add_argument("--out", type=Path, default=Path("pretrained_run"), help="run folder when training")
    parser.add_argument("--minutes", type=float, default=MINUTES, help="training minutes of the recipe")
    parser.add_argument("--num-cases", type=int, default=NUM_CASES, help="randomised training phantoms of the recipe")
    parser.add_argument("--anatomy", choices=ANATOMIES, default=ANATOMY, help="phantom anatomy of the recipe")
    parser.add_argument("--real-ct", type=Path, default=None, help="bench_real_ct.json of this model, recorded with it")
    parser.add_argument("--destination", type=Path, default=PACKAGE_FOLDER / NAME, help="packaged model folder")
    return parser.parse_args(argv)


def _phantom_record(run: Path) -> dict:
    """What the run's training phantoms were made with (its raw dataset.json; generator version 1 and standard
    anatomy before they were recorded)."""
    dataset = json.loads(next(run.glob("raw/Dataset*_Phantom/dataset.json")).read_text())
    return {"generator_version": 1, "anatomy": "standard", **dataset.get("phantom", {}),
            "num_training": dataset.get("numTraining")}


def check_run_follows_recipe(run: Path, args: argparse.Namespace) -> tuple[Path, dict]:
    """Refuse (InputError, one line) a `--from-demo` run whose phantoms or training budget are not the recipe's,
    so a record never names a recipe its weights were not trained by; returns the run's fold and phantom record."""
    folds = sorted(run.glob("results/Dataset*/autodetrTrainer_dqm__autodetrPlans/fold_all/arguments.json"))
    if not any(run.glob("raw/Dataset*_Phantom/dataset.json")) or not folds:
        raise InputError(f"{run}: not a finished autodetr_demo run folder (no raw/Dataset*_Phantom/dataset.json or "
                         "results/.../fold_all/arguments.json)")
    phantom = _phantom_record(run)
    found = {**phantom, "minutes": json.loads(folds[0].read_text()).get("max_minutes")}
    wanted = {"appearance": "randomised", "seed": 0, "size": "full", "anatomy": args.anatomy,
              "num_training": args.num_cases, "minutes": args.minutes}
    differing = [f"{key} {found.get(key)} (recipe: {value})" for key, value in wanted.items() if found.get(key) != value]
    if differing:
        raise InputError(f"{run}: not trained by the recipe: {', '.join(differing)}")
    return folds[0].parent, phantom


@cli_main
def main(argv: list[str] | None = None) -> int:
    args = parse_arguments(argv)
    recipe = f"autodetr_demo --appearance randomised --seed 0 --minutes {args.minutes:g} --num-cases {args.num_cases}"
    if args.anatomy != "standard":
        recipe += f" --anatomy {args.anatomy}"
    run = args.from_demo
    if run is None:
        subprocess.run(recipe.split() + ["--out", str(args.out)], check=True)
        run = args.out
    fold, phantom = check_run_follows_recipe(run, args)
    checkpoint = load_checkpoint(fold / "checkpoint_final.pt")
    metrics = json.loads((run / "evaluation" / "metrics.json").read_text())
    figures = {"heldout_phantom_mAP": metrics.get("mAP"), "heldout_phantom_mAR": metrics.get("mAR"),
               "heldout_phantom_cases": len(metrics.get("cases", []) or [])}
    if args.real_ct is not None:
        summary = json.loads(args.real_ct.read_text())["summary"]
        figures.update(real_example_mean_iou=summary["mean_iou"], real_example_share_iou_0_5=summary["share_iou_0_5"])
    record = {"name": NAME, "version": VERSION, "date": date.today().isoformat(), "recipe": recipe,
              "steps": int(checkpoint.get("global_step", 0)), "figures": figures,
              "phantom_generator_version": int(phantom["generator_version"])}
    destination = export_pretrained(fold, args.destination, record)
    size = sum(p.stat().st_size for p in destination.iterdir()) / 1e6
    print(f"packaged {NAME} {VERSION} ({record['steps']} steps) into {destination}: {size:.1f} MB\n{json.dumps(figures)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
