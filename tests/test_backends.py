"""Softmin backends: dense and online agree (values and gradients), gradcheck, the auto rule."""

from __future__ import annotations

import math
import subprocess
import sys
import textwrap

import pytest
import torch

from sinkmatch.backends import SoftminBackend, get_backend
from sinkmatch.backends.dense import DenseSoftmin
from sinkmatch.backends.online import OnlineSoftmin
from sinkmatch.costs import get_cost
from sinkmatch.plan import plan_expected_cost, plan_matmul, tiled_logsumexp


def _data(b=2, n=9, m=7, d=2, seed=0, pad=True):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, n, d, generator=g, dtype=torch.float64)
    y = torch.randn(b, m, d, generator=g, dtype=torch.float64)
    h = torch.randn(b, m, generator=g, dtype=torch.float64)
    if pad:
        h[0, -2:] = -math.inf  # padding columns
    return x, y, h


@pytest.mark.parametrize("d", [1, 2, 3, 6])  # 6: beyond the in-place cost generation
@pytest.mark.parametrize("cost", ["sqeuclidean", "euclidean"])
@pytest.mark.parametrize("blocks", [(None, None), (2, 3), (4, 1)])
def test_online_equals_dense_values_and_gradients(cost, blocks, d):
    c = get_cost(cost)
    x, y, h = _data(d=d)
    online = OnlineSoftmin(row_block=blocks[0], col_block=blocks[1])
    grads = []
    for be in (DenseSoftmin(), online):
        xx, yy, hh = (t.clone().requires_grad_() for t in (x, y, h))
        out = be.softmin(0.3, xx, yy, hh, c)
        w = torch.linspace(0.5, 1.5, out.numel(), dtype=out.dtype).view_as(out)
        (out * w).sum().backward()
        grads.append((out.detach(), xx.grad, yy.grad, hh.grad))
    for ref, got in zip(*grads):
        torch.testing.assert_close(got, ref, rtol=1e-10, atol=1e-12)
    assert torch.equal(grads[1][3][0, -2:], torch.zeros(2, dtype=torch.float64))
    assert torch.equal(grads[1][2][0, -2:], torch.zeros(2, d, dtype=torch.float64))


@pytest.mark.parametrize("cost", ["sqeuclidean", "euclidean"])
def test_online_small_eps_many_negligible_terms(cost):
    # most terms lie below exp(-80) of their row's maximum: the clamp must not change anything
    g = torch.Generator().manual_seed(4)
    x = torch.randn(1, 300, 1, generator=g) * 5
    y = torch.randn(1, 260, 1, generator=g) * 5
    h = torch.randn(1, 260, generator=g)
    c = get_cost(cost)
    grads = []
    for be in (DenseSoftmin(), OnlineSoftmin(row_block=64, col_block=100)):
        xx, yy, hh = (t.clone().double().requires_grad_() for t in (x, y, h))
        out = be.softmin(1e-3, xx, yy, hh, c)
        out.sum().backward()
        grads.append((out.detach(), xx.grad, yy.grad, hh.grad))
    for ref, got in zip(*grads):
        torch.testing.assert_close(got, ref, rtol=1e-9, atol=1e-9)


