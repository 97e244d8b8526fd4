"""Benchmark: autodetr_train on the full-size phantom, side by side with the atlas prior (not a test).

Makes (or reuses) `--num-cases` full-size phantom cases, plans and preprocesses them with the cpu preset
(reused when complete), and on fold 0 reports, in one table from one run:

- `atlas`: the atlas prior of fold 0's training cases (each class's median box relative to the body,
  predicted on every validation case without looking at the image): the baseline;
- one row per trained configuration, each `--minutes` of wall clock in its own process with
  `--threads` threads: `dqm`, `hungarian`, `drmm` (class-anchored queries, the planned default) and
  `paper` (the paper's learned queries over all classes with global DQM, `network.queries=learned`).

Per row: optimizer steps, iterations per second, peak memory of the trainer process and of its largest
augmentation worker, the validation COCO 3D mAP, mAR, AP50, AP75, ECE, the best validation mAP seen,
and mAP as a multiple of the atlas prior's.

Fold 0 has 4 validation cases, and a row's mAP on them moves by about 0.03 between runs of the same code.
`--heldout N` also generates N held-out phantoms (in `<work>/heldout_N`, never trained on) and scores
every row on them the way a user would: `autodetr_predict` with the row's final fold-0 checkpoint (the
atlas row: `autodetr_predict --atlas-prior`, fold 0's atlas), then `autodetr_evaluate`; a second table
prints those figures. 12 held-out cases add about a minute per row.

    python benchmarks/bench_training.py --minutes 20                 # the README's figures
    python benchmarks/bench_training.py --minutes 2 --rows atlas,dqm # a quick check
    python benchmarks/bench_training.py --minutes 20 --rows atlas,dqm --heldout 12
    python benchmarks/bench_training.py --heldout 12 --reuse-trained # new prediction code, same trained folds

`--reuse-trained` trains nothing where a row's fold 0 has finished (checkpoint_final.pt): it reruns that
fold's final validation (`autodetr_train --val`) and the held-out prediction with the current code, and
keeps the row's training figures (steps, it/s, peak memory) from its training run.

Writes `<work>/bench_training.json` (or `--json`). Data and trained folds stay in `--work`
(default benchmarks/output/bench_training).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch

REPOSITORY = Path(__file__).resolve().parents[1]
DATASET_ID = 500
FOLD = 0
#: Trained rows: name -> (objective, plan overrides).
CONFIGURATIONS: dict[str, tuple[str, list[str]]] = {
    "dqm": ("dqm", []),
    "hungarian": ("hungarian", []),
    "drmm": ("drmm", []),
    "paper": ("dqm", ["network.queries=\"learned\""]),
}
ROWS = ("atlas",) + tuple(CONFIGURATIONS)
METRICS = ("mAP", "mAR", "AP50", "AP75", "ECE")

#: Runs autodetr_train in a child process and records its peak memory and that of its largest
#: (joined) augmentation worker: ru_maxrss of RUSAGE_SELF and RUSAGE_CHILDREN, in MB.
CHILD = """
import json, resource, sys
from autodetr.training.entrypoints import main
try:
    main(sys.argv[2:])
