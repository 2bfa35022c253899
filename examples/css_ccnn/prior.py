"""The count prior of a run (paper Section 3.1), fixed from Cf_max and the run's geometry.

:func:`build_prior` turns the ``prior`` section of a configuration into a
:class:`sinkmatch.CountPrior`; stage 2, the CCNN P_prior baseline and the demo's figures all use
it, so they all see the same law.
"""

from __future__ import annotations

import json
from pathlib import Path

import sinkmatch

from .config import Config

__all__ = ["build_prior", "resolve_cf_max"]


def resolve_cf_max(cfg: Config) -> float:
    """Cf_max from the config, else from ``<data.root>/synthetic.json`` (key ``cf_max``)."""
    if cfg.prior.cf_max is not None:
        if not cfg.prior.cf_max > 0:
            raise ValueError(f"prior.cf_max must be > 0, got {cfg.prior.cf_max}")
        return float(cfg.prior.cf_max)
    meta = Path(cfg.data.root) / "synthetic.json"
    if not meta.is_file():
        raise ValueError(
            "prior.cf_max is not set and the dataset has no synthetic.json: pass "
            "--set prior.cf_max=<maximum crowd count of an image> (e.g. 3000 for ShanghaiTech A)"
        )
    return float(json.loads(meta.read_text())["cf_max"])


def build_prior(cfg: Config, *, num_images: int) -> sinkmatch.CountPrior:
    """:class:`sinkmatch.CountPrior` from Cf_max (paper Section 3.1): α, M×N cells, S_crop,
    head redistribution, with ``1/S`` tail probability for ``S = prior.num_images`` or, when that
    is unset, ``num_images`` (the number of training images)."""
    p = cfg.prior
    return sinkmatch.CountPrior.from_max_count(
        resolve_cf_max(cfg),
        num_images=p.num_images if p.num_images is not None else num_images,
        alpha=p.alpha,
        grid=(p.grid, p.grid),
        crops_per_image=p.crops_per_image,
        head_mass=p.head_mass,
        mode=p.mode,
    )
