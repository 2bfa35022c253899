"""Figures of the demo (matplotlib, Agg backend, imported lazily).

* :func:`plot_predictions` — image | predictions | ground truth, like the paper's Fig. 4;
* :func:`plot_curves` — training curves (stage-1 rotation accuracy, stage-2 validation loss);
* :func:`plot_count_histograms` — predicted cell counts vs prior samples on log axes.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

__all__ = ["plot_count_histograms", "plot_curves", "plot_predictions"]


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_predictions(rows: Sequence[dict], path: str | Path) -> Path:
    """Save a grid: one row per image with the image, each named density map and the truth.

    Args:
        rows: dicts with ``image`` ((H, W, 3) uint8), ``maps`` ({title: (h, w) density}),
            ``gt`` ((h, w) density) and ``gt_count``.
    """
    plt = _plt()
    ncols = 2 + max(len(r["maps"]) for r in rows)
    fig, axes = plt.subplots(
        len(rows), ncols, figsize=(2.6 * ncols, 2.6 * len(rows)), squeeze=False
    )
    for r, row in enumerate(rows):
        axes[r, 0].imshow(row["image"])
        axes[r, 0].set_title("image", fontsize=8)
        panels = [*row["maps"].items(), (f"ground truth ({row['gt_count']:.0f})", row["gt"])]
        vmax = max(float(np.max(row["gt"])), 1e-6)
        for c, (title, density) in enumerate(panels, start=1):
            axes[r, c].imshow(density, cmap="jet", vmin=0.0, vmax=vmax)
            label = (
                title
                if title.startswith("ground truth")
                else f"{title} ({float(np.sum(density)):.0f})"
            )
            axes[r, c].set_title(label, fontsize=8)
        for ax in axes[r]:
            ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def plot_curves(curves: dict, path: str | Path) -> Path:
    """Save one panel per group of curves.

    Args:
        curves: ``{panel title: {line label: (epochs, values)}}``.
    """
    plt = _plt()
    fig, axes = plt.subplots(1, len(curves), figsize=(4.5 * len(curves), 3.4), squeeze=False)
    for ax, (title, lines) in zip(axes[0], curves.items()):
        for label, (x, y) in lines.items():
            ax.plot(x, y, label=label, lw=1.2)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("epoch")
        if "loss" in title:
            ax.set_yscale("log")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def plot_count_histograms(samples: dict, path: str | Path, *, bins: int = 40) -> Path:
    """Histogram (density) of cell counts for each labeled sample set, log-log axes.

    Args:
        samples: ``{label: 1-D array of cell counts}`` (e.g. prior, CSS-CCNN, truth).
    """
    plt = _plt()
    positive = np.concatenate([np.asarray(v)[np.asarray(v) > 0] for v in samples.values()])
    lo, hi = max(float(positive.min()), 1e-2), float(positive.max())
    edges = np.logspace(np.log10(lo), np.log10(hi * 1.01), bins)
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for label, values in samples.items():
        values = np.asarray(values, dtype=np.float64)
        hist, _ = np.histogram(values, bins=edges, density=True)
        centres = np.sqrt(edges[1:] * edges[:-1])
        ax.plot(centres[hist > 0], hist[hist > 0], marker=".", lw=1, label=label)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("cell count")
    ax.set_ylabel("density")
    ax.set_title("cell counts: predictions vs prior", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)
