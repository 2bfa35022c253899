r"""The backend protocol: one soft-min, and the per-problem object the Sinkhorn loop drives.

The whole of log-domain Sinkhorn reduces to one streaming reduction, the soft-min half step

.. math::

    \operatorname{softmin}_\varepsilon(x, y, h)_i
        = -\varepsilon \log \sum_j \exp\big(h_j - C(x_i, y_j) / \varepsilon\big),

with :math:`h_j = \log b_j + g_j / \varepsilon` (``-inf`` for padding). Three layers:

* :class:`SoftminBackend`, the protocol: an object with a ``name`` and ``softmin``. That is all
  a backend must implement.
* :class:`Backend`, the base class of the built-in backends (dense, online, Triton). Its
  :meth:`~Backend.prepare` turns a :class:`Problem` into a :class:`Geometry`; subclasses override
  it to plug in what is specific to them (the dense backend caches the cost matrix and multiplies
  by a stabilized kernel).
* :class:`Geometry`: one problem prepared for the loop of :mod:`sinkmatch.loop`. It offers the
  half steps (``f_update``, ``g_update``), the step that ends a solve (``final_f``) and the plan
  reductions of the result (``transport_cost``, ``barycentric_map``, ``plan``). This class
  implements all of them from ``backend.softmin`` and :mod:`sinkmatch.plan`, so that any
  :class:`SoftminBackend` works; :func:`sinkmatch.backends.prepare` wraps objects that are not a
  :class:`Backend` in it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, ClassVar, Protocol, runtime_checkable

import torch
from torch import Tensor

from sinkmatch.plan import plan_expected_cost, plan_matmul, tiled_logsumexp

if TYPE_CHECKING:
    from sinkmatch.costs import Cost

__all__ = [
    "Backend",
    "Geometry",
    "Problem",
    "SoftminBackend",
    "last_positive",
    "refuse_cost_matrix",
]


@runtime_checkable
class SoftminBackend(Protocol):
    r"""One implementation of the soft-min half step.

    Attributes:
        name: Registry name (``"dense"``, ``"online"``, ``"triton"``).

    Optional: a backend whose ``softmin`` also accepts the keywords ``n_valid`` and ``m_valid``
    (``(B,)`` int tensors: rows ``i >= n_valid[b]`` need not be computed, columns
    ``j >= m_valid[b]`` are padding with ``h = -inf``) declares the class attribute
    ``supports_valid_lengths = True``; the loop's half steps then pass one past the last positive
    weight per problem (ragged batches packed with trailing padding). Others get the plain call.
    """

    name: str

    def softmin(self, eps: float, x: Tensor, y: Tensor, h: Tensor, cost: Cost) -> Tensor:
        r"""Soft-min over the columns.

        Args:
            eps: Entropic regularization, > 0.
            x ((B, N, D) Tensor): Row points.
            y ((B, M, D) Tensor): Column points.
            h ((B, M) Tensor): Column log-weights plus scaled potential,
                :math:`\log b_j + g_j / \varepsilon`; ``-inf`` marks padding.
            cost: The ground cost.

        Returns:
            (B, N) Tensor: :math:`-\varepsilon \log \sum_j \exp(h_j - C_{ij}/\varepsilon)`,
            differentiable with respect to ``x``, ``y`` and ``h``.
        """
        ...


def safe_log(w: Tensor) -> Tensor:
    """``log w`` with ``-inf`` (and a zero gradient) where ``w == 0``."""
    pos = w > 0
    return torch.where(pos, torch.log(torch.where(pos, w, torch.ones_like(w))), -math.inf)


def last_positive(mask: Tensor) -> Tensor:
    """One past the last ``True`` per problem: the size without trailing padding, (B,) int32.

    Example:
        >>> last_positive(torch.tensor([[True, False, True, False], [False] * 4]))
        tensor([3, 0], dtype=torch.int32)
    """
    idx = torch.arange(1, mask.shape[1] + 1, device=mask.device, dtype=torch.int32)
    return torch.where(mask, idx, torch.zeros_like(idx)).amax(dim=1).to(torch.int32)


@dataclass(frozen=True)
class Problem:
    """A batch of OT problems in the solver's internal form.

    Attributes:
        x ((B, N, D) Tensor): Source points, in the compute dtype.
        y ((B, M, D) Tensor): Target points.
        a ((B, N) Tensor): Source weights, summing to 1 per problem; zeros are padding.
        b ((B, M) Tensor): Target weights.
        cost (Cost): The ground cost.
        symmetric (bool): ``x is y`` and ``a is b`` (the self terms of the divergence), solved
            with the averaged update.
        cost_matrix ((B, N, M) Tensor or None): A precomputed cost matrix
            (``sinkhorn(cost_matrix=...)``); ``x`` and ``y`` are then ``(B, N, 0)`` and
            ``(B, M, 0)`` placeholders that carry the sizes, dtype and device, and ``cost`` is a
            :class:`~sinkmatch.costs.PrecomputedCost`. Only the dense backend solves such a
            problem (:class:`~sinkmatch.backends.dense.MatrixGeometry`).
        rho_a (float): Strength of the KL relaxation of the source marginal (unbalanced OT,
            :mod:`sinkmatch.unbalanced`); ``math.inf`` (the default) is the hard constraint.
            With a finite ``rho_a`` or ``rho_b`` the weights are masses, not normalized.
        rho_b (float): Likewise for the target marginal.
        log_a ((B, N) Tensor): ``log a``, ``-inf`` on padding (derived).
        log_b ((B, M) Tensor): ``log b`` (derived).
    """

    x: Tensor
    y: Tensor
    a: Tensor
    b: Tensor
    cost: Cost
    symmetric: bool = False
    cost_matrix: Tensor | None = field(default=None, repr=False)
    rho_a: float = math.inf
    rho_b: float = math.inf
    log_a: Tensor = field(init=False, repr=False)
    log_b: Tensor = field(init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "log_a", safe_log(self.a))
        object.__setattr__(self, "log_b", safe_log(self.b))

    @property
    def unbalanced(self) -> bool:
        """A marginal is KL-relaxed (a finite ``rho_a`` or ``rho_b``)."""
        return math.isfinite(self.rho_a) or math.isfinite(self.rho_b)

    def detach(self) -> Problem:
        """The same problem with every tensor detached from the autograd graph."""
        c = self.cost_matrix
        return replace(
            self,
            x=self.x.detach(),
            y=self.y.detach(),
            a=self.a.detach(),
            b=self.b.detach(),
            cost_matrix=None if c is None else c.detach(),
        )


def refuse_cost_matrix(backend: object, problem: Problem) -> None:
    """Raise for a precomputed cost matrix: only the dense backend reads one."""
    if problem.cost_matrix is not None:
        name = getattr(backend, "name", type(backend).__name__)
        raise ValueError(
            f"backend {name!r} generates the cost from points and cannot use a precomputed "
            "cost_matrix; use backend='dense' (or 'auto')"
        )


class Geometry:
    r"""One problem prepared for the Sinkhorn loop: half steps and plan reductions.

    The generic implementation calls ``backend.softmin`` for every step and streams the plan
    reductions over tiles (:mod:`sinkmatch.plan`); backends subclass it to plug in faster paths
    (see :class:`sinkmatch.backends.dense.DenseGeometry`). All potentials are in cost units:
    ``f`` (B, N) on ``x``, ``g`` (B, M) on ``y``.

    Args:
        backend: The soft-min.
        problem: The problem.
        differentiable_loop: The loop's half steps are differentiated through (``grad="autodiff"``);
            otherwise they run under ``torch.no_grad()`` and may use graph-free shortcuts.
        allow_sync: Steps may read tensors back to the host (``False`` in fixed-iteration mode,
            which must run without synchronisation, e.g. under ``torch.compile``).
        valid_lengths: Pass ``n_valid``/``m_valid`` (one past the last positive weight) to the
            loop's half steps, which then skip trailing padding (see :class:`SoftminBackend`).
    """

    def __init__(
        self,
        backend: SoftminBackend,
        problem: Problem,
        *,
        differentiable_loop: bool = False,
        allow_sync: bool = True,
        valid_lengths: bool = False,
    ):
        self.backend, self.problem = backend, problem
        self.differentiable_loop, self.allow_sync = differentiable_loop, allow_sync
        self._rows: dict[str, Tensor] = {}  # softmin keywords of the f-update
        self._cols: dict[str, Tensor] = {}  # and of the g-update
        if valid_lengths:
            n_valid, m_valid = last_positive(problem.a > 0), last_positive(problem.b > 0)
            self._rows = {"n_valid": n_valid, "m_valid": m_valid}
            self._cols = {"n_valid": m_valid, "m_valid": n_valid}

    # -- the loop ---------------------------------------------------------------------------
    def f_update(self, g: Tensor, eps: float) -> Tensor:
        r"""The loop's f half step: :math:`\operatorname{softmin}(x, y, \log b + g/\varepsilon)`.

        Rows past the last positive weight may be left unspecified (valid lengths).
        """
        p = self.problem
        return self.backend.softmin(eps, p.x, p.y, p.log_b + g / eps, p.cost, **self._rows)

    def g_update(self, f: Tensor, eps: float) -> Tensor:
        r"""The loop's g half step: :math:`\operatorname{softmin}(y, x, \log a + f/\varepsilon)`."""
        p = self.problem
        return self.backend.softmin(eps, p.y, p.x, p.log_a + f / eps, p.cost, **self._cols)

    def marginal_error(self, f: Tensor, t: Tensor, eps: float) -> Tensor:
        r"""L1 marginal error of the iterate ``(f, g)``, given the probe ``t = f_update(g)``, (B,).

        The rows of its plan are :math:`a_i e^{(f_i - t_i)/\varepsilon}`: the error is
        :math:`\sum_i a_i |1 - e^{(f_i - t_i)/\varepsilon}|`, the whole L1 marginal error when
        ``g`` is a plain update (columns exact). :mod:`sinkmatch.unbalanced` measures the
        optimality conditions of KL-relaxed marginals instead.
        """
        a = self.problem.a
        ratio = torch.exp((f - t) / eps)
        return torch.where(a > 0, a * (1.0 - ratio).abs(), 0.0).sum(-1)

    # -- the end of a solve -----------------------------------------------------------------
    def complete_g(self, f: Tensor, g: Tensor, eps: float) -> Tensor:
        """``g`` on every point: the loop's last ``g_update(f)``, recomputed where it skipped rows.

        With valid lengths the loop leaves the rows of ``g`` at zero-weight trailing points
        unspecified; the returned potentials must be defined there too.
        """
        p = self.problem
        if not self._cols or p.symmetric:
            return g
        if self.allow_sync and not bool((self._cols["n_valid"] < p.y.shape[1]).any()):
            return g  # no trailing padding: nothing was skipped
        return self.backend.softmin(eps, p.y, p.x, p.log_a + f / eps, p.cost)

    def final_f(self, g: Tensor, eps: float) -> Tensor:
        r"""The differentiable f-update on every row that ends a solve; frees the loop's caches.

        By the envelope theorem, the semi-dual :math:`\langle a, T(g)\rangle + \langle b, g\rangle`
        evaluated with this step has the gradient of the OT value at convergence.
        """
        p = self.problem
        self.release()
        return self.backend.softmin(eps, p.x, p.y, p.log_b + g / eps, p.cost)

    def release(self) -> None:
        """Free what the loop cached (nothing here); the plan reductions keep working."""

    # -- plan reductions --------------------------------------------------------------------
    def transport_cost(self, g: Tensor, eps: float, *, differentiable: bool = False) -> Tensor:
        r""":math:`\langle P, C\rangle` per problem, (B,), for the plan with exact rows from ``g``.

        :math:`P_{ij} = a_i \pi_{ij}` with :math:`\pi` the row-normalized plan of ``g``. Streamed
        over tiles without a graph, or, with ``differentiable``, through the materialized plan
        (memory ``B·N·M``; for ``grad="autodiff"``).
        """
        p = self.problem
        if differentiable:
            c = p.cost.matrix(p.x, p.y)
            pi = torch.softmax((p.log_b + g / eps)[:, None, :] - c / eps, dim=2)
            return (p.a * (pi * c).sum(2)).sum(-1)
        with torch.no_grad():
            h = p.log_b + g.detach() / eps
            lse = tiled_logsumexp(eps, p.x, p.y, h, p.cost)
            return (p.a * plan_expected_cost(eps, p.x, p.y, h, p.cost, lse=lse)).sum(-1)

    def barycentric_map(self, g: Tensor, eps: float) -> Tensor:
        r""":math:`T(x_i) = \sum_j \pi_{ij} y_j`, (B, N, D), for the row-normalized plan of ``g``.

        Detached; streamed over tiles.
        """
        p = self.problem
        with torch.no_grad():
            h = p.log_b + g.detach() / eps
            return plan_matmul(eps, p.x, p.y, h, p.cost, p.y)

    def plan(self, f: Tensor, g: Tensor, eps: float) -> Tensor:
        r"""The plan :math:`P_{ij} = a_i b_j e^{(f_i + g_j - C_{ij})/\varepsilon}`, (B, N, M).

        Detached; materializes the cost matrix.
        """
        p = self.problem
        with torch.no_grad():
            c = p.cost.matrix(p.x, p.y)
            logp = (
                p.log_a[:, :, None]
                + p.log_b[:, None, :]
                + (f.detach()[:, :, None] + g.detach()[:, None, :] - c) / eps
            )
            return logp.exp()


