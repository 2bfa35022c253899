r"""The soft-min half step for the squared cost on the line, in :math:`O(N + M)` memory.

For sorted targets :math:`x_i` and sources :math:`y_j` with log-weights :math:`h_j` it computes

.. math::

    \ell_i = \log \sum_j e^{h_j - (x_i - y_j)^2 / \varepsilon}
    \quad\text{and}\quad
    \log \sum_j w^{(c)}_j e^{h_j - (x_i - y_j)^2 / \varepsilon}

for a few nonnegative *channels* :math:`w^{(c)}` (moments for barycentric maps and gradients).

**Box pairs.** Both sides are cut into the boxes of one grid of width :math:`w`
(:mod:`sinkmatch.onedim.layout`). A pruning tree (:mod:`sinkmatch.onedim.tree`) keeps, for every
target box :math:`T`, the source boxes :math:`B` that can matter. Each kept pair is summed

* *directly* (every term) when :math:`|T|\,|B| \le \kappa (|T| + |B|)\,p`, or
* by the *separable expansion*: with box centres :math:`x_0, c`, :math:`x = x_0 + u`,
  :math:`y = c + v`, :math:`D = x_0 - c`,

  .. math::

      e^{-(x - y)^2/\varepsilon}
        = e^{-D^2/\varepsilon}\, e^{-(2 D u + u^2)/\varepsilon}\,
          e^{(2 D v - v^2)/\varepsilon}\, e^{2 u v / \varepsilon},

  where only :math:`e^{2uv/\varepsilon}` is truncated,
  :math:`\sum_{n < p} (2uv/\varepsilon)^n / n!`. The source factor (with :math:`h_j`) is
  summed into :math:`p` moments per pair, in the log domain (shifted by the pair's largest
  exponent), and the target factor is applied per target, so that no exponent is large.

**Error bound.** With :math:`z = 2 r_T r_B / \varepsilon` (:math:`r` the half-widths),
:math:`|e^{\xi} - \sum_{n<p} \xi^n/n!| \le z^p e^{z} / p!` for :math:`|\xi| \le z` and
:math:`e^{\xi} \ge e^{-z}`, so every pair sum, hence every target's total (a sum of positive
pair sums), has a relative error of at most

.. math::

    \delta_{\mathrm{exp}} = \max_{\text{pairs}} \frac{z^p}{p!} e^{2z},

and every potential :math:`-\varepsilon \ell_i` an absolute error of at most
:math:`\varepsilon\,(\delta_{\mathrm{exp}} + \delta_{\mathrm{drop}})`, with
:math:`\delta_{\mathrm{drop}}` the tree's bound on the relative mass of the dropped sources. The
grid width and ``p`` are chosen so that :math:`\delta_{\mathrm{exp}}` is below a requested
tolerance; both bounds are computed for the actual boxes and returned with every result.
(Rounding adds a relative error of order :math:`10^{-16} e^{2z}`, negligible for
:math:`z \le 1`.)
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import torch
from torch import Tensor

from sinkmatch.onedim.layout import Line, segment_max
from sinkmatch.onedim.tree import BoxTree, Frontier, descend

__all__ = ["SqTransform", "TransformOut", "expansion_order", "pair_error_bound"]

# A kept pair is expanded when |T| |B| > _DIRECT_FACTOR (|T| + |B|) p.
_DIRECT_FACTOR = 1.0
# Expanded pairs need |D| r_T / eps below this (the per-box shift of the target factor then
# spans < e^{600}); farther pairs (far tails) are summed directly.
_MAX_TILT = 150.0
# Targets / sources per tile of an expanded box.
_TILE = 32
# The descent keeps nodes whose upper bound is within e^{_LOG_KEEP} of the best lower bound.
_LOG_KEEP = math.log(1e-17)
# Order of the box-moment (Gauss transform) expansion; a pair uses it when p^2 plus its share
# of the per-box moments, (|T| + |B|) p / _FGT_SHARE, is the cheapest, and when its error bound
# relative to the target's total is below _FGT_PAIR_SHARE times the kernel tolerance.
_FGT_ORDER = 30
_FGT_SHARE = 8.0
_FGT_PAIR_SHARE = 1.0 / 64
# A frozen plan is rebuilt when a checked call's error bound exceeds the tolerance, or when
# the log-weights moved by more than _MAX_SPREAD (max minus min of h - h_ref in a problem).
_MAX_SPREAD = 500.0


def pair_error_bound(z: Tensor | float, p: int) -> Tensor | float:
    r"""Relative error bound :math:`z^p e^{2z} / p!` of a ``p``-term expansion at ``z``."""
    if isinstance(z, Tensor):
        return z.pow(p) * torch.exp(2.0 * z) / math.factorial(p)
    return z**p * math.exp(2.0 * z) / math.factorial(p)


def expansion_order(z: float, tol: float, p_max: int = 24) -> int:
    """Smallest ``p`` with :func:`pair_error_bound` ``(z, p) <= tol``."""
    for p in range(1, p_max + 1):
        if pair_error_bound(z, p) <= tol:
            return p
    raise ValueError(f"no expansion order <= {p_max} reaches the tolerance {tol!r} at z={z!r}")


def _ranges(starts: Tensor, counts: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Concatenated ``arange(start, start + count)`` per group: ``(values, group, local)``."""
    total = int(counts.sum()) if counts.numel() else 0
    group = torch.repeat_interleave(torch.arange(counts.numel(), device=counts.device), counts)
    local = torch.arange(total, device=counts.device) - (torch.cumsum(counts, 0) - counts)[group]
    return starts[group] + local, group, local


