"""What every trainer shares: the run setup and the resumable epoch loop.

Stage 1, stage 2 and the labeled baselines are written the same way (DM-Count's
``Trainer.setup`` / ``train_epoch`` / ``val_epoch``): :func:`setup_run` builds a :class:`Run`
(checked dataset, saved config, device, seeded model, optimizer, random generators, the
train/validation image banks, checkpoint metadata), the trainer writes its ``train_epoch`` and
``validate``, and :meth:`Run.fit` runs them.

:func:`fit` runs ``train_epoch`` / ``validate`` per epoch, keeps the best weights (``best.pt``) by
an :class:`~examples.css_ccnn.checkpoint.EarlyStopping` rule and writes ``last.pt`` atomically
after every epoch with everything needed to continue exactly where it stopped (model, optimizer,
epoch, early-stopping state, history, RNG states). Calling :func:`fit` again on the same output
directory resumes from ``last.pt``. A finished run is extended when ``epochs`` or ``patience``
now allow more epochs, and otherwise says that it is complete (it is never silently skipped).
A resume refused for a changed setting is refused before anything in the folder is written.
Ctrl-C raises :class:`TrainingInterrupted`, whose message says where the run can be resumed.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from .checkpoint import (
    EarlyStopping,
    atomic_save,
    atomic_write_text,
    capture_rng,
    load_checkpoint,
    load_state,
    remove_stale_temporaries,
    restore_rng,
)
from .config import Config, config_to_dict, save_config, validate_config
from .data.datasets import CrowdDataset, require_labeled, require_unlabeled
from .model import CSSCCNN, load_stage1_fen
from .prepare import ImageBank, split_train_val

__all__ = [
    "FitResult",
    "Run",
    "TrainingInterrupted",
    "fit",
    "learning_rate",
    "make_optimizer",
    "resolve_device",
    "set_threads",
    "setup_run",
]


def resolve_device(name: str) -> torch.device:
    """``auto`` → CUDA when available, else CPU; ``cpu`` / ``cuda[:N]`` as given (checked)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} requested but CUDA is not available")
    if name != "cpu" and not name.startswith("cuda"):
        raise ValueError(f"device must be auto, cpu or cuda[:N], got {name!r}")
    return torch.device(name)


def set_threads(threads: int) -> None:
    """``threads > 0``: use that many intra-op CPU threads; 0 leaves torch's default."""
    if threads < 0:
        raise ValueError(f"threads must be >= 0, got {threads}")
    if threads:
        torch.set_num_threads(threads)


def make_optimizer(params, section: Any) -> torch.optim.Optimizer:
    """SGD (momentum, weight decay) or Adam from a stage section of the config."""
    params = [p for p in params if p.requires_grad]
    if section.optimizer == "sgd":
        return torch.optim.SGD(
            params, lr=section.lr, momentum=section.momentum, weight_decay=section.weight_decay
        )
    if section.optimizer == "adam":
        return torch.optim.Adam(params, lr=section.lr, weight_decay=section.weight_decay)
    raise ValueError(f"optimizer must be 'sgd' or 'adam', got {section.optimizer!r}")


def learning_rate(section: Any, epoch: int, epochs: int) -> float:
    """The learning rate of ``epoch`` (0-based) out of ``epochs`` under ``section.schedule``.

    Example:
        >>> from examples.css_ccnn.config import Stage1Config
        >>> s = Stage1Config(lr=1.0, schedule="cosine")
        >>> [round(learning_rate(s, e, 4), 3) for e in range(4)]
        [1.0, 0.854, 0.5, 0.146]
    """
    if section.schedule == "constant":
        return float(section.lr)
    if section.schedule == "cosine":
        return float(section.lr) * 0.5 * (1.0 + math.cos(math.pi * epoch / max(1, epochs)))
    raise ValueError(f"schedule must be 'constant' or 'cosine', got {section.schedule!r}")


