"""Picture of phantoms beside the real CT example: one axial and one coronal slice per scan.

    python benchmarks/picture_phantoms.py            # writes docs/images/phantoms_beside_real_ct.png

Columns: the real example (`../shared/data/totalseg_example/ct_full.nii.gz` and the labelled crop), a
realistic phantom, and randomised phantoms in each contrast phase (the first case of seed 0 drawn in that
phase). Every scan is shown in the canonical LPS order (patient's right on the image's left, anterior up),
abdomen window W400 L40, at its own spacing.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import SimpleITK as sitk  # noqa: E402

from autodetr.phantom.generator import generate_case  # noqa: E402
from autodetr.phantom.randomised import PHASES  # noqa: E402
from autodetr.preprocessing.orientation import Reorientation  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "totalseg_example"


def canonical(image: sitk.Image) -> tuple[np.ndarray, np.ndarray]:
    reorientation = Reorientation.from_direction(image.GetDirection())
    return reorientation.array(sitk.GetArrayFromImage(image)), reorientation.spacing(image.GetSpacing()[::-1])


def phantom_of_phase(phase: str, limit: int = 40) -> tuple[np.ndarray, np.ndarray, str]:
    """The first randomised case of seed 0 drawn in `phase` (randomised phantoms draw it per scan)."""
    for index in range(limit):
        case = generate_case(index, 0, "full", "randomised")
        if case.info["phase"] == phase and "liver" in case.placed_boxes and "kidney_left" in case.placed_boxes:
            return case.image, np.asarray(case.spacing), f"randomised #{index}: {phase}"
    raise RuntimeError(f"no case of seed 0 in the {phase} phase among the first {limit}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "images" / "phantoms_beside_real_ct.png")
    args = parser.parse_args(argv)
    scans = []
    for name in ("ct.nii.gz", "ct_full.nii.gz"):
        array, spacing = canonical(sitk.ReadImage(str(DATA / name)))
        scans.append((array, spacing, f"real example: {name}"))
    realistic = generate_case(0, 0, "full")
    scans.append((realistic.image, np.asarray(realistic.spacing), "realistic phantom #0"))
    scans += [phantom_of_phase(phase) for phase in PHASES]
    figure, axes = plt.subplots(2, len(scans), figsize=(3.2 * len(scans), 7), dpi=60)
    for column, (array, spacing, title) in enumerate(scans):
        z = array.shape[0] // 2
        axes[0, column].imshow(array[z], cmap="gray", vmin=-160, vmax=240, aspect=spacing[1] / spacing[2])
        coronal = array[:, array.shape[1] // 2][::-1]  # superior up
        axes[1, column].imshow(coronal, cmap="gray", vmin=-160, vmax=240, aspect=spacing[0] / spacing[2])
        axes[0, column].set_title(title, fontsize=8)
        for ax in axes[:, column]:
            ax.set_axis_off()
    figure.suptitle("axial (middle slice) and coronal (middle row) slices, canonical LPS order, W400 L40", fontsize=9)
    figure.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(args.out)
    print(f"written {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
