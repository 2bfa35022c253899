r"""Distribution matching across processes (``torch.distributed``): one global loss per step.

Distribution matching is a statistic of the whole batch. Under data parallelism each process
(rank) holds only a slice of it, so matching that slice against the prior matches the wrong,
smaller and noisier, distribution (the reason SyncBatchNorm exists). With ``sync=True`` (the
default process group) or ``process_group=g``, the losses of :mod:`sinkmatch.losses` instead
compute on every rank the *single global loss* of the batch concatenated over the ranks, in rank
order:

1. **One check, first.** Every rank sends a fixed-size float64 vector holding its local row
   counts, the dtypes and trailing shapes of its tensors, a hash of every setting (``eps``,
   ``value``, the target size, the split settings, the solver keywords, ...) and a flag for a
   local input error, in one ``all_gather`` that every rank reaches before any other
   collective. A rank that disagrees (a different ``eps``, a missing ``score``) or that failed to
   prepare its inputs makes *every* rank raise :class:`DistributedMismatchError` (the failing
   rank raises its own error) instead of leaving the others waiting in a collective forever.
   Because the settings and then the gathered inputs are equal everywhere, every later
   validation raises on all ranks or on none.
2. **A differentiable gather of variable-size slices.** The row counts from the check give the
   largest slice; every rank pads to it, ``all_gather`` runs on equal shapes (as gloo and NCCL
   require), and the padding is cut away. A rank whose local batch is empty sends only padding
   and receives everything.
3. **One prior sample.** Rank 0 of the group draws the target from its ``generator`` and
   broadcasts it, so every rank matches the same sample whatever its own random state (a seed
   shared by all ranks would also work, but CUDA samplers may draw differently on different
   GPU models). With ``ties="random"`` rank 0 also sends a seed for the tie order.

Gradient scaling. Let :math:`\theta` be the parameters replicated on the :math:`W` ranks,
:math:`p_r = f_\theta(\text{batch}_r)` the predictions of rank :math:`r` and :math:`L(p_1,
\dots, p_W)` the global loss, computed identically on every rank. The backward of the gather
sends rank :math:`r` only its own slice of :math:`\nabla_p L`, multiplied by :math:`W`, so its
local parameter gradient is :math:`g_r = W\, J_r^\top \nabla_{p_r} L` with
:math:`J_r = \partial p_r / \partial\theta`. DDP averages:

.. math::

    \frac1W \sum_{r=1}^W g_r = \sum_{r=1}^W J_r^\top \nabla_{p_r} L = \nabla_\theta L,

the chain rule for :math:`L(f_\theta(\text{batch}_1), \dots, f_\theta(\text{batch}_W))`: the
gradient of the single global loss, with no collective in the backward pass. Local loss terms
:math:`\ell_r` added on each rank keep their usual meaning (DDP yields
:math:`\nabla_\theta [\frac1W \sum_r \ell_r + L]`). When DDP runs over a larger group than the
loss (several loss groups), the result is the gradient of the mean of the groups' losses.

Cost. Only scalars travel: the predicted cell counts (and, for CSS-CCNN++, their pseudo density
scores, packed into the same message), never the features. For the paper's stage-2 batch (32
crops of 224 px per rank, a 3×3 grid: 288 cells) in float32 each rank sends per step

* the check: 83 float64 = 664 bytes;
* the predictions: 288 × 4 = 1,152 bytes (CSS-CCNN++: 288 × 2 × 4 = 2,304 bytes);
* rank 0 broadcasts the prior sample: ``samples_per_prediction = 49/9`` gives 1,568 samples per
  rank's 288 cells, (1,568 W + 2) × 4 bytes = 6,272 W + 8 bytes,

and receives :math:`W` times the first two: for :math:`W = 8`, about 5.3 kB + 18.4 kB + 50.2 kB
≈ 74 kB per step for CSS-CCNN++. Gathering the FEN features those counts come from instead
(pool2 and block-3 maps, 384 channels at 56 × 56 per crop) would be 32 × 384 × 56 × 56 × 4 ≈
154 MB per rank and step, about 67,000 times the 2,304 bytes above; DDP's own all-reduce of the
trainable density head (about 0.52 M parameters) moves about 2 MB. The price is compute, not
communication: every rank solves the global problem (:math:`N = 288 W` cells against
:math:`M = 1{,}568 W` samples), which is why the losses' 1-D problems start from the exact
sorted-matching potentials.

No-op. Without ``sync=True``/``process_group=``, when ``torch.distributed`` is unavailable or
not initialised, or when the group has a single rank, every function here returns its inputs
unchanged (``None`` from the loss hooks) and issues no collective, so the same script runs in
one process.

Devices. Collectives run on CUDA for NCCL groups (the current device) and on the CPU
otherwise; tensors are moved there and back (a gloo group with CUDA tensors works, at the price
of host copies).

Example:
    >>> import torch
    >>> from sinkmatch.distributed import all_gather_rows, resolve_group
    >>> resolve_group(sync=True) is None  # no process group initialised: single process
    True
    >>> x = torch.arange(3.0)
    >>> all_gather_rows(x)[0] is x
    True
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Mapping, Sequence
from numbers import Real
from typing import Any, NamedTuple

import torch
from torch import Tensor

__all__ = [
    "DistributedMismatchError",
    "SyncedMatching",
    "all_gather_rows",
    "check_consistent",
    "resolve_group",
    "sync_distribution_matching",
    "sync_grouped",
    "sync_points",
]

_MAX_TENSORS = 8  # slots for row counts and tensor specs in the check vector
_MAX_SETTINGS = 32  # slots for settings (any further ones share the last slot)
_HEADER = 3  # error flag, hash of the names, number of settings
_LENGTH = _HEADER + 2 * _MAX_TENSORS + 2 * _MAX_SETTINGS  # 83 float64 values
_SEED_LIMIT = 2**24  # tie seeds are exact in float32 buffers


class DistributedMismatchError(ValueError):
    """Raised on every rank when the ranks disagree (settings, dtypes, trailing shapes, which
    tensors were given) or when another rank failed before the collective."""


# --------------------------------------------------------------------------- group and check


def resolve_group(sync: bool = False, process_group: Any = None) -> Any:
    """The process group a loss synchronises over, or ``None`` for the single-process path.

    Args:
        sync: Use the default process group.
        process_group: Use this group (implies ``sync``).

    Returns:
        The group, or ``None`` when neither is requested, when ``torch.distributed`` is not
        available or not initialised (the no-op), or when the group has one rank.

    Raises:
        TypeError: ``sync`` is not a bool.
        ValueError: ``process_group`` given without an initialised ``torch.distributed``, or
            this process is not a member of it.
    """
    if not isinstance(sync, bool):
        raise TypeError(f"sync must be a bool, got {type(sync).__name__} {sync!r}")
    if process_group is None and not sync:
        return None
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        if process_group is not None:
            raise ValueError(
                "process_group= was given but torch.distributed is not initialised; call "
                "torch.distributed.init_process_group first (or pass sync=True, a no-op then)"
            )
        return None
    group = dist.group.WORLD if process_group is None else process_group
    if dist.get_rank(group) < 0:
        raise ValueError(f"this process (global rank {dist.get_rank()}) is not in process_group")
    return None if dist.get_world_size(group) == 1 else group


def _stable_text(v: object) -> str:
    """A text that is equal on every rank for equal settings (no addresses)."""
    if v is None or isinstance(v, (bool, str)):
        return repr(v)
    if isinstance(v, Real):
        return repr(float(v))
    if isinstance(v, torch.dtype):
        return str(v)
    if isinstance(v, torch.device):
        return v.type  # cuda:0 and cuda:1 on two ranks are the same setting
    if isinstance(v, (tuple, list)):
        return "(" + ",".join(_stable_text(u) for u in v) + ")"
    if isinstance(v, Mapping):
        items = sorted(v.items(), key=lambda kv: str(kv[0]))
        return "{" + ",".join(f"{k}:{_stable_text(u)}" for k, u in items) + "}"
    if isinstance(v, Tensor):
        return f"Tensor{tuple(v.shape)}{v.dtype}"
    kind = v if callable(v) and hasattr(v, "__qualname__") else type(v)
    return f"{getattr(kind, '__module__', '?')}.{getattr(kind, '__qualname__', '?')}"


def _hash53(text: str) -> float:
    """A 53-bit hash of ``text``, exact as a float64."""
    digest = hashlib.blake2b(text.encode(), digest_size=8).digest()
    return float(int.from_bytes(digest, "little") >> 11)


def _spec_text(t: Tensor | None) -> str:
    if t is None:
        return "None"
    dims = ["N", *map(str, t.shape[1:])]
    return f"{t.dtype} of shape ({', '.join(dims)}{',' if len(dims) == 1 else ''})"


def _rank_groups(column: Tensor) -> str:
    """``[0, 2] | [1]``: the ranks that sent equal values, grouped."""
    groups: dict[float, list[int]] = {}
    for r, v in enumerate(column.tolist()):
        groups.setdefault(v, []).append(r)
    return " | ".join(str(g) for g in groups.values())


def _setting_slots(settings: Mapping[str, object]) -> list[tuple[str, object]]:
    items = sorted(settings.items())
    if len(items) > _MAX_SETTINGS:  # fold the rest into the last slot
        rest = items[_MAX_SETTINGS - 1 :]
        items = [*items[: _MAX_SETTINGS - 1], (",".join(k for k, _ in rest), dict(rest))]
    return items


def _local_vector(
    settings: Mapping[str, object], tensors: Mapping[str, Tensor | None], failed: bool
) -> Tensor:
    if len(tensors) > _MAX_TENSORS:
        raise ValueError(f"at most {_MAX_TENSORS} tensors can be checked, got {len(tensors)}")
    vec = torch.zeros(_LENGTH, dtype=torch.float64)
    if failed:
        vec[0] = 1.0
        return vec
    slots = _setting_slots(settings)
    vec[1] = _hash53(repr([k for k, _ in slots] + list(tensors)))
    vec[2] = len(slots)
    for i, t in enumerate(tensors.values()):
        vec[_HEADER + i] = -1.0 if t is None else float(t.shape[0])
        vec[_HEADER + _MAX_TENSORS + i] = _hash53(_spec_text(t))
    base = _HEADER + 2 * _MAX_TENSORS
    for i, (key, value) in enumerate(slots):
        vec[base + 2 * i] = _hash53(f"{key}={_stable_text(value)}")
        numeric = isinstance(value, Real) and math.isfinite(float(value))
        vec[base + 2 * i + 1] = float(value) if numeric else math.nan
    return vec


def _comm_device(group: Any) -> torch.device:
    """CUDA (the current device) for NCCL groups, the CPU for gloo, MPI and the rest."""
    import torch.distributed as dist

    if "nccl" in str(dist.get_backend(group)).lower():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _mismatch_lines(
    table: Tensor, settings: Mapping[str, object], tensors: Mapping[str, Tensor | None], me: int
) -> list[str]:
    """What differs between the ranks' check vectors (all ranks got the same ``table``)."""
    if not bool((table[:, 1:_HEADER] == table[0, 1:_HEADER]).all()):
        return [
            "the ranks called different losses or gave different settings names; this rank: "
            f"tensors {list(tensors)}, settings {sorted(settings)}"
        ]
    lines = []
    spec = slice(_HEADER + _MAX_TENSORS, _HEADER + 2 * _MAX_TENSORS)
    for i, (name, t) in enumerate(tensors.items()):
        column = table[:, spec][:, i]
        if not bool((column == column[0]).all()):
            lines.append(
                f"{name}: dtype, trailing shape or presence differ between ranks "
                f"{_rank_groups(column)}; this rank has {_spec_text(t)}"
            )
    base = _HEADER + 2 * _MAX_TENSORS
    for i, (key, value) in enumerate(_setting_slots(settings)):
        hashes, numbers = table[:, base + 2 * i], table[:, base + 2 * i + 1]
        if bool((hashes == hashes[0]).all()):
            continue
        if bool(torch.isfinite(numbers).all()):
            per_rank = ", ".join(f"rank {r}: {float(v)!r}" for r, v in enumerate(numbers))
            lines.append(f"{key} differs: {per_rank}")
        else:
            lines.append(
                f"{key} differs between ranks {_rank_groups(hashes)}; this rank (rank {me}) "
                f"has {value!r}"
            )
    return lines


