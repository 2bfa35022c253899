"""The ``Prior`` protocol and the shared plumbing (input conversion, validation, sampling).

Every prior is a one-dimensional distribution of cell counts with

* ``sample(n, *, generator=None, device=None, dtype=torch.float32)`` -> ``(n,)`` Tensor,
* ``sample_numpy(n, rng=None)`` -> ``(n,)`` float64 ndarray,
* ``cdf(c)``, ``pdf(c)``, ``logpdf(c)``, ``ppf(q)``, ``mean()``.

Evaluation conventions (all priors): the math is float64 numpy, whatever the input. A Python
``int``/``float`` gives a Python ``float``; a numpy array (or list) gives a float64 ndarray of the
same shape; a torch Tensor gives a Tensor of the same shape on the same device, with the input's
dtype when that is floating point, else float64 (not differentiable). NaN inputs give NaN.

Sampling conventions: draws are made with ``torch.rand`` on the generator's device (or on
``device`` when no generator is given), computed in float64, then moved to ``device`` and cast to
``dtype``. Given the same generator state, the same samples come out.
"""

from __future__ import annotations

import numbers
from typing import Any, Callable, Protocol, runtime_checkable

import numpy as np
import torch

from sinkmatch._checks import check_int

Array = Any  # float | np.ndarray | torch.Tensor


