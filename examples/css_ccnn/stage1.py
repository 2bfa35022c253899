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

from .checkpoint import EarlyStopping
from .config import Config
from .data.datasets import CrowdDataset
from .model import rotate_batch
from .prepare import fixed_offsets, random_offset
from .training import FitResult, Run, setup_run

__all__ = ["Stage1Result", "train_stage1"]


@dataclass
class Stage1Result:
    """Outcome of stage 1: the fit summary and the path of the best checkpoint."""

    fit: FitResult
    best_path: Path
    best_accuracy: float


def _to_batch(images: list, device: torch.device) -> torch.Tensor:
    return torch.from_numpy(np.stack(images)).to(device).permute(0, 3, 1, 2).float()


def _train_epoch(run: Run) -> dict:
    """One pass over random rotated crops (``crops_per_image`` per training image)."""
    s1, rng, bank = run.cfg.stage1, run.np_rng, run.train
    k, size = run.cfg.model.rotations, s1.crop_size
    order = rng.permutation(np.repeat(np.arange(len(bank)), s1.crops_per_image))
    total, correct, count = 0.0, 0, 0
    for start in range(0, len(order), s1.batch_size):
        crops = []
        for j in order[start : start + s1.batch_size]:
            image, _ = bank[int(j)].view(s1.hflip and bool(rng.random() < 0.5))
            top, left = random_offset(image.shape[0], image.shape[1], size, rng)
            crops.append(image[top : top + size, left : left + size])
        labels = torch.from_numpy(rng.integers(0, k, size=len(crops))).to(run.device)
        x = rotate_batch(_to_batch(crops, run.device), labels, num_classes=k)
        logits = run.model.rotation_logits(x)
        loss = F.cross_entropy(logits, labels)
        run.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        run.optimizer.step()
        total += float(loss.detach()) * len(crops)
        correct += int((logits.argmax(1) == labels).sum())
        count += len(crops)
    return {"loss": total / count, "train_acc": correct / count}


def _validation_crops(run: Run) -> list:
    """Fixed ``(image, top, left)`` crop positions of the validation images."""
    s1, items = run.cfg.stage1, []
    for j in range(len(run.val)):
        h, w = run.val[j].image.shape[:2]
        for top, left in fixed_offsets(h, w, s1.crop_size, s1.val_crops_per_image):
            items.append((j, top, left))
    return items


def _validate(run: Run, items: list) -> float:
    """Rotation accuracy over every validation crop in every rotation (deterministic)."""
    s1, k = run.cfg.stage1, run.cfg.model.rotations
    size, batch = s1.crop_size, max(1, s1.batch_size)
    correct, count = 0, 0
    for start in range(0, len(items), batch):
        chunk = items[start : start + batch]
        crops = [run.val[j].image[top : top + size, left : left + size] for j, top, left in chunk]
        x = _to_batch(crops, run.device)
        for label in range(k):
            labels = torch.full((len(crops),), label, dtype=torch.long, device=run.device)
            logits = run.model.rotation_logits(rotate_batch(x, labels, num_classes=k))
            correct += int((logits.argmax(1) == labels).sum())
            count += len(crops)
    return correct / count


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
        progress: show a progress bar.
    """
    run = setup_run(
        dataset,
        cfg,
        out_dir,
        what="train_stage1",
        labels=False,
        section=cfg.stage1,
        trainable=lambda m: [*m.fen.parameters(), *m.rotation_head.parameters()],
        seed_offset=0,
        meta={"stage": 1},
    )
    val_items = _validation_crops(run)
    result = run.fit(
        epochs=cfg.stage1.epochs,
        train_epoch=lambda epoch: _train_epoch(run),
        validate=lambda epoch: _validate(run, val_items),
        stopper=EarlyStopping(mode="max", patience=cfg.stage1.patience, window=1),
        desc=f"stage1 seed {cfg.seed}",
        stop_after=stop_after,
        progress=progress,
    )
    return Stage1Result(fit=result, best_path=result.best_path, best_accuracy=result.best_metric)
