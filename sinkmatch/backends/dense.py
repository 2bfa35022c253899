"""Dense softmin backend: materializes the (B, N, M) cost matrix.

The fastest backend for small problems (``B·N·M`` up to a few million entries): one
``cost.matrix`` call and one ``torch.logsumexp``, differentiated by autograd.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from sinkmatch.costs import Cost

__all__ = [
    "EXP_FLOOR",
    "DenseSoftmin",
    "PrecomputedCost",
    "StabilizedKernel",
    "batched_mv",
    "logsumexp",
]

# Terms below exp(-80) of the largest one are dropped (their total stays below 1e-26 relative
# for up to 1e9 terms, far under float64 precision). Clamping before ``exp`` matters for speed:
# on x86 CPUs ``torch.exp`` of arguments far below -87 (float32 underflow) or producing
# subnormals is 10-40x slower than in the normal range, and after the max shift most of the
# Sinkhorn kernel at small eps lies there.
EXP_FLOOR = -80.0


def logsumexp(scores: Tensor, dim: int, *, inplace: bool = False) -> Tensor:
    """``torch.logsumexp`` that skips terms below ``exp(EXP_FLOOR)`` relative to the maximum.

    Differentiable (dropped terms get a zero gradient, so ``-inf`` padding gets exactly zero);
    rows that are entirely ``-inf`` give ``-inf``. With ``inplace=True`` and no gradient being
    recorded, ``scores`` is overwritten (saves two passes of allocation).
    """
    top = scores.detach().amax(dim=dim, keepdim=True)
    shift = torch.where(torch.isfinite(top), top, torch.zeros_like(top))
    if scores.requires_grad and torch.is_grad_enabled():
        total = (scores - shift).clamp_min(EXP_FLOOR).exp().sum(dim)
    else:
        work = scores.sub_(shift) if inplace else scores - shift
        total = work.clamp_min_(EXP_FLOOR).exp_().sum(dim)
    out = total.log() + shift.squeeze(dim)
    top = top.squeeze(dim)
    return torch.where(top == -torch.inf, top, out)


class PrecomputedCost(Cost):
    """A cost matrix computed once and reused by the solver's loop (dense backend only).

    Args:
        matrix ((B, N, M) Tensor): The cost matrix; ``matrix(x, y)`` returns it unchanged
            after checking the shapes of ``x`` and ``y``.
        base: The cost it was computed from (its ``name`` and ``power`` are kept).
    """

    def __init__(self, matrix: Tensor, base: Cost):
        self._matrix = matrix
        self.base = base
        self.name = base.name
        self.power = base.power

    def matrix(self, x: Tensor, y: Tensor) -> Tensor:
        expected = (x.shape[0], x.shape[1], y.shape[1])
        if tuple(self._matrix.shape) != expected:
            raise ValueError(
                f"precomputed cost has shape {tuple(self._matrix.shape)}, points need {expected}"
            )
        return self._matrix

    def diameter(self, x: Tensor, y: Tensor) -> Tensor:
        return self.base.diameter(x, y)


class DenseSoftmin:
    """Soft-min over a materialized cost matrix.

    .. math::

        \\operatorname{out}_i = -\\varepsilon \\log \\sum_j \\exp(h_j - C_{ij} / \\varepsilon)

    Memory is ``O(B·N·M)``; gradients come from autograd. Any cost works, callables included.

    Example:
        >>> import torch
        >>> from sinkmatch.costs import get_cost
        >>> x = torch.zeros(1, 2, 1); y = torch.zeros(1, 3, 1); h = torch.zeros(1, 3)
        >>> DenseSoftmin().softmin(1.0, x, y, h, get_cost("sqeuclidean"))
        tensor([[-1.0986, -1.0986]])
    """

    name = "dense"

    def softmin(self, eps: float, x: Tensor, y: Tensor, h: Tensor, cost: Cost) -> Tensor:
        """See :class:`sinkmatch.backends.base.SoftminBackend`."""
        scores = torch.add(h[:, None, :], cost.matrix(x, y), alpha=-1.0 / eps)
        return -eps * logsumexp(scores, dim=2, inplace=True)

    def __repr__(self) -> str:
        return "DenseSoftmin()"


# A stabilized kernel row is trusted when its sum is above this (relative to a row maximum of 1).
_KERNEL_SAFE_SUM = math.exp(-50.0)
# Batched matrix-vector products: one torch.mv per problem when a problem has at least this many
# entries (on CPU, bmm with a single column and B > 1 runs 2-5x slower than a loop of mv's, one
# thread, float32), else one bmm (many small problems: the Python loop would dominate).
_MV_LOOP_MIN_ENTRIES = 1 << 15


def batched_mv(
    k: Tensor,
    v: Tensor,
    *,
    lengths: tuple[list[int], list[int]] | None = None,
    fill: float = 1.0,
) -> Tensor:
    """``(B, N, M) @ (B, M) -> (B, N)``, as a loop of ``torch.mv`` or one ``torch.bmm``.

    ``k`` may be a transposed view. With ``lengths = (rows, cols)`` (valid sizes per problem,
    padding trailing), the loop multiplies only ``k[i, :rows[i], :cols[i]]`` and writes ``fill``
    into the padded rows (the caller must not need them); the single-``bmm`` path ignores it.
    Not differentiable (used under ``torch.no_grad()`` and in custom backward functions).
    """
    batch, n, m = k.shape
    if (batch == 1 and lengths is None) or n * m < _MV_LOOP_MIN_ENTRIES:
        return torch.bmm(k, v.unsqueeze(-1)).squeeze(-1)
    out = torch.empty(batch, n, dtype=torch.promote_types(k.dtype, v.dtype), device=k.device)
    for i in range(batch):
        if lengths is None:
            torch.mv(k[i], v[i], out=out[i])
        else:
            r, c = lengths[0][i], lengths[1][i]
            torch.mv(k[i, :r, :c], v[i, :c], out=out[i, :r])
            out[i, r:] = fill
    return out


def _valid_lengths(mask: Tensor) -> list[int]:
    """One past the last ``True`` per problem (the size without trailing padding)."""
    idx = torch.arange(1, mask.shape[1] + 1, device=mask.device)
    return torch.where(mask, idx, 0).amax(1).tolist()


class StabilizedKernel:
    """Kernel-domain soft-min at one ε around reference potentials (the solver's dense fast path).

    With reference potentials :math:`(\\tilde f, \\tilde g)` that satisfy
    :math:`\\tilde f_i + \\tilde g_j \\le C_{ij}` (obtained by two c-transforms, so that every row
    and column of the kernel has entries close to 1),

    .. math::

        \\tilde K_{ij} = e^{(\\tilde f_i + \\tilde g_j - C_{ij})/\\varepsilon}, \\qquad
        \\operatorname{softmin}(h)_i = \\tilde f_i - \\varepsilon\\Big(c + \\log \\sum_j \\tilde K_{ij}
        e^{h_j - \\tilde g_j/\\varepsilon - c}\\Big),

    an exact identity (Schmitzer 2019's absorption) that turns each half step into one
    matrix-vector product instead of a log-sum-exp over ``(B, N, M)`` exponentials. Entries
    below ``exp(EXP_FLOOR)`` are dropped; a row whose sum falls below ``exp(-50)`` is reported
    as unsafe (``None``) so that the caller rebuilds the references or uses the log domain.
    No gradients: used inside the solver's ``torch.no_grad()`` loop only.

    Args:
        cost ((B, N, M) Tensor): The cost matrix.
        eps: Temperature.
        row_mask ((B, N) bool Tensor): Rows with positive weight.
        col_mask ((B, M) bool Tensor): Columns with positive weight.
    """

    def __init__(self, cost: Tensor, eps: float, row_mask: Tensor, col_mask: Tensor):
        self.cost, self.eps = cost, eps
        self.row_mask, self.col_mask = row_mask, col_mask
        self.kernel: Tensor | None = None
        n_valid, m_valid = _valid_lengths(row_mask), _valid_lengths(col_mask)
        # trailing padding (grouped losses): the loop's products skip it
        padded = min(n_valid) < cost.shape[1] or min(m_valid) < cost.shape[2]
        self._lengths = (n_valid, m_valid) if padded else None

    def rebuild(self, *, f: Tensor | None = None, g: Tensor | None = None) -> None:
        """Reference potentials from ``g`` (c-transform to rows first) or from ``f``."""
        if g is not None:
            f_ref = self._ctransform(g, self.col_mask, dim=2)
            g_ref = self._ctransform(f_ref, self.row_mask, dim=1)
        else:
            g_ref = self._ctransform(f, self.row_mask, dim=1)
            f_ref = self._ctransform(g_ref, self.col_mask, dim=2)
        # log K = (f_ref + g_ref - C) / eps <= 0, built in place from one copy of C
        logk = torch.sub(self.cost, f_ref[:, :, None]).sub_(g_ref[:, None, :]).mul_(-1.0 / self.eps)
        negligible = logk < EXP_FLOOR
        self.kernel = logk.clamp_min_(EXP_FLOOR).exp_().masked_fill_(negligible, 0.0)
        self.f_ref, self.g_ref = f_ref, g_ref

    def _ctransform(self, pot: Tensor, mask: Tensor, *, dim: int) -> Tensor:
        r""":math:`\min_k C - p_k` over the supported points ``k`` along ``dim`` (1: rows, 2: columns)."""
        expand = pot[:, None, :] if dim == 2 else pot[:, :, None]
        diff = self.cost - expand
        if not bool(mask.all()):
            keep = mask[:, None, :] if dim == 2 else mask[:, :, None]
            diff.masked_fill_(~keep, math.inf)
        return diff.amin(dim)

    def _weights(self, h: Tensor, in_ref: Tensor) -> tuple[Tensor, Tensor]:
        z = h - in_ref / self.eps
        shift = z.amax(-1, keepdim=True)
        z = z - shift
        negligible = z < EXP_FLOOR
        return z.clamp_min_(EXP_FLOOR).exp_().masked_fill_(negligible, 0.0), shift

    def _apply(
        self, kernel: Tensor, h: Tensor, out_ref: Tensor, in_ref: Tensor, lengths
    ) -> Tensor | None:
        v, shift = self._weights(h, in_ref)
        total = batched_mv(kernel, v, lengths=lengths)
        if not bool((total > _KERNEL_SAFE_SUM).all()):
            return None
        return out_ref - self.eps * (shift + total.log())

    def rows(self, h: Tensor) -> Tensor | None:
        """Soft-min over the columns, (B, N); ``None`` when unsafe.

        Rows after the last positive-weight row are not computed (their value is ``f_ref``).
        """
        return self._apply(self.kernel, h, self.f_ref, self.g_ref, self._lengths)

    def cols(self, h: Tensor) -> Tensor | None:
        """Soft-min over the rows, (B, M); ``None`` when unsafe (trailing padding as in ``rows``)."""
        lengths = None if self._lengths is None else self._lengths[::-1]
        return self._apply(self.kernel.transpose(1, 2), h, self.g_ref, self.f_ref, lengths)

    def rows_sqeuclidean(self, x: Tensor, y: Tensor, h: Tensor) -> Tensor | None:
        """Differentiable soft-min over the columns for the squared cost; ``None`` when unsafe.

        The backward uses matrix-vector products with the kernel only (plan
        :math:`\\pi_{ij} = \tilde K_{ij} v_j / s_i`): :math:`\\partial_{x_i} = 2\bar o_i(x_i -
        \\sum_j \\pi_{ij} y_j)`, :math:`\\partial_{y_j} = 2\\sum_i \bar o_i \\pi_{ij}(y_j - x_i)`,
        :math:`\\partial_{h_j} = -\varepsilon \\sum_i \bar o_i \\pi_{ij}`. ``x`` and ``y`` must be
        the points the kernel was built from.
        """
        with torch.no_grad():
            v, shift = self._weights(h.detach(), self.g_ref)
            total = batched_mv(self.kernel, v)
            if not bool((total > _KERNEL_SAFE_SUM).all()):
                return None
        return _KernelRowsSq.apply(x, y, h, self, v, shift, total)


class _KernelRowsSq(torch.autograd.Function):
    """Forward/backward of :meth:`StabilizedKernel.rows_sqeuclidean`."""

    @staticmethod
    def forward(ctx, x, y, h, kern, v, shift, total):  # type: ignore[override]
        ctx.save_for_backward(x, y, v, total)
        ctx.kern = kern
        return kern.f_ref - kern.eps * (shift + total.log())

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):  # type: ignore[override]
        x, y, v, total = ctx.saved_tensors
        kern = ctx.kern
        k = kern.kernel.to(grad_out.dtype)
        kt = k.transpose(1, 2)
        w = grad_out / total  # (B, N)
        ktw = batched_mv(kt, w).unsqueeze(-1)  # (B, M, 1)
        gx = gy = gh = None
        if ctx.needs_input_grad[0]:
            vy = v.unsqueeze(-1) * y  # (B, M, D)
            kvy = batched_mv(k, vy[..., 0]).unsqueeze(-1) if y.shape[-1] == 1 else torch.bmm(k, vy)
            gx = 2.0 * (grad_out.unsqueeze(-1) * x - w.unsqueeze(-1) * kvy)
        if ctx.needs_input_grad[1]:
            wx = w.unsqueeze(-1) * x  # (B, N, D)
            ktwx = (
                batched_mv(kt, wx[..., 0]).unsqueeze(-1) if x.shape[-1] == 1 else torch.bmm(kt, wx)
            )
            gy = 2.0 * v.unsqueeze(-1) * (y * ktw - ktwx)
        if ctx.needs_input_grad[2]:
            gh = -kern.eps * v * ktw.squeeze(-1)
        return gx, gy, gh, None, None, None, None
