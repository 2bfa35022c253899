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
from pathlib import Path
from typing import Union

import numpy as np

__all__ = ["GENERATOR_VERSION", "make_synthetic", "render_crowd"]

GENERATOR_VERSION = 1
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


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A cluttered (H, W, 3) float32 RGB background with plenty of non-person edges."""
    import cv2

    top, bottom = rng.uniform(40, 230, size=(2, 3))
    t = np.linspace(0.0, 1.0, h)[:, None, None] ** rng.uniform(0.5, 2.0)
    img = (top * (1 - t) + bottom * t) * np.ones((1, w, 1))
    coarse = rng.normal(0.0, 1.0, size=(max(2, h // 16), max(2, w // 16), 3)).astype(np.float32)
    img += rng.uniform(8, 25) * cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC)
    img = np.ascontiguousarray(img, dtype=np.float32)

    s = min(h, w)
    if rng.random() < 0.6:  # paving / floor stripes, denser towards the top
        color = tuple(float(c) for c in rng.uniform(30, 220, 3))
        y = h - 1.0
        step = rng.uniform(0.04, 0.1) * h
        while y > 0 and step > 1.5:
            cv2.line(img, (0, int(y)), (w - 1, int(y)), color, 1, cv2.LINE_AA)
            y -= step
            step *= 0.85
    for _ in range(int(rng.integers(4, 15))):  # buildings, signs, boards
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
    for _ in range(int(rng.integers(3, 13))):  # poles, wires, railings
        p0 = (int(rng.integers(0, w)), int(rng.integers(0, h)))
        p1 = (int(rng.integers(0, w)), int(rng.integers(0, h)))
        color = tuple(float(c) for c in rng.uniform(0, 255, 3))
        cv2.line(img, p0, p1, color, int(rng.integers(1, 4)), cv2.LINE_AA)
    for _ in range(int(rng.integers(0, 7))):  # round things that are not heads
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


def _draw_people(
    img: np.ndarray, rng: np.random.Generator, heads: np.ndarray, head_radius: np.ndarray
) -> None:
    """Draw head-and-shoulder figures far to near (in place)."""
    import cv2

    n = heads.shape[0]
    skin = _SKIN[rng.integers(0, len(_SKIN), n)] + rng.normal(0, 8, (n, 3))
    cloth = rng.uniform(15, 240, (n, 3))
    hair = rng.uniform(10, 70, (n, 1)) * np.array([1.0, 0.85, 0.7]) + rng.normal(0, 5, (n, 3))
    light = rng.random(n) < 0.08
    hair[light] = rng.uniform(120, 220, (int(light.sum()), 1)) * np.array([1.0, 0.9, 0.7])
    back = rng.random(n) < 0.25  # seen from behind: hair covers the head
    skin, cloth, hair = (np.clip(c, 0, 255) for c in (skin, cloth, hair))
    aspect = rng.uniform(0.7, 0.9, n)
    for i in np.argsort(heads[:, 1], kind="stable"):
        x, y, r = heads[i, 0], heads[i, 1], head_radius[i]
        sub = lambda v: round(v * _SUB)  # noqa: E731
        body = (sub(x), sub(y + 2.6 * r))
        cv2.ellipse(
            img,
            body,
            (max(1, sub(2.0 * r)), max(1, sub(1.7 * r))),
            0,
            0,
            360,
            tuple(cloth[i]),
            -1,
            cv2.LINE_AA,
            _SHIFT,
        )
        head_axes = (max(1, sub(aspect[i] * r)), max(1, sub(r)))
        cv2.ellipse(
            img,
            (sub(x), sub(y)),
            head_axes,
            0,
            0,
            360,
            tuple(hair[i] if back[i] else skin[i]),
            -1,
            cv2.LINE_AA,
            _SHIFT,
        )
        if not back[i]:
            cv2.ellipse(
                img,
                (sub(x), sub(y - 0.2 * r)),
                (head_axes[0] + 1, max(1, sub(0.85 * r))),
                0,
                180,
                360,
                tuple(hair[i]),
                -1,
                cv2.LINE_AA,
                _SHIFT,
            )


def render_crowd(
    rng: np.random.Generator, image_size: tuple[int, int], count: int
) -> tuple[np.ndarray, np.ndarray]:
    """Render one synthetic crowd image.

    Args:
        rng (numpy.random.Generator): the only source of randomness.
        image_size (tuple[int, int]): ``(height, width)``.
        count (int): number of people.

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
    img = _background(rng, h, w)
    horizon = -h * rng.uniform(0.15, 0.8)  # above the image: people at the top are 15–55 % size
    r_near = rng.uniform(0.03, 0.045) * min(h, w)  # head radius at the bottom row
    heads = _place_heads(rng, h, w, int(count), horizon, r_near)
    radius = (
        r_near * (heads[:, 1] - horizon) / (h - horizon) * rng.uniform(0.85, 1.15, heads.shape[0])
    )
    _draw_people(img, rng, heads, np.maximum(radius, 1.0))
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


