"""GPU benchmark of the Triton soft-min backend against torch, POT and GeomLoss.

Run on a CUDA machine (about 5 minutes; every case has a time budget and the rest is skipped
when the total budget is spent)::

    python benchmarks/gpu_triton.py                      # -> benchmarks/results/gpu_triton.csv
    python benchmarks/gpu_triton.py --budget 120 --iters 10

or on a CPU, through Triton's interpreter and at toy sizes, to check that it runs::

    python benchmarks/gpu_triton.py --smoke        # -> benchmarks/results/gpu_triton_smoke.csv

What it does, in order:

1. Parity: the Triton soft-min (forward and the x, y, h gradients) against the online torch
   backend on one moderate problem per cost; the relative errors go to the CSV. Timings of a
   backend that fails parity are still taken but flagged.
2. ``ragged`` rows (see 5).
3. ``softmin`` rows: one soft-min half step, forward + backward (x, y, h), for the ``triton``,
   ``dense`` and ``online`` backends; N = M from 1k to 1M, D = 1, 3, 64, float32.
4. ``loss`` rows: a Sinkhorn loss value + gradient with respect to the points, ``iters``
   iterations at fixed ε: sinkmatch (``triton``, ``dense``, ``online``), POT
   (``ot.sinkhorn2(method="sinkhorn_log")`` on the dense cost matrix) and GeomLoss
   (``SamplesLoss("sinkhorn", debias=False)``; its ε-scaling schedule is set to about ``iters``
   steps, so its iteration count is close to, not equal to, the others').
5. ``ragged`` rows: 1,000 problems of 50–500 points in 2-D, padded to 500 (zero weights), for the
   soft-min (Triton with the -inf masks only, and with per-problem lengths) and the loss.

Each case runs once untimed (compilation, caches), then is timed until ``--reps`` runs or the
case budget; the median and minimum go to the CSV with the peak GPU memory, the library
versions and the GPU name. A method whose predicted time at the next size (quadratic growth)
exceeds the case budget is skipped at that size and beyond, with the reason in ``note``.
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import platform
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

if "--smoke" in sys.argv:  # must precede the first import of triton
    os.environ["TRITON_INTERPRET"] = "1"

import torch

try:
    import sinkmatch  # noqa: F401
except ImportError:  # running from a source checkout
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sinkmatch import sinkhorn
from sinkmatch.backends.dense import DenseSoftmin
from sinkmatch.backends.online import OnlineSoftmin
from sinkmatch.backends.triton import TritonSoftmin
from sinkmatch.costs import get_cost

FIELDS = [
    "timestamp",
    "kind",
    "method",
    "cost",
    "batch",
    "n",
    "m",
    "d",
    "dtype",
    "iters",
    "eps",
    "status",
    "median_ms",
    "min_ms",
    "reps",
    "peak_mem_mb",
    "parity_rel_err",
    "note",
    "device",
    "torch",
    "triton",
    "pot",
    "geomloss",
    "python",
]


def _version(module: str) -> str:
    try:
        return __import__(module).__version__
    except Exception:  # not installed or broken: recorded, not fatal
        return "not installed"


class Bench:
    """Times cases, enforces the budgets, writes rows."""

    def __init__(self, args: argparse.Namespace, device: torch.device):
        self.args = args
        self.device = device
        self.start = time.perf_counter()
        self.rows: list[dict] = []
        name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()
        self.meta = {
            "device": f"{device.type}: {name or platform.machine()}"
            + (" (Triton interpreter, times meaningless)" if args.smoke else ""),
            "torch": torch.__version__,
            "triton": _version("triton"),
            "pot": _version("ot"),
            "geomloss": _version("geomloss"),
            "python": platform.python_version(),
        }
        self.skip_from: dict[tuple, str] = {}  # (kind, method, d) -> reason

    def over_budget(self) -> bool:
        return time.perf_counter() - self.start > self.args.budget

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def record(self, **row) -> None:
        full = {k: "" for k in FIELDS}
        full.update(self.meta, timestamp=datetime.now(timezone.utc).isoformat(timespec="seconds"))
        full.update(row)
        self.rows.append(full)
        shown = {
            k: full[k]
            for k in (
                "kind",
                "method",
                "cost",
                "batch",
                "n",
                "d",
                "status",
                "median_ms",
                "parity_rel_err",
                "note",
            )
            if full[k] != ""
        }
        print(shown, flush=True)

    def time_case(self, fn, key: tuple, **row) -> None:
        """Run ``fn`` once untimed, then time it; skip by budget or by prediction."""
        if key in self.skip_from:
            self.record(status="skipped", note=self.skip_from[key], **row)
            return
        if self.over_budget():
            self.record(status="skipped", note="total time budget spent", **row)
            return
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        try:
            t0 = time.perf_counter()
            fn()
            self.sync()
            first = time.perf_counter() - t0
            times = []
            case_start = time.perf_counter()
            while (
                len(times) < self.args.reps
                and time.perf_counter() - case_start < self.args.case_budget
            ):
                t0 = time.perf_counter()
                fn()
                self.sync()
                times.append(time.perf_counter() - t0)
        except torch.cuda.OutOfMemoryError:
            torch.cuda.empty_cache()
            self.record(status="skipped", note="out of memory", **row)
            self.skip_from[key] = "out of memory at a smaller size"
            return
        except Exception as err:  # recorded in the CSV; the benchmark goes on
            self.record(status="error", note=f"{type(err).__name__}: {err}"[:300], **row)
            return
        peak = (
            torch.cuda.max_memory_allocated(self.device) / 2**20
            if self.device.type == "cuda"
            else ""
        )
        best = min(times) if times else first
        self.record(
            status="ok",
            median_ms=f"{1e3 * statistics.median(times or [first]):.3f}",
            min_ms=f"{1e3 * best:.3f}",
            reps=len(times),
            peak_mem_mb=peak and f"{peak:.1f}",
            **row,
        )
        # The next size is 10x: quadratic work -> 100x the time (not in smoke mode, whose
        # interpreter times say nothing about the GPU).
        predicted = best * 100
        if predicted > self.args.case_budget and not self.args.smoke:
            self.skip_from[key] = f"predicted {predicted:.0f} s > case budget at the next size"

    def write(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=FIELDS)
            writer.writeheader()
            writer.writerows(self.rows)
        print(f"wrote {len(self.rows)} rows to {path}")


def _points(batch, n, d, device, gen, dtype=torch.float32):
    return torch.rand(batch, n, d, generator=gen, dtype=torch.float64).to(device, dtype)


def _dense_fits(bench: Bench, entries: int, copies: int = 4) -> bool:
    """A dense (B, N, M) float32 method fits when ``copies`` such tensors use < half the memory."""
    if bench.device.type != "cuda":
        return entries <= 1 << 22
    free, _ = torch.cuda.mem_get_info(bench.device)
    return entries * 4 * copies < free // 2


# ------------------------------------------------------------------------------------------
# parity
# ------------------------------------------------------------------------------------------


def parity(bench: Bench, triton_backend: TritonSoftmin) -> dict[str, float]:
    n = 64 if bench.args.smoke else 4096
    gen = torch.Generator().manual_seed(0)
    worst = {}
    for cost_name in ("sqeuclidean", "euclidean"):
        cost = get_cost(cost_name)
        x, y = _points(2, n, 3, bench.device, gen), _points(2, n + 7, 3, bench.device, gen)
        h = torch.randn(2, n + 7, generator=gen).to(bench.device)
        h[1, n // 2 :] = -math.inf
        w = torch.randn(2, n, generator=gen).to(bench.device)
        results = []
        for backend in (triton_backend, OnlineSoftmin()):
            xx, yy, hh = (t.clone().requires_grad_(True) for t in (x, y, h))
            out = backend.softmin(0.05, xx, yy, hh, cost)
            grads = torch.autograd.grad(out, (xx, yy, hh), grad_outputs=w)
            results.append((out, *grads))
        errs = []
        with torch.no_grad():
            for got, ref in zip(*results):
                ok = torch.isfinite(ref)
                scale = ref[ok].abs().max().clamp_min(1e-30)
                errs.append(float((got[ok] - ref[ok]).abs().max() / scale))
        worst[cost_name] = max(errs)
        status = "ok" if worst[cost_name] < 1e-4 else "parity-failed"
        bench.record(
            kind="parity",
            method="triton-vs-online",
            cost=cost_name,
            batch=2,
            n=n,
            m=n + 7,
            d=3,
            dtype="float32",
            status=status,
            parity_rel_err=f"{worst[cost_name]:.3e}",
            note="max relative error of out, grad x, grad y, grad h",
        )
    return worst


# ------------------------------------------------------------------------------------------
# cases
# ------------------------------------------------------------------------------------------


def softmin_cases(bench: Bench, backends: dict, sizes: list[int], dims: list[int]) -> None:
    cost = get_cost("sqeuclidean")
    eps = bench.args.eps
    for d in dims:
        for n in sizes:
            gen = torch.Generator().manual_seed(n + d)
            x, y = _points(1, n, d, bench.device, gen), _points(1, n, d, bench.device, gen)
            h = torch.zeros(1, n, device=bench.device)
            w = torch.ones(1, n, device=bench.device)
            for name, backend in backends.items():
                row = {
                    "kind": "softmin",
                    "method": name,
                    "cost": cost.name,
                    "batch": 1,
                    "n": n,
                    "m": n,
                    "d": d,
                    "dtype": "float32",
                    "eps": eps,
                }
                if name == "dense" and not _dense_fits(bench, n * n):
                    bench.record(status="skipped", note="cost matrix does not fit", **row)
                    continue

                def fn(backend=backend, x=x, y=y, h=h, w=w):
                    xx, yy, hh = (t.detach().requires_grad_(True) for t in (x, y, h))
                    out = backend.softmin(eps, xx, yy, hh, cost)
                    torch.autograd.grad(out, (xx, yy, hh), grad_outputs=w)

                bench.time_case(fn, ("softmin", name, d), **row)


def _loss_methods(bench: Bench, triton_backend: TritonSoftmin):
    """name -> (callable(x, y, a, b) -> scalar loss, dense?)"""
    args = bench.args
    methods = {}
    for label, backend in (
        ("sinkmatch-triton", triton_backend),
        ("sinkmatch-dense", "dense"),
        ("sinkmatch-online", "online"),
    ):

        def run(x, y, a, b, backend=backend):
            res = sinkhorn(
                x,
                y,
                a,
                b,
                eps=args.eps,
                backend=backend,
                eps_scaling=None,
                fixed_iterations=True,
                max_iter=args.iters,
            )
            return res.value.sum()

        methods[label] = (run, label == "sinkmatch-dense")
    try:
        import ot

        def run_pot(x, y, a, b):
            total = 0.0
            for k in range(x.shape[0]):  # POT solves one problem per call
                keep_a, keep_b = a[k] > 0, b[k] > 0
                cost = ot.dist(x[k][keep_a], y[k][keep_b])  # squared Euclidean, not halved
                total = total + ot.sinkhorn2(
                    a[k][keep_a],
                    b[k][keep_b],
                    cost,
                    args.eps,
                    method="sinkhorn_log",
                    numItermax=args.iters,
                    stopThr=0.0,
                )
            return total

        methods["pot-sinkhorn_log"] = (run_pot, True)
    except ImportError:
        pass
    try:
        from geomloss import SamplesLoss

        def run_geomloss(x, y, a, b):
            # GeomLoss p=2 uses |x-y|^2 / 2 and eps = blur^2: blur = sqrt(eps / 2) matches ours.
            blur = math.sqrt(args.eps / 2)
            diameter = math.sqrt(x.shape[-1])  # points in the unit cube
            scaling = min(0.99, (blur / diameter) ** (1.0 / args.iters))
            loss = SamplesLoss(
                "sinkhorn",
                p=2,
                blur=blur,
                scaling=scaling,
                debias=False,
                diameter=diameter,
                backend="tensorized",
            )
            return loss(a, x, b, y).sum()

        methods["geomloss-tensorized"] = (run_geomloss, True)
    except ImportError:
        pass
    return methods


def loss_cases(bench: Bench, triton_backend, sizes: list[int], dims: list[int]) -> None:
    methods = _loss_methods(bench, triton_backend)
    for d in dims:
        for n in sizes:
            gen = torch.Generator().manual_seed(10 * n + d)
            x, y = _points(1, n, d, bench.device, gen), _points(1, n, d, bench.device, gen)
            a = torch.full((1, n), 1.0 / n, device=bench.device)
            for name, (run, dense) in methods.items():
                row = {
                    "kind": "loss",
                    "method": name,
                    "cost": "sqeuclidean",
                    "batch": 1,
                    "n": n,
                    "m": n,
                    "d": d,
                    "dtype": "float32",
                    "iters": bench.args.iters,
                    "eps": bench.args.eps,
                }
                if name.startswith("geomloss"):
                    row["note"] = "eps-scaling schedule of about iters steps"
                if dense and not _dense_fits(bench, n * n):
                    bench.record(status="skipped", note="cost matrix does not fit", **row)
                    continue

                def fn(run=run, x=x, y=y, a=a):
                    xx = x.detach().requires_grad_(True)
                    torch.autograd.grad(run(xx, y, a, a), (xx,))

                bench.time_case(fn, ("loss", name, d), **row)


def ragged_cases(bench: Bench, triton_backend: TritonSoftmin) -> None:
    smoke = bench.args.smoke
    batch, lo, hi, d = (4, 5, 20, 2) if smoke else (1000, 50, 500, 2)
    gen = torch.Generator().manual_seed(7)
    n_sizes = torch.randint(lo, hi + 1, (batch,), generator=gen)
    m_sizes = torch.randint(lo, hi + 1, (batch,), generator=gen)
    x, y = _points(batch, hi, d, bench.device, gen), _points(batch, hi, d, bench.device, gen)
    ar = torch.arange(hi)
    a = (ar[None] < n_sizes[:, None]).float()
    b = (ar[None] < m_sizes[:, None]).float()
    a, b = (
        (a / a.sum(1, keepdim=True)).to(bench.device),
        (b / b.sum(1, keepdim=True)).to(bench.device),
    )
    h = torch.where(b > 0, 0.0, -math.inf)
    w = torch.ones(batch, hi, device=bench.device)
    real = int((n_sizes * m_sizes).sum())
    note = f"sizes {lo}-{hi}; real entries {real} of padded {batch * hi * hi}"
    cost = get_cost("sqeuclidean")
    eps = bench.args.eps
    n_valid = n_sizes.to(bench.device)
    for name, kwargs in (
        ("triton masks only", {}),
        ("triton n_valid+m_valid", {"n_valid": n_valid}),
        ("dense", None),
        ("online", None),
    ):
        backend = {"dense": DenseSoftmin(), "online": OnlineSoftmin()}.get(name, triton_backend)

        def fn(backend=backend, kwargs=kwargs):
            xx, yy, hh = (t.detach().requires_grad_(True) for t in (x, y, h))
            out = backend.softmin(eps, xx, yy, hh, cost, **(kwargs or {}))
            torch.autograd.grad(out, (xx, yy, hh), grad_outputs=w)

        bench.time_case(
            fn,
            ("ragged-softmin", name),
            kind="ragged-softmin",
            method=name,
            cost=cost.name,
            batch=batch,
            n=hi,
            m=hi,
            d=d,
            dtype="float32",
            eps=eps,
            note=note,
        )
    for name, (run, _) in _loss_methods(bench, triton_backend).items():

        def fn(run=run):
            xx = x.detach().requires_grad_(True)
            torch.autograd.grad(run(xx, y, a, b), (xx,))

        bench.time_case(
            fn,
            ("ragged-loss", name),
            kind="ragged-loss",
            method=name,
            cost="sqeuclidean",
            batch=batch,
            n=hi,
            m=hi,
            d=d,
            dtype="float32",
            iters=bench.args.iters,
            eps=eps,
            note=note,
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="CPU, TRITON_INTERPRET=1, toy sizes: checks that the script runs",
    )
    parser.add_argument("--out", type=Path, default=None, help="CSV path")
    parser.add_argument(
        "--budget",
        type=float,
        default=240.0,
        help="seconds after which no new case starts (default 240)",
    )
    parser.add_argument("--case-budget", type=float, default=12.0, help="seconds per case")
    parser.add_argument("--reps", type=int, default=5, help="timed runs per case")
    parser.add_argument("--iters", type=int, default=20, help="Sinkhorn iterations (loss rows)")
    parser.add_argument("--eps", type=float, default=0.05, help="entropic regularization")
    parser.add_argument("--block-n", type=int, default=64)
    parser.add_argument("--block-m", type=int, default=32)
    parser.add_argument("--num-warps", type=int, default=4)
    args = parser.parse_args(argv)

    here = Path(__file__).resolve().parent / "results"
    if args.smoke:
        device = torch.device("cpu")
        sizes, loss_sizes, dims = [16, 40], [16, 40], [1, 3, 17]
        args.reps, args.iters = min(args.reps, 2), min(args.iters, 3)
        out = args.out or here / "gpu_triton_smoke.csv"
        triton_backend = TritonSoftmin(block_n=16, block_m=16)
    else:
        if not torch.cuda.is_available():
            print("no CUDA device: run with --smoke for the CPU interpreter check", file=sys.stderr)
            return 2
        device = torch.device("cuda")
        sizes, loss_sizes, dims = (
            [1_000, 10_000, 100_000, 1_000_000],
            [1_000, 10_000, 100_000],
            [1, 3, 64],
        )
        out = args.out or here / "gpu_triton.csv"
        triton_backend = TritonSoftmin(
            block_n=args.block_n, block_m=args.block_m, num_warps=args.num_warps
        )
    torch.manual_seed(0)
    bench = Bench(args, device)
    try:
        parity(bench, triton_backend)
        ragged_cases(bench, triton_backend)
        softmin_cases(
            bench,
            {"triton": triton_backend, "dense": DenseSoftmin(), "online": OnlineSoftmin()},
            sizes,
            dims,
        )
        loss_cases(bench, triton_backend, loss_sizes, dims)
    finally:
        bench.write(out)
    print(f"total {time.perf_counter() - bench.start:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
