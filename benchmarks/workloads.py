r"""Workloads for the comparison benchmarks (``benchmarks/compare.py``).

Every workload is a list of balanced optimal-transport problems with the squared cost
:math:`C(x, y) = \|x - y\|^2` and uniform weights, plus a *mode* that says how sinkmatch solves
them: ``"single"`` (one problem), ``"groups"`` (the CSS-CCNN++ percentile groups, one grouped call,
loss = sum over groups) or ``"batch"`` (a ragged batch, one padded call, loss = sum over problems).
Anchor libraries that have no grouped/ragged call solve the problems one after the other.

Families (names are parsed by :func:`make_workload`, so a child process can rebuild a workload
bit-for-bit from its name and seed):

``css1d-N`` / ``css1d-NxM``
    The CSS-CCNN workload on the line: ``y`` = samples of the ShanghaiTech Part A count prior
    (truncated power law, :math:`\alpha = 2`, :math:`\lambda` from :math:`C_{f,\max} = 3000`,
    482 images, head redistribution), ``x = max(0.7 \cdot y' + \mathcal{N}(0, 1), 0)`` with ``y'``
    another prior draw: many exact zeros (ties) and a heavy tail. :math:`\varepsilon = 0.1`
    count\ :sup:`2` (largest cost / :math:`\varepsilon \approx 10^5`).
``cssgroups-NxM``
    The CSS-CCNN++ shapes (288 predicted cells vs 1,568 prior samples by default), split into two
    percentile groups: cells below the 30th percentile of a pseudo density are matched to prior
    samples below the prior's own 30th percentile, the rest to the rest. The pseudo density is a
    noisy monotone function of the prediction (``x + N(0, 1)``), so the split has the ties and
    crossings the Canny-based split has.
``ragged-B``
    ``B`` independent CSS problems with ``N_k, M_k`` uniform in [50, 400].
``gauss-dD-nN-eR``
    Two Gaussian clouds in ``D`` dimensions (``x ~ N(0, I)``, ``y ~ N(mu, diag(s^2))`` with a
    shifted mean and anisotropic scales), :math:`\varepsilon = R \times` the median cost.

The count prior comes from :class:`sinkmatch.CountPrior` (the CSV's ``prior_source`` column says
``sinkmatch``; ``none`` for the Gaussian clouds).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np

CSS_EPS = 0.1
CSS_MAX_COUNT = 3000.0
CSS_NUM_IMAGES = 482
CSS_ALPHA = 2.0


@dataclass
class Problem:
    """One balanced OT problem.

    Attributes:
        x ((N, D) float32 ndarray): Source points (the "predictions"; gradients are taken here).
        y ((M, D) float32 ndarray): Target points.
        a ((N,) float64 ndarray): Source weights, sum 1.
        b ((M,) float64 ndarray): Target weights, sum 1.
    """

    x: np.ndarray
    y: np.ndarray
    a: np.ndarray
    b: np.ndarray

    @property
    def n(self) -> int:
        return int(self.x.shape[0])

    @property
    def m(self) -> int:
        return int(self.y.shape[0])

    @property
    def d(self) -> int:
        return int(self.x.shape[1])


@dataclass
class Workload:
    r"""A named list of problems sharing one :math:`\varepsilon`.

    Attributes:
        name: The spec string (``css1d-1568``, ``cssgroups-288x1568``, ...).
        family: ``"css1d"``, ``"cssgroups"``, ``"ragged"`` or ``"gauss"``.
        mode: ``"single"``, ``"groups"`` or ``"batch"`` (see the module docstring).
        eps: Entropic regularization in cost units.
        problems: The problems.
        seed: The seed the workload was built from.
        prior_source: ``"sinkmatch"`` (the count prior) or ``"none"`` (Gaussian clouds).
        info: Free-form extra facts (e.g. the median cost), written to the CSV notes.
    """

    name: str
    family: str
    mode: str
    eps: float
    problems: list[Problem]
    seed: int
    prior_source: str
    info: dict = field(default_factory=dict)

    @property
    def n_total(self) -> int:
        return sum(p.n for p in self.problems)

    @property
    def m_total(self) -> int:
        return sum(p.m for p in self.problems)

    @property
    def d(self) -> int:
        return self.problems[0].d

    @property
    def is_1d(self) -> bool:
        return self.d == 1

    @property
    def entries(self) -> int:
        """Number of cost-matrix entries summed over the problems (``sum N_k M_k``)."""
        return sum(p.n * p.m for p in self.problems)


# ----------------------------------------------------------------------------------------------
# The count prior
# ----------------------------------------------------------------------------------------------


def prior_samples(n: int, *, seed: int) -> np.ndarray:
    """``n`` samples of the CSS-CCNN Part A count prior (float32 draws, as float64) from a seed."""
    import torch

    from sinkmatch.priors import CountPrior

    law = CountPrior.from_max_count(CSS_MAX_COUNT, num_images=CSS_NUM_IMAGES, alpha=CSS_ALPHA)
    s = law.sample(n, generator=torch.Generator().manual_seed(seed))
    return np.asarray(s.numpy(), dtype=np.float64).reshape(n)


def css_pair(n: int, m: int, *, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The CSS-CCNN pair: predictions ``x`` (n,) and prior samples ``y`` (m,), float32.

    ``x = max(0.7 y' + N(0, 1), 0)`` with ``y'`` another prior draw: many exact zeros (ties) and
    a heavy tail.
    """
    y = prior_samples(m, seed=2 * seed + 1)
    x_base = prior_samples(n, seed=2 * seed + 2)
    noise = np.random.default_rng(seed + 7919).standard_normal(n)
    x = np.maximum(0.7 * x_base + noise, 0.0)
    return x.astype(np.float32), y.astype(np.float32)


