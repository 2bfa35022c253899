r"""Unbalanced entropic OT: KL-relaxed marginals with a strength per side.

For nonnegative measures :math:`\alpha = \sum_i a_i \delta_{x_i}`, :math:`\beta = \sum_j b_j
\delta_{y_j}` of any total masses :math:`m_a = \sum_i a_i`, :math:`m_b = \sum_j b_j` (not
normalized), and strengths :math:`\rho_a, \rho_b \in (0, \infty]` (``rho=`` of
:func:`sinkmatch.sinkhorn`; :math:`\infty` is the hard constraint of balanced OT),

.. math::

    \mathrm{UOT}_\varepsilon(\alpha, \beta) = \min_{P \ge 0}\;
        \langle P, C\rangle + \varepsilon\,\mathrm{KL}(P \,|\, a \otimes b)
        + \rho_a \mathrm{KL}(P\mathbb 1 \,|\, a) + \rho_b \mathrm{KL}(P^\top \mathbb 1 \,|\, b),

with the generalized :math:`\mathrm{KL}(p \,|\, q) = \sum_k p_k \log(p_k/q_k) - p_k + q_k`
(Chizat et al. 2018; Séjourné et al. 2019). Its dual is

.. math::

    \max_{f, g}\; \langle a, \rho_a(1 - e^{-f/\rho_a})\rangle
        + \langle b, \rho_b(1 - e^{-g/\rho_b})\rangle
        - \varepsilon \langle a \otimes b, e^{(f \oplus g - C)/\varepsilon} - 1\rangle,

(a side with :math:`\rho = \infty` contributes :math:`\langle a, f\rangle`), maximized by the
damped Sinkhorn half steps

.. math::

    f \leftarrow \tau_a \operatorname{softmin}_\varepsilon(C, \log b + g/\varepsilon),
    \qquad \tau_a = \frac{\rho_a}{\rho_a + \varepsilon}

(and likewise :math:`g` with :math:`\tau_b`): OTT-JAX's ``tau_a``, POT's ``reg_m`` is
:math:`\rho`, GeomLoss's ``reach`` is :math:`\rho^{1/p}` in the units of its cost. The plan is
:math:`P_{ij} = a_i b_j e^{(f_i + g_j - C_{ij})/\varepsilon}`.

The pieces the solver plugs in:

* :class:`UnbalancedGeometry` wraps the backend's :class:`~sinkmatch.backends.base.Geometry`
  (any backend, the precomputed matrix too) and damps every half step;
* :func:`dual_value`: the value at the returned pair, the semi-dual in closed form;
* :meth:`UnbalancedGeometry.marginal_error`: what ``marginal_error`` and ``converged`` mean here
  (the violation of the optimality conditions, see there);
* :func:`empty_value`: problems where a side has zero mass (legal here: all mass is destroyed
  or created, at :math:`\rho` per unit).
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import replace

import torch
from torch import Tensor

from sinkmatch._checks import as_masses, describe
from sinkmatch.backends.base import Geometry, Problem

__all__ = [
    "UnbalancedGeometry",
    "as_masses",
    "check_rho",
    "dual_value",
    "empty_value",
    "tau",
]


def _one_rho(name: str, v: object) -> float:
    if v is None:
        return math.inf
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise TypeError(f"{name} must be a positive number, math.inf or None, got {describe(v)}")
    if math.isnan(v) or v <= 0:
        raise ValueError(f"{name} must be > 0 (or math.inf/None for a hard constraint), got {v!r}")
    return float(v)


def check_rho(rho: object) -> tuple[float, float] | None:
    r"""``rho=`` as ``(rho_a, rho_b)`` (``math.inf`` for a hard side), or ``None`` (balanced).

    Accepts ``None``, one number (both sides) or a pair; each entry is a number ``> 0``,
    ``math.inf`` or ``None`` (both mean the hard constraint of balanced OT).

    Example:
        >>> check_rho(0.5), check_rho((None, 2)), check_rho(None)
        ((0.5, 0.5), (inf, 2.0), None)
    """
    if rho is None:
        return None
    if isinstance(rho, (tuple, list)):
        if len(rho) != 2:
            raise ValueError(f"rho must be one number or a pair (rho_a, rho_b), got {rho!r}")
        pair = (_one_rho("rho[0] (rho_a)", rho[0]), _one_rho("rho[1] (rho_b)", rho[1]))
    else:
        value = _one_rho("rho", rho)
        pair = (value, value)
    return None if pair == (math.inf, math.inf) else pair


def tau(eps: float, rho: float) -> float:
    r"""The damping :math:`\tau = \rho / (\rho + \varepsilon)` (1 for :math:`\rho = \infty`).

    Example:
        >>> tau(1.0, 3.0), tau(1.0, math.inf)
        (0.75, 1.0)
    """
    return 1.0 if math.isinf(rho) else rho / (rho + eps)


def _damp(pot: Tensor, eps: float, rho: float) -> Tensor:
    t = tau(eps, rho)
    return pot if t == 1.0 else pot * t


def _row_term(t: Tensor, eps: float, rho: float) -> Tensor:
    r"""Per unit of mass, the dual's row terms at :math:`f = t = \tau T(g)` (see dual_value)."""
    if math.isinf(rho):
        return t - eps
    return -eps - (rho + eps) * torch.expm1(-t / rho)


