"""Tests of the CSS-CCNN example's data side: readers, synthetic crowds, transforms, pseudo density.

Every dataset format is exercised on small files written here in exactly that format.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

cv2 = pytest.importorskip("cv2")
scipy_io = pytest.importorskip("scipy.io")

from examples.css_ccnn.data import (  # noqa: E402
    CrowdDataset,
    DatasetError,
    Sample,
    canny_pseudo_density,
    cell_counts,
    density_map,
    gaussian_kernel_1d,
    hflip,
    make_synthetic,
    open_dataset,
    resize_for_test,
    resized_shape,
    to_tensor,
)
from examples.css_ccnn.prepare import crop_points, random_offset  # noqa: E402

# ----------------------------------------------------------------------------------------------
# writers of the real formats


def _image(seed: int, h: int = 24, w: int = 32) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = np.zeros((h, w, 3), np.uint8)
    img[..., 0] = 200  # mostly red in RGB: checks the channel order after reading
    img[..., 1] = rng.integers(0, 60, (h, w))
    return img


def _write_image(path: Path, rgb: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))


def _write_shanghaitech_mat(path: Path, points_1based: np.ndarray) -> None:
    """As MATLAB saves ``image_info{1}.location`` / ``.number``: a 1×1 cell holding a 1×1 struct."""
    path.parent.mkdir(parents=True, exist_ok=True)
    info = np.zeros((1, 1), dtype=[("location", "O"), ("number", "O")])
    info[0, 0]["location"] = np.asarray(points_1based, np.float64)
    info[0, 0]["number"] = np.array([[float(len(points_1based))]])
    cell = np.empty((1, 1), dtype=object)
    cell[0, 0] = info
    scipy_io.savemat(str(path), {"image_info": cell})


def _write_ann_mat(path: Path, points_1based: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    scipy_io.savemat(str(path), {"annPoints": np.asarray(points_1based, np.float64)})


def _points(seed: int, k: int, h: int = 24, w: int = 32) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.stack([rng.uniform(1, w, k), rng.uniform(1, h, k)], axis=1)


def _make_shanghaitech(
    root: Path, gt_name: str = "ground-truth", n_train: int = 3, n_test: int = 2
):
    truth = {}
    for split, n in (("train", n_train), ("test", n_test)):
        for i in range(1, n + 1):
            pts = _points(100 * i + len(split), k=i + 2)
            _write_image(root / f"{split}_data" / "images" / f"IMG_{i}.jpg", _image(i))
            _write_shanghaitech_mat(root / f"{split}_data" / gt_name / f"GT_IMG_{i}.mat", pts)
            truth[(split, f"IMG_{i}.jpg")] = pts
    return truth


# ----------------------------------------------------------------------------------------------
# readers


def test_shanghaitech_test_writer_matches_the_real_nesting(tmp_path):
    pts = _points(0, 4)
    _write_shanghaitech_mat(tmp_path / "GT_IMG_1.mat", pts)
    mat = scipy_io.loadmat(str(tmp_path / "GT_IMG_1.mat"))
    np.testing.assert_array_equal(mat["image_info"][0, 0][0, 0][0], pts)  # the original's indexing
    assert mat["image_info"][0, 0][0, 0][1][0, 0] == 4
    np.testing.assert_array_equal(mat["image_info"][0, 0]["location"][0, 0], pts)


@pytest.mark.parametrize("gt_name", ["ground-truth", "ground_truth"])
def test_shanghaitech_reads_points_0_based_and_rgb(tmp_path, gt_name):
    truth = _make_shanghaitech(tmp_path, gt_name)
    for split, n in (("train", 3), ("test", 2)):
        ds = open_dataset(tmp_path, kind="shanghaitech", split=split)
        assert isinstance(ds, CrowdDataset) and len(ds) == n and ds.labels
        assert ds.name == f"shanghaitech/{split}"
        assert [p.name for p in ds.paths] == [f"IMG_{i}.jpg" for i in range(1, n + 1)]
        for i in range(n):
            sample = ds[i]
            assert isinstance(sample, Sample)
            assert sample.image.shape == (24, 32, 3) and sample.image.dtype == np.uint8
            assert sample.image[..., 0].mean() > 150 > sample.image[..., 2].mean()  # RGB order
            expected = truth[(split, Path(sample.path).name)] - 1.0  # 1-based -> 0-based
            np.testing.assert_allclose(sample.points, expected, rtol=0, atol=1e-12)
            assert sample.points.dtype == np.float64 and sample.count == len(expected)
        np.testing.assert_array_equal(
            ds.counts(), [len(truth[(split, f"IMG_{i}.jpg")]) for i in range(1, n + 1)]
        )


def test_shanghaitech_split_folder_without_data_suffix(tmp_path):
    pts = _points(5, 3)
    _write_image(tmp_path / "test" / "images" / "IMG_7.jpg", _image(7))
    _write_shanghaitech_mat(tmp_path / "test" / "ground_truth" / "GT_IMG_7.mat", pts)
    np.testing.assert_allclose(
        open_dataset(tmp_path, split="test")[0].points, pts - 1.0, atol=1e-12
    )
    with pytest.raises(DatasetError, match="train_data"):
        open_dataset(tmp_path, split="train")


def test_unlabeled_shanghaitech_needs_no_ground_truth(tmp_path):
    _write_image(tmp_path / "train_data" / "images" / "IMG_1.jpg", _image(1))
    ds = open_dataset(tmp_path, split="train", labels=False)
    sample = ds[0]
    assert sample.points is None and not ds.labels
    with pytest.raises(ValueError, match="no labels"):
        _ = sample.count
    with pytest.raises(ValueError, match="labels=False"):
        ds.read_points(0)
    with pytest.raises(DatasetError, match="ground-truth"):
        open_dataset(tmp_path, split="train", labels=True)


def test_natural_order_and_indexing(tmp_path):
    for i in (1, 2, 10):
        _write_image(tmp_path / "train_data" / "images" / f"IMG_{i}.jpg", _image(i))
        _write_shanghaitech_mat(
            tmp_path / "train_data" / "ground-truth" / f"GT_IMG_{i}.mat", _points(i, i)
        )
    ds = open_dataset(tmp_path)
    assert [p.name for p in ds.paths] == ["IMG_1.jpg", "IMG_2.jpg", "IMG_10.jpg"]
    assert ds[-1].points.shape == (10, 2)
    sub = ds[1:]
    assert isinstance(sub, CrowdDataset) and len(sub) == 2 and sub[0].points.shape == (2, 2)
    assert [p.name for p in ds.subset([2, 0]).paths] == ["IMG_10.jpg", "IMG_1.jpg"]
    with pytest.raises(IndexError):
        ds[3]
    with pytest.raises(TypeError):
        ds["0"]


@pytest.mark.parametrize("folders", [("Train", "Test"), ("train", "test")])
def test_qnrf(tmp_path, folders):
    truth = {}
    for folder in folders:
        for i in (1, 2):
            pts = _points(i + len(folder), 5 + i)
            _write_image(tmp_path / folder / f"img_000{i}.jpg", _image(i))
            _write_ann_mat(tmp_path / folder / f"img_000{i}_ann.mat", pts)
            truth[(folder.lower(), i)] = pts
    for split in ("train", "test"):
        ds = open_dataset(tmp_path, kind="qnrf", split=split)
        assert len(ds) == 2  # the _ann.mat files are not taken for images
        for i in (1, 2):
            np.testing.assert_allclose(ds[i - 1].points, truth[(split, i)] - 1.0, atol=1e-12)


def test_jhu(tmp_path):
    rows = np.array([[3.0, 4.0, 5, 6, 1, 0], [10.5, 20.25, 2, 2, 2, 1]])
    for split in ("train", "val", "test"):
        _write_image(tmp_path / split / "images" / "0001.jpg", _image(1))
        _write_image(tmp_path / split / "images" / "0002.jpg", _image(2))
        gt = tmp_path / split / "gt"
        gt.mkdir(parents=True)
        np.savetxt(gt / "0001.txt", rows, fmt="%g")
        (gt / "0002.txt").write_text("")  # an image without people
    ds = open_dataset(tmp_path, kind="jhu", split="val")
    np.testing.assert_array_equal(ds[0].points, rows[:, :2])  # 0-based, kept
    assert ds[1].points.shape == (0, 2)
    np.testing.assert_array_equal(ds.counts(), [2, 0])


def _make_ucf_cc_50(root: Path, n: int = 50) -> None:
    for i in range(1, n + 1):
        _write_image(root / f"{i}.jpg", _image(i, 8, 8))
        _write_ann_mat(root / f"{i}_ann.mat", np.full((i, 2), float(i)))


def test_ucf_cc_50_folds(tmp_path):
    _make_ucf_cc_50(tmp_path)
    everything = open_dataset(tmp_path, kind="ucf_cc_50", split="all")
    assert [int(p.stem) for p in everything.paths] == list(range(1, 51))  # numeric order
    seen = []
    for k in range(5):
        test = open_dataset(tmp_path, kind="ucf_cc_50", split="test", fold=k)
        train = open_dataset(tmp_path, kind="ucf_cc_50", split="train", fold=k)
        test_ids = [int(p.stem) for p in test.paths]
        assert test_ids == list(range(10 * k + 1, 10 * k + 11))
        assert sorted(test_ids + [int(p.stem) for p in train.paths]) == list(range(1, 51))
        assert test.name == f"ucf_cc_50/test/fold{k}"
        seen += test_ids
    assert sorted(seen) == list(range(1, 51))
    sample = open_dataset(tmp_path, kind="ucf_cc_50", split="test", fold=2)[0]  # image 21
    np.testing.assert_array_equal(sample.points, np.full((21, 2), 20.0))  # 1-based -> 0-based
    with pytest.raises(ValueError, match="fold"):
        open_dataset(tmp_path, kind="ucf_cc_50", split="train")
    with pytest.raises(ValueError, match="fold"):
        open_dataset(tmp_path, kind="ucf_cc_50", split="test", fold=5)
    with pytest.raises(ValueError, match="fold"):
        open_dataset(tmp_path, kind="shanghaitech", fold=0)


@pytest.mark.parametrize("image_folder", ["images", "images_part1"])
def test_nwpu(tmp_path, image_folder):
    for i in range(1, 5):
        _write_image(tmp_path / image_folder / f"{i:04d}.jpg", _image(i))
        pts = [[float(i), 2.5]] * i
        (tmp_path / "jsons").mkdir(exist_ok=True)
        (tmp_path / "jsons" / f"{i:04d}.json").write_text(
            json.dumps({"img_id": f"{i:04d}.jpg", "human_num": i, "points": pts})
        )
    (tmp_path / "train.txt").write_text("0001 1 2\n0003 0 1\n")
    (tmp_path / "val.txt").write_text("0002 1 0\n")
    train = open_dataset(tmp_path, kind="nwpu", split="train")
    assert [p.stem for p in train.paths] == ["0001", "0003"]
    np.testing.assert_array_equal(train[1].points, [[3.0, 2.5]] * 3)  # 0-based, kept
    assert [p.stem for p in open_dataset(tmp_path, kind="nwpu", split="val").paths] == ["0002"]
    assert len(open_dataset(tmp_path, kind="nwpu", split="all")) == 4
    with pytest.raises(DatasetError, match=r"test\.txt"):
        open_dataset(tmp_path, kind="nwpu", split="test")
    (tmp_path / "test.txt").write_text("0009\n")
    with pytest.raises(DatasetError, match="0009"):
        open_dataset(tmp_path, kind="nwpu", split="test", labels=False)


def test_folder(tmp_path):
    _write_image(tmp_path / "b" / "x.png", _image(1))
    _write_image(tmp_path / "a.JPG", _image(2))
    _write_image(tmp_path / "b" / "c" / "y.bmp", _image(3))
    _write_image(tmp_path / "z.jpeg", _image(4))
    (tmp_path / "notes.txt").write_text("not an image")
    ds = open_dataset(tmp_path, kind="folder", labels=False)
    assert [p.relative_to(tmp_path).as_posix() for p in ds.paths] == [
        "a.JPG",
        "b/c/y.bmp",
        "b/x.png",
        "z.jpeg",
    ]
    assert all(ds[i].points is None and ds[i].image.shape == (24, 32, 3) for i in range(4))
    with pytest.raises(ValueError, match="labels=False"):
        open_dataset(tmp_path, kind="folder")  # labels=True by default
    with pytest.raises(ValueError, match="split"):
        open_dataset(tmp_path, kind="folder", labels=False, split="test")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="no images"):
        open_dataset(tmp_path / "empty", kind="folder", labels=False)


# ----------------------------------------------------------------------------------------------
# errors name the file


def test_missing_annotation_is_reported_at_open(tmp_path):
    _make_shanghaitech(tmp_path)
    (tmp_path / "train_data" / "ground-truth" / "GT_IMG_2.mat").unlink()
    with pytest.raises(DatasetError, match=r"GT_IMG_2\.mat"):
        open_dataset(tmp_path)


def test_corrupt_image(tmp_path):
    _make_shanghaitech(tmp_path)
    (tmp_path / "train_data" / "images" / "IMG_2.jpg").write_bytes(b"\xff\xd8 this is not a jpeg")
    ds = open_dataset(tmp_path)
    ds[0]
    with pytest.raises(DatasetError, match=r"IMG_2\.jpg"):
        ds[1]
    (tmp_path / "train_data" / "images" / "IMG_3.jpg").write_bytes(b"")
    with pytest.raises(DatasetError, match=r"IMG_3\.jpg"):
        ds[2]
    good = (tmp_path / "test_data" / "images" / "IMG_1.jpg").read_bytes()
    (tmp_path / "test_data" / "images" / "IMG_1.jpg").write_bytes(
        good[: len(good) - 40]
    )  # truncated
    with pytest.raises(DatasetError, match=r"IMG_1\.jpg.*truncated"):
        open_dataset(tmp_path, split="test")[0]
    ds_test = open_dataset(tmp_path, split="test", labels=False)
    (tmp_path / "test_data" / "images" / "IMG_2.jpg").unlink()  # listed, then deleted
    with pytest.raises(DatasetError, match=r"IMG_2\.jpg"):
        ds_test[1]


def test_unreadable_annotations(tmp_path):
    _make_shanghaitech(tmp_path)
    gt = tmp_path / "train_data" / "ground-truth"
    (gt / "GT_IMG_1.mat").write_bytes(b"garbage, not a MATLAB file")
    scipy_io.savemat(str(gt / "GT_IMG_2.mat"), {"something_else": np.zeros(3)})
    ds = open_dataset(tmp_path)
    with pytest.raises(DatasetError, match=r"GT_IMG_1\.mat"):
        ds[0]
    with pytest.raises(DatasetError, match=r"GT_IMG_2\.mat.*image_info"):
        ds.read_points(1)

    _write_image(tmp_path / "q" / "Train" / "img_0001.jpg", _image(1))
    scipy_io.savemat(
        str(tmp_path / "q" / "Train" / "img_0001_ann.mat"), {"annPoints": np.zeros((3, 3, 3))}
    )
    with pytest.raises(DatasetError, match=r"img_0001_ann\.mat"):
        open_dataset(tmp_path / "q", kind="qnrf")[0]

    _write_image(tmp_path / "j" / "train" / "images" / "1.jpg", _image(1))
    (tmp_path / "j" / "train" / "gt").mkdir(parents=True)
    (tmp_path / "j" / "train" / "gt" / "1.txt").write_text("1 2 3 4 0 0\nx y w h\n")
    with pytest.raises(DatasetError, match=r"1\.txt, line 2"):
        open_dataset(tmp_path / "j", kind="jhu")[0]

    _write_image(tmp_path / "n" / "images" / "0001.jpg", _image(1))
    (tmp_path / "n" / "jsons").mkdir()
    (tmp_path / "n" / "jsons" / "0001.json").write_text("{not json")
    with pytest.raises(DatasetError, match=r"0001\.json"):
        open_dataset(tmp_path / "n", kind="nwpu", split="all")[0]
    (tmp_path / "n" / "jsons" / "0001.json").write_text(
        json.dumps({"points": [[1.0, float("nan")]]})
    )
    with pytest.raises(DatasetError, match="non-finite"):
        open_dataset(tmp_path / "n", kind="nwpu", split="all")[0]


def test_bad_arguments(tmp_path):
    _make_shanghaitech(tmp_path)
    with pytest.raises(ValueError, match="kind"):
        open_dataset(tmp_path, kind="mall")
    with pytest.raises(ValueError, match="split"):
        open_dataset(tmp_path, split="val")
    with pytest.raises(DatasetError, match="not a folder"):
        open_dataset(tmp_path / "nope")
    with pytest.raises(DatasetError, match="Train"):
        open_dataset(tmp_path, kind="qnrf")
    with pytest.raises(TypeError, match="labels"):
        open_dataset(tmp_path, labels="yes")
    assert issubclass(DatasetError, ValueError)


# ----------------------------------------------------------------------------------------------
# synthetic crowds


@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory):
    return make_synthetic(tmp_path_factory.mktemp("synth"), num_train=16, num_test=4, seed=3)


def test_synthetic_layout_loads_and_counts_match(synthetic_root):
    meta = json.loads((synthetic_root / "synthetic.json").read_text())
    assert meta["parameters"]["seed"] == 3 and meta["parameters"]["image_size"] == [256, 256]
    for split, n in (("train", 16), ("test", 4)):
        ds = open_dataset(synthetic_root, kind="shanghaitech", split=split)
        assert len(ds) == n
        counts = ds.counts()
        assert counts.tolist() == [meta["counts"][split][p.name] for p in ds.paths]
        assert all(20 <= c <= 400 for c in counts)
        for i in (0, n - 1):
            s = ds[i]
            assert s.image.shape == (256, 256, 3)
            assert np.all((s.points >= 0) & (s.points <= 255))
    train_counts = list(meta["counts"]["train"].values())
    assert meta["cf_max"] == max(train_counts)
    assert max(train_counts) / min(train_counts) > 3  # counts vary over the range
    assert not list(synthetic_root.rglob(".*tmp*"))  # no temporary files left behind


def test_synthetic_is_deterministic(tmp_path, synthetic_root):
    kwargs = dict(num_train=2, num_test=1, image_size=(64, 96), count_range=(5, 60), seed=7)
    a, b = make_synthetic(tmp_path / "a", **kwargs), make_synthetic(tmp_path / "b", **kwargs)
    c = make_synthetic(tmp_path / "c", **{**kwargs, "seed": 8})
    for rel in (
        "train_data/images/IMG_2.jpg",
        "train_data/ground-truth/GT_IMG_2.mat",
        "test_data/images/IMG_1.jpg",
    ):
        assert (a / rel).read_bytes() == (b / rel).read_bytes()
    assert (a / "train_data/images/IMG_1.jpg").read_bytes() != (
        c / "train_data/images/IMG_1.jpg"
    ).read_bytes()
    # test images do not depend on num_train
    d = make_synthetic(tmp_path / "d", **{**kwargs, "num_train": 3})
    assert (a / "test_data/images/IMG_1.jpg").read_bytes() == (
        d / "test_data/images/IMG_1.jpg"
    ).read_bytes()
    assert open_dataset(a, split="test")[0].image.shape == (64, 96, 3)


def test_synthetic_reuse_and_overwrite(tmp_path):
    kwargs = dict(num_train=2, num_test=1, image_size=48, count_range=(3, 9))
    root = make_synthetic(tmp_path, **kwargs)
    stamp = (root / "synthetic.json").stat().st_mtime_ns
    assert make_synthetic(tmp_path, **kwargs) == root
    assert (root / "synthetic.json").stat().st_mtime_ns == stamp  # reused, not rewritten
    with pytest.raises(FileExistsError, match="overwrite"):
        make_synthetic(tmp_path, **{**kwargs, "seed": 1})
    make_synthetic(tmp_path, **{**kwargs, "seed": 1, "num_train": 1}, overwrite=True)
    assert not (root / "train_data/images/IMG_2.jpg").exists()
    assert json.loads((root / "synthetic.json").read_text())["parameters"]["seed"] == 1
    other = tmp_path / "real"
    (other / "train_data").mkdir(parents=True)
    with pytest.raises(FileExistsError):
        make_synthetic(other, **kwargs)
    with pytest.raises(ValueError, match="count_range"):
        make_synthetic(tmp_path / "x", count_range=(10, 5))


def test_synthetic_cell_counts_are_long_tailed(synthetic_root):
    """Paper Fig. 2: most cells empty or sparse, a few very dense (32×32-pixel cells here)."""
    ds = open_dataset(synthetic_root)
    cells = []
    for i in range(len(ds)):
        dens = density_map(ds.read_points(i), (256, 256), sigma=0.0)  # 32×32 map of 8×8 pixels
        cells.append(cell_counts(torch.from_numpy(dens)[None, None].double(), 4).numpy().ravel())
    cells = np.concatenate(cells)
    assert np.isclose(cells.sum(), ds.counts().sum())
    assert np.mean(cells == 0) > 0.3
    assert np.mean(cells <= 2) > 0.5
    assert cells.max() >= 15 * max(np.median(cells), 1.0)
    top = np.sort(cells)[::-1]
    assert top[: len(top) // 10].sum() > 0.4 * top.sum()  # the densest 10 % hold > 40 % of people


# ----------------------------------------------------------------------------------------------
# density maps and cells


def _density_reference(points, shape_hw, ds, sigma):
    """Float64 brute force: add each kernel on a padded canvas, then fold the padding back."""
    h, w = shape_hw[0] // ds, shape_hw[1] // ds
    k1 = gaussian_kernel_1d(sigma)
    r = len(k1) // 2
    k2 = np.outer(k1, k1)
    pad = np.zeros((h + 2 * r, w + 2 * r))
    for x, y in points:
        c = min(max(int(np.floor(x + 0.5)) // ds, 0), w - 1)
        rr = min(max(int(np.floor(y + 0.5)) // ds, 0), h - 1)
        pad[rr : rr + 2 * r + 1, c : c + 2 * r + 1] += k2
    for i in range(r):  # fold rows: image row -1-i -> i, row h+i -> h-1-i
        pad[r + i] += pad[r - 1 - i]
        pad[h + r - 1 - i] += pad[h + r + i]
    out = pad[r : h + r]
    for i in range(r):  # then columns
        out[:, r + i] += out[:, r - 1 - i]
        out[:, w + r - 1 - i] += out[:, w + r + i]
    return out[:, r : w + r]


@settings(max_examples=40, deadline=None)
@given(
    h=st.integers(8, 80),
    w=st.integers(8, 80),
    xs=st.lists(st.tuples(st.floats(-3, 85), st.floats(-3, 85)), min_size=0, max_size=30),
    sigma=st.sampled_from([0.0, 1.0, 1.5]),
)
def test_density_map_preserves_count_and_matches_reference(h, w, xs, sigma):
    points = np.array(xs, dtype=np.float64).reshape(-1, 2)
    dens = density_map(points, (h, w), sigma=sigma)
    assert dens.shape == (h // 8, w // 8) and dens.dtype == np.float32
    assert abs(float(dens.sum(dtype=np.float64)) - len(points)) < 1e-4 * max(1, len(points))
    if (h // 8) >= 2 and (w // 8) >= 2:  # the reference folds one kernel radius (r=1)
        np.testing.assert_allclose(dens, _density_reference(points, (h, w), 8, sigma), atol=1e-5)


def test_density_map_values():
    k = gaussian_kernel_1d(1.0)
    assert k.shape == (3,) and np.isclose(k.sum(), 1.0) and np.isclose(k[0] / k[1], np.exp(-0.5))
    assert gaussian_kernel_1d(2.0).shape == (7,)  # the original's int(3σ) rule, made odd
    interior = density_map(np.array([[100.0, 60.0]]), (128, 256))  # cell (7, 12)
    np.testing.assert_allclose(interior[6:9, 11:14], np.outer(k, k), rtol=1e-6)
    outside = interior.copy()
    outside[6:9, 11:14] = 0
    assert np.all(outside == 0)
    corner = density_map(np.array([[0.0, 0.0]]), (64, 64))
    np.testing.assert_allclose(
        corner[:2, :2], np.outer([k[0] + k[1], k[2]], [k[0] + k[1], k[2]]), rtol=1e-6
    )
    # the last pixel of a side that is not a multiple of 8, and a point off the image, still count
    edge = density_map(np.array([[70.0, 70.0], [-40.0, 10.0]]), (71, 71))
    assert np.isclose(edge.sum(), 2.0)
    with pytest.raises(ValueError, match="points"):
        density_map(np.zeros((3, 3)), (64, 64))
    with pytest.raises(ValueError, match="finite"):
        density_map(np.array([[np.nan, 1.0]]), (64, 64))
    with pytest.raises(ValueError, match="downscale"):
        density_map(np.zeros((0, 2)), (4, 64))


def test_cell_counts():
    torch.manual_seed(0)
    dens = torch.rand(3, 1, 28, 30, dtype=torch.float64, requires_grad=True)
    cells = cell_counts(dens, 8)
    assert cells.shape == (3, 9)
    ref = dens.detach()[:, 0, :24, :24].reshape(3, 3, 8, 3, 8).sum(dim=(2, 4)).reshape(3, 9)
    torch.testing.assert_close(cells.detach(), ref)
    cells.sum().backward()
    grad = dens.grad[:, 0]
    assert (
        torch.all(grad[:, :24, :24] == 1)
        and torch.all(grad[:, 24:, :] == 0)
        and torch.all(grad[:, :, 24:] == 0)
    )
    with pytest.raises(ValueError, match="B, 1, h, w"):
        cell_counts(torch.zeros(3, 28, 28), 8)
    with pytest.raises(ValueError, match="cell"):
        cell_counts(torch.zeros(1, 1, 6, 28), 8)
    with pytest.raises(TypeError):
        cell_counts(np.zeros((1, 1, 28, 28)), 8)


# ----------------------------------------------------------------------------------------------
# geometry


@settings(max_examples=50, deadline=None)
@given(h=st.integers(16, 4000), w=st.integers(16, 4000))
def test_resized_shape_constraints(h, w):
    nh, nw = resized_shape(h, w)
    assert nh % 8 == 0 and nw % 8 == 0
    assert min(nh, nw) >= 224 and max(nh, nw) <= 1024
    if max(h, w) / min(h, w) <= 1024 / 224 * 0.95:  # aspect kept up to rounding to 8
        assert abs(nw / nh - w / h) <= (w / h) * (16 / min(nh, nw))
    if 224 <= min(h, w) and max(h, w) <= 1024 and h % 8 == 0 and w % 8 == 0:
        assert (nh, nw) == (h, w)


def test_resized_shape_examples():
    assert resized_shape(768, 1024) == (768, 1024)
    assert resized_shape(100, 300) == (224, 672)
    assert resized_shape(2000, 1000) == (1024, 512)
    assert resized_shape(1500, 100) == (1024, 224)  # extreme aspect: short side clamped
    assert resized_shape(300, 301) == (304, 304)  # rounded up to multiples of 8
    with pytest.raises(ValueError, match="multiple"):
        resized_shape(300, 300, min_side=220)


def test_resize_moves_points_with_the_pixels():
    h, w = 100, 150
    ramp_x = np.tile(np.arange(w, dtype=np.float32), (h, 1))
    ramp_y = np.tile(np.arange(h, dtype=np.float32)[:, None], (1, w))
    image = np.stack([ramp_x, ramp_y, np.zeros_like(ramp_x)], axis=-1)
    points = np.array([[20.0, 30.0], [77.0, 51.0], [120.0, 80.0]])
    out, moved = resize_for_test(image, points)
    assert out.shape == (224, 336, 3) and out.dtype == np.float32
    # bilinear interpolation of a ramp returns the source coordinate: the moved point sits on it
    for (x, y), (mx, my) in zip(points, moved):
        assert np.isclose(mx, (x + 0.5) * 336 / 150 - 0.5) and np.isclose(
            my, (y + 0.5) * 224 / 100 - 0.5
        )
        col, row = round(mx), round(my)
        assert abs(out[row, col, 0] - (x + (col - mx) * 150 / 336)) < 1e-3
        assert abs(out[row, col, 1] - (y + (row - my) * 100 / 224)) < 1e-3
    same, pts = resize_for_test(np.zeros((256, 256, 3), np.uint8), None)
    assert same.shape == (256, 256, 3) and pts is None


def _marked_image(points, h, w):
    """An image whose only bright pixels are the points' pixels."""
    img = np.zeros((h, w), np.uint8)
    img[np.floor(points[:, 1] + 0.5).astype(int), np.floor(points[:, 0] + 0.5).astype(int)] = 255
    return img


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    h=st.integers(40, 120),
    w=st.integers(40, 120),
    k=st.integers(0, 25),
)
def test_crop_and_flip_keep_points_on_their_pixels(seed, h, w, k):
    rng = np.random.default_rng(seed)
    points = np.stack([rng.integers(0, w, k), rng.integers(0, h, k)], axis=1).astype(np.float64)
    points += rng.uniform(-0.49, 0.49, points.shape)
    image = _marked_image(points, h, w)

    flipped, fpts = hflip(image, points)
    np.testing.assert_array_equal(flipped, image[:, ::-1])
    np.testing.assert_array_equal(_marked_image(fpts, h, w), flipped)
    back, bpts = hflip(flipped, fpts)
    np.testing.assert_array_equal(back, image)
    np.testing.assert_allclose(bpts, points, atol=1e-12)

    top, left = random_offset(h, w, 32, rng)
    cropped = image[top : top + 32, left : left + 32]
    cpts = crop_points(points, top, left, 32)
    np.testing.assert_array_equal(_marked_image(cpts, 32, 32), cropped)  # same pixels, none lost
    assert len(np.unique(np.floor(cpts + 0.5), axis=0)) == int((cropped > 0).sum())


