"""`autodetr_evaluate`: COCO-style box metrics, nnDetection mAP and calibration of prediction files.

    autodetr_evaluate -p PRED_FOLDER -g GT [--classes liver spleen ...] [-o OUT_FOLDER]
    autodetr_evaluate --cv DATASET [--model TRAINER__PLANS] [--results-folder F] [-g GT] [-o OUT_FOLDER]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from autodetr.errors import InputError, cli_main


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="autodetr_evaluate",
        description=(
            "Evaluate per-case prediction JSONs against label maps: COCO mAP (IoU 0.50:0.05:0.95), AP50, AP75, "
            "mAR (AR@100), per-class values, nnDetection mAP (IoU 0.10:0.05:0.50), false positives on absent "
            "organs, and the expected calibration error (D-RMM Eq. 9). Writes metrics.json, metrics.csv and "
            "reliability.png."
        ),
    )
    parser.add_argument("-p", "--predictions", type=Path,
                        help="folder of per-case prediction JSONs (as written by autodetr_predict)")
    parser.add_argument("-g", "--gt", type=Path,
                        help="label folder (dataset.json beside it or in its parent) or raw dataset folder "
                             "DatasetXXX_Name with labelsTr/ (and labelsTs/); with --cv defaults to "
                             "$AUTODETR_raw/DatasetXXX_Name")
    parser.add_argument("-o", "--output", type=Path,
                        help="output folder (default: PRED_FOLDER/evaluation, or <model>/cv_evaluation with --cv)")
    parser.add_argument("--classes", nargs="+", metavar="NAME", help="evaluate only these class names")
    parser.add_argument("--dataset-json", type=Path, help="dataset.json giving the class names and label values")
    parser.add_argument("--only-predicted", action="store_true",
                        help="leave out ground-truth cases without a prediction file (default: they count as empty)")
    parser.add_argument("--max-dets", type=int, default=100, help="detections kept per case and class (COCO maxDets)")
    parser.add_argument("--num-bins", type=int, default=10, help="confidence bins of the ECE")
    parser.add_argument("--cv", metavar="DATASET",
                        help="evaluate the pooled validation predictions of the folds of DATASET (id or name): "
                             "$AUTODETR_results/DatasetXXX_Name/<trainer>__<plans>/fold_k/validation/*.json")
    parser.add_argument("--model", metavar="TRAINER__PLANS", help="with --cv: the <trainer>__<plans> folder")
    parser.add_argument("--results-folder", type=Path, help="with --cv: use this instead of $AUTODETR_results")
    parser.add_argument("--num-folds", type=int, default=5, help="with --cv: number of folds (default 5)")
    return parser


def _format(value: float | None) -> str:
    if value is None:
        return "n/a"
    if value == -1:
        return "-1 (no GT)"
    return f"{value:.4f}"


def print_summary(metrics: dict, output: Path | None) -> None:
    for message in metrics.get("warnings", []):
        print(f"warning: {message}", file=sys.stderr)
    print(f"{metrics['num_cases']} cases, {metrics['num_gt']} ground-truth boxes, {metrics['num_detections']} detections")
    header = f"{'class':<24}{'AP':>9}{'AP50':>9}{'AP75':>9}{'AR':>9}{'nnDet':>9}{'FP abs':>8}"
    print(header)
    for name, entry in metrics["per_class"].items():
        values = [entry["AP"], entry["AP50"], entry["AP75"], entry["AR"], entry["nnDet_mAP"]]
        cells = "".join(f"{('-' if v is None else ('  no GT' if v == -1 else f'{v:.4f}')):>9}" for v in values)
        print(f"{name[:23]:<24}{cells}{entry['false_positives_absent']:>8}")
    print(
        f"mAP {_format(metrics['mAP'])}  AP50 {_format(metrics['AP50'])}  AP75 {_format(metrics['AP75'])}  "
        f"mAR {_format(metrics['mAR'])}  nnDet mAP {_format(metrics['nnDet_mAP'])}  "
        f"ECE {_format(metrics['ECE'])}  FP on absent organs {metrics['false_positives_absent']}"
    )
    if output is not None:
        print(f"wrote {output / 'metrics.json'}, {output / 'metrics.csv'}, {output / 'reliability.png'}")


def run(argv: Sequence[str] | None = None) -> int:
    """The command without the error wrapper (returns the exit code)."""
    from autodetr.evaluation import api

    parser = build_parser()
    args = parser.parse_args(argv)
    if args.max_dets < 1:
        raise InputError(f"--max-dets must be >= 1, got {args.max_dets}")
    if args.num_bins < 1:
        raise InputError(f"--num-bins must be >= 1, got {args.num_bins}")
    if args.cv is not None:
        if args.predictions is not None:
            raise InputError("give either -p PRED_FOLDER or --cv DATASET, not both")
        metrics = api.evaluate_cross_validation(
            args.cv, model=args.model, results_folder=args.results_folder, gt=args.gt, output_folder=args.output,
            classes=args.classes, dataset_json=args.dataset_json, only_predicted=args.only_predicted,
            max_dets=args.max_dets, num_bins=args.num_bins, num_folds=args.num_folds,
        )
        output = Path(metrics["output_folder"])
    else:
        if args.predictions is None or args.gt is None:
            parser.error("-p PRED_FOLDER and -g GT are required (or --cv DATASET)")
        if args.model is not None or args.results_folder is not None:
            raise InputError("--model and --results-folder only apply with --cv")
        output = args.output if args.output is not None else args.predictions / "evaluation"
        metrics = api.evaluate_folder(
            args.predictions, args.gt, output_folder=output, classes=args.classes, dataset_json=args.dataset_json,
            only_predicted=args.only_predicted, max_dets=args.max_dets, num_bins=args.num_bins,
        )
    print_summary(metrics, output)
    return 0


main = cli_main(run)


if __name__ == "__main__":
    main()
