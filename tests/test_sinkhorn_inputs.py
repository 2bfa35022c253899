"""Every bad input raises an exception that names the argument and shows what was received."""

from __future__ import annotations

import math

import pytest
import torch

from sinkmatch.solver import sinkhorn

X = torch.randn(4, 2)
Y = torch.randn(3, 2)


@pytest.mark.parametrize(
    "kwargs,exc,pattern",
    [
        (dict(x=[1.0, 2.0]), TypeError, r"x must be a torch.Tensor, got list"),
        (dict(y=torch.arange(3)), TypeError, r"y must have a floating dtype.*int64"),
        (dict(x=torch.randn(2, 3, 4, 1)), ValueError, r"x must have shape .*\(2, 3, 4, 1\)"),
        (dict(x=torch.randn(0, 2)), ValueError, r"x must hold at least one point"),
        (dict(y=torch.randn(3, 5)), ValueError, r"same point dimension D.*\(4, 2\).*\(3, 5\)"),
        (
            dict(x=torch.randn(2, 4, 2), y=torch.randn(3, 3, 2)),
            ValueError,
            r"same batch size.*\(2, 4, 2\).*\(3, 3, 2\)",
        ),
        (
            dict(x=torch.tensor([[0.0, math.nan]] * 4)),
            ValueError,
            r"x must be finite, got 4 NaN/inf",
        ),
        (dict(y=torch.full((3, 2), math.inf)), ValueError, r"y must be finite"),
        (
            dict(a=torch.tensor([1.0, -1.0, 1.0, 1.0])),
            ValueError,
            r"a must be nonnegative, got min -1",
        ),
        (dict(b=torch.zeros(3)), ValueError, r"b must have positive total mass.*problems \[0\]"),
        (dict(a=torch.tensor([1.0, math.nan, 1.0, 1.0])), ValueError, r"a must be finite"),
        (dict(a=torch.ones(5)), ValueError, r"a must have shape \(4,\) or \(1, 4\).*\(5,\)"),
        (dict(a=torch.ones(4, dtype=torch.int64)), TypeError, r"a must have a floating dtype"),
        (dict(b=[1.0, 1.0, 1.0]), TypeError, r"b must be None or a torch.Tensor, got list"),
        (dict(eps=0.0), ValueError, r"eps must be finite and > 0, got 0.0"),
        (dict(eps=-1), ValueError, r"eps must be finite and > 0, got -1"),
        (dict(eps=math.inf), ValueError, r"eps must be finite"),
        (dict(eps="0.1"), TypeError, r"eps must be a positive float, got str"),
        (dict(eps=True), TypeError, r"eps must be a positive float"),
        (dict(eps_start=-2.0), ValueError, r"eps_start must be finite and > 0"),
        (dict(value="sinkhorn2"), ValueError, r"value must be one of .*'sinkhorn2'"),
        (dict(grad="implicit"), ValueError, r"grad must be one of .*'implicit'"),
        (dict(cost="l1"), ValueError, r"cost must be one of .*'l1'"),
        (dict(backend="keops"), ValueError, r"backend must be one of .*'keops'"),
        (dict(max_iter=0), ValueError, r"max_iter must be >= 1, got 0"),
        (dict(max_iter=10.0), TypeError, r"max_iter must be an int, got float"),
        (dict(check_every=0), ValueError, r"check_every must be >= 1"),
        (dict(tol=-1.0), ValueError, r"tol must be a float >= 0, got -1.0"),
        (
            dict(eps_scaling=1.5),
            ValueError,
            r"eps_scaling must be None or a float in \(0, 1\), got 1.5",
        ),
        (dict(init="zeros"), ValueError, r"init must be 'auto', None, 'exact1d' or a tuple"),
        (
            dict(init=(torch.zeros(4),)),
            TypeError,
            r"init must be 'auto', None, 'exact1d' or a tuple \(f, g\)",
        ),
        (
            dict(init=(torch.zeros(4), torch.zeros(2))),
            ValueError,
            r"init\[1\] \(g\) must have shape \(3,\)",
        ),
    ],
)
def test_bad_inputs_raise(kwargs, exc, pattern):
    args = dict(x=X, y=Y)
    args.update(kwargs)
    x, y = args.pop("x"), args.pop("y")
    with pytest.raises(exc, match=pattern):
        sinkhorn(x, y, **args)


def test_mixed_devices_raise():
    meta = torch.ones(3, device="meta")
    with pytest.raises(ValueError, match=r"same device.*meta"):
        sinkhorn(X, Y, b=meta)


def test_unbatched_input_broadcasts_against_batched():
    yb = torch.stack([Y, Y + 1])
    res = sinkhorn(X, yb, eps=0.5)
    assert res.value.shape == (2,)
    torch.testing.assert_close(res.value[0], sinkhorn(X, Y, eps=0.5).value, rtol=1e-5, atol=1e-6)
