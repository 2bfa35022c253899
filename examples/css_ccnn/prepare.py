"""Training-side image preparation shared by the stages: splits, resized image banks, crops.

Crop positions are multiples of 8 pixels, so a crop of the image and the same crop of its 1/4- and
1/8-resolution feature/density maps line up exactly (used by the frozen-FEN feature cache).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .data.datasets import CrowdDataset
from .data.transforms import hflip, resize_for_test

__all__ = [
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


def _resize(image: np.ndarray, points: np.ndarray | None, min_side: int, max_side: int):
    return resize_for_test(image, points, min_side=min_side, max_side=max_side, multiple=8)


def _hflip(image: np.ndarray, points: np.ndarray | None):
    return hflip(image, points)


class ImageBank:
    """Lazily resized (and optionally cached) images of a dataset subset.

    Args:
        dataset (CrowdDataset): the images (labeled or not; points are kept when present).
        indices: which dataset items this bank serves; ``bank[j]`` is ``dataset[indices[j]]``.
        min_side, max_side: resize bounds (``resize_for_test``), multiple of 8.
        cache (bool): keep prepared images in memory.
    """

    def __init__(
        self,
        dataset: CrowdDataset,
        indices: np.ndarray | None = None,
        *,
        min_side: int,
        max_side: int,
        cache: bool = True,
    ) -> None:
        self.dataset = dataset
        self.indices = np.arange(len(dataset)) if indices is None else np.asarray(indices)
        self.min_side, self.max_side, self.cache = int(min_side), int(max_side), bool(cache)
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
        image, points = _resize(sample.image, sample.points, self.min_side, self.max_side)
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


def crop_points(points: np.ndarray, top: int, left: int, size: int) -> np.ndarray:
    """Points inside the crop ``[left, left+size) × [top, top+size)``, shifted to crop coordinates."""
    if points is None or len(points) == 0:
        return np.zeros((0, 2), dtype=np.float64)
    x, y = points[:, 0] - left, points[:, 1] - top
    keep = (x >= 0) & (x < size) & (y >= 0) & (y < size)
    return np.stack([x[keep], y[keep]], axis=1).astype(np.float64)