def _csr(rows: Tensor, cols: Tensor, vals: Tensor, shape: tuple[int, int]) -> Tensor:
    """A CSR matrix from entries already sorted by row (and by column within a row)."""
    counts = torch.bincount(rows, minlength=shape[0])
    crow = torch.cat([counts.new_zeros(1), torch.cumsum(counts, 0)])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "sparse CSR support is in beta"
        return torch.sparse_csr_tensor(crow, cols, vals, size=shape, dtype=vals.dtype)


def _first_of_group(owner: Tensor, n_owner: int) -> tuple[Tensor, Tensor]:
    """First index and count of every owner in a list sorted by owner."""
    counts = torch.bincount(owner, minlength=n_owner)
    return torch.cumsum(counts, 0) - counts, counts


@dataclass
class _Plan:
    r"""The soft-min operator frozen at the log-weights ``h_ref``.

    For ``\rho = e^{h - h_{ref}}`` (and channels) the sums are, with ``R = [\rho, \rho w^{(1)},
    ...]``, :math:`F = D R + U_\ell (V_\ell R) + U_g (T_g (V_g R))` (direct terms, separable
    pairs, box-moment pairs: five sparse products) and :math:`\ell_i = s_i + \log F_i`.

    Attributes:
        h_ref ((m,) Tensor): The frozen log-weights.
        row_shift ((n,) Tensor): :math:`s_i`.
        d_op, lead_ops, fgt_ops: The sparse operators (``None`` when a kind has no pairs).
        delta_lead ((K_T,) Tensor): Relative error bound of the separable pairs per target box.
        fgt_err ((P_g,) Tensor), fgt_box ((P_g,) Tensor), fgt_row ((P_g,) Tensor): Per box-moment
            pair, :math:`e^{A - m_T} \rho_p(Z)`, its target box and the ``V_g`` row of its
            source box (to bound its error from the per-call zeroth moments).
        fgt_unit ((n,) Tensor): :math:`e^{\tau_i + m_T - s_i}` (the target factor).
        front_box, front_node, front_static: The frontier of dropped tree nodes: target box,
            flat node index and the ``h``-independent part of its upper bound.
        n_pairs: Box-moment, separable and direct pairs (diagnostics).
    """

    h_ref: Tensor
    row_shift: Tensor
    d_op: Tensor | None
    lead_ops: tuple[Tensor, Tensor] | None
    fgt_ops: tuple[Tensor, Tensor, Tensor] | None
    delta_lead: Tensor
    fgt_err: Tensor
    fgt_box: Tensor
    fgt_row: Tensor
    fgt_unit: Tensor
    front_box: Tensor
    front_node: Tensor
    front_static: Tensor
    n_pairs: tuple[int, int, int]
    fgt_p: int

    def apply(self, r: Tensor) -> tuple[Tensor, Tensor | None]:
        """``F`` ((n, C')) and the zeroth moments of the box-moment source boxes (or ``None``)."""
        out = torch.zeros(self.row_shift.shape[0], r.shape[1], dtype=r.dtype, device=r.device)
        if self.d_op is not None:
            out = out + self.d_op @ r
        if self.lead_ops is not None:
            u_op, v_op = self.lead_ops
            out = out + u_op @ (v_op @ r)
        mu0 = None
        if self.fgt_ops is not None:
            u_op, t_op, v_op = self.fgt_ops
            mom = v_op @ r
            out = out + u_op @ (t_op @ mom)
            mu0 = mom[:: self.fgt_p, 0]
        return out, mu0


@dataclass
class TransformOut:
    r"""A soft-min sum on every target.

    Attributes:
        log_sum ((n,) Tensor): :math:`\ell_i`.
        log_channels ((n, C) Tensor or None): Log channel sums.
        bound ((B,) Tensor or None): Per problem, the largest relative error bound of the
            targets' sums, :math:`\delta_{\mathrm{exp}} + \delta_{\mathrm{drop}}` (``None`` for an
            unchecked call).
    """

    log_sum: Tensor
    log_channels: Tensor | None
    bound: Tensor | None


