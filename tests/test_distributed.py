"""The losses under torch.distributed: every rank computes the single-process loss of the
concatenated batch, and DDP's averaged gradients equal the single-process gradients.

Real processes: the module fixtures start 2 and 3 gloo ranks on the CPU (this file run as a
script, ``file://`` rendezvous in a temporary directory), each running every scenario below once
and saving its losses, gradients and errors; the tests compare them, in float64, with the
single-process run in this process. The ranks hold uneven slices, and one rank of the 3-rank
group holds no predictions at all. Every launch has a deadline: a deadlock kills the ranks and
fails the tests instead of stalling CI (and gloo's own timeout is set to 60 s).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
DEADLINE_S = 180.0  # for a whole launch; the scenarios take a few seconds
ROWS = {2: [10, 14], 3: [7, 0, 11]}  # predictions per rank
TARGET_ROWS = {2: [6, 9], 3: [5, 4, 0]}  # target points per rank (sinkhorn_loss)
EPS = 0.05
SEED = 5


# --------------------------------------------------------------------------- shared data


def make_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1)).double()


def make_data(world: int) -> dict[str, list[torch.Tensor]]:
    """Per-rank slices (the same on every process)."""
    g = torch.Generator().manual_seed(world)
    out: dict[str, list[torch.Tensor]] = {"x": [], "score": [], "ids": [], "y": [], "y_ids": []}
    for n, m in zip(ROWS[world], TARGET_ROWS[world]):
        out["x"].append(torch.randn(n, 4, generator=g, dtype=torch.float64))
        out["score"].append(torch.rand(n, generator=g, dtype=torch.float64))
        out["ids"].append(torch.randint(3, (n,), generator=g))
        out["y"].append(torch.randn(m, 1, generator=g, dtype=torch.float64))
        out["y_ids"].append(torch.randint(3, (m,), generator=g))
    return out


def make_prior():
    from sinkmatch.priors import LogNormal

    return LogNormal(0.0, 0.5)


def dm_settings(**extra):
    return dict(samples_per_prediction=1.5, eps=EPS, **extra)


def plus_settings(**extra):
    return dm_settings(split_q=0.3, min_group_size=2, **extra)


def compute(kind: str, model: nn.Module, x, score, ids, y, y_ids, **how) -> torch.Tensor:
    """One scenario's loss; ``how`` is ``{}`` (one process), ``sync=True`` or ``process_group=``."""
    from sinkmatch import losses

    pred = model(x).squeeze(-1)
    gen = torch.Generator().manual_seed(SEED)
    if kind == "dm_plain":
        fn = losses.DistributionMatchingLoss(make_prior(), generator=gen, **how, **dm_settings())
        return fn(pred)
    if kind == "dm_plus":
        fn = losses.DistributionMatchingLoss(make_prior(), generator=gen, **how, **plus_settings())
        return fn(pred, score)
    if kind == "sinkhorn":
        return losses.sinkhorn_loss(pred[:, None], y, eps=EPS, **how)
    if kind == "grouped_ids":
        return losses.grouped_sinkhorn_loss(
            pred[:, None], y, x_groups=ids, y_groups=y_ids, num_groups=3, eps=EPS, **how
        )
    if kind == "grouped_lists":
        xs = [pred[ids == k] for k in range(3)]
        ys = [y[y_ids == k, 0] for k in range(3)]
        return losses.GroupedSinkhornLoss(eps=EPS, **how)(xs, ys)
    raise ValueError(kind)


KINDS = ("dm_plain", "dm_plus", "sinkhorn", "grouped_ids", "grouped_lists")


# --------------------------------------------------------------------------- the ranks


def _error(fn) -> list[str]:
    try:
        fn()
    except Exception as exc:
        return [type(exc).__name__, str(exc)]
    return ["", ""]


