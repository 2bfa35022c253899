r"""The entropic OT solver: :func:`sinkhorn`, its options, the ε schedule, the result.

For measures :math:`\alpha = \sum_i a_i \delta_{x_i}` and :math:`\beta = \sum_j b_j \delta_{y_j}`
(weights normalized to sum 1 per problem), entropic optimal transport is

.. math::

    \mathrm{OT}_\varepsilon(\alpha, \beta)
        = \min_{P \in \Pi(a, b)} \langle P, C \rangle
          + \varepsilon\,\mathrm{KL}(P \,|\, a \otimes b)
        = \max_{f, g}\; \langle a, f \rangle + \langle b, g \rangle
          - \varepsilon \langle a \otimes b, e^{(f \oplus g - C)/\varepsilon} - 1 \rangle,

solved by alternating the soft-min half steps (Cuturi 2013, in the log domain)

.. math::

    f_i = -\varepsilon \log \sum_j b_j e^{(g_j - C_{ij})/\varepsilon}, \qquad
    g_j = -\varepsilon \log \sum_i a_i e^{(f_i - C_{ij})/\varepsilon}.

The optimal plan is :math:`P_{ij} = a_i b_j e^{(f_i + g_j - C_{ij})/\varepsilon}`. ε-scaling
(annealing) starts at a large ε and divides it geometrically down to the target (Kosowsky &
Yuille 1994; Schmitzer 2019; Feydy et al. 2019). The debiased divergence is Feydy et al.
(2019)'s :math:`S_\varepsilon = \mathrm{OT}_\varepsilon(\alpha,\beta)
- \tfrac12 \mathrm{OT}_\varepsilon(\alpha,\alpha) - \tfrac12 \mathrm{OT}_\varepsilon(\beta,\beta)`.

Layers: this module checks the options, builds the :class:`~sinkmatch.backends.base.Problem`,
asks the backend for its :class:`~sinkmatch.backends.base.Geometry`
(:func:`sinkmatch.backends.prepare`), runs the loop of :mod:`sinkmatch.loop` and takes the one
differentiable step that ends a solve.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Literal, Union, get_args

import torch
from torch import Tensor

from sinkmatch import loop
from sinkmatch._checks import (
    as_points,
    as_weights,
    check_choice,
    check_finite,
    check_float_tensor,
    check_positive_int,
    check_real,
    check_same_device,
    compute_dtype,
    describe,
)
from sinkmatch.backends import Geometry, Problem, SoftminBackend, get_backend, prepare
from sinkmatch.backends.onedim import OneDimSoftmin, choose_onedim
from sinkmatch.costs import Cost, PrecomputedCost, get_cost
from sinkmatch.exact1d import exact_1d_potentials
from sinkmatch.unbalanced import as_masses, check_rho, dual_value, empty_value

__all__ = ["VALUES", "SinkhornResult", "sinkhorn"]

Value = Literal["regularized", "transport", "divergence"]
Grad = Literal["envelope", "autodiff"]
Init = Union[Literal["auto", "exact1d"], tuple[Tensor, Tensor], None]
BackendSpec = Union[Literal["auto", "dense", "online", "triton", "onedim"], SoftminBackend]
CostSpec = Union[str, Cost, Callable[[Tensor, Tensor], Tensor]]
VALUES: tuple[str, ...] = get_args(Value)
_GRADS: tuple[str, ...] = get_args(Grad)
_INIT_CHOICES = "init must be 'auto', None, 'exact1d' or a tuple (f, g)"
PLAN_MAX_ELEMENTS = 1 << 26


@dataclass(frozen=True)
class SinkhornResult:
    r"""What :func:`sinkhorn` returns.

    Attributes:
        value ((B,) or () Tensor): The requested value per problem (``()`` when neither input
            had a batch axis), in the compute dtype (float32 for half inputs).
        f ((B, N) Tensor): Dual potential on ``x``, in cost units (for ``"divergence"``: of the
            ``x``–``y`` problem).
        g ((B, M) Tensor): Dual potential on ``y``.
        n_iter (int): Sinkhorn iterations (one ``f`` and one ``g`` update each), ε-scaling and
            line-search trials (two soft-mins each) included (for ``"divergence"``: of the
            ``x``–``y`` problem). Counted on the host, also in fixed-iteration mode.
        converged ((B,) bool Tensor): ``marginal_error < tol`` per problem.
        marginal_error ((B,) Tensor): L1 marginal error
            :math:`\sum_i |a_i - (P\mathbb 1)_i| + \sum_j |b_j - (P^\top \mathbb 1)_j|` of the
            last iterate ``(f_k, g_k)`` of the loop, whose columns are exact (for ``"divergence"``:
            the largest over the three problems). The returned ``f`` is the final differentiable
            update ``T(g_k)``, whose plan has exact rows. For unbalanced OT (``rho=``): the L1
            violation of the optimality conditions relative to the mean mass (see ``rho``).
        eps (float): The entropic regularization.
        problem (Problem): The ``x``–``y`` problem as solved (points ``(B, N, D)`` in the
            compute dtype, normalized weights, the cost; or the ``cost_matrix`` with
            ``(B, N, 0)`` placeholder points), detached.
        backend (SoftminBackend): The backend that solved it (the ``"auto"`` rule's choice).
        kernel_error ((B,) Tensor or None): The 1-D path's bound on the relative error of its
            soft-min sums (included in ``marginal_error``); ``None`` for exact backends.
    """

    value: Tensor
    f: Tensor
    g: Tensor
    n_iter: int
    converged: Tensor
    marginal_error: Tensor
    eps: float
    problem: Problem = field(repr=False)
    backend: SoftminBackend = field(repr=False)
    kernel_error: Tensor | None = None

    def plan(self, *, force: bool = False) -> Tensor:
        r"""The transport plan :math:`P_{ij} = a_i b_j e^{(f_i + g_j - C_{ij})/\varepsilon}`.

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
                f"plan() would build a {x.shape[0]}x{x.shape[1]}x{y.shape[1]} tensor "
                f"({size} entries > {PLAN_MAX_ELEMENTS}); pass force=True, or use "
                "barycentric_map() which streams"
            )
        return prepare(self.backend, self.problem).plan(self.f, self.g, self.eps)

    def barycentric_map(self) -> Tensor:
        r"""Barycentric projection :math:`T(x_i) = \sum_j P_{ij} y_j / \sum_j P_{ij}`.

        Computed from ``g`` with rows normalized exactly, streamed over tiles (works at large N).

        Returns:
            (B, N, D) Tensor: The image of every ``x_i`` (detached).
        """
        return prepare(self.backend, self.problem).barycentric_map(self.g, self.eps)


