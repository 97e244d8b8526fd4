"""Command line of `autodetr_predict`."""
from __future__ import annotations

import argparse
import sys
import textwrap

from autodetr.devices import DEVICE_HELP
from autodetr.errors import cli_main
from autodetr.inference.ensemble import DEFAULT_IOU_THRESHOLD
from autodetr.inference.predict_api import CHECKPOINT_NAMES, DEFAULT_MODEL


def _description() -> str:
    """What the command does, wrapped for `--help`."""
    return textwrap.fill(
        "Detect organs in CT images with a trained autodetr model: every case is preprocessed exactly as in "
        "training, predicted by each chosen fold, the folds' boxes are fused (weighted box clustering) and "
        "written per case as <case>.json (boxes in original voxel indices and in world mm), plus boxes.csv "
        "over all cases.", 100)


def _epilog() -> str:
    """Examples and the exit codes, for the end of `--help`."""
    return ("examples:\n"
            "  autodetr_predict -i imagesTs -o predictions -d 500\n"
            "  autodetr_predict -i scan.nii.gz -o out -m $AUTODETR_results/Dataset500_Phantom/" + DEFAULT_MODEL + " -f 0\n"
            "  autodetr_predict -i dicom_folder -o out --save-masks --slicer\n"
            "  autodetr_predict -i scan.nii.gz -o out --pretrained phantom-abdomen   # the packaged model\n"
            "  autodetr_predict -i imagesTs -o quick -d 500 --disable-tta      # one pass per fold\n"
            "  autodetr_predict -i imagesTs -o prior -d 500 --atlas-prior   # the baseline, same folds\n"
            + textwrap.fill("A case that fails is named on stderr with the reason; the others are still written, and the "
                            "exit code is 1 (2 for a problem with the whole command, e.g. no trained model). A rerun skips "
                            "cases whose <case>.json exists (use --overwrite to redo them).", 100))


def _add_input_and_model_arguments(parser: argparse.ArgumentParser) -> None:
    """Where the images come from, where the boxes go, and which trained model, folds and checkpoint predict."""
    parser.add_argument("-i", "--input", required=True,
                        help="a folder of images (.nii.gz, .nii, .nrrd, .mha, .mhd, .nhdr; the nnU-Net channel suffix "
                        "_0000 is optional, case_0000.nii.gz -> case 'case'), a single image file, or a folder with "
                        "DICOM series (searched recursively, one case per series, named by its series description)")
    parser.add_argument("-o", "--output", required=True, help="output folder (created if missing)")
    parser.add_argument("-d", "--dataset", default=None,
                        help="dataset id or name whose trained model to use (e.g. 500 or Dataset500_Phantom); "
                        "may be left out when $AUTODETR_results holds only one dataset")
    parser.add_argument("-m", "--model", default=None,
                        help=f"trained model: a folder name under $AUTODETR_results/DatasetXXX_Name/ "
                        f"(default {DEFAULT_MODEL}), or a path to a model folder holding fold_k/ folders")
    parser.add_argument("--pretrained", default=None, metavar="NAME",
                        help="a model that ships with autodetr instead of -d / -m (no training, no download): "
                        "'phantom-abdomen' (15 abdominal organs, trained on domain-randomised phantoms); an unknown "
                        "name lists the available ones")
    parser.add_argument("-f", "--folds", nargs="+", default=None,
                        help="folds to ensemble, e.g. '-f 0 1 2' or '-f all' (the model trained on all cases); "
                        "default: every trained fold_k folder (fold_all when there are none)")
    parser.add_argument("--checkpoint", choices=sorted(CHECKPOINT_NAMES), default=None,
                        help="checkpoint of each fold: best (best validation), final (end of training) or last "
                        "(latest saved); default: best, else final, else last, per fold")


