r"""The count prior of a run (paper Section 3.1): fixed from Cf_max and the data's geometry.

The paper fixes α = 2 and chooses λ so that the fullest cell is a 1-in-S event:

.. math::

    F_{\alpha,\lambda}(C_{max}) = 1 - \frac1S, \qquad
    C_{max} = \frac{Cf_{max}}{M N S_{crop}}.

Three numbers enter besides the user's Cf_max, and each is derived from the data without a
label unless the configuration gives it (:func:`resolve_prior`):

* **S_crop**, "the average number of crops that make up a full image": the mean area of the
  training images *as resized for training*, divided by the area the M × N cells of one crop
  cover (a float). Then :math:`C_{max} = Cf_{max} \cdot a_{cell} / \bar a_{image}`: the count of
  a cell of the fullest image if its people were spread evenly.
* **S**, the size of the image collection the maximum is taken over (the paper: 482 images for
  ShanghaiTech A, all splits): the number of images of the dataset, all splits.
* **M × N**, the cells per crop: 3 × 3 in every preset, so that a cell is the same part of the
  scene whatever the preset.

When no λ > 0 meets the rule (with α > 1 the pure power law can already put less than 1/S of its
mass above C_max: few images, or a large C_max), λ = 0 is used, the heaviest tail the family has,
and :class:`PriorRuleWarning` says so. :func:`prior_report` checks, without a label, that the
prior agrees with Cf_max: the per-image counts it implies (the sum of prior draws over the cells
of each training image) should have a median below Cf_max and a 1-in-S value near it.
"""

from __future__ import annotations

import copy
import json
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

import sinkmatch

from .config import Config, cell_size
from .data.datasets import CrowdDataset, count_images
from .data.transforms import resized_shape

__all__ = [
    "PriorReport",
    "PriorRuleWarning",
    "build_prior",
    "measure_crops_per_image",
    "prior_report",
    "resolve_cf_max",
    "resolve_prior",
    "training_shapes",
]

# the implied maximum is "far below" Cf_max under this fraction of it (the paper's own settings,
# ShanghaiTech A and UCF-QNRF, give 0.07-0.15)
FAR_BELOW = 1 / 20


class PriorRuleWarning(UserWarning):
    """The tail rule has no solution λ > 0 and λ = 0 is used."""


def resolve_cf_max(cfg: Config) -> float:
    """Cf_max from the config, else from ``<data.root>/synthetic.json`` (key ``cf_max``)."""
    if cfg.prior.cf_max is not None:
        if not cfg.prior.cf_max > 0:
            raise ValueError(f"prior.cf_max must be > 0, got {cfg.prior.cf_max}")
        return float(cfg.prior.cf_max)
    meta = Path(cfg.data.root) / "synthetic.json"
    if not meta.is_file():
        raise ValueError(
            "prior.cf_max is not set and the dataset has no synthetic.json: pass --cf-max N "
            "(or --set prior.cf_max=N), the approximate maximum crowd count of an image (e.g. "
            "3000 for ShanghaiTech A)"
        )
    return float(json.loads(meta.read_text())["cf_max"])


def cell_pixels(cfg: Config) -> int:
    """Side of a prior cell in (resized) image pixels: 8 × the cell side in density pixels."""
    return 8 * cell_size(cfg)


def training_shapes(dataset: CrowdDataset, cfg: Config) -> list[tuple[int, int]]:
    """``(height, width)`` of every training image as stage 2 resizes it (headers only)."""
    d, crop = cfg.data, cfg.stage2.crop_size
    return [
        resized_shape(h, w, min_side=max(d.min_side, crop), max_side=d.max_side, scale=d.scale)
        for h, w in dataset.image_shapes()
    ]


def measure_crops_per_image(shapes: list[tuple[int, int]], cfg: Config) -> float:
    """S_crop: mean image area / the area of the M × N cells of one crop.

    Example:
        >>> from examples.css_ccnn.config import make_config
        >>> cfg = make_config("cpu")  # 96-px crops, 3 x 3 cells of 32 px
        >>> measure_crops_per_image([(192, 192), (96, 96), (192, 96)], cfg)
        2.333333333333333
    """
    if not shapes:
        raise ValueError("need at least one training image to measure S_crop")
    covered = (cfg.prior.grid * cell_pixels(cfg)) ** 2
    return float(np.mean([h * w for h, w in shapes])) / covered


def _record(cfg: Config, key: str, value: float, source: str) -> None:
    cfg.derived.setdefault("prior", {})[key] = {"value": value, "source": source}