# ------------------------------------------------------------------------------------ options


@dataclass(frozen=True)
class _Options:
    """The checked settings of one :func:`sinkhorn` call."""

    eps: float
    value: str
    grad: str
    tol: float
    max_iter: int
    check_every: int
    eps_scaling: float | None
    eps_start: float | None
    fixed: bool
    rho: tuple[float, float] | None = None  # unbalanced OT: (rho_a, rho_b); None: balanced

    @property
    def check_values(self) -> bool:
        """Read inputs back to the host to check them (not in fixed-iteration mode)."""
        return not self.fixed

    @property
    def loop_modes(self) -> dict[str, bool]:
        """How the loop runs, for :func:`sinkmatch.backends.prepare`."""
        return dict(differentiable_loop=self.grad == "autodiff", allow_sync=not self.fixed)


def _check_options(
    eps, value, grad, tol, max_iter, check_every, eps_scaling, eps_start, fixed, rho=None
) -> _Options:
    # Python numbers only (no tensors): reading a tensor back would synchronise
    eps = check_real("eps", eps, gt=0, arrays=False)
    value = check_choice("value", value, VALUES)
    grad = check_choice("grad", grad, _GRADS)
    max_iter = check_positive_int("max_iter", max_iter)
    check_every = check_positive_int("check_every", check_every)
    tol = check_real("tol", tol, ge=0, finite=False, arrays=False)
    eps_scaling = check_real("eps_scaling", eps_scaling, gt=0, lt=1, none_ok=True, arrays=False)
    if eps_start is not None:
        eps_start = check_real("eps_start", eps_start, gt=0, arrays=False)
    if fixed and eps_scaling is not None and eps_start is None:
        raise ValueError(
            "fixed_iterations=True needs an ε schedule known without reading the data: pass "
            "eps_start=<float> or eps_scaling=None"
        )
    rho = check_rho(rho)
    if value == "divergence" and rho is not None and rho[0] != rho[1]:
        raise ValueError(
            "value='divergence' of unbalanced OT needs one rho for both sides, got "
            f"rho_a={rho[0]} and rho_b={rho[1]}"
        )
    return _Options(
        eps, value, grad, tol, max_iter, check_every, eps_scaling, eps_start, bool(fixed), rho
    )


def eps_schedule(eps: float, start: float | None, factor: float | None) -> list[float]:
    """Geometric ε schedule from ``start`` down to ``eps`` (``eps`` last; at most 200 levels).

    Example:
        >>> eps_schedule(0.1, 1.0, 0.5)
        [1.0, 0.5, 0.25, 0.125, 0.1]
    """
    levels = []
    if factor is not None and start is not None:
        e = start
        while e > eps * (1.0 + 1e-9) and len(levels) < 200:
            levels.append(e)
            e *= factor
    return [*levels, eps]


