"""Command line of `autodetr_demo`."""
from __future__ import annotations

import argparse
from pathlib import Path

from autodetr.demo.defaults import DEFAULT_MINUTES, DEFAULT_NUM_CASES
from autodetr.devices import DEVICE_HELP
from autodetr.errors import cli_main
from autodetr.phantom.generator import ANATOMIES
from autodetr.phantom.randomised import APPEARANCES, FIELDS_OF_VIEW


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="autodetr_demo",
        description="Run the whole pipeline on the embedded phantom data set: generate it, plan and preprocess, "
        "train a CPU-sized model for a bounded time, predict the held-out cases (and --image), evaluate, and "
        "write pictures, the training curve, metrics and index.html into one folder.",
    )
    parser.add_argument("--out", type=Path, default=Path("autodetr_demo_output"),
                        help="output folder for everything (default ./autodetr_demo_output); the AUTODETR_* roots are set inside it")
    parser.add_argument("--minutes", type=float, default=DEFAULT_MINUTES,
                        help=f"training time budget in minutes (default {DEFAULT_MINUTES:g}; the demo takes about 5 minutes more "
                        "for data, planning and prediction with the default cases on a 2-core CPU)")
    parser.add_argument("--size", choices=["small", "full"], default="full",
                        help="phantom size: full (realistic, 0.6-1 mm in-plane) or small (coarse, seconds) (default full)")
    parser.add_argument("--num-cases", type=int, default=DEFAULT_NUM_CASES,
                        help=f"phantom training cases (default {DEFAULT_NUM_CASES}; about 35 MB each on disk at full size; "
                        "fewer cases train a worse detector, e.g. 16 cases and 10 minutes: held-out mAP 0.39)")
    parser.add_argument("--num-test-cases", type=int, default=4, help="held-out phantom cases to predict and evaluate (default 4)")
    parser.add_argument("--appearance", choices=APPEARANCES, default="realistic",
                        help="phantom appearance (autodetr_make_phantom --appearance): 'randomised' trains a model "
                             "meant for real CT (contrast phases, scanners and scan ranges drawn far wider than real)")
    parser.add_argument("--field-of-view", choices=FIELDS_OF_VIEW, default=None,
                        help="phantom scan range (autodetr_make_phantom --field-of-view; default: standard for "
                             "realistic, random for randomised)")
    parser.add_argument("--anatomy", choices=ANATOMIES, default="standard",
                        help="phantom anatomy (autodetr_make_phantom --anatomy; default standard): 'varied' redraws the "
                             "sizes and heights of liver, spleen, stomach and kidneys as wide as between real patients, "
                             "'mixed' does so in half of the cases")
    parser.add_argument("--image", type=Path, help="also predict this image (file, folder or DICOM folder), e.g. a real CT")
    parser.add_argument("--device", default="auto", help=DEVICE_HELP)
    parser.add_argument("--seed", type=int, default=0, help="seed of the phantom and the training (default 0)")
    parser.add_argument("-np", "--num-processes", type=int, default=2, help="worker processes for data preparation (default 2)")
    return parser


@cli_main
def main(argv: list[str] | None = None) -> int:
    from autodetr.demo.run_demo import comparison_lines, metrics_table, run_demo

    args = build_parser().parse_args(argv)
    result = run_demo(args.out, minutes=args.minutes, size=args.size, num_cases=args.num_cases,
                      num_test_cases=args.num_test_cases, image=args.image, device=args.device, seed=args.seed,
                      num_processes=args.num_processes, appearance=args.appearance, field_of_view=args.field_of_view,
                      anatomy=args.anatomy)
    print(f"\n{'class':<22}" + "".join(f"{c:>8}" for c in ("AP", "AP50", "AP75", "AR")))
    for row in metrics_table(result.metrics):
        print(f"{row[0]:<22}" + "".join(f"{c:>8}" for c in row[1:]))
    print()
    for line in comparison_lines(result):
        print(line)
    print(f"\npage:        {result.index_html}")
    print(f"pictures:    {result.output / 'pictures'} ({len(result.pictures)} PNG)")
    print(f"training:    {result.training_curve}")
    print(f"predictions: {result.output / 'predictions'} (one JSON per case, boxes.csv)")
    print(f"metrics:     {result.output / 'evaluation' / 'metrics.json'}")
    if result.failed_cases:
        print(f"failed cases: {', '.join(result.failed_cases)}")
        return 1
    return 0