def _col_term(g: Tensor, rho: float) -> Tensor:
    r""":math:`\rho(1 - e^{-g/\rho})` per unit of mass (``g`` for :math:`\rho = \infty`)."""
    return g if math.isinf(rho) else -rho * torch.expm1(-g / rho)


def dual_value(prob: Problem, t: Tensor, g: Tensor, eps: float) -> Tensor:
    r"""The dual objective at :math:`(f, g) = (\tau_a T(g), g)`, ``t`` the returned ``f``, (B,).

    With :math:`f` the exact maximizer for the given :math:`g`,
    :math:`e^{-f_i/\rho_a} = e^{(f_i - T_i)/\varepsilon} = e^{-T_i/(\rho_a + \varepsilon)}`, so

    .. math::

        D = \sum_i a_i \big(-\varepsilon - (\rho_a + \varepsilon)\,
            \mathrm{expm1}(-f_i/\rho_a)\big)
            - \sum_j b_j \rho_b\, \mathrm{expm1}(-g_j/\rho_b)
            + \varepsilon\, m_a m_b,

    (a hard side: :math:`\sum_i a_i (f_i - \varepsilon)`, :math:`\sum_j b_j g_j`). It equals
    :math:`\mathrm{UOT}_\varepsilon` at convergence and, differentiated through ``t`` with ``g``
    detached, has its gradient (envelope theorem). Zero-weight points contribute nothing.
    """
    a, b = prob.a, prob.b
    rows = torch.where(a > 0, a * _row_term(t, eps, prob.rho_a), 0.0).sum(-1)
    cols = torch.where(b > 0, b * _col_term(g, prob.rho_b), 0.0).sum(-1)
    return rows + cols + eps * a.sum(-1) * b.sum(-1)


def empty_value(prob: Problem) -> Tensor:
    r""":math:`\mathrm{UOT}_\varepsilon` of problems where a side has zero mass, (B,).

    The only plan is :math:`P = 0`: every unit of the other side is destroyed (or created) at
    the price :math:`\rho`, so the value is :math:`\rho_a m_a + \rho_b m_b` (one of the two
    masses is 0). Differentiable with respect to the weights.

    Raises:
        ValueError: A hard side (:math:`\rho = \infty`) with mass facing an empty side.
    """
    ma, mb = prob.a.sum(-1), prob.b.sum(-1)
    for mass, rho, side in ((ma, prob.rho_a, "a"), (mb, prob.rho_b, "b")):
        if math.isinf(rho) and bool((mass > 0).any()):
            raise ValueError(
                f"a problem whose other side has zero mass cannot keep the mass of {side} "
                f"(rho for {side} is inf: a hard constraint); give that side a finite rho"
            )
    zero = ma * 0.0
    return (ma * prob.rho_a if math.isfinite(prob.rho_a) else zero) + (
        mb * prob.rho_b if math.isfinite(prob.rho_b) else zero
    )


