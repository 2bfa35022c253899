r"""The Sinkhorn loop: ε levels, over-relaxation, the stall line search and the stopping checks.

One iteration of a two-sided problem takes the two half steps of a
:class:`~sinkmatch.backends.base.Geometry`,

.. math::

    t = T_x(g), \quad f \leftarrow (1 - \omega) f + \omega t, \qquad
    g \leftarrow (1 - \omega) g + \omega\, T_y(f),

with :math:`T_x(g)_i = -\varepsilon \log \sum_j b_j e^{(g_j - C_{ij})/\varepsilon}` (and
:math:`T_y` likewise over the rows). :math:`\omega = 1` is plain Sinkhorn; :math:`\omega > 1` is
over-relaxation (Thibault et al. 2017), which :class:`Relaxation` steers.
Symmetric problems (:math:`x = y`, the self terms of the divergence) use the averaged update
:math:`f \leftarrow (f + T(f))/2` (Feydy et al. 2019).

Stopping rule. After a plain g-update :math:`g = T_y(f)` the columns of the plan of
:math:`(f, g)` are exact, and the probe :math:`t = T_x(g)` of the next iteration gives its rows:
:math:`(P\mathbb 1)_i = a_i e^{(f_i - t_i)/\varepsilon}`. So :func:`marginal_error` measures the
whole L1 marginal error of the current iterate without an extra pass. The loop makes the
g-update plain before every check (and on the last iteration); on convergence it stops *before*
advancing, so the pair it returns is the one it checked.

Levels. ε-scaling runs the loop at a decreasing sequence of ε (:class:`Level`); intermediate
levels stop at a loose tolerance, the final one at the caller's. At the final ε,
:class:`StallSearch` watches the checks and, when the error stops falling, runs a line search
along the last period's change of ``g`` (:func:`line_search`).

Fixed-iteration mode runs a known number of iterations and never reads a tensor back to the host
(no checks, no line search, a constant ω), so that it compiles under ``torch.compile``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from sinkmatch.backends.base import Geometry

__all__ = ["Level", "build_levels", "iterate", "line_search", "marginal_error"]

# Intermediate ε levels: iterate until the L1 marginal error is below LEVEL_TOL, checked every
# LEVEL_CHECK_EVERY iterations, for at most LEVEL_MAX_ITER iterations (FIXED_LEVEL_ITER in
# fixed-iteration mode). The scaling phase uses at most half of max_iter.
LEVEL_TOL = 1e-2
LEVEL_MAX_ITER = 30
LEVEL_CHECK_EVERY = 3
FIXED_LEVEL_ITER = 3
# Over-relaxation weight (1 = plain Sinkhorn).
OMEGA = 1.8
# At the final ε, a check whose error is above STALL_RATIO times the previous check's starts a
# line search of at most LINE_SEARCH_TRIALS + 1 trials (two half steps each).
STALL_RATIO = 0.5
LINE_SEARCH_TRIALS = 20


@dataclass(frozen=True)
class Level:
    """One ε level of the loop.

    Attributes:
        eps: The regularization of this level.
        tol: Stop the level when every problem's marginal error is below this.
        check_every: Check the error every this many iterations.
        max_iter: At most this many iterations; ``None`` for the final level, which gets all
            that is left of the budget.
    """

    eps: float
    tol: float
    check_every: int
    max_iter: int | None

    @property
    def final(self) -> bool:
        return self.max_iter is None


def build_levels(
    schedule: list[float], *, tol: float, check_every: int, max_iter: int, fixed: bool
) -> list[Level]:
    """The levels of an ε schedule (target ε last); fixed mode keeps the last levels that fit.

    Example:
        >>> [lv.eps for lv in build_levels([4.0, 2.0, 1.0], tol=1e-3, check_every=10, max_iter=8,
        ...                                fixed=True)]  # half of 8 iterations: one level of 3
        [2.0, 1.0]
    """
    scaling = schedule[:-1]
    if fixed:
        keep = (max_iter // 2) // FIXED_LEVEL_ITER
        scaling = scaling[len(scaling) - keep :] if keep > 0 else []
    cap = FIXED_LEVEL_ITER if fixed else LEVEL_MAX_ITER
    return [
        *(Level(e, LEVEL_TOL, LEVEL_CHECK_EVERY, cap) for e in scaling),
        Level(schedule[-1], tol, check_every, None),
    ]


def marginal_error(a: Tensor, f_old: Tensor, f_new: Tensor, eps: float) -> Tensor:
    r"""L1 error of the row marginal of the plan of ``(f_old, g)``, given ``f_new = T_x(g)``.

    The row marginal is :math:`a_i e^{(f_{old,i} - f_{new,i})/\varepsilon}`, so the error is
    :math:`\sum_i a_i |1 - e^{(f_{old,i} - f_{new,i})/\varepsilon}|`, (B,). When ``g`` is a plain
    update :math:`T_y(f_{old})` the columns are exact and this is the whole L1 marginal error.
    """
    ratio = torch.exp((f_old - f_new) / eps)
    return torch.where(a > 0, a * (1.0 - ratio).abs(), 0.0).sum(-1)


def _uniform(w: Tensor) -> float | Tensor:
    """Per-problem weights ``w`` (B,) as a float when they are all equal (synchronises)."""
    first = w[0]
    return float(first) if bool((w == first).all()) else w


class Relaxation:
    r"""The over-relaxation weight ω per problem, with its safeguard.

    Every problem starts at :data:`OMEGA`. A check whose error did not fall below the previous
    check's sets that problem's ω to 1 (plain Sinkhorn, which never increases the dual
    objective); a problem moved by the line search gets :data:`OMEGA` back after one plain
    iteration. The first iteration of a level is plain. While every problem has the same ω the
    weight is a Python float, so the loop adds no host synchronisation between checks.

    Args:
        like ((B,) Tensor): Dtype and device of the per-problem state.
    """

    def __init__(self, like: Tensor):
        self.omega = torch.full_like(like, OMEGA)
        self.last_err = torch.full_like(self.omega, math.inf)
        self.now: float | Tensor = OMEGA
        self._restart: float | Tensor | None = None  # the weight of a pending plain step

    def update(self, err: Tensor, restart: Tensor) -> None:
        """After a check: ``err`` (B,) the errors, ``restart`` (B,) bool the problems moved."""
        self.omega = torch.where(restart, OMEGA, torch.where(err < self.last_err, self.omega, 1.0))
        self.last_err = torch.where(restart, math.inf, err)
        self.now = _uniform(self.omega)
        if bool(restart.any()):  # a plain step for the moved problems
            self._restart = _uniform(torch.where(restart, 1.0, self.omega))

    def weight(self, *, first: bool) -> float | Tensor:
        """The ω of this iteration: a float, or a (B, 1) tensor for ``torch.lerp``."""
        w = 1.0 if first else (self.now if self._restart is None else self._restart)
        self._restart = None
        return w if isinstance(w, float) else w[:, None]


def line_search(
    geom: Geometry, g: Tensor, d: Tensor, t: Tensor, eps: float, active: Tensor, *, max_trials: int
) -> tuple[Tensor, Tensor, Tensor, int]:
    r"""Step ``g + beta d`` along the last check period's change ``d`` of ``g``.

    Near-degenerate problems at small ε (a group of rows that almost exactly fills a group of
    columns) have slow modes: shifting the two groups' potentials against each other changes
    only the exponentially small mass between them, and a Sinkhorn iteration moves along that
    direction by about ε times the relative imbalance, so that the marginal error stays constant
    for thousands of iterations. The semi-dual
    :math:`S(g) = \langle a, T_x(g)\rangle + \langle b, g\rangle` is concave with derivative
    :math:`S'(\beta) = \langle b - P(\beta)^\top \mathbb 1, d\rangle` along the line
    (:math:`P(\beta)` the plan with exact rows), so ``beta = 1, 2, 4, ...`` is doubled while
    ``S' > 0`` and a secant step refines the bracket; every accepted point has a larger ``S``
    than ``g`` (per problem; ``active`` (B,) bool marks the stalled ones). Each trial costs two
    half steps, the work of one iteration (at most ``max_trials``, >= 2).

    Returns:
        The new ``g``, its probe ``T_x(g)``, which problems moved ((B,) bool), the trials used.
    """
    b = geom.problem.b

    def slope(beta: Tensor) -> tuple[Tensor, Tensor]:
        g_new = g + beta[:, None] * d
        t_new = geom.f_update(g_new, eps)
        g_col = geom.g_update(t_new, eps)
        col = torch.where(b > 0, b * torch.exp((g_new - g_col) / eps), 0.0)
        return ((b - col) * d).sum(-1), t_new

    zero = torch.zeros(d.shape[0], dtype=d.dtype, device=d.device)
    lo, hi = zero.clone(), torch.full_like(zero, math.inf)
    slope_lo, slope_hi = zero.clone(), zero.clone()
    best_t = t
    beta = torch.where(active, 1.0, 0.0)
    used = 0
    for _ in range(max_trials - 1):  # doubling: bracket the maximum in [lo, hi]
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
    return g + lo[:, None] * d, best_t, lo > 0, used


class StallSearch:
    """Detects checks whose error stopped falling, and runs :func:`line_search` for them.

    A problem stalls when its error is above :data:`STALL_RATIO` times the previous check's. A
    search that does not move a problem doubles the number of checks before it is tried there
    again (up to 64).

    Args:
        geom: The problem.
        eps: The final ε.
        like ((B,) Tensor): Device of the per-problem state.
    """

    def __init__(self, geom: Geometry, eps: float, like: Tensor):
        self.geom, self.eps = geom, eps
        self.g_check: Tensor | None = None  # g and the error at the previous check
        self.err_check: Tensor | None = None
        self.n_check = 0
        self.misses = torch.zeros_like(like, dtype=torch.int64)  # failed searches in a row
        self.next_try = torch.zeros_like(self.misses)  # the first check to search at again

    def __call__(
        self, g: Tensor, t: Tensor, err: Tensor, max_trials: int
    ) -> tuple[Tensor, Tensor, Tensor, int]:
        """At a check: ``(g, t, moved (B,) bool, trials used)``, searched where stalled."""
        moved, used = torch.zeros_like(err, dtype=torch.bool), 0
        if self.g_check is not None and max_trials >= 2:
            stalled = (err > STALL_RATIO * self.err_check) & (self.next_try <= self.n_check)
            if bool(stalled.any()):
                g, t, moved, used = line_search(
                    self.geom, g, g - self.g_check, t, self.eps, stalled, max_trials=max_trials
                )
                self.misses = torch.where(moved, 0, self.misses + stalled.long())
                backoff = self.n_check + torch.bitwise_left_shift(1, self.misses.clamp(max=6))
                self.next_try = torch.where(stalled, backoff, self.next_try)
        self.g_check, self.err_check, self.n_check = g, err, self.n_check + 1
        return g, t, moved, used


def _run_level(
    geom: Geometry, f: Tensor, g: Tensor, level: Level, n_max: int, fixed: bool
) -> tuple[Tensor, Tensor, int]:
    """Iterate a two-sided problem at one ε; returns ``(f, g, iterations)``, trials included."""
    eps, period = level.eps, level.check_every
    relax = Relaxation(f[:, 0])
    # the line search climbs the balanced semi-dual: not for KL-relaxed marginals, whose damped
    # half steps contract by tau < 1 anyway
    searching = level.final and not fixed and not geom.problem.unbalanced
    search = StallSearch(geom, eps, f[:, 0]) if searching else None
    n_iter, i = 0, -1
    while i + 1 < n_max:
        i += 1
        t = geom.f_update(g, eps)  # a check measures the iterate (f, g), columns exact
        if not fixed and i >= 1 and (i - 1) % period == 0:  # the first probe is no check
            err = geom.marginal_error(f, t, eps).detach()
            if bool((err < level.tol).all()):
                break
            moved = torch.zeros_like(err, dtype=torch.bool)
            if search is not None:
                trials = min(LINE_SEARCH_TRIALS + 1, n_max - i - 1)
                g, t, moved, used = search(g, t, err, trials)
                n_iter, n_max = n_iter + used, n_max - used  # trials count as iterations
            relax.update(err, moved)
        n_iter += 1
        w = relax.weight(first=i == 0)
        plain = isinstance(w, float) and w == 1.0
        f = t if plain else torch.lerp(f, t, w)
        t_g = geom.g_update(f, eps)
        # plain before a check (the check needs exact columns) and at the very end
        plain = plain or (not fixed and i % period == 0) or (level.final and i == n_max - 1)
        g = t_g if plain else torch.lerp(g, t_g, w)
    return f, g, n_iter


def _run_symmetric_level(
    geom: Geometry, f: Tensor, level: Level, n_max: int, fixed: bool
) -> tuple[Tensor, int]:
    """Iterate a symmetric problem (``x = y``) at one ε with the averaged update."""
    eps = level.eps
    n_iter = 0
    for i in range(n_max):
        t = geom.f_update(f, eps)
        if not fixed and i % level.check_every == 0:
            if bool((2.0 * geom.marginal_error(f, t, eps).detach() < level.tol).all()):
                break
        n_iter += 1
        f = 0.5 * (f + t)
    return f, n_iter


def iterate(
    geom: Geometry, f: Tensor, g: Tensor, levels: list[Level], *, max_iter: int, fixed: bool
) -> tuple[Tensor, Tensor, int]:
    """Run ``levels`` in order; returns the last pair ``(f, g)`` and the iteration count.

    Intermediate levels share half of ``max_iter`` (each at most its own ``max_iter``; in fixed
    mode exactly that many); the final level gets the rest. The returned ``g`` is a plain
    update ``g_update(f)`` (columns exact); for a symmetric problem ``f`` and ``g`` are one
    tensor.
    """
    n_iter, budget = 0, max_iter // 2
    for level in levels:
        if level.max_iter is None:
            n_max = max_iter - n_iter
        else:
            n_max = level.max_iter if fixed else min(level.max_iter, budget - n_iter)
        if geom.problem.symmetric:
            f, used = _run_symmetric_level(geom, f, level, n_max, fixed)
            g = f
        else:
            f, g, used = _run_level(geom, f, g, level, n_max, fixed)
        n_iter += used
    return f, g, n_iter
