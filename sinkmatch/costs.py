r"""Ground costs between point clouds.

Two named costs and a wrapper for user callables:

* ``"sqeuclidean"``: :math:`C(x, y) = \|x - y\|_2^2` (not halved).
* ``"euclidean"``: :math:`C(x, y) = \|x - y\|_2`, with a zero (not NaN) gradient at ``x = y``.
* a callable ``(x (B, N, D), y (B, M, D)) -> (B, N, M)``, usable with the dense backend only.

Every cost offers the cost matrix of a block of points (``matrix``), an upper bound on its
largest entry (``diameter``, used as the default start of ε-scaling) and, for the named costs,
the vector-Jacobian product of the matrix (``vjp``) that the streaming backward of the online
backend needs.

Example:
    >>> import torch
    >>> from sinkmatch.costs import get_cost
    >>> cost = get_cost("sqeuclidean")
    >>> cost.matrix(torch.tensor([[[0.0], [1.0]]]), torch.tensor([[[3.0]]]))
    tensor([[[9.],
             [4.]]])
"""

from __future__ import annotations

from typing import Callable, Union

import torch
from torch import Tensor

__all__ = ["DIRECT_MAX_DIM", "CallableCost", "Cost", "Euclidean", "SqEuclidean", "get_cost"]

# Up to this dimension the squared distance is summed coordinate by coordinate (exact, no
# cancellation); above it the expansion |x|^2 + |y|^2 - 2<x, y> (one matmul) is used.
DIRECT_MAX_DIM = 4


class Cost:
    """Base class of ground costs.

    Attributes:
        name: ``"sqeuclidean"``, ``"euclidean"`` or ``None`` for a user callable. Backends that
            generate the cost on the fly (online, Triton) accept named costs only.
        power: The exponent ``p`` in :math:`C = |x - y|^p` for the named costs (2 or 1), used by
            the exact 1-D warm start; ``None`` for a callable.
    """

    name: str | None = None
    power: int | None = None

    def matrix(self, x: Tensor, y: Tensor) -> Tensor:
        """Cost matrix.

        Args:
            x ((B, N, D) Tensor): Row points.
            y ((B, M, D) Tensor): Column points.

        Returns:
            (B, N, M) Tensor: :math:`C_{ij} = C(x_i, y_j)`, differentiable in ``x`` and ``y``.
        """
        raise NotImplementedError

    def vjp(self, x: Tensor, y: Tensor, weights: Tensor) -> tuple[Tensor, Tensor]:
        r"""Vector-Jacobian product of :meth:`matrix`.

        Args:
            x ((B, N, D) Tensor): Row points.
            y ((B, M, D) Tensor): Column points.
            weights ((B, N, M) Tensor): Cotangent :math:`G_{ij}` of the cost matrix.

        Returns:
            tuple: ``(gx, gy)`` with
            ``gx`` (B, N, D) :math:`= \sum_j G_{ij}\,\partial_x C(x_i, y_j)`
            and ``gy`` (B, M, D) :math:`= \sum_i G_{ij}\,\partial_y C(x_i, y_j)`.
        """
        raise NotImplementedError(f"cost {self!r} has no closed-form vector-Jacobian product")

    def diameter(self, x: Tensor, y: Tensor) -> Tensor:
        r"""Upper bound on the largest cost between (and within) ``x`` and ``y``.

        Args:
            x ((B, N, D) Tensor): Row points.
            y ((B, M, D) Tensor): Column points.

        Returns:
            (B,) Tensor: per problem, an upper bound on :math:`\max C(u, v)` over all points.
        """
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


def _bbox_sq_extent(x: Tensor, y: Tensor) -> Tensor:
    """Squared diagonal of the bounding box of ``x`` and ``y`` per problem, (B,)."""
    pts = torch.cat([x, y], dim=1)
    extent = pts.amax(dim=1) - pts.amin(dim=1)
    return (extent * extent).sum(dim=-1)


def _sq_distances(x: Tensor, y: Tensor) -> Tensor:
    """Squared Euclidean distances (B, N, M), exact for small D, one matmul for large D."""
    d = x.shape[-1]
    if d <= DIRECT_MAX_DIM:
        out = None
        for k in range(d):
            diff = x[..., k, None] - y[..., None, :, k]
            out = diff * diff if out is None else out + diff * diff
        return out
    # Centring first limits the cancellation of the expansion.
    center = y.mean(dim=1, keepdim=True).detach()
    xc, yc = x - center, y - center
    sq = (xc * xc).sum(-1)[..., :, None] + (yc * yc).sum(-1)[..., None, :]
    return (sq - 2.0 * torch.bmm(xc, yc.transpose(1, 2))).clamp_min(0.0)