def _eps_start(opts: _Options, prob: Problem, warm: bool) -> float | None:
    """The first ε: ``eps_start``, else ``eps`` itself after a warm start, else the diameter.

    The diameter of a precomputed cost matrix is the range of its entries.
    """
    if opts.eps_scaling is None or opts.eps_start is not None:
        return opts.eps_start
    if warm:
        return opts.eps  # a warm start needs no scaling
    with torch.no_grad():
        c = prob.cost_matrix
        if c is not None:
            return float((c.flatten(1).amax(1) - c.flatten(1).amin(1)).max())
        return float(prob.cost.diameter(prob.x, prob.y).max())


# ------------------------------------------------------------------------------- inputs, start


def _prepare_points(x: Any, y: Any) -> tuple[Tensor, Tensor, bool]:
    xb, yb = as_points(x, "x"), as_points(y, "y")
    check_same_device(x=xb, y=yb)
    if xb.shape[-1] != yb.shape[-1]:
        raise ValueError(
            "x and y must have the same point dimension D, got "
            f"x {tuple(x.shape)} and y {tuple(y.shape)}"
        )
    if xb.shape[0] != yb.shape[0]:
        if xb.shape[0] == 1 and x.ndim <= 2:
            xb = xb.expand(yb.shape[0], -1, -1)
        elif yb.shape[0] == 1 and y.ndim <= 2:
            yb = yb.expand(xb.shape[0], -1, -1)
        else:
            raise ValueError(
                f"x and y must have the same batch size, got x {tuple(x.shape)} and "
                f"y {tuple(y.shape)}"
            )
    dtype = compute_dtype(xb, yb)
    return xb.to(dtype), yb.to(dtype), x.ndim <= 2 and y.ndim <= 2


def _prepare_matrix(
    c: Any, x: Any, y: Any, cost: Any, a: Any, b: Any, check_values: bool
) -> tuple[Tensor, Tensor, Tensor, bool]:
    """``(C (B, N, M), x (B, N, 0), y (B, M, 0), unbatched)`` for ``cost_matrix=``.

    An ``(N, M)`` matrix is shared by a batch of weights ``(B, N)``/``(B, M)``; the placeholder
    points carry the sizes, dtype and device.
    """
    if x is not None or y is not None:
        raise ValueError(
            "give either the points x and y or cost_matrix=, not both; got x "
            f"{describe(x)}, y {describe(y)} and cost_matrix {describe(c)}"
        )
    if cost is not None:
        raise ValueError(
            f"cost= computes the cost from points; with cost_matrix= leave it out, got {cost!r}"
        )
    c = check_float_tensor("cost_matrix", c)
    if c.ndim not in (2, 3) or c.shape[-1] == 0 or c.shape[-2] == 0:
        raise ValueError(
            f"cost_matrix must have shape (N, M) or (B, N, M) with N, M >= 1, got {describe(c)}"
        )
    check_same_device(cost_matrix=c, a=a, b=b)
    cb = c if c.ndim == 3 else c[None]
    batched_w = [w.shape[0] for w in (a, b) if isinstance(w, Tensor) and w.ndim == 2]
    if c.ndim == 2 and batched_w:
        cb = cb.expand(max(batched_w), -1, -1)
    cb = cb.to(compute_dtype(cb))
    if check_values:
        check_finite("cost_matrix", cb)
    batch, n, m = cb.shape
    x0, y0 = cb.new_zeros(batch, n, 0), cb.new_zeros(batch, m, 0)
    return cb, x0, y0, c.ndim == 2 and not batched_w


def _build_problem(
    x: Any, y: Any, a: Any, b: Any, cost_matrix: Any, cost: Any, opts: _Options
) -> tuple[Problem, bool]:
    """The checked :class:`Problem` from points or a cost matrix, and whether it is unbatched."""
    cmat = None
    if cost_matrix is not None:
        cmat, xb, yb, unbatched = _prepare_matrix(cost_matrix, x, y, cost, a, b, opts.check_values)
        cost_obj: Cost = PrecomputedCost()
        if opts.value == "divergence":
            raise ValueError(
                "value='divergence' needs the self costs C(x, x) and C(y, y), which a "
                "cost_matrix does not give; pass points, or use value='regularized'"
            )
    else:
        if x is None or y is None:
            raise TypeError(
                "sinkhorn() needs the points x and y, or a precomputed cost_matrix=; got x "
                f"{describe(x)} and y {describe(y)}"
            )
        cost_obj = get_cost("sqeuclidean" if cost is None else cost)
        xb, yb, unbatched = _prepare_points(x, y)
        if opts.check_values:
            check_finite("x", xb)
            check_finite("y", yb)
    check_same_device(x=xb, a=a, b=b)
    batch, n, m = xb.shape[0], xb.shape[1], yb.shape[1]
    weights = dict(batch=batch, dtype=xb.dtype, device=xb.device, check_values=opts.check_values)
    if opts.rho is None:
        an = as_weights(a, "a", n_points=n, **weights)
        bn = as_weights(b, "b", n_points=m, **weights)
        return Problem(xb, yb, an, bn, cost_obj, cost_matrix=cmat), unbatched
    # unbalanced OT: the weights are masses (not normalized; a zero total is legal)
    an = as_masses(a, "a", n_points=n, **weights)
    bn = as_masses(b, "b", n_points=m, **weights)
    rho_a, rho_b = opts.rho
    return Problem(xb, yb, an, bn, cost_obj, cost_matrix=cmat, rho_a=rho_a, rho_b=rho_b), unbatched