def _exchange(
    group: Any,
    settings: Mapping[str, object],
    tensors: Mapping[str, Tensor | None],
    error: BaseException | None,
) -> list[list[int]]:
    """The one check collective; returns ``rows[r][t]`` (``-1`` for an absent tensor)."""
    import torch.distributed as dist

    try:
        vec = _local_vector(settings, tensors, error is not None)
    except (TypeError, ValueError) as exc:  # still take part, then raise
        error, vec = exc, _local_vector({}, {}, True)
    device = _comm_device(group)
    parts = [torch.empty(_LENGTH, dtype=torch.float64, device=device) for _ in range(_size(group))]
    dist.all_gather(parts, vec.to(device), group=group)
    table = torch.stack(parts).cpu()
    me = dist.get_rank(group)
    failed = [r for r in range(table.shape[0]) if table[r, 0] != 0]
    if error is not None:
        raise error
    if failed:
        raise DistributedMismatchError(
            f"rank(s) {failed} of the process group could not prepare their inputs (see the "
            f"error there); rank {me} stops too instead of waiting in a collective"
        )
    lines = _mismatch_lines(table, settings, tensors, me)
    if lines:
        raise DistributedMismatchError(
            f"the {table.shape[0]} ranks of the process group disagree (every rank raises this): "
            + "; ".join(lines)
        )
    rows = table[:, _HEADER : _HEADER + len(tensors)]
    return [[int(v) for v in row] for row in rows]


