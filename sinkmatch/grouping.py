"""Ragged groups as one padded batch, and the CSS-CCNN++ percentile split.

:func:`pack_groups` turns groups of different sizes into one ``(G, N_max, D)`` batch whose
padding carries zero weight, so that a single batched solver call handles every group (the
solver reads a zero weight as ``log b = -inf``: padding receives exactly zero mass and zero
gradient).

:func:`percentile_split` is the grouping of CSS-CCNN++ (Babu Sam et al., *Completely
Self-Supervised Crowd Counting via Distribution Matching*, Section 3.4, Eq. 4): predictions are
split by a pseudo density score at the ``q``-th percentile, prior samples by their own values at
the same percentile, and sparse is matched with sparse, dense with dense.

Example:
    >>> import torch
    >>> from sinkmatch.grouping import pack_groups
    >>> packed = pack_groups([torch.tensor([1.0, 2.0]), torch.tensor([5.0])])
    >>> packed.points.shape, packed.weights
    (torch.Size([2, 2, 1]), tensor([[0.5000, 0.5000],
            [1.0000, 0.0000]]))
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor

from sinkmatch._checks import (
    check_choice,
    check_finite,
    check_float_tensor,
    check_int,
    check_positive_int,
    check_real,
)

__all__ = ["PackedGroups", "PercentileSplit", "pack_groups", "percentile_split"]

_TIES = ("pred", "random", "index")
_MODES = ("rank", "legacy")


class PackedGroups(NamedTuple):
    """Ragged groups packed into one zero-padded batch.

    Attributes:
        points ((G, N_max, D) Tensor): Group ``k`` in ``points[k, :sizes[k]]``, then padding.
            Differentiable with respect to the packed values (padding is a constant).
        weights ((G, N_max) Tensor): The group's weights, zero on padding. Uniform groups get
            ``1 / sizes[k]``; given weights are copied unnormalized (the solver normalizes).
        sizes ((G,) Tensor): Number of points per group (int64); ``0`` for an empty group.
        index ((G, N_max) Tensor): Where each slot came from (int64), ``-1`` on padding: the
            position in the flat input for the ``groups=`` form, the position inside group ``k``
            for the list form.
    """

    points: Tensor
    weights: Tensor
    sizes: Tensor
    index: Tensor

    @property
    def mask(self) -> Tensor:
        """(G, N_max) bool Tensor: ``True`` on real points, ``False`` on padding."""
        return self.index >= 0

    @property
    def nonempty(self) -> Tensor:
        """(G,) bool Tensor: groups with at least one point of positive weight."""
        return self.weights.sum(-1) > 0


class PercentileSplit(NamedTuple):
    """Result of :func:`percentile_split`; masks index the flattened inputs.

    Attributes:
        pred_sparse ((N,) bool Tensor): Predictions in the sparse group (low score).
        target_sparse ((M,) bool Tensor): Target samples in the sparse group (low value).
        fallback (bool): ``True`` when one of the four groups has fewer than ``min_group_size``
            points; CSS-CCNN++ then uses the ungrouped loss.
    """

    pred_sparse: Tensor
    target_sparse: Tensor
    fallback: bool

    @property
    def pred_dense(self) -> Tensor:
        """(N,) bool Tensor: predictions in the dense group."""
        return ~self.pred_sparse

    @property
    def target_dense(self) -> Tensor:
        """(M,) bool Tensor: target samples in the dense group."""
        return ~self.target_sparse

    @property
    def pred_groups(self) -> Tensor:
        """(N,) int64 Tensor: group id of each prediction, 0 = sparse, 1 = dense."""
        return self.pred_dense.long()

    @property
    def target_groups(self) -> Tensor:
        """(M,) int64 Tensor: group id of each target sample, 0 = sparse, 1 = dense."""
        return self.target_dense.long()


def _as_point_rows(x: object, name: str) -> Tensor:
    """(N,) or (N, D) floating tensor -> (N, D)."""
    x = check_float_tensor(name, x)
    if x.ndim == 1:
        return x[:, None]
    if x.ndim == 2:
        return x
    raise ValueError(f"{name} must have shape (N,) or (N, D), got shape {tuple(x.shape)}")


def _check_ids(groups: object, n: int, num_groups: int | None) -> tuple[Tensor, int]:
    if not isinstance(groups, Tensor):
        raise TypeError(f"groups must be an integer torch.Tensor, got {type(groups).__name__}")
    if groups.is_floating_point() or groups.is_complex() or groups.dtype == torch.bool:
        raise TypeError(f"groups must have an integer dtype, got dtype={groups.dtype}")
    if groups.shape != (n,):
        raise ValueError(
            f"groups must have shape ({n},) like the values, got {tuple(groups.shape)}"
        )
    ids = groups.long()
    if n and int(ids.min()) < 0:
        raise ValueError(f"groups must be >= 0, got min {int(ids.min())}")
    largest = int(ids.max()) if n else -1
    num_groups = check_int("num_groups", num_groups, ge=0, none_ok=True)
    if num_groups is None:
        num_groups = largest + 1
    elif largest >= num_groups:
        raise ValueError(f"groups must be < num_groups={num_groups}, got max {largest}")
    return ids, num_groups


def _id_form(values: Tensor, weights, groups, num_groups):
    """The id form: ``(x (N, D), ids (N,), G, weights or None, index in the input (N,))``."""
    if groups is None:
        raise ValueError(
            "pack_groups(values=Tensor) needs groups= (one id per point); pass a list of "
            "tensors for the list form"
        )
    x = _as_point_rows(values, "values")
    ids, num_groups = _check_ids(groups, x.shape[0], num_groups)
    if weights is not None and not isinstance(weights, Tensor):
        raise TypeError(f"weights must be a Tensor in the id form, got {type(weights).__name__}")
    return x, ids, num_groups, weights, torch.arange(x.shape[0], device=x.device)


def _list_form(values, weights):
    """The list form, concatenated: ``(x, ids, G, weights or None, index within the group)``."""
    if not isinstance(values, Sequence) or len(values) == 0:
        raise ValueError(f"values must be a Tensor or a non-empty list of Tensors, got {values!r}")
    rows = [_as_point_rows(v, f"values[{k}]") for k, v in enumerate(values)]
    dims = {r.shape[1] for r in rows}
    if len(dims) > 1:
        raise ValueError(f"all groups must have the same dimension D, got {sorted(dims)}")
    if len({r.device for r in rows}) > 1 or len({r.dtype for r in rows}) > 1:
        raise ValueError(
            "all groups must share one dtype and device, got "
            f"{sorted({(str(r.dtype), str(r.device)) for r in rows})}"
        )
    sizes = [r.shape[0] for r in rows]
    x = torch.cat(rows, dim=0)
    num_groups = len(rows)
    ids = torch.repeat_interleave(
        torch.arange(num_groups, device=x.device), torch.tensor(sizes, device=x.device)
    )
    local_index = torch.cat([torch.arange(s, device=x.device) for s in sizes])
    if weights is None:
        return x, ids, num_groups, None, local_index
    if isinstance(weights, Tensor) or len(weights) != num_groups:
        raise ValueError(f"weights must be a list of {num_groups} Tensors (one per group)")
    for k, (wk, s) in enumerate(zip(weights, sizes)):
        if not isinstance(wk, Tensor) or wk.shape != (s,):
            got = tuple(wk.shape) if isinstance(wk, Tensor) else type(wk).__name__
            raise ValueError(f"weights[{k}] must be a Tensor of shape ({s},), got {got}")
    return x, ids, num_groups, torch.cat(list(weights)), local_index


def _check_point_weights(w: Tensor, x: Tensor) -> None:
    n = x.shape[0]
    if w.shape != (n,):
        raise ValueError(f"weights must have shape ({n},), got {tuple(w.shape)}")
    if not w.is_floating_point():
        raise TypeError(f"weights must have a floating dtype, got dtype={w.dtype}")
    if w.device != x.device:
        raise ValueError(f"weights must be on the values' device {x.device}, got {w.device}")
    check_finite("weights", w)
    if n and bool((w < 0).any()):
        raise ValueError(f"weights must be nonnegative, got min {float(w.min())}")


def pack_groups(
    values: Tensor | Sequence[Tensor],
    weights: Tensor | Sequence[Tensor] | None = None,
    *,
    groups: Tensor | None = None,
    num_groups: int | None = None,
    pad_value: float | None = None,
) -> PackedGroups:
    """Pack ragged groups of points into one zero-weight-padded batch.

    Two forms:

    * list form: ``pack_groups([x_0, x_1, ...], [w_0, w_1, ...])`` with ``x_k`` of shape
      ``(N_k,)`` or ``(N_k, D)`` and optional weights ``w_k`` of shape ``(N_k,)``;
    * id form: ``pack_groups(x, w, groups=ids, num_groups=G)`` with ``x`` of shape ``(N,)`` or
      ``(N, D)``, ``ids`` an integer ``(N,)`` tensor in ``[0, G)``, optional ``w`` ``(N,)``.
      ``num_groups`` defaults to ``ids.max() + 1``; pass it to keep trailing empty groups. Within
      a group, points keep their input order.

    Empty groups are kept (``sizes[k] = 0``, all weights zero, ``nonempty[k] = False``) so that
    group ``k`` stays row ``k``; the losses give them a value of exactly 0 (never NaN) and do not
    send them to the solver.

    Args:
        values: The groups, as above. All of one dtype, device and dimension ``D``.
        weights: Optional nonnegative weights, matching ``values``.
        groups ((N,) Tensor, optional): Group ids (id form only).
        num_groups: Number of groups ``G`` (id form only).
        pad_value: Coordinate written into padding slots. ``None`` (default) repeats the group's
            first point (detached), which keeps padding inside the group's range (so it cannot
            inflate the solver's ε-scaling start, the cost diameter); an empty group is padded
            with 0. Padding has zero weight, so it changes neither values nor gradients.

    Returns:
        PackedGroups: ``points (G, N_max, D)``, ``weights (G, N_max)``, ``sizes (G,)``,
        ``index (G, N_max)``.

    Raises:
        TypeError: Wrong kinds or dtypes.
        ValueError: Mismatched shapes, dimensions or devices, NaN/inf, negative weights, ids out
            of range, or ``num_groups``/``groups`` given with the list form.
    """
    if isinstance(values, Tensor):
        x, ids, num_groups, w, local_index = _id_form(values, weights, groups, num_groups)
    else:
        if groups is not None or num_groups is not None:
            raise ValueError("groups= and num_groups= belong to the id form (values a Tensor)")
        x, ids, num_groups, w, local_index = _list_form(values, weights)
    n, dim = x.shape
    check_finite("values", x)
    if w is not None:
        _check_point_weights(w, x)

    sizes = torch.bincount(ids, minlength=num_groups)
    n_max = int(sizes.max()) if num_groups > 0 else 0
    order = torch.sort(ids, stable=True).indices
    sorted_ids = ids[order]
    starts = torch.cumsum(sizes, 0) - sizes
    slot = torch.arange(n, device=x.device) - starts[sorted_ids]
    where = (sorted_ids, slot)

    fill = 0.0 if pad_value is None else float(pad_value)
    points = x.new_full((num_groups, n_max, dim), fill)
    points = points.index_put(where, x[order])
    if w is None:
        per_point = (1.0 / sizes.clamp(min=1).to(x.dtype))[sorted_ids]
    else:
        per_point = w[order].to(x.dtype)
    packed_w = x.new_zeros((num_groups, n_max)).index_put(where, per_point)
    index = torch.full((num_groups, n_max), -1, dtype=torch.long, device=x.device)
    index = index.index_put(where, local_index[order])
    if pad_value is None and n_max > 0:
        first = points[:, :1, :].detach()  # the group's first point (the fill for empty groups)
        points = torch.where((index >= 0)[..., None], points, first)
    return PackedGroups(points, packed_w, sizes, index)


def _sparse_mask_rank(score: Tensor, k: int, tie_key: Tensor | None) -> Tensor:
    """Mask of the ``k`` lowest scores, ties ordered by ``tie_key`` (a permutation or values)."""
    n = score.shape[0]
    if tie_key is None:
        order = torch.sort(score, stable=True).indices
    else:
        first = torch.sort(tie_key, stable=True).indices
        order = first[torch.sort(score[first], stable=True).indices]
    mask = torch.zeros(n, dtype=torch.bool, device=score.device)
    mask[order[:k]] = True
    return mask


def _sparse_mask_legacy(values: Tensor, keep_top: float) -> Tensor:
    """The original rule: strictly below the ``int(keep_top * n)``-th largest value."""
    k = int(keep_top * values.shape[0])
    if k == 0:
        return torch.zeros_like(values, dtype=torch.bool)
    threshold = torch.topk(values, k).values[-1]
    return values < threshold


def percentile_split(
    pred: Tensor,
    score: Tensor,
    target: Tensor,
    *,
    q: float = 0.3,
    min_group_size: int = 3,
    ties: str = "pred",
    mode: str = "rank",
    generator: torch.Generator | None = None,
) -> PercentileSplit:
    """Split predictions by a score and target samples by value at the ``q``-th percentile.

    CSS-CCNN++ (Section 3.4): the cells whose pseudo density (edge score) lies in the lowest
    ``q`` fraction form the sparse group, the prior samples in their own lowest ``q`` fraction
    form the sparse target group, and the loss matches the groups separately (Eq. 4),

    .. math::

        L^{++} = L(H^{GT}_0, H^{CS}_0) + L(H^{GT}_1, H^{CS}_1).

    ``mode="rank"`` (default): exactly ``k = floor(q N + 1/2)`` predictions (and
    ``floor(q M + 1/2)`` targets) are sparse, whatever the ties. Canny pseudo densities have many
    exact zeros; ties are ordered by ``ties``:

    * ``"pred"`` (default, deterministic): lower predicted value first, then input order. Within
      a block of equal scores the score says nothing, and giving the lowest predictions to the
      sparse group is what the monotone (optimal) coupling with the lower target group would do.
    * ``"random"``: a random order drawn from ``generator`` (reproducible with a seeded one).
    * ``"index"``: input order (stable sort).

    Target ties need no rule (equal values are interchangeable).

    ``mode="legacy"``: the original code's rule: with ``k = int(round(1 - q, 2) N)``, the
    threshold is the ``k``-th largest score, and the sparse group is the scores *strictly below*
    it (so ties at the threshold all go dense and the sparse group can be empty); targets
    likewise. ``ties`` is ignored.

    Tiny groups: ``fallback`` is ``True`` when any of the four groups has fewer than
    ``min_group_size`` members (the original fell back to the ungrouped loss when the sparse
    prediction group had at most 2 cells, i.e. ``min_group_size=3``);
    :func:`sinkmatch.losses.distribution_matching_loss` then computes the ungrouped loss.

    Args:
        pred (Tensor): Predictions, any shape with ``N`` elements (flattened; used only for
            ``ties="pred"`` and for the shape check).
        score (Tensor): Pseudo density per prediction, same number of elements as ``pred``.
        target ((M,) Tensor): Target samples (e.g. prior samples).
        q: Percentile as a fraction, ``0 < q < 1`` (the paper: 0.3).
        min_group_size: Smallest acceptable group, ``>= 1``.
        ties: ``"pred"``, ``"random"`` or ``"index"`` (rank mode).
        mode: ``"rank"`` or ``"legacy"``.
        generator: Random generator for ``ties="random"``.

    Returns:
        PercentileSplit: boolean masks over the flattened ``pred`` and ``target`` (with
        ``pred_groups``/``target_groups`` ids 0 = sparse, 1 = dense) and the ``fallback`` flag.

    Raises:
        TypeError: Non-tensors or non-floating ``score``/``target``.
        ValueError: Size mismatch, empty inputs, NaN, ``q`` outside (0, 1), bad names.

    Example:
        >>> import torch
        >>> split = percentile_split(
        ...     torch.tensor([5.0, 1.0, 7.0, 2.0]), torch.tensor([0.9, 0.0, 0.8, 0.0]),
        ...     torch.arange(10.0), q=0.5, min_group_size=1)
        >>> split.pred_sparse.tolist(), int(split.target_sparse.sum()), split.fallback
        ([False, True, False, True], 5, False)
    """
    for name, t in (("pred", pred), ("score", score), ("target", target)):
        if not isinstance(t, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if not score.is_floating_point() or not target.is_floating_point():
        raise TypeError(
            f"score and target must be floating tensors, got {score.dtype} and {target.dtype}"
        )
    if pred.numel() != score.numel():
        raise ValueError(
            f"score must have one value per prediction, got pred shape {tuple(pred.shape)} and "
            f"score shape {tuple(score.shape)}"
        )
    if pred.numel() == 0:
        raise ValueError("pred must hold at least one prediction, got an empty tensor")
    if target.ndim != 1 or target.shape[0] == 0:
        raise ValueError(f"target must have shape (M,) with M >= 1, got {tuple(target.shape)}")
    q = check_real("q", q, gt=0, lt=1)
    check_positive_int("min_group_size", min_group_size)
    check_choice("ties", ties, _TIES)
    check_choice("mode", mode, _MODES)
    score = score.detach().reshape(-1)
    target = target.detach()
    check_finite("score", score)
    check_finite("target", target)
    n, m = score.shape[0], target.shape[0]

    if mode == "legacy":
        keep_top = float(f"{1.0 - q:.2f}")  # the original formatted 1 - q to two decimals
        pred_sparse = _sparse_mask_legacy(score, keep_top)
        target_sparse = _sparse_mask_legacy(target, keep_top)
    else:
        if ties == "pred":
            if pred.dtype == torch.bool or pred.is_complex():
                raise TypeError(f"pred must be real-valued for ties='pred', got dtype={pred.dtype}")
            tie_key = pred.detach().reshape(-1)
            check_finite("pred", tie_key)
        elif ties == "random":
            gen_device = generator.device if generator is not None else score.device
            tie_key = torch.randperm(n, generator=generator, device=gen_device).to(score.device)
        else:
            tie_key = None
        pred_sparse = _sparse_mask_rank(score, math.floor(q * n + 0.5), tie_key)
        target_sparse = _sparse_mask_rank(target, math.floor(q * m + 0.5), None)

    counts = (
        int(pred_sparse.sum()),
        n - int(pred_sparse.sum()),
        int(target_sparse.sum()),
        m - int(target_sparse.sum()),
    )
    return PercentileSplit(pred_sparse, target_sparse, min(counts) < min_group_size)
