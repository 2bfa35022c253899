"""Readers for the public crowd-counting datasets, in the layouts their archives unpack to.

Every reader returns a :class:`CrowdDataset`: a lazy sequence of :class:`Sample` (an RGB uint8
image, the annotated head positions, the file path). Files are listed when the dataset is opened
(a missing annotation is reported then); they are read on ``dataset[i]``.

Coordinates. ``Sample.points`` holds ``(x, y)`` head positions as 0-based pixel coordinates: the
integer position ``(c, r)`` is the centre of the pixel in column ``c`` and row ``r``. The MATLAB
formats (ShanghaiTech, UCF-QNRF, UCF-CC-50) store 1-based pixel coordinates and get 1 subtracted, as
the original CSS-CCNN code does; JHU-CROWD++ and NWPU-Crowd store 0-based coordinates, used as they
are. Points are returned as annotated, even the few that real annotations place just outside the
image; :func:`examples.css_ccnn.data.transforms.density_map` folds them onto the border cells.

Layouts (``root`` is the folder the archive unpacks to):

========================  ==================================================================
``kind``                  files
========================  ==================================================================
``"shanghaitech"``        ``{train_data,test_data}/images/IMG_n.jpg`` and
                          ``{train_data,test_data}/ground-truth/GT_IMG_n.mat`` (also
                          ``ground_truth``); ``image_info{1}.location`` (N×2, x then y, 1-based)
``"qnrf"``                ``{Train,Test}/img_XXXX.jpg`` and ``img_XXXX_ann.mat`` beside it,
                          ``annPoints`` (N×2, 1-based); ``train``/``test`` accepted
``"jhu"``                 ``{train,val,test}/images/XXXX.jpg`` and ``gt/XXXX.txt`` with rows
                          ``x y w h occlusion blur`` (0-based)
``"ucf_cc_50"``           ``n.jpg`` and ``n_ann.mat`` (``annPoints``, 1-based), n = 1…50;
                          5-fold protocol: fold k (0-based) tests on images 10k+1 … 10k+10
``"nwpu"``                ``images/XXXX.jpg`` (or ``images_part*/``), ``jsons/XXXX.json`` with
                          ``"points": [[x, y], ...]`` (0-based); splits from ``train.txt``,
                          ``val.txt``, ``test.txt`` (first column = image id)
``"folder"``              any image below ``root`` (recursive), no labels
========================  ==================================================================

Images are the files with an extension in :data:`IMAGE_EXTENSIONS` (read with Pillow). Image
files with other extensions (``.gif``, ``.heic``, ``.avif``, ...) are skipped with a
:class:`DatasetWarning`, and a ground-truth file whose image is missing (or skipped) is an error:
evaluating on fewer images than were annotated would be silent.
"""

from __future__ import annotations

import json
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Union, overload

import numpy as np

__all__ = [
    "IMAGE_EXTENSIONS",
    "KINDS",
    "CrowdDataset",
    "DatasetError",
    "DatasetWarning",
    "Sample",
    "count_images",
    "image_shape",
    "open_dataset",
    "read_image",
    "require_labeled",
    "require_unlabeled",
]

KINDS = ("shanghaitech", "qnrf", "jhu", "ucf_cc_50", "nwpu", "folder")
# the splits that together hold every image of a dataset of each kind
_ALL_SPLITS = {
    "shanghaitech": ("train", "test"),
    "qnrf": ("train", "test"),
    "jhu": ("train", "val", "test"),
    "ucf_cc_50": ("all",),
    "nwpu": ("all",),
    "folder": ("all",),
}
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
# image formats that are not read: reported, never dropped silently
_SKIPPED_IMAGE_EXTENSIONS = (
    ".gif", ".heic", ".heif", ".avif", ".jp2", ".j2k", ".jxl", ".svg", ".ico", ".psd",
    ".ppm", ".pgm", ".pbm", ".pnm", ".exr", ".hdr", ".dng", ".raw", ".cr2", ".nef", ".arw",
)  # fmt: skip

PathLike = Union[str, Path]
PointReader = Callable[[Path], np.ndarray]


