"""The demo: a fresh synthetic dataset, stage 1, both stage-2 variants, the baselines, evaluation,
the results table and figures — on CPU in minutes (``cpu`` preset).

``python -m examples.css_ccnn demo [--seeds 3] [--out runs/demo]`` writes under ``OUT``:
``data/`` (the synthetic dataset, unless ``--data-root`` is given), ``seed<k>/...`` (checkpoints),
``results.{json,csv,md}`` (the table, mean ± std over seeds), ``figures/predictions.png`` (image |
CSS-CCNN | CSS-CCNN++ | ground truth, like the paper's Fig. 4), ``figures/curves.png`` and
``figures/histograms.png`` (predicted vs prior cell counts, log axes) and ``demo_summary.json``
(wall time, the bar of the paper's core claim and whether it was met).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch

from . import pipeline
from .checkpoint import atomic_write_text
from .config import Config, cell_size, save_config
from .data.transforms import cell_counts, density_map, resize_for_test
from .evaluate import ModelPredictor
from .plots import plot_count_histograms, plot_curves, plot_predictions
from .prior import build_prior, resolve_prior
from .training import resolve_device

__all__ = ["check_claim", "run_demo"]


def check_claim(summary: dict) -> dict:
    """The paper's core claim on the demo's table: CSS-CCNN's MAE ≤ 0.8 × min(Mean, P_prior) MAE
    and CCNN Random worse than both."""

    def mae(name):
        return summary[name]["mae"]["mean"] if name in summary else float("nan")

    css, mean, prior, rand = (
        mae("CSS-CCNN"),
        mae("CCNN Mean"),
        mae("CCNN P_prior"),
        mae("CCNN Random"),
    )
    best_naive = min(mean, prior)
    return {
        "css_mae": css,
        "css_plus_mae": mae("CSS-CCNN++"),
        "mean_mae": mean,
        "prior_mae": prior,
        "random_mae": rand,
        "css_ratio_to_best_naive": css / best_naive,
        "css_beats_naive_by_20pct": bool(css <= 0.8 * best_naive),
        "random_worse_than_both": bool(rand > max(mean, prior)),
    }


def _cells(density: np.ndarray, cell: int) -> np.ndarray:
    return cell_counts(torch.as_tensor(density, dtype=torch.float64)[None, None], cell).numpy()


def _prediction_figure(cfg: Config, out: Path, seed: int, fig_dir: Path) -> tuple[Path, dict]:
    """Image | CSS-CCNN | CSS-CCNN++ | truth for the first test images; the cell counts of every
    test image per model (for the histogram)."""
    device = resolve_device(cfg.device)
    models = {}
    for title, sub in (("CSS-CCNN", "stage2_plain"), ("CSS-CCNN++", "stage2_plus")):
        path = pipeline.seed_dir(out, seed) / sub / "best.pt"
        if path.is_file():
            models[title] = ModelPredictor(pipeline.load_model(cfg, path), device)
    rows, cells = [], {name: [] for name in [*models, "ground truth"]}
    cell = cell_size(cfg)
    for i, sample in enumerate(pipeline.open_test(cfg)):
        image, points = resize_for_test(
            sample.image,
            sample.points,
            min_side=cfg.data.min_side,
            max_side=cfg.data.max_side,
            scale=cfg.data.scale,
        )
        gt = density_map(points, image.shape[:2], sigma=1.0)
        maps = {name: m(image) for name, m in models.items()}
        for name, d in [*maps.items(), ("ground truth", gt)]:
            cells[name].append(_cells(d, cell).ravel())
        if i < 4:
            rows.append({"image": image, "maps": maps, "gt": gt, "gt_count": len(points)})
    return plot_predictions(rows, fig_dir / "predictions.png"), cells


def _curves_figure(out: Path, fig_dir: Path) -> Path:
    """Stage-1 validation accuracy and stage-2 validation loss of every seed."""
    acc, loss = "stage 1: validation rotation accuracy", "stage 2: validation Sinkhorn loss"
    curves: dict = {acc: {}, loss: {}}
    for sd in sorted(out.glob("seed*")):
        for sub, panel, label in (
            ("stage1", acc, sd.name),
            ("stage2_plain", loss, f"CSS-CCNN {sd.name}"),
            ("stage2_plus", loss, f"CSS-CCNN++ {sd.name}"),
        ):
            hist = sd / sub / "history.json"
            if hist.is_file():
                h = json.loads(hist.read_text())
                curves[panel][label] = ([e["epoch"] for e in h], [e["val"] for e in h])
    return plot_curves(curves, fig_dir / "curves.png")


def _figures(cfg: Config, out: Path, seed: int) -> dict:
    fig_dir = out / "figures"
    fig_dir.mkdir(parents=True, exist_ok=True)
    predictions, cells = _prediction_figure(cfg, out, seed, fig_dir)
    prior = build_prior(resolve_prior(cfg, pipeline.open_train(cfg, labels=False)))
    draws = prior.sample(20_000, generator=torch.Generator().manual_seed(0)).double().numpy()
    samples = {"prior": draws, **{name: np.concatenate(v) for name, v in cells.items() if v}}
    return {
        "predictions": str(predictions),
        "curves": str(_curves_figure(out, fig_dir)),
        "histograms": str(plot_count_histograms(samples, fig_dir / "histograms.png")),
    }


def _print_claim(claim: dict) -> None:
    met = claim["css_beats_naive_by_20pct"] and claim["random_worse_than_both"]
    print(
        f"[demo] claim {'MET' if met else 'NOT met'}: CSS-CCNN MAE {claim['css_mae']:.1f} = "
        f"{claim['css_ratio_to_best_naive']:.2f} × best of Mean ({claim['mean_mae']:.1f}) / "
        f"P_prior ({claim['prior_mae']:.1f}); Random {claim['random_mae']:.1f}; "
        f"CSS-CCNN++ {claim['css_plus_mae']:.1f}",
        flush=True,
    )


def run_demo(
    cfg: Config,
    out: str | Path,
    *,
    seeds: int = 3,
    supervised: bool = True,
    ablation: bool = False,
    progress: bool = True,
    data_root_given: bool = False,
) -> dict:
    """Run the whole pipeline for seeds ``0..seeds-1``; returns the demo summary.

    Args:
        cfg: the configuration (``cpu`` preset on the command line).
        out: the run folder; the synthetic dataset goes to ``out/data`` unless
            ``data_root_given``.
        seeds: independent runs (seeds ``0..seeds-1``).
        supervised: also train the labeled baselines.
        ablation: also train "Without Stage 1".
        progress: show progress bars.
        data_root_given: use ``cfg.data.root`` as it is (any labeled dataset).
    """
    t0 = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if not data_root_given:
        cfg.data.root = str(out / "data")
        print(f"[demo] synthetic dataset ({cfg.data.synthetic_family}) in {cfg.data.root}")
        pipeline.make_synthetic_dataset(cfg)
    if not pipeline.has_labels(cfg, "test"):
        raise ValueError(
            f"the demo evaluates on labeled test images and {cfg.data.root} has none; train on "
            "unlabeled data with: python -m examples.css_ccnn train --data-root DIR --cf-max N"
        )
    run = pipeline.run_experiment(
        cfg,
        out,
        list(range(seeds)),
        supervised=supervised,
        ablation=ablation,
        progress=progress,
    )
    cfg, table, timings = run["config"], run["table"], run["timings"]
    save_config(cfg, out / "config.json")
    t = time.perf_counter()
    figures = _figures(cfg, out, 0)
    timings["figures"] = time.perf_counter() - t
    claim = check_claim(table.summary())
    summary = {
        "seeds": seeds,
        "wall_seconds": time.perf_counter() - t0,
        "torch_threads": torch.get_num_threads(),
        "claim": claim,
        "timings": timings,
        "figures": figures,
        "results": {k: str(out / f"results.{k}") for k in ("json", "csv", "md")},
    }
    atomic_write_text(out / "demo_summary.json", json.dumps(summary, indent=2) + "\n")
    _print_claim(claim)
    print(f"[demo] figures in {out / 'figures'}; summary {out / 'demo_summary.json'}", flush=True)
    return summary
