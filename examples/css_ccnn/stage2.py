"""Stage 2: Sinkhorn distribution matching of the density head (paper Sections 3.3-3.4).

The FEN from stage 1 is frozen (``requires_grad=False`` and BatchNorm in eval mode, checked after
every epoch); only the density head is trained. Each batch of random crops gives
``batch · grid²`` predicted cell counts that are matched to samples of the power-law prior fixed
by Cf_max (:class:`sinkmatch.CountPrior`) with :class:`sinkmatch.DistributionMatchingLoss`:

* ``variant="plain"`` (CSS-CCNN): :math:`L_{sink}` between all cells and the prior samples;
* ``variant="plus"`` (CSS-CCNN++): :math:`L^{++}_{sink}`, the cells split at the
  ``split_percentile``-th percentile of their Canny pseudo density (pooled to cells like the
  predictions) and matched to the prior samples split at the same percentile.

No labels: the training images must be opened with ``labels=False``; early stopping and the
choice of the kept checkpoint use the moving average of the Sinkhorn loss on fixed crops of
held-out *training* images, never the test set.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

import sinkmatch

from .checkpoint import EarlyStopping
from .config import Config, cell_size
from .data.datasets import CrowdDataset, require_unlabeled
from .data.pseudo_density import canny_pseudo_density
from .data.transforms import cell_counts
from .model import CSSCCNN
from .prepare import FeatureSource, fixed_offsets, random_offset
from .prior import build_prior, resolve_cf_max, resolve_prior
from .training import FitResult, Run, setup_run

__all__ = [
    "VARIANTS",
    "Stage2Result",
    "fen_fingerprint",
    "make_loss",
    "pseudo_cells",
    "train_stage2",
]

VARIANTS = ("plain", "plus")


def make_loss(
    prior: sinkmatch.CountPrior,
    cfg: Config,
    *,
    variant: str,
    generator: torch.Generator | None = None,
) -> sinkmatch.DistributionMatchingLoss:
    """The :class:`sinkmatch.DistributionMatchingLoss` of a variant (``plain`` | ``plus``); prior
    samples are drawn from ``generator``."""
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    s2 = cfg.stage2
    cells_per_crop = (s2.crop_size // 8 // cell_size(cfg)) ** 2
    per_prediction = (
        1.0 if s2.prior_samples_per_crop is None else s2.prior_samples_per_crop / cells_per_crop
    )
    return sinkmatch.DistributionMatchingLoss(
        prior,
        samples_per_prediction=per_prediction,
        eps=s2.eps,
        value=s2.value,
        scale=s2.scale,
        split_q=s2.split_percentile / 100.0 if variant == "plus" else None,
        generator=generator,
        **s2.solver,
    )


def fen_fingerprint(model: CSSCCNN) -> torch.Tensor:
    """All FEN parameters and BatchNorm buffers, concatenated (float64 copy)."""
    tensors = [*model.fen.parameters(), *model.fen.buffers()]
    return torch.cat(
        [t.detach().double().flatten().cpu() for t in tensors if t.dtype.is_floating_point]
    )


def pseudo_cells(crops: np.ndarray, cell: int, device: torch.device) -> torch.Tensor:
    """Canny pseudo density of uint8 crops pooled to cells like the predictions -> (B·cells,)."""
    pseudo = torch.from_numpy(canny_pseudo_density(crops)).to(device)
    return cell_counts(pseudo[:, None], cell).flatten()


@dataclass
class Stage2Result:
    """Outcome of stage 2: the fit summary and the best checkpoint (whole model state)."""

    fit: FitResult
    best_path: Path
    variant: str
    cf_max: float
    prior_lambda: float


class _Matcher:
    """The stage-2 objective of a run: crops -> predicted cells -> loss against the prior."""

    def __init__(self, run: Run, prior: sinkmatch.CountPrior, variant: str) -> None:
        cfg = run.cfg
        self.run, self.variant, self.cell = run, variant, cell_size(cfg)
        self.size = cfg.stage2.crop_size
        self.loss_fn = make_loss(prior, cfg, variant=variant, generator=run.generator)
        self.val_generator = torch.Generator()
        self.val_loss_fn = make_loss(prior, cfg, variant=variant, generator=self.val_generator)
        cache = cfg.stage2.cache_features
        self.train_src = FeatureSource(run.model, run.train, device=run.device, cache=cache)
        self.val_src = FeatureSource(run.model, run.val, device=run.device, cache=cache)
        self.reference = fen_fingerprint(run.model)
        self.val_items = [
            (j, False, top, left)
            for j in range(len(run.val))
            for top, left in fixed_offsets(
                *run.val[j].image.shape[:2], self.size, cfg.stage2.val_crops_per_image
            )
        ]

    def loss(self, src: FeatureSource, items: list, fn) -> tuple[torch.Tensor, torch.Tensor]:
        """(loss, detached predicted cells) of the crops ``items`` (``(j, flip, top, left)``)."""
        feats, crops = src.batch(items, self.size)
        cells = cell_counts(self.run.model.density_head(feats), self.cell).flatten()
        if self.variant == "plus":
            return fn(cells, score=pseudo_cells(crops, self.cell, self.run.device)), cells.detach()
        return fn(cells), cells.detach()

    def train_epoch(self) -> dict:
        run, s2, rng = self.run, self.run.cfg.stage2, self.run.np_rng
        order = rng.permutation(np.repeat(np.arange(len(run.train)), s2.crops_per_image))
        total, count, cell_sum, cells_seen = 0.0, 0, 0.0, 0
        for start in range(0, len(order), s2.batch_size):
            items = []
            for j in order[start : start + s2.batch_size]:
                h, w = run.train[int(j)].image.shape[:2]
                top, left = random_offset(h, w, self.size, rng)
                items.append((int(j), bool(rng.random() < 0.5), top, left))
            loss, cells = self.loss(self.train_src, items, self.loss_fn)
            run.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            run.optimizer.step()
            total += float(loss.detach()) * len(items)
            count += len(items)
            cell_sum += float(cells.sum())
            cells_seen += cells.numel()
        if not torch.equal(fen_fingerprint(run.model), self.reference):
            raise RuntimeError(
                "the frozen FEN changed during stage 2 (weights or BatchNorm statistics)"
            )
        return {"loss": total / count, "mean_cell": cell_sum / cells_seen}

    def validate(self) -> float:
        """The training loss on fixed batches of validation crops, with fixed prior draws."""
        values, weights = [], []
        batch = self.run.cfg.stage2.batch_size
        for b, start in enumerate(range(0, len(self.val_items), batch)):
            chunk = self.val_items[start : start + batch]
            self.val_generator.manual_seed(10_000 + b)
            values.append(float(self.loss(self.val_src, chunk, self.val_loss_fn)[0]))
            weights.append(len(chunk))
        return float(np.average(values, weights=weights))


def train_stage2(
    dataset: CrowdDataset,
    cfg: Config,
    out_dir: str | Path,
    *,
    fen_checkpoint: str | Path | None,
    variant: str = "plain",
    stop_after: int | None = None,
    progress: bool = True,
) -> Stage2Result:
    """Train (or resume) the density head by distribution matching; no labels anywhere.

    Args:
        dataset: training images opened with ``labels=False`` (anything else raises).
        cfg: configuration (``cfg.stage2``, ``cfg.prior``, ``cfg.model``, ``cfg.data``); the
            prior's S_crop and S are derived from the data where not given
            (:func:`~examples.css_ccnn.prior.resolve_prior`) and saved in ``config.json`` and the
            checkpoints.
        out_dir: output directory (``best.pt``, ``last.pt``, ``history.json``, ``config.json``).
        fen_checkpoint: stage-1 checkpoint whose FEN is loaded and frozen; ``None`` keeps a
            randomly initialised (seeded) FEN, frozen: the "Without Stage 1" ablation.
        variant: ``plain`` (CSS-CCNN, L_sink) or ``plus`` (CSS-CCNN++, L++_sink).
        stop_after: stop after this many epochs of this call (simulated interruption).
        progress: show a progress bar.
    """
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    cfg = resolve_prior(cfg, require_unlabeled(dataset, "train_stage2"))
    run = setup_run(
        dataset,
        cfg,
        out_dir,
        what="train_stage2",
        labels=False,
        section=cfg.stage2,
        trainable=lambda m: m.density_head.parameters(),
        seed_offset=1,
        fen_checkpoint=fen_checkpoint,
        freeze_fen=True,
        meta={"stage": 2, "variant": variant},
    )
    prior = build_prior(cfg)
    matcher = _Matcher(run, prior, variant)
    result = run.fit(
        epochs=cfg.stage2.epochs,
        train_epoch=lambda epoch: matcher.train_epoch(),
        validate=lambda epoch: matcher.validate(),
        stopper=EarlyStopping(
            mode="min", patience=cfg.stage2.patience, window=cfg.stage2.ma_window
        ),
        desc=f"stage2 {variant} seed {cfg.seed}",
        stop_after=stop_after,
        progress=progress,
    )
    return Stage2Result(
        fit=result,
        best_path=result.best_path,
        variant=variant,
        cf_max=resolve_cf_max(cfg),
        prior_lambda=float(prior.lam),
    )