def test_random_offset_and_crop_points_details():
    rng = np.random.default_rng(1)
    assert random_offset(64, 80, 16, rng) == random_offset(64, 80, 16, np.random.default_rng(1))
    corners = {random_offset(64, 80, 16, np.random.default_rng(s)) for s in range(40)}
    assert all(top % 8 == 0 and left % 8 == 0 for top, left in corners)
    assert all(top + 16 <= 64 and left + 16 <= 80 for top, left in corners)
    assert len(corners) > 5 and max(t for t, _ in corners) == 48  # the last aligned row occurs
    points = np.array([[5.0, 5.0], [70.0, 60.0], [63.6, 56.0], [71.4, 56.0]])
    # the pixel of (63.6, 56) is column 64: kept; the pixel of (71.4, 56) is column 71: kept
    kept = crop_points(points, 56, 64, 8)
    np.testing.assert_allclose(kept, [[6.0, 4.0], [-0.4, 0.0], [7.4, 0.0]])
    assert crop_points(None, 0, 0, 8).shape == (0, 2)
    assert crop_points(np.array([[71.6, 56.0]]), 56, 64, 8).shape == (0, 2)  # pixel 72: outside
    with pytest.raises(ValueError, match="exceeds"):
        random_offset(64, 80, 100, rng)


