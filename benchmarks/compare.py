"""Compare sinkmatch with POT, GeomLoss and OTT-JAX on the CSS-CCNN workloads (CSV out).

Every (workload, library configuration) pair runs in its own child process, pinned to one core
(``os.sched_setaffinity``, ``torch.set_num_threads(1)``, ``OMP/MKL/OPENBLAS/XLA`` thread variables
= 1), under a memory cap (``RLIMIT_AS``) and a time limit, so that peak memory (``ru_maxrss`` of
the child) is per case and a crash, an out-of-memory or a timeout of one library is a recorded
row, not the end of the run. Per case the child times forward + backward (the median of a few
repeats after one warm-up call), then recomputes from the returned potentials or plan, in float64
and identically for every library, the L1 marginal errors, the transport cost and its error vs the
exact optimum, and the gradient error vs an exact reference (1-D: the sorted-matching gradient;
multi-D: a tightly converged float64 entropic gradient). The same run measures the physical floor:
one core's ``torch.logsumexp`` throughput over a float32 (N, M) matrix, so that each backend's time
per iteration is reported as a multiple of it.

Usage::

    python benchmarks/compare.py --quick                       # a couple of minutes
    python benchmarks/compare.py                               # full, ~15 minutes
    python benchmarks/compare.py --cases css1d-256 --adapters sinkmatch:default,pot:sinkhorn_log
    python benchmarks/plot_results.py                          # figures + docs/benchmarks.md tables
    python benchmarks/compare.py --onedim                      # the 1-D path's table (issue 12)

Results: ``benchmarks/results/compare_{quick,full}.csv`` (one row per case, with the library
versions, the machine and the date on every row).
"""

from __future__ import annotations

import argparse
import csv
import datetime as _dt
import json
import math
import os
import platform
import re
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

RESULTS = ROOT / "benchmarks" / "results"

FIELDS = [
    "date_utc",
    "cpu",
    "python",
    "torch",
    "numpy",
    "ot",
    "geomloss",
    "jax",
    "ott",
    "pykeops",
    "sinkmatch",
    "workload",
    "family",
    "mode",
    "n",
    "m",
    "d",
    "problems",
    "eps",
    "prior_source",
    "adapter",
    "library",
    "variant",
    "status",
    "reason",
    "time_s",
    "time_first_s",
    "repeats",
    "n_iter",
    "time_per_iter_s",
    "floor_iter_s",
    "floor_ratio",
    "entries_per_s",
    "peak_rss_mb",
    "base_rss_mb",
    "err_a",
    "err_b",
    "converged",
    "value_lib",
    "cost_plan",
    "cost_exact",
    "cost_rel_err",
    "grad_rel_err",
    "grad_ref",
    "notes",
]

THREAD_VARS = (
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "NUMEXPR_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
)

# ----------------------------------------------------------------------------------------------
# Case plans
# ----------------------------------------------------------------------------------------------

ALL_1D = [
    "exact:sort-torch",
    "exact:sinkmatch",
    "sinkmatch:default",
    "sinkmatch:exact1d-init",
    "sinkmatch:exact1d-dense",
    "sinkmatch:grouped-loss",
    "pot:sinkhorn",
    "pot:sinkhorn_log",
    "pot:sinkhorn_stabilized",
    "pot:epsilon_scaling",
    "geomloss:s0.5",
    "geomloss:s0.9",
    "geomloss:s0.99",
    "ott:decay",
    "ott:decay-t1e-4",
]
ALL_MD = [
    "sinkmatch:default",
    "pot:sinkhorn",
    "pot:sinkhorn_log",
    "pot:sinkhorn_stabilized",
    "pot:epsilon_scaling",
    "geomloss:s0.5",
    "geomloss:s0.9",
    "geomloss:s0.99",
    "ott:decay",
    "ott:decay-t1e-4",
]

