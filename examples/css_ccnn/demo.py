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


def _figures(cfg: Config, out: Path, seed: int) -> dict:
    from .data.transforms import cell_counts, density_map, resize_for_test
    from .evaluate import ModelPredictor
    from .plots import plot_count_histograms, plot_curves, plot_predictions
    from .stage2 import build_prior
    from .training import resolve_device

    fig_dir = out / "figures"
    fig_dir.mkdir(parents=True, exist_ok=True)
    device = resolve_device(cfg.device)
    sdir = pipeline.seed_dir(out, seed)
    models = {}
    for title, sub in (("CSS-CCNN", "stage2_plain"), ("CSS-CCNN++", "stage2_plus")):
        path = sdir / sub / "best.pt"
        if path.is_file():
            models[title] = ModelPredictor(pipeline.load_model(cfg, path), device)
    test = pipeline.open_test(cfg)
    rows, cells = [], {name: [] for name in models}
    cells["ground truth"] = []
    cell = cell_size(cfg)
    for i, sample in enumerate(test):
        image, points = resize_for_test(
            sample.image, sample.points, min_side=cfg.data.min_side, max_side=cfg.data.max_side
        )
        gt = density_map(points, image.shape[:2], sigma=1.0)
        maps = {name: m(image) for name, m in models.items()}
        for name, d in [*maps.items(), ("ground truth", gt)]:
            cells[name].append(
                cell_counts(torch.as_tensor(d, dtype=torch.float64)[None, None], cell)
                .flatten()
                .numpy()
            )
        if i < 4:
            rows.append({"image": image, "maps": maps, "gt": gt, "gt_count": len(points)})
    paths = {"predictions": str(plot_predictions(rows, fig_dir / "predictions.png"))}

    curves: dict = {
        "stage 1: validation rotation accuracy": {},
        "stage 2: validation Sinkhorn loss": {},
    }
    for sd in sorted(out.glob("seed*")):
        for sub, panel, label in (
            ("stage1", "stage 1: validation rotation accuracy", sd.name),
            ("stage2_plain", "stage 2: validation Sinkhorn loss", f"CSS-CCNN {sd.name}"),
            ("stage2_plus", "stage 2: validation Sinkhorn loss", f"CSS-CCNN++ {sd.name}"),
        ):
            hist = sd / sub / "history.json"
            if hist.is_file():
                h = json.loads(hist.read_text())
                curves[panel][label] = ([e["epoch"] for e in h], [e["val"] for e in h])
    paths["curves"] = str(plot_curves(curves, fig_dir / "curves.png"))

    n_train = len(pipeline.open_train(cfg, labels=False))
    prior = build_prior(pipeline.for_seed(cfg, seed), num_images=n_train)
    samples = {
        "prior": prior.sample(20_000, generator=torch.Generator().manual_seed(0)).double().numpy()
    }
    samples.update({name: np.concatenate(v) for name, v in cells.items() if v})
    paths["histograms"] = str(plot_count_histograms(samples, fig_dir / "histograms.png"))
    return paths


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
    """Run the whole pipeline for seeds ``0..seeds-1``; returns the demo summary."""
    from .baselines import train_supervised
    from .cli import _make_synthetic
    from .stage1 import train_stage1
    from .stage2 import train_stage2

    t0 = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if not data_root_given:
        cfg.data.root = str(out / "data")
    if not (Path(cfg.data.root) / "synthetic.json").is_file():
        print(f"[demo] generating the synthetic dataset in {cfg.data.root}", flush=True)
        _make_synthetic(cfg)
    save_config(cfg, out / "config.json")
    timings: dict = {}
    for seed in range(seeds):
        c = pipeline.for_seed(cfg, seed)
        sdir = pipeline.seed_dir(out, seed)
        train = pipeline.open_train(c, labels=False)
        t = time.perf_counter()
        s1 = train_stage1(train, c, sdir / "stage1", progress=progress)
        timings[f"seed{seed}/stage1"] = time.perf_counter() - t
        print(
            f"[demo] seed {seed}: stage 1 rotation accuracy {s1.best_accuracy:.3f} "
            f"(epoch {s1.fit.best_epoch}) in {timings[f'seed{seed}/stage1']:.0f} s",
            flush=True,
        )
        runs = [("plain", s1.best_path, "stage2_plain"), ("plus", s1.best_path, "stage2_plus")]
        if ablation:
            runs.append(("plain", None, "stage2_nostage1"))
        for variant, fen, sub in runs:
            t = time.perf_counter()
            r = train_stage2(
                train, c, sdir / sub, fen_checkpoint=fen, variant=variant, progress=progress
            )
            timings[f"seed{seed}/{sub}"] = time.perf_counter() - t
            print(
                f"[demo] seed {seed}: {sub} val loss {r.fit.best_metric:.4g} (epoch {r.fit.best_epoch}) "
                f"in {timings[f'seed{seed}/{sub}']:.0f} s",
                flush=True,
            )
        if supervised:
            labeled = pipeline.open_train(c, labels=True)
            for mode, fen in (("full", None), ("ssl", s1.best_path)):
                t = time.perf_counter()
                train_supervised(
                    labeled,
                    c,
                    sdir / f"supervised_{mode}",
                    mode=mode,
                    fen_checkpoint=fen,
                    progress=progress,
                )
                timings[f"seed{seed}/supervised_{mode}"] = time.perf_counter() - t
    t = time.perf_counter()
    table, _ = pipeline.evaluate_run(cfg, out, list(range(seeds)), progress=progress)
    timings["evaluate"] = time.perf_counter() - t
    print(table.markdown(), flush=True)
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
    verdict = (
        "MET"
        if claim["css_beats_naive_by_20pct"] and claim["random_worse_than_both"]
        else "NOT met"
    )
    print(
        f"[demo] claim {verdict}: CSS-CCNN MAE {claim['css_mae']:.1f} = {claim['css_ratio_to_best_naive']:.2f} × "
        f"best of Mean ({claim['mean_mae']:.1f}) / P_prior ({claim['prior_mae']:.1f}); "
        f"Random {claim['random_mae']:.1f}; CSS-CCNN++ {claim['css_plus_mae']:.1f}",
        flush=True,
    )
    print(f"[demo] figures in {out / 'figures'}; summary {out / 'demo_summary.json'}", flush=True)
    return summary
