"""Measurements behind the engine's tuning constants, written to CSV (one thread, float32).

* ``exp``: throughput of ``torch.exp`` on arguments in the normal range, in the float32 underflow
  range (below about -87.3) and producing subnormals: why :data:`sinkmatch.plan.EXP_FLOOR` and
  :data:`sinkmatch.plan.PLAN_FLOOR` clamp before ``exp``.
* ``batched_mv``: one ``torch.bmm`` with a single column against a loop of ``torch.mv`` per
  problem: why :func:`sinkmatch.backends.dense.batched_mv` loops above
  ``_MV_LOOP_MIN_ENTRIES`` entries per problem.
* ``tile``: :func:`sinkmatch.plan.tiled_logsumexp` at N = M = 4,096 for tile sizes from 2^15 to
  2^19 entries (128 rows): why ``_TILE_ELEMENTS = 2^17``.

Run::

    python benchmarks/constants.py --out benchmarks/results/constants.csv
"""

from __future__ import annotations

import argparse
import csv
import platform
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.bench_sinkhorn import median_seconds  # noqa: E402
from sinkmatch.costs import get_cost  # noqa: E402
from sinkmatch.plan import tiled_logsumexp  # noqa: E402


def exp_study(writer, n: int = 1 << 22) -> None:
    """``exp`` of 4M float32 arguments per range, relative to the normal range."""
    ranges = {"normal [-10, 0]": (-10.0, 0.0), "subnormal [-103, -88]": (-103.0, -88.0)}
    ranges["underflow [-200, -104]"] = (-200.0, -104.0)
    base = None
    for label, (lo, hi) in ranges.items():
        z = torch.linspace(lo, hi, n)
        out = torch.empty_like(z)
        t = median_seconds(lambda z=z, out=out: torch.exp(z, out=out))
        base = t if base is None else base
        writer.writerow(
            dict(study="exp", config=label, size=n, seconds=f"{t:.5f}", ratio=f"{t / base:.2f}")
        )


def batched_mv_study(writer) -> None:
    """bmm with one column against a loop of mv, per (B, N, M); ratio = bmm / loop."""
    for b, n, m in ((2, 1568, 1568), (2, 288, 1568), (8, 400, 400), (4, 128, 128), (16, 64, 64)):
        k = torch.rand(b, n, m)
        v = torch.rand(b, m)
        t_bmm = median_seconds(lambda k=k, v=v: torch.bmm(k, v.unsqueeze(-1)))
        t_loop = median_seconds(lambda k=k, v=v: [torch.mv(ki, vi) for ki, vi in zip(k, v)])
        writer.writerow(
            dict(
                study="batched_mv",
                config=f"B={b}, N={n}, M={m}",
                size=n * m,
                seconds=f"{t_loop:.6f}",
                ratio=f"{t_bmm / t_loop:.2f}",
            )
        )
    # the entries per problem where batched_mv switches to the loop
    writer.writerow(
        dict(
            study="batched_mv",
            config="threshold used (entries per problem)",
            size=1 << 15,
            seconds="",
            ratio="",
        )
    )


def tile_study(writer, n: int = 4096, rounds: int = 9) -> None:
    """tiled_logsumexp time per tile size (128 rows); ratio = time / time at 2^17.

    The sizes are timed round-robin (one call each per round, median over rounds), so that a
    change of machine load hits them alike.
    """
    cost = get_cost("sqeuclidean")
    configs = []
    for d in (1, 3):
        g = torch.Generator().manual_seed(0)
        x, y = torch.randn(1, n, d, generator=g), torch.randn(1, n, d, generator=g)
        for log2 in range(15, 20):
            configs.append((d, log2, x, y))
    h = torch.zeros(1, n)
    times: dict[tuple[int, int], list[float]] = {(d, lg): [] for d, lg, _, _ in configs}
    for _ in range(rounds + 1):
        for d, log2, x, y in configs:
            t0 = time.perf_counter()
            tiled_logsumexp(0.1, x, y, h, cost, row_block=128, col_block=(1 << log2) // 128)
            times[(d, log2)].append(time.perf_counter() - t0)
    med = {k: sorted(v[1:])[rounds // 2] for k, v in times.items()}  # first round: warm-up
    for (d, log2), t in med.items():
        writer.writerow(
            dict(
                study="tile",
                config=f"D={d}, N=M={n}, 128 x {(1 << log2) // 128}",
                size=1 << log2,
                seconds=f"{t:.4f}",
                ratio=f"{t / med[(d, 17)]:.2f}",
            )
        )


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/constants.csv"))
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("w", newline="") as fh:
        fh.write(
            f"# torch {torch.__version__}, python {sys.version.split()[0]}, {platform.platform()}, "
            f"{platform.processor() or platform.machine()}, 1 thread, float32\n"
        )
        writer = csv.DictWriter(fh, fieldnames=["study", "config", "size", "seconds", "ratio"])
        writer.writeheader()
        exp_study(writer)
        batched_mv_study(writer)
        tile_study(writer)
    print(args.out.read_text())


if __name__ == "__main__":
    main()
