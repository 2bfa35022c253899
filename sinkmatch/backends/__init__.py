"""Softmin backends and the rule that picks one.

``get_backend("auto", ...)`` chooses, in order:

1. ``triton`` when the tensors are on CUDA, ``import triton`` succeeds and the cost is a named
   one (``"sqeuclidean"``, ``"euclidean"`` or any :class:`~sinkmatch.costs.PowerCost`);
2. ``dense`` when ``B·N·M ≤ 2^24`` (the cost matrix is at most 64 MiB in float32), and always
   for callable costs (only the dense backend can evaluate them);
3. ``online`` otherwise (``O(N + M)`` memory per problem).

:func:`sinkmatch.sinkhorn` then hands balanced 1-D problems with the squared cost on the CPU
and at least ``2^22`` cost entries per problem to ``onedim`` (:mod:`sinkmatch.backends.onedim`,
the whole solve in ``O(N + M)``), which ``backend="onedim"`` also selects.

Backends are imported lazily; Triton is only imported when it is asked for or when the ``auto``
rule sees CUDA tensors. :func:`prepare` turns a backend and a problem into the
:class:`~sinkmatch.backends.base.Geometry` that the Sinkhorn loop drives (see
:mod:`sinkmatch.backends.base` for the protocol).
"""

from __future__ import annotations

import importlib
from typing import Union

from torch import Tensor

from sinkmatch.backends.base import (
    Backend,
    Geometry,
    Problem,
    SoftminBackend,
    refuse_cost_matrix,
)
from sinkmatch.costs import Cost, is_power_cost

__all__ = [
    "AUTO_DENSE_MAX_ELEMENTS",
    "Backend",
    "Geometry",
    "Problem",
    "SoftminBackend",
    "get_backend",
    "prepare",
]

AUTO_DENSE_MAX_ELEMENTS = 1 << 24
_NAMES = ("auto", "dense", "online", "triton", "onedim")


def _triton_importable() -> bool:
    try:
        importlib.import_module("triton")
    except ImportError:
        return False
    return True


def _make(name: str) -> SoftminBackend:
    if name == "dense":
        from sinkmatch.backends.dense import DenseSoftmin

        return DenseSoftmin()
    if name == "online":
        from sinkmatch.backends.online import OnlineSoftmin

        return OnlineSoftmin()
    if name == "onedim":
        from sinkmatch.backends.onedim import OneDimSoftmin

        return OneDimSoftmin()
    from sinkmatch.backends.triton import TritonSoftmin  # raises if Triton is missing

    return TritonSoftmin()


def get_backend(
    backend: Union[str, SoftminBackend], *, x: Tensor, y: Tensor, cost: Cost
) -> SoftminBackend:
    """Resolve a backend specification for given points and cost.

    Args:
        backend: ``"auto"``, ``"dense"``, ``"online"``, ``"triton"`` or an object implementing
            :class:`SoftminBackend`.
        x ((B, N, D) Tensor): Row points (device and sizes drive the ``auto`` rule).
        y ((B, M, D) Tensor): Column points.
        cost: The cost; anything but a :class:`~sinkmatch.costs.PowerCost` (callables) needs
            the dense backend.

    Returns:
        SoftminBackend: The backend instance.

    Raises:
        ValueError: Unknown name, or a callable cost with a non-dense backend.
        TypeError: Neither a name nor a SoftminBackend.
    """
    if isinstance(backend, str):
        if backend not in _NAMES:
            raise ValueError(
                f"backend must be one of {_NAMES} or a SoftminBackend, got {backend!r}"
            )
        name = backend
        if name == "auto":
            size = x.shape[0] * x.shape[1] * y.shape[1]
            named = is_power_cost(cost)
            if x.is_cuda and named and _triton_importable():
                name = "triton"
            elif size <= AUTO_DENSE_MAX_ELEMENTS or not named:
                name = "dense"
            else:
                name = "online"
        if not is_power_cost(cost) and name != "dense":
            raise ValueError(
                f"backend {backend!r} needs a named cost ('sqeuclidean', 'euclidean' or a "
                f"PowerCost); got {cost!r}, which only the dense backend evaluates (callable "
                "costs, precomputed matrices); use backend='dense'"
            )
        return _make(name)
    if isinstance(backend, SoftminBackend):
        return backend
    raise TypeError(
        f"backend must be a name in {_NAMES} or a SoftminBackend, got {type(backend).__name__}"
    )


def prepare(
    backend: SoftminBackend,
    problem: Problem,
    *,
    differentiable_loop: bool = False,
    allow_sync: bool = True,
) -> Geometry:
    """The :class:`~sinkmatch.backends.base.Geometry` of ``problem`` for ``backend``.

    A :class:`~sinkmatch.backends.base.Backend` prepares it itself; any other
    :class:`SoftminBackend` gets the generic geometry built on its ``softmin`` (with valid
    lengths when it declares ``supports_valid_lengths``). An unbalanced problem (finite
    ``rho_a``/``rho_b``) gets that geometry wrapped in
    :class:`~sinkmatch.unbalanced.UnbalancedGeometry` (damped half steps).

    Args:
        backend: The backend.
        problem: The problem.
        differentiable_loop: The loop's half steps are differentiated through.
        allow_sync: Steps may read tensors back to the host (not in fixed-iteration mode).

    Returns:
        Geometry: Half steps and plan reductions of ``problem``.
    """
    if isinstance(backend, Backend):
        geom = backend.prepare(
            problem, differentiable_loop=differentiable_loop, allow_sync=allow_sync
        )
    else:
        refuse_cost_matrix(backend, problem)
        geom = Geometry(
            backend,
            problem,
            differentiable_loop=differentiable_loop,
            allow_sync=allow_sync,
            valid_lengths=bool(getattr(backend, "supports_valid_lengths", False)),
        )
    if problem.unbalanced:  # KL-relaxed marginals: the same geometry, damped half steps
        from sinkmatch.unbalanced import UnbalancedGeometry

        return UnbalancedGeometry(geom)
    return geom