# Per-size caps (largest N*M per problem) for configurations whose cost is known to explode; the
# reason is written to the CSV. Measured on this machine class (one core): see docs/benchmarks.md.
SIZE_CAPS = {
    "ott:decay-t1e-4": (
        2048**2,
        "killed at the 120 s limit at N = 4,096 in a rehearsal of this run (44 s at 1,568, "
        "~9,000 iterations x N^2): skipped to keep the run near 15 min",
    ),
    "pot:sinkhorn": (
        4096**2,
        "stops at iteration 0 at every size measured (kernel underflow in float32)",
    ),
    "pot:sinkhorn_log": (
        1100**2,
        "autodiff through 1,000 unrolled iterations stores ~2 N x M float32 "
        "per iteration: > 16 GB beyond N = 1,024",
    ),
    "pot:sinkhorn_stabilized": (
        1568**2,
        "NaN values or gradients at every size tried; larger sizes add only time",
    ),
    "pot:epsilon_scaling": (
        1100**2,
        "out of memory at N = 1,024 already (autodiff through every "
        "absorption); larger sizes cannot fit",
    ),
    "geomloss:s0.5": (
        4096**2,
        "tensorized, ~12 ε levels x 2 x N^2 log-sum-exp at the measured floor: > 60 s at "
        "16,384 and 17 GB of N x M buffers at 65,536 (KeOps online backend unavailable)",
    ),
    "geomloss:s0.9": (4096**2, "~55 ε levels x N^2: beyond the per-case time limit above 4,096"),
    "geomloss:s0.99": (
        1024**2,
        "~600 ε levels x N^2: 32 s per call at 1,568 in the quick run; beyond the "
        "per-case time limit above 1,024",
    ),
    "ott:decay": (
        1100**2,
        "OTT's own threshold 1e-3 lands on the 1e-3 line of this check (see the 256 / 1,024 "
        "rows); the tighter variant ott:decay-t1e-4 stands for OTT-JAX at larger sizes",
    ),
}


def plan_cases(quick: bool) -> list[tuple[str, list[str]]]:
    """The (workload, adapters) list of the quick or the full run."""
    if quick:
        return [
            ("css1d-256", ALL_1D),
            (
                "css1d-1568",
                [
                    "exact:sort-torch",
                    "exact:sinkmatch",
                    "sinkmatch:default",
                    "sinkmatch:exact1d-init",
                    "pot:sinkhorn",
                    "geomloss:s0.5",
                ],
            ),
            (
                "cssgroups-288x1568",
                [
                    "exact:sinkmatch",
                    "sinkmatch:default",
                    "sinkmatch:exact1d-init",
                    "geomloss:s0.5",
                    "ott:decay-t1e-4",
                ],
            ),
            ("ragged-64", ["exact:sinkmatch", "sinkmatch:default", "sinkmatch:exact1d-init"]),
            (
                "gauss-d3-n512-e0.05",
                ["sinkmatch:default", "pot:sinkhorn_log", "geomloss:s0.9", "ott:decay-t1e-4"],
            ),
        ]
    cases = [(f"css1d-{n}", ALL_1D) for n in (256, 1024, 1568, 4096, 16384, 65536)]
    cases.append(("cssgroups-288x1568", ALL_1D))
    cases.append(("ragged-64", ALL_1D))
    for d in (2, 3, 64):
        for e in (0.05, 0.005):
            cases.append((f"gauss-d{d}-n1024-e{e:g}", ALL_MD))
    return cases


# Families where an anchor is skipped outright, with the reason.
FAMILY_SKIPS = {
    (
        "gauss",
        "pot:sinkhorn_log",
    ): "N = M = 1,024: autodiff through 1,000 unrolled iterations needs ~8 GB, "
    "as in css1d-1024 (out of memory there)",
    (
        "gauss",
        "pot:epsilon_scaling",
    ): "N = M = 1,024: out of memory in css1d-1024 (autodiff through every absorption)",
    (
        "gauss",
        "pot:sinkhorn_stabilized",
    ): "NaN gradients / values in every 1-D case; skipped to fit the run in ~15 min",
    ("ragged", "pot:sinkhorn_log"): "64 sequential problems x 1,000 unrolled iterations: > 60 s "
    "(23 s for the 2 groups of cssgroups-288x1568)",
    (
        "ragged",
        "pot:epsilon_scaling",
    ): "64 sequential problems: > 60 s (42 s for the 2 groups of cssgroups-288x1568)",
    (
        "ragged",
        "pot:sinkhorn_stabilized",
    ): "NaN gradients in every 1-D case; skipped to fit the run in ~15 min",
    ("ragged", "geomloss:s0.99"): "64 sequential problems x ~600 ε levels: > 60 s",
    (
        "cssgroups",
        "ott:decay",
    ): "OTT's threshold 1e-3 lands on the 1e-3 line of this check; ott:decay-t1e-4 is run",
}


