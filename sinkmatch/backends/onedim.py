r"""The 1-D backend: the whole solve on the line in :math:`O(N + M)` (:mod:`sinkmatch.onedim`).

Unlike the other backends, which give one soft-min half step to the loop of
:mod:`sinkmatch.loop`, this one solves a whole problem (:meth:`OneDimSoftmin.solve`): exact
sorting warm start, Sinkhorn cycles with 1-D Newton corrections, each problem of a ragged batch
stopping on its own, envelope gradients (see :func:`sinkmatch.onedim.solve.solve_1d`). Its
``softmin`` is the online backend's (exact, streaming), used by the result's ``plan()`` and
``barycentric_map()``.

It solves balanced problems with points in one dimension, the squared cost
:math:`s\,(x - y)^2` (any scale ``s``), ``value="regularized"`` or ``"divergence"``,
``grad="envelope"`` and no fixed-iteration mode or explicit warm start (it always starts from
the exact 1-D potentials; ``init=None`` is ignored). ``backend="onedim"`` raises for anything
else; ``backend="auto"`` takes it for such problems on the CPU with ``init="auto"`` (or
``"exact1d"``) and at least :data:`AUTO_ONEDIM_MIN_ELEMENTS` cost entries per problem (below
that the dense backend is as fast).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from sinkmatch.backends.base import Problem, SoftminBackend
from sinkmatch.backends.online import OnlineSoftmin
from sinkmatch.costs import PowerCost

__all__ = ["AUTO_ONEDIM_MIN_ELEMENTS", "OneDimSoftmin", "choose_onedim", "onedim_refusal"]

# Measured (one thread, CSS pair, fwd+bwd, onedim / dense time): 256² 4.1, 512² 3.3, 1,024² 1.07,
# 1,568² 1.07, ragged batch of 64 (50-400 points) 0.97; from 2,048² on the 1-D path wins.
AUTO_ONEDIM_MIN_ELEMENTS = 1 << 22


class OneDimSoftmin(OnlineSoftmin):
    """The 1-D path as a backend (``backend="onedim"``); see the module docstring.

    Args:
        kernel_tol: Relative error bound allowed to the truncated expansions of each soft-min
            sum (default ``min(1e-9, tol / 100)``; the bound reached is reported as
            ``kernel_error``).
    """

    name = "onedim"

    def __init__(self, *, kernel_tol: float | None = None):
        super().__init__()
        if kernel_tol is not None and not (
            isinstance(kernel_tol, float) and 0 < kernel_tol <= 1e-6
        ):
            raise ValueError(f"kernel_tol must be a float in (0, 1e-6], got {kernel_tol!r}")
        self.kernel_tol = kernel_tol

    def solve(
        self, problem: Problem, opts: Any
    ) -> tuple[Tensor, Tensor, Tensor, Tensor, int, Tensor]:
        """Solve ``problem`` with the settings ``opts`` of :func:`sinkmatch.sinkhorn`.

        Returns:
            ``(value (B,), f (B, N), g (B, M), marginal error (B,), cycles, kernel error (B,))``.
        """
        from sinkmatch.onedim.solve import solve_1d

        scale = problem.cost.scale
        kw = dict(eps=opts.eps / scale, tol=opts.tol, max_iter=opts.max_iter)
        kw["kernel_tol"] = self.kernel_tol

        def run(x, y, a, b):
            return solve_1d(x[..., 0], y[..., 0], a, b, **kw)

        p = problem
        out = run(p.x, p.y, p.a, p.b)
        value, err, kerr = out.value, out.marginal_error, out.kernel_error
        n_iter = int(out.n_iter.max())
        if opts.value == "divergence":
            for pts, w in ((p.x, p.a), (p.y, p.b)):
                self_out = run(pts, pts, w, w)
                value = value - 0.5 * self_out.value
                err = torch.maximum(err, self_out.marginal_error)
                kerr = torch.maximum(kerr, self_out.kernel_error)
        dt = p.x.dtype
        return (
            scale * value.to(dt),
            scale * out.f.to(dt),
            scale * out.g.to(dt),
            err.to(dt),
            n_iter,
            kerr,
        )

    def __repr__(self) -> str:
        return f"OneDimSoftmin(kernel_tol={self.kernel_tol})"


def onedim_refusal(problem: Problem, opts: Any, init: Any) -> str | None:
    """Why the 1-D path cannot solve ``problem`` with ``opts`` (``None`` when it can)."""
    cost = problem.cost
    if problem.cost_matrix is not None:
        return "it generates the cost from points and cannot use a precomputed cost_matrix"
    if problem.x.shape[-1] != 1:
        return f"it needs points in one dimension, got D={problem.x.shape[-1]}"
    if not (isinstance(cost, PowerCost) and cost.power == 2.0):
        return f"it needs the squared cost ('sqeuclidean' or SqEuclidean(scale=s)), got {cost!r}"
    if problem.unbalanced:
        return "it solves balanced problems only (rho=None)"
    if opts.value not in ("regularized", "divergence"):
        return f"it gives value='regularized' or 'divergence', got {opts.value!r}"
    if opts.grad != "envelope" or opts.fixed:
        return "it needs grad='envelope' and fixed_iterations=False"
    if isinstance(init, tuple):
        return "it starts from the exact 1-D potentials, not a given init"
    return None


def choose_onedim(spec: Any, chosen: SoftminBackend, problem: Problem, opts: Any, init: Any):
    """The backend to use: the 1-D path where ``spec`` asks for it (or ``"auto"`` allows it).

    Raises:
        ValueError: ``spec == "onedim"`` for a problem the 1-D path does not solve.
    """
    if isinstance(chosen, OneDimSoftmin):
        why = onedim_refusal(problem, opts, init)
        if why is not None:
            raise ValueError(f"backend 'onedim' cannot solve this problem: {why}")
        return chosen
    if spec != "auto" or problem.x.is_cuda:
        return chosen
    n, m = problem.x.shape[1], problem.y.shape[1]
    if init != "exact1d" or n * m < AUTO_ONEDIM_MIN_ELEMENTS:  # init=None asks for zeros
        return chosen
    if onedim_refusal(problem, opts, init) is not None:
        return chosen
    return OneDimSoftmin()
