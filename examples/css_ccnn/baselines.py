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
from .config import Config, config_to_dict, save_config
from .data.datasets import CrowdDataset
from .data.transforms import density_map
from .model import CSSCCNN
from .prepare import ImageBank, crop_points, random_offset, split_train_val
from .stage1 import load_stage1_fen
from .stage2 import FeatureSource
from .training import FitResult, fit, make_optimizer, resolve_device

__all__ = [
    "SupervisedResult",
    "mean_training_count",
    "random_baseline_model",
    "train_supervised",
]


def _require_labeled(dataset: CrowdDataset, what: str) -> None:
    if not isinstance(dataset, CrowdDataset):
        raise TypeError(f"{what} expects a CrowdDataset, got {type(dataset).__name__}")
    if not dataset.labels:
        raise ValueError(f"{what} is a labeled baseline: open the dataset with labels=True")


def mean_training_count(dataset: CrowdDataset) -> float:
    """CCNN Mean's prediction: the mean count of the (labeled) training images."""
    _require_labeled(dataset, "mean_training_count")
    return float(np.mean(dataset.counts()))


def random_baseline_model(cfg: Config, fen_checkpoint: str | Path, *, seed: int) -> CSSCCNN:
    """CCNN Random: stage-1 FEN + an untrained density head (initialised with ``seed``)."""
    torch.manual_seed(seed)
    model = CSSCCNN(width=cfg.model.width, rotations=cfg.model.rotations)
    load_stage1_fen(model, fen_checkpoint)
    return model.eval()


@dataclass
class SupervisedResult:
    fit: FitResult
    best_path: Path
    mode: str


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
        mode: ``full`` (CCNN Fully Supervised: all weights from scratch) or ``ssl`` (CCNN
            Self-Supervised with Labels: FEN from ``fen_checkpoint``, frozen).
    """
    _require_labeled(dataset, "train_supervised")
    if mode not in ("full", "ssl"):
        raise ValueError(f"mode must be 'full' or 'ssl', got {mode!r}")
    if mode == "ssl" and fen_checkpoint is None:
        raise ValueError("mode='ssl' needs the stage-1 fen_checkpoint")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out_dir / "config.json")
    bc = cfg.baselines
    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)
    model = CSSCCNN(width=cfg.model.width, rotations=cfg.model.rotations)
    if mode == "ssl":
        load_stage1_fen(model, fen_checkpoint)
        model.to(device)
        model.freeze_fen()
        params = list(model.density_head.parameters())
    else:
        model.to(device)
        params = [*model.fen.parameters(), *model.density_head.parameters()]
    optimizer = make_optimizer(params, bc)
    generator = torch.Generator().manual_seed(cfg.seed + 2)
    np_rng = np.random.default_rng(cfg.seed + 2)
    train_idx, val_idx = split_train_val(
        len(dataset), cfg.data.val_fraction, seed=cfg.data.split_seed
    )
    kwargs = dict(
        min_side=max(cfg.data.min_side, bc.crop_size),
        max_side=cfg.data.max_side,
        cache=cfg.data.cache_images,
    )
    train_bank = ImageBank(dataset, train_idx, **kwargs)
    val_bank = ImageBank(dataset, val_idx, **kwargs)
    source = FeatureSource(
        model, train_bank, device=device, cache=(mode == "ssl" and cfg.stage2.cache_features)
    )
    size = bc.crop_size

    def train_epoch(epoch: int) -> dict:
        order = np_rng.permutation(np.repeat(np.arange(len(train_bank)), bc.crops_per_image))
        total, count = 0.0, 0
        for start in range(0, len(order), bc.batch_size):
            items, targets = [], []
            for j in order[start : start + bc.batch_size]:
                prepared = train_bank[int(j)]
                top, left = random_offset(
                    prepared.image.shape[0], prepared.image.shape[1], size, np_rng
                )
                flip = bool(np_rng.random() < 0.5)
                _, points = prepared.view(flip)
                items.append((int(j), flip, top, left))
                targets.append(
                    density_map(crop_points(points, top, left, size), (size, size), sigma=bc.sigma)
                )
            target = torch.from_numpy(np.stack(targets)).to(device)[:, None]
            if mode == "ssl":
                feats, _ = source.batch(items, size)
                pred = model.density_head(feats)
            else:
                crops = np.stack(
                    [train_bank[j].view(f)[0][r : r + size, c : c + size] for j, f, r, c in items]
                )
                pred = model(torch.from_numpy(crops).to(device).permute(0, 3, 1, 2).float())
            loss = ((pred - target) ** 2).sum(dim=(1, 2, 3)).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * len(items)
            count += len(items)
        return {"loss": total / count}

    def validate(epoch: int) -> float:
        errors = []
        for j in range(len(val_bank)):
            prepared = val_bank[j]
            x = torch.from_numpy(prepared.image).to(device).permute(2, 0, 1)[None].float()
            errors.append(abs(float(model(x).sum()) - len(prepared.points)))
        return float(np.mean(errors))

    stopper = EarlyStopping(mode="min", patience=bc.patience, window=1)
    result = fit(
        out_dir=out_dir,
        model=model,
        optimizer=optimizer,
        epochs=bc.epochs,
        train_epoch=train_epoch,
        validate=validate,
        stopper=stopper,
        generator=generator,
        np_rng=np_rng,
        desc=f"supervised {mode} seed {cfg.seed}",
        stop_after=stop_after,
        progress=progress,
        meta={
            "stage": "supervised",
            "mode": mode,
            "width": cfg.model.width,
            "rotations": cfg.model.rotations,
            "config": config_to_dict(cfg),
        },
    )
    return SupervisedResult(fit=result, best_path=result.best_path, mode=mode)
