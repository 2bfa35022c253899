"""``predict``: count people in images, folders of images and videos with a trained counter.

``python -m examples.css_ccnn predict CHECKPOINT INPUT... [--out DIR]`` writes under ``DIR``:

* ``counts.csv``: one row per image or video frame (``source, frame, time_s, count, height,
  width, overlay``), appended and flushed as it goes, so an interrupted run keeps what it counted;
* ``counts.json``: the same rows, the counter's settings (checkpoint, its SHA-256, resizing,
  tiling) and the totals, written at the end;
* ``overlays/``: the density map over each image (``<name>.png``) and each video
  (``<name>.mp4``, the counted frames at ``fps / every``), unless ``--no-overlays``.

Inputs: image files (:data:`~examples.css_ccnn.data.datasets.IMAGE_EXTENSIONS`, read with
Pillow), video files (:data:`VIDEO_EXTENSIONS`, read with OpenCV; every ``every``-th frame is
counted) and folders (searched recursively for both; other files are reported and skipped).
Images are counted in batches of the counter's ``batch_size`` (equal sizes share a forward pass)
and large ones are tiled (:func:`~examples.css_ccnn.counter.density_tiled`).
"""

from __future__ import annotations

import csv
import json
import math
import re
import sys
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from .checkpoint import atomic_write_text
from .counter import Count, Counter
from .data.datasets import IMAGE_EXTENSIONS, read_image

__all__ = [
    "VIDEO_EXTENSIONS",
    "PredictSummary",
    "Source",
    "collect_inputs",
    "predict",
    "render_overlay",
]

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv")
_CSV_FIELDS = ("source", "frame", "time_s", "count", "height", "width", "overlay")


@dataclass(frozen=True)
class Source:
    """One input file: ``kind`` is ``"image"`` or ``"video"``; ``name`` is the unique stem of its
    overlay file."""

    path: Path
    kind: str
    name: str


def _kind(path: Path) -> str | None:
    suffix = path.suffix.lower()
    if suffix in IMAGE_EXTENSIONS:
        return "image"
    if suffix in VIDEO_EXTENSIONS:
        return "video"
    return None


def _natural(path: Path) -> list:
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", str(path))]


def collect_inputs(inputs: Sequence[str | Path]) -> list[Source]:
    """The images and videos that ``inputs`` (files and folders) name, in order.

    Folders are searched recursively (natural sort order); files in them with other extensions
    are skipped with a warning. Overlay names are the file's path relative to its folder, with
    ``/`` replaced by ``__`` and a ``-2``, ``-3`` ... suffix where two inputs would collide.

    Raises:
        FileNotFoundError: an input does not exist.
        ValueError: a named file is neither an image nor a video, or nothing was found.

    Example:
        >>> import tempfile
        >>> folder = Path(tempfile.mkdtemp())
        >>> for name in ("b/1.png", "a.jpg", "b/clip.mp4"):
        ...     (folder / name).parent.mkdir(exist_ok=True)
        ...     _ = (folder / name).write_bytes(b"")
        >>> [(s.kind, s.name) for s in collect_inputs([folder, folder / "a.jpg"])]
        [('image', 'a'), ('image', 'b__1'), ('video', 'b__clip'), ('image', 'a-2')]
    """
    found: list[tuple[Path, str, str]] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            skipped = []
            for p in sorted(path.rglob("*"), key=lambda q: _natural(q.relative_to(path))):
                if not p.is_file() or p.name.startswith("."):
                    continue
                kind = _kind(p)
                if kind is None:
                    skipped.append(p)
                    continue
                rel = p.relative_to(path).with_suffix("")
                found.append((p, kind, "__".join(rel.parts)))
            if skipped:
                names = ", ".join(str(p.relative_to(path)) for p in skipped[:3])
                more = f" and {len(skipped) - 3} more" if len(skipped) > 3 else ""
                warnings.warn(
                    f"{path}: skipped {len(skipped)} file(s) that are neither images "
                    f"({' '.join(IMAGE_EXTENSIONS)}) nor videos: {names}{more}",
                    stacklevel=2,
                )
        elif path.is_file():
            kind = _kind(path)
            if kind is None:
                raise ValueError(
                    f"input {path} is neither an image ({' '.join(IMAGE_EXTENSIONS)}) nor a "
                    f"video ({' '.join(VIDEO_EXTENSIONS)})"
                )
            found.append((path, kind, path.stem))
        else:
            raise FileNotFoundError(f"input {path} not found")
    if not found:
        raise ValueError(f"no images or videos found in {', '.join(map(str, inputs))}")
    used: dict[str, int] = {}
    sources = []
    for path, kind, name in found:
        n = used.get(name, 0) + 1
        used[name] = n
        sources.append(Source(path, kind, name if n == 1 else f"{name}-{n}"))
    return sources