def _size(group: Any) -> int:
    import torch.distributed as dist

    return dist.get_world_size(group)


def check_consistent(
    settings: Mapping[str, object],
    tensors: Mapping[str, Tensor | None] | None = None,
    *,
    process_group: Any = None,
) -> list[list[int]] | None:
    """Check in one collective that every rank has the same settings and tensor layouts.

    Every rank must call this with the same setting names and tensor names (the values are what
    is checked). Settings are compared through a stable text of each value (numbers, strings,
    dtypes, device types, sequences, mappings; callables by qualified name); tensors by dtype,
    shape after the first dimension and presence (``None``). The first dimension may differ:
    the per-rank row counts are returned.

    Args:
        settings: ``{name: value}``, at most 32 compared one by one (the rest together).
        tensors: ``{name: (N_r, ...) Tensor or None}``, at most 8.
        process_group: The group; the default group when ``None``.

    Returns:
        ``rows[r][t]``: the first dimension of tensor ``t`` on rank ``r`` (``-1`` when absent),
        or ``None`` without an initialised multi-rank process group (the no-op).

    Raises:
        DistributedMismatchError: On every rank, naming what differs.

    Example:
        >>> check_consistent({"eps": 0.1}) is None  # single process: nothing to check
        True
    """
    group = resolve_group(True, process_group)
    if group is None:
        return None
    return _exchange(group, settings, dict(tensors or {}), None)


