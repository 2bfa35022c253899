"""Float64 accuracy of the truncated power law against mpmath (an independent reference)."""

from __future__ import annotations

import numpy as np
import pytest

mpmath = pytest.importorskip("mpmath")

from sinkmatch.priors import TruncatedPowerLaw  # noqa: E402
from sinkmatch.priors._special import scaled_gammaincc  # noqa: E402

ALPHAS = [0.5, 0.75, 1.0, 1.0 + 1e-9, 1.25, 1.5, 2.0, 2.5, 3.0]
LAMS = [1e-4, 1e-3, 1e-2, 0.1, 1.0]
CS = [1.0, 1.0 + 1e-6, 1.01, 1.3, 2.0, 3.7, 10.0, 31.6, 100.0, 316.0, 1000.0, 3162.0, 1e4]


def _mp_cdf(alpha: float, lam: float, c: float, x_min: float = 1.0) -> object:
    """1 - Gamma(1-a, lam c) / Gamma(1-a, lam x_min) at 40 digits (the lam^(a-1) factors cancel)."""
    with mpmath.workdps(40):
        a = 1 - mpmath.mpf(alpha)
        return 1 - mpmath.gammainc(a, lam * mpmath.mpf(c)) / mpmath.gammainc(
            a, lam * mpmath.mpf(x_min)
        )


def _max_cdf_error(alphas, lams, cs) -> float:
    worst = 0.0
    for alpha in alphas:
        for lam in lams:
            got = TruncatedPowerLaw(alpha, lam).cdf(np.array(cs))
            ref = np.array([float(_mp_cdf(alpha, lam, c)) for c in cs])
            worst = max(worst, float(np.max(np.abs(got - ref))))
    return worst


def test_cdf_matches_mpmath_grid():
    worst = _max_cdf_error(ALPHAS, LAMS, CS)
    print(f"max |CDF - mpmath| over {len(ALPHAS)}x{len(LAMS)}x{len(CS)} grid: {worst:.3e}")
    assert worst < 1e-10


@pytest.mark.slow
def test_cdf_matches_mpmath_dense_grid():
    alphas = [*np.linspace(0.5, 3.0, 26), 1.0 - 1e-12, 2.0 + 1e-12]
    lams = list(np.geomspace(1e-4, 1.0, 13))
    cs = list(np.geomspace(1.0, 1e4, 41))
    worst = _max_cdf_error(alphas, lams, cs)
    print(f"dense grid max |CDF - mpmath|: {worst:.3e}")
    assert worst < 1e-10


def test_cdf_matches_quadrature_of_density():
    """A second, independent reference: mpmath.quad of the unnormalized density."""
    for alpha, lam in [(0.6, 0.05), (2.0, 0.028), (2.9, 0.0003)]:
        with mpmath.workdps(30):

            def dens(u, alpha=alpha, lam=lam):
                return u ** (-alpha) * mpmath.exp(-lam * u)

            z = mpmath.quad(dens, [1, 10, 100, 1000, mpmath.inf])
            for c in [1.5, 7.0, 120.0]:
                ref = mpmath.quad(dens, [1, c]) / z
                assert abs(float(ref) - TruncatedPowerLaw(alpha, lam).cdf(c)) < 1e-12


@pytest.mark.parametrize(
    "a", [-2.0, -1.5, -1.0, -1.0 + 1e-11, -0.5, -1e-10, 0.0, 0.3, 0.5, 0.8, 1.5, -4.3]
)
def test_scaled_incomplete_gamma_relative_accuracy(a):
    zs = np.array([1e-8, 1e-4, 0.01, 0.5, 1.0, 1.999, 2.0, 2.6, 5.0, 30.0, 1e3, 1e5])
    got = scaled_gammaincc(a, zs)
    with mpmath.workdps(40):
        ref = [mpmath.gammainc(a, z) * mpmath.power(z, -a) * mpmath.exp(z) for z in zs]
    rel = np.abs(got - np.array([float(r) for r in ref])) / np.array([float(abs(r)) for r in ref])
    assert rel.max() < 1e-13


def test_scaled_incomplete_gamma_at_zero_is_pareto_limit():
    assert scaled_gammaincc(-1.0, np.array([0.0]))[0] == pytest.approx(1.0, rel=1e-15)
    assert scaled_gammaincc(-2.5, np.array([0.0]))[0] == pytest.approx(0.4, rel=1e-15)


def test_tail_is_accurate_in_relative_terms():
    """1 - CDF far in the tail keeps its relative accuracy (no 1 - F cancellation)."""
    p = TruncatedPowerLaw(2.0, 0.03)
    for c in [500.0, 2000.0]:
        ref = 1 - _mp_cdf(2.0, 0.03, c)
        assert p.sf(c) == pytest.approx(float(ref), rel=1e-12)


def test_mean_matches_mpmath():
    for alpha, lam in [(0.5, 0.1), (1.0, 0.01), (2.0, 0.028), (3.0, 1.0)]:
        with mpmath.workdps(30):
            ref = mpmath.gammainc(2 - alpha, lam) / mpmath.gammainc(1 - alpha, lam) / lam
        assert TruncatedPowerLaw(alpha, lam).mean() == pytest.approx(float(ref), rel=1e-12)
