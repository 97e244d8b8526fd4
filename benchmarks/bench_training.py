"""Benchmark: autodetr_train on the full-size phantom with the CPU preset (not a test).

Makes (or reuses) `--num-cases` full-size phantom cases, plans and preprocesses them with the cpu preset
(reused when complete), trains fold 0 for `--minutes` of wall clock with one objective, and reports
training iterations per second, peak memory (maxrss of the trainer process, of its largest augmentation
worker, and of the data preparation), and the fold's validation COCO 3D mAP, mAR, AP50, AP75 and ECE:

    python benchmarks/bench_training.py --minutes 20 --objective dqm
    python benchmarks/bench_training.py --minutes 2 --num-cases 10      # a quick check

Prints a table and writes `<work>/bench_training_<objective>.json` (or `--json`). The phantom data, the
preprocessed cases and the trained fold stay in `--work` (default benchmarks/output/bench_training).
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


def peak_rss_mb(who: int) -> float:
    """ru_maxrss in MB (Linux reports KiB)."""
    return resource.getrusage(who).ru_maxrss / 1024.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=20.0, help="training wall-clock budget (default 20)")
    parser.add_argument("--objective", choices=["dqm", "hungarian", "drmm"], default="dqm", help="objective (default dqm)")
    parser.add_argument("--num-cases", type=int, default=20, help="full-size phantom training cases (default 20)")
    parser.add_argument("-np", "--num-processes", type=int, default=2,
                        help="processes for phantom generation and preprocessing (default 2)")
    parser.add_argument("--num-workers", type=int, default=None, help="augmentation workers of the trainer (default: its own)")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="training device (default cpu)")
    parser.add_argument("--seed", type=int, default=0, help="training seed (default 0)")
    parser.add_argument("--work", type=Path, default=REPOSITORY / "benchmarks" / "output" / "bench_training",
                        help="scratch folder for data, preprocessed cases and results")
    parser.add_argument("--json", type=Path, default=None, help="where to write the figures (default <work>/bench_training_<objective>.json)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="plans override passed to autodetr_train (repeatable)")
    args = parser.parse_args()

    raw = args.work / f"raw_full_{args.num_cases}"
    env = dict(os.environ, AUTODETR_raw=str(raw), AUTODETR_preprocessed=str(args.work / f"preprocessed_full_{args.num_cases}"),
               AUTODETR_results=str(args.work / "results"))
    os.environ.update({k: env[k] for k in ("AUTODETR_raw", "AUTODETR_preprocessed", "AUTODETR_results")})
    figures: dict = {"objective": args.objective, "minutes_budget": args.minutes, "cases": args.num_cases,
                     "device": args.device, "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
                     "machine": platform.processor() or platform.machine()}

    from autodetr.phantom import make_phantom_dataset
    from autodetr.planners.plan_and_preprocess_api import plan_and_preprocess

    start = time.perf_counter()
    make_phantom_dataset(raw, DATASET_ID, num_cases=args.num_cases, num_test_cases=0, size="full",
                         num_processes=args.num_processes, progress=True)
    figures["phantom_generation_s"] = round(time.perf_counter() - start, 1)
    start = time.perf_counter()
    plans_folder = plan_and_preprocess(DATASET_ID, preset="cpu", num_processes=args.num_processes)
    figures["plan_and_preprocess_s"] = round(time.perf_counter() - start, 1)
    plans = json.loads((plans_folder / "plans.json").read_text())
    figures["input_size"] = plans["input_size"]
    figures["batch_size"] = plans["training"]["batch_size"]
    figures["spacing_mm"] = [round(s, 2) for s in plans["spacing"]]

    figures["peak_rss_mb_data_preparation"] = round(max(peak_rss_mb(resource.RUSAGE_SELF), peak_rss_mb(resource.RUSAGE_CHILDREN)), 1)

    from autodetr.training.train_api import fold_folder

    folder = fold_folder(plans_folder.parent.name, 0, args.objective, plans_folder.name)
    shutil.rmtree(folder, ignore_errors=True)
    usage_file = args.work / f"rusage_{args.objective}.json"
    command = [sys.executable, "-c", CHILD, str(usage_file), str(DATASET_ID), "0", "--objective", args.objective,
               "--device", args.device, "--max-minutes", str(args.minutes), "--seed", str(args.seed), "--no-progress-bar"]
    if args.num_workers is not None:
        command += ["--num-workers", str(args.num_workers)]
    for override in args.overrides:
        command += ["--set", override]
    print("running:", " ".join(command), flush=True)
    figures["load_average_before_training"] = [round(v, 2) for v in os.getloadavg()]
    start = time.perf_counter()
    subprocess.run(command, env=env, check=True)
    figures["train_command_s"] = round(time.perf_counter() - start, 1)
    figures["load_average_after_training"] = [round(v, 2) for v in os.getloadavg()]

    checkpoint = torch.load(folder / "checkpoint_final.pt", map_location="cpu", weights_only=True)
    history = checkpoint["history"]
    steps = int(checkpoint["global_step"])
    train_seconds = float(sum(history["epoch_seconds"]))
    figures["optimizer_steps"] = steps
    figures["epochs_completed"] = int(checkpoint["epoch"])
    figures["training_loop_s"] = round(train_seconds, 1)
    figures["iterations_per_second"] = round(steps / train_seconds, 3) if train_seconds > 0 else None
    figures["seconds_per_iteration"] = round(train_seconds / steps, 3) if steps else None
    figures["final_train_loss"] = round(float(history["train_loss"][-1]), 4) if history["train_loss"] else None
    figures["validations"] = len(history["validation"])
    figures["validation_s_total"] = round(sum(v.get("seconds", 0.0) for v in history["validation"]), 1)
    usage = json.loads(usage_file.read_text())
    figures["peak_rss_mb_trainer"] = round(usage["self_mb"], 1)
    figures["peak_rss_mb_trainer_workers"] = round(usage["children_mb"], 1)
    metrics = json.loads((folder / "validation" / "metrics.json").read_text())
    for key in ("mAP", "mAR", "AP50", "AP75", "ECE"):
        value = metrics.get(key)
        figures[key] = None if value is None else round(float(value), 4)
    figures["validation_cases"] = len(metrics.get("cases", [])) or len(list((folder / "validation").glob("phantom_*.json")))
    figures["best_validation_mAP"] = round(float(checkpoint.get("best_map", -1.0)), 4)
    figures["fold_folder"] = str(folder)

    rows = [
        ("objective", figures["objective"]), ("input size (voxels)", figures["input_size"]),
        ("batch size", figures["batch_size"]), ("budget (min)", figures["minutes_budget"]),
        ("optimizer steps", steps), ("epochs completed", figures["epochs_completed"]),
        ("iterations / s", figures["iterations_per_second"]), ("s / iteration", figures["seconds_per_iteration"]),
        ("peak RSS trainer process (MB)", figures["peak_rss_mb_trainer"]),
        ("peak RSS largest worker (MB)", figures["peak_rss_mb_trainer_workers"]),
        ("peak RSS data preparation (MB)", figures["peak_rss_mb_data_preparation"]),
        ("validation cases", figures["validation_cases"]), ("mAP (COCO 3D)", figures["mAP"]), ("mAR", figures["mAR"]),
        ("AP50", figures["AP50"]), ("AP75", figures["AP75"]), ("ECE", figures["ECE"]),
        ("best validation mAP", figures["best_validation_mAP"]), ("final train loss", figures["final_train_loss"]),
        ("load average (1/5/15 min) after", figures["load_average_after_training"]),
    ]
    width = max(len(name) for name, _ in rows)
    print("\nautodetr_train benchmark (fold 0, full-size phantom, cpu preset)")
    print("-" * (width + 24))
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
    path = args.json or args.work / f"bench_training_{args.objective}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(figures, indent=2) + "\n")
    print(f"\nfigures written to {path}")


if __name__ == "__main__":
    main()
