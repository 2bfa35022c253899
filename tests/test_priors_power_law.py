"""Truncated power law and Pareto: formulas, properties, exact sampling (KS), errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from sinkmatch.priors import Pareto, Prior, TruncatedPowerLaw

KS_GRID = [
    (0.5, 1e-4),
    (0.5, 0.01),
    (0.5, 1.0),
    (1.0, 1e-4),
    (1.0, 0.05),
    (1.5, 1e-3),
    (2.0, 1e-4),
    (2.0, 0.028),
    (2.0, 1.0),
    (2.5, 0.3),
    (3.0, 1e-4),
    (3.0, 1.0),
    (1.8, 0.0),
    (3.0, 0.0),
]


@pytest.mark.parametrize("case", range(len(KS_GRID)))
def test_sampler_passes_ks_against_exact_cdf(case):
    alpha, lam = KS_GRID[case]
    p = TruncatedPowerLaw(alpha, lam)
    g = torch.Generator().manual_seed(1000 + case)
    x = p.sample(20_000, generator=g, dtype=torch.float64).numpy()
    assert x.min() >= 1.0
    res = stats.kstest(x, p.cdf)
    print(f"KS alpha={alpha} lam={lam}: p={res.pvalue:.4f}")
    assert res.pvalue > 1e-3


def test_sampler_with_x_min_and_tail_moments():
    p = TruncatedPowerLaw(1.2, 0.05, x_min=3.0)
    x = p.sample(200_000, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    assert float(x.min()) >= 3.0
    assert float(x.mean()) == pytest.approx(p.mean(), rel=0.01)
    assert float((x > 60).double().mean()) == pytest.approx(float(p.sf(60.0)), rel=0.05)


def test_pdf_integrates_to_one_and_matches_cdf_derivative():
    from scipy.integrate import quad

    for alpha, lam in [(0.5, 0.2), (1.0, 0.01), (2.0, 0.03), (2.5, 0.0)]:
        p = TruncatedPowerLaw(alpha, lam, x_min=1.5)
        total = quad(lambda c, p=p: p.pdf(c), 1.5, math.inf, limit=500)[0]
        assert total == pytest.approx(1.0, abs=1e-7)
        c, h = 4.0, 1e-5
        assert (p.cdf(c + h) - p.cdf(c - h)) / (2 * h) == pytest.approx(p.pdf(c), rel=1e-6)
        assert p.logpdf(c) == pytest.approx(math.log(p.pdf(c)), rel=1e-14)


def test_pareto_closed_forms():
    p = Pareto(2.5, x_min=2.0)
    c = np.array([2.0, 3.0, 10.0])
    assert np.allclose(p.cdf(c), 1 - (c / 2.0) ** -1.5, rtol=0, atol=1e-15)
    assert np.allclose(p.pdf(c), 1.5 / 2.0 * (c / 2.0) ** -2.5, rtol=1e-14)
    assert p.ppf(0.5) == pytest.approx(2.0 * 0.5 ** (-1 / 1.5), rel=1e-15)
    assert p.mean() == pytest.approx(2.0 * 1.5 / 0.5, rel=1e-15)
    assert Pareto(2.0).mean() == math.inf
    assert isinstance(p, TruncatedPowerLaw) and isinstance(p, Prior)


def test_support_edges_and_input_kinds():
    p = TruncatedPowerLaw(2.0, 0.03)
    assert p.cdf(0.5) == 0.0 and p.cdf(1.0) == 0.0 and p.cdf(math.inf) == 1.0
    assert p.pdf(0.5) == 0.0 and p.logpdf(0.5) == -math.inf
    assert p.ppf(0.0) == 1.0 and p.ppf(1.0) == math.inf
    assert math.isnan(p.cdf(math.nan))
    assert isinstance(p.cdf(2.0), float)
    arr = p.cdf(np.array([[1.5, 2.0], [3.0, 4.0]]))
    assert isinstance(arr, np.ndarray) and arr.shape == (2, 2) and arr.dtype == np.float64
    t = p.cdf(torch.tensor([1.5, 2.0], dtype=torch.float32))
    assert isinstance(t, torch.Tensor) and t.dtype == torch.float32
    ti = p.cdf(torch.tensor([2, 3]))
    assert ti.dtype == torch.float64
    assert float(t[1]) == pytest.approx(p.cdf(2.0), rel=1e-6)
    assert p.cdf([1.5, 2.0]).shape == (2,)


def test_ppf_inverts_cdf_on_a_grid():
    for alpha, lam in [(0.5, 1e-4), (0.9, 0.5), (1.0, 0.01), (2.0, 0.028), (3.0, 1.0), (2.0, 0.0)]:
        p = TruncatedPowerLaw(alpha, lam)
        q = np.concatenate([np.linspace(1e-9, 1 - 1e-9, 201), [1e-15, 1 - 1e-12]])
        assert np.max(np.abs(p.cdf(p.ppf(q)) - q)) < 1e-12


@settings(max_examples=40, deadline=None)
@given(
    alpha=st.floats(0.3, 4.0),
    lam=st.one_of(st.just(0.0), st.floats(1e-4, 2.0)),
    cs=st.lists(st.floats(0.5, 1e5), min_size=2, max_size=20),
)
def test_cdf_is_monotone_and_in_unit_interval(alpha, lam, cs):
    if lam == 0.0 and alpha <= 1.05:
        alpha = alpha + 1.1
    p = TruncatedPowerLaw(alpha, lam)
    c = np.sort(np.array(cs))
    f = p.cdf(c)
    assert np.all((f >= 0) & (f <= 1))
    assert np.all(np.diff(f) >= -1e-15)


@settings(max_examples=40, deadline=None)
@given(alpha=st.floats(0.3, 4.0), lam=st.floats(1e-4, 2.0), u=st.floats(1e-6, 1 - 1e-6))
def test_ppf_of_cdf_recovers_the_point(alpha, lam, u):
    p = TruncatedPowerLaw(alpha, lam)
    c = float(p.ppf(u))
    assert c >= 1.0
    assert p.cdf(c) == pytest.approx(u, abs=1e-12)
    assert float(p.ppf(p.cdf(c))) == pytest.approx(c, rel=1e-8)


def test_partial_mean_matches_quadrature():
    from scipy.integrate import quad

    for alpha, lam in [(0.5, 0.1), (2.0, 0.028), (2.0, 0.0), (3.0, 0.0), (1.5, 1.0)]:
        p = TruncatedPowerLaw(alpha, lam)
        ref = quad(lambda c, p=p: c * p.pdf(c), 1.0, 5.0)[0]
        assert p.partial_mean(5.0) == pytest.approx(ref, rel=1e-9)
        assert p.partial_mean(0.5) == 0.0


@pytest.mark.parametrize(
    "kwargs,exc,match",
    [
        ({"alpha": 0.0, "lam": 0.1}, ValueError, "alpha"),
        ({"alpha": -1.0, "lam": 0.1}, ValueError, "alpha"),
        ({"alpha": 2.0, "lam": -0.1}, ValueError, "lam"),
        ({"alpha": 1.0, "lam": 0.0}, ValueError, "alpha"),
        ({"alpha": 0.5, "lam": 0.0}, ValueError, "alpha=0.5"),
        ({"alpha": 2.0, "lam": 0.1, "x_min": 0.0}, ValueError, "x_min"),
        ({"alpha": 2.0, "lam": 0.1, "x_min": -1.0}, ValueError, "x_min"),
        ({"alpha": math.nan, "lam": 0.1}, ValueError, "alpha"),
        ({"alpha": 2.0, "lam": math.inf}, ValueError, "lam"),
        ({"alpha": "2", "lam": 0.1}, TypeError, "alpha"),
        ({"alpha": True, "lam": 0.1}, TypeError, "alpha"),
    ],
)
def test_bad_parameters_raise(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        TruncatedPowerLaw(**kwargs)


def test_pareto_rejects_alpha_le_one():
    with pytest.raises(ValueError, match="alpha"):
        Pareto(1.0)


def test_ppf_rejects_out_of_range_probability():
    with pytest.raises(ValueError, match="q must lie in"):
        TruncatedPowerLaw(2.0, 0.1).ppf(np.array([0.5, 1.5]))


@pytest.mark.parametrize(
    "alpha,lam",
    [
        (0.5, 1e-4),
        pytest.param(2.0, 0.028, marks=pytest.mark.slow),
        pytest.param(3.0, 1.0, marks=pytest.mark.slow),
    ],
)
def test_sampler_large_n_ks(alpha, lam):
    """10^6 draws: sensitive to biases of order 1e-3 in the CDF (e.g. a piece-choice bias)."""
    p = TruncatedPowerLaw(alpha, lam)
    x = p.sample(1_000_000, generator=torch.Generator().manual_seed(7), dtype=torch.float64).numpy()
    assert stats.kstest(x, p.cdf).pvalue > 1e-3


@pytest.mark.parametrize(
    "alpha,lam", [(0.5, 1e-4), (1.0, 0.05), (2.0, 0.03), (3.0, 1.0), (0.7, 40.0)]
)
def test_sampler_tables_reproduce_exact_piece_masses(alpha, lam):
    """The alias table encodes the exact masses of the pieces (from the exact survival function)."""
    p = TruncatedPowerLaw(alpha, lam)
    lo, _scale, prob, alias = p._piece_table()
    k = prob.size
    recon = np.full(k, 0.0)
    np.add.at(recon, np.arange(k), prob / k)
    np.add.at(recon, alias, (1.0 - prob) / k)
    sf = p.sf(lo)
    mass = np.concatenate([sf[:-1] - sf[1:], sf[-1:]])
    assert np.max(np.abs(recon - mass)) < 1e-13
    assert lo[0] == 1.0 and np.all(np.diff(lo) > 0) and np.all(np.diff(lo) * lam <= 0.05 + 1e-12)
    assert lam * lo[-1] >= 20 * alpha or lo.size == 1
