"""A precomputed cost matrix (POT's signature): values, plans and gradients vs POT and points."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from sinkmatch import sinkhorn
from sinkmatch.backends.online import OnlineSoftmin
from sinkmatch.costs import get_cost

ot = pytest.importorskip("ot")


def _problem(b=None, n=8, m=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    lead = () if b is None else (b,)
    x = torch.rand(*lead, n, 2, generator=g, dtype=torch.float64)
    y = torch.rand(*lead, m, 2, generator=g, dtype=torch.float64)
    a = torch.rand(*lead, n, generator=g, dtype=torch.float64) + 0.1
    bw = torch.rand(*lead, m, generator=g, dtype=torch.float64) + 0.1
    return x, y, a / a.sum(-1, keepdim=True), bw / bw.sum(-1, keepdim=True)


def _cost(x, y):
    batched = x.ndim == 3
    c = get_cost("sqeuclidean").matrix(x if batched else x[None], y if batched else y[None])
    return c if batched else c[0]


@pytest.mark.parametrize("value", ["regularized", "transport"])
def test_matrix_equals_points(value):
    x, y, a, b = _problem(b=3)
    kw = dict(eps=0.05, value=value, tol=1e-10)
    pts = sinkhorn(x, y, a, b, **kw)
    mat = sinkhorn(a=a, b=b, cost_matrix=_cost(x, y), **kw)
    # the two start ε-scaling at different ε (range of C vs bounding box): both converged
    torch.testing.assert_close(mat.value, pts.value, rtol=1e-9, atol=0)
    gauge = (mat.f - pts.f).mean(-1, keepdim=True)  # potentials are unique up to (f + c, g - c)
    torch.testing.assert_close(mat.f, pts.f + gauge, rtol=0, atol=1e-8)
    torch.testing.assert_close(mat.g, pts.g - gauge, rtol=0, atol=1e-8)
    assert bool(mat.converged.all()) and mat.value.shape == (3,)


def test_transport_value_and_plan_match_pot():
    _, _, a, b = _problem()
    g = torch.Generator().manual_seed(3)
    c = torch.rand(8, 6, generator=g, dtype=torch.float64) * 2 - 0.5  # any real matrix
    ref = ot.sinkhorn2(a.numpy(), b.numpy(), c.numpy(), 0.1, stopThr=1e-14, numItermax=10**5)
    plan = ot.sinkhorn(a.numpy(), b.numpy(), c.numpy(), 0.1, stopThr=1e-14, numItermax=10**5)
    res = sinkhorn(a=a, b=b, cost_matrix=c, eps=0.1, value="transport", tol=1e-12)
    assert res.value.shape == ()
    np.testing.assert_allclose(float(res.value), float(ref), rtol=1e-10)
    np.testing.assert_allclose(res.plan()[0].numpy(), plan, rtol=1e-8, atol=1e-14)


def test_gradient_to_the_matrix_is_the_plan_and_matches_finite_differences():
    _, _, a, b = _problem(n=5, m=4)
    g = torch.Generator().manual_seed(4)
    c = torch.rand(5, 4, generator=g, dtype=torch.float64).requires_grad_()
    a, b = a.clone().requires_grad_(), b.clone().requires_grad_()
    kw = dict(eps=0.2, tol=1e-13)
    res = sinkhorn(a=a, b=b, cost_matrix=c, **kw)
    gc, ga = torch.autograd.grad(res.value, (c, a))
    plan = ot.sinkhorn(a.detach().numpy(), b.detach().numpy(), c.detach().numpy(), 0.2,
                       stopThr=1e-15, numItermax=10**5)  # fmt: skip
    np.testing.assert_allclose(gc.numpy(), plan, rtol=1e-8, atol=1e-13)
    h = 1e-6
    for i, j in ((0, 0), (2, 3), (4, 1)):
        cp, cm = c.detach().clone(), c.detach().clone()
        cp[i, j] += h
        cm[i, j] -= h
        fd = (
            sinkhorn(a=a.detach(), b=b.detach(), cost_matrix=cp, **kw).value
            - sinkhorn(a=a.detach(), b=b.detach(), cost_matrix=cm, **kw).value
        ) / (2 * h)
        assert abs(float(fd) - float(gc[i, j])) < 1e-8
    # the weights: the gradient is the centred potential (weights are normalized inside)
    f = res.f[0].detach()
    torch.testing.assert_close(ga, f - (a.detach() * f).sum(), rtol=1e-10, atol=1e-12)


def test_autodiff_gradient_agrees_with_envelope_at_convergence():
    _, _, a, b = _problem(n=5, m=4, seed=2)
    c = torch.rand(5, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    grads = []
    for grad in ("envelope", "autodiff"):
        cc = c.clone().requires_grad_()
        res = sinkhorn(a=a, b=b, cost_matrix=cc, eps=0.3, tol=1e-12, grad=grad)
        grads.append(torch.autograd.grad(res.value, cc)[0])
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-8, atol=1e-12)


def test_shared_matrix_with_batched_weights_equals_a_loop():
    _, _, a, b = _problem(b=3)
    c = torch.rand(8, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    res = sinkhorn(a=a, b=b, cost_matrix=c, eps=0.1, tol=1e-11)
    assert res.value.shape == (3,)
    for k in range(3):
        one = sinkhorn(a=a[k], b=b[k], cost_matrix=c, eps=0.1, tol=1e-11)
        torch.testing.assert_close(res.value[k], one.value, rtol=1e-11, atol=1e-14)


def test_warm_start_and_cold_start_agree():
    x, y, a, b = _problem()
    c = _cost(x, y)
    cold = sinkhorn(a=a, b=b, cost_matrix=c, eps=0.05, tol=1e-11)
    warm = sinkhorn(a=a, b=b, cost_matrix=c, eps=0.05, tol=1e-11, init=(cold.f, cold.g))
    assert warm.n_iter < cold.n_iter
    torch.testing.assert_close(warm.value, cold.value, rtol=1e-11, atol=0)


def test_bad_matrix_input_raises_with_what_was_received():
    x, y, a, b = _problem()
    c = _cost(x, y)
    with pytest.raises(ValueError, match="either the points x and y or cost_matrix"):
        sinkhorn(x, y, cost_matrix=c)
    with pytest.raises(ValueError, match="cost= computes the cost from points"):
        sinkhorn(cost_matrix=c, cost="euclidean")
    with pytest.raises(ValueError, match="value='divergence' needs the self costs"):
        sinkhorn(cost_matrix=c, value="divergence")
    with pytest.raises(ValueError, match=r"cost_matrix must have shape \(N, M\)"):
        sinkhorn(cost_matrix=c[0])
    bad = c.clone()
    bad[1, 2] = math.nan
    with pytest.raises(ValueError, match="cost_matrix"):
        sinkhorn(cost_matrix=bad)
    with pytest.raises(TypeError, match="cost_matrix"):
        sinkhorn(cost_matrix=c.long())
    with pytest.raises(ValueError, match="only the dense backend evaluates"):
        sinkhorn(cost_matrix=c, backend="online")
    with pytest.raises(ValueError, match="cannot use a precomputed cost_matrix"):
        sinkhorn(cost_matrix=c, backend=OnlineSoftmin())
    with pytest.raises(TypeError, match="needs the points x and y, or a precomputed"):
        sinkhorn(x)
    with pytest.raises(ValueError, match=r"b must have shape \(6,\)"):
        sinkhorn(a=a, b=b[:5], cost_matrix=c)
    res = sinkhorn(cost_matrix=c)
    with pytest.raises(ValueError, match="barycentric_map\\(\\) needs points"):
        res.barycentric_map()
    with pytest.raises(ValueError, match="init='exact1d' needs 1-D points"):
        sinkhorn(cost_matrix=c, init="exact1d")