def _resolve_init(init: Any, cost: Cost, x: Tensor, y: Tensor, opts: _Options) -> Any:
    """``None``, ``"exact1d"`` or checked warm-start potentials ``(f (B, N), g (B, M))``.

    The ``"auto"`` rule: ``"exact1d"`` for 1-D points and a named cost, else ``None``;
    fixed-iteration mode resolves it to ``None`` (the exact 1-D potentials validate their input,
    which synchronises with the device).
    """
    if init is None:
        return None
    if isinstance(init, str):
        if init not in ("auto", "exact1d"):
            raise ValueError(f"{_INIT_CHOICES}, got {init!r}")
        if init == "auto":  # the exact 1-D start is balanced: not for unbalanced OT
            named_1d = x.shape[-1] == 1 and cost.power is not None
            return "exact1d" if named_1d and not opts.fixed and opts.rho is None else None
        return init
    if not (isinstance(init, tuple) and len(init) == 2):
        raise TypeError(f"{_INIT_CHOICES}, got {type(init).__name__}")
    batch, out = x.shape[0], []
    for name, t, k in (("init[0] (f)", init[0], x.shape[1]), ("init[1] (g)", init[1], y.shape[1])):
        check_float_tensor(name, t)
        if t.device != x.device:
            raise ValueError(f"{name} must be on {x.device}, got {t.device}")
        if tuple(t.shape) not in ((k,), (1, k), (batch, k)):
            raise ValueError(
                f"{name} must have shape ({k},) or ({batch}, {k}), got {tuple(t.shape)}"
            )
        t = t.detach().to(x.dtype).expand(batch, k)
        if opts.check_values:
            check_finite(name, t)
        out.append(t)
    return out[0], out[1]


def _start(prob: Problem, init: Any) -> tuple[Tensor, Tensor]:
    """The potentials the loop starts from: zeros, the exact 1-D ones, or the given pair."""
    batch, n, m = prob.x.shape[0], prob.x.shape[1], prob.y.shape[1]
    if init is None:
        f = torch.zeros(batch, n, dtype=prob.x.dtype, device=prob.x.device)
        g = f if prob.symmetric else torch.zeros(batch, m, dtype=f.dtype, device=f.device)
    elif isinstance(init, str):
        if prob.x.shape[-1] != 1 or prob.cost.power is None:
            raise ValueError(
                "init='exact1d' needs 1-D points and a named cost, got "
                f"D={prob.x.shape[-1]} and cost {prob.cost!r}"
            )
        with torch.no_grad():  # a warm start is a constant, like a tuple init
            f, g = exact_1d_potentials(
                prob.x[..., 0], prob.y[..., 0], prob.a, prob.b, p=prob.cost.power, ties="average"
            )
        # the potentials of s |x - y|^p are s times those of |x - y|^p
        scale = prob.cost.scale
        f, g = (scale * f).to(prob.x.dtype), (scale * g).to(prob.x.dtype)
    else:
        f, g = init
    return (f, f) if prob.symmetric else (f, g)


# -------------------------------------------------------------------------------------- solve


def _solve(
    geom: Geometry, init: Any, levels: list[loop.Level], opts: _Options
) -> tuple[Tensor, Tensor, Tensor, Tensor, int]:
    r"""Solve one problem: ``(regularized value, f, g, marginal error, n_iter)``.

    The loop runs under ``torch.no_grad()`` for ``grad="envelope"``; then one differentiable
    step on the last (detached) potentials: by the envelope theorem the semi-dual
    :math:`\langle a, T(g)\rangle + \langle b, g\rangle` has the gradient of
    :math:`\mathrm{OT}_\varepsilon` at convergence.
    """
    prob, eps, envelope = geom.problem, opts.eps, opts.grad == "envelope"
    with torch.no_grad() if envelope else contextlib.nullcontext():
        f, g = _start(prob, init)
        f, g, n_iter = loop.iterate(geom, f, g, levels, max_iter=opts.max_iter, fixed=opts.fixed)
        g = geom.complete_g(f, g, eps)
    if envelope:
        f, g = f.detach(), g.detach()
    if prob.symmetric:
        t = geom.final_f(f, eps)
        value = _semi_dual(prob, t, f, eps)
        err = 2.0 * geom.marginal_error(f.detach(), t.detach(), eps)
        return value, t, t, err, n_iter
    t = geom.final_f(g, eps)
    value = _semi_dual(prob, t, g, eps)
    err = geom.marginal_error(f.detach(), t.detach(), eps)  # the checked iterate (f, g)
    return value, t, g, err, n_iter


