"""The Sinkhorn solver against POT (float64), gradients, batching, padding, backends, modes."""

from __future__ import annotations

import numpy as np
import ot
import pytest
import torch

from sinkmatch.solver import SinkhornResult, sinkhorn

F64 = torch.float64


def _problem(n, m, d, seed, uniform=False, b=None):
    g = torch.Generator().manual_seed(seed)
    shape_x = (n, d) if b is None else (b, n, d)
    shape_y = (m, d) if b is None else (b, m, d)
    x = torch.randn(*shape_x, generator=g, dtype=F64)
    y = torch.randn(*shape_y, generator=g, dtype=F64) + 0.5
    if uniform:
        return x, y, None, None
    a = torch.rand(*shape_x[:-1], generator=g, dtype=F64) + 0.1
    w = torch.rand(*shape_y[:-1], generator=g, dtype=F64) + 0.1
    return x, y, a, w


def _pot_plan(x, y, a, b, eps):
    an = np.full(len(x), 1 / len(x)) if a is None else (a / a.sum()).numpy()
    bn = np.full(len(y), 1 / len(y)) if b is None else (b / b.sum()).numpy()
    mat = ot.dist(x.reshape(len(x), -1).numpy(), y.reshape(len(y), -1).numpy())
    plan = ot.sinkhorn(an, bn, mat, eps, method="sinkhorn_log", numItermax=200_000, stopThr=1e-12)
    return an, bn, mat, plan


CASES = [(6, 6, 1, 0.5), (8, 5, 2, 0.1), (5, 9, 5, 1.0), (7, 4, 1, 0.05)]


@pytest.mark.parametrize("n,m,d,eps", CASES)
@pytest.mark.parametrize("backend", ["dense", "online"])
def test_transport_equals_pot_sinkhorn2(n, m, d, eps, backend):
    x, y, a, b = _problem(n, m, d, seed=n * m + d)
    an, bn, mat, _ = _pot_plan(x, y, a, b, eps)
    ref = ot.sinkhorn2(an, bn, mat, eps, method="sinkhorn_log", numItermax=200_000, stopThr=1e-12)
    res = sinkhorn(
        x, y, a, b, eps=eps, value="transport", tol=1e-12, max_iter=200_000, backend=backend
    )
    assert res.value.shape == ()
    np.testing.assert_allclose(res.value.item(), float(ref), rtol=1e-6)


@pytest.mark.parametrize("n,m,d,eps", CASES)
def test_regularized_equals_kl_objective_of_pot_plan(n, m, d, eps):
    x, y, a, b = _problem(n, m, d, seed=n + m + d)
    an, bn, mat, plan = _pot_plan(x, y, a, b, eps)
    kl = np.sum(plan * np.log(plan / np.outer(an, bn))) - plan.sum() + 1.0
    ref = np.sum(plan * mat) + eps * kl
    res = sinkhorn(x, y, a, b, eps=eps, tol=1e-12, max_iter=200_000)
    np.testing.assert_allclose(res.value.item(), ref, rtol=1e-6)
    # at convergence the value is <a, f> + <b, g>
    dual = (torch.tensor(an) * res.f[0]).sum() + (torch.tensor(bn) * res.g[0]).sum()
    np.testing.assert_allclose(dual.item(), ref, rtol=1e-6)
    np.testing.assert_allclose(res.plan()[0].numpy(), plan, atol=1e-8)