# --------------------------------------------------------------------------- gather


def _gather_padded(local: Tensor, rows: Sequence[int], group: Any) -> Tensor:
    """Concatenate every rank's ``local`` (``rows[r]`` rows each) along dimension 0."""
    import torch.distributed as dist

    n_max, trailing = max(rows), local.shape[1:]
    if n_max == 0:
        return local.new_empty((0, *trailing))
    device = _comm_device(group)
    buf = local.detach().to(device)
    if buf.shape[0] < n_max:
        buf = torch.cat([buf, buf.new_zeros((n_max - buf.shape[0], *trailing))])
    buf = buf.contiguous()
    parts = [torch.empty_like(buf) for _ in rows]
    dist.all_gather(parts, buf, group=group)
    return torch.cat([p[:n] for p, n in zip(parts, rows)]).to(local.device)


class _GatherRows(torch.autograd.Function):
    """Forward: all ranks' rows; backward: this rank's slice of the gradient, times W."""

    @staticmethod
    def forward(ctx: Any, local: Tensor, rows: list[int], rank: int, group: Any) -> Tensor:
        ctx.start, ctx.n, ctx.world = sum(rows[:rank]), rows[rank], len(rows)
        return _gather_padded(local, rows, group)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, None, None, None]:
        return grad[ctx.start : ctx.start + ctx.n] * ctx.world, None, None, None


def _gather(t: Tensor | None, rows: list[int], group: Any) -> Tensor | None:
    import torch.distributed as dist

    if t is None:
        return None
    if t.requires_grad:
        return _GatherRows.apply(t, rows, dist.get_rank(group), group)
    return _gather_padded(t, rows, group)


