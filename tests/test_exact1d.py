"""Exact 1-D OT: value against POT's exact solvers, dual potentials, gradients, input checks."""

from __future__ import annotations

import doctest

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import sinkmatch.exact1d
from sinkmatch.exact1d import exact_1d_potentials, wasserstein_1d

ot = pytest.importorskip("ot")


def test_doctests():
    result = doctest.testmod(sinkmatch.exact1d)
    assert result.attempted > 0 and result.failed == 0


def _problem(rng: np.random.Generator, *, ties: bool = True, zeros: bool = True):
    """A random weighted problem with N != M in general, ties and zero weights."""
    n, m = rng.integers(1, 12, size=2)
    x = rng.normal(size=n)
    y = rng.normal(size=m)
    if ties:  # rounding creates many coinciding points
        x, y = np.round(x, 1), np.round(y, 1)
    a, b = rng.random(n), rng.random(m)
    if zeros:
        a[rng.random(n) < 0.25] = 0.0
        b[rng.random(m) < 0.25] = 0.0
        a[rng.integers(n)] += 0.5  # at least one positive weight
        b[rng.integers(m)] += 0.5
    return x, y, a / a.sum(), b / b.sum()


def _t(v: np.ndarray) -> torch.Tensor:
    return torch.tensor(v, dtype=torch.float64)


def _cost(x, y, p):
    return np.abs(x[:, None] - y[None, :]) ** p


@pytest.mark.parametrize("p", [1, 1.5, 2, 3])
def test_matches_emd2_weighted_with_ties_and_zeros(p):
    rng = np.random.default_rng(int(10 * p))
    for _ in range(40):
        x, y, a, b = _problem(rng)
        ref = ot.emd2(a, b, _cost(x, y, p))
        got = wasserstein_1d(_t(x), _t(y), _t(a), _t(b), p=p)
        assert got.shape == ()
        assert abs(float(got) - ref) < 1e-10


@pytest.mark.parametrize("p", [1, 2, 3])
def test_matches_pot_wasserstein_1d_batched(p):
    rng = np.random.default_rng(p)
    batch, n, m = 5, 7, 4
    x, y = rng.normal(size=(batch, n)), rng.normal(size=(batch, m))
    a, b = rng.random((batch, n)), rng.random((batch, m))
    a, b = a / a.sum(1, keepdims=True), b / b.sum(1, keepdims=True)
    # POT batches over the trailing axis.
    ref = ot.wasserstein_1d(x.T, y.T, a.T, b.T, p=p)
    got = wasserstein_1d(_t(x), _t(y), _t(a), _t(b), p=p)
    assert got.shape == (batch,)
    np.testing.assert_allclose(got.numpy(), ref, rtol=0, atol=1e-10)


def test_batched_equals_loop_and_layouts_agree():
    rng = np.random.default_rng(3)
    x, y = _t(rng.normal(size=(4, 6))), _t(rng.normal(size=(4, 9)))
    a = _t(rng.random((4, 6)))
    batched = wasserstein_1d(x, y, a)
    loop = torch.stack([wasserstein_1d(x[k], y[k], a[k]) for k in range(4)])
    assert torch.allclose(batched, loop, rtol=0, atol=1e-14)
    assert torch.allclose(wasserstein_1d(x[..., None], y[..., None], a), batched, atol=0)
    # weights (N,) are shared by the batch
    shared = wasserstein_1d(x, y, a[0])
    assert torch.allclose(shared, wasserstein_1d(x, y, a[0].expand(4, 6)), atol=0)


def test_unnormalized_weights_are_normalized():
    rng = np.random.default_rng(4)
    x, y, a, b = _problem(rng, ties=False)
    ref = wasserstein_1d(_t(x), _t(y), _t(a), _t(b))
    got = wasserstein_1d(_t(x), _t(y), _t(7.0 * a), _t(0.01 * b))
    assert abs(float(got - ref)) < 1e-13