@runtime_checkable
class Prior(Protocol):
    """A one-dimensional count distribution usable as a Sinkhorn target.

    Example:
        >>> import torch
        >>> from sinkmatch.priors import Pareto, Prior
        >>> p = Pareto(2.0)
        >>> isinstance(p, Prior)
        True
        >>> p.sample(4, generator=torch.Generator().manual_seed(0)).shape
        torch.Size([4])
    """

    def sample(
        self,
        n: int,
        *,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> torch.Tensor: ...

    def cdf(self, c: Array) -> Array: ...

    def pdf(self, c: Array) -> Array: ...

    def logpdf(self, c: Array) -> Array: ...

    def ppf(self, q: Array) -> Array: ...

    def mean(self) -> float: ...


# ----------------------------------------------------------------------------------- validation


def check_float_dtype(dtype: Any) -> torch.dtype:
    """A floating-point torch dtype."""
    if not isinstance(dtype, torch.dtype):
        raise TypeError(f"dtype must be a torch.dtype, got {dtype!r}")
    if not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating-point torch dtype, got {dtype}")
    return dtype


# ----------------------------------------------------------------------------- array plumbing


def to_numpy64(x: Array, name: str = "c") -> tuple[np.ndarray, Callable[[np.ndarray], Array]]:
    """Convert ``x`` to a float64 ndarray and return a function restoring the input's kind."""
    if isinstance(x, torch.Tensor):
        device = x.device
        out_dtype = x.dtype if x.is_floating_point() else torch.float64
        arr = x.detach().to("cpu", torch.float64).numpy()

        def restore_tensor(r: np.ndarray) -> torch.Tensor:
            return torch.from_numpy(np.ascontiguousarray(r)).to(device=device, dtype=out_dtype)

        return arr, restore_tensor
    if isinstance(x, (bool, np.bool_)):
        raise TypeError(f"{name} must be numeric, got {x!r}")
    if isinstance(x, numbers.Real):
        return np.asarray(float(x), dtype=np.float64), lambda r: float(r)
    try:
        arr = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise TypeError(
            f"{name} must be a float, numpy array or torch Tensor, got {type(x).__name__}"
        ) from err
    return arr, lambda r: np.asarray(r, dtype=np.float64)


def resolve_device(
    generator: torch.Generator | None, device: torch.device | str | None
) -> tuple[torch.device, torch.device]:
    """Return ``(work_device, out_device)``: where uniforms are drawn and where samples go."""
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(
            f"generator must be a torch.Generator or None, got {type(generator).__name__}"
        )
    if device is None:
        out = generator.device if generator is not None else torch.device("cpu")
    else:
        out = torch.device(device)
    work = generator.device if generator is not None else out
    if work.type == "mps":  # no float64 on MPS: compute on the CPU
        work = torch.device("cpu")
    return work, out


def rand64(
    shape: int | tuple[int, ...], generator: torch.Generator | None, device: torch.device
) -> torch.Tensor:
    """Uniform [0, 1) float64 draws on ``device``."""
    return torch.rand(shape, generator=generator, device=device, dtype=torch.float64)


class PriorBase:
    """Shared implementation: subclasses provide ``_cdf``, ``_logpdf``, ``_ppf`` (float64 ndarray
    in, ndarray out), ``_sample64(n, generator, device)`` and ``mean``."""

    # -- to implement ---------------------------------------------------------------------------
    def _cdf(self, c: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _logpdf(self, c: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _ppf(self, q: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _sample64(
        self, n: int, generator: torch.Generator | None, device: torch.device
    ) -> torch.Tensor:
        raise NotImplementedError

    def mean(self) -> float:
        raise NotImplementedError

    # -- public API -----------------------------------------------------------------------------
    def cdf(self, c: Array) -> Array:
        r"""Cumulative distribution function :math:`F(c) = P(C \le c)` (float64 math).

        Args:
            c ((...) float, ndarray or Tensor): Points.

        Returns:
            (...) same kind as ``c`` (see module docstring), values in [0, 1].
        """
        arr, restore = to_numpy64(c, "c")
        return restore(self._cdf(arr))

    def sf(self, c: Array) -> Array:
        """Survival function :math:`1 - F(c)` (accurate in the tail where the class supports it)."""
        arr, restore = to_numpy64(c, "c")
        return restore(self._sf(arr))

    def _sf(self, c: np.ndarray) -> np.ndarray:
        return 1.0 - self._cdf(c)

    def logpdf(self, c: Array) -> Array:
        r"""Log density :math:`\log p(c)` (``-inf`` outside the support)."""
        arr, restore = to_numpy64(c, "c")
        return restore(self._logpdf(arr))

    def pdf(self, c: Array) -> Array:
        """Density :math:`p(c)` (0 outside the support)."""
        arr, restore = to_numpy64(c, "c")
        with np.errstate(under="ignore"):
            return restore(np.exp(self._logpdf(arr)))

    def ppf(self, q: Array) -> Array:
        r"""Quantile function :math:`F^{-1}(q) = \inf\{c : F(c) \ge q\}`.

        Args:
            q ((...) float, ndarray or Tensor): Probabilities in [0, 1] (NaN passes through).

        Raises:
            ValueError: If a probability is outside [0, 1].
        """
        arr, restore = to_numpy64(q, "q")
        bad = (arr < 0) | (arr > 1)
        if np.any(bad):
            raise ValueError(f"q must lie in [0, 1], got {arr[bad].reshape(-1)[:5]}")
        return restore(self._ppf(arr))

    def sample(
        self,
        n: int,
        *,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> torch.Tensor:
        """Draw ``n`` independent samples.

        Args:
            n: Number of samples (non-negative int).
            generator: Source of randomness; the same state gives the same samples. The draws are
                made on the generator's device.
            device: Where the samples are returned (default: the generator's device, else CPU).
            dtype: Floating-point dtype of the result (computation is float64).

        Returns:
            (n,) Tensor on ``device`` with dtype ``dtype``.
        """
        n = check_int("n", n, ge=0)
        dtype = check_float_dtype(dtype)
        work, out = resolve_device(generator, device)
        if n == 0:
            return torch.empty(0, device=out, dtype=dtype)
        x = self._sample64(n, generator, work)
        return x.to(device=out, dtype=dtype)

    def sample_numpy(self, n: int, rng: np.random.Generator | int | None = None) -> np.ndarray:
        """Draw ``n`` samples as a float64 ndarray, reproducible from a numpy ``Generator`` or seed.

        A 63-bit seed drawn from ``rng`` seeds a CPU ``torch.Generator`` used by :meth:`sample`.
        """
        n = check_int("n", n, ge=0)
        rng = np.random.default_rng(rng)
        g = torch.Generator().manual_seed(int(rng.integers(0, 2**63 - 1)))
        return self.sample(n, generator=g, dtype=torch.float64).numpy()
