"""Command line of `autodetr_masks_to_boxes`."""
from __future__ import annotations

import argparse

from autodetr.errors import cli_main


def build_masks_to_boxes_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="autodetr_masks_to_boxes",
        description="Convert a raw dataset's label maps into box files: OUTPUT/labelsTr/<case>.json = "
        '{"boxes": [{"class": "liver", "box_world_mm": {"min": [x, y, z], "max": [x, y, z]}, '
        '"box_voxel": [z1, y1, x1, z2, y2, x2]}, ...]} (one box per organ present, world mm from the image '
        "geometry, voxel box half-open in array order), plus OUTPUT/dataset.json. A box-only dataset trains "
        "like a label-map one (autodetr_plan_and_preprocess, autodetr_train, autodetr_evaluate).",
        epilog="example: autodetr_masks_to_boxes -i $AUTODETR_raw/Dataset500_Phantom "
        "-o $AUTODETR_raw/Dataset510_PhantomBoxes --with-images --slicer",
    )
    parser.add_argument("-i", "--input", required=True,
                        help="a raw dataset folder (labelsTr/ and dataset.json) or a folder of label maps with "
                        "dataset.json beside it or in its parent; nnU-Net label maps and nnDetection instance maps "
                        "(<case>.json beside each map) are both read")
    parser.add_argument("-o", "--output", required=True,
                        help="output folder; box files go to OUTPUT/labelsTr/<case>.json, dataset.json to OUTPUT")
    parser.add_argument("--dataset-json", default=None,
                        help="dataset.json with the class names, when it is not beside the labels")
    parser.add_argument("--with-images", action="store_true",
                        help="also put the dataset's imagesTr/ and imagesTs/ into OUTPUT (hard links, copies "
                        "across file systems), so OUTPUT is a complete box-only raw dataset")
    parser.add_argument("--slicer", action="store_true",
                        help="also write OUTPUT/labelsTr/<case>.mrk.json: one 3D Slicer ROI per ground-truth box "
                        "(LPS, oriented like the image, the class name as its name), to view beside predictions")
    return parser


@cli_main
def masks_to_boxes_entry(argv: list[str] | None = None) -> int:
    from autodetr.preprocessing.masks_to_boxes import masks_to_boxes

    args = build_masks_to_boxes_parser().parse_args(argv)
    written = masks_to_boxes(args.input, args.output, slicer=args.slicer, with_images=args.with_images,
                             dataset_json=args.dataset_json)
    print(f"{len(written)} box file(s) written to {written[0].parent if written else args.output}")
    return 0