class DatasetError(ValueError):
    """A dataset file is missing, unreadable or malformed; the message names the file."""


class DatasetWarning(UserWarning):
    """Files of a dataset folder were skipped (e.g. images in a format that is not read)."""


@dataclass(frozen=True, eq=False)
class Sample:
    """One image of a crowd dataset.

    Attributes:
        image ((H, W, 3) ndarray): uint8 RGB.
        points ((K, 2) ndarray or None): float64 head positions ``(x, y)``, 0-based pixel
            coordinates (module docstring); ``None`` when the dataset was opened with
            ``labels=False``.
        path (str): the image file.

    Equality is identity (``eq=False``): comparing arrays field by field has no single truth value.
    """

    image: np.ndarray
    points: np.ndarray | None
    path: str

    @property
    def count(self) -> int:
        """The number of annotated heads (raises ``ValueError`` for an unlabeled sample)."""
        if self.points is None:
            raise ValueError(f"sample {self.path} has no labels (opened with labels=False)")
        return int(self.points.shape[0])


class CrowdDataset(Sequence[Sample]):
    """A lazy sequence of :class:`Sample`; use :func:`open_dataset` to build one.

    Attributes:
        name (str): ``"<kind>/<split>"``, e.g. ``"shanghaitech/train"``.
        paths (list[Path]): the image files, in dataset order.
        annotation_paths (list[Path] or None): the annotation file of each image; ``None`` when
            unlabeled.

    Indexing with an int reads one image (and its annotation); indexing with a slice or
    :meth:`subset` returns another lazy ``CrowdDataset``.
    """

    def __init__(
        self,
        name: str,
        paths: Sequence[Path],
        annotation_paths: Sequence[Path] | None = None,
        point_reader: PointReader | None = None,
    ) -> None:
        self.name = name
        self.paths = list(paths)
        if (annotation_paths is None) != (point_reader is None):
            raise ValueError("annotation_paths and point_reader must be given together")
        if annotation_paths is not None and len(annotation_paths) != len(self.paths):
            raise ValueError(
                f"annotation_paths has {len(annotation_paths)} entries for {len(self.paths)} images"
            )
        self.annotation_paths = None if annotation_paths is None else list(annotation_paths)
        self._point_reader = point_reader

    @property
    def labels(self) -> bool:
        """Whether samples carry annotated points."""
        return self.annotation_paths is not None

    def __len__(self) -> int:
        return len(self.paths)

    @overload
    def __getitem__(self, index: int) -> Sample: ...

    @overload
    def __getitem__(self, index: slice) -> CrowdDataset: ...

    def __getitem__(self, index):
        if isinstance(index, slice):
            return self.subset(range(len(self))[index])
        if isinstance(index, (bool, np.bool_)) or not isinstance(index, (int, np.integer)):
            raise TypeError(f"index must be an int or a slice, got {type(index).__name__}")
        n = len(self)
        i = int(index) + n if index < 0 else int(index)
        if not 0 <= i < n:
            raise IndexError(f"index {int(index)} out of range for {n} images in {self.name}")
        image = read_image(self.paths[i])
        points = self.read_points(i) if self.labels else None
        return Sample(image=image, points=points, path=str(self.paths[i]))

    def read_points(self, index: int) -> np.ndarray:
        """The (K, 2) float64 head positions of image ``index``, without reading the image."""
        if self.annotation_paths is None or self._point_reader is None:
            raise ValueError(f"{self.name} was opened with labels=False; it has no points")
        return self._point_reader(self.annotation_paths[index])

    def image_shapes(self) -> list[tuple[int, int]]:
        """``(height, width)`` of every image, from the file headers (no pixel is decoded)."""
        return [image_shape(path) for path in self.paths]

    def counts(self) -> np.ndarray:
        """(N,) int64 head count of every image (reads the annotations only)."""
        return np.array([self.read_points(i).shape[0] for i in range(len(self))], dtype=np.int64)

    def subset(self, indices: Sequence[int]) -> CrowdDataset:
        """A lazy dataset of the images at ``indices`` (e.g. a held-out validation split)."""
        idx = [int(i) for i in indices]
        for i in idx:
            if not -len(self) <= i < len(self):
                raise IndexError(f"index {i} out of range for {len(self)} images in {self.name}")
        anns = None if self.annotation_paths is None else [self.annotation_paths[i] for i in idx]
        return CrowdDataset(self.name, [self.paths[i] for i in idx], anns, self._point_reader)

    def __repr__(self) -> str:
        return f"CrowdDataset(name={self.name!r}, images={len(self)}, labels={self.labels})"


