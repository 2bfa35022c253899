"""Losses: plain, grouped (one solve == a loop), distribution matching (CSS-CCNN, ++), exact 1-D."""

from __future__ import annotations

import doctest
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import sinkmatch.losses
from sinkmatch.exact1d import wasserstein_1d
from sinkmatch.grouping import percentile_split
from sinkmatch.losses import (
    DistributionMatchingLoss,
    GroupedSinkhornLoss,
    SinkhornLoss,
    Wasserstein1DLoss,
    distribution_matching_loss,
    grouped_sinkhorn_loss,
    sinkhorn_loss,
    wasserstein_1d_loss,
)
from sinkmatch.solver import sinkhorn

F64 = torch.float64
TIGHT = {"tol": 1e-9, "max_iter": 5000}


class ExpPrior:
    """Stand-in count prior: exponential with the given mean (only ``sample`` is used)."""

    def __init__(self, mean: float = 2.0) -> None:
        self.mean = mean
        self.calls: list[tuple[int, object, object]] = []

    def sample(self, n, *, generator=None, device=None, dtype=torch.float32):
        self.calls.append((n, device, dtype))
        u = torch.rand(n, generator=generator, dtype=torch.float64)
        return (-self.mean * torch.log1p(-u)).to(device=device, dtype=dtype)


def test_doctests():
    result = doctest.testmod(sinkmatch.losses, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


# ---------------------------------------------------------------- plain


def test_sinkhorn_loss_transport_matches_pot():
    ot = pytest.importorskip("ot")
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(7, 2)), rng.normal(size=(5, 2))
    a, b = rng.random(7) + 0.1, rng.random(5) + 0.1
    a, b = a / a.sum(), b / b.sum()
    cost = ((x[:, None] - y[None]) ** 2).sum(-1)
    ref = ot.sinkhorn2(a, b, cost, reg=0.5, stopThr=1e-12, numItermax=10000)
    got = sinkhorn_loss(
        torch.tensor(x),
        torch.tensor(y),
        torch.tensor(a),
        torch.tensor(b),
        eps=0.5,
        value="transport",
        **TIGHT,
    )
    assert abs(float(got) - float(ref)) < 1e-8


@pytest.mark.parametrize("value", ["regularized", "transport", "divergence"])
def test_sinkhorn_loss_reductions_and_module(value):
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(3, 6, 1, generator=gen, dtype=F64)
    y = torch.randn(3, 4, 1, generator=gen, dtype=F64)
    per = sinkhorn(x, y, eps=0.2, value=value, **TIGHT).value
    none = sinkhorn_loss(x, y, eps=0.2, value=value, reduction="none", **TIGHT)
    assert none.shape == (3,) and torch.allclose(none, per, atol=1e-12)
    assert torch.allclose(
        sinkhorn_loss(x, y, eps=0.2, value=value, reduction="sum", **TIGHT), per.sum()
    )
    mod = SinkhornLoss(eps=0.2, value=value, **TIGHT)
    assert torch.allclose(mod(x, y), per.mean(), atol=1e-12)
    assert "eps=0.2" in repr(mod)


# ---------------------------------------------------------------- grouped


def _groups(seed, sizes_x, sizes_y, dim=1):
    gen = torch.Generator().manual_seed(seed)
    xs = [torch.randn(n, dim, generator=gen, dtype=F64) + k for k, n in enumerate(sizes_x)]
    ys = [torch.randn(m, dim, generator=gen, dtype=F64) + k for k, m in enumerate(sizes_y)]
    return xs, ys


@pytest.mark.parametrize("value", ["regularized", "transport", "divergence"])
def test_grouped_equals_loop_values_and_gradients(value):
    xs, ys = _groups(2, [3, 7, 1, 5], [6, 2, 4, 9], dim=2)
    xs = [x.requires_grad_() for x in xs]
    gen = torch.Generator().manual_seed(3)
    bs = [torch.rand(y.shape[0], generator=gen, dtype=F64) + 0.1 for y in ys]
    # "transport" is not stationary in the potentials: its error is first order in the marginal
    # error, so both sides are solved to a much tighter tolerance than the stopping default
    tight = {"tol": 1e-12, "max_iter": 5000}
    grouped = grouped_sinkhorn_loss(xs, ys, b=bs, eps=0.3, value=value, reduction="none", **tight)
    loop = torch.stack(
        [
            sinkhorn(x, y, None, bk, eps=0.3, value=value, **tight).value
            for x, y, bk in zip(xs, ys, bs)
        ]
    )
    assert grouped.shape == (4,)
    assert torch.allclose(grouped, loop, atol=1e-9, rtol=0)
    g_grouped = torch.autograd.grad(grouped.sum(), xs)
    g_loop = torch.autograd.grad(loop.sum(), xs)
    for gg, gl in zip(g_grouped, g_loop):
        assert torch.allclose(gg, gl, atol=1e-9, rtol=0)


