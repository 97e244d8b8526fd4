"""Benchmark: autodetr against what users would pick instead, nnU-Net v2 segmentation boxes, on the same
phantom data and the same CPU training budget (not a test).

One run makes (or reuses) a phantom raw dataset (`autodetr_make_phantom`: `--num-cases` training and
`--num-test-cases` held-out cases, `--size full` by default) and then, with each stage in its own process,
timed and with its peak memory measured:

1. autodetr: `autodetr_plan_and_preprocess --preset cpu`, `autodetr_train DATASET all --max-minutes M`,
   `autodetr_predict` on imagesTs (fold `all`).
2. nnU-Net v2 through its own commands, with its roots (nnUNet_raw, nnUNet_preprocessed, nnUNet_results)
   inside `<work>/nnunet`: the raw folder converted to its layout (imagesTr / labelsTr linked, dataset.json
   reduced to its keys), `nnUNetv2_plan_and_preprocess`, `nnUNetv2_train DATASET CONFIG all -tr
   nnUNetTrainerBudget -device cpu`, `nnUNetv2_predict -f all -device cpu` on imagesTs; boxes = the bounding
   box of each label of each predicted mask (`autodetr.boxes.boxes_from_label_map`) written as autodetr
   prediction files (`autodetr.evaluation.api.write_prediction`) with score 1 (`--nnunet-scores softmax`:
   the mean probability of the organ's voxels, from `--save_probabilities`).
3. Both prediction folders evaluated with autodetr_evaluate's API against the same labelsTs: mAP, mAR, AP50,
   AP75 and per class AP / AP50 / AR.

nnU-Net configuration (`--nnunet-configuration`, default `autodetr_spacing`): nnU-Net's 3d_fullres planned at
autodetr's planned spacing (`nnUNetv2_plan_and_preprocess -c 3d_fullres -overwrite_target_spacing <autodetr's
spacing> -overwrite_plans_name nnUNetPlans_autodetrSpacing`), i.e. about 5 mm on the full-size phantom. Why:
nnU-Net's own 3d_fullres resamples the phantom to about 0.8 mm in-plane (patches of ~1/30 of a scan) and its
3d_lowres stops coarsening once a patch covers a quarter of the median scan, both with 128-voxel-class
patches whose steps take tens of seconds on a CPU, so a 20-minute budget buys a few dozen steps; at
autodetr's spacing a patch covers (nearly) the whole body, like autodetr's input, and both tools see the
same resolution, so the comparison is about the method, not the input size. Even so, nnU-Net's network
(16.6 M parameters, patch 80x80x80) measured 23 s per step on 2 CPU threads: 54 steps in 20 minutes, and
no foreground predicted on the test cases (README, "Against nnU-Net v2 boxes"). `3d_fullres` and `3d_lowres`
(nnU-Net's default plans) can be chosen for a GPU or a longer run.

The budget trainer `nnUNetTrainerBudget` (benchmarks/nnunet_budget_trainer.py) is nnU-Net's default trainer
that stops after the wall-clock budget, with the poly learning rate following the budget, 5 instead of 50
validation iterations per epoch, no final validation, and `--threads` torch threads; its docstring lists every
change. nnU-Net finds trainers by class name in its installed `nnunetv2/training/nnUNetTrainer` folder; the
benchmark copies the trainer to that folder's top level as `nnUNetTrainerBudget.py` at start (a trainer in a
subfolder or in $nnUNet_extTrainer is only reached after nnU-Net has imported its `primus` trainers, which
needs a torchvision that matches torch; the trainer's docstring has the details) and leaves it there.

    python benchmarks/bench_vs_nnunet.py --minutes 20                        # the README's figures
    python benchmarks/bench_vs_nnunet.py --minutes 0.5 --num-cases 4 --num-test-cases 1 --size small  # smoke

`--threads` sets the torch threads of every process, except `nnUNetv2_predict -device cpu`, which always
takes every core. Raw phantoms are kept in `--work` and reused; every measured stage starts from empty
folders. Prints one table (one column per tool) and writes `<work>/bench_vs_nnunet.json` (or `--json`); each
stage's output is in `<work>/logs/`.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path
from typing import Callable, Mapping, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent))

from nnunet_peer import (  # noqa: E402
    CONFIGURATIONS,
    SUMMARY_FILE,
    TRAINER_NAME,
    StageError,
    comparison_table,
    convert_raw_dataset,
    install_trainer,
    masks_to_predictions,
    model_folder,
    nnunet_environment,
    nnunet_roots,
    nnunet_spacing,
    run_measured,
)

REPOSITORY = Path(__file__).resolve().parents[1]
DATASET_ID = 500
DATASET_NAME = "Dataset500_Phantom"
TOOLS = ("autodetr", "nnunet")
METRICS = ("mAP", "mAR", "AP50", "AP75", "nnDet_mAP", "ECE", "num_detections", "num_gt")
CLASS_METRICS = ("AP", "AP50", "AP75", "AR", "num_gt", "num_detections")


def add_shared_arguments(parser: argparse.ArgumentParser, work: Path) -> None:
    """The options every peer benchmark shares (this one and `bench_vs_retinanet.py`): budget, phantom data,
    autodetr's options, threads, processes, seed and folders (`work`: the default scratch folder)."""
    parser.add_argument("--minutes", type=float, default=20.0,
                        help="training wall-clock budget of each tool in minutes (autodetr_train --max-minutes; the "
                             "peer's own limit); default 20")
    parser.add_argument("--num-cases", type=int, default=20, help="phantom training cases (default 20)")
    parser.add_argument("--num-test-cases", type=int, default=5,
                        help="held-out phantom cases (imagesTs / labelsTs) that every tool predicts (default 5)")
    parser.add_argument("--size", choices=["full", "small"], default="full",
                        help="phantom size: 'full' (realistic 256-512 matrices, the benchmark) or 'small' (about "
                             "50 x 60 x 60 voxels, for a quick check of the pipeline); default full")
    parser.add_argument("--autodetr-disable-tta", action="store_true",
                        help="autodetr_predict --disable-tta (default: its test-time copies, autodetr_predict's default)")
    parser.add_argument("--objective", choices=["dqm", "hungarian", "drmm"], default="dqm",
                        help="autodetr training objective (default dqm, autodetr_train's default)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                        help="torch threads of each training and prediction process of every tool (default: all "
                             f"{os.cpu_count()} cores); the tools run one after the other")
    parser.add_argument("--num-workers", type=int, default=None,
                        help="augmentation worker processes of the trainers that have them (autodetr_train "
                             "--num-workers, nnUNet_n_proc_DA); default: each tool's own")
    parser.add_argument("-np", "--num-processes", type=int, default=2,
                        help="processes for phantom generation, preprocessing and the prediction readers / writers "
                             "(default 2)")
    parser.add_argument("--seed", type=int, default=0, help="phantom and training seed (default 0)")
    parser.add_argument("--work", type=Path, default=work,
                        help="scratch folder: raw phantoms (kept), every tool's preprocessed data, models, "
                             f"predictions, evaluations and logs/ (default {os.path.relpath(work, REPOSITORY)})")
    parser.add_argument("--json", type=Path, default=None,
                        help=f"where to write the figures (default <work>/{work.name}.json)")


def check_shared_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace, tools: Sequence[str]) -> None:
    """Refuse bad shared options (`parser.error`); sets `args.tool_names` from `--tools` and makes `--work`
    absolute."""
    args.tool_names = [t.strip() for t in args.tools.split(",") if t.strip()]
    unknown = [t for t in args.tool_names if t not in tools]
    if unknown or not args.tool_names:
        parser.error(f"--tools: choose from {', '.join(tools)}; got {args.tools!r}")
    if args.minutes <= 0:
        parser.error("--minutes must be positive")
    if args.num_cases < 2 or args.num_test_cases < 1:
        parser.error("--num-cases must be at least 2 and --num-test-cases at least 1")
    if args.threads < 1 or args.num_processes < 1 or (args.num_workers is not None and args.num_workers < 0):
        parser.error("--threads and -np must be at least 1, --num-workers at least 0")
    args.work = args.work.resolve()


