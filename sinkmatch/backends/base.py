"""The softmin protocol every Sinkhorn backend implements.

The whole of log-domain Sinkhorn reduces to one streaming reduction, the soft-min half step

.. math::

    \\operatorname{softmin}_\\varepsilon(x, y, h)_i
        = -\\varepsilon \\log \\sum_j \\exp\\big(h_j - C(x_i, y_j) / \\varepsilon\\big),

with :math:`h_j = \\log b_j + g_j / \\varepsilon` (``-inf`` for padding). Dense, online (blocked)
and Triton backends implement it; the loop in :mod:`sinkmatch.solver` is written once.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    from torch import Tensor

    from sinkmatch.costs import Cost


@runtime_checkable
class SoftminBackend(Protocol):
    """One implementation of the soft-min half step.

    Attributes:
        name: Registry name (``"dense"``, ``"online"``, ``"triton"``).

    Optional: a backend whose ``softmin`` also accepts the keywords ``n_valid`` and ``m_valid``
    (``(B,)`` int tensors: rows ``i >= n_valid[b]`` need not be computed, columns
    ``j >= m_valid[b]`` are padding with ``h = -inf``) declares the class attribute
    ``supports_valid_lengths = True``; the solver then passes one past the last positive weight
    per problem inside its loop (ragged batches packed with trailing padding). Others get the
    plain call.
    """

    name: str

    def softmin(self, eps: float, x: Tensor, y: Tensor, h: Tensor, cost: Cost) -> Tensor:
        """Soft-min over the columns.

        Args:
            eps: Entropic regularization, > 0.
            x ((B, N, D) Tensor): Row points.
            y ((B, M, D) Tensor): Column points.
            h ((B, M) Tensor): Column log-weights plus scaled potential,
                :math:`\\log b_j + g_j / \\varepsilon`; ``-inf`` marks padding.
            cost: The ground cost.

        Returns:
            (B, N) Tensor: :math:`-\\varepsilon \\log \\sum_j \\exp(h_j - C_{ij}/\\varepsilon)`,
            differentiable with respect to ``x``, ``y`` and ``h``.
        """
        ...
