r"""Which source boxes matter to which target box: a pruning tree with rigorous bounds.

For a target box :math:`T` (points in :math:`[t_{lo}, t_{hi}]`) and a set :math:`S` of sources
(points in :math:`[s_{lo}, s_{hi}]`, log-weights :math:`h_j \le h_{max}`, :math:`n_S` points), every
term of the soft-min sum of a target :math:`x \in T` obeys

.. math::

    \log \sum_{j \in S} e^{h_j - (x - y_j)^2 / \varepsilon}
        \le \overline{U} = h_{max} + \log n_S - \mathrm{gap}(T, S)^2 / \varepsilon,
    \qquad
    \max_{j \in S} \big(h_j - (x - y_j)^2 / \varepsilon\big)
        \ge \underline{L} = h_{max} - \mathrm{far}(T, S)^2 / \varepsilon,

with the gap and the largest distance between the two intervals. The sources of a problem are
the leaves (boxes) of a binary tree over consecutive boxes; a descent from the root keeps, for
every target box, the nodes whose upper bound is within ``log_keep`` of the best lower bound
found so far and splits them, down to the boxes. Every node it drops is recorded in the
*frontier*: the sum of the frontier bounds over the lower bound of the target's total bounds the
relative mass the dropped sources carry, for every target of the box, and holds for any
log-weights (it is re-evaluated each time the kept pairs are reused with new ones).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from sinkmatch.onedim.layout import Line, segment_max

__all__ = ["BoxTree", "Frontier", "descend"]


@dataclass
class BoxTree:
    """Static part of the tree over the source boxes (all problems, in order).

    Attributes:
        lo, hi (list of (K_l,) Tensor): Smallest / largest source position per node and level.
        log_count (list of (K_l,) Tensor): Log number of sources per node.
        prob_lo, prob_hi (list of (K_l,) int64 Tensor): Range of problems a node covers
            (``prob_lo > prob_hi`` marks padding).
    """

    lo: list[Tensor]
    hi: list[Tensor]
    log_count: list[Tensor]
    prob_lo: list[Tensor]
    prob_hi: list[Tensor]

    @property
    def depth(self) -> int:
        return len(self.lo)

    @staticmethod
    def build(src: Line) -> BoxTree:
        """The tree of a source line's boxes."""
        lo = [src.pos[src.box_start]]
        hi = [src.pos[src.box_end - 1]]
        cnt = [src.box_size.to(src.pos.dtype).log()]
        plo, phi = [src.box_prob], [src.box_prob]
        while lo[-1].numel() > 1:
            lo.append(_pair_reduce(lo[-1], math.inf, torch.minimum))
            hi.append(_pair_reduce(hi[-1], -math.inf, torch.maximum))
            cnt.append(_pair_reduce(cnt[-1], -math.inf, torch.logaddexp))
            big = int(src.offsets.numel())
            plo.append(_pair_reduce(plo[-1], big, torch.minimum))
            phi.append(_pair_reduce(phi[-1], -1, torch.maximum))
        return BoxTree(lo, hi, cnt, plo, phi)

    def hmax_levels(self, box_hmax: Tensor) -> list[Tensor]:
        """Largest log-weight per node and level, from the per-box maxima."""
        out = [box_hmax]
        for _ in range(1, self.depth):
            out.append(_pair_reduce(out[-1], -math.inf, torch.maximum))
        return out


def _pair_reduce(v: Tensor, pad, op) -> Tensor:
    """Combine nodes ``2k`` and ``2k + 1`` (padding an odd level with ``pad``)."""
    if v.numel() % 2:
        v = torch.cat([v, v.new_full((1,), pad)])
    v = v.view(-1, 2)
    return op(v[:, 0], v[:, 1])


@dataclass
class Frontier:
    """Dropped (target box, node) pairs: ``level[k]``, ``node[k]`` for target box ``tbox[k]``."""

    tbox: Tensor
    level: Tensor
    node: Tensor


