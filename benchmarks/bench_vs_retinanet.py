"""Benchmark: autodetr against a conventional 3D detector, MONAI's RetinaNet (the RetinaNet of nnDetection's
Retina U-Net family, as `monai.apps.detection` packages it), on the same phantom data, the same preprocessed
arrays and the same CPU training budget, with the atlas prior as the floor (not a test).

Set-up, once: the peer runs in its own virtual environment, `.venv-retinanet/` in the repository (torch 2.14.1,
torchvision 0.29.1, MONAI 1.6.1 from `benchmarks/peers/requirements-retinanet.txt`, about 5.5 GB), because
torchvision does not import beside the project's CPU build of torch; autodetr never imports torchvision or
MONAI. Then run from the project's environment:

    bash benchmarks/peers/setup_retinanet.sh
    python benchmarks/bench_vs_retinanet.py --minutes 20                     # the README's figures
    python benchmarks/bench_vs_retinanet.py --minutes 0.5 --num-cases 3 --num-test-cases 1 --size small  # smoke

One run makes (or reuses) the phantom raw dataset of `bench_vs_nnunet.py` (`--num-cases` training and
`--num-test-cases` held-out cases, `--size full` by default), then, one tool at a time, each stage timed and
its peak memory measured (the stages in their own processes):

1. autodetr exactly as in `bench_vs_nnunet.py`: `autodetr_plan_and_preprocess --preset cpu`,
   `autodetr_train DATASET all --max-minutes M`, `autodetr_predict` on imagesTs (fold `all`; its predict time
   includes reading and preprocessing the test images).
2. The atlas prior of that fold: `autodetr_predict --atlas-prior` (each class's median box of the training
   cases placed in the test case's body, no voxel inside looked at): what a detector must beat.
3. MONAI RetinaNet (`benchmarks/peers/retinanet_monai.py`, its docstring lists the design and why the backbone
   is a ResNet-18-depth network at a quarter of the tutorial's width): trained on autodetr's preprocessed
   training npz files (same spacing, crop, normalisation and boxes: only the detector differs) for the same
   `--minutes`; the held-out images are read and preprocessed as `autodetr_predict` does
   (`retinanet_peer.preprocess_held_out`, stage `preprocess_held_out`); the peer predicts each whole volume and
   writes its raw boxes on the preprocessed grid; the highest-scored box per class is mapped back to the
   original image as autodetr maps its own (`RestoreInfo.boxes_in_original`) and written as autodetr
   prediction files (`retinanet_peer.raw_to_prediction_files`).
4. Every prediction folder evaluated with autodetr_evaluate's API against the same labelsTs: mAP, mAR, AP50,
   AP75 and per class AP / AP50 / AR.

Prints one table (one column per tool: configuration, held-out metrics, per class AP, training steps and
steps per second, each stage's time and peak memory) and writes `<work>/bench_vs_retinanet.json` (or `--json`);
each stage's output is in `<work>/logs/`. Raw phantoms are kept in `--work` and reused; every measured stage
starts from empty folders.
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_vs_nnunet import (  # noqa: E402
    DATASET_ID,
    DATASET_NAME,
    REPOSITORY,
    add_shared_arguments,
    autodetr_plans,
    benchmark_environment,
    check_shared_arguments,
    command,
    evaluate,
    machine_figures,
    make_data,
    plan_autodetr,
    report,
    run_autodetr,
    run_tools,
    shared_settings,
)
from nnunet_peer import StageError, run_measured  # noqa: E402
from retinanet_peer import (  # noqa: E402
    DEFAULT_PEER_PYTHON,
    PEER_SCRIPT,
    SETUP_SCRIPT,
    preprocess_held_out,
    raw_to_prediction_files,
)

TOOLS = ("autodetr", "atlas_prior", "retinanet")
PEER_PACKAGES = ("torch", "torchvision", "monai", "numpy")


def parse_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_shared_arguments(parser, REPOSITORY / "benchmarks" / "output" / "bench_vs_retinanet")
    parser.add_argument("--tools", default=",".join(TOOLS),
                        help="comma-separated tools to run, in this order, of autodetr, atlas_prior (the prior of "
                             "autodetr's trained fold: needs autodetr trained in this --work), retinanet (plans with "
                             "autodetr first when nothing is preprocessed yet); default all three")
    parser.add_argument("--peer-python", type=Path, default=DEFAULT_PEER_PYTHON,
                        help="Python of the RetinaNet peer's virtual environment (default .venv-retinanet/bin/python, "
                             f"made by `bash {SETUP_SCRIPT.relative_to(REPOSITORY)}`)")
    args = parser.parse_args(argv)
    check_shared_arguments(parser, args, TOOLS)
    return args


def fold_folder(args: argparse.Namespace, env: dict) -> Path:
    """autodetr's trained fold `all` in this run's results."""
    from autodetr.training.train_api import trainer_folder_name

    return Path(env["AUTODETR_results"]) / DATASET_NAME / trainer_folder_name(args.objective) / "fold_all"


def run_atlas_prior(args: argparse.Namespace, env: dict, dataset_folder: Path, logs: Path, tool: dict) -> None:
    """`autodetr_predict --atlas-prior` with autodetr's trained fold; fills `tool`."""
    fold = fold_folder(args, env)
    if not (fold / "plans.json").is_file():
        raise FileNotFoundError(f"{fold}: no trained autodetr fold for the atlas prior; run the autodetr tool first")
    plans = json.loads((fold / "plans.json").read_text())
    cases = (plans.get("atlas") or {}).get("num_cases", "the")
    tool["configuration"] = f"each class's median box of {cases} training cases placed in the body; no voxel looked at"
    predictions = args.work / "atlas_prior" / "predictions"
    shutil.rmtree(predictions, ignore_errors=True)
    predict = [command("autodetr_predict"), "-i", dataset_folder / "imagesTs", "-o", predictions, "-d", DATASET_ID,
               "-m", fold.parent.name, "-f", "all", "--atlas-prior", "-np", args.num_processes, "--no-progress"]
    tool["stages"]["predict"] = run_measured(predict, env, logs / "atlas_prior_predict.log")
    evaluation = args.work / "atlas_prior" / "evaluation"
    tool["metrics"], tool["stages"]["evaluate"] = evaluate(predictions, dataset_folder, evaluation)


