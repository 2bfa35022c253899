"""The CSS-CCNN workload: 1-D, squared cost, eps = 0.1, heavy-tailed, ties; float32 to tol 1e-3."""

from __future__ import annotations

import pytest
import torch

from benchmarks.workloads import css_pair
from sinkmatch.solver import sinkhorn


def _workload(n_pred, n_prior=1568, seed=0):
    # predictions max(0.7 * prior draw + N(0, 1), 0) against samples of the CSS-CCNN count prior
    x, y = css_pair(n_pred, n_prior, seed=seed)
    return torch.tensor(x), torch.tensor(y)


def _check(n_pred, **kw):
    x, y = _workload(n_pred)
    assert (x == 0).any()  # exact zeros / ties are part of the workload
    xx = x.clone().requires_grad_()
    res = sinkhorn(xx, y, eps=0.1, **kw)
    res.value.backward()
    assert res.converged.all() and float(res.marginal_error.max()) < 1e-3
    assert torch.isfinite(xx.grad).all()
    return res, xx.grad


def test_workload_288_converges_float32_with_exact1d_init():
    _res, grad = _check(288, init="exact1d")
    # gradient equals the float64 one
    x, y = _workload(288)
    x64 = x.double().requires_grad_()
    sinkhorn(x64, y.double(), eps=0.1, init="exact1d").value.backward()
    torch.testing.assert_close(
        grad.double(), x64.grad, rtol=0, atol=1e-2 * float(x64.grad.abs().max())
    )


@pytest.mark.slow
@pytest.mark.parametrize("init", ["exact1d", None])
def test_workload_1568_converges_float32(init):
    _check(1568, init=init)
