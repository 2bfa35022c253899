r"""The truncated power law (power law with exponential cut-off) and the Pareto law.

.. math::

    p(c) = \frac{c^{-\alpha} e^{-\lambda c}}{Z}, \quad c \ge x_{\min}, \qquad
    Z = \int_{x_{\min}}^\infty u^{-\alpha} e^{-\lambda u}\,du
      = \lambda^{\alpha-1}\,\Gamma(1-\alpha, \lambda x_{\min}),

for :math:`\alpha > 0, \lambda > 0`, or :math:`\lambda = 0, \alpha > 1` (Pareto). With
:math:`T(c) = \int_c^\infty u^{-\alpha} e^{-\lambda u} du = c^{1-\alpha} e^{-\lambda c}
Q(1-\alpha, \lambda c)` (``Q`` the scaled incomplete gamma of :mod:`._special`) the survival
function is evaluated in logs, without cancellation:

.. math::

    \log(1 - F(c)) = (1-\alpha)\log\frac{c}{x_{\min}} - \lambda (c - x_{\min})
        + \log\frac{Q(1-\alpha, \lambda c)}{Q(1-\alpha, \lambda x_{\min})},

and :math:`F = -\mathrm{expm1}(\log(1-F))`. Reference: Clauset, Shalizi & Newman (2009), "Power-law
distributions in empirical data", SIAM Review 51(4); the prior of Babu Sam et al., CSS-CCNN (2020).

Sampling is exact and vectorized: :math:`[x_{\min}, x_K]` is cut into pieces of width
:math:`0.05/\lambda` (with :math:`x_K \ge 20\alpha/\lambda`), each chosen with its exact mass
(Walker's alias method). Inside a piece we draw :math:`\propto c^{-\alpha}` by inversion and
accept with probability :math:`e^{-\lambda(c - \text{left end})} \ge e^{-0.05}`; the tail
:math:`[x_K, \infty)` is drawn as :math:`x_K + \mathrm{Exp}(\lambda)` accepted with probability
:math:`(c/x_K)^{-\alpha}` (:math:`\ge 95\%` on average). Rejected draws are redrawn, in the same
piece, in vectorized rounds (about 5 rounds for 10^6 draws). Pure power laws (λ = 0) are drawn by
inversion.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from sinkmatch._checks import check_real

from ._special import scaled_gammaincc
from .base import PriorBase, rand64

_PIECE_WIDTH = 0.05  # lambda * width of a body piece: acceptance >= exp(-0.05)
_TAIL_FACTOR = 20.0  # lambda * x_K >= 20 alpha: tail acceptance >= 1/(1 + 1/20)


class TruncatedPowerLaw(PriorBase):
    r"""Power law with exponential cut-off, :math:`p(c) \propto c^{-\alpha} e^{-\lambda c}`.

    Supported on ``c >= x_min``.

    Args:
        alpha: Exponent, > 0 (any value, including alpha <= 1, when ``lam > 0``).
        lam: Cut-off rate, >= 0; ``lam = 0`` (pure power law) needs ``alpha > 1``.
        x_min: Lower end of the support, > 0.

    Example:
        >>> from sinkmatch.priors import TruncatedPowerLaw
        >>> p = TruncatedPowerLaw(2.0, 0.03)
        >>> round(p.cdf(1.0), 12), round(p.cdf(float("inf")), 12)
        (0.0, 1.0)
        >>> abs(p.cdf(p.ppf(0.5)) - 0.5) < 1e-12
        True
    """

    def __init__(self, alpha: float, lam: float, *, x_min: float = 1.0) -> None:
        self.alpha = check_real("alpha", alpha, gt=0)
        self.lam = check_real("lam", lam, ge=0)
        self.x_min = check_real("x_min", x_min, gt=0)
        if self.lam == 0.0 and self.alpha <= 1.0:
            raise ValueError(
                "lam = 0 (pure power law) needs alpha > 1 to be normalizable, got "
                f"alpha={self.alpha!r}"
            )
        self._a = 1.0 - self.alpha
        if self.lam > 0.0:
            q0 = float(scaled_gammaincc(self._a, self.lam * self.x_min))
            self._log_q0 = math.log(q0)
        else:
            self._log_q0 = -math.log(self.alpha - 1.0)
        # log Z = log T(x_min)
        self.log_norm = self._a * math.log(self.x_min) - self.lam * self.x_min + self._log_q0
        self._tables: dict[str, tuple[torch.Tensor, ...]] = {}
        self._np_table: tuple[np.ndarray, ...] | None = None

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(alpha={self.alpha:g}, lam={self.lam:g}, x_min={self.x_min:g})"
        )

    # ------------------------------------------------------------------------------ float64 math
    def _log_sf_finite(self, c: np.ndarray) -> np.ndarray:
        """log(1 - F(c)) for finite c >= x_min."""
        out = self._a * np.log(c / self.x_min) - self.lam * (c - self.x_min)
        if self.lam > 0.0:
            out = out + np.log(scaled_gammaincc(self._a, self.lam * c)) - self._log_q0
        return out

    def _log_sf(self, c: np.ndarray) -> np.ndarray:
        c = np.asarray(c, dtype=np.float64)
        out = np.full(c.shape, np.nan)
        out[c <= self.x_min] = 0.0
        out[c == np.inf] = -np.inf
        mid = (c > self.x_min) & np.isfinite(c)
        if np.any(mid):
            out[mid] = self._log_sf_finite(c[mid])
        return out

    def _sf(self, c: np.ndarray) -> np.ndarray:
        with np.errstate(under="ignore"):
            return np.exp(self._log_sf(c))

    def _cdf(self, c: np.ndarray) -> np.ndarray:
        return 0.0 - np.expm1(self._log_sf(c))  # 0.0 - x: no negative zero

    def _logpdf(self, c: np.ndarray) -> np.ndarray:
        c = np.asarray(c, dtype=np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            out = -self.alpha * np.log(c) - self.lam * c - self.log_norm
        out = np.where(c < self.x_min, -np.inf, out)
        return np.where(c == np.inf, -np.inf, out)

    def _ppf(self, q: np.ndarray) -> np.ndarray:
        q = np.asarray(q, dtype=np.float64)
        out = np.full(q.shape, np.nan)
        out[q == 0.0] = self.x_min
        out[q == 1.0] = np.inf
        mid = (q > 0.0) & (q < 1.0)
        if np.any(mid):
            out[mid] = self._ppf_inner(q[mid])
        return out

    def _ppf_inner(self, q: np.ndarray) -> np.ndarray:
        """Solve log S(c) = log(1 - q) by Newton's method in y = log c.

        ``g(y) = log S(e^y)`` is concave and decreasing (``g'(y) = -1/Q(1-alpha, lam e^y)`` and
        ``Q`` decreases in its argument), so Newton's method started right of the root at an upper
        bound converges monotonically, never overshooting.
        """
        target = np.log1p(-q)
        log_xmin = math.log(self.x_min)
        if self.lam == 0.0:
            return np.exp(log_xmin + target / self._a)
        # upper bounds: the shifted exponential (any alpha) and the Pareto law (alpha > 1)
        y = np.log(self.x_min - target / self.lam)
        if self.alpha > 1.0:
            y = np.minimum(y, log_xmin + target / self._a)
        y = y + 1e-12 * np.maximum(1.0, np.abs(y))
        done = np.zeros(y.shape, dtype=bool)
        for _ in range(200):
            idx = ~done
            yi = y[idx]
            ci = np.exp(yi)
            g = self._log_sf_finite(np.maximum(ci, self.x_min)) - target[idx]
            step = g * scaled_gammaincc(self._a, self.lam * ci)
            y_new = np.maximum(yi + step, log_xmin)
            small = np.abs(y_new - yi) <= 2e-16 * np.maximum(1.0, np.abs(yi))
            y[idx] = y_new
            done[idx] = small
            if done.all():
                break
        return np.exp(y)

    def mean(self) -> float:
        r""":math:`E[C] = x_{\min} Q(2-\alpha, \lambda x_{\min}) / Q(1-\alpha, \lambda x_{\min})`
        (``inf`` for a pure power law with alpha <= 2)."""
        if self.lam == 0.0:
            return (
                math.inf
                if self.alpha <= 2.0
                else self.x_min * (self.alpha - 1.0) / (self.alpha - 2.0)
            )
        z0 = self.lam * self.x_min
        return self.x_min * float(scaled_gammaincc(2.0 - self.alpha, z0)) / math.exp(self._log_q0)

    def partial_mean(self, t: float) -> float:
        r""":math:`E[C\,1\{C < t\}]`, the mean restricted below ``t`` (for head redistribution)."""
        t = float(t)
        if t <= self.x_min:
            return 0.0
        b = 2.0 - self.alpha  # exponent of the integrand c^{1-alpha}: int c^{1-alpha} e^{-lam c}
        if self.lam == 0.0:
            # int_{x_min}^t c^{1-alpha} dc / Z, written with exprel to be exact at alpha = 2
            from scipy.special import exprel

            log_ratio = math.log(t / self.x_min) if math.isfinite(t) else math.inf
            if not math.isfinite(log_ratio):
                return self.mean()
            integral = self.x_min**b * log_ratio * float(exprel(b * log_ratio))
            return integral / math.exp(self.log_norm)
        if not math.isfinite(t):
            return self.mean()
        log_t_min = (
            b * math.log(self.x_min)
            - self.lam * self.x_min
            + math.log(float(scaled_gammaincc(b, self.lam * self.x_min)))
        )
        log_t_t = (
            b * math.log(t) - self.lam * t + math.log(float(scaled_gammaincc(b, self.lam * t)))
        )
        return self.mean() * -math.expm1(log_t_t - log_t_min)

    # -------------------------------------------------------------------------------- sampling
    def _piece_table(self) -> tuple[np.ndarray, ...]:
        """Tables of the piecewise rejection sampler (float64 numpy, built once).

        Returns ``(lo, scale, prob, alias)``, each of length ``k + 1``: left ends of the ``k`` body
        pieces and of the tail (``lo[k] = x_K``); ``scale[i] = expm1((1 - alpha) log(hi_i / lo_i))``
        (``log(hi_i / lo_i)`` when alpha = 1); Walker/Vose alias table of the exact piece masses.
        """
        if self._np_table is None:
            lam, alpha, x_min = self.lam, self.alpha, self.x_min
            x_k = max(x_min, _TAIL_FACTOR * alpha / lam)
            k = math.ceil(lam * (x_k - x_min) / _PIECE_WIDTH) if x_k > x_min else 0
            lo = np.linspace(x_min, x_k, k + 1) if k > 0 else np.array([x_min])
            sf = self._sf(lo)
            mass = np.concatenate([sf[:-1] - sf[1:], sf[-1:]])
            ell = np.log(lo[1:] / lo[:-1])
            scale = ell if self._a == 0.0 else np.expm1(self._a * ell)
            scale = np.concatenate([scale, [0.0]])
            prob, alias = _alias_table(mass / mass.sum())
            self._np_table = (lo, scale, prob, alias)
        return self._np_table

    def _device_table(self, device: torch.device) -> tuple[torch.Tensor, ...]:
        key = str(device)
        if key not in self._tables:
            lo, scale, prob, alias = self._piece_table()
            f64 = {"dtype": torch.float64, "device": device}
            self._tables[key] = (
                torch.as_tensor(lo, **f64),
                torch.as_tensor(scale, **f64),
                torch.as_tensor(prob, **f64),
                torch.as_tensor(alias, dtype=torch.int64, device=device),
            )
        return self._tables[key]

    def _propose(
        self, piece: torch.Tensor, u: torch.Tensor, tables: tuple[torch.Tensor, ...]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One proposal per entry of ``piece`` from uniforms ``u`` (2, m): (values, accepted)."""
        lo_tab, scale_tab, _, _ = tables
        k = lo_tab.numel() - 1
        lo = lo_tab[piece]
        # body pieces: inversion of c^{-alpha} on [lo, hi], accept with exp(-lam (c - lo))
        if self._a == 0.0:
            c = lo * torch.exp(u[0] * scale_tab[piece])
        else:
            c = lo * torch.exp(torch.log1p(u[0] * scale_tab[piece]) / self._a)
        log_acc = self.lam * (lo - c)
        # tail (rare): x_K + Exp(lam), accept with (c / x_K)^{-alpha}
        tail = torch.nonzero(piece == k).squeeze(1)
        if tail.numel() > 0:
            x_k = lo_tab[k]
            c_tail = x_k - torch.log1p(-u[0, tail]) / self.lam
            c[tail] = c_tail
            log_acc[tail] = -self.alpha * torch.log1p((c_tail - x_k) / x_k)
        return c, torch.log(u[1]) < log_acc

    def _sample64(
        self, n: int, generator: torch.Generator | None, device: torch.device
    ) -> torch.Tensor:
        if self.lam == 0.0:
            u = rand64(n, generator, device)
            return self.x_min * torch.exp(torch.log1p(-u) / self._a)
        tables = self._device_table(device)
        _, _, prob, alias = tables
        # The piece of each draw is chosen once, with its exact mass (alias method: the integer part
        # of u * (k + 1) picks a column, its fraction the column's coin); a rejected draw is redrawn
        # inside the same piece (redrawing the piece would favor pieces with higher acceptance).
        v = rand64(n, generator, device) * prob.numel()
        col = v.long().clamp_(max=prob.numel() - 1)
        piece = torch.where(v - col < prob[col], col, alias[col])
        out, acc = self._propose(piece, rand64((2, n), generator, device), tables)
        todo = torch.nonzero(~acc).squeeze(1)  # a few percent of the draws
        while todo.numel() > 0:
            c, acc = self._propose(
                piece[todo], rand64((2, todo.numel()), generator, device), tables
            )
            out[todo[acc]] = c[acc]
            todo = todo[~acc]
        return out