def resolve_prior(cfg: Config, dataset: CrowdDataset) -> Config:
    """A copy of ``cfg`` with Cf_max, S and S_crop filled in, each recorded in ``derived``.

    Values the configuration gives are kept (source ``"config"``); missing ones are derived
    without labels: S_crop from the training images' sizes (:func:`measure_crops_per_image`),
    S from the number of images of the dataset, all splits (:func:`count_images`). λ and
    C_max of the resulting prior are recorded too. A configuration already resolved is returned
    unchanged (a copy).

    Args:
        cfg: the run's configuration.
        dataset: the training images (``labels=False`` is enough: only sizes are read).
    """
    cfg = copy.deepcopy(cfg)
    if "prior" in cfg.derived:
        return cfg
    p = cfg.prior
    source = "config" if p.cf_max is not None else f"{cfg.data.root}/synthetic.json"
    p.cf_max = resolve_cf_max(cfg)
    _record(cfg, "cf_max", p.cf_max, source)
    if p.num_images is None:
        p.num_images = float(count_images(cfg.data.root, kind=cfg.data.kind))
        _record(cfg, "num_images", p.num_images, "number of images of the dataset, all splits")
    else:
        _record(cfg, "num_images", float(p.num_images), "config")
    if p.crops_per_image is None:
        shapes = training_shapes(dataset, cfg)
        p.crops_per_image = measure_crops_per_image(shapes, cfg)
        covered = (p.grid * cell_pixels(cfg)) ** 2
        _record(
            cfg,
            "crops_per_image",
            p.crops_per_image,
            f"mean training-image area {np.mean([h * w for h, w in shapes]):.0f} px² / "
            f"area of {p.grid}x{p.grid} cells of {cell_pixels(cfg)} px = {covered} px²",
        )
    else:
        _record(cfg, "crops_per_image", float(p.crops_per_image), "config")
    prior = build_prior(cfg)
    _record(cfg, "lambda", float(prior.lam), "tail rule CDF(C_max) = 1 - 1/S")
    _record(cfg, "c_max", float(prior.c_max), "Cf_max / (M N S_crop)")
    return cfg


def _zero_lambda_prior(cf_max: float, s: float, c_max: float, p) -> sinkmatch.CountPrior:
    base = sinkmatch.TruncatedPowerLaw(p.alpha, 0.0, x_min=1.0)
    tail = 1.0 - float(base.cdf(c_max))
    warnings.warn(
        f"no λ > 0 meets the tail rule CDF(C_max) = 1 - 1/S for S = {s:g} and C_max = "
        f"{c_max:.3g}: already the pure power law (α = {p.alpha:g}) puts only {tail:.3g} < 1/S "
        f"= {1 / s:.3g} of the cells above C_max, so λ = 0 (the heaviest tail the prior has) is "
        "used. S should be the size of the whole image collection Cf_max is the maximum of "
        "(--set prior.num_images=S); or check Cf_max.",
        PriorRuleWarning,
        stacklevel=3,
    )
    return sinkmatch.CountPrior(
        p.alpha,
        0.0,
        threshold=float(base.ppf(p.head_mass)),
        x_min=1.0,
        mode="exact",
        c_max=c_max,
        cf_max=cf_max,
        num_images=s,
    )


def build_prior(cfg: Config, *, num_images: float | None = None) -> sinkmatch.CountPrior:
    """:class:`sinkmatch.CountPrior` from Cf_max (paper Section 3.1).

    Args:
        cfg: a configuration whose ``prior.crops_per_image`` is set (:func:`resolve_prior`).
        num_images: S when ``prior.num_images`` is not set.

    Raises:
        ValueError: S_crop or S unknown, or C_max <= 1 (the prior starts at one person per
            cell, so Cf_max spread over the cells of an image must exceed one per cell).
    """
    p = cfg.prior
    s = p.num_images if p.num_images is not None else num_images
    if p.crops_per_image is None or s is None:
        raise ValueError(
            "prior.crops_per_image (S_crop) and prior.num_images (S) must be known: resolve them "
            "from the data with resolve_prior(cfg, dataset) or set them"
        )
    cf_max = resolve_cf_max(cfg)
    cells = p.grid * p.grid * float(p.crops_per_image)
    c_max = cf_max / cells
    if p.mode == "exact" and c_max <= 1.0:
        raise ValueError(
            f"C_max = Cf_max / (M N S_crop) = {cf_max:g} / {cells:.4g} = {c_max:.3g} people per "
            "cell, but the prior starts at 1 person per cell (x_min = 1): the cells are too small "
            "for this Cf_max. Use larger cells (a larger stage2.crop_size or smaller images, "
            "data.scale / data.max_side) or check Cf_max."
        )
    if p.mode == "exact" and p.alpha > 1:
        rule = 1.0 - 1.0 / float(s)
        if float(sinkmatch.TruncatedPowerLaw(p.alpha, 0.0, x_min=1.0).cdf(c_max)) >= rule:
            return _zero_lambda_prior(cf_max, float(s), c_max, p)
    return sinkmatch.CountPrior.from_max_count(
        cf_max,
        num_images=s,
        alpha=p.alpha,
        grid=(p.grid, p.grid),
        crops_per_image=float(p.crops_per_image),
        head_mass=p.head_mass,
        mode=p.mode,
    )