def test_online_forward_and_backward_stream_in_constant_memory():
    # peak resident memory of a forward + backward at N = M = 8192 in a fresh process: a dense
    # float32 (N, M) tensor alone would add 256 MiB
    code = textwrap.dedent(
        """
        import resource, torch
        from sinkmatch.backends.online import OnlineSoftmin
        from sinkmatch.costs import get_cost
        torch.set_num_threads(1)
        n = 8192
        x = torch.randn(1, n, 3, requires_grad=True)
        y = torch.randn(1, n, 3, requires_grad=True)
        h = torch.zeros(1, n, requires_grad=True)
        be, c = OnlineSoftmin(), get_cost("sqeuclidean")
        be.softmin(0.5, x[:, :64], y[:, :64], h[:, :64], c).sum().backward()  # warm up
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        be.softmin(0.5, x, y, h, c).sum().backward()
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print((after - before) / 1024)
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=300
    )
    grown_mib = float(out.stdout.strip().splitlines()[-1])
    assert grown_mib < 48, f"peak memory grew by {grown_mib:.0f} MiB"


def test_softmin_formula():
    x, y, h = _data(pad=False)
    c = get_cost("sqeuclidean")
    ref = -0.5 * torch.logsumexp(h[:, None, :] - c.matrix(x, y) / 0.5, dim=2)
    torch.testing.assert_close(DenseSoftmin().softmin(0.5, x, y, h, c), ref)
    torch.testing.assert_close(OnlineSoftmin(col_block=2).softmin(0.5, x, y, h, c), ref)


@pytest.mark.parametrize("backend", [DenseSoftmin(), OnlineSoftmin(row_block=3, col_block=2)])
@pytest.mark.parametrize("cost", ["sqeuclidean", "euclidean"])
def test_gradcheck(backend, cost):
    x, y, h = _data(b=1, n=4, m=5, d=2, seed=3)
    c = get_cost(cost)
    inputs = tuple(t.clone().requires_grad_() for t in (x, y, h))
    assert torch.autograd.gradcheck(lambda a, b, hh: backend.softmin(0.7, a, b, hh, c), inputs)


def test_plan_reductions_match_dense_plan():
    x, y, h = _data(d=3)
    c = get_cost("sqeuclidean")
    mat = c.matrix(x, y)
    pi = torch.softmax(h[:, None, :] - mat / 0.4, dim=2)
    lse = tiled_logsumexp(0.4, x, y, h, c, col_block=2)
    torch.testing.assert_close(lse, torch.logsumexp(h[:, None, :] - mat / 0.4, dim=2))
    torch.testing.assert_close(plan_expected_cost(0.4, x, y, h, c), (pi * mat).sum(2))
    torch.testing.assert_close(plan_matmul(0.4, x, y, h, c, y), pi @ y)


def test_online_rejects_callable_cost():
    x, y, h = _data()
    with pytest.raises(ValueError, match="named cost"):
        OnlineSoftmin().softmin(1.0, x, y, h, get_cost(lambda u, v: torch.cdist(u, v)))
    with pytest.raises(ValueError, match="col_block"):
        OnlineSoftmin(col_block=0)


def test_auto_rule_by_size():
    c = get_cost("sqeuclidean")
    small = torch.zeros(1, 100, 1)
    big = torch.zeros(1, 5000, 1)
    assert get_backend("auto", x=small, y=small, cost=c).name == "dense"
    assert get_backend("auto", x=big, y=big, cost=c).name == "online"  # 2.5e7 > 2^24
    callable_cost = get_cost(lambda u, v: torch.cdist(u, v))
    assert get_backend("auto", x=big, y=big, cost=callable_cost).name == "dense"


def test_get_backend_errors_and_instances():
    c = get_cost("sqeuclidean")
    x = torch.zeros(1, 3, 1)
    with pytest.raises(ValueError, match="'gpu'"):
        get_backend("gpu", x=x, y=x, cost=c)
    with pytest.raises(TypeError, match="int"):
        get_backend(3, x=x, y=x, cost=c)
    with pytest.raises(ValueError, match="callable"):
        get_backend("online", x=x, y=x, cost=get_cost(lambda u, v: torch.cdist(u, v)))
    inst = OnlineSoftmin()
    assert get_backend(inst, x=x, y=x, cost=c) is inst
    assert isinstance(DenseSoftmin(), SoftminBackend)
    assert isinstance(inst, SoftminBackend)


def test_stabilized_kernel_matches_log_domain_and_gradcheck():
    from sinkmatch.backends.dense import StabilizedKernel

    x, y, h = _data(b=2, n=5, m=4, d=2, seed=4)
    c = get_cost("sqeuclidean")
    mat = c.matrix(x, y)
    g = torch.randn(2, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    kern = StabilizedKernel(mat, 0.3, torch.ones(2, 5, dtype=torch.bool), h > -math.inf)
    kern.rebuild(g=g)
    torch.testing.assert_close(kern.rows(h), DenseSoftmin().softmin(0.3, x, y, h, c))
    hf = torch.randn(2, 5, dtype=torch.float64)
    torch.testing.assert_close(kern.cols(hf), DenseSoftmin().softmin(0.3, y, x, hf, c))
    # the kernel is frozen at x, y, so compare gradients with the log-domain softmin's there
    grads = []
    for fn in (kern.rows_sqeuclidean, lambda a, b, hh: DenseSoftmin().softmin(0.3, a, b, hh, c)):
        inputs = [t.clone().requires_grad_() for t in (x, y, h)]
        out = fn(*inputs)
        (out * torch.linspace(0.5, 2.0, out.numel(), dtype=out.dtype).view_as(out)).sum().backward()
        grads.append([t.grad for t in inputs])
    for got, ref in zip(*grads):
        torch.testing.assert_close(got, ref, rtol=1e-10, atol=1e-12)


def test_batched_mv_loop_and_trailing_padding():
    from sinkmatch.backends.dense import batched_mv

    g = torch.Generator().manual_seed(5)
    k = torch.rand(3, 200, 180, generator=g, dtype=torch.float64)
    v = torch.rand(3, 180, generator=g, dtype=torch.float64)
    ref = torch.bmm(k, v[..., None])[..., 0]
    torch.testing.assert_close(batched_mv(k, v), ref)
    torch.testing.assert_close(
        batched_mv(k.transpose(1, 2), ref), torch.bmm(k.transpose(1, 2), ref[..., None])[..., 0]
    )
    rows, cols = [200, 50, 120], [180, 180, 30]
    out = batched_mv(k, v, lengths=(rows, cols), fill=-1.0)
    for i in range(3):
        torch.testing.assert_close(out[i, : rows[i]], k[i, : rows[i], : cols[i]] @ v[i, : cols[i]])
        assert (out[i, rows[i] :] == -1.0).all()


def test_solver_passes_valid_lengths_only_to_backends_that_declare_them():
    from sinkmatch.backends.dense import DenseSoftmin
    from sinkmatch.solver import sinkhorn

    class Recording:  # not a DenseSoftmin: the solver's dense kernel fast path stays off
        name = "recording"
        supports_valid_lengths = True

        def __init__(self):
            self.seen = []

        def softmin(self, eps, x, y, h, cost, *, n_valid=None, m_valid=None):
            self.seen.append((n_valid, m_valid))
            out = DenseSoftmin().softmin(eps, x, y, h, cost)
            if n_valid is not None:  # what a length-aware backend may do: skip padded rows
                rows = torch.arange(x.shape[1])[None, :] >= n_valid[:, None]
                out = out.masked_fill(rows, 0.0)
            return out

    g = torch.Generator().manual_seed(3)
    x, y = (
        torch.randn(2, 7, 2, generator=g, dtype=torch.float64),
        torch.randn(2, 5, 2, generator=g, dtype=torch.float64),
    )
    a, b = torch.ones(2, 7, dtype=torch.float64), torch.ones(2, 5, dtype=torch.float64)
    a[0, 4:] = 0.0
    b[1, 3:] = 0.0
    b[1, 1] = 0.0  # an interior zero weight is not trailing padding: the length stays 3
    backend = Recording()
    got = sinkhorn(x, y, a, b, eps=0.2, tol=1e-10, backend=backend)
    ref = sinkhorn(x, y, a, b, eps=0.2, tol=1e-10, backend="dense")
    torch.testing.assert_close(got.value, ref.value, rtol=1e-9, atol=1e-12)
    # every row, zero weights included: the final steps compute all rows
    torch.testing.assert_close(got.f, ref.f, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(got.g, ref.g, rtol=1e-9, atol=1e-9)
    lengths = {(tuple(n.tolist()), tuple(m.tolist())) for n, m in backend.seen if n is not None}
    assert lengths == {((4, 7), (5, 3)), ((5, 3), (4, 7))}
    assert sum(n is None for n, _ in backend.seen) == 2  # the final g and f steps


def test_online_all_padding_problem_is_inf_with_zero_gradient():
    x, y, h = _data(b=2, n=5, m=6, d=2, pad=False)
    h[1] = -math.inf  # the second problem has no columns: +inf, as the protocol says
    xx, yy, hh = (t.clone().requires_grad_() for t in (x, y, h))
    out = OnlineSoftmin(row_block=2, col_block=4).softmin(0.3, xx, yy, hh, get_cost("sqeuclidean"))
    assert torch.isinf(out[1]).all() and torch.isfinite(out[0]).all()
    out.backward(torch.ones_like(out))  # a finite cotangent on the empty rows too
    for grad in (xx.grad, yy.grad, hh.grad):
        assert torch.isfinite(grad).all() and torch.equal(grad[1], torch.zeros_like(grad[1]))
