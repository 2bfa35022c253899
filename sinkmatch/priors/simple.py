"""The other priors of the CSS-CCNN ablations (Table 7): log-normal, uniform, empirical.

Also the (shifted) exponential, which :func:`sinkmatch.priors.fit_exponential` returns as its
fitted prior.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from sinkmatch._checks import check_real

from .base import PriorBase, rand64, to_numpy64

_U_MIN = 2.0**-60  # keeps inverse-CDF sampling off the endpoints of (0, 1)
_U_MAX = 1.0 - 2.0**-53


class LogNormal(PriorBase):
    r"""Log-normal law, optionally truncated to ``c >= x_min``.

    .. math::

        p(c) = \frac{1}{c \sigma \sqrt{2\pi}}
               \exp\Big(-\frac{(\log c - \mu)^2}{2\sigma^2}\Big) \Big/ \bar\Phi(a),
        \qquad a = \frac{\log x_{\min} - \mu}{\sigma},

    with :math:`\bar\Phi` the standard normal survival function (:math:`\bar\Phi(a) = 1` for
    ``x_min = 0``). This is the parameterization of the ``powerlaw`` package (Alstott et al.,
    2014) used for maximum-likelihood fits above ``x_min``.

    Args:
        mu: Mean of :math:`\log C` before truncation.
        sigma: Standard deviation of :math:`\log C` before truncation, > 0.
        x_min: Truncation point, >= 0 (0: no truncation).

    Example:
        >>> from sinkmatch.priors import LogNormal
        >>> round(LogNormal(0.0, 1.0).cdf(1.0), 12)
        0.5
    """

    def __init__(self, mu: float, sigma: float, *, x_min: float = 0.0) -> None:
        from scipy.special import log_ndtr

        self.mu = check_real("mu", mu)
        self.sigma = check_real("sigma", sigma, gt=0)
        self.x_min = check_real("x_min", x_min, ge=0)
        self._a = (math.log(self.x_min) - self.mu) / self.sigma if self.x_min > 0 else -math.inf
        self._log_tail = float(log_ndtr(-self._a))  # log P(C >= x_min) before truncation
        if self._log_tail < -700.0:
            raise ValueError(
                f"x_min={self.x_min!r} lies too far in the tail of LogNormal(mu={self.mu!r}, "
                f"sigma={self.sigma!r}): the truncated law is not representable in float64"
            )

    def __repr__(self) -> str:
        return f"LogNormal(mu={self.mu:g}, sigma={self.sigma:g}, x_min={self.x_min:g})"

    def _z(self, c: np.ndarray) -> np.ndarray:
        with np.errstate(divide="ignore", invalid="ignore"):
            return (np.log(np.maximum(c, self.x_min)) - self.mu) / self.sigma

    def _cdf(self, c: np.ndarray) -> np.ndarray:
        from scipy.special import log_ndtr

        out = -np.expm1(log_ndtr(-self._z(c)) - self._log_tail)
        return np.where(c <= self.x_min, 0.0, out)

    def _sf(self, c: np.ndarray) -> np.ndarray:
        from scipy.special import log_ndtr

        return np.where(c <= self.x_min, 1.0, np.exp(log_ndtr(-self._z(c)) - self._log_tail))

    def _logpdf(self, c: np.ndarray) -> np.ndarray:
        z = self._z(c)
        with np.errstate(divide="ignore", invalid="ignore"):
            out = (
                -np.log(c * self.sigma) - 0.5 * math.log(2 * math.pi) - 0.5 * z * z - self._log_tail
            )
        out = np.where((c < self.x_min) | (c <= 0), -np.inf, out)
        return np.where(c == np.inf, -np.inf, out)

    def _ppf(self, q: np.ndarray) -> np.ndarray:
        from scipy.special import ndtr, ndtri, ndtri_exp

        with np.errstate(divide="ignore"):
            # lower half through the cdf, upper half through the survival function (no 1 - q loss)
            lower = ndtri(ndtr(self._a) + q * math.exp(self._log_tail))
            upper = -ndtri_exp(np.log1p(-q) + self._log_tail)
        z = np.where(q < 0.5, lower, upper)
        with np.errstate(over="ignore"):
            return np.where(q == 0, self.x_min, np.exp(self.mu + self.sigma * z))

    def _sample64(
        self, n: int, generator: torch.Generator | None, device: torch.device
    ) -> torch.Tensor:
        u = (1.0 - rand64(n, generator, device)).clamp_(_U_MIN, _U_MAX)  # survival probabilities
        z = -torch.special.ndtri(u * math.exp(self._log_tail))
        return torch.exp(self.mu + self.sigma * z).clamp_(min=self.x_min)

    def mean(self) -> float:
        r""":math:`e^{\mu + \sigma^2/2}\,\bar\Phi(a - \sigma)/\bar\Phi(a)`."""
        from scipy.special import log_ndtr

        return math.exp(
            self.mu + 0.5 * self.sigma**2 + float(log_ndtr(self.sigma - self._a)) - self._log_tail
        )

    def partial_mean(self, t: float) -> float:
        r""":math:`E[C\,1\{C < t\}]`."""
        from scipy.special import ndtr

        if t <= self.x_min:
            return 0.0
        zt = (math.log(t) - self.mu) / self.sigma
        scale = math.exp(self.mu + 0.5 * self.sigma**2 - self._log_tail)
        return scale * float(ndtr(zt - self.sigma) - ndtr(self._a - self.sigma))


class Uniform(PriorBase):
    """Uniform law on ``[low, high]`` (the paper's ablation uses ``[0, C_max]``).

    Args:
        low: Lower end.
        high: Upper end, > ``low``.

    Example:
        >>> from sinkmatch.priors import Uniform
        >>> Uniform(0.0, 10.0).ppf(0.25)
        2.5
    """

    def __init__(self, low: float, high: float) -> None:
        self.low = check_real("low", low)
        self.high = check_real("high", high)
        if not self.high > self.low:
            raise ValueError(f"high must be > low, got low={self.low!r}, high={self.high!r}")
        self._width = self.high - self.low

    def __repr__(self) -> str:
        return f"Uniform(low={self.low:g}, high={self.high:g})"

    def _cdf(self, c: np.ndarray) -> np.ndarray:
        return np.clip((c - self.low) / self._width, 0.0, 1.0)

    def _logpdf(self, c: np.ndarray) -> np.ndarray:
        inside = (c >= self.low) & (c <= self.high)
        return np.where(inside, -math.log(self._width), np.where(np.isnan(c), np.nan, -np.inf))

    def _ppf(self, q: np.ndarray) -> np.ndarray:
        return self.low + q * self._width

    def _sample64(
        self, n: int, generator: torch.Generator | None, device: torch.device
    ) -> torch.Tensor:
        return self.low + self._width * rand64(n, generator, device)

    def mean(self) -> float:
        return 0.5 * (self.low + self.high)

    def partial_mean(self, t: float) -> float:
        r""":math:`E[C\,1\{C < t\}]`."""
        s = min(max(float(t), self.low), self.high)
        return (s * s - self.low * self.low) / (2.0 * self._width)


class Exponential(PriorBase):
    r"""Shifted exponential :math:`p(c) = \lambda e^{-\lambda (c - x_{\min})}`, c >= x_min.

    Args:
        lam: Rate, > 0.
        x_min: Shift, >= 0.
    """

    def __init__(self, lam: float, *, x_min: float = 0.0) -> None:
        self.lam = check_real("lam", lam, gt=0)
        self.x_min = check_real("x_min", x_min, ge=0)

    def __repr__(self) -> str:
        return f"Exponential(lam={self.lam:g}, x_min={self.x_min:g})"

    def _cdf(self, c: np.ndarray) -> np.ndarray:
        return np.where(c <= self.x_min, 0.0, -np.expm1(-self.lam * (c - self.x_min)))

    def _sf(self, c: np.ndarray) -> np.ndarray:
        return np.where(c <= self.x_min, 1.0, np.exp(-self.lam * (c - self.x_min)))

    def _logpdf(self, c: np.ndarray) -> np.ndarray:
        out = math.log(self.lam) - self.lam * (c - self.x_min)
        return np.where(c < self.x_min, -np.inf, out)

    def _ppf(self, q: np.ndarray) -> np.ndarray:
        with np.errstate(divide="ignore"):
            return self.x_min - np.log1p(-q) / self.lam

    def _sample64(
        self, n: int, generator: torch.Generator | None, device: torch.device
    ) -> torch.Tensor:
        return self.x_min - torch.log1p(-rand64(n, generator, device)) / self.lam

    def mean(self) -> float:
        return self.x_min + 1.0 / self.lam

    def partial_mean(self, t: float) -> float:
        r""":math:`E[C\,1\{C < t\}]`."""
        if t <= self.x_min:
            return 0.0
        d = self.lam * (t - self.x_min)
        # int_{x_min}^t c lam e^{-lam (c - x_min)} dc
        return self.x_min * -math.expm1(-d) + (1.0 - math.exp(-d) * (1.0 + d)) / self.lam


class Empirical(PriorBase):
    r"""The empirical law of observed counts (the paper's "with GT distribution" ablation).

    Sampling is the bootstrap (draws with replacement). With ``jitter = h > 0`` a
    :math:`\mathcal N(0, h^2)` perturbation is added to each draw, and ``cdf``/``pdf``/``ppf``
    describe that Gaussian kernel density (note it can put mass below 0). With ``jitter = 0``
    (default) ``cdf`` is the right-continuous ECDF :math:`F_n(c) = \#\{x_i \le c\}/n`, ``ppf``
    its generalized inverse (:math:`F_n^{-1}(q) = x_{(\lceil nq \rceil)}`), and ``pdf``/``logpdf``
    raise, as a discrete law has no density.

    Args:
        data ((N,) array_like or Tensor): Observed counts, finite, N >= 1.
        jitter: Standard deviation of the Gaussian jitter, >= 0.

    Example:
        >>> from sinkmatch.priors import Empirical
        >>> e = Empirical([1.0, 2.0, 2.0, 5.0])
        >>> e.cdf(2.0), e.ppf(0.5), e.mean()
        (0.75, 2.0, 2.5)
    """

    def __init__(self, data: object, *, jitter: float = 0.0) -> None:
        arr, _ = to_numpy64(data, "data")
        if arr.ndim != 1 or arr.size == 0:
            raise ValueError(f"data must be a non-empty 1-D sequence, got shape {arr.shape}")
        if not np.all(np.isfinite(arr)):
            raise ValueError(f"data must be finite, got {arr[~np.isfinite(arr)][:5]}")
        self.data = np.sort(arr)
        self.jitter = check_real("jitter", jitter, ge=0)
        self._tensors: dict[str, torch.Tensor] = {}

    def __repr__(self) -> str:
        return f"Empirical(n={self.data.size}, jitter={self.jitter:g})"

    def _kde_cdf(self, c: np.ndarray) -> np.ndarray:
        from scipy.special import ndtr

        flat = c.reshape(-1)
        out = np.empty_like(flat)
        step = max(1, 2**22 // self.data.size)
        for i in range(0, flat.size, step):
            blk = flat[i : i + step]
            out[i : i + step] = ndtr((blk[:, None] - self.data[None, :]) / self.jitter).mean(axis=1)
        return out.reshape(c.shape)

    def _cdf(self, c: np.ndarray) -> np.ndarray:
        if self.jitter > 0:
            return self._kde_cdf(c)
        out = np.searchsorted(self.data, c, side="right") / self.data.size
        return np.where(np.isnan(c), np.nan, out)

    def _logpdf(self, c: np.ndarray) -> np.ndarray:
        if self.jitter == 0:
            raise NotImplementedError(
                "Empirical(jitter=0) is a discrete law and has no density; use jitter > 0 for a "
                "Gaussian kernel density"
            )
        from scipy.special import logsumexp

        z = (c.reshape(-1)[:, None] - self.data[None, :]) / self.jitter
        out = logsumexp(-0.5 * z * z, axis=1) - math.log(
            self.data.size * self.jitter * math.sqrt(2 * math.pi)
        )
        return out.reshape(c.shape)

    def _ppf(self, q: np.ndarray) -> np.ndarray:
        n = self.data.size
        if self.jitter == 0:
            k = np.clip(np.ceil(np.nan_to_num(q) * n).astype(np.int64) - 1, 0, n - 1)
            return np.where(np.isnan(q), np.nan, self.data[k])
        # monotone bisection on the kernel cdf, bracketed by the data range +- 40 h
        lo = np.full(q.shape, self.data[0] - 40 * self.jitter)
        hi = np.full(q.shape, self.data[-1] + 40 * self.jitter)
        for _ in range(80):
            mid = 0.5 * (lo + hi)
            below = self._kde_cdf(mid) < q
            lo = np.where(below, mid, lo)
            hi = np.where(below, hi, mid)
        out = 0.5 * (lo + hi)
        out = np.where(q == 0, -np.inf, np.where(q == 1, np.inf, out))
        return np.where(np.isnan(q), np.nan, out)

    def _sample64(
        self, n: int, generator: torch.Generator | None, device: torch.device
    ) -> torch.Tensor:
        key = str(device)
        if key not in self._tensors:
            self._tensors[key] = torch.as_tensor(self.data, dtype=torch.float64, device=device)
        data = self._tensors[key]
        idx = torch.randint(0, data.numel(), (n,), generator=generator, device=device)
        x = data[idx]
        if self.jitter > 0:
            x = x + self.jitter * torch.randn(
                n, generator=generator, device=device, dtype=torch.float64
            )
        return x

    def mean(self) -> float:
        return float(self.data.mean())

    def partial_mean(self, t: float) -> float:
        r""":math:`E[C\,1\{C < t\}]`."""
        if self.jitter == 0:
            return float(self.data[self.data < t].sum() / self.data.size)
        from scipy.special import ndtr

        z = (t - self.data) / self.jitter
        phi = np.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)
        return float(np.mean(self.data * ndtr(z) - self.jitter * phi))