class SqTransform:
    r"""The soft-min sums from a source line to a target line for the squared cost.

    The pairs and every factor that does not depend on ``h`` are frozen in a plan at the first
    call's log-weights; later calls cost a few sparse products, and a checked call (the default)
    recomputes the error bound for its own ``h`` and plans afresh if it exceeds ``tol`` (or if
    ``h - h_ref`` spans more than ``_MAX_SPREAD`` in a problem).

    Args:
        tgt: Target atoms.
        src: Source atoms (same grid as ``tgt``).
        eps: ε.
        p: Order of the separable expansion.
        tol: Relative error bound to hold.
    """

    def __init__(self, tgt: Line, src: Line, eps: float, p: int, tol: float = 1e-9):
        self.tgt, self.src, self.eps, self.p = tgt, src, float(eps), int(p)
        self.tol = float(tol)
        self.p_fgt = _FGT_ORDER
        self.tree = BoxTree.build(src)
        self._level_sizes = [lv.numel() for lv in self.tree.lo]
        self.plan: _Plan | None = None
        self.n_plans = 0
        self._n_prob = tgt.offsets.numel() - 1
        self._fact = torch.tensor(
            [1.0 / math.factorial(k) for k in range(p)], dtype=src.pos.dtype, device=src.pos.device
        )

    def __call__(self, h: Tensor, channels: Tensor | None = None, *, check: bool = True):
        """Soft-min sums for source log-weights ``h`` ((m,)) and channels ``(m, C) >= 0``."""
        if self.plan is None:
            self.plan = self._make_plan(h)
        out = self._evaluate(h, channels, check)
        if out is None:  # h moved too far from the frozen one: plan afresh
            self.plan = self._make_plan(h)
            out = self._evaluate(h, channels, check, force=True)
        return out

    def _evaluate(self, h: Tensor, channels: Tensor | None, check: bool, force: bool = False):
        plan = self.plan
        both_out = (h == -math.inf) & (plan.h_ref == -math.inf)
        diff = torch.where(both_out, 0.0, h - plan.h_ref)
        if not force and not bool(torch.isfinite(diff).all()):
            return None
        shift = segment_max(diff, self.src.prob, self._n_prob)
        shift = torch.where(torch.isfinite(shift), shift, 0.0)
        low = -segment_max(-diff, self.src.prob, self._n_prob)
        if not force and bool(((shift - low) > _MAX_SPREAD).any()):
            return None
        rho = torch.exp(diff - shift[self.src.prob])[:, None]
        r = rho if channels is None else torch.cat([rho, rho * channels], 1)
        total, mu0 = plan.apply(r)
        log_f = torch.log(total) + (plan.row_shift + shift[self.tgt.prob])[:, None]
        chans = log_f[:, 1:] if channels is not None else None
        if not check:
            return TransformOut(log_f[:, 0], chans, None)
        bound = self._bound(plan, h, total[:, 0], log_f[:, 0], mu0)
        if not force and bool((bound > self.tol).any()):
            return None
        return TransformOut(log_f[:, 0], chans, bound)

    def _bound(self, plan: _Plan, h: Tensor, total: Tensor, log_f: Tensor, mu0) -> Tensor:
        """Per problem, the largest relative error bound over the targets, (B,)."""
        tgt = self.tgt
        fgt_abs = torch.zeros_like(total)
        if mu0 is not None:
            per_box = torch.zeros(tgt.n_boxes, dtype=h.dtype, device=h.device)
            per_box.index_add_(0, plan.fgt_box, plan.fgt_err * mu0[plan.fgt_row])
            fgt_abs = plan.fgt_unit * per_box[tgt.box]
        delta = plan.delta_lead[tgt.box]
        kept = (total - fgt_abs).clamp_min(0.0)
        rel_fgt = fgt_abs * (1.0 + delta) / kept
        log_total = log_f + torch.log(kept / total) - torch.log1p(delta)
        drop = self._drop(plan, h, log_total)
        err = delta + rel_fgt + drop[tgt.box]
        err = torch.where(torch.isnan(err), math.inf, err)
        return segment_max(err, tgt.prob, self._n_prob).clamp_min(0.0)

    def _drop(self, plan: _Plan, h: Tensor, log_total: Tensor) -> Tensor:
        """Relative mass bound of the sources the plan leaves out, per target box."""
        tgt = self.tgt
        out = torch.zeros(tgt.n_boxes, dtype=h.dtype, device=h.device)
        if plan.front_box.numel() == 0:
            return out
        hmax = torch.cat(self.tree.hmax_levels(segment_max(h, self.src.box, self.src.n_boxes)))
        low = -segment_max(-log_total, tgt.box, tgt.n_boxes)  # smallest total in the box
        ub = hmax[plan.front_node] + plan.front_static - low[plan.front_box]
        return out.index_add_(0, plan.front_box, torch.exp(ub))

    def _make_plan(self, h: Tensor) -> _Plan:
        tgt, src, eps = self.tgt, self.src, self.eps
        hmax = self.tree.hmax_levels(segment_max(h, src.box, src.n_boxes))
        tb, sb, fr, _ = descend(self.tree, hmax, tgt, eps, _LOG_KEEP)
        fgt, lead, direct = self._split(h, tb, sb)
        row_shift = torch.maximum(lead.row_top, direct.row_top)
        row_shift = torch.maximum(row_shift, fgt.row_top()).clamp_min(-1e300)
        fgt_ops = fgt.operators(row_shift)
        front_node, front_static = self._frontier_static(fr)
        self.n_plans += 1
        return _Plan(
            h_ref=h,
            row_shift=row_shift,
            d_op=direct.operator(row_shift),
            lead_ops=lead.operators(row_shift),
            fgt_ops=fgt_ops,
            delta_lead=segment_max(lead.delta, lead.tb, tgt.n_boxes).clamp_min(0.0),
            fgt_err=fgt.pair_error(),
            fgt_box=fgt.tb,
            fgt_row=fgt.box_row[fgt.sb] if fgt_ops is not None else fgt.sb,
            fgt_unit=fgt.unit(row_shift),
            front_box=fr.tbox,
            front_node=front_node,
            front_static=front_static,
            n_pairs=(int(fgt.tb.numel()), int(lead.tb.numel()), int(direct.tb.numel())),
            fgt_p=self.p_fgt,
        )

    def _split(self, h: Tensor, tb: Tensor, sb: Tensor):
        """Sort the kept pairs into box-moment, separable and direct pairs (cheapest first)."""
        tgt, src, eps, p, pf = self.tgt, self.src, self.eps, self.p, self.p_fgt
        nt, ns = tgt.box_size[tb], src.box_size[sb]
        dist = tgt.box_center[tb] - src.box_center[sb]
        tilt = dist.abs() * torch.maximum(tgt.box_half[tb], src.box_half[sb]) / eps
        cost_direct = (nt * ns).to(dist.dtype)
        cost_lead = torch.where(tilt <= _MAX_TILT, _DIRECT_FACTOR * (nt + ns) * p, math.inf)
        cost_fgt = pf * pf + (nt + ns) * pf / _FGT_SHARE
        cand = cost_fgt < torch.minimum(cost_direct, cost_lead)
        fgt = _FgtPairs(self, h, tb[cand], sb[cand], pf)
        good = fgt.log_err <= math.log(self.tol * _FGT_PAIR_SHARE)
        fgt.keep(good)
        rest = torch.ones_like(cand)
        rest[torch.nonzero(cand).flatten()[good]] = False
        expand = rest & (cost_lead < cost_direct)
        lead = _LeadPairs(self, h, tb[expand], sb[expand])
        direct = _DirectPairs(self, h, tb[rest & ~expand], sb[rest & ~expand])
        return fgt, lead, direct

    def _frontier_static(self, fr: Frontier) -> tuple[Tensor, Tensor]:
        """Flat node index and ``log count - gap^2 / eps`` of every frontier entry."""
        tgt, tree = self.tgt, self.tree
        starts = torch.tensor([0, *self._level_sizes[:-1]], device=fr.node.device).cumsum(0)
        flat = starts[fr.level] + fr.node
        lo, hi, cnt = (torch.cat(v)[flat] for v in (tree.lo, tree.hi, tree.log_count))
        tlo = tgt.pos[tgt.box_start][fr.tbox]
        thi = tgt.pos[tgt.box_end - 1][fr.tbox]
        gap = torch.clamp(torch.maximum(lo - thi, tlo - hi), min=0.0)
        return flat, cnt - gap * gap / self.eps