@dataclass
class FitResult:
    """What :func:`fit` did.

    Attributes:
        best_epoch: epoch (0-based) of the kept weights; ``best_metric`` its (averaged) metric.
        epochs_run: epochs completed in total (across resumptions).
        finished: False when stopped early by ``stop_after`` (a simulated interruption).
        history: one dict per epoch (training statistics and ``val``).
        best_path: the best weights (``state_dict`` under ``"model"``).
    """

    best_epoch: int
    best_metric: float
    epochs_run: int
    finished: bool
    history: list
    best_path: Path
    epochs_trained: int = 0


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C during :func:`fit`; ``str(err)`` is one line saying what is saved and how to resume.

    Attributes:
        last_path: the ``last.pt`` to resume from (``None`` when no epoch was saved yet).
        epochs_saved: completed epochs in ``last_path``.
    """

    def __init__(self, message: str, *, last_path: Path | None, epochs_saved: int) -> None:
        super().__init__(message)
        self.last_path, self.epochs_saved = last_path, epochs_saved

    def __str__(self) -> str:
        return str(self.args[0])


# settings that may change between an interrupted run and its resumption
_RESUME_FREE = {"epochs", "patience", "device", "threads"}


def _flatten(config: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in config.items():
        if isinstance(value, dict) and key != "solver":
            out.update(_flatten(value, f"{prefix}{key}."))
        elif key not in _RESUME_FREE:
            out[f"{prefix}{key}"] = value
    return out


def _check_resumable(saved: dict | None, current: dict | None, path: Path) -> None:
    """Refuse to resume a run whose stored configuration differs from the current one (epochs,
    patience, device and threads may change)."""
    old, new = (saved or {}).get("config"), (current or {}).get("config")
    if old is None or new is None:
        return
    old, new = _flatten(old), _flatten(new)
    diff = [
        f"{k}: {old.get(k)!r} -> {new.get(k)!r}"
        for k in sorted(set(old) | set(new))
        if old.get(k) != new.get(k)
    ]
    if diff:
        raise ValueError(
            f"{path} belongs to a run with another configuration ({'; '.join(diff)}); resume "
            "with the same settings (only epochs, patience, device and threads may change) or "
            "use a new output directory"
        )


_RESUME_KEYS = ("model", "optimizer", "stopper", "rng", "epoch", "history", "finished")


def _load_resume(last_path: Path, meta: dict | None) -> dict | None:
    """The state in ``last_path`` (``None`` when there is none), checked against ``meta``."""
    if not last_path.is_file():
        return None
    state = load_checkpoint(last_path, require=_RESUME_KEYS)
    _check_resumable(state.get("meta"), meta, last_path)
    return state


def _complete(stopper: EarlyStopping, epoch: int, epochs: int) -> str | None:
    """Why a run that has trained ``epoch`` epochs is complete, or ``None`` when it is not."""
    if stopper.should_stop:
        return (
            f"stopped early after {epoch} epochs: no improvement for {stopper.bad_epochs} "
            f"epochs, patience {stopper.patience}; raise patience to train further"
        )
    if epoch >= epochs:
        return f"{epoch} epochs trained, epochs={epochs}; raise epochs to train further"
    return None


def _announce(
    desc: str, out_dir: Path, stopper: EarlyStopping, start: int, epochs: int, was_finished: bool
) -> bool:
    """Say on stderr when a resumed run is complete (returns True) or a finished one extended."""
    reason = _complete(stopper, start, epochs) if start else None
    if reason is not None:
        print(f"{desc}: {out_dir} is complete ({reason}); nothing trained", file=sys.stderr)
    elif was_finished:
        print(
            f"{desc}: extending the finished run in {out_dir} beyond {start} epochs",
            file=sys.stderr,
        )
    return reason is not None


def fit(
    *,
    out_dir: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    epochs: int,
    train_epoch: Callable[[int], dict],
    validate: Callable[[int], float],
    stopper: EarlyStopping,
    generator: torch.Generator,
    np_rng: np.random.Generator,
    desc: str = "train",
    stop_after: int | None = None,
    progress: bool = True,
    meta: dict | None = None,
    resume_state: dict | None = None,
    lr_at: Callable[[int], float] | None = None,
) -> FitResult:
    """Run (or resume) a training loop with atomic per-epoch checkpoints.

    Args:
        out_dir: where ``last.pt``, ``best.pt`` and ``history.json`` go.
        model, optimizer: trained in place; restored from ``last.pt`` when it exists.
        epochs: maximum epochs (>= 1).
        train_epoch: ``train_epoch(epoch) -> dict`` of statistics (draws randomness only from
            ``generator`` / ``np_rng`` so that resumption is exact).
        validate: ``validate(epoch) -> float`` (deterministic).
        stopper: early-stopping rule; its progress is checkpointed, its ``patience`` is the
            caller's (it may change between an interruption and the resumption).
        stop_after: stop after this many epochs *of this call* without marking the run finished
            (simulates an interruption; used by the resume test).
        meta: stored in the checkpoints (e.g. the variant, for checks on resume).
        resume_state: the content of ``last.pt`` when the caller has already loaded and checked
            it (:func:`setup_run` does); ``None`` reads ``last.pt`` here.
        lr_at: ``lr_at(epoch)``, the learning rate set on every parameter group before the
            epoch (``None``: the optimizer's own).

    A run already complete under ``epochs`` and ``stopper.patience`` trains nothing and says so
    on stderr; a finished run that they allow to go further is extended (and says so).

    Raises:
        ValueError: ``epochs < 1``, or ``last.pt`` belongs to a run with another configuration.
        CheckpointError: ``last.pt`` is damaged or unsafe.
        TrainingInterrupted: Ctrl-C; the message names the ``last.pt`` to resume from.
    """
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    last_path, best_path = out_dir / "last.pt", out_dir / "best.pt"
    start, history, was_finished = 0, [], False
    state = resume_state if resume_state is not None else _load_resume(last_path, meta)
    if state is not None:
        load_state(model, state["model"], last_path, meta=state.get("meta"))
        optimizer.load_state_dict(state["optimizer"])
        stopper.load_progress(state["stopper"])
        restore_rng(state["rng"], generator=generator, np_rng=np_rng)
        start, history, was_finished = (
            int(state["epoch"]),
            list(state["history"]),
            state["finished"],
        )
    finished = _announce(desc, out_dir, stopper, start, epochs, was_finished)
    bar = tqdm(
        total=epochs,
        initial=start,
        desc=desc,
        disable=not progress or finished,
        leave=False,
        file=sys.stderr,
        dynamic_ncols=True,
    )
    ran, epoch, saved = 0, start, start
    try:
        while not finished and epoch < epochs:
            if stop_after is not None and ran >= stop_after:
                break
            t0 = time.perf_counter()
            if lr_at is not None:
                for group in optimizer.param_groups:
                    group["lr"] = lr_at(epoch)
            model.train()
            stats = dict(train_epoch(epoch))
            model.eval()
            with torch.no_grad():
                metric = float(validate(epoch))
            improved = stopper.step(metric, epoch)
            stats.update(
                epoch=epoch,
                val=metric,
                val_avg=stopper.averaged(),
                seconds=time.perf_counter() - t0,
            )
            history.append(stats)
            if improved:
                atomic_save({"model": model.state_dict(), "epoch": epoch, "meta": meta}, best_path)
            epoch += 1
            ran += 1
            finished = stopper.should_stop or epoch >= epochs
            atomic_save(
                {
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "stopper": stopper.state_dict(),
                    "rng": capture_rng(generator=generator, np_rng=np_rng),
                    "epoch": epoch,
                    "history": history,
                    "finished": finished,
                    "meta": meta,
                },
                last_path,
            )
            saved = epoch
            bar.update(1)
            bar.set_postfix(val=f"{metric:.4g}", best=f"{stopper.best:.4g}", refresh=False)
    except KeyboardInterrupt:
        raise _interrupted(desc, out_dir, saved, epochs) from None
    finally:
        bar.close()
    atomic_write_text(out_dir / "history.json", json.dumps(history, indent=1) + "\n")
    return FitResult(
        best_epoch=stopper.best_epoch,
        best_metric=float("nan") if stopper.best is None else float(stopper.best),
        epochs_run=epoch,
        finished=finished,
        history=history,
        best_path=best_path,
        epochs_trained=ran,
    )


def _interrupted(desc: str, out_dir: Path, saved: int, epochs: int) -> TrainingInterrupted:
    last = out_dir / "last.pt"
    if saved and last.is_file():
        message = (
            f"interrupted: {desc} has {saved} of {epochs} epochs saved in {last}; run the same "
            "command again to resume from there"
        )
        return TrainingInterrupted(message, last_path=last, epochs_saved=saved)
    message = (
        f"interrupted: {desc} stopped in its first epoch, nothing saved yet in {out_dir}; run "
        "the same command again to start it"
    )
    return TrainingInterrupted(message, last_path=None, epochs_saved=0)


@dataclass
class Run:
    """Everything a trainer needs, built once by :func:`setup_run`.

    Attributes:
        cfg: the resolved configuration; ``out_dir`` the run's folder (``config.json`` is there).
        device: where the model lives.
        model: the network (FEN loaded and frozen when the trainer asked for it).
        optimizer: over the trainable parameters only.
        generator, np_rng: the trainer's random streams (checkpointed, so resuming is exact).
        train, val: the training images split off for training and for label-free validation,
            resized for this stage's crops.
        meta: stored in every checkpoint (``meta["config"]`` guards resumption).
        resume: the checked content of ``last.pt`` (``None`` for a new run), used by
            :meth:`fit`.
        section: the trainer's config section (optimizer settings, schedule).
    """

    cfg: Config
    out_dir: Path
    device: torch.device
    model: CSSCCNN
    optimizer: torch.optim.Optimizer
    generator: torch.Generator
    np_rng: np.random.Generator
    train: ImageBank
    val: ImageBank
    meta: dict
    resume: dict | None = None
    section: Any = None

    def fit(
        self,
        *,
        epochs: int,
        train_epoch: Callable[[int], dict],
        validate: Callable[[int], float],
        stopper: EarlyStopping,
        desc: str,
        stop_after: int | None = None,
        progress: bool = True,
    ) -> FitResult:
        """:func:`fit` with this run's model, optimizer, generators, folder, metadata and the
        learning-rate schedule of its config section."""
        state, self.resume = self.resume, None
        return fit(
            out_dir=self.out_dir,
            model=self.model,
            optimizer=self.optimizer,
            epochs=epochs,
            train_epoch=train_epoch,
            validate=validate,
            stopper=stopper,
            generator=self.generator,
            np_rng=self.np_rng,
            desc=desc,
            stop_after=stop_after,
            progress=progress,
            meta=self.meta,
            resume_state=state,
            lr_at=lambda epoch: learning_rate(self.section, epoch, epochs),
        )


def setup_run(
    dataset: CrowdDataset,
    cfg: Config,
    out_dir: str | Path,
    *,
    what: str,
    labels: bool,
    section: Any,
    trainable: Callable[[CSSCCNN], Iterable[nn.Parameter]],
    seed_offset: int,
    fen_checkpoint: str | Path | None = None,
    freeze_fen: bool = False,
    meta: dict | None = None,
) -> Run:
    """The run setup shared by every trainer.

    In this order (the order fixes the random streams, so it is part of what resuming relies
    on): check the dataset (label-free trainers refuse labels, labeled baselines need them) and
    the section's ``epochs`` and ``patience``, read ``out_dir/last.pt`` when it exists and refuse
    a resume with another configuration (before anything is written), remove temporary files
    that killed writes left, create ``out_dir`` and write ``config.json`` (unless the run is
    already complete: then it keeps the settings it was trained with), seed torch with
    ``cfg.seed`` and build the model, load the stage-1 FEN, move to the device, freeze the FEN,
    build the optimizer, seed the trainer's generators with ``cfg.seed + seed_offset``, split
    the training images into train/validation (``data.split_seed``, the same for every stage)
    and resize them so that a ``section.crop_size`` crop fits.

    Args:
        dataset: the training images.
        cfg: the resolved configuration.
        out_dir: the run's folder.
        what: the trainer's name (error messages).
        labels: ``False`` for label-free trainers (the dataset must have no labels), ``True``
            for the labeled baselines (it must have them).
        section: the trainer's config section (``optimizer``, ``lr``, ``crop_size``, ...).
        trainable: which parameters of the model the optimizer updates.
        seed_offset: added to ``cfg.seed`` for the trainer's own generators.
        fen_checkpoint: a stage-1 checkpoint whose FEN is loaded (``None``: random FEN).
        freeze_fen: freeze the FEN (weights and BatchNorm statistics).
        meta: trainer-specific checkpoint metadata (``stage``, ``variant``, ...).
    """
    (require_labeled if labels else require_unlabeled)(dataset, what)
    validate_config(cfg)  # a config edited after make_config: epochs, patience, ...
    out_dir = Path(out_dir)
    meta = {
        **(meta or {}),
        "width": cfg.model.width,
        "rotations": cfg.model.rotations,
        "config": config_to_dict(cfg),
    }
    resume = _load_resume(out_dir / "last.pt", meta)
    remove_stale_temporaries(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if resume is None or not _would_be_complete(resume, section):
        save_config(cfg, out_dir / "config.json")
    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)
    model = CSSCCNN(width=cfg.model.width, rotations=cfg.model.rotations)
    if fen_checkpoint is not None:
        load_stage1_fen(model, fen_checkpoint)
    model.to(device)
    if freeze_fen:
        model.freeze_fen()
    optimizer = make_optimizer(trainable(model), section)
    generator = torch.Generator().manual_seed(cfg.seed + seed_offset)
    np_rng = np.random.default_rng(cfg.seed + seed_offset)
    train_idx, val_idx = split_train_val(
        len(dataset), cfg.data.val_fraction, seed=cfg.data.split_seed
    )
    sizes = dict(
        min_side=max(cfg.data.min_side, section.crop_size),
        max_side=cfg.data.max_side,
        scale=cfg.data.scale,
        cache=cfg.data.cache_images,
    )
    return Run(
        cfg=cfg,
        out_dir=out_dir,
        device=device,
        model=model,
        optimizer=optimizer,
        generator=generator,
        np_rng=np_rng,
        train=ImageBank(dataset, train_idx, **sizes),
        val=ImageBank(dataset, val_idx, **sizes),
        meta=meta,
        resume=resume,
        section=section,
    )


def _would_be_complete(state: dict, section: Any) -> bool:
    """Whether :func:`fit` would train nothing on ``state`` under ``section``'s epochs and
    patience."""
    stopper = EarlyStopping(patience=section.patience)
    stopper.load_progress(state["stopper"])
    return _complete(stopper, int(state["epoch"]), section.epochs) is not None