def _failures(model, data, rank: int, size: int, how: dict) -> dict[str, list[str]]:
    from sinkmatch import losses

    x, score = data["x"][rank], data["score"][rank]
    with torch.no_grad():
        pred = model(x).squeeze(-1)
    prior = make_prior()
    out = {}
    eps = 0.2 if rank == 1 else EPS  # a different eps on one rank
    out["mismatch_eps"] = _error(
        lambda: losses.distribution_matching_loss(
            pred, prior, samples_per_prediction=1.5, eps=eps, **how
        )
    )
    missing = None if rank == size - 1 else score  # the module form, without its score
    fn = losses.DistributionMatchingLoss(prior, **how, **plus_settings())
    out["missing_score"] = _error(lambda: fn(pred, missing))
    bad = pred.tolist() if rank == 0 else pred  # not a tensor on rank 0
    out["bad_type"] = _error(lambda: losses.distribution_matching_loss(bad, prior, **how))
    out["all_empty"] = _error(lambda: losses.distribution_matching_loss(pred[:0], prior, **how))
    return out


def _random_ties(model, x, score, seed: int, how: dict) -> torch.Tensor:
    from sinkmatch.losses import distribution_matching_loss

    pred = model(x).squeeze(-1).round(decimals=1)  # ties in the predictions
    gen = torch.Generator().manual_seed(seed)
    return distribution_matching_loss(
        pred,
        make_prior(),
        score=score.round(decimals=1),  # and many in the scores
        generator=gen,
        ties="random",
        **how,
        **plus_settings(),
    )


def _gather_rows(data, rank: int, group) -> dict[str, object]:
    """The public gather: variable sizes, an integer tensor, ``None``, and its gradient."""
    from sinkmatch.distributed import all_gather_rows, check_consistent

    x = data["x"][rank].clone().requires_grad_()
    gx, gids, none = all_gather_rows(x, data["ids"][rank], None, process_group=group)
    (gx * torch.arange(gx.shape[0], dtype=gx.dtype)[:, None]).sum().backward()
    rows = check_consistent({"eps": EPS}, {"x": x}, process_group=group)
    return {"gather": [gx.detach(), gids, x.grad, none is None, torch.tensor(rows)]}


def _scenarios(rank: int, size: int, group) -> dict[str, object]:
    """Everything one rank of a group of ``size`` ranks computes (``group=None``: default)."""
    from torch.nn.parallel import DistributedDataParallel

    how = {"sync": True} if group is None else {"process_group": group}
    data = make_data(size)
    inputs = [data[k][rank] for k in ("x", "score", "ids", "y", "y_ids")]
    model = DistributedDataParallel(make_model(), process_group=group)
    results: dict[str, object] = {}
    for kind in KINDS:
        model.zero_grad()
        loss = compute(kind, model, *inputs, **how)
        loss.backward()
        results[kind] = [loss.detach(), [p.grad.clone() for p in model.parameters()]]
    with torch.no_grad():
        local = compute("dm_plain", model.module, *inputs) if ROWS[size][rank] else None
        results["dm_local"] = torch.tensor(float("nan")) if local is None else local
        ties = [_random_ties(model.module, *inputs[:2], seed, how) for seed in range(3)]
        results["random_ties"] = torch.stack(ties)
    results.update(_failures(model.module, data, rank, size, how))
    results.update(_gather_rows(data, rank, group))
    with torch.no_grad():  # the group still works after the errors
        results["after_errors"] = compute("dm_plain", model.module, *inputs, **how)
    return results