def all_gather_rows(
    *tensors: Tensor | None, process_group: Any = None, settings: Mapping[str, object] | None = None
) -> tuple[Tensor | None, ...]:
    r"""Concatenate tensors of different first dimensions from every rank, differentiably.

    First :func:`check_consistent` (one collective: the row counts, dtypes, trailing shapes and
    ``settings``), then one padded ``all_gather`` per tensor. The result is the concatenation
    in rank order, equal on every rank. The backward pass returns each rank its own slice of
    the gradient multiplied by the group size :math:`W`, so that when every rank computes the
    same loss from the result, DDP's averaging yields the gradient of that single loss (see the
    module docstring); it issues no collective.

    Args:
        *tensors ((N_r, ...) Tensor or None): This rank's slices; ``N_r`` may be 0 and may
            differ between ranks; ``None`` stays ``None`` (on every rank alike).
        process_group: The group; the default group when ``None``.
        settings: Extra settings to check along (``{name: value}``).

    Returns:
        tuple: ``(sum_r N_r, ...)`` tensors, on each input's device; the inputs themselves
        (no collective) without an initialised multi-rank process group.

    Raises:
        TypeError: A non-tensor argument (raised after taking part in the check).
        DistributedMismatchError: On every rank when the ranks disagree or one failed.

    Example:
        >>> import torch
        >>> (x,) = all_gather_rows(torch.ones(2, 3))  # single process: returned as given
        >>> x.shape
        torch.Size([2, 3])
    """
    group = resolve_group(True, process_group)
    if group is None:
        return tensors
    error = None
    bad = [i for i, t in enumerate(tensors) if t is not None and not isinstance(t, Tensor)]
    if bad:
        error = TypeError(f"all_gather_rows takes tensors, got {type(tensors[bad[0]]).__name__}")
    named = {f"tensors[{i}]": t if isinstance(t, Tensor) else None for i, t in enumerate(tensors)}
    rows = _exchange(group, dict(settings or {}), named, error)
    return tuple(_gather(t, [r[i] for r in rows], group) for i, t in enumerate(tensors))


# --------------------------------------------------------------------------- loss hooks


def _points_axis(t: Tensor, name: str, batched_ndim: int) -> int:
    """The axis of the points: 0 for unbatched inputs, 1 for batched ones."""
    if not isinstance(t, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.ndim not in (batched_ndim - 2, batched_ndim - 1, batched_ndim) or t.ndim == 0:
        raise ValueError(f"{name} has an unexpected shape {tuple(t.shape)}")
    return 1 if t.ndim == batched_ndim else 0


def _gather_axis(t: Tensor | None, axis: int, rows: list[int], group: Any) -> Tensor | None:
    if t is None:
        return None
    return _gather(t.movedim(axis, 0), rows, group).movedim(0, axis)


def sync_points(
    x: Tensor,
    y: Tensor,
    a: Tensor | None,
    b: Tensor | None,
    *,
    sync: bool,
    process_group: Any,
    settings: Mapping[str, object],
) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None]:
    """Hook of :func:`sinkmatch.losses.sinkhorn_loss`: gather both point clouds and weights.

    Each rank holds a slice of the points of ``x`` (and of ``y``): ``(N_r,)``, ``(N_r, D)`` or
    ``(B, N_r, D)``, with weights ``(N_r,)``/``(B, N_r)``. The result is the concatenation
    along the point axis, in rank order (``B`` and ``D`` must agree). Weights are concatenated
    as given, so uniform weights stay uniform over all points. Returns the inputs unchanged
    when not synchronising (see :func:`resolve_group`).
    """
    group = resolve_group(sync, process_group)
    if group is None:
        return x, y, a, b
    error, axes, tensors = None, [0, 0, 0, 0], {"x": None, "y": None, "a": None, "b": None}
    try:
        axes[0], axes[1] = _points_axis(x, "x", 3), _points_axis(y, "y", 3)
        for k, (w, pts, name) in enumerate(((a, x, "a"), (b, y, "b"))):
            if w is not None:
                axes[2 + k] = _points_axis(w, name, 2)
                if w.shape[axes[2 + k]] != pts.shape[axes[k]]:
                    raise ValueError(
                        f"{name} must have one weight per point on every rank, got shape "
                        f"{tuple(w.shape)} for points of shape {tuple(pts.shape)}"
                    )
        tensors = {
            name: None if t is None else t.movedim(axis, 0)
            for name, t, axis in zip(tensors, (x, y, a, b), axes)
        }
    except (TypeError, ValueError) as exc:
        error = exc
    rows = _exchange(group, dict(settings, loss="sinkhorn_loss"), tensors, error)
    x, y, a, b = (
        _gather_axis(t, axis, [r[i] for r in rows], group)
        for i, (t, axis) in enumerate(zip((x, y, a, b), axes))
    )
    return x, y, a, b


