"""Online (blocked) softmin backend: O(N + M) memory per problem.

The cost is generated tile by tile (``row_block`` rows × ``col_block`` columns) and never stored
as a ``(B, N, M)`` tensor. The forward pass keeps a running log-sum-exp over the column tiles
(``logaddexp`` of the tile log-sum-exps, i.e. a running maximum with a rescaled sum); the
backward pass streams over the same tiles, recomputing each tile's plan

.. math::

    \\pi_{ij} = \\exp\\big(h_j - C_{ij}/\\varepsilon - \\mathrm{lse}_i\\big),

so that it too needs no ``(B, N, M)`` storage:

* :math:`\\partial \\mathcal{L} / \\partial h_j = -\\varepsilon \\sum_i \\bar o_i \\pi_{ij}`,
* :math:`\\partial \\mathcal{L} / \\partial x_i = \\sum_j \\bar o_i \\pi_{ij} \\partial_x C(x_i, y_j)`
  (for the squared cost :math:`2 \\bar o_i (x_i - \\sum_j \\pi_{ij} y_j)`),
* :math:`\\partial \\mathcal{L} / \\partial y_j = \\sum_i \\bar o_i \\pi_{ij} \\partial_y C(x_i, y_j)`,

with :math:`\\bar o` the incoming gradient. The cost's closed-form ``vjp`` gives the last two,
so only the named costs are supported. The module also holds the tiled plan reductions the
solver uses for the transport cost and the barycentric map.
"""

from __future__ import annotations

import torch
from torch import Tensor

from sinkmatch.backends.dense import EXP_FLOOR, logsumexp
from sinkmatch.costs import Cost

__all__ = ["OnlineSoftmin", "plan_expected_cost", "plan_matmul", "tiled_logsumexp"]

_TILE_ELEMENTS = 1 << 20  # B · rows · columns per tile
_ROW_BLOCK = 1024


