r"""Flat, sorted, ragged layout of a batch of 1-D point sets, and the box grid on it.

Every problem ``b`` of a batch contributes its points to one flat array, sorted by position
within the problem and grouped problem after problem, so that ragged batches cost what their
points cost (no padding to the largest problem). Points at the same position are merged into
one atom with the summed weight: the soft-min value depends only on the position, so every
solution of the merged problem is the solution of the original one with equal potentials at
equal positions (this is exact, not an approximation).

The grid of a problem has cells of width ``w`` starting at the smallest position of both
sides, so that a target cell and a source cell of the same problem are a whole number of
widths apart. A *box* is the run of points of one side in one non-empty cell; its centre is the
cell centre and its half-width the largest distance of its points to the centre
(:math:`\le w / 2`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["Line", "build_line", "grid_origin", "segment_max"]


def segment_max(values: Tensor, index: Tensor, size: int) -> Tensor:
    """Largest value per segment, ``-inf`` for empty segments.

    Args:
        values ((n,) Tensor): Values.
        index ((n,) int64 Tensor): Segment of every value, in ``[0, size)``.
        size: Number of segments.

    Returns:
        (size,) Tensor: The maxima.
    """
    out = torch.full((size,), -math.inf, dtype=values.dtype, device=values.device)
    return out.scatter_reduce_(0, index, values, "amax", include_self=True)


@dataclass
class Line:
    r"""The sorted atoms of one side of a batch of 1-D problems, with their boxes.

    Attributes:
        pos ((n,) float64 Tensor): Atom positions, sorted within each problem, problems in order.
        prob ((n,) int64 Tensor): Problem of each atom.
        weight ((n,) float64 Tensor): Summed input weight of each atom (zero for atoms made
            only of zero-weight points).
        offsets ((B + 1,) int64 Tensor): Atoms of problem ``b`` are ``offsets[b]:offsets[b+1]``.
        inverse ((B, N) int64 Tensor): Atom of every input point (``-1`` for points left out).
        box ((n,) int64 Tensor): Box of each atom.
        box_start, box_end ((K,) int64 Tensor): Atom range ``[start, end)`` of each box.
        box_center ((K,) float64 Tensor): Cell centre of each box.
        box_half ((K,) float64 Tensor): Largest ``|pos - centre|`` in the box.
        box_prob ((K,) int64 Tensor): Problem of each box.
        box_cell ((K,) int64 Tensor): Cell index of each box in its problem's grid.
        width: Cell width ``w``.
    """

    pos: Tensor
    prob: Tensor
    weight: Tensor
    offsets: Tensor
    inverse: Tensor
    box: Tensor
    box_start: Tensor
    box_end: Tensor
    box_center: Tensor
    box_half: Tensor
    box_prob: Tensor
    box_cell: Tensor
    width: float

    @property
    def n_atoms(self) -> int:
        return int(self.pos.shape[0])

    @property
    def n_boxes(self) -> int:
        return int(self.box_start.shape[0])

    @property
    def box_size(self) -> Tensor:
        """(K,) int64: atoms per box."""
        return self.box_end - self.box_start

    def select(self, keep: Tensor) -> Line:
        """The sub-line of the atoms where ``keep`` ((n,) bool) holds, boxes rebuilt."""
        idx = torch.nonzero(keep).flatten()
        remap = torch.full((self.n_atoms + 1,), -1, dtype=torch.long, device=self.pos.device)
        remap[idx] = torch.arange(idx.numel(), device=idx.device)
        inverse = remap[self.inverse]  # -1 maps to remap[-1] = -1
        counts = torch.bincount(self.prob[idx], minlength=self.offsets.numel() - 1)
        offsets = torch.cat([counts.new_zeros(1), torch.cumsum(counts, 0)])
        origin = self.box_center - (self.box_cell.to(self.pos.dtype) + 0.5) * self.width
        origin_p = torch.zeros(offsets.numel() - 1, dtype=self.pos.dtype, device=idx.device)
        origin_p[self.box_prob] = origin
        return _with_boxes(
            self.pos[idx], self.prob[idx], self.weight[idx], offsets, inverse, origin_p, self.width
        )


def grid_origin(x: Tensor, y: Tensor, mask_x: Tensor, mask_y: Tensor) -> Tensor:
    """Smallest position per problem over the points of both sides that are kept, (B,)."""
    inf = torch.tensor(math.inf, dtype=x.dtype, device=x.device)
    lo_x = torch.where(mask_x, x, inf).amin(1)
    lo_y = torch.where(mask_y, y, inf).amin(1)
    lo = torch.minimum(lo_x, lo_y)
    return torch.where(torch.isfinite(lo), lo, torch.zeros_like(lo))


def build_line(x: Tensor, w: Tensor, mask: Tensor, origin: Tensor, width: float) -> Line:
    r"""Sort, merge and box the kept points of a batch.

    Args:
        x ((B, N) float64 Tensor): Positions.
        w ((B, N) float64 Tensor): Nonnegative weights.
        mask ((B, N) bool Tensor): Points to keep (e.g. positive weight, or all).
        origin ((B,) float64 Tensor): Grid origin per problem (:func:`grid_origin`).
        width: Cell width ``w > 0``.

    Returns:
        Line: The layout.
    """
    batch, n = x.shape
    key = torch.where(mask, x, torch.tensor(math.inf, dtype=x.dtype, device=x.device))
    xs, order = torch.sort(key, dim=1, stable=True)
    ws = w.gather(1, order)
    counts = mask.sum(1)
    valid = torch.arange(n, device=x.device)[None, :] < counts[:, None]
    pos, wt = xs[valid], ws[valid]
    prob = torch.arange(batch, device=x.device)[:, None].expand(batch, n)[valid]
    new = torch.ones_like(pos, dtype=torch.bool)
    if pos.numel() > 1:
        new[1:] = (pos[1:] != pos[:-1]) | (prob[1:] != prob[:-1])
    atom = torch.cumsum(new.long(), 0) - 1
    n_atoms = int(atom[-1]) + 1 if pos.numel() else 0
    weight = torch.zeros(n_atoms, dtype=x.dtype, device=x.device).index_add_(0, atom, wt)
    src = torch.full((batch, n), -1, dtype=torch.long, device=x.device)
    src[valid] = atom
    inverse = torch.full((batch, n), -1, dtype=torch.long, device=x.device)
    inverse.scatter_(1, order, src)
    per_prob = torch.bincount(prob[new], minlength=batch)
    offsets = torch.cat([per_prob.new_zeros(1), torch.cumsum(per_prob, 0)])
    return _with_boxes(pos[new], prob[new], weight, offsets, inverse, origin, width)


def _with_boxes(pos, prob, weight, offsets, inverse, origin, width: float) -> Line:
    """Attach the grid boxes to sorted, merged atoms."""
    cell = torch.floor((pos - origin[prob]) / width).long().clamp_min(0)
    new = torch.ones_like(pos, dtype=torch.bool)
    if pos.numel() > 1:
        new[1:] = (cell[1:] != cell[:-1]) | (prob[1:] != prob[:-1])
    box = torch.cumsum(new.long(), 0) - 1
    starts = torch.nonzero(new).flatten()
    ends = torch.cat([starts[1:], starts.new_tensor([pos.numel()])])
    box_prob, box_cell = prob[starts], cell[starts]
    center = origin[box_prob] + (box_cell.to(pos.dtype) + 0.5) * width
    half = segment_max((pos - center[box]).abs(), box, starts.numel())
    return Line(
        pos=pos,
        prob=prob,
        weight=weight,
        offsets=offsets,
        inverse=inverse,
        box=box,
        box_start=starts,
        box_end=ends,
        box_center=center,
        box_half=half,
        box_prob=box_prob,
        box_cell=box_cell,
        width=float(width),
    )