def _cap_reason(adapter: str, workload) -> str | None:
    fam = FAMILY_SKIPS.get((workload.family, adapter))
    if fam:
        return fam
    cap = SIZE_CAPS.get(adapter)
    if cap is None:
        return None
    big = max(p.n * p.m for p in workload.problems)
    if big > cap[0]:
        return cap[1]
    return None


# ----------------------------------------------------------------------------------------------
# Machine facts
# ----------------------------------------------------------------------------------------------


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


# ----------------------------------------------------------------------------------------------
# Child side
# ----------------------------------------------------------------------------------------------


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _child_setup(spec: dict) -> None:
    core = spec.get("core")
    if core is not None and hasattr(os, "sched_setaffinity"):
        try:
            os.sched_setaffinity(0, {int(core)})
        except OSError:
            pass
    cap = int(spec["mem_gb"] * 2**30)
    resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    import torch

    torch.set_num_threads(1)
    torch.set_num_interop_threads(1)


def _on_alarm(signum, frame):
    raise TimeoutError("per-case time limit")


def _median_time(step, budget_s: float, repeats: int):
    t0 = time.perf_counter()
    raw = step()
    t_first = time.perf_counter() - t0
    times = []
    deadline = time.perf_counter() + budget_s - t_first
    if t_first > 1.0:  # slow calls: one timed repeat after the warm-up is enough
        repeats = min(repeats, 1)
    for _ in range(repeats):
        if time.perf_counter() + max(t_first, times[-1] if times else 0.0) > deadline:
            break
        t0 = time.perf_counter()
        raw = step()
        times.append(time.perf_counter() - t0)
    t = statistics.median(times) if times else t_first
    return raw, t, t_first, len(times)


def reference_entropic(
    x,
    y,
    a,
    b,
    eps: float,
    *,
    init=None,
    tol: float = 1e-6,
    max_iter: int = 20000,
    budget_s: float = 120.0,
):
    r"""Tightly converged float64 entropic OT (dense): value and d/dx. Independent of sinkmatch.

    ``tol`` (L1 marginal error) 1e-6: measured, the gradient then differs by < 1e-4 (relative)
    from one at 1e-8,
    two orders below the 1e-3 convergence threshold of the comparison.

    With ``init = (f0, g0)`` (the exact EMD duals) the ε schedule is 8ε, 4ε, 2ε, ε; without, it
    halves ε from the largest cost. At every level two log-domain half-step pairs land the
    potentials, then the scalings iterate on the absorbed kernel
    :math:`\tilde K = e^{(f \oplus g - C)/\varepsilon}` (matrix-vector products, float64), absorbing
    into (f, g) whenever a scaling leaves [1e-100, 1e100]. The gradient is that of
    :math:`\mathrm{OT}_\varepsilon` at the optimum, :math:`2 (a_i x_i - \sum_j P_{ij} y_j)`
    (envelope theorem).

    Returns:
        (value, (N, D) gradient, final L1 error, iterations).
    """
    import torch

    t_end = time.perf_counter() + budget_s
    x = torch.as_tensor(x, dtype=torch.float64)
    y = torch.as_tensor(y, dtype=torch.float64)
    aw = torch.as_tensor(a, dtype=torch.float64)
    bw = torch.as_tensor(b, dtype=torch.float64)
    la, lb = torch.log(aw), torch.log(bw)
    c = torch.cdist(x, y) ** 2
    if init is None:
        f = torch.zeros(c.shape[0], dtype=torch.float64)
        g = torch.zeros(c.shape[1], dtype=torch.float64)
        levels, e = [], float(c.max())
        while e > eps:
            levels.append(e)
            e *= 0.5
    else:
        f, g = (torch.as_tensor(v, dtype=torch.float64).clone() for v in init)
        levels = [8 * eps, 4 * eps, 2 * eps]
    levels.append(eps)
    it, err = 0, float("inf")
    for e in levels:
        level_tol = tol if e == eps else 1e-3
        for _ in range(2):
            f = -e * torch.logsumexp(lb[None, :] + (g[None, :] - c) / e, dim=1)
            g = -e * torch.logsumexp(la[:, None] + (f[:, None] - c) / e, dim=0)
        kern = torch.exp((f[:, None] + g[None, :] - c) / e)
        al, be = aw.clone(), bw.clone()
        for k in range(max_iter):
            al = aw / (kern @ be)
            be = bw / (kern.T @ al)
            it += 1
            if k % 10 == 9:
                err = float((al * (kern @ be) - aw).abs().sum())
                if err < level_tol or time.perf_counter() > t_end:
                    break
                if (
                    float(al.max()) > 1e100
                    or float(be.max()) > 1e100
                    or float(al.min()) < 1e-100
                    or float(be.min()) < 1e-100
                ):
                    f, g = f + e * torch.log(al / aw), g + e * torch.log(be / bw)
                    kern = torch.exp((f[:, None] + g[None, :] - c) / e)
                    al, be = aw.clone(), bw.clone()
        f, g = f + e * torch.log(al / aw), g + e * torch.log(be / bw)
    p = torch.exp(la[:, None] + lb[None, :] + (f[:, None] + g[None, :] - c) / eps)
    err = float((p.sum(1) - aw).abs().sum() + (p.sum(0) - bw).abs().sum())
    grad = 2.0 * (aw[:, None] * x - p @ y)
    value = float((aw * f).sum() + (bw * g).sum())
    return value, grad.numpy(), err, it


