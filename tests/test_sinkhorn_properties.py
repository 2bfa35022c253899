"""Hypothesis properties: entropic vs exact OT (POT's emd2), monotonicity in eps."""

from __future__ import annotations

import numpy as np
import ot
import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from sinkmatch.sinkhorn import sinkhorn


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
        # a property of the solutions: rare unconverged solves (see the xfail below) are a
        # separate, reported issue
        assume(bool(res.converged.all()))
        values.append(res.value.item())
    assert all(v1 <= v2 + 1e-7 * cmax for v1, v2 in zip(values, values[1:]))


@pytest.mark.xfail(strict=True, reason="known: cold start + eps-scaling stalls at eps = 1e-3 max C")
def test_known_stall_after_eps_scaling_at_tiny_eps():
    # found by Hypothesis: 3 x 3 points in 2-D, eps = 1e-3 * max C. From zero potentials with
    # eps-scaling the final level crawls (L1 error 2e-3 after 20,000 iterations); without
    # scaling the same problem converges in about 1,000 iterations.
    x = [[-0.97388569, -0.10037594], [-0.25491595, 0.48605639], [0.29772541, 1.11653012]]
    y = [[-0.06609575, 1.54481912], [1.29099523, -1.27244242], [0.01522897, 1.25208711]]
    a = [0.21854728, 0.41964019, 0.36181253]
    b = [0.11019295, 0.63715265, 0.2526544]
    args = [torch.tensor(v, dtype=torch.float64) for v in (x, y, a, b)]
    cmax = float(torch.cdist(args[0], args[1]).max() ** 2)
    res = sinkhorn(*args, eps=1e-3 * cmax, tol=1e-10, max_iter=20_000)
    assert res.converged.all()


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
