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

Read :func:`train_seed` first: it is the whole experiment for one seed, in the order of the paper
(stage 1, then the two stage-2 variants on its frozen FEN, then the labeled references), and the
``demo`` and the command line call it.
"""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path
from typing import Any

import torch

from .baselines import mean_training_count, random_baseline_model, train_supervised
from .checkpoint import atomic_write_text, load_weights
from .config import Config, cell_size
from .data.datasets import CrowdDataset, DatasetError, open_dataset
from .data.synthetic import make_synthetic
from .evaluate import (
    MeanPredictor,
    ModelPredictor,
    PriorPredictor,
    ResultsTable,
    evaluate,
)
from .model import CSSCCNN
from .prior import build_prior, prior_report, resolve_prior, training_shapes
from .stage1 import train_stage1
from .stage2 import train_stage2
from .training import resolve_device

__all__ = [
    "LABEL_FREE",
    "METHOD_ORDER",
    "evaluate_run",
    "for_seed",
    "has_labels",
    "load_model",
    "make_synthetic_dataset",
    "open_test",
    "open_train",
    "predictors_for_seed",
    "prepare_prior",
    "run_experiment",
    "seed_dir",
    "train_seed",
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
    "CCNN Self-Supervised with Labels": (
        "labeled reference: stage-1 FEN frozen, head trained with MSE"
    ),
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
    """The folder of one seed's models: ``out/seed<seed>``."""
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


def has_labels(cfg: Config, split: str) -> bool:
    """Whether the ``split`` images of ``data.root`` exist with annotations (nothing is read
    but the file listing)."""
    try:
        open_dataset(
            cfg.data.root, kind=cfg.data.kind, split=split, labels=True, fold=cfg.data.fold
        )
    except (DatasetError, ValueError):
        return False
    return True


def make_synthetic_dataset(
    cfg: Config,
    *,
    num_train: int | None = None,
    num_test: int | None = None,
    image_size: int | None = None,
    overwrite: bool = False,
) -> Path:
    """Write (or reuse) the synthetic dataset the ``data.synthetic_*`` settings describe, at
    ``data.root``; the keyword arguments override those settings."""
    d = cfg.data
    size = image_size or d.synthetic_image_size
    counts = (d.synthetic_count_min, d.synthetic_count_max)
    if (counts[0] is None) != (counts[1] is None):
        raise ValueError(
            "data.synthetic_count_min and data.synthetic_count_max must be given together, got "
            f"{counts}"
        )
    return make_synthetic(
        d.root,
        family=d.synthetic_family,
        num_train=num_train or d.synthetic_num_train,
        num_test=num_test or d.synthetic_num_test,
        image_size=None if size is None else (size, size),
        count_range=None if counts[0] is None else counts,
        seed=d.synthetic_seed,
        overwrite=overwrite,
    )


def load_model(cfg: Config, path: str | Path) -> CSSCCNN:
    """A trained network from a checkpoint (``state_dict`` under ``"model"``), in eval mode."""
    model = CSSCCNN(width=cfg.model.width, rotations=cfg.model.rotations)
    load_weights(model, path)  # errors name the file and the cause (e.g. another model.width)
    return model.eval()


def _log(message: str) -> None:
    print(message, flush=True)


def prepare_prior(cfg: Config, out: str | Path | None = None) -> Config:
    """Resolve the prior's settings from the unlabeled training images, print the consistency
    report (:func:`~examples.css_ccnn.prior.prior_report`) and save it as
    ``out/prior_report.json``; returns the resolved configuration."""
    train = open_train(cfg, labels=False)
    cfg = resolve_prior(cfg, train)
    report = prior_report(build_prior(cfg), cfg, training_shapes(train, cfg))
    _log(report.text())
    if out is not None:
        text = json.dumps({"derived": cfg.derived, "report": report.__dict__}, indent=1)
        atomic_write_text(Path(out) / "prior_report.json", text + "\n")
    return cfg


