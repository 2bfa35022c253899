"""Every row of docs/migration.md, executed: POT or GeomLoss and sinkmatch on one problem.

Each test runs both libraries in float64 and compares values to 1e-6 (relative to
``max(1, |value|)``). POT is run to convergence (``stopThr=1e-13``); GeomLoss's ``SamplesLoss``
runs a fixed ε-annealing schedule (one iteration per level, not a tolerance), so the tests pin
that schedule to many iterations at the target ε (``diameter`` a hair above ``blur``, ``scaling``
a hair below 1): the call is the documented one, iterated until it has converged.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch

import sinkmatch
from sinkmatch import Euclidean, PowerCost, SqEuclidean, sinkhorn, wasserstein_1d

ot = pytest.importorskip("ot")
geomloss = pytest.importorskip("geomloss")

DOC = Path(__file__).resolve().parents[1] / "docs" / "migration.md"
TOL = 1e-6
POT_TIGHT = dict(stopThr=1e-13, numItermax=100_000)


def _close(ours, ref, tol=TOL):
    ours = np.asarray(torch.as_tensor(ours).detach().cpu(), dtype=np.float64)
    ref = np.asarray(torch.as_tensor(np.asarray(ref)).detach().cpu(), dtype=np.float64)
    assert ours.shape == ref.shape, (ours.shape, ref.shape)
    err = np.abs(ours - ref) / np.maximum(1.0, np.abs(ref))
    assert float(err.max(initial=0.0)) <= tol, f"ours {ours}, reference {ref}"


def _centred(f, a):
    """Potentials up to their gauge (f + c, g - c): subtract the a-weighted mean."""
    f, a = torch.as_tensor(f), torch.as_tensor(a)
    return f - (a * f).sum(-1, keepdim=True) / a.sum(-1, keepdim=True)


def _clouds(n=30, m=25, d=2, seed=0, batch=()):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(*batch, n, d, generator=g, dtype=torch.float64)
    y = torch.rand(*batch, m, d, generator=g, dtype=torch.float64) + 0.2
    a = torch.rand(*batch, n, generator=g, dtype=torch.float64) + 0.1
    b = torch.rand(*batch, m, generator=g, dtype=torch.float64) + 0.1
    return x, y, a / a.sum(-1, keepdim=True), b / b.sum(-1, keepdim=True)


def _matrix_problem(seed=0):
    x, y, a, b = _clouds(n=12, m=9, seed=seed)
    m = ot.dist(x.numpy(), y.numpy())  # squared Euclidean (POT's default metric)
    return a, b, torch.from_numpy(m)


def _samples_loss(blur, iters=300, **kw):
    """GeomLoss's SamplesLoss iterated to convergence: ``iters`` levels within 1e-9 of blur."""
    r = 1.0 + 1e-9
    return geomloss.SamplesLoss(
        "sinkhorn",
        blur=blur,
        diameter=blur * r,
        scaling=math.exp(-math.log(r) / iters),
        backend="tensorized",
        **kw,
    )


# ------------------------------------------------------------------------------------- POT


def test_pot_sinkhorn2():
    a, b, m = _matrix_problem()
    ref = ot.sinkhorn2(a.numpy(), b.numpy(), m.numpy(), 0.05, **POT_TIGHT)
    res = sinkhorn(a=a, b=b, cost_matrix=m, eps=0.05, value="transport", tol=1e-12)
    _close(res.value, ref)


def test_pot_sinkhorn_plan():
    a, b, m = _matrix_problem(1)
    ref = ot.sinkhorn(a.numpy(), b.numpy(), m.numpy(), 0.05, **POT_TIGHT)
    res = sinkhorn(a=a, b=b, cost_matrix=m, eps=0.05, tol=1e-12)
    _close(res.plan()[0], ref)


def test_pot_solve_value():
    a, b, m = _matrix_problem(2)
    ref = ot.solve(m.numpy(), a.numpy(), b.numpy(), reg=0.05, tol=1e-13, max_iter=100_000)
    res = sinkhorn(a=a, b=b, cost_matrix=m, eps=0.05, tol=1e-12)
    _close(res.value, ref.value)
    lin = sinkhorn(a=a, b=b, cost_matrix=m, eps=0.05, tol=1e-12, value="transport")
    _close(lin.value, ref.value_linear)


