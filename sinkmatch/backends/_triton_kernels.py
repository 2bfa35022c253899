"""Triton kernels of the fused, batched soft-min (forward and the two backward passes).

Not imported by ``sinkmatch`` itself: :mod:`sinkmatch.backends.triton` loads this file on first
use, once compiled (CUDA tensors) and, when ``TRITON_INTERPRET=1``, once more under another
module name with Triton's CPU interpreter switched on (Triton decides between the two when a
``@triton.jit`` decorator runs, so each mode needs its own copy of the module).

All three kernels share one layout and one streaming pattern:

* ``x`` (B, N, D), ``y`` (B, M, D), ``h`` (B, M) contiguous, any float dtype; everything is
  computed in ``ACC`` (``tl.float32``, or ``tl.float64`` for float64 inputs).
* A flat 1-D grid; program ``pid`` handles problem ``pid // n_blocks`` and block
  ``pid % n_blocks`` of rows (forward, row backward) or columns (column backward). Offsets
  into the batch are int64.
* Per-problem lengths ``n_valid``/``m_valid`` (int32, (B,)): rows ``>= n_valid`` are not
  computed, columns ``>= m_valid`` are not visited (they must carry ``h = -inf``). A program
  whose whole block lies beyond the valid length exits after writing zeros, so a ragged batch
  costs in proportion to its real sizes.
* The cost is generated on the fly, coordinate by coordinate (exact differences, no
  ``|x|^2 + |y|^2 - 2<x, y>`` cancellation): ``sq = sum_d (x_d - y_d)^2`` and
  ``C = sq^(p/2)`` for the constexpr ``POWER = p`` (``p = 2``: ``sq``; ``p = 1``: its square
  root; otherwise ``exp(p/2 log sq)``). The cost's scale ``s`` is folded into ``INV_EPS``
  (``s / eps``) by the caller, which also multiplies the point gradients by ``s``.
"""

from __future__ import annotations

import os

import triton
import triton.language as tl

# Decided once, when this file is executed (see sinkmatch.backends.triton._kernels).
_INTERPRETED = os.environ.get("TRITON_INTERPRET", "0") == "1"

# Reductions go through tl.reduce with explicit combine functions instead of tl.sum / tl.max /
# tl.zeros: those are @triton.jit functions of triton.language, decorated (compiled or
# interpreted) once when triton is first imported, so they break in whichever mode triton was
# not imported in. The interpreter maps Triton's own combine functions to numpy reductions by
# identity (they are never called), so that mode uses them; compiled mode uses ours.
if _INTERPRETED:
    _add = tl.standard._sum_combine
    _max = tl.standard._elementwise_max
else:

    @triton.jit
    def _add(a, b):
        return a + b

    @triton.jit
    def _max(a, b):
        return tl.maximum(a, b)


@triton.jit
def _tile_sqdist(
    x_base,
    y_base,
    offs_n,
    offs_m,
    n_mask,
    m_mask,
    D: tl.constexpr,
    ACC: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_M: tl.constexpr,
):
    """Squared distances of a (BLOCK_N, BLOCK_M) tile, accumulated one coordinate at a time."""
    sq = tl.full((BLOCK_N, BLOCK_M), 0.0, ACC)
    offs_n = offs_n.to(tl.int64)
    offs_m = offs_m.to(tl.int64)
    for d in range(D):
        xd = tl.load(x_base + offs_n * D + d, mask=n_mask, other=0.0).to(ACC)
        yd = tl.load(y_base + offs_m * D + d, mask=m_mask, other=0.0).to(ACC)
        diff = xd[:, None] - yd[None, :]
        sq += diff * diff
    return sq