def test_to_tensor_copies():
    image = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    keep = image.copy()
    t = to_tensor(image)
    assert t.shape == (3, 5, 7) and t.dtype == torch.float32
    torch.testing.assert_close(t, torch.from_numpy(keep).permute(2, 0, 1).float())
    t -= 100.0  # the caller's array is never shared
    np.testing.assert_array_equal(image, keep)
    f = image.astype(np.float32)
    tf = to_tensor(f)
    tf += 1
    assert np.all(f == keep)
    assert to_tensor(np.stack([image, image])).shape == (2, 3, 5, 7)
    with pytest.raises(ValueError, match="H, W, 3"):
        to_tensor(np.zeros((3, 5, 7)))


# ----------------------------------------------------------------------------------------------
# pseudo density


def _checker(color, size=64, period=3):
    yy, xx = np.mgrid[:size, :size]
    img = np.zeros((size, size, 3), np.uint8)
    img[(yy // period + xx // period) % 2 == 0] = color
    return img


def test_pseudo_density_shape_range_and_batch_max(synthetic_root):
    ds = open_dataset(synthetic_root, labels=False)
    crops = np.stack([ds[i].image[:224, :224] for i in range(4)])
    dens = canny_pseudo_density(crops)
    assert dens.shape == (4, 28, 28) and dens.dtype == np.float32
    assert dens.min() >= 0 and np.isclose(dens.max(), 1.0)
    alone = canny_pseudo_density(crops[2:3])
    peak = canny_pseudo_density(crops)[2].max()
    np.testing.assert_allclose(dens[2], alone[0] * peak, atol=1e-6)  # divided by the batch max
    flat = canny_pseudo_density(np.full((2, 64, 64, 3), 120, np.uint8))
    assert flat.shape == (2, 8, 8) and np.all(flat == 0)  # no edges: zeros, not NaN
    floats = canny_pseudo_density(np.minimum(crops + 0.7, 255))  # truncated like astype(uint8)
    np.testing.assert_array_equal(floats, dens)


def test_pseudo_density_applies_bgr2gray_to_rgb_deliberately():
    # gray weights (0.114, 0.587, 0.299) hit (R, G, B): pure blue steps by 76 gray levels (edges
    # for Canny 225/250), pure red by 29 (no edge) -- the reverse of a correct RGB2GRAY
    blue = canny_pseudo_density(_checker((0, 0, 255))[None])
    red = canny_pseudo_density(_checker((255, 0, 0))[None])
    assert blue.max() == 1.0 and np.all(red == 0)
    gray_rgb = cv2.cvtColor(_checker((255, 0, 0)), cv2.COLOR_RGB2GRAY)
    assert cv2.Canny(gray_rgb, 225, 250).max() == 255  # a correct conversion would see the red one


def test_pseudo_density_resize_modes_and_errors():
    square = np.zeros((1, 64, 64, 3), np.uint8)
    square[0, 16:48, 16:48] = 255  # thin edges on rows/columns 16 and 47
    assert np.all(canny_pseudo_density(square) == 0)  # bilinear decimation misses them (original)
    area = canny_pseudo_density(square, interpolation="area")
    assert area.max() == 1.0
    assert not np.array_equal(
        canny_pseudo_density(square, interpolation="area", exact_uint8=False), area
    )
    with pytest.raises(ValueError, match="B, H, W, 3"):
        canny_pseudo_density(square[0])
    with pytest.raises(TypeError):
        canny_pseudo_density(list(square))
    with pytest.raises(ValueError, match="0, 255"):
        canny_pseudo_density(np.full((1, 16, 16, 3), 300.0))
    with pytest.raises(ValueError, match="interpolation"):
        canny_pseudo_density(square, interpolation="cubic")
