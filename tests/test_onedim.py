"""The 1-D path (``backend="onedim"``, :mod:`sinkmatch.onedim`) against the dense solver.

References: the dense backend of :func:`sinkmatch.sinkhorn` run to ``tol=1e-12`` in float64
(itself checked against POT elsewhere), the dense plan built from the returned potentials, and
central finite differences. Potentials are compared after removing the gauge constant
``(f + c, g - c)``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sinkmatch.backends.onedim import OneDimSoftmin
from sinkmatch.costs import SqEuclidean
from sinkmatch.onedim.solve import solve_1d
from sinkmatch.solver import sinkhorn

REL = 1e-5


def _dense(x, y, a, b, eps, **kw):
    return sinkhorn(
        x[..., None], y[..., None], a, b, eps=eps, tol=1e-12, max_iter=50_000, backend="dense", **kw
    )


def _gauge_free(f, g, a):
    """``f`` and ``g`` shifted by the a-weighted mean of ``f`` (a gauge-independent pair)."""
    an = a / a.sum(-1, keepdim=True)
    c = (an * f).sum(-1, keepdim=True)
    return f - c, g + c


@st.composite
def problems(draw):
    kind = draw(st.sampled_from(["random", "tied", "heavy", "padded"]))
    batch, n, m = draw(st.integers(1, 3)), draw(st.integers(1, 40)), draw(st.integers(1, 40))
    rng = np.random.default_rng(draw(st.integers(0, 2**31 - 1)))
    x = rng.normal(size=(batch, n)) * draw(st.sampled_from([0.3, 1.0, 3.0]))
    y = rng.normal(size=(batch, m)) + draw(st.floats(-2, 2))
    a, b = rng.random((batch, n)) + 0.05, rng.random((batch, m)) + 0.05
    if kind == "tied":
        x, y = np.round(x * 2) / 2, np.round(y * 3) / 3
    elif kind == "heavy":
        x = rng.standard_t(1.5, size=(batch, n))
    elif kind == "padded":  # zero weights on a ragged tail of every problem
        for i in range(batch):
            a[i, rng.integers(1, n + 1) :] = 0.0
            b[i, rng.integers(1, m + 1) :] = 0.0
    eps = draw(st.sampled_from([0.05, 0.1, 0.5]))
    return [torch.tensor(v) for v in (x, y, a, b)], eps


@settings(max_examples=40, deadline=None)
@given(problems())
def test_equals_the_dense_solver_in_float64(problem):
    (x, y, a, b), eps = problem
    ref = _dense(x, y, a, b, eps)
    out = solve_1d(x, y, a, b, eps=eps, tol=1e-8, max_iter=2000)
    assert out.converged.all()
    scale = ref.value.abs().max().item() + eps
    assert torch.allclose(out.value, ref.value, rtol=REL, atol=REL * scale)
    f, g = _gauge_free(out.f, out.g, a)
    f_ref, g_ref = _gauge_free(ref.f, ref.g, a)
    pot = f_ref.abs().max().item() + g_ref.abs().max().item() + eps
    # zero-weight points have potentials too (the soft-min at them); compare all of them
    assert (f - f_ref).abs().max() <= REL * pot
    assert (g - g_ref).abs().max() <= REL * pot
    assert (out.kernel_error <= 1e-6).all()


@settings(max_examples=20, deadline=None)
@given(problems())
def test_gradients_equal_the_dense_solver(problem):
    (x, y, a, b), eps = problem
    grads = []
    for solve in (
        lambda *t: _dense(*t, eps),
        lambda *t: solve_1d(*t, eps=eps, tol=1e-8, max_iter=2000),
    ):
        leaves = [t.clone().requires_grad_() for t in (x, y, a, b)]
        solve(*leaves).value.sum().backward()
        grads.append([t.grad for t in leaves])
    for ref, got in zip(*grads):
        assert (got - ref).abs().max() <= REL * (ref.abs().max() + 1.0)


def test_gradients_match_finite_differences():
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(2, 9, generator=gen, dtype=torch.float64)
    y = torch.randn(2, 7, generator=gen, dtype=torch.float64)
    a = torch.rand(2, 9, generator=gen, dtype=torch.float64) + 0.1
    b = torch.rand(2, 7, generator=gen, dtype=torch.float64) + 0.1
    leaves = [t.clone().requires_grad_() for t in (x, y, a, b)]
    solve_1d(*leaves, eps=0.2, tol=1e-12).value.sum().backward()
    h = 1e-6
    for k, t in enumerate((x, y, a, b)):
        for idx in [(0, 0), (1, 3), (0, t.shape[1] - 1)]:
            args = [s.clone() for s in (x, y, a, b)]
            args[k][idx] += h
            up = solve_1d(*args, eps=0.2, tol=1e-12).value.sum()
            args[k][idx] -= 2 * h
            down = solve_1d(*args, eps=0.2, tol=1e-12).value.sum()
            fd = float((up - down) / (2 * h))
            assert leaves[k].grad[idx].item() == pytest.approx(fd, rel=1e-5, abs=1e-7)


def test_reported_error_bounds_the_returned_potentials_on_the_real_points():
    gen = torch.Generator().manual_seed(5)
    x = torch.rand(3, 200, generator=gen, dtype=torch.float64) * 4
    y = torch.rand(3, 150, generator=gen, dtype=torch.float64) * 4
    a = torch.rand(3, 200, generator=gen, dtype=torch.float64)
    b = torch.rand(3, 150, generator=gen, dtype=torch.float64)
    a[1, 120:] = 0.0
    for tol in (1e-2, 1e-3, 1e-5):
        out = solve_1d(x, y, a, b, eps=0.1, tol=tol)
        an, bn = a / a.sum(1, keepdim=True), b / b.sum(1, keepdim=True)
        c = (x[:, :, None] - y[:, None, :]) ** 2
        f = torch.nan_to_num(out.f)  # the plan of (f, g) on the given points
        plan = (
            an[:, :, None] * bn[:, None, :] * torch.exp((f[:, :, None] + out.g[:, None] - c) / 0.1)
        )
        true = (plan.sum(2) - an).abs().sum(1) + (plan.sum(1) - bn).abs().sum(1)
        assert (true <= out.marginal_error * (1 + 1e-9) + 1e-14).all()
        assert (out.marginal_error <= tol).all() and out.converged.all()


def test_ragged_batch_equals_a_loop_and_each_problem_stops_on_its_own():
    rng = np.random.default_rng(11)
    sizes = [(5, 60), (40, 33), (17, 1), (60, 48)]
    batch, n_max, m_max = len(sizes), 60, 60
    x, y = np.zeros((batch, n_max)), np.zeros((batch, m_max))
    a, b = np.zeros((batch, n_max)), np.zeros((batch, m_max))
    for i, (n, m) in enumerate(sizes):
        x[i, :n], y[i, :m] = rng.normal(size=n) * (i + 1), rng.normal(size=m)
        a[i, :n], b[i, :m] = rng.random(n) + 0.1, rng.random(m) + 0.1
    x, y, a, b = (torch.tensor(v) for v in (x, y, a, b))
    out = solve_1d(x, y, a, b, eps=0.1, tol=1e-8)
    for i, (n, m) in enumerate(sizes):
        one = solve_1d(
            x[i : i + 1, :n],
            y[i : i + 1, :m],
            a[i : i + 1, :n],
            b[i : i + 1, :m],
            eps=0.1,
            tol=1e-8,
        )
        assert out.n_iter[i] == one.n_iter[0]
        assert out.value[i].item() == pytest.approx(one.value[0].item(), rel=1e-12, abs=1e-14)
        assert torch.allclose(out.f[i, :n], one.f[0], rtol=1e-10, atol=1e-12)
    assert len(set(out.n_iter.tolist())) > 1  # the problems did stop at different cycles


def test_float32_with_crowd_like_counts_is_stable():
    gen = torch.Generator().manual_seed(2)
    counts = torch.distributions.Pareto(1.0, 1.3).sample((4, 1568)).clamp_max(5000.0) - 1.0
    prior = torch.distributions.Pareto(1.0, 1.3).sample((4, 1568)).clamp_max(5000.0) - 1.0
    x = (counts.float() + 0.01 * torch.rand(4, 1568, generator=gen)).requires_grad_()
    y = prior.float()
    out = sinkhorn(x[..., None], y[..., None], eps=0.1, backend="onedim")
    out.value.sum().backward()
    assert out.value.dtype == torch.float32 and out.converged.all()
    assert torch.isfinite(out.value).all() and torch.isfinite(x.grad).all()
    ref = solve_1d(
        x.detach().double(), y.double(), torch.ones(4, 1568), torch.ones(4, 1568), eps=0.1
    )
    assert torch.allclose(out.value.double(), ref.value, rtol=1e-5)


def test_sinkhorn_backend_onedim_and_auto_choice(monkeypatch):
    import sinkmatch.backends.onedim as onedim_backend

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 300, 1, generator=gen, dtype=torch.float64)
    y = torch.randn(2, 400, 1, generator=gen, dtype=torch.float64)
    assert not isinstance(sinkhorn(x, y, eps=0.1).backend, OneDimSoftmin)  # below 2^22 entries
    monkeypatch.setattr(onedim_backend, "AUTO_ONEDIM_MIN_ELEMENTS", 300 * 400)
    for value, cost in (("regularized", SqEuclidean(scale=0.5)), ("divergence", "sqeuclidean")):
        ref = sinkhorn(x, y, eps=0.1, cost=cost, value=value, backend="dense", tol=1e-9)
        out = sinkhorn(x, y, eps=0.1, cost=cost, value=value, tol=1e-9)
        assert isinstance(out.backend, OneDimSoftmin)
        assert out.kernel_error is not None and (out.kernel_error <= 1e-6).all()
        assert torch.allclose(out.value, ref.value, rtol=REL)
    assert out.barycentric_map().shape == (2, 300, 1)
    small = sinkhorn(x[:, :10], y[:, :10], eps=0.1)
    assert not isinstance(small.backend, OneDimSoftmin) and small.kernel_error is None
    transport = sinkhorn(x, y, eps=0.1, value="transport")
    assert not isinstance(transport.backend, OneDimSoftmin)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(value="transport"), "value="),
        (dict(grad="autodiff"), "grad="),
        (dict(rho=1.0), "balanced"),
        (dict(cost="euclidean"), "squared cost"),
    ],
)
def test_backend_onedim_refuses_what_it_does_not_solve(kwargs, match):
    x, y = torch.randn(1, 5, 1), torch.randn(1, 6, 1)
    with pytest.raises(ValueError, match=match):
        sinkhorn(x, y, eps=0.1, backend="onedim", **kwargs)
    with pytest.raises(ValueError, match="D=2"):
        sinkhorn(torch.randn(5, 2), torch.randn(6, 2), eps=0.1, backend="onedim")


@pytest.mark.slow
def test_memory_at_65536_squared_stays_under_a_bound():
    """Forward + backward at 65,536² in a fresh process: peak RSS growth < 1,000 MB (issue 12).

    The dense cost matrix alone would be 17 GB in float32. Measured on 2026-12-03: 774 MB for
    points uniform on [0, 3000] (about 5.9 kB per point of ``N + M``: the frozen sparse plans of
    both directions, the expansions and the backward).
    """
    code = (
        "import resource, torch\n"
        "from sinkmatch import sinkhorn\n"
        "torch.set_num_threads(1)\n"
        "g = torch.Generator().manual_seed(0)\n"
        "x = (torch.rand(65536, generator=g) * 3000).requires_grad_()\n"
        "y = torch.rand(65536, generator=g) * 3000\n"
        "base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "r = sinkhorn(x[:, None], y[:, None], eps=0.1, backend='onedim')\n"
        "r.value.backward()\n"
        "peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "print(bool(r.converged), (peak - base) / 1024)\n"
    )
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    converged, grown_mb = done.stdout.split()
    assert converged == "True"
    assert float(grown_mb) < 1000.0


def test_a_gap_with_rounding_level_flux_does_not_blow_up_the_potentials():
    """Regression: without the slope trust region this problem reported converged with a value
    of -262,144 (potentials near 1e21, the error test's digits lost)."""
    x = torch.tensor([[0.9208, -0.4446, -1.3383, -0.4112]], dtype=torch.float64)
    y = torch.tensor([[0.1732, 1.0580, -0.4299, 0.1507, 0.2416, 0.3011]], dtype=torch.float64)
    a = torch.tensor([[0.0898, 0.6730, 0.7239, 0.9230]], dtype=torch.float64)
    b = torch.tensor([[0.9856, 0.1835, 0.8093, 0.2804, 0.2406, 0.1184]], dtype=torch.float64)
    for eps in (0.04, 0.05, 0.06):
        ref = _dense(x, y, a, b, eps)
        out = solve_1d(x, y, a, b, eps=eps, tol=1e-8, max_iter=2000)
        assert out.converged.all() and out.f.abs().max() < 100.0
        assert out.value.item() == pytest.approx(ref.value.item(), rel=REL)