def _add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """How the prediction runs: test-time copies, device and reader processes."""
    parser.add_argument("--disable-tta", action="store_true",
                        help="no test-time augmentation (as nnU-Net's --disable_tta). By default every fold also "
                        "predicts the copies made with the transforms its training used: the case moved to "
                        "8 offsets along the diagonal of its padding when training shifted cases (planned), and the "
                        "copy mirrored along the patient's left-right axis, lateral classes (plans lateral_pairs) "
                        "swapped back, when training mirrored; all copies are fused with the folds (up to 10 "
                        "network passes per fold, a few seconds per case on a CPU)")
    parser.add_argument("--tta", action="store_true", help=argparse.SUPPRESS)  # the default now; kept for old scripts
    parser.add_argument("--device", default="auto", help=DEVICE_HELP)
    parser.add_argument("-np", "--num-processes", type=int, default=2,
                        help="worker processes that read and preprocess cases ahead of the prediction (default 2; "
                        "1 = everything in this process)")


def _add_output_arguments(parser: argparse.ArgumentParser) -> None:
    """What is written per case: extra files, which detections, reruns, the atlas prior instead of the model."""
    parser.add_argument("--save-masks", action="store_true",
                        help="also write <case>_boxes.nii.gz: every box filled with its label value on the original "
                        "image grid (same size, spacing, origin, direction), for ITK-SNAP / 3D Slicer")
    parser.add_argument("--slicer", action="store_true",
                        help="also write <case>.mrk.json: one 3D Slicer ROI markup per detection (LPS, oriented like "
                        "the image, the class name as its name, the score in its description); drag it into Slicer "
                        "together with the image")
    parser.add_argument("--score-threshold", type=float, default=0.0,
                        help="write only detections with at least this fused score (default 0: the best detection "
                        "of every class, with its score)")
    parser.add_argument("--iou-threshold", type=float, default=DEFAULT_IOU_THRESHOLD,
                        help=f"boxes of different folds with at least this IoU are fused into one (default {DEFAULT_IOU_THRESHOLD})")
    parser.add_argument("--max-per-class", type=int, default=1,
                        help="detections kept per class (default 1: organs occur once per scan)")
    parser.add_argument("--overwrite", action="store_true", help="predict again the cases whose <case>.json exists")
    parser.add_argument("--atlas-prior", action="store_true",
                        help="write the baseline instead of the model's boxes: each class's median box of the chosen "
                             "folds' training cases, placed in each case's body without looking at the image (the "
                             "folds' priors fused as their models' boxes are). Score both folders with autodetr_evaluate "
                             "on the same cases: a model that does not beat its atlas prior has only learned where "
                             "organs usually lie")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def build_parser() -> argparse.ArgumentParser:
    """The `autodetr_predict` command line."""
    parser = argparse.ArgumentParser(
        prog="autodetr_predict",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=_description(),
        epilog=_epilog(),
    )
    _add_input_and_model_arguments(parser)
    _add_run_arguments(parser)
    _add_output_arguments(parser)
    return parser


@cli_main
def main(argv: list[str] | None = None) -> int:
    from autodetr.inference.predict_api import predict

    args = build_parser().parse_args(argv)
    if args.num_processes < 1:
        args.num_processes = 1
    if args.pretrained is not None:
        from autodetr.errors import InputError
        from autodetr.pretrained import pretrained_folder

        if args.dataset is not None or args.model is not None:
            raise InputError("--pretrained names the model: leave out -d and -m")
        args.model = str(pretrained_folder(args.pretrained))
    summary = predict(
        args.input, args.output, dataset=args.dataset, model=args.model, folds=args.folds, checkpoint=args.checkpoint,
        device=args.device, tta=not args.disable_tta, num_processes=args.num_processes, save_masks=args.save_masks,
        score_threshold=args.score_threshold, overwrite=args.overwrite, iou_threshold=args.iou_threshold,
        max_per_class=args.max_per_class, progress=not args.no_progress, slicer=args.slicer,
        atlas_prior=args.atlas_prior,
    )
    what = "atlas prior of model" if args.atlas_prior else "model"
    print(f"{what} {summary.model_folder} ({', '.join(summary.folds)}): {len(summary.written)} case(s) written, "
          f"{len(summary.skipped)} skipped (already done), {len(summary.failed)} failed; table {summary.csv}")
    if summary.failed:
        print(f"{len(summary.failed)} case(s) failed: {', '.join(summary.failed)}", file=sys.stderr)
        return 1
    return 0
