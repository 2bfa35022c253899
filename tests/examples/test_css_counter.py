"""CSS-CCNN example: the counter people use (Python API, tiling, ``predict``, ONNX/TorchScript)."""

from __future__ import annotations

import csv
import doctest
import json

import numpy as np
import pytest
import torch

from examples.css_ccnn import counter as counter_module
from examples.css_ccnn import predict as predict_module
from examples.css_ccnn.checkpoint import CheckpointError
from examples.css_ccnn.config import make_config
from examples.css_ccnn.counter import (
    RECEPTIVE_FIELD,
    TILE_MARGIN,
    Count,
    Counter,
    density_tiled,
    load_counter,
    receptive_margin,
)
from examples.css_ccnn.data.datasets import open_dataset, read_image
from examples.css_ccnn.data.synthetic import make_synthetic
from examples.css_ccnn.model import CSSCCNN

cv2 = pytest.importorskip("cv2")


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny trained run: (data root, stage-1 best.pt, stage-2 best.pt)."""
    from examples.css_ccnn.stage1 import train_stage1
    from examples.css_ccnn.stage2 import train_stage2

    base = tmp_path_factory.mktemp("counter")
    root = make_synthetic(
        base / "data", num_train=6, num_test=3, image_size=(96, 96), count_range=(5, 60)
    )
    cfg = make_config("tiny", overrides=[f"data.root={json.dumps(str(root))}", 'device="cpu"'])
    ds = open_dataset(root, labels=False)
    s1 = train_stage1(ds, cfg, base / "run" / "stage1", progress=False)
    s2 = train_stage2(ds, cfg, base / "run" / "stage2", fen_checkpoint=s1.best_path, progress=False)
    return root, s1.best_path, s2.best_path


def _random_image(h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)


@pytest.mark.parametrize("module", [counter_module, predict_module])
def test_doctests(module):
    result = doctest.testmod(module)
    assert result.attempted >= 2 and result.failed == 0


# ----------------------------------------------------------------------------- receptive field


def test_receptive_field_by_nan_propagation():
    """A NaN at one input pixel reaches exactly the density pixels whose receptive field
    [8i - 34, 8i + 42) holds it: the margin the tiling relies on is the network's."""
    size, margin = receptive_margin()
    assert (size, margin) == (RECEPTIVE_FIELD, 34)
    assert TILE_MARGIN % 8 == 0 and TILE_MARGIN >= margin
    torch.manual_seed(0)
    net = CSSCCNN(width=0.125).eval()
    for y, x in [(100, 100), (101, 77), (96, 135)]:
        image = torch.full((1, 3, 256, 256), 100.0)
        image[0, :, y, x] = float("nan")
        with torch.no_grad():
            hit = torch.isnan(net(image))[0, 0]
        rows = torch.nonzero(hit.any(1)).flatten()
        cols = torch.nonzero(hit.any(0)).flatten()
        expect_rows = [i for i in range(32) if 8 * i - margin <= y < 8 * i - margin + size]
        expect_cols = [i for i in range(32) if 8 * i - margin <= x < 8 * i - margin + size]
        assert rows.tolist() == expect_rows and cols.tolist() == expect_cols


# ----------------------------------------------------------------------------- tiling