def test_grouped_with_exact1d_warm_start_equals_loop():
    xs, ys = _groups(12, [3, 8, 5], [7, 2, 5])
    grouped = grouped_sinkhorn_loss(xs, ys, eps=0.1, init="exact1d", reduction="none", **TIGHT)
    loop = torch.stack([sinkhorn(x, y, eps=0.1, **TIGHT).value for x, y in zip(xs, ys)])
    assert torch.allclose(grouped, loop, atol=1e-9, rtol=0)


def test_grouped_id_form_equals_list_form_and_reductions():
    xs, ys = _groups(4, [4, 2, 5], [3, 6, 2])
    x, y = torch.cat(xs)[:, 0], torch.cat(ys)[:, 0]
    ix = torch.repeat_interleave(torch.arange(3), torch.tensor([4, 2, 5]))
    iy = torch.repeat_interleave(torch.arange(3), torch.tensor([3, 6, 2]))
    # shuffle the flat inputs: ids, not order, define the groups
    px, py = torch.randperm(11), torch.randperm(11)
    by_ids = grouped_sinkhorn_loss(
        x[px], y[py], x_groups=ix[px], y_groups=iy[py], eps=0.3, reduction="none", **TIGHT
    )
    by_list = grouped_sinkhorn_loss(xs, ys, eps=0.3, reduction="none", **TIGHT)
    assert torch.allclose(by_ids, by_list, atol=1e-10)
    total = grouped_sinkhorn_loss(xs, ys, eps=0.3, **TIGHT)
    mean = grouped_sinkhorn_loss(xs, ys, eps=0.3, reduction="mean", **TIGHT)
    assert torch.allclose(total, by_list.sum()) and torch.allclose(mean, by_list.mean())
    mod = GroupedSinkhornLoss(eps=0.3, reduction="none", **TIGHT)
    assert torch.allclose(mod(x, y, x_groups=ix, y_groups=iy), by_list, atol=1e-10)


def test_padding_gets_exactly_zero_gradient_and_does_not_change_the_value():
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(3, 6, 1, generator=gen, dtype=F64)
    y = torch.randn(3, 5, 1, generator=gen, dtype=F64)
    a = torch.ones(3, 6, dtype=F64)
    b = torch.ones(3, 5, dtype=F64)
    a[0, 4:] = 0.0
    a[2, 1:] = 0.0
    b[1, 3:] = 0.0
    for value in ("regularized", "transport", "divergence"):
        xg, yg = x.clone().requires_grad_(), y.clone().requires_grad_()
        loss = sinkhorn_loss(xg, yg, a, b, eps=0.3, value=value, reduction="sum", **TIGHT)
        loss.backward()
        assert torch.all(xg.grad[a == 0] == 0) and torch.all(yg.grad[b == 0] == 0)
        assert torch.all(xg.grad[a > 0] != 0)
        # moving the padding far away changes nothing
        x2, y2 = x.clone(), y.clone()
        x2[a == 0] = 1e3
        y2[b == 0] = -1e3
        moved = sinkhorn_loss(x2, y2, a, b, eps=0.3, value=value, reduction="sum", **TIGHT)
        assert abs((moved - loss).item()) < 1e-9


