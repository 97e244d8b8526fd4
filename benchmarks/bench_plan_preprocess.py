"""Benchmark: autodetr_plan_and_preprocess vs nnUNetv2_plan_and_preprocess on the same raw folder.

Makes (or reuses) full-size phantoms, then times both tools with the same number of processes:
    python benchmarks/bench_plan_preprocess.py --num-cases 20 -np 2 --work /tmp/bench_pp
nnU-Net runs its 3d_fullres configuration only (the one that matches ours), on a copy of the
dataset under its own root folders. Prints the seconds of each and their ratio.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path


def timed(command: list[str], env: dict) -> float:
    start = time.perf_counter()
    subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num-cases", type=int, default=20, help="full-size phantom training cases (default 20)")
    parser.add_argument("-np", "--num-processes", type=int, default=2, help="processes for both tools (default 2)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/autodetr_bench_pp"), help="scratch folder")
    parser.add_argument("--skip-nnunet", action="store_true", help="time autodetr only")
    args = parser.parse_args()

    raw, ours, theirs = args.work / "raw", args.work / "preprocessed", args.work / "nnunet"
    env = dict(os.environ, AUTODETR_raw=str(raw), AUTODETR_preprocessed=str(ours), AUTODETR_results=str(args.work / "results"))
    bin_dir = Path(sys.executable).parent
    start = time.perf_counter()
    subprocess.run([str(bin_dir / "autodetr_make_phantom"), "-d", "500", "--num-cases", str(args.num_cases),
                    "--num-test-cases", "0", "--size", "full", "-np", str(args.num_processes), "--no-progress"], env=env, check=True)
    generation = time.perf_counter() - start
    shutil.rmtree(ours, ignore_errors=True)
    figures = {"cases": args.num_cases, "processes": args.num_processes, "phantom_generation_s": round(generation, 1)}
    figures["autodetr_s"] = round(timed([str(bin_dir / "autodetr_plan_and_preprocess"), "-d", "500", "-np",
                                         str(args.num_processes), "--preset", "cpu"], env), 1)
    if not args.skip_nnunet:
        shutil.rmtree(theirs, ignore_errors=True)
        (theirs / "raw").mkdir(parents=True)
        (theirs / "raw" / "Dataset500_Phantom").symlink_to((raw / "Dataset500_Phantom").resolve())
        nn_env = dict(os.environ, nnUNet_raw=str(theirs / "raw"), nnUNet_preprocessed=str(theirs / "preprocessed"),
                      nnUNet_results=str(theirs / "results"))
        figures["nnunet_3d_fullres_s"] = round(timed([str(bin_dir / "nnUNetv2_plan_and_preprocess"), "-d", "500", "-c",
                                                      "3d_fullres", "-np", str(args.num_processes), "-npfp",
                                                      str(args.num_processes)], nn_env), 1)
        figures["ratio_autodetr_over_nnunet"] = round(figures["autodetr_s"] / figures["nnunet_3d_fullres_s"], 3)
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
