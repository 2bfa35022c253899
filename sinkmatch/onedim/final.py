r"""The differentiable last half step :math:`f = T_x(g)` and its :math:`O(N + M)` backward.

The envelope gradient of :math:`\mathrm{OT}_\varepsilon` is the gradient of the semi-dual
:math:`\langle a, T_x(g)\rangle + \langle b, g\rangle` at the last ``g``, held fixed. With the
row-normalized plan :math:`\pi_{ij} = b_j e^{(f_i + g_j - (x_i - y_j)^2)/\varepsilon}` and a
cotangent :math:`w_i` of :math:`f_i`:

.. math::

    \frac{\partial}{\partial x_i} = 2 w_i (x_i - \bar y_i), \quad
    \frac{\partial}{\partial y_j} = 2 \sum_i w_i \pi_{ij} (y_j - x_i), \quad
    \frac{\partial}{\partial b_j} = -\varepsilon \sum_i w_i \pi_{ij} / b_j,

with the barycentric map :math:`\bar y_i = \sum_j \pi_{ij} y_j` (a channel of the forward sum).
The column sums come from one soft-min sum from the ``x`` atoms to the ``y`` atoms with log
weights :math:`f_i / \varepsilon` and four nonnegative channels (positive and negative parts of
:math:`w`, times 1 and times :math:`x - \min x`). Nothing depends on the number of iterations,
and nothing of size :math:`N \times M` is formed.
"""

from __future__ import annotations

import torch
from torch import Tensor

from sinkmatch.onedim.layout import Line
from sinkmatch.onedim.sqeuclidean import SqTransform

__all__ = ["FinalStep", "atom_values", "point_values", "problem_min"]


def point_values(line: Line, v: Tensor) -> Tensor:
    """Atom values ``v`` ((n,) or (n, C)) spread back to the input points, (B, N) or (B, N, C).

    Points left out of the line get 0.
    """
    idx = line.inverse
    ext = torch.cat([v, v.new_zeros((1, *v.shape[1:]))])
    return ext[torch.where(idx >= 0, idx, v.shape[0])]


def atom_values(line: Line, v: Tensor) -> Tensor:
    """Per-atom sums of the input point values ``v`` ((B, N)) over the points of each atom."""
    out = v.new_zeros(line.n_atoms)
    ok = line.inverse >= 0
    return out.index_add_(0, line.inverse[ok], v[ok])


def problem_min(line: Line) -> Tensor:
    """Smallest atom position per problem, (B,) (0 for problems without atoms)."""
    first = line.offsets[:-1]
    nonempty = line.offsets[1:] > first
    ext = torch.cat([line.pos, line.pos.new_zeros(1)])
    return torch.where(nonempty, ext[first], 0.0)


class FinalStep(torch.autograd.Function):
    r"""``f = T_x(g)`` at the ``x`` support points, differentiable in ``x``, ``y`` and ``b``.

    ``forward(x (B, N), y (B, M), b (B, M), g_atoms, f_atoms, bary, fwd, bwd, eps)``: the values
    ``f_atoms = T_x(g)`` and the barycentric map on the ``x`` support atoms are computed by the
    caller (the last check of the iteration); ``fwd`` sums from the ``y`` support to the ``x``
    support atoms, ``bwd`` the other way; ``b`` are the normalized weights, ``g_atoms`` the
    (detached) potential on the ``y`` support atoms. Points outside the support get 0 (and no
    gradient).
    """

    @staticmethod
    def forward(ctx, x, y, b, g_atoms, f_atoms, bary, fwd: SqTransform, bwd: SqTransform, eps):
        ctx.fwd, ctx.bwd, ctx.eps = fwd, bwd, eps
        ctx.save_for_backward(x, y, b, g_atoms, f_atoms, bary)
        return point_values(fwd.tgt, f_atoms).to(x.dtype)

    @staticmethod
    def backward(ctx, grad_f: Tensor):
        x, y, b, g_atoms, f_atoms, bary = ctx.saved_tensors
        fwd, bwd, eps = ctx.fwd, ctx.bwd, ctx.eps
        x_line, y_line = fwd.tgt, fwd.src
        inside = x_line.inverse >= 0
        gf = torch.where(inside, grad_f.double(), 0.0)
        grad_x = 2.0 * gf * (x.detach().double() - point_values(x_line, bary))
        w = atom_values(x_line, gf)  # cotangent per x atom (duplicates add up)
        xs = x_line.pos - problem_min(x_line)[x_line.prob]
        wp, wn = w.clamp_min(0.0), (-w).clamp_min(0.0)
        out = bwd(f_atoms / eps, torch.stack([wp, wp * xs, wn, wn * xs], dim=1))
        log_b = torch.log(atom_values(y_line, b.detach().double()))
        scale = torch.exp(out.log_channels + (log_b + g_atoms / eps)[:, None])  # (m, 4)
        mass = scale[:, 0] - scale[:, 2]  # sum_i w_i pi_ij
        first = scale[:, 1] - scale[:, 3] + problem_min(x_line)[y_line.prob] * mass
        grad_y_atom = 2.0 * (y_line.pos * mass - first)
        pos_part = torch.exp(out.log_channels[:, 0] + g_atoms / eps)
        neg_part = torch.exp(out.log_channels[:, 2] + g_atoms / eps)
        grad_b = point_values(y_line, -eps * (pos_part - neg_part))
        grad_y = _spread_atom_grad(y_line, grad_y_atom, b)
        need = ctx.needs_input_grad
        return (
            grad_x.to(x.dtype) if need[0] else None,
            grad_y.to(y.dtype) if need[1] else None,
            grad_b.to(b.dtype) if need[2] else None,
            *([None] * 6),
        )


def _spread_atom_grad(line: Line, grad_atom: Tensor, w: Tensor) -> Tensor:
    r"""Split an atom's position gradient over its points in proportion to their weights."""
    wt = w.detach().double()
    total = atom_values(line, wt)
    share = wt / torch.where(total > 0, total, 1.0)[line.inverse.clamp_min(0)]
    out = point_values(line, grad_atom) * share
    return torch.where(line.inverse >= 0, out, 0.0)