def parse_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_shared_arguments(parser, REPOSITORY / "benchmarks" / "output" / "bench_vs_nnunet")
    parser.add_argument("--tools", default=",".join(TOOLS),
                        help="comma-separated tools to run, of autodetr, nnunet (default both; nnunet alone still "
                             "runs autodetr's planning once when it needs autodetr's spacing)")
    parser.add_argument("--nnunet-configuration", choices=sorted(CONFIGURATIONS), default="autodetr_spacing",
                        help="nnU-Net configuration: autodetr_spacing (3d_fullres planned at autodetr's spacing, the "
                             "default; see above), 3d_fullres or 3d_lowres (nnU-Net's own plans)")
    parser.add_argument("--nnunet-gpu-memory-target", type=float, default=None, metavar="GB",
                        help="nnUNetv2_plan_and_preprocess -gpu_memory_target: nnU-Net sizes patch and batch for this "
                             "much GPU memory; a smaller value gives smaller patches and cheaper CPU steps (default: "
                             "nnU-Net's own, 8 GB)")
    parser.add_argument("--nnunet-scores", choices=["one", "softmax"], default="one",
                        help="score of an nnU-Net box: 'one' (default) or 'softmax' (mean probability of the organ's "
                             "voxels; nnUNetv2_predict --save_probabilities, slower and large on full-size scans)")
    parser.add_argument("--nnunet-disable-tta", action="store_true",
                        help="nnUNetv2_predict --disable_tta (default: nnU-Net's mirroring test-time augmentation, "
                             "its default)")
    args = parser.parse_args(argv)
    check_shared_arguments(parser, args, TOOLS)
    return args


