r"""How much could kernel truncation buy on the CSS-CCNN 1-D workload? (a measurement, not a solver)

Schmitzer's sparse stabilized scaling keeps only the kernel entries
:math:`\tilde K_{ij} = e^{(\tilde f_i + \tilde g_j - C_{ij})/\varepsilon} \ge e^{-\tau}` around
reference potentials. In 1-D, with the exact dual potentials of the sorted problem as references
(``sinkmatch.exact_1d_potentials``, what ``init="exact1d"`` starts from), the kept entries of each
row form an interval around the monotone matching; this script measures, per size, the fraction of
the N x M entries kept for a few truncation levels :math:`\tau`, i.e. the best speed-up a banded
kernel could give per iteration, and the dense work per iteration for comparison.

Rows are assumed unimodal in j (true for c-concave potentials of the squared cost; the widths are
otherwise lower bounds). The work is vectorized over rows: a binary search per row side.

Usage::

    python benchmarks/levers.py [--sizes 1568,16384,65536] \
        [--out benchmarks/results/levers_band.csv]
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def band_widths(xs, ys, f0, g0, eps: float, tau: float):
    """Per sorted row i, the number of j with (f0_i + g0_j - (x_i - y_j)^2) / eps >= -tau.

    Args:
        xs ((N,) float64 Tensor), ys ((N,) float64 Tensor): Sorted points (N = M, uniform weights,
            so the monotone matching is j = i).
        f0, g0 ((N,) float64 Tensor): Feasible dual potentials, tight on the matching.

    Returns:
        (N,) int64 Tensor of widths.
    """
    import torch

    n = xs.shape[0]
    centre = torch.arange(n)

    def ok(j):
        return (f0 + g0[j] - (xs - ys[j]) ** 2) / eps >= -tau

    lo, hi = torch.zeros(n, dtype=torch.long), centre.clone()
    while bool((lo < hi).any()):
        active = lo < hi
        mid = (lo + hi) // 2
        good = ok(mid)
        hi = torch.where(active & good, mid, hi)
        lo = torch.where(active & ~good, mid + 1, lo)
    left = lo
    lo, hi = centre.clone(), torch.full((n,), n - 1)
    while bool((lo < hi).any()):
        active = lo < hi
        mid = (lo + hi + 1) // 2
        good = ok(mid)
        lo = torch.where(active & good, mid, lo)
        hi = torch.where(active & ~good, mid - 1, hi)
    return lo - left + 1


def main(argv=None) -> int:
    import torch

    from benchmarks.workloads import CSS_EPS, make_workload
    from sinkmatch import exact_1d_potentials

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="1568,16384,65536")
    ap.add_argument("--taus", default="10,25,40")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "levers_band.csv"))
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    rows = []
    for n in (int(s) for s in args.sizes.split(",")):
        w = make_workload(f"css1d-{n}")
        p = w.problems[0]
        xs = torch.sort(torch.tensor(p.x[:, 0], dtype=torch.float64)).values
        ys = torch.sort(torch.tensor(p.y[:, 0], dtype=torch.float64)).values
        t0 = time.perf_counter()
        f0, g0 = exact_1d_potentials(xs, ys)
        t_pot = time.perf_counter() - t0
        for tau in (float(t) for t in args.taus.split(",")):
            width = band_widths(xs, ys, f0.double(), g0.double(), CSS_EPS, tau)
            nnz = int(width.sum())
            rows.append(
                {
                    "n": n,
                    "eps": CSS_EPS,
                    "tau": tau,
                    "nnz": nnz,
                    "dense": n * n,
                    "kept_fraction": nnz / (n * n),
                    "max_speedup": n * n / nnz,
                    "mean_row_width": float(width.double().mean()),
                    "max_row_width": int(width.max()),
                    "potentials_s": t_pot,
                    "prior_source": w.prior_source,
                }
            )
            print(rows[-1], flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", newline="") as fh:
        wr = csv.DictWriter(fh, fieldnames=list(rows[0]))
        wr.writeheader()
        wr.writerows(rows)
    print("wrote", out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