def _as_id_form(
    xs: Tensor | Sequence[Tensor], w: Tensor | Sequence[Tensor] | None, ids: Tensor | None
) -> tuple[Tensor, Tensor | None, Tensor, int | None]:
    """The list form ``[x_0, x_1, ...]`` as one ``(N,)``/``(N, D)`` tensor with group ids."""
    if isinstance(xs, Tensor):
        if not isinstance(ids, Tensor):
            raise ValueError("the tensor form needs x_groups= and y_groups= (one id per point)")
        return xs, w, ids, None
    if ids is not None or isinstance(xs, (str, bytes)) or not isinstance(xs, Sequence):
        raise ValueError("give lists of tensors without ids, or tensors with x_groups/y_groups")
    if not xs or not all(isinstance(t, Tensor) for t in xs):
        raise TypeError("the list form needs a non-empty list of tensors, one per group")
    sizes = torch.tensor([t.shape[0] for t in xs], device=xs[0].device)
    ids = torch.repeat_interleave(torch.arange(len(xs), device=xs[0].device), sizes)
    weights = None if w is None else torch.cat(list(w))
    return torch.cat(list(xs)), weights, ids, len(xs)


def sync_grouped(
    xs: Tensor | Sequence[Tensor],
    ys: Tensor | Sequence[Tensor],
    a: Tensor | Sequence[Tensor] | None,
    b: Tensor | Sequence[Tensor] | None,
    x_groups: Tensor | None,
    y_groups: Tensor | None,
    num_groups: int | None,
    *,
    sync: bool,
    process_group: Any,
    settings: Mapping[str, object],
) -> tuple[Any, Any, Any, Any, Any, Any, Any]:
    """Hook of :func:`sinkmatch.losses.grouped_sinkhorn_loss`: gather points, weights and ids.

    Both forms become the id form: group ``k`` of the result is the concatenation over the
    ranks of each rank's group ``k`` (in rank order). Returns
    ``(x, y, a, b, x_groups, y_groups, num_groups)``, or the inputs unchanged when not
    synchronising (see :func:`resolve_group`).
    """
    group = resolve_group(sync, process_group)
    if group is None:
        return xs, ys, a, b, x_groups, y_groups, num_groups
    names = ("x", "y", "a", "b", "x_groups", "y_groups")
    error, parts = None, dict.fromkeys(names)
    try:
        x, a, ix, gx = _as_id_form(xs, a, x_groups)
        y, b, iy, gy = _as_id_form(ys, b, y_groups)
        if gx != gy:
            raise ValueError(f"xs and ys must have the same number of groups, got {gx} and {gy}")
        num_groups = gx if gx is not None else num_groups
        for pts, w, ids, side in ((x, a, ix, "x"), (y, b, iy, "y")):
            for t, what in ((w, "weights"), (ids, "group ids")):
                if t is not None and (t.ndim != 1 or t.shape[0] != pts.shape[0]):
                    raise ValueError(
                        f"{side}: {what} must have shape ({pts.shape[0]},) like the points, "
                        f"got {tuple(t.shape)}"
                    )
        parts = dict(zip(names, (x, y, a, b, ix, iy)))
    except (TypeError, ValueError, RuntimeError, AttributeError) as exc:
        error = exc
    checked = dict(settings, loss="grouped_sinkhorn_loss", num_groups=num_groups)
    rows = _exchange(group, checked, parts, error)
    out = [_gather(t, [r[i] for r in rows], group) for i, t in enumerate(parts.values())]
    return (*out[:4], out[4], out[5], num_groups)


class SyncedMatching(NamedTuple):
    """What :func:`sync_distribution_matching` hands to the loss.

    Attributes:
        pred ((N,) Tensor): Every rank's predictions, flattened, in rank order.
        score ((N,) Tensor or None): Their scores (CSS-CCNN++).
        target ((M,) Tensor): The prior sample of rank 0, identical on every rank.
        generator (torch.Generator or None): For ``ties="random"``: a CPU generator seeded by
            rank 0, identical on every rank; otherwise ``None``.
    """

    pred: Tensor
    score: Tensor | None
    target: Tensor
    generator: torch.Generator | None