# ----------------------------------------------------------------------------------------------
# file readers


def read_image(path: PathLike) -> np.ndarray:
    """Read an image file as (H, W, 3) uint8 RGB.

    Decoded with Pillow, which reports a truncated file (OpenCV 4 returns a partly gray image with
    only a printed warning). Gray, palette, RGBA and CMYK images are converted to RGB. The pixels
    are kept in their stored order: an EXIF orientation tag is not applied, matching annotations
    made on the stored pixels (MATLAB's ``imread`` ignores it too).

    Raises:
        DatasetError: the file is missing, unreadable, truncated or not a decodable 8-bit image.
    """
    from PIL import Image

    path = Path(path)
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode not in ("RGB", "L", "P", "RGBA", "LA", "PA", "CMYK", "YCbCr", "1"):
                raise DatasetError(f"unsupported image mode {im.mode!r} in {path} (expected 8-bit)")
            rgb = im if im.mode == "RGB" else im.convert("RGB")
            image = np.asarray(rgb, dtype=np.uint8).copy()
    except DatasetError:
        raise
    except Exception as exc:  # Pillow raises OSError, ValueError, DecompressionBombError, ...
        raise DatasetError(
            f"corrupt or unreadable image file {path}: {type(exc).__name__}: {exc}"
        ) from exc
    if image.ndim != 3 or image.shape[0] == 0 or image.shape[1] == 0:
        raise DatasetError(f"image file {path} decoded to shape {image.shape}")
    return image


def image_shape(path: PathLike) -> tuple[int, int]:
    """``(height, width)`` of an image file, read from its header.

    Raises:
        DatasetError: the file is missing or not an image Pillow can identify.
    """
    from PIL import Image

    try:
        with Image.open(path) as im:
            width, height = im.size
    except Exception as exc:  # Pillow raises OSError, UnidentifiedImageError, ...
        raise DatasetError(f"cannot read the size of image file {path}: {exc}") from exc
    return int(height), int(width)


def _as_points(raw: object, path: Path, what: str) -> np.ndarray:
    try:
        pts = np.asarray(raw, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise DatasetError(f"{what} in {path} is not numeric: {exc}") from exc
    if pts.size == 0:
        return np.zeros((0, 2), dtype=np.float64)
    if pts.ndim != 2 or pts.shape[1] < 2:
        raise DatasetError(f"{what} in {path} must be an (N, 2) array, got shape {pts.shape}")
    pts = np.ascontiguousarray(pts[:, :2])
    if not np.all(np.isfinite(pts)):
        raise DatasetError(f"{what} in {path} contains non-finite coordinates")
    return pts


def _load_mat(path: Path) -> dict:
    import scipy.io

    try:
        return scipy.io.loadmat(str(path))
    except NotImplementedError as exc:  # MATLAB v7.3 (HDF5) files
        raise DatasetError(
            f"cannot read {path}: MATLAB v7.3 files are not supported ({exc})"
        ) from exc
    except Exception as exc:  # scipy raises ValueError, TypeError, OSError, MatReadError, ...
        raise DatasetError(f"cannot read MATLAB file {path}: {type(exc).__name__}: {exc}") from exc


def _read_shanghaitech_mat(path: Path) -> np.ndarray:
    """``image_info{1}.location`` of a ShanghaiTech ``GT_IMG_n.mat``, 1-based → 0-based."""
    mat = _load_mat(path)
    if "image_info" not in mat:
        raise DatasetError(f"{path} has no variable 'image_info' (found {_mat_keys(mat)})")
    try:
        info = mat["image_info"][0, 0]  # the cell's content: a 1x1 struct
        record = info[0, 0]
        names = info.dtype.names or ()
        location = record["location"] if "location" in names else record[0]
    except (IndexError, TypeError, ValueError, KeyError) as exc:
        raise DatasetError(
            f"{path}: 'image_info' is not a cell holding a struct with a "
            f"'location' field ({type(exc).__name__}: {exc})"
        ) from exc
    return _as_points(location, path, "image_info{1}.location") - 1.0


def _read_ann_points_mat(path: Path) -> np.ndarray:
    """``annPoints`` of a UCF-QNRF / UCF-CC-50 ``*_ann.mat``, 1-based → 0-based."""
    mat = _load_mat(path)
    if "annPoints" not in mat:
        raise DatasetError(f"{path} has no variable 'annPoints' (found {_mat_keys(mat)})")
    return _as_points(mat["annPoints"], path, "annPoints") - 1.0


def _mat_keys(mat: dict) -> list[str]:
    return sorted(k for k in mat if not k.startswith("__"))


def _read_jhu_txt(path: Path) -> np.ndarray:
    """Rows ``x y w h occlusion blur`` of a JHU-CROWD++ ``gt/*.txt`` (0-based, kept)."""
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"cannot read annotation file {path}: {exc}") from exc
    rows = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        fields = line.replace(",", " ").split()
        if not fields:
            continue
        try:
            values = [float(v) for v in fields]
        except ValueError as exc:
            raise DatasetError(f"{path}, line {lineno}: not numbers: {line!r}") from exc
        if len(values) < 2:
            raise DatasetError(f"{path}, line {lineno}: expected 'x y w h o b', got {line!r}")
        rows.append(values[:2])
    return _as_points(rows, path, "head positions")


