"""Box-only training against label maps, at equal budget, in one run.

    python benchmarks/bench_boxonly.py                         # 16 cases, 10 minutes per row
    python benchmarks/bench_boxonly.py --steps 700             # the same number of steps per row
    python benchmarks/bench_boxonly.py --minutes 2 --cases 4   # a quick check

One realistic phantom dataset (`--cases` full-size training patients of seed `--seed`, `--test-cases` held-out
patients) and its box-only copy (`autodetr_masks_to_boxes --with-images`: the same images, a box file per case),
each planned with the CPU preset. Rows, each trained on all training cases (fold `all`) for `--minutes` in this
process, one at a time, then `autodetr_predict` on the held-out patients and `autodetr_evaluate` against their
label maps:

- `masks`: the label-map dataset (the segmentation loss of Organ-DETR on the masks);
- `boxes`: the box-only dataset as planned (the segmentation head learns from the boxes,
  `autodetr.losses.box_segmentation`);
- `boxes-pairwise`: the same with BoxInst's pairwise affinity term at its paper weight (`loss.seg_pairwise` 1;
  the plan's default is 0);
- `boxes-seg-off`: the box-only dataset with `loss.seg` 0, how box-only datasets trained before (every query
  stays on its atlas anchor).

Prints one table (steps, held-out mAP / mAR / AP50 / AP75 per row) and writes `bench_boxonly.json` into `--work`
(default benchmarks/output/bench_boxonly).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from nnunet_peer import format_table  # noqa: E402

MASK_ID, BOX_ID = 520, 521
#: row name -> (dataset id, plan overrides)
ROWS: dict[str, tuple[int, dict]] = {
    "masks": (MASK_ID, {}),
    "boxes": (BOX_ID, {}),
    "boxes-pairwise": (BOX_ID, {"loss.seg_pairwise": 1.0}),
    "boxes-seg-off": (BOX_ID, {"loss.seg": 0.0}),
}
METRICS = ("mAP", "mAR", "AP50", "AP75")
#: Iterations per epoch of a `--steps` budget.
STEPS_PER_EPOCH = 50


def parse_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--cases", type=int, default=16, help="full-size phantom training patients")
    parser.add_argument("--test-cases", type=int, default=6, help="held-out test patients")
    parser.add_argument("--minutes", type=float, default=10.0, help="training wall-clock budget per row")
    parser.add_argument("--steps", type=int, default=None,
                        help="train every row for this many optimizer steps (whole epochs of 50) instead of --minutes (a budget that does not "
                             "depend on the machine or on what else runs on it)")
    parser.add_argument("--seed", type=int, default=41, help="phantom seed of the dataset")
    parser.add_argument("--rows", default=",".join(ROWS), help=f"comma-separated rows of {', '.join(ROWS)}")
    parser.add_argument("--work", type=Path, default=ROOT / "benchmarks" / "output" / "bench_boxonly",
                        help="data, trained folds and the JSON")
    return parser.parse_args(argv)


def prepare(args: argparse.Namespace, roots: dict[str, Path]) -> Path:
    """The label-map dataset, its box-only copy, both planned and preprocessed; returns the raw label-map folder."""
    from autodetr.phantom.generator import make_phantom_dataset
    from autodetr.planners.plan_and_preprocess_api import plan_and_preprocess
    from autodetr.preprocessing.masks_to_boxes import masks_to_boxes

    raw = make_phantom_dataset(roots["raw"], dataset_id=MASK_ID, num_cases=args.cases, num_test_cases=args.test_cases,
                               size="full", seed=args.seed, num_processes=2)
    boxes = roots["raw"] / f"Dataset{BOX_ID}_PhantomBoxes"
    if not (boxes / "dataset.json").is_file():
        masks_to_boxes(raw, boxes, with_images=True)
    for dataset_id in (MASK_ID, BOX_ID):
        plan_and_preprocess(dataset_id, preset="cpu", num_processes=2)
    return raw


def run_row(name: str, args: argparse.Namespace, raw: Path) -> dict:
    """Train one row in its own results folder, predict and score the held-out patients."""
    from autodetr.evaluation.api import evaluate_folder
    from autodetr.inference.predict_api import predict
    from autodetr.training.checkpoint import load_checkpoint
    from autodetr.training.train_api import train

    dataset_id, overrides = ROWS[name]
    slug = name.replace("-", "_")
    results = args.work / f"results_{slug}"
    results.mkdir(parents=True, exist_ok=True)
    os.environ["AUTODETR_results"] = str(results)
    began = time.perf_counter()
    if args.steps:
        budget = {"epochs": -(-args.steps // STEPS_PER_EPOCH), "iterations_per_epoch": STEPS_PER_EPOCH}
    else:
        budget = {"epochs": 10_000, "max_minutes": args.minutes}
    fold = train(dataset_id, "all", num_workers=0, progress_bar=False, seed=0, overrides=overrides or None, **budget)
    trained = time.perf_counter() - began
    steps = int(load_checkpoint(fold / "checkpoint_final.pt").get("global_step", 0))
    predictions = args.work / f"predictions_{slug}"
    predict(raw / "imagesTs", predictions, model=str(fold.parent), folds=["all"], num_processes=1, overwrite=True,
            progress=False)
    metrics = evaluate_folder(predictions, raw / "labelsTs")
    return {"row": name, "steps": steps, "train_seconds": round(trained, 1),
            **{key: metrics.get(key) for key in METRICS}}


def main(argv: list[str] | None = None) -> int:
    args = parse_arguments(argv)
    from autodetr.paths import use_roots_under

    names = [name.strip() for name in args.rows.split(",") if name.strip()]
    unknown = [name for name in names if name not in ROWS]
    if unknown:
        raise SystemExit(f"error: unknown rows {unknown}; choose from {list(ROWS)}")
    roots = use_roots_under(args.work)
    raw = prepare(args, roots)
    rows = []
    print(f"rows: {names}", flush=True)
    for name in names:
        rows.append(run_row(name, args, raw))
        print(json.dumps(rows[-1]), flush=True)
    table = [[r["row"], r["steps"], *(None if r[k] is None else round(float(r[k]), 3) for k in METRICS)] for r in rows]
    budget = f"{args.steps} steps" if args.steps else f"{args.minutes:g} minutes"
    print(f"\nheld-out: {args.test_cases} realistic phantom patients of seed {args.seed}; {args.cases} training patients, "
          f"{budget} per row")
    print(format_table(["row", "steps", *METRICS], table))
    (args.work / "bench_boxonly.json").write_text(json.dumps(
        {"rows": rows, "arguments": {k: str(v) for k, v in vars(args).items()}}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
