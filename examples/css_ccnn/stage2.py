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

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .checkpoint import EarlyStopping
from .config import Config, cell_size, config_to_dict, save_config
from .data.datasets import CrowdDataset
from .data.pseudo_density import canny_pseudo_density
from .data.transforms import cell_counts
from .model import CSSCCNN, FENFeatures
from .prepare import ImageBank, fixed_offsets, random_offset, split_train_val
from .stage1 import load_stage1_fen, require_unlabeled
from .training import FitResult, fit, make_optimizer, resolve_device

__all__ = [
    "FeatureSource",
    "Stage2Result",
    "build_prior",
    "fen_fingerprint",
    "make_loss",
    "resolve_cf_max",
    "train_stage2",
]

VARIANTS = ("plain", "plus")


def resolve_cf_max(cfg: Config) -> float:
    """Cf_max from the config, else from ``<data.root>/synthetic.json`` (key ``cf_max``)."""
    if cfg.prior.cf_max is not None:
        if not cfg.prior.cf_max > 0:
            raise ValueError(f"prior.cf_max must be > 0, got {cfg.prior.cf_max}")
        return float(cfg.prior.cf_max)
    meta = Path(cfg.data.root) / "synthetic.json"
    if not meta.is_file():
        raise ValueError(
            "prior.cf_max is not set and the dataset has no synthetic.json: pass "
            "--set prior.cf_max=<maximum crowd count of an image> (e.g. 3000 for ShanghaiTech A)"
        )
    return float(json.loads(meta.read_text())["cf_max"])


def build_prior(cfg: Config, *, num_images: int) -> Any:
    """:class:`sinkmatch.CountPrior` from Cf_max (paper Section 3.1): α, M×N cells, S_crop,
    head redistribution, with ``1/S`` tail probability for ``S = prior.num_images`` or, when that
    is unset, ``num_images`` (the number of training images)."""
    import sinkmatch

    p = cfg.prior
    return sinkmatch.CountPrior.from_max_count(
        resolve_cf_max(cfg),
        num_images=p.num_images if p.num_images is not None else num_images,
        alpha=p.alpha,
        grid=(p.grid, p.grid),
        crops_per_image=p.crops_per_image,
        head_mass=p.head_mass,
        mode=p.mode,
    )


