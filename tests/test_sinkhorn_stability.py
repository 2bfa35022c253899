"""float32 stability: extreme eps, duplicates, single points, identical measures, heavy tails."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sinkmatch.solver import sinkhorn

F32 = torch.float32


def _finite_value_and_grads(x, y, **kw):
    xx, yy = x.clone().requires_grad_(), y.clone().requires_grad_()
    res = sinkhorn(xx, yy, **kw)
    res.value.sum().backward()
    assert torch.isfinite(res.value).all(), res.value
    assert torch.isfinite(xx.grad).all() and torch.isfinite(yy.grad).all()
    assert torch.isfinite(res.f).all() and torch.isfinite(res.g).all()
    return res, xx.grad, yy.grad


@pytest.mark.parametrize("rel_eps", [1e-4, 1e-2, 1.0, 1e2, 1e4])
@pytest.mark.parametrize("value", ["regularized", "transport", "divergence"])
@pytest.mark.parametrize("backend", ["dense", "online"])
def test_extreme_eps_float32(rel_eps, value, backend):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(12, 2, generator=g) * 3
    y = torch.randn(9, 2, generator=g) + 1
    cmax = float(((x[:, None] - y[None]) ** 2).sum(-1).max())
    _res, gx, _ = _finite_value_and_grads(
        x, y, eps=rel_eps * cmax, value=value, max_iter=300, backend=backend
    )
    if rel_eps >= 1e2 and value != "divergence":
        # huge eps: the plan tends to a (x) b, <P, C> to the mean cost
        mean_cost = float(((x[:, None] - y[None]) ** 2).sum(-1).mean())
        assert (
            abs(sinkhorn(x, y, eps=rel_eps * cmax, value="transport").value.item() - mean_cost)
            < 0.05 * mean_cost
        )
    assert gx.abs().max() < 100 * cmax


@pytest.mark.parametrize("cost", ["sqeuclidean", "euclidean"])
def test_duplicates_single_points_and_identical_measures(cost):
    dup = torch.tensor([[0.0, 0.0], [0.0, 0.0], [1.0, 1.0], [1.0, 1.0]])
    _finite_value_and_grads(dup, dup, eps=0.01, cost=cost)
    res, gx, _ = _finite_value_and_grads(dup, dup, eps=0.01, cost=cost, value="divergence")
    assert abs(res.value.item()) < 1e-4 and gx.abs().max() < 1e-3
    one = torch.tensor([[2.0, -1.0]])
    res, _, _ = _finite_value_and_grads(one, dup, eps=0.1, cost=cost, value="transport")
    expected = ((one - dup) ** 2).sum(-1)
    expected = expected if cost == "sqeuclidean" else expected.sqrt()
    assert res.value.item() == pytest.approx(expected.mean().item(), rel=1e-5)
    res, _, _ = _finite_value_and_grads(one, one, eps=0.1, cost=cost, value="transport")
    assert res.value.item() == 0.0


def test_heavy_tailed_crowd_like_values_float32():
    rng = np.random.default_rng(0)
    y = torch.tensor(np.minimum(rng.pareto(1.0, 400) + 1.0, 400.0), dtype=F32)
    x = torch.tensor(np.clip(0.7 * rng.pareto(1.0, 100) + rng.normal(size=100), 0, None), dtype=F32)
    res, _gx, _ = _finite_value_and_grads(x, y, eps=0.1, init="exact1d")
    assert res.converged.all(), res.marginal_error