def test_empty_groups_contribute_zero_never_nan():
    xs, ys = _groups(6, [3, 0, 4, 2], [5, 3, 0, 2])
    xs = [x.requires_grad_() for x in xs]
    vals = grouped_sinkhorn_loss(xs, ys, eps=0.3, reduction="none", **TIGHT)
    assert vals[1] == 0 and vals[2] == 0 and torch.isfinite(vals).all()
    ref = [sinkhorn(xs[k], ys[k], eps=0.3, **TIGHT).value for k in (0, 3)]
    assert torch.allclose(vals[[0, 3]], torch.stack(ref), atol=1e-10)
    vals.sum().backward()
    assert all(torch.isfinite(x.grad).all() for x in xs)
    assert torch.all(xs[2].grad == 0)  # its partner group is empty
    mean = grouped_sinkhorn_loss(xs, ys, eps=0.3, reduction="mean", **TIGHT)
    assert torch.allclose(mean, vals.sum() / 4)


@settings(max_examples=10, deadline=None)
@given(
    sizes=st.lists(st.tuples(st.integers(0, 6), st.integers(0, 6)), min_size=1, max_size=4),
    seed=st.integers(0, 1000),
)
def test_grouped_equals_loop_property(sizes, seed):
    xs, ys = _groups(seed, [n for n, _ in sizes], [m for _, m in sizes])
    vals = grouped_sinkhorn_loss(xs, ys, eps=0.5, reduction="none", **TIGHT)
    for k, (x, y) in enumerate(zip(xs, ys)):
        ref = (
            sinkhorn(x, y, eps=0.5, **TIGHT).value
            if len(x) and len(y)
            else torch.zeros((), dtype=F64)
        )
        assert abs((vals[k] - ref).item()) < 1e-9


def test_all_groups_empty_gives_zero_with_a_graph():
    x = torch.randn(3, dtype=F64, requires_grad=True)
    y = torch.randn(2, dtype=F64)
    loss = grouped_sinkhorn_loss(
        x, y, x_groups=torch.tensor([0, 0, 0]), y_groups=torch.tensor([1, 1])
    )
    assert loss.item() == 0.0
    loss.backward()
    assert torch.equal(x.grad, torch.zeros(3, dtype=F64))


def test_zero_weight_group_counts_as_empty():
    xs, ys = _groups(7, [3, 2], [2, 2])
    vals = grouped_sinkhorn_loss(
        xs, ys, a=[torch.ones(3, dtype=F64), torch.zeros(2, dtype=F64)], eps=0.3, reduction="none"
    )
    assert vals[1] == 0 and vals[0] > 0


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda: grouped_sinkhorn_loss([torch.zeros(2)], torch.zeros(2)), TypeError, "both"),
        (
            lambda: grouped_sinkhorn_loss([torch.zeros(2)], [torch.zeros(2), torch.zeros(1)]),
            ValueError,
            "same length",
        ),
        (lambda: grouped_sinkhorn_loss(torch.zeros(2), torch.zeros(2)), ValueError, "x_groups"),
        (
            lambda: grouped_sinkhorn_loss(
                [torch.zeros(2)], [torch.zeros(2)], x_groups=torch.zeros(2)
            ),
            ValueError,
            "tensor form",
        ),
        (
            lambda: grouped_sinkhorn_loss([torch.zeros(2, 2)], [torch.zeros(2, 3)]),
            ValueError,
            "dimension",
        ),
        (
            lambda: grouped_sinkhorn_loss([torch.zeros(2)], [torch.zeros(2)], reduction="avg"),
            ValueError,
            "reduction",
        ),
        (
            lambda: grouped_sinkhorn_loss([torch.zeros(2)], [torch.zeros(2)], value="cost"),
            ValueError,
            "value",
        ),
        (
            lambda: sinkhorn_loss(torch.zeros(2), torch.zeros(2), reduction="max"),
            ValueError,
            "reduction",
        ),
        (lambda: sinkhorn_loss(torch.zeros(2), torch.zeros(2), value="plan"), ValueError, "value"),
        (lambda: sinkhorn_loss(torch.zeros(2), torch.tensor([math.nan])), ValueError, "finite"),
        (lambda: SinkhornLoss(reduction="avg"), ValueError, "reduction"),
        (lambda: GroupedSinkhornLoss(value="x"), ValueError, "value"),
        (lambda: Wasserstein1DLoss(reduction="avg"), ValueError, "reduction"),
        (
            lambda: wasserstein_1d_loss(torch.zeros(2), torch.zeros(2), reduction="avg"),
            ValueError,
            "reduction",
        ),
    ],
)
def test_bad_loss_input(call, error, match):
    with pytest.raises(error, match=match):
        call()