def render_overlay(image: np.ndarray, result: Count, *, alpha: float = 0.6) -> np.ndarray:
    """The density map of ``result`` blended over ``image`` (the image it counted), with the
    count written in the top-left corner.

    Args:
        image ((H, W, 3) uint8 ndarray): RGB.
        result (Count): its count.
        alpha (float): opacity of the heat map where the density is highest.

    Returns:
        (H, W, 3) uint8 ndarray: RGB.
    """
    import cv2

    h, w = image.shape[:2]
    density = cv2.resize(result.density.astype(np.float32), (w, h), interpolation=cv2.INTER_LINEAR)
    peak = float(density.max())
    norm = np.clip(density / peak, 0.0, 1.0) if peak > 0 else np.zeros_like(density)
    heat = cv2.applyColorMap((norm * 255).astype(np.uint8), cv2.COLORMAP_JET)[:, :, ::-1]
    weight = (alpha * np.sqrt(norm))[:, :, None]
    out = (image.astype(np.float32) * (1.0 - weight) + heat.astype(np.float32) * weight).astype(
        np.uint8
    )
    text = f"count {result.count:.1f}"
    scale = max(0.4, min(h, w) / 500.0)
    thick = max(1, round(2 * scale))
    (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thick)
    cv2.rectangle(out, (0, 0), (tw + 12, th + base + 12), (0, 0, 0), -1)
    cv2.putText(
        out, text, (6, th + 6), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), thick, cv2.LINE_AA
    )
    return out


@dataclass
class PredictSummary:
    """What :func:`predict` wrote.

    Attributes:
        images, frames: images and video frames counted.
        total: the sum of every count.
        seconds: wall time of the counting loop.
        csv_path, json_path: the tables; overlay_dir the overlays (``None`` when not written).
    """

    images: int
    frames: int
    total: float
    seconds: float
    csv_path: Path
    json_path: Path
    overlay_dir: Path | None


def _open_video(path: Path):
    import cv2

    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        raise ValueError(f"cannot open video {path} (OpenCV could not decode it)")
    return cap


def _video_length(path: Path, every: int) -> int:
    import cv2

    cap = _open_video(path)
    frames = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
    cap.release()
    return math.ceil(frames / every) if frames > 0 else 0


def _frames(path: Path, every: int) -> Iterator[tuple[int, float, np.ndarray]]:
    """``(frame index, time in s, RGB frame)`` of every ``every``-th frame of a video."""
    import cv2

    cap = _open_video(path)
    fps = cap.get(cv2.CAP_PROP_FPS) or 0.0
    index = 0
    try:
        while True:
            if index % every:
                if not cap.grab():
                    break
            else:
                ok, frame = cap.read()
                if not ok:
                    break
                yield index, (index / fps if fps > 0 else float("nan")), frame[:, :, ::-1].copy()
            index += 1
    finally:
        cap.release()


class _VideoOut:
    """An MP4 writer opened on the first frame."""

    def __init__(self, path: Path, fps: float) -> None:
        self.path, self.fps, self.writer = path, fps, None

    def write(self, rgb: np.ndarray) -> None:
        import cv2

        if self.writer is None:
            h, w = rgb.shape[:2]
            fourcc = cv2.VideoWriter_fourcc(*"mp4v")
            self.writer = cv2.VideoWriter(str(self.path), fourcc, self.fps, (w, h))
            if not self.writer.isOpened():
                raise OSError(f"OpenCV cannot write the video {self.path}")
        self.writer.write(np.ascontiguousarray(rgb[:, :, ::-1]))

    def close(self) -> None:
        if self.writer is not None:
            self.writer.release()


def _items(sources: list[Source], every: int) -> Iterator[tuple[Source, int | None, float, object]]:
    for source in sources:
        if source.kind == "image":
            yield source, None, float("nan"), read_image(source.path)
        else:
            for index, t, frame in _frames(source.path, every):
                yield source, index, t, frame


