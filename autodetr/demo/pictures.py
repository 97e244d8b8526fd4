"""Pictures of predicted organ boxes: axial, coronal and sagittal slices of a CT with the boxes drawn.

Predicted boxes are solid, in one colour per class, with the class name; ground-truth boxes are dashed in the
same colour. Each view shows the box outlines projected onto that view's plane, over the slice through the
middle of the predicted boxes, displayed with the voxel spacing as aspect ratio (abdomen window W400 L40).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402

from autodetr.atomic_io import atomic_path  # noqa: E402

WINDOW_LEVEL_HU = (40.0, 400.0)
VIEWS = (  # name, sliced axis, (row axis, column axis)
    ("axial", 0, (1, 2)),
    ("coronal", 1, (0, 2)),
    ("sagittal", 2, (0, 1)),
)


@dataclass
class DrawnBox:
    """A corner box (z1, y1, x1, z2, y2, x2) in the image's voxel indices, with its class name and score."""

    box: np.ndarray
    name: str
    score: float | None = None


def class_colours(names: list[str]) -> dict[str, tuple]:
    palette = plt.get_cmap("tab20")
    return {name: palette(i % 20) for i, name in enumerate(sorted(set(names)))}


def _slice_index(boxes: list[DrawnBox], axis: int, size: int) -> int:
    if not boxes:
        return size // 2
    centres = [(b.box[axis] + b.box[axis + 3]) / 2 for b in boxes]
    return int(np.clip(np.median(centres), 0, size - 1))


def draw_case(
    image_hu: np.ndarray,
    spacing_zyx: tuple[float, float, float],
    predicted: list[DrawnBox],
    ground_truth: list[DrawnBox] | None,
    path: Path,
    title: str = "",
) -> Path:
    """Write a PNG with three views of `image_hu` [z, y, x] and the boxes; returns `path`."""
    level, width = WINDOW_LEVEL_HU
    ground_truth = ground_truth or []
    colours = class_colours([b.name for b in predicted + ground_truth])
    figure, axes = plt.subplots(1, 3, figsize=(15, 5.6), dpi=100)
    for ax, (view, axis, (rows, cols)) in zip(axes, VIEWS):
        index = _slice_index(predicted or ground_truth, axis, image_hu.shape[axis])
        plane = np.take(image_hu, index, axis=axis)
        origin = "upper" if view == "axial" else "lower"
        ax.imshow(plane, cmap="gray", vmin=level - width / 2, vmax=level + width / 2, origin=origin,
                  aspect=spacing_zyx[rows] / spacing_zyx[cols], interpolation="bilinear")
        for boxes, style in ((ground_truth, "--"), (predicted, "-")):
            for drawn in boxes:
                b = np.asarray(drawn.box, dtype=float)
                corner = (b[cols] - 0.5, b[rows] - 0.5)
                rectangle = Rectangle(corner, b[cols + 3] - b[cols], b[rows + 3] - b[rows], fill=False,
                                      edgecolor=colours[drawn.name], linestyle=style, linewidth=1.4)
                ax.add_patch(rectangle)
                if style == "-":
                    text_row = b[rows] - 0.5 if origin == "upper" else b[rows + 3] - 0.5
                    ax.text(b[cols] - 0.5, text_row, drawn.name, color=colours[drawn.name], fontsize=6,
                            va="bottom" if origin == "upper" else "top")
        ax.set_title(f"{view} (slice {index})", fontsize=10)
        ax.set_axis_off()
    figure.suptitle(title + ("   solid: predicted, dashed: ground truth" if ground_truth else "   boxes: predicted"), fontsize=10)
    figure.tight_layout()
    with atomic_path(path, suffix=".png") as temporary:
        figure.savefig(temporary, format="png")
    plt.close(figure)
    return Path(path)