class Backend:
    """Base class of the built-in backends: a :class:`SoftminBackend` that prepares problems.

    Subclasses implement :meth:`softmin` and may override :meth:`prepare` to return a
    :class:`Geometry` subclass with faster half steps, final step or plan reductions.

    Attributes:
        name: Registry name.
        supports_valid_lengths: ``softmin`` accepts ``n_valid``/``m_valid`` (see
            :class:`SoftminBackend`).
    """

    name: ClassVar[str] = "custom"
    supports_valid_lengths: ClassVar[bool] = False

    def softmin(self, eps: float, x: Tensor, y: Tensor, h: Tensor, cost: Cost) -> Tensor:
        """See :class:`SoftminBackend`."""
        raise NotImplementedError

    def prepare(
        self, problem: Problem, *, differentiable_loop: bool = False, allow_sync: bool = True
    ) -> Geometry:
        """The :class:`Geometry` of ``problem`` (see there for the keywords).

        Raises:
            ValueError: ``problem`` has a precomputed cost matrix (the dense backend's).
        """
        refuse_cost_matrix(self, problem)
        return Geometry(
            self,
            problem,
            differentiable_loop=differentiable_loop,
            allow_sync=allow_sync,
            valid_lengths=self.supports_valid_lengths,
        )

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"