# ---------------------------------------------------------------- distribution matching


def test_distribution_matching_reproducible_with_generator_and_sizes():
    prior = ExpPrior()
    pred = torch.rand(2, 1, 3, 3, dtype=F64) * 4  # flattened: 18 cells

    def run(seed, **kw):
        return distribution_matching_loss(
            pred, prior, generator=torch.Generator().manual_seed(seed), **kw
        )

    assert torch.equal(run(0), run(0))
    assert not torch.equal(run(0), run(1))
    assert prior.calls[-1] == (18, pred.device, F64)  # M = N by default, pred's dtype
    run(0, num_samples=40)
    assert prior.calls[-1][0] == 40
    run(0, samples_per_prediction=49 / 9)
    assert prior.calls[-1][0] == round(18 * 49 / 9) == 98
    run(0, value="transport", scale=0.01)
    # equals the plain loss against the same sample
    target = prior.sample(18, generator=torch.Generator().manual_seed(0), dtype=F64)
    assert torch.allclose(run(0, scale=0.5), 0.5 * sinkhorn_loss(pred.reshape(-1), target))


def test_distribution_matching_module_forward_generator_overrides_the_stored_one():
    prior = ExpPrior()
    pred = torch.rand(12, dtype=F64) * 4
    module = DistributionMatchingLoss(prior, generator=torch.Generator().manual_seed(5))
    per_call = module(pred, generator=torch.Generator().manual_seed(0))
    functional = distribution_matching_loss(pred, prior, generator=torch.Generator().manual_seed(0))
    assert torch.equal(per_call, functional)
    stored = module(pred)  # falls back to the generator given at construction (seed 5)
    assert not torch.equal(stored, per_call)


def test_plus_plus_equals_sum_of_separate_group_losses():
    prior = ExpPrior(3.0)
    gen = torch.Generator().manual_seed(10)
    pred = (torch.rand(40, generator=gen, dtype=F64) * 6).requires_grad_()
    score = torch.rand(40, generator=gen, dtype=F64)
    score[:15] = 0.0  # ties, as Canny gives
    kw = {"samples_per_prediction": 2.5, "eps": 1.0, "scale": 0.01, **TIGHT}
    loss = distribution_matching_loss(
        pred, prior, score=score, split_q=0.3, generator=torch.Generator().manual_seed(3), **kw
    )
    target = prior.sample(100, generator=torch.Generator().manual_seed(3), dtype=F64)
    split = percentile_split(pred, score, target, q=0.3)
    assert not split.fallback
    sparse = sinkhorn(pred[split.pred_sparse], target[split.target_sparse], eps=1.0, **TIGHT).value
    dense = sinkhorn(pred[split.pred_dense], target[split.target_dense], eps=1.0, **TIGHT).value
    expected = 0.01 * (sparse + dense)
    assert torch.allclose(loss, expected, atol=1e-12, rtol=1e-10)
    (g_loss,) = torch.autograd.grad(loss, pred)
    (g_ref,) = torch.autograd.grad(expected, pred)
    assert torch.allclose(g_loss, g_ref, atol=1e-12)
    # the grouped loss is not the plain one
    plain = distribution_matching_loss(
        pred, prior, generator=torch.Generator().manual_seed(3), **kw
    )
    assert abs((plain - loss).item()) > 1e-6


def test_plus_plus_falls_back_to_plain_loss_for_tiny_groups():
    prior = ExpPrior()
    pred, score = torch.rand(6, dtype=F64), torch.rand(6, dtype=F64)  # round(0.3 * 6) = 2 sparse
    kw = {"generator": None, "eps": 0.3}
    plus = distribution_matching_loss(
        pred,
        prior,
        score=score,
        split_q=0.3,
        **{**kw, "generator": torch.Generator().manual_seed(0)},
    )
    plain = distribution_matching_loss(
        pred, prior, **{**kw, "generator": torch.Generator().manual_seed(0)}
    )
    assert torch.equal(plus, plain)