def _check_params(num_train, num_test, image_size, count_range, seed) -> tuple:
    def _int(v, name, low):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < low:
            raise ValueError(f"{name} must be an int >= {low}, got {v!r}")
        return int(v)

    _int(num_train, "num_train", 1)
    _int(num_test, "num_test", 0)
    _int(seed, "seed", 0)
    if isinstance(image_size, (int, np.integer)) and not isinstance(image_size, bool):
        image_size = (image_size, image_size)
    if not (isinstance(image_size, (tuple, list)) and len(image_size) == 2):
        raise ValueError(f"image_size must be an int or a (height, width) pair, got {image_size!r}")
    size = (_int(image_size[0], "image_size[0]", 32), _int(image_size[1], "image_size[1]", 32))
    if not (isinstance(count_range, (tuple, list)) and len(count_range) == 2):
        raise ValueError(f"count_range must be a (min, max) pair, got {count_range!r}")
    lo, hi = _int(count_range[0], "count_range[0]", 0), _int(count_range[1], "count_range[1]", 0)
    if lo > hi:
        raise ValueError(f"count_range must have min <= max, got {tuple(count_range)}")
    return size, (lo, hi)


def make_synthetic(
    root: Union[str, Path],
    *,
    num_train: int = 60,
    num_test: int = 20,
    image_size: Union[int, tuple[int, int]] = (256, 256),
    count_range: tuple[int, int] = (20, 400),
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
        num_train (int), num_test (int): images per split.
        image_size (int or (height, width)): image size in pixels (at least 32).
        count_range ((int, int)): people per image, drawn log-uniformly over ``[min, max]``.
        seed (int): the dataset is a deterministic function of the parameters.
        overwrite (bool): replace an existing dataset with other parameters. Without it, a
            complete dataset with the same parameters is reused as is and anything else in the way
            raises ``FileExistsError``. Only ``train_data``, ``test_data`` and ``synthetic.json``
            under ``root`` are ever removed.

    Returns:
        Path: ``root``, ready for ``open_dataset(root, kind="shanghaitech")``.

    Example:
        >>> import tempfile
        >>> root = make_synthetic(tempfile.mkdtemp(), num_train=3, num_test=1, count_range=(5, 50))
        >>> meta = json.loads((root / "synthetic.json").read_text())
        >>> sorted(meta["counts"]["train"]) == ["IMG_1.jpg", "IMG_2.jpg", "IMG_3.jpg"]
        True
    """
    import cv2

    size, (lo, hi) = _check_params(num_train, num_test, image_size, count_range, seed)
    root = Path(root)
    params = {
        "generator_version": GENERATOR_VERSION,
        "num_train": int(num_train),
        "num_test": int(num_test),
        "image_size": list(size),
        "count_range": [lo, hi],
        "seed": int(seed),
    }
    meta_path = root / "synthetic.json"
    existing = [root / d for _, d in _SPLITS if (root / d).exists()]
    if meta_path.exists() and not overwrite:
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, ValueError) as exc:
            raise FileExistsError(
                f"{meta_path} exists but cannot be read ({exc}); pass overwrite=True"
            ) from exc
        if meta.get("parameters") != params:
            raise FileExistsError(
                f"{meta_path} describes a dataset with other parameters "
                f"{meta.get('parameters')}; pass overwrite=True to replace it"
            )
        complete = all(
            (root / d / "images" / name).is_file()
            and (root / d / "ground-truth" / f"GT_{Path(name).stem}.mat").is_file()
            for split, d in _SPLITS
            for name in meta.get("counts", {}).get(split, {})
        )
        if complete:
            return root  # deterministic: the same parameters give the same files
    elif existing and not overwrite:
        raise FileExistsError(
            f"{existing[0]} exists and is not a synthetic dataset of ours; "
            "pass overwrite=True or choose another root"
        )
    if overwrite:
        if meta_path.exists():
            meta_path.unlink()
        for d in existing:
            shutil.rmtree(d)

    counts: dict[str, dict[str, int]] = {}
    for split_id, (split, folder) in enumerate(_SPLITS):
        image_dir, gt_dir = root / folder / "images", root / folder / "ground-truth"
        image_dir.mkdir(parents=True, exist_ok=True)
        gt_dir.mkdir(parents=True, exist_ok=True)
        counts[split] = {}
        for i in range(num_train if split == "train" else num_test):
            rng = np.random.default_rng([int(seed), split_id, i])
            count = _log_uniform_count(rng, lo, hi)
            image, points = render_crowd(rng, size, count)
            ok, jpg = cv2.imencode(
                ".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 92]
            )
            if not ok:
                raise RuntimeError("OpenCV could not encode a JPEG")
            _atomic_write(image_dir / f"IMG_{i + 1}.jpg", jpg.tobytes())
            _atomic_write(gt_dir / f"GT_IMG_{i + 1}.mat", _shanghaitech_mat(points))
            counts[split][f"IMG_{i + 1}.jpg"] = count
    train_counts = list(counts["train"].values())
    meta = {
        "description": "synthetic crowds (examples.css_ccnn.data.synthetic), ShanghaiTech layout; "
        "not a substitute for real data, see docs/synthetic_crowds.md",
        "parameters": params,
        "counts": counts,
        "cf_max": int(max(train_counts)),
        "total": {split: int(sum(c.values())) for split, c in counts.items()},
    }
    _atomic_write(meta_path, (json.dumps(meta, indent=1) + "\n").encode())
    return root