def _uniform(k: int) -> np.ndarray:
    return np.full(k, 1.0 / k)


def _problem_1d(x: np.ndarray, y: np.ndarray) -> Problem:
    return Problem(x.reshape(-1, 1), y.reshape(-1, 1), _uniform(x.size), _uniform(y.size))


# ----------------------------------------------------------------------------------------------
# Families
# ----------------------------------------------------------------------------------------------


def css1d(n: int, m: int | None = None, *, seed: int = 0) -> Workload:
    """The CSS-CCNN workload on the line, one problem of shape (n, m)."""
    m = n if m is None else m
    x, y = css_pair(n, m, seed=seed)
    name = f"css1d-{n}" if n == m else f"css1d-{n}x{m}"
    info = {"zeros_in_x": float(np.mean(x == 0)), "max_cost_over_eps": _max_cost_1d(x, y) / CSS_EPS}
    return Workload(name, "css1d", "single", CSS_EPS, [_problem_1d(x, y)], seed, "sinkmatch", info)


def css_groups(
    n: int = 288,
    m: int = 1568,
    *,
    quantile: float = 0.3,
    seed: int = 0,
) -> Workload:
    """CSS-CCNN++: two percentile groups (sparse / dense) of an (n, m) CSS problem."""
    x, y = css_pair(n, m, seed=seed)
    pseudo = x + np.random.default_rng(seed + 104729).standard_normal(n).astype(np.float32)
    sparse_x = pseudo < np.quantile(pseudo, quantile)
    sparse_y = y < np.quantile(y, quantile)
    problems = [
        _problem_1d(x[sparse_x], y[sparse_y]),
        _problem_1d(x[~sparse_x], y[~sparse_y]),
    ]
    info = {"group_sizes": [(p.n, p.m) for p in problems], "quantile": quantile}
    return Workload(
        f"cssgroups-{n}x{m}", "cssgroups", "groups", CSS_EPS, problems, seed, "sinkmatch", info
    )


def ragged(num: int = 64, *, low: int = 50, high: int = 400, seed: int = 0) -> Workload:
    """A ragged batch of ``num`` CSS problems with ``N_k, M_k`` uniform in [low, high]."""
    rng = np.random.default_rng(seed + 15485863)
    sizes = rng.integers(low, high + 1, size=(num, 2))
    problems = []
    for k, (n, m) in enumerate(sizes):
        x, y = css_pair(int(n), int(m), seed=1000 * (seed + 1) + k)
        problems.append(_problem_1d(x, y))
    info = {"sizes_min": int(sizes.min()), "sizes_max": int(sizes.max())}
    return Workload(f"ragged-{num}", "ragged", "batch", CSS_EPS, problems, seed, "sinkmatch", info)


def gaussian_clouds(
    n: int, d: int, *, eps_rel: float, m: int | None = None, seed: int = 0
) -> Workload:
    """Two anisotropic Gaussian clouds in ``d`` dimensions, eps = eps_rel x median cost."""
    m = n if m is None else m
    rng = np.random.default_rng(seed + 1000 * d + n)
    x = rng.standard_normal((n, d))
    scales = np.linspace(0.5, 1.5, d)
    y = 1.0 + scales * rng.standard_normal((m, d))
    x, y = x.astype(np.float32), y.astype(np.float32)
    sub = min(n, m, 2048)
    c = ((x[:sub, None, :].astype(np.float64) - y[None, :sub, :]) ** 2).sum(-1)
    med = float(np.median(c))
    eps = eps_rel * med
    name = f"gauss-d{d}-n{n}-e{eps_rel:g}" if n == m else f"gauss-d{d}-n{n}x{m}-e{eps_rel:g}"
    info = {"median_cost": med, "eps_rel": eps_rel, "max_cost_over_eps": float(c.max()) / eps}
    return Workload(
        name, "gauss", "single", eps, [Problem(x, y, _uniform(n), _uniform(m))], seed, "none", info
    )


def _max_cost_1d(x: np.ndarray, y: np.ndarray) -> float:
    lo = min(float(x.min()), float(y.min()))
    hi = max(float(x.max()), float(y.max()))
    return (hi - lo) ** 2


