"""Maximum-likelihood fits and the Vuong test, checked against the ``powerlaw`` package.

``powerlaw`` is a reference only.

Tolerances: parameters rel 1e-3 (``powerlaw`` optimizes numerically with its own stopping rule, so
it is the less precise of the two); log-likelihood of ``powerlaw`` evaluated at *our* parameters
equals ours to 1e-9 relative (same model, same x_min); our maximized log-likelihood is never below
``powerlaw``'s by more than 1e-6 relative.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

from sinkmatch.priors import (
    FitResult,
    LogNormal,
    TruncatedPowerLaw,
    compare_fits,
    fit_exponential,
    fit_lognormal,
    fit_power_law,
    fit_truncated_power_law,
)
from sinkmatch.priors.power_law import Pareto
from sinkmatch.priors.simple import Exponential

powerlaw = pytest.importorskip("powerlaw")


def _data(prior, n=4000, seed=0):
    return prior.sample(
        n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64
    ).numpy()


def _pl_fit(data, x_min):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with np.errstate(all="ignore"):
            return powerlaw.Fit(data, xmin=x_min, verbose=False)


def _pl_loglik(dist_cls, params, data, x_min):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        d = dist_cls(xmin=x_min, parameters=params, discrete=False)
        return float(np.sum(d.loglikelihoods(data[data >= x_min])))


@pytest.fixture(scope="module")
def tpl_data():
    return _data(TruncatedPowerLaw(2.0, 0.03), n=5000, seed=1)


def test_truncated_power_law_fit_matches_powerlaw(tpl_data):
    ours = fit_truncated_power_law(tpl_data, x_min=1.0)
    ref = _pl_fit(tpl_data, 1.0).truncated_power_law
    assert isinstance(ours, FitResult) and ours.converged and ours.n == 5000
    assert ours.params["alpha"] == pytest.approx(ref.alpha, rel=1e-3)
    assert ours.params["lam"] == pytest.approx(ref.Lambda, rel=1e-3)
    pl_at_ours = _pl_loglik(
        powerlaw.Truncated_Power_Law, [ours.params["alpha"], ours.params["lam"]], tpl_data, 1.0
    )
    assert ours.loglik == pytest.approx(pl_at_ours, rel=1e-9)
    pl_best = float(np.sum(ref.loglikelihoods(tpl_data)))
    assert ours.loglik >= pl_best - 1e-6 * abs(pl_best)
    assert isinstance(ours.prior, TruncatedPowerLaw)
    assert ours.loglik == pytest.approx(float(np.sum(ours.prior.logpdf(tpl_data))), rel=1e-14)


def test_truncated_power_law_fit_is_a_stationary_point(tpl_data):
    fit = fit_truncated_power_law(tpl_data, x_min=1.0)
    a, lam = fit.params["alpha"], fit.params["lam"]

    def ll(a_, lam_):
        return float(np.sum(TruncatedPowerLaw(a_, lam_).logpdf(tpl_data)))

    for da, dl in [(1e-4, 0), (-1e-4, 0), (0, 1e-5), (0, -1e-5)]:
        assert ll(a + da, lam + dl) <= fit.loglik + 1e-9


def test_power_law_fit_matches_powerlaw():
    data = _data(Pareto(2.5, x_min=2.0), seed=2)
    ours = fit_power_law(data, x_min=2.0)
    ref = _pl_fit(data, 2.0).power_law
    assert ours.params["alpha"] == pytest.approx(ref.alpha, rel=1e-10)
    assert ours.loglik == pytest.approx(float(np.sum(ref.loglikelihoods(data))), rel=1e-9)
    assert isinstance(ours.prior, Pareto)


def test_exponential_fit_matches_powerlaw():
    data = _data(Exponential(0.2, x_min=1.0), seed=3)
    ours = fit_exponential(data, x_min=1.0)
    ref = _pl_fit(data, 1.0).exponential
    assert ours.params["lam"] == pytest.approx(ref.Lambda, rel=1e-3)
    assert ours.params["lam"] == pytest.approx(1 / np.mean(data - 1.0), rel=1e-14)
    assert ours.loglik == pytest.approx(
        _pl_loglik(powerlaw.Exponential, [ours.params["lam"]], data, 1.0), rel=1e-9
    )
    assert ours.loglik >= float(np.sum(ref.loglikelihoods(data))) - 1e-9


def test_lognormal_fit_matches_powerlaw():
    data = _data(LogNormal(1.0, 0.7), seed=4)
    ours = fit_lognormal(data, x_min=1.5)
    ref = _pl_fit(data, 1.5).lognormal
    assert ours.converged
    assert ours.params["mu"] == pytest.approx(ref.mu, rel=1e-3)
    assert ours.params["sigma"] == pytest.approx(ref.sigma, rel=1e-3)
    at_ours = _pl_loglik(powerlaw.Lognormal, [ours.params["mu"], ours.params["sigma"]], data, 1.5)
    assert ours.loglik == pytest.approx(at_ours, rel=1e-9)
    assert ours.loglik >= float(np.sum(ref.loglikelihoods(data[data >= 1.5]))) - 1e-9
    # untruncated: the closed-form MLE
    full = fit_lognormal(data, x_min=0.0)
    logx = np.log(data)
    assert full.params["mu"] == pytest.approx(logx.mean(), rel=1e-8)
    assert full.params["sigma"] == pytest.approx(logx.std(), rel=1e-8)


def test_compare_fits_matches_powerlaw(tpl_data):
    fits = {
        "truncated_power_law": fit_truncated_power_law(tpl_data, x_min=1.0),
        "power_law": fit_power_law(tpl_data, x_min=1.0),
        "lognormal": fit_lognormal(tpl_data, x_min=1.0),
        "exponential": fit_exponential(tpl_data, x_min=1.0),
    }
    ref = _pl_fit(tpl_data, 1.0)
    for other in ["lognormal", "exponential"]:
        ours = compare_fits(tpl_data, fits["truncated_power_law"], fits[other])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            r_ref, p_ref = ref.distribution_compare(
                "truncated_power_law", other, normalized_ratio=True
            )
        # R depends on the fitted parameters, so it inherits the rel 1e-3 parameter agreement
        assert ours.normalized_R == pytest.approx(r_ref, rel=1e-3, abs=1e-3)
        assert ours.p_value == pytest.approx(p_ref, rel=1e-2, abs=1e-12)
        assert ours.R > 0 and ours.n == 5000
    nested = compare_fits(tpl_data, fits["truncated_power_law"], fits["power_law"], nested=True)
    assert nested.R > 0 and nested.p_value < 1e-6
    from scipy.stats import chi2

    assert nested.p_value == pytest.approx(chi2.sf(2 * nested.R, 1), rel=1e-12)
    same = compare_fits(tpl_data, fits["power_law"], fits["power_law"])
    assert same.R == 0 and same.p_value == 1.0


def test_fit_recovers_parameters_on_large_sample():
    data = _data(TruncatedPowerLaw(1.5, 0.05, x_min=1.0), n=100_000, seed=9)
    fit = fit_truncated_power_law(data, x_min=1.0)
    assert fit.params["alpha"] == pytest.approx(1.5, abs=0.03)
    assert fit.params["lam"] == pytest.approx(0.05, rel=0.05)


def test_fit_errors():
    with pytest.raises(ValueError, match="at least 2"):
        fit_power_law([1.0, 2.0, 3.0], x_min=2.5)
    with pytest.raises(ValueError, match="x_min"):
        fit_power_law([1.0, 2.0, 3.0], x_min=0.0)
    with pytest.raises(ValueError, match="finite"):
        fit_truncated_power_law([1.0, math.inf, 3.0])
    with pytest.raises(ValueError, match="all data equal"):
        fit_exponential([2.0, 2.0, 2.0])
    a = fit_power_law([1.0, 2.0, 5.0, 3.0], x_min=1.0)
    b = fit_power_law([1.0, 2.0, 5.0, 3.0], x_min=2.0)
    with pytest.raises(ValueError, match="share x_min"):
        compare_fits([1.0, 2.0, 5.0, 3.0], a, b)
    with pytest.raises(TypeError, match="fit2"):
        compare_fits([1.0, 2.0], a, "power_law")