def _alias_table(p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Walker's alias table (Vose's construction) of the probabilities ``p`` (summing to 1)."""
    k = p.size
    scaled = p * k
    prob = np.ones(k)
    alias = np.arange(k)
    small = [i for i in range(k) if scaled[i] < 1.0]
    large = [i for i in range(k) if scaled[i] >= 1.0]
    while small and large:
        s, g = small.pop(), large.pop()
        prob[s], alias[s] = scaled[s], g
        scaled[g] = (scaled[g] + scaled[s]) - 1.0
        (small if scaled[g] < 1.0 else large).append(g)
    return prob, alias


class Pareto(TruncatedPowerLaw):
    r"""Pareto (pure power law), :math:`p(c) = \frac{\alpha-1}{x_{\min}} (c/x_{\min})^{-\alpha}`.

    Supported on ``c >= x_min``.

    The ``lam = 0`` case of :class:`TruncatedPowerLaw`, with closed-form cdf, ppf and sampling.

    Args:
        alpha: Exponent, > 1.
        x_min: Lower end of the support, > 0.

    Example:
        >>> from sinkmatch.priors import Pareto
        >>> Pareto(3.0).mean()
        2.0
    """

    def __init__(self, alpha: float, *, x_min: float = 1.0) -> None:
        alpha = check_real("alpha", alpha, gt=0)
        if alpha <= 1.0:
            raise ValueError(f"Pareto needs alpha > 1 to be normalizable, got alpha={alpha!r}")
        super().__init__(alpha, 0.0, x_min=x_min)

    def __repr__(self) -> str:
        return f"Pareto(alpha={self.alpha:g}, x_min={self.x_min:g})"
