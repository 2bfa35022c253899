r"""Counting people in new images with a trained CSS-CCNN: ``load_counter(path)``, then
``counter(image)``.

.. code-block:: python

    from examples.css_ccnn.counter import load_counter

    counter = load_counter("runs/cpu/seed0/stage2_plain/best.pt")
    result = counter(PIL.Image.open("street.jpg"))      # or an (H, W, 3) uint8 array,
    print(result.count, result.density.shape)           # a (3, H, W) tensor, or a list of them

**Preprocessing** is the evaluation's (:func:`~examples.css_ccnn.data.transforms.resize_for_test`):
the image is resized bilinearly so that its short side is at least ``min_side`` and its long side
at most ``max_side`` (both from the checkpoint's configuration, ``data.min_side`` and
``data.max_side``, unless given), each side a multiple of 8, and fed as RGB values 0–255. So the
counter's count of a test image is the count ``evaluate`` reports for it. ``max_side=None`` keeps
large images at full resolution (sides rounded up to a multiple of 8).

**Tiling** keeps memory bounded: an image with a side longer than ``tile`` pixels is cut into
tiles of at most ``tile × tile`` pixels that overlap by :data:`TILE_MARGIN` pixels on every inner
side, and only each tile's interior (its *core*) is kept. The network's receptive field is
:data:`RECEPTIVE_FIELD` = 76 pixels: density pixel :math:`i` (covering input pixels
:math:`[8i, 8i + 8)`) reads input pixels :math:`[8i - 34, 8i + 42)` only (3×3 convolutions with
zero padding 1 and 2×2 max pools, see :func:`receptive_margin`). Tile corners lie on the 8-pixel
grid, so the pooling windows are the full image's, and every kept density pixel's receptive field
lies inside its tile or reaches past the image border exactly as in the full image (where both see
the same zero padding). A tiled density map therefore equals the untiled one up to float rounding
(the convolutions of different input sizes may sum in another order).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple, Union

import numpy as np
import torch
from torch import Tensor

from .checkpoint import CheckpointError, load_checkpoint, load_state
from .data.transforms import resize_for_test, resized_shape
from .model import CSSCCNN
from .training import resolve_device

__all__ = [
    "RECEPTIVE_FIELD",
    "TILE_MARGIN",
    "Count",
    "Counter",
    "density_tiled",
    "load_counter",
    "receptive_margin",
]


def receptive_margin() -> tuple[int, int]:
    r"""Receptive field of one density pixel of :class:`~examples.css_ccnn.model.CSSCCNN`.

    Walks the density path (conv1_1, conv1_2, pool, conv2_1, conv2_2, pool, conv3_1–3_3,
    conv4_1, conv4_2, pool, conv5_1; the pool2 branch of the concatenation is contained in the
    block-3 branch): a 3×3 convolution with padding 1 widens the field by 2 steps of the current
    stride and moves its start back by one step; a 2×2 max pool widens it by one step and doubles
    the stride.

    Returns:
        (int, int): ``(size, margin)``: density pixel :math:`i` reads input pixels
        :math:`[8i - margin, 8i - margin + size)`, so ``margin`` pixels on each side of its own
        8 × 8 block.

    Example:
        >>> receptive_margin()
        (76, 34)
    """
    layers = "cc p cc p ccc cc p c".replace(" ", "")
    size, start, stride = 1, 0, 1
    for layer in layers:
        if layer == "c":
            size, start = size + 2 * stride, start - stride
        else:
            size, stride = size + stride, 2 * stride
    return size, -start


RECEPTIVE_FIELD = 76
"""Side of the receptive field of one density pixel, in input pixels."""
TILE_MARGIN = 40
"""Overlap of neighbouring tiles on each side: the receptive margin (34) rounded up to 8."""

ImageLike = Union[np.ndarray, Tensor, Any]


class Count(NamedTuple):
    """The count of one image.

    Attributes:
        count (float): the estimated number of people (the density map's sum, in float64).
        density ((h, w) float32 ndarray): people per density pixel; one density pixel covers
            8 × 8 pixels of the resized image the network saw (``h = input_size[0] / 8``).
        image_size ((int, int)): ``(H, W)`` of the image that was passed in.
        input_size ((int, int)): ``(H', W')`` of the resized image the network saw.
    """

    count: float
    density: np.ndarray
    image_size: tuple[int, int]
    input_size: tuple[int, int]


def _tile_starts(length: int, core: int) -> list[int]:
    return list(range(0, length, core))


def density_tiled(
    model: torch.nn.Module, images: Tensor, *, tile: int, margin: int = TILE_MARGIN
) -> Tensor:
    r"""``model(images)`` computed on overlapping tiles of at most ``tile × tile`` pixels.

    Args:
        model: a :class:`~examples.css_ccnn.model.CSSCCNN` in eval mode.
        images ((B, 3, H, W) Tensor): RGB 0–255, H and W multiples of 8.
        tile (int): largest tile side, a multiple of 8 greater than ``2 * margin``.
        margin (int): overlap on each inner side, a multiple of 8; exact when it is at least the
            receptive margin (34, :func:`receptive_margin`).

    Returns:
        (B, 1, H/8, W/8) Tensor: equal to ``model(images)`` up to float rounding.
    """
    if tile % 8 or margin % 8 or margin < 0 or tile <= 2 * margin:
        raise ValueError(
            f"tile and margin must be multiples of 8 with tile > 2 * margin, got tile={tile}, "
            f"margin={margin}"
        )
    b, _, h, w = images.shape
    if h <= tile and w <= tile:
        return model(images)
    core = tile - 2 * margin
    out = images.new_zeros((b, 1, h // 8, w // 8))
    for y0 in _tile_starts(h, core):
        y1 = min(h, y0 + core)
        ty0, ty1 = max(0, y0 - margin), min(h, y1 + margin)
        for x0 in _tile_starts(w, core):
            x1 = min(w, x0 + core)
            tx0, tx1 = max(0, x0 - margin), min(w, x1 + margin)
            dens = model(images[:, :, ty0:ty1, tx0:tx1])
            oy, ox = (y0 - ty0) // 8, (x0 - tx0) // 8
            out[:, :, y0 // 8 : y1 // 8, x0 // 8 : x1 // 8] = dens[
                :, :, oy : oy + (y1 - y0) // 8, ox : ox + (x1 - x0) // 8
            ]
    return out


def _from_tensor(image: Tensor) -> np.ndarray:
    if image.dim() != 3 or image.shape[0] != 3:
        raise ValueError(
            f"a tensor image must have shape (3, H, W) (a batch: (B, 3, H, W)), got "
            f"{tuple(image.shape)}"
        )
    hwc = image.detach().to("cpu").permute(1, 2, 0)
    if image.dtype == torch.uint8:
        return np.ascontiguousarray(hwc.numpy())
    if not image.is_floating_point():
        raise TypeError(f"a tensor image must be uint8 or floating point, got {image.dtype}")
    arr = np.ascontiguousarray(hwc.float().numpy())
    if arr.size and 0.0 < float(arr.max()) <= 1.0:
        raise ValueError(
            "a float tensor image must hold RGB values 0-255 (got values in [0, 1]: multiply "
            "by 255)"
        )
    return arr


def _to_hwc(image: ImageLike) -> np.ndarray:
    """One image as an (H, W, 3) RGB array: uint8, or float32 with values 0–255."""
    if isinstance(image, Tensor):
        return _from_tensor(image)
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8:
            raise TypeError(
                f"a numpy image must be uint8 (H, W, 3) RGB, got dtype {image.dtype} (pass float "
                "data as a (3, H, W) tensor with values 0-255)"
            )
        if image.ndim == 2:
            image = np.repeat(image[:, :, None], 3, axis=2)
        if image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(
                f"a numpy image must have shape (H, W, 3) (a batch: (B, H, W, 3)), got "
                f"{image.shape}"
            )
        return image
    convert = getattr(image, "convert", None)
    if callable(convert) and hasattr(image, "size"):  # a PIL image
        return np.asarray(convert("RGB"), dtype=np.uint8).copy()
    raise TypeError(
        "image must be a PIL.Image, an (H, W, 3) uint8 numpy array, a (3, H, W) tensor or a "
        f"list of them, got {type(image).__name__}"
    )


def _is_batch(images: Any) -> bool:
    if isinstance(images, (list, tuple)):
        return True
    return isinstance(images, (np.ndarray, Tensor)) and images.ndim == 4


class Counter:
    """A trained CSS-CCNN that counts people in images; build it with :func:`load_counter`.

    Args:
        model (CSSCCNN): the network (put in eval mode and moved to ``device``).
        device (str or torch.device): ``"cpu"``, ``"cuda[:N]"`` or ``"auto"``.
        min_side (int or None), max_side (int or None): resizing bounds (multiples of 8);
            ``None``: no bound.
        tile (int): largest tile side in pixels (multiple of 8, > ``2 * TILE_MARGIN``): bounds
            the memory of one forward pass to that of a ``tile × tile`` image per batch item.
        batch_size (int): images of the same resized size counted in one forward pass.
        info (dict): what the counter was loaded from (reported by ``predict``).

    Call it on a ``PIL.Image``, an (H, W, 3) uint8 array, a (3, H, W) uint8 or float (0–255)
    tensor — one :class:`Count` — or on a list of them, a (B, H, W, 3) array or a
    (B, 3, H, W) tensor — a list of :class:`Count`.
    """

    def __init__(
        self,
        model: CSSCCNN,
        *,
        device: str | torch.device = "cpu",
        min_side: int | None = 224,
        max_side: int | None = 1024,
        tile: int = 1024,
        batch_size: int = 4,
        info: dict | None = None,
    ) -> None:
        for name, value in (("min_side", min_side), ("max_side", max_side)):
            if value is not None and (not isinstance(value, int) or value < 8 or value % 8):
                raise ValueError(f"{name} must be None or a multiple of 8 >= 8, got {value!r}")
        if min_side is not None and max_side is not None and min_side > max_side:
            raise ValueError(f"min_side must be <= max_side, got {min_side} > {max_side}")
        if not isinstance(tile, int) or tile % 8 or tile <= 2 * TILE_MARGIN:
            raise ValueError(f"tile must be a multiple of 8 > {2 * TILE_MARGIN}, got {tile!r}")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
        self.device = device if isinstance(device, torch.device) else resolve_device(str(device))
        self.model = model.to(self.device).eval()
        self.min_side, self.max_side = min_side, max_side
        self.tile, self.batch_size = tile, batch_size
        self.info = dict(info or {})

    def input_size(self, height: int, width: int) -> tuple[int, int]:
        """The (H', W') an (height, width) image is resized to before counting."""
        lo = self.min_side or 8
        hi = self.max_side or -(-max(height, width, lo) // 8) * 8
        return resized_shape(height, width, min_side=lo, max_side=hi)

    def prepare(self, image: ImageLike) -> np.ndarray:
        """One image, resized as the network sees it: (H', W', 3) uint8 or float32 RGB."""
        return self._resize(_to_hwc(image))

    def _resize(self, hwc: np.ndarray) -> np.ndarray:
        h, w = hwc.shape[:2]
        if h == 0 or w == 0:
            raise ValueError(f"image has an empty side: shape {hwc.shape}")
        lo = self.min_side or 8
        hi = self.max_side or -(-max(h, w, lo) // 8) * 8
        return resize_for_test(hwc, min_side=lo, max_side=hi)[0]

    def _density(self, batch: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(np.ascontiguousarray(batch)).to(self.device)
        x = x.permute(0, 3, 1, 2).float()
        with torch.no_grad():
            dens = density_tiled(self.model, x, tile=self.tile)
        return dens[:, 0].cpu().numpy()

    def count_many(self, images: Sequence[ImageLike]) -> list[Count]:
        """A :class:`Count` for each image; images of equal resized size share forward passes
        of up to ``batch_size`` images."""
        sizes, prepared = [], []
        for image in images:
            hwc = _to_hwc(image)
            sizes.append(tuple(int(s) for s in hwc.shape[:2]))
            prepared.append(self._resize(hwc))
        results: list[Count | None] = [None] * len(prepared)
        groups: dict[tuple, list[int]] = {}
        for i, p in enumerate(prepared):
            groups.setdefault((p.shape, p.dtype.str), []).append(i)
        for members in groups.values():
            for start in range(0, len(members), self.batch_size):
                chunk = members[start : start + self.batch_size]
                dens = self._density(np.stack([prepared[i] for i in chunk]))
                for i, d in zip(chunk, dens):
                    results[i] = Count(
                        count=float(d.sum(dtype=np.float64)),
                        density=d,
                        image_size=sizes[i],
                        input_size=tuple(int(s) for s in prepared[i].shape[:2]),
                    )
        return results  # type: ignore[return-value]

    def __call__(self, images: ImageLike) -> Count | list[Count]:
        """Count one image (a :class:`Count`) or a batch (a list of :class:`Count`)."""
        if _is_batch(images):
            return self.count_many(list(images))
        return self.count_many([images])[0]

    def __repr__(self) -> str:
        source = self.info.get("checkpoint", "a model")
        return (
            f"Counter({source}, device={self.device}, min_side={self.min_side}, "
            f"max_side={self.max_side}, tile={self.tile})"
        )


def _width_from_state(state: dict, path: Path) -> float:
    weight = state.get("fen.block1.0.0.weight")
    if weight is None:
        raise CheckpointError(f"checkpoint {path} holds no CSS-CCNN weights (no fen.* entries)")
    return float(weight.shape[0]) / 64.0


def load_counter(
    path: str | Path,
    *,
    device: str = "auto",
    min_side: int | str | None = "checkpoint",
    max_side: int | str | None = "checkpoint",
    tile: int = 1024,
    batch_size: int = 4,
) -> Counter:
    """A :class:`Counter` from a checkpoint of a trained density head.

    Args:
        path: a ``best.pt`` (or ``last.pt``) of stage 2 (``stage2_plain``, ``stage2_plus``) or
            of a labeled baseline.
        device: ``"auto"`` (CUDA when available), ``"cpu"`` or ``"cuda[:N]"``.
        min_side, max_side: resizing bounds (multiples of 8, or ``None`` for no bound);
            ``"checkpoint"``: the checkpoint's ``data.min_side`` / ``data.max_side``, as in
            evaluation.
        tile, batch_size: see :class:`Counter`.

    Raises:
        CheckpointError: the file is missing, damaged, unsafe, not a CSS-CCNN checkpoint, or a
            stage-1 checkpoint (its density head is untrained).

    Example:
        >>> import tempfile, torch
        >>> from examples.css_ccnn.checkpoint import atomic_save
        >>> path = tempfile.mkdtemp() + "/best.pt"
        >>> _ = atomic_save({"model": CSSCCNN(width=0.125).state_dict(),
        ...                  "meta": {"stage": 2, "width": 0.125, "rotations": 4}}, path)
        >>> counter = load_counter(path, device="cpu")
        >>> result = counter(np.zeros((100, 150, 3), np.uint8))
        >>> result.input_size, result.density.shape
        ((224, 336), (28, 42))
    """
    path = Path(path)
    ckpt = load_checkpoint(path, require=("model",))
    meta = ckpt.get("meta") or {}
    if not isinstance(meta, dict):
        raise CheckpointError(f"checkpoint {path} has a malformed 'meta' entry")
    if meta.get("stage") == 1:
        raise CheckpointError(
            f"checkpoint {path} is a stage-1 (rotation) checkpoint: its density head is "
            "untrained; count with a stage-2 checkpoint, e.g. <run>/seed0/stage2_plain/best.pt"
        )
    state = ckpt["model"]
    width = float(meta["width"]) if "width" in meta else _width_from_state(state, path)
    model = CSSCCNN(width=width, rotations=int(meta.get("rotations", 4)))
    load_state(model, state, path, meta=meta)
    data = (meta.get("config") or {}).get("data") or {}
    checksum = ckpt.get("checksum") or {}
    info = {
        "checkpoint": str(path),
        "sha256": checksum.get("sha256") if isinstance(checksum, dict) else None,
        "stage": meta.get("stage"),
        "variant": meta.get("variant", meta.get("mode")),
        "width": width,
        "preset": (meta.get("config") or {}).get("preset"),
    }
    return Counter(
        model,
        device=device,
        min_side=data.get("min_side", 224) if min_side == "checkpoint" else min_side,
        max_side=data.get("max_side", 1024) if max_side == "checkpoint" else max_side,
        tile=tile,
        batch_size=batch_size,
        info=info,
    )
