"""Synthetic crowd images in the ShanghaiTech layout, so that CSS-CCNN runs without downloads.

Each image is a cluttered scene (a colour gradient with low-frequency texture, rectangles with
window grids, lines, paving stripes, round objects: edges that are not people) with
head-and-shoulder figures drawn far to near: a body blob in a clothing colour, an elliptical head in
a skin tone and dark hair. Figures follow a perspective (people higher in the image are smaller, as
seen by a camera above the ground plane) and are placed by a density field made of a few Gaussian
clusters over a sparse background, so that per-cell counts are long tailed like the paper's Fig. 2
(many empty or sparse cells, a few very dense ones). Image counts are log-uniform over
``count_range``. The annotation is the head centre. See ``docs/synthetic_crowds.md`` for what these
images are and are not.

Everything is deterministic given ``seed``: image ``i`` of a split draws from
``numpy.random.default_rng([seed, split, i])``, so changing ``num_train`` does not change the test
images.
"""

from __future__ import annotations

import io
import json
import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = [
    "FAMILIES",
    "FAMILY_NAMES",
    "FIGURES",
    "GENERATOR_VERSION",
    "Scene",
    "make_synthetic",
    "render_crowd",
    "scene_of",
]

GENERATOR_VERSION = 2
_SPLITS = (("train", "train_data"), ("test", "test_data"))
_SKIN = np.array(
    [
        [255, 224, 196],
        [241, 194, 150],
        [224, 172, 125],
        [198, 134, 88],
        [160, 106, 66],
        [118, 74, 44],
        [84, 52, 32],
    ],
    dtype=np.float64,
)
_SHIFT = 2  # cv2 drawing with 2 fractional bits
_SUB = 1 << _SHIFT


# ----------------------------------------------------------------------------------------------
# scene


def _scaled(count: int, clutter: float) -> int:
    return round(int(count) * clutter)


