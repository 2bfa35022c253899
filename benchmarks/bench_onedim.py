"""pytest-benchmark of the 1-D path (``backend="onedim"``) on the CSS-CCNN pair, one thread.

Forward + backward of ``sinkhorn(x, y, eps=0.1, backend="onedim")`` at 1,568² and 16,384², next
to the exact sort (``wasserstein_1d``, forward + backward) of the same sets, so that the ratio
comes from one run::

    python -m pytest benchmarks/bench_onedim.py --benchmark-enable -p no:cacheprovider
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.workloads import css_pair  # noqa: E402
from sinkmatch import sinkhorn, wasserstein_1d  # noqa: E402


def _pair(n: int):
    x, y = css_pair(n, n, seed=0)
    return torch.tensor(x), torch.tensor(y)


def _onedim(x, y):
    xx = x.clone().requires_grad_()
    res = sinkhorn(xx[:, None], y[:, None], eps=0.1, backend="onedim")
    res.value.backward()
    return res


def _sort(x, y):
    xx = x.clone().requires_grad_()
    wasserstein_1d(xx, y, p=2).backward()


@pytest.mark.parametrize("n", [1568, 16384])
def test_onedim_forward_backward(benchmark, n):
    torch.set_num_threads(1)
    x, y = _pair(n)
    res = benchmark(_onedim, x, y)
    assert bool(res.converged) and float(res.marginal_error) < 1e-3


@pytest.mark.parametrize("n", [1568, 16384])
def test_exact_sort_forward_backward(benchmark, n):
    torch.set_num_threads(1)
    x, y = _pair(n)
    benchmark(_sort, x, y)