def _broadcast_sample(
    group: Any,
    m: int,
    dtype: torch.dtype,
    device: torch.device,
    draw: Callable[[int, torch.device, torch.dtype], Tensor],
    generator: torch.Generator | None,
    with_seed: bool,
) -> tuple[Tensor, int]:
    """Rank 0 draws ``(M,)`` and a seed and broadcasts them; a failure there raises everywhere."""
    import torch.distributed as dist

    comm = _comm_device(group)
    buf = torch.zeros(m + 2, dtype=dtype, device=comm)  # [ok flag, seed, sample...]
    error = None
    if dist.get_rank(group) == 0:
        try:
            sample = draw(m, device, dtype)
            seed = 0
            if with_seed:
                gen_device = generator.device if generator is not None else "cpu"
                seed = int(torch.randint(_SEED_LIMIT, (1,), generator=generator, device=gen_device))
            buf[2:] = sample.reshape(-1).to(comm)
            buf[0], buf[1] = 1.0, float(seed)
        except Exception as exc:  # re-raised below, after the broadcast
            error = exc
            buf.zero_()
    dist.broadcast(buf, src=dist.get_global_rank(group, 0), group=group)
    if error is not None:
        raise error
    if float(buf[0]) != 1.0:
        raise DistributedMismatchError(
            "rank 0 of the process group could not draw the prior sample (see the error there)"
        )
    return buf[2:].to(device), int(buf[1])


def sync_distribution_matching(
    pred: Tensor,
    score: Tensor | None,
    *,
    draw: Callable[[int, torch.device, torch.dtype], Tensor],
    target_size: Callable[[int], int],
    generator: torch.Generator | None,
    random_ties: bool,
    sync: bool,
    process_group: Any,
    settings: Mapping[str, object],
) -> SyncedMatching | None:
    """Hook of :func:`sinkmatch.losses.distribution_matching_loss`.

    One check (``settings``, the dtypes, whether ``score`` is given, local errors), one gather
    of predictions and scores packed together, one broadcast of rank 0's prior sample of size
    ``target_size(N)`` for the global ``N``, drawn by ``draw(M, device, dtype)``. The prior and
    ``generator`` are used on rank 0 only (other ranks' generators are not advanced).

    Returns:
        SyncedMatching, or ``None`` when not synchronising (see :func:`resolve_group`).

    Raises:
        ValueError: On every rank when no rank holds a prediction.
        DistributedMismatchError: See :func:`check_consistent`; also when rank 0 failed to draw.
    """
    group = resolve_group(sync, process_group)
    if group is None:
        return None
    error, flat, scores = None, None, None
    try:
        if not isinstance(pred, Tensor) or not pred.is_floating_point():
            raise TypeError(f"pred must be a floating torch.Tensor, got {_describe(pred)}")
        flat = pred.reshape(-1)
        if score is not None:
            if not isinstance(score, Tensor) or not score.is_floating_point():
                raise TypeError(f"score must be a floating torch.Tensor, got {_describe(score)}")
            if score.numel() != flat.shape[0]:
                raise ValueError(
                    f"score must have one value per prediction, got pred shape "
                    f"{tuple(pred.shape)} and score shape {tuple(score.shape)}"
                )
            scores = score.detach().reshape(-1)
    except (TypeError, ValueError) as exc:
        error = exc
    checked = dict(settings, loss="distribution_matching_loss")
    rows = _exchange(group, checked, {"pred": flat, "score": scores}, error)
    counts = [r[0] for r in rows]
    if sum(counts) == 0:
        raise ValueError(f"pred must hold at least one prediction on some rank, got {counts}")
    if scores is None:
        all_pred, all_score = _gather(flat, counts, group), None
    else:
        common = torch.promote_types(flat.dtype, scores.dtype)
        both = _gather(torch.stack([flat.to(common), scores.to(common)], 1), counts, group)
        all_pred, all_score = both[:, 0].to(flat.dtype), both[:, 1].to(scores.dtype)
    dtype = torch.float32 if flat.dtype in (torch.float16, torch.bfloat16) else flat.dtype
    m = target_size(all_pred.shape[0])
    target, seed = _broadcast_sample(group, m, dtype, flat.device, draw, generator, random_ties)
    ties_generator = torch.Generator().manual_seed(seed) if random_ties else None
    return SyncedMatching(all_pred, all_score, target, ties_generator)


def _describe(t: object) -> str:
    if isinstance(t, Tensor):
        return f"Tensor(shape={tuple(t.shape)}, dtype={t.dtype})"
    return type(t).__name__
