"""The Triton soft-min kernels against the plain torch reference.

Without a GPU the kernels run in Triton's CPU interpreter: a fixture sets ``TRITON_INTERPRET=1``
for each test (``monkeypatch`` restores the environment afterwards) and the backend loads an
interpreted copy of the kernel module under its own name, so no global Triton state leaks into
other tests. Sizes are tiny (the interpreter runs every block op through numpy) and blocks are
16 wide so every problem spans several row and column blocks with ragged tails.
"""

from __future__ import annotations

import math
import os

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

pytest.importorskip("triton")

from sinkmatch.backends.dense import DenseSoftmin
from sinkmatch.backends.triton import (
    MAX_DIM,
    TritonSoftmin,
    _interpret_mode,
    triton_softmin,
)
from sinkmatch.costs import get_cost

pytestmark = pytest.mark.triton

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
BLOCKS = {"block_n": 16, "block_m": 16}
INF = math.inf

# Kernel output vs the float64 reference evaluated on the same (already rounded) inputs: every
# input dtype is accumulated in float32 (float64 in float64), so the tolerance depends on the
# accumulation dtype, not on the storage dtype. (rtol, atol) for values, then for gradients.
TOL = {
    torch.float16: ((1e-5, 1e-5), (1e-4, 1e-4)),
    torch.bfloat16: ((1e-5, 1e-5), (1e-4, 1e-4)),
    torch.float32: ((1e-5, 1e-5), (1e-4, 1e-4)),
    torch.float64: ((1e-12, 1e-12), (1e-10, 1e-10)),
}


@pytest.fixture(autouse=True)
def _interpreter(monkeypatch):
    if DEVICE == "cpu":
        monkeypatch.setenv("TRITON_INTERPRET", "1")


def softmin_reference(eps, x, y, h, cost):
    """The plain torch reference of the kernels: the dense backend."""
    return DenseSoftmin().softmin(eps, x, y, h, get_cost(cost))


