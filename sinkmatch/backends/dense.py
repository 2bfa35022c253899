r"""Dense softmin backend: materializes the (B, N, M) cost matrix.

The fastest backend for small problems (``B·N·M`` up to a few million entries): one
``cost.matrix`` call and one log-sum-exp, differentiated by autograd. It is also the plain torch
reference the online and Triton kernels are tested against.

Inside the solver (:class:`DenseGeometry`) the cost matrix is computed once per solve and, when
the loop runs without a graph, each half step is one matrix-vector product with a
:class:`StabilizedKernel`.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from sinkmatch._checks import compute_dtype
from sinkmatch.backends.base import Backend, Geometry, Problem, last_positive
from sinkmatch.costs import Cost, is_power_cost
from sinkmatch.plan import EXP_FLOOR

__all__ = [
    "DenseGeometry",
    "DenseSoftmin",
    "MatrixGeometry",
    "StabilizedKernel",
    "batched_mv",
    "logsumexp",
]


def logsumexp(scores: Tensor, dim: int, *, inplace: bool = False) -> Tensor:
    """``torch.logsumexp`` that skips terms below ``exp(EXP_FLOOR)`` relative to the maximum.

    Differentiable (dropped terms get a zero gradient, so ``-inf`` padding gets exactly zero);
    rows that are entirely ``-inf`` give ``-inf``. With ``inplace=True`` and no gradient being
    recorded, ``scores`` is overwritten (saves two passes of allocation). Clamping before ``exp``
    matters for speed: after the max shift most of a Sinkhorn kernel at small eps lies in the
    float underflow range, where ``exp`` is slow (:mod:`sinkmatch.plan`).
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


def softmin_matrix(eps: float, c: Tensor, h: Tensor) -> Tensor:
    r"""Soft-min :math:`-\varepsilon \log \sum_j \exp(h_j - C_{ij}/\varepsilon)` of a cost matrix.

    ``c`` is (B, N, M), ``h`` (B, M); returns (B, N).
    """
    scores = torch.add(h[:, None, :], c, alpha=-1.0 / eps)
    return -eps * logsumexp(scores, dim=2, inplace=True)