@triton.jit
def _cost_and_coef(sq, POWER: tl.constexpr):
    """Cost C = sq^(p/2) (unscaled) and k with dC/dx = k (x - y): k = p sq^(p/2 - 1), 0 at sq = 0.

    ``POWER`` is ``p`` (a float, >= 1): 2 gives C = sq, k = 2; 1 gives C = sqrt(sq), k = 1/C;
    any other ``p`` is evaluated as exp(p/2 log sq).
    """
    if POWER == 2.0:
        cost = sq
        coef = tl.full(sq.shape, 2.0, sq.dtype)
    elif POWER == 1.0:
        cost = tl.sqrt(sq)
        coef = tl.where(sq > 0.0, 1.0 / tl.where(sq > 0.0, cost, 1.0), 0.0)
    else:
        pos = sq > 0.0
        safe = tl.where(pos, sq, 1.0)
        cost = tl.where(pos, tl.exp((0.5 * POWER) * tl.log(safe)), 0.0)
        coef = tl.where(pos, POWER * cost / safe, 0.0)
    return cost, coef


@triton.jit
def softmin_fwd_kernel(
    X,
    Y,
    H,
    INV_EPS,
    NEG_EPS,
    N_VALID,
    M_VALID,
    OUT,
    LSE,
    N,
    M,
    n_blocks,
    D: tl.constexpr,
    POWER: tl.constexpr,
    ACC: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_M: tl.constexpr,
):
    """out_i = -eps * lse_i with lse_i = log sum_j exp(h_j - C_ij / eps), online over columns."""
    pid = tl.program_id(0).to(tl.int64)
    b = pid // n_blocks
    start_n = (pid % n_blocks) * BLOCK_N
    n_hi = tl.load(N_VALID + b)
    m_hi = tl.load(M_VALID + b)
    inv_eps = tl.load(INV_EPS)
    neg_eps = tl.load(NEG_EPS)

    offs_n = start_n + tl.arange(0, BLOCK_N)
    n_mask = offs_n < n_hi
    x_base = X + b * N * D
    y_base = Y + b * M * D
    h_base = H + b * M

    run_max = tl.full((BLOCK_N,), float("-inf"), ACC)
    run_sum = tl.full((BLOCK_N,), 0.0, ACC)
    m_stop = tl.where(start_n < n_hi, m_hi, 0)  # early exit: block entirely beyond n_valid
    for start_m in range(0, m_stop, BLOCK_M):
        offs_m = tl.arange(0, BLOCK_M).to(tl.int64) + start_m
        m_mask = offs_m < m_hi
        hj = tl.load(h_base + offs_m, mask=m_mask, other=float("-inf")).to(ACC)
        sq = _tile_sqdist(x_base, y_base, offs_n, offs_m, n_mask, m_mask, D, ACC, BLOCK_N, BLOCK_M)
        cost, _ = _cost_and_coef(sq, POWER)
        s = hj[None, :] - cost * inv_eps
        new_max = tl.maximum(run_max, tl.reduce(s, 1, _max))
        # exp(-inf - (-inf)) would be NaN: shift by 0 while every column seen so far is masked.
        shift = tl.where(new_max == float("-inf"), 0.0, new_max)
        run_sum = run_sum * tl.exp(run_max - shift) + tl.reduce(tl.exp(s - shift[:, None]), 1, _add)
        run_max = new_max

    # All columns masked (run_sum = 0): lse = -inf and out = +inf, without evaluating log(0).
    # (A NaN sum is not 0, so NaN inputs give a NaN row, not +inf.)
    empty = run_sum == 0.0
    lse = tl.where(empty, float("-inf"), run_max + tl.log(tl.where(empty, 1.0, run_sum)))
    out = tl.where(n_mask, neg_eps * lse, 0.0)
    lse = tl.where(n_mask, lse, float("-inf"))
    row_ok = offs_n < N
    tl.store(OUT + b * N + offs_n, out.to(OUT.dtype.element_ty), mask=row_ok)
    tl.store(LSE + b * N + offs_n, lse, mask=row_ok)


