r"""Head redistribution: the mass of a prior below a threshold spread uniformly over [0, t].

CSS-CCNN (Babu Sam et al., Sec. 3.1) observes that roughly 30% of the cell counts lie at or below
about 1, while the power law starts at ``x_min = 1``; it moves that much mass of the prior's head
uniformly onto ``[0, t]``. Concretely, the mixture

.. math::

    C \sim \begin{cases} \mathcal U(0, t) & \text{with probability } w = F_{\text{base}}(t),\\
    \text{base conditioned on } C \ge t & \text{otherwise,}\end{cases}

whose CDF is :math:`w\,c/t` on :math:`[0, t]` and :math:`F_{\text{base}}(c)` for :math:`c \ge t`
(total mass is conserved; the CDF at ``t`` is unchanged). Sampling draws from the base and
replaces every draw below ``t`` by an independent :math:`\mathcal U(0, t)` draw, which is exactly
this mixture (and exactly what the original code did).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from sinkmatch._checks import check_real

from .base import Prior, PriorBase, rand64


class HeadRedistributed(PriorBase):
    r"""A base prior with its mass below ``threshold`` spread uniformly over ``[0, threshold]``.

    Args:
        base: Any :class:`Prior` with non-negative support.
        threshold: The cut ``t`` > 0. Default: ``base.ppf(head_mass)``.
        head_mass: Mass to redistribute when ``threshold`` is None, in (0, 1). Ignored otherwise
            (then the redistributed mass is ``base.cdf(threshold)``).

    Attributes:
        threshold (float): ``t``.
        head_weight (float): :math:`w = F_{\text{base}}(t)`, the mass on :math:`[0, t]`.

    Example:
        >>> from sinkmatch.priors import HeadRedistributed, TruncatedPowerLaw
        >>> h = HeadRedistributed(TruncatedPowerLaw(2.0, 0.03), head_mass=0.3)
        >>> round(h.head_weight, 12), round(h.cdf(h.threshold / 2), 12)
        (0.3, 0.15)
    """

    def __init__(self, base: Prior, threshold: float | None = None, head_mass: float = 0.3) -> None:
        if not isinstance(base, Prior):
            raise TypeError(f"base must follow the Prior protocol, got {type(base).__name__}")
        self.base = base
        if threshold is None:
            head_mass = check_real("head_mass", head_mass, gt=0, lt=1)
            threshold = float(base.ppf(head_mass))
            if not (math.isfinite(threshold) and threshold > 0):
                raise ValueError(
                    f"base.ppf(head_mass={head_mass!r}) = {threshold!r} is not a usable "
                    "threshold (need > 0)"
                )
        self.threshold = check_real("threshold", threshold, gt=0)
        self.head_weight = float(base.cdf(self.threshold))

    def __repr__(self) -> str:
        return (
            f"HeadRedistributed({self.base!r}, threshold={self.threshold:.6g}, "
            f"head_weight={self.head_weight:.4g})"
        )

    def _cdf(self, c: np.ndarray) -> np.ndarray:
        t, w = self.threshold, self.head_weight
        head = w * np.clip(c, 0.0, t) / t
        tail = np.asarray(self.base.cdf(np.maximum(c, t)), dtype=np.float64)
        out = np.where(c < t, head, tail)
        return np.where(np.isnan(c), np.nan, out)

    def _sf(self, c: np.ndarray) -> np.ndarray:
        t = self.threshold
        base_sf = getattr(self.base, "sf", None)
        if base_sf is None:
            return 1.0 - self._cdf(c)
        tail = np.asarray(base_sf(np.maximum(c, t)), dtype=np.float64)
        return np.where(c < t, 1.0 - self._cdf(np.minimum(c, t)), tail)

    def _logpdf(self, c: np.ndarray) -> np.ndarray:
        t, w = self.threshold, self.head_weight
        with np.errstate(divide="ignore"):
            head = math.log(w / t) if w > 0 else -math.inf
        tail = np.asarray(self.base.logpdf(np.maximum(c, t)), dtype=np.float64)
        out = np.where(c < t, head, tail)
        out = np.where(c < 0, -np.inf, out)
        return np.where(np.isnan(c), np.nan, out)

    def _ppf(self, q: np.ndarray) -> np.ndarray:
        t, w = self.threshold, self.head_weight
        with np.errstate(divide="ignore", invalid="ignore"):
            head = q * t / w if w > 0 else np.zeros_like(q)
        tail = np.asarray(self.base.ppf(np.clip(q, w, 1.0)), dtype=np.float64)
        return np.where(q <= w, head, tail)

    def _sample64(
        self, n: int, generator: torch.Generator | None, device: torch.device
    ) -> torch.Tensor:
        x = self.base.sample(n, generator=generator, device=device, dtype=torch.float64)
        return redistribute_head(x, self.threshold, generator)

    def mean(self) -> float:
        r""":math:`w t / 2 + E_{\text{base}}[C] - E_{\text{base}}[C\,1\{C < t\}]`."""
        t, w = self.threshold, self.head_weight
        partial = getattr(self.base, "partial_mean", None)
        if partial is not None:
            below = float(partial(t))
        else:  # E[C 1{C<t}] = t F(t) - int_0^t F(c) dc for a law on [0, inf)
            from scipy.integrate import quad

            below = t * w - quad(lambda c: float(self.base.cdf(c)), 0.0, t, limit=200)[0]
        return 0.5 * w * t + float(self.base.mean()) - below


def redistribute_head(
    x: torch.Tensor, threshold: float, generator: torch.Generator | None
) -> torch.Tensor:
    """Replace every entry of ``x`` below ``threshold`` by an independent U(0, threshold) draw.

    Args:
        x ((N,) Tensor): float64 samples.
        threshold: ``t`` > 0.
        generator: Random source (on ``x``'s device when given).

    Returns:
        (N,) Tensor: the redistributed samples (one uniform is drawn per entry, used or not, so the
        generator advances by a fixed amount).
    """
    u = rand64(x.numel(), generator, x.device)
    return torch.where(x < threshold, u * threshold, x)