class DenseSoftmin(Backend):
    r"""Soft-min over a materialized cost matrix.

    .. math::

        \operatorname{out}_i = -\varepsilon \log \sum_j \exp(h_j - C_{ij} / \varepsilon)

    Memory is ``O(B·N·M)``; gradients come from autograd. Any cost works, callables included.
    float16/bfloat16 inputs are computed in float32 (the output is float32), like the kernels.

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
        dtype = compute_dtype(x, y, h)
        x, y, h = x.to(dtype), y.to(dtype), h.to(dtype)
        return softmin_matrix(eps, cost.matrix(x, y), h)

    def prepare(
        self, problem: Problem, *, differentiable_loop: bool = False, allow_sync: bool = True
    ) -> DenseGeometry:
        """A :class:`DenseGeometry`, or a :class:`MatrixGeometry` for a precomputed cost matrix.

        See :meth:`sinkmatch.backends.base.Backend.prepare`.
        """
        kind = DenseGeometry if problem.cost_matrix is None else MatrixGeometry
        return kind(self, problem, differentiable_loop=differentiable_loop, allow_sync=allow_sync)


class DenseGeometry(Geometry):
    """Dense half steps: one cost matrix per solve, and a kernel-domain fast path.

    The cost matrix is computed on the first half step (with a graph only when the loop is
    differentiated) and reused by every later one. When the loop runs without a graph and may
    synchronise (``grad="envelope"``, not fixed-iteration mode), each half step is one
    matrix-vector product with a :class:`StabilizedKernel`, rebuilt at every new ε and whenever it
    reports an unsafe row; the log-domain soft-min remains the fallback. The final step then uses
    the kernel's matrix-vector backward for the squared cost. Plan reductions are the generic
    streaming ones.
    """

    def __init__(self, backend: Backend, problem: Problem, **options: bool):
        super().__init__(backend, problem, **options)
        self._use_kernel = not self.differentiable_loop and self.allow_sync
        self._matrix: Tensor | None = None
        self._kernel: StabilizedKernel | None = None

    def _cost(self, *, transposed: bool) -> Tensor:
        p = self.problem
        if self._matrix is None:
            self._matrix = p.cost.matrix(p.x, p.y)
        # x = y: the matrix is its own transpose (kept as is, bit for bit)
        return self._matrix.transpose(1, 2) if transposed and not p.symmetric else self._matrix

    def _kernel_step(self, eps: float, h: Tensor, *, rows: bool, f=None, g=None) -> Tensor | None:
        if not self._use_kernel:
            return None
        p = self.problem
        if self._kernel is None or self._kernel.eps != eps:
            self._kernel = StabilizedKernel(self._cost(transposed=False), eps, p.a > 0, p.b > 0)
            self._kernel.rebuild(f=f, g=g)
        kern = self._kernel
        out = kern.rows(h) if rows else kern.cols(h)
        if out is None:  # potentials drifted from the references: absorb them and retry
            kern.rebuild(f=f, g=g)
            out = kern.rows(h) if rows else kern.cols(h)
        return out

    def f_update(self, g: Tensor, eps: float) -> Tensor:
        h = self.problem.log_b + g / eps
        out = self._kernel_step(eps, h, rows=True, g=g)
        return softmin_matrix(eps, self._cost(transposed=False), h) if out is None else out

    def g_update(self, f: Tensor, eps: float) -> Tensor:
        h = self.problem.log_a + f / eps
        out = self._kernel_step(eps, h, rows=False, f=f)
        return softmin_matrix(eps, self._cost(transposed=True), h) if out is None else out

    def final_f(self, g: Tensor, eps: float) -> Tensor:
        """The kernel's differentiable rows when valid at this ε (squared cost), else generic."""
        p, kern, out = self.problem, self._kernel, None
        if kern is not None and kern.eps == eps and is_power_cost(p.cost) and p.cost.power == 2:
            out = kern.rows_sqeuclidean(p.x, p.y, p.log_b + g / eps, scale=p.cost.scale)
        if out is None:
            return super().final_f(g, eps)  # releases the caches too
        self.release()
        return out

    def release(self) -> None:
        self._matrix = self._kernel = None


class MatrixGeometry(DenseGeometry):
    r"""A problem given by its cost matrix :math:`C` (B, N, M) instead of points.

    The half steps are :class:`DenseGeometry`'s on the given matrix (kernel fast path
    included); the final step :math:`f = \operatorname{softmin}(C, \log b + g/\varepsilon)` is
    differentiable with respect to :math:`C` (its gradient :math:`\partial \langle a, f\rangle /
    \partial C_{ij} = a_i \pi_{ij}` is the plan: the envelope gradient of
    :math:`\mathrm{OT}_\varepsilon`), ``g`` and the weights. There are no points, so no
    barycentric map.
    """

    def _cost(self, *, transposed: bool) -> Tensor:
        c = self.problem.cost_matrix
        return c.transpose(1, 2) if transposed and not self.problem.symmetric else c

    def final_f(self, g: Tensor, eps: float) -> Tensor:
        self.release()
        p = self.problem
        return softmin_matrix(eps, p.cost_matrix, p.log_b + g / eps)

    def _row_plan(self, g: Tensor, eps: float) -> Tensor:
        p = self.problem
        return torch.softmax((p.log_b + g / eps)[:, None, :] - p.cost_matrix / eps, dim=2)

    def transport_cost(self, g: Tensor, eps: float, *, differentiable: bool = False) -> Tensor:
        p = self.problem
        if differentiable:
            return (p.a * (self._row_plan(g, eps) * p.cost_matrix).sum(2)).sum(-1)
        with torch.no_grad():
            pi = self._row_plan(g.detach(), eps)
            return (p.a * (pi * p.cost_matrix).sum(2)).sum(-1)

    def barycentric_map(self, g: Tensor, eps: float) -> Tensor:
        raise ValueError(
            "barycentric_map() needs points; this problem was given by a cost_matrix (use "
            "plan() and multiply it by your target points)"
        )

    def plan(self, f: Tensor, g: Tensor, eps: float) -> Tensor:
        p = self.problem
        with torch.no_grad():
            logp = (
                p.log_a[:, :, None]
                + p.log_b[:, None, :]
                + (f.detach()[:, :, None] + g.detach()[:, None, :] - p.cost_matrix) / eps
            )
            return logp.exp()