class _DirectPairs:
    """Pairs summed term by term: the CSR operator ``D``, entries ``e^{h_j - C_ij/eps - s_i}``."""

    def __init__(self, tr: SqTransform, h: Tensor, tb: Tensor, sb: Tensor):
        tgt, src = tr.tgt, tr.src
        self.tr, self.tb, self.sb = tr, tb, sb
        # per target box, the concatenated source atoms of its direct pairs
        j_list, _, _ = _ranges(src.box_start[sb], src.box_size[sb])
        first, _ = _first_of_group(tb, tgt.n_boxes)
        list_start = torch.cumsum(src.box_size[sb], 0) - src.box_size[sb]
        box_first = torch.zeros(tgt.n_boxes, dtype=torch.long, device=tb.device)
        box_len = torch.zeros_like(box_first).index_add_(0, tb, src.box_size[sb])
        has = box_len > 0
        box_first[has] = list_start[first[has]]
        pos, row, _ = _ranges(box_first[tgt.box], box_len[tgt.box])
        self.i, self.j = row, j_list[pos]
        d = tgt.pos[self.i] - src.pos[self.j]
        self.expo = h[self.j] - d * d / tr.eps
        self.row_top = segment_max(self.expo, self.i, tgt.n_atoms)

    def operator(self, row_shift: Tensor) -> Tensor | None:
        if self.i.numel() == 0:
            return None
        vals = torch.exp(self.expo - row_shift[self.i])
        return _csr(self.i, self.j, vals, (self.tr.tgt.n_atoms, self.tr.src.n_atoms))