def _read_nwpu_json(path: Path) -> np.ndarray:
    """``"points": [[x, y], ...]`` of an NWPU-Crowd ``jsons/*.json`` (0-based, kept)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DatasetError(f"cannot read annotation file {path}: {exc}") from exc
    if not isinstance(data, dict) or "points" not in data:
        raise DatasetError(f"{path} has no 'points' list")
    return _as_points(data["points"], path, "'points'")


# ----------------------------------------------------------------------------------------------
# layouts


def _natural_key(path: Path) -> list:
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", str(path))]


def _list_images(folder: Path, *, recursive: bool = False) -> list[Path]:
    pattern = "**/*" if recursive else "*"
    files = [
        p for p in folder.glob(pattern) if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()
    ]
    _warn_skipped(folder, pattern)
    return sorted(files, key=lambda p: _natural_key(p.relative_to(folder)))


def _warn_skipped(folder: Path, pattern: str) -> None:
    skipped = sorted(p.name for p in folder.glob(pattern) if _is_skipped_image(p))
    if skipped:
        more = f" and {len(skipped) - 3} more" if len(skipped) > 3 else ""
        warnings.warn(
            f"{folder}: skipped {len(skipped)} image file(s) in formats that are not read "
            f"({', '.join(skipped[:3])}{more}); convert them to one of "
            f"{' '.join(IMAGE_EXTENSIONS)} to use them",
            DatasetWarning,
            stacklevel=4,
        )


def _is_skipped_image(path: Path) -> bool:
    return path.suffix.lower() in _SKIPPED_IMAGE_EXTENSIONS and path.is_file()


# annotation file name pattern and image stem of each labeled layout
_ANNOTATION_NAMES = {
    "shanghaitech": ("GT_*.mat", lambda name: name[len("GT_") : -len(".mat")]),
    "qnrf": ("*_ann.mat", lambda name: name[: -len("_ann.mat")]),
    "jhu": ("*.txt", lambda name: name[: -len(".txt")]),
    "ucf_cc_50": ("*_ann.mat", lambda name: name[: -len("_ann.mat")]),
    "nwpu": ("*.json", lambda name: name[: -len(".json")]),
}


def _check_annotations_have_images(kind: str, root: Path, images: list[Path], anns) -> None:
    """Every annotation file beside the used ones has a readable image (else the evaluation
    would silently use fewer images than were annotated)."""
    pattern, stem_of = _ANNOTATION_NAMES[kind]
    folders = {p.parent for p in images}
    if kind == "nwpu":
        folders |= {p for p in root.glob("images*") if p.is_dir()}
    stems = {p.stem for folder in folders for p in _list_quietly(folder)}
    for ann_dir in sorted({a.parent for a in anns}):
        for ann in sorted(ann_dir.glob(pattern), key=_natural_key):
            stem = stem_of(ann.name)
            if stem in stems:
                continue
            others = sorted(q.name for f in folders for q in f.glob(f"{stem}.*") if q.is_file())
            found = f"; found {', '.join(others)}, in a format that is not read" if others else ""
            raise DatasetError(
                f"ground-truth file {ann} has no image {stem} with one of the extensions "
                f"{' '.join(IMAGE_EXTENSIONS)}{found}"
            )


def _list_quietly(folder: Path) -> list[Path]:
    return [p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()]


def _first_dir(parent: Path, names: Sequence[str], what: str) -> Path:
    for name in names:
        if (parent / name).is_dir():
            return parent / name
    tried = ", ".join(str(parent / n) for n in names)
    raise DatasetError(f"no {what} folder: tried {tried}")


def _require_images(images: list[Path], folder: Path) -> list[Path]:
    if not images:
        raise DatasetError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) found in {folder}")
    return images


def _check_annotations(annotations: list[Path]) -> None:
    for ann in annotations:
        if not ann.is_file():
            raise DatasetError(f"missing annotation file {ann}")


def _check_split(kind: str, split: str, allowed: Sequence[str]) -> None:
    if split not in allowed:
        raise ValueError(f"split for kind={kind!r} must be one of {list(allowed)}, got {split!r}")


def _open_shanghaitech(root: Path, split: str, labels: bool):
    _check_split("shanghaitech", split, ("train", "test"))
    split_dir = _first_dir(root, (f"{split}_data", split), f"ShanghaiTech {split}")
    image_dir = _first_dir(split_dir, ("images",), "image")
    images = _require_images(_list_images(image_dir), image_dir)
    if not labels:
        return images, None, None
    gt_dir = _first_dir(split_dir, ("ground-truth", "ground_truth"), "ground-truth")
    return images, [gt_dir / f"GT_{p.stem}.mat" for p in images], _read_shanghaitech_mat


def _open_qnrf(root: Path, split: str, labels: bool):
    _check_split("qnrf", split, ("train", "test"))
    split_dir = _first_dir(root, (split.capitalize(), split), f"UCF-QNRF {split}")
    images = _require_images(_list_images(split_dir), split_dir)
    anns = [p.with_name(f"{p.stem}_ann.mat") for p in images] if labels else None
    return images, anns, _read_ann_points_mat if labels else None


def _open_jhu(root: Path, split: str, labels: bool):
    _check_split("jhu", split, ("train", "val", "test"))
    split_dir = _first_dir(root, (split,), f"JHU-CROWD++ {split}")
    image_dir = _first_dir(split_dir, ("images",), "image")
    images = _require_images(_list_images(image_dir), image_dir)
    if not labels:
        return images, None, None
    gt_dir = _first_dir(split_dir, ("gt",), "gt")
    return images, [gt_dir / f"{p.stem}.txt" for p in images], _read_jhu_txt


def _ucf_cc_50_test_indices(n: int, fold: int, num_folds: int) -> np.ndarray:
    return np.array_split(np.arange(n), num_folds)[fold]


def _open_ucf_cc_50(root: Path, split: str, labels: bool, fold: int | None, num_folds: int):
    _check_split("ucf_cc_50", split, ("train", "test", "all"))
    images = [p for p in _list_images(root) if p.stem.isdigit()]
    images = _require_images(sorted(images, key=lambda p: int(p.stem)), root)
    if split != "all":
        if fold is None:
            raise ValueError(
                f"kind='ucf_cc_50' with split={split!r} needs fold (0..{num_folds - 1})"
            )
        if len(images) < num_folds:
            raise DatasetError(f"{root} has {len(images)} images, fewer than num_folds={num_folds}")
        test = set(_ucf_cc_50_test_indices(len(images), fold, num_folds).tolist())
        keep = [i for i in range(len(images)) if (i in test) == (split == "test")]
        images = [images[i] for i in keep]
    anns = [p.with_name(f"{p.stem}_ann.mat") for p in images] if labels else None
    return images, anns, _read_ann_points_mat if labels else None


def _open_nwpu(root: Path, split: str, labels: bool):
    _check_split("nwpu", split, ("train", "val", "test", "all"))
    folders = [root / "images"] if (root / "images").is_dir() else []
    folders += sorted(p for p in root.glob("images_part*") if p.is_dir())
    if not folders:
        raise DatasetError(f"no image folder: tried {root / 'images'} and {root / 'images_part*'}")
    images = [p for folder in folders for p in _list_images(folder)]
    images = _require_images(sorted(images, key=lambda p: _natural_key(Path(p.name))), root)
    if split != "all":
        list_file = root / f"{split}.txt"
        if not list_file.is_file():
            raise DatasetError(f"missing split list {list_file} (use split='all' for every image)")
        try:
            lines = list_file.read_text().splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise DatasetError(f"cannot read split list {list_file}: {exc}") from exc
        by_stem = {p.stem: p for p in images}
        wanted = [line.split()[0] for line in lines if line.strip()]
        missing = [s for s in wanted if s not in by_stem]
        if missing:
            raise DatasetError(
                f"{list_file} lists {len(missing)} image(s) not found under "
                f"{folders[0]} (first: {missing[0]!r})"
            )
        images = [by_stem[s] for s in wanted]
    if not labels:
        return images, None, None
    json_dir = _first_dir(root, ("jsons",), "jsons")
    return images, [json_dir / f"{p.stem}.json" for p in images], _read_nwpu_json


def open_dataset(
    root: PathLike,
    *,
    kind: str = "shanghaitech",
    split: str = "train",
    labels: bool = True,
    fold: int | None = None,
    num_folds: int = 5,
) -> CrowdDataset:
    """Open a crowd-counting dataset stored in its public layout (module docstring).

    Args:
        root (str or Path): the folder the dataset archive unpacks to (e.g. ``part_A_final``,
            ``UCF-QNRF_ECCV18``, ``jhu_crowd_v2.0``, ``UCF_CC_50``, ``NWPU-Crowd``).
        kind (str): ``"shanghaitech" | "qnrf" | "jhu" | "ucf_cc_50" | "nwpu" | "folder"``.
        split (str): ``"train" | "test"`` (ShanghaiTech, UCF-QNRF, UCF-CC-50 with ``fold``),
            ``"train" | "val" | "test"`` (JHU-CROWD++, NWPU-Crowd), ``"all"`` (UCF-CC-50,
            NWPU-Crowd: every image). For ``"folder"`` the whole folder is the set: ``"train"``
            or ``"all"``.
        labels (bool): read annotations. Complete self-supervision trains with ``labels=False``;
            ``kind="folder"`` requires it.
        fold (int or None): UCF-CC-50 cross-validation fold, ``0 <= fold < num_folds``; fold
            ``k`` tests on the ``k``-th block of images in numerical order (with 50 images and 5
            folds: images ``10k+1 … 10k+10``) and trains on the rest.
        num_folds (int): number of UCF-CC-50 folds.

    Returns:
        CrowdDataset: lazy; a missing annotation file is reported here, a corrupt file on access.

    Raises:
        ValueError: unknown ``kind``/``split``, bad ``fold``, ``labels=True`` with ``"folder"``.
        DatasetError: a missing folder, no images, a missing annotation, a malformed split list.

    Example:
        >>> from examples.css_ccnn.data import make_synthetic, open_dataset
        >>> import tempfile
        >>> root = make_synthetic(tempfile.mkdtemp(), num_train=2, num_test=1)
        >>> ds = open_dataset(root, kind="shanghaitech", split="train")
        >>> len(ds), ds[0].image.dtype, ds[0].points.shape[1]
        (2, dtype('uint8'), 2)
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {list(KINDS)}, got {kind!r}")
    if not isinstance(labels, (bool, np.bool_)):
        raise TypeError(f"labels must be a bool, got {type(labels).__name__}")
    if not isinstance(split, str):
        raise TypeError(f"split must be a str, got {type(split).__name__}")
    if kind == "ucf_cc_50":
        if (
            isinstance(num_folds, bool)
            or not isinstance(num_folds, (int, np.integer))
            or num_folds < 2
        ):
            raise ValueError(f"num_folds must be an int >= 2, got {num_folds!r}")
        if fold is not None and (
            isinstance(fold, bool)
            or not isinstance(fold, (int, np.integer))
            or not 0 <= fold < num_folds
        ):
            raise ValueError(f"fold must be an int in [0, {num_folds - 1}], got {fold!r}")
    elif fold is not None:
        raise ValueError(
            f"fold is only used by kind='ucf_cc_50', got fold={fold!r} for kind={kind!r}"
        )
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"dataset root {root} is not a folder")

    if kind == "folder":
        if labels:
            raise ValueError("kind='folder' has no annotations: open it with labels=False")
        _check_split("folder", split, ("train", "all"))
        images = _require_images(_list_images(root, recursive=True), root)
        return CrowdDataset(f"folder/{root.name}", images)
    if kind == "shanghaitech":
        images, anns, reader = _open_shanghaitech(root, split, labels)
    elif kind == "qnrf":
        images, anns, reader = _open_qnrf(root, split, labels)
    elif kind == "jhu":
        images, anns, reader = _open_jhu(root, split, labels)
    elif kind == "ucf_cc_50":
        images, anns, reader = _open_ucf_cc_50(root, split, labels, fold, num_folds)
    else:
        images, anns, reader = _open_nwpu(root, split, labels)
    if anns is not None:
        _check_annotations(anns)
        _check_annotations_have_images(kind, root, images, anns)
    name = f"{kind}/{split}" if fold is None else f"{kind}/{split}/fold{int(fold)}"
    return CrowdDataset(name, images, anns, reader)


