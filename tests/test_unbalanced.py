"""Unbalanced OT (rho=): values, plans and envelope gradients vs POT in float64; zero masses."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from sinkmatch import grouped_sinkhorn_loss, sinkhorn

ot = pytest.importorskip("ot")

EPS = 0.1
RHOS = [0.5, (0.3, 2.0), (math.inf, 0.4), (0.4, None)]


def _pair(rho):
    r = rho if isinstance(rho, tuple) else (rho, rho)
    return tuple(math.inf if v is None else float(v) for v in r)


def _problem(n=10, m=8, seed=0, batch=()):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(*batch, n, 2, generator=g, dtype=torch.float64)
    y = torch.rand(*batch, m, 2, generator=g, dtype=torch.float64)
    a = torch.rand(*batch, n, generator=g, dtype=torch.float64) * 0.3  # masses 1.5 and 0.8
    b = torch.rand(*batch, m, generator=g, dtype=torch.float64) * 0.2
    return x, y, a, b


def _kl(p, q):
    return float(np.sum(p * np.log(p / q) - p + q))


def _pot(a, b, m, rho):
    """POT's plan (converged), its linear and its 'total' cost, and the generalized objective."""
    a, b, m = (np.asarray(t, dtype=np.float64) for t in (a, b, m))
    ra, rb = _pair(rho)
    kw = dict(numItermax=100_000, stopThr=1e-15)
    plan = ot.unbalanced.sinkhorn_unbalanced(a, b, m, EPS, (ra, rb), **kw)
    _, log = ot.unbalanced.sinkhorn_unbalanced2(
        a, b, m, EPS, (ra, rb), returnCost="total", log=True, **kw
    )
    gen = float(np.sum(plan * m)) + EPS * _kl(plan, np.outer(a, b))
    gen += ra * _kl(plan.sum(1), a) if math.isfinite(ra) else 0.0
    gen += rb * _kl(plan.sum(0), b) if math.isfinite(rb) else 0.0
    return plan, float(log["cost"]), float(log["total_cost"]), gen


@pytest.mark.parametrize("rho", RHOS, ids=str)
@pytest.mark.parametrize("backend", ["dense", "online"])
def test_values_and_plan_match_pot(rho, backend):
    x, y, a, b = _problem()
    m = ot.dist(x.numpy(), y.numpy())
    plan, linear, total, gen = _pot(a, b, m, rho)
    kw = dict(eps=EPS, rho=rho, tol=1e-12, backend=backend)
    reg = sinkhorn(x, y, a, b, **kw)
    tra = sinkhorn(x, y, a, b, value="transport", **kw)
    assert bool(reg.converged) and bool(tra.converged)
    np.testing.assert_allclose(float(tra.value), linear, rtol=1e-10)  # returnCost="linear"
    np.testing.assert_allclose(float(reg.value), gen, rtol=1e-10)  # UOT_eps, generalized KL
    np.testing.assert_allclose(reg.plan()[0].numpy(), plan, rtol=1e-8, atol=1e-15)
    # POT's returnCost="total" drops the mass terms of its KLs: a closed-form difference
    ra, rb = _pair(rho)
    mp, ma, mb = float(reg.plan().sum()), float(a.sum()), float(b.sum())
    mass = EPS * (ma * mb - mp)
    mass += ra * (ma - mp) if math.isfinite(ra) else 0.0
    mass += rb * (mb - mp) if math.isfinite(rb) else 0.0
    np.testing.assert_allclose(float(reg.value) - mass, total, rtol=1e-10, atol=1e-12)