def worker(rank: int, init: str, out_dir: str) -> None:
    """One of 3 ranks: the default group of 3 (``sync=True``) and ranks 0-1 as a subgroup."""
    from datetime import timedelta

    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=init, rank=rank, world_size=3, timeout=timedelta(seconds=60)
    )
    pair = dist.new_group([0, 1])  # every rank takes part in creating it
    results = {3: _scenarios(rank, 3, None)}
    if rank < 2:
        results[2] = _scenarios(rank, 2, pair)
    torch.save(results, Path(out_dir) / f"rank{rank}.pt")
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def all_ranks(tmp_path_factory) -> dict[int, list[dict]]:
    """Start 3 ranks of this file and wait; past the deadline kill them and fail (deadlock)."""
    tmp_path = tmp_path_factory.mktemp("ranks")
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    init = f"file://{tmp_path / 'rendezvous'}"
    procs = [
        subprocess.Popen(
            [sys.executable, __file__, str(rank), init, str(tmp_path)],
            env=env,
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        for rank in range(3)
    ]
    deadline = time.monotonic() + DEADLINE_S
    outputs = []
    try:
        for p in procs:
            out, _ = p.communicate(timeout=max(1.0, deadline - time.monotonic()))
            outputs.append(out.decode(errors="replace"))
    except subprocess.TimeoutExpired:
        for p in procs:
            p.kill()
            p.wait()
        pytest.fail(f"the ranks did not finish within {DEADLINE_S} s (deadlock?)")
    for rank, (p, out) in enumerate(zip(procs, outputs)):
        assert p.returncode == 0, f"rank {rank} failed:\n{out[-4000:]}"
    saved = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(3)]
    return {size: [s[size] for s in saved[:size]] for size in ROWS}


@pytest.fixture(params=[2, 3], ids=["2 ranks (subgroup)", "3 ranks, one empty"])
def ranks(request, all_ranks) -> tuple[int, list[dict]]:
    return request.param, all_ranks[request.param]


# --------------------------------------------------------------------------- single process


