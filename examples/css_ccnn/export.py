"""Export a trained counter to ONNX (dynamic batch, height and width) and to TorchScript.

The exported model is :class:`ExportableCounter`: input ``images`` ``(B, 3, H, W)`` float32 RGB
with values 0–255 and H, W multiples of 8 (resize as :class:`~examples.css_ccnn.counter.Counter`
does: :func:`~examples.css_ccnn.data.transforms.resize_for_test` with the ``min_side`` /
``max_side`` stored in the file's metadata); outputs ``density`` ``(B, 1, H/8, W/8)`` and ``count``
``(B,)`` (the density summed). The Caffe mean subtraction is inside the model. No tiling: feed
tiles yourself for very large images (overlap :data:`~examples.css_ccnn.counter.TILE_MARGIN`).

The preprocessing settings and the source checkpoint are stored with the model: in the ONNX
file's ``metadata_props`` and in the TorchScript archive as the extra file ``counter.json``.

``onnx``, ``onnxscript`` (the exporter) and ``onnxruntime`` (to run the result) are optional
dependencies (``pip install -e ".[export]"``); TorchScript needs only torch.
"""

from __future__ import annotations

import copy
import io
import json
import logging
import os
import tempfile
import warnings
from pathlib import Path

import torch
from torch import Tensor, nn

from .checkpoint import atomic_write_bytes
from .counter import Counter

__all__ = ["ExportableCounter", "export_metadata", "export_onnx", "export_torchscript"]


class ExportableCounter(nn.Module):
    """The density path of a CSS-CCNN, returning the density map and the count.

    Args:
        model (CSSCCNN): a trained network (only its FEN and density head are kept).
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.fen, self.density_head = model.fen, model.density_head

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """images ((B, 3, H, W) Tensor, RGB 0–255) -> (density (B, 1, H/8, W/8), count (B,))."""
        density = self.density_head(self.fen(images))
        return density, density.sum(dim=(1, 2, 3))


def export_metadata(counter: Counter) -> dict:
    """What a user of the exported file needs to know: input convention, resizing, source."""
    return {
        "input": "images (B, 3, H, W) float32, RGB 0-255, H and W multiples of 8",
        "outputs": "density (B, 1, H/8, W/8) people per density pixel; count (B,)",
        "resize": "short side >= min_side, long side <= max_side (null: no bound), bilinear, "
        "sides rounded up to multiples of 8",
        "min_side": counter.min_side,
        "max_side": counter.max_side,
        **{k: v for k, v in counter.info.items() if v is not None},
    }


def _exportable(counter: Counter) -> ExportableCounter:
    """A CPU copy (the counter's own model stays where it is)."""
    module = ExportableCounter(copy.deepcopy(counter.model).to("cpu")).eval()
    for p in module.parameters():
        p.requires_grad_(False)
    return module


def _example(size: int = 64) -> Tensor:
    return torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(0)) * 255


def export_torchscript(counter: Counter, path: str | Path) -> Path:
    """Write ``counter``'s network as a traced TorchScript archive (CPU); returns ``path``.

    Load it with ``torch.jit.load(path)``; ``torch.jit.load(path, _extra_files={"counter.json":
    ""})`` also returns the metadata. Tracing records the convolutions and pools, which accept
    any input size, so the archive works for every H and W (multiples of 8). Recent PyTorch
    releases deprecate TorchScript (its warnings are silenced here); the ONNX file is the
    long-lived format.
    """
    module = _exportable(counter)
    extra = {"counter.json": json.dumps(export_metadata(counter), indent=1)}
    buffer = io.BytesIO()
    with warnings.catch_warnings():  # torch >= 2.10 deprecates TorchScript; asked for anyway
        warnings.simplefilter("ignore", DeprecationWarning)
        with torch.no_grad():
            traced = torch.jit.trace(module, (_example(),), check_trace=False)
        torch.jit.save(traced, buffer, _extra_files=extra)
    return atomic_write_bytes(path, buffer.getvalue())


def export_onnx(counter: Counter, path: str | Path, *, opset: int = 18) -> Path:
    """Write ``counter``'s network as ONNX with dynamic batch, height and width; returns ``path``.

    Uses the ``torch.export``-based exporter (``onnxscript``). Height and width are declared as
    ``8 * h8`` and ``8 * w8`` (any multiple of 8 from 16 to 8,192 pixels).

    Raises:
        ImportError: ``onnx`` / ``onnxscript`` are not installed (the ``export`` extra).
    """
    try:
        import onnx
        import onnxscript  # noqa: F401 (the exporter needs it)
    except ImportError as exc:
        raise ImportError(
            'ONNX export needs onnx and onnxscript: pip install -e ".[export]"'
        ) from exc
    module = _exportable(counter)
    dim = torch.export.Dim
    shapes = {
        "images": {
            0: dim("batch", min=1, max=4096),
            2: 8 * dim("h8", min=2, max=1024),
            3: 8 * dim("w8", min=2, max=1024),
        }
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    quiet = logging.getLogger("torch.onnx")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # "torchvision is not installed" notes
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                module,
                (_example(),),
                tmp,
                dynamo=True,
                input_names=["images"],
                output_names=["density", "count"],
                dynamic_shapes=shapes,
                opset_version=opset,
                external_data=False,
                verbose=False,
            )
        proto = onnx.load(tmp)
        for key, value in export_metadata(counter).items():
            entry = proto.metadata_props.add()
            entry.key, entry.value = str(key), json.dumps(value)
        return atomic_write_bytes(path, proto.SerializeToString())
    finally:
        quiet.setLevel(level)
        if os.path.exists(tmp):
            os.unlink(tmp)