def test_module_draws_fresh_samples_and_matches_function():
    prior = ExpPrior()
    pred = torch.rand(12, dtype=F64) * 3
    loss = DistributionMatchingLoss(
        prior, num_samples=20, eps=0.3, generator=torch.Generator().manual_seed(4)
    )
    first, second = loss(pred), loss(pred)
    assert not torch.equal(first, second)  # a new sample each call
    ref = distribution_matching_loss(
        pred, prior, num_samples=20, eps=0.3, generator=torch.Generator().manual_seed(4)
    )
    assert torch.equal(first, ref)
    plus = DistributionMatchingLoss(prior, split_q=0.3, eps=0.3)
    with pytest.raises(ValueError, match="score="):
        plus(pred)
    assert torch.isfinite(plus(pred, torch.rand(12, dtype=F64)))
    assert "split_q=0.3" in repr(plus)


def test_sgd_on_distribution_matching_loss_moves_predictions_to_the_prior():
    prior = ExpPrior(2.0)
    reference = prior.sample(20000, generator=torch.Generator().manual_seed(0), dtype=F64)
    gen = torch.Generator().manual_seed(1)
    theta = torch.nn.Parameter(torch.rand(64, generator=gen, dtype=F64))  # U(0, 1): far from Exp(2)
    opt = torch.optim.SGD([theta], lr=0.25 * 64)  # step = 0.5 (x - T(x)) for the 1/N weights
    loss = DistributionMatchingLoss(prior, samples_per_prediction=2.0, eps=0.5, generator=gen)
    before = float(wasserstein_1d(theta.detach(), reference))
    for _ in range(5):
        opt.zero_grad()
        loss(theta).backward()
        opt.step()
    after = float(wasserstein_1d(theta.detach(), reference))
    assert before > 2.0
    assert after < 0.25 * before


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"num_samples": 5, "samples_per_prediction": 2.0}, ValueError, "at most one"),
        ({"num_samples": 0}, ValueError, "num_samples"),
        ({"samples_per_prediction": -1.0}, ValueError, "samples_per_prediction"),
        ({"score": torch.rand(8)}, ValueError, "split_q"),
        ({"split_q": 0.3}, ValueError, "score"),
        ({"score": torch.rand(8), "split_q": 1.0}, ValueError, r"\(0, 1\)"),
        ({"score": torch.rand(8), "split_q": 0.3, "ties": "up"}, ValueError, "ties"),
        ({"value": "cost"}, ValueError, "value"),
        ({"scale": math.inf}, ValueError, "scale"),
        ({"pred": torch.zeros(0)}, ValueError, "at least one"),
        ({"pred": torch.arange(8)}, TypeError, "floating"),
        ({"pred": torch.tensor([math.nan] * 8)}, ValueError, "finite"),
        ({"prior": object()}, TypeError, "sample"),
    ],
)
def test_distribution_matching_bad_input(kwargs, error, match):
    args = {"pred": torch.rand(8), "prior": ExpPrior()}
    args.update(kwargs)
    pred, prior = args.pop("pred"), args.pop("prior")
    with pytest.raises(error, match=match):
        distribution_matching_loss(pred, prior, **args)


def test_bad_prior_output_raises():
    class Broken:
        def sample(self, n, *, generator=None, device=None, dtype=torch.float32):
            return torch.zeros(n + 1)

    with pytest.raises(ValueError, match="must return"):
        distribution_matching_loss(torch.rand(4), Broken())
    with pytest.raises(TypeError, match="sample"):
        DistributionMatchingLoss(object())


# ---------------------------------------------------------------- exact 1-D loss


def test_wasserstein_1d_loss_reductions_and_module():
    gen = torch.Generator().manual_seed(8)
    x = torch.randn(4, 5, generator=gen, dtype=F64)
    y = torch.randn(4, 7, generator=gen, dtype=F64)
    per = wasserstein_1d(x, y, p=1)
    assert torch.equal(wasserstein_1d_loss(x, y, p=1, reduction="none"), per)
    assert torch.allclose(wasserstein_1d_loss(x, y, p=1, reduction="sum"), per.sum())
    assert torch.allclose(Wasserstein1DLoss(p=1)(x, y), per.mean())
    # entropic OT approaches the exact value as eps -> 0 (transport value >= exact)
    ent = sinkhorn_loss(
        x[..., None], y[..., None], eps=1e-3, value="transport", reduction="none", **TIGHT
    )
    exact = wasserstein_1d(x, y)
    assert torch.all(ent >= exact - 1e-9) and torch.allclose(ent, exact, atol=2e-2)
