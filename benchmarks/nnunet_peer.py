"""Reusable pieces of `bench_vs_nnunet.py`: nnU-Net v2's folders and environment, the raw-folder conversion,
nnU-Net masks -> autodetr prediction files, measured subprocesses and the comparison table.

Nothing here imports nnunetv2 (nnU-Net runs only through its own commands in subprocesses), so the fast test
`tests/test_bench_vs_nnunet.py` can import this module.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

#: The budgeted trainer (benchmarks/nnunet_budget_trainer.py; its docstring says why it is installed into the
#: top level of nnunetv2/training/nnUNetTrainer under this module name).
TRAINER_NAME = "nnUNetTrainerBudget"
TRAINER_SOURCE = Path(__file__).resolve().parent / "nnunet_budget_trainer.py"
INSTALLED_TRAINER_FILE = f"{TRAINER_NAME}.py"
BUDGET_ENVIRONMENT = "nnUNetTrainerBudget_minutes"
THREADS_ENVIRONMENT = "nnUNetTrainerBudget_threads"
SUMMARY_FILE = "budget_summary.json"
#: nnU-Net configurations the benchmark can train: name -> (nnU-Net configuration, plans identifier).
#: `autodetr_spacing` is nnU-Net's 3d_fullres planned at autodetr's planned spacing
#: (`nnUNetv2_plan_and_preprocess -overwrite_target_spacing`) under its own plans identifier.
CONFIGURATIONS: dict[str, tuple[str, str]] = {
    "autodetr_spacing": ("3d_fullres", "nnUNetPlans_autodetrSpacing"),
    "3d_fullres": ("3d_fullres", "nnUNetPlans"),
    "3d_lowres": ("3d_lowres", "nnUNetPlans"),
}
#: dataset.json keys nnU-Net v2 reads.
NNUNET_DATASET_KEYS = ("channel_names", "labels", "numTraining", "file_ending", "name", "overwrite_image_reader_writer")
PREDICTION_SOURCE = "nnU-Net v2 segmentation: one box per predicted label (its bounding box)"


# ----------------------------------------------------------------------------------------------------
# nnU-Net folders, data and environment
# ----------------------------------------------------------------------------------------------------

def nnunet_roots(folder: Path) -> dict[str, Path]:
    """nnU-Net's three root folders inside `folder`."""
    return {"nnUNet_raw": folder / "raw", "nnUNet_preprocessed": folder / "preprocessed",
            "nnUNet_results": folder / "results"}


def nnunet_environment(folder: Path, minutes: float, threads: int | None = None, workers: int | None = None,
                       base: Mapping[str, str] | None = None) -> dict[str, str]:
    """Environment of nnU-Net's commands: its roots inside `folder`, the budget trainer's budget and threads,
    and (when given) its augmentation worker count `nnUNet_n_proc_DA`."""
    env = dict(os.environ if base is None else base)
    env.update({key: str(path) for key, path in nnunet_roots(folder).items()})
    env[BUDGET_ENVIRONMENT] = repr(float(minutes))
    if threads is not None:
        env[THREADS_ENVIRONMENT] = str(int(threads))
        env["OMP_NUM_THREADS"] = str(int(threads))
    if workers is not None:
        env["nnUNet_n_proc_DA"] = str(int(workers))
    return env