class _LeadPairs:
    r"""Pairs summed by the separable expansion, as the CSR operators ``V`` and ``U``.

    ``V`` ((P p, m)): row ``(k, n)`` holds
    :math:`e^{h_j + (2 D_k v_j - v_j^2)/\varepsilon - \sigma_k} (v_j / r_B)^n` over the atoms of
    the source box of pair ``k``. ``U`` ((n_t, P p)): row ``i`` holds, for every pair ``k`` of its
    box, :math:`e^{\sigma_k - D_k^2/\varepsilon - (2 D_k u_i + u_i^2)/\varepsilon - s_i}
    \frac{z_k^n}{n!} (u_i / r_T)^n`.
    """

    def __init__(self, tr: SqTransform, h: Tensor, tb: Tensor, sb: Tensor):
        tgt, src, eps, p = tr.tgt, tr.src, tr.eps, tr.p
        self.tr, self.tb, self.sb = tr, tb, sb
        n_pairs = tb.numel()
        self.dist = tgt.box_center[tb] - src.box_center[sb]
        self.z = 2.0 * tgt.box_half[tb] * src.box_half[sb] / eps
        self.delta = pair_error_bound(self.z, p)
        # source side: (pair, atom) terms
        j, k, _ = _ranges(src.box_start[sb], src.box_size[sb])
        v = src.pos[j] - src.box_center[sb][k]
        s = h[j] + (2.0 * self.dist[k] * v - v * v) / eps
        self.sigma = segment_max(s, k, n_pairs).clamp_min(-1e300)
        w = torch.exp(s - self.sigma[k])
        half_b = src.box_half[sb][k]
        self.src_terms = (k, j, w, v / torch.where(half_b > 0, half_b, 1.0))
        mu0 = torch.zeros(n_pairs, dtype=h.dtype, device=h.device).index_add_(0, k, w)
        # target side: (atom, pair) terms, atom-major
        first, count = _first_of_group(tb, tgt.n_boxes)
        kk, i, _ = _ranges(first[tgt.box], count[tgt.box])
        u = tgt.pos[i] - tgt.box_center[tgt.box[i]]
        self.t_expo = self.sigma[kk] - (self.dist[kk] ** 2 + 2.0 * self.dist[kk] * u + u * u) / eps
        half_t = tgt.box_half[tgt.box[i]]
        self.tgt_terms = (i, kk, u / torch.where(half_t > 0, half_t, 1.0))
        top = self.t_expo + torch.log(mu0[kk]) + self.z[kk]
        self.row_top = segment_max(top, i, tgt.n_atoms)

    def operators(self, row_shift: Tensor) -> tuple[Tensor, Tensor] | None:
        tr, p = self.tr, self.tr.p
        n_pairs = self.tb.numel()
        if n_pairs == 0:
            return None
        ar = torch.arange(p, device=row_shift.device)
        k, j, w, vn = self.src_terms
        # V rows (k, n), columns j: reorder the (k, j) terms to (k, n, j)
        size_k = torch.bincount(k, minlength=n_pairs)
        start_k = torch.cumsum(size_k, 0) - size_k
        table = _powers(vn, p).T * w  # (p, terms), rows contiguous
        v_op = _row_blocks(table, start_k, size_k, tr.src.n_atoms, cols=j)
        i, kk, un = self.tgt_terms
        scale = torch.exp(self.t_expo - row_shift[i])
        coef = (self.z[:, None] ** ar) * tr._fact  # (P, p)
        u_vals = (_powers(un, p) * (scale[:, None] * coef[kk])).flatten()
        rows = i.repeat_interleave(p)
        cols = (kk[:, None] * p + ar).flatten()
        u_op = _csr(rows, cols, u_vals, (tr.tgt.n_atoms, n_pairs * p))
        return u_op, v_op