def run_reference(spec: dict) -> dict:
    """Exact value / reference gradient per problem of a workload, saved to ``spec['ref']``."""
    import numpy as np

    from benchmarks.workloads import exact_1d, load_workload

    w = load_workload(spec["data"])
    values, grads, kinds, notes = [], [], [], []
    for p in w.problems:
        if w.is_1d:
            v, gr = exact_1d(p.x[:, 0], p.y[:, 0], p.a, p.b)
            values.append(v)
            grads.append(gr.reshape(-1, 1))
            kinds.append("exact sorted matching (ties averaged)")
        else:
            import ot

            c = ot.dist(p.x.astype(np.float64), p.y.astype(np.float64))
            init = None
            if p.n * p.m <= 4096**2:
                _plan, log = ot.emd(p.a, p.b, c, numItermax=10_000_000, log=True)
                values.append(float(log["cost"]))
                init = (log["u"], log["v"])
            else:
                values.append(float("nan"))
            _, gr, err, it = reference_entropic(p.x, p.y, p.a, p.b, w.eps, init=init)
            grads.append(gr)
            kinds.append("float64 entropic (converged)")
            notes.append(f"ref L1 err {err:.1e} after {it} it")
    np.savez(
        spec["ref"],
        values=np.array(values),
        kinds=np.array(kinds),
        **{f"grad{k}": g for k, g in enumerate(grads)},
    )
    return {
        "status": "ok",
        "prior_source": w.prior_source,
        "notes": "; ".join(notes),
        "info": w.info,
    }


