"""Benchmarks of the Sinkhorn solver on the CSS-CCNN workload.

The workload (Babu Sam et al., CSS-CCNN): 1-D points, squared cost, ε = 0.1 in count² units;
``y`` = 1,568 samples of the ShanghaiTech Part A count prior (:class:`sinkmatch.CountPrior`, a
truncated power law with α = 2 and its head redistributed), ``x`` = 288 or 1,568 predictions
``max(0.7 · prior draw + N(0, 1), 0)`` (exact zeros and ties, a heavy tail):
:func:`benchmarks.workloads.css_pair`. Plain Sinkhorn (zero start, no ε-scaling) needs hundreds of
iterations there, or does not converge in 1,000 (``benchmarks/results/sinkhorn.csv``).

Run the timed benchmarks (forward + backward)::

    python -m pytest benchmarks/bench_sinkhorn.py --benchmark-enable -p no:cacheprovider

Run the iteration study, the grouped (CSS-CCNN++) study, the online half-step timings and the
large online-memory measurement, writing CSV::

    python benchmarks/bench_sinkhorn.py --out benchmarks/results/sinkhorn.csv
"""

from __future__ import annotations

import argparse
import csv
import platform
import resource
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.workloads import css_pair  # noqa: E402
from sinkmatch import sinkhorn  # noqa: E402


def css_workload(n_pred: int = 1568, n_prior: int = 1568, seed: int = 0, dtype=torch.float32):
    """Predictions x (n_pred,) and prior samples y (n_prior,) of the CSS-CCNN loss."""
    x, y = css_pair(n_pred, n_prior, seed=seed)
    return torch.tensor(x, dtype=dtype), torch.tensor(y, dtype=dtype)


def forward_backward(x: torch.Tensor, y: torch.Tensor, **kw):
    xx = x.clone().requires_grad_()
    res = sinkhorn(xx, y, eps=0.1, **kw)
    res.value.backward()
    return res, xx.grad


@pytest.mark.parametrize("n_pred", [288, 1568])
@pytest.mark.parametrize("init", ["exact1d", None])
def test_bench_css_workload(benchmark, n_pred, init):
    torch.set_num_threads(1)
    x, y = css_workload(n_pred=n_pred)
    res, grad = benchmark(forward_backward, x, y, init=init)
    benchmark.extra_info.update(n_iter=res.n_iter, marginal_error=float(res.marginal_error.max()))
    assert res.converged.all() and torch.isfinite(grad).all()


def iteration_study(writer, threads: int = 1) -> None:
    torch.set_num_threads(threads)
    configs = {
        "auto (default: exact1d in 1-D)": dict(),
        "exact1d, no scaling (default with init)": dict(init="exact1d"),
        "exact1d, eps-scaling from 8 eps": dict(init="exact1d", eps_start=0.8),
        "cold, eps-scaling from diameter (init=None)": dict(init=None),
        "cold, no scaling": dict(init=None, eps_scaling=None),
    }
    for n_pred in (288, 1568):
        x, y = css_workload(n_pred=n_pred)
        for name, kw in configs.items():
            t0 = time.perf_counter()
            res, _grad = forward_backward(x, y, **kw)
            wall = time.perf_counter() - t0
            row = dict(
                study="css_iterations",
                n_pred=n_pred,
                n_prior=len(y),
                config=name,
                n_iter=res.n_iter,
                marginal_error=f"{float(res.marginal_error.max()):.3g}",
                seconds_fwd_bwd=f"{wall:.3f}",
                peak_rss_mib="",
            )
            writer.writerow(row)
            print(row, flush=True)


