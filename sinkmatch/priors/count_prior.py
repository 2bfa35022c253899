r"""λ from the maximum count, and the ready-to-use CSS-CCNN count prior.

CSS-CCNN (Babu Sam et al., Sec. 3.1) fixes α (≈ 2) and chooses λ so that the largest cell count
is a 1-in-S event:

.. math::

    F_{\alpha,\lambda}(C_{\max}) = 1 - \frac1S, \qquad
    C_{\max} = \frac{Cf_{\max}}{M \cdot N \cdot S_{\text{crop}}},

with ``S`` the number of images, ``M x N`` the cells per crop and ``S_crop`` the crops per image.
:func:`solve_lambda` solves it with the exact normalized CDF by a bracketed root finder
(``scipy.optimize.brentq`` on :math:`\log(1 - F) + \log S`, decreasing in λ).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from sinkmatch._checks import check_positive_int, check_real

from ._special import scaled_gammaincc
from .base import PriorBase
from .head import HeadRedistributed, redistribute_head
from .legacy import _LEGACY_CELLS, legacy_lambda, legacy_sample64, legacy_threshold
from .power_law import TruncatedPowerLaw


def _check_grid(grid: Any) -> tuple[int, int]:
    if not isinstance(grid, (tuple, list)) or len(grid) != 2:
        raise ValueError(f"grid must be a pair of positive ints (M, N), got {grid!r}")
    return check_positive_int("grid[0]", grid[0]), check_positive_int("grid[1]", grid[1])


def _log_sf(alpha: float, lam: float, c: float, x_min: float) -> float:
    """log(1 - F(c)) of the truncated power law, with the lam -> 0 limit."""
    if lam == 0.0:
        return (1.0 - alpha) * math.log(c / x_min) if alpha > 1.0 else 0.0
    a = 1.0 - alpha
    q = scaled_gammaincc(a, np.array([lam * c, lam * x_min]))
    return a * math.log(c / x_min) - lam * (c - x_min) + math.log(q[0] / q[1])


def solve_lambda(
    cf_max: float,
    *,
    num_images: float,
    alpha: float = 2.0,
    grid: tuple[int, int] = (3, 3),
    crops_per_image: float = 4,
    x_min: float = 1.0,
) -> float:
    r"""Solve :math:`F_{\alpha,\lambda}(C_{\max}) = 1 - 1/S` for λ (exact, normalized CDF).

    Args:
        cf_max: Maximum crowd count of a full image, > 0.
        num_images: ``S``, the number of images, >= 2.
        alpha: Power-law exponent, > 0.
        grid: ``(M, N)`` cells per crop (CSS-CCNN: 3 x 3 cells of a 224 crop).
        crops_per_image: ``S_crop``, > 0.
        x_min: Lower end of the power law, > 0.

    Returns:
        float: λ > 0 (to about 1e-15 relative).

    Raises:
        ValueError: If a number is invalid or no λ > 0 solves the equation: ``C_max <= x_min``,
            ``S < 2``, or (alpha > 1) the pure power law already has ``F(C_max) >= 1 - 1/S``.

    Example:
        >>> from sinkmatch.priors import solve_lambda
        >>> round(solve_lambda(3000, num_images=482, grid=(4, 4)), 5)  # the paper's C_max = 3000/64
        0.0295
    """
    from scipy.optimize import brentq

    cf_max = check_real("cf_max", cf_max, gt=0)
    num_images = check_real("num_images", num_images)
    alpha = check_real("alpha", alpha, gt=0)
    m, n = _check_grid(grid)
    crops_per_image = check_real("crops_per_image", crops_per_image, gt=0)
    x_min = check_real("x_min", x_min, gt=0)
    if num_images < 2:
        raise ValueError(
            f"num_images must be >= 2 (the CDF target 1 - 1/S must be > 0), got {num_images!r}"
        )
    c_max = cf_max / (m * n * crops_per_image)
    if c_max <= x_min:
        raise ValueError(
            f"C_max = cf_max / (M*N*crops_per_image) = {cf_max:g} / {m * n * crops_per_image:g} = "
            f"{c_max:g} must exceed x_min = {x_min:g}"
        )
    target = -math.log(num_images)  # log(1 - F(C_max)) = log(1/S)

    def f(lam: float) -> float:
        return _log_sf(alpha, lam, c_max, x_min) - target

    f0 = f(0.0)
    if f0 <= 0.0:
        raise ValueError(
            f"no lambda > 0 works: already the pure power law (lambda = 0, alpha={alpha:g}) has "
            f"CDF(C_max={c_max:g}) = {-math.expm1(f0 + target):.6g} >= "
            f"1 - 1/S = {1 - 1 / num_images:.6g}; "
            f"increase cf_max or num_images, or lower alpha"
        )
    # the shifted exponential dominates the truncated power law: 1 - F(c) <= exp(-lam (c - x_min)),
    # so at lam_hi = log(S) / (C_max - x_min) we have f <= 0
    lam_hi = math.log(num_images) / (c_max - x_min)
    if f(lam_hi) > 0.0:  # pragma: no cover - guaranteed by the bound above
        raise ValueError(
            f"could not bracket lambda for cf_max={cf_max!r}, num_images={num_images!r}"
        )
    return float(brentq(f, 0.0, lam_hi, xtol=1e-300, rtol=4 * np.finfo(float).eps, maxiter=500))


class CountPrior(PriorBase):
    r"""The CSS-CCNN count prior: a truncated power law with its head spread over [0, t].

    Build it with :meth:`from_max_count`. ``mode="exact"`` uses the normalized CDF (λ from
    :func:`solve_lambda`, ``t = ppf(head_mass)`` unless given); ``mode="legacy"`` reproduces the
    original code (λ from :func:`legacy_lambda`, t from :func:`legacy_threshold`, the rejection
    sampler of the ``powerlaw`` package, vectorized). In both modes the law is

    .. math::

        C \sim \mathcal U(0, t) \text{ w.p. } F(t), \quad
        C \sim \mathrm{TPL}(\alpha, \lambda, x_{\min}) \mid C \ge t \text{ otherwise}.

    Args:
        alpha: Power-law exponent α > 0.
        lam: Rate λ > 0 of the exponential cut-off.
        threshold: The head threshold t > 0.
        x_min: Lower end of the power law, > 0.
        mode: ``"exact"`` or ``"legacy"``: which sampler draws the tail.
        c_max: :math:`C_{\max}`, the largest cell count λ was solved for (informational).
        cf_max: The maximum image count it came from (informational).
        num_images: ``S``, the number of images (informational).

    Attributes:
        alpha (float): α.
        lam (float): λ.
        x_min (float): Lower end of the power law.
        threshold (float): The head threshold t.
        head_weight (float): :math:`F(t)`, the mass spread uniformly over :math:`[0, t]`.
        mode (str): ``"exact"`` or ``"legacy"``.
        c_max (float or None): :math:`C_{\max}`.
        cf_max (float or None): The maximum image count.
        num_images (float or None): ``S``.
        base (TruncatedPowerLaw): The law before head redistribution.

    Example:
        >>> import torch
        >>> from sinkmatch.priors import CountPrior
        >>> p = CountPrior.from_max_count(3000, num_images=482, mode="legacy")
        >>> p.lam, round(p.threshold, 5)
        (0.028, 1.21001)
        >>> p.sample(1568, generator=torch.Generator().manual_seed(0)).shape
        torch.Size([1568])
    """

    def __init__(
        self,
        alpha: float,
        lam: float,
        *,
        threshold: float,
        x_min: float = 1.0,
        mode: str = "exact",
        c_max: float | None = None,
        cf_max: float | None = None,
        num_images: float | None = None,
    ) -> None:
        if mode not in ("exact", "legacy"):
            raise ValueError(f'mode must be "exact" or "legacy", got {mode!r}')
        self.mode = mode
        self.base = TruncatedPowerLaw(alpha, lam, x_min=x_min)
        self._mixture = HeadRedistributed(self.base, threshold=threshold)
        self.alpha, self.lam, self.x_min = self.base.alpha, self.base.lam, self.base.x_min
        self.threshold = self._mixture.threshold
        self.head_weight = self._mixture.head_weight
        self.c_max, self.cf_max, self.num_images = c_max, cf_max, num_images

    @classmethod
    def from_max_count(
        cls,
        cf_max: float,
        *,
        num_images: float,
        alpha: float = 2.0,
        grid: tuple[int, int] = (3, 3),
        crops_per_image: float = 4,
        x_min: float = 1.0,
        head_mass: float = 0.3,
        threshold: float | None = None,
        mode: str = "exact",
    ) -> CountPrior:
        """The prior for a data set whose largest image holds about ``cf_max`` people.

        Args:
            cf_max: Maximum crowd count of a full image, > 0.
            num_images: ``S``, number of images, >= 2.
            alpha: Power-law exponent, > 0.
            grid: ``(M, N)`` cells per crop (exact mode).
            crops_per_image: ``S_crop`` (exact mode).
            x_min: Lower end of the power law (exact mode).
            head_mass: Mass moved onto [0, t] when ``threshold`` is None (exact mode).
            threshold: The head threshold t; default ``ppf(head_mass)`` (exact mode).
            mode: ``"exact"`` or ``"legacy"``. Legacy mode reproduces the original code, which
                hard-codes ``C_max = cf_max / (4 * 4 * 4)`` whatever the cell grid, ``x_min = 1``
                and its own t: there ``grid``, ``crops_per_image`` and ``head_mass`` do not enter
                the prior (the original used 4 x 4 x 4 even with 3 x 3 cells), and ``x_min`` must
                stay 1 and ``threshold`` None (ValueError otherwise).

        Returns:
            CountPrior: ready to ``sample``.
        """
        if mode == "legacy":
            _check_grid(grid)
            check_real("crops_per_image", crops_per_image, gt=0)
            if x_min != 1.0 or threshold is not None:
                raise ValueError(
                    "mode='legacy' reproduces the original code (x_min = 1 and its own "
                    "threshold); got "
                    f"x_min={x_min!r}, threshold={threshold!r}: use mode='exact' to change them"
                )
            lam = legacy_lambda(cf_max, num_images, alpha=alpha)
            t = legacy_threshold(alpha, lam)
            return cls(
                alpha,
                lam,
                threshold=t,
                x_min=1.0,
                mode="legacy",
                c_max=float(cf_max) / _LEGACY_CELLS,
                cf_max=float(cf_max),
                num_images=num_images,
            )
        if mode != "exact":
            raise ValueError(f'mode must be "exact" or "legacy", got {mode!r}')
        lam = solve_lambda(
            cf_max,
            num_images=num_images,
            alpha=alpha,
            grid=grid,
            crops_per_image=crops_per_image,
            x_min=x_min,
        )
        m, n = _check_grid(grid)
        c_max = float(cf_max) / (m * n * float(crops_per_image))
        if threshold is None:
            head_mass = check_real("head_mass", head_mass, gt=0, lt=1)
            threshold = float(TruncatedPowerLaw(alpha, lam, x_min=x_min).ppf(head_mass))
        return cls(
            alpha,
            lam,
            threshold=threshold,
            x_min=x_min,
            mode="exact",
            c_max=c_max,
            cf_max=float(cf_max),
            num_images=num_images,
        )

    def __repr__(self) -> str:
        c_max = "None" if self.c_max is None else f"{self.c_max:.6g}"
        return (
            f"CountPrior(mode={self.mode!r}, alpha={self.alpha:g}, lam={self.lam:.6g}, "
            f"x_min={self.x_min:g}, threshold={self.threshold:.6g}, "
            f"head_weight={self.head_weight:.4g}, "
            f"c_max={c_max})"
        )

    def summary(self) -> str:
        """A few human-readable lines: parameters, mean and quantiles."""
        qs = [0.1, 0.5, 0.9, 0.99]
        quant = ", ".join(f"q{int(q * 100)}={float(self.ppf(q)):.4g}" for q in qs)
        lines = [
            repr(self),
            f"  law: U(0, {self.threshold:.4g}) w.p. {self.head_weight:.4f}, else "
            f"c^-{self.alpha:g} exp(-{self.lam:.4g} c) on c >= {self.threshold:.4g}",
            f"  mean={self.mean():.4g}, {quant}",
        ]
        if self.c_max is not None:
            lines.append(
                f"  CDF(C_max={self.c_max:.4g}) = {float(self.cdf(self.c_max)):.6f}"
                + (f" (target 1 - 1/S = {1 - 1 / self.num_images:.6f})" if self.num_images else "")
            )
        return "\n".join(lines)

    # delegate the math to the mixture
    def _cdf(self, c: np.ndarray) -> np.ndarray:
        return self._mixture._cdf(c)

    def _sf(self, c: np.ndarray) -> np.ndarray:
        return self._mixture._sf(c)

    def _logpdf(self, c: np.ndarray) -> np.ndarray:
        return self._mixture._logpdf(c)

    def _ppf(self, q: np.ndarray) -> np.ndarray:
        return self._mixture._ppf(q)

    def mean(self) -> float:
        return self._mixture.mean()

    def _sample64(
        self, n: int, generator: torch.Generator | None, device: torch.device
    ) -> torch.Tensor:
        if self.mode == "legacy":
            x = legacy_sample64(self.alpha, self.lam, n, generator, device, x_min=self.x_min)
        else:
            x = self.base._sample64(n, generator, device)
        return redistribute_head(x, self.threshold, generator)
