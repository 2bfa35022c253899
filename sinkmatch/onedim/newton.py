r"""The one-dimensional Newton correction that removes the slow modes of Sinkhorn.

Sinkhorn iterations damp rough errors of the potentials at once but smooth ones slowly: from the
exact unregularized warm start the L1 marginal error of the CSS-CCNN workload decays like
:math:`1/k` (:math:`10^{-5}` after 3,000 iterations at 1,568 points). On the line the slow part
of the Hessian of the semi-dual has a closed-form inverse.

Take the semi-dual in :math:`f` at a point whose columns are exact,
:math:`S(f) = \langle a, f\rangle + \langle b, T_y(f)\rangle`. Its Hessian is
:math:`-\tfrac1\varepsilon L` with the graph Laplacian
:math:`L = \mathrm{diag}(P\mathbb 1) - P\,\mathrm{diag}(1/b)\,P^\top` on the (sorted) ``x`` atoms,
and :math:`u^\top L u = \sum_j b_j \mathrm{Var}_j(u)` (conditional variances under the columns of
the plan). We replace :math:`L` by a *path* Laplacian with one conductance :math:`w_k` per gap
:math:`(x_k, x_{k+1})`, chosen so that both agree exactly on linear functions:
:math:`w_k = \Phi_k / (x_{k+1} - x_k)` with the flux

.. math::

    \Phi_k = \tfrac1\varepsilon \sum_{i > k} \big(x_i (P\mathbb 1)_i - (P m)_i\big),
    \qquad m_j = \mathbb E_P[x \mid y_j],

that a unit slope of :math:`f` drives across the gap. A path Laplacian is inverted by two
cumulative sums: moving the mass :math:`R_k = \sum_{i \le k} (a_i - (P\mathbb 1)_i)` across gap
:math:`k` takes :math:`f_{k+1} - f_k = -R_k / w_k`. The correction is applied together with the
Sinkhorn update (additive two-level preconditioner, damped by ``beta``); both data,
:math:`P\mathbb 1` and :math:`P m`, come from the soft-min sums the iteration computes anyway.
"""

from __future__ import annotations

import torch
from torch import Tensor

from sinkmatch.onedim.layout import Line

__all__ = ["newton_direction", "segment_cumsum", "segment_sum"]


def segment_sum(v: Tensor, line: Line) -> Tensor:
    """Per-problem sums of atom values ``v`` ((n,) or (n, C)), (B,) or (B, C)."""
    n_prob = line.offsets.numel() - 1
    out = v.new_zeros((n_prob, *v.shape[1:]))
    return out.index_add_(0, line.prob, v)


def segment_cumsum(v: Tensor, line: Line) -> Tensor:
    """Inclusive cumulative sums of ``v`` ((n,)) restarting at every problem."""
    cs = torch.cumsum(v, 0)
    before = torch.cat([cs.new_zeros(1), cs])[line.offsets[:-1]]
    return cs - before[line.prob]


def newton_direction(
    line: Line,
    target: Tensor,
    marginal: Tensor,
    moment: Tensor,
    eps: float,
    slope_cap: Tensor | None = None,
):
    r"""The path-Laplacian Newton step on one side, mean-free per problem, (n,).

    Args:
        line: The atoms of the side (positions sorted per problem).
        target ((n,) Tensor): The marginal the side must reach (its weights).
        marginal ((n,) Tensor): The current marginal of the plan on this side.
        moment ((n,) Tensor): :math:`(P m)_i`, the plan applied to the other side's conditional
            mean of this side's position (same plan as ``marginal``).
        eps: ε.
        slope_cap ((B,) Tensor, optional): Largest change of slope per problem: the step across
            a gap of width ``h`` is clipped to ``slope_cap * h`` (a trust region; a gap whose
            flux is at rounding level would otherwise get an unbounded step).

    Returns:
        (n,) Tensor: The increment ``d`` of this side's potential (ascent direction of the
        semi-dual, zero weighted mean per problem).
    """
    pos = line.pos
    flux_terms = pos * marginal - moment
    total = segment_sum(flux_terms, line)[line.prob]
    after = total - segment_cumsum(flux_terms, line)  # sum over atoms right of the gap
    mass = segment_cumsum(target - marginal, line)
    gap = torch.zeros_like(pos)
    gap[:-1] = pos[1:] - pos[:-1]
    last = torch.zeros_like(pos, dtype=torch.bool)
    last[line.offsets[1:] - 1] = True
    ok = ~last & (after > 0)
    step = torch.where(ok, -mass * gap * eps / torch.where(ok, after, 1.0), 0.0)
    if slope_cap is not None:
        cap = slope_cap[line.prob] * gap
        step = torch.maximum(torch.minimum(step, cap), -cap)
    # d_{k+1} = d_k + step_k: an exclusive cumulative sum of the steps per problem
    d = segment_cumsum(step, line) - step
    return d - segment_sum(d * target, line)[line.prob] / segment_sum(target, line)[line.prob]