def _tail_bound(zs: Tensor, p: int) -> Tensor:
    r"""Log of a bound on :math:`\sum_{n \ge p} Z^n / n!`, the remainder of the exponential series.

    :math:`\sum_{n \ge p} Z^n/n! \le \frac{Z^p}{p!} \sum_{k \ge 0} (Z/(p+1))^k
    = \frac{Z^p}{p!\,(1 - Z/(p + 1))}` for :math:`Z < p + 1` (``inf`` otherwise).
    """
    ratio = zs / (p + 1)
    geo = torch.where(ratio < 1, -torch.log1p(-ratio.clamp(max=0.999999)), math.inf)
    return p * torch.log(zs.clamp_min(1e-300)) - math.lgamma(p + 1) + geo


class _FgtPairs:
    r"""Pairs summed through per-box moments and a ``p x p`` translation (a Gauss transform).

    Every source box ``B`` gets a tilt :math:`\beta_B` (the least-squares slope of ``h`` over
    it) and every target box ``T`` a reference :math:`\bar c_T` (the mass-weighted centre of its
    pairs), so that with :math:`x = x_0 + u`, :math:`y = c + v`, :math:`D = x_0 - c`:

    .. math::

        h_j - \frac{(x - y)^2}{\varepsilon} = \alpha_B - \frac{D^2}{\varepsilon}
          + \underbrace{h_j - \alpha_B - \beta_B v - \tfrac{v^2}{\varepsilon}}_{\text{source}}
          + \underbrace{-\tfrac{u^2 + 2 (x_0 - \bar c_T) u}{\varepsilon}}_{\text{target}}
          + \gamma v + \delta u + \kappa u v,

    :math:`\gamma = \beta_B + 2D/\varepsilon`, :math:`\delta = 2 (c - \bar c_T)/\varepsilon`,
    :math:`\kappa = 2/\varepsilon`. The last three terms are expanded,
    :math:`e^{\tilde\gamma \tilde v + \tilde\delta \tilde u + \tilde\kappa \tilde u \tilde v}
    \approx \sum_{a, b < p} C_{ab} \tilde u^a \tilde v^b` (normalized offsets), with remainder
    at most :math:`\rho_p(Z) = Z^p / (p!\,(1 - Z/(p+1)))`,
    :math:`Z = |\tilde\gamma| + |\tilde\delta| + \tilde\kappa` (every monomial of the
    remainder has total degree at least ``p`` in the three terms). With :math:`\mu_0` the source
    box's zeroth moment, the pair's error is at most :math:`e^{A + \tau} \mu_0 \rho_p(Z)` while
    every pair sum is at least :math:`e^{A + \tau} \mu_0 e^{-Z}`, so relative to the target's
    total the error of a pair is bounded by :math:`e^{A}\mu_0 \rho_p(Z)` over
    :math:`\max_{B'} e^{A'} \mu_0' e^{-Z'}` (the target factor :math:`e^{\tau}` cancels). A pair
    is kept here only if that ratio is small.
    """

    def __init__(self, tr: SqTransform, h: Tensor, tb: Tensor, sb: Tensor, p: int):
        tgt, src, eps = tr.tgt, tr.src, tr.eps
        self.tr, self.p = tr, p
        boxes = torch.unique(sb)
        self.src_boxes = boxes
        # source boxes: centre of the extent, tilt, shift, static weights
        lo, hi = src.pos[src.box_start], src.pos[src.box_end - 1]
        self.c = 0.5 * (lo + hi)
        self.r_b = 0.5 * (hi - lo)
        v = src.pos - self.c[src.box]
        self.beta = _ls_slope(h, v, src.box, src.n_boxes)
        sig = h - self.beta[src.box] * v - v * v / eps
        self.alpha = segment_max(sig, src.box, src.n_boxes).clamp_min(-1e300)
        self.w = torch.exp(sig - self.alpha[src.box])
        self.vn = v / torch.where(self.r_b > 0, self.r_b, 1.0)[src.box]
        mu0 = torch.zeros(src.n_boxes, dtype=h.dtype, device=h.device).index_add_(
            0, src.box, self.w
        )
        self.log_mu0 = torch.log(mu0)
        # target boxes: centre of the extent
        tlo, thi = tgt.pos[tgt.box_start], tgt.pos[tgt.box_end - 1]
        self.x0 = 0.5 * (tlo + thi)
        self.r_t = 0.5 * (thi - tlo)
        self._pairs(tb, sb)

    def _pairs(self, tb: Tensor, sb: Tensor) -> None:
        tgt, eps, p = self.tr.tgt, self.tr.eps, self.p
        dist = self.x0[tb] - self.c[sb]
        a_pair = self.alpha[sb] - dist * dist / eps
        scale = a_pair + self.log_mu0[sb]
        top = segment_max(scale, tb, tgt.n_boxes)
        wt = torch.exp(scale - top[tb])
        num = torch.zeros(tgt.n_boxes, dtype=wt.dtype, device=wt.device).index_add_(
            0, tb, wt * self.c[sb]
        )
        den = torch.zeros_like(num).index_add_(0, tb, wt)
        self.cbar = torch.where(den > 0, num / den.clamp_min(1e-300), self.x0)
        gam = (self.beta[sb] + 2.0 * dist / eps) * self.r_b[sb]
        dlt = 2.0 * (self.c[sb] - self.cbar[tb]) * self.r_t[tb] / eps
        kap = 2.0 * self.r_t[tb] * self.r_b[sb] / eps
        zs = gam.abs() + dlt.abs() + kap
        low = segment_max(scale - zs, tb, tgt.n_boxes)  # log lower bound of the total / e^tau
        self.log_err = scale + _tail_bound(zs, p) - low[tb]
        self.tb, self.sb, self.dist, self.a_pair = tb, sb, dist, a_pair
        self.gam, self.dlt, self.kap, self.zs, self.scale = gam, dlt, kap, zs, scale

    def keep(self, mask: Tensor) -> None:
        """Restrict to the pairs where ``mask`` holds (the tilts and references stay)."""
        for name in ("tb", "sb", "dist", "a_pair", "gam", "dlt", "kap", "zs", "scale", "log_err"):
            setattr(self, name, getattr(self, name)[mask])

    def row_top(self) -> Tensor:
        """Per target atom, an upper bound of the log of every pair term (``-inf`` if none)."""
        tgt = self.tr.tgt
        self.m_box = segment_max(self.scale + self.zs, self.tb, tgt.n_boxes)
        u = tgt.pos - self.x0[tgt.box]
        self.tau = -(u * u + 2.0 * (self.x0 - self.cbar)[tgt.box] * u) / self.tr.eps
        self.un = u / torch.where(self.r_t > 0, self.r_t, 1.0)[tgt.box]
        return self.tau + self.m_box[tgt.box]

    def pair_error(self) -> Tensor:
        r"""Per pair, :math:`e^{A - m_T} \rho_p(Z)`: times the source box's zeroth moment and the
        target factor, a bound on the pair's absolute error (in units of :math:`e^{s_i}`)."""
        return torch.exp(self.a_pair - self.m_box[self.tb] + _tail_bound(self.zs, self.p))

    def unit(self, row_shift: Tensor) -> Tensor:
        r""":math:`e^{\tau_i + m_T - s_i}` per target atom (0 outside the boxes used)."""
        if self.tb.numel() == 0:
            return torch.zeros_like(row_shift)
        tgt = self.tr.tgt
        used = torch.zeros(tgt.n_boxes, dtype=torch.bool, device=row_shift.device)
        used[self.tb] = True
        val = torch.exp(self.tau + self.m_box[tgt.box] - row_shift)
        return torch.where(used[tgt.box], val, 0.0)

    def operators(self, row_shift: Tensor) -> tuple[Tensor, Tensor, Tensor] | None:
        """``(U, T, V)`` with the expanded sums ``U (T (V R))``."""
        tr, p = self.tr, self.p
        tgt, src = tr.tgt, tr.src
        if self.tb.numel() == 0:
            return None
        dev = row_shift.device
        # V: rows (B, b) for the source boxes used, columns = the box's atoms
        boxes = torch.unique(self.sb)
        box_row = torch.full((src.n_boxes,), -1, dtype=torch.long, device=dev)
        box_row[boxes] = torch.arange(boxes.numel(), device=dev)
        self.box_row = box_row
        size = src.box_size[boxes]
        table = _powers(self.vn, p).T * self.w  # (p, m), rows contiguous
        v_op = _row_blocks(table, src.box_start[boxes], size, src.n_atoms)
        # T: rows (T, a), columns (B, b); block of pair k: e^{A_k - m_T} C_k
        coef = _translation(self.gam, self.dlt, self.kap, p)  # (P, p, p), [k, a, b]
        coef = coef * torch.exp(self.a_pair - self.m_box[self.tb])[:, None, None]
        tboxes = torch.unique(self.tb)
        trow = torch.full((tgt.n_boxes,), -1, dtype=torch.long, device=dev)
        trow[tboxes] = torch.arange(tboxes.numel(), device=dev)
        first, count = _first_of_group(self.tb, tgt.n_boxes)
        k = torch.arange(self.tb.numel(), device=dev)
        kt = count[self.tb]  # pairs of the pair's target box
        base = (torch.cumsum(count, 0) - count)[self.tb] * p * p  # entries before box T
        ar = torch.arange(p, device=dev)
        pos = (
            base[:, None, None]
            + ar[None, :, None] * (kt * p)[:, None, None]
            + ((k - first[self.tb]) * p)[:, None, None]
            + ar[None, None, :]
        ).flatten()
        cols = (box_row[self.sb][:, None, None] * p + ar[None, None, :]).expand(-1, p, p)
        rows = (trow[self.tb][:, None, None] * p + ar[None, :, None]).expand(-1, p, p)
        flat_v = torch.empty_like(coef.flatten())
        flat_c = torch.empty_like(pos)
        flat_r = torch.empty_like(pos)
        flat_v[pos] = coef.flatten()
        flat_c[pos] = cols.flatten()
        flat_r[pos] = rows.flatten()
        t_op = _csr(flat_r, flat_c, flat_v, (tboxes.numel() * p, boxes.numel() * p))
        # U: rows = target atoms of the boxes used, columns (T, a)
        atoms = torch.nonzero(trow[tgt.box] >= 0).flatten()
        scale = torch.exp(self.tau + self.m_box[tgt.box] - row_shift)[atoms]
        u_vals = (_powers(self.un[atoms], p) * scale[:, None]).flatten()
        u_cols = (trow[tgt.box[atoms]][:, None] * p + ar).flatten()
        u_op = _csr(atoms.repeat_interleave(p), u_cols, u_vals, (tgt.n_atoms, tboxes.numel() * p))
        return u_op, t_op, v_op


