"""Count priors: the truncated power law of CSS-CCNN and the ablation priors, behind one protocol.

Modules: :mod:`.base` (the :class:`Prior` protocol), :mod:`.power_law` (truncated power law,
Pareto), :mod:`.simple` (log-normal, uniform, empirical), :mod:`.head` (head redistribution),
:mod:`.count_prior` (λ from the maximum count, :class:`CountPrior`), :mod:`.legacy` (the original
code's λ, threshold and sampler), :mod:`.fit` (maximum-likelihood fits, Vuong test).
"""

from .base import Prior
from .count_prior import CountPrior, solve_lambda
from .fit import (
    FitResult,
    compare_fits,
    fit_exponential,
    fit_lognormal,
    fit_power_law,
    fit_truncated_power_law,
)
from .head import HeadRedistributed
from .legacy import legacy_lambda, legacy_threshold
from .power_law import Pareto, TruncatedPowerLaw
from .simple import Empirical, LogNormal, Uniform

__all__ = [
    "CountPrior",
    "Empirical",
    "FitResult",
    "HeadRedistributed",
    "LogNormal",
    "Pareto",
    "Prior",
    "TruncatedPowerLaw",
    "Uniform",
    "compare_fits",
    "fit_exponential",
    "fit_lognormal",
    "fit_power_law",
    "fit_truncated_power_law",
    "legacy_lambda",
    "legacy_threshold",
    "solve_lambda",
]