def _semi_dual(prob: Problem, t: Tensor, g: Tensor, eps: float) -> Tensor:
    """The value at the returned pair ``(t, g)``, ``t = f_update(g)``: balanced or unbalanced."""
    if prob.unbalanced:
        return dual_value(prob, t, g, eps)
    return (prob.a * t).sum(-1) + (prob.b * g).sum(-1)


def _transport_value(geom: Geometry, reg_value: Tensor, g: Tensor, opts: _Options) -> Tensor:
    """<P, C> for the plan with exact rows built from g."""
    if opts.grad == "autodiff":
        return geom.transport_cost(g, opts.eps, differentiable=True)
    transport = geom.transport_cost(g, opts.eps)
    # Value <P, C>; gradient of OT_eps (the plan held fixed), see the docstring of sinkhorn().
    return reg_value + (transport - reg_value).detach()


def _divergence(
    reg: Tensor, err: Tensor, backend: SoftminBackend, p: Problem, levels, opts: _Options
) -> tuple[Tensor, Tensor]:
    r"""The debiased value and the largest error over the three problems.

    Unbalanced (Séjourné et al. 2019): :math:`S = \mathrm{UOT}(\alpha, \beta) -
    \tfrac12 \mathrm{UOT}(\alpha, \alpha) - \tfrac12 \mathrm{UOT}(\beta, \beta) +
    \tfrac\varepsilon2 (m_a - m_b)^2`, for one :math:`\rho` on both sides.
    """
    rho = dict(rho_a=p.rho_a, rho_b=p.rho_a)  # divergence: rho_a == rho_b (checked)
    self_x = Problem(p.x, p.x, p.a, p.a, p.cost, symmetric=True, **rho)
    self_y = Problem(p.y, p.y, p.b, p.b, p.cost, symmetric=True, **rho)
    reg_x, _, _, err_x, _ = _solve(prepare(backend, self_x, **opts.loop_modes), None, levels, opts)
    reg_y, _, _, err_y, _ = _solve(prepare(backend, self_y, **opts.loop_modes), None, levels, opts)
    value = reg - 0.5 * (reg_x + reg_y)
    if p.unbalanced:
        value = value + 0.5 * opts.eps * (p.a.sum(-1) - p.b.sum(-1)) ** 2
    return value, torch.maximum(err, torch.maximum(err_x, err_y))


def _run(
    problem: Problem, backend: SoftminBackend, init: Any, opts: _Options
) -> tuple[Tensor, Tensor, Tensor, Tensor, int]:
    """Schedule, loop and requested value: ``(value, f, g, marginal error, n_iter)``."""
    start = _eps_start(opts, problem, warm=init is not None)
    schedule = eps_schedule(opts.eps, start, opts.eps_scaling)
    levels = loop.build_levels(
        schedule,
        tol=opts.tol,
        check_every=opts.check_every,
        max_iter=opts.max_iter,
        fixed=opts.fixed,
    )
    geom = prepare(backend, problem, **opts.loop_modes)
    out, f, g, err, n_iter = _solve(geom, init, levels, opts)
    if opts.value == "transport":
        out = _transport_value(geom, out, g, opts)
    elif opts.value == "divergence":
        out, err = _divergence(out, err, backend, problem, levels, opts)
    return out, f, g, err, n_iter


def _select(problem: Problem, keep: Tensor) -> Problem:
    """The problems ``keep`` (indices) of a batch."""
    c = problem.cost_matrix
    return replace(
        problem,
        x=problem.x[keep],
        y=problem.y[keep],
        a=problem.a[keep],
        b=problem.b[keep],
        cost_matrix=None if c is None else c[keep],
    )