class SqEuclidean(Cost):
    r"""Squared Euclidean cost :math:`C(x, y) = \|x - y\|_2^2`."""

    name = "sqeuclidean"
    power = 2

    def matrix(self, x: Tensor, y: Tensor) -> Tensor:
        return _sq_distances(x, y)

    def vjp(self, x: Tensor, y: Tensor, weights: Tensor) -> tuple[Tensor, Tensor]:
        # d/dx_i sum_j G_ij |x_i - y_j|^2 = 2 (x_i sum_j G_ij - sum_j G_ij y_j)
        gx = 2.0 * (x * weights.sum(2, keepdim=True) - torch.bmm(weights, y))
        gy = 2.0 * (y * weights.sum(1).unsqueeze(-1) - torch.bmm(weights.transpose(1, 2), x))
        return gx, gy

    def diameter(self, x: Tensor, y: Tensor) -> Tensor:
        return _bbox_sq_extent(x, y)


class _SafeSqrt(torch.autograd.Function):
    """``sqrt`` whose derivative at 0 is 0 instead of ``inf`` (and hence NaN after chain rule)."""

    @staticmethod
    def forward(ctx, sq: Tensor) -> Tensor:  # type: ignore[override]
        out = sq.clamp_min(0.0).sqrt()
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:  # type: ignore[override]
        (out,) = ctx.saved_tensors
        pos = out > 0
        return torch.where(pos, grad / (2.0 * torch.where(pos, out, torch.ones_like(out))), 0.0)


class Euclidean(Cost):
    r"""Euclidean cost :math:`C(x, y) = \|x - y\|_2`; its gradient at ``x = y`` is taken as 0."""

    name = "euclidean"
    power = 1

    def matrix(self, x: Tensor, y: Tensor) -> Tensor:
        if x.shape[-1] == 1:
            return (x - y.transpose(1, 2)).abs()
        return _SafeSqrt.apply(_sq_distances(x, y))

    def vjp(self, x: Tensor, y: Tensor, weights: Tensor) -> tuple[Tensor, Tensor]:
        dist = _sq_distances(x, y).sqrt()
        w = torch.where(dist > 0, weights / torch.where(dist > 0, dist, 1.0), 0.0)
        gx = x * w.sum(2, keepdim=True) - torch.bmm(w, y)
        gy = y * w.sum(1).unsqueeze(-1) - torch.bmm(w.transpose(1, 2), x)
        return gx, gy

    def diameter(self, x: Tensor, y: Tensor) -> Tensor:
        return _bbox_sq_extent(x, y).sqrt()


class CallableCost(Cost):
    """A user cost function ``fn(x (B, N, D), y (B, M, D)) -> (B, N, M)`` (dense backend only).

    Args:
        fn: The cost function; it must be differentiable with torch operations if gradients
            are wanted, and return a tensor of shape ``(B, N, M)``.
    """

    def __init__(self, fn: Callable[[Tensor, Tensor], Tensor]):
        self.fn = fn

    def matrix(self, x: Tensor, y: Tensor) -> Tensor:
        out = self.fn(x, y)
        expected = (x.shape[0], x.shape[1], y.shape[1])
        if not isinstance(out, Tensor) or tuple(out.shape) != expected:
            got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
            raise ValueError(f"cost callable must return a tensor of shape {expected}, got {got}")
        return out

    def diameter(self, x: Tensor, y: Tensor) -> Tensor:
        with torch.no_grad():
            big = torch.stack(
                [
                    self.matrix(x, y).flatten(1).amax(1),
                    self.matrix(x, x).flatten(1).amax(1),
                    self.matrix(y, y).flatten(1).amax(1),
                ]
            )
        return big.amax(0)

    def __repr__(self) -> str:
        return f"CallableCost({self.fn!r})"


_NAMED = {"sqeuclidean": SqEuclidean, "euclidean": Euclidean}


def get_cost(cost: Union[str, Cost, Callable[[Tensor, Tensor], Tensor]]) -> Cost:
    r"""Resolve a cost specification.

    Args:
        cost: ``"sqeuclidean"`` (:math:`\|x - y\|^2`), ``"euclidean"`` (:math:`\|x - y\|`), a
            :class:`Cost` instance (returned as is) or a callable
            ``(x (B, N, D), y (B, M, D)) -> (B, N, M)``.

    Returns:
        Cost: The cost object.

    Raises:
        ValueError: Unknown cost name.
        TypeError: Neither a string, a Cost nor a callable.

    Example:
        >>> get_cost("euclidean")
        Euclidean()
    """
    if isinstance(cost, Cost):
        return cost
    if isinstance(cost, str):
        if cost not in _NAMED:
            raise ValueError(f"cost must be one of {sorted(_NAMED)} or a callable, got {cost!r}")
        return _NAMED[cost]()
    if callable(cost):
        return CallableCost(cost)
    raise TypeError(f"cost must be a string, a Cost or a callable, got {type(cost).__name__}")
