"""CSS-CCNN example: network shapes, rotations, normalisation, freezing, config, checkpoints."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from examples.css_ccnn.checkpoint import (
    EarlyStopping,
    atomic_save,
    capture_rng,
    load_checkpoint,
    restore_rng,
)
from examples.css_ccnn.config import (
    Config,
    apply_overrides,
    config_from_dict,
    config_to_dict,
    make_config,
    save_config,
)
from examples.css_ccnn.model import CSSCCNN, rotate_batch


@pytest.mark.parametrize("rotations", [2, 4, 8])
@pytest.mark.parametrize("width", [0.125, 0.25])
def test_shapes(rotations, width):
    torch.manual_seed(0)
    net = CSSCCNN(width=width, rotations=rotations).eval()
    x = torch.rand(2, 3, 64, 96) * 255
    assert net(x).shape == (2, 1, 8, 12)
    crops = torch.rand(3, 3, 64, 64) * 255
    labels = torch.arange(3) % rotations
    rotated = rotate_batch(crops, labels, num_classes=rotations)
    assert rotated.shape == (3, 3, 32, 32)
    assert net.rotation_logits(rotated).shape == (3, rotations)


def test_paper_width_channels():
    net = CSSCCNN(width=1.0)
    assert net.fen.channels == (64, 128, 256)
    assert net.density_head.conv4_1.in_channels == 384
    convs = [m for m in net.fen.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 7 and all(c.bias is None and c.kernel_size == (3, 3) for c in convs)
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in net.fen.modules()) == 7
    assert net.rotation_head.fc.out_features == 4


def test_input_not_modified_and_density_nonnegative():
    net = CSSCCNN(width=0.125).eval()
    x = torch.rand(1, 3, 32, 32) * 255
    before = x.clone()
    out = net(x)
    assert torch.equal(x, before)
    assert (out >= 0).all()


def test_bad_inputs():
    net = CSSCCNN(width=0.125)
    with pytest.raises(ValueError, match="multiples of 8"):
        net(torch.zeros(1, 3, 30, 32))
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        net(torch.zeros(3, 32, 32))
    with pytest.raises(ValueError, match="rotations"):
        CSSCCNN(rotations=3)


def test_rotation_exact_for_right_angles():
    crop = torch.arange(16.0).view(1, 1, 4, 4)
    r = rotate_batch(crop.expand(4, 1, 4, 4), torch.arange(4), num_classes=4)
    # centre 2x2 of each rotated crop equals the rotated centre
    centre = crop[0, :, 1:3, 1:3]
    for k in range(4):
        assert torch.equal(r[k], torch.rot90(centre, k, dims=(1, 2)))


def test_rotation_45_consistent_with_90():
    """Two 45° steps (K=8, class 2) must equal one 90° step (K=4, class 1)."""
    torch.manual_seed(0)
    crop = torch.rand(1, 3, 32, 32)
    r8 = rotate_batch(crop, torch.tensor([2]), num_classes=8)
    r4 = rotate_batch(crop, torch.tensor([1]), num_classes=4)
    assert torch.equal(r8, r4)
    odd = rotate_batch(crop, torch.tensor([1]), num_classes=8)
    assert odd.shape == (1, 3, 16, 16) and not torch.allclose(odd, r8)


def test_freeze_fen_keeps_bn_in_eval():
    net = CSSCCNN(width=0.125)
    net.freeze_fen()
    net.train()
    assert not any(p.requires_grad for p in net.fen.parameters())
    assert all(not m.training for m in net.fen.modules())
    assert net.density_head.training
    stats = [b.clone() for b in net.fen.buffers()]
    net(torch.rand(2, 3, 32, 32) * 255)
    assert all(torch.equal(a, b) for a, b in zip(stats, net.fen.buffers()))


# ----------------------------------------------------------------------------- config


def test_presets_and_overrides():
    cfg = make_config("paper")
    assert (cfg.stage1.lr, cfg.stage2.lr, cfg.stage1.batch_size, cfg.stage2.batch_size) == (
        1e-3,
        1e-5,
        4,
        32,
    )
    assert (cfg.stage1.epochs, cfg.stage2.epochs, cfg.stage2.patience) == (1000, 600, 300)
    assert (cfg.stage2.eps, cfg.stage2.scale, cfg.stage1.momentum, cfg.stage1.weight_decay) == (
        0.1,
        0.01,
        0.9,
        1e-4,
    )
    cfg = make_config("cpu", overrides=["stage2.lr=0.5", "prior.cf_max=3000", "model.rotations=8"])
    assert cfg.stage2.lr == 0.5 and cfg.prior.cf_max == 3000.0 and cfg.model.rotations == 8
    with pytest.raises(ValueError, match="unknown configuration key"):
        make_config("cpu", overrides=["stage2.lrr=1"])
    with pytest.raises(TypeError, match=r"stage2\.epochs"):
        make_config("cpu", overrides=["stage2.epochs=abc"])
    with pytest.raises(ValueError, match="rotations"):
        make_config("cpu", overrides=["model.rotations=3"])
    with pytest.raises(ValueError, match="preset"):
        make_config("gpu")


def test_config_file_roundtrip(tmp_path):
    cfg = apply_overrides(make_config("tiny"), ["stage1.epochs=7"])
    path = save_config(cfg, tmp_path / "c.json")
    loaded = config_from_dict(json.loads(path.read_text()))
    assert config_to_dict(loaded) == config_to_dict(cfg)
    toml = tmp_path / "c.toml"
    toml.write_text("[stage2]\nepochs = 9\nvariant_unused = 1\n")
    with pytest.raises(ValueError, match="variant_unused"):
        make_config("tiny", file=toml)
    toml.write_text("seed = 5\n[stage2]\nepochs = 9\n")
    cfg = make_config("tiny", file=toml, overrides=["stage2.epochs=4"])
    assert cfg.seed == 5 and cfg.stage2.epochs == 4
    assert isinstance(Config(), Config)


# ----------------------------------------------------------------------------- checkpoints


def test_atomic_save_replaces_and_leaves_no_temp(tmp_path):
    path = tmp_path / "sub" / "ck.pt"
    atomic_save({"a": 1}, path)
    atomic_save({"a": 2}, path)
    assert load_checkpoint(path)["a"] == 2
    assert os.listdir(path.parent) == ["ck.pt"]


def test_atomic_save_failure_keeps_old_file(tmp_path, monkeypatch):
    path = tmp_path / "ck.pt"
    atomic_save({"a": 1}, path)

    class Boom:
        def __reduce__(self):
            raise RuntimeError("boom")

    with pytest.raises(TypeError, match="Boom"):  # refused before anything is written
        atomic_save({"a": Boom()}, path)
    assert load_checkpoint(path)["a"] == 1
    assert os.listdir(tmp_path) == ["ck.pt"]

    def half_then_fail(obj, handle):
        handle.write(b"PK\x03\x04 half a checkpoint")
        raise RuntimeError("disk full")

    monkeypatch.setattr(torch, "save", half_then_fail)
    with pytest.raises(RuntimeError, match="disk full"):
        atomic_save({"a": 2}, path)
    monkeypatch.undo()
    assert load_checkpoint(path)["a"] == 1
    assert os.listdir(tmp_path) == ["ck.pt"]


def test_rng_roundtrip():
    gen = torch.Generator().manual_seed(3)
    rng = np.random.default_rng(3)
    state = capture_rng(generator=gen, np_rng=rng)
    a = (torch.rand(3, generator=gen), rng.random(3), torch.rand(2))
    restore_rng(state, generator=gen, np_rng=rng)
    b = (torch.rand(3, generator=gen), rng.random(3), torch.rand(2))
    assert torch.equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and torch.equal(a[2], b[2])


def test_early_stopping_moving_average():
    stop = EarlyStopping(mode="min", patience=2, window=2)
    assert stop.step(5.0, 0)
    assert stop.step(3.0, 1)  # avg 4
    assert not stop.step(6.0, 2)  # avg 4.5
    assert not stop.should_stop
    assert not stop.step(6.0, 3)  # avg 6
    assert stop.should_stop and stop.best_epoch == 1 and stop.best == 4.0
    assert EarlyStopping.from_state(stop.state_dict()) == stop
