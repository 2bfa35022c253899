"""Log-normal, uniform, empirical and exponential priors against scipy.stats; the sampling API."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

import sinkmatch
from sinkmatch import priors
from sinkmatch.priors import (
    CountPrior,
    Empirical,
    HeadRedistributed,
    LogNormal,
    Pareto,
    Prior,
    TruncatedPowerLaw,
    Uniform,
)
from sinkmatch.priors.simple import Exponential

EXPORTS = [
    "Prior",
    "TruncatedPowerLaw",
    "Pareto",
    "LogNormal",
    "Uniform",
    "Empirical",
    "HeadRedistributed",
    "CountPrior",
    "solve_lambda",
    "legacy_lambda",
    "legacy_threshold",
    "FitResult",
    "fit_truncated_power_law",
    "fit_power_law",
    "fit_lognormal",
    "fit_exponential",
    "compare_fits",
]


def test_exports_are_exactly_the_listed_names():
    assert sorted(priors.__all__) == sorted(EXPORTS)
    for name in EXPORTS:
        assert getattr(sinkmatch, name) is getattr(priors, name)


def _all_priors():
    return [
        TruncatedPowerLaw(2.0, 0.03),
        Pareto(2.5),
        LogNormal(0.3, 0.8),
        LogNormal(0.3, 0.8, x_min=1.0),
        Uniform(0.0, 40.0),
        Empirical([0.5, 1.0, 1.0, 3.0, 8.0]),
        Empirical([0.5, 1.0, 1.0, 3.0, 8.0], jitter=0.2),
        Exponential(0.5, x_min=1.0),
        HeadRedistributed(TruncatedPowerLaw(2.0, 0.03)),
        CountPrior.from_max_count(3000, num_images=482),
    ]


@pytest.mark.parametrize("prior", _all_priors(), ids=repr)
def test_protocol_and_sampling_contract(prior):
    assert isinstance(prior, Prior)
    g1 = torch.Generator().manual_seed(42)
    g2 = torch.Generator().manual_seed(42)
    a = prior.sample(1000, generator=g1)
    b = prior.sample(1000, generator=g2)
    assert a.shape == (1000,) and a.dtype == torch.float32 and a.device.type == "cpu"
    assert torch.equal(a, b)  # same generator state, same samples
    c = prior.sample(1000, generator=g1)
    assert not torch.equal(a, c)  # the generator advanced
    assert prior.sample(0).shape == (0,)
    assert prior.sample(5, dtype=torch.float64, device="cpu").dtype == torch.float64
    assert prior.sample(5, dtype=torch.bfloat16).dtype == torch.bfloat16
    x = prior.sample_numpy(500, np.random.default_rng(0))
    assert x.dtype == np.float64 and x.shape == (500,)
    assert np.array_equal(x, prior.sample_numpy(500, np.random.default_rng(0)))
    assert torch.isfinite(a).all()
    assert math.isfinite(prior.mean())


@pytest.mark.parametrize("prior", _all_priors(), ids=repr)
def test_sample_mean_matches_mean(prior):
    x = prior.sample(200_000, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    sd = float(x.std())
    assert float(x.mean()) == pytest.approx(prior.mean(), abs=6 * sd / math.sqrt(x.numel()))


@pytest.mark.parametrize(
    "call,exc,match",
    [
        (lambda p: p.sample(-1), ValueError, "n must be >= 0"),
        (lambda p: p.sample(3.0), TypeError, "n must be a non-negative integer"),
        (lambda p: p.sample(True), TypeError, "n must"),
        (lambda p: p.sample(3, dtype=torch.int64), TypeError, "floating-point"),
        (lambda p: p.sample(3, dtype="float32"), TypeError, "dtype"),
        (lambda p: p.sample(3, generator=np.random.default_rng(0)), TypeError, "generator"),
        (lambda p: p.ppf(-0.1), ValueError, "q must lie"),
        (lambda p: p.cdf("x"), TypeError, "c must"),
    ],
)
def test_sampling_and_evaluation_errors(call, exc, match):
    with pytest.raises(exc, match=match):
        call(TruncatedPowerLaw(2.0, 0.03))


def test_lognormal_matches_scipy():
    p = LogNormal(0.3, 0.8)
    ref = stats.lognorm(s=0.8, scale=math.exp(0.3))
    c = np.array([0.01, 0.5, 1.0, 2.0, 10.0])
    assert np.allclose(p.cdf(c), ref.cdf(c), rtol=1e-13, atol=1e-15)
    assert np.allclose(p.pdf(c), ref.pdf(c), rtol=1e-12)
    q = np.array([1e-12, 0.01, 0.5, 0.99, 1 - 1e-12])
    assert np.allclose(p.ppf(q), ref.ppf(q), rtol=1e-9)
    assert p.mean() == pytest.approx(ref.mean(), rel=1e-14)
    assert p.cdf(0.0) == 0.0 and p.pdf(-1.0) == 0.0


def test_truncated_lognormal_matches_scipy():
    p = LogNormal(0.3, 0.8, x_min=2.0)
    ref = stats.lognorm(s=0.8, scale=math.exp(0.3))
    tail = ref.sf(2.0)
    c = np.array([2.0, 2.5, 4.0, 20.0])
    assert np.allclose(p.cdf(c), (ref.cdf(c) - ref.cdf(2.0)) / tail, atol=1e-14)
    assert np.allclose(p.pdf(c), ref.pdf(c) / tail, rtol=1e-12)
    assert p.cdf(1.9) == 0.0 and p.ppf(0.0) == 2.0
    q = np.linspace(0.01, 0.99, 9)
    assert np.allclose(p.cdf(p.ppf(q)), q, atol=1e-13)
    x = p.sample(20_000, generator=torch.Generator().manual_seed(8), dtype=torch.float64).numpy()
    assert x.min() >= 2.0 and stats.kstest(x, p.cdf).pvalue > 1e-3
    with pytest.raises(ValueError, match="tail"):
        LogNormal(0.0, 0.1, x_min=1e30)


def test_uniform():
    p = Uniform(0.0, 40.0)
    assert p.cdf(10.0) == 0.25 and p.cdf(-1.0) == 0.0 and p.cdf(50.0) == 1.0
    assert p.pdf(10.0) == pytest.approx(1 / 40) and p.pdf(41.0) == 0.0
    assert p.ppf(0.5) == 20.0 and p.mean() == 20.0
    x = p.sample(20_000, generator=torch.Generator().manual_seed(2), dtype=torch.float64).numpy()
    assert stats.kstest(x, p.cdf).pvalue > 1e-3
    with pytest.raises(ValueError, match="high must be > low"):
        Uniform(3.0, 3.0)


def test_exponential():
    p = Exponential(0.5, x_min=1.0)
    ref = stats.expon(loc=1.0, scale=2.0)
    c = np.array([1.0, 2.0, 9.0])
    assert np.allclose(p.cdf(c), ref.cdf(c), atol=1e-15)
    assert np.allclose(p.pdf(c), ref.pdf(c), rtol=1e-14)
    assert p.ppf(0.3) == pytest.approx(ref.ppf(0.3), rel=1e-14)
    assert p.partial_mean(4.0) == pytest.approx(ref.expect(lambda c: c, lb=1.0, ub=4.0), rel=1e-9)


def test_empirical_ecdf_and_bootstrap():
    data = np.array([3.0, 1.0, 2.0, 2.0, 7.0])
    p = Empirical(torch.tensor(data))
    assert p.cdf(2.0) == 0.6 and p.cdf(1.999) == 0.2 and p.cdf(0.0) == 0.0 and p.cdf(7.0) == 1.0
    assert p.ppf(0.2) == 1.0 and p.ppf(0.21) == 2.0 and p.ppf(1.0) == 7.0 and p.ppf(0.0) == 1.0
    assert p.mean() == pytest.approx(3.0)
    x = p.sample(50_000, generator=torch.Generator().manual_seed(4), dtype=torch.float64).numpy()
    assert set(np.unique(x)) == {1.0, 2.0, 3.0, 7.0}  # bootstrap: only observed values
    assert np.mean(x == 2.0) == pytest.approx(0.4, abs=0.01)
    with pytest.raises(NotImplementedError, match="no density"):
        p.pdf(2.0)
    with pytest.raises(ValueError, match="non-empty"):
        Empirical([])
    with pytest.raises(ValueError, match="finite"):
        Empirical([1.0, math.nan])
    with pytest.raises(ValueError, match="jitter"):
        Empirical([1.0], jitter=-1.0)


def test_empirical_jitter_is_a_gaussian_kde():
    data = np.array([1.0, 2.0, 5.0])
    p = Empirical(data, jitter=0.3)
    kde_cdf = lambda c: np.mean(stats.norm.cdf((c - data) / 0.3))  # noqa: E731
    assert p.cdf(2.2) == pytest.approx(kde_cdf(2.2), rel=1e-13)
    assert p.pdf(2.2) == pytest.approx(np.mean(stats.norm.pdf((2.2 - data) / 0.3)) / 0.3, rel=1e-12)
    assert p.cdf(p.ppf(0.4)) == pytest.approx(0.4, abs=1e-10)
    x = p.sample(20_000, generator=torch.Generator().manual_seed(6), dtype=torch.float64).numpy()
    assert stats.kstest(x, p.cdf).pvalue > 1e-3


@settings(max_examples=30, deadline=None)
@given(
    mu=st.floats(-2, 3),
    sigma=st.floats(0.1, 2.5),
    cs=st.lists(st.floats(1e-3, 1e3), min_size=2, max_size=10),
)
def test_lognormal_cdf_monotone_and_ppf_inverse(mu, sigma, cs):
    p = LogNormal(mu, sigma)
    c = np.sort(np.array(cs))
    f = p.cdf(c)
    assert np.all((f >= 0) & (f <= 1)) and np.all(np.diff(f) >= 0)
    inner = (f > 1e-8) & (f < 1 - 1e-8)
    assert np.allclose(p.ppf(f[inner]), c[inner], rtol=1e-7)


@pytest.mark.gpu
def test_sampling_on_cuda_with_cuda_generator():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA")
    for prior in _all_priors():
        g = torch.Generator(device="cuda").manual_seed(0)
        x = prior.sample(10_000, generator=g)
        assert x.device.type == "cuda"
        g = torch.Generator(device="cuda").manual_seed(0)
        assert torch.equal(x, prior.sample(10_000, generator=g))
        # CPU generator, CUDA output: same numbers as on the CPU
        y = prior.sample(
            100, generator=torch.Generator().manual_seed(1), device="cuda", dtype=torch.float64
        )
        z = prior.sample(100, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
        assert y.device.type == "cuda" and torch.equal(y.cpu(), z)
