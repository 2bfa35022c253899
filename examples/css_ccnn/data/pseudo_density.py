"""Edge-based pseudo density for CSS-CCNN++ (Babu Sam et al., Section 3.4).

CSS-CCNN++ splits the predicted cells into a sparse and a dense group by a label-free proxy of crowd
density: the amount of Canny edges in the cell. The recipe of the original code, reproduced here:

1. the uint8 crop is converted to gray with ``cv2.COLOR_BGR2GRAY`` although the crop is RGB. This
   swaps the red and blue weights (gray = 0.114 R + 0.587 G + 0.299 B instead of 0.299 R + …). It
   is kept deliberately, so that the edge maps, and therefore the groups, match the original;
2. ``cv2.Canny(gray, 225, 250)``;
3. resized to 1/``downscale`` (bilinear, ``cv2.resize`` default). Bilinear decimation reads only
   the 2×2 pixels around each output sample, i.e. 4 of every 8×8 block, so a thin isolated edge is
   often missed (aliasing); dense edge texture, which is what crowds give, survives.
   ``interpolation="area"`` averages whole blocks instead;
4. ``cv2.GaussianBlur`` 5×5, σ = 2;
5. divided by the maximum over the whole batch.

Steps 3–4 run on uint8 images as in the original, which rounds the map to 256 levels (more ties
between cells; the differences to float are below 1.2 % of the maximum). Regions without any Canny
edge are exactly 0 either way; these ties are why the original often found too few cells strictly
below the 30th percentile and fell back to the ungrouped loss. ``exact_uint8=False`` computes steps
3–4 in float32 instead.
"""

from __future__ import annotations

import numpy as np

__all__ = ["canny_pseudo_density"]


def canny_pseudo_density(
    crops: np.ndarray,
    *,
    low: float = 225,
    high: float = 250,
    downscale: int = 8,
    blur_ksize: int = 5,
    blur_sigma: float = 2.0,
    exact_uint8: bool = True,
    interpolation: str = "linear",
) -> np.ndarray:
    """Edge density of a batch of crops, in [0, 1], at 1/``downscale`` resolution.

    Args:
        crops ((B, H, W, 3) ndarray): uint8 RGB crops (float arrays with values in [0, 255] are
            truncated to uint8 first, like the original's ``astype('uint8')``).
        low (float), high (float): Canny hysteresis thresholds.
        downscale (int): the output stride; output ``(H // ds, W // ds)``.
        blur_ksize (int): odd Gaussian kernel size.
        blur_sigma (float): Gaussian σ in output pixels.
        exact_uint8 (bool): resize and blur in uint8 like the original (module docstring).
        interpolation (str): ``"linear"`` (the original) or ``"area"`` (block average) for the
            1/``downscale`` resize.

    Returns:
        (B, H // ds, W // ds) ndarray: float32, divided by the batch maximum, so the largest value
        is 1; all zeros when the batch has no edges.

    Example:
        >>> crops = np.zeros((2, 64, 64, 3), np.uint8)
        >>> crops[0, :, ::4] = 255  # vertical stripes in the first crop, nothing in the second
        >>> d = canny_pseudo_density(crops)
        >>> d.shape, float(d.max()), float(d[1].max())
        ((2, 8, 8), 1.0, 0.0)
    """
    import cv2

    if not isinstance(crops, np.ndarray):
        raise TypeError(f"crops must be a numpy array (B, H, W, 3), got {type(crops).__name__}")
    if crops.ndim != 4 or crops.shape[-1] != 3 or crops.shape[0] == 0:
        raise ValueError(f"crops must have shape (B, H, W, 3) with B > 0, got {crops.shape}")
    if isinstance(downscale, bool) or not isinstance(downscale, (int, np.integer)) or downscale < 1:
        raise ValueError(f"downscale must be a positive int, got {downscale!r}")
    if (
        isinstance(blur_ksize, bool)
        or not isinstance(blur_ksize, (int, np.integer))
        or blur_ksize < 1
        or blur_ksize % 2 == 0
    ):
        raise ValueError(f"blur_ksize must be a positive odd int, got {blur_ksize!r}")
    if not (np.isfinite(blur_sigma) and blur_sigma > 0):
        raise ValueError(f"blur_sigma must be > 0, got {blur_sigma!r}")
    if not (0 <= low <= high):
        raise ValueError(f"need 0 <= low <= high, got low={low!r}, high={high!r}")
    modes = {"linear": cv2.INTER_LINEAR, "area": cv2.INTER_AREA}
    if interpolation not in modes:
        raise ValueError(f"interpolation must be one of {list(modes)}, got {interpolation!r}")
    b, h, w, _ = crops.shape
    oh, ow = h // downscale, w // downscale
    if oh < 1 or ow < 1:
        raise ValueError(f"crops of size {(h, w)} are smaller than downscale={downscale}")
    if crops.dtype != np.uint8:
        if not np.issubdtype(crops.dtype, np.number) or np.any(crops < 0) or np.any(crops > 255):
            raise ValueError(f"crops must be uint8 or numbers in [0, 255], got dtype {crops.dtype}")
        crops = crops.astype(np.uint8)

    out = np.empty((b, oh, ow), dtype=np.float32)
    for i in range(b):
        gray = cv2.cvtColor(
            np.ascontiguousarray(crops[i]), cv2.COLOR_BGR2GRAY
        )  # deliberate, see above
        edges = cv2.Canny(gray, float(low), float(high))
        if not exact_uint8:
            edges = edges.astype(np.float32)
        small = cv2.resize(edges, (ow, oh), interpolation=modes[interpolation])
        blurred = cv2.GaussianBlur(
            small, (int(blur_ksize), int(blur_ksize)), sigmaX=float(blur_sigma)
        )
        out[i] = blurred.astype(np.float32) / 255.0
    peak = float(out.max())
    if peak > 0:
        out /= peak
    return out
