"""Shared input validation: one vocabulary for the whole library.

Every helper raises ``TypeError`` (wrong kind of object or dtype) or ``ValueError`` (wrong shape
or value) with a message that names the argument and shows what was received:

* :func:`describe` shows a received value (tensors by shape, dtype and device);
* :func:`check_real`, :func:`check_int`, :func:`check_positive_int` and :func:`check_choice`
  check scalar settings, always called as ``check_*(name, value, ...)``;
* :func:`check_float_tensor`, :func:`check_finite`, :func:`as_points`, :func:`as_weights`,
  :func:`check_same_device` and :func:`compute_dtype` handle tensors.

Value checks on tensors (NaN, negative weights) read data back to the host; callers that must
avoid host synchronisation (fixed-iteration mode) pass ``check_values=False``.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "as_masses",
    "as_points",
    "as_weights",
    "check_choice",
    "check_finite",
    "check_float_tensor",
    "check_int",
    "check_positive_int",
    "check_real",
    "check_same_device",
    "compute_dtype",
    "describe",
]


def describe(v: object) -> str:
    """A short description of a received value for error messages.

    Example:
        >>> describe(torch.zeros(2, 3))
        'Tensor(shape=(2, 3), dtype=torch.float32, device=cpu)'
        >>> describe("0.1")
        "str '0.1'"
    """
    if isinstance(v, Tensor):
        return f"Tensor(shape={tuple(v.shape)}, dtype={v.dtype}, device={v.device})"
    return f"{type(v).__name__} {v!r}"[:200]


def _scalar(v: object, arrays: bool) -> float | None:
    """``v`` as a float if it is a real number (a one-element tensor or 0-d array if allowed)."""
    if isinstance(v, numbers.Real) and not isinstance(v, (bool, np.bool_)):
        return float(v)
    if not arrays:
        return None
    if isinstance(v, Tensor) and v.numel() == 1 and v.is_floating_point():
        return float(v.item())
    if isinstance(v, np.ndarray) and v.ndim == 0 and v.dtype.kind in "fiu":
        return float(v.item())
    return None


def _bounds_text(gt, ge, lt, le, finite: bool) -> str:
    """What a value must be, in words: ``finite and > 0``, ``a float in (0, 1)``, ..."""
    lo, hi = (ge if gt is None else gt), (le if lt is None else lt)
    if lo is not None and hi is not None:
        left, right = ("[" if gt is None else "("), ("]" if lt is None else ")")
        return f"a float in {left}{lo:g}, {hi:g}{right}"
    ops = ((">", gt), (">=", ge), ("<", lt), ("<=", le))
    bound = " and ".join(f"{op} {b:g}" for op, b in ops if b is not None)
    if not bound:
        return "finite"
    return f"finite and {bound}" if finite else f"a float {bound}"


def check_real(
    name: str,
    v: object,
    *,
    gt: float | None = None,
    ge: float | None = None,
    lt: float | None = None,
    le: float | None = None,
    finite: bool = True,
    none_ok: bool = False,
    arrays: bool = True,
) -> float | None:
    """Check a real-valued setting and return it as a Python float.

    Args:
        name: The argument name for error messages.
        v: The value received.
        gt: Exclusive lower bound (``value > gt``); ``None`` for none.
        ge: Inclusive lower bound (``value >= ge``); ``None`` for none.
        lt: Exclusive upper bound (``value < lt``); ``None`` for none.
        le: Inclusive upper bound (``value <= le``); ``None`` for none.
        finite: Reject ``±inf`` (NaN is always rejected).
        none_ok: Accept ``None`` (returned as is).
        arrays: Also accept a one-element floating tensor or a 0-d numpy array (read back with
            ``.item()``); solver settings pass ``False`` (no host synchronisation).

    Returns:
        float or None: The value.

    Raises:
        TypeError: Not a real number (``bool`` is rejected).
        ValueError: NaN, infinite (with ``finite``) or out of bounds.

    Example:
        >>> check_real("eps", 0.5, gt=0)
        0.5
        >>> check_real("q", 1.5, gt=0, lt=1)
        Traceback (most recent call last):
        ...
        ValueError: q must be a float in (0, 1), got 1.5
    """
    if v is None and none_ok:
        return None
    value = _scalar(v, arrays)
    prefix = "None or " if none_ok else ""
    if value is None:
        kind = "a real number"
        if lt is None and le is None and (gt, ge) in ((0, None), (None, 0)):
            kind = "a positive float" if gt == 0 else "a non-negative float"
        raise TypeError(f"{name} must be {prefix}{kind}, got {describe(v)}")
    ok = not math.isnan(value) and (math.isfinite(value) or not finite)
    ok = ok and (gt is None or value > gt) and (ge is None or value >= ge)
    ok = ok and (lt is None or value < lt) and (le is None or value <= le)
    if not ok:
        shown = v if isinstance(v, numbers.Real) else value
        raise ValueError(
            f"{name} must be {prefix}{_bounds_text(gt, ge, lt, le, finite)}, got {shown!r}"
        )
    return value


def check_int(name: str, v: object, *, ge: int | None = None, none_ok: bool = False) -> int | None:
    """Check an integer setting (Python or numpy integer; ``bool`` rejected) and return an int.

    Raises:
        TypeError: Not an integer.
        ValueError: Below ``ge``.

    Example:
        >>> check_int("n", 3, ge=0)
        3
    """
    if v is None and none_ok:
        return None
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, numbers.Integral):
        kind = "a non-negative integer" if ge == 0 else "an int"
        raise TypeError(f"{name} must be {'None or ' if none_ok else ''}{kind}, got {describe(v)}")
    if ge is not None and v < ge:
        raise ValueError(f"{name} must be >= {ge}, got {v}")
    return int(v)


def check_positive_int(name: str, v: object) -> int:
    """An int ``>= 1`` (see :func:`check_int`)."""
    return check_int(name, v, ge=1)


def check_choice(name: str, v: object, choices: Sequence[str]) -> str:
    """Check that ``v`` is one of the strings ``choices``; return it.

    Raises:
        ValueError: Anything else.

    Example:
        >>> check_choice("reduction", "sum", ("mean", "sum", "none"))
        'sum'
    """
    if not (isinstance(v, str) and v in choices):
        raise ValueError(f"{name} must be one of {tuple(choices)}, got {v!r}")
    return v


def check_float_tensor(name: str, x: object) -> Tensor:
    """Check that ``x`` is a tensor with a floating dtype; return it.

    Raises:
        TypeError: Not a tensor, or not floating.
    """
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {describe(x)}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must have a floating dtype, got {describe(x)}")
    return x


def as_points(x: object, name: str) -> Tensor:
    """View point coordinates as a batch of point clouds.

    Args:
        x: A floating tensor of shape ``(N,)`` (1-D points), ``(N, D)`` or ``(B, N, D)``.
        name: The argument name used in error messages.

    Returns:
        (B, N, D) Tensor: ``x`` itself viewed with a batch axis (B = 1 when unbatched).

    Raises:
        TypeError: Not a tensor, or not a floating dtype.
        ValueError: Wrong number of dimensions, or no points.
    """
    x = check_float_tensor(name, x)
    if x.ndim == 1:
        x = x[None, :, None]
    elif x.ndim == 2:
        x = x[None]
    elif x.ndim != 3:
        raise ValueError(f"{name} must have shape (N,), (N, D) or (B, N, D), got {describe(x)}")
    if x.shape[1] == 0 or x.shape[2] == 0:
        raise ValueError(
            f"{name} must hold at least one point of dimension >= 1, got {describe(x)}"
        )
    return x


def check_finite(name: str, t: Tensor) -> None:
    """Raise ``ValueError`` if ``t`` holds NaN or ±inf (reads one flag back to the host)."""
    if not bool(torch.isfinite(t).all()):
        n_bad = int((~torch.isfinite(t)).sum())
        raise ValueError(f"{name} must be finite, got {n_bad} NaN/inf entries in {describe(t)}")


def as_masses(
    w: object | None,
    name: str,
    *,
    batch: int,
    n_points: int,
    dtype: torch.dtype,
    device: torch.device,
    check_values: bool = True,
) -> Tensor:
    """Nonnegative weights as given (not normalized; a zero total is allowed), ``(B, N)``.

    ``None`` is uniform with total mass 1 (``1/N`` each), as in balanced OT. Arguments as in
    :func:`as_weights`.

    Raises:
        TypeError: Not a tensor or not floating.
        ValueError: Wrong shape or device, negative or NaN/inf entries.
    """
    if w is None:
        return torch.full((batch, n_points), 1.0 / n_points, dtype=dtype, device=device)
    if not isinstance(w, Tensor):
        raise TypeError(f"{name} must be None or a torch.Tensor, got {describe(w)}")
    if not w.is_floating_point():
        raise TypeError(f"{name} must have a floating dtype, got {describe(w)}")
    if w.device != device:
        raise ValueError(f"{name} must be on the points' device {device}, got {describe(w)}")
    if w.shape not in ((n_points,), (1, n_points), (batch, n_points)):
        raise ValueError(
            f"{name} must have shape ({n_points},) or ({batch}, {n_points}) to match the points, "
            f"got {describe(w)}"
        )
    w = w.expand(batch, n_points).to(dtype)
    if check_values:
        check_finite(name, w)
        if bool((w < 0).any()):
            raise ValueError(f"{name} must be nonnegative, got min {float(w.min())}")
    return w


def as_weights(
    w: object | None,
    name: str,
    *,
    batch: int,
    n_points: int,
    dtype: torch.dtype,
    device: torch.device,
    check_values: bool = True,
) -> Tensor:
    """Validate and normalize nonnegative weights per problem.

    Args:
        w: ``None`` (uniform), or a floating tensor of shape ``(N,)`` (shared by the batch) or
            ``(B, N)``. Zero entries mark padding.
        name: Argument name for error messages.
        batch: Batch size ``B``.
        n_points: Number of points ``N``.
        dtype: Dtype of the result.
        device: Device the weights must already be on (when given).
        check_values: Check for negative, NaN/inf and all-zero problems (host synchronisation).

    Returns:
        (B, N) Tensor: ``w / w.sum(-1)``, differentiable with respect to ``w``.

    Raises:
        TypeError: Not a tensor or not floating.
        ValueError: Wrong shape, negative/NaN/inf entries, or a problem whose weights are all 0.
    """
    if w is None:
        return torch.full((batch, n_points), 1.0 / n_points, dtype=dtype, device=device)
    w = as_masses(
        w, name, batch=batch, n_points=n_points, dtype=dtype, device=device,
        check_values=check_values,
    )  # fmt: skip
    if check_values:
        total = w.sum(-1)
        if bool((total <= 0).any()):
            bad = torch.nonzero(total <= 0).flatten().tolist()
            raise ValueError(
                f"{name} must have positive total mass per problem; problems {bad} sum to 0"
            )
    return w / w.sum(-1, keepdim=True)


def check_same_device(**tensors: Tensor | None) -> torch.device:
    """Check that all given tensors (``None`` skipped) live on one device; return it."""
    devices = {k: t.device for k, t in tensors.items() if isinstance(t, Tensor)}
    if len(set(devices.values())) > 1:
        listing = ", ".join(f"{k} on {d}" for k, d in devices.items())
        raise ValueError(f"all tensors must be on the same device, got {listing}")
    return next(iter(devices.values()))


def compute_dtype(*tensors: Tensor | None) -> torch.dtype:
    """The dtype computations run in: the promoted dtype, float16/bfloat16 raised to float32."""
    dtype: torch.dtype | None = None
    for t in tensors:
        if isinstance(t, Tensor) and t.is_floating_point():
            dtype = t.dtype if dtype is None else torch.promote_types(dtype, t.dtype)
    if dtype is None or dtype in (torch.float16, torch.bfloat16):
        return torch.float32
    return dtype
