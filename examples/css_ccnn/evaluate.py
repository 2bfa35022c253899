"""Evaluation on full test images and the results table (paper Section 4.1, Table 1).

Every predictor maps a resized test image (``resize_for_test``: one forward pass per image, no
tiling) to a density map at 1/8 resolution. Metrics, with :math:`C_i` the predicted and
:math:`G_i` the true count of test image :math:`i` (:math:`S` images):

.. math::

    MAE = \\frac1S\\sum_i |C_i - G_i|, \\qquad
    RMSE = \\sqrt{\\frac1S\\sum_i (C_i - G_i)^2}\\ \\text{(the paper's "MSE")}, \\qquad
    NAE = \\frac1S\\sum_i \\frac{|C_i - G_i|}{G_i},

and GAME(L) (Guerrero-Gómez-Olmedo et al. 2015): the image is cut into a :math:`2^L × 2^L` grid
(4^L regions) and the absolute errors of the region counts are summed, then averaged over images;
GAME(0) = MAE. Ground-truth region counts come from the annotated points; predicted ones from the
density pixels whose centres fall in the region. NAE skips images with no people.

Labels are read here (and by the labeled baselines) only.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from .checkpoint import atomic_write_text
from .data.datasets import CrowdDataset, require_labeled
from .data.transforms import resize_for_test

__all__ = [
    "METRICS",
    "EvalResult",
    "MeanPredictor",
    "ModelPredictor",
    "PriorPredictor",
    "ResultsTable",
    "evaluate",
    "game",
]

METRICS = ("mae", "rmse", "nae", "game0", "game1", "game2", "game3")

Predictor = Callable[[np.ndarray], np.ndarray]


class ModelPredictor:
    """A CSS-CCNN network as a predictor: (H, W, 3) uint8 -> (H/8, W/8) float64 density."""

    def __init__(self, model: torch.nn.Module, device: torch.device) -> None:
        self.model, self.device = model.to(device).eval(), device

    def __call__(self, image: np.ndarray) -> np.ndarray:
        x = (
            torch.from_numpy(np.ascontiguousarray(image))
            .to(self.device)
            .permute(2, 0, 1)[None]
            .float()
        )
        with torch.no_grad():
            return self.model(x)[0, 0].double().cpu().numpy()


class MeanPredictor:
    """CCNN Mean: the same count (the mean training-image count) for every image, spread
    uniformly over the density map."""

    def __init__(self, count: float) -> None:
        self.count = float(count)

    def __call__(self, image: np.ndarray) -> np.ndarray:
        h, w = image.shape[0] // 8, image.shape[1] // 8
        return np.full((h, w), self.count / (h * w))


class PriorPredictor:
    """CCNN P_prior: every cell of the image gets a count drawn from the prior.

    The image's density map is tiled with cells of the training cell size (``cell`` density
    pixels, i.e. ``8 · cell`` image pixels: the cells the prior describes); each cell receives an
    independent prior sample spread uniformly over it (partial cells at the border get the share of
    their area). ``draws > 1`` averages that many independent draws.
    """

    def __init__(self, prior: Any, *, cell: int, seed: int = 0, draws: int = 1) -> None:
        if cell < 1 or draws < 1:
            raise ValueError(f"cell and draws must be >= 1, got cell={cell}, draws={draws}")
        self.prior, self.cell, self.draws = prior, int(cell), int(draws)
        self.generator = torch.Generator().manual_seed(seed)

    def __call__(self, image: np.ndarray) -> np.ndarray:
        h, w, c = image.shape[0] // 8, image.shape[1] // 8, self.cell
        nh, nw = math.ceil(h / c), math.ceil(w / c)
        out = np.zeros((h, w))
        for _ in range(self.draws):
            samples = self.prior.sample(nh * nw, generator=self.generator, dtype=torch.float64)
            grid = samples.cpu().numpy().reshape(nh, nw) / (c * c)
            out += np.repeat(np.repeat(grid, c, axis=0), c, axis=1)[:h, :w]
        return out / self.draws


def game(density: np.ndarray, points: np.ndarray, image_hw: tuple, level: int) -> float:
    """GAME(level): sum over the 2^level × 2^level regions of |predicted - true region count|.

    Args:
        density ((h, w) ndarray): prediction at 1/8 resolution of an ``image_hw`` image.
        points ((K, 2) ndarray): true (x, y) positions in image pixels.
    """
    height, width = image_hw
    n = 2**level
    h, w = density.shape
    ys = np.minimum(((np.arange(h) + 0.5) * height / h * n / height).astype(int), n - 1)
    xs = np.minimum(((np.arange(w) + 0.5) * width / w * n / width).astype(int), n - 1)
    pred = np.zeros((n, n))
    np.add.at(pred, (ys[:, None], xs[None, :]), density)
    true = np.zeros((n, n))
    if len(points):
        py = np.clip((points[:, 1] * n / height).astype(int), 0, n - 1)
        px = np.clip((points[:, 0] * n / width).astype(int), 0, n - 1)
        np.add.at(true, (py, px), 1.0)
    return float(np.abs(pred - true).sum())


@dataclass
class EvalResult:
    """Metrics of one predictor on a test set, and the per-image counts."""

    metrics: dict
    predicted: list
    true: list
    paths: list = field(default_factory=list)


def evaluate(
    predictor: Predictor,
    dataset: CrowdDataset,
    *,
    min_side: int = 224,
    max_side: int = 1024,
    scale: float = 1.0,
    game_levels: int = 3,
    progress: bool = False,
    desc: str = "evaluate",
) -> EvalResult:
    """Evaluate ``predictor`` on a labeled test set (one prediction per full, resized image:
    ``resize_for_test`` with ``min_side``, ``max_side``, ``scale``)."""
    require_labeled(dataset, "evaluate (ground truth of the test set)")
    pred_counts, true_counts, paths = [], [], []
    games = {level: [] for level in range(game_levels + 1)}
    for sample in tqdm(dataset, desc=desc, disable=not progress, leave=False):
        image, points = resize_for_test(
            sample.image, sample.points, min_side=min_side, max_side=max_side, scale=scale
        )
        density = np.asarray(predictor(image), dtype=np.float64)
        pred_counts.append(float(density.sum()))
        true_counts.append(float(len(points)))
        paths.append(str(sample.path))
        for level in games:
            games[level].append(game(density, points, image.shape[:2], level))
    pred, true = np.array(pred_counts), np.array(true_counts)
    err = pred - true
    positive = true > 0
    metrics = {
        "mae": float(np.abs(err).mean()),
        "rmse": float(np.sqrt((err**2).mean())),
        "nae": float((np.abs(err[positive]) / true[positive]).mean())
        if positive.any()
        else float("nan"),
        "mean_pred": float(pred.mean()),
        "mean_true": float(true.mean()),
    }
    for level, values in games.items():
        metrics[f"game{level}"] = float(np.mean(values))
    return EvalResult(metrics=metrics, predicted=pred_counts, true=true_counts, paths=paths)


class ResultsTable:
    """Per-method metrics over seeds, summarised as mean ± std (sample std, ddof = 1).

    Rows keep their insertion order (the paper's Table 1 order is used by the demo).
    """

    def __init__(self) -> None:
        self.rows: dict[str, list] = {}
        self.notes: dict[str, str] = {}

    def add(self, method: str, metrics: dict, *, note: str | None = None) -> None:
        self.rows.setdefault(method, []).append(dict(metrics))
        if note:
            self.notes[method] = note

    def summary(self) -> dict:
        out = {}
        for method, runs in self.rows.items():
            entry = {"runs": len(runs)}
            for key in runs[0]:
                values = np.array([r[key] for r in runs], dtype=np.float64)
                entry[key] = {
                    "mean": float(values.mean()),
                    "std": float(values.std(ddof=1)) if len(values) > 1 else 0.0,
                    "values": values.tolist(),
                }
            out[method] = entry
        return out

    def markdown(
        self, metrics: Sequence[str] = ("mae", "rmse", "nae", "game1", "game2", "game3")
    ) -> str:
        names = {"mae": "MAE", "rmse": "MSE (=RMSE)", "nae": "NAE"}
        header = ["Method", *[names.get(m, m.upper()) for m in metrics], "runs"]
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for method, entry in self.summary().items():
            cells = [method]
            for m in metrics:
                if m not in entry:
                    cells.append("–")
                    continue
                mean, std = entry[m]["mean"], entry[m]["std"]
                fmt = "{:.3f}" if m == "nae" else "{:.1f}"
                cells.append(
                    fmt.format(mean) + (" ± " + fmt.format(std) if entry["runs"] > 1 else "")
                )
            cells.append(str(entry["runs"]))
            lines.append("| " + " | ".join(cells) + " |")
        for method, note in self.notes.items():
            lines.append(f"\n- **{method}**: {note}")
        return "\n".join(lines) + "\n"

    def csv(self) -> str:
        buf = io.StringIO()
        summary = self.summary()
        keys = sorted(
            {k for e in summary.values() for k in e if k != "runs"},
            key=lambda k: (k not in METRICS, k),
        )
        writer = csv.writer(buf)
        writer.writerow(["method", "runs", *[f"{k}_{s}" for k in keys for s in ("mean", "std")]])
        for method, entry in summary.items():
            writer.writerow(
                [
                    method,
                    entry["runs"],
                    *[
                        f"{entry[k][s]:.6g}" if k in entry else ""
                        for k in keys
                        for s in ("mean", "std")
                    ],
                ]
            )
        return buf.getvalue()

    def save(self, out_dir: str | Path, *, stem: str = "results") -> dict:
        """Write ``<stem>.json``, ``<stem>.csv`` and ``<stem>.md``; returns their paths."""
        out_dir = Path(out_dir)
        paths = {
            "json": atomic_write_text(
                out_dir / f"{stem}.json",
                json.dumps(
                    {"summary": self.summary(), "runs": self.rows, "notes": self.notes}, indent=2
                )
                + "\n",
            ),
            "csv": atomic_write_text(out_dir / f"{stem}.csv", self.csv()),
            "md": atomic_write_text(out_dir / f"{stem}.md", self.markdown()),
        }
        return paths
