"""Losses built on the solver: plain, grouped, distribution matching, exact 1-D.

Each loss is a function first and a thin :class:`torch.nn.Module` whose ``forward`` only calls
the function with the settings it holds.

* :func:`sinkhorn_loss`: a batch of entropic OT problems, reduced.
* :func:`grouped_sinkhorn_loss`: ragged groups (group ``k`` of ``x`` matched with group ``k``
  of ``y``), packed into one zero-padded batch and solved in one call.
* :func:`distribution_matching_loss`: CSS-CCNN's label-free loss (Babu Sam et al., *Completely
  Self-Supervised Crowd Counting via Distribution Matching*): the predicted cell counts are
  matched with a fresh sample of a count prior, optionally split into sparse and dense groups
  (CSS-CCNN++, Eq. 4).
* :func:`wasserstein_1d_loss`: the exact 1-D :math:`W_p^p` (no regularization).

Example:
    >>> import torch
    >>> from sinkmatch.losses import sinkhorn_loss
    >>> x = torch.tensor([[0.0, 1.0]], dtype=torch.float64)
    >>> y = torch.tensor([[0.0, 1.0]], dtype=torch.float64)
    >>> float(sinkhorn_loss(x[..., None], y[..., None], eps=1e-3, value="transport")) < 1e-6
    True
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from sinkmatch import distributed as _dist
from sinkmatch._checks import (
    check_choice,
    check_float_tensor,
    check_positive_int,
    check_real,
    compute_dtype,
)
from sinkmatch.exact1d import wasserstein_1d
from sinkmatch.grouping import PackedGroups, pack_groups, percentile_split
from sinkmatch.solver import VALUES, sinkhorn
from sinkmatch.unbalanced import check_rho

__all__ = [
    "DistributionMatchingLoss",
    "GroupedSinkhornLoss",
    "SinkhornLoss",
    "Wasserstein1DLoss",
    "distribution_matching_loss",
    "grouped_sinkhorn_loss",
    "sinkhorn_loss",
    "wasserstein_1d_loss",
]

_REDUCTIONS = ("mean", "sum", "none")


def _check_reduction(reduction: object) -> str:
    return check_choice("reduction", reduction, _REDUCTIONS)


def _check_value(value: object) -> str:
    return check_choice("value", value, VALUES)


def _reduce(values: Tensor, reduction: str) -> Tensor:
    if reduction == "mean":
        return values.mean()
    if reduction == "sum":
        return values.sum()
    return values


# --------------------------------------------------------------------------- plain


def sinkhorn_loss(
    x: Tensor,
    y: Tensor,
    a: Tensor | None = None,
    b: Tensor | None = None,
    *,
    eps: float = 0.1,
    value: str = "regularized",
    reduction: str = "mean",
    sync: bool = False,
    process_group: Any = None,
    **solver_kwargs: Any,
) -> Tensor:
    r"""Entropic OT loss over a batch of problems.

    .. math::

        \mathrm{OT}_\varepsilon(\alpha, \beta) = \min_{P \in \Pi(a, b)}
        \langle P, C \rangle + \varepsilon \mathrm{KL}(P \,|\, a \otimes b)

    (``value="regularized"``), :math:`\langle P_\varepsilon, C \rangle` (``"transport"``) or the
    debiased Sinkhorn divergence (``"divergence"``, Feydy et al. 2019), per problem, then reduced.

    Args:
        x ((N,), (N, D) or (B, N, D) Tensor): Source points.
        y ((M,), (M, D) or (B, M, D) Tensor): Target points.
        a ((N,) or (B, N) Tensor, optional): Source weights (zero = padding); uniform if ``None``.
        b ((M,) or (B, M) Tensor, optional): Target weights.
        eps: Entropic regularization, in cost units.
        value: ``"regularized"``, ``"transport"`` or ``"divergence"``.
        reduction: ``"mean"`` or ``"sum"`` over the batch, or ``"none"`` for the ``(B,)`` values.
        sync: Under ``torch.distributed``, every rank holds a slice of the points of ``x`` and
            ``y`` (and of ``a``, ``b``); the loss is that of the point clouds concatenated over
            the ranks of the default group, equal on every rank, with gradients scaled for DDP
            (:mod:`sinkmatch.distributed`). A no-op without an initialised process group.
        process_group: Synchronise over this group instead (implies ``sync``).
        **solver_kwargs: Passed to :func:`sinkmatch.sinkhorn` (``cost``, ``max_iter``, ``tol``,
            ``eps_scaling``, ``init``, ``grad``, ``backend``, ...).

    Returns:
        Tensor: A scalar, or ``(B,)`` with ``reduction="none"`` (``()`` for unbatched inputs).

    Example:
        >>> import torch
        >>> x, y = torch.zeros(2, 3, 1), torch.ones(2, 4, 1)
        >>> sinkhorn_loss(x, y, value="transport", reduction="none")
        tensor([1., 1.])
    """
    x, y, a, b = _dist.sync_points(
        x,
        y,
        a,
        b,
        sync=sync,
        process_group=process_group,
        settings=dict(solver_kwargs, eps=eps, value=value, reduction=reduction),
    )
    _check_reduction(reduction)
    _check_value(value)
    return _reduce(sinkhorn(x, y, a, b, eps=eps, value=value, **solver_kwargs).value, reduction)


def _store_solver_settings(
    module: nn.Module, eps: float, value: str, reduction: str, solver_kwargs: dict[str, Any]
) -> None:
    """Validate and store the settings shared by the Sinkhorn loss modules."""
    module.eps = eps
    module.value = _check_value(value)
    module.reduction = _check_reduction(reduction)
    module.solver_kwargs = solver_kwargs


class SinkhornLoss(nn.Module):
    """Module form of :func:`sinkhorn_loss`; holds the settings, ``forward(x, y, a=None, b=None)``.

    ``sync=True``/``process_group=`` are held with the solver keywords and passed on.

    Example:
        >>> import torch
        >>> loss = SinkhornLoss(eps=0.01, value="transport")
        >>> round(float(loss(torch.zeros(3, 1), torch.ones(2, 1))), 4)
        1.0
    """

    def __init__(
        self,
        *,
        eps: float = 0.1,
        value: str = "regularized",
        reduction: str = "mean",
        **solver_kwargs: Any,
    ) -> None:
        super().__init__()
        _store_solver_settings(self, eps, value, reduction, solver_kwargs)

    def forward(
        self, x: Tensor, y: Tensor, a: Tensor | None = None, b: Tensor | None = None
    ) -> Tensor:
        return sinkhorn_loss(
            x,
            y,
            a,
            b,
            eps=self.eps,
            value=self.value,
            reduction=self.reduction,
            **self.solver_kwargs,
        )

    def extra_repr(self) -> str:
        return f"eps={self.eps}, value={self.value!r}, reduction={self.reduction!r}"


# --------------------------------------------------------------------------- grouped


def _pack_pair(xs, ys, a, b, x_groups, y_groups, num_groups) -> tuple[PackedGroups, PackedGroups]:
    """Both sides of :func:`grouped_sinkhorn_loss` packed, in the list or the id form."""
    if isinstance(xs, Tensor) != isinstance(ys, Tensor):
        raise TypeError(
            "xs and ys must both be lists of tensors or both tensors with group ids, got "
            f"{type(xs).__name__} and {type(ys).__name__}"
        )
    if isinstance(xs, Tensor):
        if x_groups is None or y_groups is None:
            raise ValueError("the tensor form needs x_groups= and y_groups= (one id per point)")
        if num_groups is None:
            largest = [
                int(g.max()) for g in (x_groups, y_groups) if isinstance(g, Tensor) and g.numel()
            ]
            num_groups = max(largest, default=-1) + 1
        px = pack_groups(xs, a, groups=x_groups, num_groups=num_groups)
        py = pack_groups(ys, b, groups=y_groups, num_groups=num_groups)
    else:
        if x_groups is not None or y_groups is not None or num_groups is not None:
            raise ValueError("x_groups=, y_groups= and num_groups= belong to the tensor form")
        if not isinstance(xs, Sequence) or not isinstance(ys, Sequence) or len(xs) != len(ys):
            raise ValueError(
                f"xs and ys must be lists with one tensor per group and the same length, got "
                f"{len(xs) if isinstance(xs, Sequence) else xs!r} and "
                f"{len(ys) if isinstance(ys, Sequence) else ys!r}"
            )
        px = pack_groups(xs, a)
        py = pack_groups(ys, b)
    if px.points.shape[-1] != py.points.shape[-1]:
        raise ValueError(
            f"x and y points must have the same dimension, got {px.points.shape[-1]} and "
            f"{py.points.shape[-1]}"
        )
    return px, py


def _solvable(px: PackedGroups, py: PackedGroups, rho: Any):
    """``(px, py, groups to solve)``: mass on both sides, or on either side for unbalanced OT.

    A one-sided group is legal in unbalanced OT (its mass is destroyed or created); a side with
    no point in any group then gets one zero-weight slot, so that the solver sees a point.
    """
    if check_rho(rho) is None:
        return px, py, px.nonempty & py.nonempty
    packs = []
    for pk in (px, py):
        if pk.points.shape[1] == 0:
            g, d = pk.points.shape[0], pk.points.shape[2]
            pk = pk._replace(
                points=pk.points.new_zeros(g, 1, d),
                weights=pk.weights.new_zeros(g, 1),
                index=pk.index.new_full((g, 1), -1),
            )
        packs.append(pk)
    return packs[0], packs[1], packs[0].nonempty | packs[1].nonempty


def grouped_sinkhorn_loss(
    xs: Tensor | Sequence[Tensor],
    ys: Tensor | Sequence[Tensor],
    *,
    a: Tensor | Sequence[Tensor] | None = None,
    b: Tensor | Sequence[Tensor] | None = None,
    x_groups: Tensor | None = None,
    y_groups: Tensor | None = None,
    num_groups: int | None = None,
    eps: float = 0.1,
    value: str = "regularized",
    reduction: str = "sum",
    sync: bool = False,
    process_group: Any = None,
    **solver_kwargs: Any,
) -> Tensor:
    r"""Sinkhorn loss between matching groups of two point sets, in one solver call.

    .. math::

        L = \sum_k \mathrm{OT}_\varepsilon(\alpha_k, \beta_k)

    (``reduction="sum"``, CSS-CCNN++'s Eq. 4 with ``k`` over sparse and dense), with
    :math:`\alpha_k` the points of ``x`` in group ``k`` and :math:`\beta_k` those of ``y``. The
    groups are packed by :func:`sinkmatch.grouping.pack_groups` into a ``(G, N_max, D)`` batch
    padded with zero weights, so the result equals a Python loop over the groups while running
    one batched solve; padding receives exactly zero gradient.

    Two forms:

    * lists: ``grouped_sinkhorn_loss([x_0, x_1], [y_0, y_1])`` with ``x_k (N_k,)`` or
      ``(N_k, D)``; ``a``/``b`` then lists of ``(N_k,)``/``(M_k,)`` weights;
    * ids: ``grouped_sinkhorn_loss(x, y, x_groups=ix, y_groups=iy)`` with ``x (N,)``/``(N, D)``,
      integer ids ``ix (N,)``; ``a``/``b`` then ``(N,)``/``(M,)`` weights. ``num_groups``
      defaults to one more than the largest id on either side.

    Cost: every group is padded to the largest group on its side, so groups of very unequal
    sizes waste work (on CPU a loop over the groups can then be faster; on GPU the single call
    saves launches and host synchronisations).

    Empty groups: a group that is empty (or has zero total weight) on either side is not sent to
    the solver and contributes exactly 0 (never NaN); it counts in ``"mean"`` (the mean is over
    all ``G`` groups) and appears as 0 with ``"none"``. With unbalanced OT (``rho=`` among the
    solver keywords; the weights are then masses, a group without weights has mass 1) a group
    with mass on one side only is solved: its value is the cost of destroying (or creating)
    that mass, :math:`\rho_a m_a` (or :math:`\rho_b m_b`); only groups empty on both sides
    give 0.

    Args:
        xs: Source groups, as above.
        ys: Target groups, as above (the same number of groups).
        a: Optional source weights, as above.
        b: Optional target weights, as above.
        x_groups ((N,) Tensor, optional): Group ids of ``x`` (id form).
        y_groups ((M,) Tensor, optional): Group ids of ``y`` (id form).
        num_groups: Number of groups ``G`` (id form).
        eps: Entropic regularization.
        value: ``"regularized"``, ``"transport"`` or ``"divergence"``.
        reduction: ``"sum"`` (default), ``"mean"`` or ``"none"`` (the ``(G,)`` group values).
        sync: Under ``torch.distributed``, every rank holds a slice of every group; group ``k``
            of the loss is the concatenation over the ranks of the default group of each rank's
            group ``k`` (points, weights and ids are gathered), equal on every rank, with
            gradients scaled for DDP (:mod:`sinkmatch.distributed`). A no-op without an
            initialised process group.
        process_group: Synchronise over this group instead (implies ``sync``).
        **solver_kwargs: Passed to :func:`sinkmatch.sinkhorn`.

    Returns:
        Tensor: A scalar, or ``(G,)`` with ``reduction="none"``.

    Raises:
        TypeError, ValueError: Mixed forms, mismatched group counts, bad ids or names, and
            whatever :func:`~sinkmatch.grouping.pack_groups` and the solver reject.

    Example:
        >>> import torch
        >>> xs = [torch.zeros(2), torch.zeros(3)]
        >>> ys = [torch.ones(4), 2 * torch.ones(1)]
        >>> grouped_sinkhorn_loss(xs, ys, value="transport", reduction="none")
        tensor([1., 4.])
    """
    xs, ys, a, b, x_groups, y_groups, num_groups = _dist.sync_grouped(
        xs,
        ys,
        a,
        b,
        x_groups,
        y_groups,
        num_groups,
        sync=sync,
        process_group=process_group,
        settings=dict(solver_kwargs, eps=eps, value=value, reduction=reduction),
    )
    _check_reduction(reduction)
    _check_value(value)
    px, py = _pack_pair(xs, ys, a, b, x_groups, y_groups, num_groups)
    n_groups = px.points.shape[0]
    px, py, valid = _solvable(px, py, solver_kwargs.get("rho"))
    dtype = compute_dtype(px.points, py.points)
    # zeros that stay on the graph (0 * finite points, summed: exactly 0, never inf or NaN), so
    # that backward() works even when no group is solved
    values = ((px.points * 0).sum() + (py.points * 0).sum()).to(dtype) + px.points.new_zeros(
        n_groups, dtype=dtype
    )
    if bool(valid.any()):
        if bool(valid.all()):
            sx, sy, wa, wb = px.points, py.points, px.weights, py.weights
            keep = None
        else:
            keep = valid.nonzero().flatten()
            sx, sy = px.points[keep], py.points[keep]
            wa, wb = px.weights[keep], py.weights[keep]
        res = sinkhorn(sx, sy, wa, wb, eps=eps, value=value, **solver_kwargs)
        solved = res.value.to(dtype)
        values = solved if keep is None else values.index_put((keep,), solved)
    return _reduce(values, reduction)


class GroupedSinkhornLoss(nn.Module):
    """Module form of :func:`grouped_sinkhorn_loss`.

    ``forward(xs, ys, *, a=None, b=None, x_groups=None, y_groups=None, num_groups=None)``;
    ``sync=True``/``process_group=`` are held with the solver keywords and passed on.
    """

    def __init__(
        self,
        *,
        eps: float = 0.1,
        value: str = "regularized",
        reduction: str = "sum",
        **solver_kwargs: Any,
    ) -> None:
        super().__init__()
        _store_solver_settings(self, eps, value, reduction, solver_kwargs)

    def forward(
        self,
        xs: Tensor | Sequence[Tensor],
        ys: Tensor | Sequence[Tensor],
        *,
        a: Tensor | Sequence[Tensor] | None = None,
        b: Tensor | Sequence[Tensor] | None = None,
        x_groups: Tensor | None = None,
        y_groups: Tensor | None = None,
        num_groups: int | None = None,
    ) -> Tensor:
        return grouped_sinkhorn_loss(
            xs,
            ys,
            a=a,
            b=b,
            x_groups=x_groups,
            y_groups=y_groups,
            num_groups=num_groups,
            eps=self.eps,
            value=self.value,
            reduction=self.reduction,
            **self.solver_kwargs,
        )

    def extra_repr(self) -> str:
        return f"eps={self.eps}, value={self.value!r}, reduction={self.reduction!r}"


# --------------------------------------------------------------------------- distribution matching


def _target_size(n: int, num_samples: object, samples_per_prediction: object) -> int:
    if num_samples is not None and samples_per_prediction is not None:
        raise ValueError(
            "give at most one of num_samples (absolute) and samples_per_prediction (ratio), got "
            f"num_samples={num_samples!r} and samples_per_prediction={samples_per_prediction!r}"
        )
    if num_samples is not None:
        return check_positive_int("num_samples", num_samples)
    if samples_per_prediction is not None:
        ratio = check_real("samples_per_prediction", samples_per_prediction, gt=0)
        return max(1, round(ratio * n))
    return n


def _draw(prior: Any, m: int, generator, device, dtype) -> Tensor:
    sample = getattr(prior, "sample", None)
    if not callable(sample):
        raise TypeError(
            f"prior must offer sample(n, *, generator, device, dtype), got {type(prior).__name__}"
        )
    target = sample(m, generator=generator, device=device, dtype=dtype)
    if not isinstance(target, Tensor) or target.shape != (m,):
        got = tuple(target.shape) if isinstance(target, Tensor) else type(target).__name__
        raise ValueError(f"prior.sample({m}) must return a ({m},) Tensor, got {got}")
    return target.detach().to(device=device, dtype=dtype)


def distribution_matching_loss(
    pred: Tensor,
    prior: Any,
    *,
    num_samples: int | None = None,
    samples_per_prediction: float | None = None,
    score: Tensor | None = None,
    split_q: float | None = None,
    min_group_size: int = 3,
    ties: str = "pred",
    split_mode: str = "rank",
    scale: float = 1.0,
    generator: torch.Generator | None = None,
    eps: float = 0.1,
    value: str = "regularized",
    sync: bool = False,
    process_group: Any = None,
    **solver_kwargs: Any,
) -> Tensor:
    r"""CSS-CCNN's label-free loss: match predicted counts with a fresh sample of a count prior.

    .. math::

        L_{sink} = \mathrm{scale} \cdot \mathrm{OT}_\varepsilon(\hat\mu, \mu_{prior}),
        \qquad
        L^{++} = \mathrm{scale} \cdot \big(\mathrm{OT}_\varepsilon(\hat\mu_0, \mu_{prior,0})
               + \mathrm{OT}_\varepsilon(\hat\mu_1, \mu_{prior,1})\big),

    with :math:`\hat\mu` the uniform empirical measure of the predictions, :math:`\mu_{prior}` that
    of ``M`` prior samples drawn on every call (on ``pred``'s device, in its dtype), the cost
    :math:`(x - y)^2` (the solver's default), and for :math:`L^{++}` (Eq. 4) the groups of
    :func:`~sinkmatch.grouping.percentile_split` (0 = sparse, 1 = dense), both solved in one
    batched call. When a group is smaller than ``min_group_size`` the split falls back to
    :math:`L_{sink}`, as the original did.

    Target size: ``num_samples`` (absolute) or ``samples_per_prediction`` (``M = round(r N)``);
    by default ``M = N``. The original drew 1,568 samples for 288 cells,
    ``samples_per_prediction=49/9``.

    Defaults aim at a correct loss: ``value="regularized"`` is the objective whose gradient the
    solver returns exactly at convergence. It carries the entropic bias (it is not minimal at
    ``pred`` distributed as the prior; negligible when ``eps`` is small against the squared
    spread of the counts); ``value="divergence"`` removes it at the price of two more solves. To
    reproduce the original CSS-CCNN training loss use
    ``value="transport", eps=0.1, scale=0.01, samples_per_prediction=49/9`` (plus, for its
    truncated unrolled solve from zero potentials, ``grad="autodiff", init=None, eps_scaling=None,
    max_iter=1000``; its stopping rule on potential changes is not reproduced), and for CSS-CCNN++
    ``split_q=0.3,
    split_mode="legacy"``.

    Args:
        pred (Tensor): Predicted counts, any shape (e.g. ``(B, 1, H, W)`` cell maps); flattened
            into one empirical distribution of ``N = pred.numel()`` values. For one distribution
            per image, call :func:`sinkhorn_loss` on a ``(B, N, 1)`` batch instead.
        prior: Any object with ``sample(n, *, generator=None, device=None, dtype=...) -> (n,)
            Tensor`` (e.g. :class:`sinkmatch.CountPrior`).
        num_samples: Number of prior samples ``M``.
        samples_per_prediction: ``M / N`` instead.
        score (Tensor, optional): Pseudo density per prediction (same number of elements),
            for CSS-CCNN++; needs ``split_q``.
        split_q: Percentile of the split as a fraction in (0, 1) (the paper: 0.3); needs ``score``.
        min_group_size: Smallest group before falling back to the ungrouped loss.
        ties: Tie rule of the split, see :func:`~sinkmatch.grouping.percentile_split`.
        split_mode: ``"rank"`` (exact group sizes) or ``"legacy"`` (the original's threshold).
        scale: Multiplies the loss (the original: 0.01).
        generator: Random generator for the prior sample (and random ties); reproducible draws.
        eps: Entropic regularization, in squared count units.
        value: ``"regularized"``, ``"transport"`` or ``"divergence"``.
        sync: Under ``torch.distributed``, match the predictions (and scores) of every rank of
            the default group, concatenated, against one prior sample drawn on rank 0 and
            broadcast (the target size follows the global ``N``): every rank computes the same
            global loss, and DDP's gradient averaging yields its gradient. Settings are checked
            across ranks first (a mismatch raises on every rank). A rank may hold no
            predictions. A no-op without an initialised process group; see
            :mod:`sinkmatch.distributed`.
        process_group: Synchronise over this group instead (implies ``sync``).
        **solver_kwargs: Passed to :func:`sinkmatch.sinkhorn`. Its default ``init="auto"`` starts
            these 1-D problems from the exact sorted-matching potentials (an order of magnitude
            fewer iterations than zero potentials, ``benchmarks/results/sinkhorn.csv``).

    Returns:
        Tensor: The scalar loss.

    Raises:
        TypeError: Non-tensor or non-floating ``pred``, a prior without ``sample``.
        ValueError: Empty or NaN ``pred``, both/neither sizes, only one of ``score``/``split_q``,
            ``q`` outside (0, 1), bad names.

    Example:
        >>> import torch
        >>> class Constant:
        ...     def sample(self, n, *, generator=None, device=None, dtype=torch.float32):
        ...         return torch.full((n,), 3.0, device=device, dtype=dtype)
        >>> pred = torch.tensor([1.0, 5.0], dtype=torch.float64, requires_grad=True)
        >>> loss = distribution_matching_loss(pred, Constant(), eps=1e-3, value="transport")
        >>> round(loss.item(), 6)
        4.0
    """
    synced = _dist.sync_distribution_matching(
        pred,
        score,
        draw=lambda m, device, dtype: _draw(prior, m, generator, device, dtype),
        target_size=lambda n: _target_size(n, num_samples, samples_per_prediction),
        generator=generator,
        random_ties=ties == "random",
        sync=sync,
        process_group=process_group,
        settings=dict(
            solver_kwargs,
            num_samples=num_samples,
            samples_per_prediction=samples_per_prediction,
            split_q=split_q,
            min_group_size=min_group_size,
            ties=ties,
            split_mode=split_mode,
            scale=scale,
            eps=eps,
            value=value,
        ),
    )
    if synced is not None:
        pred, score, _, generator = synced
    _check_value(value)
    check_float_tensor("pred", pred)
    if pred.numel() == 0:
        raise ValueError(f"pred must hold at least one prediction, got shape {tuple(pred.shape)}")
    if (score is None) != (split_q is None):
        raise ValueError(
            "CSS-CCNN++ needs both score= and split_q=; got "
            f"score={'a Tensor' if score is not None else None} and split_q={split_q!r}"
        )
    scale = check_real("scale", scale)
    flat = pred.reshape(-1)
    dtype = compute_dtype(flat)
    m = _target_size(flat.shape[0], num_samples, samples_per_prediction)
    target = _draw(prior, m, generator, flat.device, dtype) if synced is None else synced.target
    solver_kwargs = dict(solver_kwargs, eps=eps, value=value)
    split_kwargs = dict(min_group_size=min_group_size, ties=ties, mode=split_mode)
    return (
        _matching_loss(flat, target, score, split_q, split_kwargs, generator, solver_kwargs) * scale
    )


def _matching_loss(
    flat: Tensor,
    target: Tensor,
    score: Tensor | None,
    split_q: float | None,
    split_kwargs: dict[str, Any],
    generator: torch.Generator | None,
    solver_kwargs: dict[str, Any],
) -> Tensor:
    """The unscaled L_sink (no ``score``) or L++ (split by ``score``) of one prediction set."""
    if score is None:
        return sinkhorn_loss(flat, target, **solver_kwargs)
    split = percentile_split(flat, score, target, q=split_q, generator=generator, **split_kwargs)
    if split.fallback:
        return sinkhorn_loss(flat, target, **solver_kwargs)
    return grouped_sinkhorn_loss(
        flat,
        target,
        x_groups=split.pred_groups,
        y_groups=split.target_groups,
        num_groups=2,
        reduction="sum",
        **solver_kwargs,
    )


class DistributionMatchingLoss(nn.Module):
    """Module form of :func:`distribution_matching_loss`: holds the prior and the settings.

    Every call draws a fresh target sample (from ``generator`` when given, so a seeded generator
    makes a run reproducible). ``forward(pred, score=None)``; ``score`` is needed when
    ``split_q`` is set (CSS-CCNN++). ``sync=True``/``process_group=`` match the predictions of
    every rank (see :func:`distribution_matching_loss`).

    Example:
        >>> import torch
        >>> class Constant:
        ...     def sample(self, n, *, generator=None, device=None, dtype=torch.float32):
        ...         return torch.full((n,), 3.0, device=device, dtype=dtype)
        >>> loss = DistributionMatchingLoss(Constant(), eps=1e-3, value="transport", scale=0.01)
        >>> round(float(loss(torch.tensor([1.0, 5.0]))), 4)
        0.04
    """

    def __init__(
        self,
        prior: Any,
        *,
        num_samples: int | None = None,
        samples_per_prediction: float | None = None,
        split_q: float | None = None,
        min_group_size: int = 3,
        ties: str = "pred",
        split_mode: str = "rank",
        scale: float = 1.0,
        generator: torch.Generator | None = None,
        eps: float = 0.1,
        value: str = "regularized",
        sync: bool = False,
        process_group: Any = None,
        **solver_kwargs: Any,
    ) -> None:
        super().__init__()
        if not callable(getattr(prior, "sample", None)):
            raise TypeError(
                "prior must offer sample(n, *, generator, device, dtype), got "
                f"{type(prior).__name__}"
            )
        _target_size(1, num_samples, samples_per_prediction)  # validate early
        check_real("split_q", split_q, gt=0, lt=1, none_ok=True)
        self.prior = prior
        self.num_samples = num_samples
        self.samples_per_prediction = samples_per_prediction
        self.split_q = split_q
        self.min_group_size = min_group_size
        self.ties = ties
        self.split_mode = split_mode
        self.scale = scale
        self.generator = generator
        self.eps = eps
        self.value = _check_value(value)
        self.sync, self.process_group = sync, process_group
        self.solver_kwargs = solver_kwargs

    def forward(
        self, pred: Tensor, score: Tensor | None = None, *, generator: torch.Generator | None = None
    ) -> Tensor:
        """Loss of ``pred`` against a fresh prior sample.

        Args:
            pred: Predicted counts (any shape, flattened).
            score: Pseudo density of each prediction, required when built with ``split_q``.
            generator: Draws this call's prior sample; defaults to the generator given at
                construction (or torch's global one).
        """
        synced = _dist.resolve_group(self.sync, self.process_group) is not None
        if score is None and self.split_q is not None and not synced:  # else raised on all ranks
            raise ValueError("this loss was built with split_q (CSS-CCNN++): pass score=")
        return distribution_matching_loss(
            pred,
            self.prior,
            num_samples=self.num_samples,
            samples_per_prediction=self.samples_per_prediction,
            score=score,
            split_q=self.split_q,
            min_group_size=self.min_group_size,
            ties=self.ties,
            split_mode=self.split_mode,
            scale=self.scale,
            generator=self.generator if generator is None else generator,
            eps=self.eps,
            value=self.value,
            sync=self.sync,
            process_group=self.process_group,
            **self.solver_kwargs,
        )

    def extra_repr(self) -> str:
        size = (
            f"num_samples={self.num_samples}"
            if self.num_samples is not None
            else f"samples_per_prediction={self.samples_per_prediction}"
        )
        return (
            f"{size}, split_q={self.split_q}, scale={self.scale}, eps={self.eps}, "
            f"value={self.value!r}"
        )


# --------------------------------------------------------------------------- exact 1-D


def wasserstein_1d_loss(
    x: Tensor,
    y: Tensor,
    a: Tensor | None = None,
    b: Tensor | None = None,
    *,
    p: float = 2,
    reduction: str = "mean",
) -> Tensor:
    """Exact :math:`W_p^p` on the line (:func:`sinkmatch.exact1d.wasserstein_1d`), reduced.

    Args:
        x ((N,), (B, N) or (B, N, 1) Tensor): Source points; 2-D is a batch of problems.
        y ((M,), (B, M) or (B, M, 1) Tensor): Target points.
        a ((N,) or (B, N) Tensor, optional): Source weights; uniform if ``None``.
        b ((M,) or (B, M) Tensor, optional): Target weights.
        p: Cost exponent, ``p >= 1``.
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.

    Returns:
        Tensor: A scalar, or ``(B,)`` with ``reduction="none"``.

    Example:
        >>> import torch
        >>> wasserstein_1d_loss(torch.zeros(2, 3), torch.ones(2, 5), reduction="none")
        tensor([1., 1.])
    """
    _check_reduction(reduction)
    return _reduce(wasserstein_1d(x, y, a, b, p=p), reduction)


class Wasserstein1DLoss(nn.Module):
    """Module form of :func:`wasserstein_1d_loss`; ``forward(x, y, a=None, b=None)``."""

    def __init__(self, *, p: float = 2, reduction: str = "mean") -> None:
        super().__init__()
        self.p = p
        self.reduction = _check_reduction(reduction)

    def forward(
        self, x: Tensor, y: Tensor, a: Tensor | None = None, b: Tensor | None = None
    ) -> Tensor:
        return wasserstein_1d_loss(x, y, a, b, p=self.p, reduction=self.reduction)

    def extra_repr(self) -> str:
        return f"p={self.p}, reduction={self.reduction!r}"
