"""The CSS-CCNN workload: 1-D, squared cost, eps = 0.1, heavy-tailed, ties; float32 to tol 1e-3."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sinkmatch.solver import sinkhorn


def _workload(n_pred, n_prior=1568, seed=0):
    # Truncated power law (alpha = 2, lambda = 0.03, c >= 1) by inverse CDF on a fine grid,
    # values below 1.2 replaced by U(0, 1.2); predictions clip(0.7 * draw + N(0, 1), 0).
    rng = np.random.default_rng(seed)
    grid = np.linspace(1.0, 2001.0, 200_001)
    pdf = grid**-2.0 * np.exp(-0.03 * grid)
    cdf = np.concatenate([[0.0], np.cumsum(0.5 * (pdf[1:] + pdf[:-1]) * np.diff(grid))])
    cdf /= cdf[-1]

    def draw(n):
        s = np.interp(rng.random(n), cdf, grid)
        s[s < 1.2] = rng.uniform(0.0, 1.2, int((s < 1.2).sum()))
        return s

    y = draw(n_prior)
    x = np.clip(0.7 * draw(n_pred) + rng.normal(size=n_pred), 0.0, None)
    return torch.tensor(x, dtype=torch.float32), torch.tensor(y, dtype=torch.float32)


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
