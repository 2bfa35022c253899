"""Softmin backends: dense and online agree (values and gradients), gradcheck, the auto rule."""

from __future__ import annotations

import math

import pytest
import torch

from sinkmatch.backends import SoftminBackend, get_backend
from sinkmatch.backends.dense import DenseSoftmin
from sinkmatch.backends.online import (
    OnlineSoftmin,
    plan_expected_cost,
    plan_matmul,
    tiled_logsumexp,
)
from sinkmatch.costs import get_cost


def _data(b=2, n=9, m=7, d=2, seed=0, pad=True):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, n, d, generator=g, dtype=torch.float64)
    y = torch.randn(b, m, d, generator=g, dtype=torch.float64)
    h = torch.randn(b, m, generator=g, dtype=torch.float64)
    if pad:
        h[0, -2:] = -math.inf  # padding columns
    return x, y, h


@pytest.mark.parametrize("cost", ["sqeuclidean", "euclidean"])
@pytest.mark.parametrize("blocks", [(None, None), (2, 3), (4, 1)])
def test_online_equals_dense_values_and_gradients(cost, blocks):
    c = get_cost(cost)
    x, y, h = _data()
    online = OnlineSoftmin(row_block=blocks[0], col_block=blocks[1])
    grads = []
    for be in (DenseSoftmin(), online):
        xx, yy, hh = (t.clone().requires_grad_() for t in (x, y, h))
        out = be.softmin(0.3, xx, yy, hh, c)
        w = torch.linspace(0.5, 1.5, out.numel(), dtype=out.dtype).view_as(out)
        (out * w).sum().backward()
        grads.append((out.detach(), xx.grad, yy.grad, hh.grad))
    for ref, got in zip(*grads):
        torch.testing.assert_close(got, ref, rtol=1e-10, atol=1e-12)
    assert torch.equal(grads[1][3][0, -2:], torch.zeros(2, dtype=torch.float64))


def test_softmin_formula():
    x, y, h = _data(pad=False)
    c = get_cost("sqeuclidean")
    ref = -0.5 * torch.logsumexp(h[:, None, :] - c.matrix(x, y) / 0.5, dim=2)
    torch.testing.assert_close(DenseSoftmin().softmin(0.5, x, y, h, c), ref)
    torch.testing.assert_close(OnlineSoftmin(col_block=2).softmin(0.5, x, y, h, c), ref)


@pytest.mark.parametrize("backend", [DenseSoftmin(), OnlineSoftmin(row_block=3, col_block=2)])
@pytest.mark.parametrize("cost", ["sqeuclidean", "euclidean"])
def test_gradcheck(backend, cost):
    x, y, h = _data(b=1, n=4, m=5, d=2, seed=3)
    c = get_cost(cost)
    inputs = tuple(t.clone().requires_grad_() for t in (x, y, h))
    assert torch.autograd.gradcheck(lambda a, b, hh: backend.softmin(0.7, a, b, hh, c), inputs)


def test_plan_reductions_match_dense_plan():
    x, y, h = _data(d=3)
    c = get_cost("sqeuclidean")
    mat = c.matrix(x, y)
    pi = torch.softmax(h[:, None, :] - mat / 0.4, dim=2)
    lse = tiled_logsumexp(0.4, x, y, h, c, col_block=2)
    torch.testing.assert_close(lse, torch.logsumexp(h[:, None, :] - mat / 0.4, dim=2))
    torch.testing.assert_close(plan_expected_cost(0.4, x, y, h, c), (pi * mat).sum(2))
    torch.testing.assert_close(plan_matmul(0.4, x, y, h, c, y), pi @ y)


def test_online_rejects_callable_cost():
    x, y, h = _data()
    with pytest.raises(ValueError, match="named cost"):
        OnlineSoftmin().softmin(1.0, x, y, h, get_cost(lambda u, v: torch.cdist(u, v)))
    with pytest.raises(ValueError, match="col_block"):
        OnlineSoftmin(col_block=0)


def test_auto_rule_by_size():
    c = get_cost("sqeuclidean")
    small = torch.zeros(1, 100, 1)
    big = torch.zeros(1, 5000, 1)
    assert get_backend("auto", x=small, y=small, cost=c).name == "dense"
    assert get_backend("auto", x=big, y=big, cost=c).name == "online"  # 2.5e7 > 2^24
    callable_cost = get_cost(lambda u, v: torch.cdist(u, v))
    assert get_backend("auto", x=big, y=big, cost=callable_cost).name == "dense"


def test_get_backend_errors_and_instances():
    c = get_cost("sqeuclidean")
    x = torch.zeros(1, 3, 1)
    with pytest.raises(ValueError, match="'gpu'"):
        get_backend("gpu", x=x, y=x, cost=c)
    with pytest.raises(TypeError, match="int"):
        get_backend(3, x=x, y=x, cost=c)
    with pytest.raises(ValueError, match="callable"):
        get_backend("online", x=x, y=x, cost=get_cost(lambda u, v: torch.cdist(u, v)))
    inst = OnlineSoftmin()
    assert get_backend(inst, x=x, y=x, cost=c) is inst
    assert isinstance(DenseSoftmin(), SoftminBackend)
    assert isinstance(inst, SoftminBackend)


def test_stabilized_kernel_matches_log_domain_and_gradcheck():
    from sinkmatch.backends.dense import StabilizedKernel

    x, y, h = _data(b=2, n=5, m=4, d=2, seed=4)
    c = get_cost("sqeuclidean")
    mat = c.matrix(x, y)
    g = torch.randn(2, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    kern = StabilizedKernel(mat, 0.3, torch.ones(2, 5, dtype=torch.bool), h > -math.inf)
    kern.rebuild(g=g)
    torch.testing.assert_close(kern.rows(h), DenseSoftmin().softmin(0.3, x, y, h, c))
    hf = torch.randn(2, 5, dtype=torch.float64)
    torch.testing.assert_close(kern.cols(hf), DenseSoftmin().softmin(0.3, y, x, hf, c))
    # the kernel is frozen at x, y, so compare gradients with the log-domain softmin's there
    grads = []
    for fn in (kern.rows_sqeuclidean, lambda a, b, hh: DenseSoftmin().softmin(0.3, a, b, hh, c)):
        inputs = [t.clone().requires_grad_() for t in (x, y, h)]
        out = fn(*inputs)
        (out * torch.linspace(0.5, 2.0, out.numel(), dtype=out.dtype).view_as(out)).sum().backward()
        grads.append([t.grad for t in inputs])
    for got, ref in zip(*grads):
        torch.testing.assert_close(got, ref, rtol=1e-10, atol=1e-12)
