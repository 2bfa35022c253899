r"""Adapters: sinkmatch and the anchor libraries (POT, GeomLoss, OTT-JAX) behind one interface.

Each adapter turns a :class:`~benchmarks.workloads.Workload` into a closure ``step()`` that runs
forward **and** backward (the gradient with respect to every ``x``) the way a user of that library
would, and a ``finish(raw)`` that converts what ``step`` returned into a :class:`Solved`: the value
the library reported, the gradients (in the units of :math:`C = \|x - y\|^2`) and the dual
scalings from which :func:`plan_metrics` recomputes, identically for every library, the marginal
errors and the transport cost in float64.

Dual scalings: every adapter reports, per problem, ``(logu, logv)`` such that the plan is

.. math::  \log P_{ij} = \mathrm{logu}_i + \mathrm{logv}_j - C_{ij} / \varepsilon,

or a dense plan when the library returns only that (POT's ε-scaling solver).

Conventions mapped (documented in ``docs/benchmarks.md``):

* **GeomLoss** uses :math:`C_G = \|x - y\|^2 / 2` and :math:`\varepsilon_G = \mathrm{blur}^p`. The
  same
  kernel :math:`e^{-C/\varepsilon}` needs :math:`\varepsilon_G = \varepsilon / 2`, i.e.
  ``blur = sqrt(eps / 2)``; its value and potentials are in half units and are doubled. Its
  ε-scaling runs ONE symmetric Sinkhorn update per ε level from ``diameter^2`` down to ``blur^2``,
  dividing ε by ``scaling^2`` each time; ``n_iter`` counts those levels (plus the final
  extrapolation).
* **POT** gets the cost matrix ``M = C`` and ``reg = eps``; ``sinkhorn2`` returns
  :math:`\langle P, C \rangle` and is differentiated by unrolling (POT's torch backend).
* **OTT-JAX** uses ``PointCloud`` (its ``SqEuclidean`` is :math:`\|x - y\|^2`, no 1/2) with an
  ``Epsilon(target=eps, init, decay)`` schedule; its stopping error is evaluated at the target ε,
  so it cannot stop early at a larger one. ``min_iterations`` is NOT used: OTT stores the error as
  inf before it and reads inf as divergence, stopping right there (measured). The value is
  ``reg_ot_cost``, differentiated implicitly (OTT's default).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from benchmarks.workloads import Workload

# ----------------------------------------------------------------------------------------------
# Results and the common evaluation
# ----------------------------------------------------------------------------------------------


@dataclass
class Solved:
    """What one forward+backward produced, converted to numpy.

    Attributes:
        value: The loss the library returned (summed over problems), in cost units.
        grads: Per problem, ``d value / d x`` as an (N, D) float64 array.
        duals: Per problem, ``("logscale", logu, logv)`` or ``("plan", P)`` or ``None`` (exact
            methods, nothing to evaluate).
        n_iter: Iterations (see each adapter for what it counts), or ``None``.
        notes: Free text for the CSV.
    """

    value: float
    grads: list
    duals: list
    n_iter: int | None = None
    notes: str = ""


@dataclass
class Adapter:
    """One library configuration.

    Attributes:
        name: Unique id used on the command line and in the CSV (``library:variant``).
        library: ``sinkmatch``, ``pot``, ``geomloss``, ``ott``, ``keops``, ``exact``.
        variant: The configuration in words.
        prepare: ``prepare(workload) -> (step, finish)``.
        skip: ``skip(workload) -> reason or None``: combinations not worth running, with the reason.
        exact: The method is exact (no marginal error to evaluate).
    """

    name: str
    library: str
    variant: str
    prepare: Callable[[Workload], tuple[Callable[[], Any], Callable[[Any], Solved]]]
    skip: Callable[[Workload], str | None] = lambda w: None
    exact: bool = False
    extra: dict = field(default_factory=dict)


def plan_metrics(
    x: np.ndarray,
    y: np.ndarray,
    a: np.ndarray,
    b: np.ndarray,
    eps: float,
    dual: tuple,
    *,
    chunk_entries: int = 1 << 22,
    log_floor: float = -80.0,
) -> dict:
    r"""L1 marginal errors and transport cost of a plan, in float64.

    The plan is given by its scalings (``("logscale", logu, logv)``) and evaluated in row chunks;
    in 1-D the points are sorted and (row block, column block) pairs whose rigorous upper bound
    :math:`\max \mathrm{logu} + \max \mathrm{logv} - \min C / \varepsilon` is below
    ``log_floor`` are skipped (together they hold less than ``N M e^{-80}`` of mass), which makes
    N = M = 65,536 affordable. A dense ``("plan", P)`` is summed directly.

    Args:
        x ((N, D) ndarray), y ((M, D) ndarray): Points (the float32 values the solvers saw).
        a ((N,) ndarray), b ((M,) ndarray): Target marginals.
        eps: ε of the problem.
        dual: ``("logscale", logu, logv)`` or ``("plan", P)``.

    Returns:
        dict with ``err_a = Σ_i |P 1 - a|``, ``err_b = Σ_j |P^T 1 - b|``, ``cost = <P, C>``.
    """
    import torch

    x64 = torch.as_tensor(np.asarray(x, np.float64))
    y64 = torch.as_tensor(np.asarray(y, np.float64))
    a64 = torch.as_tensor(np.asarray(a, np.float64))
    b64 = torch.as_tensor(np.asarray(b, np.float64))
    n, m = x64.shape[0], y64.shape[0]
    if dual[0] == "plan":
        p = torch.as_tensor(np.asarray(dual[1], np.float64))
        c = torch.cdist(x64, y64) ** 2 if x64.shape[1] > 1 else (x64 - y64.T) ** 2
        return {
            "err_a": float((p.sum(1) - a64).abs().sum()),
            "err_b": float((p.sum(0) - b64).abs().sum()),
            "cost": float((p * c).sum()),
        }
    logu = torch.as_tensor(np.asarray(dual[1], np.float64))
    logv = torch.as_tensor(np.asarray(dual[2], np.float64))
    one_d = x64.shape[1] == 1
    if one_d:
        ox, oy = torch.argsort(x64[:, 0]), torch.argsort(y64[:, 0])
        x64, a64, logu = x64[ox], a64[ox], logu[ox]
        y64, b64, logv = y64[oy], b64[oy], logv[oy]
    row_sum = torch.zeros(n, dtype=torch.float64)
    col_sum = torch.zeros(m, dtype=torch.float64)
    cost = 0.0
    block = 512
    if one_d and n * m > chunk_entries:
        nb_r, nb_c = math.ceil(n / block), math.ceil(m / block)
        xs, ys = x64[:, 0], y64[:, 0]
        pad_r = nb_r * block - n
        pad_c = nb_c * block - m
        lu = torch.nn.functional.pad(logu, (0, pad_r), value=-math.inf).view(nb_r, block)
        lv = torch.nn.functional.pad(logv, (0, pad_c), value=-math.inf).view(nb_c, block)
        xlo = xs[::block]
        xhi = torch.nn.functional.pad(xs, (0, pad_r), value=float(xs[-1])).view(nb_r, block)[:, -1]
        ylo = ys[::block]
        yhi = torch.nn.functional.pad(ys, (0, pad_c), value=float(ys[-1])).view(nb_c, block)[:, -1]
        gap = torch.clamp(
            torch.maximum(ylo[None, :] - xhi[:, None], xlo[:, None] - yhi[None, :]), min=0
        )
        bound = lu.max(1).values[:, None] + lv.max(1).values[None, :] - gap**2 / eps
        need = bound > log_floor
        # NaN bounds (a solver returned NaN) must be evaluated to propagate the NaN.
        need |= torch.isnan(bound)
        for r in range(nb_r):
            cols = torch.nonzero(need[r]).flatten()
            if cols.numel() == 0:
                continue
            j0, j1 = int(cols.min()) * block, min(int(cols.max() + 1) * block, m)
            i0, i1 = r * block, min((r + 1) * block, n)
            c = (xs[i0:i1, None] - ys[None, j0:j1]) ** 2
            p = torch.exp(logu[i0:i1, None] + logv[None, j0:j1] - c / eps)
            row_sum[i0:i1] += p.sum(1)
            col_sum[j0:j1] += p.sum(0)
            cost += float((p * c).sum())
    else:
        rows = max(1, chunk_entries // max(m, 1))
        for i0 in range(0, n, rows):
            i1 = min(i0 + rows, n)
            xi = x64[i0:i1]
            c = (xi - y64.T) ** 2 if one_d else torch.cdist(xi, y64) ** 2
            p = torch.exp(logu[i0:i1, None] + logv[None, :] - c / eps)
            row_sum[i0:i1] += p.sum(1)
            col_sum += p.sum(0)
            cost += float((p * c).sum())
    return {
        "err_a": float((row_sum - a64).abs().sum()),
        "err_b": float((col_sum - b64).abs().sum()),
        "cost": cost,
    }


# ----------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------


def _torch_problems(w: Workload, *, requires_grad: bool = True):
    import torch

    out = []
    for p in w.problems:
        x = torch.tensor(p.x, dtype=torch.float32, requires_grad=requires_grad)
        y = torch.tensor(p.y, dtype=torch.float32)
        a = torch.tensor(p.a, dtype=torch.float32)
        b = torch.tensor(p.b, dtype=torch.float32)
        out.append((x, y, a, b))
    return out


def _sq_cost(x, y):
    """Dense squared cost (N, M) in torch, differentiable in x."""
    if x.shape[1] == 1:
        return (x - y.T) ** 2
    return ((x[:, None, :] - y[None, :, :]) ** 2).sum(-1)


def _dense_bytes(w: Workload, copies: float) -> float:
    return max(p.n * p.m for p in w.problems) * 4.0 * copies


def _too_big(w: Workload, copies: float, limit_gb: float) -> str | None:
    need = _dense_bytes(w, copies)
    if need > limit_gb * 2**30:
        return f"dense: needs ~{need / 2**30:.1f} GB (> {limit_gb:g} GB cap)"
    return None


def _pad_batch(w: Workload):
    """Problems packed into (B, Nmax, D) / (B, Mmax, D) float32 with zero-weight padding."""
    import torch

    bsz = len(w.problems)
    nmax = max(p.n for p in w.problems)
    mmax = max(p.m for p in w.problems)
    d = w.d
    x = torch.zeros(bsz, nmax, d)
    y = torch.zeros(bsz, mmax, d)
    a = torch.zeros(bsz, nmax)
    b = torch.zeros(bsz, mmax)
    for k, p in enumerate(w.problems):
        x[k, : p.n] = torch.from_numpy(p.x)
        y[k, : p.m] = torch.from_numpy(p.y)
        a[k, : p.n] = torch.from_numpy(p.a.astype(np.float32))
        b[k, : p.m] = torch.from_numpy(p.b.astype(np.float32))
    return x.requires_grad_(True), y, a, b


def _log(v: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore"):
        return np.log(v)


# ----------------------------------------------------------------------------------------------
# Exact 1-D baselines
# ----------------------------------------------------------------------------------------------


def _prep_sort_torch(w: Workload):
    """W2^2 by sorting, N = M uniform: mean((sort x - sort y)^2), torch, forward + backward."""
    import torch

    probs = _torch_problems(w)

    def step():
        for x, _, _, _ in probs:
            x.grad = None
        total = sum(
            ((torch.sort(x[:, 0]).values - torch.sort(y[:, 0]).values) ** 2).mean()
            for x, y, _, _ in probs
        )
        total.backward()
        return total

    def finish(total):
        return Solved(
            float(total.detach()),
            [x.grad.double().numpy() for x, _, _, _ in probs],
            [None] * len(probs),
            None,
        )

    return step, finish


def _skip_sort_torch(w: Workload) -> str | None:
    if not w.is_1d:
        return "1-D only"
    if any(p.n != p.m for p in w.problems):
        return "needs N = M (uniform weights): use exact:sinkmatch"
    return None


def _prep_exact_sinkmatch(w: Workload):
    """sinkmatch.wasserstein_1d(p=2): one call, batched and padded for groups / ragged batches."""
    import torch

    from sinkmatch import wasserstein_1d

    if w.mode == "single":
        x, y, a, b = _torch_problems(w)[0]

        def step():
            x.grad = None
            v = wasserstein_1d(x[:, 0], y[:, 0], a, b, p=2)
            v.backward()
            return v

        def finish(v):
            return Solved(float(v.detach()), [x.grad.double().numpy()], [None], None)

        return step, finish
    xb, yb, ab, bb = _pad_batch(w)

    def step_b():
        xb.grad = None
        v = wasserstein_1d(xb[..., 0], yb[..., 0], ab, bb, p=2).sum()
        v.backward()
        return v

    def finish_b(v):
        g = xb.grad.double().numpy()
        return Solved(
            float(v.detach()),
            [g[k, : p.n] for k, p in enumerate(w.problems)],
            [None] * len(w.problems),
        )

    del torch
    return step_b, finish_b


# ----------------------------------------------------------------------------------------------
# sinkmatch
# ----------------------------------------------------------------------------------------------


def _make_prep_sinkmatch(**kwargs):
    def prep(w: Workload):
        from sinkmatch import sinkhorn

        kw = dict(kwargs)
        if kw.get("init") == "exact1d" and not w.is_1d:
            kw.pop("init")
        if w.mode == "single":
            x, y, a, b = _torch_problems(w)[0]
            xs, ys, as_, bs = x[None], y[None], a[None], b[None]
            leaf = x
        else:
            xs, ys, as_, bs = _pad_batch(w)
            leaf = xs

        def step():
            leaf.grad = None
            res = sinkhorn(xs, ys, as_, bs, eps=w.eps, **kw)
            v = res.value.sum()
            v.backward()
            return v, res

        def finish(out):
            v, res = out
            g = leaf.grad.double().numpy()
            f = res.f.detach().double().numpy()
            gg = res.g.detach().double().numpy()
            eps = float(res.eps)
            grads, duals = [], []
            for k, p in enumerate(w.problems):
                grads.append(g if w.mode == "single" else g[k, : p.n])
                duals.append(
                    ("logscale", _log(p.a) + f[k, : p.n] / eps, _log(p.b) + gg[k, : p.m] / eps)
                )
            n_iter = res.n_iter
            n_iter = int(n_iter.max()) if hasattr(n_iter, "max") else int(n_iter)
            return Solved(
                float(v.detach()),
                grads,
                duals,
                n_iter,
                f"sinkmatch reports converged={bool(res.converged.all())}",
            )

        return step, finish

    return prep


def _prep_sinkmatch_grouped(w: Workload):
    """sinkmatch.grouped_sinkhorn_loss (list form), the CSS-CCNN++ loss API: value, gradient."""
    from sinkmatch import grouped_sinkhorn_loss

    probs = _torch_problems(w)
    xs = [x for x, _, _, _ in probs]
    ys = [y for _, y, _, _ in probs]

    def step():
        for x in xs:
            x.grad = None
        v = grouped_sinkhorn_loss(xs, ys, eps=w.eps, init="exact1d")
        v.backward()
        return v

    def finish(v):
        return Solved(
            float(v.detach()),
            [x.grad.double().numpy() for x in xs],
            [None] * len(xs),
            None,
            "loss API: returns no potentials, marginal errors n/a",
        )

    return step, finish


def _skip_sinkmatch_dense(w: Workload) -> str | None:
    if not w.is_1d:
        return "1-D only (multi-D: sinkmatch:default is dense at these sizes)"
    if max(p.n * p.m for p in w.problems) <= 1 << 24:
        return "auto already picks dense here (B·N·M ≤ 2^24)"
    return _too_big(w, 4, 8.0)


def _skip_not_multi(w: Workload) -> str | None:
    if w.mode == "single":
        return "groups / ragged batches only"
    return None if w.is_1d else "1-D only"


# ----------------------------------------------------------------------------------------------
# POT
# ----------------------------------------------------------------------------------------------


def _make_prep_pot(method: str, **kwargs):
    def prep(w: Workload):
        import ot

        probs = _torch_problems(w)

        def step():
            outs = []
            total = 0.0
            for x, y, a, b in probs:
                x.grad = None
                mat = _sq_cost(x, y)
                if method == "sinkhorn_epsilon_scaling":
                    plan, log = ot.bregman.sinkhorn_epsilon_scaling(
                        a, b, mat, w.eps, log=True, warn=False, **kwargs
                    )
                    loss = (mat * plan).sum()
                    outs.append((plan.detach(), log))
                else:
                    loss, log = ot.sinkhorn2(
                        a, b, mat, w.eps, method=method, log=True, warn=False, **kwargs
                    )
                    outs.append((None, log))
                total = total + loss
            total.backward()
            return total, outs

        def finish(out):
            total, outs = out
            grads, duals, iters = [], [], []
            for (x, _, _, _), (plan, log) in zip(probs, outs):
                grads.append(x.grad.double().numpy())
                if plan is not None:
                    duals.append(("plan", plan.double().numpy()))
                elif "log_u" in log:
                    duals.append(
                        (
                            "logscale",
                            log["log_u"].detach().double().numpy(),
                            log["log_v"].detach().double().numpy(),
                        )
                    )
                elif "logu" in log:
                    duals.append(
                        (
                            "logscale",
                            log["logu"].detach().double().numpy(),
                            log["logv"].detach().double().numpy(),
                        )
                    )
                else:
                    duals.append(
                        (
                            "logscale",
                            _log(log["u"].detach().double().numpy()),
                            _log(log["v"].detach().double().numpy()),
                        )
                    )
                iters.append(int(log.get("niter", log.get("n_iter", -1))))
            note = (
                "n_iter = outer ε steps (100 inner max each)"
                if method == "sinkhorn_epsilon_scaling"
                else ""
            )
            return Solved(float(total.detach()), grads, duals, max(iters), note)

        return step, finish

    return prep


# ----------------------------------------------------------------------------------------------
# GeomLoss
# ----------------------------------------------------------------------------------------------


def _make_prep_geomloss(scaling: float):
    def prep(w: Workload):
        import torch
        from geomloss import SamplesLoss
        from geomloss._legacy.sinkhorn_divergence import epsilon_schedule, max_diameter

        blur = math.sqrt(w.eps / 2.0)
        kw = dict(p=2, blur=blur, scaling=scaling, debias=False, backend="tensorized")
        loss_fn = SamplesLoss("sinkhorn", **kw)
        pot_fn = SamplesLoss("sinkhorn", potentials=True, **kw)
        probs = _torch_problems(w)

        def step():
            total = 0.0
            for x, y, a, b in probs:
                x.grad = None
                total = total + 2.0 * loss_fn(a, x, b, y)
            total.backward()
            return total

        def finish(total):
            grads, duals, iters = [], [], []
            for (x, y, a, b), p in zip(probs, w.problems):
                grads.append(x.grad.double().numpy())
                with torch.no_grad():
                    f, g = pot_fn(a, x, b, y)
                f = 2.0 * f.double().numpy().ravel()
                g = 2.0 * g.double().numpy().ravel()
                duals.append(("logscale", _log(p.a) + f / w.eps, _log(p.b) + g / w.eps))
                diam = max_diameter(x.detach(), y)
                iters.append(len(epsilon_schedule(2, diam, blur, scaling)))
            return Solved(
                float(total.detach()), grads, duals, max(iters), "n_iter = ε levels (1 update each)"
            )

        return step, finish

    return prep


# ----------------------------------------------------------------------------------------------
# OTT-JAX
# ----------------------------------------------------------------------------------------------


def _make_prep_ott(
    *, init: float, decay: float, max_iterations: int = 20000, threshold: float = 1e-3
):
    def prep(w: Workload):
        import jax
        import jax.numpy as jnp
        from ott.geometry import epsilon_scheduler, pointcloud
        from ott.solvers import linear

        inner = 10

        # No min_iterations: OTT records the error as inf before min_iterations and its loop
        # reads an inf error as divergence, so it would stop right at min_iterations (measured).
        # Early stopping at a large ε cannot happen anyway: the error is evaluated at the target ε.
        def loss(x, y, a, b):
            sched = epsilon_scheduler.Epsilon(target=w.eps, init=init, decay=decay)
            geom = pointcloud.PointCloud(x, y, epsilon=sched)
            out = linear.solve(
                geom,
                a,
                b,
                threshold=threshold,
                max_iterations=max_iterations,
                inner_iterations=inner,
            )
            return out.reg_ot_cost, (out.f, out.g, out.n_iters)

        vg = jax.jit(jax.value_and_grad(loss, has_aux=True))
        data = [
            (
                jnp.asarray(p.x),
                jnp.asarray(p.y),
                jnp.asarray(p.a, jnp.float32),
                jnp.asarray(p.b, jnp.float32),
            )
            for p in w.problems
        ]

        def step():
            outs = [vg(*d) for d in data]
            jax.block_until_ready(outs)
            return outs

        def finish(outs):
            grads, duals, iters = [], [], []
            total = 0.0
            for (val, (f, g, n_it)), gx in outs:
                total += float(val)
                grads.append(np.asarray(gx, np.float64))
                # OTT: P = exp((f_i + g_j - C_ij) / eps), the weights are inside f, g.
                duals.append(
                    (
                        "logscale",
                        np.asarray(f, np.float64) / w.eps,
                        np.asarray(g, np.float64) / w.eps,
                    )
                )
                iters.append(int(n_it))
            return Solved(total, grads, duals, max(iters), f"ε decay init={init:g} decay={decay:g}")

        return step, finish

    return prep


# ----------------------------------------------------------------------------------------------
# KeOps
# ----------------------------------------------------------------------------------------------


def keops_status() -> str:
    """``"ok"`` when pykeops imports and compiles a reduction here, else the reason."""
    try:
        import pykeops  # noqa: F401
    except ImportError as exc:
        return f"unavailable: pykeops not installed ({exc})"
    try:
        import torch
        from pykeops.torch import LazyTensor

        x = LazyTensor(torch.rand(10, 1, 1))
        (x - LazyTensor(torch.rand(1, 10, 1))).sum_reduction(dim=1)
    except Exception as exc:  # pragma: no cover - depends on the machine's compiler
        return f"unavailable: pykeops does not compile ({type(exc).__name__}: {exc})"
    return "ok"


# ----------------------------------------------------------------------------------------------
# Registry
# ----------------------------------------------------------------------------------------------


def _skip_not_1d(w: Workload) -> str | None:
    return None if w.is_1d else "1-D only"


def _skip_pot(method: str):
    def skip(w: Workload) -> str | None:
        # POT keeps M, K (or the log kernel) and, for autodiff through the loop, a few more
        # N x M tensors: sinkhorn_log unrolls 1000 iterations of N x M logsumexp.
        copies = {
            "sinkhorn": 4,
            "sinkhorn_stabilized": 6,
            "sinkhorn_log": 6,
            "sinkhorn_epsilon_scaling": 6,
        }[method]
        return _too_big(w, copies, 8.0)

    return skip


def _skip_geomloss(w: Workload) -> str | None:
    # tensorized: C_xy, C_yx and the autograd buffers of the last iterations.
    return _too_big(w, 6, 8.0)


def _skip_ott(w: Workload) -> str | None:
    if w.mode == "batch":
        return (
            "measured while building this harness: vmap over the 64 problems padded to 400 with "
            "zero weights takes 86 s for the first (jit) call and 58 s per call after, beyond the "
            "per-case limit; "
            "a loop would compile 64 shapes"
        )
    return None


ADAPTERS: dict[str, Adapter] = {}


def _register(ad: Adapter) -> None:
    ADAPTERS[ad.name] = ad


_register(
    Adapter(
        "exact:sort-torch",
        "exact",
        "torch.sort, mean((sort x - sort y)^2)",
        _prep_sort_torch,
        _skip_sort_torch,
        exact=True,
    )
)
_register(
    Adapter(
        "exact:sinkmatch",
        "exact",
        "sinkmatch.wasserstein_1d(p=2)",
        _prep_exact_sinkmatch,
        _skip_not_1d,
        exact=True,
    )
)
_register(
    Adapter(
        "sinkmatch:default",
        "sinkmatch",
        "sinkhorn(x, y, a, b, eps=eps) defaults",
        _make_prep_sinkmatch(),
    )
)
_register(
    Adapter(
        "sinkmatch:exact1d-init",
        "sinkmatch",
        "sinkhorn(..., init='exact1d')",
        _make_prep_sinkmatch(init="exact1d"),
        _skip_not_1d,
    )
)
_register(
    Adapter(
        "sinkmatch:exact1d-dense",
        "sinkmatch",
        "sinkhorn(..., init='exact1d', backend='dense')",
        _make_prep_sinkmatch(init="exact1d", backend="dense"),
        _skip_sinkmatch_dense,
    )
)
_register(
    Adapter(
        "sinkmatch:grouped-loss",
        "sinkmatch",
        "grouped_sinkhorn_loss(xs, ys, eps=eps, init='exact1d')",
        _prep_sinkmatch_grouped,
        _skip_not_multi,
    )
)
_register(
    Adapter(
        "pot:sinkhorn",
        "pot",
        "sinkhorn2 default (sinkhorn_knopp)",
        _make_prep_pot("sinkhorn"),
        _skip_pot("sinkhorn"),
    )
)
_register(
    Adapter(
        "pot:sinkhorn_log",
        "pot",
        "sinkhorn2(method='sinkhorn_log')",
        _make_prep_pot("sinkhorn_log"),
        _skip_pot("sinkhorn_log"),
    )
)
_register(
    Adapter(
        "pot:sinkhorn_stabilized",
        "pot",
        "sinkhorn2(method='sinkhorn_stabilized')",
        _make_prep_pot("sinkhorn_stabilized"),
        _skip_pot("sinkhorn_stabilized"),
    )
)
_register(
    Adapter(
        "pot:epsilon_scaling",
        "pot",
        "bregman.sinkhorn_epsilon_scaling, loss <P, C>",
        _make_prep_pot("sinkhorn_epsilon_scaling"),
        _skip_pot("sinkhorn_epsilon_scaling"),
    )
)
_register(
    Adapter(
        "geomloss:s0.5",
        "geomloss",
        "SamplesLoss tensorized, scaling=0.5 (default)",
        _make_prep_geomloss(0.5),
        _skip_geomloss,
    )
)
_register(
    Adapter(
        "geomloss:s0.9",
        "geomloss",
        "SamplesLoss tensorized, scaling=0.9",
        _make_prep_geomloss(0.9),
        _skip_geomloss,
    )
)
_register(
    Adapter(
        "geomloss:s0.99",
        "geomloss",
        "SamplesLoss tensorized, scaling=0.99",
        _make_prep_geomloss(0.99),
        _skip_geomloss,
    )
)
_register(
    Adapter(
        "ott:decay",
        "ott",
        "Sinkhorn, Epsilon(init=1e3, decay=0.99), threshold 1e-3",
        _make_prep_ott(init=1e3, decay=0.99),
        _skip_ott,
    )
)
_register(
    Adapter(
        "ott:decay-t1e-4",
        "ott",
        "Sinkhorn, Epsilon(init=1e3, decay=0.99), threshold 1e-4",
        _make_prep_ott(init=1e3, decay=0.99, threshold=1e-4),
        _skip_ott,
    )
)


def get_adapter(name: str) -> Adapter:
    """Look an adapter up by name.

    Raises:
        ValueError: Unknown name (the message lists the known ones).
    """
    try:
        return ADAPTERS[name]
    except KeyError:
        raise ValueError(f"unknown adapter {name!r}; known: {sorted(ADAPTERS)}") from None


def library_versions() -> dict:
    """Versions of every library the comparison can touch (``"absent"`` when not installed).

    Read from the installed distributions' metadata, so nothing heavy (jax, torch) is imported.
    """
    import platform
    from importlib import metadata

    out = {"python": platform.python_version()}
    dists = {
        "torch": "torch",
        "numpy": "numpy",
        "scipy": "scipy",
        "ot": "pot",
        "geomloss": "geomloss",
        "jax": "jax",
        "ott": "ott-jax",
        "pykeops": "pykeops",
        "sinkmatch": "sinkmatch",
    }
    for key, dist in dists.items():
        try:
            out[key] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[key] = "absent"
    if out["sinkmatch"] == "absent":
        import re
        from pathlib import Path

        init = Path(__file__).resolve().parents[1] / "sinkmatch" / "__init__.py"
        found = re.search(r'__version__ = "([^"]+)"', init.read_text()) if init.exists() else None
        out["sinkmatch"] = found.group(1) + " (source tree)" if found else "absent"
    return out