def test_cost_matrix_path_matches_pot():
    _, _, a, b = _problem(seed=1)
    c = torch.rand(10, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    _, linear, _, gen = _pot(a, b, c, 0.7)
    res = sinkhorn(a=a, b=b, cost_matrix=c, eps=EPS, rho=0.7, tol=1e-12)
    np.testing.assert_allclose(float(res.value), gen, rtol=1e-10)
    tra = sinkhorn(a=a, b=b, cost_matrix=c, eps=EPS, rho=0.7, tol=1e-12, value="transport")
    np.testing.assert_allclose(float(tra.value), linear, rtol=1e-10)


def test_marginal_error_is_the_violation_of_the_optimality_conditions():
    x, y, a, b = _problem(seed=2)
    res = sinkhorn(x, y, a, b, eps=EPS, rho=(0.3, 0.6), tol=1e-4, check_every=1)
    plan = res.plan()[0]
    f, g = res.f[0], res.g[0]
    viol = (plan.sum(1) - a * torch.exp(-f / 0.3)).abs().sum()
    viol += (plan.sum(0) - b * torch.exp(-g / 0.6)).abs().sum()
    rel = viol / (0.5 * (a.sum() + b.sum()))
    # the reported error is that of the loop's last iterate; the returned pair (its f updated
    # once more) is at least as good
    assert float(rel) <= float(res.marginal_error[0]) * (1 + 1e-9)
    assert bool(res.converged) and float(res.marginal_error[0]) < 1e-4


def test_envelope_gradients_match_pot_finite_differences():
    x, y, a, b = _problem(n=6, m=5, seed=3)
    rho, h = (0.4, 0.9), 1e-6
    c = torch.from_numpy(ot.dist(x.numpy(), y.numpy())).requires_grad_()
    aa, bb = a.clone().requires_grad_(), b.clone().requires_grad_()
    res = sinkhorn(a=aa, b=bb, cost_matrix=c, eps=EPS, rho=rho, tol=1e-13)
    gc, ga, gb = torch.autograd.grad(res.value, (c, aa, bb))
    plan = _pot(a, b, c.detach(), rho)[0]
    np.testing.assert_allclose(gc.numpy(), plan, rtol=1e-7, atol=1e-13)  # dUOT/dC = P

    def pot_value(a_, b_, c_):
        return _pot(a_, b_, c_, rho)[3]

    for k in (0, 3):
        for w, grad, name in ((a, ga, "a"), (b, gb, "b")):
            wp, wm = w.clone(), w.clone()
            wp[k] += h
            wm[k] -= h
            args_p = (wp, b, c.detach()) if name == "a" else (a, wp, c.detach())
            args_m = (wm, b, c.detach()) if name == "a" else (a, wm, c.detach())
            fd = (pot_value(*args_p) - pot_value(*args_m)) / (2 * h)
            assert abs(fd - float(grad[k])) < 1e-7 * max(1.0, abs(fd)), (name, k, fd, grad[k])
    # points: d/dx_i through C = |x - y|^2
    xx = x.clone().requires_grad_()
    gx = torch.autograd.grad(sinkhorn(xx, y, a, b, eps=EPS, rho=rho, tol=1e-13).value, xx)[0]
    for i, d in ((0, 0), (4, 1)):
        xp, xm = x.clone(), x.clone()
        xp[i, d] += h
        xm[i, d] -= h
        fd = (
            pot_value(a, b, ot.dist(xp.numpy(), y.numpy()))
            - pot_value(a, b, ot.dist(xm.numpy(), y.numpy()))
        ) / (2 * h)
        assert abs(fd - float(gx[i, d])) < 1e-7, (i, d, fd, gx[i, d])


def test_autodiff_agrees_with_envelope_at_convergence():
    x, y, a, b = _problem(n=6, m=5, seed=4)
    grads = []
    for grad in ("envelope", "autodiff"):
        xx, aa = x.clone().requires_grad_(), a.clone().requires_grad_()
        res = sinkhorn(xx, y, aa, b, eps=EPS, rho=0.5, tol=1e-12, grad=grad)
        grads.append(torch.autograd.grad(res.value, (xx, aa)))
    for got, ref in zip(grads[1], grads[0]):
        torch.testing.assert_close(got, ref, rtol=1e-7, atol=1e-10)


def test_batch_with_zero_mass_problems_equals_closed_forms_and_a_loop():
    x, y, a, b = _problem(batch=(4,), seed=5)
    a[1] = 0.0  # creation only
    b[2] = 0.0  # destruction only
    a[3], b[3] = 0.0, 0.0  # nothing
    aa = a.clone().requires_grad_()
    res = sinkhorn(x, y, aa, b, eps=EPS, rho=(0.3, 0.6), tol=1e-12)
    expected = [None, 0.6 * b[1].sum(), 0.3 * a[2].sum(), 0.0]
    torch.testing.assert_close(
        res.value[1:], torch.stack([torch.as_tensor(v) for v in expected[1:]]).double()
    )
    one = sinkhorn(x[0], y[0], a[0], b[0], eps=EPS, rho=(0.3, 0.6), tol=1e-12)
    torch.testing.assert_close(res.value[0], one.value, rtol=1e-11, atol=0)
    assert bool(res.converged.all()) and torch.isfinite(res.value).all()
    assert torch.isinf(res.f[2]).all() and torch.isinf(res.g[1]).all()
    ga = torch.autograd.grad(res.value.sum(), aa)[0]
    torch.testing.assert_close(ga[2], torch.full_like(ga[2], 0.3))  # destroying costs rho_a
    assert torch.isfinite(ga).all()
    # continuity: a vanishing mass delta tends to the closed form (like delta |log delta|)
    tiny = sinkhorn(x[2], y[2], a[2], b[2] + 1e-14, eps=EPS, rho=(0.3, 0.6), tol=1e-12)
    assert abs(float(tiny.value) - float(res.value[2].detach())) < 1e-8
    tr = sinkhorn(x, y, a, b, eps=EPS, rho=(0.3, 0.6), value="transport", tol=1e-12)
    assert torch.equal(tr.value[1:], torch.zeros(3, dtype=torch.float64))


def test_a_hard_side_facing_an_empty_side_raises():
    x, y, a, b = _problem(batch=(2,), seed=6)
    b[1] = 0.0
    with pytest.raises(ValueError, match="cannot keep the mass of a"):
        sinkhorn(x, y, a, b, eps=EPS, rho=(None, 0.5))


def test_divergence_zero_on_equal_measures_and_with_an_empty_side():
    x, _, a, _ = _problem(seed=7)
    same = sinkhorn(x, x, a, a, eps=EPS, rho=0.5, value="divergence", tol=1e-12)
    assert abs(float(same.value)) < 1e-10
    zero = torch.zeros(8, dtype=torch.float64)
    y = torch.rand(8, 2, dtype=torch.float64)
    one_sided = sinkhorn(x, y, a, zero, eps=EPS, rho=0.5, value="divergence", tol=1e-12)
    self_a = sinkhorn(x, x, a, a, eps=EPS, rho=0.5, tol=1e-12).value
    expected = 0.5 * a.sum() - 0.5 * self_a + 0.5 * EPS * a.sum() ** 2
    np.testing.assert_allclose(float(one_sided.value), float(expected), rtol=1e-9)
    with pytest.raises(ValueError, match="one rho for both sides"):
        sinkhorn(x, y, a, a[:8], eps=EPS, rho=(0.5, 1.0), value="divergence")


def test_grouped_loss_solves_one_sided_groups():
    g = torch.Generator().manual_seed(8)
    xs = [
        torch.rand(5, generator=g).double(),
        torch.rand(3, generator=g).double(),
        torch.zeros(0).double(),
    ]
    ys = [
        torch.rand(4, generator=g).double(),
        torch.zeros(0).double(),
        torch.rand(2, generator=g).double(),
    ]
    wa = [torch.full((5,), 0.3).double(), torch.full((3,), 0.2).double(), torch.zeros(0).double()]
    wb = [torch.full((4,), 0.25).double(), torch.zeros(0).double(), torch.full((2,), 0.5).double()]
    kw = dict(eps=EPS, rho=(0.4, 0.7), tol=1e-12)
    vals = grouped_sinkhorn_loss(xs, ys, a=wa, b=wb, reduction="none", **kw)
    first = sinkhorn(xs[0], ys[0], wa[0], wb[0], **kw).value
    torch.testing.assert_close(vals[0], first, rtol=1e-11, atol=0)
    torch.testing.assert_close(vals[1], torch.tensor(0.4 * 0.6, dtype=torch.float64))
    torch.testing.assert_close(vals[2], torch.tensor(0.7 * 1.0, dtype=torch.float64))
    # no point at all on one side
    only = grouped_sinkhorn_loss(
        [xs[0]], [torch.zeros(0).double()], a=[wa[0]], b=[torch.zeros(0).double()], **kw
    )
    torch.testing.assert_close(only, torch.tensor(0.4 * 1.5, dtype=torch.float64))
    # balanced: one-sided groups still give 0
    bal = grouped_sinkhorn_loss(xs, ys, a=wa, b=wb, reduction="none", eps=EPS)
    assert torch.equal(bal[1:], torch.zeros(2, dtype=torch.float64))


@pytest.mark.triton
def test_triton_interpreter_with_padding_matches_dense(monkeypatch):
    pytest.importorskip("triton")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    x, y, a, b = _problem(n=9, m=7, seed=9, batch=(2,))
    b[0, -3:] = 0.0  # trailing padding: the loop skips it, complete_g fills it (damped)
    # the same 12 iterations on both backends (the interpreter is slow): the same iterate
    kw = dict(eps=EPS, rho=0.5, tol=0.0, max_iter=12, eps_scaling=None)
    ref = sinkhorn(x, y, a, b, backend="dense", **kw)
    got = sinkhorn(x, y, a, b, backend="triton", **kw)
    assert got.n_iter == ref.n_iter == 12
    for name in ("value", "f", "g", "marginal_error"):
        torch.testing.assert_close(getattr(got, name), getattr(ref, name), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize(
    ("rho", "err", "match"),
    [
        (0.0, ValueError, r"rho must be > 0"),
        (-1.0, ValueError, r"rho must be > 0"),
        ((1.0,), ValueError, "a pair"),
        ("1", TypeError, "rho must be a positive number"),
        ((1.0, math.nan), ValueError, r"rho\[1\] \(rho_b\) must be > 0"),
    ],
)
def test_bad_rho_raises(rho, err, match):
    x, y, a, b = _problem(seed=10)
    with pytest.raises(err, match=match):
        sinkhorn(x, y, a, b, rho=rho)


def test_negative_masses_raise_and_infinite_rho_is_balanced():
    x, y, a, b = _problem(seed=11)
    with pytest.raises(ValueError, match="a must be nonnegative"):
        sinkhorn(x, y, -a, b, rho=1.0)
    a1, b1 = a / a.sum(), b / b.sum()
    bal = sinkhorn(x, y, a1, b1, eps=EPS, tol=1e-12)
    inf = sinkhorn(x, y, a1, b1, eps=EPS, tol=1e-12, rho=math.inf)
    assert not inf.problem.unbalanced
    torch.testing.assert_close(inf.value, bal.value)
    big = sinkhorn(x, y, a1, b1, eps=EPS, tol=1e-12, rho=1e7)  # rho -> inf: balanced
    np.testing.assert_allclose(float(big.value), float(bal.value), rtol=1e-6)


def test_fixed_iterations_run_the_same_damped_updates():
    x, y, a, b = _problem(batch=(2,), seed=12)
    ref = sinkhorn(x, y, a, b, eps=EPS, rho=0.5, tol=1e-10)
    fixed = sinkhorn(
        x, y, a, b, eps=EPS, rho=0.5, fixed_iterations=True, max_iter=400, eps_start=1.0
    )
    torch.testing.assert_close(fixed.value, ref.value, rtol=1e-8, atol=0)
    with pytest.raises(ValueError, match="one rho for both sides"):
        sinkhorn(x, y, a, b, rho=(0.5, 1.0), value="divergence", fixed_iterations=True,
                 eps_start=1.0)  # fmt: skip