def command(name: str) -> str:
    """A console script of this environment (autodetr_*, nnUNetv2_*)."""
    path = Path(sys.executable).parent / name
    return str(path) if path.exists() else name


def metrics_summary(metrics: dict) -> dict:
    """The evaluation's figures kept in the JSON: overall values and per class AP / AP50 / AP75 / AR."""
    summary = {key: metrics.get(key) for key in METRICS}
    summary["per_class"] = {name: {key: entry.get(key) for key in CLASS_METRICS}
                            for name, entry in metrics["per_class"].items()}
    summary["warnings"] = metrics.get("warnings", [])
    return summary


def evaluate(predictions: Path, dataset_folder: Path, output: Path) -> tuple[dict, dict]:
    """autodetr_evaluate's API on one prediction folder against the held-out labels; (metrics, stage figures)."""
    from autodetr.evaluation.api import evaluate_folder

    start = time.perf_counter()
    metrics = evaluate_folder(predictions, dataset_folder, output_folder=output)
    return metrics_summary(metrics), {"wall_s": round(time.perf_counter() - start, 1)}


def make_data(args: argparse.Namespace, env: dict, logs: Path) -> tuple[Path, dict]:
    raw_root = Path(env["AUTODETR_raw"])
    figures = run_measured([command("autodetr_make_phantom"), "-d", DATASET_ID, "--num-cases", args.num_cases,
                            "--num-test-cases", args.num_test_cases, "--size", args.size, "--seed", args.seed,
                            "-np", args.num_processes, "--no-progress"], env, logs / "make_phantom.log")
    return raw_root / DATASET_NAME, figures


def autodetr_plans(env: dict) -> dict:
    return json.loads((Path(env["AUTODETR_preprocessed"]) / DATASET_NAME / "autodetrPlans" / "plans.json").read_text())


def plan_autodetr(args: argparse.Namespace, env: dict, logs: Path) -> dict:
    shutil.rmtree(env["AUTODETR_preprocessed"], ignore_errors=True)
    return run_measured([command("autodetr_plan_and_preprocess"), "-d", DATASET_ID, "--preset", "cpu",
                         "-np", args.num_processes], env, logs / "autodetr_plan_and_preprocess.log")