def peer_versions(peer_python: Path) -> dict:
    """Versions of the peer environment's packages (its metadata, read by its own Python)."""
    script = ("import json, importlib.metadata as m; "
              f"print(json.dumps({{p: m.version(p) for p in {list(PEER_PACKAGES)!r}}}))")
    done = subprocess.run([str(peer_python), "-c", script], capture_output=True, text=True, timeout=120)
    return json.loads(done.stdout) if done.returncode == 0 else {"error": done.stderr.strip()[-300:]}


def retinanet_configuration(model: Path) -> str:
    """One line of the peer's configuration from its `config.json` and `summary.json`."""
    config = json.loads((model / "config.json").read_text())
    summary = json.loads((model / "summary.json").read_text())
    network = config["network"]
    strides = [network["conv1_stride"] * 2 * 2 ** (k - 1) for k in network["returned_layers"]]
    strides.append(strides[-1] * 2)
    return (f"ResNet {network['block']} {'-'.join(str(n) for n in network['layers'])}, widths "
            f"{network['widths'][0]}-{network['widths'][-1]}, FPN {network['fpn_channels']} at strides "
            f"{'/'.join(str(s) for s in strides)}, {len(config['anchor_shapes'])} k-means anchor shapes, input "
            f"{'x'.join(str(s) for s in config['input_size'])}, batch {config['batch_size']}, "
            f"{summary['parameters'] / 1e6:.2f} M parameters")