def _background(rng: np.random.Generator, h: int, w: int, clutter: float = 1.0) -> np.ndarray:
    """A cluttered (H, W, 3) float32 RGB background with plenty of non-person edges.

    ``clutter`` scales the number of objects (buildings, poles, round things), the chance of
    floor stripes and the texture amplitude; 0 leaves a plain gradient.
    """
    import cv2

    top, bottom = rng.uniform(40, 230, size=(2, 3))
    t = np.linspace(0.0, 1.0, h)[:, None, None] ** rng.uniform(0.5, 2.0)
    img = (top * (1 - t) + bottom * t) * np.ones((1, w, 1))
    coarse = rng.normal(0.0, 1.0, size=(max(2, h // 16), max(2, w // 16), 3)).astype(np.float32)
    img += (
        rng.uniform(8, 25)
        * min(clutter, 1.5)
        * cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC)
    )
    img = np.ascontiguousarray(img, dtype=np.float32)

    s = min(h, w)
    if rng.random() < 0.6 * clutter:  # paving / floor stripes, denser towards the top
        color = tuple(float(c) for c in rng.uniform(30, 220, 3))
        y = h - 1.0
        step = rng.uniform(0.04, 0.1) * h
        while y > 0 and step > 1.5:
            cv2.line(img, (0, int(y)), (w - 1, int(y)), color, 1, cv2.LINE_AA)
            y -= step
            step *= 0.85
    for _ in range(_scaled(rng.integers(4, 15), clutter)):  # buildings, signs, boards
        x0, y0 = rng.integers(-s // 8, w), rng.integers(-s // 8, h)
        bw, bh = rng.integers(s // 16, s // 2, size=2)
        color = tuple(float(c) for c in rng.uniform(0, 255, 3))
        filled = rng.random() < 0.6
        cv2.rectangle(
            img,
            (int(x0), int(y0)),
            (int(x0 + bw), int(y0 + bh)),
            color,
            -1 if filled else int(rng.integers(1, 4)),
        )
        if filled and rng.random() < 0.5:  # a window grid
            wc = tuple(float(c) for c in rng.uniform(0, 255, 3))
            step = int(rng.integers(max(4, s // 40), max(6, s // 12)))
            for yy in range(int(y0) + 2, int(y0 + bh) - step // 2, step):
                for xx in range(int(x0) + 2, int(x0 + bw) - step // 2, step):
                    cv2.rectangle(img, (xx, yy), (xx + step // 2, yy + step // 2), wc, -1)
    for _ in range(_scaled(rng.integers(3, 13), clutter)):  # poles, wires, railings
        p0 = (int(rng.integers(0, w)), int(rng.integers(0, h)))
        p1 = (int(rng.integers(0, w)), int(rng.integers(0, h)))
        color = tuple(float(c) for c in rng.uniform(0, 255, 3))
        cv2.line(img, p0, p1, color, int(rng.integers(1, 4)), cv2.LINE_AA)
    for _ in range(_scaled(rng.integers(0, 7), clutter)):  # round things that are not heads
        c = (int(rng.integers(0, w)), int(rng.integers(0, h)))
        color = tuple(float(v) for v in rng.uniform(0, 255, 3))
        cv2.circle(img, c, int(rng.integers(2, max(3, s // 14))), color, -1, cv2.LINE_AA)
    return img


def _place_heads(
    rng: np.random.Generator, h: int, w: int, count: int, horizon: float, r_near: float
) -> np.ndarray:
    """(count, 2) head centres drawn from a clustered, perspective-weighted density field.

    The expected number of heads per field cell is capped at the number of heads that fit
    (centres ``1.4 r`` apart for head radius ``r`` at that height), the excess being moved to the
    other cells in proportion, so that the densest cells are packed rather than piled up.
    """
    gh, gw = max(1, h // 4), max(1, w // 4)
    gy = (np.arange(gh) + 0.5) / gh * h
    gx = (np.arange(gw) + 0.5) / gw * w
    field = np.zeros((gh, gw))
    n_clusters = int(rng.integers(1, 5))
    weights = rng.lognormal(0.0, 1.0, size=n_clusters)
    for k in range(n_clusters):
        cx, cy = rng.uniform(0.05, 0.95) * w, rng.uniform(0.1, 0.95) * h
        sx = rng.uniform(0.02, 0.18) * w
        sy = sx * rng.uniform(0.3, 0.9) * h / w
        field += (
            weights[k]
            * np.exp(-0.5 * (((gy[:, None] - cy) / sy) ** 2 + ((gx[None, :] - cx) / sx) ** 2))
            / (sx * sy)
        )
    field /= field.sum()
    field += rng.uniform(0.0, 0.08) / field.size  # a few stragglers anywhere
    scale = (gy - horizon) / (h - horizon)  # people per pixel grow as people shrink
    field *= (1.0 / scale)[:, None]
    expected = count * field / field.sum()
    cap = np.broadcast_to(
        ((w / gw) * (h / gh) / (1.4 * np.maximum(r_near * scale, 1.0)) ** 2)[:, None],
        expected.shape,
    )
    for _ in range(20):
        over = expected > cap
        if not over.any():
            break
        excess = float((expected[over] - cap[over]).sum())
        expected[over] = cap[over]
        free = expected < cap
        if not free.any():
            break
        expected[free] += excess * expected[free] / expected[free].sum()
    p = (expected / expected.sum()).ravel()
    cells = rng.choice(p.size, size=count, p=p)
    iy, ix = np.divmod(cells, gw)
    x = (ix + rng.random(count)) * (w / gw) - 0.5
    y = (iy + rng.random(count)) * (h / gh) - 0.5
    return np.stack([np.clip(x, 0, w - 1), np.clip(y, 0, h - 1)], axis=1)


def _ellipse(img, centre, axes, color, start=0, end=360) -> None:
    """A filled anti-aliased ellipse with sub-pixel centre and axes (image pixels)."""
    import cv2

    sub = lambda v: round(v * _SUB)  # noqa: E731
    cv2.ellipse(
        img,
        (sub(centre[0]), sub(centre[1])),
        (max(1, sub(axes[0])), max(1, sub(axes[1]))),
        0,
        start,
        end,
        tuple(float(c) for c in color),
        -1,
        cv2.LINE_AA,
        _SHIFT,
    )


def _colours(rng: np.random.Generator, n: int) -> tuple:
    """Skin, clothing and hair colours, which heads are seen from behind, head aspect ratios."""
    skin = _SKIN[rng.integers(0, len(_SKIN), n)] + rng.normal(0, 8, (n, 3))
    cloth = rng.uniform(15, 240, (n, 3))
    hair = rng.uniform(10, 70, (n, 1)) * np.array([1.0, 0.85, 0.7]) + rng.normal(0, 5, (n, 3))
    light = rng.random(n) < 0.08
    hair[light] = rng.uniform(120, 220, (int(light.sum()), 1)) * np.array([1.0, 0.9, 0.7])
    back = rng.random(n) < 0.25  # seen from behind: hair covers the head
    skin, cloth, hair = (np.clip(c, 0, 255) for c in (skin, cloth, hair))
    return skin, cloth, hair, back, rng.uniform(0.7, 0.9, n)


def _draw_people(
    img: np.ndarray,
    rng: np.random.Generator,
    heads: np.ndarray,
    head_radius: np.ndarray,
    figure: str = "head_shoulder",
) -> None:
    """Draw the figures far to near (in place).

    ``head_shoulder``: a camera in front, above the ground; a body blob below an elliptical head
    (skin and a hair cap, or all hair from behind). ``top_view``: a camera high above; wide
    shoulders around a round head that is mostly hair, with a small face crescent.
    """
    skin, cloth, hair, back, aspect = _colours(rng, heads.shape[0])
    for i in np.argsort(heads[:, 1], kind="stable"):
        x, y, r = heads[i, 0], heads[i, 1], head_radius[i]
        if figure == "top_view":
            _ellipse(img, (x, y + 0.5 * r), (2.1 * r, 1.25 * r), cloth[i])
            _ellipse(img, (x, y), (0.95 * r, 0.95 * r), hair[i])
            if not back[i]:
                _ellipse(img, (x, y + 0.45 * r), (0.6 * r, 0.45 * r), skin[i], 0, 180)
            continue
        _ellipse(img, (x, y + 2.6 * r), (2.0 * r, 1.7 * r), cloth[i])
        _ellipse(img, (x, y), (aspect[i] * r, r), hair[i] if back[i] else skin[i])
        if not back[i]:
            cap = (max(1, round(aspect[i] * r * _SUB)) + 1) / _SUB
            _ellipse(img, (x, y - 0.2 * r), (cap, 0.85 * r), hair[i], 180, 360)


FIGURES = ("head_shoulder", "top_view")


def render_crowd(
    rng: np.random.Generator,
    image_size: tuple[int, int],
    count: int,
    *,
    head_size: tuple[float, float] = (0.03, 0.045),
    clutter: float = 1.0,
    figure: str = "head_shoulder",
) -> tuple[np.ndarray, np.ndarray]:
    """Render one synthetic crowd image.

    Args:
        rng (numpy.random.Generator): the only source of randomness.
        image_size (tuple[int, int]): ``(height, width)``.
        count (int): number of people.
        head_size ((float, float)): range of the head radius of the nearest people (the bottom
            row), as a fraction of the short image side; one value is drawn per image.
        clutter (float): how many non-person objects the background holds (1 = the default
            scene, 0 = a plain gradient).
        figure (str): ``"head_shoulder"`` or ``"top_view"`` (see :func:`_draw_people`).

    Returns:
        tuple: the (H, W, 3) uint8 RGB image and the (count, 2) float64 head centres ``(x, y)``,
        0-based pixel coordinates inside the image.

    Example:
        >>> img, pts = render_crowd(np.random.default_rng(0), (64, 96), 10)
        >>> img.shape, img.dtype, pts.shape
        ((64, 96, 3), dtype('uint8'), (10, 2))
    """
    import cv2

    h, w = int(image_size[0]), int(image_size[1])
    if h < 16 or w < 16:
        raise ValueError(f"image_size must be at least (16, 16), got {tuple(image_size)}")
    if isinstance(count, bool) or not isinstance(count, (int, np.integer)) or count < 0:
        raise ValueError(f"count must be an int >= 0, got {count!r}")
    if figure not in FIGURES:
        raise ValueError(f"figure must be one of {FIGURES}, got {figure!r}")
    img = _background(rng, h, w, clutter)
    horizon = -h * rng.uniform(0.15, 0.8)  # above the image: people at the top are 15–55 % size
    r_near = rng.uniform(*head_size) * min(h, w)  # head radius at the bottom row
    heads = _place_heads(rng, h, w, int(count), horizon, r_near)
    radius = (
        r_near * (heads[:, 1] - horizon) / (h - horizon) * rng.uniform(0.85, 1.15, heads.shape[0])
    )
    _draw_people(img, rng, heads, np.maximum(radius, 1.0), figure)
    img = cv2.GaussianBlur(img, (3, 3), 0.6)
    img += rng.normal(0.0, rng.uniform(1.0, 5.0), img.shape).astype(np.float32)
    return np.clip(img + 0.5, 0, 255).astype(np.uint8), heads


# ----------------------------------------------------------------------------------------------
# files


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _shanghaitech_mat(points: np.ndarray) -> bytes:
    """``GT_IMG_n.mat`` bytes: ``image_info{1}.location`` (1-based) and ``.number``, nested as
    MATLAB saves them."""
    import scipy.io

    info = np.zeros((1, 1), dtype=[("location", "O"), ("number", "O")])
    info[0, 0]["location"] = np.asarray(points, dtype=np.float64).reshape(-1, 2) + 1.0
    info[0, 0]["number"] = np.array([[float(points.shape[0])]])
    cell = np.empty((1, 1), dtype=object)
    cell[0, 0] = info
    buf = io.BytesIO()
    scipy.io.savemat(buf, {"image_info": cell})
    return buf.getvalue()


def _log_uniform_count(rng: np.random.Generator, lo: int, hi: int) -> int:
    value = math.exp(rng.uniform(math.log(lo + 1), math.log(hi + 2))) - 1
    return int(min(hi, max(lo, math.floor(value))))


@dataclass(frozen=True)
class Scene:
    """What a synthetic family looks like (every range is sampled per image).

    Attributes:
        long_side ((int, int)): range of the long image side in pixels (uniform).
        aspect ((float, float)): range of short side / long side (uniform; landscape images).
        count_range ((int, int)): people per image (log-uniform).
        head_size ((float, float)): head radius of the nearest people / short side.
        clutter (float): amount of non-person objects (1 = the default scene).
        figure (str): ``"head_shoulder"`` or ``"top_view"``.
    """

    long_side: tuple[int, int] = (256, 256)
    aspect: tuple[float, float] = (1.0, 1.0)
    count_range: tuple[int, int] = (20, 400)
    head_size: tuple[float, float] = (0.03, 0.045)
    clutter: float = 1.0
    figure: str = "head_shoulder"


FAMILIES: dict[str, Scene] = {
    # the original generator: square 256-px images, 20-400 people
    "default": Scene(),
    # counts spread like the public datasets (max/min 12-40; ShanghaiTech B: 9-578, Part A:
    # 33-3139): few people, large heads, small images, little clutter
    "sparse": Scene((256, 448), (0.75, 1.0), (15, 250), (0.04, 0.055), 0.5),
    # a street: mid-sized images, tens to 1,500 people
    "medium": Scene((448, 704), (0.6, 0.85), (40, 1500), (0.025, 0.035), 1.0),
    # a stadium: large images, up to 3,000 small heads, busy background
    "dense": Scene((704, 1024), (0.55, 0.75), (150, 3000), (0.012, 0.02), 1.6),
}


def _blind_scene() -> Scene:
    """A family drawn at random (fixed seed) over the whole range of the other families.

    Its parameters were never printed or looked at while the ``cpu`` preset was designed: its
    results are a check of that design, not an input to it.
    """
    rng = np.random.default_rng(20240917)
    lo = int(rng.integers(256, 769))
    hi = int(min(1024, lo * rng.uniform(1.0, 1.5)))
    a_lo = float(rng.uniform(0.55, 0.9))
    c_lo = int(rng.integers(20, 301))
    c_hi = int(min(3000, c_lo * rng.uniform(4.0, 15.0)))
    h_lo = float(rng.uniform(0.012, 0.05))
    return Scene(
        long_side=(lo, hi),
        aspect=(a_lo, min(1.0, a_lo + 0.2)),
        count_range=(c_lo, c_hi),
        head_size=(h_lo, h_lo * 1.4),
        clutter=float(rng.uniform(0.3, 2.0)),
        figure=str(rng.choice(FIGURES)),
    )


FAMILY_NAMES = (*FAMILIES, "blind")


def scene_of(family: str) -> Scene:
    """The :class:`Scene` of a family name (:data:`FAMILY_NAMES`)."""
    if family == "blind":
        return _blind_scene()
    if family not in FAMILIES:
        raise ValueError(f"family must be one of {list(FAMILY_NAMES)}, got {family!r}")
    return FAMILIES[family]


def _int(v, name, low):
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < low:
        raise ValueError(f"{name} must be an int >= {low}, got {v!r}")
    return int(v)


def _pair(value, name, kind=float) -> tuple:
    if not (isinstance(value, (tuple, list)) and len(value) == 2):
        raise ValueError(f"{name} must be a (min, max) pair, got {value!r}")
    lo, hi = (kind(v) for v in value)
    if not lo <= hi:
        raise ValueError(f"{name} must have min <= max, got {tuple(value)}")
    return lo, hi


def _resolve_scene(family, image_size, count_range, head_size, clutter, figure) -> dict:
    """The generator parameters: the family's, with the explicit arguments replacing them."""
    scene = scene_of(family)
    if image_size is None:
        long_side = _pair(scene.long_side, "long_side", int)
        aspect = _pair(scene.aspect, "aspect")
        fixed = (
            [round(long_side[0] * aspect[0]), long_side[0]]
            if long_side[0] == long_side[1] and aspect[0] == aspect[1]
            else None
        )
    else:
        if isinstance(image_size, (int, np.integer)) and not isinstance(image_size, bool):
            image_size = (image_size, image_size)
        if not (isinstance(image_size, (tuple, list)) and len(image_size) == 2):
            raise ValueError(
                f"image_size must be an int or a (height, width) pair, got {image_size!r}"
            )
        fixed = [_int(image_size[0], "image_size[0]", 32), _int(image_size[1], "image_size[1]", 32)]
        long_side = aspect = None
    counts = count_range if count_range is not None else scene.count_range
    if not (isinstance(counts, (tuple, list)) and len(counts) == 2):
        raise ValueError(f"count_range must be a (min, max) pair, got {counts!r}")
    lo, hi = _int(counts[0], "count_range[0]", 0), _int(counts[1], "count_range[1]", 0)
    if lo > hi:
        raise ValueError(f"count_range must have min <= max, got {tuple(counts)}")
    heads = _pair(head_size if head_size is not None else scene.head_size, "head_size")
    if not 0.0 < heads[0] <= heads[1] <= 0.25:
        raise ValueError(f"head_size must lie in (0, 0.25], got {heads}")
    clutter = float(scene.clutter if clutter is None else clutter)
    if not 0.0 <= clutter <= 4.0:
        raise ValueError(f"clutter must lie in [0, 4], got {clutter!r}")
    figure = scene.figure if figure is None else figure
    if figure not in FIGURES:
        raise ValueError(f"figure must be one of {FIGURES}, got {figure!r}")
    return {
        "family": family,
        "image_size": fixed,
        "long_side": None if fixed else list(long_side),
        "aspect": None if fixed else list(aspect),
        "count_range": [int(lo), int(hi)],
        "head_size": list(heads),
        "clutter": clutter,
        "figure": figure,
    }


def _image_shape(params: dict, seed: int, split_id: int, i: int) -> tuple[int, int]:
    """(height, width) of image ``i``: fixed, or drawn from its own stream (so the scene's
    stream is the same whatever the sizes)."""
    if params["image_size"] is not None:
        return tuple(params["image_size"])
    rng = np.random.default_rng([seed, split_id, i, 1])
    long = int(rng.integers(params["long_side"][0], params["long_side"][1] + 1))
    short = max(32, round(long * rng.uniform(*params["aspect"])))
    return short, long


def _existing_dataset(root: Path, params: dict, overwrite: bool) -> bool:
    """True when ``root`` already holds this exact dataset; clears it for ``overwrite``."""
    meta_path = root / "synthetic.json"
    existing = [root / d for _, d in _SPLITS if (root / d).exists()]
    if meta_path.exists() and not overwrite:
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, ValueError) as exc:
            raise FileExistsError(
                f"{meta_path} exists but cannot be read ({exc}); pass overwrite=True "
                "(command line: --overwrite)"
            ) from exc
        if meta.get("parameters") != params:
            raise FileExistsError(
                f"{meta_path} describes a dataset with other parameters "
                f"{meta.get('parameters')}; pass overwrite=True (command line: --overwrite) to "
                "replace it, or choose another root"
            )
        return all(
            (root / d / "images" / name).is_file()
            and (root / d / "ground-truth" / f"GT_{Path(name).stem}.mat").is_file()
            for split, d in _SPLITS
            for name in meta.get("counts", {}).get(split, {})
        )
    if existing and not overwrite:
        raise FileExistsError(
            f"{existing[0]} exists and is not a synthetic dataset of ours; "
            "pass overwrite=True (command line: --overwrite) or choose another root"
        )
    if overwrite:
        if meta_path.exists():
            meta_path.unlink()
        for d in existing:
            shutil.rmtree(d)
    return False


def _write_split(root: Path, params: dict, split_id: int, folder: str, n: int) -> dict:
    import cv2

    image_dir, gt_dir = root / folder / "images", root / folder / "ground-truth"
    image_dir.mkdir(parents=True, exist_ok=True)
    gt_dir.mkdir(parents=True, exist_ok=True)
    counts, seed = {}, params["seed"]
    lo, hi = params["count_range"]
    for i in range(n):
        rng = np.random.default_rng([seed, split_id, i])
        count = _log_uniform_count(rng, lo, hi)
        image, points = render_crowd(
            rng,
            _image_shape(params, seed, split_id, i),
            count,
            head_size=tuple(params["head_size"]),
            clutter=params["clutter"],
            figure=params["figure"],
        )
        bgr = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
        ok, jpg = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, 92])
        if not ok:
            raise RuntimeError("OpenCV could not encode a JPEG")
        _atomic_write(image_dir / f"IMG_{i + 1}.jpg", jpg.tobytes())
        _atomic_write(gt_dir / f"GT_IMG_{i + 1}.mat", _shanghaitech_mat(points))
        counts[f"IMG_{i + 1}.jpg"] = count
    return counts


def make_synthetic(
    root: str | Path,
    *,
    family: str = "default",
    num_train: int = 60,
    num_test: int = 20,
    image_size: int | tuple[int, int] | None = None,
    count_range: tuple[int, int] | None = None,
    head_size: tuple[float, float] | None = None,
    clutter: float | None = None,
    figure: str | None = None,
    seed: int = 0,
    overwrite: bool = False,
) -> Path:
    """Write a synthetic crowd dataset in exactly the ShanghaiTech layout.

    Files: ``root/{train_data,test_data}/images/IMG_n.jpg`` (n = 1, 2, …; JPEG quality 92) and
    ``root/{train_data,test_data}/ground-truth/GT_IMG_n.mat`` (``image_info{1}.location`` N×2,
    1-based, and ``.number``), plus ``root/synthetic.json`` with the parameters, the per-image
    counts and ``cf_max`` (the largest training count, the prior's ``Cf_max``). Every file is
    written atomically (temporary file + ``os.replace``); ``synthetic.json`` is written last and
    marks a complete dataset.

    Args:
        root (str or Path): output folder (created).
        family (str): the scene (:data:`FAMILIES`, or ``"blind"``); the arguments below that are
            not ``None`` replace its values.
        num_train (int), num_test (int): images per split.
        image_size (int or (height, width) or None): a fixed image size in pixels (at least 32);
            ``None``: the family's sizes.
        count_range ((int, int) or None): people per image, drawn log-uniformly over
            ``[min, max]``.
        head_size ((float, float) or None): head radius of the nearest people / short side.
        clutter (float or None): amount of non-person objects, 0 to 4 (1 = default).
        figure (str or None): ``"head_shoulder"`` or ``"top_view"``.
        seed (int): the dataset is a deterministic function of the parameters.
        overwrite (bool): replace an existing dataset with other parameters. Without it, a
            complete dataset with the same parameters is reused as is and anything else in the
            way raises ``FileExistsError``. Only ``train_data``, ``test_data`` and
            ``synthetic.json`` under ``root`` are ever removed.

    Returns:
        Path: ``root``, ready for ``open_dataset(root, kind="shanghaitech")``.

    Example:
        >>> import tempfile
        >>> root = make_synthetic(tempfile.mkdtemp(), num_train=3, num_test=1, count_range=(5, 50))
        >>> meta = json.loads((root / "synthetic.json").read_text())
        >>> sorted(meta["counts"]["train"]) == ["IMG_1.jpg", "IMG_2.jpg", "IMG_3.jpg"]
        True
    """
    _int(num_train, "num_train", 1)
    _int(num_test, "num_test", 0)
    _int(seed, "seed", 0)
    params = {
        "generator_version": GENERATOR_VERSION,
        "num_train": int(num_train),
        "num_test": int(num_test),
        **_resolve_scene(family, image_size, count_range, head_size, clutter, figure),
        "seed": int(seed),
    }
    root = Path(root)
    if _existing_dataset(root, params, overwrite):
        return root  # deterministic: the same parameters give the same files
    counts = {
        split: _write_split(root, params, split_id, folder, n)
        for split_id, ((split, folder), n) in enumerate(zip(_SPLITS, (num_train, num_test)))
    }
    meta = {
        "description": "synthetic crowds (examples.css_ccnn.data.synthetic), ShanghaiTech layout; "
        "not a substitute for real data, see docs/synthetic_crowds.md",
        "parameters": params,
        "counts": counts,
        "cf_max": int(max(counts["train"].values())),
        "total": {split: int(sum(c.values())) for split, c in counts.items()},
    }
    _atomic_write(root / "synthetic.json", (json.dumps(meta, indent=1) + "\n").encode())
    return root
