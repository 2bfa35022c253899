r"""Entropic OT on the line: exact warm start, Sinkhorn plus 1-D Newton, envelope gradients.

The iteration works on the merged support atoms of both sides of every problem of a (ragged)
batch at once, in float64. One *cycle* is two soft-min sums, :math:`f^+ = T_x(g)` and
:math:`g^+ = T_y(f)`, each carrying channels (conditional means) from which the marginal of the
pair just updated and the path-Laplacian Newton step ``d`` (:mod:`sinkmatch.onedim.newton`)
follow. Per problem, the Newton correction :math:`\beta d` is added on the side with fewer
support atoms (``NEWTON_SIDE``); the pair whose other side is exact is checked (L1 marginal
error, the stopping test) at the next sum. A problem whose error grows halves its damping.

A problem stops on its own when its error bound is below ``tol``; its potentials are frozen
from then on. The returned pair is :math:`(T_x(g), g)`, whose rows are exact and whose column
error is at most the row error of the last checked pair :math:`(f, g)` (every column of
:math:`(f, g)` is exact, and rescaling the rows of a plan moves its column sums by at most the
L1 change of its row sums), so the reported ``marginal_error`` (that error plus the kernel error
bound) bounds the L1 marginal error of the returned potentials on the given points.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from sinkmatch.exact1d import exact_1d_potentials
from sinkmatch.onedim.final import FinalStep, atom_values, point_values, problem_min
from sinkmatch.onedim.layout import Line, build_line, grid_origin
from sinkmatch.onedim.newton import newton_direction, segment_sum
from sinkmatch.onedim.sqeuclidean import SqTransform, expansion_order

__all__ = ["OneDimResult", "solve_1d"]

# Box parameter z = 2 r^2 / eps of the grid (cell width sqrt(2 z eps)).
DEFAULT_Z = 0.25
# Damping of the Newton correction.
NEWTON_BETA = 0.8


@dataclass
class OneDimResult:
    r"""What :func:`solve_1d` returns.

    Attributes:
        value ((B,) Tensor): :math:`\langle a, f\rangle + \langle b, g\rangle`, differentiable
            (envelope gradients) in ``x``, ``y``, ``a``, ``b``.
        f ((B, N) Tensor): Potential at every ``x`` point, :math:`T_x(g)` (differentiable).
        g ((B, M) Tensor): Potential at every ``y`` point (detached).
        n_iter ((B,) int64 Tensor): Cycles (two soft-min sums each) until each problem stopped.
        converged ((B,) bool Tensor): ``marginal_error <= tol``.
        marginal_error ((B,) Tensor): Bound on the L1 marginal error of ``(f, g)``.
        kernel_error ((B,) Tensor): Largest relative error bound of the soft-min sums of the
            final step (expansion truncation plus dropped sources).
        barycentric ((B, N) Tensor): :math:`\mathbb E_P[y \mid x_i]` (detached).
        n_plans (int): Pair plans built (diagnostics).
    """

    value: Tensor
    f: Tensor
    g: Tensor
    n_iter: Tensor
    converged: Tensor
    marginal_error: Tensor
    kernel_error: Tensor
    barycentric: Tensor
    n_plans: int


class _Geometry:
    """The lines and soft-min sums of one batch (support atoms and all points)."""

    def __init__(self, x, y, a, b, eps: float, kernel_tol: float, z: float | None = None):
        z = DEFAULT_Z if z is None else z
        self.eps = eps
        self.p = expansion_order(z, kernel_tol)
        width = math.sqrt(2.0 * z * eps)
        all_x, all_y = torch.ones_like(a, dtype=torch.bool), torch.ones_like(b, dtype=torch.bool)
        origin = grid_origin(x, y, all_x, all_y)
        self.xs = build_line(x, a, a > 0, origin, width)
        self.ys = build_line(y, b, b > 0, origin, width)
        # zero-weight points (padding): targets only, evaluated once at the end
        self.x0 = None if bool((a > 0).all()) else build_line(x, a, a <= 0, origin, width)
        self.y0 = None if bool((b > 0).all()) else build_line(y, b, b <= 0, origin, width)
        self.kernel_tol = kernel_tol
        self.t_x = SqTransform(self.xs, self.ys, eps, self.p, kernel_tol)  # f-updates
        self.t_y = SqTransform(self.ys, self.xs, eps, self.p, kernel_tol)  # g-updates
        self.slope_cap = _slope_cap(self.xs, self.ys)
        self.log_a = torch.log(self.xs.weight)
        self.log_b = torch.log(self.ys.weight)

    def at_zero_weight(self, line: Line | None, src: Line, h: Tensor) -> Tensor | None:
        """The potential ``-eps log sum_j e^{h_j - C_ij/eps}`` at the atoms of ``line``."""
        if line is None:
            return None
        t = SqTransform(line, src, self.eps, self.p, self.kernel_tol)
        return -self.eps * t(h).log_sum


def _slope_cap(xs: Line, ys: Line) -> Tensor:
    r"""Per problem, twice the largest slope a potential can have: :math:`4 (\max - \min)`.

    The potentials' slopes are :math:`f'(x) = 2 (x - \mathbb E[y \mid x])`, at most twice the
    span of both supports; the Newton correction never changes a slope by more than twice that.
    """
    lo = torch.minimum(problem_min(xs), problem_min(ys))
    hi = torch.maximum(problem_max(xs), problem_max(ys))
    return 4.0 * (hi - lo)


def problem_max(line: Line) -> Tensor:
    """Largest atom position per problem, (B,) (0 for problems without atoms)."""
    last = line.offsets[1:] - 1
    nonempty = line.offsets[1:] > line.offsets[:-1]
    return torch.where(nonempty, line.pos[last.clamp_min(0)], 0.0)


def _shifted(line: Line) -> Tensor:
    """Positions minus the smallest position of their problem (a nonnegative channel)."""
    return line.pos - problem_min(line)[line.prob]


# Side of the Newton correction per cycle: "x", "y", "alternate", or "auto" (per problem, the
# side with fewer support atoms, the x side on a tie). Measured on the ragged batch of 64 CSS
# problems (benchmarks/onedim_table.py), largest cycle count: auto 7, x 9, y 8; "alternate"
# left 63 of the 64 problems unconverged after 200 cycles (kept for experiments only).
NEWTON_SIDE = "auto"


def _sides(geo: _Geometry, cycle: int) -> Tensor:
    """Per problem, ``True`` where this cycle corrects ``f`` (else ``g``)."""
    n_x = geo.xs.offsets[1:] - geo.xs.offsets[:-1]
    n_y = geo.ys.offsets[1:] - geo.ys.offsets[:-1]
    if NEWTON_SIDE == "x":
        return torch.ones_like(n_x, dtype=torch.bool)
    if NEWTON_SIDE == "y":
        return torch.zeros_like(n_x, dtype=torch.bool)
    if NEWTON_SIDE == "alternate":
        return torch.full_like(n_x, cycle % 2 == 0, dtype=torch.bool)
    return n_x <= n_y


def _iterate(geo: _Geometry, f: Tensor, *, tol: float, max_iter: int):
    r"""The cycles.

    Every cycle computes :math:`f^+ = T_x(g)` and :math:`g^+ = T_y(f')` with
    :math:`f' = f^+ + \beta d_x` (x-side problems) or :math:`f^+`, then
    :math:`g \leftarrow g^+` or :math:`g^+ + \beta d_y` (y-side problems). A pair whose
    columns are exact is checked by its rows at the first sum of the next cycle, a pair whose
    rows are exact by its columns at the second; each cycle has one of the two. A problem whose
    error grows from one cycle to the next continues with half its damping (the plain
    smoothing step, ``beta = 0``, is Sinkhorn and always converges).

    Returns:
        The last pair ``(f, g)``, the error bounds, cycles and convergence per problem, and
        ``(T_x(g), barycentric map, kernel bound)`` of the last sum from ``g`` (the forward of
        the final step).
    """
    eps, xs, ys = geo.eps, geo.xs, geo.ys
    n_prob = xs.offsets.numel() - 1
    px, py = xs.prob, ys.prob
    x_min, y_min = problem_min(xs), problem_min(ys)
    zeros = torch.zeros(n_prob, dtype=f.dtype, device=f.device)
    done = torch.zeros(n_prob, dtype=torch.bool, device=f.device)
    n_iter = torch.zeros(n_prob, dtype=torch.long, device=f.device)
    err = torch.full_like(zeros, math.inf)
    beta = torch.full_like(zeros, NEWTON_BETA)
    out_y = geo.t_y(geo.log_a + f / eps, torch.stack([xs.pos - x_min[px], zeros[px]], 1))
    g = -eps * out_y.log_sum
    mean_x = torch.exp(out_y.log_channels[:, 0] - out_y.log_sum) + x_min[py]  # E[x | y_j]
    cols_exact = torch.ones_like(done)  # the pair (f, g) has exact columns
    bound_y = out_y.bound
    last_err = None
    for it in range(max_iter + 1):
        chans = torch.stack([mean_x - x_min[py], ys.pos - y_min[py]], 1)
        out_x = geo.t_x(geo.log_b + g / eps, chans)
        f_new = -eps * out_x.log_sum
        row = xs.weight * torch.exp((f - f_new) / eps)
        check = ~done & cols_exact
        err_row = segment_sum((xs.weight - row).abs(), xs) + out_x.bound + bound_y
        err = torch.where(check, err_row, err)
        done = done | (check & (err <= tol))
        if bool(done.all()) or it == max_iter:
            break
        side_x = _sides(geo, it) & ~done
        mean_y = torch.exp(out_x.log_channels[:, 1] - out_x.log_sum) + y_min[px]  # E[y | x_i]
        f_next = f_new
        if bool(side_x.any()):
            moment = row * (torch.exp(out_x.log_channels[:, 0] - out_x.log_sum) + x_min[px])
            d_x = newton_direction(xs, xs.weight, row, moment, eps, geo.slope_cap)
            f_next = f_new + torch.where(side_x[px], beta[px], 0.0) * d_x
        f = torch.where(done[px], f, f_next)
        chans = torch.stack([xs.pos - x_min[px], mean_y - y_min[px]], 1)
        out_y = geo.t_y(geo.log_a + f / eps, chans)
        g_new = -eps * out_y.log_sum
        col = ys.weight * torch.exp((g - g_new) / eps)
        check = ~done & ~side_x  # (f, g) has exact rows where f was not corrected
        err_col = segment_sum((ys.weight - col).abs(), ys) + out_x.bound + out_y.bound
        err = torch.where(check, err_col, err)
        done_y = check & (err <= tol)
        side_y = ~done & ~done_y & ~side_x
        g_next = g_new
        if bool(side_y.any()):
            moment = col * (torch.exp(out_y.log_channels[:, 1] - out_y.log_sum) + y_min[py])
            d_y = newton_direction(ys, ys.weight, col, moment, eps, geo.slope_cap)
            g_next = g_new + torch.where(side_y[py], beta[py], 0.0) * d_y
        # problems done at the column check keep (f, g): rows exact, returned f = T_x(g)
        keep = done | done_y
        g = torch.where(keep[py], g, g_next)
        mean_x = torch.where(
            keep[py], mean_x, torch.exp(out_y.log_channels[:, 0] - out_y.log_sum) + x_min[py]
        )
        bound_y = torch.where(keep, bound_y, out_y.bound)
        cols_exact = ~side_y
        n_iter = n_iter + (~done).long()
        done = done | done_y
        beta, last_err = _safeguard(beta, last_err, err, done)
    bary = torch.exp(out_x.log_channels[:, 1] - out_x.log_sum) + y_min[px]
    return f, g, err, n_iter, done, (f_new, bary, out_x.bound)


def _safeguard(beta: Tensor, last_err: Tensor | None, err: Tensor, done: Tensor):
    """Halve the Newton damping of the problems whose error grew since the last cycle."""
    if last_err is None:
        return beta, err
    worse = ~done & (err > last_err)
    return torch.where(worse, 0.5 * beta, beta), err


def _warm_start(geo: _Geometry, x, y, a, b) -> Tensor:
    """Exact unregularized dual potential of ``x`` (ties averaged), on the support atoms."""
    f0, _ = exact_1d_potentials(x, y, a, b, p=2, ties="average")
    count = atom_values(geo.xs, torch.where(geo.xs.inverse >= 0, 1.0, 0.0).double())
    return atom_values(geo.xs, f0.double()) / count


def solve_1d(
    x: Tensor,
    y: Tensor,
    a: Tensor,
    b: Tensor,
    *,
    eps: float,
    tol: float = 1e-3,
    max_iter: int = 200,
    kernel_tol: float | None = None,
) -> OneDimResult:
    r"""Entropic OT with the squared cost between batches of weighted points on the line.

    Args:
        x ((B, N) Tensor): Source positions.
        y ((B, M) Tensor): Target positions.
        a ((B, N) Tensor): Nonnegative source weights (zeros are padding), normalized here.
        b ((B, M) Tensor): Target weights, likewise.
        eps: ε > 0, in squared position units.
        tol: Stop a problem when its L1 marginal error bound is at most ``tol``.
        max_iter: Largest number of cycles.
        kernel_tol: Relative error allowed to the truncated expansions of the soft-min sums
            (default ``min(1e-9, tol / 100)``: the bound enters the stopping test).

    Returns:
        OneDimResult: Value, potentials, convergence and error bounds.
    """
    dtype = x.dtype
    x64, y64 = x.detach().double(), y.detach().double()
    an = a / a.sum(1, keepdim=True)
    bn = b / b.sum(1, keepdim=True)
    a64, b64 = an.detach().double(), bn.detach().double()
    kernel_tol = min(1e-9, tol / 100) if kernel_tol is None else kernel_tol
    geo = _Geometry(x64, y64, a64, b64, float(eps), kernel_tol)
    with torch.no_grad():
        f0 = _warm_start(geo, x64, y64, a64, b64)
        f_k, g, err, n_iter, done, last = _iterate(geo, f0, tol=tol, max_iter=max_iter)
        f_zero = geo.at_zero_weight(geo.x0, geo.ys, geo.log_b + g / geo.eps)
        g_zero = geo.at_zero_weight(geo.y0, geo.xs, geo.log_a + f_k / geo.eps)
    f_atoms, bary, bound = last
    f = FinalStep.apply(x, y, bn, g, f_atoms, bary, geo.t_x, geo.t_y, float(eps))
    f = _fill(f, geo.x0, f_zero)
    g_pts = _fill(point_values(geo.ys, g), geo.y0, g_zero).to(dtype)
    value = (an * f).sum(1) + (bn * g_pts).sum(1)
    err = err + bound + _rounding(geo, f_atoms, g)
    return OneDimResult(
        value=value,
        f=f,
        g=g_pts,
        n_iter=n_iter,
        converged=done & (err <= tol),
        marginal_error=err,
        kernel_error=bound,
        barycentric=_fill(point_values(geo.xs, bary), geo.x0, None),
        n_plans=geo.t_x.n_plans + geo.t_y.n_plans,
    )


def _rounding(geo: _Geometry, f: Tensor, g: Tensor) -> Tensor:
    r"""The marginal error that float64 rounding of the exponents can hide, per problem.

    :math:`8 u \,(\max |f| + \max |g|) / \varepsilon` with the unit roundoff ``u``: potentials
    far from their gauge-free size lose the digits that the stopping test reads.
    """
    zeros = torch.zeros_like(geo.slope_cap)
    big_f = zeros.scatter_reduce(0, geo.xs.prob, f.abs(), "amax")
    big_g = zeros.scatter_reduce(0, geo.ys.prob, g.abs(), "amax")
    return 8.0 * torch.finfo(torch.float64).eps * (big_f + big_g) / geo.eps


def _fill(v: Tensor, line: Line | None, atoms: Tensor | None) -> Tensor:
    """``v`` ((B, N)) with the points of ``line`` (zero-weight points) set from ``atoms``."""
    if line is None:
        return v
    inside = line.inverse >= 0
    if atoms is None:
        return torch.where(inside, torch.nan, v)
    return torch.where(inside, point_values(line, atoms).to(v.dtype), v)
