"""Issue 12's table: the 1-D path (``backend="onedim"``) against the exact sort, one thread.

Every case runs in its own child process (``torch.set_num_threads(1)``, thread variables = 1) so
that its peak memory (``ru_maxrss``) is its own. Per case: forward + backward time of
``sinkhorn(..., eps=0.1, backend="onedim")`` on the CSS-CCNN pair (float32 inputs, the gradient
with respect to the predictions), the median of a few repeats after one warm-up, and in the same
child the time of the exact sort (``wasserstein_1d`` of both sets, forward + backward) and of
sinkmatch's previous default (``backend="auto"`` without the 1-D path: dense or online), where
it fits the time limit. The growth exponent is the slope of log time from 4,096² to 65,536².

Usage::

    python benchmarks/onedim_table.py            # or: python benchmarks/compare.py --onedim

Results: ``benchmarks/results/onedim.csv``.
"""

from __future__ import annotations

import argparse
import csv
import datetime as _dt
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

RESULTS = ROOT / "benchmarks" / "results"
CASES = ["css1d-1568", "css1d-4096", "css1d-16384", "css1d-65536", "ragged-64"]
FIELDS = [
    "date_utc",
    "case",
    "n_total",
    "m_total",
    "problems",
    "onedim_s",
    "sort_s",
    "ratio_vs_sort",
    "previous_s",
    "n_iter",
    "converged",
    "marginal_error_max",
    "kernel_error_max",
    "peak_rss_mb",
    "rel_value_gap_vs_previous",
    "geomloss_s",
    "rel_value_gap_geomloss",
]
# GeomLoss (tensorized, N·M floats in memory) only where it fits comfortably
GEOMLOSS_MAX_ENTRIES = 1 << 24


def _batch(name: str):
    """``x, y, a, b`` (B, N) float32 tensors of a workload (zero weights pad ragged problems)."""
    import numpy as np
    import torch

    from benchmarks.workloads import make_workload

    probs = make_workload(name).problems
    n, m = max(p.n for p in probs), max(p.m for p in probs)
    x, y = np.zeros((len(probs), n)), np.zeros((len(probs), m))
    a, b = np.zeros_like(x), np.zeros_like(y)
    for k, p in enumerate(probs):
        x[k, : p.n], y[k, : p.m] = p.x[:, 0], p.y[:, 0]
        a[k, : p.n], b[k, : p.m] = p.a, p.b
    return [torch.tensor(v, dtype=torch.float32) for v in (x, y, a, b)]


def _time(step, repeats: int) -> float:
    step()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def child(case: str, previous_budget_s: float) -> dict:
    """Run one case in this process; the row as a dict."""
    import torch

    from sinkmatch import sinkhorn, wasserstein_1d

    torch.set_num_threads(1)
    x, y, a, b = _batch(case)
    out = {}

    def onedim():
        xr = x.clone().requires_grad_()
        res = sinkhorn(xr[..., None], y[..., None], a, b, eps=0.1, backend="onedim")
        res.value.sum().backward()
        out["res"] = res

    def sort():
        xr = x.clone().requires_grad_()
        wasserstein_1d(xr, y, a, b, p=2).sum().backward()

    t_onedim = _time(onedim, 3)
    t_sort = _time(sort, 5)
    res = out["res"]
    row = dict(
        case=case,
        n_total=int((a > 0).sum()),
        m_total=int((b > 0).sum()),
        problems=x.shape[0],
        onedim_s=t_onedim,
        sort_s=t_sort,
        ratio_vs_sort=t_onedim / t_sort,
        n_iter=res.n_iter,
        converged=bool(res.converged.all()),
        marginal_error_max=float(res.marginal_error.max()),
        kernel_error_max=float(res.kernel_error.max()),
        previous_s="",
        rel_value_gap_vs_previous="",
    )
    if x.shape[1] * y.shape[1] * x.shape[0] <= 1 << 28 and previous_budget_s > 0:
        prev = {}

        def previous():
            xr = x.clone().requires_grad_()
            r = sinkhorn(xr[..., None], y[..., None], a, b, eps=0.1, backend="online")
            r.value.sum().backward()
            prev["res"] = r

        row["previous_s"] = _time(previous, 1)
        gap = (prev["res"].value.detach().double() - res.value.detach().double()).abs().max()
        row["rel_value_gap_vs_previous"] = float(gap / res.value.detach().double().abs().max())
    row.update(_geomloss(x, y, a, b, res.value.detach().double()))
    row["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    return row


def _geomloss(x, y, a, b, value) -> dict:
    r"""GeomLoss's ``SamplesLoss("sinkhorn")`` on the same problem, forward + backward.

    Its ``p=2`` cost is :math:`\tfrac12 |x - y|^2` and its ε is ``blur ** 2``: ε = 0.1 on
    :math:`|x - y|^2` is ``blur = sqrt(0.05)``, and twice its value is ours (``debias=False``,
    default ``scaling=0.5``; it runs its own ε-scaling and a fixed number of iterations).
    """
    if x.shape[0] != 1 or x.shape[1] * y.shape[1] > GEOMLOSS_MAX_ENTRIES:
        return {}
    try:
        from geomloss import SamplesLoss
    except ImportError:
        return {}
    loss = SamplesLoss("sinkhorn", p=2, blur=0.05**0.5, debias=False, backend="tensorized")
    out = {}

    def step():
        xr = x.clone().requires_grad_()
        v = loss(a, xr[..., None], b, y[..., None])
        v.sum().backward()
        out["v"] = v.detach().double()

    t = _time(step, 3)
    gap = ((2.0 * out["v"] - value).abs() / value.abs()).max()
    return {"geomloss_s": t, "rel_value_gap_geomloss": float(gap)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--cases", default=",".join(CASES))
    ap.add_argument("--previous-budget-s", type=float, default=60.0)
    ap.add_argument("--out", default=str(RESULTS / "onedim.csv"))
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child, args.previous_budget_s)))
        return 0
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    date = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M")
    rows = []
    for case in args.cases.split(","):
        cmd = [sys.executable, __file__, "--child", case]
        cmd += ["--previous-budget-s", str(args.previous_budget_s)]
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
        if done.returncode != 0:
            print(done.stderr[-2000:], file=sys.stderr)
            continue
        row = json.loads(done.stdout.strip().splitlines()[-1])
        row["date_utc"] = date
        rows.append(row)
        print({k: row[k] for k in ("case", "onedim_s", "ratio_vs_sort", "n_iter", "peak_rss_mb")})
    _growth(rows, date)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=FIELDS)
        w.writeheader()
        w.writerows(rows)
    print(f"wrote {args.out}")
    return 0


def _growth(rows: list[dict], date: str) -> None:
    """Append the growth-exponent row (slope of log time from 4,096² to 65,536²)."""
    by = {r["case"]: r for r in rows}
    if "css1d-4096" in by and "css1d-65536" in by:
        lo, hi = by["css1d-4096"], by["css1d-65536"]
        slope = math.log(hi["onedim_s"] / lo["onedim_s"]) / math.log(65536 / 4096)
        rows.append(dict(date_utc=date, case="growth-exponent-4096-65536", onedim_s=slope))
        print(f"growth exponent 4,096 -> 65,536: {slope:.3f}")


if __name__ == "__main__":
    raise SystemExit(main())
