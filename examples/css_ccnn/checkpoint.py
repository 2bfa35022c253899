r"""Safe, verified, atomic checkpoints and exact resumption.

**Atomic.** A checkpoint is written to a temporary file in the destination directory and moved
into place with :func:`os.replace`, so an interruption leaves either the old or the new file,
never half a file. A kill at the wrong moment can leave a temporary ``.<name>.<random>.tmp``
file behind; :func:`remove_stale_temporaries` deletes them when a run starts. Written files get
the permissions the umask allows (``0o666 & ~umask``), like any other file the user creates.

**Data, not code.** A checkpoint holds tensors and plain Python values only (dicts, lists,
tuples, strings, numbers, booleans, ``None``); :func:`atomic_save` converts numpy values to
tensors and plain numbers and refuses anything else, and :func:`load_checkpoint` opens files with
``torch.load(weights_only=True)``, which refuses to build any other Python object. Unpickling an
arbitrary object can run code, so a crafted file is rejected instead of executed.

**Verified.** :func:`atomic_save` stores a SHA-256 digest of the whole content (every tensor's
dtype, shape and bytes and every plain value, in a fixed order: :func:`content_digest`) under
``"checksum"``, and :func:`load_checkpoint` recomputes it, so flipped bytes are reported instead
of silently changing the weights. (The digest detects damage, not forgery: whoever can write the
file can write a matching digest. Only open checkpoints you trust to hold *good weights*; opening
any checkpoint is safe.)

**Exact resumption.** Training loops save at the end of every epoch everything that the next
epoch reads: model and optimizer state, the epoch counter, the early-stopping state and the
states of every random number generator (torch's global CPU/CUDA generators, the loop's own
``torch.Generator``, its ``numpy.random.Generator``, numpy's global generator and Python's
``random``), all as tensors and plain values, so a resumed run ends bit-identical to an
uninterrupted one on the same machine.

Every problem with a file raises :class:`CheckpointError` (a ``ValueError``) whose message names
the file and the cause.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import random
import re
import struct
import tempfile
import warnings
import zipfile
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePath
from typing import Any

import numpy as np
import torch

__all__ = [
    "CheckpointError",
    "EarlyStopping",
    "atomic_save",
    "atomic_write_bytes",
    "atomic_write_text",
    "capture_rng",
    "content_digest",
    "load_checkpoint",
    "load_state",
    "load_weights",
    "remove_stale_temporaries",
    "restore_rng",
]

_CHECKSUM_KEY = "checksum"
_TMP_RE = re.compile(r"^\..+\.[A-Za-z0-9_]{6,}\.tmp$")


class CheckpointError(ValueError):
    """A checkpoint is missing, damaged, unsafe or does not fit; the message names the file."""


# ----------------------------------------------------------------------------------------------
# writing


def _file_mode() -> int:
    """``0o666 & ~umask``: the mode ``open()`` would give a new file."""
    umask = os.umask(0o022)  # reading the umask means setting it; put it straight back
    os.umask(umask)
    return 0o666 & ~umask


def _atomic_write(path: Path, write) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, _file_mode())  # mkstemp creates 0o600 whatever the umask
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def remove_stale_temporaries(folder: str | Path) -> list[Path]:
    """Delete the ``.<name>.<random>.tmp`` files that an interrupted atomic write left in
    ``folder`` (not recursive); returns what was removed.

    Call it when a run starts: a folder is written by one run at a time, so any temporary file
    found then belongs to a write that was killed.
    """
    folder = Path(folder)
    removed = []
    if not folder.is_dir():
        return removed
    for p in folder.iterdir():
        if _TMP_RE.match(p.name) and p.is_file():
            try:
                p.unlink()
            except FileNotFoundError:
                continue
            removed.append(p)
    return removed


def _plain(obj: Any, where: str) -> Any:
    """``obj`` with numpy values turned into tensors / Python numbers and paths into strings;
    refuses any other object. Returns ``obj`` itself when nothing changed."""
    if obj is None or isinstance(obj, (bool, int, float, str, bytes, torch.Tensor)):
        return obj
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        if obj.dtype == object:
            raise TypeError(f"checkpoint entry {where} is an object array; store numbers only")
        return torch.from_numpy(np.array(obj, copy=True))
    if isinstance(obj, PurePath):
        return str(obj)
    if isinstance(obj, dict):
        items = {k: _plain(v, f"{where}[{k!r}]") for k, v in obj.items()}
        for k in items:
            if not isinstance(k, (str, int)) or isinstance(k, bool):
                raise TypeError(f"checkpoint entry {where} has key {k!r}; use str or int keys")
        if all(items[k] is obj[k] for k in obj):
            return obj
        out = OrderedDict(items) if isinstance(obj, OrderedDict) else items
        if hasattr(obj, "_metadata"):
            out._metadata = obj._metadata  # state_dict version information
        return out
    if isinstance(obj, (list, tuple)):
        items = [_plain(v, f"{where}[{i}]") for i, v in enumerate(obj)]
        if all(a is b for a, b in zip(items, obj)):
            return obj
        return list(items) if isinstance(obj, list) else tuple(items)
    raise TypeError(
        f"checkpoint entry {where} is a {type(obj).__module__}.{type(obj).__qualname__}; a "
        "checkpoint holds only tensors, numbers, strings, booleans, None, lists, tuples and dicts"
    )


def _update(h, obj: Any) -> None:
    if obj is None:
        h.update(b"N")
    elif isinstance(obj, bool):
        h.update(b"B1" if obj else b"B0")
    elif isinstance(obj, int):
        s = str(obj).encode()
        h.update(b"I" + struct.pack("<Q", len(s)) + s)
    elif isinstance(obj, float):
        h.update(b"F" + obj.hex().encode() + b";")
    elif isinstance(obj, (str, bytes)):
        s = obj.encode("utf-8") if isinstance(obj, str) else obj
        h.update((b"S" if isinstance(obj, str) else b"Y") + struct.pack("<Q", len(s)) + s)
    elif isinstance(obj, torch.Tensor):
        t = obj.detach().to("cpu").contiguous()
        h.update(f"T{t.dtype}{tuple(t.shape)};".encode())
        if t.numel():
            h.update(memoryview(t.reshape(-1).view(torch.uint8).numpy()))
    elif isinstance(obj, dict):
        keys = sorted(obj, key=lambda k: (type(k).__name__, k))
        h.update(b"D" + struct.pack("<Q", len(keys)))
        for k in keys:
            _update(h, k)
            _update(h, obj[k])
    elif isinstance(obj, (list, tuple)):
        h.update((b"L" if isinstance(obj, list) else b"U") + struct.pack("<Q", len(obj)))
        for v in obj:
            _update(h, v)
    else:
        raise TypeError(f"cannot digest a {type(obj).__name__}")


def content_digest(obj: dict) -> str:
    r"""SHA-256 (hex) of a checkpoint's content, without its ``"checksum"`` entry.

    Dict entries are visited in sorted key order, lists and tuples in order; a tensor contributes
    its dtype, shape and bytes (on the CPU, contiguous), a plain value its type and exact value
    (floats through :meth:`float.hex`). Equal content gives an equal digest whatever the pickle
    bytes.

    Example:
        >>> a = content_digest({"w": torch.ones(2), "epoch": 3})
        >>> a == content_digest({"epoch": 3, "w": torch.ones(2)})
        True
        >>> a == content_digest({"epoch": 3, "w": torch.tensor([1.0, 1.0 + 2**-23])})
        False
    """
    h = hashlib.sha256()
    _update(h, {k: v for k, v in obj.items() if k != _CHECKSUM_KEY})
    return h.hexdigest()


def atomic_save(obj: Any, path: str | Path) -> Path:
    """``torch.save(obj, path)`` through a temporary file in the same directory + ``os.replace``.

    A dict is stored with its :func:`content_digest` under ``"checksum"``. numpy values become
    tensors or Python numbers and paths strings; any other object raises ``TypeError`` before
    anything is written (it would not load with ``weights_only=True``).
    """
    obj = _plain(obj, "")
    if isinstance(obj, dict):
        obj = {**obj, _CHECKSUM_KEY: {"sha256": content_digest(obj)}}
    return _atomic_write(Path(path), lambda handle: torch.save(obj, handle))


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (mode ``0o666 & ~umask``)."""
    return _atomic_write(Path(path), lambda handle: handle.write(data))


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically (mode ``0o666 & ~umask``)."""
    return _atomic_write(Path(path), lambda handle: handle.write(text.encode("utf-8")))


# ----------------------------------------------------------------------------------------------
# reading


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def _refused_global(message: str) -> str | None:
    """The Python object that ``weights_only=True`` refused to build, if that was the failure."""
    match = re.search(r"GLOBAL ([\w.]+)", message)
    return match.group(1) if match else None


def _unpickler_cause(exc: BaseException) -> str:
    """The weights-only unpickler's own reason (after its long generic explanation)."""
    text = str(exc)
    if "WeightsUnpickler error:" in text:
        tail = text.split("WeightsUnpickler error:", 1)[1].strip().splitlines()
        if tail and tail[0].strip():
            return f"unpickling failed: {tail[0].strip()}"
    return _first_line(exc)


