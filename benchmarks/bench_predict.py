"""Counting speed of the CSS-CCNN example's counter on CPU (counts per second).

Run from the repository root::

    python benchmarks/bench_predict.py --out benchmarks/results/predict_cpu.csv

For each model width (0.25: the ``cpu`` preset; 1.0: the ``paper`` preset), image side (512 and
1,024 px, square, counted at full resolution: no resizing, no tiling) and thread count (1 and
torch's default), it times :meth:`Counter.count_many` on batches of random uint8 images (the
network's speed does not depend on its weights) and writes the median counts per second with the
torch version, the machine and the thread count. ``--end-to-end`` adds rows for
:func:`~examples.css_ccnn.predict.predict` on a folder of JPEG files (decoding, counting, the CSV
and the PNG overlays).
"""

from __future__ import annotations

import argparse
import csv
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from examples.css_ccnn.counter import Counter  # noqa: E402
from examples.css_ccnn.model import CSSCCNN  # noqa: E402

FIELDS = [
    "what",
    "width",
    "side",
    "threads",
    "batch_size",
    "images",
    "median_s",
    "counts_per_s",
    "torch",
    "machine",
]


def _machine() -> str:
    return f"{platform.processor() or platform.machine()} ({os.cpu_count()} logical CPUs)"


def _images(side: int, n: int) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, size=(side, side, 3), dtype=np.uint8) for _ in range(n)]


def _time(fn, repeats: int) -> float:
    fn()  # warm-up (allocations, oneDNN primitives)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def bench_counter(width: float, side: int, threads: int, batch: int, repeats: int) -> dict:
    torch.manual_seed(0)
    counter = Counter(
        CSSCCNN(width=width), device="cpu", min_side=None, max_side=None, tile=max(side, 1024),
        batch_size=batch,
    )  # fmt: skip
    images = _images(side, batch)
    median = _time(lambda: counter.count_many(images), repeats)
    return {"what": "Counter.count_many", "images": len(images), "median_s": median}


def bench_end_to_end(width: float, side: int, threads: int, batch: int, repeats: int) -> dict:
    import cv2

    from examples.css_ccnn.predict import predict

    torch.manual_seed(0)
    counter = Counter(
        CSSCCNN(width=width), device="cpu", min_side=None, max_side=None, tile=max(side, 1024),
        batch_size=batch,
    )  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "images"
        folder.mkdir()
        images = _images(side, 2 * batch)
        for i, image in enumerate(images):
            cv2.imwrite(str(folder / f"{i}.jpg"), image)
        out = Path(tmp) / "out"
        median = _time(lambda: predict(counter, [folder], out, progress=False), repeats)
    return {"what": "predict (jpeg, overlays)", "images": len(images), "median_s": median}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="benchmarks/results/predict_cpu.csv")
    parser.add_argument("--widths", type=float, nargs="+", default=[0.25, 1.0])
    parser.add_argument("--sides", type=int, nargs="+", default=[512, 1024])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 0], help="0: default")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--end-to-end", action="store_true")
    args = parser.parse_args(argv)
    default_threads = torch.get_num_threads()
    rows = []
    for threads in args.threads:
        torch.set_num_threads(threads or default_threads)
        for width in args.widths:
            for side in args.sides:
                cases = [bench_counter]
                if args.end_to_end:
                    cases.append(bench_end_to_end)
                for case in cases:
                    row = case(width, side, threads, args.batch_size, args.repeats)
                    row.update(
                        width=width,
                        side=side,
                        threads=torch.get_num_threads(),
                        batch_size=args.batch_size,
                        counts_per_s=row["images"] / row["median_s"],
                        torch=torch.__version__,
                        machine=_machine(),
                    )
                    rows.append(row)
                    print(
                        f"{row['what']:26s} width {width:<5} {side:>5} px  threads "
                        f"{row['threads']}: {row['counts_per_s']:8.2f} counts/s",
                        flush=True,
                    )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=FIELDS)
        writer.writeheader()
        for row in rows:
            writer.writerow(
                {k: (f"{v:.4g}" if isinstance(v, float) else v) for k, v in row.items()}
            )
    print(f"written: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
