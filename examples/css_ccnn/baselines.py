"""The baselines of the paper's Section 4.1.

Label-free (the same information as CSS-CCNN or less):

* **CCNN Random** — "the results one would get if only Stage 1 self-supervision is done without
  the subsequent Sinkhorn training": the stage-1 FEN with a freshly initialised (untrained)
  density head (:func:`random_baseline_model`).
* **CCNN P_prior** — "the model gives out a value randomly drawn from the prior distribution as its
  prediction": every training-sized cell of a test image gets an independent prior draw
  (:class:`~examples.css_ccnn.evaluate.PriorPredictor`).
* The ablation **Without Stage 1** (paper Table 7) is stage 2 on a random frozen FEN:
  ``train_stage2(..., fen_checkpoint=None)``.

Labeled references (they read training labels, and say so):

* **CCNN Mean** — the mean training-image count predicted for every image
  (:func:`mean_training_count`).
* **CCNN Fully Supervised** — the whole network (FEN + density head) from scratch, MSE on density
  maps (:func:`train_supervised` with ``mode="full"``).
* **CCNN Self-Supervised with Labels** — the stage-1 FEN frozen, the density head trained with MSE
  on density maps (``mode="ssl"``).

Both supervised baselines select their epoch by validation MAE on held-out *training* images.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .checkpoint import EarlyStopping
from .config import Config
from .data.datasets import CrowdDataset, require_labeled
from .data.transforms import density_map
from .model import CSSCCNN, load_stage1_fen
from .prepare import FeatureSource, crop_points, random_offset
from .training import FitResult, Run, setup_run

__all__ = [
    "SupervisedResult",
    "mean_training_count",
    "random_baseline_model",
    "train_supervised",
]

MODES = ("full", "ssl")


def mean_training_count(dataset: CrowdDataset) -> float:
    """CCNN Mean's prediction: the mean count of the (labeled) training images."""
    require_labeled(dataset, "mean_training_count")
    return float(np.mean(dataset.counts()))


def random_baseline_model(cfg: Config, fen_checkpoint: str | Path, *, seed: int) -> CSSCCNN:
    """CCNN Random: stage-1 FEN + an untrained density head (initialised with ``seed``)."""
    torch.manual_seed(seed)
    model = CSSCCNN(width=cfg.model.width, rotations=cfg.model.rotations)
    load_stage1_fen(model, fen_checkpoint)
    return model.eval()


@dataclass
class SupervisedResult:
    """Outcome of a labeled baseline: the fit summary, the best checkpoint and the mode."""

    fit: FitResult
    best_path: Path
    mode: str


def _train_epoch(run: Run, mode: str, source: FeatureSource) -> dict:
    """One pass of MSE on density maps over random crops (``crops_per_image`` per image)."""
    bc, rng, bank, model = run.cfg.baselines, run.np_rng, run.train, run.model
    size = bc.crop_size
    order = rng.permutation(np.repeat(np.arange(len(bank)), bc.crops_per_image))
    total, count = 0.0, 0
    for start in range(0, len(order), bc.batch_size):
        items, targets = [], []
        for j in order[start : start + bc.batch_size]:
            prepared = bank[int(j)]
            top, left = random_offset(*prepared.image.shape[:2], size, rng)
            flip = bool(rng.random() < 0.5)
            _, points = prepared.view(flip)
            items.append((int(j), flip, top, left))
            target = density_map(crop_points(points, top, left, size), (size, size), sigma=bc.sigma)
            targets.append(target)
        target = torch.from_numpy(np.stack(targets)).to(run.device)[:, None]
        if mode == "ssl":
            pred = model.density_head(source.batch(items, size)[0])
        else:
            crops = torch.from_numpy(source.crops(items, size)).to(run.device)
            pred = model(crops.permute(0, 3, 1, 2).float())
        loss = ((pred - target) ** 2).sum(dim=(1, 2, 3)).mean()
        run.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        run.optimizer.step()
        total += float(loss.detach()) * len(items)
        count += len(items)
    return {"loss": total / count}


def _validate(run: Run) -> float:
    """MAE of the whole-image counts of the validation images (labeled: a reference only)."""
    errors = []
    for j in range(len(run.val)):
        prepared = run.val[j]
        x = torch.from_numpy(prepared.image).to(run.device).permute(2, 0, 1)[None].float()
        errors.append(abs(float(run.model(x).sum()) - len(prepared.points)))
    return float(np.mean(errors))


def train_supervised(
    dataset: CrowdDataset,
    cfg: Config,
    out_dir: str | Path,
    *,
    mode: str,
    fen_checkpoint: str | Path | None = None,
    stop_after: int | None = None,
    progress: bool = True,
) -> SupervisedResult:
    """Train a labeled baseline with MSE on σ-Gaussian density maps (1/8 resolution).

    Args:
        dataset: labeled training images (``labels=True``).
        cfg: resolved configuration (``cfg.baselines``, ``cfg.model``, ``cfg.data``).
        out_dir: output directory.
        mode: ``full`` (CCNN Fully Supervised: all weights from scratch) or ``ssl`` (CCNN
            Self-Supervised with Labels: FEN from ``fen_checkpoint``, frozen).
        fen_checkpoint: the stage-1 checkpoint (``mode="ssl"``).
        stop_after: stop after this many epochs of this call (simulated interruption).
        progress: show a progress bar.
    """
    require_labeled(dataset, "train_supervised")
    if mode not in MODES:
        raise ValueError(f"mode must be 'full' or 'ssl', got {mode!r}")
    if mode == "ssl" and fen_checkpoint is None:
        raise ValueError("mode='ssl' needs the stage-1 fen_checkpoint")
    ssl = mode == "ssl"
    run = setup_run(
        dataset,
        cfg,
        out_dir,
        what="train_supervised",
        labels=True,
        section=cfg.baselines,
        trainable=(
            (lambda m: m.density_head.parameters())
            if ssl
            else (lambda m: [*m.fen.parameters(), *m.density_head.parameters()])
        ),
        seed_offset=2,
        fen_checkpoint=fen_checkpoint if ssl else None,
        freeze_fen=ssl,
        meta={"stage": "supervised", "mode": mode},
    )
    cache = ssl and cfg.stage2.cache_features
    source = FeatureSource(run.model, run.train, device=run.device, cache=cache)
    result = run.fit(
        epochs=cfg.baselines.epochs,
        train_epoch=lambda epoch: _train_epoch(run, mode, source),
        validate=lambda epoch: _validate(run),
        stopper=EarlyStopping(mode="min", patience=cfg.baselines.patience, window=1),
        desc=f"supervised {mode} seed {cfg.seed}",
        stop_after=stop_after,
        progress=progress,
    )
    return SupervisedResult(fit=result, best_path=result.best_path, mode=mode)