@pytest.mark.parametrize("cost", ["sqeuclidean", "euclidean"])
def test_gradient_equals_analytic_from_pot_plan(cost):
    x, y, a, b = _problem(7, 5, 2, seed=11)
    eps = 0.2
    an = (a / a.sum()).numpy()
    bn = (b / b.sum()).numpy()
    mat = ot.dist(
        x.numpy(), y.numpy(), metric="sqeuclidean" if cost == "sqeuclidean" else "euclidean"
    )
    plan = torch.tensor(
        ot.sinkhorn(an, bn, mat, eps, method="sinkhorn_log", numItermax=100_000, stopThr=1e-13)
    )
    diff = x[:, None, :] - y[None, :, :]
    if cost == "sqeuclidean":
        dc = 2 * diff
    else:
        dc = diff / diff.norm(dim=-1, keepdim=True)
    ref_x = (plan[:, :, None] * dc).sum(1)
    ref_y = -(plan[:, :, None] * dc).sum(0)
    xx, yy = x.clone().requires_grad_(), y.clone().requires_grad_()
    sinkhorn(xx, yy, a, b, eps=eps, cost=cost, tol=1e-12, max_iter=100_000).value.backward()
    torch.testing.assert_close(xx.grad, ref_x, rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(yy.grad, ref_y, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("value", ["regularized", "divergence"])
def test_envelope_gradients_equal_unrolled_at_convergence(value):
    x, y, a, b = _problem(6, 5, 2, seed=5)
    grads = {}
    for mode in ("envelope", "autodiff"):
        ins = [t.clone().requires_grad_() for t in (x, y, a, b)]
        res = sinkhorn(
            *ins, eps=0.5, value=value, grad=mode, tol=1e-13, max_iter=5000, eps_scaling=None
        )
        res.value.backward()
        grads[mode] = [t.grad for t in ins]
    for g_env, g_auto in zip(grads["envelope"], grads["autodiff"]):
        torch.testing.assert_close(g_env, g_auto, rtol=1e-4, atol=1e-10)


@pytest.mark.parametrize("backend", ["dense", "online"])
def test_gradcheck_through_solver(backend):
    x, y, a, b = _problem(4, 3, 2, seed=2)
    ins = tuple(t.clone().requires_grad_() for t in (x, y, a, b))

    def fn(*args):
        return sinkhorn(*args, eps=0.5, tol=1e-13, max_iter=10_000, backend=backend).value

    assert torch.autograd.gradcheck(fn, ins, atol=1e-6, rtol=1e-4)


def test_weight_gradient_is_centred_potential():
    x, y, a, b = _problem(5, 4, 1, seed=9)
    a = a / a.sum()
    aa = a.clone().requires_grad_()
    res = sinkhorn(x, y, aa, b, eps=0.3, tol=1e-13, max_iter=10_000)
    res.value.backward()
    f = res.f[0].detach()
    torch.testing.assert_close(aa.grad, f - (a * f).sum(), rtol=1e-6, atol=1e-9)


def test_batched_equals_loop_of_single_problems():
    x, y, a, b = _problem(6, 4, 2, seed=4, b=3)
    res = sinkhorn(x, y, a, b, eps=0.2, tol=1e-12, max_iter=10_000)
    assert res.value.shape == (3,) and res.f.shape == (3, 6) and res.g.shape == (3, 4)
    for k in range(3):
        single = sinkhorn(x[k], y[k], a[k], b[k], eps=0.2, tol=1e-12, max_iter=10_000)
        torch.testing.assert_close(res.value[k], single.value, rtol=1e-9, atol=1e-12)
        # potentials are unique up to (f + c, g - c): compare differences
        torch.testing.assert_close(
            res.f[k] - res.f[k, :1], single.f[0] - single.f[0, :1], rtol=1e-7, atol=1e-9
        )
        torch.testing.assert_close(
            res.f[k, 0] + res.g[k], single.f[0, 0] + single.g[0], rtol=1e-7, atol=1e-9
        )


@pytest.mark.parametrize("value", ["regularized", "transport", "divergence"])
@pytest.mark.parametrize("cost", ["sqeuclidean", "euclidean"])
def test_online_equals_dense(value, cost):
    x, y, a, b = _problem(9, 7, 3, seed=6, b=2)
    out = {}
    for backend in ("dense", "online"):
        xx, yy = x.clone().requires_grad_(), y.clone().requires_grad_()
        res = sinkhorn(xx, yy, a, b, eps=0.3, value=value, cost=cost, tol=1e-11, backend=backend)
        res.value.sum().backward()
        out[backend] = (res.value.detach(), res.f.detach(), res.g.detach(), xx.grad, yy.grad)
    for ref, got in zip(out["dense"], out["online"]):
        torch.testing.assert_close(got, ref, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("backend", ["dense", "online"])
def test_padding_gets_zero_gradient_and_does_not_change_value(backend):
    x, y, a, b = _problem(5, 4, 2, seed=8)
    xp = torch.cat([x, torch.randn(3, 2, dtype=F64)]).requires_grad_()
    ap = torch.cat([a, torch.zeros(3, dtype=F64)])
    yp = torch.cat([y, torch.randn(2, 2, dtype=F64)]).requires_grad_()
    bp = torch.cat([b, torch.zeros(2, dtype=F64)])
    for value in ("regularized", "transport", "divergence"):
        xp.grad = yp.grad = None
        padded = sinkhorn(xp, yp, ap, bp, eps=0.2, value=value, tol=1e-12, backend=backend)
        plain = sinkhorn(x, y, a, b, eps=0.2, value=value, tol=1e-12, backend=backend)
        padded.value.backward()
        torch.testing.assert_close(padded.value.detach(), plain.value, rtol=1e-9, atol=1e-12)
        assert torch.equal(xp.grad[5:], torch.zeros(3, 2, dtype=F64))
        assert torch.equal(yp.grad[4:], torch.zeros(2, 2, dtype=F64))
        assert torch.isfinite(xp.grad).all()


def test_divergence_symmetric_nonnegative_and_zero_on_equal_measures():
    x, y, a, b = _problem(6, 5, 2, seed=12)
    kw = dict(eps=0.1, value="divergence", tol=1e-11)
    s_xy = sinkhorn(x, y, a, b, **kw).value
    s_yx = sinkhorn(y, x, b, a, **kw).value
    torch.testing.assert_close(s_xy, s_yx, rtol=1e-7, atol=1e-10)
    assert s_xy > 0
    # the x-x cross problem of plain Sinkhorn converges slowly at small eps (near-diagonal
    # kernel); at a moderate eps it converges and S(a, a) vanishes
    same = sinkhorn(x, x, a, a, eps=0.5, value="divergence", tol=1e-11)
    assert same.converged.all()
    assert abs(same.value.item()) < 1e-9


def test_result_fields_and_helpers():
    x, y, a, b = _problem(6, 5, 2, seed=13, b=2)
    res = sinkhorn(x, y, a, b, eps=0.2, tol=1e-10)
    assert isinstance(res, SinkhornResult)
    assert isinstance(res.n_iter, int) and res.n_iter > 0
    assert res.converged.dtype == torch.bool and res.converged.all()
    assert (res.marginal_error < 1e-10).all() and res.eps == 0.2
    plan = res.plan()
    an, bn = a / a.sum(-1, keepdim=True), b / b.sum(-1, keepdim=True)
    torch.testing.assert_close(plan.sum(2), an, atol=1e-9, rtol=0)
    torch.testing.assert_close(plan.sum(1), bn, atol=1e-9, rtol=0)
    bary = res.barycentric_map()
    torch.testing.assert_close(bary, plan @ y / plan.sum(2, keepdim=True), rtol=1e-8, atol=1e-10)


def test_plan_refuses_huge_problems_unless_forced(monkeypatch):
    import sinkmatch.solver as module

    monkeypatch.setattr(module, "PLAN_MAX_ELEMENTS", 50)
    x = torch.randn(1, 9, 1)
    res = sinkhorn(x, x + 1, eps=1.0, backend="online")
    with pytest.raises(ValueError, match="force=True"):
        res.plan()
    plan = res.plan(force=True)
    assert plan.shape == (1, 9, 9)
    torch.testing.assert_close(res.barycentric_map(), plan @ (x + 1) / plan.sum(2, keepdim=True))


def test_warn_emits_user_warning_on_non_convergence():
    x, y, _, _ = _problem(20, 20, 1, seed=1)
    with pytest.warns(UserWarning, match="did not converge"):
        res = sinkhorn(x, y, eps=1e-3, max_iter=2, eps_scaling=None, warn=True)
    assert not res.converged.any() and res.n_iter == 2


def test_fixed_iterations_runs_exactly_and_matches_adaptive():
    x, y, a, b = _problem(6, 5, 2, seed=3, b=2)
    fixed = sinkhorn(x, y, a, b, eps=0.3, max_iter=300, fixed_iterations=True, eps_start=8.0)
    assert isinstance(fixed.n_iter, int) and fixed.n_iter == 300
    assert fixed.converged.all()
    adaptive = sinkhorn(x, y, a, b, eps=0.3, tol=1e-12)
    torch.testing.assert_close(fixed.value, adaptive.value, rtol=1e-8, atol=1e-10)
    with pytest.raises(ValueError, match="eps_start"):
        sinkhorn(x, y, eps=0.3, fixed_iterations=True)


def test_warm_start_tuple_cuts_iterations():
    x, y, a, b = _problem(8, 7, 2, seed=14)
    cold = sinkhorn(x, y, a, b, eps=0.05, tol=1e-9)
    warm = sinkhorn(x, y, a, b, eps=0.05, tol=1e-9, init=(cold.f.detach(), cold.g.detach()))
    assert warm.n_iter < cold.n_iter
    torch.testing.assert_close(warm.value, cold.value, rtol=1e-8, atol=1e-10)


def test_exact1d_init_gives_the_same_answer():
    x, y, a, b = _problem(9, 6, 1, seed=15)
    cold = sinkhorn(x, y, a, b, eps=0.01, tol=1e-10)
    warm = sinkhorn(x, y, a, b, eps=0.01, tol=1e-10, init="exact1d")
    torch.testing.assert_close(warm.value, cold.value, rtol=1e-8, atol=1e-10)
    with pytest.raises(ValueError, match="1-D"):
        sinkhorn(torch.randn(4, 2), torch.randn(3, 2), init="exact1d")


@pytest.mark.parametrize("cost", ["sqeuclidean", "euclidean"])
def test_auto_init_picks_exact1d_in_1d_and_converges_to_the_cold_answer(cost):
    x, y, a, b = _problem(40, 30, 1, seed=19)
    auto = sinkhorn(x, y, a, b, eps=0.05, tol=1e-10, cost=cost)  # init="auto" is the default
    warm = sinkhorn(x, y, a, b, eps=0.05, tol=1e-10, cost=cost, init="exact1d")
    cold = sinkhorn(x, y, a, b, eps=0.05, tol=1e-10, cost=cost, init=None, max_iter=20000)
    assert auto.n_iter == warm.n_iter
    torch.testing.assert_close(auto.f, warm.f, rtol=0, atol=0)
    torch.testing.assert_close(auto.value, cold.value, rtol=1e-8, atol=1e-10)
    # the potentials agree up to the gauge (f + c, g - c)
    shift = (auto.f - cold.f).mean()
    torch.testing.assert_close(auto.f - shift, cold.f, rtol=0, atol=1e-7)
    torch.testing.assert_close(auto.g + shift, cold.g, rtol=0, atol=1e-7)


def test_auto_init_is_cold_beyond_1d_callable_costs_and_fixed_mode():
    x, y, a, b = _problem(7, 6, 2, seed=20)
    auto, cold = sinkhorn(x, y, a, b, eps=0.1), sinkhorn(x, y, a, b, eps=0.1, init=None)
    assert auto.n_iter == cold.n_iter
    torch.testing.assert_close(auto.value, cold.value, rtol=0, atol=0)
    x1, y1, a1, b1 = _problem(7, 6, 1, seed=20)
    fn = lambda u, v: (u - v.transpose(1, 2)) ** 2  # noqa: E731
    auto = sinkhorn(x1, y1, a1, b1, eps=0.1, cost=fn)
    cold = sinkhorn(x1, y1, a1, b1, eps=0.1, cost=fn, init=None)
    assert auto.n_iter == cold.n_iter
    fixed = dict(eps=0.1, max_iter=20, fixed_iterations=True, eps_start=2.0)
    auto = sinkhorn(x1, y1, a1, b1, **fixed)
    cold = sinkhorn(x1, y1, a1, b1, init=None, **fixed)
    torch.testing.assert_close(auto.value, cold.value, rtol=0, atol=0)


@pytest.mark.parametrize("sizes", [[(5, 9), (12, 4)], [(90, 400), (210, 150)]])
def test_auto_init_on_zero_padded_batches_equals_separate_solves(sizes):
    # grouped losses pad groups with zero weights at the end; the exact 1-D start must ignore
    # them (the second case is large enough for the dense kernel to skip the padding)
    g = torch.Generator().manual_seed(21)
    xs = [torch.randn(n, 1, generator=g, dtype=F64) for n, _ in sizes]
    ys = [torch.randn(m, 1, generator=g, dtype=F64) + 1 for _, m in sizes]
    n_max, m_max = max(n for n, _ in sizes), max(m for _, m in sizes)
    x = torch.zeros(2, n_max, 1, dtype=F64)
    y = torch.full((2, m_max, 1), 7.0, dtype=F64)  # padding far away must not matter either
    a, b = torch.zeros(2, n_max, dtype=F64), torch.zeros(2, m_max, dtype=F64)
    for k, (n, m) in enumerate(sizes):
        x[k, :n], y[k, :m], a[k, :n], b[k, :m] = xs[k], ys[k], 1.0, 1.0
    packed = sinkhorn(x, y, a, b, eps=0.05, tol=1e-9)
    for k in range(len(sizes)):
        single = sinkhorn(xs[k], ys[k], eps=0.05, tol=1e-9)
        torch.testing.assert_close(packed.value[k], single.value, rtol=1e-8, atol=1e-10)
    assert torch.isfinite(packed.f).all() and torch.isfinite(packed.g).all()


def test_callable_cost_matches_named_on_dense():
    x, y, a, b = _problem(6, 5, 2, seed=16)
    named = sinkhorn(x, y, a, b, eps=0.2, tol=1e-11)
    custom = sinkhorn(x, y, a, b, eps=0.2, tol=1e-11, cost=lambda u, v: torch.cdist(u, v) ** 2)
    torch.testing.assert_close(custom.value, named.value, rtol=1e-8, atol=1e-10)
    with pytest.raises(ValueError, match="dense"):
        sinkhorn(x, y, cost=lambda u, v: torch.cdist(u, v), backend="online")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_is_computed_in_float32(dtype):
    x, y, _, _ = _problem(6, 5, 1, seed=17)
    res = sinkhorn(x.to(dtype), y.to(dtype), eps=0.1)
    assert res.value.dtype == torch.float32 and res.f.dtype == torch.float32
    ref = sinkhorn(x.to(dtype).double(), y.to(dtype).double(), eps=0.1)
    np.testing.assert_allclose(res.value.item(), ref.value.item(), rtol=1e-4)


def test_float64_stays_float64():
    x, y, _, _ = _problem(4, 4, 1, seed=18)
    assert sinkhorn(x, y).value.dtype == F64


def test_fixed_iterations_compiles_without_graph_breaks():
    # fullgraph=True fails on any graph break, e.g. a host read (.item(), bool(tensor))
    x, y = torch.randn(2, 6, 2), torch.randn(2, 5, 2)

    def fn(x, y):
        res = sinkhorn(x, y, eps=0.5, max_iter=4, fixed_iterations=True, eps_start=4.0)
        return res.value, res.marginal_error

    compiled = torch.compile(fn, fullgraph=True, backend="eager")
    for got, ref in zip(compiled(x, y), fn(x, y)):
        torch.testing.assert_close(got, ref)