def retinanet_inputs(args: argparse.Namespace, env: dict, dataset_folder: Path, logs: Path,
                     tool: dict) -> tuple[Path, dict, Path]:
    """autodetr's preprocessed training folder (planned now if missing) and its plans, and the held-out cases
    preprocessed as autodetr_predict does (stage `preprocess_held_out`)."""
    plans_folder = Path(env["AUTODETR_preprocessed"]) / DATASET_NAME / "autodetrPlans"
    if not (plans_folder / "plans.json").is_file():
        tool["autodetr_planning"] = plan_autodetr(args, env, logs)
    plans = autodetr_plans(env)
    held_out = args.work / "retinanet" / "held_out_preprocessed"
    shutil.rmtree(held_out, ignore_errors=True)
    start = time.perf_counter()
    preprocess_held_out(dataset_folder / "imagesTs", plans, held_out, args.num_processes)
    tool["stages"]["preprocess_held_out"] = {"wall_s": round(time.perf_counter() - start, 1)}
    return plans_folder, plans, held_out


def run_retinanet(args: argparse.Namespace, env: dict, dataset_folder: Path, logs: Path, tool: dict) -> None:
    """MONAI RetinaNet's stages (the peer script with the peer's Python); fills `tool`."""
    peer = Path(args.peer_python)
    if not peer.is_file():
        raise StageError(f"{peer}: no RetinaNet peer environment; make it once with `bash {SETUP_SCRIPT}`")
    tool["versions"] = peer_versions(peer)
    folder = args.work / "retinanet"
    model, raw, predictions = folder / "model", folder / "raw_predictions", folder / "predictions"
    for path in (model, raw, predictions):
        shutil.rmtree(path, ignore_errors=True)
    plans_folder, plans, held_out = retinanet_inputs(args, env, dataset_folder, logs, tool)
    stages = tool["stages"]
    train = [peer, PEER_SCRIPT, "train", "--cases", plans_folder, "--output", model, "--minutes", args.minutes,
             "--threads", args.threads, "--seed", args.seed]
    stages["train"] = run_measured(train, env, logs / "retinanet_train.log")
    summary = json.loads((model / "summary.json").read_text())
    tool["configuration"] = retinanet_configuration(model)
    tool["training"] = {"steps": summary["iterations"], "training_loop_s": summary["training_seconds"],
                        "iterations_per_second": summary["iterations_per_second"], "model_folder": str(model),
                        "summary": {k: v for k, v in summary.items() if k != "loss_history"}}
    predict = [peer, PEER_SCRIPT, "predict", "--model", model, "--cases", held_out, "--output", raw,
               "--threads", args.threads]
    stages["predict"] = run_measured(predict, env, logs / "retinanet_predict.log")
    start = time.perf_counter()
    tool["detections_per_case"] = raw_to_prediction_files(raw, held_out, plans, predictions)
    stages["raw_to_prediction_files"] = {"wall_s": round(time.perf_counter() - start, 1)}
    tool["metrics"], stages["evaluate"] = evaluate(predictions, dataset_folder, folder / "evaluation")


def main(argv: list[str] | None = None) -> int:
    args = parse_arguments(argv)
    env = benchmark_environment(args)
    settings = dict(shared_settings(args), peer_python=str(args.peer_python))
    figures: dict = {"settings": settings, "machine": machine_figures(("torch", "autodetr")), "tools": {}}
    print(f"phantom data ({args.num_cases} + {args.num_test_cases} {args.size} cases) in {env['AUTODETR_raw']}", flush=True)
    dataset_folder, figures["data"] = make_data(args, env, args.work / "logs")
    runners = {"autodetr": run_autodetr, "atlas_prior": run_atlas_prior, "retinanet": run_retinanet}
    labels = {"autodetr": f"autodetr ({args.objective})", "atlas_prior": "atlas prior", "retinanet": "MONAI RetinaNet"}
    run_tools(args, env, dataset_folder, runners, labels, figures)
    title = (f"autodetr vs MONAI RetinaNet: {args.num_cases} {args.size} phantoms, {args.num_test_cases} held-out, "
             f"{args.minutes:g} min of CPU training each, {args.threads} thread(s), one tool at a time")
    return report(figures, title, args.json or args.work / "bench_vs_retinanet.json")


if __name__ == "__main__":
    sys.exit(main())
