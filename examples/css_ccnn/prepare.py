"""Training-side image preparation shared by the stages: splits, resized image banks, crops, and
the frozen FEN's features of crops.

Crop positions are multiples of 8 pixels, so a crop of the image and the same crop of its 1/4- and
1/8-resolution feature/density maps line up exactly (used by the frozen-FEN feature cache).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .data.datasets import CrowdDataset
from .data.transforms import hflip, resize_for_test
from .model import CSSCCNN, FENFeatures

__all__ = [
    "FeatureSource",
    "ImageBank",
    "PreparedImage",
    "crop_points",
    "fixed_offsets",
    "random_offset",
    "split_train_val",
]


def split_train_val(n: int, val_fraction: float, *, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic split of ``range(n)`` into (train, validation) index arrays (both sorted).

    At least one image goes to each side.
    """
    if n < 2:
        raise ValueError(f"need at least 2 training images to hold out validation images, got {n}")
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    n_val = min(n - 1, max(1, round(n * val_fraction)))
    perm = np.random.default_rng(seed).permutation(n)
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


@dataclass
class PreparedImage:
    """One resized image (and its mirror), with points when the dataset has labels.

    Attributes:
        image ((H, W, 3) uint8 ndarray): H, W multiples of 8.
        points ((K, 2) float64 ndarray or None): (x, y), 0-based, in resized pixels.
        flipped, flipped_points: the horizontal mirror.
    """

    image: np.ndarray
    points: np.ndarray | None
    flipped: np.ndarray
    flipped_points: np.ndarray | None

    def view(self, flip: bool) -> tuple[np.ndarray, np.ndarray | None]:
        return (self.flipped, self.flipped_points) if flip else (self.image, self.points)


def _resize(image, points, min_side: int, max_side: int, scale: float):
    return resize_for_test(
        image, points, min_side=min_side, max_side=max_side, multiple=8, scale=scale
    )


def _hflip(image: np.ndarray, points: np.ndarray | None):
    return hflip(image, points)


class ImageBank:
    """Lazily resized (and optionally cached) images of a dataset subset.

    Args:
        dataset (CrowdDataset): the images (labeled or not; points are kept when present).
        indices: which dataset items this bank serves; ``bank[j]`` is ``dataset[indices[j]]``.
        min_side, max_side, scale: the resize (``resize_for_test``), sides multiples of 8.
        cache (bool): keep prepared images in memory.
    """

    def __init__(
        self,
        dataset: CrowdDataset,
        indices: np.ndarray | None = None,
        *,
        min_side: int,
        max_side: int,
        scale: float = 1.0,
        cache: bool = True,
    ) -> None:
        self.dataset = dataset
        self.indices = np.arange(len(dataset)) if indices is None else np.asarray(indices)
        self.min_side, self.max_side, self.cache = int(min_side), int(max_side), bool(cache)
        self.scale = float(scale)
        self._store: dict[int, PreparedImage] = {}

    @property
    def labels(self) -> bool:
        return bool(self.dataset.labels)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, j: int) -> PreparedImage:
        if j in self._store:
            return self._store[j]
        sample = self.dataset[int(self.indices[j])]
        image, points = _resize(
            sample.image, sample.points, self.min_side, self.max_side, self.scale
        )
        flipped, flipped_points = _hflip(image, points)
        prepared = PreparedImage(np.ascontiguousarray(image), points, flipped, flipped_points)
        if self.cache:
            self._store[j] = prepared
        return prepared


