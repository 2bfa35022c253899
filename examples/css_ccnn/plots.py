"""Figures of the demo (matplotlib, Agg backend, imported lazily).

* :func:`plot_predictions` — image | predictions | ground truth, like the paper's Fig. 4;
* :func:`plot_curves` — training curves (stage-1 rotation accuracy, stage-2 validation loss);
* :func:`plot_count_histograms` — predicted cell counts vs prior samples: survival functions and a
  Q-Q plot against the prior.
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


def _label(name: str, values: np.ndarray) -> str:
    return f"{name} (mean {values.mean():.2f}, {100 * np.mean(values < 0.05):.0f} % < 0.05)"


def plot_count_histograms(samples: dict, path: str | Path, *, floor: float = 1e-2) -> Path:
    """Predicted vs prior cell counts: survival functions and a Q-Q plot against the prior.

    Left: P(cell count > x) for every sample set on log-log axes (the tails). Right: the
    quantiles of every set against the prior's (the same probabilities), with the diagonal: a
    set that the Sinkhorn loss matched to the prior lies on it. Counts below ``floor`` are
    drawn at ``floor``; the legend gives each set's mean and share of near-empty cells.

    Args:
        samples: ``{label: 1-D array of cell counts}``; ``"prior"`` is the reference of the
            Q-Q plot (e.g. prior, CSS-CCNN, CSS-CCNN++, ground truth).
    """
    plt = _plt()
    sets = {k: np.sort(np.asarray(v, dtype=np.float64).ravel()) for k, v in samples.items()}
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    probs = np.linspace(0.005, 0.995, 199)
    ref = np.quantile(sets["prior"], probs) if "prior" in sets else None
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (name, values) in enumerate(sets.items()):
        colour = colours[i % len(colours)]
        x = np.maximum(values, floor)
        surv = 1.0 - np.arange(len(x)) / len(x)
        left.plot(x, surv, lw=1.2, color=colour, label=_label(name, values))
        if ref is not None and name != "prior":
            q = np.maximum(np.quantile(values, probs), floor)
            right.plot(
                np.maximum(ref, floor), q, marker=".", ms=3, lw=0.8, color=colour, label=name
            )
    left.set(xscale="log", yscale="log", xlabel="cell count x", ylabel="P(cell count > x)")
    left.set_title("cell counts of the test images vs the prior", fontsize=9)
    left.legend(fontsize=7)
    if ref is not None:
        lim = [floor, max(float(np.max(ref)), floor * 10)]
        right.plot(lim, lim, color="gray", lw=0.8, ls="--", label="= prior")
        right.set(xscale="log", yscale="log", xlabel="prior quantile", ylabel="quantile")
        right.set_title("Q-Q against the prior (on the diagonal: matched)", fontsize=9)
        right.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)