def run_autodetr(args: argparse.Namespace, env: dict, dataset_folder: Path, logs: Path, tool: dict) -> None:
    """autodetr's stages; fills `tool` (stages, training, configuration, metrics)."""
    import torch

    from autodetr.training.train_api import trainer_folder_name

    stages = tool["stages"]
    stages["plan_and_preprocess"] = plan_autodetr(args, env, logs)
    plans = autodetr_plans(env)
    tool["configuration"] = (f"{args.objective}, input {'x'.join(str(s) for s in plans['input_size'])} at "
                             f"{'x'.join(f'{s:.2f}' for s in plans['spacing'])} mm, batch {plans['training']['batch_size']}")
    tool["plans"] = {"input_size": plans["input_size"], "spacing_mm": plans["spacing"],
                     "batch_size": plans["training"]["batch_size"], "num_queries": plans["network"].get("num_queries")}
    shutil.rmtree(env["AUTODETR_results"], ignore_errors=True)
    train = [command("autodetr_train"), DATASET_ID, "all", "--objective", args.objective, "--device", "cpu",
             "--max-minutes", args.minutes, "--seed", args.seed, "--no-progress-bar"]
    if args.num_workers is not None:
        train += ["--num-workers", args.num_workers]
    stages["train"] = run_measured(train, env, logs / "autodetr_train.log")
    folder = Path(env["AUTODETR_results"]) / DATASET_NAME / trainer_folder_name(args.objective) / "fold_all"
    checkpoint = torch.load(folder / "checkpoint_final.pt", map_location="cpu", weights_only=True)
    steps = int(checkpoint["global_step"])
    seconds = float(sum(checkpoint["history"]["epoch_seconds"]))
    tool["training"] = {"steps": steps, "training_loop_s": round(seconds, 1),
                        "iterations_per_second": round(steps / seconds, 3) if seconds > 0 else None,
                        "fold_folder": str(folder)}
    predictions = args.work / "autodetr" / "predictions"
    shutil.rmtree(predictions, ignore_errors=True)
    predict = [command("autodetr_predict"), "-i", dataset_folder / "imagesTs", "-o", predictions, "-d", DATASET_ID,
               "-f", "all", "--device", "cpu", "-np", args.num_processes, "--no-progress"]
    if args.autodetr_disable_tta:
        predict.append("--disable-tta")
    stages["predict"] = run_measured(predict, env, logs / "autodetr_predict.log")
    tool["metrics"], stages["evaluate"] = evaluate(predictions, dataset_folder, args.work / "autodetr" / "evaluation")


