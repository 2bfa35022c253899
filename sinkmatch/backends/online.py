r"""Online (blocked) softmin backend: O(N + M) memory per problem.

The cost is generated tile by tile and never stored as a ``(B, N, M)`` tensor (the tiling lives
in :mod:`sinkmatch.plan`). The forward pass is :func:`~sinkmatch.plan.tiled_logsumexp`; the
backward pass streams over the same tiles, recomputing each tile's plan

.. math::

    \pi_{ij} = \exp\big(h_j - C_{ij}/\varepsilon - \mathrm{lse}_i\big),

so that it too needs no ``(B, N, M)`` storage:

* :math:`\partial \mathcal{L} / \partial h_j = -\varepsilon \sum_i \bar o_i \pi_{ij}`,
* :math:`\partial \mathcal{L} / \partial x_i = \sum_j \bar o_i \pi_{ij} \partial_x C(x_i, y_j)`
  (for the squared cost :math:`2 \bar o_i (x_i - \sum_j \pi_{ij} y_j)`),
* :math:`\partial \mathcal{L} / \partial y_j = \sum_i \bar o_i \pi_{ij} \partial_y C(x_i, y_j)`,

with :math:`\bar o` the incoming gradient. The cost's closed-form ``vjp`` gives the last two
(for the squared cost, two thin matrix products per tile), so only the named costs are supported.
Plan entries below ``exp(PLAN_FLOOR)`` are exact zeros (padding gets exactly zero gradient).
"""

from __future__ import annotations

import torch
from torch import Tensor

from sinkmatch._checks import check_int
from sinkmatch.backends.base import Backend
from sinkmatch.costs import Cost, is_power_cost
from sinkmatch.plan import plan_tiles, tiled_logsumexp

__all__ = ["OnlineSoftmin"]


class _StreamedSoftmin(torch.autograd.Function):
    """Softmin with a streaming backward (no (B, N, M) tensor in either pass)."""

    @staticmethod
    def forward(ctx, x, y, h, eps, cost, row_block, col_block):  # type: ignore[override]
        lse = tiled_logsumexp(eps, x, y, h, cost, row_block=row_block, col_block=col_block)
        ctx.save_for_backward(x, y, h, lse)
        ctx.eps, ctx.cost, ctx.blocks = eps, cost, (row_block, col_block)
        return -eps * lse

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):  # type: ignore[override]
        x, y, h, lse = ctx.saved_tensors
        eps, cost = ctx.eps, ctx.cost
        need_x, need_y, need_h = ctx.needs_input_grad[:3]
        gx = torch.zeros_like(x) if need_x else None
        gy = torch.zeros_like(y) if need_y else None
        gh = torch.zeros_like(h) if need_h else None
        sq = is_power_cost(cost) and cost.power == 2.0
        if sq:
            two_s = 2.0 * cost.scale
            # Squared cost, whose vjp is linear in the points: with W = diag(w) pi (w the
            # incoming gradient), W [1, y] = w * (pi [1, y]) and W^T [1, x] = pi^T (w * [1, x]):
            # two thin matrix products per tile give the row and column sums of W and the
            # weighted coordinates, and W itself is never formed.
            y1 = torch.cat([torch.ones_like(y[..., :1]), y], dim=-1)
            wx1 = grad_out[..., None] * torch.cat([torch.ones_like(x[..., :1]), x], dim=-1)
        row_block, col_block = ctx.blocks
        tiles = plan_tiles(eps, x, y, h, cost, lse, row_block=row_block, col_block=col_block)
        for r0, c0, xr, yc, _, pi in tiles:
            rows, cols = slice(r0, r0 + xr.shape[1]), slice(c0, c0 + yc.shape[1])
            if sq:
                if need_x:
                    py = torch.bmm(pi, y1[:, cols]).mul_(grad_out[:, rows, None])  # (B, R, 1 + D)
                    gx[:, rows] += two_s * (xr * py[..., :1] - py[..., 1:])
                if need_y or need_h:
                    px = torch.bmm(pi.transpose(1, 2), wx1[:, rows])  # (B, C, 1 + D)
                    if need_h:
                        gh[:, cols] -= eps * px[..., 0]
                    if need_y:
                        gy[:, cols] += two_s * (yc * px[..., :1] - px[..., 1:])
                continue
            weights = pi.mul_(grad_out[:, rows, None])  # d loss / d C_ij (overwrites pi)
            if need_h:
                gh[:, cols] -= eps * weights.sum(1)
            if need_x or need_y:
                tx, ty = cost.vjp(xr, yc, weights)
                if need_x:
                    gx[:, rows] += tx
                if need_y:
                    gy[:, cols] += ty
        return gx, gy, gh, None, None, None, None


class OnlineSoftmin(Backend):
    r"""Blocked softmin with a streaming custom backward (named costs only: :math:`s\,\|x-y\|^p`).

    Args:
        row_block: Rows per tile (default 128).
        col_block: Columns per tile (default: about 2^17 / (B · row_block), i.e. tiles of about
            130,000 entries, 512 KiB in float32, kept in cache).

    Example:
        >>> import torch
        >>> from sinkmatch.costs import get_cost
        >>> x = torch.zeros(1, 2, 1); y = torch.zeros(1, 3, 1); h = torch.zeros(1, 3)
        >>> OnlineSoftmin(col_block=2).softmin(1.0, x, y, h, get_cost("sqeuclidean"))
        tensor([[-1.0986, -1.0986]])
    """

    name = "online"

    def __init__(self, *, row_block: int | None = None, col_block: int | None = None):
        self.row_block = check_int("row_block", row_block, ge=1, none_ok=True)
        self.col_block = check_int("col_block", col_block, ge=1, none_ok=True)

    def softmin(self, eps: float, x: Tensor, y: Tensor, h: Tensor, cost: Cost) -> Tensor:
        """See :class:`sinkmatch.backends.base.SoftminBackend`."""
        if not is_power_cost(cost):
            raise ValueError(
                "the online backend needs a named cost ('sqeuclidean', 'euclidean' or a "
                f"PowerCost), got {cost!r}; use backend='dense' for callable costs"
            )
        return _StreamedSoftmin.apply(x, y, h, eps, cost, self.row_block, self.col_block)

    def __repr__(self) -> str:
        return f"OnlineSoftmin(row_block={self.row_block}, col_block={self.col_block})"