def median_seconds(fn, repeats: int = 5) -> float:
    """Median wall time of ``repeats`` calls of ``fn`` after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def grouped_study(writer, threads: int = 1) -> None:
    """CSS-CCNN++ at 288 vs 1,568: one grouped call (packed, padded) against a loop of two calls."""
    from sinkmatch.grouping import percentile_split
    from sinkmatch.losses import grouped_sinkhorn_loss, sinkhorn_loss

    torch.set_num_threads(threads)
    x, y = css_workload(n_pred=288)
    score = torch.rand(288, generator=torch.Generator().manual_seed(1))
    split = percentile_split(x, score, y, q=0.3)

    def one_call(**kw):
        xx = x.clone().requires_grad_()
        grouped_sinkhorn_loss(
            xx, y, x_groups=split.pred_groups, y_groups=split.target_groups, num_groups=2, **kw
        ).backward()

    def loop(**kw):
        xx = x.clone().requires_grad_()
        total = 0.0
        for k in (0, 1):
            total = total + sinkhorn_loss(
                xx[split.pred_groups == k], y[split.target_groups == k], **kw
            )
        total.backward()

    for init in ("auto", None):
        for name, fn in (("one grouped call", one_call), ("loop over the 2 groups", loop)):
            row = dict(
                study="css_grouped",
                n_pred=288,
                n_prior=len(y),
                config=f"{name}, init={init}",
                n_iter="",
                marginal_error="",
                seconds_fwd_bwd=f"{median_seconds(lambda fn=fn, init=init: fn(init=init)):.4f}",
                peak_rss_mib="",
            )
            writer.writerow(row)
            print(row, flush=True)


def online_halfstep(writer, sizes=(4096, 16384), dims=(1, 3)) -> None:
    """One online soft-min half step (forward, and forward + backward), one thread, float32."""
    from sinkmatch.backends.online import OnlineSoftmin
    from sinkmatch.costs import get_cost

    torch.set_num_threads(1)
    backend, cost = OnlineSoftmin(), get_cost("sqeuclidean")
    for n in sizes:
        for d in dims:
            g = torch.Generator().manual_seed(0)
            x, y = torch.randn(1, n, d, generator=g), torch.randn(1, n, d, generator=g)
            h = torch.full((1, n), -float(np.log(n)))

            def fwd_bwd(x=x, y=y, h=h):
                xx, yy, hh = (t.clone().requires_grad_() for t in (x, y, h))
                backend.softmin(0.1, xx, yy, hh, cost).sum().backward()

            def fwd(x=x, y=y, h=h):
                backend.softmin(0.1, x, y, h, cost)

            fwd = median_seconds(fwd, repeats=3)
            both = median_seconds(fwd_bwd, repeats=3)
            row = dict(
                study="online_halfstep",
                n_pred=n,
                n_prior=n,
                config=f"online softmin, D={d}, eps=0.1 (forward s in n_iter column)",
                n_iter=f"{fwd:.3f}",
                marginal_error="",
                seconds_fwd_bwd=f"{both:.3f}",
                peak_rss_mib="",
            )
            writer.writerow(row)
            print(row, flush=True)


def online_memory(writer, n: int = 16384, max_iter: int = 3) -> None:
    """Peak resident memory (ru_maxrss, whole process) of an online solve, N = M = n, 3-D points.

    One thread: on a loaded 2-core machine a second OpenMP thread waits on a busy core and the
    same solve took 118 s instead of about 5 s.
    """
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 3, generator=g).requires_grad_()
    y = torch.randn(n, 3, generator=g)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t0 = time.perf_counter()
    res = sinkhorn(x, y, eps=0.1, backend="online", max_iter=max_iter, eps_scaling=None)
    res.value.backward()
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    row = dict(
        study="online_memory",
        n_pred=n,
        n_prior=n,
        config=f"online, {max_iter} iterations, D=3, fwd+bwd",
        n_iter=res.n_iter,
        marginal_error="",
        seconds_fwd_bwd=f"{wall:.3f}",
        peak_rss_mib=f"{after:.0f} (before: {before:.0f}; "
        f"a dense float32 cost would be {n * n * 4 / 2**20:.0f})",
    )
    writer.writerow(row)
    print(row, flush=True)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/sinkhorn.csv"))
    parser.add_argument("--skip-memory", action="store_true")
    args = parser.parse_args(argv)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("w", newline="") as fh:
        fh.write(
            f"# torch {torch.__version__}, python {sys.version.split()[0]}, {platform.platform()}, "
            f"{platform.processor() or platform.machine()}\n"
        )
        fields = [
            "study",
            "n_pred",
            "n_prior",
            "config",
            "n_iter",
            "marginal_error",
            "seconds_fwd_bwd",
            "peak_rss_mib",
        ]
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        if not args.skip_memory:
            online_memory(writer)  # first, so that ru_maxrss is not dominated by the study
        iteration_study(writer)
        grouped_study(writer)
        online_halfstep(writer)


if __name__ == "__main__":
    main()