def _powers(x: Tensor, p: int) -> Tensor:
    """``[x^0, ..., x^{p-1}]`` per entry, (n, p) (a transposed view of a (p, n) table)."""
    out = torch.empty(p, x.shape[0], dtype=x.dtype, device=x.device)
    out[0] = 1.0
    for k in range(1, p):
        torch.mul(out[k - 1], x, out=out[k])
    return out.T


def _row_blocks(table: Tensor, start: Tensor, size: Tensor, n_cols: int, cols=None) -> Tensor:
    """CSR with rows ``(g, n)`` = ``table[n, start[g] : start[g] + size[g]]``.

    Columns are the item indices themselves, or ``cols[item]`` when given.
    """
    p, n_items = table.shape
    ar = torch.arange(p, device=table.device)
    starts = (start[:, None] + ar[None, :] * n_items).flatten()
    idx, row, loc = _ranges(starts, size.repeat_interleave(p))
    item = start.repeat_interleave(p)[row] + loc
    col = item if cols is None else cols[item]
    crow = torch.cat([size.new_zeros(1), torch.cumsum(size.repeat_interleave(p), 0)])
    shape = (size.numel() * p, n_cols)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "sparse CSR support is in beta"
        return torch.sparse_csr_tensor(crow, col, table.flatten()[idx], size=shape)