def test_pot_points_sqeuclidean():
    x, y, a, b = _clouds(seed=3)
    m = ot.dist(x.numpy(), y.numpy())
    ref = ot.sinkhorn2(a.numpy(), b.numpy(), m, 0.05, **POT_TIGHT)
    res = sinkhorn(x, y, a, b, eps=0.05, value="transport", tol=1e-12)
    _close(res.value, ref)


@pytest.mark.parametrize("p", [1.0, 1.5])
def test_pot_points_power_cost(p):
    x, y, a, b = _clouds(seed=4)
    m = ot.dist(x.numpy(), y.numpy(), metric="euclidean") ** p
    ref = ot.sinkhorn2(a.numpy(), b.numpy(), m, 0.05, **POT_TIGHT)
    res = sinkhorn(x, y, a, b, eps=0.05, cost=PowerCost(p), value="transport", tol=1e-12)
    _close(res.value, ref)


def test_pot_iterations_and_threshold():
    a, b, m = _matrix_problem(5)
    ref = ot.sinkhorn2(a.numpy(), b.numpy(), m.numpy(), 0.05, numItermax=5000, stopThr=1e-10)
    res = sinkhorn(a=a, b=b, cost_matrix=m, eps=0.05, value="transport", max_iter=5000, tol=1e-10)
    assert bool(res.converged)
    _close(res.value, ref)


def test_pot_log_potentials():
    a, b, m = _matrix_problem(6)
    _, log = ot.sinkhorn2(a.numpy(), b.numpy(), m.numpy(), 0.05, log=True, **POT_TIGHT)
    res = sinkhorn(a=a, b=b, cost_matrix=m, eps=0.05, tol=1e-12)
    f_pot = 0.05 * (np.log(log["u"]) - np.log(a.numpy()))
    g_pot = 0.05 * (np.log(log["v"]) - np.log(b.numpy()))
    _close(_centred(res.f[0], a), _centred(torch.from_numpy(f_pot), a))
    _close(_centred(res.g[0], b), _centred(torch.from_numpy(g_pot), b))


def test_pot_log_domain_potentials():
    a, b, m = _matrix_problem(7)
    _, log = ot.sinkhorn2(
        a.numpy(), b.numpy(), m.numpy(), 0.05, method="sinkhorn_log", log=True, **POT_TIGHT
    )
    res = sinkhorn(a=a, b=b, cost_matrix=m, eps=0.05, tol=1e-12)
    f_pot = torch.from_numpy(0.05 * (log["log_u"] - np.log(a.numpy())))
    _close(_centred(res.f[0], a), _centred(f_pot, a))


def test_pot_several_target_histograms():
    a, _, m = _matrix_problem(8)
    g = torch.Generator().manual_seed(8)
    bs = torch.rand(9, 3, generator=g, dtype=torch.float64) + 0.1  # POT: (M, K)
    bs = bs / bs.sum(0)
    ref = ot.sinkhorn2(a.numpy(), bs.numpy(), m.numpy(), 0.05, **POT_TIGHT)
    res = sinkhorn(a=a, b=bs.T, cost_matrix=m, eps=0.05, value="transport", tol=1e-12)
    _close(res.value, ref)


@pytest.mark.parametrize("p", [1, 2])
def test_pot_wasserstein_1d(p):
    g = torch.Generator().manual_seed(9)
    x, y = torch.randn(40, generator=g, dtype=torch.float64), torch.rand(30, generator=g).double()
    a, b = torch.rand(40, generator=g).double() + 0.1, torch.rand(30, generator=g).double() + 0.1
    a, b = a / a.sum(), b / b.sum()
    ref = ot.wasserstein_1d(x.numpy(), y.numpy(), a.numpy(), b.numpy(), p=p)
    _close(wasserstein_1d(x, y, a, b, p=p), ref)


def _unbalanced_problem(seed=0):
    a, b, m = _matrix_problem(seed)
    return 1.5 * a, 0.7 * b, m  # masses 1.5 and 0.7