def _run_unbalanced(
    problem: Problem, backend: SoftminBackend, init: Any, opts: _Options
) -> tuple[Tensor, Tensor, Tensor, Tensor, int]:
    """:func:`_run` for KL-relaxed marginals, where a side may have zero mass.

    Problems with mass on both sides are solved; the others get the closed form of
    :func:`sinkmatch.unbalanced.empty_value` (their potentials are ``+inf`` on a side facing
    an empty one, ``-inf`` on an empty side facing mass; error 0).
    """
    ma, mb = problem.a.sum(-1), problem.b.sum(-1)
    full = (ma > 0) & (mb > 0)
    if bool(full.all()):
        return _run(problem, backend, init, opts)
    keep = full.nonzero().flatten()
    value = empty_value(problem)  # the cross term; raises for a hard side facing nothing
    if opts.value == "transport":
        value = value * 0.0
    # softmin over a side without mass is +inf; a damped softmin against +inf potentials -inf
    f = torch.where((mb == 0)[:, None], math.inf, -math.inf).to(ma).expand_as(problem.a)
    g = torch.where((ma == 0)[:, None], math.inf, -math.inf).to(ma).expand_as(problem.b)
    err = torch.zeros_like(ma)
    n_iter = 0
    if opts.value == "divergence":  # the self terms of the sides with mass
        value = value + _empty_divergence_terms(problem, ~full, backend, opts)
    if keep.numel():
        sub_init = init if not isinstance(init, tuple) else (init[0][keep], init[1][keep])
        out, fs, gs, es, n_iter = _run(_select(problem, keep), backend, sub_init, opts)
        value = value.index_put((keep,), out.to(value.dtype))
        f, g = f.index_put((keep,), fs.to(f.dtype)), g.index_put((keep,), gs.to(g.dtype))
        err = err.index_put((keep,), es.to(err.dtype))
    return value, f, g, err, n_iter


def _empty_divergence_terms(
    problem: Problem, empty: Tensor, backend: SoftminBackend, opts: _Options
) -> Tensor:
    r"""For problems with an empty side: :math:`-\tfrac12 \mathrm{UOT}(\alpha, \alpha) -
    \tfrac12 \mathrm{UOT}(\beta, \beta) + \tfrac\varepsilon2 (m_a - m_b)^2` (0 elsewhere)."""
    ma, mb = problem.a.sum(-1), problem.b.sum(-1)
    out = torch.where(empty, 0.5 * opts.eps * (ma - mb) ** 2, 0.0)
    levels = loop.build_levels(
        eps_schedule(opts.eps, _eps_start(opts, problem, warm=False), opts.eps_scaling),
        tol=opts.tol,
        check_every=opts.check_every,
        max_iter=opts.max_iter,
        fixed=opts.fixed,
    )
    rho = dict(rho_a=problem.rho_a, rho_b=problem.rho_a)
    for pts, w, mass in ((problem.x, problem.a, ma), (problem.y, problem.b, mb)):
        idx = (empty & (mass > 0)).nonzero().flatten()
        if idx.numel():
            sym = Problem(pts[idx], pts[idx], w[idx], w[idx], problem.cost, True, **rho)
            reg, *_ = _solve(prepare(backend, sym, **opts.loop_modes), None, levels, opts)
            out = out.index_put((idx,), out[idx] - 0.5 * reg.to(out.dtype))
    return out


def _warn_not_converged(converged: Tensor, err: Tensor, n_iter: int, tol: float) -> None:
    if not bool(converged.all()):
        bad = (~converged).nonzero().flatten().tolist()
        warnings.warn(
            f"sinkhorn did not converge for problems {bad[:10]} after {n_iter} iterations "
            f"(marginal error up to {float(err.max()):.3g} > tol={tol}); raise max_iter or eps",
            UserWarning,
            stacklevel=3,
        )


