r"""Ground costs between point clouds.

The named costs are powers of the Euclidean distance, :math:`C(x, y) = s\,\|x - y\|_2^p` with
:math:`p \ge 1` and a scale :math:`s > 0` (:class:`PowerCost`); every backend generates them on
the fly:

* ``"sqeuclidean"`` (:class:`SqEuclidean`): :math:`\|x - y\|_2^2` (not halved; GeomLoss's
  :math:`\tfrac12\|x - y\|^2` is ``SqEuclidean(scale=0.5)``).
* ``"euclidean"`` (:class:`Euclidean`): :math:`\|x - y\|_2`, with a zero (not NaN) gradient at
  ``x = y``.
* ``PowerCost(p)``: :math:`\|x - y\|_2^p` for any real ``p >= 1`` (name ``"power"``).

And a wrapper for user callables ``(x (B, N, D), y (B, M, D)) -> (B, N, M)``, usable with the
dense backend only (:class:`CallableCost`).

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

import math
from typing import Callable, Union

import torch
from torch import Tensor

__all__ = [
    "DIRECT_MAX_DIM",
    "CallableCost",
    "Cost",
    "Euclidean",
    "PowerCost",
    "PrecomputedCost",
    "SqEuclidean",
    "get_cost",
    "is_power_cost",
]

# Up to this dimension the squared distance is summed coordinate by coordinate (exact, no
# cancellation); above it the expansion |x|^2 + |y|^2 - 2<x, y> (one matmul) is used.
DIRECT_MAX_DIM = 4


class Cost:
    r"""Base class of ground costs.

    Attributes:
        name: ``"sqeuclidean"``, ``"euclidean"``, ``"power"`` (the :class:`PowerCost` family) or
            ``None`` for a user callable. Backends that generate the cost on the fly (online,
            Triton) accept named costs only.
        power: The exponent ``p`` in :math:`C = s\,\|x - y\|^p` for the named costs, used by the
            exact 1-D warm start; ``None`` for a callable.
        scale: The factor ``s`` of the named costs (1 for a callable).
    """

    name: str | None = None
    power: float | None = None
    scale: float = 1.0

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


class _SafePow(torch.autograd.Function):
    """``sq ** half_p`` whose derivative at ``sq = 0`` is 0 (the limit for ``half_p > 1/2``)."""

    @staticmethod
    def forward(ctx, sq: Tensor, half_p: float) -> Tensor:  # type: ignore[override]
        sq = sq.clamp_min(0.0)
        out = sq.pow(half_p)
        ctx.save_for_backward(sq, out)
        ctx.half_p = half_p
        return out

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        sq, out = ctx.saved_tensors
        pos = sq > 0
        safe = torch.where(pos, sq, torch.ones_like(sq))
        return torch.where(pos, grad * ctx.half_p * out / safe, 0.0), None


def _check_power(p: object) -> float:
    if isinstance(p, bool) or not isinstance(p, (int, float)):
        raise TypeError(f"p must be a real number >= 1, got {type(p).__name__} {p!r}")
    if not (math.isfinite(p) and p >= 1):
        raise ValueError(f"p must be a finite real number >= 1, got {p!r}")
    return float(p)


def _check_scale(scale: object) -> float:
    if isinstance(scale, bool) or not isinstance(scale, (int, float)):
        raise TypeError(f"scale must be a positive real number, got {type(scale).__name__}")
    if not (math.isfinite(scale) and scale > 0):
        raise ValueError(f"scale must be a finite number > 0, got {scale!r}")
    return float(scale)


class PowerCost(Cost):
    r"""The ground cost :math:`C(x, y) = s\,\|x - y\|_2^p`, :math:`p \ge 1`, :math:`s > 0`.

    Every backend generates it on the fly (dense, online, Triton). ``p = 2`` is
    :class:`SqEuclidean`, ``p = 1`` :class:`Euclidean`; any other ``p >= 1`` has the name
    ``"power"``. The gradient :math:`s\,p\,\|x - y\|^{p-2}(x - y)` is taken as 0 at ``x = y``
    (the limit for ``p > 1``, a subgradient for ``p = 1``).

    ``scale`` multiplies the cost: GeomLoss's ``SamplesLoss(p=2)`` uses
    :math:`\tfrac12\|x - y\|^2` (``SqEuclidean(scale=0.5)``) and, in general,
    :math:`\|x - y\|^p / p` (``PowerCost(p, scale=1 / p)``), with
    :math:`\varepsilon = \mathrm{blur}^p` in those units (see ``docs/migration.md``).

    Args:
        p: The exponent, a finite real number ``>= 1`` (the cost is then convex in
            :math:`x - y`, and the exact 1-D warm start applies).
        scale: The factor :math:`s > 0`.

    Example:
        >>> x = torch.tensor([[[0.0, 0.0]]]); y = torch.tensor([[[3.0, 4.0]]])
        >>> PowerCost(3).matrix(x, y)  # |x - y| = 5
        tensor([[[125.]]])
        >>> SqEuclidean(scale=0.5).matrix(x, y)
        tensor([[[12.5000]]])
    """

    def __init__(self, p: float = 2.0, *, scale: float = 1.0):
        self.power = _check_power(p)
        self.scale = _check_scale(scale)
        self.name = {2.0: "sqeuclidean", 1.0: "euclidean"}.get(self.power, "power")

    def _unscaled(self, x: Tensor, y: Tensor) -> Tensor:
        p = self.power
        if p == 2.0:
            return _sq_distances(x, y)
        if x.shape[-1] == 1:
            diff = (x - y.transpose(1, 2)).abs()
            return diff if p == 1.0 else diff.pow(p)
        if p == 1.0:
            return _SafeSqrt.apply(_sq_distances(x, y))
        return _SafePow.apply(_sq_distances(x, y), 0.5 * p)

    def matrix(self, x: Tensor, y: Tensor) -> Tensor:
        out = self._unscaled(x, y)
        return out if self.scale == 1.0 else out * self.scale

    def coefficient(self, sq: Tensor) -> Tensor:
        r""":math:`k` with :math:`\partial_x C = k\,(x - y)`, from squared distances (B, N, M).

        :math:`k = s\,p\,\|x - y\|^{p - 2}`, 0 where ``sq == 0`` unless ``p == 2``.
        """
        p, s = self.power, self.scale
        if p == 2.0:
            return torch.full_like(sq, 2.0 * s)
        pos = sq > 0
        safe = torch.where(pos, sq, torch.ones_like(sq))
        k = safe.rsqrt() if p == 1.0 else safe.pow(0.5 * p - 1.0)
        return torch.where(pos, (s * p) * k, 0.0)

    def vjp(self, x: Tensor, y: Tensor, weights: Tensor) -> tuple[Tensor, Tensor]:
        # d/dx_i sum_j G_ij C_ij = sum_j G_ij k_ij (x_i - y_j), and -(...) with (y_j - x_i) for y
        w = weights * self.coefficient(_sq_distances(x, y))
        gx = x * w.sum(2, keepdim=True) - torch.bmm(w, y)
        gy = y * w.sum(1).unsqueeze(-1) - torch.bmm(w.transpose(1, 2), x)
        return gx, gy

    def diameter(self, x: Tensor, y: Tensor) -> Tensor:
        extent = _bbox_sq_extent(x, y)
        p = self.power
        out = extent if p == 2.0 else (extent.sqrt() if p == 1.0 else extent.pow(0.5 * p))
        return out * self.scale

    def __repr__(self) -> str:
        scale = "" if self.scale == 1.0 else f"scale={self.scale!r}"
        if type(self) is PowerCost:
            return f"PowerCost(p={self.power!r}{', ' + scale if scale else ''})"
        return f"{type(self).__name__}({scale})"


class SqEuclidean(PowerCost):
    r"""Squared Euclidean cost :math:`C(x, y) = s\,\|x - y\|_2^2` (``s = 1``: not halved).

    Args:
        scale: The factor :math:`s > 0` (``0.5`` for GeomLoss's :math:`\tfrac12\|x - y\|^2`).
    """

    def __init__(self, *, scale: float = 1.0):
        super().__init__(2.0, scale=scale)


class Euclidean(PowerCost):
    r"""Euclidean cost :math:`C(x, y) = s\,\|x - y\|_2`; its gradient at ``x = y`` is taken as 0.

    Args:
        scale: The factor :math:`s > 0`.
    """

    def __init__(self, *, scale: float = 1.0):
        super().__init__(1.0, scale=scale)


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


class PrecomputedCost(Cost):
    """Marker cost of a problem given by its cost matrix (``sinkhorn(cost_matrix=...)``).

    The matrix lives in the :class:`~sinkmatch.backends.base.Problem`; only the dense backend
    solves such problems, and nothing computes a cost from points: :meth:`matrix` raises.
    """

    def matrix(self, x: Tensor, y: Tensor) -> Tensor:
        raise ValueError(
            "this problem was given by a precomputed cost_matrix: there are no points to "
            "compute a cost from (only the dense backend solves it)"
        )

    def diameter(self, x: Tensor, y: Tensor) -> Tensor:
        return self.matrix(x, y)


_NAMED = {"sqeuclidean": SqEuclidean, "euclidean": Euclidean}


def is_power_cost(cost: object) -> bool:
    r"""Whether ``cost`` is a named cost :math:`s\,\|x - y\|^p` (a :class:`PowerCost`).

    Example:
        >>> is_power_cost(get_cost("euclidean")), is_power_cost(CallableCost(torch.cdist))
        (True, False)
    """
    return isinstance(cost, PowerCost)


def get_cost(cost: Union[str, Cost, Callable[[Tensor, Tensor], Tensor]]) -> Cost:
    r"""Resolve a cost specification.

    Args:
        cost: ``"sqeuclidean"`` (:math:`\|x - y\|^2`), ``"euclidean"`` (:math:`\|x - y\|`), a
            :class:`Cost` instance (returned as is: ``PowerCost(p, scale=s)`` for
            :math:`s\,\|x - y\|^p`) or a callable ``(x (B, N, D), y (B, M, D)) -> (B, N, M)``.

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