def run_nnunet(args: argparse.Namespace, env: dict, dataset_folder: Path, logs: Path, tool: dict) -> None:
    """nnU-Net's stages through its commands; fills `tool`."""
    folder = args.work / "nnunet"
    shutil.rmtree(folder, ignore_errors=True)
    roots = nnunet_roots(folder)
    nn_env = nnunet_environment(folder, args.minutes, args.threads, args.num_workers, base=env)
    nnunet_configuration, plans_name = CONFIGURATIONS[args.nnunet_configuration]
    stages = tool["stages"]
    trainer_file, written = install_trainer()
    tool["trainer_file"] = str(trainer_file)
    print(f"  {'installed' if written else 'using'} {trainer_file}", flush=True)

    start = time.perf_counter()
    convert_raw_dataset(dataset_folder, roots["nnUNet_raw"])
    stages["convert_raw"] = {"wall_s": round(time.perf_counter() - start, 1)}
    plan = [command("nnUNetv2_plan_and_preprocess"), "-d", DATASET_ID, "-c", nnunet_configuration,
            "-np", args.num_processes, "-npfp", args.num_processes, "--no_pbar"]
    if args.nnunet_configuration == "autodetr_spacing":
        if not (Path(env["AUTODETR_preprocessed"]) / DATASET_NAME / "autodetrPlans" / "plans.json").is_file():
            tool["autodetr_planning_for_spacing"] = plan_autodetr(args, env, logs)
        spacing = nnunet_spacing(autodetr_plans(env))
        plan += ["-overwrite_target_spacing", *spacing, "-overwrite_plans_name", plans_name]
    if args.nnunet_gpu_memory_target is not None:
        plan += ["-gpu_memory_target", args.nnunet_gpu_memory_target]
    stages["plan_and_preprocess"] = run_measured(plan, nn_env, logs / "nnunet_plan_and_preprocess.log")
    plans = json.loads((roots["nnUNet_preprocessed"] / DATASET_NAME / f"{plans_name}.json").read_text())
    setting = plans["configurations"][nnunet_configuration]
    architecture = setting.get("architecture") or {}
    tool["plans"] = {key: setting.get(key) for key in ("patch_size", "spacing", "batch_size", "median_image_size_in_voxels")}
    tool["plans"].update(transpose_forward=plans.get("transpose_forward"), network=architecture.get("network_class_name"),
                         features_per_stage=(architecture.get("arch_kwargs") or {}).get("features_per_stage"))
    tool["configuration"] = (f"{args.nnunet_configuration}: {nnunet_configuration} patch "
                             f"{'x'.join(str(s) for s in setting['patch_size'])} at "
                             f"{'x'.join(f'{s:.2f}' for s in setting['spacing'])} mm, batch {setting['batch_size']}")

    train = [command("nnUNetv2_train"), DATASET_ID, nnunet_configuration, "all", "-tr", TRAINER_NAME,
             "-p", plans_name, "-device", "cpu"]
    stages["train"] = run_measured(train, nn_env, logs / "nnunet_train.log")
    fold = model_folder(roots, DATASET_NAME, args.nnunet_configuration)
    summary = json.loads((fold / SUMMARY_FILE).read_text())
    tool["training"] = {"steps": summary["iterations"], "training_loop_s": summary["training_seconds"],
                        "iterations_per_second": summary["iterations_per_second"], "fold_folder": str(fold),
                        "budget_summary": summary}

    masks = folder / "predicted_masks"
    predict = [command("nnUNetv2_predict"), "-i", dataset_folder / "imagesTs", "-o", masks, "-d", DATASET_ID,
               "-c", nnunet_configuration, "-f", "all", "-tr", TRAINER_NAME, "-p", plans_name, "-device", "cpu",
               "-chk", "checkpoint_final.pth", "-npp", args.num_processes, "-nps", args.num_processes,
               "--disable_progress_bar"]
    if args.nnunet_scores == "softmax":
        predict.append("--save_probabilities")
    if args.nnunet_disable_tta:
        predict.append("--disable_tta")
    stages["predict"] = run_measured(predict, nn_env, logs / "nnunet_predict.log")
    predictions = folder / "predictions"
    start = time.perf_counter()
    detections = masks_to_predictions(masks, predictions, dataset_folder / "dataset.json",
                                      with_probabilities=args.nnunet_scores == "softmax")
    stages["masks_to_boxes"] = {"wall_s": round(time.perf_counter() - start, 1)}
    tool["detections_per_case"] = detections
    tool["metrics"], stages["evaluate"] = evaluate(predictions, dataset_folder, folder / "evaluation")


def benchmark_environment(args: argparse.Namespace) -> dict[str, str]:
    """Environment of every stage: `--threads` OpenMP threads and autodetr's roots inside `--work` (the raw
    phantoms in a folder named by size, counts and seed, so a rerun reuses them)."""
    return dict(os.environ, OMP_NUM_THREADS=str(args.threads),
                AUTODETR_raw=str(args.work / f"raw_{args.size}_{args.num_cases}_{args.num_test_cases}_seed{args.seed}"),
                AUTODETR_preprocessed=str(args.work / "autodetr" / "preprocessed"),
                AUTODETR_results=str(args.work / "autodetr" / "results"))