def test_pot_unbalanced_linear():
    a, b, m = _unbalanced_problem(20)
    ref = ot.unbalanced.sinkhorn_unbalanced2(
        a.numpy(), b.numpy(), m.numpy(), 0.05, 0.5, **POT_TIGHT
    )
    res = sinkhorn(a=a, b=b, cost_matrix=m, eps=0.05, rho=0.5, value="transport", tol=1e-12)
    _close(res.value, ref)


def test_pot_unbalanced_per_side_and_semi_relaxed():
    a, b, m = _unbalanced_problem(21)
    for reg_m, rho in (((0.3, 2.0), (0.3, 2.0)), ((float("inf"), 0.4), (None, 0.4))):
        ref = ot.unbalanced.sinkhorn_unbalanced2(
            a.numpy(), b.numpy(), m.numpy(), 0.05, reg_m, **POT_TIGHT
        )
        res = sinkhorn(a=a, b=b, cost_matrix=m, eps=0.05, rho=rho, value="transport", tol=1e-12)
        _close(res.value, ref)


def test_pot_unbalanced_plan():
    a, b, m = _unbalanced_problem(22)
    ref = ot.unbalanced.sinkhorn_unbalanced(a.numpy(), b.numpy(), m.numpy(), 0.05, 0.5, **POT_TIGHT)
    res = sinkhorn(a=a, b=b, cost_matrix=m, eps=0.05, rho=0.5, tol=1e-12)
    _close(res.plan()[0], ref)


def test_pot_unbalanced_total_cost():
    a, b, m = _unbalanced_problem(23)
    eps, rho_a, rho_b = 0.05, 0.5, 0.8
    ref = ot.unbalanced.sinkhorn_unbalanced2(
        a.numpy(), b.numpy(), m.numpy(), eps, (rho_a, rho_b), returnCost="total", **POT_TIGHT
    )
    res = sinkhorn(a=a, b=b, cost_matrix=m, eps=eps, rho=(rho_a, rho_b), tol=1e-12)
    m_a, m_b, m_p = a.sum(), b.sum(), res.plan().sum()
    total = res.value - eps * (m_a * m_b - m_p) - rho_a * (m_a - m_p) - rho_b * (m_b - m_p)
    _close(total, ref)


def test_pot_solve_unbalanced():
    a, b, m = _unbalanced_problem(24)
    ref = ot.solve(m.numpy(), a.numpy(), b.numpy(), reg=0.05, unbalanced=0.5, tol=1e-13,
                   max_iter=100_000)  # fmt: skip
    res = sinkhorn(a=a, b=b, cost_matrix=m, eps=0.05, rho=0.5, value="transport", tol=1e-12)
    _close(res.value, ref.value_linear)


# -------------------------------------------------------------------------------- GeomLoss


def test_geomloss_biased_halved_cost():
    x, y, a, b = _clouds(seed=10)
    ref = _samples_loss(0.3, p=2, debias=False)(a, x, b, y)
    res = sinkhorn(x, y, a, b, eps=0.3**2, cost=SqEuclidean(scale=0.5), tol=1e-12)
    _close(res.value, ref)


def test_geomloss_halved_cost_as_a_rescaled_eps():
    x, y, a, b = _clouds(seed=11)
    ref = _samples_loss(0.3, p=2, debias=False)(a, x, b, y)
    res = sinkhorn(x, y, a, b, eps=2 * 0.3**2, tol=1e-12)  # OT_eps(C/2) = OT_2eps(C) / 2
    _close(res.value / 2, ref)


def test_geomloss_divergence():
    x, y, a, b = _clouds(seed=12)
    ref = _samples_loss(0.3, p=2)(a, x, b, y)  # debias=True is GeomLoss's default
    res = sinkhorn(
        x, y, a, b, eps=0.3**2, cost=SqEuclidean(scale=0.5), value="divergence", tol=1e-12
    )
    _close(res.value, ref)


def test_geomloss_p1():
    # debias=False: GeomLoss's tensorized p = 1 cost is sqrt(max(|x - y|^2, 1e-8)), which puts
    # 1e-4 instead of 0 on the diagonal of its self terms (the divergence then moves by ~1e-4 eps)
    x, y, a, b = _clouds(seed=13)
    ref = _samples_loss(0.5, p=1, debias=False)(a, x, b, y)
    res = sinkhorn(x, y, a, b, eps=0.5, cost=Euclidean(), tol=1e-12)
    _close(res.value, ref)


