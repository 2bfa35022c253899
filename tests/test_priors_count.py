"""λ solver, legacy mode (pinned to the original code's values), head redistribution, CountPrior."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from sinkmatch.priors import (
    CountPrior,
    HeadRedistributed,
    LogNormal,
    Prior,
    TruncatedPowerLaw,
    legacy_lambda,
    legacy_threshold,
    solve_lambda,
)
from sinkmatch.priors.legacy import legacy_cdf

# (Cf_max, S) -> (legacy lambda, legacy t, exact lambda with C_max = Cf_max / 64)
PINS = [
    (3000, 482, 0.028, 1.21001, 0.029504889649617),
    (3500, 482, 0.022, 1.24001, 0.022982624028088),
    (12000, 1500, 0.006, 1.34001, 0.006088704706188),
]


@pytest.mark.parametrize("cf_max,s,lam,t,_exact", PINS)
def test_legacy_values_pinned(cf_max, s, lam, t, _exact):
    got_lam = legacy_lambda(cf_max, s)
    # the exact np.arange element, as the original used it
    grid = np.arange(0.001, 0.1, 0.001)
    assert got_lam == float(grid[round(lam * 1000) - 1])
    assert got_lam == pytest.approx(lam, abs=1e-15)
    got_t = legacy_threshold(2.0, got_lam)
    assert got_t == pytest.approx(t, abs=1e-9)
    assert round(got_t, 2) == pytest.approx(round(t, 2))


@pytest.mark.parametrize("cf_max,s,lam,t,_exact", PINS)
def test_legacy_values_match_original_algorithm_run_with_mpmath(cf_max, s, lam, t, _exact):
    """Re-run the original's grid searches with mpmath's gammainc (as the original did)."""
    mpmath = pytest.importorskip("mpmath")

    def cdf(x, alpha, lam_):
        return 1 - mpmath.gammainc(1 - alpha, lam_ * x) / lam_ ** (1 - alpha)

    ref_lam = next(
        v for v in np.arange(0.001, 0.1, 0.001) if cdf(cf_max / 64, 2.0, v) > 1 - 1.0 / s
    )
    ref_t = next(v for v in np.arange(1.00001, 10, 0.01) if cdf(v, 2.0, ref_lam) > 0.28)
    assert legacy_lambda(cf_max, s) == float(ref_lam)
    assert legacy_threshold(2.0, float(ref_lam)) == float(ref_t)
    # our float64 unnormalized CDF agrees with mpmath's
    assert legacy_cdf(3.0, 2.0, lam) == pytest.approx(float(cdf(3.0, 2.0, lam)), abs=1e-14)


@pytest.mark.parametrize("cf_max,s,_lam,_t,exact", PINS)
def test_solve_lambda_exact_values(cf_max, s, _lam, _t, exact):
    got = solve_lambda(cf_max, num_images=s, grid=(4, 4), crops_per_image=4)
    assert got == pytest.approx(exact, rel=1e-12)
    c_max = cf_max / 64
    assert TruncatedPowerLaw(2.0, got).cdf(c_max) == pytest.approx(1 - 1 / s, abs=1e-13)
    # the facts file's 0.030 / 0.023 / 0.007 are the first 0.001-grid points above the exact root
    assert math.ceil(got * 1000) / 1000 == pytest.approx(
        {3000: 0.030, 3500: 0.023, 12000: 0.007}[cf_max]
    )


@settings(max_examples=30, deadline=None)
@given(
    cf_max=st.floats(200.0, 1e5),
    s=st.integers(2, 10_000),
    alpha=st.floats(0.3, 3.0),
)
def test_solve_lambda_solves_its_equation(cf_max, s, alpha):
    c_max = cf_max / 36
    try:
        lam = solve_lambda(cf_max, num_images=s, alpha=alpha)
    except ValueError as err:  # only the documented "pure power law already too light" case
        assert alpha > 1 and "pure power law" in str(err)
        assert TruncatedPowerLaw(alpha, 0.0).cdf(c_max) >= 1 - 1 / s - 1e-12
        return
    assert lam > 0
    assert TruncatedPowerLaw(alpha, lam).cdf(c_max) == pytest.approx(1 - 1 / s, abs=1e-12)


@pytest.mark.parametrize(
    "args,kwargs,match",
    [
        ((30.0,), {"num_images": 482}, "C_max"),
        ((3000.0,), {"num_images": 1}, "num_images"),
        ((3000.0,), {"num_images": 482, "grid": (3,)}, "grid"),
        ((3000.0,), {"num_images": 482, "grid": (3, 0)}, "grid"),
        ((-5.0,), {"num_images": 482}, "cf_max"),
        ((math.nan,), {"num_images": 482}, "cf_max"),
        ((3000.0,), {"num_images": 482, "alpha": 0.0}, "alpha"),
        ((3000.0,), {"num_images": 2, "alpha": 3.0}, "pure power law"),
        ((3000.0,), {"num_images": 482, "x_min": 0.0}, "x_min"),
    ],
)
def test_solve_lambda_errors(args, kwargs, match):
    with pytest.raises(ValueError, match=match):
        solve_lambda(*args, **kwargs)


def test_legacy_errors():
    with pytest.raises(ValueError, match="no lambda"):
        legacy_lambda(100.0, 482)
    with pytest.raises(ValueError, match="num_images"):
        legacy_lambda(3000.0, 1)
    with pytest.raises(ValueError, match="lam"):
        legacy_threshold(2.0, 0.0)


# ----------------------------------------------------------------------------- head redistribution


def test_head_redistribution_mixture_formulas():
    base = TruncatedPowerLaw(2.0, 0.03)
    h = HeadRedistributed(base, head_mass=0.3)
    t = h.threshold
    assert base.cdf(t) == pytest.approx(0.3, abs=1e-13) and h.head_weight == pytest.approx(
        0.3, abs=1e-13
    )
    assert h.cdf(0.0) == 0.0 and h.cdf(-1.0) == 0.0 and h.cdf(math.inf) == 1.0
    assert h.cdf(t / 4) == pytest.approx(0.3 / 4, abs=1e-14)
    assert h.cdf(t) == pytest.approx(base.cdf(t), abs=1e-15)
    assert h.cdf(7.0) == base.cdf(7.0)
    assert h.pdf(t / 2) == pytest.approx(0.3 / t, rel=1e-13)
    assert h.pdf(5.0) == base.pdf(5.0) and h.pdf(-0.1) == 0.0
    q = np.linspace(0.0, 0.999, 50)
    assert np.max(np.abs(h.cdf(h.ppf(q)) - q)) < 1e-12
    assert h.ppf(0.15) == pytest.approx(t / 2, rel=1e-13)
    from scipy.integrate import quad

    ref = (
        quad(lambda c: c * h.pdf(c), 0, t)[0]
        + quad(lambda c: c * h.pdf(c), t, math.inf, limit=400)[0]
    )
    assert h.mean() == pytest.approx(ref, rel=1e-7)


def test_head_redistribution_explicit_threshold_and_generic_base():
    base = LogNormal(0.5, 1.0)
    h = HeadRedistributed(base, threshold=1.0)
    assert h.head_weight == pytest.approx(float(base.cdf(1.0)))
    x = h.sample(20_000, generator=torch.Generator().manual_seed(3), dtype=torch.float64).numpy()
    assert stats.kstest(x, h.cdf).pvalue > 1e-3
    from scipy.integrate import quad

    ref = (
        quad(lambda c: c * h.pdf(c), 0, 1.0)[0]
        + quad(lambda c: c * h.pdf(c), 1.0, math.inf, limit=400)[0]
    )
    assert h.mean() == pytest.approx(ref, rel=1e-7)


@settings(max_examples=30, deadline=None)
@given(
    alpha=st.floats(0.5, 3.0),
    lam=st.floats(1e-3, 1.0),
    mass=st.floats(0.05, 0.9),
    c=st.floats(0.0, 50.0),
)
def test_head_mass_is_conserved(alpha, lam, mass, c):
    base = TruncatedPowerLaw(alpha, lam)
    h = HeadRedistributed(base, head_mass=mass)
    assert h.cdf(h.threshold) == pytest.approx(base.cdf(h.threshold), abs=1e-12)
    assert h.cdf(math.inf) == 1.0
    f = h.cdf(c)
    assert 0.0 <= f <= 1.0
    if c >= h.threshold:
        assert f == base.cdf(c)
    assert h.cdf(c + 0.5) >= f


def test_head_sampler_ks():
    h = HeadRedistributed(TruncatedPowerLaw(2.0, 0.03), head_mass=0.3)
    x = h.sample(20_000, generator=torch.Generator().manual_seed(11), dtype=torch.float64).numpy()
    assert x.min() >= 0.0
    assert np.mean(x < h.threshold) == pytest.approx(0.3, abs=0.015)
    assert stats.kstest(x, h.cdf).pvalue > 1e-3


def test_head_redistribution_errors():
    base = TruncatedPowerLaw(2.0, 0.03)
    with pytest.raises(TypeError, match="base"):
        HeadRedistributed(object())
    with pytest.raises(ValueError, match="head_mass"):
        HeadRedistributed(base, head_mass=1.5)
    with pytest.raises(ValueError, match="threshold"):
        HeadRedistributed(base, threshold=-1.0)


# -------------------------------------------------------------------------------------- CountPrior


def test_count_prior_legacy_reproduces_original():
    p = CountPrior.from_max_count(3000, num_images=482, mode="legacy")
    assert isinstance(p, Prior)
    assert p.mode == "legacy" and p.lam == 0.028 and p.threshold == pytest.approx(1.21001, abs=1e-9)
    assert p.c_max == pytest.approx(3000 / 64) and p.alpha == 2.0
    # the original's sampler: TPL on [1, inf), every draw below t replaced by U(0, t)
    x = p.sample(20_000, generator=torch.Generator().manual_seed(0), dtype=torch.float64).numpy()
    assert stats.kstest(x, p.cdf).pvalue > 1e-3
    assert np.mean(x < p.threshold) == pytest.approx(p.head_weight, abs=0.01)
    assert "legacy" in repr(p) and "lam=0.028" in repr(p)
    assert "CDF(C_max" in p.summary()


def test_count_prior_exact():
    p = CountPrior.from_max_count(3000, num_images=482)
    assert p.mode == "exact"
    assert p.c_max == pytest.approx(3000 / 36)
    assert p.lam == pytest.approx(solve_lambda(3000, num_images=482), rel=1e-15)
    assert p.head_weight == pytest.approx(0.3, abs=1e-12)
    assert p.cdf(p.c_max) == pytest.approx(1 - 1 / 482, abs=1e-12)
    x = p.sample(20_000, generator=torch.Generator().manual_seed(1), dtype=torch.float64).numpy()
    assert stats.kstest(x, p.cdf).pvalue > 1e-3
    p2 = CountPrior.from_max_count(3000, num_images=482, threshold=1.0, grid=(4, 4))
    assert p2.threshold == 1.0 and p2.head_weight == 0.0
    assert p2.lam == pytest.approx(PINS[0][4], rel=1e-12)


def test_count_prior_errors():
    with pytest.raises(ValueError, match="mode"):
        CountPrior.from_max_count(3000, num_images=482, mode="paper")
    with pytest.raises(ValueError, match="legacy"):
        CountPrior.from_max_count(3000, num_images=482, mode="legacy", x_min=2.0)
    with pytest.raises(ValueError, match="legacy"):
        CountPrior.from_max_count(3000, num_images=482, mode="legacy", threshold=1.0)
    with pytest.raises(ValueError, match="grid"):
        CountPrior.from_max_count(3000, num_images=482, mode="legacy", grid=(0, 3))
    # the original hard-codes 4 x 4 x 4 whatever the cell grid: the grid does not change legacy λ
    assert CountPrior.from_max_count(3000, num_images=482, mode="legacy", grid=(2, 2)).lam == 0.028
    with pytest.raises(ValueError, match="head_mass"):
        CountPrior.from_max_count(3000, num_images=482, head_mass=0.0)
    with pytest.raises(ValueError, match="C_max"):
        CountPrior.from_max_count(10, num_images=482)
