"""Image/point transforms, ground-truth density maps and cell counts for CSS-CCNN.

Point convention (as in :mod:`examples.css_ccnn.data.datasets`): ``points`` is a (K, 2) array of
``(x, y)`` 0-based pixel coordinates, integer values at pixel centres; the pixel holding a point is
``(floor(y + 0.5), floor(x + 0.5))``. Every transform below moves points exactly as it moves the
pixels: a crop shifts them, a horizontal flip maps ``x -> W - 1 - x``, a resize maps pixel centres
to pixel centres, ``x -> (x + 0.5) · W'/W - 0.5`` (the geometry of ``cv2.resize``; the original code
used ``x · W'/W``, which differs by less than half a pixel).

Transforms never modify their inputs and return new arrays.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.nn import functional as F

__all__ = [
    "cell_counts",
    "density_map",
    "gaussian_kernel_1d",
    "hflip",
    "resize_for_test",
    "resized_shape",
    "to_tensor",
]

# ----------------------------------------------------------------------------------------------
# checks


def _check_image(image: object, name: str = "image") -> np.ndarray:
    if not isinstance(image, np.ndarray):
        raise TypeError(
            f"{name} must be a numpy array (H, W, C) or (H, W), got {type(image).__name__}"
        )
    if image.ndim not in (2, 3) or image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(
            f"{name} must have shape (H, W, C) or (H, W) with H, W > 0, got {image.shape}"
        )
    return image


def _check_points(points: object, name: str = "points") -> np.ndarray | None:
    if points is None:
        return None
    pts = np.asarray(points, dtype=np.float64)
    if pts.size == 0:
        return np.zeros((0, 2), dtype=np.float64)
    if pts.ndim != 2 or pts.shape[1] != 2:
        raise ValueError(f"{name} must have shape (K, 2) as (x, y), got {pts.shape}")
    if not np.all(np.isfinite(pts)):
        raise ValueError(
            f"{name} must be finite, got {int((~np.isfinite(pts)).sum())} non-finite values"
        )
    return pts


def _positive_int(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return int(value)


# ----------------------------------------------------------------------------------------------
# geometry


def resized_shape(
    height: int,
    width: int,
    *,
    min_side: int = 224,
    max_side: int = 1024,
    multiple: int = 8,
    scale: float = 1.0,
) -> tuple[int, int]:
    """The (height, width) an image is resized to for testing, as in the original CSS-CCNN code.

    The image is first scaled by ``scale`` (1 in the original; the ``cpu`` preset halves every
    image, with halved bounds, so that its geometry is the paper's at half resolution). The short
    side is scaled up to ``min_side`` when shorter, then the long side scaled down to
    ``max_side`` when longer (aspect ratio kept, sizes rounded to the nearest pixel), then each side
    rounded up to a multiple of ``multiple``. For aspect ratios beyond ``max_side / min_side`` both
    constraints cannot hold; the original then let the short side fall below ``min_side``, here the
    short side is clamped to ``min_side`` (a small aspect change) so that a 224 crop always fits.

    Args:
        height (int), width (int): the input size.
        min_side (int), max_side (int): bounds on the output sides, multiples of ``multiple``.
        multiple (int): every output side is a multiple of it (the model's output stride, 8).
        scale (float): factor applied before the bounds, > 0.

    Returns:
        tuple[int, int]: ``(height, width)`` with ``min_side <= sides <= max_side``.

    Example:
        >>> resized_shape(480, 640), resized_shape(480, 640, min_side=112, max_side=512, scale=0.5)
        ((480, 640), (240, 320))
    """
    h, w = _positive_int(height, "height"), _positive_int(width, "width")
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not 0 < scale < 1e3:
        raise ValueError(f"scale must be a number > 0, got {scale!r}")
    if scale != 1:
        h, w = max(1, int(h * scale + 0.5)), max(1, int(w * scale + 0.5))
    m = _positive_int(multiple, "multiple")
    lo, hi = _positive_int(min_side, "min_side"), _positive_int(max_side, "max_side")
    if lo % m or hi % m or lo > hi:
        raise ValueError(
            f"min_side and max_side must be multiples of multiple={m} with "
            f"min_side <= max_side, got min_side={lo}, max_side={hi}"
        )
    if min(h, w) < lo:
        if h <= w:
            h, w = lo, int(lo * w / h + 0.5)
        else:
            h, w = int(lo * h / w + 0.5), lo
    if max(h, w) > hi:
        if h >= w:
            h, w = hi, int(hi * w / h + 0.5)
        else:
            h, w = int(hi * h / w + 0.5), hi
    h, w = max(h, lo), max(w, lo)
    return -(-h // m) * m, -(-w // m) * m


def resize_for_test(
    image: np.ndarray,
    points: np.ndarray | None = None,
    *,
    min_side: int = 224,
    max_side: int = 1024,
    multiple: int = 8,
    scale: float = 1.0,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Resize a full image for testing: short side ≥ ``min_side``, long side ≤ ``max_side``, sides
    multiples of ``multiple`` (see :func:`resized_shape`), bilinear like the original code.

    Args:
        image ((H, W, C) or (H, W) ndarray): any dtype ``cv2.resize`` takes (uint8, float32).
        points ((K, 2) ndarray or None): ``(x, y)`` positions, moved with the pixels.
        min_side (int), max_side (int), multiple (int), scale (float): see
            :func:`resized_shape`.

    Returns:
        tuple: the resized image (same dtype; the input itself is never returned) and the moved
        points (float64, ``None`` when ``points`` is ``None``).

    Example:
        >>> img, pts = resize_for_test(np.zeros((100, 300, 3), np.uint8), np.array([[150.0, 50.0]]))
        >>> img.shape
        (224, 672, 3)
    """
    import cv2

    image = _check_image(image)
    pts = _check_points(points)
    h, w = image.shape[:2]
    new_h, new_w = resized_shape(
        h, w, min_side=min_side, max_side=max_side, multiple=multiple, scale=scale
    )
    if (new_h, new_w) == (h, w):
        out = image.copy()
    else:
        out = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    if pts is not None:
        scale = np.array([new_w / w, new_h / h])
        pts = (pts + 0.5) * scale - 0.5
    return out, pts


def hflip(image: np.ndarray, points: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None]:
    """Mirror left-right: ``image[:, ::-1]`` and ``x -> W - 1 - x`` (an involution on both)."""
    image = _check_image(image)
    pts = _check_points(points)
    out = np.ascontiguousarray(image[:, ::-1])
    if pts is not None:
        pts = pts.copy()
        pts[:, 0] = image.shape[1] - 1 - pts[:, 0]
    return out, pts


# ----------------------------------------------------------------------------------------------
# density maps and cells


def gaussian_kernel_1d(sigma: float, kernel_size: int | None = None) -> np.ndarray:
    """The normalized 1-D Gaussian ``exp(-d² / 2σ²)``, ``d = -r..r``, of odd length ``kernel_size``.

    The default length is the original code's rule: ``int(3σ)``, made odd, at least 3 (3 for σ = 1).
    ``sigma = 0`` gives a delta ``[0, 1, 0]``. The 2-D kernel is the outer product with itself.
    """
    sigma = float(sigma)
    if not np.isfinite(sigma) or sigma < 0:
        raise ValueError(f"sigma must be finite and >= 0, got {sigma!r}")
    if kernel_size is None:
        kernel_size = max(3, int(3.0 * sigma) | 1)
    ks = _positive_int(kernel_size, "kernel_size")
    if ks % 2 == 0:
        raise ValueError(f"kernel_size must be odd, got {ks}")
    r = ks // 2
    d = np.arange(-r, r + 1, dtype=np.float64)
    if sigma == 0.0:
        return (d == 0).astype(np.float64)
    k = np.exp(-(d**2) / (2.0 * sigma**2))
    return k / k.sum()


def _reflect(index: np.ndarray, n: int) -> np.ndarray:
    """Mirror indices into [0, n): -1 -> 0, -2 -> 1, n -> n-1, n+1 -> n-2 (repeated as needed)."""
    m = np.mod(index, 2 * n)
    return np.where(m >= n, 2 * n - 1 - m, m)


def density_map(
    points: np.ndarray,
    shape_hw: tuple[int, int],
    *,
    downscale: int = 8,
    sigma: float = 1.0,
    kernel_size: int | None = None,
) -> np.ndarray:
    """Ground-truth density at 1/``downscale`` resolution whose sum is the number of points.

    Each point adds a normalized Gaussian (σ in output cells, the original's 3×3 kernel for σ = 1,
    see :func:`gaussian_kernel_1d`) centred on its output cell
    ``(floor(y + 0.5) // ds, floor(x + 0.5) // ds)``. Mass falling outside the map is mirrored back
    across the border (as the original), so

    .. math:: \\sum_{ij} D_{ij} = K.

    Points in the remainder rows/columns (when a side is not a multiple of ``downscale``) and the
    few annotations real datasets place just outside the image are assigned to the nearest border
    cell, so every point counts.

    Args:
        points ((K, 2) ndarray): ``(x, y)`` positions in the image of shape ``shape_hw``.
        shape_hw (tuple[int, int]): the image ``(H, W)``.
        downscale (int): output stride; the map is ``(H // ds, W // ds)``.
        sigma (float): Gaussian σ in output cells (0: each point stays in its cell).
        kernel_size (int or None): odd kernel length; ``None`` for the original's rule.

    Returns:
        (H // ds, W // ds) ndarray: float32 (accumulated in float64).

    Example:
        >>> d = density_map(np.array([[0.0, 0.0], [100.0, 50.0]]), (64, 128))
        >>> d.shape, round(float(d.sum()), 5)
        ((8, 16), 2.0)
    """
    pts = _check_points(points)
    if pts is None:
        raise TypeError("points must be a (K, 2) array, got None")
    ds = _positive_int(downscale, "downscale")
    if not (isinstance(shape_hw, (tuple, list)) and len(shape_hw) == 2):
        raise ValueError(f"shape_hw must be an (H, W) pair, got {shape_hw!r}")
    h, w = int(shape_hw[0]) // ds, int(shape_hw[1]) // ds
    if h < 1 or w < 1:
        raise ValueError(f"shape_hw={tuple(shape_hw)} is smaller than downscale={ds}")
    k = gaussian_kernel_1d(sigma, kernel_size)
    r = k.size // 2
    col = np.clip(np.floor(pts[:, 0] + 0.5) // ds, 0, w - 1).astype(np.int64)
    row = np.clip(np.floor(pts[:, 1] + 0.5) // ds, 0, h - 1).astype(np.int64)
    offsets = np.arange(-r, r + 1)
    rows = _reflect(row[:, None] + offsets, h)  # (K, ks)
    cols = _reflect(col[:, None] + offsets, w)  # (K, ks)
    index = rows[:, :, None] * w + cols[:, None, :]  # (K, ks, ks)
    weight = np.broadcast_to(k[:, None] * k[None, :], index.shape)
    out = np.bincount(index.ravel(), weights=weight.ravel(), minlength=h * w)
    return out.reshape(h, w).astype(np.float32)


def cell_counts(density: torch.Tensor, cell: int) -> torch.Tensor:
    """Counts of ``cell × cell`` blocks of a density map, flattened per image.

    ``AvgPool2d(cell) · cell²`` as in the original (a 28×28 output with ``cell = 8`` gives 3×3
    cells; the remainder rows/columns are dropped). Differentiable.

    Args:
        density ((B, 1, h, w) Tensor): density maps.
        cell (int): the cell side in density pixels, ``1 <= cell <= min(h, w)``.

    Returns:
        (B, (h // cell) · (w // cell)) Tensor: cell sums, row-major.

    Example:
        >>> cell_counts(torch.ones(2, 1, 28, 28), 8).shape
        torch.Size([2, 9])
    """
    if not isinstance(density, torch.Tensor):
        raise TypeError(
            f"density must be a torch.Tensor (B, 1, h, w), got {type(density).__name__}"
        )
    if density.dim() != 4 or density.shape[1] != 1:
        raise ValueError(f"density must have shape (B, 1, h, w), got {tuple(density.shape)}")
    c = _positive_int(cell, "cell")
    if c > density.shape[2] or c > density.shape[3]:
        raise ValueError(f"cell={c} is larger than the density map {tuple(density.shape[2:])}")
    if not density.is_floating_point():
        density = density.float()
    return (F.avg_pool2d(density, c) * (c * c)).flatten(1)


def to_tensor(image: np.ndarray) -> torch.Tensor:
    """(H, W, 3) RGB → (3, H, W) float32 tensor with values 0–255 (a new tensor; the input is
    never modified or shared). A batch (B, H, W, 3) gives (B, 3, H, W). Normalization (the Caffe
    means of the original) is the model's job.
    """
    if not isinstance(image, np.ndarray):
        raise TypeError(f"image must be a numpy array (H, W, 3), got {type(image).__name__}")
    if image.ndim not in (3, 4) or image.shape[-1] != 3:
        raise ValueError(f"image must have shape (H, W, 3) or (B, H, W, 3), got {image.shape}")
    arr = np.array(np.moveaxis(image, -1, -3), dtype=np.float32, order="C", copy=True)
    return torch.from_numpy(arr)
