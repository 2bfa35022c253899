r"""Fused, batched soft-min in Triton: one launch per half step for a whole batch of problems.

The kernel streams the cost matrix the way flash-attention streams attention scores: the grid
runs over (problem, block of rows); each program loops over blocks of columns keeping a running
maximum and a rescaled sum (online log-sum-exp), generating
:math:`C_{ij} = s\,\|x_i - y_j\|^p` (any ``p >= 1``; :math:`\|x_i - y_j\|^2` and
:math:`\|x_i - y_j\|` have their own exact branches) from the coordinates on the fly.
Nothing of size ``N x M`` is ever stored, in the forward or the backward pass.

.. math::

    \operatorname{out}_i = -\varepsilon \log \sum_j \exp\big(h_j - C_{ij}/\varepsilon\big),
    \qquad
    \pi_{ij} = \exp\big(h_j - C_{ij}/\varepsilon - \mathrm{lse}_i\big).

Backward (two more launches, O(N + M) memory), with :math:`w = \partial L/\partial\,\mathrm{out}`:
:math:`\partial_{h_j} = -\varepsilon \sum_i w_i \pi_{ij}`,
:math:`\partial_{x_i} = w_i \sum_j \pi_{ij} \partial_x C_{ij}` (for the squared cost
:math:`2 w_i (x_i - T(x_i))`, :math:`T` the barycentric map) and
:math:`\partial_{y_j} = \sum_i w_i \pi_{ij} \partial_y C_{ij}`. The gradient
:math:`s\,p\,\|x - y\|^{p-2}(x - y)` is taken as 0 at :math:`x = y` (for ``p = 1`` a
subgradient).

Precision: float16, bfloat16 and float32 inputs are accumulated in float32 and the output is
float32; float64 inputs are computed in float64 throughout (Triton supports float64 arithmetic;
on GPUs with slow float64 this is slow, but never silently less precise).

Devices: CUDA tensors run the compiled kernels. When the environment variable
``TRITON_INTERPRET=1`` is set at call time, the kernels run in Triton's CPU interpreter instead
(any device; orders of magnitude slower, meant for testing); CPU tensors without it raise a
``ValueError``. The variable is read at every call, and the interpreted kernels live in their
own copy of the kernel module, so switching it does not disturb compiled kernels.

References:
    Cuturi, *Sinkhorn distances*, NeurIPS 2013. Feydy et al., *Interpolating between optimal
    transport and MMD using Sinkhorn divergences*, AISTATS 2019. Dao et al., *FlashAttention*,
    NeurIPS 2022 (the online log-sum-exp tiling).

The plain torch reference the kernels are tested against is the dense backend,
:class:`sinkmatch.backends.dense.DenseSoftmin` (float32 accumulation for half inputs, as here).

Example:
    >>> import torch
    >>> from sinkmatch.backends.dense import DenseSoftmin
    >>> from sinkmatch.costs import get_cost
    >>> x = torch.tensor([[[0.0], [1.0]]])
    >>> y = torch.tensor([[[0.0], [2.0]]])
    >>> h = torch.zeros(1, 2)
    >>> DenseSoftmin().softmin(1.0, x, y, h, get_cost("sqeuclidean"))  # what the kernel computes
    tensor([[-0.0181,  0.3069]])
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Iterator, cast

import torch
from torch import Tensor

from sinkmatch._checks import (
    check_float_tensor,
    check_positive_int,
    check_real,
    compute_dtype,
    describe,
)
from sinkmatch.backends.base import Backend, last_positive
from sinkmatch.costs import get_cost, is_power_cost

if TYPE_CHECKING:
    from types import ModuleType

__all__ = ["TritonSoftmin", "triton_softmin"]

# Coordinates per point: the backward keeps a (BLOCK_N, next_pow2(D)) accumulator in registers.
MAX_DIM = 256
_DOT_MAX_BLOCK = 32
_KERNEL_FILE = Path(__file__).with_name("_triton_kernels.py")
_MODULES: dict[bool, ModuleType] = {}


def _cost_params(cost: Any) -> tuple[float, float]:
    r"""``(p, s)`` of a named cost :math:`s\,\|x - y\|^p`: a name or a :class:`PowerCost`."""
    if isinstance(cost, str) and cost in ("sqeuclidean", "euclidean"):
        cost = get_cost(cost)
    if not is_power_cost(cost):
        raise ValueError(
            "cost must be one of ['sqeuclidean', 'euclidean'] or a PowerCost (s |x - y|^p) for "
            f"the triton backend, got {cost!r}; use backend='dense' for other costs"
        )
    return cost.power, cost.scale


# --------------------------------------------------------------------------------------------
# Loading the kernels (compiled or interpreted)
# --------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _interpret_mode(flag: bool) -> Iterator[None]:
    """Set Triton's interpreter switch while decorators run; restore it afterwards."""
    import triton

    old = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1" if flag else "0"
    try:
        knobs = getattr(triton, "knobs", None)
        if knobs is not None and hasattr(knobs.runtime, "scope"):
            with knobs.runtime.scope():
                knobs.runtime.interpret = flag
                yield
        else:
            yield
    finally:
        if old is None:
            os.environ.pop("TRITON_INTERPRET", None)
        else:
            os.environ["TRITON_INTERPRET"] = old