finally:
    usage = {"self_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
             "children_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024.0}
    open(sys.argv[1], "w").write(json.dumps(usage))
"""


#: A command-line entry point run as a child process (what `autodetr_predict` / `autodetr_evaluate` run).
CLI = "import sys; from {module} import main; sys.exit(main(sys.argv[1:]))"


def parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=20.0, help="training wall-clock budget per row (default 20)")
    parser.add_argument("--rows", default=",".join(ROWS),
                        help=f"comma-separated rows to run, of {', '.join(ROWS)} (default: all, in that order)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads of each trainer process (default 2)")
    parser.add_argument("--num-cases", type=int, default=20, help="full-size phantom training cases (default 20)")
    parser.add_argument("-np", "--num-processes", type=int, default=2,
                        help="processes for phantom generation and preprocessing (default 2)")
    parser.add_argument("--num-workers", type=int, default=None, help="augmentation workers of the trainer (default: its own)")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="training device (default cpu)")
    parser.add_argument("--preset", choices=["cpu", "gpu"], default="cpu", help="planning preset (default cpu)")
    parser.add_argument("--seed", type=int, default=0, help="training seed (default 0)")
    parser.add_argument("--work", type=Path, default=REPOSITORY / "benchmarks" / "output" / "bench_training",
                        help="scratch folder for data, preprocessed cases and results")
    parser.add_argument("--json", type=Path, default=None, help="where to write the figures (default <work>/bench_training.json)")
    parser.add_argument("--heldout", type=int, default=0, metavar="N",
                        help="also score every row on N held-out full-size phantoms (default 0: validation cases only)")
    parser.add_argument("--reuse-trained", action="store_true",
                        help="do not retrain a row whose fold 0 finished: rerun its final validation (autodetr_train "
                             "--val) and held-out prediction with the current code, keep its training figures")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="plans override passed to every trained row (repeatable)")
    args = parser.parse_args()
    args.row_names = [r.strip() for r in args.rows.split(",") if r.strip()]
    unknown = [r for r in args.row_names if r not in ROWS]
    if unknown:
        parser.error(f"unknown rows {unknown}; choose from {', '.join(ROWS)}")
    if args.heldout < 0:
        parser.error(f"--heldout must be >= 0, got {args.heldout}")
    if args.heldout and not any(name in CONFIGURATIONS for name in args.row_names):
        parser.error("--heldout needs a trained row (the atlas row's held-out prior comes from fold 0's plans)")
    return args


def prepare_data(args: argparse.Namespace) -> tuple[Path, dict]:
    """Phantom data + plans + preprocessed cases (reused when complete); returns (plans folder, figures)."""
    from autodetr.phantom import make_phantom_dataset
    from autodetr.planners.plan_and_preprocess_api import plan_and_preprocess

    figures: dict = {}
    start = time.perf_counter()
    make_phantom_dataset(Path(os.environ["AUTODETR_raw"]), DATASET_ID, num_cases=args.num_cases, num_test_cases=0,
                         size="full", num_processes=args.num_processes, progress=True)
    figures["phantom_generation_s"] = round(time.perf_counter() - start, 1)
    start = time.perf_counter()
    plans_folder = plan_and_preprocess(DATASET_ID, preset=args.preset, num_processes=args.num_processes)
    figures["plan_and_preprocess_s"] = round(time.perf_counter() - start, 1)
    plans = json.loads((plans_folder / "plans.json").read_text())
    figures.update(input_size=plans["input_size"], batch_size=plans["training"]["batch_size"],
                   spacing_mm=[round(s, 2) for s in plans["spacing"]], num_queries=plans["network"]["num_queries"])
    return plans_folder, figures


def atlas_row(plans_folder: Path) -> dict:
    """The atlas prior of fold 0's training cases on its validation cases."""
    from autodetr.training.dataset import case_files
    from autodetr.training.train_api import fold_atlas
    from autodetr.training.trainer import atlas_prior_metrics

    splits = json.loads((plans_folder.parent / "splits_final.json").read_text())
    plans = json.loads((plans_folder / "plans.json").read_text())
    plans["atlas"] = fold_atlas(plans_folder, splits[FOLD]["train"], len(plans["classes"]), FOLD)
    metrics = atlas_prior_metrics(plans, case_files(plans_folder, splits[FOLD]["val"]))
    row = {key: _rounded(metrics.get(key)) for key in METRICS}
    row.update(steps=0, iterations_per_second=None, peak_rss_mb=None, validation_cases=len(splits[FOLD]["val"]))
    return row


def trained_row(name: str, args: argparse.Namespace, plans_folder: Path) -> dict:
    """Train fold 0 with configuration `name` for the budget in a child process and read its figures."""
    from autodetr.training.train_api import fold_folder

    objective, overrides = CONFIGURATIONS[name]
    results = args.work / "results" / name
    env = dict(os.environ, AUTODETR_results=str(results), OMP_NUM_THREADS=str(args.threads))
    folder = results / plans_folder.parent.name / fold_folder(plans_folder.parent.name, FOLD, objective, plans_folder.name).parent.name / f"fold_{FOLD}"
    usage_file = args.work / f"rusage_{name}.json"
    reuse = args.reuse_trained and (folder / "checkpoint_final.pt").is_file() and usage_file.is_file()
    if not reuse:
        shutil.rmtree(folder, ignore_errors=True)
    # a reused row's child only validates; its training run's memory figures stay in usage_file
    child_usage = args.work / f"rusage_{name}_validation.json" if reuse else usage_file
    command = [sys.executable, "-c", CHILD, str(child_usage), str(DATASET_ID), str(FOLD), "--objective", objective,
               "--device", args.device, "--seed", str(args.seed), "--no-progress-bar"]
    command += ["--val"] if reuse else ["--max-minutes", str(args.minutes)]
    if args.num_workers is not None:
        command += ["--num-workers", str(args.num_workers)]
    for override in [] if reuse else overrides + args.overrides:
        command += ["--set", override]
    print(f"\n[{name}] running:", " ".join(command), flush=True)
    start = time.perf_counter()
    subprocess.run(command, env=env, check=True)
    wall = time.perf_counter() - start
    checkpoint = torch.load(folder / "checkpoint_final.pt", map_location="cpu", weights_only=True)
    history = checkpoint["history"]
    steps = int(checkpoint["global_step"])
    train_seconds = float(sum(history["epoch_seconds"]))
    usage = json.loads(usage_file.read_text())
    metrics = json.loads((folder / "validation" / "metrics.json").read_text())
    row = {key: _rounded(metrics.get(key)) for key in METRICS}
    row.update(
        steps=steps, iterations_per_second=round(steps / train_seconds, 3) if train_seconds > 0 else None,
        training_loop_s=round(train_seconds, 1), train_command_s=round(wall, 1),
        peak_rss_mb=round(usage["self_mb"], 1), peak_rss_mb_workers=round(usage["children_mb"], 1),
        best_validation_mAP=_rounded(checkpoint.get("best_map")), validations=len(history["validation"]),
        final_train_loss=_rounded(history["train_loss"][-1]) if history["train_loss"] else None,
        objective=objective, overrides=overrides + args.overrides, fold_folder=str(folder), reused_training=reuse,
        load_average_after=[round(v, 2) for v in os.getloadavg()],
    )
    return row


def heldout_images(args: argparse.Namespace) -> Path:
    """`args.heldout` full-size held-out phantoms (made once, reused); returns the Dataset folder."""
    from autodetr.phantom import make_phantom_dataset

    # one training case is the generator's minimum; it is never used here
    return make_phantom_dataset(args.work / f"heldout_{args.heldout}", DATASET_ID, num_cases=1, num_test_cases=args.heldout,
                                size="full", num_processes=args.num_processes, progress=True)


def heldout_row(name: str, model_folder: Path, dataset: Path, args: argparse.Namespace, atlas_prior: bool = False) -> dict:
    """Fold 0 of `model_folder` (its final checkpoint, or its atlas prior) on the held-out phantoms, through
    autodetr_predict and autodetr_evaluate as a user runs them."""
    output = args.work / "heldout_predictions" / name
    shutil.rmtree(output, ignore_errors=True)
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    predict = [sys.executable, "-c", CLI.format(module="autodetr.inference.entrypoints"), "-i", str(dataset / "imagesTs"), "-o", str(output),
               "-m", str(model_folder), "-f", str(FOLD), "--device", args.device, "-np", "1", "--no-progress"]
    predict += ["--atlas-prior"] if atlas_prior else ["--checkpoint", "final"]
    evaluate = [sys.executable, "-c", CLI.format(module="autodetr.evaluation.entrypoints"), "-p", str(output), "-g", str(dataset / "labelsTs"),
                "--dataset-json", str(dataset / "dataset.json")]
    for command in (predict, evaluate):
        subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL)
    metrics = json.loads((output / "evaluation" / "metrics.json").read_text())
    return {key: _rounded(metrics.get(key)) for key in METRICS} | {"cases": args.heldout}


