"""The resumable epoch loop shared by stage 1, stage 2 and the labeled baselines.

:func:`fit` runs ``train_epoch`` / ``validate`` per epoch, keeps the best weights (``best.pt``) by
an :class:`~examples.css_ccnn.checkpoint.EarlyStopping` rule and writes ``last.pt`` atomically
after every epoch with everything needed to continue exactly where it stopped (model, optimizer,
epoch, early-stopping state, history, RNG states). Calling :func:`fit` again on the same output
directory resumes from ``last.pt``; a finished run is not retrained.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .checkpoint import (
    EarlyStopping,
    atomic_save,
    atomic_write_text,
    capture_rng,
    load_checkpoint,
    restore_rng,
)

__all__ = ["FitResult", "fit", "make_optimizer", "resolve_device", "set_threads"]


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
) -> FitResult:
    """Run (or resume) a training loop with atomic per-epoch checkpoints.

    Args:
        out_dir: where ``last.pt``, ``best.pt`` and ``history.json`` go.
        model, optimizer: trained in place; restored from ``last.pt`` when it exists.
        epochs: maximum epochs.
        train_epoch: ``train_epoch(epoch) -> dict`` of statistics (draws randomness only from
            ``generator`` / ``np_rng`` so that resumption is exact).
        validate: ``validate(epoch) -> float`` (deterministic).
        stopper: early-stopping rule (its state is checkpointed).
        stop_after: stop after this many epochs *of this call* without marking the run finished
            (simulates an interruption; used by the resume test).
        meta: stored in the checkpoints (e.g. the variant, for checks on resume).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    last_path, best_path = out_dir / "last.pt", out_dir / "best.pt"
    start, history, finished = 0, [], False
    if last_path.is_file():
        state = load_checkpoint(last_path)
        _check_resumable(state.get("meta"), meta, last_path)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        stopper.__dict__.update(EarlyStopping.from_state(state["stopper"]).__dict__)
        restore_rng(state["rng"], generator=generator, np_rng=np_rng)
        start, history, finished = state["epoch"], state["history"], state["finished"]
    from tqdm.auto import tqdm

    bar = tqdm(
        total=epochs,
        initial=start,
        desc=desc,
        disable=not progress or finished,
        leave=False,
        file=sys.stderr,
        dynamic_ncols=True,
    )
    ran = 0
    epoch = start
    while not finished and epoch < epochs:
        if stop_after is not None and ran >= stop_after:
            break
        t0 = time.perf_counter()
        model.train()
        stats = dict(train_epoch(epoch))
        model.eval()
        with torch.no_grad():
            metric = float(validate(epoch))
        improved = stopper.step(metric, epoch)
        stats.update(
            epoch=epoch, val=metric, val_avg=stopper.averaged(), seconds=time.perf_counter() - t0
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
        bar.update(1)
        bar.set_postfix(val=f"{metric:.4g}", best=f"{stopper.best:.4g}", refresh=False)
    bar.close()
    atomic_write_text(out_dir / "history.json", json.dumps(history, indent=1) + "\n")
    return FitResult(
        best_epoch=stopper.best_epoch,
        best_metric=float("nan") if stopper.best is None else float(stopper.best),
        epochs_run=epoch,
        finished=finished,
        history=history,
        best_path=best_path,
    )
