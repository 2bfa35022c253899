"""sinkmatch: count priors and Sinkhorn losses for label-free regression in PyTorch.

Public names are imported lazily (PEP 562) so that ``import sinkmatch`` does no work beyond
reading this file; ``from sinkmatch import X`` and ``sinkmatch.X`` both work for every name in
``__all__``.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# name -> submodule that defines it
_EXPORTS: dict[str, str] = {
    # priors
    "Prior": "sinkmatch.priors",
    "TruncatedPowerLaw": "sinkmatch.priors",
    "Pareto": "sinkmatch.priors",
    "LogNormal": "sinkmatch.priors",
    "Uniform": "sinkmatch.priors",
    "Empirical": "sinkmatch.priors",
    "Exponential": "sinkmatch.priors.simple",
    "HeadRedistributed": "sinkmatch.priors",
    "CountPrior": "sinkmatch.priors",
    "solve_lambda": "sinkmatch.priors",
    "legacy_lambda": "sinkmatch.priors",
    "legacy_threshold": "sinkmatch.priors",
    "FitResult": "sinkmatch.priors",
    "fit_truncated_power_law": "sinkmatch.priors",
    "fit_power_law": "sinkmatch.priors",
    "fit_lognormal": "sinkmatch.priors",
    "fit_exponential": "sinkmatch.priors",
    "compare_fits": "sinkmatch.priors",
    "Comparison": "sinkmatch.priors.fit",
    # costs and solver
    "get_cost": "sinkmatch.costs",
    "PowerCost": "sinkmatch.costs",
    "SqEuclidean": "sinkmatch.costs",
    "Euclidean": "sinkmatch.costs",
    "SinkhornResult": "sinkmatch.solver",
    "sinkhorn": "sinkmatch.solver",
    # exact 1-D
    "wasserstein_1d": "sinkmatch.exact1d",
    "exact_1d_potentials": "sinkmatch.exact1d",
    # grouping
    "pack_groups": "sinkmatch.grouping",
    "percentile_split": "sinkmatch.grouping",
    # losses
    "sinkhorn_loss": "sinkmatch.losses",
    "SinkhornLoss": "sinkmatch.losses",
    "grouped_sinkhorn_loss": "sinkmatch.losses",
    "GroupedSinkhornLoss": "sinkmatch.losses",
    "distribution_matching_loss": "sinkmatch.losses",
    "DistributionMatchingLoss": "sinkmatch.losses",
    "wasserstein_1d_loss": "sinkmatch.losses",
    "Wasserstein1DLoss": "sinkmatch.losses",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'sinkmatch' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