def _ls_slope(h: Tensor, v: Tensor, box: Tensor, n_box: int) -> Tensor:
    """Least-squares slope of ``h`` against ``v`` per box (0 where the box has one point)."""
    ones = torch.ones_like(v)
    sums = [
        torch.zeros(n_box, dtype=v.dtype, device=v.device).index_add_(0, box, t)
        for t in (ones, v, h, v * v, v * h)
    ]
    n, sv, sh, svv, svh = sums
    var = svv - sv * sv / n
    cov = svh - sv * sh / n
    ok = var > 1e-12 * torch.clamp(svv, min=1e-300)
    return torch.where(ok, cov / torch.where(ok, var, 1.0), 0.0)


def _translation(gam: Tensor, dlt: Tensor, kap: Tensor, p: int) -> Tensor:
    r"""Coefficients :math:`C_{ab}` of :math:`e^{\gamma v + \delta u + \kappa u v}`, (P, p, p).

    Column ``b + 1`` follows from column ``b``: :math:`(b + 1) C_{a, b+1} = \gamma C_{ab} +
    \kappa C_{a-1, b}`, with :math:`C_{a0} = \delta^a / a!`.
    """
    n = gam.numel()
    out = torch.empty(n, p, p, dtype=gam.dtype, device=gam.device)  # [pair, b, a]
    fact = torch.tensor([math.factorial(k) for k in range(p)], dtype=gam.dtype, device=gam.device)
    out[:, 0, :] = dlt[:, None] ** torch.arange(p, device=gam.device) / fact
    g, k = gam[:, None], kap[:, None]
    for b in range(p - 1):
        col = out[:, b, :]
        nxt = out[:, b + 1, :]
        torch.mul(col, g, out=nxt)
        nxt[:, 1:] += k * col[:, :-1]
        nxt /= b + 1
    return out.transpose(1, 2)