def test_known_values_and_dtypes():
    x = torch.tensor([0.0, 1.0, 2.0])
    assert torch.allclose(wasserstein_1d(x, x + 0.5, p=1), torch.tensor(0.5))
    assert torch.allclose(wasserstein_1d(x, x + 0.5, p=2), torch.tensor(0.25))
    # all mass at one point: W_2^2 = E|X - c|^2
    assert torch.allclose(wasserstein_1d(x, torch.tensor([1.0])), torch.tensor(2.0 / 3.0))
    half = wasserstein_1d(x.half(), (x + 0.5).half(), p=1)
    assert half.dtype == torch.float32
    mixed = wasserstein_1d(x, x.double() + 0.5, p=1)
    assert mixed.dtype == torch.float64


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    shift=st.floats(-5, 5),
    p=st.sampled_from([1.0, 2.0, 2.5]),
)
def test_properties_symmetry_translation(seed, shift, p):
    rng = np.random.default_rng(seed)
    x, y, a, b = _problem(rng)
    w = wasserstein_1d(_t(x), _t(y), _t(a), _t(b), p=p)
    assert w >= 0
    assert abs(float(w - wasserstein_1d(_t(y), _t(x), _t(b), _t(a), p=p))) < 1e-10
    moved = wasserstein_1d(_t(x + shift), _t(y + shift), _t(a), _t(b), p=p)
    assert abs(float(w - moved)) < 1e-9 * (1 + abs(shift)) ** p
    # a pure translation of one measure costs |shift|^p
    assert (
        abs(float(wasserstein_1d(_t(x), _t(x + shift), _t(a), _t(a), p=p)) - abs(shift) ** p) < 1e-9
    )


# ---------------------------------------------------------------- potentials


@pytest.mark.parametrize("ties", ["down", "average"])
@pytest.mark.parametrize("p", [1, 2, 3])
def test_potentials_feasible_and_tight(p, ties):
    rng = np.random.default_rng(100 + p)
    for _ in range(40):
        x, y, a, b = _problem(rng)
        f, g = exact_1d_potentials(_t(x), _t(y), _t(a), _t(b), p=p, ties=ties)
        f, g = f.numpy(), g.numpy()
        assert f.shape == x.shape and g.shape == y.shape
        assert np.isfinite(f).all() and np.isfinite(g).all()
        reduced = _cost(x, y, p) - f[:, None] - g[None, :]
        assert reduced.min() >= -1e-9  # feasible for every pair, zero-weight points included
        ref = ot.emd2(a, b, _cost(x, y, p))
        assert abs(a @ f + b @ g - ref) < 1e-9  # tight
        assert abs(a @ f - b @ g) < 1e-9  # symmetric gauge


def test_potentials_tight_on_optimal_plan_support():
    rng = np.random.default_rng(7)
    for _ in range(20):
        x, y, a, b = _problem(rng, ties=False, zeros=False)
        f, g = exact_1d_potentials(_t(x), _t(y), _t(a), _t(b))
        plan = ot.emd(a, b, _cost(x, y, 2))
        reduced = _cost(x, y, 2) - f.numpy()[:, None] - g.numpy()[None, :]
        assert np.abs(reduced[plan > 1e-12]).max() < 1e-9


def test_interior_zero_weight_points_get_the_c_transform():
    rng = np.random.default_rng(8)
    x = np.sort(rng.normal(size=9))
    y = rng.normal(size=6)
    a = rng.random(9) + 0.1
    a[[2, 5]] = 0.0  # interior zero-weight points
    b = rng.random(6) + 0.1
    a, b = a / a.sum(), b / b.sum()
    f, g = exact_1d_potentials(_t(x), _t(y), _t(a), _t(b))
    c_transform = (_cost(x, y, 2) - g.numpy()[None, :]).min(axis=1)
    np.testing.assert_allclose(f.numpy()[[2, 5]], c_transform[[2, 5]], atol=1e-12)


def test_potentials_batched_equal_loop_and_unbatched_shape():
    rng = np.random.default_rng(9)
    x, y = _t(rng.normal(size=(3, 5))), _t(rng.normal(size=(3, 8)))
    f, g = exact_1d_potentials(x[..., None], y[..., None])
    assert f.shape == (3, 5) and g.shape == (3, 8)
    for k in range(3):
        fk, gk = exact_1d_potentials(x[k], y[k])
        assert fk.shape == (5,) and gk.shape == (8,)
        assert torch.allclose(f[k], fk, atol=1e-13) and torch.allclose(g[k], gk, atol=1e-13)


