"""The steps of a CSS-CCNN experiment on one run directory, shared by the CLI and the demo.

Layout of a run directory ``OUT``::

    OUT/seed<k>/stage1/            best.pt last.pt history.json config.json
    OUT/seed<k>/stage2_plain/      CSS-CCNN
    OUT/seed<k>/stage2_plus/       CSS-CCNN++
    OUT/seed<k>/stage2_nostage1/   ablation "Without Stage 1" (optional)
    OUT/seed<k>/supervised_full/   CCNN Fully Supervised
    OUT/seed<k>/supervised_ssl/    CCNN Self-Supervised with Labels
    OUT/results.{json,csv,md}      the table (mean ± std over seeds)
    OUT/predictions.json           predicted and true test counts per method and seed

Only :func:`open_test` and the labeled baselines open datasets with ``labels=True``; the training
stages receive ``open_train(cfg, labels=False)``.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .config import Config, cell_size
from .data.datasets import CrowdDataset, open_dataset

__all__ = [
    "LABEL_FREE",
    "METHOD_ORDER",
    "evaluate_run",
    "for_seed",
    "open_test",
    "open_train",
    "seed_dir",
]

METHOD_ORDER = (
    "CCNN Fully Supervised",
    "CCNN Self-Supervised with Labels",
    "CCNN Random",
    "CCNN Mean",
    "CCNN P_prior",
    "Without Stage 1",
    "CSS-CCNN",
    "CSS-CCNN++",
)
LABEL_FREE = ("CCNN Random", "CCNN P_prior", "Without Stage 1", "CSS-CCNN", "CSS-CCNN++")
_NOTES = {
    "CCNN Fully Supervised": "labeled reference: whole network from scratch, MSE on density maps",
    "CCNN Self-Supervised with Labels": "labeled reference: stage-1 FEN frozen, head trained with MSE",
    "CCNN Random": "stage-1 FEN + untrained density head (no Sinkhorn training)",
    "CCNN Mean": "labeled reference: the mean training-image count for every image",
    "CCNN P_prior": "every cell of the image drawn from the prior",
    "Without Stage 1": "ablation: stage 2 on a random, frozen FEN",
}
_CHECKPOINTS = {
    "CSS-CCNN": "stage2_plain",
    "CSS-CCNN++": "stage2_plus",
    "Without Stage 1": "stage2_nostage1",
    "CCNN Fully Supervised": "supervised_full",
    "CCNN Self-Supervised with Labels": "supervised_ssl",
}


def seed_dir(out: str | Path, seed: int) -> Path:
    return Path(out) / f"seed{seed}"


def for_seed(cfg: Config, seed: int) -> Config:
    """A copy of ``cfg`` with ``seed`` set."""
    cfg = copy.deepcopy(cfg)
    cfg.seed = int(seed)
    return cfg


def open_train(cfg: Config, *, labels: bool = False) -> CrowdDataset:
    """The training images (``labels=False`` for every label-free step)."""
    return open_dataset(
        cfg.data.root, kind=cfg.data.kind, split="train", labels=labels, fold=cfg.data.fold
    )


def open_test(cfg: Config) -> CrowdDataset:
    """The labeled test set, for evaluation only."""
    return open_dataset(
        cfg.data.root, kind=cfg.data.kind, split="test", labels=True, fold=cfg.data.fold
    )


def load_model(cfg: Config, path: str | Path):
    from .checkpoint import load_checkpoint
    from .model import CSSCCNN

    model = CSSCCNN(width=cfg.model.width, rotations=cfg.model.rotations)
    model.load_state_dict(load_checkpoint(path)["model"])
    return model.eval()


def predictors_for_seed(
    cfg: Config, out: str | Path, seed: int, *, train_labeled: CrowdDataset | None
) -> dict[str, Any]:
    """Every predictor available for ``seed`` under ``out`` (missing checkpoints are skipped)."""
    from .baselines import mean_training_count, random_baseline_model
    from .evaluate import MeanPredictor, ModelPredictor, PriorPredictor
    from .stage2 import build_prior
    from .training import resolve_device

    cfg = for_seed(cfg, seed)
    device = resolve_device(cfg.device)
    sdir = seed_dir(out, seed)
    found: dict[str, Any] = {}
    for method, sub in _CHECKPOINTS.items():
        path = sdir / sub / "best.pt"
        if path.is_file():
            found[method] = ModelPredictor(load_model(cfg, path), device)
    stage1 = sdir / "stage1" / "best.pt"
    if stage1.is_file():
        found["CCNN Random"] = ModelPredictor(random_baseline_model(cfg, stage1, seed=seed), device)
    n_train = len(open_train(cfg, labels=False))
    prior = build_prior(cfg, num_images=n_train)
    cell = cell_size(cfg)
    found["CCNN P_prior"] = PriorPredictor(
        prior, cell=cell, seed=seed, draws=cfg.baselines.prior_draws
    )
    if train_labeled is not None:
        found["CCNN Mean"] = MeanPredictor(mean_training_count(train_labeled))
    return {m: found[m] for m in METHOD_ORDER if m in found}


def evaluate_run(
    cfg: Config,
    out: str | Path,
    seeds: list[int],
    *,
    with_labeled_baselines: bool = True,
    progress: bool = True,
) -> Any:
    """Evaluate everything found under ``out`` for ``seeds``; write ``out/results.*``.

    Returns:
        (ResultsTable, dict) — the table and, per seed and method, the per-image predictions.
    """
    from .evaluate import ResultsTable, evaluate

    test = open_test(cfg)
    train_labeled = open_train(cfg, labels=True) if with_labeled_baselines else None
    table = ResultsTable()
    per_image: dict[str, Any] = {}
    rows: dict[str, list] = {}
    for seed in seeds:
        torch.manual_seed(seed)
        for method, predictor in predictors_for_seed(
            cfg, out, seed, train_labeled=train_labeled
        ).items():
            result = evaluate(
                predictor,
                test,
                min_side=cfg.data.min_side,
                max_side=cfg.data.max_side,
                game_levels=cfg.eval.game_levels,
                progress=progress,
                desc=f"eval {method} seed {seed}",
            )
            rows.setdefault(method, []).append(result.metrics)
            per_image.setdefault(method, {})[str(seed)] = {
                "pred": result.predicted,
                "true": result.true,
            }
    for method in METHOD_ORDER:
        for metrics in rows.get(method, []):
            table.add(method, metrics, note=_NOTES.get(method))
    table.save(out)
    from .checkpoint import atomic_write_text

    atomic_write_text(Path(out) / "predictions.json", json.dumps(per_image, indent=1) + "\n")
    return table, per_image


def prior_mean_count(cfg: Config, n_train: int, n: int = 100_000) -> float:
    """Mean cell count of the prior (diagnostics)."""
    from .stage2 import build_prior

    prior = build_prior(cfg, num_images=n_train)
    return float(np.mean(prior.sample(n, generator=torch.Generator().manual_seed(0)).numpy()))
