"""Shared input validation.

Every helper raises ``TypeError`` (wrong kind of object or dtype) or ``ValueError`` (wrong shape
or value) with a message that names the argument and shows what was received. Value checks
(NaN, negative weights) read data back to the host; callers that must avoid host
synchronisation (fixed-iteration mode) pass ``check_values=False``.
"""

from __future__ import annotations

import math
from numbers import Real

import torch
from torch import Tensor

__all__ = [
    "as_points",
    "as_weights",
    "check_eps",
    "check_finite",
    "check_positive_int",
    "check_same_device",
    "compute_dtype",
]


def _describe(t: object) -> str:
    if isinstance(t, Tensor):
        return f"Tensor(shape={tuple(t.shape)}, dtype={t.dtype}, device={t.device})"
    return f"{type(t).__name__} {t!r}"[:200]


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
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {_describe(x)}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must have a floating dtype, got {_describe(x)}")
    if x.ndim == 1:
        x = x[None, :, None]
    elif x.ndim == 2:
        x = x[None]
    elif x.ndim != 3:
        raise ValueError(f"{name} must have shape (N,), (N, D) or (B, N, D), got {_describe(x)}")
    if x.shape[1] == 0 or x.shape[2] == 0:
        raise ValueError(
            f"{name} must hold at least one point of dimension >= 1, got {_describe(x)}"
        )
    return x


def check_finite(t: Tensor, name: str) -> None:
    """Raise ``ValueError`` if ``t`` holds NaN or ±inf (reads one flag back to the host)."""
    if not bool(torch.isfinite(t).all()):
        n_bad = int((~torch.isfinite(t)).sum())
        raise ValueError(f"{name} must be finite, got {n_bad} NaN/inf entries in {_describe(t)}")


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
    if not isinstance(w, Tensor):
        raise TypeError(f"{name} must be None or a torch.Tensor, got {_describe(w)}")
    if not w.is_floating_point():
        raise TypeError(f"{name} must have a floating dtype, got {_describe(w)}")
    if w.device != device:
        raise ValueError(f"{name} must be on the points' device {device}, got {_describe(w)}")
    if w.ndim == 1 and w.shape[0] == n_points:
        w = w.expand(batch, n_points)
    elif w.ndim == 2 and w.shape[1] == n_points and w.shape[0] in (1, batch):
        w = w.expand(batch, n_points)
    else:
        raise ValueError(
            f"{name} must have shape ({n_points},) or ({batch}, {n_points}) to match the points, "
            f"got {_describe(w)}"
        )
    w = w.to(dtype)
    if check_values:
        check_finite(w, name)
        if bool((w < 0).any()):
            raise ValueError(f"{name} must be nonnegative, got min {float(w.min())}")
        total = w.sum(-1)
        if bool((total <= 0).any()):
            bad = torch.nonzero(total <= 0).flatten().tolist()
            raise ValueError(
                f"{name} must have positive total mass per problem; problems {bad} sum to 0"
            )
    return w / w.sum(-1, keepdim=True)


def check_eps(eps: object, name: str = "eps") -> float:
    """Validate an entropic regularization strength.

    Returns:
        float: ``eps`` as a Python float.

    Raises:
        TypeError: Not a real number (bool and tensors are rejected).
        ValueError: Not finite or not > 0.
    """
    if isinstance(eps, bool) or not isinstance(eps, Real):
        raise TypeError(f"{name} must be a positive float, got {_describe(eps)}")
    value = float(eps)
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be finite and > 0, got {eps!r}")
    return value


def check_positive_int(n: object, name: str, *, minimum: int = 1) -> int:
    """Validate an integer setting ``>= minimum`` (bool rejected)."""
    if isinstance(n, bool) or not isinstance(n, int):
        raise TypeError(f"{name} must be an int, got {_describe(n)}")
    if n < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {n}")
    return n


def check_same_device(**tensors: Tensor | None) -> torch.device:
    """Check that all given tensors (``None`` skipped) live on one device; return it."""
    devices = {k: t.device for k, t in tensors.items() if isinstance(t, Tensor)}
    if len(set(devices.values())) > 1:
        listing = ", ".join(f"{k} on {d}" for k, d in devices.items())
        raise ValueError(f"all tensors must be on the same device, got {listing}")
    return next(iter(devices.values()))


def compute_dtype(*tensors: Tensor | None) -> torch.dtype:
    """The dtype computations run in: the promoted dtype, with float16/bfloat16 raised to float32."""
    dtype: torch.dtype | None = None
    for t in tensors:
        if isinstance(t, Tensor) and t.is_floating_point():
            dtype = t.dtype if dtype is None else torch.promote_types(dtype, t.dtype)
    if dtype is None or dtype in (torch.float16, torch.bfloat16):
        return torch.float32
    return dtype
