r"""Exact optimal transport on the line, by sorting.

For two probability measures :math:`\alpha = \sum_i a_i \delta_{x_i}` and
:math:`\beta = \sum_j b_j \delta_{y_j}` on :math:`\mathbb{R}` and the cost
:math:`C(x, y) = |x - y|^p` with :math:`p \ge 1`, the monotone (north-west corner) coupling of
the sorted points is optimal and

.. math::

    W_p^p(\alpha, \beta) = \int_0^1 |F^{-1}(t) - G^{-1}(t)|^p \, dt,

with :math:`F^{-1}, G^{-1}` the quantile functions. Both are piecewise constant, with breaks at the
cumulative weights; merging the two sets of breaks turns the integral into a finite sum. Everything
here is vectorized over the batch with ``torch.sort`` and ``torch.cumsum``:
``O((N + M) log(N + M))`` work per problem and no Python loop over points or problems.

:func:`exact_1d_potentials` returns Kantorovich dual potentials of the same problem, used as the
``init="exact1d"`` warm start of :func:`sinkmatch.sinkhorn`.

Shapes: unlike the solver (whose 2-D input is ``(N, D)``), the functions here read a 2-D tensor as a
batch ``(B, N)`` of 1-D problems; ``(N,)`` is one problem and ``(B, N, 1)`` is the solver's layout.

Example:
    >>> import torch
    >>> from sinkmatch.exact1d import wasserstein_1d
    >>> x = torch.tensor([0.0, 1.0], dtype=torch.float64)
    >>> y = torch.tensor([2.0, 3.0], dtype=torch.float64)
    >>> wasserstein_1d(x, y)  # each point moves by 2: W_2^2 = 4
    tensor(4., dtype=torch.float64)
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from sinkmatch._checks import (
    as_weights,
    check_choice,
    check_finite,
    check_float_tensor,
    check_real,
    check_same_device,
    compute_dtype,
)

__all__ = ["DualPotentials", "exact_1d_potentials", "wasserstein_1d"]

_TIES = ("down", "average")


class DualPotentials(NamedTuple):
    """Kantorovich dual potentials of a batch of 1-D problems.

    Attributes:
        f ((B, N) Tensor): Potential on the source points (``(N,)`` for unbatched input).
        g ((B, M) Tensor): Potential on the target points (``(M,)`` for unbatched input).
    """

    f: Tensor
    g: Tensor


def _as_line_points(x: object, name: str) -> tuple[Tensor, bool]:
    """``(N,)``, ``(B, N)`` or ``(B, N, 1)`` -> ``((B, N) Tensor, batched)``."""
    x = check_float_tensor(name, x)
    if x.ndim == 1:
        out, batched = x[None], False
    elif x.ndim == 2:
        out, batched = x, True
    elif x.ndim == 3 and x.shape[-1] == 1:
        out, batched = x[..., 0], True
    else:
        raise ValueError(
            f"{name} must have shape (N,), (B, N) or (B, N, 1) (1-D points), got shape "
            f"{tuple(x.shape)}"
        )
    if out.shape[-1] == 0:
        raise ValueError(f"{name} must hold at least one point, got shape {tuple(x.shape)}")
    check_finite(name, out)
    return out, batched


def _prepare(x, y, a, b):
    """Validate, promote and sort both sides.

    Returns the sorted positions ``xs (B, N)``, ``ys (B, M)``, sorted normalized weights, the
    sorting permutations and whether the input was batched.
    """
    x2, bx = _as_line_points(x, "x")
    y2, by = _as_line_points(y, "y")
    if bx != by:
        raise ValueError(
            f"x and y must both be batched or both unbatched, got shapes {tuple(x.shape)} and "
            f"{tuple(y.shape)}"
        )
    if x2.shape[0] != y2.shape[0]:
        raise ValueError(
            f"x and y must have the same batch size, got {x2.shape[0]} (x shape "
            f"{tuple(x.shape)}) and {y2.shape[0]} (y shape {tuple(y.shape)})"
        )
    device = check_same_device(x=x2, y=y2, a=a, b=b)
    dtype = compute_dtype(x2, y2, a, b)
    batch, n, m = x2.shape[0], x2.shape[1], y2.shape[1]
    x2, y2 = x2.to(dtype), y2.to(dtype)
    a2 = as_weights(a, "a", batch=batch, n_points=n, dtype=dtype, device=device)
    b2 = as_weights(b, "b", batch=batch, n_points=m, dtype=dtype, device=device)
    xs, ix = torch.sort(x2, dim=-1, stable=True)
    ys, iy = torch.sort(y2, dim=-1, stable=True)
    return xs, ys, a2.gather(-1, ix), b2.gather(-1, iy), ix, iy, bx


def _cost(d: Tensor, p: float) -> Tensor:
    if p == 2.0:
        return d * d
    if p == 1.0:
        return d.abs()
    return d.abs().pow(p)


def wasserstein_1d(
    x: Tensor,
    y: Tensor,
    a: Tensor | None = None,
    b: Tensor | None = None,
    *,
    p: float = 2,
) -> Tensor:
    r"""Exact :math:`W_p^p` between weighted point sets on the line.

    .. math::

        W_p^p = \int_0^1 |F^{-1}(t) - G^{-1}(t)|^p \, dt
              = \sum_k (t_k - t_{k-1}) \, |x_{i(k)} - y_{j(k)}|^p,

    where :math:`t_1 \le t_2 \le \dots` are the merged cumulative weights of both sides and
    :math:`i(k), j(k)` the sorted points whose quantile intervals contain :math:`(t_{k-1}, t_k]`.

    Gradients: with respect to the positions, the gradient is the exact one,
    :math:`\partial W / \partial x_i = \sum_j P_{ij} \, \partial_x |x_i - y_j|^p` for the monotone
    plan :math:`P` (between tied points the split of the gradient follows the stable sort order).
    With respect to the weights the value is piecewise linear in the cumulative weights, and
    autograd returns its gradient wherever no cumulative weight of ``a`` coincides with one of
    ``b`` (elsewhere a one-sided derivative). Weights are normalized per problem first, so that
    gradient is orthogonal to ``a`` (it equals the centred dual potential
    :math:`f_i - \langle a, f \rangle` when the potentials are unique).

    Args:
        x ((N,), (B, N) or (B, N, 1) Tensor): Source points. A 2-D tensor is a batch of problems.
        y ((M,), (B, M) or (B, M, 1) Tensor): Target points, batched like ``x``.
        a ((N,) or (B, N) Tensor, optional): Nonnegative source weights, normalized per problem;
            zeros mark padding. Uniform when ``None``.
        b ((M,) or (B, M) Tensor, optional): Target weights, likewise.
        p: Exponent of the cost :math:`|x - y|^p`, ``p >= 1``.

    Returns:
        (B,) Tensor, or a 0-d Tensor for unbatched input: :math:`W_p^p` per problem, in the
        promoted dtype of the inputs (float16/bfloat16 computed in float32).

    Raises:
        TypeError: Non-tensor or non-floating input, or a non-real ``p``.
        ValueError: Bad shapes, NaN/inf, negative weights, a problem with zero total weight, or
            ``p < 1``.

    Example:
        >>> import torch
        >>> x = torch.tensor([[0.0, 1.0, 2.0]])
        >>> wasserstein_1d(x, x + 0.5, p=1)
        tensor([0.5000])
    """
    p = check_real("p", p, ge=1)  # |x - y|^p is then convex
    xs, ys, a_s, b_s, _, _, batched = _prepare(x, y, a, b)
    n, m = xs.shape[-1], ys.shape[-1]
    cu = torch.cumsum(a_s, dim=-1)
    cv = torch.cumsum(b_s, dim=-1)
    # Merged breaks t_0 <= t_1 <= ... (differentiable through the sort). On a nonempty interval
    # (t_{k-1}, t_k] the quantile index of x is the number of A-breaks merged before position k
    # (every break equal to t_{k-1} sits before k), likewise for y: a combinatorial rule that
    # skips zero-weight points and needs no searchsorted.
    t, order = torch.sort(torch.cat([cu, cv], dim=-1), dim=-1, stable=True)  # (B, N + M)
    dt = torch.diff(t, dim=-1, prepend=torch.zeros_like(t[:, :1]))
    from_x = (order < n).long()
    i = (torch.cumsum(from_x, dim=-1) - from_x).clamp_(max=n - 1)
    j = (torch.cumsum(1 - from_x, dim=-1) - (1 - from_x)).clamp_(max=m - 1)
    value = (dt * _cost(xs.gather(-1, i) - ys.gather(-1, j), p)).sum(-1)
    return value if batched else value[0]


def _staircase_potentials(
    xs: Tensor, ys: Tensor, cu: Tensor, cv: Tensor, p: float, *, down_first: bool
) -> tuple[Tensor, Tensor]:
    """Potentials (sorted order, ungauged) made tight on one north-west-corner staircase.

    ``down_first``: on a tie of cumulative weights, step down (``i += 1``) before right.
    """
    n, batch = xs.shape[-1], xs.shape[0]
    # Staircase: merge the interior breaks (stable sort; on ties the side listed first steps
    # first).
    if down_first:
        keys = torch.cat([cu[:, :-1], cv[:, :-1]], dim=-1).detach()  # (B, N + M - 2)
        order = torch.sort(keys, dim=-1, stable=True).indices
    else:
        m1 = cv.shape[-1] - 1
        keys = torch.cat([cv[:, :-1], cu[:, :-1]], dim=-1).detach()
        raw = torch.sort(keys, dim=-1, stable=True).indices
        order = torch.where(raw < m1, raw + (n - 1), raw - m1)  # back to the A-first numbering
    down = order < (n - 1)  # (B, K - 1): True = step i += 1, False = step j += 1
    zero = torch.zeros((batch, 1), dtype=torch.long, device=xs.device)
    ii = torch.cat([zero, torch.cumsum(down, dim=-1)], dim=-1)  # (B, K) row of cell k
    jj = torch.cat([zero, torch.cumsum(~down, dim=-1)], dim=-1)  # (B, K) column of cell k

    x_k = xs.gather(-1, ii)
    y_k = ys.gather(-1, jj)
    cost_k = _cost(x_k - y_k, p)  # C on the staircase
    # On a step down from row i - 1 to row i in column j, f_i - f_{i-1} = C_ij - C_{i-1, j}.
    x_prev = xs.gather(-1, (ii[:, 1:] - 1).clamp(min=0))
    if p == 2.0:  # factored: no cancellation between two large squares
        step = (x_k[:, 1:] - x_prev) * (x_k[:, 1:] + x_prev - 2.0 * y_k[:, 1:])
    else:
        step = cost_k[:, 1:] - _cost(x_prev - y_k[:, 1:], p)
    step = torch.where(down, step, torch.zeros_like(step))
    u = torch.cat([torch.zeros_like(cost_k[:, :1]), torch.cumsum(step, dim=-1)], dim=-1)
    v = cost_k - u

    # Row i >= 1 is entered right after the step of A_{i-1}; column j >= 1 after that of B_{j-1}.
    rank = torch.empty_like(order).scatter_(
        -1, order, torch.arange(order.shape[-1], device=order.device).expand_as(order)
    )
    f_sorted = torch.cat([u[:, :1], u.gather(-1, rank[:, : n - 1] + 1)], dim=-1)
    g_sorted = torch.cat([v[:, :1], v.gather(-1, rank[:, n - 1 :] + 1)], dim=-1)
    return f_sorted, g_sorted


def exact_1d_potentials(
    x: Tensor,
    y: Tensor,
    a: Tensor | None = None,
    b: Tensor | None = None,
    *,
    p: float = 2,
    ties: str = "down",
) -> DualPotentials:
    r"""Exact Kantorovich dual potentials for the cost :math:`|x - y|^p` on the line.

    Returns :math:`(f, g)` with

    * feasibility: :math:`f_i + g_j \le |x_i - y_j|^p` for **every** pair ``(i, j)``, zero-weight
      points included;
    * tightness: equality wherever the monotone optimal plan carries mass, hence
      :math:`\sum_i a_i f_i + \sum_j b_j g_j = W_p^p` (as returned by :func:`wasserstein_1d`).

    Construction. Sort both sides and walk the north-west-corner staircase of the monotone plan:
    the cells :math:`(i_k, j_k)`, :math:`k = 0, \dots, N + M - 2`, obtained by merging the
    cumulative weights :math:`A_0, \dots, A_{N-2}` (a step down, ``i += 1``) and
    :math:`B_0, \dots, B_{M-2}` (a step right, ``j += 1``); ties step down first. Every positive
    cell of the plan lies on the staircase, zero-weight points become zero-mass cells of it. On the
    staircase the constraints are made tight, which fixes the potentials by a cumulative sum:

    .. math::

        f_{i_k} - f_{i_{k-1}} = C(x_{i_k}, y_{j_k}) - C(x_{i_k - 1}, y_{j_k})
            \text{ on a step down},
        \qquad g_{j_k} = C(x_{i_k}, y_{j_k}) - f_{i_k}.

    For :math:`p = 2` this integrates :math:`f'(x) = 2(x - T(x))` with :math:`T` the (piecewise
    constant) monotone map. Because :math:`|x - y|^p` is convex in :math:`x - y`, the cost matrix of
    sorted points is a Monge matrix, and the reduced cost of any cell off the staircase is a sum of
    Monge differences, hence :math:`\ge 0`: the pair is feasible everywhere, for every staircase
    (so ties and rounding in the cumulative sums cannot break feasibility).

    Zero-weight points: a zero-weight point whose quantile level lies strictly inside (0, 1)
    (i.e. with positive mass on both sides of it) is tight against a positive-weight partner, so
    its value is the c-transform over the support, :math:`f_i = \min_{j: b_j > 0} C_{ij} - g_j`
    (the ε → 0 limit of the Sinkhorn update at that point). Zero-weight points before the first or
    after the last unit of mass keep their staircase value, which is feasible against all points
    but may lie below that c-transform. (Feasibility for all pairs and the c-transform for all
    zero-weight points cannot both hold in general.)

    Gauge: potentials are unique at best up to :math:`(f + c, g - c)`; the returned pair has
    :math:`\sum_i a_i f_i = \sum_j b_j g_j = W_p^p / 2`.

    Args:
        x ((N,), (B, N) or (B, N, 1) Tensor): Source points. A 2-D tensor is a batch of problems.
        y ((M,), (B, M) or (B, M, 1) Tensor): Target points, batched like ``x``.
        a ((N,) or (B, N) Tensor, optional): Nonnegative source weights (normalized per problem;
            zeros mark padding). Uniform when ``None``.
        b ((M,) or (B, M) Tensor, optional): Target weights, likewise.
        p: Exponent of the cost, ``p >= 1`` (for ``p = 1`` the plan is optimal but potentials
            are far from unique; any feasible tight pair is returned).
        ties: ``"down"`` (default): the staircase above, ties stepping down first.
            ``"average"``: the mean of the potentials of the two extreme staircases (ties down
            first, ties right first). Both are feasible and tight on every cell with mass, so
            their mean is too; when cumulative weights tie (e.g. ``N = M`` with uniform
            weights) the dual optimum is not unique and the first rule makes zero-mass cells
            on one side of the matching tight, the mean splits the slack evenly. The mean is the
            better warm start for Sinkhorn (``init="exact1d"`` uses it): e.g. for
            ``x = y = [0, 1]`` it returns ``f = g = 0`` where ``"down"`` returns
            ``f = (-1/2, 1/2)``, ``g = (1/2, -1/2)``.

    Returns:
        DualPotentials: ``(f, g)`` of shapes ``(B, N)`` and ``(B, M)`` (``(N,)`` and ``(M,)`` for
        unbatched input), in the points' original order, in the promoted dtype. They are
        differentiable functions of the positions, but meant to be used detached (warm start).

    Raises:
        TypeError: As :func:`wasserstein_1d` (non-tensor or non-floating inputs).
        ValueError: As :func:`wasserstein_1d`, or an unknown ``ties``.

    Example:
        >>> import torch
        >>> x = torch.tensor([0.0, 1.0], dtype=torch.float64)
        >>> y = torch.tensor([0.5, 3.0], dtype=torch.float64)
        >>> f, g = exact_1d_potentials(x, y)
        >>> float((f.mean() + g.mean()) - wasserstein_1d(x, y))  # tight
        0.0
    """
    p = check_real("p", p, ge=1)  # |x - y|^p is then convex
    check_choice("ties", ties, _TIES)
    xs, ys, a_s, b_s, ix, iy, batched = _prepare(x, y, a, b)
    cu = torch.cumsum(a_s, dim=-1)
    cv = torch.cumsum(b_s, dim=-1)
    if ties == "average":
        f1, g1 = _staircase_potentials(xs, ys, cu, cv, p, down_first=True)
        f2, g2 = _staircase_potentials(xs, ys, cu, cv, p, down_first=False)
        f_sorted, g_sorted = 0.5 * (f1 + f2), 0.5 * (g1 + g2)
    else:
        f_sorted, g_sorted = _staircase_potentials(xs, ys, cu, cv, p, down_first=True)

    shift = 0.5 * ((b_s * g_sorted).sum(-1, keepdim=True) - (a_s * f_sorted).sum(-1, keepdim=True))
    f_sorted = f_sorted + shift
    g_sorted = g_sorted - shift

    f = torch.empty_like(f_sorted).scatter(-1, ix, f_sorted)
    g = torch.empty_like(g_sorted).scatter(-1, iy, g_sorted)
    if not batched:
        f, g = f[0], g[0]
    return DualPotentials(f, g)
