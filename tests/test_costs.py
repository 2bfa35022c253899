"""Ground costs: values, safe gradients, closed-form vector-Jacobian products, diameters."""

from __future__ import annotations

import pytest
import torch

from sinkmatch.costs import CallableCost, Euclidean, SqEuclidean, get_cost


def _points(b, n, d, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, n, d, generator=g, dtype=torch.float64)


@pytest.mark.parametrize("d", [1, 2, 5, 64])
def test_sqeuclidean_matches_direct(d):
    x, y = _points(2, 7, d, 1), _points(2, 5, d, 2)
    ref = ((x[:, :, None] - y[:, None]) ** 2).sum(-1)
    torch.testing.assert_close(SqEuclidean().matrix(x, y), ref, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("d", [1, 3, 8])
def test_euclidean_matches_direct(d):
    x, y = _points(1, 6, d, 3), _points(1, 4, d, 4)
    ref = ((x[:, :, None] - y[:, None]) ** 2).sum(-1).sqrt()
    torch.testing.assert_close(Euclidean().matrix(x, y), ref, rtol=1e-8, atol=1e-8)


@pytest.mark.parametrize("d", [1, 3])
def test_euclidean_gradient_is_zero_not_nan_at_coincident_points(d):
    x = torch.zeros(1, 2, d, dtype=torch.float64, requires_grad=True)
    y = torch.zeros(1, 3, d, dtype=torch.float64)
    Euclidean().matrix(x, y).sum().backward()
    assert torch.isfinite(x.grad).all()
    assert torch.equal(x.grad, torch.zeros_like(x))


@pytest.mark.parametrize("cost", [SqEuclidean(), Euclidean()])
@pytest.mark.parametrize("d", [1, 2, 6])
def test_vjp_matches_autograd(cost, d):
    x = _points(2, 5, d, 5).requires_grad_()
    y = _points(2, 4, d, 6).requires_grad_()
    w = torch.rand(2, 5, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(7))
    gx_ref, gy_ref = torch.autograd.grad(cost.matrix(x, y), (x, y), grad_outputs=w)
    gx, gy = cost.vjp(x.detach(), y.detach(), w)
    torch.testing.assert_close(gx, gx_ref, rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(gy, gy_ref, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize(
    "cost", [SqEuclidean(), Euclidean(), CallableCost(lambda x, y: torch.cdist(x, y))]
)
def test_diameter_bounds_every_cost(cost):
    x, y = _points(3, 9, 2, 8), _points(3, 6, 2, 9)
    diam = cost.diameter(x, y)
    assert diam.shape == (3,)
    for u, v in ((x, y), (x, x), (y, y)):
        assert (cost.matrix(u, v).flatten(1).amax(1) <= diam + 1e-12).all()


def test_one_d_sq_diameter_is_squared_range():
    x = torch.tensor([[[0.0], [3.0]]])
    y = torch.tensor([[[-1.0]]])
    assert SqEuclidean().diameter(x, y).item() == 16.0


def test_get_cost_resolves_and_rejects():
    assert isinstance(get_cost("sqeuclidean"), SqEuclidean)
    assert isinstance(get_cost("euclidean"), Euclidean)
    c = SqEuclidean()
    assert get_cost(c) is c
    assert isinstance(get_cost(lambda x, y: x.sum() + y.sum()), CallableCost)
    with pytest.raises(ValueError, match="'l2'"):
        get_cost("l2")
    with pytest.raises(TypeError, match="int"):
        get_cost(3)


def test_callable_cost_checks_output_shape():
    bad = CallableCost(lambda x, y: torch.zeros(2, 2))
    with pytest.raises(ValueError, match=r"\(1, 3, 4\)"):
        bad.matrix(torch.zeros(1, 3, 1), torch.zeros(1, 4, 1))