def _blocks(batch: int, n: int, m: int, row_block: int | None, col_block: int | None):
    rb = min(n, row_block or _ROW_BLOCK)
    cb = col_block or max(1, _TILE_ELEMENTS // max(1, batch * rb))
    return rb, min(m, cb)


def tiled_logsumexp(
    eps: float,
    x: Tensor,
    y: Tensor,
    h: Tensor,
    cost: Cost,
    *,
    row_block: int | None = None,
    col_block: int | None = None,
) -> Tensor:
    """Row log-sum-exp of :math:`h_j - C_{ij}/\\varepsilon`, tile by tile, (B, N).

    Args:
        eps: Temperature.
        x ((B, N, D) Tensor): Row points.
        y ((B, M, D) Tensor): Column points.
        h ((B, M) Tensor): Column log-weights.
        cost: Any cost (only ``matrix`` is used).
        row_block: Rows per tile (default 1024).
        col_block: Columns per tile (default: about 2^20 / (B · row_block)).
    """
    batch, n, m = x.shape[0], x.shape[1], y.shape[1]
    rb, cb = _blocks(batch, n, m, row_block, col_block)
    out = torch.empty(batch, n, dtype=h.dtype, device=h.device)
    for r0 in range(0, n, rb):
        xr = x[:, r0 : r0 + rb]
        acc = None
        for c0 in range(0, m, cb):
            tile = torch.add(
                h[:, None, c0 : c0 + cb], cost.matrix(xr, y[:, c0 : c0 + cb]), alpha=-1.0 / eps
            )
            lse = logsumexp(tile, dim=2, inplace=True)
            acc = lse if acc is None else torch.logaddexp(acc, lse)
        out[:, r0 : r0 + rb] = acc
    return out


def _plan_tiles(eps, x, y, h, cost, lse, row_block, col_block):
    """Yield ``(r0, c0, rows, cols, pi)`` for every tile of the row-normalized plan."""
    batch, n, m = x.shape[0], x.shape[1], y.shape[1]
    rb, cb = _blocks(batch, n, m, row_block, col_block)
    for r0 in range(0, n, rb):
        xr = x[:, r0 : r0 + rb]
        for c0 in range(0, m, cb):
            yc = y[:, c0 : c0 + cb]
            c = cost.matrix(xr, yc)
            shifted = torch.add(h[:, None, c0 : c0 + cb], c, alpha=-1.0 / eps)
            shifted -= lse[:, r0 : r0 + rb, None]
            negligible = shifted < EXP_FLOOR  # exact zeros, and no slow exp of huge negatives
            pi = shifted.clamp_min_(EXP_FLOOR).exp_().masked_fill_(negligible, 0.0)
            yield r0, c0, xr, yc, c, pi


def plan_expected_cost(
    eps: float, x: Tensor, y: Tensor, h: Tensor, cost: Cost, *, lse: Tensor | None = None
) -> Tensor:
    """Expected cost under the row-normalized plan, :math:`\\sum_j \\pi_{ij} C_{ij}`, (B, N).

    ``lse`` is :func:`tiled_logsumexp` (computed when not given). Not differentiable by design
    (call under ``torch.no_grad()``); memory is one tile.
    """
    if lse is None:
        lse = tiled_logsumexp(eps, x, y, h, cost)
    out = torch.zeros_like(lse)
    for r0, _, xr, _, c, pi in _plan_tiles(eps, x, y, h, cost, lse, None, None):
        out[:, r0 : r0 + xr.shape[1]] += (pi * c).sum(2)
    return out


def plan_matmul(
    eps: float,
    x: Tensor,
    y: Tensor,
    h: Tensor,
    cost: Cost,
    values: Tensor,
    *,
    lse: Tensor | None = None,
) -> Tensor:
    """Row-normalized plan times column values, :math:`\\sum_j \\pi_{ij} v_{jk}`, (B, N, K).

    With ``values = y`` this is the barycentric map. Memory is one tile.
    """
    if lse is None:
        lse = tiled_logsumexp(eps, x, y, h, cost)
    out = torch.zeros(x.shape[0], x.shape[1], values.shape[2], dtype=lse.dtype, device=lse.device)
    for r0, c0, xr, yc, _, pi in _plan_tiles(eps, x, y, h, cost, lse, None, None):
        out[:, r0 : r0 + xr.shape[1]] += torch.bmm(pi, values[:, c0 : c0 + yc.shape[1]])
    return out


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
        for r0, c0, xr, yc, _, pi in _plan_tiles(eps, x, y, h, cost, lse, *ctx.blocks):
            rows, cols = slice(r0, r0 + xr.shape[1]), slice(c0, c0 + yc.shape[1])
            weights = pi * grad_out[:, rows, None]  # d loss / d C_ij
            if need_h:
                gh[:, cols] -= eps * weights.sum(1)
            if need_x or need_y:
                tx, ty = cost.vjp(xr, yc, weights)
                if need_x:
                    gx[:, rows] += tx
                if need_y:
                    gy[:, cols] += ty
        return gx, gy, gh, None, None, None, None


class OnlineSoftmin:
    """Blocked softmin with a streaming custom backward (named costs only).

    Args:
        row_block: Rows per tile (default 1024).
        col_block: Columns per tile (default: about 2^20 / (B · row_block), i.e. tiles of about
            a million entries, 4 MiB in float32).

    Example:
        >>> import torch
        >>> from sinkmatch.costs import get_cost
        >>> x = torch.zeros(1, 2, 1); y = torch.zeros(1, 3, 1); h = torch.zeros(1, 3)
        >>> OnlineSoftmin(col_block=2).softmin(1.0, x, y, h, get_cost("sqeuclidean"))
        tensor([[-1.0986, -1.0986]])
    """

    name = "online"

    def __init__(self, *, row_block: int | None = None, col_block: int | None = None):
        for label, value in (("row_block", row_block), ("col_block", col_block)):
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int) or value < 1
            ):
                raise ValueError(f"{label} must be a positive int or None, got {value!r}")
        self.row_block = row_block
        self.col_block = col_block

    def softmin(self, eps: float, x: Tensor, y: Tensor, h: Tensor, cost: Cost) -> Tensor:
        """See :class:`sinkmatch.backends.base.SoftminBackend`."""
        if cost.name is None:
            raise ValueError(
                f"the online backend needs a named cost ('sqeuclidean' or 'euclidean'), got {cost!r}; "
                "use backend='dense' for callable costs"
            )
        return _StreamedSoftmin.apply(x, y, h, eps, cost, self.row_block, self.col_block)

    def __repr__(self) -> str:
        return f"OnlineSoftmin(row_block={self.row_block}, col_block={self.col_block})"