@dataclass
class PriorReport:
    """What the prior implies about whole images, beside Cf_max (no label is read).

    Attributes:
        cf_max, num_images (S), crops_per_image (S_crop), lam, c_max: the prior's settings.
        cells_per_image: mean number of cells of a training image.
        median, tail: median and 1 - 1/S quantile of the implied per-image count (the sum of
            independent prior draws over the cells of a training image).
        warnings: plain-words contradictions between the prior and Cf_max (empty: consistent).
    """

    cf_max: float
    num_images: float
    crops_per_image: float
    lam: float
    c_max: float
    cells_per_image: float
    median: float
    tail: float
    warnings: list = field(default_factory=list)

    def text(self) -> str:
        """The report as printed before stage 2."""
        lines = [
            f"prior: Cf_max {self.cf_max:g}, S {self.num_images:g} images, S_crop "
            f"{self.crops_per_image:.3g} crops per image, {self.cells_per_image:.1f} cells per "
            f"image, C_max {self.c_max:.3g} per cell, λ {self.lam:.4g}",
            f"prior: implied people per training image: median {self.median:.0f}, 1-in-S "
            f"(quantile 1 - 1/S) {self.tail:.0f}, beside Cf_max {self.cf_max:g}",
        ]
        return "\n".join([*lines, *(f"warning: {w}" for w in self.warnings)])


def _implied_counts(prior, cells: np.ndarray, s: float, seed: int) -> np.ndarray:
    """Sums of prior draws over the cells of each image, repeated so that the 1 - 1/S quantile
    rests on about 50 S image sums."""
    repeats = max(20, math.ceil(50 * s / len(cells)))
    repeats = min(repeats, max(1, 4_000_000 // int(cells.sum() + 1)))
    counts = np.repeat(cells, repeats)
    gen = torch.Generator().manual_seed(seed)
    draws = prior.sample(int(counts.sum()), generator=gen, dtype=torch.float64).numpy()
    return np.add.reduceat(draws, np.concatenate([[0], np.cumsum(counts)[:-1]]))


def _contradictions(r: PriorReport) -> list:
    out = []
    if r.median >= r.cf_max:
        out.append(
            f"the prior's typical training image (median {r.median:.0f} people: the sum over its "
            f"{r.cells_per_image:.0f} cells) already holds more than Cf_max = {r.cf_max:g}. The "
            f"prior's cells do not fit these images: check S_crop ({r.crops_per_image:.3g}), the "
            "cell size and Cf_max."
        )
    elif r.tail > r.cf_max:
        out.append(
            f"the prior's 1-in-S training image holds {r.tail:.0f} people, more than Cf_max = "
            f"{r.cf_max:g}: the prior expects more people than the data can hold. Check S_crop "
            f"({r.crops_per_image:.3g}) and Cf_max."
        )
    if r.tail < FAR_BELOW * r.cf_max:
        out.append(
            f"the prior never comes near Cf_max: its 1-in-S training image holds {r.tail:.0f} "
            f"people, 1/{r.cf_max / max(r.tail, 1e-9):.0f} of Cf_max = {r.cf_max:g} (the paper's "
            "own settings give 1/7 to 1/15). The cells may be too small for a prior that starts "
            f"at one person per cell, or S_crop ({r.crops_per_image:.3g}) too large."
        )
    if r.lam == 0.0:
        out.append(
            f"no λ > 0 meets the tail rule for S = {r.num_images:g}; λ = 0 is used. S should "
            "count the whole image collection Cf_max is the maximum of (--set prior.num_images)."
        )
    return out


def prior_report(
    prior: sinkmatch.CountPrior,
    cfg: Config,
    shapes: list[tuple[int, int]],
    *,
    seed: int = 0,
) -> PriorReport:
    """Check the prior against Cf_max on the training images' geometry (no label is read).

    Args:
        prior: the prior of the run (:func:`build_prior`).
        cfg: the resolved configuration (:func:`resolve_prior`).
        shapes: ``(height, width)`` of the training images as resized for training
            (:func:`training_shapes`).
        seed: seed of the prior draws.
    """
    area = float(cell_pixels(cfg) ** 2)
    cells = np.maximum(1, np.rint([h * w / area for h, w in shapes])).astype(np.int64)
    s = float(prior.num_images)
    sums = _implied_counts(prior, cells, s, seed)
    report = PriorReport(
        cf_max=float(prior.cf_max),
        num_images=s,
        crops_per_image=float(cfg.prior.crops_per_image),
        lam=float(prior.lam),
        c_max=float(prior.c_max),
        cells_per_image=float(cells.mean()),
        median=float(np.median(sums)),
        tail=float(np.quantile(sums, 1.0 - 1.0 / s)),
    )
    report.warnings = _contradictions(report)
    return report
