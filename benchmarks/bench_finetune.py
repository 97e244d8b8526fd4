"""Fine-tuning from the packaged model against a fresh start, at equal budget, with few training cases.

    python benchmarks/bench_finetune.py                       # 4 and 8 cases, 5 minutes each row
    python benchmarks/bench_finetune.py --cases 4 8 --minutes 5 10

For every number of training cases: a realistic phantom dataset of that many cases (seed `--seed`; the held-out
test patients are the same for every row), planned with the CPU preset, trained on all its cases (fold `all`) for
`--minutes` from scratch and from `--pretrained` (`autodetr_train DATASET all --pretrained phantom-abdomen`), each
row in its own results folder, one row at a time; then `autodetr_predict` on the test patients and
`autodetr_evaluate`. Prints one table (steps, held-out mAP / mAR / AP75 per row) and writes `bench_finetune.json`
into `benchmarks/output/bench_finetune/`. The packaged model never saw these patients: it trained on randomised
phantoms of seed 0, these are of seed `--seed`.
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


def parse_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--cases", type=int, nargs="+", default=[4, 8], help="training cases per dataset")
    parser.add_argument("--minutes", type=float, nargs="+", default=[5.0], help="training budgets per row")
    parser.add_argument("--test-cases", type=int, default=8, help="held-out test patients")
    parser.add_argument("--seed", type=int, default=31, help="phantom seed of the datasets")
    parser.add_argument("--pretrained", default="phantom-abdomen", help="packaged model or fold folder to start from")
    parser.add_argument("--work", type=Path, default=ROOT / "benchmarks" / "output" / "bench_finetune")
    return parser.parse_args(argv)


def run_row(args: argparse.Namespace, work: Path, dataset_id: int, raw: Path, minutes: float, start: str | None) -> dict:
    """Train one row in its own results folder, predict and score the test patients."""
    from autodetr.evaluation.api import evaluate_folder
    from autodetr.inference.predict_api import predict
    from autodetr.training.checkpoint import load_checkpoint
    from autodetr.training.train_api import train

    name = f"{'pretrained' if start else 'fresh'}_{minutes:g}min"
    results = work / f"results_{dataset_id}_{name}"
    results.mkdir(parents=True, exist_ok=True)
    os.environ["AUTODETR_results"] = str(results)
    began = time.perf_counter()
    fold = train(dataset_id, "all", max_minutes=minutes, epochs=10_000, num_workers=0, progress_bar=False,
                 seed=0, pretrained=start)
    steps = int(load_checkpoint(fold / "checkpoint_final.pt").get("global_step", 0))
    predictions = work / f"predictions_{dataset_id}_{name}"
    predict(raw / "imagesTs", predictions, model=str(fold.parent), folds=["all"], num_processes=1, overwrite=True,
            progress=False)
    metrics = evaluate_folder(predictions, raw / "labelsTs")
    return {"row": name, "steps": steps, "seconds": round(time.perf_counter() - began, 1),
            **{key: metrics.get(key) for key in ("mAP", "mAR", "AP50", "AP75")}}


def main(argv: list[str] | None = None) -> int:
    args = parse_arguments(argv)
    from autodetr.paths import use_roots_under
    from autodetr.phantom.generator import make_phantom_dataset
    from autodetr.planners.plan_and_preprocess_api import plan_and_preprocess

    work = args.work
    roots = use_roots_under(work)
    rows = []
    for cases in args.cases:
        dataset_id = 600 + cases
        raw = make_phantom_dataset(roots["raw"], dataset_id=dataset_id, num_cases=cases, num_test_cases=args.test_cases,
                                   size="full", seed=args.seed, num_processes=2)
        plan_and_preprocess(dataset_id, preset="cpu", num_processes=2)
        for minutes in args.minutes:
            for start in (None, args.pretrained):
                row = {"cases": cases, "minutes": minutes, **run_row(args, work, dataset_id, raw, minutes, start)}
                rows.append(row)
                print(json.dumps(row), flush=True)
    table = [[r["cases"], r["minutes"], r["row"].split("_")[0], r["steps"],
              *(None if r[k] is None else round(float(r[k]), 3) for k in ("mAP", "mAR", "AP75"))] for r in rows]
    print(f"\nheld-out: {args.test_cases} realistic phantom patients of seed {args.seed}; start: {args.pretrained}")
    print(format_table(["cases", "minutes", "start", "steps", "mAP", "mAR", "AP75"], table))
    (work / "bench_finetune.json").write_text(json.dumps({"rows": rows, "arguments": {k: str(v) for k, v in vars(args).items()}},
                                                         indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
