r"""Sampling speed of the count priors (pytest-benchmark).

Run (machine-readable results with the library versions and machine info in the JSON)::

    python -m pytest benchmarks/bench_priors.py --benchmark-enable -p no:cacheprovider \
        --benchmark-json=benchmarks/results/bench_priors.json

``extra_info["draws_per_s"]`` holds draws per second (from the median round). CUDA cases run when
a GPU is present (marked ``gpu``: add ``-m gpu`` or ``-m ''``).
"""

from __future__ import annotations

import pytest
import torch

from sinkmatch.priors import CountPrior, LogNormal, Pareto, TruncatedPowerLaw

N_LARGE = 1_000_000
N_STEP = 32 * 7 * 7  # prior samples per CSS-CCNN training step (batch 32, 7 x 7)

CASES = {
    "tpl_a2_l0.03": lambda: TruncatedPowerLaw(2.0, 0.03),
    "tpl_a0.5_l1e-4": lambda: TruncatedPowerLaw(0.5, 1e-4),
    "tpl_a3_l1": lambda: TruncatedPowerLaw(3.0, 1.0),
    "pareto_a2": lambda: Pareto(2.0),
    "lognormal": lambda: LogNormal(0.5, 1.0),
    "countprior_exact": lambda: CountPrior.from_max_count(3000, num_images=482),
    "countprior_legacy": lambda: CountPrior.from_max_count(3000, num_images=482, mode="legacy"),
}


def _run(benchmark, prior, n, device):
    g = torch.Generator(device=device).manual_seed(0)
    prior.sample(16, generator=g, device=device)  # build and move the tables once

    def draw():
        x = prior.sample(n, generator=g, device=device)
        if device != "cpu":
            torch.cuda.synchronize()
        return x

    x = benchmark(draw)
    assert x.shape == (n,)
    if benchmark.stats is not None:
        benchmark.extra_info["n"] = n
        benchmark.extra_info["draws_per_s"] = n / benchmark.stats.stats.median
        benchmark.extra_info["torch"] = torch.__version__
        benchmark.extra_info["threads"] = torch.get_num_threads()


@pytest.mark.parametrize("name", list(CASES))
def test_sample_1e6_cpu(benchmark, name):
    benchmark.group = "sample 1e6 cpu"
    _run(benchmark, CASES[name](), N_LARGE, "cpu")


@pytest.mark.parametrize("name", ["countprior_exact", "countprior_legacy"])
def test_sample_training_step_cpu(benchmark, name):
    benchmark.group = f"sample {N_STEP} cpu"
    _run(benchmark, CASES[name](), N_STEP, "cpu")


@pytest.mark.gpu
@pytest.mark.parametrize("name", list(CASES))
def test_sample_1e6_cuda(benchmark, name):
    if not torch.cuda.is_available():
        pytest.skip("no CUDA")
    benchmark.group = "sample 1e6 cuda"
    _run(benchmark, CASES[name](), N_LARGE, "cuda")
