"""CSS-CCNN example: checkpoints nobody can turn against the user, errors that name the file and
the cause, resumption without silent no-ops, and the command line's one-line messages."""

from __future__ import annotations

import ast
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from examples.css_ccnn import checkpoint as checkpoint_module
from examples.css_ccnn.checkpoint import (
    CheckpointError,
    atomic_save,
    atomic_write_text,
    content_digest,
    load_checkpoint,
    load_weights,
)
from examples.css_ccnn.cli import main
from examples.css_ccnn.config import make_config
from examples.css_ccnn.data.datasets import DatasetError, DatasetWarning, open_dataset
from examples.css_ccnn.data.synthetic import make_synthetic
from examples.css_ccnn.model import CSSCCNN, load_stage1_fen

pytest.importorskip("cv2")
REPO = Path(__file__).resolve().parents[2]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return make_synthetic(
        tmp_path_factory.mktemp("ck") / "data",
        num_train=6,
        num_test=3,
        image_size=(96, 96),
        count_range=(5, 60),
    )


def _common(out, data_root):
    return [
        *("--preset", "tiny", "--out", str(out), "--data-root", str(data_root)),
        *("--device", "cpu", "--threads", "1", "--no-progress"),
    ]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, data_root):
    """A tiny run with stage 1 and CSS-CCNN (read-only for the tests: copy before changing)."""
    out = tmp_path_factory.mktemp("ck") / "run"
    assert main(["stage1", *_common(out, data_root)]) == 0
    assert main(["stage2", *_common(out, data_root)]) == 0
    return out


def _copy_run(run_dir, tmp_path):
    shutil.copytree(run_dir, tmp_path / "run")
    return tmp_path / "run"


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("error: "), err
    return err[0]


def test_doctests():
    import doctest

    assert doctest.testmod(checkpoint_module).failed == 0


# ----------------------------------------------------------------------------- safe loading


def test_every_torch_load_is_weights_only():
    """Structural: every ``torch.load`` call in the code base passes ``weights_only=True``."""
    calls = 0
    for folder in ("sinkmatch", "examples", "benchmarks", "tests"):
        for path in (REPO / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                func = getattr(node, "func", None)
                if not (isinstance(node, ast.Call) and isinstance(func, ast.Attribute)):
                    continue
                if func.attr == "load" and getattr(func.value, "id", None) == "torch":
                    calls += 1
                    flags = {k.arg: getattr(k.value, "value", None) for k in node.keywords}
                    assert flags.get("weights_only") is True, f"{path}:{node.lineno}"
    assert calls >= 1


def test_resume_state_is_plain_data(run_dir):
    """last.pt (optimizer, every random state, history) opens with weights_only=True."""
    last = run_dir / "seed0" / "stage1" / "last.pt"
    state = torch.load(last, weights_only=True)
    assert {"rng", "optimizer", "stopper", "history"} <= set(state)
    assert isinstance(state["rng"]["numpy_global"]["key"], torch.Tensor)
    assert state["checksum"]["sha256"] == content_digest(state)


class _Evil:
    """Unpickling this runs a shell command (the attack of the issue)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_checkpoint_is_refused(run_dir, data_root, tmp_path, capsys):
    run = _copy_run(run_dir, tmp_path)
    marker = tmp_path / "PWNED"
    best = run / "seed0" / "stage2_plain" / "best.pt"
    ckpt = load_checkpoint(best)
    ckpt["meta"] = {**ckpt["meta"], "payload": _Evil(marker)}
    torch.save(ckpt, best)
    with pytest.raises(CheckpointError, match=r"not plain data") as err:
        load_checkpoint(best)
    assert str(best) in str(err.value) and "system" in str(err.value)
    assert main(["evaluate", *_common(run, data_root)]) == 2
    line = _one_error_line(capsys)
    assert str(best) in line and "arbitrary code" in line
    assert not marker.exists()


# ----------------------------------------------------------------------------- damaged files


def _damage(kind: str, good: Path, bad: Path) -> str:
    data = good.read_bytes()
    if kind == "empty":
        bad.write_bytes(b"")
        return "empty"
    if kind == "truncated":
        bad.write_bytes(data[: len(data) // 2])
        return "truncated"
    if kind == "random":
        bad.write_bytes(np.random.default_rng(0).bytes(5000))
        return "not a PyTorch checkpoint"
    if kind == "no-model":
        atomic_save({"weights": {"w": torch.ones(2)}, "epoch": 3}, bad)
        return "no 'model' entry"
    if kind == "flipped":  # 64 bytes in the middle of the file
        flipped = bytearray(data)
        mid = len(data) // 2
        flipped[mid : mid + 64] = bytes(b ^ 0xFF for b in flipped[mid : mid + 64])
        bad.write_bytes(bytes(flipped))
        return "corrupt"
    if kind == "edited":  # valid file, tensors changed after the checksum was computed
        ckpt = torch.load(good, weights_only=True)
        ckpt["model"]["density_head.conv5_1.bias"] += 100.0
        torch.save(ckpt, bad)
        return "does not match the checksum"
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["empty", "truncated", "random", "no-model", "flipped", "edited"])
def test_damaged_checkpoints_name_file_and_cause(kind, run_dir, tmp_path):
    from examples.css_ccnn.counter import load_counter

    bad = tmp_path / "best.pt"
    cause = _damage(kind, run_dir / "seed0" / "stage2_plain" / "best.pt", bad)
    for load in (load_counter, lambda p: load_weights(CSSCCNN(width=0.125), p)):
        with pytest.raises(CheckpointError) as err:
            load(bad)
        assert str(bad) in str(err.value) and cause in str(err.value), str(err.value)


def test_checkpoint_without_checksum_loads_with_a_warning(tmp_path):
    """Files written before checkpoints carried a checksum: loaded, with a warning, after the
    zip archive's own CRCs are checked."""
    old = tmp_path / "old.pt"
    torch.save({"model": {"w": torch.arange(5000.0)}}, old)
    with pytest.warns(UserWarning, match="no checksum"):
        assert torch.equal(load_checkpoint(old)["model"]["w"], torch.arange(5000.0))
    data = bytearray(old.read_bytes())
    start = data.index(torch.arange(5000.0)[100:102].numpy().tobytes())
    data[start : start + 8] = bytes(8)
    old.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="CRC mismatch"):
        load_checkpoint(old)