def _sharp(net):
    """Non-trivial BatchNorm statistics and a density head whose output depends strongly on
    the input (its N(0, 0.01) initialisation gives a nearly constant map), so that every pixel
    of the receptive field matters."""
    gen = torch.Generator().manual_seed(1)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 20)
            m.running_var.copy_(torch.rand(m.num_features, generator=gen) * 400 + 50)
    for m in net.density_head.modules():
        if isinstance(m, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(m.weight, generator=gen)
            m.bias.data.fill_(0.1)
    return net


def test_tiled_density_equals_untiled():
    torch.manual_seed(0)
    net = _sharp(CSSCCNN(width=0.125)).eval()
    x = torch.from_numpy(_random_image(400, 328)).permute(2, 0, 1)[None].float()
    seen = []
    hook = net.register_forward_pre_hook(lambda m, args: seen.append(tuple(args[0].shape[2:])))
    with torch.no_grad():
        full = net(x)
        seen.clear()
        tiled = density_tiled(net, x, tile=160)
        too_small = density_tiled(net, x, tile=160, margin=16)
    hook.remove()
    tiles = 5 * 5 + 4 * 3  # cores of 160 - 2 * 40 and 160 - 2 * 16 pixels over 400 x 328
    assert len(seen) == tiles and max(max(s) for s in seen) <= 160  # memory is bounded
    assert tiled.shape == full.shape
    assert float(full.std()) > 0.1 * float(full.mean())  # the map varies with the image
    torch.testing.assert_close(tiled, full, rtol=1e-5, atol=1e-5 * float(full.max()))
    assert float(tiled.sum()) == pytest.approx(float(full.sum()), rel=1e-5)
    # the margin matters: a margin below the receptive margin changes the map
    assert (too_small - full).abs().max() > 1e-2 * full.abs().max()


def test_counter_tiles_large_images(trained):
    _, _, best = trained
    image = _random_image(700, 520, seed=3)
    whole = load_counter(best, device="cpu", max_side=None, tile=1024)(image)
    tiled = load_counter(best, device="cpu", max_side=None, tile=256)(image)
    assert whole.input_size == tiled.input_size == (704, 520)
    assert tiled.count == pytest.approx(whole.count, rel=1e-5)
    np.testing.assert_allclose(tiled.density, whole.density, rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- Python API


def test_counter_accepts_every_image_type(trained):
    from PIL import Image

    _, _, best = trained
    counter = load_counter(best, device="cpu")
    assert isinstance(counter, Counter) and counter.info["stage"] == 2
    image = _random_image(90, 130, seed=1)
    ref = counter(image)
    assert isinstance(ref, Count) and ref.image_size == (90, 130)
    # tiny: max_side 128, so 130 -> 128 and 90 -> 89 -> 96 (a multiple of 8)
    assert ref.input_size == counter.input_size(90, 130) == (96, 128)
    assert ref.density.shape == (12, 16) and ref.density.dtype == np.float32
    assert ref.count == pytest.approx(float(ref.density.sum(dtype=np.float64)))
    chw = torch.from_numpy(image).permute(2, 0, 1)
    for other in (Image.fromarray(image), chw):  # the same uint8 pixels
        assert counter(other).count == pytest.approx(ref.count, rel=1e-6)
    # float pixels are resized without rounding to uint8: equal when no resizing is needed
    exact = _random_image(96, 128, seed=4)
    as_float = torch.from_numpy(exact).permute(2, 0, 1).float()
    assert counter(as_float).count == pytest.approx(counter(exact).count, rel=1e-6)
    assert counter(chw.float()).count == pytest.approx(ref.count, rel=1e-3)
    second = _random_image(90, 130, seed=2)
    for batch in (
        [image, second],
        np.stack([image, second]),
        torch.stack([chw, torch.from_numpy(second).permute(2, 0, 1)]),
    ):
        results = counter(batch)
        assert isinstance(results, list) and len(results) == 2
        assert results[0].count == pytest.approx(ref.count, rel=1e-5)
        assert results[1].count == pytest.approx(counter(second).count, rel=1e-5)


def test_counter_matches_evaluate(trained):
    """The counter resizes as evaluation does, so its counts are the evaluated ones."""
    from examples.css_ccnn.data.transforms import resize_for_test
    from examples.css_ccnn.evaluate import ModelPredictor
    from examples.css_ccnn.pipeline import load_model

    root, _, best = trained
    cfg = make_config("tiny", overrides=[f"data.root={json.dumps(str(root))}"])
    predictor = ModelPredictor(load_model(cfg, best), torch.device("cpu"))
    counter = load_counter(best, device="cpu")
    for sample in open_dataset(root, split="test", labels=False):
        resized, _ = resize_for_test(sample.image, min_side=64, max_side=128)
        expected = float(predictor(resized).sum())
        assert counter(sample.image).count == pytest.approx(expected, rel=1e-6)


def test_counter_refuses_bad_inputs(trained):
    _, stage1, best = trained
    counter = load_counter(best, device="cpu")
    with pytest.raises(TypeError, match="uint8"):
        counter(np.zeros((32, 32, 3), np.float64))
    with pytest.raises(ValueError, match="0-255"):
        counter(torch.rand(3, 32, 32))
    with pytest.raises(ValueError, match=r"\(3, H, W\)"):
        counter(torch.zeros(32, 32, 3))
    with pytest.raises(TypeError, match=r"PIL\.Image"):
        counter("image.jpg")
    with pytest.raises(CheckpointError, match="stage-1"):
        load_counter(stage1, device="cpu")
    with pytest.raises(ValueError, match="tile"):
        load_counter(best, device="cpu", tile=100)


# ----------------------------------------------------------------------------- predict


def _write_video(path, frames):
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10.0, (96, 64))
    assert writer.isOpened()
    for frame in frames:
        writer.write(np.ascontiguousarray(frame[:, :, ::-1]))
    writer.release()


def test_predict_images_folders_and_videos(trained, tmp_path, capsys):
    from PIL import Image

    from examples.css_ccnn.cli import main

    root, _, best = trained
    images = sorted((root / "test_data" / "images").glob("*.jpg"))
    folder = tmp_path / "in" / "nested"
    folder.mkdir(parents=True)
    Image.open(images[0]).save(folder / "a.tif")
    Image.open(images[1]).save(tmp_path / "in" / "b.png")
    (tmp_path / "in" / "notes.txt").write_text("not an image")
    frames = [_random_image(64, 96, seed=s) for s in range(7)]
    _write_video(tmp_path / "clip.mp4", frames)
    out = tmp_path / "out"
    args = ["predict", str(best), str(tmp_path / "in"), str(images[2]), str(tmp_path / "clip.mp4")]
    with pytest.warns(UserWarning, match="notes.txt"):
        rc = main(
            [*args, "--out", str(out), "--device", "cpu", "--every", "3", "--batch-size", "2"]
        )
    assert rc == 0
    captured = capsys.readouterr()
    assert "counted 3 images and 3 video frames" in captured.out
    assert "predict" in captured.err and "6/6" in captured.err  # the progress bar
    rows = list(csv.DictReader((out / "counts.csv").open()))
    assert [r["frame"] for r in rows] == ["", "", "", "0", "3", "6"]
    counter = load_counter(best, device="cpu")
    expected = [
        counter(read_image(p)).count for p in (tmp_path / "in" / "b.png", folder / "a.tif")
    ] + [counter(read_image(images[2])).count]
    capture = cv2.VideoCapture(str(tmp_path / "clip.mp4"))
    decoded = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        decoded.append(frame[:, :, ::-1])
    expected += [counter(decoded[i]).count for i in (0, 3, 6)]
    assert [float(r["count"]) for r in rows] == pytest.approx(expected, rel=1e-4, abs=1e-4)
    document = json.loads((out / "counts.json").read_text())
    assert document["totals"] == {"images": 3, "frames": 3, "count": pytest.approx(sum(expected))}
    assert document["counter"]["sha256"] and document["counter"]["every"] == 3
    for name in ("b.png", "nested__a.png", "IMG_3.png"):
        overlay = cv2.imread(str(out / "overlays" / name))
        assert overlay is not None and overlay.shape[:2] == (96, 96), name
    video = cv2.VideoCapture(str(out / "overlays" / "clip.mp4"))
    assert video.isOpened() and int(video.get(cv2.CAP_PROP_FRAME_COUNT)) == 3


def test_predict_bad_inputs_are_one_line_errors(trained, tmp_path, capsys):
    from examples.css_ccnn.cli import main

    _, _, best = trained
    (tmp_path / "x.docx").write_text("?")
    cases = [
        ([str(best), str(tmp_path / "missing.jpg")], "missing.jpg not found"),
        ([str(best), str(tmp_path / "x.docx")], "neither an image"),
        ([str(tmp_path / "nothing.pt"), str(tmp_path / "x.docx")], "nothing.pt not found"),
    ]
    for args, message in cases:
        assert main(["predict", *args, "--out", str(tmp_path / "o"), "--device", "cpu"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: ") and message in err[0]


# ----------------------------------------------------------------------------- export


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch.jit.load
def test_export_onnx_and_torchscript_match_pytorch(trained, tmp_path, capsys):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    onnx = pytest.importorskip("onnx")
    from examples.css_ccnn.cli import main

    _, _, best = trained
    assert main(["export", str(best), "--out", str(tmp_path), "--name", "counter"]) == 0
    assert "counter.onnx" in capsys.readouterr().out
    counter = load_counter(best, device="cpu")
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(
        str(tmp_path / "counter.onnx"), options, providers=["CPUExecutionProvider"]
    )
    meta = {p.key: json.loads(p.value) for p in onnx.load(tmp_path / "counter.onnx").metadata_props}
    assert meta["max_side"] == counter.max_side and meta["sha256"] == counter.info["sha256"]
    extra = {"counter.json": ""}
    scripted = torch.jit.load(str(tmp_path / "counter.torchscript.pt"), _extra_files=extra)
    assert json.loads(extra["counter.json"])["min_side"] == counter.min_side
    for shape in [(1, 96, 128), (2, 64, 72), (1, 200, 48)]:
        b, h, w = shape
        x = torch.from_numpy(np.stack([_random_image(h, w, seed=s) for s in range(b)]))
        x = x.permute(0, 3, 1, 2).float()
        with torch.no_grad():
            ref = counter.model(x)
            ts_density, ts_count = scripted(x)
        ref_count = ref.sum(dim=(1, 2, 3))
        density, count = session.run(None, {"images": x.numpy()})
        assert density.shape == tuple(ref.shape)
        np.testing.assert_allclose(count, ref_count.numpy(), rtol=1e-4)
        np.testing.assert_allclose(density, ref.numpy(), rtol=1e-4, atol=1e-6)
        assert torch.equal(ts_density, ref) and torch.equal(ts_count, ref_count)


def test_predict_ctrl_c_says_where_the_counts_are(trained, tmp_path, capsys, monkeypatch):
    from examples.css_ccnn.cli import main

    root, _, best = trained
    original, calls = Counter.count_many, []

    def interrupted_second_batch(self, images):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return original(self, images)

    monkeypatch.setattr(Counter, "count_many", interrupted_second_batch)
    images = root / "train_data" / "images"  # 6 images, batches of 4
    out = tmp_path / "out"
    args = ["predict", str(best), str(images), "--out", str(out), "--device", "cpu"]
    assert main([*args, "--no-progress"]) == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"4 counts so far are in {out / 'counts.csv'}" in err[0], err
    assert len((out / "counts.csv").read_text().splitlines()) == 1 + 4
