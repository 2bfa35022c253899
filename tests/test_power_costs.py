"""Ground costs s |x - y|^p for any p >= 1: the cost, every backend, the exact 1-D start, POT."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from sinkmatch import sinkhorn, wasserstein_1d
from sinkmatch.backends.dense import DenseSoftmin
from sinkmatch.backends.online import OnlineSoftmin
from sinkmatch.costs import Euclidean, PowerCost, SqEuclidean, get_cost, is_power_cost

COSTS = [
    PowerCost(1.5),
    PowerCost(3.0, scale=0.25),
    SqEuclidean(scale=0.5),
    Euclidean(scale=2.0),
    PowerCost(1.0, scale=0.3),
]


def _points(b, n, d, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, n, d, generator=g, dtype=torch.float64)


def _direct(cost, x, y):
    dist = ((x[:, :, None] - y[:, None]) ** 2).sum(-1).sqrt()
    return cost.scale * dist**cost.power


@pytest.mark.parametrize("cost", COSTS, ids=repr)
@pytest.mark.parametrize("d", [1, 2, 6])
def test_matrix_is_scaled_power_of_the_distance(cost, d):
    x, y = _points(2, 7, d, 1), _points(2, 5, d, 2)
    torch.testing.assert_close(cost.matrix(x, y), _direct(cost, x, y), rtol=1e-12, atol=1e-12)


def test_names_powers_and_scales():
    assert PowerCost(2).name == "sqeuclidean" and PowerCost(1).name == "euclidean"
    assert PowerCost(1.5).name == "power" and PowerCost(1.5).power == 1.5
    assert SqEuclidean(scale=0.5).scale == 0.5 and get_cost("sqeuclidean").scale == 1.0
    assert repr(PowerCost(1.5, scale=2)) == "PowerCost(p=1.5, scale=2.0)"
    assert repr(SqEuclidean(scale=0.5)) == "SqEuclidean(scale=0.5)"
    assert is_power_cost(Euclidean()) and not is_power_cost(get_cost(torch.cdist))


@pytest.mark.parametrize(
    ("kwargs", "err", "match"),
    [
        (dict(p=0.5), ValueError, r"p must be a finite real number >= 1, got 0\.5"),
        (dict(p=math.nan), ValueError, "got nan"),
        (dict(p=True), TypeError, "bool"),
        (dict(p=2, scale=0.0), ValueError, r"scale must be a finite number > 0, got 0\.0"),
        (dict(p=2, scale="1"), TypeError, "scale must be a positive real number, got str"),
    ],
)
def test_bad_parameters_raise(kwargs, err, match):
    with pytest.raises(err, match=match):
        PowerCost(**kwargs)


@pytest.mark.parametrize("cost", COSTS, ids=repr)
@pytest.mark.parametrize("d", [1, 3])
def test_vjp_matches_autograd(cost, d):
    x = _points(2, 5, d, 5).requires_grad_()
    y = _points(2, 4, d, 6).requires_grad_()
    w = torch.rand(2, 5, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(7))
    gx_ref, gy_ref = torch.autograd.grad(cost.matrix(x, y), (x, y), grad_outputs=w)
    gx, gy = cost.vjp(x.detach(), y.detach(), w)
    torch.testing.assert_close(gx, gx_ref, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(gy, gy_ref, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("d", [1, 3])
def test_gradient_at_coincident_points_is_zero(d):
    x = torch.zeros(1, 2, d, dtype=torch.float64, requires_grad=True)
    PowerCost(1.5).matrix(x, torch.zeros(1, 3, d, dtype=torch.float64)).sum().backward()
    assert torch.equal(x.grad, torch.zeros_like(x))


@pytest.mark.parametrize("cost", COSTS, ids=repr)
def test_diameter_bounds_the_cost(cost):
    x, y = _points(3, 9, 2, 8), _points(3, 6, 2, 9)
    diam = cost.diameter(x, y)
    for u, v in ((x, y), (x, x), (y, y)):
        assert (cost.matrix(u, v).flatten(1).amax(1) <= diam * (1 + 1e-12)).all()


@pytest.mark.parametrize("cost", COSTS, ids=repr)
@pytest.mark.parametrize("d", [1, 2, 6])  # 6: beyond the in-place generation (cost.matrix)
def test_online_equals_dense(cost, d):
    x, y, h = _points(2, 9, d, 3)[..., :d], _points(2, 7, d, 4), _points(1, 2, 7, 5)[0]
    h[0, -2:] = -math.inf
    results = []
    for be in (DenseSoftmin(), OnlineSoftmin(row_block=4, col_block=3)):
        xx, yy, hh = (t.clone().requires_grad_() for t in (x, y, h))
        out = be.softmin(0.3, xx, yy, hh, cost)
        w = torch.linspace(0.5, 1.5, out.numel(), dtype=out.dtype).view_as(out)
        (out * w).sum().backward()
        results.append((out.detach(), xx.grad, yy.grad, hh.grad))
    for ref, got in zip(*results):
        torch.testing.assert_close(got, ref, rtol=1e-10, atol=1e-12)


@pytest.mark.triton
@pytest.mark.parametrize("cost", COSTS[:4], ids=repr)
@pytest.mark.parametrize("d", [1, 3])
def test_triton_interpreter_equals_dense(monkeypatch, cost, d):
    pytest.importorskip("triton")
    from sinkmatch.backends.triton import triton_softmin

    monkeypatch.setenv("TRITON_INTERPRET", "1")
    x, y, h = _points(2, 19, d, 11), _points(2, 23, d, 12), _points(1, 2, 23, 13)[0]
    h[0, 15:] = -math.inf
    w = torch.randn(2, 19, dtype=torch.float64, generator=torch.Generator().manual_seed(d))
    results = []
    for fn in (
        lambda a, b, c: DenseSoftmin().softmin(0.3, a, b, c, cost),
        lambda a, b, c: triton_softmin(0.3, a, b, c, cost, block_n=16, block_m=16),
    ):
        xx, yy, hh = (t.clone().requires_grad_() for t in (x, y, h))
        out = fn(xx, yy, hh)
        results.append((out.detach(), *torch.autograd.grad((out * w).sum(), (xx, yy, hh))))
    for ref, got in zip(*results):
        torch.testing.assert_close(got, ref, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("p", [1.5, 3.0])
def test_exact1d_start_for_any_p_matches_cold_start_and_w_p(p):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(40, generator=g, dtype=torch.float64) * 3
    y = torch.rand(30, generator=g, dtype=torch.float64) * 3 + 0.5
    cost = PowerCost(p, scale=0.5)
    kw = dict(eps=1e-2, cost=cost, value="transport", tol=1e-9, max_iter=20000)
    warm = sinkhorn(x, y, **kw)
    cold = sinkhorn(x, y, init=None, **kw)
    assert bool(warm.converged) and bool(cold.converged)
    assert warm.n_iter < cold.n_iter  # the warm start is used and helps
    torch.testing.assert_close(warm.value, cold.value, rtol=1e-7, atol=0)
    exact = float(0.5 * wasserstein_1d(x, y, p=p))
    assert exact <= float(warm.value) < 1.03 * exact  # <P_eps, C> >= W_p^p; a small bias


@pytest.mark.parametrize("p", [1.0, 1.5, 3.0])
def test_solver_matches_pot_for_p_costs(p):
    ot = pytest.importorskip("ot")
    g = torch.Generator().manual_seed(1)
    x = torch.rand(12, 2, generator=g, dtype=torch.float64)
    y = torch.rand(9, 2, generator=g, dtype=torch.float64)
    a = torch.rand(12, generator=g, dtype=torch.float64) + 0.2
    b = torch.rand(9, generator=g, dtype=torch.float64) + 0.2
    a, b = a / a.sum(), b / b.sum()
    m = ot.dist(x.numpy(), y.numpy(), metric="euclidean") ** p * 0.7
    ref = ot.sinkhorn2(a.numpy(), b.numpy(), m, 0.05, stopThr=1e-13, numItermax=100000)
    for backend in ("dense", "online"):
        got = sinkhorn(
            x,
            y,
            a,
            b,
            eps=0.05,
            cost=PowerCost(p, scale=0.7),
            value="transport",
            tol=1e-11,
            backend=backend,
        )
        np.testing.assert_allclose(float(got.value), float(ref), rtol=1e-9)