def test_evaluate_names_the_damaged_checkpoint(run_dir, data_root, tmp_path, capsys):
    run = _copy_run(run_dir, tmp_path)
    best = run / "seed0" / "stage2_plain" / "best.pt"
    _damage("flipped", best, best)
    assert main(["evaluate", *_common(run, data_root)]) == 2
    line = _one_error_line(capsys)
    assert str(best) in line and "corrupt" in line


def test_wrong_width_says_which_setting(run_dir, data_root, tmp_path, capsys):
    best = run_dir / "seed0" / "stage2_plain" / "best.pt"
    with pytest.raises(CheckpointError, match=r"model\.width=0\.125 \(preset 'tiny'\)") as err:
        load_weights(CSSCCNN(width=0.25), best)
    assert str(best) in str(err.value) and "--set model.width=0.125" in str(err.value)
    with pytest.raises(CheckpointError, match=r"model\.width=0\.125"):
        load_stage1_fen(CSSCCNN(width=0.5), run_dir / "seed0" / "stage1" / "best.pt")
    wide = [*_common(run_dir, data_root), "--set", "model.width=0.25"]
    assert main(["evaluate", *wide]) == 2
    assert "model.width=0.125" in _one_error_line(capsys)


# ----------------------------------------------------------------------------- resumption


def _snapshot(folder: Path) -> dict:
    return {
        str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns)
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_refused_resume_changes_nothing(data_root, tmp_path):
    from examples.css_ccnn.stage1 import train_stage1

    cfg = make_config("tiny", overrides=[f"data.root={json.dumps(str(data_root))}"])
    ds = open_dataset(data_root, labels=False)
    train_stage1(ds, cfg, tmp_path, stop_after=1, progress=False)
    before = _snapshot(tmp_path)
    cfg.stage2.lr = 0.01
    with pytest.raises(ValueError, match=r"stage2\.lr: 0\.001 -> 0\.01"):
        train_stage1(ds, cfg, tmp_path, progress=False)
    assert _snapshot(tmp_path) == before


def test_finished_run_is_extended_or_says_complete(data_root, tmp_path, capsys):
    common = [*_common(tmp_path, data_root), "--set", "stage1.patience=10"]  # no early stop
    config = tmp_path / "seed0" / "stage1" / "config.json"
    assert main(["stage1", *common]) == 0  # 2 epochs (tiny)
    capsys.readouterr()
    assert main(["stage1", *common, "--set", "stage1.epochs=3"]) == 0
    assert "extending the finished run" in capsys.readouterr().err
    last = load_checkpoint(tmp_path / "seed0" / "stage1" / "last.pt")
    assert last["epoch"] == 3 and len(last["history"]) == 3
    assert json.loads(config.read_text())["stage1"]["epochs"] == 3
    recorded = config.read_bytes()
    for epochs in ("3", "1"):
        assert main(["stage1", *common, "--set", f"stage1.epochs={epochs}"]) == 0
        err = capsys.readouterr().err
        assert "is complete (3 epochs trained" in err and "nothing trained" in err
        assert config.read_bytes() == recorded  # still the settings it was trained with


def test_zero_epochs_is_an_error(data_root, tmp_path, capsys):
    for key in ("stage1.epochs=0", "stage2.patience=0"):
        command = "stage1" if key.startswith("stage1") else "stage2"
        args = [command, *_common(tmp_path / "run", data_root), "--set", key]
        if command == "stage2":
            args.append("--no-stage1")
        assert main(args) == 2
        assert "must be >= 1, got 0" in _one_error_line(capsys)
    assert not (tmp_path / "run").exists()