def _kernels(interpret: bool) -> ModuleType:
    """The kernel module, decorated for the interpreter or for the GPU (cached per mode)."""
    module = _MODULES.get(interpret)
    if module is not None:
        return module
    try:
        import triton  # noqa: F401
    except ImportError as err:
        raise ImportError(
            "backend='triton' needs the triton package (pip install 'sinkmatch[triton]')"
        ) from err
    name = "sinkmatch.backends._triton_kernels" + ("_interpreted" if interpret else "")
    spec = importlib.util.spec_from_file_location(name, _KERNEL_FILE)
    if spec is None or spec.loader is None:  # pragma: no cover - the file ships with us
        raise ImportError(f"cannot load the Triton kernels from {_KERNEL_FILE}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        with _interpret_mode(interpret):
            spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    kind = type(module.softmin_fwd_kernel).__name__
    if (kind == "InterpretedFunction") != interpret:  # pragma: no cover - defensive
        raise RuntimeError(f"Triton decorated the kernels as {kind} (interpret={interpret})")
    _MODULES[interpret] = module
    return module


def _use_interpreter(device: torch.device) -> bool:
    """``TRITON_INTERPRET=1`` at call time: interpreter (any device); else CUDA: compiled."""
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        return True
    if device.type == "cuda":
        return False
    raise ValueError(
        f"backend='triton' needs CUDA tensors, got tensors on {device}; set the environment "
        "variable TRITON_INTERPRET=1 to run the kernels in Triton's (slow) CPU interpreter, or "
        "use backend='online'"
    )


# --------------------------------------------------------------------------------------------
# Launch helpers
# --------------------------------------------------------------------------------------------


def _tl_dtype(dtype: torch.dtype) -> Any:
    import triton.language as tl

    return tl.float64 if dtype == torch.float64 else tl.float32


@dataclass(frozen=True)
class _Launch:
    """Everything a launch needs besides the tensors."""

    eps: float
    power: float
    scale: float
    block_n: int
    block_m: int
    num_warps: int
    interpret: bool


def _scalars(cfg: _Launch, like: Tensor) -> tuple[Tensor, Tensor]:
    """``s/eps`` and ``-eps`` as one-element tensors of the compute dtype (cached).

    Passed as tensors because Triton types Python float arguments as float32; cached so that a
    Sinkhorn loop does not launch two fill kernels per half step. The kernels compute the
    unscaled cost, so the cost's scale ``s`` enters through ``s/eps``.
    """
    return _scalars_cached(float(cfg.eps), float(cfg.scale), like.dtype, like.device)


@functools.lru_cache(maxsize=64)
def _scalars_cached(
    eps: float, scale: float, dtype: torch.dtype, device: torch.device
) -> tuple[Tensor, Tensor]:
    inv = torch.full((1,), scale / eps, dtype=dtype, device=device)
    neg = torch.full((1,), -eps, dtype=dtype, device=device)
    return inv, neg


def _device_ctx(t: Tensor) -> Any:
    return torch.cuda.device(t.device) if t.device.type == "cuda" else contextlib.nullcontext()


def _launch_options(cfg: _Launch) -> dict[str, Any]:
    # FMA contraction on (explicitly: Triton 3.9 warns when the default is left implicit).
    return {} if cfg.interpret else {"num_warps": cfg.num_warps, "enable_fp_fusion": True}


def _forward(cfg: _Launch, x: Tensor, y: Tensor, h: Tensor, n_valid: Tensor, m_valid: Tensor):
    k = _kernels(cfg.interpret)
    b, n, d = x.shape
    m = y.shape[1]
    acc = compute_dtype(x, y, h)
    out = torch.empty((b, n), dtype=acc, device=x.device)
    lse = torch.empty((b, n), dtype=acc, device=x.device)
    inv, neg = _scalars(cfg, out)
    n_blocks = -(-n // cfg.block_n)
    extra = _launch_options(cfg)
    with _device_ctx(x):
        k.softmin_fwd_kernel[(b * n_blocks,)](
            x,
            y,
            h,
            inv,
            neg,
            n_valid,
            m_valid,
            out,
            lse,
            n,
            m,
            n_blocks,
            D=d,
            POWER=cfg.power,
            ACC=_tl_dtype(acc),
            BLOCK_N=cfg.block_n,
            BLOCK_M=cfg.block_m,
            **extra,
        )
    return out, lse


def _backward(
    cfg: _Launch,
    x: Tensor,
    y: Tensor,
    h: Tensor,
    lse: Tensor,
    w: Tensor,
    n_valid: Tensor,
    m_valid: Tensor,
    need_x: bool,
    need_yh: bool,
):
    k = _kernels(cfg.interpret)
    b, n, d = x.shape
    m = y.shape[1]
    acc = lse.dtype
    dp = 1 << max(0, (d - 1).bit_length())
    inv, neg = _scalars(cfg, lse)
    extra = _launch_options(cfg)
    # With >= 16 coordinates the weighted coordinate sums are a tl.dot whose operands and
    # (BLOCK, DP) accumulator must stay in registers: blocks above 32 spill (ptxas, sm_90).
    block_n = min(cfg.block_n, _DOT_MAX_BLOCK) if dp >= 16 else cfg.block_n
    block_m = min(cfg.block_m, _DOT_MAX_BLOCK) if dp >= 16 else cfg.block_m
    common = {
        "D": d,
        "DP": dp,
        "POWER": cfg.power,
        "ACC": _tl_dtype(acc),
        "BLOCK_N": block_n,
        "BLOCK_M": block_m,
        **extra,
    }
    gx = gy = gh = None
    with _device_ctx(x):
        if need_x:
            gx = torch.empty((b, n, d), dtype=acc, device=x.device)
            n_blocks = -(-n // block_n)
            k.softmin_bwd_rows_kernel[(b * n_blocks,)](
                x, y, h, lse, w, inv, n_valid, m_valid, gx, n, m, n_blocks, **common
            )
        if need_yh:
            gy = torch.empty((b, m, d), dtype=acc, device=x.device)
            gh = torch.empty((b, m), dtype=acc, device=x.device)
            m_blocks = -(-m // block_m)
            k.softmin_bwd_cols_kernel[(b * m_blocks,)](
                x, y, h, lse, w, inv, neg, n_valid, m_valid, gy, gh, n, m, m_blocks, **common
            )
    if cfg.scale != 1.0:  # the kernels differentiate the unscaled cost
        gx = None if gx is None else gx.mul_(cfg.scale)
        gy = None if gy is None else gy.mul_(cfg.scale)
    return gx, gy, gh


class _SoftminFunction(torch.autograd.Function):
    """Forward: one launch. Backward: one launch for ``x``, one for ``y`` and ``h``."""

    @staticmethod
    def forward(
        ctx: Any, x: Tensor, y: Tensor, h: Tensor, n_valid: Tensor, m_valid: Tensor, cfg: _Launch
    ) -> Tensor:
        out, lse = _forward(cfg, x, y, h, n_valid, m_valid)
        ctx.save_for_backward(x, y, h, lse, n_valid, m_valid)
        ctx.cfg = cfg
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor | None, ...]:
        x, y, h, lse, n_valid, m_valid = ctx.saved_tensors
        need_x, need_y, need_h = ctx.needs_input_grad[:3]
        gx, gy, gh = _backward(
            ctx.cfg, x, y, h, lse, grad_out.contiguous(), n_valid, m_valid, need_x, need_y or need_h
        )
        return (
            gx.to(x.dtype) if need_x else None,
            gy.to(y.dtype) if need_y else None,
            gh.to(h.dtype) if need_h else None,
            None,
            None,
            None,
        )


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------


def _check_inputs(eps: object, x: object, y: object, h: object) -> float:
    eps = check_real("eps", eps, gt=0, arrays=False)
    for name, t, ndim in (("x", x, 3), ("y", y, 3), ("h", h, 2)):
        check_float_tensor(name, t)
        if t.ndim != ndim:
            shape = "(B, M)" if name == "h" else f"(B, {'N' if name == 'x' else 'M'}, D)"
            raise ValueError(f"{name} must have shape {shape}, got {describe(t)}")
    x, y, h = cast(Tensor, x), cast(Tensor, y), cast(Tensor, h)
    if y.shape[0] != x.shape[0] or y.shape[2] != x.shape[2]:
        raise ValueError(
            f"y must have shape (B, M, D) with B and D of x {tuple(x.shape)}, got {describe(y)}"
        )
    if tuple(h.shape) != (y.shape[0], y.shape[1]):
        raise ValueError(f"h must have shape (B, M) = {tuple(y.shape[:2])}, got {describe(h)}")
    if x.shape[2] > MAX_DIM:
        raise ValueError(
            f"the triton backend supports D <= {MAX_DIM} coordinates, got x {describe(x)}; "
            "use backend='online'"
        )
    if y.device != x.device or h.device != x.device:
        raise ValueError(
            f"x, y and h must be on one device, got {x.device}, {y.device} and {h.device}"
        )
    return eps


def _check_blocks(block_n: object, block_m: object, num_warps: object) -> None:
    for name, val in (("block_n", block_n), ("block_m", block_m), ("num_warps", num_warps)):
        if check_positive_int(name, val) & (val - 1):
            raise ValueError(f"{name} must be a positive power of two, got {val!r}")


def _lengths(lengths: Tensor | None, name: str, b: int, full: int, device: torch.device) -> Tensor:
    if lengths is None:
        return torch.full((b,), full, dtype=torch.int32, device=device)
    if (
        not isinstance(lengths, Tensor)
        or lengths.dtype.is_floating_point
        or lengths.is_complex()
        or lengths.dtype == torch.bool
    ):
        raise TypeError(
            f"{name} must be an integer tensor of shape ({b},), got {describe(lengths)}"
        )
    if tuple(lengths.shape) != (b,):
        raise ValueError(f"{name} must have shape ({b},), got {describe(lengths)}")
    return lengths.to(device=device, dtype=torch.int32).clamp(0, full).contiguous()


def triton_softmin(
    eps: float,
    x: Tensor,
    y: Tensor,
    h: Tensor,
    cost: Any,
    *,
    n_valid: Tensor | None = None,
    m_valid: Tensor | None = None,
    block_n: int = 64,
    block_m: int = 32,
    num_warps: int = 4,
) -> Tensor:
    r"""Batched soft-min :math:`-\varepsilon \log \sum_j \exp(h_j - C(x_i, y_j)/\varepsilon)`.

    Args:
        eps: Entropic regularization, > 0.
        x ((B, N, D) Tensor): Row points (float16, bfloat16, float32 or float64).
        y ((B, M, D) Tensor): Column points.
        h ((B, M) Tensor): Column log-weights plus scaled potential; ``-inf`` marks padding and
            zero weights.
        cost: ``"sqeuclidean"`` (:math:`\|x-y\|^2`), ``"euclidean"`` (:math:`\|x-y\|`) or a
            :class:`~sinkmatch.costs.PowerCost` (:math:`s\,\|x-y\|^p`, any ``p >= 1`` and
            scale ``s``; ``SqEuclidean(scale=0.5)`` and ``Euclidean()`` are such objects).
        n_valid ((B,) int Tensor, optional): Rows ``i >= n_valid[b]`` are padding: not
            computed, returned as 0 with zero gradient. Default: all ``N`` rows.
        m_valid ((B,) int Tensor, optional): Columns ``j >= m_valid[b]`` are skipped; they must
            be padding (``h = -inf``), else the result is not the soft-min. Default: one past
            the last column with finite ``h`` (exact, computed on the device).
        block_n: Rows per program (power of two; >= 16 on GPU).
        block_m: Columns per inner-loop step (power of two; >= 16 on GPU).
        num_warps: Warps per program (GPU only).

    Returns:
        (B, N) Tensor: The soft-min, float32 (float64 for float64 inputs); ``+inf`` for a row
        whose ``h`` is entirely ``-inf``. Differentiable with respect to ``x``, ``y`` and ``h``
        (first order).

    Raises:
        ValueError: Bad shapes, ``eps``, cost or block sizes, or CPU tensors without
            ``TRITON_INTERPRET=1``.
        TypeError: Non-tensor or non-floating inputs.
    """
    eps = _check_inputs(eps, x, y, h)
    power, scale = _cost_params(cost)
    _check_blocks(block_n, block_m, num_warps)
    interpret = _use_interpreter(x.device)
    if not interpret and min(block_n, block_m) < 16:
        raise ValueError(
            "block_n and block_m must be >= 16 on the GPU (tl.dot tiles), got "
            f"{block_n} and {block_m}"
        )
    b, n, _ = x.shape
    m = y.shape[1]
    acc = compute_dtype(x, y, h)
    nv = _lengths(n_valid, "n_valid", b, n, x.device)
    if m_valid is not None:
        mv = _lengths(m_valid, "m_valid", b, m, x.device)
    if b * n == 0:
        return torch.empty((b, n), dtype=acc, device=x.device)
    if m == 0:
        return torch.full((b, n), math.inf, dtype=acc, device=x.device)
    if m_valid is None:
        mv = last_positive(h != -math.inf)  # NaN is not padding
    cfg = _Launch(eps, power, scale, block_n, block_m, num_warps, interpret)
    x, y, h = x.contiguous(), y.contiguous(), h.contiguous()
    if torch.is_grad_enabled() and (x.requires_grad or y.requires_grad or h.requires_grad):
        return _SoftminFunction.apply(x, y, h, nv, mv, cfg)
    out, _ = _forward(cfg, x, y, h, nv, mv)
    return out


class TritonSoftmin(Backend):
    """The ``"triton"`` soft-min backend (see :mod:`sinkmatch.backends.triton`).

    Args:
        block_n: Rows per program (power of two; >= 16 on GPU).
        block_m: Columns per inner-loop step (power of two; >= 16 on GPU).
        num_warps: Warps per program (GPU only).

    Example:
        >>> TritonSoftmin(block_n=32).name
        'triton'
    """

    name: ClassVar[str] = "triton"
    # the loop's half steps pass n_valid/m_valid: trailing padding is skipped
    supports_valid_lengths: ClassVar[bool] = True

    def __init__(self, *, block_n: int = 64, block_m: int = 32, num_warps: int = 4):
        _check_blocks(block_n, block_m, num_warps)
        self.block_n = block_n
        self.block_m = block_m
        self.num_warps = num_warps

    def __repr__(self) -> str:
        return (
            f"TritonSoftmin(block_n={self.block_n}, block_m={self.block_m}, "
            f"num_warps={self.num_warps})"
        )

    def softmin(
        self,
        eps: float,
        x: Tensor,
        y: Tensor,
        h: Tensor,
        cost: Any,
        *,
        n_valid: Tensor | None = None,
        m_valid: Tensor | None = None,
    ) -> Tensor:
        """Soft-min over the columns; see :func:`triton_softmin` for the arguments."""
        return triton_softmin(
            eps,
            x,
            y,
            h,
            cost,
            n_valid=n_valid,
            m_valid=m_valid,
            block_n=self.block_n,
            block_m=self.block_m,
            num_warps=self.num_warps,
        )
