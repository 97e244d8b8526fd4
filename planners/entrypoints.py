"""Command line of `autodetr_plan_and_preprocess`."""
from __future__ import annotations

import argparse

from autodetr.errors import cli_main
from autodetr.plans import BACKBONES, parse_override
from autodetr.planners.planner import DEFAULT_LAMBDA, DEFAULT_RHO, PLANS_NAME, PRESETS


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="autodetr_plan_and_preprocess",
        description="Fingerprint a raw dataset, plan the detector (spacing, input size, network, queries) and "
        "preprocess every training case into $AUTODETR_preprocessed, with 5-fold splits.",
    )
    parser.add_argument("-d", "--dataset", nargs="+", required=True, help="dataset id(s) or name(s), e.g. 501 or Dataset501_Organs")
    parser.add_argument("-np", "--num-processes", type=int, default=2, help="worker processes for fingerprint and preprocessing (default 2)")
    parser.add_argument("--preset", choices=sorted(PRESETS), default=None,
                        help="budget preset: 'cpu' (small input and network, trains on a laptop) or 'gpu' (paper-sized); "
                        "default: gpu if CUDA is available, else cpu")
    parser.add_argument("--plans-name", default=PLANS_NAME, help=f"name of the plans and their preprocessed folder (default {PLANS_NAME})")
    parser.add_argument("--rho", type=float, default=DEFAULT_RHO, help=f"queries per organ, N = rho * M (default {DEFAULT_RHO})")
    parser.add_argument("--lambda", dest="matching_ratio", type=float, default=DEFAULT_LAMBDA,
                        help=f"DQM matching ratio lambda, eta = ceil(lambda * rho) in [1, 5] (default {DEFAULT_LAMBDA})")
    parser.add_argument("--spacing", type=float, nargs=3, metavar=("Z", "Y", "X"), help="target spacing in mm instead of the planned one")
    parser.add_argument("--input-size", type=int, nargs=3, metavar=("Z", "Y", "X"), help="network input size in voxels instead of the planned one")
    parser.add_argument("--backbone", choices=list(BACKBONES), default="fpn", help="backbone (default fpn)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override any plans value by its dotted key, value as JSON, e.g. --set network.hidden_dim=128 "
                        "--set training.batch_size=1 (repeatable)")
    parser.add_argument("--no-preprocess", action="store_true", help="write fingerprint and plans only")
    parser.add_argument("--clean", action="store_true", help="redo fingerprint and preprocessing from scratch")
    return parser


@cli_main
def plan_and_preprocess_entry(argv: list[str] | None = None) -> int:
    from autodetr.planners.plan_and_preprocess_api import plan_and_preprocess

    args = build_parser().parse_args(argv)
    overrides = dict(parse_override(text) for text in args.overrides)
    for dataset in args.dataset:
        folder = plan_and_preprocess(
            dataset, preset=args.preset, plans_name=args.plans_name, num_processes=args.num_processes,
            preprocess=not args.no_preprocess, clean=args.clean, rho=args.rho, matching_ratio=args.matching_ratio,
            spacing=args.spacing, input_size=args.input_size, backbone=args.backbone, overrides=overrides,
        )
        print(f"plans and preprocessed cases: {folder}")
    return 0