def test_stale_temporaries_removed_at_start(data_root, tmp_path):
    folder = tmp_path / "seed0" / "stage1"
    folder.mkdir(parents=True)
    stale = [folder / ".last.pt.k3j_9x2a.tmp", folder / ".best.pt.abcdefgh.tmp"]
    for p in stale:
        p.write_bytes(b"\0" * 1000)
    keep = [folder / "notes.txt", folder / ".hidden.tmp"]
    for p in keep:
        p.write_text("mine")
    assert main(["stage1", *_common(tmp_path, data_root)]) == 0
    assert not any(p.exists() for p in stale) and all(p.exists() for p in keep)
    assert not list(folder.glob(".*.*.tmp"))


def test_ctrl_c_prints_where_to_resume(data_root, tmp_path, capsys, monkeypatch):
    from examples.css_ccnn import stage1

    original, calls = stage1._train_epoch, []

    def interrupted_second_epoch(run):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return original(run)

    monkeypatch.setattr(stage1, "_train_epoch", interrupted_second_epoch)
    common = _common(tmp_path, data_root)
    assert main(["stage1", *common]) == 130
    err = capsys.readouterr().err.strip().splitlines()
    last = tmp_path / "seed0" / "stage1" / "last.pt"
    assert len(err) == 1 and str(last) in err[0] and "1 of 2 epochs" in err[0], err
    assert "resume" in err[0]
    monkeypatch.setattr(stage1, "_train_epoch", original)
    assert main(["stage1", *common]) == 0  # resumes from the saved epoch
    assert load_checkpoint(last)["epoch"] == 2


# ----------------------------------------------------------------------------- data, files, CLI


def test_skipped_image_formats_are_read_or_reported(data_root, tmp_path):
    from PIL import Image

    root = tmp_path / "data"
    shutil.copytree(data_root, root)
    images = root / "test_data" / "images"
    for name, ext in (("IMG_2", ".tif"), ("IMG_3", ".webp")):
        Image.open(images / f"{name}.jpg").save(images / f"{name}{ext}", lossless=True)
        (images / f"{name}.jpg").unlink()
    test = open_dataset(root, split="test", labels=True)
    assert [Path(p).name for p in test.paths] == ["IMG_1.jpg", "IMG_2.tif", "IMG_3.webp"]
    assert test[2].image.shape == (96, 96, 3)
    # an image in a format that is not read: a warning, and its ground truth is an error
    Image.open(images / "IMG_1.jpg").save(images / "IMG_4.gif")
    shutil.copy(
        root / "test_data" / "ground-truth" / "GT_IMG_1.mat",
        root / "test_data" / "ground-truth" / "GT_IMG_4.mat",
    )
    with pytest.warns(DatasetWarning, match=r"IMG_4\.gif"):
        assert len(open_dataset(root, split="test", labels=False)) == 3
    with pytest.warns(DatasetWarning), pytest.raises(DatasetError, match=r"GT_IMG_4\.mat") as err:
        open_dataset(root, split="test", labels=True)
    assert "IMG_4.gif" in str(err.value)
    (images / "IMG_4.gif").unlink()
    with pytest.raises(DatasetError, match=r"GT_IMG_4\.mat has no image IMG_4"):
        open_dataset(root, split="test", labels=True)


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_outputs_respect_the_umask(umask, data_root, tmp_path):
    old = os.umask(umask)
    try:
        atomic_write_text(tmp_path / "results.md", "| a |\n")
        atomic_save({"a": 1}, tmp_path / "x.pt")
        assert main(["stage1", *_common(tmp_path / "run", data_root)]) == 0
    finally:
        os.umask(old)
    run = tmp_path / "run" / "seed0" / "stage1"
    files = [
        tmp_path / "results.md",
        tmp_path / "x.pt",
        *(run / n for n in ("best.pt", "last.pt", "config.json", "history.json")),
    ]
    for path in files:
        assert path.stat().st_mode & 0o777 == 0o666 & ~umask, path


def test_cli_user_errors_are_one_line(data_root, tmp_path, capsys):
    common = _common(tmp_path / "run", data_root)
    cases = [
        (["stage1", *common, "--set", "stage1.epochs=abc"], "stage1.epochs expects an integer"),
        (["stage1", *common, "--set", "stage1.nope=1"], "unknown configuration key"),
        (["stage1", *_common(tmp_path, tmp_path / "no-data")], "no-data"),
        (["evaluate", *common], "no seed<k> folders"),
        (["export", str(tmp_path / "missing.pt")], "missing.pt not found"),
    ]
    for args, message in cases:
        assert main(args) == 2, args
        assert message in _one_error_line(capsys)


def test_make_synthetic_message_names_the_flag(tmp_path, capsys):
    root = tmp_path / "data"
    (root / "train_data" / "images").mkdir(parents=True)  # what a killed make-synthetic leaves
    args = ["make-synthetic", "--preset", "tiny", "--data-root", str(root), "--out", str(tmp_path)]
    assert main(args) == 2
    line = _one_error_line(capsys)
    assert "--overwrite" in line and "overwrite=True" not in line
    assert main([*args, "--overwrite"]) == 0
    assert (root / "synthetic.json").is_file()
