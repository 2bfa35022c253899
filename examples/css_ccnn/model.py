"""The CSS-CCNN network (Babu Sam et al., "Completely Self-Supervised Crowd Counting via
Distribution Matching", Fig. 3).

* FEN (feature extraction network): three VGG-style blocks of 3×3 convolutions without bias, each
  followed by BatchNorm and ReLU: conv1_1–1_2 (64), max pool, conv2_1–2_2 (128), max pool,
  conv3_1–3_3 (256). Output: the pool2 features (1/4 resolution) and the block-3 features
  (1/4 resolution).
* Stage-1 head C1 (rotation classification): pool3, conv4_1 (→128) + BN, pool4, conv5_1 (→64) + BN,
  global average pooling, fc (→ K rotation classes).
* Stage-2 head C2 (density): concat(pool2, block3) → conv4_1 (→128) → ReLU → conv4_2 (→64) → ReLU
  → 2×2 max pool → conv5_1 (→1) → ReLU: a density map at 1/8 of the input resolution.

All channel counts are multiplied by ``width`` (at least 1 channel) for CPU-sized models.

Input: RGB images as float tensors with values 0–255, shape ``(B, 3, H, W)``. The network subtracts
the per-channel means ``(104.008, 116.669, 122.675)`` — the Caffe BGR means that the original code
subtracted from its RGB input, kept in the same channel order so the ``paper`` preset matches it —
*out of place*: the original subtracted them in place and so modified the caller's tensor; this
implementation never does.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import NamedTuple

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from .checkpoint import CheckpointError, load_checkpoint, load_state

__all__ = [
    "CAFFE_MEANS",
    "CSSCCNN",
    "DensityHead",
    "FENFeatures",
    "FeatureExtractor",
    "RotationHead",
    "load_stage1_fen",
    "rotate_batch",
]

CAFFE_MEANS = (104.008, 116.669, 122.675)


def _ch(channels: int, width: float) -> int:
    return max(1, round(channels * width))


def _conv_bn(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel_size=3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class FENFeatures(NamedTuple):
    """Features of the FEN.

    Attributes:
        pool2 ((B, C2, H/4, W/4) Tensor): block-2 output after max pooling.
        block3 ((B, C3, H/4, W/4) Tensor): block-3 output.
    """

    pool2: Tensor
    block3: Tensor


class FeatureExtractor(nn.Module):
    """The FEN: seven conv-BN-ReLU layers in three blocks (64, 128, 256 channels × width)."""

    def __init__(self, *, width: float = 1.0) -> None:
        super().__init__()
        c1, c2, c3 = _ch(64, width), _ch(128, width), _ch(256, width)
        self.channels = (c1, c2, c3)
        self.block1 = nn.Sequential(_conv_bn(3, c1), _conv_bn(c1, c1))
        self.block2 = nn.Sequential(_conv_bn(c1, c2), _conv_bn(c2, c2))
        self.block3 = nn.Sequential(_conv_bn(c2, c3), _conv_bn(c3, c3), _conv_bn(c3, c3))
        self.register_buffer(
            "mean",
            torch.tensor(CAFFE_MEANS, dtype=torch.float32).view(1, 3, 1, 1),
            persistent=False,
        )
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")

    def forward(self, images: Tensor) -> FENFeatures:
        """images ((B, 3, H, W) Tensor): RGB 0–255 (not modified) -> :class:`FENFeatures`."""
        x = images - self.mean.to(images.dtype)
        x = F.max_pool2d(self.block1(x), 2)
        pool2 = F.max_pool2d(self.block2(x), 2)
        return FENFeatures(pool2, self.block3(pool2))


class RotationHead(nn.Module):
    """Stage-1 head C1: pool3, conv4_1 + BN, pool4, conv5_1 + BN, global average pool, fc → K."""

    def __init__(self, in_channels: int, *, num_classes: int = 4, width: float = 1.0) -> None:
        super().__init__()
        c4, c5 = _ch(128, width), _ch(64, width)
        self.conv4_1 = _conv_bn(in_channels, c4)
        self.conv5_1 = _conv_bn(c4, c5)
        self.fc = nn.Linear(c5, num_classes)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
        nn.init.zeros_(self.fc.bias)

    def forward(self, block3: Tensor) -> Tensor:
        """block3 ((B, C3, h, w) Tensor) -> logits ((B, K) Tensor)."""
        x = self.conv4_1(F.max_pool2d(block3, 2))
        x = self.conv5_1(F.max_pool2d(x, 2))
        return self.fc(x.mean(dim=(2, 3)))


class DensityHead(nn.Module):
    """Stage-2 head C2: concat(pool2, block3) → conv4_1 → conv4_2 → max pool → conv5_1 → ReLU.

    Convolutions have biases and no BatchNorm; weights start from N(0, 0.01²), biases from 0,
    as in the original code.
    """

    def __init__(self, in_channels: int, *, width: float = 1.0) -> None:
        super().__init__()
        c4, c5 = _ch(128, width), _ch(64, width)
        self.conv4_1 = nn.Conv2d(in_channels, c4, kernel_size=3, padding=1)
        self.conv4_2 = nn.Conv2d(c4, c5, kernel_size=3, padding=1)
        self.conv5_1 = nn.Conv2d(c5, 1, kernel_size=3, padding=1)
        for m in (self.conv4_1, self.conv4_2, self.conv5_1):
            nn.init.normal_(m.weight, mean=0.0, std=0.01)
            nn.init.zeros_(m.bias)

    def forward(self, features: FENFeatures) -> Tensor:
        """features -> density ((B, 1, H/8, W/8) Tensor), non-negative."""
        x = torch.cat([features.pool2, features.block3], dim=1)
        x = F.relu(self.conv4_2(F.relu(self.conv4_1(x))))
        return F.relu(self.conv5_1(F.max_pool2d(x, 2)))


class CSSCCNN(nn.Module):
    """CSS-CCNN: a FEN with the rotation head (stage 1) and the density head (stage 2).

    Args:
        width (float): channel multiplier (1.0 = paper).
        rotations (int): rotation classes of stage 1 (2, 4 or 8).

    Example:
        >>> net = CSSCCNN(width=0.125, rotations=4)
        >>> net.eval()(torch.zeros(2, 3, 64, 96)).shape
        torch.Size([2, 1, 8, 12])
        >>> net.rotation_logits(torch.zeros(2, 3, 32, 32)).shape
        torch.Size([2, 4])
    """

    def __init__(self, *, width: float = 1.0, rotations: int = 4) -> None:
        super().__init__()
        if not (isinstance(width, (int, float)) and width > 0):
            raise ValueError(f"width must be a positive number, got {width!r}")
        if rotations not in (2, 4, 8):
            raise ValueError(f"rotations must be 2, 4 or 8, got {rotations!r}")
        self.width = float(width)
        self.rotations = rotations
        self.fen = FeatureExtractor(width=width)
        _, c2, c3 = self.fen.channels
        self.rotation_head = RotationHead(c3, num_classes=rotations, width=width)
        self.density_head = DensityHead(c2 + c3, width=width)

    @staticmethod
    def _check(images: Tensor, multiple: int) -> None:
        if not isinstance(images, Tensor):
            raise TypeError(f"images must be a Tensor, got {type(images).__name__}")
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"images must have shape (B, 3, H, W), got {tuple(images.shape)}")
        if images.shape[2] % multiple or images.shape[3] % multiple:
            raise ValueError(
                f"image height and width must be multiples of {multiple}, got "
                f"{tuple(images.shape[2:])}"
            )
        if not images.is_floating_point():
            raise TypeError(f"images must be floating point (RGB 0-255), got {images.dtype}")

    def forward(self, images: Tensor) -> Tensor:
        """images ((B, 3, H, W) Tensor, RGB 0–255, H and W multiples of 8) -> density
        ((B, 1, H/8, W/8) Tensor)."""
        self._check(images, 8)
        return self.density_head(self.fen(images))

    def rotation_logits(self, images: Tensor) -> Tensor:
        """images ((B, 3, S, S) Tensor, S multiple of 16) -> rotation logits ((B, K) Tensor)."""
        self._check(images, 16)
        return self.rotation_head(self.fen(images).block3)

    def freeze_fen(self) -> None:
        """Freeze the FEN for stage 2: ``requires_grad=False`` and BatchNorm in eval mode.

        :meth:`train` keeps the FEN in eval mode afterwards, so running statistics never change.
        """
        for p in self.fen.parameters():
            p.requires_grad_(False)
        self._fen_frozen = True
        self.fen.eval()

    @property
    def fen_frozen(self) -> bool:
        return getattr(self, "_fen_frozen", False)

    def train(self, mode: bool = True) -> CSSCCNN:
        super().train(mode)
        if self.fen_frozen:
            self.fen.eval()
        return self


def rotate_batch(crops: Tensor, labels: Tensor, *, num_classes: int) -> Tensor:
    """Rotate each crop by ``labels[i] * 360 / num_classes`` degrees and take its centre half.

    For K = 2 and 4 the rotations are exact (``torch.rot90``); for K = 8 the odd classes (45°,
    135°, ...) are resampled bilinearly (``grid_sample``) about the crop centre. Taking the centre
    ``S/2 × S/2`` afterwards keeps only pixels that came from inside the crop (a square of side S/2
    rotated by 45° has half-diagonal S·√2/4 < S/2), so there are no empty corners that would give
    the class away. (Interpolation blur could still be a weak cue for the odd classes at K = 8.)

    Args:
        crops ((B, C, S, S) Tensor): square crops, S even.
        labels ((B,) Tensor): integer rotation classes in ``[0, num_classes)``.
        num_classes (int): 2, 4 or 8.

    Returns:
        (B, C, S/2, S/2) Tensor.
    """
    if num_classes not in (2, 4, 8):
        raise ValueError(f"num_classes must be 2, 4 or 8, got {num_classes!r}")
    if crops.dim() != 4 or crops.shape[2] != crops.shape[3] or crops.shape[2] % 2:
        raise ValueError(
            f"crops must have shape (B, C, S, S) with S even, got {tuple(crops.shape)}"
        )
    size = crops.shape[2]
    lo, hi = size // 4, size // 4 + size // 2
    step = 8 // num_classes  # label -> multiples of 45°
    out = []
    for crop, label in zip(crops, labels.tolist()):
        eighths = int(label) * step
        if eighths % 2 == 0:
            rotated = torch.rot90(crop, k=eighths // 2, dims=(1, 2))
        else:
            angle = math.pi / 4 * eighths
            cos, sin = math.cos(angle), math.sin(angle)
            theta = torch.tensor(
                [[cos, -sin, 0.0], [sin, cos, 0.0]], dtype=crop.dtype, device=crop.device
            )[None]
            grid = F.affine_grid(theta, [1, *crop.shape], align_corners=False)
            rotated = F.grid_sample(crop[None], grid, mode="bilinear", align_corners=False)[0]
        out.append(rotated[:, lo:hi, lo:hi])
    return torch.stack(out)


def load_stage1_fen(model: CSSCCNN, path: str | Path) -> CSSCCNN:
    """Copy the FEN weights and BatchNorm statistics of a stage-1 checkpoint into ``model``.

    Args:
        model (CSSCCNN): receives the FEN (its heads are left as they are).
        path (str or Path): a checkpoint whose ``"model"`` state has ``fen.*`` keys.

    Returns:
        CSSCCNN: ``model``.

    Raises:
        CheckpointError: the checkpoint is missing, damaged or unsafe, holds no FEN weights, or
            was trained with another ``model.width``.
    """
    ckpt = load_checkpoint(path, require=("model",))
    meta = ckpt.get("meta") or {}
    if "width" in meta and float(meta["width"]) != model.width:
        raise CheckpointError(
            f"checkpoint {path} was trained with model.width={meta['width']}, but this model has "
            f"model.width={model.width}: use the same preset or --set model.width={meta['width']}"
        )
    state = ckpt["model"]
    fen_state = {k[len("fen.") :]: v for k, v in state.items() if k.startswith("fen.")}
    if not fen_state:
        raise CheckpointError(f"checkpoint {path} holds no FEN weights (keys 'fen.*')")
    load_state(model.fen, fen_state, path, meta=meta)
    return model
