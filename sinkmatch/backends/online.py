"""Online (blocked) softmin backend: O(N + M) memory per problem.

The cost is generated tile by tile (``row_block`` rows × ``col_block`` columns, one reused
workspace that stays in cache) and never stored as a ``(B, N, M)`` tensor. The forward pass
keeps, per column tile, the row maximum and the sum of the exponentials below it (arguments
clamped at ``exp(-80)`` of the maximum, the dense backend's floor: ``exp`` is ~50x slower in the
float underflow range), combined by one log-sum-exp per block of rows; the backward pass
streams over the same tiles, recomputing each tile's plan

.. math::

    \\pi_{ij} = \\exp\\big(h_j - C_{ij}/\\varepsilon - \\mathrm{lse}_i\\big),

so that it too needs no ``(B, N, M)`` storage:

* :math:`\\partial \\mathcal{L} / \\partial h_j = -\\varepsilon \\sum_i \\bar o_i \\pi_{ij}`,
* :math:`\\partial \\mathcal{L} / \\partial x_i = \\sum_j \\bar o_i \\pi_{ij} \\partial_x C(x_i, y_j)`
  (for the squared cost :math:`2 \\bar o_i (x_i - \\sum_j \\pi_{ij} y_j)`),
* :math:`\\partial \\mathcal{L} / \\partial y_j = \\sum_i \\bar o_i \\pi_{ij} \\partial_y C(x_i, y_j)`,

with :math:`\\bar o` the incoming gradient. The cost's closed-form ``vjp`` gives the last two
(for the squared cost, two thin matrix products per tile), so only the named costs are supported.
Plan entries below ``exp(PLAN_FLOOR) = exp(-60)`` are exact zeros (padding gets exactly zero
gradient, and products with small cotangents stay out of the slow subnormal range). The module also holds the tiled plan reductions the
solver uses for the transport cost and the barycentric map.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from sinkmatch.backends.dense import EXP_FLOOR
from sinkmatch.costs import Cost

__all__ = [
    "PLAN_FLOOR",
    "OnlineSoftmin",
    "plan_expected_cost",
    "plan_matmul",
    "tiled_logsumexp",
]

# Tile size, chosen by measurement (one thread, float32, Xeon with 2 MiB of L2 per core; sweep of
# row x column blocks from 64 x 4,096 to 1,024 x 256 at N = M = 4,096, D = 1 and 3): tiles of
# 2^17 entries (512 KiB in float32, plus one scratch tile for D > 1) keep every elementwise pass
# in cache (1-D: flat between 2^17 and 2^18; D = 3: 2^17 is 25% faster than 2^18 and 2^19), and
# one workspace is reused for all tiles of a call (a fresh multi-MiB tensor per tile costs page
# faults on every tile). 128 rows x 1,024 columns.
_TILE_ELEMENTS = 1 << 17
_ROW_BLOCK = 128
_DIRECT_MAX_DIM = 4
# Plan entries pi_ij = exp(h_j - C_ij/eps - lse_i) below exp(PLAN_FLOOR) are dropped (exact 0).
PLAN_FLOOR = -60.0
_PLAN_ZERO = 2.0 * math.exp(PLAN_FLOOR)
# Stand-in for the maximum of a tile row that is all padding (-inf): its terms then sum to
# ~exp(-1e30) relative to any real row, i.e. nothing, without -inf - (-inf) = NaN.
_NO_MASS = -1e30


def _workspaces(cost: Cost, y: Tensor, size: int, dtype: torch.dtype, device: torch.device):
    """A tile workspace, a scratch tile and ``y`` as (B, D, M) coordinate rows (direct, D > 1)."""
    work = torch.empty(size, dtype=dtype, device=device)
    if _direct(cost, y.shape[-1]) and y.shape[-1] > 1:
        return work, torch.empty(size, dtype=dtype, device=device), y.transpose(1, 2).contiguous()
    return work, None, None


def _blocks(batch: int, n: int, m: int, row_block: int | None, col_block: int | None):
    rb = min(n, row_block or _ROW_BLOCK)
    cb = col_block or max(1, _TILE_ELEMENTS // max(1, batch * rb))
    return max(1, rb), max(1, min(m, cb))


def _direct(cost: Cost, d: int) -> bool:
    """Named cost with few coordinates: generated in place from coordinate differences."""
    return cost.name in ("sqeuclidean", "euclidean") and d <= _DIRECT_MAX_DIM


def _scores(
    eps: float, xr: Tensor, yc: Tensor, hc: Tensor, cost: Cost, out: Tensor, scratch, ytc=None
):
    """``h_j - C_ij / eps`` for one tile, written into ``out`` (B, R, C) without temporaries.

    Named costs use direct coordinate differences (no ``|x|^2 + |y|^2 - 2 x.y`` expansion, whose
    cancellation in float32 would cost ~1e-2 in the exponent for counts in the hundreds);
    ``scratch`` (a flat buffer of ``out``'s size) holds the differences for ``D > 1`` and
    ``ytc`` (B, D, C) is ``yc`` transposed to contiguous coordinate rows (unit-stride
    broadcasts). Call without gradient recording.
    """
    scale = -1.0 / eps
    d = xr.shape[-1]
    if _direct(cost, d):
        if d == 1:
            torch.sub(xr, yc.transpose(1, 2), out=out)
            if cost.name == "sqeuclidean":
                return torch.addcmul(hc[:, None, :], out, out, value=scale, out=out)
            return torch.add(hc[:, None, :], out.abs_(), alpha=scale, out=out)
        diff = scratch[: out.numel()].view(out.shape)
        if ytc is None:
            ytc = yc.transpose(1, 2).contiguous()
        if cost.name == "sqeuclidean":  # h - sum_k d_k^2 / eps, two passes per coordinate
            for k in range(d):
                torch.sub(xr[..., k, None], ytc[:, k, None, :], out=diff)
                if k == 0:
                    torch.addcmul(hc[:, None, :], diff, diff, value=scale, out=out)
                else:
                    out.addcmul_(diff, diff, value=scale)
            return out
        out.zero_()
        for k in range(d):
            torch.sub(xr[..., k, None], ytc[:, k, None, :], out=diff)
            out.addcmul_(diff, diff)
        return torch.add(hc[:, None, :], out.sqrt_(), alpha=scale, out=out)
    return torch.add(hc[:, None, :], cost.matrix(xr, yc), alpha=scale, out=out)


def _exp_shifted_(tile: Tensor, shift: Tensor) -> Tensor:
    """``exp(tile - shift)`` in place, with entries below ``2 exp(PLAN_FLOOR)`` set to exactly 0.

    The clamp keeps ``exp`` out of the float underflow range (~50x slower on x86), and the
    threshold (one in-place pass, no mask) turns the clamped entries, padding columns
    (``h = -inf``) among them, into exact zeros: padding gets exactly zero gradient, and the
    backward's products of plan entries with small cotangents (``1/N`` weights) stay out of the
    subnormal range, which is as slow as the underflowing ``exp`` (a 10x slower backward at
    ``exp(-80)``). The dropped mass is below ``N exp(-60)`` relative, under float64 rounding.
    """
    tile.sub_(shift).clamp_min_(PLAN_FLOOR).exp_()
    return torch.nn.functional.threshold_(tile, _PLAN_ZERO, 0.0)


def _column_blocks(y: Tensor, h: Tensor, yt: Tensor | None, cb: int) -> list:
    """``(c0, y block, h block, yt block)`` for every block of ``cb`` columns (views)."""
    m = y.shape[1]
    return [
        (c0, y[:, c0 : c0 + cb], h[:, c0 : c0 + cb], None if yt is None else yt[:, :, c0 : c0 + cb])
        for c0 in range(0, m, cb)
    ]


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

    Not differentiable (the backend's autograd function supplies the gradient).

    Args:
        eps: Temperature.
        x ((B, N, D) Tensor): Row points.
        y ((B, M, D) Tensor): Column points.
        h ((B, M) Tensor): Column log-weights.
        cost: Any cost (named costs are generated in place; others through ``matrix``).
        row_block: Rows per tile (default 128).
        col_block: Columns per tile (default: about 2^17 / (B · row_block)).
    """
    batch, n, m = x.shape[0], x.shape[1], y.shape[1]
    rb, cb = _blocks(batch, n, m, row_block, col_block)
    dtype = torch.promote_types(torch.promote_types(x.dtype, y.dtype), h.dtype)
    out = torch.empty(batch, n, dtype=dtype, device=h.device)
    work, scratch, yt = _workspaces(cost, y, batch * rb * cb, dtype, h.device)
    blocks = _column_blocks(y, h, yt, cb)
    with torch.no_grad():
        for r0 in range(0, n, rb):
            xr = x[:, r0 : r0 + rb]
            r = xr.shape[1]
            # per column block: the row maximum and the sum of exp(score - maximum); combined by
            # one log-sum-exp per row block (few operations per tile: Python overhead matters)
            tops = torch.empty(len(blocks), batch, r, 1, dtype=dtype, device=h.device)
            sums = torch.empty(len(blocks), batch, r, dtype=dtype, device=h.device)
            for k, (_, yc, hc, ytc) in enumerate(blocks):
                tile = work[: batch * r * yc.shape[1]].view(batch, r, yc.shape[1])
                _scores(eps, xr, yc, hc, cost, tile, scratch, ytc)
                top = torch.amax(tile, dim=2, keepdim=True, out=tops[k])
                top.clamp_min_(_NO_MASS)  # a row of padding only: a finite stand-in for -inf
                tile.sub_(top).clamp_min_(EXP_FLOOR).exp_()
                torch.sum(tile, dim=2, out=sums[k])
            out[:, r0 : r0 + r] = torch.logsumexp(sums.log_().add_(tops.squeeze(-1)), dim=0)
        empty = (h == -torch.inf).all(dim=1)  # every column is padding: -inf, as in the protocol
        if bool(empty.any()):
            out.masked_fill_(empty[:, None], -torch.inf)
    return out


def _plan_tiles(eps, x, y, h, cost, lse, row_block, col_block, *, with_cost=False):
    """Yield ``(r0, c0, rows, cols, c, pi)`` for every tile of the row-normalized plan.

    ``pi`` lives in a workspace reused by the next tile; ``c`` (the cost tile) is only computed
    with ``with_cost`` (else ``None``).
    """
    batch, n, m = x.shape[0], x.shape[1], y.shape[1]
    rb, cb = _blocks(batch, n, m, row_block, col_block)
    work, scratch, yt = _workspaces(cost, y, batch * rb * cb, lse.dtype, lse.device)
    blocks = _column_blocks(y, h, yt, cb)
    # a problem whose columns are all padding has lse = -inf and an empty plan: shifting by
    # +inf instead makes every entry exactly 0 (not inf - inf)
    lse = torch.where(lse == -torch.inf, torch.inf, lse)
    for r0 in range(0, n, rb):
        xr = x[:, r0 : r0 + rb]
        shift = lse[:, r0 : r0 + rb, None]
        for c0, yc, hc, ytc in blocks:
            tile = work[: batch * xr.shape[1] * yc.shape[1]].view(batch, xr.shape[1], yc.shape[1])
            c = cost.matrix(xr, yc) if with_cost else None
            if c is None:
                _scores(eps, xr, yc, hc, cost, tile, scratch, ytc)
            else:
                torch.add(hc[:, None, :], c, alpha=-1.0 / eps, out=tile)
            yield r0, c0, xr, yc, c, _exp_shifted_(tile, shift)


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
    with torch.no_grad():
        for r0, _, xr, _, c, pi in _plan_tiles(eps, x, y, h, cost, lse, None, None, with_cost=True):
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
    with torch.no_grad():
        for r0, c0, xr, yc, _, pi in _plan_tiles(eps, x, y, h, cost, lse, None, None):
            out[:, r0 : r0 + xr.shape[1]] += torch.bmm(
                pi, values[:, c0 : c0 + yc.shape[1]].to(pi.dtype)
            )
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
        sq = cost.name == "sqeuclidean"
        if sq:
            # Squared cost, whose vjp is linear in the points: with W = diag(w) pi (w the
            # incoming gradient), W [1, y] = w * (pi [1, y]) and W^T [1, x] = pi^T (w * [1, x]):
            # two thin matrix products per tile give the row and column sums of W and the
            # weighted coordinates, and W itself is never formed.
            y1 = torch.cat([torch.ones_like(y[..., :1]), y], dim=-1)
            wx1 = grad_out[..., None] * torch.cat([torch.ones_like(x[..., :1]), x], dim=-1)
        for r0, c0, xr, yc, _, pi in _plan_tiles(eps, x, y, h, cost, lse, *ctx.blocks):
            rows, cols = slice(r0, r0 + xr.shape[1]), slice(c0, c0 + yc.shape[1])
            if sq:
                if need_x:
                    py = torch.bmm(pi, y1[:, cols]).mul_(grad_out[:, rows, None])  # (B, R, 1 + D)
                    gx[:, rows] += 2.0 * (xr * py[..., :1] - py[..., 1:])
                if need_y or need_h:
                    px = torch.bmm(pi.transpose(1, 2), wx1[:, rows])  # (B, C, 1 + D)
                    if need_h:
                        gh[:, cols] -= eps * px[..., 0]
                    if need_y:
                        gy[:, cols] += 2.0 * (yc * px[..., :1] - px[..., 1:])
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


class OnlineSoftmin:
    """Blocked softmin with a streaming custom backward (named costs only).

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
