"""`progress.png`: training losses, learning rate and validation metrics over epochs (matplotlib Agg)."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

from autodetr.atomic_io import atomic_path


def _finite(values):
    return [v if v is not None and isinstance(v, (int, float)) and math.isfinite(v) else float("nan") for v in values]


def plot_progress(history: dict[str, Any], path: str | Path, title: str = "", components: Sequence[str] | None = None) -> None:
    """Three panels: loss per epoch (train mean and the unweighted `components` of the last decoder
    layer, default all), learning rate at the end of each epoch, validation metrics (epochs 1-based)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    epochs = history.get("epoch", [])
    figure, axes = plt.subplots(3, 1, figsize=(9, 10), sharex=True)
    axes[0].plot(epochs, _finite(history.get("train_loss", [])), "b-", label="train loss (weighted total)", linewidth=2)
    for name, values in sorted(history.get("train_components", {}).items()):
        if components is not None and name not in components:
            continue
        if len(values) == len(epochs):
            axes[0].plot(epochs, _finite(values), "--", label=name, linewidth=1)
    axes[0].set_ylabel("loss")
    axes[0].legend(loc="upper right", fontsize=7, ncol=2)
    axes[0].grid(alpha=0.3)
    axes[1].plot(epochs, _finite(history.get("lr", [])), "k-")
    axes[1].set_ylabel("learning rate")
    axes[1].grid(alpha=0.3)
    validation = history.get("validation", [])
    if validation:
        val_epochs = [v["epoch"] for v in validation]
        for key, style in (("mAP", "r-o"), ("AP50", "g-o"), ("AP75", "m-o"), ("mAR", "c-o")):
            axes[2].plot(val_epochs, _finite([v.get(key) for v in validation]), style, label=key, markersize=3)
        axes[2].legend(loc="lower right", fontsize=8)
    else:
        axes[2].text(0.5, 0.5, "no validation", ha="center", va="center", transform=axes[2].transAxes)
    axes[2].set_ylabel("validation (COCO, 3D)")
    axes[2].set_xlabel("epoch")
    axes[2].set_ylim(-0.02, 1.02)
    axes[2].grid(alpha=0.3)
    from matplotlib.ticker import MaxNLocator

    axes[2].xaxis.set_major_locator(MaxNLocator(integer=True))
    if title:
        figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    with atomic_path(path, suffix=".png") as temporary:
        figure.savefig(temporary, dpi=80)
    plt.close(figure)