def _torch_load(path: Path, map_location: Any) -> Any:
    """``torch.load(weights_only=True)``; every failure becomes a :class:`CheckpointError`."""
    size = path.stat().st_size
    if size == 0:
        raise CheckpointError(f"checkpoint {path} is empty (0 bytes): it was never written")
    with open(path, "rb") as handle:
        head = handle.read(4)
    is_zip = head == b"PK\x03\x04"
    if is_zip and not zipfile.is_zipfile(path):
        raise CheckpointError(
            f"checkpoint {path} is truncated ({size} bytes, the archive's directory at the end "
            "is missing): the file was cut short, e.g. by an interrupted copy or download"
        )
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        name = _refused_global(str(exc))
        if name is not None:
            raise CheckpointError(
                f"checkpoint {path} holds a Python object ({name}) that is not plain data; it "
                "was not loaded, because building such objects can run arbitrary code. This "
                "example's checkpoints hold only tensors and plain values (a last.pt written by "
                "an older version stored numpy random states as objects: start that run in a "
                "new folder)"
            ) from None
        raise CheckpointError(
            f"checkpoint {path} is corrupt or not a PyTorch checkpoint ({_unpickler_cause(exc)})"
        ) from None
    except Exception as exc:  # EOFError, RuntimeError (zip reader), OSError, IndexError, ...
        kind = "is corrupt" if is_zip else "is not a PyTorch checkpoint (or is corrupt)"
        raise CheckpointError(f"checkpoint {path} {kind} ({_first_line(exc)})") from None