def nnunet_trainer_folder() -> Path:
    """`nnunetv2/training/nnUNetTrainer` of the installed nnunetv2 (found without importing nnunetv2)."""
    import importlib.util

    spec = importlib.util.find_spec("nnunetv2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("nnunetv2 is not installed in this environment (pip install nnunetv2)")
    return Path(list(spec.submodule_search_locations)[0]) / "training" / "nnUNetTrainer"


def install_trainer(trainer_folder: Path | None = None) -> tuple[Path, bool]:
    """Copy the budget trainer to the top level of nnU-Net's trainer folder (default: the installed one), where
    `nnUNetv2_train -tr nnUNetTrainerBudget` and `nnUNetv2_predict` find it. Returns (path, whether written:
    an identical file is left alone)."""
    folder = nnunet_trainer_folder() if trainer_folder is None else Path(trainer_folder)
    if not (folder / "nnUNetTrainer.py").is_file():
        raise FileNotFoundError(f"{folder}: not nnU-Net's trainer folder (no nnUNetTrainer.py)")
    target = folder / INSTALLED_TRAINER_FILE
    source = TRAINER_SOURCE.read_text()
    if target.is_file() and target.read_text() == source:
        return target, False
    temporary = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    temporary.write_text(source)
    os.replace(temporary, target)
    return target, True


def convert_raw_dataset(source: Path, nnunet_raw: Path) -> Path:
    """nnU-Net's raw folder for an autodetr raw dataset (already in nnU-Net v2 layout): `imagesTr` and
    `labelsTr` linked, `dataset.json` reduced to the keys nnU-Net reads. Held-out cases stay out of it.
    Returns the nnU-Net dataset folder (same `DatasetXXX_Name`)."""
    source = Path(source).resolve()
    target = Path(nnunet_raw) / source.name
    target.mkdir(parents=True, exist_ok=True)
    for name in ("imagesTr", "labelsTr"):
        link = target / name
        if link.is_symlink() or link.exists():
            if link.is_symlink() and link.resolve() == (source / name).resolve():
                continue
            raise FileExistsError(f"{link} exists and is not a link to {source / name}")
        link.symlink_to(source / name, target_is_directory=True)
    content = json.loads((source / "dataset.json").read_text())
    reduced = {key: content[key] for key in NNUNET_DATASET_KEYS if key in content}
    missing = [key for key in ("channel_names", "labels", "numTraining", "file_ending") if key not in reduced]
    if missing:
        raise ValueError(f"{source / 'dataset.json'}: missing {missing}")
    (target / "dataset.json").write_text(json.dumps(reduced, indent=2) + "\n")
    return target


def nnunet_spacing(autodetr_plans: Mapping[str, Any]) -> list[float]:
    """autodetr's planned spacing in nnU-Net's order for `-overwrite_target_spacing` (the image array axes,
    z y x, before any transpose: autodetr's plans hold it transposed by `transpose_forward`)."""
    spacing = np.asarray(autodetr_plans["spacing"], dtype=np.float64)
    backward = autodetr_plans.get("transpose_backward", [0, 1, 2])
    return [round(float(s), 5) for s in spacing[list(backward)]]


def model_folder(roots: Mapping[str, Path], dataset_name: str, configuration: str) -> Path:
    """nnU-Net's fold `all` folder of the budget trainer for one of `CONFIGURATIONS`."""
    nnunet_configuration, plans = CONFIGURATIONS[configuration]
    return Path(roots["nnUNet_results"]) / dataset_name / f"{TRAINER_NAME}__{plans}__{nnunet_configuration}" / "fold_all"


# ----------------------------------------------------------------------------------------------------
# nnU-Net masks -> prediction files
# ----------------------------------------------------------------------------------------------------

def mean_probability_scores(label_map: np.ndarray, probabilities: np.ndarray, values: Sequence[int],
                            channel_labels: Sequence[int] | None = None) -> np.ndarray:
    """Score of each label value: the mean probability of its own channel over the voxels predicted as it.

    `probabilities [C, D, H, W]` on the label map's grid; channel c holds label `channel_labels[c]`
    (default: label c)."""
    channels = list(range(probabilities.shape[0])) if channel_labels is None else [int(v) for v in channel_labels]
    scores = []
    for value in values:
        region = label_map == int(value)
        scores.append(float(probabilities[channels.index(int(value))][region].mean()) if region.any() else 0.0)
    return np.asarray(scores, dtype=np.float64)


def mask_to_prediction(mask_file: Path, prediction_file: Path, class_names: Mapping[int, str], case: str,
                       probabilities_file: Path | None = None, channel_labels: Sequence[int] | None = None) -> int:
    """Write the autodetr prediction file of one predicted label map: one detection per label value present,
    its bounding box (`autodetr.boxes.boxes_from_label_map`, original voxel indices, with world corners),
    score 1 or, given nnU-Net's `probabilities` npz, the mean probability of the organ's voxels.
    Returns the number of detections."""
    import SimpleITK as sitk

    from autodetr.boxes import boxes_from_label_map
    from autodetr.prediction_files import image_geometry, write_prediction

    image = sitk.ReadImage(str(mask_file))
    label_map = sitk.GetArrayFromImage(image).astype(np.int64, copy=False)
    boxes, values = boxes_from_label_map(label_map, values=sorted(int(v) for v in class_names))
    if probabilities_file is None:
        scores, score_kind = np.ones(len(values)), "1"
    else:
        with np.load(probabilities_file, allow_pickle=False) as content:
            probabilities = content["probabilities"]
        if probabilities.shape[1:] != label_map.shape:
            raise ValueError(f"{probabilities_file}: probabilities {probabilities.shape} do not match {mask_file} "
                             f"{label_map.shape}")
        scores, score_kind = mean_probability_scores(label_map, probabilities, values, channel_labels), "mean probability"
    write_prediction(prediction_file, case, boxes, scores, values, class_names,
                     extra={"source": PREDICTION_SOURCE, "mask": Path(mask_file).name, "score": score_kind},
                     **image_geometry(image))
    return int(len(values))


def masks_to_predictions(mask_folder: Path, prediction_folder: Path, dataset_json: Path,
                         with_probabilities: bool = False) -> dict[str, int]:
    """`mask_to_prediction` for every `<case><file_ending>` of `mask_folder` (nnUNetv2_predict's output;
    `<case>.npz` beside each when `with_probabilities`). Returns {case: number of detections}."""
    from autodetr.evaluation.api import read_dataset_classes

    classes = read_dataset_classes(dataset_json)
    ending = classes.file_ending or ".nii.gz"
    channel_labels = [0] + list(classes.values)
    prediction_folder = Path(prediction_folder)
    prediction_folder.mkdir(parents=True, exist_ok=True)
    written: dict[str, int] = {}
    for mask in sorted(Path(mask_folder).glob(f"*{ending}")):
        case = mask.name[: -len(ending)]
        probabilities = mask.parent / f"{case}.npz" if with_probabilities else None
        written[case] = mask_to_prediction(mask, prediction_folder / f"{case}.json", classes.names, case,
                                           probabilities, channel_labels)
    if not written:
        raise FileNotFoundError(f"{mask_folder}: no predicted masks (*{ending})")
    return written


# ----------------------------------------------------------------------------------------------------
# measured subprocesses
# ----------------------------------------------------------------------------------------------------

class StageError(RuntimeError):
    """A measured command failed; the message holds its exit code and the end of its log."""


def _process_tree_rss_mb(root: int) -> float:
    """Sum of the resident memory of `root` and its descendants (Linux /proc; 0 elsewhere)."""
    children: dict[int, list[int]] = {}
    try:
        entries = [entry.name for entry in os.scandir("/proc") if entry.name.isdigit()]
    except OSError:
        return 0.0
    for name in entries:
        try:
            with open(f"/proc/{name}/stat") as handle:
                parent = int(handle.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(parent, []).append(int(name))
    total_kb, stack = 0, [root]
    while stack:
        pid = stack.pop()
        try:
            with open(f"/proc/{pid}/status") as handle:
                for line in handle:
                    if line.startswith("VmRSS:"):
                        total_kb += int(line.split()[1])
                        break
        except (OSError, ValueError):
            pass
        stack.extend(children.get(pid, []))
    return total_kb / 1024.0


def log_tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def run_measured(command: Sequence[str], env: Mapping[str, str], log_file: Path, interval_s: float = 1.0) -> dict:
    """Run `command` (output to `log_file`) and measure it: `wall_s`, `peak_rss_mb` (the largest single
    process of its tree, from wait4's ru_maxrss, reaped descendants included) and `peak_tree_rss_mb` (the
    largest sum over the tree, sampled every `interval_s`; shared pages count once per process).
    Raises StageError when it fails."""
    log_file = Path(log_file)
    log_file.parent.mkdir(parents=True, exist_ok=True)
    peak_tree = [0.0]
    done = threading.Event()
    start = time.perf_counter()
    with open(log_file, "w") as log:
        log.write("$ " + " ".join(str(c) for c in command) + "\n")
        log.flush()
        process = subprocess.Popen([str(c) for c in command], env=dict(env), stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True)

        def sample() -> None:
            while not done.is_set():
                peak_tree[0] = max(peak_tree[0], _process_tree_rss_mb(process.pid))
                done.wait(interval_s)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        try:
            _, status, usage = os.wait4(process.pid, 0)
        except BaseException:
            try:
                os.killpg(process.pid, signal.SIGTERM)
            except OSError:
                pass
            raise
        finally:
            done.set()
            sampler.join()
    process.returncode = os.waitstatus_to_exitcode(status)
    figures = {"wall_s": round(time.perf_counter() - start, 1), "peak_rss_mb": round(usage.ru_maxrss / 1024.0, 1),
               "peak_tree_rss_mb": round(peak_tree[0], 1) if peak_tree[0] else None, "log": str(log_file)}
    if process.returncode != 0:
        raise StageError(f"{Path(str(command[0])).name} exited with {process.returncode} after {figures['wall_s']} s "
                         f"(log {log_file}):\n{log_tail(log_file)}")
    return figures


# ----------------------------------------------------------------------------------------------------
# the table
# ----------------------------------------------------------------------------------------------------

def cell(value: Any, digits: int = 3) -> str:
    """Table text of one value: '-' for None, fixed digits for floats, -1 (COCO: no ground truth) as 'no GT'."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        return "no GT" if value == -1 else f"{value:.{digits}f}"
    return str(value)


def format_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Plain-text table: columns padded to their widest cell, a rule under the header."""
    text = [[cell(v) for v in row] for row in rows]
    widths = [max([len(str(h))] + [len(row[i]) for row in text if i < len(row)]) for i, h in enumerate(header)]
    lines = ["  ".join(str(h).ljust(w) for h, w in zip(header, widths)).rstrip(),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip() for row in text]
    return "\n".join(lines)


def _stage(tool: Mapping[str, Any], name: str, key: str) -> Any:
    return ((tool.get("stages") or {}).get(name) or {}).get(key)


def _per_class(tool: Mapping[str, Any], name: str) -> str | None:
    entry = ((tool.get("metrics") or {}).get("per_class") or {}).get(name)
    if not entry:
        return None
    return " / ".join(cell(entry.get(key), 2) for key in ("AP", "AP50", "AR"))


def _first_line(text: str | None, limit: int = 80) -> str | None:
    lines = (text or "").strip().splitlines()
    return lines[0][:limit] if lines else None


def comparison_rows(tools: Mapping[str, Mapping[str, Any]]) -> tuple[list[str], list[list[Any]]]:
    """(header, rows) of the comparison: one column per tool, one row per measure.

    `tools`: name -> {"configuration": str, "metrics": autodetr_evaluate's metrics (mAP, mAR, AP50, AP75,
    per_class), "training": {"steps", "iterations_per_second"}, "stages": {stage: {"wall_s", "peak_rss_mb",
    "peak_tree_rss_mb"}}, "error": str or None}."""
    names = list(tools)
    header = ["measure"] + names
    rows: list[list[Any]] = [["configuration"] + [tools[n].get("configuration") for n in names]]
    for key in ("mAP", "mAR", "AP50", "AP75"):
        rows.append([key] + [(tools[n].get("metrics") or {}).get(key) for n in names])
    classes: list[str] = []
    for n in names:
        for name in ((tools[n].get("metrics") or {}).get("per_class") or {}):
            if name not in classes:
                classes.append(name)
    for name in classes:
        rows.append([f"{name} AP / AP50 / AR"] + [_per_class(tools[n], name) for n in names])
    rows.append(["training steps"] + [(tools[n].get("training") or {}).get("steps") for n in names])
    rows.append(["steps per second"] + [cell((tools[n].get("training") or {}).get("iterations_per_second"), 2)
                                        for n in names])
    stages = []
    for n in names:
        for stage in tools[n].get("stages") or {}:
            if stage not in stages:
                stages.append(stage)
    for stage in stages:
        rows.append([f"{stage} s"] + [cell(_stage(tools[n], stage, "wall_s"), 1) for n in names])
    for stage in [s for s in stages if any(_stage(tools[n], s, "peak_rss_mb") is not None for n in names)]:
        rows.append([f"{stage} peak MB (process / tree)"]
                    + [None if _stage(tools[n], stage, "peak_rss_mb") is None else
                       f"{cell(_stage(tools[n], stage, 'peak_rss_mb'), 0)} / {cell(_stage(tools[n], stage, 'peak_tree_rss_mb'), 0)}"
                       for n in names])
    if any(tools[n].get("error") for n in names):
        rows.append(["error"] + [_first_line(tools[n].get("error")) for n in names])
    return header, rows


def comparison_table(tools: Mapping[str, Mapping[str, Any]]) -> str:
    """The comparison as text (see `comparison_rows`)."""
    return format_table(*comparison_rows(tools))