def test_geomloss_uniform_weights_and_batches():
    x, y, _, _ = _clouds(seed=14, batch=(3,))
    ref = _samples_loss(0.3, p=2)(x, y)
    res = sinkhorn(x, y, eps=0.3**2, cost=SqEuclidean(scale=0.5), value="divergence", tol=1e-12)
    _close(res.value, ref)


def test_geomloss_potentials():
    x, y, a, b = _clouds(seed=15)
    f_ref, g_ref = _samples_loss(0.3, p=2, debias=False, potentials=True)(a, x, b, y)
    res = sinkhorn(x, y, a, b, eps=0.3**2, cost=SqEuclidean(scale=0.5), tol=1e-12)
    _close(_centred(res.f[0], a), _centred(f_ref.reshape(-1), a))
    _close(_centred(res.g[0], b), _centred(g_ref.reshape(-1), b))


def test_geomloss_debiased_potentials():
    x, y, a, b = _clouds(seed=16)
    f_ref, _ = _samples_loss(0.3, p=2, potentials=True)(a, x, b, y)
    kw = dict(eps=0.3**2, cost=SqEuclidean(scale=0.5), tol=1e-12)
    f_xy = sinkhorn(x, y, a, b, **kw).f[0]
    f_xx = sinkhorn(x, x, a, a, **kw).f[0]
    _close(_centred(f_xy - f_xx, a), _centred(f_ref.reshape(-1), a))


def test_geomloss_unbalanced_divergence():
    x, y, a, b = _clouds(seed=17)
    a, b = 1.3 * a, 0.7 * b
    ref = _samples_loss(0.3, iters=1000, p=2, reach=0.5)(a, x, b, y)
    res = sinkhorn(
        x, y, a, b, eps=0.3**2, cost=SqEuclidean(scale=0.5), rho=0.5**2, value="divergence",
        tol=1e-12,
    )  # fmt: skip
    _close(res.value, ref)


def test_geomloss_unbalanced_biased():
    x, y, a, b = _clouds(seed=18)
    a, b = 1.3 * a, 0.7 * b
    eps = 0.3**2
    ref = _samples_loss(0.3, iters=1000, p=2, reach=0.5, debias=False)(a, x, b, y)
    res = sinkhorn(x, y, a, b, eps=eps, cost=SqEuclidean(scale=0.5), rho=0.5**2, tol=1e-12)
    m_a, m_b = a.sum(), b.sum()
    _close(res.value + eps * ((m_a + m_b) / 2 - m_a * m_b), ref)


def test_geomloss_unbalanced_potentials():
    x, y, a, b = _clouds(seed=19)
    a, b = 1.3 * a, 0.7 * b
    f_ref, g_ref = _samples_loss(0.3, iters=1000, p=2, reach=0.5, debias=False, potentials=True)(
        a, x, b, y
    )
    res = sinkhorn(x, y, a, b, eps=0.3**2, cost=SqEuclidean(scale=0.5), rho=0.5**2, tol=1e-12)
    _close(res.f[0], f_ref.reshape(-1))  # unique: no gauge with relaxed marginals
    _close(res.g[0], g_ref.reshape(-1))


# ---------------------------------------------------------------------------- the table


def _table_tests() -> list[str]:
    return re.findall(r"`test_migration\.py::(\w+)`", DOC.read_text(encoding="utf-8"))


def test_every_row_of_the_table_names_a_test_here_and_every_test_is_a_row():
    named = _table_tests()
    here = {n for n in globals() if n.startswith(("test_pot_", "test_geomloss_"))}
    assert named, "docs/migration.md names no test"
    assert set(named) == here, f"table only: {set(named) - here}, tests only: {here - set(named)}"
    assert len(named) == len(set(named)), "a test is named by two rows"


def test_the_public_names_the_table_uses_exist():
    for name in ("sinkhorn", "wasserstein_1d", "PowerCost", "SqEuclidean", "Euclidean"):
        assert hasattr(sinkmatch, name)