def _verify(obj: dict, path: Path) -> None:
    stored = obj.get(_CHECKSUM_KEY)
    if stored is None:
        bad = None
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                bad = archive.testzip()
        if bad is not None:
            raise CheckpointError(f"checkpoint {path} is corrupt (CRC mismatch in {bad})")
        warnings.warn(
            f"checkpoint {path} has no checksum (written before checkpoints carried one); its "
            "weights cannot be verified",
            stacklevel=3,
        )
        return
    digest = stored.get("sha256") if isinstance(stored, dict) else None
    if not isinstance(digest, str):
        raise CheckpointError(f"checkpoint {path} has a malformed 'checksum' entry: {stored!r}")
    try:
        actual = content_digest(obj)
    except TypeError as exc:
        raise CheckpointError(f"checkpoint {path} holds unexpected content ({exc})") from None
    if actual != digest:
        raise CheckpointError(
            f"checkpoint {path} is corrupt: the SHA-256 of its content ({actual[:16]}…) does not "
            f"match the checksum stored in it ({digest[:16]}…); the file was damaged or edited "
            "after it was written"
        )


def load_checkpoint(
    path: str | Path, *, map_location: Any = "cpu", require: Sequence[str] = ()
) -> dict[str, Any]:
    """Load and verify a checkpoint written by :func:`atomic_save` (a dict).

    Args:
        path: the file.
        map_location: passed to ``torch.load``.
        require: entries the caller needs (e.g. ``("model",)``); a missing one raises.

    Returns:
        dict: the content (its ``"checksum"`` entry included).

    Raises:
        CheckpointError: the file is missing, empty, truncated, not a checkpoint, corrupt (its
            checksum does not match), holds objects other than tensors and plain values, or lacks
            a required entry. The message names the file and the cause.
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} not found")
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} is not a file")
    obj = _torch_load(path, map_location)
    if not isinstance(obj, dict):
        raise CheckpointError(
            f"checkpoint {path} holds a {type(obj).__name__}, expected a dict of entries"
        )
    _verify(obj, path)
    missing = [k for k in require if k not in obj]
    if missing:
        have = ", ".join(repr(k) for k in obj if k != _CHECKSUM_KEY) or "none"
        raise CheckpointError(
            f"checkpoint {path} has no {', '.join(map(repr, missing))} entry (its entries: "
            f"{have}): not a checkpoint written by this example's training"
        )
    return obj


def _describe(meta: dict) -> str:
    preset = (meta.get("config") or {}).get("preset")
    return f" (preset {preset!r})" if preset else ""


def load_state(
    module: torch.nn.Module, state: dict, path: str | Path, *, meta: dict | None = None
) -> None:
    """``module.load_state_dict(state)`` with a mismatch reported as a :class:`CheckpointError`
    naming ``path`` (and the width the checkpoint's ``meta`` says it was trained with)."""
    try:
        module.load_state_dict(state)
    except RuntimeError as exc:
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
        detail = lines[1] if len(lines) > 1 else (lines[0] if lines else "")
        trained = ""
        if meta and "width" in meta:
            trained = f"; it was trained with model.width={meta['width']}{_describe(meta)}"
        raise CheckpointError(
            f"checkpoint {path} does not fit this model ({detail}){trained}"
        ) from None


def load_weights(model: torch.nn.Module, path: str | Path, *, map_location: Any = "cpu") -> dict:
    """Load the ``"model"`` weights of checkpoint ``path`` into ``model``; returns the checkpoint.

    When the checkpoint's ``meta`` records ``width`` / ``rotations`` and ``model`` has those
    attributes (a ``CSSCCNN``), they must agree: the error says which setting to change.

    Raises:
        CheckpointError: see :func:`load_checkpoint`, or the weights do not fit ``model``.
    """
    ckpt = load_checkpoint(path, map_location=map_location, require=("model",))
    meta = ckpt.get("meta") or {}
    for key in ("width", "rotations"):
        if key in meta and hasattr(model, key) and float(meta[key]) != float(getattr(model, key)):
            raise CheckpointError(
                f"checkpoint {path} was trained with model.{key}={meta[key]}{_describe(meta)}, "
                f"but this model has model.{key}={getattr(model, key)}: use the same preset or "
                f"--set model.{key}={meta[key]}"
            )
    load_state(model, ckpt["model"], path, meta=meta)
    return ckpt


# ----------------------------------------------------------------------------------------------
# random states


def capture_rng(
    *, generator: torch.Generator | None = None, np_rng: np.random.Generator | None = None
) -> dict[str, Any]:
    """The state of every random number generator a training loop may touch, as tensors and
    plain values (so that the checkpoint loads with ``weights_only=True``)."""
    algorithm, key, pos, has_gauss, cached = np.random.get_state()  # noqa: NPY002
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy_global": {
            "algorithm": str(algorithm),
            "key": torch.from_numpy(np.asarray(key, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["torch_cuda"] = torch.cuda.get_rng_state_all()
    if generator is not None:
        state["generator"] = generator.get_state()
    if np_rng is not None:
        state["np_rng"] = np_rng.bit_generator.state  # nested dicts of str and int
    return state


def restore_rng(
    state: dict[str, Any],
    *,
    generator: torch.Generator | None = None,
    np_rng: np.random.Generator | None = None,
) -> None:
    """Inverse of :func:`capture_rng`."""
    random.setstate(state["python"])
    g = state["numpy_global"]
    np.random.set_state(  # noqa: NPY002
        (
            g["algorithm"],
            np.asarray(g["key"], dtype=np.uint32),
            g["pos"],
            g["has_gauss"],
            g["cached_gaussian"],
        )
    )
    torch.set_rng_state(state["torch"])
    if "torch_cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["torch_cuda"])
    if generator is not None and "generator" in state:
        generator.set_state(state["generator"])
    if np_rng is not None and "np_rng" in state:
        np_rng.bit_generator.state = state["np_rng"]


# ----------------------------------------------------------------------------------------------
# early stopping


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

    def load_progress(self, state: dict[str, Any]) -> None:
        """Take the progress (best, best epoch, bad epochs, history) from a saved
        :meth:`state_dict`, keeping this rule's ``mode``, ``patience`` and ``window``."""
        self.best, self.best_epoch = state["best"], int(state["best_epoch"])
        self.bad_epochs, self.history = int(state["bad_epochs"]), list(state["history"])