class UnbalancedGeometry(Geometry):
    r"""A backend's geometry with the half steps damped by :math:`\tau_a`, :math:`\tau_b`.

    Wraps the :class:`~sinkmatch.backends.base.Geometry` that the backend prepared for the
    problem (its fast paths stay in use) and multiplies the outputs of ``f_update``,
    ``final_f`` by :math:`\tau_a` and of ``g_update``, ``complete_g`` by :math:`\tau_b`;
    plans and the barycentric map are the inner geometry's (the formula
    :math:`P = a b^\top \odot e^{(f \oplus g - C)/\varepsilon}` does not change).

    Args:
        inner: The backend's geometry of the same problem.
    """

    def __init__(self, inner: Geometry):
        self.inner = inner
        self.backend, self.problem = inner.backend, inner.problem
        self.differentiable_loop, self.allow_sync = inner.differentiable_loop, inner.allow_sync

    def f_update(self, g: Tensor, eps: float) -> Tensor:
        return _damp(self.inner.f_update(g, eps), eps, self.problem.rho_a)

    def g_update(self, f: Tensor, eps: float) -> Tensor:
        return _damp(self.inner.g_update(f, eps), eps, self.problem.rho_b)

    def complete_g(self, f: Tensor, g: Tensor, eps: float) -> Tensor:
        out = self.inner.complete_g(f, g, eps)
        return g if out is g else _damp(out, eps, self.problem.rho_b)

    def final_f(self, g: Tensor, eps: float) -> Tensor:
        return _damp(self.inner.final_f(g, eps), eps, self.problem.rho_a)

    def release(self) -> None:
        self.inner.release()

    def marginal_error(self, f: Tensor, t: Tensor, eps: float) -> Tensor:
        r"""Violation of the optimality conditions of the pair ``(f, g)``, relative to the mass.

        ``t = f_update(g)`` is the probe. At the optimum the plan's marginals are
        :math:`P\mathbb 1 = a\,e^{-f/\rho_a}` and :math:`P^\top \mathbb 1 = b\,e^{-g/\rho_b}`
        (:math:`a`, :math:`b` themselves on a hard side); this returns

        .. math::

            \frac{\|P\mathbb 1 - a e^{-f/\rho_a}\|_1 + \|P^\top\mathbb 1 - b e^{-g/\rho_b}\|_1}
                 {(m_a + m_b)/2}
            = \frac{\sum_i a_i e^{-f_i/\rho_a} |e^{(f_i - t_i)/(\tau_a\varepsilon)} - 1|}
                   {(m_a + m_b)/2},

        the column term being 0 after a plain ``g`` update. It is 0 exactly at the optimum and,
        for :math:`\rho = \infty` and masses 1, the balanced L1 marginal error.
        """
        p = self.problem
        ta = tau(eps, p.rho_a)
        gap = (f - t) / (ta * eps)
        viol = p.a * torch.expm1(gap).abs()
        if math.isfinite(p.rho_a):  # the optimal row mass a e^{-f/rho}
            viol = viol * torch.exp(-f / p.rho_a)
        viol = torch.where(p.a > 0, viol, 0.0)
        return viol.sum(-1) / (0.5 * (p.a.sum(-1) + p.b.sum(-1)))

    def transport_cost(self, g: Tensor, eps: float, *, differentiable: bool = False) -> Tensor:
        r""":math:`\langle P, C\rangle` for the plan of :math:`(\tau_a T(g), g)`, (B,).

        Its rows carry :math:`r_i = a_i e^{-T_i/(\rho_a + \varepsilon)}`; the inner geometry
        of the problem with weights :math:`r` gives :math:`\sum_i r_i \sum_j \pi_{ij} C_{ij}`.
        """
        p = self.problem
        with contextlib.nullcontext() if differentiable else torch.no_grad():
            gg = g if differentiable else g.detach()
            big_t = self.inner.f_update(gg, eps)
            rows = torch.where(p.a > 0, p.a * torch.exp((tau(eps, p.rho_a) - 1.0) * big_t / eps), 0)
            balanced = replace(p, a=rows, rho_a=math.inf, rho_b=math.inf)
            from sinkmatch.backends import prepare  # the backends import this module

            geom = prepare(
                self.backend,
                balanced,
                differentiable_loop=self.differentiable_loop,
                allow_sync=self.allow_sync,
            )
            return geom.transport_cost(gg, eps, differentiable=differentiable)

    def barycentric_map(self, g: Tensor, eps: float) -> Tensor:
        return self.inner.barycentric_map(g, eps)

    def plan(self, f: Tensor, g: Tensor, eps: float) -> Tensor:
        return self.inner.plan(f, g, eps)
