"""`autodetr_make_phantom`: write the procedural abdominal CT phantom as a raw dataset."""
from __future__ import annotations

import argparse
import os
from pathlib import Path

from autodetr.errors import cli_main
from autodetr.paths import raw_root
from autodetr.phantom.generator import ANATOMIES, make_phantom_dataset
from autodetr.phantom.geometry import SIZES, SPACING_RANGES
from autodetr.phantom.randomised import APPEARANCES, FIELDS_OF_VIEW


def build_parser() -> argparse.ArgumentParser:
    small, full = SPACING_RANGES["small"], SPACING_RANGES["full"]
    parser = argparse.ArgumentParser(
        prog="autodetr_make_phantom",
        description=("Write a procedural abdominal CT phantom (15 organ classes: liver, spleen, kidneys, stomach, "
                     "gallbladder, pancreas, aorta, IVC, urinary bladder, vertebrae L1-L5) as an nnU-Net v2 raw "
                     "dataset: DatasetXXX_Phantom/{imagesTr,labelsTr,imagesTs,labelsTs,dataset.json} under "
                     "$AUTODETR_raw (or --output). Cases already written are kept, so an interrupted run can "
                     "simply be started again."),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("-d", "--dataset-id", type=int, default=500,
                        help="dataset id: the folder is Dataset<ID>_Phantom (3 digits)")
    parser.add_argument("--num-cases", type=int, default=20, help="number of training cases (imagesTr/labelsTr)")
    parser.add_argument("--num-test-cases", type=int, default=5,
                        help="number of held-out cases (imagesTs, with their labels in labelsTs for evaluation)")
    parser.add_argument("--size", choices=SIZES, default="full",
                        help=(f"'full': realistic scans, slices {full['slice'][0]:g}-{full['slice'][1]:g} mm, in-plane "
                              f"{full['inplane'][0]:g}-{full['inplane'][1]:g} mm, 256-512 matrix; 'small': the same "
                              f"anatomy at {small['inplane'][0]:g}-{small['inplane'][1]:g} mm in-plane and "
                              f"{small['slice'][0]:g}-{small['slice'][1]:g} mm slices (about 32-52 x 48-64 x 48-64 "
                              f"voxels) for fast tests and CPU demos"))
    parser.add_argument("--appearance", choices=APPEARANCES, default="realistic",
                        help=("'realistic': one scanner and realistic tissue values (native or contrast-enhanced "
                              "vessels); 'randomised': domain-randomised scans for models meant for real CT: contrast "
                              "phase (native, arterial, portal-venous, delayed), tissue values well beyond the "
                              "realistic ranges, liver vessels, cysts and lesions, gallstones, a calcified aorta, oral "
                              "contrast, noise 5-45 HU, blur, slice thickness, intensity bias and streaks (the same "
                              "anatomy as realistic)"))
    parser.add_argument("--anatomy", choices=ANATOMIES, default="standard",
                        help=("'standard': the phantom's patients as drawn; 'varied': the sizes and heights of liver, "
                              "spleen, stomach and kidneys redrawn as wide as between real patients (a liver reaching "
                              "L1 to the iliac crest, spleens up to 1.6x taller, a lower antrum, kidneys a vertebra "
                              "higher or lower; spine, vessels and body unchanged); 'mixed': each case one or the other, "
                              "half varied (the packaged model's phantoms). Measured on the real example, varied alone "
                              "helped liver and stomach and cost the right kidney and phantom mAP; mixed beat both "
                              "standard and varied (docs/real_ct.md)"))
    parser.add_argument("--field-of-view", choices=FIELDS_OF_VIEW, default=None,
                        help=("scan range: 'standard' (liver dome to bladder or iliac crest; the default for "
                              "realistic), 'random' (starts and ends anywhere from the lower chest to the pelvis, "
                              "80-480 mm, organs cut at the ends; the default for randomised), 'upper_abdomen' "
                              "(liver dome to the kidneys' lower poles) or 'pelvis' (L4 to below the bladder)"))
    parser.add_argument("--seed", type=int, default=0,
                        help="random seed; case i depends only on (seed, i), not on --num-cases or -np")
    parser.add_argument("--output", type=Path, default=None,
                        help="raw root folder to write into instead of $AUTODETR_raw")
    parser.add_argument("--overwrite", action="store_true",
                        help="regenerate every case, and remove files of the dataset folder this run would not "
                             "write (otherwise complete cases are kept and foreign files are an error)")
    parser.add_argument("-np", "--num-processes", type=int, default=max(1, min(4, (os.cpu_count() or 1))),
                        help="worker processes generating cases in parallel")
    parser.add_argument("--no-progress", action="store_true", help="do not show the progress bar")
    return parser


@cli_main
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    root = args.output if args.output is not None else raw_root()
    folder = make_phantom_dataset(root, dataset_id=args.dataset_id, num_cases=args.num_cases,
                                  num_test_cases=args.num_test_cases, size=args.size, seed=args.seed,
                                  num_processes=args.num_processes, overwrite=args.overwrite,
                                  progress=not args.no_progress, appearance=args.appearance, anatomy=args.anatomy,
                                  field_of_view=args.field_of_view)
    print(f"phantom dataset written to {folder}")
    return 0


if __name__ == "__main__":
    main()