def shared_settings(args: argparse.Namespace) -> dict:
    """The JSON's settings of the shared options (`add_shared_arguments`)."""
    return {"minutes_budget": args.minutes, "num_cases": args.num_cases, "num_test_cases": args.num_test_cases,
            "size": args.size, "objective": args.objective, "autodetr_tta": not args.autodetr_disable_tta,
            "threads": args.threads, "num_workers": args.num_workers, "num_processes": args.num_processes,
            "seed": args.seed, "tools": args.tool_names}


def machine_figures(packages: Sequence[str]) -> dict:
    """CPU, Python and the versions of `packages` installed here (read from their metadata, not imported)."""
    machine: dict = {"cpu_count": os.cpu_count(), "processor": platform.processor() or platform.machine(),
                     "python": platform.python_version()}
    try:
        from importlib.metadata import version

        machine.update({name: version(name) for name in packages})
    except Exception as error:  # the versions are informative only
        machine["versions_error"] = str(error)
    return machine


Runner = Callable[[argparse.Namespace, dict, Path, Path, dict], None]


def run_tools(args: argparse.Namespace, env: dict, dataset_folder: Path, runners: Mapping[str, Runner],
              labels: Mapping[str, str], figures: dict) -> None:
    """Run each of `args.tool_names` in turn into `figures["tools"][label]`; a failing tool records its error
    and the others still run."""
    logs = args.work / "logs"
    for name in args.tool_names:
        tool: dict = {"configuration": None, "stages": {}, "training": {}, "metrics": None, "error": None}
        figures["tools"][labels[name]] = tool
        print(f"\n[{labels[name]}] {args.minutes:g} min of training; logs in {logs}", flush=True)
        try:
            runners[name](args, env, dataset_folder, logs, tool)
        except Exception as error:  # one tool failing still gives the other's figures and the exact error
            tool["error"] = str(error) if isinstance(error, StageError) else f"{type(error).__name__}: {error}"
            print(f"[{labels[name]}] failed: {tool['error']}", file=sys.stderr, flush=True)
        for stage, values in tool["stages"].items():
            print(f"  {stage}: {values.get('wall_s')} s", flush=True)


def report(figures: dict, title: str, path: Path) -> int:
    """Print the comparison table under `title`, write `figures` (with the table) to `path`; 1 when a tool failed."""
    table = comparison_table(figures["tools"])
    print(f"\n{title}\n{table}")
    figures["table"] = table
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(figures, indent=2, default=str) + "\n")
    print(f"\nfigures written to {path}")
    return 1 if any(tool["error"] for tool in figures["tools"].values()) else 0


def main(argv: list[str] | None = None) -> int:
    args = parse_arguments(argv)
    env = benchmark_environment(args)
    settings = shared_settings(args)
    settings.update(nnunet_configuration=args.nnunet_configuration, nnunet_scores=args.nnunet_scores,
                    nnunet_gpu_memory_target=args.nnunet_gpu_memory_target, nnunet_tta=not args.nnunet_disable_tta)
    # nnU-Net itself runs only in its own processes: its version is read from its metadata
    figures: dict = {"settings": settings, "machine": machine_figures(("torch", "nnunetv2", "autodetr")), "tools": {}}
    print(f"phantom data ({args.num_cases} + {args.num_test_cases} {args.size} cases) in {env['AUTODETR_raw']}", flush=True)
    dataset_folder, figures["data"] = make_data(args, env, args.work / "logs")
    run_tools(args, env, dataset_folder, {"autodetr": run_autodetr, "nnunet": run_nnunet},
              {"autodetr": "autodetr", "nnunet": "nnU-Net v2"}, figures)
    title = (f"autodetr vs nnU-Net v2 boxes: {args.num_cases} {args.size} phantoms, {args.num_test_cases} held-out, "
             f"{args.minutes:g} min of CPU training each, {args.threads} thread(s), one tool at a time")
    return report(figures, title, args.json or args.work / "bench_vs_nnunet.json")

if __name__ == "__main__":
    sys.exit(main())
