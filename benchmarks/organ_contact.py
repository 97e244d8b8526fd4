"""How closely abutting organs touch: the real example beside phantom label maps.

    python benchmarks/organ_contact.py --phantoms RAW_FOLDER/labelsTs [MORE_FOLDERS ...]

For each organ pair (e.g. the right kidney and the liver), the share of the first organ's surface voxels that lie
within `--mm` (default 4) of the second organ: near 0 where a fat plane separates them (perirenal fat around
a kidney), large where they abut. Printed for the labelled crop of `../shared/data/totalseg_example/` and, per
folder, the mean (min-max) over the phantom label maps in it, so the phantoms' anatomy can be compared with a
real patient's. It measures; it is read to decide what the phantoms lack, never to set a value from one patient.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "totalseg_example"
#: (organ, neighbour) pairs: kidneys under the liver and the spleen, the pancreas on the spleen, the gallbladder in the liver.
PAIRS = (("kidney_right", "liver"), ("kidney_left", "spleen"), ("pancreas", "spleen"), ("gallbladder", "liver"))


def parse_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--phantoms", type=Path, nargs="*", default=[],
                        help="folders of phantom label maps (e.g. a raw dataset's labelsTs); its dataset.json names the labels")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder of the real example")
    parser.add_argument("--mm", type=float, default=4.0, help="a surface voxel this close (mm) to the neighbour touches it")
    return parser.parse_args(argv)


def surface_contact(label_map: np.ndarray, spacing_zyx: tuple[float, ...], organ: int, neighbour: int,
                    mm: float) -> float | None:
    """Share of `organ`'s surface voxels within `mm` of a `neighbour` voxel; None if either is absent."""
    found = ndimage.find_objects((label_map == organ).astype(np.int8))
    if not found or not (label_map == neighbour).any():
        return None
    # Only the organ's box grown by `mm` (plus one voxel) can hold a neighbour voxel that close: crop to it.
    margin = [int(np.ceil(mm / step)) + 1 for step in spacing_zyx]
    window = tuple(slice(max(s.start - m, 0), s.stop + m) for s, m in zip(found[0], margin))
    away = label_map[window] != neighbour
    if away.all():  # no neighbour voxel near (the transform would measure to a made-up background instead)
        return 0.0
    mask = label_map[window] == organ
    surface = mask & ~ndimage.binary_erosion(mask)
    distance = ndimage.distance_transform_edt(away, sampling=spacing_zyx)
    return float(np.mean(distance[surface] <= mm))


def contacts_of(path: Path, label_values: dict[str, int], mm: float) -> dict[str, float | None]:
    """`surface_contact` of every pair in PAIRS for one label-map file."""
    image = sitk.ReadImage(str(path))
    label_map, spacing = sitk.GetArrayFromImage(image), tuple(image.GetSpacing()[::-1])
    return {f"{a}-{b}": surface_contact(label_map, spacing, label_values[a], label_values[b], mm)
            if a in label_values and b in label_values else None for a, b in PAIRS}


def summarise(rows: list[dict[str, float | None]]) -> dict[str, str]:
    """Per pair 'mean (min-max), n' over the cases where both organs are present."""
    result = {}
    for pair in (f"{a}-{b}" for a, b in PAIRS):
        values = [row[pair] for row in rows if row.get(pair) is not None]
        result[pair] = f"{np.mean(values):.2f} ({min(values):.2f}-{max(values):.2f}), n={len(values)}" if values else "-"
    return result


def main(argv: list[str] | None = None) -> int:
    args = parse_arguments(argv)
    real_labels = {name: int(value) for value, name in json.loads((args.data / "labels.json").read_text()).items()}
    table = {"real example": summarise([contacts_of(args.data / "seg.nii.gz", real_labels, args.mm)])}
    for folder in args.phantoms:
        dataset = json.loads((folder.parent / "dataset.json").read_text())
        files = sorted(folder.glob("*.nii.gz"))
        table[str(folder)] = summarise([contacts_of(path, dataset["labels"], args.mm) for path in files])
    print(f"share of the first organ's surface within {args.mm:g} mm of the second")
    for source, row in table.items():
        print(source)
        for pair, text in row.items():
            print(f"  {pair:22s} {text}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