# ----------------------------------------------------------------------------------------------
# the label-free guarantee


def require_unlabeled(dataset: object, what: str) -> CrowdDataset:
    """Refuse a dataset that carries labels: label-free training gets ``labels=False`` images.

    Args:
        dataset: what the caller received.
        what (str): the caller's name, for the message.

    Returns:
        CrowdDataset: ``dataset``, checked.

    Raises:
        TypeError: ``dataset`` is not a :class:`CrowdDataset`.
        ValueError: it was opened with ``labels=True``.
    """
    if not isinstance(dataset, CrowdDataset):
        raise TypeError(f"{what} expects a CrowdDataset, got {type(dataset).__name__}")
    if dataset.labels:
        raise ValueError(
            f"{what} is label-free: open the training images with open_dataset(..., labels=False) "
            "(got a dataset with labels=True)"
        )
    return dataset


def require_labeled(dataset: object, what: str) -> CrowdDataset:
    """Refuse a dataset without labels (the labeled baselines and evaluation need them).

    Raises:
        TypeError: ``dataset`` is not a :class:`CrowdDataset`.
        ValueError: it was opened with ``labels=False``.
    """
    if not isinstance(dataset, CrowdDataset):
        raise TypeError(f"{what} expects a CrowdDataset, got {type(dataset).__name__}")
    if not dataset.labels:
        raise ValueError(f"{what} needs labels: open the dataset with labels=True")
    return dataset


def count_images(root: PathLike, *, kind: str = "shanghaitech") -> int:
    """The number of images of a dataset, all splits together (reads no annotation).

    This is the paper's S (the size of the image collection; 482 for ShanghaiTech A: 300
    training + 182 test images). Splits that are not there are skipped (a folder of training
    images alone counts those).

    Example:
        >>> from examples.css_ccnn.data import make_synthetic
        >>> import tempfile
        >>> count_images(make_synthetic(tempfile.mkdtemp(), num_train=3, num_test=2))
        5
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {list(KINDS)}, got {kind!r}")
    total = 0
    for split in _ALL_SPLITS[kind]:
        try:
            total += len(open_dataset(root, kind=kind, split=split, labels=False))
        except DatasetError:  # this split is not there
            continue
    if total == 0:
        raise DatasetError(f"no images found under {root} (kind={kind!r})")
    return total
