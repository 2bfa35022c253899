r"""Legacy mode: the prior exactly as the original CSS-CCNN code computed it.

The original (val-iisc/css-ccnn, ``stage2_main*.py``) used the *unnormalized* function

.. math::

    F_{\text{legacy}}(x) = 1 - \frac{\Gamma(1-\alpha, \lambda x)}{\lambda^{1-\alpha}}
                        = 1 - \int_x^\infty u^{-\alpha} e^{-\lambda u}\,du

(evaluated with mpmath), which is not a CDF: :math:`F_{\text{legacy}}(1) \approx 0.11` instead
of 0 at :math:`x_{\min} = 1`. It then took

* :math:`\lambda` = the first of ``np.arange(0.001, 0.1, 0.001)`` with
  :math:`F_{\text{legacy}}(C_{\max}) > 1 - 1/S`, :math:`C_{\max} = Cf_{\max} / (4 \cdot 4 \cdot 4)`
  (``m, n = 4, 4`` hard-coded although the cells form a 3 x 3 grid, ``S_crop = 4``);
* the threshold :math:`t` = the first of ``np.arange(1.00001, 10, 0.01)`` with
  :math:`F_{\text{legacy}}(t) > 0.28` (``stage2_main++.py``; ``stage2_main.py`` scans
  ``np.arange(1.01, 10, 0.01)`` and rounds to two decimals, which gives the same t to 1e-5);
* samples from the ``powerlaw`` package's ``Truncated_Power_Law`` with ``x_min = 1`` (rejection from
  a shifted exponential, no upper cap), each sample below :math:`t` replaced by
  :math:`\mathcal U(0, t)`.

Here :math:`\Gamma(1-\alpha, z)` is our own float64 evaluation (:mod:`._special`; mpmath is a test
dependency only). Values pinned by the tests (alpha = 2):

| Cf_max | S | legacy λ | legacy t | exact λ (:func:`solve_lambda`, C_max = Cf_max/64) |
|---|---|---|---|---|
| 3000 | 482 | 0.028 | 1.21001 | 0.0295049 |
| 3500 | 482 | 0.022 | 1.24001 | 0.0229826 |
| 12000 | 1500 | 0.006 | 1.34001 | 0.0060887 |

(The values 0.030 / 0.023 / 0.007 quoted for the normalized CDF are the first points of the
0.001 grid above these exact roots.) With the 3 x 3 cell grid that the network actually uses,
``C_max = Cf_max / 36`` and the exact λ are 0.011231 / 0.0085017 / 0.0022336.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from sinkmatch._checks import check_real

from ._special import scaled_gammaincc
from .base import rand64

_LEGACY_LAMBDA_GRID = (0.001, 0.1, 0.001)  # np.arange arguments, as in the original
_LEGACY_THRESHOLD_GRID = (1.00001, 10.0, 0.01)
_LEGACY_THRESHOLD_LEVEL = 0.28
_LEGACY_CELLS = 4 * 4 * 4  # m * n * S_crop in the original


def legacy_cdf(x: np.ndarray | float, alpha: float, lam: float) -> np.ndarray:
    r"""The original's unnormalized :math:`1 - \lambda^{\alpha-1}\Gamma(1-\alpha, \lambda x)`.

    Args:
        x ((...) array_like): Points, > 0.
        alpha: Exponent, > 0.
        lam: Rate, > 0.

    Returns:
        (...) float64 ndarray.
    """
    x = np.asarray(x, dtype=np.float64)
    tail = np.exp((1.0 - alpha) * np.log(x) - lam * x) * scaled_gammaincc(1.0 - alpha, lam * x)
    return 1.0 - tail


def legacy_lambda(cf_max: float, num_images: float, *, alpha: float = 2.0) -> float:
    """λ as the original code chose it (grid search on the unnormalized CDF).

    Args:
        cf_max: Maximum crowd count of a full image, > 0.
        num_images: Number of training images ``S`` (>= 2).
        alpha: Power-law exponent, > 0 (the original's default 2).

    Returns:
        float: The first grid value ``np.arange(0.001, 0.1, 0.001)[k]`` with
        ``legacy_cdf(cf_max / 64) > 1 - 1/S``.

    Raises:
        ValueError: If no grid value qualifies (the original returned ``None``).

    Example:
        >>> from sinkmatch.priors import legacy_lambda
        >>> round(legacy_lambda(3000, 482), 12)
        0.028
    """
    cf_max = check_real("cf_max", cf_max, gt=0)
    num_images = check_real("num_images", num_images)
    if num_images < 2:
        raise ValueError(f"num_images must be >= 2 (CDF target 1 - 1/S), got {num_images!r}")
    alpha = check_real("alpha", alpha, gt=0)
    c_max = cf_max / _LEGACY_CELLS
    grid = np.arange(*_LEGACY_LAMBDA_GRID)
    ok = np.nonzero(legacy_cdf(c_max, alpha, grid) > 1.0 - 1.0 / num_images)[0]
    if ok.size == 0:
        raise ValueError(
            f"no lambda in the legacy grid 0.001..0.099 gives CDF(C_max={c_max:g}) > 1 - 1/S = "
            f"{1.0 - 1.0 / num_images:.6g} (cf_max={cf_max!r} too small for "
            f"num_images={num_images!r})"
        )
    return float(grid[ok[0]])


def legacy_threshold(alpha: float, lam: float) -> float:
    """The head threshold ``t`` as the original code chose it.

    Args:
        alpha: Exponent, > 0.
        lam: Rate, > 0 (typically :func:`legacy_lambda`'s result).

    Returns:
        float: The first of ``np.arange(1.00001, 10, 0.01)`` with ``legacy_cdf(t) > 0.28``.

    Raises:
        ValueError: If no grid value qualifies.

    Example:
        >>> from sinkmatch.priors import legacy_threshold
        >>> round(legacy_threshold(2.0, 0.028), 6)
        1.21001
    """
    alpha = check_real("alpha", alpha, gt=0)
    lam = check_real("lam", lam, gt=0)
    grid = np.arange(*_LEGACY_THRESHOLD_GRID)
    ok = np.nonzero(legacy_cdf(grid, alpha, lam) > _LEGACY_THRESHOLD_LEVEL)[0]
    if ok.size == 0:
        raise ValueError(
            f"no threshold in 1.00001..9.99 has legacy CDF > {_LEGACY_THRESHOLD_LEVEL} for "
            f"alpha={alpha!r}, lam={lam!r}"
        )
    return float(grid[ok[0]])


def legacy_sample64(
    alpha: float,
    lam: float,
    n: int,
    generator: torch.Generator | None,
    device: torch.device,
    *,
    x_min: float = 1.0,
    batch: int = 1 << 21,
) -> torch.Tensor:
    r"""The original sampler, vectorized: :math:`x = x_{\min} + \mathrm{Exp}(\lambda)`, kept with
    probability :math:`(x / x_{\min})^{-\alpha}` (exact truncated power law, no upper cap).

    Its acceptance rate is :math:`\lambda x_{\min} Q(1-\alpha, \lambda x_{\min})`, small for small
    λ (about 2.7% at λ = 0.028, α = 2); the proposals are drawn in batches of at most ``batch``.

    Returns:
        (n,) float64 Tensor on ``device``.
    """
    accept_rate = lam * x_min * float(scaled_gammaincc(1.0 - alpha, lam * x_min))
    parts: list[torch.Tensor] = []
    have = 0
    while have < n:
        m = min(batch, max(1024, math.ceil(1.2 * (n - have) / accept_rate)))
        u = rand64((2, m), generator, device)
        x = x_min - torch.log1p(-u[0]) / lam
        keep = x[u[1] < torch.exp(-alpha * torch.log(x / x_min))]
        parts.append(keep)
        have += keep.numel()
    return torch.cat(parts)[:n]