def random_offset(
    height: int, width: int, size: int, rng: np.random.Generator, *, align: int = 8
) -> tuple[int, int]:
    """A random top-left corner (multiples of ``align``) of a ``size × size`` crop."""
    if size > height or size > width:
        raise ValueError(f"crop size {size} exceeds the image size {(height, width)}")
    top = int(rng.integers(0, (height - size) // align + 1)) * align
    left = int(rng.integers(0, (width - size) // align + 1)) * align
    return top, left


def fixed_offsets(height: int, width: int, size: int, n: int, *, align: int = 8) -> list:
    """``n`` deterministic crop corners spread over the image (centre first, then corners,
    then a fixed pseudo-random sequence)."""
    if size > height or size > width:
        raise ValueError(f"crop size {size} exceeds the image size {(height, width)}")
    th, tw = (height - size) // align, (width - size) // align
    cands = [(th // 2, tw // 2), (0, 0), (0, tw), (th, 0), (th, tw)]
    rng = np.random.default_rng(height * 100003 + width)
    while len(cands) < n:
        cands.append((int(rng.integers(0, th + 1)), int(rng.integers(0, tw + 1))))
    return [(top * align, left * align) for top, left in cands[:n]]


def crop_points(points: np.ndarray | None, top: int, left: int, size: int) -> np.ndarray:
    """The points whose pixel lies in the crop ``[top, top+size) × [left, left+size)``, shifted.

    A point ``(x, y)`` belongs to the pixel ``(floor(y + 0.5), floor(x + 0.5))`` (the convention
    of :mod:`examples.css_ccnn.data.transforms`, which :func:`density_map` also uses), so a
    point at ``x = left - 0.3`` is kept (its pixel is column ``left``) and one at
    ``x = left + size - 0.3`` is not.

    Args:
        points ((K, 2) ndarray or None): ``(x, y)`` positions in the image.
        top (int), left (int), size (int): the crop.

    Returns:
        (K', 2) float64 ndarray: the kept points in crop coordinates (empty for ``None``).

    Example:
        >>> crop_points(np.array([[7.4, 9.0], [7.6, 9.0], [15.4, 9.0], [15.6, 9.0]]), 8, 8, 8)
        array([[-0.4,  1. ],
               [ 7.4,  1. ]])
    """
    if points is None or len(points) == 0:
        return np.zeros((0, 2), dtype=np.float64)
    points = np.asarray(points, dtype=np.float64)
    col, row = np.floor(points[:, 0] + 0.5), np.floor(points[:, 1] + 0.5)
    keep = (col >= left) & (col < left + size) & (row >= top) & (row < top + size)
    return points[keep] - np.array([left, top], dtype=np.float64)


class FeatureSource:
    """FEN features of aligned crops, optionally from a cache of full-image features.

    With ``cache=True`` the frozen FEN runs once per image and mirror; a crop at (top, left) of
    side S then reads features ``[top/4 : (top+S)/4, left/4 : (left+S)/4]``. This equals running
    the FEN on the crop except near the crop border (zero padding there vs. real context).

    Args:
        model (CSSCCNN): its (frozen) FEN computes the features.
        bank (ImageBank): the images.
        device (torch.device): where the FEN runs.
        cache (bool): keep full-image features (only for a frozen FEN).
    """

    def __init__(
        self, model: CSSCCNN, bank: ImageBank, *, device: torch.device, cache: bool
    ) -> None:
        self.model, self.bank, self.device, self.cache = model, bank, device, cache
        self._store: dict[tuple[int, bool], FENFeatures] = {}

    def _full(self, j: int, flip: bool) -> FENFeatures:
        key = (j, flip)
        if key not in self._store:
            image, _ = self.bank[j].view(flip)
            x = torch.from_numpy(image).to(self.device).permute(2, 0, 1)[None].float()
            with torch.no_grad():
                self._store[key] = self.model.fen(x)
        return self._store[key]

    def crops(self, items: list, size: int) -> np.ndarray:
        """items: ``(j, flip, top, left)`` -> the uint8 crops, (B, S, S, 3)."""
        out = []
        for j, flip, top, left in items:
            image, _ = self.bank[j].view(flip)
            out.append(image[top : top + size, left : left + size])
        return np.stack(out)

    def batch(self, items: list, size: int) -> tuple[FENFeatures, np.ndarray]:
        """items: ``(j, flip, top, left)`` -> (features of the crops, uint8 crops (B, S, S, 3))."""
        crops_np = self.crops(items, size)
        if not self.cache:
            x = torch.from_numpy(crops_np).to(self.device).permute(0, 3, 1, 2).float()
            with torch.no_grad():
                return self.model.fen(x), crops_np
        q = size // 4
        parts = []
        for j, flip, top, left in items:
            f = self._full(j, flip)
            r0, c0 = top // 4, left // 4
            window = (slice(None), slice(None), slice(r0, r0 + q), slice(c0, c0 + q))
            parts.append(FENFeatures(f.pool2[window], f.block3[window]))
        feats = FENFeatures(
            torch.cat([p.pool2 for p in parts]), torch.cat([p.block3 for p in parts])
        )
        return feats, crops_np