def _bounds(tree: BoxTree, hmax: list[Tensor], level: int, node: Tensor, tlo, thi, tprob, eps):
    """Upper bound, lower bound and whether the node is inside the target's problem."""
    plo, phi = tree.prob_lo[level][node], tree.prob_hi[level][node]
    inside = (plo == tprob) & (phi == tprob)
    mixed = (plo <= tprob) & (phi >= tprob) & ~inside
    lo, hi = tree.lo[level][node], tree.hi[level][node]
    hm = hmax[level][node]
    gap = torch.clamp(torch.maximum(lo - thi, tlo - hi), min=0.0)
    ub = hm + tree.log_count[level][node] - gap * gap / eps
    ub = torch.where(inside, ub, torch.where(mixed, math.inf, -math.inf))
    far = torch.maximum(thi - lo, hi - tlo)
    lb = torch.where(inside, hm - far * far / eps, -math.inf)
    return ub, lb


def frontier_bound(
    tree: BoxTree, hmax: list[Tensor], fr: Frontier, tgt: Line, log_total: Tensor, eps: float
) -> Tensor:
    """Bound on the relative mass of the dropped sources per target box, (K_T,).

    Args:
        log_total ((K_T,) Tensor): A lower bound on the log of the soft-min sum of every target
            of each box.
    """
    out = torch.zeros(tgt.n_boxes, dtype=tgt.pos.dtype, device=tgt.pos.device)
    if fr.tbox.numel() == 0:
        return out
    tlo = tgt.pos[tgt.box_start][fr.tbox]
    thi = tgt.pos[tgt.box_end - 1][fr.tbox]
    ub = torch.full_like(tlo, -math.inf)
    for level in range(tree.depth):
        sel = fr.level == level
        if bool(sel.any()):
            u, _ = _bounds(
                tree, hmax, level, fr.node[sel], tlo[sel], thi[sel], tgt.box_prob[fr.tbox[sel]], eps
            )
            ub[sel] = u
    return out.index_add_(0, fr.tbox, torch.exp(ub - log_total[fr.tbox]))


def descend(
    tree: BoxTree, hmax: list[Tensor], tgt: Line, eps: float, log_keep: float
) -> tuple[Tensor, Tensor, Frontier, Tensor]:
    r"""Kept (target box, source box) pairs and the frontier of dropped nodes.

    Args:
        tree: Tree over the source boxes.
        hmax: Per-level node maxima of the source log-weights (:meth:`BoxTree.hmax_levels`).
        tgt: Target line.
        eps: ε.
        log_keep: Keep a node while its upper bound is above the best lower bound plus this
            (negative) log ratio.

    Returns:
        tuple: ``tbox``, ``sbox`` ((P,) int64, the kept pairs sorted by target box), the
        frontier, and the best lower bound per target box ((K_T,)).
    """
    device = tgt.pos.device
    n_t = tgt.n_boxes
    t_lo, t_hi = tgt.pos[tgt.box_start], tgt.pos[tgt.box_end - 1]
    top = tree.depth - 1
    cand_t = torch.arange(n_t, device=device)
    cand_n = torch.zeros(n_t, dtype=torch.long, device=device)
    lb_t = torch.full((n_t,), -math.inf, dtype=tgt.pos.dtype, device=device)
    drops_t, drops_l, drops_n = [], [], []
    for level in range(top, -1, -1):
        ub, lb = _bounds(
            tree, hmax, level, cand_n, t_lo[cand_t], t_hi[cand_t], tgt.box_prob[cand_t], eps
        )
        lb_t = torch.maximum(lb_t, segment_max(lb, cand_t, n_t))
        present = ub > -math.inf
        keep = present & (ub >= lb_t[cand_t] + log_keep)
        drop = present & ~keep
        drops_t.append(cand_t[drop])
        drops_n.append(cand_n[drop])
        drops_l.append(torch.full_like(cand_n[drop], level))
        cand_t, cand_n = cand_t[keep], cand_n[keep]
        if level > 0:
            n_child = tree.lo[level - 1].numel()
            cand_t = cand_t.repeat_interleave(2)
            cand_n = (2 * cand_n[:, None] + torch.arange(2, device=device)).flatten()
            ok = cand_n < n_child
            cand_t, cand_n = cand_t[ok], cand_n[ok]
    order = torch.argsort(cand_t * (tree.lo[0].numel() + 1) + cand_n)
    fr = Frontier(torch.cat(drops_t), torch.cat(drops_l), torch.cat(drops_n))
    return cand_t[order], cand_n[order], fr, lb_t