def _rounded(value) -> float | None:
    try:
        return round(float(value), 4)
    except (TypeError, ValueError):
        return None


def print_heldout_table(heldout: dict[str, dict]) -> None:
    atlas_map = (heldout.get("atlas") or {}).get("mAP")
    columns = ("row", "mAP", "mAR", "AP50", "AP75", "ECE", "x atlas mAP")
    lines = []
    for name, row in heldout.items():
        ratio = row["mAP"] / atlas_map if atlas_map and row.get("mAP") is not None else None
        values = (name, *(row.get(key) for key in METRICS), None if ratio is None else round(ratio, 1))
        lines.append(["-" if v is None else str(v) for v in values])
    widths = [max(len(c), *(len(line[i]) for line in lines)) for i, c in enumerate(columns)]
    cases = next(iter(heldout.values()))["cases"]
    print(f"\nthe same rows on {cases} held-out phantoms (final checkpoint of fold 0; atlas: fold 0's atlas prior)")
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths)))
    print("  ".join("-" * w for w in widths))
    for line in lines:
        print("  ".join(v.ljust(w) for v, w in zip(line, widths)))


def print_table(rows: dict[str, dict], figures: dict) -> None:
    atlas_map = (rows.get("atlas") or {}).get("mAP")
    columns = ("row", "steps", "it/s", "peak MB", "mAP", "mAR", "AP50", "AP75", "ECE", "best mAP", "x atlas mAP")
    lines = []
    for name, row in rows.items():
        ratio = row["mAP"] / atlas_map if atlas_map and row.get("mAP") is not None else None
        values = (name, row.get("steps"), row.get("iterations_per_second"), row.get("peak_rss_mb"), row.get("mAP"),
                  row.get("mAR"), row.get("AP50"), row.get("AP75"), row.get("ECE"), row.get("best_validation_mAP"),
                  None if ratio is None else round(ratio, 1))
        lines.append(["-" if v is None else str(v) for v in values])
    widths = [max(len(c), *(len(line[i]) for line in lines)) for i, c in enumerate(columns)]
    print(f"\nautodetr_train benchmark: fold {FOLD} of {figures['cases']} full-size phantoms, {figures['preset']} preset, "
          f"input {figures['input_size']}, batch {figures['batch_size']}, {figures['minutes_budget']} min per row, "
          f"{figures['threads']} thread(s), one process at a time")
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths)))
    print("  ".join("-" * w for w in widths))
    for line in lines:
        print("  ".join(v.ljust(w) for v, w in zip(line, widths)))


