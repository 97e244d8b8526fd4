"""Benchmark of `autodetr_predict` on CPU: seconds per case and peak memory, with 1 fold and with 5 folds.

    python benchmarks/bench_predict.py --model $AUTODETR_results/Dataset500_Phantom/autodetrTrainer_dqm__autodetrPlans
    python benchmarks/bench_predict.py                 # no model: trains a throw-away 5-fold CPU-preset model
                                                       # on full-size phantoms first (1 iteration per fold)

Input: the real CT `../shared/data/totalseg_example/ct_full.nii.gz` (or `--image`). Every configuration
runs `autodetr_predict` as a fresh process (`-np 1`, so all the work and memory is in that one process)
on 1 copy of the image and on `--cases` copies, `--repeats` times each (the fastest run counts). Reported per configuration:

- `wall_1_case_s`: the whole command for one case (interpreter start, imports, model loading, reading,
  preprocessing, prediction, writing);
- `s_per_case`: the steady-state time of one more case, (wall_N - wall_1) / (N - 1); `cpu_s_per_case`
  the same in CPU seconds (user + system, all threads), less disturbed by other load on a shared machine;
- `peak_rss_mb`: the process's peak resident memory (its VmHWM) in the N-case run;

and, in this process, the seconds of each stage for one case (model loading, reading, preprocessing, one
forward pass per fold, all folds + fusion).

Timing is what matters here: the model may be barely trained. The machine is shared, so take the
numbers as an order of magnitude and compare runs made together.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_IMAGE = ROOT.parent / "shared" / "data" / "totalseg_example" / "ct_full.nii.gz"
BENCH_DATASET_ID = 597


def build_model(work: Path, num_cases: int = 5, iterations: int = 1) -> Path:
    """A 5-fold model of the CPU preset trained `iterations` steps per fold on full-size phantoms."""
    roots = {kind: work / kind for kind in ("raw", "preprocessed", "results")}
    for kind, folder in roots.items():
        folder.mkdir(parents=True, exist_ok=True)
        os.environ[f"AUTODETR_{kind}"] = str(folder)
    from autodetr.phantom.generator import make_phantom_dataset
    from autodetr.planners.plan_and_preprocess_api import plan_and_preprocess
    from autodetr.training.train_api import train

    start = time.perf_counter()
    raw = make_phantom_dataset(roots["raw"], dataset_id=BENCH_DATASET_ID, num_cases=num_cases, num_test_cases=0,
                               size="full", seed=0, num_processes=2)
    plan_and_preprocess(BENCH_DATASET_ID, preset="cpu", num_processes=2)
    folders = [train(BENCH_DATASET_ID, fold, epochs=1, iterations_per_epoch=iterations, num_workers=0, progress_bar=False)
               for fold in range(5)]
    print(f"built a throw-away 5-fold model in {time.perf_counter() - start:.0f} s: {folders[0].parent} ({raw.name})",
          flush=True)
    return folders[0].parent


CHILD = """
import os, sys
from autodetr.inference.entrypoints import main
try:
    main(sys.argv[1:])
finally:
    with open('/proc/self/status') as status:
        peak = next(line.split()[1] for line in status if line.startswith('VmHWM:'))
    with open(os.environ['BENCH_PEAK_FILE'], 'w') as handle:
        handle.write(peak)