def _problem(b, n, m, d, dtype=torch.float64, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(b, n, d, generator=gen, dtype=torch.float64) / math.sqrt(d)
    y = torch.randn(b, m, d, generator=gen, dtype=torch.float64) / math.sqrt(d) + 0.3
    h = torch.randn(b, m, generator=gen, dtype=torch.float64)
    return (x.to(DEVICE, dtype), y.to(DEVICE, dtype), h.to(DEVICE, dtype))


def _assert_close(actual, expected, tol, what):
    rtol, atol = tol
    torch.testing.assert_close(
        actual.double().cpu(),
        expected.double().cpu(),
        rtol=rtol,
        atol=atol,
        msg=lambda m: f"{what}: {m}",
    )


# ------------------------------------------------------------------------------------------
# forward
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("cost", ["sqeuclidean", "euclidean"])
@pytest.mark.parametrize("d", [1, 2, 3, 17, 64])
def test_forward_matches_reference_float32(cost, d):
    x, y, h = _problem(2, 13, 29, d, torch.float32, seed=d)
    h[1, 20:] = -INF  # padded tail of problem 1
    h[0, 3] = -INF  # a zero weight in the middle
    out = triton_softmin(0.2, x, y, h, cost, **BLOCKS)
    ref = softmin_reference(0.2, x.double(), y.double(), h.double(), cost)
    assert out.shape == (2, 13) and out.dtype == torch.float32
    _assert_close(out, ref, TOL[torch.float32][0], f"{cost} D={d}")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_forward_input_dtypes_accumulate_wide(dtype):
    x, y, h = _problem(3, 21, 18, 3, dtype, seed=1)
    h[2, 5:] = -INF
    out = triton_softmin(0.05, x, y, h, "sqeuclidean", **BLOCKS)
    assert out.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    ref = softmin_reference(0.05, x.double(), y.double(), h.double(), "sqeuclidean")
    _assert_close(out, ref, TOL[dtype][0], str(dtype))


@pytest.mark.parametrize("cost", ["sqeuclidean", "euclidean"])
def test_ragged_batch_equals_loop_over_problems(cost):
    """A padded ragged batch with n_valid equals each problem solved alone at its real size."""
    sizes = [(5, 33), (40, 3), (17, 17), (1, 1)]
    b, n, m, d = len(sizes), 40, 33, 2
    x, y, h = _problem(b, n, m, d, seed=3)
    for k, (nk, mk) in enumerate(sizes):
        h[k, mk:] = -INF
        x[k, nk:] = 1e6  # garbage in padded rows must not matter
        y[k, mk:] = -1e6
    n_valid = torch.tensor([s[0] for s in sizes])
    out = triton_softmin(0.3, x, y, h, cost, n_valid=n_valid, **BLOCKS)
    for k, (nk, mk) in enumerate(sizes):
        alone = softmin_reference(
            0.3, x[k : k + 1, :nk], y[k : k + 1, :mk], h[k : k + 1, :mk], cost
        )
        _assert_close(out[k, :nk], alone[0], TOL[torch.float64][0], f"problem {k}")
        assert torch.all(out[k, nk:] == 0)


def test_explicit_m_valid_skips_tail_and_default_detects_it():
    x, y, h = _problem(2, 9, 30, 3, seed=4)
    h[0, 11:] = -INF
    out_auto = triton_softmin(0.5, x, y, h, "sqeuclidean", **BLOCKS)
    out_given = triton_softmin(
        0.5, x, y, h, "sqeuclidean", m_valid=torch.tensor([11, 30]), **BLOCKS
    )
    ref = softmin_reference(0.5, x, y, h, "sqeuclidean")
    _assert_close(out_auto, ref, TOL[torch.float64][0], "auto m_valid")
    _assert_close(out_given, ref, TOL[torch.float64][0], "given m_valid")


def test_fully_masked_row_is_inf_and_its_gradient_zero():
    x, y, h = _problem(2, 5, 7, 2, seed=5)
    h[1] = -INF
    x.requires_grad_(True)
    h.requires_grad_(True)
    out = triton_softmin(0.4, x, y, h, "euclidean", **BLOCKS)
    assert torch.all(out[1] == INF)
    assert torch.all(torch.isfinite(out[0]))
    out[0].sum().backward()
    assert torch.all(torch.isfinite(x.grad)) and torch.all(torch.isfinite(h.grad))
    assert torch.all(x.grad[1] == 0) and torch.all(h.grad[1] == 0)


@pytest.mark.filterwarnings("ignore:All-NaN slice:RuntimeWarning")  # numpy, in the interpreter
def test_nan_propagates_to_its_row_only():
    x, y, h = _problem(1, 6, 9, 2, torch.float32, seed=7)
    x[0, 2, 1] = math.nan
    out = triton_softmin(0.5, x, y, h, "sqeuclidean", **BLOCKS)
    assert torch.isnan(out[0, 2])
    assert torch.all(torch.isfinite(out[0, [0, 1, 3, 4, 5]]))


def test_nan_in_the_last_column_of_h_is_not_taken_for_padding():
    x, y, h = _problem(1, 4, 6, 2, seed=9)
    h[0, 3:] = -INF
    h[0, 5] = math.nan
    out = triton_softmin(0.5, x, y, h, "sqeuclidean", **BLOCKS)
    assert torch.all(torch.isnan(out))


def test_inf_cotangent_on_an_empty_row_does_not_leak():
    x, y, h = _problem(2, 5, 7, 2, seed=8)
    h[1] = -INF
    x.requires_grad_(True)
    out = triton_softmin(0.4, x, y, h, "sqeuclidean", **BLOCKS)
    w = torch.ones_like(out)
    w[1] = INF  # e.g. a loss that multiplies the +inf row by something
    (gx,) = torch.autograd.grad(out, (x,), grad_outputs=w)
    assert torch.all(gx[1] == 0) and torch.all(torch.isfinite(gx[0]))


def test_small_eps_is_stable():
    """eps far below the costs: exp underflows everywhere but at the max; no NaN/inf."""
    x, y, h = _problem(1, 20, 20, 2, torch.float32, seed=6)
    out = triton_softmin(1e-4, x * 100, y * 100, h, "sqeuclidean", **BLOCKS)
    ref = softmin_reference(1e-4, x.double() * 100, y.double() * 100, h.double(), "sqeuclidean")
    assert torch.all(torch.isfinite(out))
    _assert_close(out, ref, (1e-5, 1e-3), "eps=1e-4")


@settings(max_examples=15, deadline=None)
@given(
    b=st.integers(1, 3),
    n=st.integers(1, 24),
    m=st.integers(1, 24),
    d=st.sampled_from([1, 2, 5]),
    eps=st.floats(0.05, 5.0),
    shift=st.floats(-50.0, 50.0),
    cost=st.sampled_from(["sqeuclidean", "euclidean"]),
)
def test_property_matches_reference_and_shift_equivariance(b, n, m, d, eps, shift, cost):
    """Random shapes agree with the reference; adding c to h subtracts eps * c from the output."""
    with pytest.MonkeyPatch.context() as mp:  # hypothesis runs outside function fixtures
        if DEVICE == "cpu":
            mp.setenv("TRITON_INTERPRET", "1")
        x, y, h = _problem(b, n, m, d, seed=n * 31 + m)
        out = triton_softmin(eps, x, y, h, cost, **BLOCKS)
        shifted = triton_softmin(eps, x, y, h + shift, cost, **BLOCKS)
    _assert_close(out, softmin_reference(eps, x, y, h, cost), TOL[torch.float64][0], "value")
    _assert_close(shifted, out - eps * shift, (1e-12, 1e-10), "shift")


# ------------------------------------------------------------------------------------------
# gradients (both backward kernels)
# ------------------------------------------------------------------------------------------


def _grads(fn, x, y, h, w):
    x, y, h = (t.detach().clone().requires_grad_(True) for t in (x, y, h))
    out = fn(x, y, h)
    return torch.autograd.grad((out * w).sum(), (x, y, h))


@pytest.mark.parametrize("cost", ["sqeuclidean", "euclidean"])
@pytest.mark.parametrize("d", [1, 3, 17, 64])
def test_gradients_match_autograd_of_reference(cost, d):
    x, y, h = _problem(2, 19, 23, d, seed=10 + d)
    h[0, 15:] = -INF
    h[1, 2] = -INF
    w = torch.randn(2, 19, dtype=torch.float64, generator=torch.Generator().manual_seed(d))
    got = _grads(lambda a, b, c: triton_softmin(0.3, a, b, c, cost, **BLOCKS), x, y, h, w)
    ref = _grads(lambda a, b, c: softmin_reference(0.3, a, b, c, cost), x, y, h, w)
    for name, g, r in zip("xyh", got, ref):
        _assert_close(g, r, TOL[torch.float64][1], f"grad {name}, {cost} D={d}")
    assert torch.all(got[1][0, 15:] == 0) and torch.all(got[2][0, 15:] == 0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_gradients_low_precision_inputs(dtype):
    x, y, h = _problem(2, 14, 20, 3, dtype, seed=11)
    w = torch.ones(2, 14, dtype=torch.float32)
    got = _grads(lambda a, b, c: triton_softmin(0.2, a, b, c, "sqeuclidean", **BLOCKS), x, y, h, w)
    ref = _grads(
        lambda a, b, c: softmin_reference(0.2, a.double(), b.double(), c.double(), "sqeuclidean"),
        x,
        y,
        h,
        w.double(),
    )
    for name, g, r, t in zip("xyh", got, ref, (x, y, h)):
        assert g.dtype == t.dtype
        # The gradient is cast back to the input dtype: allow that rounding on top of fp32.
        rel = {torch.float16: 2e-3, torch.bfloat16: 1e-2, torch.float32: 1e-4}[dtype]
        _assert_close(g, r, (rel, rel), f"grad {name} {dtype}")


def test_sqeuclidean_x_gradient_is_barycentric_map():
    """grad_x = 2 w (x - T(x)) with T(x_i) = sum_j pi_ij y_j: the row kernel's barycentric map."""
    x, y, h = _problem(1, 11, 25, 3, seed=12)
    w = torch.rand(1, 11, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    (gx, _, _) = _grads(
        lambda a, b, c: triton_softmin(0.7, a, b, c, "sqeuclidean", **BLOCKS), x, y, h, w
    )
    sq = ((x[:, :, None] - y[:, None]) ** 2).sum(-1)
    plan = torch.softmax(h[:, None, :] - sq / 0.7, dim=-1)
    barycenter = plan @ y
    _assert_close(gx, 2 * w[..., None] * (x - barycenter), TOL[torch.float64][1], "grad x")


def test_euclidean_gradient_at_coincident_points_is_finite():
    x, y, h = _problem(1, 6, 6, 2, seed=13)
    y[0, :4] = x[0, :4]  # x_i = y_j exactly for four pairs
    w = torch.ones(1, 6, dtype=torch.float64)
    got = _grads(lambda a, b, c: triton_softmin(0.5, a, b, c, "euclidean", **BLOCKS), x, y, h, w)
    ref = _grads(lambda a, b, c: softmin_reference(0.5, a, b, c, "euclidean"), x, y, h, w)
    for name, g, r in zip("xyh", got, ref):
        assert torch.all(torch.isfinite(g))
        _assert_close(g, r, TOL[torch.float64][1], f"grad {name}")


def test_gradcheck_float64():
    x, y, h = _problem(1, 3, 4, 2, seed=14)
    h[0, 3] = -INF
    x, y = x.requires_grad_(True), y.requires_grad_(True)
    hh = h[:, :3].clone().requires_grad_(True)

    def fn(a, b, c):
        full = torch.cat([c, h[:, 3:]], dim=1)
        return triton_softmin(0.6, a, b, full, "sqeuclidean", **BLOCKS)

    assert torch.autograd.gradcheck(fn, (x, y, hh), eps=1e-6, atol=1e-7)


def test_no_graph_when_nothing_requires_grad():
    x, y, h = _problem(1, 4, 4, 1)
    assert triton_softmin(1.0, x, y, h, "sqeuclidean", **BLOCKS).grad_fn is None
    x.requires_grad_(True)
    with torch.no_grad():
        assert triton_softmin(1.0, x, y, h, "sqeuclidean", **BLOCKS).grad_fn is None


# ------------------------------------------------------------------------------------------
# the backend object, inputs, environment
# ------------------------------------------------------------------------------------------


def test_backend_object_implements_protocol_and_accepts_cost_objects():
    from sinkmatch.backends.base import SoftminBackend

    backend = TritonSoftmin(block_n=16, block_m=16)
    assert isinstance(backend, SoftminBackend) and backend.name == "triton"
    x, y, h = _problem(2, 8, 9, 2)
    for name in ("sqeuclidean", "euclidean"):
        out = backend.softmin(0.5, x, y, h, get_cost(name))
        _assert_close(out, softmin_reference(0.5, x, y, h, name), TOL[torch.float64][0], name)


def test_bad_inputs_raise_with_what_was_received():
    x, y, h = _problem(1, 4, 5, 2)
    with pytest.raises(ValueError, match="cost must be one of"):
        triton_softmin(1.0, x, y, h, "cityblock")
    with pytest.raises(ValueError, match="eps must be"):
        triton_softmin(0.0, x, y, h, "sqeuclidean")
    with pytest.raises(ValueError, match="eps must be"):
        triton_softmin(float("nan"), x, y, h, "sqeuclidean")
    with pytest.raises(ValueError, match=r"y must have shape"):
        triton_softmin(1.0, x, y[..., :1], h, "sqeuclidean")
    with pytest.raises(ValueError, match=r"h must have shape \(B, M\) = \(1, 5\)"):
        triton_softmin(1.0, x, y, h[:, :4], "sqeuclidean")
    with pytest.raises(ValueError, match=r"x must have shape \(B, N, D\)"):
        triton_softmin(1.0, x[0], y, h, "sqeuclidean")
    with pytest.raises(TypeError, match="floating dtype"):
        triton_softmin(1.0, x.long(), y, h, "sqeuclidean")
    with pytest.raises(ValueError, match="block_n must be a positive power of two"):
        TritonSoftmin(block_n=24)
    with pytest.raises(TypeError, match="n_valid must be an integer tensor"):
        triton_softmin(1.0, x, y, h, "sqeuclidean", n_valid=torch.tensor([1.5]))
    with pytest.raises(TypeError, match="m_valid must be an integer tensor"):
        triton_softmin(1.0, x, y, h, "sqeuclidean", m_valid=torch.tensor([True]))
    with pytest.raises(ValueError, match=r"n_valid must have shape \(1,\)"):
        triton_softmin(1.0, x, y, h, "sqeuclidean", n_valid=torch.tensor([1, 2]))
    big = torch.zeros(1, 2, MAX_DIM + 1, dtype=torch.float64)
    with pytest.raises(ValueError, match=f"D <= {MAX_DIM}"):
        triton_softmin(1.0, big, big, torch.zeros(1, 2), "sqeuclidean")


@pytest.mark.skipif(DEVICE != "cpu", reason="CPU-only behaviour")
def test_cpu_tensors_need_the_interpreter_switch(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    x, y, h = _problem(1, 4, 5, 2)
    with pytest.raises(ValueError, match="TRITON_INTERPRET=1"):
        triton_softmin(1.0, x, y, h, "sqeuclidean")


def test_interpret_mode_restores_the_environment(monkeypatch):
    import triton

    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    knobs = getattr(triton, "knobs", None)
    before = knobs.runtime.interpret if knobs is not None else None
    with _interpret_mode(True):
        assert os.environ["TRITON_INTERPRET"] == "1"
    assert "TRITON_INTERPRET" not in os.environ
    if knobs is not None:
        assert knobs.runtime.interpret == before


# ------------------------------------------------------------------------------------------
# the whole solver on the triton backend
# ------------------------------------------------------------------------------------------


def _solver_case(seed=0):
    gen = torch.Generator().manual_seed(seed)
    b, n, m, d = 2, 13, 19, 2
    x = torch.rand(b, n, d, generator=gen, dtype=torch.float64)
    y = torch.rand(b, m, d, generator=gen, dtype=torch.float64)
    a = torch.rand(b, n, generator=gen, dtype=torch.float64)
    w = torch.rand(b, m, generator=gen, dtype=torch.float64)
    a[1, 9:] = 0.0  # padded problem: 9 points
    w[0, 4:] = 0.0  # padded problem: 4 points
    return (t.to(DEVICE) for t in (x, y, a, w))


@pytest.mark.parametrize("cost", ["sqeuclidean", "euclidean"])
def test_solver_with_triton_backend_matches_dense_and_online(cost):
    sinkhorn = pytest.importorskip("sinkmatch.solver").sinkhorn
    x, y, a, b = _solver_case()
    results = {}
    backends = {"dense": "dense", "online": "online", "triton": TritonSoftmin(**BLOCKS)}
    for label, backend in backends.items():
        xx, yy = x.clone().requires_grad_(True), y.clone().requires_grad_(True)
        res = sinkhorn(
            xx,
            yy,
            a,
            b,
            eps=0.1,
            cost=cost,
            backend=backend,
            eps_start=1.0,
            fixed_iterations=True,
            max_iter=8,
        )
        gx, gy = torch.autograd.grad(res.value.sum(), (xx, yy))
        results[label] = (res.value, res.f, res.g, gx, gy)
    for label in ("dense", "online"):
        for what, got, ref in zip(
            ("value", "f", "g", "grad x", "grad y"), results["triton"], results[label]
        ):
            finite = torch.isfinite(ref)
            assert torch.equal(finite, torch.isfinite(got)), what
            _assert_close(got[finite], ref[finite], (1e-10, 1e-10), f"{what} vs {label}")


def test_solver_backend_name_triton_resolves_to_kernel():
    sinkhorn = pytest.importorskip("sinkmatch.solver").sinkhorn
    from sinkmatch.backends import get_backend

    x, y, a, b = _solver_case(1)
    assert isinstance(get_backend("triton", x=x, y=y, cost=get_cost("sqeuclidean")), TritonSoftmin)
    got = sinkhorn(
        x, y, a, b, eps=0.2, backend="triton", eps_scaling=None, fixed_iterations=True, max_iter=3
    )
    ref = sinkhorn(
        x, y, a, b, eps=0.2, backend="dense", eps_scaling=None, fixed_iterations=True, max_iter=3
    )
    _assert_close(got.value, ref.value, (1e-10, 1e-10), "value")


# ------------------------------------------------------------------------------------------
# the compiled (GPU) path, as far as it goes without a GPU: Triton -> PTX -> cubin
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("d", "dtype", "power"), [(3, "fp16", 1.0), (17, "fp64", 1.5)])
def test_kernels_compile_for_sm90(monkeypatch, tmp_path, d, dtype, power):
    """Compile every kernel for an H100 (sm_90) target: catches errors the interpreter misses.

    Needs no GPU (ptxas ships with Triton). Uses Triton's compiler API, which changes between
    releases: the test skips when that API is not the one it knows.
    """
    import triton
    import triton.language as tl

    try:
        from triton.backends.compiler import GPUTarget
        from triton.compiler import ASTSource
    except ImportError:
        pytest.skip("this Triton has no ASTSource/GPUTarget compiler API")
    from sinkmatch.backends.triton import _kernels

    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    kernels = _kernels(False)
    acc = "fp64" if dtype == "fp64" else "fp32"
    dp = 1 << (d - 1).bit_length()
    block = 32 if dp >= 16 else 64  # the backward's block rule (tl.dot path)
    consts = {
        "D": d,
        "DP": dp,
        "POWER": power,
        "ACC": getattr(tl, acc.replace("fp", "float")),
        "BLOCK_N": block,
        "BLOCK_M": 32,
    }
    for kernel in (
        kernels.softmin_fwd_kernel,
        kernels.softmin_bwd_rows_kernel,
        kernels.softmin_bwd_cols_kernel,
    ):
        sig = {}
        for arg in kernel.arg_names:
            if arg in consts:
                sig[arg] = "constexpr"
            elif arg in ("N", "M", "n_blocks"):
                sig[arg] = "i32"
            elif arg in ("N_VALID", "M_VALID"):
                sig[arg] = "*i32"
            else:
                sig[arg] = f"*{dtype}" if arg in ("X", "Y", "H") else f"*{acc}"
        src = ASTSource(kernel, sig, {k: v for k, v in consts.items() if k in kernel.arg_names})
        try:
            compiled = triton.compile(
                src,
                target=GPUTarget("cuda", 90, 32),
                options={"num_warps": 4, "enable_fp_fusion": True},
            )
        except (TypeError, AttributeError) as err:  # compiler API drift, not a kernel bug
            pytest.skip(f"Triton compiler API differs: {err}")
        assert "cubin" in compiled.asm and len(compiled.asm["cubin"]) > 0


def test_doctests():
    import doctest

    import sinkmatch.backends.triton as module

    result = doctest.testmod(module)
    assert result.attempted > 0 and result.failed == 0
