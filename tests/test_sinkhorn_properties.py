"""Hypothesis properties: entropic vs exact OT (POT's emd2), monotonicity in eps."""

from __future__ import annotations

import numpy as np
import ot
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sinkmatch.solver import sinkhorn


def _entropy(w):
    w = w[w > 0]
    return float(-(w * np.log(w)).sum())


@st.composite
def problems(draw):
    d = draw(st.sampled_from([1, 2]))
    n = draw(st.integers(1, 7))
    m = draw(st.integers(1, 7))
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)) * draw(st.sampled_from([0.1, 1.0, 10.0]))
    y = rng.normal(size=(m, d)) + draw(st.floats(-2, 2))
    a = rng.random(n) + 0.05
    b = rng.random(m) + 0.05
    return x, y, a / a.sum(), b / b.sum()


@settings(max_examples=30, deadline=None)
@given(problems(), st.sampled_from([1e-3, 1e-2, 1e-1, 1.0]))
def test_entropic_bounds_around_emd(problem, rel_eps):
    x, y, a, b = problem
    mat = ot.dist(x, y)
    emd = ot.emd2(a, b, mat)
    cmax = max(float(mat.max()), 1e-12)
    eps = rel_eps * cmax
    args = [torch.tensor(v) for v in (x, y, a, b)]
    reg = sinkhorn(*args, eps=eps, tol=1e-9, max_iter=20_000)
    transport = sinkhorn(*args, eps=eps, tol=1e-9, max_iter=20_000, value="transport")
    assert reg.converged.all()
    # a plan with marginal error e is within e * max C of a feasible one
    slack = 2 * float(transport.marginal_error.max()) * cmax + 1e-9 * cmax
    assert emd <= transport.value.item() + slack
    assert transport.value.item() <= reg.value.item() + slack
    assert reg.value.item() <= emd + eps * min(_entropy(a), _entropy(b)) + slack


@settings(max_examples=25, deadline=None)
@given(problems())
def test_transport_cost_nondecreasing_in_eps(problem):
    x, y, a, b = problem
    cmax = max(float(ot.dist(x, y).max()), 1e-12)
    args = [torch.tensor(v) for v in (x, y, a, b)]
    values = []
    for rel in (1e-3, 1e-2, 1e-1, 1.0, 10.0):
        res = sinkhorn(*args, eps=rel * cmax, tol=1e-10, max_iter=20_000, value="transport")
        assert res.converged.all(), (rel, res.n_iter, res.marginal_error)
        values.append(res.value.item())
    assert all(v1 <= v2 + 1e-7 * cmax for v1, v2 in zip(values, values[1:]))


@pytest.mark.parametrize("eps_scaling", [0.5, None])
def test_near_degenerate_problem_converges_at_tiny_eps(eps_scaling):
    # found by Hypothesis: 3 x 3 points in 2-D, eps = 1e-3 * max C, and a1 + a2 = b2 + 0.001
    # (rows 1, 2 almost exactly fill column 2). The shift of the two blocks' potentials against
    # each other is a slow mode: without the line search the final level crawled at L1 error
    # 2e-3 for 20,000 iterations after eps-scaling, and took about 1,000 without scaling.
    args = _near_degenerate()
    cmax = float(torch.cdist(args[0], args[1]).max() ** 2)
    res = sinkhorn(*args, eps=1e-3 * cmax, tol=1e-10, max_iter=20_000, eps_scaling=eps_scaling)
    assert res.converged.all() and float(res.marginal_error.max()) < 1e-10
    assert res.n_iter <= 500
    # the same answer as the log-domain backend without the dense kernel fast path
    ref = sinkhorn(*args, eps=1e-3 * cmax, tol=1e-10, max_iter=20_000, backend="online")
    torch.testing.assert_close(res.value, ref.value, rtol=1e-9, atol=0)


def _near_degenerate():
    x = [[-0.97388569, -0.10037594], [-0.25491595, 0.48605639], [0.29772541, 1.11653012]]
    y = [[-0.06609575, 1.54481912], [1.29099523, -1.27244242], [0.01522897, 1.25208711]]
    a = [0.21854728, 0.41964019, 0.36181253]
    b = [0.11019295, 0.63715265, 0.2526544]
    return [torch.tensor(v, dtype=torch.float64) for v in (x, y, a, b)]


def test_line_search_is_per_problem_in_a_batch():
    # a stalled problem batched with an easy one: each gets the answer it gets alone
    x, y, a, b = _near_degenerate()
    x2, y2 = torch.linspace(0, 1, 3, dtype=torch.float64)[:, None].expand(3, 2), y.flip(0)
    eps = 1e-3 * float(torch.cdist(x, y).max() ** 2)
    kw = dict(eps=eps, tol=1e-10, max_iter=20_000)
    res = sinkhorn(
        torch.stack([x, x2]), torch.stack([y, y2]), torch.stack([a, a]), torch.stack([b, b]), **kw
    )
    assert res.converged.all()
    for k, (xs, ys) in enumerate([(x, y), (x2, y2)]):
        alone = sinkhorn(xs, ys, a, b, **kw)
        torch.testing.assert_close(res.value[k], alone.value, rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(
            res.f[k] - res.f[k].mean(), alone.f[0] - alone.f[0].mean(), rtol=0, atol=1e-8
        )


@pytest.mark.parametrize("max_iter", [2, 15, 40, 100])
def test_line_search_trials_count_against_max_iter(max_iter):
    x, y, a, b = _near_degenerate()
    eps = 1e-3 * float(torch.cdist(x, y).max() ** 2)
    res = sinkhorn(x, y, a, b, eps=eps, tol=1e-10, max_iter=max_iter, eps_scaling=None)
    assert res.n_iter <= max_iter
    # the reported error is the one of the returned pair: the plan of (T(g), g) has exact rows
    # and columns off by at most the reported error
    cols = res.plan().sum(1)[0]
    assert float((cols - b).abs().sum()) <= float(res.marginal_error[0]) * 1.01 + 1e-12


@settings(max_examples=25, deadline=None)
@given(problems(), st.sampled_from([0.05, 0.5]))
def test_divergence_symmetric_and_nonnegative(problem, eps):
    x, y, a, b = problem
    args = [torch.tensor(v) for v in (x, y, a, b)]
    s_xy = sinkhorn(*args, eps=eps, tol=1e-10, max_iter=20_000, value="divergence").value.item()
    s_yx = sinkhorn(
        args[1], args[0], args[3], args[2], eps=eps, tol=1e-10, max_iter=20_000, value="divergence"
    ).value.item()
    scale = 1.0 + abs(s_xy)
    assert s_xy >= -1e-6 * scale
    assert s_xy == pytest.approx(s_yx, rel=1e-5, abs=1e-7)