def main() -> None:
    args = parse_arguments()
    raw = args.work / f"raw_full_{args.num_cases}"
    os.environ.update(AUTODETR_raw=str(raw), AUTODETR_preprocessed=str(args.work / f"preprocessed_full_{args.num_cases}"),
                      AUTODETR_results=str(args.work / "results"))
    figures: dict = {"minutes_budget": args.minutes, "cases": args.num_cases, "device": args.device, "preset": args.preset,
                     "threads": args.threads, "cpu_count": os.cpu_count(), "machine": platform.processor() or platform.machine(),
                     "torch": torch.__version__}
    plans_folder, prepared = prepare_data(args)
    figures.update(prepared)
    figures["peak_rss_mb_data_preparation"] = round(max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                                                        resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss) / 1024.0, 1)
    heldout_dataset = heldout_images(args) if args.heldout else None
    rows: dict[str, dict] = {}
    heldout: dict[str, dict] = {}
    for name in args.row_names:
        rows[name] = atlas_row(plans_folder) if name == "atlas" else trained_row(name, args, plans_folder)
        if heldout_dataset is not None and name != "atlas":
            heldout[name] = heldout_row(name, Path(rows[name]["fold_folder"]).parent, heldout_dataset, args)
    if heldout_dataset is not None and "atlas" in rows:
        first_trained = next(name for name in args.row_names if name in CONFIGURATIONS)
        atlas_prior = heldout_row("atlas", Path(rows[first_trained]["fold_folder"]).parent, heldout_dataset, args, atlas_prior=True)
        heldout = {"atlas": atlas_prior, **heldout}
    figures["rows"] = rows
    if heldout:
        figures["heldout"] = heldout
    print_table(rows, figures)
    if heldout:
        print_heldout_table(heldout)
    path = args.json or args.work / "bench_training.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(figures, indent=2) + "\n")
    print(f"\nfigures written to {path}")


if __name__ == "__main__":
    main()