def train_seed(
    cfg: Config,
    out: str | Path,
    *,
    supervised: bool = True,
    ablation: bool = False,
    progress: bool = True,
) -> dict:
    """Train every model of one seed (``cfg.seed``) under ``out/seed<k>``; resumes.

    Stage 1 on the unlabeled training images, then CSS-CCNN and CSS-CCNN++ on its frozen FEN,
    then (``ablation``) "Without Stage 1", then (``supervised``) the two labeled baselines.

    Returns:
        dict: seconds spent per step, ``{"seed<k>/<step>": seconds}``.
    """
    cfg = resolve_prior(cfg, open_train(cfg, labels=False))  # the same prior for every step
    sdir, seed, timings = seed_dir(out, cfg.seed), cfg.seed, {}
    train = open_train(cfg, labels=False)
    t = time.perf_counter()
    s1 = train_stage1(train, cfg, sdir / "stage1", progress=progress)
    timings[f"seed{seed}/stage1"] = time.perf_counter() - t
    _log(
        f"[train] seed {seed}: stage 1 rotation accuracy {s1.best_accuracy:.3f} "
        f"(epoch {s1.fit.best_epoch}) in {timings[f'seed{seed}/stage1']:.0f} s"
    )
    runs = [("plain", s1.best_path, "stage2_plain"), ("plus", s1.best_path, "stage2_plus")]
    if ablation:
        runs.append(("plain", None, "stage2_nostage1"))
    for variant, fen, sub in runs:
        t = time.perf_counter()
        r = train_stage2(
            train, cfg, sdir / sub, fen_checkpoint=fen, variant=variant, progress=progress
        )
        timings[f"seed{seed}/{sub}"] = time.perf_counter() - t
        _log(
            f"[train] seed {seed}: {sub} validation loss {r.fit.best_metric:.4g} "
            f"(epoch {r.fit.best_epoch}) in {timings[f'seed{seed}/{sub}']:.0f} s"
        )
    if supervised:
        labeled = open_train(cfg, labels=True)
        for mode, fen in (("full", None), ("ssl", s1.best_path)):
            t = time.perf_counter()
            train_supervised(
                labeled,
                cfg,
                sdir / f"supervised_{mode}",
                mode=mode,
                fen_checkpoint=fen,
                progress=progress,
            )
            timings[f"seed{seed}/supervised_{mode}"] = time.perf_counter() - t
    return timings


def predictors_for_seed(
    cfg: Config, out: str | Path, seed: int, *, train_labeled: CrowdDataset | None
) -> dict[str, Any]:
    """Every predictor available for ``seed`` under ``out`` (missing checkpoints are skipped)."""
    cfg = resolve_prior(for_seed(cfg, seed), open_train(cfg, labels=False))
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
    found["CCNN P_prior"] = PriorPredictor(
        build_prior(cfg), cell=cell_size(cfg), seed=seed, draws=cfg.baselines.prior_draws
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
) -> tuple[ResultsTable, dict]:
    """Evaluate everything found under ``out`` for ``seeds``; write ``out/results.*``.

    Returns:
        (ResultsTable, dict) — the table and, per seed and method, the per-image predictions.
    """
    test = open_test(cfg)
    train_labeled = open_train(cfg, labels=True) if with_labeled_baselines else None
    table = ResultsTable()
    per_image: dict[str, Any] = {}
    rows: dict[str, list] = {}
    for seed in seeds:
        torch.manual_seed(seed)
        predictors = predictors_for_seed(cfg, out, seed, train_labeled=train_labeled)
        for method, predictor in predictors.items():
            result = evaluate(
                predictor,
                test,
                min_side=cfg.data.min_side,
                max_side=cfg.data.max_side,
                scale=cfg.data.scale,
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
    atomic_write_text(Path(out) / "predictions.json", json.dumps(per_image, indent=1) + "\n")
    return table, per_image


def run_experiment(
    cfg: Config,
    out: str | Path,
    seeds: list[int],
    *,
    supervised: bool = True,
    ablation: bool = False,
    progress: bool = True,
) -> dict:
    """Everything on a dataset, resumable: the ``train`` command and the heart of the demo.

    The prior is resolved from the unlabeled training images and checked
    (:func:`prepare_prior`); every seed trains stage 1, CSS-CCNN and CSS-CCNN++ (and, with
    ``ablation``, "Without Stage 1"); the labeled baselines train only where the training images
    have labels (and ``supervised``); evaluation runs only where the test images have labels.

    Returns:
        dict: ``labels`` (which splits have them), ``timings``, and ``table`` (the
        :class:`~examples.css_ccnn.evaluate.ResultsTable`, ``None`` without test labels).
    """
    out = Path(out)
    labels = {"train": has_labels(cfg, "train"), "test": has_labels(cfg, "test")}
    _log(
        f"[train] {cfg.data.root}: labels for training images: "
        f"{'yes' if labels['train'] else 'no'}, for test images: "
        f"{'yes' if labels['test'] else 'no'}"
    )
    cfg = prepare_prior(cfg, out)
    timings: dict = {}
    for seed in seeds:
        timings.update(
            train_seed(
                for_seed(cfg, seed),
                out,
                supervised=supervised and labels["train"],
                ablation=ablation,
                progress=progress,
            )
        )
    table = None
    if labels["test"]:
        t = time.perf_counter()
        table, _ = evaluate_run(
            cfg, out, seeds, with_labeled_baselines=labels["train"], progress=progress
        )
        timings["evaluate"] = time.perf_counter() - t
        _log(table.markdown())
    else:
        _log(f"[train] no labeled test images: evaluation skipped; the models are under {out}")
    return {"labels": labels, "timings": timings, "table": table, "config": cfg}
