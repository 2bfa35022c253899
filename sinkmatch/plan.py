r"""Streaming reductions of the entropic plan, tile by tile, in ``O(N + M)`` memory.

For column log-weights :math:`h_j` (in the solver :math:`h_j = \log b_j + g_j / \varepsilon`,
``-inf`` for padding) the row-normalized plan is

.. math::

    \pi_{ij} = \exp\big(h_j - C_{ij}/\varepsilon - \mathrm{lse}_i\big), \qquad
    \mathrm{lse}_i = \log \sum_j \exp\big(h_j - C_{ij}/\varepsilon\big).

This module computes :math:`\mathrm{lse}` (:func:`tiled_logsumexp`, the forward pass of the
online softmin), the expected cost :math:`\sum_j \pi_{ij} C_{ij}` (:func:`plan_expected_cost`,
the solver's ``value="transport"``) and plan products :math:`\sum_j \pi_{ij} v_j`
(:func:`plan_matmul`, the barycentric map), without ever storing a ``(B, N, M)`` tensor: the cost
is generated ``row_block`` rows × ``col_block`` columns at a time into one reused workspace.
:func:`plan_tiles` yields the tiles of :math:`\pi` for the streaming backward of
:mod:`sinkmatch.backends.online`.

Two floors keep ``exp`` out of the float underflow range, where it is many times slower on x86
CPUs (measured by ``benchmarks/constants.py``, ``benchmarks/results/constants.csv``): terms below
``exp(EXP_FLOOR)`` of a row's maximum are dropped from log-sum-exps, and plan entries below
``exp(PLAN_FLOOR)`` are exact zeros.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
from torch import Tensor

from sinkmatch.costs import DIRECT_MAX_DIM, Cost, is_power_cost

__all__ = [
    "EXP_FLOOR",
    "PLAN_FLOOR",
    "plan_expected_cost",
    "plan_matmul",
    "plan_tiles",
    "tiled_logsumexp",
]

# Terms below exp(-80) of the largest one are dropped (their total stays below 1e-26 relative
# for up to 1e9 terms, far under float64 precision).
EXP_FLOOR = -80.0
# Plan entries pi_ij below exp(PLAN_FLOOR) are dropped (exact 0): padding then gets exactly zero
# gradient, and products of plan entries with small cotangents stay out of the subnormal range.
PLAN_FLOOR = -60.0
_PLAN_ZERO = 2.0 * math.exp(PLAN_FLOOR)
# Tiles of 2^17 entries (512 KiB in float32), 128 rows high: every elementwise pass stays in
# cache (chosen by the tile sweep of benchmarks/constants.py).
_TILE_ELEMENTS = 1 << 17
_ROW_BLOCK = 128
# Stand-in for the maximum of a tile row that is all padding (-inf): its terms then sum to
# ~exp(-1e30) relative to any real row, i.e. nothing, without -inf - (-inf) = NaN.
_NO_MASS = -1e30


def _direct(cost: Cost, d: int) -> bool:
    """Named cost with few coordinates: generated in place from coordinate differences."""
    return is_power_cost(cost) and d <= DIRECT_MAX_DIM


def _blocks(batch: int, n: int, m: int, row_block: int | None, col_block: int | None):
    rb = min(n, row_block or _ROW_BLOCK)
    cb = col_block or max(1, _TILE_ELEMENTS // max(1, batch * rb))
    return max(1, rb), max(1, min(m, cb))


def _workspaces(cost: Cost, y: Tensor, size: int, dtype: torch.dtype, device: torch.device):
    """A tile workspace, a scratch tile and ``y`` as (B, D, M) coordinate rows (direct, D > 1)."""
    work = torch.empty(size, dtype=dtype, device=device)
    if _direct(cost, y.shape[-1]) and y.shape[-1] > 1:
        return work, torch.empty(size, dtype=dtype, device=device), y.transpose(1, 2).contiguous()
    return work, None, None


def _column_blocks(y: Tensor, h: Tensor, yt: Tensor | None, cb: int) -> list:
    """``(c0, y block, h block, yt block)`` for every block of ``cb`` columns (views)."""
    m = y.shape[1]
    return [
        (c0, y[:, c0 : c0 + cb], h[:, c0 : c0 + cb], None if yt is None else yt[:, :, c0 : c0 + cb])
        for c0 in range(0, m, cb)
    ]


def _scores(
    eps: float, xr: Tensor, yc: Tensor, hc: Tensor, cost: Cost, out: Tensor, scratch, ytc=None
):
    r"""``h_j - C_ij / eps`` for one tile, written into ``out`` (B, R, C) without temporaries.

    Named costs (:math:`s\,\|x - y\|^p`, any ``p >= 1``) use direct coordinate differences (no
    ``|x|^2 + |y|^2 - 2 x.y`` expansion, whose cancellation in float32 would cost ~1e-2 in the
    exponent for counts in the hundreds);
    ``scratch`` (a flat buffer of ``out``'s size) holds the differences for ``D > 1`` and
    ``ytc`` (B, D, C) is ``yc`` transposed to contiguous coordinate rows (unit-stride
    broadcasts). Call without gradient recording.
    """
    d = xr.shape[-1]
    if not _direct(cost, d):
        return torch.add(hc[:, None, :], cost.matrix(xr, yc), alpha=-1.0 / eps, out=out)
    p, scale = cost.power, -cost.scale / eps
    if d == 1:
        torch.sub(xr, yc.transpose(1, 2), out=out)
        if p == 2.0:
            return torch.addcmul(hc[:, None, :], out, out, value=scale, out=out)
        out.abs_()
        if p != 1.0:
            out.pow_(p)
        return torch.add(hc[:, None, :], out, alpha=scale, out=out)
    diff = scratch[: out.numel()].view(out.shape)
    if ytc is None:
        ytc = yc.transpose(1, 2).contiguous()
    if p == 2.0:  # h - s sum_k d_k^2 / eps, two passes per coordinate
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
    if p == 1.0:
        out.sqrt_()
    else:
        out.pow_(0.5 * p)
    return torch.add(hc[:, None, :], out, alpha=scale, out=out)


def _exp_shifted_(tile: Tensor, shift: Tensor) -> Tensor:
    """``exp(tile - shift)`` in place, with entries below ``2 exp(PLAN_FLOOR)`` set to exactly 0.

    The clamp keeps ``exp`` out of the float underflow range, and the threshold (one in-place
    pass, no mask) turns the clamped entries, padding columns (``h = -inf``) among them, into
    exact zeros: padding gets exactly zero gradient, and the backward's products of plan entries
    with small cotangents (``1/N`` weights) stay out of the subnormal range, which is as slow as
    the underflowing ``exp``. The dropped mass is below ``N exp(-60)`` relative, under float64
    rounding.
    """
    tile.sub_(shift).clamp_min_(PLAN_FLOOR).exp_()
    return torch.nn.functional.threshold_(tile, _PLAN_ZERO, 0.0)


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
    r"""Row log-sum-exp of :math:`h_j - C_{ij}/\varepsilon`, tile by tile, (B, N).

    Not differentiable (the online backend's autograd function supplies the gradient).

    Args:
        eps: Temperature.
        x ((B, N, D) Tensor): Row points.
        y ((B, M, D) Tensor): Column points.
        h ((B, M) Tensor): Column log-weights.
        cost: Any cost (named costs are generated in place; others through ``matrix``).
        row_block: Rows per tile (default 128).
        col_block: Columns per tile (default: about 2^17 / (B · row_block)).

    Returns:
        (B, N) Tensor: :math:`\mathrm{lse}_i`; ``-inf`` for a problem whose ``h`` is all
        ``-inf``.

    Example:
        >>> import torch
        >>> from sinkmatch.costs import get_cost
        >>> x = torch.zeros(1, 2, 1); y = torch.zeros(1, 3, 1); h = torch.zeros(1, 3)
        >>> tiled_logsumexp(1.0, x, y, h, get_cost("sqeuclidean"), col_block=2)
        tensor([[1.0986, 1.0986]])
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


def plan_tiles(
    eps: float,
    x: Tensor,
    y: Tensor,
    h: Tensor,
    cost: Cost,
    lse: Tensor,
    *,
    row_block: int | None = None,
    col_block: int | None = None,
    with_cost: bool = False,
) -> Iterator[tuple[int, int, Tensor, Tensor, Tensor | None, Tensor]]:
    """Yield ``(r0, c0, rows, cols, c, pi)`` for every tile of the row-normalized plan.

    ``rows`` (B, R, D) and ``cols`` (B, C, D) are the tile's points, starting at row ``r0`` and
    column ``c0``; ``pi`` (B, R, C) lives in a workspace reused by the next tile; ``c`` (the cost
    tile) is only computed with ``with_cost`` (else ``None``). ``lse`` is
    :func:`tiled_logsumexp`. Call without gradient recording.
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
    r"""Expected cost under the row-normalized plan, :math:`\sum_j \pi_{ij} C_{ij}`, (B, N).

    ``lse`` is :func:`tiled_logsumexp` (computed when not given). Not differentiable by design
    (call under ``torch.no_grad()``); memory is one tile.

    Example:
        >>> import torch
        >>> from sinkmatch.costs import get_cost
        >>> x = torch.zeros(1, 1, 1); y = torch.tensor([[[1.0], [-1.0]]]); h = torch.zeros(1, 2)
        >>> plan_expected_cost(1.0, x, y, h, get_cost("sqeuclidean"))
        tensor([[1.]])
    """
    if lse is None:
        lse = tiled_logsumexp(eps, x, y, h, cost)
    out = torch.zeros_like(lse)
    with torch.no_grad():
        for r0, _, xr, _, c, pi in plan_tiles(eps, x, y, h, cost, lse, with_cost=True):
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
    r"""Row-normalized plan times column values, :math:`\sum_j \pi_{ij} v_{jk}`, (B, N, K).

    ``values`` is (B, M, K); with ``values = y`` this is the barycentric map. Memory is one tile.

    Example:
        >>> import torch
        >>> from sinkmatch.costs import get_cost
        >>> x = torch.zeros(1, 1, 1); y = torch.tensor([[[1.0], [3.0]]]); h = torch.zeros(1, 2)
        >>> plan_matmul(1e3, x, y, h, get_cost("sqeuclidean"), y)  # eps large: the plain mean
        tensor([[[1.9960]]])
    """
    if lse is None:
        lse = tiled_logsumexp(eps, x, y, h, cost)
    out = torch.zeros(x.shape[0], x.shape[1], values.shape[2], dtype=lse.dtype, device=lse.device)
    with torch.no_grad():
        for r0, c0, xr, yc, _, pi in plan_tiles(eps, x, y, h, cost, lse):
            out[:, r0 : r0 + xr.shape[1]] += torch.bmm(
                pi, values[:, c0 : c0 + yc.shape[1]].to(pi.dtype)
            )
    return out