_PATTERNS = [
    (re.compile(r"^css1d-(\d+)(?:x(\d+))?$"), "css1d"),
    (re.compile(r"^cssgroups-(\d+)x(\d+)$"), "cssgroups"),
    (re.compile(r"^ragged-(\d+)$"), "ragged"),
    (re.compile(r"^gauss-d(\d+)-n(\d+)(?:x(\d+))?-e([0-9.eE+-]+)$"), "gauss"),
]


def make_workload(name: str, *, seed: int = 0) -> Workload:
    """Build a workload from its name (see the module docstring for the grammar).

    Raises:
        ValueError: If ``name`` matches no family.
    """
    for pattern, family in _PATTERNS:
        mt = pattern.match(name)
        if mt is None:
            continue
        g = mt.groups()
        if family == "css1d":
            return css1d(int(g[0]), int(g[1]) if g[1] else None, seed=seed)
        if family == "cssgroups":
            return css_groups(int(g[0]), int(g[1]), seed=seed)
        if family == "ragged":
            return ragged(int(g[0]), seed=seed)
        return gaussian_clouds(
            int(g[1]), int(g[0]), m=int(g[2]) if g[2] else None, eps_rel=float(g[3]), seed=seed
        )
    raise ValueError(
        "workload name must look like css1d-N, css1d-NxM, cssgroups-NxM, ragged-B or "
        f"gauss-dD-nN-eR; got {name!r}"
    )


# ----------------------------------------------------------------------------------------------
# Exact references (float64, independent of sinkmatch)
# ----------------------------------------------------------------------------------------------


def exact_1d(
    x: np.ndarray, y: np.ndarray, a: np.ndarray, b: np.ndarray
) -> tuple[float, np.ndarray]:
    r"""Exact W2^2 on the line and its gradient with respect to ``x``, float64.

    The monotone (north-west corner) coupling of the sorted points is optimal. Tied ``x`` values
    are merged first, so a tie group shares the average of the targets it is coupled to: the
    gradient returned is :math:`2 a_i (x_i - T(x_i))` with :math:`T` the barycentric map of that
    coupling, which is also the :math:`\varepsilon \to 0` limit of the entropic gradient (a
    tie-breaking sort would instead give each tied point a different, arbitrary target).

    Args:
        x ((N,) ndarray), y ((M,) ndarray), a ((N,) ndarray), b ((M,) ndarray): The problem.

    Returns:
        (float, (N,) ndarray): :math:`W_2^2` and :math:`\partial W_2^2 / \partial x`.
    """
    x = np.asarray(x, np.float64).ravel()
    y = np.asarray(y, np.float64).ravel()
    a = np.asarray(a, np.float64) / np.sum(a)
    b = np.asarray(b, np.float64) / np.sum(b)
    ux, inv = np.unique(x, return_inverse=True)
    wa = np.bincount(inv, weights=a, minlength=ux.size)
    oy = np.argsort(y, kind="stable")
    ys, wb = y[oy], b[oy]
    ca, cb = np.cumsum(wa), np.cumsum(wb)
    ca[-1] = cb[-1] = 1.0
    t = np.union1d(ca, cb)
    t = t[t > 0]
    mass = np.diff(np.concatenate([[0.0], t]))
    mid = t - 0.5 * mass
    ia = np.minimum(np.searchsorted(ca, mid, side="right"), ux.size - 1)
    jb = np.minimum(np.searchsorted(cb, mid, side="right"), ys.size - 1)
    value = float(np.sum(mass * (ux[ia] - ys[jb]) ** 2))
    ty = np.bincount(ia, weights=mass * ys[jb], minlength=ux.size) / np.maximum(wa, 1e-300)
    grad = 2.0 * a * (x - ty[inv])
    return value, grad


# ----------------------------------------------------------------------------------------------
# Saving / loading (the comparison's parent builds a workload once; its children load it)
# ----------------------------------------------------------------------------------------------


def save_workload(w: Workload, path) -> None:
    """Write a workload to an ``.npz`` file (points, weights and metadata)."""
    import json

    arrays = {}
    for k, p in enumerate(w.problems):
        arrays.update({f"x{k}": p.x, f"y{k}": p.y, f"a{k}": p.a, f"b{k}": p.b})
    meta = {
        "name": w.name,
        "family": w.family,
        "mode": w.mode,
        "eps": w.eps,
        "seed": w.seed,
        "prior_source": w.prior_source,
        "info": w.info,
        "count": len(w.problems),
    }
    np.savez(path, meta=np.array(json.dumps(meta, default=float)), **arrays)


def load_workload(path) -> Workload:
    """Read a workload written by :func:`save_workload`."""
    import json

    with np.load(path) as z:
        meta = json.loads(str(z["meta"]))
        problems = [
            Problem(z[f"x{k}"], z[f"y{k}"], z[f"a{k}"], z[f"b{k}"]) for k in range(meta["count"])
        ]
    return Workload(
        meta["name"],
        meta["family"],
        meta["mode"],
        meta["eps"],
        problems,
        meta["seed"],
        meta["prior_source"],
        meta["info"],
    )
