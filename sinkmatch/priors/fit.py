r"""Maximum-likelihood fits of count distributions above ``x_min``, and Vuong's comparison test.

Paper Section 5.2 (Babu Sam et al., CSS-CCNN) fits a truncated power law, a power law, a
log-normal and an exponential to the cell counts and compares them, following Clauset, Shalizi &
Newman (2009), "Power-law distributions in empirical data". All laws are continuous and
normalized on :math:`[x_{\min}, \infty)`, with the parameterization of the ``powerlaw`` package
(Alstott et al. 2014):

| law | density on :math:`[x_{\min}, \infty)` |
|---|---|
| truncated power law | :math:`p \propto c^{-\alpha} e^{-\lambda c}` (α > 0, λ >= 0) |
| power law | :math:`p = \frac{\alpha - 1}{x_{\min}}(c/x_{\min})^{-\alpha}` |
| log-normal | :math:`p \propto \frac{1}{c}\exp(-(\log c-\mu)^2/2\sigma^2)` |
| exponential | :math:`p = \lambda e^{-\lambda (c - x_{\min})}` |

Estimators: the power law and the exponential in closed form; the truncated power law by
profiling λ (the score equation :math:`E_{\alpha,\lambda}[C] = \bar x` is solved with
``brentq``) and
maximizing the concave profile log-likelihood in α (it is an exponential family in
:math:`(\alpha, \lambda)`); the log-normal by BFGS on :math:`(\mu, \log\sigma)` with the analytic
gradient.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np

from sinkmatch._checks import check_real

from ._special import scaled_gammaincc
from .base import Prior, to_numpy64
from .power_law import Pareto, TruncatedPowerLaw
from .simple import Exponential, LogNormal

_ALPHA_BOUNDS = (1e-4, 50.0)


@dataclass(frozen=True)
class FitResult:
    """A maximum-likelihood fit.

    Attributes:
        name: ``"truncated_power_law"``, ``"power_law"``, ``"lognormal"`` or ``"exponential"``.
        params: Fitted parameters by name (``alpha``, ``lam``, ``mu``, ``sigma``).
        loglik: Maximized log-likelihood of the ``n`` points ``>= x_min``.
        n: Number of points used (those ``>= x_min``).
        x_min: The lower cut.
        prior: The fitted distribution, a :class:`Prior`.
        converged: False when the optimizer stopped at a parameter bound or failed.
    """

    name: str
    params: dict[str, float]
    loglik: float
    n: int
    x_min: float
    prior: Prior = field(repr=False)
    converged: bool = True


class Comparison(NamedTuple):
    r"""Log-likelihood ratio test of two fits (Vuong 1989; Clauset et al. 2009, Sec. 5).

    Attributes:
        R: :math:`\sum_i (\ell_1(x_i) - \ell_2(x_i))`; > 0 favors the first fit.
        normalized_R: :math:`R / (\sqrt{n}\,\sigma)`, σ the standard deviation of the pointwise
            differences.
        p_value: Significance of the sign of R: ``erfc(|R| / sqrt(2 n σ²))`` (non-nested), or
            ``chi2(1).sf(2|R|)`` (nested).
        n: Number of points compared.
    """

    R: float
    normalized_R: float
    p_value: float
    n: int


def _prepare(data: Any, x_min: float | None, *, positive: bool = True) -> tuple[np.ndarray, float]:
    arr, _ = to_numpy64(data, "data")
    arr = arr.reshape(-1)
    if arr.size == 0:
        raise ValueError("data must not be empty")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"data must be finite, got {arr[~np.isfinite(arr)][:5]}")
    x_min = float(arr.min()) if x_min is None else float(x_min)
    if positive:
        x_min = check_real("x_min", x_min, gt=0)
    elif not (math.isfinite(x_min) and x_min >= 0):
        raise ValueError(f"x_min must be finite and >= 0, got {x_min!r}")
    x = arr[arr >= x_min]
    if x.size < 2:
        raise ValueError(f"need at least 2 data points >= x_min={x_min!r}, got {x.size}")
    return x, x_min


def _result(
    name: str,
    params: dict[str, float],
    prior: Prior,
    x: np.ndarray,
    x_min: float,
    converged: bool = True,
) -> FitResult:
    loglik = float(np.sum(prior.logpdf(x)))
    return FitResult(name, params, loglik, int(x.size), x_min, prior, converged)


def fit_power_law(data: Any, *, x_min: float | None = None) -> FitResult:
    r"""Power law (Pareto) above ``x_min``: :math:`\hat\alpha = 1 + n / \sum_i \log(x_i/x_{\min})`.

    Args:
        data ((N,) array_like or Tensor): Observations; those below ``x_min`` are ignored.
        x_min: Lower cut, > 0 (default: the smallest observation).

    Returns:
        FitResult with ``params = {"alpha": ...}`` and ``prior`` a :class:`Pareto`.
    """
    x, x_min = _prepare(data, x_min)
    s = float(np.sum(np.log(x / x_min)))
    if s <= 0:
        raise ValueError(f"all data equal x_min={x_min!r}: the power-law exponent is unbounded")
    alpha = 1.0 + x.size / s
    return _result("power_law", {"alpha": alpha}, Pareto(alpha, x_min=x_min), x, x_min)


def fit_exponential(data: Any, *, x_min: float | None = None) -> FitResult:
    r"""Exponential above ``x_min``: :math:`\hat\lambda = 1 / \overline{(x - x_{\min})}`.

    Returns:
        FitResult with ``params = {"lam": ...}`` and ``prior`` an ``Exponential``
        (:class:`sinkmatch.priors.simple.Exponential`).
    """
    x, x_min = _prepare(data, x_min, positive=False)
    d = float(np.mean(x - x_min))
    if d <= 0:
        raise ValueError(f"all data equal x_min={x_min!r}: the exponential rate is unbounded")
    lam = 1.0 / d
    return _result("exponential", {"lam": lam}, Exponential(lam, x_min=x_min), x, x_min)


def fit_lognormal(data: Any, *, x_min: float | None = None) -> FitResult:
    r"""Log-normal truncated to ``[x_min, inf)`` (``x_min = 0``: not truncated).

    Returns:
        FitResult with ``params = {"mu": ..., "sigma": ...}`` and ``prior`` a :class:`LogNormal`.
        ``converged`` is False if BFGS did not converge (the truncated log-normal MLE can run off
        to :math:`\mu \to -\infty` on power-law-like data).
    """
    from scipy.optimize import minimize
    from scipy.special import log_ndtr

    x, x_min = _prepare(data, x_min, positive=False)
    if np.any(x <= 0):
        raise ValueError("log-normal fit needs positive data above x_min")
    logx = np.log(x)
    n = x.size
    sum_logx = float(logx.sum())
    log_xmin = math.log(x_min) if x_min > 0 else -math.inf

    def nll(theta: np.ndarray) -> tuple[float, np.ndarray]:
        mu, s = float(theta[0]), float(theta[1])
        sigma = math.exp(s)
        z = (logx - mu) / sigma
        a = (log_xmin - mu) / sigma
        log_tail = float(log_ndtr(-a))
        value = (
            sum_logx + n * s + 0.5 * n * math.log(2 * math.pi) + 0.5 * float(z @ z) + n * log_tail
        )
        if math.isfinite(a):
            h = math.exp(
                -0.5 * a * a - 0.5 * math.log(2 * math.pi) - log_tail
            )  # phi(a) / Phibar(a)
        else:
            h, a = 0.0, 0.0
        grad = np.array([(-z.sum() + n * h) / sigma, n - float(z @ z) + n * h * a])
        return value, grad

    theta0 = np.array([logx.mean(), math.log(max(logx.std(), 1e-3))])
    res = minimize(
        nll, theta0, jac=True, method="BFGS", options={"gtol": 1e-9 * n, "maxiter": 2000}
    )
    mu, sigma = float(res.x[0]), math.exp(float(res.x[1]))
    prior = LogNormal(mu, sigma, x_min=x_min)
    return _result("lognormal", {"mu": mu, "sigma": sigma}, prior, x, x_min, bool(res.success))


def _log_norm(alpha: float, lam: float, x_min: float) -> float:
    """log Z = log int_{x_min}^inf c^-alpha e^-lam c dc (lam >= 0)."""
    if lam == 0.0:
        return (1.0 - alpha) * math.log(x_min) - math.log(alpha - 1.0)
    q = float(scaled_gammaincc(1.0 - alpha, lam * x_min))
    return (1.0 - alpha) * math.log(x_min) - lam * x_min + math.log(q)


def _tpl_mean(alpha: float, lam: float, x_min: float) -> float:
    z0 = lam * x_min
    return (
        x_min * float(scaled_gammaincc(2.0 - alpha, z0)) / float(scaled_gammaincc(1.0 - alpha, z0))
    )


def _profile_lambda(alpha: float, xbar: float, x_min: float) -> float:
    """The λ >= 0 solving E_{alpha, lam}[C] = xbar (0 if even lam = 0 gives a mean <= xbar)."""
    from scipy.optimize import brentq

    if alpha > 2.0 and x_min * (alpha - 1.0) / (alpha - 2.0) <= xbar:
        return 0.0
    # E[C] <= x_min + 1/lam (dominated by the shifted exponential): f(log lam_hi) <= 0
    s_hi = -math.log(xbar - x_min)
    s_lo = s_hi - 2.0

    def f(s: float) -> float:
        return math.log(_tpl_mean(alpha, math.exp(s), x_min)) - math.log(xbar)

    while f(s_lo) < 0.0:
        s_lo -= 4.0
        if s_lo < -700.0:
            return 0.0 if alpha > 1.0 else math.exp(s_lo)
    return math.exp(brentq(f, s_lo, s_hi, xtol=1e-14, rtol=1e-15, maxiter=500))


def fit_truncated_power_law(data: Any, *, x_min: float | None = None) -> FitResult:
    r"""Truncated power law :math:`p \propto c^{-\alpha} e^{-\lambda c}` above ``x_min``.

    For each α the λ maximizing the likelihood solves :math:`E_{\alpha,\lambda}[C] = \bar x`
    (exponential-family score equation; ``brentq`` in :math:`\log\lambda`; λ = 0 when even the
    pure power law is light enough); the profile log-likelihood, concave in α, is maximized by
    bounded Brent search on ``alpha`` in [1e-4, 50] (``converged`` is False at a bound).

    Returns:
        FitResult with ``params = {"alpha": ..., "lam": ...}`` and ``prior`` a
        :class:`TruncatedPowerLaw`.
    """
    from scipy.optimize import minimize_scalar

    x, x_min = _prepare(data, x_min)
    n = x.size
    sum_log = float(np.sum(np.log(x)))
    xbar = float(np.mean(x))
    if xbar <= x_min:
        raise ValueError(f"all data equal x_min={x_min!r}: the truncated power law is degenerate")

    def neg_profile(alpha: float) -> float:
        lam = _profile_lambda(alpha, xbar, x_min)
        return alpha * sum_log + lam * n * xbar + n * _log_norm(alpha, lam, x_min)

    lo, hi = _ALPHA_BOUNDS
    res = minimize_scalar(
        neg_profile, bounds=(lo, hi), method="bounded", options={"xatol": 1e-12, "maxiter": 500}
    )
    alpha = float(res.x)
    lam = _profile_lambda(alpha, xbar, x_min)
    converged = bool(res.success) and lo * 1.001 < alpha < hi * 0.999
    if lam == 0.0 and alpha <= 1.0:  # pragma: no cover - excluded by the profile
        raise ValueError("truncated power-law fit degenerated to lam = 0 with alpha <= 1")
    prior = TruncatedPowerLaw(alpha, lam, x_min=x_min)
    return _result("truncated_power_law", {"alpha": alpha, "lam": lam}, prior, x, x_min, converged)


def compare_fits(
    data: Any, fit1: FitResult, fit2: FitResult, *, nested: bool = False
) -> Comparison:
    r"""Log-likelihood ratio test between two fits (Clauset, Shalizi & Newman 2009, Sec. 5.1).

    Uses the points ``>= x_min`` (both fits must share ``x_min``). Non-nested (default): Vuong's
    normal test, :math:`p = \operatorname{erfc}(|R| / \sqrt{2 n \sigma^2})`. Nested (e.g. power law
    inside truncated power law): Wilks' :math:`\chi^2_1` test on :math:`2|R|`, as the ``powerlaw``
    package does (the boundary λ = 0 makes this conservative).

    Args:
        data ((N,) array_like or Tensor): The observations the fits were made on.
        fit1: The first :class:`FitResult`.
        fit2: The second :class:`FitResult`, with the same ``x_min`` as ``fit1``.
        nested: Whether one model is nested in the other.

    Returns:
        Comparison: ``(R, normalized_R, p_value, n)``; ``R > 0`` favors ``fit1``.
    """
    from scipy.special import erfc
    from scipy.stats import chi2

    for name, f in (("fit1", fit1), ("fit2", fit2)):
        if not isinstance(f, FitResult):
            raise TypeError(f"{name} must be a FitResult, got {type(f).__name__}")
    if fit1.x_min != fit2.x_min:
        raise ValueError(f"fits must share x_min, got {fit1.x_min!r} and {fit2.x_min!r}")
    x, _ = _prepare(data, fit1.x_min, positive=False)
    d = np.asarray(fit1.prior.logpdf(x), dtype=np.float64) - np.asarray(
        fit2.prior.logpdf(x), dtype=np.float64
    )
    if not np.all(np.isfinite(d)):
        raise ValueError(
            "a fit assigns zero density to some data point; the ratio test is undefined"
        )
    n = x.size
    r = float(d.sum())
    sigma = float(np.sqrt(np.mean((d - d.mean()) ** 2)))
    if nested:
        p = float(chi2.sf(2.0 * abs(r), 1))
    else:
        p = 1.0 if sigma == 0.0 else float(erfc(abs(r) / math.sqrt(2.0 * n * sigma * sigma)))
    normalized = 0.0 if sigma == 0.0 else r / (math.sqrt(n) * sigma)
    return Comparison(r, normalized, p, n)