def single_process(kind: str, world: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
    data = make_data(world)
    whole = [torch.cat(data[k]) for k in ("x", "score", "ids", "y", "y_ids")]
    model = make_model()
    loss = compute(kind, model, *whole)
    loss.backward()
    return loss.detach(), [p.grad for p in model.parameters()]


# --------------------------------------------------------------------------- tests


@pytest.mark.parametrize("kind", KINDS)
def test_every_rank_has_the_single_process_loss_and_ddp_gradients(ranks, kind: str) -> None:
    world, results = ranks
    ref_loss, ref_grads = single_process(kind, world)
    assert sum(float(g.abs().sum()) for g in ref_grads) > 1e-3  # gradients that can be wrong
    for rank, res in enumerate(results):
        loss, grads = res[kind]
        torch.testing.assert_close(loss, ref_loss, rtol=1e-12, atol=0, msg=f"rank {rank}")
        assert all(bool(torch.isfinite(g).all()) for g in grads)
        for g, r in zip(grads, ref_grads):
            torch.testing.assert_close(g, r, rtol=0, atol=1e-10, msg=f"rank {rank}")


def test_all_gather_rows_concatenates_and_scales_the_gradient(ranks) -> None:
    world, results = ranks
    data = make_data(world)
    whole, ids = torch.cat(data["x"]), torch.cat(data["ids"])
    starts = [0, *torch.tensor(ROWS[world]).cumsum(0).tolist()]
    for rank, res in enumerate(results):
        gx, gids, grad, none_stays_none, rows = res["gather"]
        assert torch.equal(gx, whole) and torch.equal(gids, ids) and none_stays_none
        assert rows[:, 0].tolist() == ROWS[world]
        # d/dx of sum_i i * x_i over the gathered rows: this rank's row indices, times W
        index = torch.arange(starts[rank], starts[rank + 1], dtype=grad.dtype)
        torch.testing.assert_close(grad, world * index[:, None].expand_as(grad), rtol=0, atol=0)


def test_the_plus_loss_is_really_split(ranks) -> None:
    """The CSS-CCNN++ scenario must not fall back to the ungrouped loss."""
    from sinkmatch.grouping import percentile_split

    world, _ = ranks
    data = make_data(world)
    with torch.no_grad():
        pred = make_model()(torch.cat(data["x"])).squeeze(-1)
    m = round(1.5 * pred.shape[0])
    target = make_prior().sample(
        m, generator=torch.Generator().manual_seed(SEED), dtype=torch.float64
    )
    split = percentile_split(pred, torch.cat(data["score"]), target, q=0.3, min_group_size=2)
    assert not split.fallback


def test_local_losses_differ_from_the_global_one(ranks) -> None:
    """Without sync each rank matches only its own slice (what the switch is for)."""
    world, results = ranks
    ref_loss, _ = single_process("dm_plain", world)
    local = [float(res["dm_local"]) for res in results if not res["dm_local"].isnan()]
    assert local and max(abs(v - float(ref_loss)) for v in local) > 1e-6


def test_random_ties_are_the_same_on_every_rank(ranks) -> None:
    _, results = ranks
    first = results[0]["random_ties"]
    assert bool(torch.isfinite(first).all())
    for res in results[1:]:
        assert torch.equal(res["random_ties"], first)


def test_a_different_eps_on_one_rank_raises_on_every_rank(ranks) -> None:
    _, results = ranks
    for res in results:
        kind, message = res["mismatch_eps"]
        assert kind == "DistributedMismatchError"
        assert "eps differs: rank 0: 0.05, rank 1: 0.2" in message


def test_a_missing_score_on_one_rank_raises_on_every_rank(ranks) -> None:
    _, results = ranks
    for res in results:
        kind, message = res["missing_score"]
        assert kind == "DistributedMismatchError"
        assert "score" in message


def test_a_local_input_error_raises_on_every_rank(ranks) -> None:
    _, results = ranks
    assert results[0]["bad_type"][0] == "TypeError"
    assert "pred must be a floating torch.Tensor, got list" in results[0]["bad_type"][1]
    for res in results[1:]:
        kind, message = res["bad_type"]
        assert kind == "DistributedMismatchError"
        assert "rank(s) [0]" in message


def test_no_prediction_on_any_rank_raises_on_every_rank(ranks) -> None:
    _, results = ranks
    for res in results:
        assert res["all_empty"][0] == "ValueError"
        assert "at least one prediction on some rank" in res["all_empty"][1]


def test_the_group_still_works_after_the_errors(ranks) -> None:
    world, results = ranks
    ref_loss, _ = single_process("dm_plain", world)
    for res in results:
        torch.testing.assert_close(res["after_errors"], ref_loss, rtol=1e-12, atol=0)


# --------------------------------------------------------------------------- no process group


def test_without_a_process_group_sync_is_a_no_op() -> None:
    from sinkmatch import distributed, losses

    x = torch.randn(5, 1, dtype=torch.float64)
    y = torch.randn(7, 1, dtype=torch.float64)
    assert distributed.resolve_group(sync=True) is None
    assert distributed.check_consistent({"eps": 0.1}) is None
    assert distributed.all_gather_rows(x, None)[0] is x
    assert torch.equal(losses.sinkhorn_loss(x, y, sync=True), losses.sinkhorn_loss(x, y))
    prior = make_prior()
    a = losses.distribution_matching_loss(
        x, prior, sync=True, generator=torch.Generator().manual_seed(1)
    )
    b = losses.distribution_matching_loss(x, prior, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b)


def test_doctests() -> None:
    import doctest

    import sinkmatch.distributed

    result = doctest.testmod(sinkmatch.distributed)
    assert result.attempted > 0 and result.failed == 0


def test_bad_switches_raise() -> None:
    from sinkmatch import distributed, losses

    x = torch.zeros(3, 1)
    with pytest.raises(TypeError, match="sync must be a bool, got str"):
        losses.sinkhorn_loss(x, x, sync="yes")
    with pytest.raises(ValueError, match=r"torch\.distributed is not initialised"):
        distributed.resolve_group(process_group=object())


if __name__ == "__main__":
    worker(int(sys.argv[1]), sys.argv[2], sys.argv[3])
