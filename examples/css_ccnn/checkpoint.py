"""Atomic checkpoints and exact resumption (model, optimizer, RNG states, early-stopping state).

A checkpoint is written to a temporary file in the destination directory and moved into place
with :func:`os.replace`, so an interruption leaves either the old or the new file, never half a
file. Training loops save at the end of every epoch everything that the next epoch reads: model
and optimizer state, the epoch counter, the early-stopping state and the states of every random
number generator (torch's global CPU/CUDA generators, the loop's own ``torch.Generator``,
its ``numpy.random.Generator`` and Python's ``random``), so a resumed run ends bit-identical to an
uninterrupted one on the same machine.
"""

from __future__ import annotations

import os
import random
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = [
    "EarlyStopping",
    "atomic_save",
    "atomic_write_text",
    "capture_rng",
    "load_checkpoint",
    "restore_rng",
]


def _atomic_write(path: Path, write) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def atomic_save(obj: Any, path: str | Path) -> Path:
    """``torch.save(obj, path)`` through a temporary file in the same directory + ``os.replace``."""
    return _atomic_write(Path(path), lambda handle: torch.save(obj, handle))


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return _atomic_write(Path(path), lambda handle: handle.write(text.encode("utf-8")))


def load_checkpoint(path: str | Path, *, map_location: Any = "cpu") -> dict[str, Any]:
    """Load a checkpoint written by :func:`atomic_save` (a dict)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"checkpoint not found: {str(path)!r}")
    obj = torch.load(path, map_location=map_location, weights_only=False)
    if not isinstance(obj, dict):
        raise TypeError(f"checkpoint {str(path)!r} holds {type(obj).__name__}, expected a dict")
    return obj


def capture_rng(
    *, generator: torch.Generator | None = None, np_rng: np.random.Generator | None = None
) -> dict[str, Any]:
    """The state of every random number generator a training loop may touch."""
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy_global": np.random.get_state(),  # noqa: NPY002 (saved for third-party code)
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["torch_cuda"] = torch.cuda.get_rng_state_all()
    if generator is not None:
        state["generator"] = generator.get_state()
    if np_rng is not None:
        state["np_rng"] = np_rng.bit_generator.state
    return state


def restore_rng(
    state: dict[str, Any],
    *,
    generator: torch.Generator | None = None,
    np_rng: np.random.Generator | None = None,
) -> None:
    """Inverse of :func:`capture_rng`."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy_global"])  # noqa: NPY002
    torch.set_rng_state(state["torch"])
    if "torch_cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["torch_cuda"])
    if generator is not None and "generator" in state:
        generator.set_state(state["generator"])
    if np_rng is not None and "np_rng" in state:
        np_rng.bit_generator.state = state["np_rng"]


@dataclass
class EarlyStopping:
    """Patience-based early stopping on a (optionally moving-averaged) metric.

    Attributes:
        mode: ``"max"`` (accuracy) or ``"min"`` (loss).
        patience: epochs without improvement before stopping.
        window: moving-average window applied to the raw metric (1 = none).
        best: best (averaged) value so far; ``best_epoch`` the epoch it was reached.
        history: raw metric per epoch.
    """

    mode: str = "min"
    patience: int = 10
    window: int = 1
    best: float | None = None
    best_epoch: int = -1
    bad_epochs: int = 0
    history: list = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.mode not in ("min", "max"):
            raise ValueError(f"mode must be 'min' or 'max', got {self.mode!r}")
        if self.patience < 1 or self.window < 1:
            raise ValueError(
                f"patience and window must be >= 1, got patience={self.patience}, "
                f"window={self.window}"
            )

    def averaged(self) -> float:
        """Moving average of the last ``window`` raw values."""
        tail = self.history[-self.window :]
        return float(np.mean(tail))

    def step(self, value: float, epoch: int) -> bool:
        """Record ``value`` for ``epoch``; returns True when this epoch is the new best."""
        self.history.append(float(value))
        current = self.averaged()
        better = (
            self.best is None
            or (self.mode == "min" and current < self.best)
            or (self.mode == "max" and current > self.best)
        )
        if better:
            self.best, self.best_epoch, self.bad_epochs = current, epoch, 0
        else:
            self.bad_epochs += 1
        return better

    @property
    def should_stop(self) -> bool:
        return self.bad_epochs >= self.patience

    def state_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> EarlyStopping:
        return cls(**state)