"""


def run_predict(arguments: list[str], work: Path, threads: int | None = None) -> tuple[float, float, float, int]:
    """Run autodetr_predict as its own process: (wall seconds, CPU seconds (user + system), peak RSS in MB,
    exit code). The peak is the process's own VmHWM (a child's ru_maxrss would include the parent's
    memory at fork time); CPU time comes from wait4 and is less disturbed by other load than wall time."""
    import subprocess

    peak_file = work / "peak_kb.txt"
    peak_file.unlink(missing_ok=True)
    environment = {**os.environ, "BENCH_PEAK_FILE": str(peak_file)}
    if threads:
        environment.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    start = time.perf_counter()
    process = subprocess.Popen([sys.executable, "-c", CHILD, *arguments], stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, env=environment)
    output = process.stdout.read()
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - start
    code = os.waitstatus_to_exitcode(status)
    process.returncode = code
    if code != 0:
        print(output, file=sys.stderr)
    peak = float(peak_file.read_text()) / 1024.0 if peak_file.is_file() else float("nan")
    return wall, usage.ru_utime + usage.ru_stime, peak, code


def profile_stages(model: Path, image: Path, folds: list[str], device: str) -> dict:
    """In-process seconds of each stage for one case: model loading, reading, preprocessing, one forward
    pass per fold, fusion + writing."""
    from autodetr.inference.inputs import discover_cases, read_input_case
    from autodetr.inference.predict_api import EnsemblePredictor, select_folds
    from autodetr.preprocessing.preprocess_case import preprocess_image

    stages = {}
    start = time.perf_counter()
    predictor = EnsemblePredictor(select_folds(model, folds), device=device, tta=False)  # the stages of one pass per fold
    stages["load_models_s"] = time.perf_counter() - start
    (case,) = discover_cases(image)
    start = time.perf_counter()
    array, geometry = read_input_case(case)
    stages["read_s"] = time.perf_counter() - start
    start = time.perf_counter()
    prepared = preprocess_image(array, geometry, predictor.plans)
    stages["preprocess_s"] = time.perf_counter() - start
    stages["preprocessed_shape"] = list(prepared.image.shape[1:])
    from autodetr.inference.predict_api import pad_to_input

    padded = pad_to_input(prepared.image, predictor.input_size)
    predictor._forward(predictor.members[0], padded, prepared.image.shape[1:])  # warm-up
    start = time.perf_counter()
    for member in predictor.members:
        predictor._forward(member, padded, prepared.image.shape[1:])
    stages["forward_per_fold_s"] = (time.perf_counter() - start) / len(predictor.members)
    start = time.perf_counter()
    predictor.predict_case(prepared)
    stages["predict_all_folds_s"] = time.perf_counter() - start
    return {k: (round(v, 3) if isinstance(v, float) else v) for k, v in stages.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=None, help="trained model folder (holding fold_0 .. fold_4)")
    parser.add_argument("--image", type=Path, default=DEFAULT_IMAGE, help=f"input image (default {DEFAULT_IMAGE})")
    parser.add_argument("--cases", type=int, default=3, help="copies of the image in the N-case run (default 3)")
    parser.add_argument("--device", default="cpu", help="torch device (default cpu)")
    parser.add_argument("--repeats", type=int, default=3, help="runs per configuration; the fastest counts (default 3)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch / OpenMP threads of autodetr_predict (OMP_NUM_THREADS); default: torch's own choice. "
                        "On a loaded shared machine 1 thread gives the steadiest numbers (idle OpenMP threads spin)")
    parser.add_argument("--tta", action="store_true",
                        help="also time all folds with test-time copies (autodetr_predict's default); the other rows "
                        "run with --disable-tta")
    parser.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temporary one, removed)")
    parser.add_argument("--output", type=Path, default=None, help="write the results as JSON here")
    args = parser.parse_args(argv)
    if not args.image.is_file():
        parser.error(f"{args.image}: image not found")
    work = args.work or Path(tempfile.mkdtemp(prefix="autodetr_bench_predict_"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        model = args.model or build_model(work / "model")
        folds = sorted(p.name[len("fold_"):] for p in model.glob("fold_*") if p.name[len("fold_"):].isdigit())
        inputs = {}
        for count in sorted({1, max(2, args.cases)}):
            folder = work / f"input_{count}"
            folder.mkdir(exist_ok=True)
            for i in range(count):
                link = folder / f"ct_{i:02d}.nii.gz"
                if not link.exists():
                    link.symlink_to(args.image.resolve())
            inputs[count] = folder
        configurations = [("1 fold, no tta", [folds[0]], False), (f"{len(folds)} folds, no tta", folds, False)]
        if args.tta:
            configurations.append((f"{len(folds)} folds + tta (default)", folds, True))
        results = []
        for name, chosen, tta in configurations:
            row = {"configuration": name, "folds": chosen, "tta": tta}
            for count, folder in inputs.items():
                output = work / f"out_{''.join(c if c.isalnum() else '_' for c in name)}_{count}"
                arguments = ["-i", str(folder), "-o", str(output), "-m", str(model), "-f", *chosen, "-np", "1",
                             "--device", args.device, "--no-progress"] + ([] if tta else ["--disable-tta"])
                runs = []
                for _ in range(args.repeats):
                    shutil.rmtree(output, ignore_errors=True)
                    wall, cpu, peak, code = run_predict(arguments, work, args.threads)
                    if code != 0:
                        raise SystemExit(f"autodetr_predict failed ({name}, {count} case(s))")
                    runs.append((wall, cpu, peak))
                row[f"wall_{count}_case_s"] = round(min(r[0] for r in runs), 2)
                row[f"cpu_{count}_case_s"] = round(min(r[1] for r in runs), 2)
                row[f"peak_rss_{count}_case_mb"] = round(max(r[2] for r in runs), 1)
            n = max(inputs)
            row["s_per_case"] = round((row[f"wall_{n}_case_s"] - row["wall_1_case_s"]) / (n - 1), 2)
            row["cpu_s_per_case"] = round((row[f"cpu_{n}_case_s"] - row["cpu_1_case_s"]) / (n - 1), 2)
            row["peak_rss_mb"] = row[f"peak_rss_{n}_case_mb"]
            results.append(row)
            print(json.dumps(row), flush=True)
        import SimpleITK as sitk
        import torch

        if args.threads:
            torch.set_num_threads(args.threads)
        stages = profile_stages(model, args.image, folds, args.device)
        print(json.dumps({"stages (in process, one case, all folds)": stages}), flush=True)

        reader = sitk.ImageFileReader()
        reader.SetFileName(str(args.image))
        reader.ReadImageInformation()
        plans = json.loads((model / f"fold_{folds[0]}" / "plans.json").read_text())
        summary = {
            "image": str(args.image), "image_size_xyz": list(reader.GetSize()), "spacing_xyz": list(reader.GetSpacing()),
            "model": str(model), "input_size": plans["input_size"], "device": args.device,
            "threads": args.threads or torch.get_num_threads(), "cpu_count": os.cpu_count(), "results": results,
            "stages": stages,
        }
        print(f"\n{'configuration':<20} {'wall 1 case (s)':>16} {'s / case':>9} {'CPU s / case':>13} {'peak RSS (MB)':>14}")
        for row in results:
            print(f"{row['configuration']:<20} {row['wall_1_case_s']:>16.2f} {row['s_per_case']:>9.2f} "
                  f"{row['cpu_s_per_case']:>13.2f} {row['peak_rss_mb']:>14.0f}")
        if args.output:
            args.output.write_text(json.dumps(summary, indent=2) + "\n")
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
