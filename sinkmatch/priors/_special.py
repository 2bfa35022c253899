r"""The scaled upper incomplete gamma function for any real shape, in float64 numpy.

The truncated power law needs :math:`\Gamma(a, z)` for shapes :math:`a = 1 - \alpha \le 0`
(``scipy.special.gammaincc`` only takes :math:`a > 0`). We evaluate the scaled function

.. math::

    Q(a, z) = z^{-a} e^{z} \Gamma(a, z), \qquad z > 0,

which is of order one wherever it is needed (:math:`Q(a, z) \to -1/a` as :math:`z \to 0` for
:math:`a < 0`, :math:`Q(a, z) \sim 1/z` as :math:`z \to \infty`), so neither under- nor overflows.

Three regimes, each accurate to a few units in the last place of float64:

* :math:`z \ge z_s` (:math:`z_s = \max(2, a + 1)`): Legendre's continued fraction
  :math:`Q = 1/(z + 1 - a - \frac{1 (1 - a)}{z + 3 - a - \dots})`, evaluated by the modified Lentz
  method.
* :math:`z < z_s`, :math:`a > 1/2`: ``gamma(a) * gammaincc(a, z)`` from scipy.
* :math:`z < z_s`, :math:`a \le 1/2`: the power series
  :math:`\Gamma(a, z) = \Gamma(a) - \sum_k (-1)^k z^{a+k} / (k! (a+k))`, where we write
  :math:`a = -n + \delta` with :math:`|\delta| \le 1/2` and combine the two terms that blow up as
  :math:`\delta \to 0` (:math:`\Gamma(a)` and the :math:`k = n` term) analytically:

  .. math::

      \Gamma(a) - \frac{(-1)^n z^{\delta}}{n!\,\delta}
        = \frac{(-1)^n}{n!}\Big[\frac{\Gamma(1+\delta)/P_n(\delta) - 1}{\delta}
          - \frac{z^{\delta} - 1}{\delta}\Big],
      \qquad P_n(\delta) = \prod_{j=1}^{n} (1 - \delta / j),

  both quotients being evaluated with ``exprel`` and a Taylor series of
  :math:`\log\Gamma(1+\delta)`, so integer :math:`a` (e.g. :math:`\alpha = 2`,
  :math:`\Gamma(-1, z)`) and :math:`a` within 1e-12 of an integer are equally accurate.
"""

from __future__ import annotations

import functools
import math

import numpy as np

_EULER = 0.57721566490153286061
_MAX_CF_ITER = 500
_TINY = 1e-300


def _lgamma1p_over(d: float) -> float:
    """``log(Gamma(1 + d)) / d`` for ``|d| <= 1/2`` (its limit ``-euler_gamma`` at ``d = 0``)."""
    from scipy.special import zeta

    s = -_EULER
    p = 1.0  # d ** (k - 1)
    for k in range(2, 200):
        p *= d
        term = (-1) ** k * float(zeta(k)) * p / k
        s += term
        if abs(term) <= 1e-18 * abs(s):
            break
    return s


@functools.lru_cache(maxsize=256)
def _series_constant(a: float) -> tuple[int, float, float]:
    """Split ``a = -n + delta`` and return ``(n, delta, A)`` with ``A = (Γ(1+δ)/P_n(δ) - 1)/δ``."""
    from scipy.special import exprel

    n = max(round(-a), 0)
    delta = a + n
    g = _lgamma1p_over(delta)
    for j in range(1, n + 1):
        # -log1p(-delta/j)/delta, limit 1/j at delta = 0
        g += 1.0 / j if delta == 0.0 else -math.log1p(-delta / j) / delta
    return n, delta, g * float(exprel(delta * g))


def _q_series(a: float, z: np.ndarray) -> np.ndarray:
    """Q(a, z) from the power series, a <= 1/2, 0 <= z < ~2 (z == 0 allowed when a < 0)."""
    from scipy.special import exprel

    n, delta, big_a = _series_constant(a)
    with np.errstate(divide="ignore", invalid="ignore"):
        logz = np.log(z)
        b = logz * exprel(delta * logz)  # (z**delta - 1) / delta
        head = ((-1) ** n / math.factorial(n)) * np.exp(-a * logz) * (big_a - b)
    if a < 0:
        head = np.where(z == 0.0, 0.0, head)
    total = np.zeros_like(z)
    zk = np.ones_like(z)  # z**k / k!
    for k in range(0, 60):
        if k > 0:
            zk = zk * z / k
        if k != n:
            total = total + ((-1) ** k / (a + k)) * zk
        if k > n + 2 and np.all(zk <= 1e-18 * np.abs(total)):
            break
    return np.exp(z) * (head - total)


def _q_cf(a: float, z: np.ndarray) -> np.ndarray:
    """Q(a, z) from Legendre's continued fraction (modified Lentz), z >= max(2, a + 1)."""
    b = z + 1.0 - a
    c = np.full_like(z, 1.0 / _TINY)
    d = 1.0 / b
    h = d.copy()
    done = np.zeros(z.shape, dtype=bool)
    for i in range(1, _MAX_CF_ITER):
        an = -i * (i - a)
        b = b + 2.0
        d = an * d + b
        d = np.where(np.abs(d) < _TINY, _TINY, d)
        c = b + an / c
        c = np.where(np.abs(c) < _TINY, _TINY, c)
        d = 1.0 / d
        delta = d * c
        h = np.where(done, h, h * delta)
        # per-element stopping: once converged, rounding noise must not move h
        done |= np.abs(delta - 1.0) <= 1e-15
        if done.all():
            break
    return h


def _q_scipy(a: float, z: np.ndarray) -> np.ndarray:
    """Q(a, z) for a > 1/2 and moderate z from scipy's regularized function."""
    from scipy.special import gamma, gammaincc

    with np.errstate(divide="ignore"):
        return np.exp(z - a * np.log(z)) * gamma(a) * gammaincc(a, z)


def scaled_gammaincc(a: float, z: np.ndarray | float) -> np.ndarray:
    r"""Scaled upper incomplete gamma function :math:`Q(a, z) = z^{-a} e^z \Gamma(a, z)`.

    Args:
        a: Any real shape (a Python float).
        z ((...) array_like): Non-negative arguments; ``z = 0`` is allowed for ``a < 0``
            (:math:`Q(a, 0) = -1/a`).

    Returns:
        (...) ndarray: float64 values, same shape as ``z``.
    """
    a = float(a)
    z = np.asarray(z, dtype=np.float64)
    out = np.empty_like(z)
    flat_z = z.reshape(-1)
    flat = out.reshape(-1)
    z_switch = max(2.0, a + 1.0)
    large = flat_z >= z_switch
    if np.any(large):
        flat[large] = _q_cf(a, flat_z[large])
    small = ~large
    if np.any(small):
        zs = flat_z[small]
        flat[small] = _q_series(a, zs) if a <= 0.5 else _q_scipy(a, zs)
    return out


def upper_gamma(a: float, z: np.ndarray | float) -> np.ndarray:
    r"""Unscaled :math:`\Gamma(a, z)` for any real ``a`` and ``z > 0`` (float64; may underflow)."""
    z = np.asarray(z, dtype=np.float64)
    with np.errstate(divide="ignore", over="ignore", under="ignore"):
        return np.exp(a * np.log(z) - z) * scaled_gammaincc(a, z)