def sinkhorn(
    x: Tensor | None = None,
    y: Tensor | None = None,
    a: Tensor | None = None,
    b: Tensor | None = None,
    *,
    cost_matrix: Tensor | None = None,
    eps: float = 0.1,
    cost: CostSpec | None = None,
    value: Value = "regularized",
    max_iter: int = 1000,
    tol: float = 1e-3,
    check_every: int = 10,
    eps_scaling: float | None = 0.5,
    eps_start: float | None = None,
    init: Init = "auto",
    grad: Grad = "envelope",
    backend: BackendSpec = "auto",
    fixed_iterations: bool = False,
    warn: bool = False,
    rho: float | tuple[float | None, float | None] | None = None,
) -> SinkhornResult:
    r"""Entropic optimal transport between weighted point clouds, batched, in the log domain.

    Args:
        x ((N,), (N, D) or (B, N, D) Tensor): Source points (floating); omitted with
            ``cost_matrix``.
        y ((M,), (M, D) or (B, M, D) Tensor): Target points, same D. An unbatched input is
            broadcast against a batched one.
        a ((N,) or (B, N) Tensor, optional): Nonnegative source weights; uniform when ``None``.
            Zero marks padding. Normalized to sum 1 per problem (so only their ratios matter).
        b ((M,) or (B, M) Tensor, optional): Target weights, likewise.
        cost_matrix ((N, M) or (B, N, M) Tensor, optional): A precomputed cost matrix
            :math:`C_{ij}` instead of points (POT's ``M``): ``sinkhorn(a=a, b=b,
            cost_matrix=C, eps=reg)``. Leave ``x``, ``y`` and ``cost`` out. An ``(N, M)``
            matrix is shared by batched weights ``(B, N)``/``(B, M)``. Solved by the dense
            backend (the ``"auto"`` rule picks it; others raise); the value is differentiable
            with respect to ``C`` (the envelope gradient :math:`\partial
            \mathrm{OT}_\varepsilon / \partial C = P`, the plan) and the weights. Entries must
            be finite. Not with ``value="divergence"`` (which needs the self costs) nor
            ``barycentric_map()`` (no points); ε-scaling starts at the range of ``C``.
        eps: Entropic regularization ε > 0, in cost units.
        cost: ``"sqeuclidean"`` (the default, :math:`\|x-y\|^2`, not halved), ``"euclidean"``, a
            :class:`~sinkmatch.costs.PowerCost` (:math:`s\,\|x-y\|^p` for any ``p >= 1``,
            every backend; GeomLoss's :math:`\tfrac12\|x-y\|^2` is ``SqEuclidean(scale=0.5)``),
            or a callable ``(x (B, N, D), y (B, M, D)) -> (B, N, M)`` (dense backend only).
        value: ``"regularized"`` (:math:`\mathrm{OT}_\varepsilon`, the entropic objective, equal to
            :math:`\langle a, f\rangle + \langle b, g\rangle` at convergence), ``"transport"``
            (:math:`\langle P_\varepsilon, C\rangle`, what POT's ``sinkhorn2`` returns) or
            ``"divergence"`` (the debiased :math:`S_\varepsilon`; the self terms are solved with
            the symmetric update).
        max_iter: Maximum number of iterations, ε-scaling and line-search trials included (the
            scaling phase uses at most half of them); exactly this many when
            ``fixed_iterations``.
        tol: Stop when the L1 marginal error (columns are exact after each ``g`` update, so
            this is :math:`\sum_i |a_i - (P\mathbb 1)_i|`) is below ``tol`` for every problem.
        check_every: Check the stopping rule every this many iterations at the final ε.
        eps_scaling: Factor in (0, 1) of geometric ε-scaling, or ``None`` for none. At every
            intermediate level the loop iterates until the marginal error is below 0.01 (at most
            30 iterations); at the final ε it iterates to ``tol``. There, a check whose error is
            above half the previous one's triggers a line search on the semi-dual along the
            last period's change of ``g`` (per problem): near-degenerate problems at small ε
            otherwise crawl along a slow mode for thousands of iterations.
        eps_start: First ε of the scaling; default: the cost's diameter (an upper bound on the
            largest cost, e.g. :math:`(\max - \min)^2` in 1-D for the squared cost), or
            ``eps`` (no scaling) with a warm start (``init`` not ``None`` after the ``"auto"``
            rule).
        init: ``"auto"`` (default), ``None`` (zero potentials), ``"exact1d"`` or a tuple
            ``(f (B, N), g (B, M))`` of warm-start potentials (``g`` drives the first update;
            detached). ``"exact1d"`` (1-D points, named cost) starts from the exact unregularized
            dual potentials of :func:`sinkmatch.exact1d.exact_1d_potentials` (sorting,
            :math:`O((N + M)\log(N + M))`), which zero weights (padding) do not disturb.
            The ``"auto"`` rule: ``"exact1d"`` when ``D == 1`` and the cost is a named one
            (:math:`s\,|x - y|^p`, any ``p >= 1``: ``"sqeuclidean"``, ``"euclidean"``, a
            :class:`~sinkmatch.costs.PowerCost`) and not
            ``fixed_iterations``; otherwise ``None`` (zero potentials with ε-scaling from the
            diameter). A warm start skips ε-scaling (``eps_start`` defaults to ``eps``): on the
            CSS-CCNN workload (1-D, ε = 0.1) it converges in an order of magnitude fewer
            iterations (``benchmarks/results/sinkhorn.csv``, study ``css_iterations``). The
            answer at convergence does not depend on ``init``.
        grad: ``"envelope"``: iterate under ``torch.no_grad()``, then take one differentiable
            step on the detached potentials; exact for ``"regularized"`` and ``"divergence"``
            at convergence (envelope theorem). For ``"transport"`` the gradient is that of
            :math:`\mathrm{OT}_\varepsilon` (plan held fixed,
            :math:`\sum_j P_{ij}\partial_x C_{ij}`),
            an approximation of the gradient of :math:`\langle P_\varepsilon, C\rangle`.
            ``"autodiff"``: differentiate through the unrolled loop (memory grows with the
            iterations; for checking and for exact gradients of the truncated ``"transport"``
            value, which then materializes the plan).
        backend: ``"auto"``, ``"dense"``, ``"online"``, ``"triton"``, ``"onedim"`` or a
            :class:`~sinkmatch.backends.base.SoftminBackend`; see
            :func:`sinkmatch.backends.get_backend` for the ``auto`` rule.
        fixed_iterations: Run exactly ``max_iter`` iterations with no host synchronisation (no
            stopping checks, no value checks on the inputs: NaN or negative weights then give
            NaN results instead of errors), usable under ``torch.compile``. With ε-scaling it
            needs an explicit ``eps_start``; each level gets 3 iterations.
        warn: Emit a ``UserWarning`` when some problem did not converge.
        rho: Unbalanced OT (:mod:`sinkmatch.unbalanced`): the strength :math:`\rho > 0` of the
            KL relaxation of the marginals, in cost units, one number for both sides or a pair
            ``(rho_a, rho_b)``; ``math.inf`` or ``None`` for a side is the hard constraint
            (``(None, r)``: semi-relaxed). POT's ``reg_m``; GeomLoss's ``reach ** p`` (in its
            cost's units); OTT's ``tau_a`` is :math:`\rho_a/(\rho_a + \varepsilon)`. Then the
            weights are masses (not normalized, a zero total is legal: that side's problem costs
            :math:`\rho m` of the other side), each half step is damped by
            :math:`\tau = \rho/(\rho + \varepsilon)`, ``"regularized"`` is
            :math:`\mathrm{UOT}_\varepsilon` (generalized KL terms), ``"transport"``
            :math:`\langle P, C\rangle`, ``"divergence"`` Séjourné et al. (2019)'s (one
            :math:`\rho` for both sides), and ``marginal_error`` is the L1 violation of the
            optimality conditions :math:`P\mathbb 1 = a e^{-f/\rho_a}`,
            :math:`P^\top\mathbb 1 = b e^{-g/\rho_b}` relative to the mean mass
            :math:`(m_a + m_b)/2` (:meth:`~sinkmatch.unbalanced.UnbalancedGeometry.marginal_error`).
            ``init="auto"`` is ``None`` (the exact 1-D start is balanced) and there is no stall
            line search.

    Returns:
        SinkhornResult: ``value`` (B,) (or () for unbatched inputs), potentials, iterations,
        convergence flags and marginal errors; ``plan()`` and ``barycentric_map()`` helpers.

    Gradients with respect to the weights: the dual potentials are defined up to an additive
    constant (:math:`f + c, g - c`); since the weights are normalized inside the solver, the
    gradient with respect to ``a`` is the centred potential :math:`(f - \langle \bar a, f\rangle)
    / \sum_i a_i` — GeomLoss/OTT's convention (:math:`\nabla_a = f`) up to that constant, which
    vanishes on the simplex. Points with zero weight get exactly zero gradient.

    Raises:
        TypeError: Non-tensor or non-floating inputs, wrongly typed settings, neither points
            nor ``cost_matrix``.
        ValueError: Bad shapes, devices, NaN/inf points, costs or weights, negative or
            all-zero weights, ``eps <= 0``, unknown modes, points and ``cost_matrix`` together.

    Example:
        >>> import torch
        >>> x = torch.tensor([0.0, 1.0]); y = torch.tensor([0.0, 1.0])
        >>> res = sinkhorn(x, y, eps=1e-2, value="transport")
        >>> round(float(res.value), 4), bool(res.converged)
        (0.0, True)
        >>> C = torch.tensor([[0.0, 1.0], [1.0, 0.0]])  # POT's ot.sinkhorn2(a, b, C, 1e-2)
        >>> round(float(sinkhorn(cost_matrix=C, eps=1e-2, value="transport").value), 4)
        0.0
    """
    opts = _check_options(
        eps, value, grad, tol, max_iter, check_every, eps_scaling, eps_start, fixed_iterations, rho
    )
    problem, unbatched = _build_problem(x, y, a, b, cost_matrix, cost, opts)
    init = _resolve_init(init, problem.cost, problem.x, problem.y, opts)
    backend_obj = get_backend(backend, x=problem.x, y=problem.y, cost=problem.cost)
    backend_obj = choose_onedim(backend, backend_obj, problem, opts, init)
    kernel_error = None
    if isinstance(backend_obj, OneDimSoftmin):  # the whole solve on the line
        out, f, g, err, n_iter, kernel_error = backend_obj.solve(problem, opts)
    elif problem.unbalanced and opts.check_values:
        out, f, g, err, n_iter = _run_unbalanced(problem, backend_obj, init, opts)
    else:
        out, f, g, err, n_iter = _run(problem, backend_obj, init, opts)
    converged = err < opts.tol
    if warn and not opts.fixed:
        _warn_not_converged(converged, err, n_iter, opts.tol)
    return SinkhornResult(
        value=out[0] if unbatched else out,
        f=f,
        g=g,
        n_iter=n_iter,
        converged=converged,
        marginal_error=err,
        eps=opts.eps,
        problem=problem.detach(),
        backend=backend_obj,
        kernel_error=kernel_error,
    )
