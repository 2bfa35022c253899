"""The log-domain Sinkhorn solver: one loop, ε-scaling, stopping rule, gradients.

For measures :math:`\\alpha = \\sum_i a_i \\delta_{x_i}` and :math:`\\beta = \\sum_j b_j \\delta_{y_j}`
(weights normalized to sum 1 per problem), entropic optimal transport is

.. math::

    \\mathrm{OT}_\\varepsilon(\\alpha, \\beta)
        = \\min_{P \\in \\Pi(a, b)} \\langle P, C \\rangle + \\varepsilon\\,\\mathrm{KL}(P \\,|\\, a \\otimes b)
        = \\max_{f, g}\\; \\langle a, f \\rangle + \\langle b, g \\rangle
          - \\varepsilon \\langle a \\otimes b, e^{(f \\oplus g - C)/\\varepsilon} - 1 \\rangle,

solved by alternating the soft-min half steps (Cuturi 2013, in the log domain)

.. math::

    f_i = -\\varepsilon \\log \\sum_j b_j e^{(g_j - C_{ij})/\\varepsilon}, \\qquad
    g_j = -\\varepsilon \\log \\sum_i a_i e^{(f_i - C_{ij})/\\varepsilon},

each computed by a :class:`~sinkmatch.backends.base.SoftminBackend`. The optimal plan is
:math:`P_{ij} = a_i b_j e^{(f_i + g_j - C_{ij})/\\varepsilon}`. ε-scaling (annealing) starts at a
large ε and divides it geometrically down to the target (Kosowsky & Yuille 1994; Schmitzer 2019;
Feydy et al. 2019). The debiased divergence is Feydy et al. (2019)'s
:math:`S_\\varepsilon = \\mathrm{OT}_\\varepsilon(\\alpha,\\beta) - \\tfrac12 \\mathrm{OT}_\\varepsilon(\\alpha,\\alpha)
- \\tfrac12 \\mathrm{OT}_\\varepsilon(\\beta,\\beta)`.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Union

import torch
from torch import Tensor

from sinkmatch._checks import (
    as_points,
    as_weights,
    check_eps,
    check_finite,
    check_positive_int,
    check_same_device,
    compute_dtype,
)
from sinkmatch.backends import Geometry, Problem, SoftminBackend, get_backend, prepare
from sinkmatch.costs import Cost, get_cost

__all__ = ["SinkhornResult", "sinkhorn"]

_VALUES = ("regularized", "transport", "divergence")
_GRADS = ("envelope", "autodiff")
_INITS = ("auto", "exact1d")
PLAN_MAX_ELEMENTS = 1 << 26

# ε-scaling: at every intermediate level, iterate until the L1 marginal error is below
# _LEVEL_TOL (checked every _LEVEL_CHECK iterations) or _LEVEL_MAX_ITER iterations;
# fixed-iteration mode runs _FIXED_LEVEL_ITER iterations per level. The scaling phase uses at most
# half of max_iter. Two-sided updates are over-relaxed, f <- (1 - w) f + w T(g) with w = _OMEGA
# (Thibault et al. 2017), except for the first iteration of a level, after a check that found no
# progress (safeguard), and for the g-update before a check or at the end (the columns are then
# exact and the check measures the whole L1 error; checking every iteration thus slows it down).
_LEVEL_TOL = 1e-2
_LEVEL_MAX_ITER = 30
_LEVEL_CHECK = 3
_FIXED_LEVEL_ITER = 3
_OMEGA = 1.8
# At the final ε, a check whose marginal error is above _STALL_RATIO times the previous check's
# triggers a line search along the last period's change of g (see _extrapolate), with at most
# _EXTRAPOLATE_TRIALS + 1 trials of two soft-mins each.
_STALL_RATIO = 0.5
_EXTRAPOLATE_TRIALS = 20
# With a warm start (init=...), ε-scaling starts at this multiple of eps (1: no scaling; on the
# CSS-CCNN workload exact1d + no scaling takes 21 iterations, exact1d + start 8·eps 58).
_WARM_EPS_START_FACTOR = 1.0


@dataclass(frozen=True)
class SinkhornResult:
    """What :func:`sinkhorn` returns.

    Attributes:
        value ((B,) or () Tensor): The requested value per problem (``()`` when neither input
            had a batch axis), in the compute dtype (float32 for half inputs).
        f ((B, N) Tensor): Dual potential on ``x``, in cost units (for ``"divergence"``: of the
            ``x``–``y`` problem).
        g ((B, M) Tensor): Dual potential on ``y``.
        n_iter (int or 0-dim Tensor): Sinkhorn iterations (one ``f`` and one ``g`` update each),
            ε-scaling and line-search trials (two soft-mins each) included; a tensor in
            fixed-iteration mode (for ``"divergence"``: of the ``x``–``y`` problem).
        converged ((B,) bool Tensor): ``marginal_error < tol`` per problem.
        marginal_error ((B,) Tensor): L1 marginal error
            :math:`\\sum_i |a_i - (P\\mathbb 1)_i| + \\sum_j |b_j - (P^\\top \\mathbb 1)_j|` of the
            last iterate ``(f_k, g_k)`` of the loop, whose columns are exact (for ``"divergence"``:
            the largest over the three problems). The returned ``f`` is the final differentiable
            update ``T(g_k)``, whose plan has exact rows.
        eps (float): The entropic regularization.
    """

    value: Tensor
    f: Tensor
    g: Tensor
    n_iter: Union[int, Tensor]
    converged: Tensor
    marginal_error: Tensor
    eps: float
    problem: Problem = field(repr=False)
    backend: SoftminBackend = field(repr=False)

    def plan(self, *, force: bool = False) -> Tensor:
        """The transport plan :math:`P_{ij} = a_i b_j e^{(f_i + g_j - C_{ij})/\\varepsilon}`.

        Args:
            force: Build it even above ``2^26`` entries.

        Returns:
            (B, N, M) Tensor: The plan (detached).

        Raises:
            ValueError: ``B·N·M > 2^26`` and not ``force``.
        """
        x, y = self.problem.x, self.problem.y
        size = x.shape[0] * x.shape[1] * y.shape[1]
        if size > PLAN_MAX_ELEMENTS and not force:
            raise ValueError(
                f"plan() would build a {x.shape[0]}x{x.shape[1]}x{y.shape[1]} tensor ({size} entries "
                f"> {PLAN_MAX_ELEMENTS}); pass force=True, or use barycentric_map() which streams"
            )
        return prepare(self.backend, self.problem).plan(self.f, self.g, self.eps)

    def barycentric_map(self) -> Tensor:
        """Barycentric projection :math:`T(x_i) = \\sum_j P_{ij} y_j / \\sum_j P_{ij}`.

        Computed from ``g`` with rows normalized exactly, streamed over tiles (works at large N).

        Returns:
            (B, N, D) Tensor: The image of every ``x_i`` (detached).
        """
        return prepare(self.backend, self.problem).barycentric_map(self.g, self.eps)


def _marginal_error(a: Tensor, f_old: Tensor, f_new: Tensor, eps: float) -> Tensor:
    """L1 error of one marginal of the plan of ``(f_old, g)`` given ``f_new = T(g)``.

    The marginal is :math:`a_i e^{(f_{old,i} - f_{new,i})/\varepsilon}`, so the error is
    :math:`\\sum_i a_i |1 - e^{(f_{old,i} - f_{new,i})/\varepsilon}|`, (B,).
    """
    ratio = torch.exp((f_old - f_new) / eps)
    return torch.where(a > 0, a * (1.0 - ratio).abs(), 0.0).sum(-1)


def _levels(eps: float, eps_start: float | None, factor: float | None) -> list[float]:
    """Geometric ε schedule from eps_start down to eps (eps last)."""
    levels = []
    if factor is not None and eps_start is not None:
        e = eps_start
        while e > eps * (1.0 + 1e-9) and len(levels) < 200:
            levels.append(e)
            e *= factor
    return [*levels, eps]


def _extrapolate(
    geom: Geometry, g: Tensor, d: Tensor, t: Tensor, eps: float, active: Tensor, *, max_trials: int
) -> tuple[Tensor, Tensor, Tensor, int]:
    """Step ``g + beta d`` along the last check period's change ``d`` (a line search).

    Near-degenerate problems at small ε (a group of rows that almost exactly fills a group of
    columns) have slow modes: shifting the two groups' potentials against each other changes
    only the exponentially small mass between them, and a Sinkhorn iteration moves along that
    direction by about ε times the relative imbalance (1e-3 or less), so that the marginal
    error stays constant for thousands of iterations (or decays by 1% per check). The
    semi-dual :math:`S(g) = \\langle a, T_x(g)\\rangle + \\langle b, g\\rangle` is concave with
    derivative :math:`S'(\\beta) = \\langle b - P(\\beta)^\\top \\mathbb 1, d\\rangle` along the line
    (:math:`P(\\beta)` the plan with exact rows), so ``beta = 1, 2, 4, ...`` is doubled while
    ``S' > 0`` and a secant step refines the bracket; every accepted point has a larger ``S``
    than ``g`` (per problem; ``active`` (B,) bool marks the stalled ones). Each trial costs two
    soft-mins, the work of one iteration, and the caller counts it as one (at most
    ``max_trials``, >= 2).

    Returns:
        The new ``g``, its probe ``T_x(g)``, which problems moved ((B,) bool), the trials used.
    """

    def slope(beta: Tensor) -> tuple[Tensor, Tensor]:
        g_new = g + beta[:, None] * d
        t_new = geom.f_update(g_new, eps)
        g_col = geom.g_update(t_new, eps)
        b = geom.problem.b
        col = torch.where(b > 0, b * torch.exp((g_new - g_col) / eps), 0.0)
        return ((b - col) * d).sum(-1), t_new

    zero = torch.zeros(d.shape[0], dtype=d.dtype, device=d.device)
    lo, hi = zero.clone(), torch.full_like(zero, math.inf)
    slope_lo, slope_hi = zero.clone(), zero.clone()
    best_t = t
    beta = torch.where(active, 1.0, 0.0)
    used = 0
    for _ in range(max_trials - 1):
        rising = active & torch.isinf(hi)
        if not bool(rising.any()):
            break
        s_new, t_new = slope(torch.where(rising, beta, lo))
        used += 1
        up = rising & (s_new > 0)
        down = rising & ~(s_new > 0)
        lo, slope_lo = torch.where(up, beta, lo), torch.where(up, s_new, slope_lo)
        hi, slope_hi = torch.where(down, beta, hi), torch.where(down, s_new, slope_hi)
        best_t = torch.where(up[:, None], t_new, best_t)
        beta = torch.where(up, 2.0 * beta, beta)
    # secant step in the bracket [lo, hi]; kept where its slope is smaller in magnitude
    bracket = active & (lo > 0) & torch.isfinite(hi) & (slope_lo > slope_hi)
    if bool(bracket.any()):
        safe_hi = torch.where(bracket, hi, lo)
        sec = lo + (safe_hi - lo) * slope_lo / torch.where(bracket, slope_lo - slope_hi, 1.0)
        sec = torch.where(bracket, sec, lo)
        s_sec, t_sec = slope(sec)
        used += 1
        take = bracket & (s_sec.abs() < slope_lo)
        lo = torch.where(take, sec, lo)
        best_t = torch.where(take[:, None], t_sec, best_t)
    moved = lo > 0
    return g + lo[:, None] * d, best_t, moved, used


def _uniform(w: Tensor) -> float | Tensor:
    """Per-problem weights ``w`` (B,) as a float when they are all equal (synchronises)."""
    first = w[0]
    return float(first) if bool((w == first).all()) else w


def _weight(w: float | Tensor) -> float | Tensor:
    """An over-relaxation weight for ``torch.lerp`` on (B, N) potentials."""
    return w if isinstance(w, float) else w[:, None]


def _iterate(
    geom: Geometry,
    f: Tensor,
    g: Tensor,
    levels: list[float],
    *,
    tol: float,
    max_iter: int,
    check_every: int,
    fixed: bool,
) -> tuple[Tensor, Tensor, int]:
    """The Sinkhorn loop. Returns the last pair ``(f, g)`` and the number of iterations.

    Two-sided problems: an iteration computes ``t = T_x(g)``, ``f <- (1 - w) f + w t`` and
    ``g <- (1 - w) g + w T_y(f)``. When ``g = T_y(f)`` exactly (a plain g-update, which the loop
    does before every check and on the very last iteration), the columns of the plan of
    ``(f, g)`` are exact and the probe ``t`` gives its rows,
    :math:`a_i e^{(f_i - t_i)/\varepsilon}`: the check costs no extra pass. Symmetric problems
    (``x = y``) use the averaged update ``f <- (f + T(f)) / 2`` (Feydy et al. 2019). On
    convergence the loop stops *before* advancing, so the returned pair is the one checked.
    At the final ε, a check that finds the error above ``_STALL_RATIO`` times the previous
    check's runs :func:`_extrapolate` for the stalled problems (a problem it moves takes a plain
    step next and gets ``omega`` back). In fixed mode nothing is read back.
    """
    scaling = levels[:-1]
    budget = max_iter // 2
    if fixed:
        keep = budget // _FIXED_LEVEL_ITER
        scaling = scaling[len(scaling) - keep :] if keep > 0 else []
    plan = [
        (e, _FIXED_LEVEL_ITER if fixed else _LEVEL_MAX_ITER, _LEVEL_TOL, _LEVEL_CHECK)
        for e in scaling
    ]
    plan.append((levels[-1], None, tol, check_every))
    n_iter = 0
    prob = geom.problem
    check_from = 0 if prob.symmetric else 1  # the first probe at a new level is not a check
    for k, (e, n_max, level_tol, period) in enumerate(plan):
        final = k == len(plan) - 1
        n_max = max_iter - n_iter if final else (n_max if fixed else min(n_max, budget - n_iter))
        # per-problem state: over-relaxation, last error, line-search back-off
        omega = torch.full_like(f[:, 0], _OMEGA)
        last_err = torch.full_like(omega, math.inf)
        misses = torch.zeros_like(omega, dtype=torch.int64)
        next_try = torch.zeros_like(misses)
        g_check, err_check, n_check = None, None, 0
        w_now: float | Tensor = _OMEGA  # a float while uniform (no sync inside the loop)
        restart_now, w_restart = False, w_now
        i = -1
        while i + 1 < n_max:
            i += 1
            t = geom.f_update(f if prob.symmetric else g, e)
            if not fixed and i >= check_from and (i - check_from) % period == 0:
                err = (2.0 if prob.symmetric else 1.0) * _marginal_error(prob.a, f, t, e).detach()
                if bool((err < level_tol).all()):
                    break
                restart = torch.zeros_like(err, dtype=torch.bool)  # moved by a line search
                if final and not prob.symmetric:
                    trials = min(_EXTRAPOLATE_TRIALS + 1, n_max - i - 1)
                    if g_check is not None and trials >= 2:
                        stalled = (err > _STALL_RATIO * err_check) & (next_try <= n_check)
                        if bool(stalled.any()):
                            g, t, restart, used = _extrapolate(
                                geom, g, g - g_check, t, e, stalled, max_trials=trials
                            )
                            n_iter, n_max = n_iter + used, n_max - used  # trials count
                            # back off after a failed search
                            misses = torch.where(restart, 0, misses + stalled.long())
                            backoff = n_check + torch.bitwise_left_shift(1, misses.clamp(max=6))
                            next_try = torch.where(stalled, backoff, next_try)
                    g_check, err_check, n_check = g, err, n_check + 1
                # safeguard: where over-relaxation stalled, fall back to plain steps; a problem
                # moved by the line search starts afresh
                omega = torch.where(restart, _OMEGA, torch.where(err < last_err, omega, 1.0))
                last_err = torch.where(restart, math.inf, err)
                w_now = _uniform(omega)
                restart_now = bool(restart.any())
                if restart_now:  # a plain step for the moved problems
                    w_restart = _uniform(torch.where(restart, 1.0, omega))
            n_iter += 1
            if prob.symmetric:
                f = g = 0.5 * (f + t)
                continue
            w = 1.0 if i == 0 else (w_restart if restart_now else w_now)
            restart_now = False
            plain_f = isinstance(w, float) and w == 1.0
            f = t if plain_f else torch.lerp(f, t, _weight(w))
            t_g = geom.g_update(f, e)
            next_is_check = not fixed and (i + 1 - check_from) % period == 0
            plain = plain_f or next_is_check or (final and i == n_max - 1)
            g = t_g if plain else torch.lerp(g, t_g, _weight(w))
    return f, g, n_iter


def _exact1d_init(prob: Problem) -> tuple[Tensor, Tensor]:
    if prob.x.shape[-1] != 1 or prob.cost.power is None:
        raise ValueError(
            "init='exact1d' needs 1-D points and a named cost, got "
            f"D={prob.x.shape[-1]} and cost {prob.cost!r}"
        )
    from sinkmatch.exact1d import exact_1d_potentials

    with torch.no_grad():  # a warm start is a constant, like a tuple init
        f, g = exact_1d_potentials(
            prob.x[..., 0], prob.y[..., 0], prob.a, prob.b, p=prob.cost.power, ties="average"
        )
    return f.to(prob.x.dtype), g.to(prob.x.dtype)


def _resolve_init(init: Any, cost: Cost, dim: int, fixed: bool) -> Any:
    """The ``init="auto"`` rule: ``"exact1d"`` for 1-D points and a named cost, else ``None``.

    Fixed-iteration mode resolves ``"auto"`` to ``None`` (the exact 1-D potentials validate
    their input, which synchronises with the device).
    """
    if isinstance(init, str):
        if init not in _INITS:
            raise ValueError(
                f"init must be 'auto', None, 'exact1d' or a tuple (f, g), got {init!r}"
            )
        if init == "auto":
            return "exact1d" if dim == 1 and cost.power is not None and not fixed else None
    return init


def _check_init(init: Any, batch: int, n: int, m: int, like: Tensor, check_values: bool):
    if not (isinstance(init, tuple) and len(init) == 2):
        raise TypeError(
            f"init must be 'auto', None, 'exact1d' or a tuple (f, g), got {type(init).__name__}"
        )
    out = []
    for name, t, k in (("init[0] (f)", init[0], n), ("init[1] (g)", init[1], m)):
        if not isinstance(t, Tensor) or not t.is_floating_point():
            raise TypeError(f"{name} must be a floating tensor, got {type(t).__name__}")
        if t.device != like.device:
            raise ValueError(f"{name} must be on {like.device}, got {t.device}")
        if tuple(t.shape) not in ((k,), (1, k), (batch, k)):
            raise ValueError(
                f"{name} must have shape ({k},) or ({batch}, {k}), got {tuple(t.shape)}"
            )
        t = t.detach().to(like.dtype).expand(batch, k)
        if check_values:
            check_finite(t, name)
        out.append(t)
    return out[0], out[1]


def _solve(
    geom: Geometry,
    *,
    eps: float,
    levels: list[float],
    init: Any,
    grad: str,
    tol: float,
    max_iter: int,
    check_every: int,
    fixed: bool,
    check_values: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor, int]:
    """Run one problem; returns (regularized value, f, g, marginal error, n_iter)."""
    prob = geom.problem
    batch, n, m = prob.x.shape[0], prob.x.shape[1], prob.y.shape[1]
    context = torch.no_grad() if grad == "envelope" else contextlib.nullcontext()
    with context:
        if init is None:
            f = torch.zeros(batch, n, dtype=prob.x.dtype, device=prob.x.device)
            g = (
                f
                if prob.symmetric
                else torch.zeros(batch, m, dtype=prob.x.dtype, device=prob.x.device)
            )
        elif isinstance(init, str):
            f, g = _exact1d_init(prob)
        else:
            f, g = _check_init(init, batch, n, m, prob.x, check_values)
        if prob.symmetric:
            g = f
        f, g, n_iter = _iterate(
            geom, f, g, levels, tol=tol, max_iter=max_iter, check_every=check_every, fixed=fixed
        )
        g = geom.complete_g(f, g, eps)
    if grad == "envelope":
        f, g = f.detach(), g.detach()
    # One differentiable step on the last potentials (on detached ones for "envelope"): by the
    # envelope theorem the semi-dual <a, T(g)> + <b, g> has the gradient of OT_eps at convergence.
    if prob.symmetric:
        t = geom.final_f(f, eps)
        value = (prob.a * (t + f)).sum(-1)
        err = 2.0 * _marginal_error(prob.a, f.detach(), t.detach(), eps)
        return value, t, t, err, n_iter
    t = geom.final_f(g, eps)
    value = (prob.a * t).sum(-1) + (prob.b * g).sum(-1)
    err = _marginal_error(prob.a, f.detach(), t.detach(), eps)  # columns exact: last g-update plain
    return value, t, g, err, n_iter


def _transport_value(geom: Geometry, reg_value: Tensor, g: Tensor, eps: float, grad: str) -> Tensor:
    """<P, C> for the plan with exact rows built from g."""
    if grad == "autodiff":
        return geom.transport_cost(g, eps, differentiable=True)
    transport = geom.transport_cost(g, eps)
    # Value <P, C>; gradient of OT_eps (the plan held fixed), see the docstring of sinkhorn().
    return reg_value + (transport - reg_value).detach()


def _prepare_points(x: Any, y: Any) -> tuple[Tensor, Tensor, bool]:
    xb, yb = as_points(x, "x"), as_points(y, "y")
    check_same_device(x=xb, y=yb)
    if xb.shape[-1] != yb.shape[-1]:
        raise ValueError(
            f"x and y must have the same point dimension D, got x {tuple(x.shape)} and y {tuple(y.shape)}"
        )
    if xb.shape[0] != yb.shape[0]:
        if xb.shape[0] == 1 and x.ndim <= 2:
            xb = xb.expand(yb.shape[0], -1, -1)
        elif yb.shape[0] == 1 and y.ndim <= 2:
            yb = yb.expand(xb.shape[0], -1, -1)
        else:
            raise ValueError(
                f"x and y must have the same batch size, got x {tuple(x.shape)} and y {tuple(y.shape)}"
            )
    dtype = compute_dtype(xb, yb)
    return xb.to(dtype), yb.to(dtype), x.ndim <= 2 and y.ndim <= 2


def sinkhorn(
    x: Tensor,
    y: Tensor,
    a: Tensor | None = None,
    b: Tensor | None = None,
    *,
    eps: float = 0.1,
    cost: Union[str, Cost, Callable[[Tensor, Tensor], Tensor]] = "sqeuclidean",
    value: str = "regularized",
    max_iter: int = 1000,
    tol: float = 1e-3,
    check_every: int = 10,
    eps_scaling: float | None = 0.5,
    eps_start: float | None = None,
    init: Union[str, tuple[Tensor, Tensor], None] = "auto",
    grad: str = "envelope",
    backend: Union[str, SoftminBackend] = "auto",
    fixed_iterations: bool = False,
    warn: bool = False,
) -> SinkhornResult:
    """Entropic optimal transport between weighted point clouds, batched, in the log domain.

    Args:
        x ((N,), (N, D) or (B, N, D) Tensor): Source points (floating).
        y ((M,), (M, D) or (B, M, D) Tensor): Target points, same D. An unbatched input is
            broadcast against a batched one.
        a ((N,) or (B, N) Tensor, optional): Nonnegative source weights; uniform when ``None``.
            Zero marks padding. Normalized to sum 1 per problem (so only their ratios matter).
        b ((M,) or (B, M) Tensor, optional): Target weights, likewise.
        eps: Entropic regularization ε > 0, in cost units.
        cost: ``"sqeuclidean"`` (:math:`\\|x-y\\|^2`, not halved), ``"euclidean"``, or a callable
            ``(x (B, N, D), y (B, M, D)) -> (B, N, M)`` (dense backend only).
        value: ``"regularized"`` (:math:`\\mathrm{OT}_\\varepsilon`, the entropic objective, equal to
            :math:`\\langle a, f\\rangle + \\langle b, g\\rangle` at convergence), ``"transport"``
            (:math:`\\langle P_\\varepsilon, C\\rangle`, what POT's ``sinkhorn2`` returns) or
            ``"divergence"`` (the debiased :math:`S_\\varepsilon`; the self terms are solved with
            the symmetric update).
        max_iter: Maximum number of iterations, ε-scaling and line-search trials included (the
            scaling phase uses at most half of them); exactly this many when
            ``fixed_iterations``.
        tol: Stop when the L1 marginal error (columns are exact after each ``g`` update, so
            this is :math:`\\sum_i |a_i - (P\\mathbb 1)_i|`) is below ``tol`` for every problem.
        check_every: Check the stopping rule every this many iterations at the final ε.
        eps_scaling: Factor in (0, 1) of geometric ε-scaling, or ``None`` for none. At every
            intermediate level the loop iterates until the marginal error is below 0.01 (at most
            30 iterations); at the final ε it iterates to ``tol``. There, a check whose error is
            above half the previous one's triggers a line search on the semi-dual along the
            last period's change of ``g`` (per problem): near-degenerate problems at small ε
            otherwise crawl along a slow mode for thousands of iterations.
        eps_start: First ε of the scaling; default: the cost's diameter (an upper bound on the
            largest cost, e.g. :math:`(\\max - \\min)^2` in 1-D for the squared cost), or
            ``eps`` (no scaling) with a warm start (``init`` not ``None`` after the ``"auto"``
            rule).
        init: ``"auto"`` (default), ``None`` (zero potentials), ``"exact1d"`` or a tuple
            ``(f (B, N), g (B, M))`` of warm-start potentials (``g`` drives the first update;
            detached). ``"exact1d"`` (1-D points, named cost) starts from the exact unregularized
            dual potentials of :func:`sinkmatch.exact1d.exact_1d_potentials` (sorting,
            :math:`O((N + M)\\log(N + M))`), which zero weights (padding) do not disturb.
            The ``"auto"`` rule: ``"exact1d"`` when ``D == 1`` and the cost is a named one
            (``"sqeuclidean"``, ``"euclidean"``: :math:`|x - y|^p`, ``p = 2, 1``) and not
            ``fixed_iterations``; otherwise ``None`` (zero potentials with ε-scaling from the
            diameter). A warm start skips ε-scaling (``eps_start`` defaults to ``eps``): on the
            CSS-CCNN workload (1-D, ε = 0.1) it converges in about 20 iterations instead of
            hundreds. The answer at convergence does not depend on ``init``.
        grad: ``"envelope"``: iterate under ``torch.no_grad()``, then take one differentiable
            step on the detached potentials; exact for ``"regularized"`` and ``"divergence"``
            at convergence (envelope theorem). For ``"transport"`` the gradient is that of
            :math:`\\mathrm{OT}_\\varepsilon` (plan held fixed, :math:`\\sum_j P_{ij}\\partial_x C_{ij}`),
            an approximation of the gradient of :math:`\\langle P_\\varepsilon, C\\rangle`.
            ``"autodiff"``: differentiate through the unrolled loop (memory grows with the
            iterations; for checking and for exact gradients of the truncated ``"transport"``
            value, which then materializes the plan).
        backend: ``"auto"``, ``"dense"``, ``"online"``, ``"triton"`` or a
            :class:`~sinkmatch.backends.base.SoftminBackend`; see
            :func:`sinkmatch.backends.get_backend` for the ``auto`` rule.
        fixed_iterations: Run exactly ``max_iter`` iterations with no host synchronisation (no
            stopping checks, no value checks on the inputs: NaN or negative weights then give
            NaN results instead of errors), usable under ``torch.compile``. With ε-scaling it
            needs an explicit ``eps_start``; each level gets 3 iterations.
        warn: Emit a ``UserWarning`` when some problem did not converge.

    Returns:
        SinkhornResult: ``value`` (B,) (or () for unbatched inputs), potentials, iterations,
        convergence flags and marginal errors; ``plan()`` and ``barycentric_map()`` helpers.

    Gradients with respect to the weights: the dual potentials are defined up to an additive
    constant (:math:`f + c, g - c`); since the weights are normalized inside the solver, the
    gradient with respect to ``a`` is the centred potential :math:`(f - \\langle \\bar a, f\\rangle)
    / \\sum_i a_i` — GeomLoss/OTT's convention (:math:`\\nabla_a = f`) up to that constant, which
    vanishes on the simplex. Points with zero weight get exactly zero gradient.

    Raises:
        TypeError: Non-tensor or non-floating inputs, wrongly typed settings.
        ValueError: Bad shapes, devices, NaN/inf points or weights, negative or all-zero
            weights, ``eps <= 0``, unknown modes.

    Example:
        >>> import torch
        >>> x = torch.tensor([0.0, 1.0]); y = torch.tensor([0.0, 1.0])
        >>> res = sinkhorn(x, y, eps=1e-2, value="transport")
        >>> round(float(res.value), 4), bool(res.converged)
        (0.0, True)
    """
    eps = check_eps(eps)
    if value not in _VALUES:
        raise ValueError(f"value must be one of {_VALUES}, got {value!r}")
    if grad not in _GRADS:
        raise ValueError(f"grad must be one of {_GRADS}, got {grad!r}")
    max_iter = check_positive_int(max_iter, "max_iter")
    check_every = check_positive_int(check_every, "check_every")
    if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not tol >= 0:
        raise ValueError(f"tol must be a float >= 0, got {tol!r}")
    if eps_scaling is not None and (
        isinstance(eps_scaling, bool)
        or not isinstance(eps_scaling, (int, float))
        or not 0 < eps_scaling < 1
    ):
        raise ValueError(f"eps_scaling must be None or a float in (0, 1), got {eps_scaling!r}")
    if eps_start is not None:
        eps_start = check_eps(eps_start, "eps_start")
    if isinstance(init, str) and init not in _INITS:
        raise ValueError(f"init must be 'auto', None, 'exact1d' or a tuple (f, g), got {init!r}")
    if fixed_iterations and eps_scaling is not None and eps_start is None:
        raise ValueError(
            "fixed_iterations=True needs an ε schedule known without reading the data: pass "
            "eps_start=<float> or eps_scaling=None"
        )
    cost_obj = get_cost(cost)
    xb, yb, unbatched = _prepare_points(x, y)
    init = _resolve_init(init, cost_obj, xb.shape[-1], fixed_iterations)
    check_same_device(x=xb, a=a, b=b)
    check_values = not fixed_iterations
    if check_values:
        check_finite(xb, "x")
        check_finite(yb, "y")
    batch, n, m = xb.shape[0], xb.shape[1], yb.shape[1]
    an = as_weights(
        a, "a", batch=batch, n_points=n, dtype=xb.dtype, device=xb.device, check_values=check_values
    )
    bn = as_weights(
        b, "b", batch=batch, n_points=m, dtype=xb.dtype, device=xb.device, check_values=check_values
    )
    backend_obj = get_backend(backend, x=xb, y=yb, cost=cost_obj)
    modes = dict(differentiable_loop=grad == "autodiff", allow_sync=not fixed_iterations)

    if eps_scaling is None:
        start = None
    elif eps_start is not None:
        start = eps_start
    elif init is not None:
        start = _WARM_EPS_START_FACTOR * eps
    else:
        with torch.no_grad():
            start = float(cost_obj.diameter(xb, yb).max())
    levels = _levels(eps, start, eps_scaling)
    opts = dict(
        eps=eps,
        levels=levels,
        grad=grad,
        tol=tol,
        max_iter=max_iter,
        check_every=check_every,
        fixed=fixed_iterations,
        check_values=check_values,
    )

    problem = Problem(xb, yb, an, bn, cost_obj)
    geom = prepare(backend_obj, problem, **modes)
    reg, f, g, err, n_iter = _solve(geom, init=init, **opts)
    if value == "regularized":
        out = reg
    elif value == "transport":
        out = _transport_value(geom, reg, g, eps, grad)
    else:
        self_x = prepare(backend_obj, Problem(xb, xb, an, an, cost_obj, symmetric=True), **modes)
        self_y = prepare(backend_obj, Problem(yb, yb, bn, bn, cost_obj, symmetric=True), **modes)
        reg_x, _, _, err_x, _ = _solve(self_x, init=None, **opts)
        reg_y, _, _, err_y, _ = _solve(self_y, init=None, **opts)
        out = reg - 0.5 * (reg_x + reg_y)
        err = torch.maximum(err, torch.maximum(err_x, err_y))

    converged = err < tol
    if fixed_iterations:
        n_iter_out: Union[int, Tensor] = torch.tensor(n_iter, device=xb.device)
    else:
        n_iter_out = n_iter
        if warn and not bool(converged.all()):
            bad = (~converged).nonzero().flatten().tolist()
            warnings.warn(
                f"sinkhorn did not converge for problems {bad[:10]} after {n_iter} iterations "
                f"(marginal error up to {float(err.max()):.3g} > tol={tol}); raise max_iter or eps",
                UserWarning,
                stacklevel=2,
            )
    if unbatched:
        out = out[0]
    return SinkhornResult(
        value=out,
        f=f,
        g=g,
        n_iter=n_iter_out,
        converged=converged,
        marginal_error=err,
        eps=eps,
        problem=problem.detach(),
        backend=backend_obj,
    )