def run_floor(spec: dict) -> dict:
    """One core's log-sum-exp throughput (entries / s) for the dense half step, float32."""
    import torch

    out = {}
    for n in spec["sizes"]:
        gen = torch.Generator().manual_seed(0)
        x = torch.rand(n, 1, generator=gen) * 30
        y = torch.rand(n, 1, generator=gen) * 30
        c = (x - y.T) ** 2
        h = torch.randn(n, generator=gen)
        inv_eps = 10.0
        reps = max(3, int(5e7 // (n * n)))
        kmat = torch.exp(-c / c.max())
        v = torch.rand(n, generator=gen)
        for kind in ("precomputed", "fused", "matvec"):

            def once(kind=kind, x=x, y=y, c=c, h=h, inv_eps=inv_eps, kmat=kmat, v=v):
                if kind == "precomputed":
                    return torch.logsumexp(h[None, :] - c * inv_eps, dim=1)
                if kind == "matvec":  # kernel-domain half step (stabilized kernel): K @ v
                    return kmat @ v
                return torch.logsumexp(h[None, :] - (x - y.T) ** 2 * inv_eps, dim=1)

            once()
            ts = []
            for _ in range(reps):
                t0 = time.perf_counter()
                once()
                ts.append(time.perf_counter() - t0)
            t = statistics.median(ts)
            out[f"{kind}:{n}"] = {"time_s": t, "entries_per_s": n * n / t}
    return {"status": "ok", "floor": out}


def run_case(spec: dict) -> dict:
    """Time one adapter on one workload, then evaluate it (inside the pinned, capped child)."""
    import numpy as np

    from benchmarks.anchors import get_adapter, plan_metrics
    from benchmarks.workloads import load_workload

    w = load_workload(spec["data"])
    ref = np.load(spec["ref"])
    ad = get_adapter(spec["adapter"])
    step, finish = ad.prepare(w)
    base = _rss_mb()
    signal.signal(signal.SIGALRM, _on_alarm)
    signal.alarm(max(1, int(spec["time_limit"])))
    try:
        raw, t, t_first, reps = _median_time(step, spec["time_limit"] * 0.6, spec["repeats"])
    except TimeoutError:
        return {
            "status": "timeout",
            "reason": f"no result within the {spec['time_limit']:.0f} s per-case limit",
            "peak_rss_mb": _rss_mb(),
            "base_rss_mb": base,
            "prior_source": w.prior_source,
        }
    finally:
        signal.alarm(0)
    peak = _rss_mb()
    solved = finish(raw)
    out = {
        "status": "ok",
        "time_s": t,
        "time_first_s": t_first,
        "repeats": reps,
        "peak_rss_mb": peak,
        "base_rss_mb": base,
        "n_iter": solved.n_iter,
        "value_lib": solved.value,
        "notes": solved.notes,
        "prior_source": w.prior_source,
    }
    exact_total = float(np.sum(ref["values"]))
    out["cost_exact"] = exact_total
    g_all = np.concatenate([np.asarray(g, np.float64).reshape(-1) for g in solved.grads])
    r_all = np.concatenate([ref[f"grad{k}"].reshape(-1) for k in range(len(w.problems))])
    out["grad_rel_err"] = float(np.linalg.norm(g_all - r_all) / np.linalg.norm(r_all))
    out["grad_ref"] = str(ref["kinds"][0])
    if ad.exact:
        out.update(err_a=0.0, err_b=0.0, converged=True, cost_plan=solved.value)
        out["cost_rel_err"] = abs(solved.value - exact_total) / abs(exact_total)
        return out
    if any(d is None for d in solved.duals):
        out["notes"] = (
            out["notes"] + "; " if out["notes"] else ""
        ) + "no potentials: marginal errors n/a"
        out["converged"] = ""
        return out
    errs_a, errs_b, cost = [], [], 0.0
    for p, dual in zip(w.problems, solved.duals):
        m = plan_metrics(p.x, p.y, p.a, p.b, w.eps, dual)
        errs_a.append(m["err_a"])
        errs_b.append(m["err_b"])
        cost += m["cost"]
    ea, eb = max(errs_a), max(errs_b)
    out.update(err_a=ea, err_b=eb, cost_plan=cost)
    out["converged"] = bool(math.isfinite(ea) and math.isfinite(eb) and ea < 1e-3 and eb < 1e-3)
    out["cost_rel_err"] = (
        abs(cost - exact_total) / abs(exact_total) if math.isfinite(cost) else float("nan")
    )
    return out


def child_main(spec: dict) -> None:
    _child_setup(spec)
    kind = spec["kind"]
    try:
        if kind == "reference":
            res = run_reference(spec)
        elif kind == "floor":
            res = run_floor(spec)
        else:
            res = run_case(spec)
    except MemoryError as exc:
        res = {
            "status": "oom",
            "reason": f"MemoryError under the {spec['mem_gb']:g} GB cap: {exc}"[:300],
        }
    except RuntimeError as exc:
        msg = str(exc)
        oom = "allocate" in msg or "memory" in msg.lower() or "bad_alloc" in msg
        res = {"status": "oom" if oom else "error", "reason": f"{type(exc).__name__}: {msg}"[:300]}
    except Exception as exc:
        res = {"status": "error", "reason": f"{type(exc).__name__}: {exc}"[:300]}
    res["peak_rss_mb_total"] = _rss_mb()
    Path(spec["out"]).write_text(json.dumps(res, default=float))


# ----------------------------------------------------------------------------------------------
# Parent side
# ----------------------------------------------------------------------------------------------


def _spawn(spec: dict, timeout: float) -> dict:
    env = dict(os.environ)
    for var in THREAD_VARS:
        env[var] = "1"
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen=false").strip()
    env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as fh:
        out = fh.name
    spec = dict(spec, out=out)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(spec)]
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        Path(out).unlink(missing_ok=True)
        return {"status": "timeout", "reason": f"killed after {timeout:.0f} s (per-case limit)"}
    wall = time.perf_counter() - t0
    text = Path(out).read_text() if Path(out).exists() else ""
    Path(out).unlink(missing_ok=True)
    if proc.returncode != 0 or not text:
        tail = (proc.stderr or "").strip().splitlines()[-3:]
        sig = -proc.returncode if proc.returncode < 0 else None
        joined = " | ".join(tail)
        oom = sig == 9 or "MemoryError" in joined or "bad_alloc" in joined or "allocate" in joined
        return {
            "status": "oom" if oom else "crash",
            "reason": (f"signal {sig}: " if sig else f"exit {proc.returncode}: ") + joined[-300:],
        }
    res = json.loads(text)
    res["wall_s"] = wall
    return res


def _floor_for(floor: dict, entries: int) -> float | None:
    """Precomputed-cost lse throughput measured at the size closest (log scale) to ``entries``."""
    best, best_d = None, math.inf
    for key, val in floor.items():
        kind, n = key.split(":")
        if kind != "precomputed":
            continue
        dist = abs(math.log(int(n) ** 2) - math.log(max(entries, 1)))
        if dist < best_d:
            best, best_d = val["entries_per_s"], dist
    return best


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if "--onedim" in argv:  # issue 12's table: benchmarks/onedim_table.py
        from benchmarks import onedim_table

        return onedim_table.main([a for a in argv if a != "--onedim"])
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="small sizes, a couple of minutes")
    ap.add_argument(
        "--cases", default=None, help="comma-separated workload names (overrides the plan)"
    )
    ap.add_argument(
        "--adapters", default=None, help="comma-separated adapter names or regexes (filter)"
    )
    ap.add_argument(
        "--out", default=None, help="CSV path (default benchmarks/results/compare_{quick,full}.csv)"
    )
    ap.add_argument("--time-limit", type=float, default=60.0, help="per-case limit in seconds")
    ap.add_argument(
        "--big-time-limit", type=float, default=120.0, help="limit for workloads with N*M > 2^28"
    )
    ap.add_argument("--mem-gb", type=float, default=8.0, help="RLIMIT_AS of each child")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument(
        "--core", type=int, default=None, help="core to pin children to (default: last allowed)"
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--floor-sizes", default=None, help="comma-separated N for the lse floor ('none' to skip)"
    )
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child is not None:
        child_main(json.loads(args.child))
        return 0

    from benchmarks.anchors import ADAPTERS, keops_status, library_versions
    from benchmarks.workloads import make_workload, save_workload

    if args.cases:
        names = args.cases.split(",")
        plan = [(n, ALL_1D if not n.startswith("gauss") else ALL_MD) for n in names]
    else:
        plan = plan_cases(args.quick)
    if args.adapters:
        pats = [re.compile(p) for p in args.adapters.split(",")]
        plan = [(w, [a for a in ads if any(p.fullmatch(a) for p in pats)]) for w, ads in plan]
    out_path = (
        Path(args.out) if args.out else RESULTS / f"compare_{'quick' if args.quick else 'full'}.csv"
    )
    out_path.parent.mkdir(parents=True, exist_ok=True)
    core = (
        args.core
        if args.core is not None
        else max(os.sched_getaffinity(0))
        if hasattr(os, "sched_getaffinity")
        else None
    )

    versions = library_versions()
    common = {
        "date_utc": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "cpu": cpu_model(),
        **{
            k: versions.get(k, "")
            for k in (
                "python",
                "torch",
                "numpy",
                "ot",
                "geomloss",
                "jax",
                "ott",
                "pykeops",
                "sinkmatch",
            )
        },
    }
    base_spec = {
        "mem_gb": args.mem_gb,
        "core": core,
        "seed": args.seed,
        "repeats": args.repeats,
    }
    rows: list[dict] = []
    t_start = time.perf_counter()

    def emit(row: dict) -> None:
        full = {k: "" for k in FIELDS}
        full.update(common)
        full.update({k: v for k, v in row.items() if k in FIELDS})
        rows.append(full)
        with out_path.open("w", newline="") as fh:
            wr = csv.DictWriter(fh, fieldnames=FIELDS)
            wr.writeheader()
            wr.writerows(rows)
        el = time.perf_counter() - t_start
        tm = f"{float(full['time_s']):.4g}s" if full["time_s"] not in ("", None) else "-"
        print(
            f"[{el:6.0f}s] {full['workload']:<24} {full['adapter']:<26} {full['status']:<8} "
            f"{tm:>10} "
            f"it={full['n_iter']!s:<6} err=({_fmt(full['err_a'])},{_fmt(full['err_b'])}) "
            f"grad={_fmt(full['grad_rel_err'])} {str(full['reason'])[:80]}",
            flush=True,
        )

    # 1. the floor
    floor_sizes = (
        [int(s) for s in args.floor_sizes.split(",")]
        if args.floor_sizes not in (None, "none")
        else ([256, 1024] if args.quick else [256, 1024, 4096])
    )
    if args.floor_sizes == "none":
        floor_sizes = []
    fres = (
        _spawn(dict(base_spec, kind="floor", sizes=floor_sizes), timeout=300)
        if floor_sizes
        else {"status": "skipped"}
    )
    floor = fres.get("floor", {})
    for key, val in floor.items():
        kind, n = key.split(":")
        emit(
            {
                "workload": f"floor-{n}",
                "family": "floor",
                "n": n,
                "m": n,
                "d": 1,
                "adapter": f"floor:lse-{kind}",
                "library": "torch",
                "variant": (
                    f"K @ v, {n}x{n} float32 kernel, one core"
                    if kind == "matvec"
                    else f"torch.logsumexp over a {n}x{n} float32 matrix ({kind} cost), one core"
                ),
                "status": fres.get("status"),
                "time_s": val["time_s"],
                "entries_per_s": val["entries_per_s"],
            }
        )
    if not floor:
        emit(
            {
                "workload": "floor",
                "family": "floor",
                "adapter": "floor:lse",
                "status": fres.get("status"),
                "reason": fres.get("reason", ""),
            }
        )
    emit(
        {
            "workload": "-",
            "adapter": "keops",
            "library": "keops",
            "status": "unavailable" if keops_status() != "ok" else "ok",
            "reason": keops_status(),
        }
    )

    tmpdir = Path(tempfile.mkdtemp(prefix="sinkmatch-compare-"))
    for wname, adapters in plan:
        if not adapters:
            continue
        w = make_workload(wname, seed=args.seed)
        # Built once here; every child loads these exact arrays.
        data = str(tmpdir / f"{wname}.data.npz")
        save_workload(w, data)
        big = w.entries > 2**28
        limit = args.big_time_limit if big else args.time_limit
        ref = str(tmpdir / f"{wname}.npz")
        rres = _spawn(
            dict(base_spec, kind="reference", workload=wname, ref=ref, data=data), timeout=600
        )
        wrow = {
            "workload": wname,
            "family": w.family,
            "mode": w.mode,
            "n": w.n_total,
            "m": w.m_total,
            "d": w.d,
            "problems": len(w.problems),
            "eps": w.eps,
            "prior_source": w.prior_source,
        }
        if rres.get("status") != "ok":
            emit(
                dict(
                    wrow,
                    adapter="reference",
                    status=rres.get("status"),
                    reason=rres.get("reason", ""),
                )
            )
            continue
        for name in adapters:
            ad = ADAPTERS[name]
            row = dict(wrow, adapter=name, library=ad.library, variant=ad.variant)
            reason = ad.skip(w) or _cap_reason(name, w)
            if reason:
                emit(dict(row, status="skipped", reason=reason))
                continue
            spec = dict(
                base_spec,
                kind="case",
                workload=wname,
                adapter=name,
                ref=ref,
                time_limit=limit,
                data=data,
            )
            res = _spawn(spec, timeout=limit + 60 + (120 if big else 0))
            if res.get("status") == "error" and ("No module named" in res.get("reason", "")):
                res["status"] = "unavailable"
            row.update({k: v for k, v in res.items() if k in FIELDS and k not in ("workload",)})
            if rres.get("notes"):
                row["notes"] = "; ".join(
                    t for t in (row.get("notes", ""), "reference: " + rres["notes"]) if t
                )
            if res.get("status") == "ok" and res.get("n_iter"):
                fl = _floor_for(floor, max(p.n * p.m for p in w.problems))
                tpi = float(res["time_s"]) / float(res["n_iter"])
                row["time_per_iter_s"] = tpi
                if fl:
                    floor_iter = 2.0 * w.entries / fl
                    row["floor_iter_s"] = floor_iter
                    row["floor_ratio"] = tpi / floor_iter
            emit(row)
    print(f"wrote {out_path} ({len(rows)} rows) in {time.perf_counter() - t_start:.0f} s")
    return 0


def _fmt(v) -> str:
    if v in ("", None):
        return "-"
    try:
        return f"{float(v):.2g}"
    except (TypeError, ValueError):
        return str(v)


if __name__ == "__main__":
    raise SystemExit(main())
