"""The figures of the Priors page (docs/priors.md), computed from sinkmatch.priors.

The site build calls :func:`render` (docs/scripts/hooks.py adds the PNGs to the site as
``figures/priors/*.png``), so the figures always show what the library computes today; nothing is
committed. To look at them without building the site::

    python docs/scripts/plot_priors.py --out /tmp/prior-figures

Every curve is an exact pdf/cdf of the library except the histogram of draws in ``fit.png``;
the draws use a fixed seed, so the figures are the same from build to build.
"""

from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

import numpy as np

# The ShanghaiTech Part A setting used throughout docs/priors.md.
CF_MAX, NUM_IMAGES, ALPHA = 3000, 482, 2.0


def _figure(width: float = 6.4, height: float = 3.6, ncols: int = 1):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(1, ncols, figsize=(width, height), constrained_layout=True)


def _png(fig) -> bytes:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, metadata={"Software": None})
    plt.close(fig)
    return buf.getvalue()


def plot_density() -> bytes:
    """Densities: pure power law, truncated power law, and the CountPrior with its head."""
    import sinkmatch as sm

    prior = sm.CountPrior.from_max_count(CF_MAX, num_images=NUM_IMAGES, alpha=ALPHA)
    tpl = sm.TruncatedPowerLaw(ALPHA, prior.lam)
    pareto = sm.Pareto(ALPHA)
    c = np.geomspace(0.05, 400, 600)
    fig, ax = _figure()
    ax.loglog(c, pareto.pdf(c), "--", color="0.5", label=rf"power law $c^{{-{ALPHA:g}}}$")
    ax.loglog(c, tpl.pdf(c), label=rf"truncated, $\lambda$ = {prior.lam:.4f}")
    ax.loglog(c, prior.pdf(c), lw=2, label="CountPrior (head on [0, t])")
    ax.axvline(prior.c_max, color="C3", lw=0.8)
    ax.text(prior.c_max * 1.05, 1e-1, r"$C_{\max}$", color="C3")
    ax.axvline(prior.threshold, color="C2", lw=0.8)
    ax.text(prior.threshold * 1.05, 1e-5, "t", color="C2")
    ax.set(xlabel="cell count c", ylabel="density p(c)", ylim=(1e-7, 2))
    ax.set_title(f"Cf_max = {CF_MAX}, S = {NUM_IMAGES}, 3 x 3 cells, 4 crops", fontsize=10)
    ax.legend(fontsize=8, loc="lower left")
    return _png(fig)


def plot_lambda() -> bytes:
    """The λ equation: 1 - F(C_max) against λ, exact (two grids) and the legacy function."""
    import sinkmatch as sm
    from sinkmatch.priors.legacy import legacy_cdf

    lam = np.linspace(0.001, 0.06, 300)
    fig, ax = _figure()
    for grid, style in (((3, 3), "-"), ((4, 4), "-.")):
        c_max = CF_MAX / (grid[0] * grid[1] * 4)
        sf = [float(sm.TruncatedPowerLaw(ALPHA, v).sf(c_max)) for v in lam]
        root = sm.solve_lambda(CF_MAX, num_images=NUM_IMAGES, alpha=ALPHA, grid=grid)
        line = ax.semilogy(lam, sf, style, label=f"exact, {grid[0]} x {grid[1]} cells")[0]
        ax.plot([root], [1 / NUM_IMAGES], "o", color=line.get_color())
    legacy = 1.0 - legacy_cdf(CF_MAX / 64, ALPHA, lam)
    ax.semilogy(lam, legacy, ":", color="k", label="legacy (unnormalized), 4 x 4")
    lam_legacy = sm.legacy_lambda(CF_MAX, NUM_IMAGES, alpha=ALPHA)
    ax.plot([lam_legacy], [1.0 - legacy_cdf(CF_MAX / 64, ALPHA, lam_legacy)], "ks")
    ax.axhline(1 / NUM_IMAGES, color="C3", lw=0.8)
    ax.text(0.045, 1.15 / NUM_IMAGES, "1/S", color="C3")
    ax.set(xlabel=r"$\lambda$", ylabel=r"$1 - F(C_{\max})$")
    ax.legend(fontsize=8)
    return _png(fig)


def plot_legacy() -> bytes:
    """CDFs of the legacy prior and the exact priors (4 x 4 and 3 x 3 cells)."""
    import sinkmatch as sm

    priors = {
        "legacy": sm.CountPrior.from_max_count(CF_MAX, num_images=NUM_IMAGES, mode="legacy"),
        "exact, 4 x 4 cells": sm.CountPrior.from_max_count(
            CF_MAX, num_images=NUM_IMAGES, grid=(4, 4)
        ),
        "exact, 3 x 3 cells": sm.CountPrior.from_max_count(CF_MAX, num_images=NUM_IMAGES),
    }
    c = np.linspace(0, 12, 600)
    fig, (left, right) = _figure(width=8.0, ncols=2)
    for (name, p), style in zip(priors.items(), (":", "-.", "-")):
        left.plot(c, p.cdf(c), style, label=f"{name}: t = {p.threshold:.3g}")
        tail = np.geomspace(1, 300, 300)
        right.loglog(tail, p.sf(tail), style, label=rf"{name}: $\lambda$ = {p.lam:.3g}")
    left.set(xlabel="cell count c", ylabel="F(c)", title="head")
    right.set(xlabel="cell count c", ylabel="1 - F(c)", title="tail", ylim=(1e-6, 1))
    left.legend(fontsize=7, loc="lower right")
    right.legend(fontsize=7, loc="lower left")
    return _png(fig)


def plot_fit() -> bytes:
    """Draws of the prior and the four maximum-likelihood fits above t (survival functions)."""
    import torch

    import sinkmatch as sm

    prior = sm.CountPrior.from_max_count(CF_MAX, num_images=NUM_IMAGES, alpha=ALPHA)
    draws = prior.sample(20_000, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x = np.sort(draws.numpy())
    x = x[x >= prior.threshold]
    fits = {
        "truncated power law": sm.fit_truncated_power_law(x, x_min=prior.threshold),
        "power law": sm.fit_power_law(x, x_min=prior.threshold),
        "log-normal": sm.fit_lognormal(x, x_min=prior.threshold),
        "exponential": sm.fit_exponential(x, x_min=prior.threshold),
    }
    fig, ax = _figure()
    ax.loglog(x, 1.0 - np.arange(x.size) / x.size, ".", ms=2, color="0.6", label="draws (CCDF)")
    grid = np.geomspace(x[0], x[-1], 300)
    for name, fit in fits.items():
        sf = 1.0 - np.asarray(fit.prior.cdf(grid), dtype=np.float64)
        ax.loglog(grid, sf, label=f"{name} (log-lik {fit.loglik:.0f})")
    ax.set(xlabel="cell count c", ylabel=r"P(C $\geq$ c | C $\geq$ t)", ylim=(1 / x.size, 1.5))
    ax.legend(fontsize=8, loc="lower left")
    return _png(fig)


FIGURES = {
    "density.png": plot_density,
    "lambda.png": plot_lambda,
    "legacy.png": plot_legacy,
    "fit.png": plot_fit,
}


def render() -> dict[str, bytes]:
    """Every figure of the Priors page: file name -> PNG bytes."""
    return {name: make() for name, make in FIGURES.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for the PNG files")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    for name, data in render().items():
        (args.out / name).write_bytes(data)
        print(args.out / name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