@triton.jit
def softmin_bwd_rows_kernel(
    X,
    Y,
    H,
    LSE,
    W,
    INV_EPS,
    N_VALID,
    M_VALID,
    GX,
    N,
    M,
    n_blocks,
    D: tl.constexpr,
    DP: tl.constexpr,
    POWER: tl.constexpr,
    ACC: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_M: tl.constexpr,
):
    """grad_x_i = w_i sum_j pi_ij k_ij (x_i - y_j), pi_ij = exp(h_j - C_ij / eps - lse_i).

    For the squared cost this is ``2 w_i (x_i - T(x_i))`` with ``T`` the barycentric map. The
    row sums ``S_i = sum_j pi_ij k_ij`` and ``T_i = sum_j pi_ij k_ij y_j`` (a (BLOCK_N, DP)
    accumulator) are streamed over the columns; ``grad_x_i = w_i (S_i x_i - T_i)``.
    """
    pid = tl.program_id(0).to(tl.int64)
    b = pid // n_blocks
    start_n = (pid % n_blocks) * BLOCK_N
    n_hi = tl.load(N_VALID + b)
    m_hi = tl.load(M_VALID + b)
    inv_eps = tl.load(INV_EPS)

    offs_n = start_n + tl.arange(0, BLOCK_N)
    n_mask = offs_n < n_hi
    offs_d = tl.arange(0, DP)
    x_base = X + b * N * D
    y_base = Y + b * M * D
    h_base = H + b * M

    lse = tl.load(LSE + b * N + offs_n, mask=n_mask, other=float("-inf"))
    finite = lse != float("-inf")
    lse = tl.where(finite, lse, float("inf"))  # empty rows: pi = 0, not NaN
    w = tl.load(W + b * N + offs_n, mask=n_mask, other=0.0).to(ACC)
    w = tl.where(finite, w, 0.0)  # their out is +inf: an inf/NaN cotangent must not leak

    row_sum = tl.full((BLOCK_N,), 0.0, ACC)
    row_vec = tl.full((BLOCK_N, DP), 0.0, ACC)
    m_stop = tl.where(start_n < n_hi, m_hi, 0)
    for start_m in range(0, m_stop, BLOCK_M):
        offs_m = tl.arange(0, BLOCK_M).to(tl.int64) + start_m
        m_mask = offs_m < m_hi
        hj = tl.load(h_base + offs_m, mask=m_mask, other=float("-inf")).to(ACC)
        sq = _tile_sqdist(x_base, y_base, offs_n, offs_m, n_mask, m_mask, D, ACC, BLOCK_N, BLOCK_M)
        cost, coef = _cost_and_coef(sq, POWER)
        pi = tl.exp(hj[None, :] - cost * inv_eps - lse[:, None])
        wk = pi * coef
        row_sum += tl.reduce(wk, 1, _add)
        if DP >= 16:  # (BLOCK_N, BLOCK_M) @ (BLOCK_M, DP), full precision (no TF32)
            yd_mask = m_mask[:, None] & (offs_d[None, :] < D)
            y_tile = tl.load(
                y_base + offs_m[:, None] * D + offs_d[None, :], mask=yd_mask, other=0.0
            ).to(ACC)
            row_vec += tl.dot(wk, y_tile, input_precision="ieee", out_dtype=ACC)
        else:  # few coordinates: one reduction per coordinate
            for d in range(D):
                yd = tl.load(y_base + offs_m * D + d, mask=m_mask, other=0.0).to(ACC)
                td = tl.reduce(wk * yd[None, :], 1, _add)
                row_vec += tl.where(offs_d[None, :] == d, td[:, None], 0.0)

    xd_mask = n_mask[:, None] & (offs_d[None, :] < D)
    x_tile = tl.load(x_base + offs_n[:, None] * D + offs_d[None, :], mask=xd_mask, other=0.0).to(
        ACC
    )
    gx = w[:, None] * (row_sum[:, None] * x_tile - row_vec)
    out_mask = (offs_n[:, None] < N) & (offs_d[None, :] < D)
    gx = tl.where(xd_mask, gx, 0.0)
    tl.store(GX + b * N * D + offs_n[:, None] * D + offs_d[None, :], gx, mask=out_mask)


