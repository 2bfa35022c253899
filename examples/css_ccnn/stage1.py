"""Stage 1: self-supervised rotation training of the FEN (paper Section 3.2).

Random ``crop_size`` crops (horizontal flip with p = 0.5) are rotated by one of K angles
(multiples of 360°/K) and the centre ``crop_size/2`` square is classified (cross-entropy). The
validation rotation accuracy on fixed crops of held-out *unlabeled* training images selects the
best epoch; training stops when it has not improved for ``patience`` epochs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from .checkpoint import EarlyStopping, load_checkpoint
from .config import Config, config_to_dict, save_config
from .data.datasets import CrowdDataset
from .model import CSSCCNN, rotate_batch
from .prepare import ImageBank, fixed_offsets, random_offset, split_train_val
from .training import FitResult, fit, make_optimizer, resolve_device

__all__ = ["Stage1Result", "load_stage1_fen", "require_unlabeled", "train_stage1"]


def require_unlabeled(dataset: CrowdDataset, what: str) -> None:
    """The label-free guarantee: training code refuses datasets opened with ``labels=True``."""
    if not isinstance(dataset, CrowdDataset):
        raise TypeError(f"{what} expects a CrowdDataset, got {type(dataset).__name__}")
    if dataset.labels:
        raise ValueError(
            f"{what} is label-free: open the training images with open_dataset(..., labels=False) "
            "(got a dataset with labels=True)"
        )


@dataclass
class Stage1Result:
    """Outcome of stage 1: the fit summary and the path of the best checkpoint."""

    fit: FitResult
    best_path: Path
    best_accuracy: float


def _to_batch(images: list, device: torch.device) -> torch.Tensor:
    return torch.from_numpy(np.stack(images)).to(device).permute(0, 3, 1, 2).float()


def train_stage1(
    dataset: CrowdDataset,
    cfg: Config,
    out_dir: str | Path,
    *,
    stop_after: int | None = None,
    progress: bool = True,
) -> Stage1Result:
    """Train (or resume) stage 1 on unlabeled images; writes ``out_dir/{best,last}.pt``.

    Args:
        dataset: training images, opened with ``labels=False`` (anything else raises).
        cfg: resolved configuration (``cfg.stage1``, ``cfg.model``, ``cfg.data``, ``cfg.seed``).
        out_dir: output directory (the resolved config is written there).
        stop_after: stop after this many epochs of this call (simulated interruption).
    """
    require_unlabeled(dataset, "train_stage1")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out_dir / "config.json")
    s1 = cfg.stage1
    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)
    model = CSSCCNN(width=cfg.model.width, rotations=cfg.model.rotations).to(device)
    optimizer = make_optimizer([*model.fen.parameters(), *model.rotation_head.parameters()], s1)
    generator = torch.Generator().manual_seed(cfg.seed)
    np_rng = np.random.default_rng(cfg.seed)
    train_idx, val_idx = split_train_val(
        len(dataset), cfg.data.val_fraction, seed=cfg.data.split_seed
    )
    min_side = max(cfg.data.min_side, s1.crop_size)
    train_bank = ImageBank(
        dataset,
        train_idx,
        min_side=min_side,
        max_side=cfg.data.max_side,
        cache=cfg.data.cache_images,
    )
    val_bank = ImageBank(
        dataset, val_idx, min_side=min_side, max_side=cfg.data.max_side, cache=cfg.data.cache_images
    )
    k = cfg.model.rotations
    size = s1.crop_size

    def train_epoch(epoch: int) -> dict:
        order = np_rng.permutation(np.repeat(np.arange(len(train_bank)), s1.crops_per_image))
        total, correct, count = 0.0, 0, 0
        for start in range(0, len(order), s1.batch_size):
            crops = []
            for j in order[start : start + s1.batch_size]:
                prepared = train_bank[int(j)]
                image, _ = prepared.view(s1.hflip and bool(np_rng.random() < 0.5))
                top, left = random_offset(image.shape[0], image.shape[1], size, np_rng)
                crops.append(image[top : top + size, left : left + size])
            labels = torch.from_numpy(np_rng.integers(0, k, size=len(crops))).to(device)
            x = rotate_batch(_to_batch(crops, device), labels, num_classes=k)
            logits = model.rotation_logits(x)
            loss = F.cross_entropy(logits, labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * len(crops)
            correct += int((logits.argmax(1) == labels).sum())
            count += len(crops)
        return {"loss": total / count, "train_acc": correct / count}

    val_crops = []
    for j in range(len(val_bank)):
        image = val_bank[j].image
        for top, left in fixed_offsets(
            image.shape[0], image.shape[1], size, s1.val_crops_per_image
        ):
            val_crops.append((j, top, left))

    def validate(epoch: int) -> float:
        correct, count = 0, 0
        for start in range(0, len(val_crops), max(1, s1.batch_size)):
            chunk = val_crops[start : start + s1.batch_size]
            crops = [
                val_bank[j].image[top : top + size, left : left + size] for j, top, left in chunk
            ]
            x = _to_batch(crops, device)
            for label in range(k):
                labels = torch.full((len(crops),), label, dtype=torch.long, device=device)
                logits = model.rotation_logits(rotate_batch(x, labels, num_classes=k))
                correct += int((logits.argmax(1) == labels).sum())
                count += len(crops)
        return correct / count

    stopper = EarlyStopping(mode="max", patience=s1.patience, window=1)
    result = fit(
        out_dir=out_dir,
        model=model,
        optimizer=optimizer,
        epochs=s1.epochs,
        train_epoch=train_epoch,
        validate=validate,
        stopper=stopper,
        generator=generator,
        np_rng=np_rng,
        desc=f"stage1 seed {cfg.seed}",
        stop_after=stop_after,
        progress=progress,
        meta={"stage": 1, "width": cfg.model.width, "rotations": k, "config": config_to_dict(cfg)},
    )
    return Stage1Result(fit=result, best_path=result.best_path, best_accuracy=result.best_metric)


def load_stage1_fen(model: CSSCCNN, path: str | Path) -> CSSCCNN:
    """Copy the FEN weights and BatchNorm statistics of a stage-1 checkpoint into ``model``."""
    state = load_checkpoint(path)["model"]
    fen_state = {k[len("fen.") :]: v for k, v in state.items() if k.startswith("fen.")}
    if not fen_state:
        raise ValueError(f"{str(path)!r} holds no FEN weights (keys 'fen.*')")
    model.fen.load_state_dict(fen_state)
    return model