class _Writer:
    """Rows to ``counts.csv`` (flushed per row), overlays to ``overlays/``."""

    def __init__(self, out_dir: Path, overlays: bool, every: int) -> None:
        import cv2

        self.cv2, self.every = cv2, every
        self.overlay_dir = out_dir / "overlays" if overlays else None
        if self.overlay_dir is not None:
            self.overlay_dir.mkdir(parents=True, exist_ok=True)
        self.csv_path = out_dir / "counts.csv"
        self.handle = open(self.csv_path, "w", newline="", encoding="utf-8")
        self.csv = csv.DictWriter(self.handle, fieldnames=_CSV_FIELDS)
        self.csv.writeheader()
        self.rows: list[dict] = []
        self.videos: dict[Path, _VideoOut] = {}

    def overlay(self, source: Source, image: np.ndarray, result: Count) -> str:
        if self.overlay_dir is None:
            return ""
        picture = render_overlay(image, result)
        if source.kind == "image":
            path = self.overlay_dir / f"{source.name}.png"
            if not self.cv2.imwrite(str(path), np.ascontiguousarray(picture[:, :, ::-1])):
                raise OSError(f"OpenCV cannot write {path}")
            return str(path)
        video = self.videos.get(source.path)
        if video is None:
            cap = _open_video(source.path)
            fps = cap.get(self.cv2.CAP_PROP_FPS) or 25.0
            cap.release()
            video = _VideoOut(self.overlay_dir / f"{source.name}.mp4", fps / self.every)
            self.videos[source.path] = video
        video.write(picture)
        return str(video.path)

    def add(self, source: Source, frame: int | None, t: float, image, result: Count) -> None:
        row = {
            "source": str(source.path),
            "frame": "" if frame is None else frame,
            "time_s": "" if frame is None or math.isnan(t) else round(t, 4),
            "count": round(result.count, 4),
            "height": result.image_size[0],
            "width": result.image_size[1],
            "overlay": self.overlay(source, image, result),
        }
        self.csv.writerow(row)
        self.handle.flush()
        self.rows.append(row)

    def close(self) -> None:
        self.handle.close()
        for video in self.videos.values():
            video.close()


def predict(
    counter: Counter,
    inputs: Sequence[str | Path],
    out_dir: str | Path,
    *,
    every: int = 1,
    overlays: bool = True,
    progress: bool = True,
) -> PredictSummary:
    """Count every image and every ``every``-th video frame of ``inputs``; write the tables and
    overlays under ``out_dir`` (module docstring).

    Raises:
        ValueError, FileNotFoundError: bad inputs (named in the message); unreadable images
            raise :class:`~examples.css_ccnn.data.datasets.DatasetError` naming the file.
        KeyboardInterrupt: Ctrl-C; the message says where the counts so far are.
    """
    if isinstance(every, bool) or not isinstance(every, int) or every < 1:
        raise ValueError(f"every must be an int >= 1, got {every!r}")
    sources = collect_inputs(inputs)
    total = sum(1 if s.kind == "image" else _video_length(s.path, every) for s in sources)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    writer = _Writer(out_dir, overlays, every)
    bar = tqdm(
        total=total or None,
        desc="predict",
        unit="img",
        disable=not progress,
        file=sys.stderr,
        dynamic_ncols=True,
    )
    t0 = time.perf_counter()

    def flush(chunk: list) -> None:
        results = counter.count_many([item[3] for item in chunk])
        for (source, frame, t, image), result in zip(chunk, results):
            writer.add(source, frame, t, image, result)
        bar.update(len(chunk))

    try:
        chunk: list = []
        for item in _items(sources, every):
            chunk.append(item)
            if len(chunk) >= counter.batch_size:
                flush(chunk)
                chunk = []
        if chunk:
            flush(chunk)
    except KeyboardInterrupt:
        raise KeyboardInterrupt(
            f"interrupted: {len(writer.rows)} counts so far are in {writer.csv_path}"
        ) from None
    finally:
        bar.close()
        writer.close()
    seconds = time.perf_counter() - t0
    rows = writer.rows
    summary = PredictSummary(
        images=sum(1 for r in rows if r["frame"] == ""),
        frames=sum(1 for r in rows if r["frame"] != ""),
        total=float(sum(r["count"] for r in rows)),
        seconds=seconds,
        csv_path=writer.csv_path,
        json_path=out_dir / "counts.json",
        overlay_dir=writer.overlay_dir,
    )
    settings = {
        **counter.info,
        "device": str(counter.device),
        "min_side": counter.min_side,
        "max_side": counter.max_side,
        "tile": counter.tile,
        "batch_size": counter.batch_size,
        "every": every,
    }
    document = {
        "counter": settings,
        "results": rows,
        "totals": {"images": summary.images, "frames": summary.frames, "count": summary.total},
        "seconds": round(seconds, 3),
    }
    atomic_write_text(summary.json_path, json.dumps(document, indent=1) + "\n")
    return summary
