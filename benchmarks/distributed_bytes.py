"""Bytes that one synchronised CSS-CCNN(++) loss step moves between ranks (gloo, CPU).

Each of ``W`` ranks holds the paper's stage-2 batch (32 crops, a 3 × 3 grid: 288 cells, float32)
and its Canny scores; the loss is :func:`sinkmatch.distribution_matching_loss` with
``sync=True``, ``samples_per_prediction=49/9`` and the ShanghaiTech-A count prior. Every
``torch.distributed.all_gather``/``broadcast`` issued by the loss is recorded with its payload,
and the rows are written as CSV (with the torch version and the machine)::

    python benchmarks/distributed_bytes.py --world 2 4 8 \\
        --out benchmarks/results/distributed_bytes.csv

Columns: ``world``, ``variant`` (``plain`` | ``plus``), ``op``, ``local_bytes`` (the tensor one
rank contributes or, for the broadcast, the buffer), ``received_bytes`` (what one rank ends up
holding: ``world × local`` for ``all_gather``), plus ``total_received_bytes`` per step.
"""

from __future__ import annotations

import argparse
import csv
import multiprocessing
import platform
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
CELLS = 32 * 9  # the paper's batch: 32 crops, 3 x 3 cells each


def _rank(rank: int, world: int, init: str, queue) -> None:
    import torch.distributed as dist

    import sinkmatch

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    records: list[tuple[str, int, int]] = []
    gather, broadcast = dist.all_gather, dist.broadcast

    def counting_gather(parts, tensor, group=None, **kw):
        records.append(("all_gather", tensor.nbytes, sum(p.nbytes for p in parts)))
        return gather(parts, tensor, group=group, **kw)

    def counting_broadcast(tensor, src, group=None, **kw):
        records.append(("broadcast", tensor.nbytes, tensor.nbytes))
        return broadcast(tensor, src, group=group, **kw)

    dist.all_gather, dist.broadcast = counting_gather, counting_broadcast
    prior = sinkmatch.CountPrior.from_max_count(3000, num_images=300)
    g = torch.Generator().manual_seed(rank)
    pred = torch.rand(CELLS, generator=g).mul(20).requires_grad_()
    score = torch.rand(CELLS, generator=g)
    rows = []
    for variant, extra in (("plain", {}), ("plus", {"score": score, "split_q": 0.3})):
        records.clear()
        loss = sinkmatch.distribution_matching_loss(
            pred, prior, samples_per_prediction=49 / 9, eps=0.1, sync=True, **extra
        )
        loss.backward()
        rows += [(variant, *r) for r in records]
    if rank == 0:
        queue.put(rows)
    dist.destroy_process_group()


def measure(world: int) -> list[tuple[str, str, int, int]]:
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    with tempfile.TemporaryDirectory() as tmp:
        init = f"file://{tmp}/rendezvous"
        procs = [ctx.Process(target=_rank, args=(r, world, init, queue)) for r in range(world)]
        for p in procs:
            p.start()
        rows = queue.get(timeout=300)
        for p in procs:
            p.join(timeout=60)
            if p.exitcode != 0:
                raise RuntimeError(f"a rank of world {world} failed (exit code {p.exitcode})")
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--world", type=int, nargs="+", default=[2, 4, 8])
    parser.add_argument(
        "--out", type=Path, default=ROOT / "benchmarks/results/distributed_bytes.csv"
    )
    args = parser.parse_args(argv)
    header = ["world", "variant", "op", "local_bytes", "received_bytes", "total_received_bytes"]
    out = []
    for world in args.world:
        rows = measure(world)
        for variant in ("plain", "plus"):
            mine = [r for r in rows if r[0] == variant]
            total = sum(r[3] for r in mine)
            out += [[world, *r, total] for r in mine]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("w", newline="") as f:
        f.write(f"# torch {torch.__version__}, python {sys.version.split()[0]}, ")
        f.write(f"{platform.machine()} {platform.system()}, gloo on the CPU\n")
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(out)
    for row in [header, *out]:
        print(",".join(map(str, row)))


if __name__ == "__main__":
    main()