def test_average_ties_split_the_slack_of_a_degenerate_dual():
    x = torch.tensor([0.0, 1.0], dtype=torch.float64)
    down = exact_1d_potentials(x, x)
    mean = exact_1d_potentials(x, x, ties="average")
    # "down" makes the zero-mass cell (1, 0) tight; the mean of both staircases is centred
    assert torch.allclose(down.f, torch.tensor([-0.5, 0.5], dtype=torch.float64))
    assert torch.allclose(mean.f, torch.zeros(2, dtype=torch.float64))
    assert torch.allclose(mean.g, torch.zeros(2, dtype=torch.float64))
    with pytest.raises(ValueError, match="ties must be one of"):
        exact_1d_potentials(x, x, ties="up")


def test_potentials_single_points():
    f, g = exact_1d_potentials(torch.tensor([1.0]), torch.tensor([3.0]))
    assert torch.allclose(f + g, torch.tensor([4.0]))


# ---------------------------------------------------------------- gradients


@pytest.mark.parametrize("p", [1.5, 2, 3])
def test_gradcheck_positions(p):
    rng = np.random.default_rng(11)
    # distinct positions and cumulative weights: the value is smooth there
    x = _t(rng.normal(size=(2, 5))).requires_grad_()
    y = _t(rng.normal(size=(2, 4))).requires_grad_()
    a, b = _t(rng.random((2, 5)) + 0.1), _t(rng.random((2, 4)) + 0.1)
    assert torch.autograd.gradcheck(lambda x, y: wasserstein_1d(x, y, a, b, p=p), (x, y))


def test_position_gradient_is_plan_weighted_for_p2():
    rng = np.random.default_rng(12)
    x, y, a, b = _problem(rng, ties=False, zeros=False)
    xt = _t(x).requires_grad_()
    wasserstein_1d(xt, _t(y), _t(a), _t(b)).backward()
    plan = ot.emd(a, b, _cost(x, y, 2))
    expected = 2 * (a * x - plan @ y)  # d/dx_i sum_ij P_ij (x_i - y_j)^2
    np.testing.assert_allclose(xt.grad.numpy(), expected, atol=1e-12)


def test_weight_gradient_is_centred_potential():
    rng = np.random.default_rng(13)
    x, y = np.sort(rng.normal(size=6)), rng.normal(size=5)
    a, b = rng.random(6) + 0.1, rng.random(5) + 0.1
    a, b = a / a.sum(), b / b.sum()
    at = _t(a).requires_grad_()
    wasserstein_1d(_t(x), _t(y), at, _t(b)).backward()
    f, _ = exact_1d_potentials(_t(x), _t(y), _t(a), _t(b))
    centred = f - (_t(a) * f).sum()
    assert torch.allclose(at.grad, centred, atol=1e-10)


# ---------------------------------------------------------------- input checks


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"x": [0.0, 1.0]}, TypeError, "x must be a torch.Tensor"),
        ({"x": torch.tensor([1, 2])}, TypeError, "floating"),
        ({"x": torch.zeros(2, 3, 2)}, ValueError, r"\(B, N, 1\)"),
        ({"x": torch.zeros(0)}, ValueError, "at least one point"),
        ({"x": torch.tensor([0.0, float("nan")])}, ValueError, "finite"),
        ({"y": torch.zeros(2, 3)}, ValueError, "batched"),
        ({"a": torch.tensor([1.0, -1.0, 1.0])}, ValueError, "nonnegative"),
        ({"a": torch.zeros(3)}, ValueError, "total mass"),
        ({"a": torch.ones(4)}, ValueError, "shape"),
        ({"p": 0.5}, ValueError, ">= 1"),
        ({"p": "2"}, TypeError, "p must be"),
    ],
)
def test_bad_input_raises(kwargs, error, match):
    args = {"x": torch.zeros(3), "y": torch.ones(2), "a": None, "p": 2}
    args.update(kwargs)
    p = args.pop("p")
    with pytest.raises(error, match=match):
        wasserstein_1d(args["x"], args["y"], args["a"], p=p)
    with pytest.raises(error, match=match):
        exact_1d_potentials(args["x"], args["y"], args["a"], p=p)


def test_batch_mismatch_raises():
    with pytest.raises(ValueError, match="same batch size"):
        wasserstein_1d(torch.zeros(2, 3), torch.zeros(3, 3))