# A stabilized kernel row is trusted when its sum is above this (relative to a row maximum of 1).
_KERNEL_SAFE_SUM = math.exp(-50.0)
# Batched matrix-vector products: one torch.mv per problem when a problem has at least this many
# entries (on CPU a bmm with a single column is then slower than a loop of mv's), else one bmm
# (many small problems: the Python loop would dominate). Measured by benchmarks/constants.py
# (benchmarks/results/constants.csv, study "batched_mv").
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


class StabilizedKernel:
    r"""Kernel-domain soft-min at one ε around reference potentials (the solver's dense fast path).

    With reference potentials :math:`(\tilde f, \tilde g)` that satisfy
    :math:`\tilde f_i + \tilde g_j \le C_{ij}` (obtained by two c-transforms, so that every row
    and column of the kernel has entries close to 1),

    .. math::

        \tilde K_{ij} = e^{(\tilde f_i + \tilde g_j - C_{ij})/\varepsilon}, \qquad
        \operatorname{softmin}(h)_i = \tilde f_i - \varepsilon\Big(c + \log \sum_j \tilde K_{ij}
        e^{h_j - \tilde g_j/\varepsilon - c}\Big),

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
        n_valid = last_positive(row_mask).tolist()
        m_valid = last_positive(col_mask).tolist()
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
        r"""c-transform :math:`\min_k C - p_k` over the supported points ``k`` along ``dim``.

        ``dim`` is 1 (over rows) or 2 (over columns).
        """
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
        """Soft-min over the rows, (B, M); ``None`` when unsafe (trailing padding: as ``rows``)."""
        lengths = None if self._lengths is None else self._lengths[::-1]
        return self._apply(self.kernel.transpose(1, 2), h, self.g_ref, self.f_ref, lengths)

    def rows_sqeuclidean(
        self, x: Tensor, y: Tensor, h: Tensor, *, scale: float = 1.0
    ) -> Tensor | None:
        r"""Differentiable soft-min over the columns for the squared cost; ``None`` when unsafe.

        For :math:`C = s\|x - y\|^2` the backward uses matrix-vector products with the kernel
        only (plan :math:`\pi_{ij} = \tilde K_{ij} v_j / s_i`): :math:`\partial_{x_i} = 2s\bar
        o_i(x_i - \sum_j \pi_{ij} y_j)`, :math:`\partial_{y_j} = 2s\sum_i \bar o_i
        \pi_{ij}(y_j - x_i)`, :math:`\partial_{h_j} = -\varepsilon \sum_i \bar o_i \pi_{ij}`.
        ``x`` and ``y`` must be the points the kernel was built from, ``scale`` the cost's
        :math:`s`.
        """
        with torch.no_grad():
            v, shift = self._weights(h.detach(), self.g_ref)
            total = batched_mv(self.kernel, v)
            if not bool((total > _KERNEL_SAFE_SUM).all()):
                return None
        return _KernelRowsSq.apply(x, y, h, self, v, shift, total, scale)


class _KernelRowsSq(torch.autograd.Function):
    """Forward/backward of :meth:`StabilizedKernel.rows_sqeuclidean`."""

    @staticmethod
    def forward(ctx, x, y, h, kern, v, shift, total, scale):  # type: ignore[override]
        ctx.save_for_backward(x, y, v, total)
        ctx.kern, ctx.two_s = kern, 2.0 * scale
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
            gx = ctx.two_s * (grad_out.unsqueeze(-1) * x - w.unsqueeze(-1) * kvy)
        if ctx.needs_input_grad[1]:
            wx = w.unsqueeze(-1) * x  # (B, N, D)
            ktwx = (
                batched_mv(kt, wx[..., 0]).unsqueeze(-1) if x.shape[-1] == 1 else torch.bmm(kt, wx)
            )
            gy = ctx.two_s * v.unsqueeze(-1) * (y * ktw - ktwx)
        if ctx.needs_input_grad[2]:
            gh = -kern.eps * v * ktw.squeeze(-1)
        return gx, gy, gh, None, None, None, None, None