@triton.jit
def softmin_bwd_cols_kernel(
    X,
    Y,
    H,
    LSE,
    W,
    INV_EPS,
    NEG_EPS,
    N_VALID,
    M_VALID,
    GY,
    GH,
    N,
    M,
    n_blocks,
    D: tl.constexpr,
    DP: tl.constexpr,
    POWER: tl.constexpr,
    ACC: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_M: tl.constexpr,
):
    """grad_h_j = -eps sum_i w_i pi_ij and grad_y_j = sum_i w_i pi_ij k_ij (y_j - x_i).

    Streams the rows of one block of columns, re-using the row log-normalizers ``lse`` saved
    by the forward kernel: ``P_j = sum_i w_i pi_ij``, ``Q_j = sum_i w_i pi_ij k_ij`` and
    ``U_j = sum_i w_i pi_ij k_ij x_i``; ``grad_y_j = Q_j y_j - U_j``.
    """
    pid = tl.program_id(0).to(tl.int64)
    b = pid // n_blocks
    start_m = (pid % n_blocks) * BLOCK_M
    n_hi = tl.load(N_VALID + b)
    m_hi = tl.load(M_VALID + b)
    inv_eps = tl.load(INV_EPS)
    neg_eps = tl.load(NEG_EPS)

    offs_m = start_m + tl.arange(0, BLOCK_M)
    m_mask = offs_m < m_hi
    offs_d = tl.arange(0, DP)
    x_base = X + b * N * D
    y_base = Y + b * M * D
    hj = tl.load(H + b * M + offs_m, mask=m_mask, other=float("-inf")).to(ACC)

    col_mass = tl.full((BLOCK_M,), 0.0, ACC)
    col_sum = tl.full((BLOCK_M,), 0.0, ACC)
    col_vec = tl.full((BLOCK_M, DP), 0.0, ACC)
    n_stop = tl.where(start_m < m_hi, n_hi, 0)
    for start_n in range(0, n_stop, BLOCK_N):
        offs_n = tl.arange(0, BLOCK_N).to(tl.int64) + start_n
        n_mask = offs_n < n_hi
        lse = tl.load(LSE + b * N + offs_n, mask=n_mask, other=float("-inf"))
        finite = lse != float("-inf")
        lse = tl.where(finite, lse, float("inf"))
        w = tl.load(W + b * N + offs_n, mask=n_mask, other=0.0).to(ACC)
        w = tl.where(finite, w, 0.0)
        sq = _tile_sqdist(x_base, y_base, offs_n, offs_m, n_mask, m_mask, D, ACC, BLOCK_N, BLOCK_M)
        cost, coef = _cost_and_coef(sq, POWER)
        wpi = w[:, None] * tl.exp(hj[None, :] - cost * inv_eps - lse[:, None])
        col_mass += tl.reduce(wpi, 0, _add)
        wk = wpi * coef
        col_sum += tl.reduce(wk, 0, _add)
        if DP >= 16:  # (BLOCK_M, BLOCK_N) @ (BLOCK_N, DP), full precision (no TF32)
            xd_mask = n_mask[:, None] & (offs_d[None, :] < D)
            x_tile = tl.load(
                x_base + offs_n[:, None] * D + offs_d[None, :], mask=xd_mask, other=0.0
            ).to(ACC)
            col_vec += tl.dot(tl.trans(wk), x_tile, input_precision="ieee", out_dtype=ACC)
        else:
            for d in range(D):
                xd = tl.load(x_base + offs_n * D + d, mask=n_mask, other=0.0).to(ACC)
                ud = tl.reduce(wk * xd[:, None], 0, _add)
                col_vec += tl.where(offs_d[None, :] == d, ud[:, None], 0.0)

    yd_mask = m_mask[:, None] & (offs_d[None, :] < D)
    y_tile = tl.load(y_base + offs_m[:, None] * D + offs_d[None, :], mask=yd_mask, other=0.0).to(
        ACC
    )
    gy = tl.where(yd_mask, col_sum[:, None] * y_tile - col_vec, 0.0)
    out_mask = (offs_m[:, None] < M) & (offs_d[None, :] < D)
    tl.store(GY + b * M * D + offs_m[:, None] * D + offs_d[None, :], gy, mask=out_mask)
    gh = tl.where(m_mask, neg_eps * col_mass, 0.0)
    tl.store(GH + b * M + offs_m, gh, mask=offs_m < M)