def make_loss(
    prior: Any, cfg: Config, *, variant: str, generator: torch.Generator | None = None
) -> Any:
    """The :class:`sinkmatch.DistributionMatchingLoss` of a variant (``plain`` | ``plus``); prior
    samples are drawn from ``generator``."""
    import sinkmatch

    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    s2 = cfg.stage2
    cells_per_crop = (s2.crop_size // 8 // cell_size(cfg)) ** 2
    return sinkmatch.DistributionMatchingLoss(
        prior,
        samples_per_prediction=(
            1.0 if s2.prior_samples_per_crop is None else s2.prior_samples_per_crop / cells_per_crop
        ),
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


class FeatureSource:
    """FEN features of aligned crops, optionally from a cache of full-image features.

    With ``cache=True`` the frozen FEN runs once per image and mirror; a crop at (top, left) of
    side S then reads features ``[top/4 : (top+S)/4, left/4 : (left+S)/4]``. This equals running the
    FEN on the crop except near the crop border (zero padding there vs. real context).
    """

    def __init__(
        self, model: CSSCCNN, bank: ImageBank, *, device: torch.device, cache: bool
    ) -> None:
        self.model, self.bank, self.device, self.cache = model, bank, device, cache
        self._store: dict[tuple[int, bool], FENFeatures] = {}

    def _full(self, j: int, flip: bool) -> FENFeatures:
        key = (j, flip)
        if key not in self._store:
            image, _ = self.bank[j].view(flip)
            x = torch.from_numpy(image).to(self.device).permute(2, 0, 1)[None].float()
            with torch.no_grad():
                self._store[key] = self.model.fen(x)
        return self._store[key]

    def batch(self, items: list, size: int) -> tuple[FENFeatures, np.ndarray]:
        """items: ``(j, flip, top, left)`` -> (features of the crops, uint8 crops (B, S, S, 3))."""
        crops = []
        for j, flip, top, left in items:
            image, _ = self.bank[j].view(flip)
            crops.append(image[top : top + size, left : left + size])
        crops_np = np.stack(crops)
        if self.cache:
            q = size // 4
            parts = []
            for j, flip, top, left in items:
                f = self._full(j, flip)
                r0, c0 = top // 4, left // 4
                window = (slice(None), slice(None), slice(r0, r0 + q), slice(c0, c0 + q))
                parts.append(FENFeatures(f.pool2[window], f.block3[window]))
            feats = FENFeatures(
                torch.cat([p.pool2 for p in parts]), torch.cat([p.block3 for p in parts])
            )
        else:
            x = torch.from_numpy(crops_np).to(self.device).permute(0, 3, 1, 2).float()
            with torch.no_grad():
                feats = self.model.fen(x)
        return feats, crops_np


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
        cfg: resolved configuration (``cfg.stage2``, ``cfg.prior``, ``cfg.model``, ``cfg.data``).
        out_dir: output directory (``best.pt``, ``last.pt``, ``history.json``, ``config.json``).
        fen_checkpoint: stage-1 checkpoint whose FEN is loaded and frozen; ``None`` keeps a
            randomly initialised (seeded) FEN, frozen: the "Without Stage 1" ablation.
        variant: ``plain`` (CSS-CCNN, L_sink) or ``plus`` (CSS-CCNN++, L++_sink).
        stop_after: stop after this many epochs of this call (simulated interruption).
    """
    require_unlabeled(dataset, "train_stage2")
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out_dir / "config.json")
    s2 = cfg.stage2
    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)
    model = CSSCCNN(width=cfg.model.width, rotations=cfg.model.rotations)
    if fen_checkpoint is not None:
        load_stage1_fen(model, fen_checkpoint)
    model.to(device)
    model.freeze_fen()
    reference = fen_fingerprint(model)
    optimizer = make_optimizer(model.density_head.parameters(), s2)
    generator = torch.Generator().manual_seed(cfg.seed + 1)
    np_rng = np.random.default_rng(cfg.seed + 1)

    prior = build_prior(cfg, num_images=len(dataset))
    loss_fn = make_loss(prior, cfg, variant=variant, generator=generator)
    val_generator = torch.Generator()
    val_loss_fn = make_loss(prior, cfg, variant=variant, generator=val_generator)
    train_idx, val_idx = split_train_val(
        len(dataset), cfg.data.val_fraction, seed=cfg.data.split_seed
    )
    min_side = max(cfg.data.min_side, s2.crop_size)
    kwargs = dict(min_side=min_side, max_side=cfg.data.max_side, cache=cfg.data.cache_images)
    train_src = FeatureSource(
        model, ImageBank(dataset, train_idx, **kwargs), device=device, cache=s2.cache_features
    )
    val_src = FeatureSource(
        model, ImageBank(dataset, val_idx, **kwargs), device=device, cache=s2.cache_features
    )
    size = s2.crop_size
    cell = cell_size(cfg)

    def step_loss(
        feats: FENFeatures, crops: np.ndarray, fn: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        cells = cell_counts(model.density_head(feats), cell).flatten()
        score = pseudo_cells(crops, cell, device) if variant == "plus" else None
        return (fn(cells, score=score) if score is not None else fn(cells)), cells.detach()

    def train_epoch(epoch: int) -> dict:
        bank = train_src.bank
        order = np_rng.permutation(np.repeat(np.arange(len(bank)), s2.crops_per_image))
        total, count, cell_sum, cells_seen = 0.0, 0, 0.0, 0
        for start in range(0, len(order), s2.batch_size):
            items = []
            for j in order[start : start + s2.batch_size]:
                image = bank[int(j)].image
                top, left = random_offset(image.shape[0], image.shape[1], size, np_rng)
                items.append((int(j), bool(np_rng.random() < 0.5), top, left))
            feats, crops = train_src.batch(items, size)
            loss, cells = step_loss(feats, crops, loss_fn)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * len(items)
            count += len(items)
            cell_sum += float(cells.sum())
            cells_seen += cells.numel()
        if not torch.equal(fen_fingerprint(model), reference):
            raise RuntimeError(
                "the frozen FEN changed during stage 2 (weights or BatchNorm statistics)"
            )
        return {"loss": total / count, "mean_cell": cell_sum / cells_seen}

    val_items = []
    for j in range(len(val_src.bank)):
        image = val_src.bank[j].image
        for top, left in fixed_offsets(image.shape[0], image.shape[1], size, 4):
            val_items.append((j, False, top, left))

    def validate(epoch: int) -> float:
        # the training loss on fixed batches of validation crops, with fixed prior draws
        values, weights = [], []
        for b, start in enumerate(range(0, len(val_items), s2.batch_size)):
            chunk = val_items[start : start + s2.batch_size]
            feats, crops = val_src.batch(chunk, size)
            val_generator.manual_seed(10_000 + b)
            values.append(float(step_loss(feats, crops, val_loss_fn)[0]))
            weights.append(len(chunk))
        return float(np.average(values, weights=weights))

    stopper = EarlyStopping(mode="min", patience=s2.patience, window=s2.ma_window)
    result = fit(
        out_dir=out_dir,
        model=model,
        optimizer=optimizer,
        epochs=s2.epochs,
        train_epoch=train_epoch,
        validate=validate,
        stopper=stopper,
        generator=generator,
        np_rng=np_rng,
        desc=f"stage2 {variant} seed {cfg.seed}",
        stop_after=stop_after,
        progress=progress,
        meta={
            "stage": 2,
            "variant": variant,
            "width": cfg.model.width,
            "rotations": cfg.model.rotations,
            "config": config_to_dict(cfg),
        },
    )
    return Stage2Result(
        fit=result,
        best_path=result.best_path,
        variant=variant,
        cf_max=resolve_cf_max(cfg),
        prior_lambda=float(getattr(prior, "lam", float("nan"))),
    )
