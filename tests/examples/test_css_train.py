"""CSS-CCNN example: training stages, label-free guarantee, frozen FEN, resume, prior, CLI."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from examples.css_ccnn.config import cell_size, make_config
from examples.css_ccnn.data.datasets import open_dataset
from examples.css_ccnn.data.synthetic import make_synthetic
from examples.css_ccnn.data.transforms import cell_counts

pytest.importorskip("cv2")
sinkmatch = pytest.importorskip("sinkmatch")


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("css") / "data"
    make_synthetic(root, num_train=6, num_test=3, image_size=(96, 96), count_range=(5, 60), seed=0)
    return root


@pytest.fixture()
def tiny_cfg(tiny_root):
    torch.set_num_threads(1)
    return make_config(
        "tiny", overrides=[f"data.root={json.dumps(str(tiny_root))}", 'device="cpu"']
    )


@pytest.fixture(scope="module")
def stage1_ckpt(tiny_root, tmp_path_factory):
    from examples.css_ccnn.stage1 import train_stage1

    cfg = make_config("tiny", overrides=[f"data.root={json.dumps(str(tiny_root))}", 'device="cpu"'])
    out = tmp_path_factory.mktemp("s1")
    res = train_stage1(open_dataset(tiny_root, labels=False), cfg, out, progress=False)
    assert res.best_path.is_file() and 0.0 <= res.best_accuracy <= 1.0
    assert (out / "config.json").is_file()
    return res.best_path


# ----------------------------------------------------------------------------- label-free


def test_training_refuses_labeled_data(tiny_cfg, tiny_root, tmp_path, stage1_ckpt):
    from examples.css_ccnn.stage1 import train_stage1
    from examples.css_ccnn.stage2 import train_stage2

    labeled = open_dataset(tiny_root, labels=True)
    with pytest.raises(ValueError, match="labels=False"):
        train_stage1(labeled, tiny_cfg, tmp_path / "a", progress=False)
    with pytest.raises(ValueError, match="labels=False"):
        train_stage2(labeled, tiny_cfg, tmp_path / "b", fen_checkpoint=stage1_ckpt, progress=False)


def test_stage2_never_reads_labels(tiny_cfg, tiny_root, tmp_path, stage1_ckpt, monkeypatch):
    """Structural: stage 2 runs with every annotation reader disabled (and only ever sees a
    labels=False dataset)."""
    from examples.css_ccnn.data import datasets
    from examples.css_ccnn.stage2 import train_stage2

    def boom(*args, **kwargs):
        raise AssertionError("labels were read during label-free training")

    monkeypatch.setattr(datasets.CrowdDataset, "read_points", boom)
    monkeypatch.setattr(datasets.CrowdDataset, "counts", boom)
    for name in dir(datasets):
        if name.startswith("_read_") and callable(getattr(datasets, name)):
            monkeypatch.setattr(datasets, name, boom)
    ds = open_dataset(tiny_root, labels=False)
    assert all(sample.points is None for sample in ds)
    res = train_stage2(
        ds, tiny_cfg, tmp_path / "s2", fen_checkpoint=stage1_ckpt, variant="plus", progress=False
    )
    assert res.best_path.is_file()


# ----------------------------------------------------------------------------- frozen FEN


def test_fen_frozen_during_stage2(tiny_cfg, tiny_root, tmp_path, stage1_ckpt):
    from examples.css_ccnn.checkpoint import load_checkpoint
    from examples.css_ccnn.stage2 import train_stage2

    tiny_cfg.stage2.cache_features = False  # the FEN really runs in every step
    tiny_cfg.stage2.epochs = 2
    tiny_cfg.stage2.patience = 5
    s1 = load_checkpoint(stage1_ckpt)["model"]
    train_stage2(
        open_dataset(tiny_root, labels=False),
        tiny_cfg,
        tmp_path,
        fen_checkpoint=stage1_ckpt,
        progress=False,
    )
    s2 = load_checkpoint(tmp_path / "last.pt")["model"]
    fen_keys = [k for k in s1 if k.startswith("fen.")]
    assert any("running_mean" in k for k in fen_keys) and any("weight" in k for k in fen_keys)
    for k in fen_keys:
        assert torch.equal(s1[k], s2[k]), k
    head = [k for k in s2 if k.startswith("density_head.")]
    init = load_checkpoint(tmp_path / "best.pt")["model"]  # head moved from its N(0, 0.01) init
    assert any(not torch.equal(s2[k], torch.zeros_like(s2[k])) for k in head) and init


# ----------------------------------------------------------------------------- cells and prior


def test_cell_pooling_through_model(tiny_cfg):
    from examples.css_ccnn.model import CSSCCNN

    net = CSSCCNN(width=0.125).eval()
    x = torch.rand(2, 3, 48, 48) * 255
    density = net(x)
    cells = cell_counts(density, cell_size(tiny_cfg))
    assert density.shape == (2, 1, 6, 6) and cells.shape == (2, 9)
    torch.testing.assert_close(cells.sum(1), density.sum((1, 2, 3)))
    cells.sum().backward()
    assert net.density_head.conv5_1.weight.grad is not None


def test_paper_cells_match_original():
    cfg = make_config("paper")
    assert cell_size(cfg) == 8  # 28x28 output of a 224 crop -> 3x3 cells, 4 rows/cols dropped
    assert cell_counts(torch.ones(1, 1, 28, 28), cell_size(cfg)).shape == (1, 9)


def test_prior_from_cf_max(tiny_cfg, tiny_root):
    from examples.css_ccnn.stage2 import build_prior, resolve_cf_max

    meta = json.loads((tiny_root / "synthetic.json").read_text())
    assert resolve_cf_max(tiny_cfg) == meta["cf_max"]
    tiny_cfg.prior.crops_per_image = 4.0  # given: build_prior does not measure it
    prior = build_prior(tiny_cfg, num_images=6)
    g = tiny_cfg.prior.grid
    c_max = meta["cf_max"] / (g * g * tiny_cfg.prior.crops_per_image)
    assert math.isclose(float(prior.cdf(c_max)), 1 - 1 / 6, rel_tol=1e-6)
    tiny_cfg.prior.cf_max = 3000.0
    legacy = make_config("paper", overrides=["prior.cf_max=3000", 'prior.mode="legacy"'])
    p = build_prior(legacy, num_images=482)
    assert p.lam == pytest.approx(0.028) and p.threshold == pytest.approx(1.21, abs=0.01)


def test_missing_cf_max_is_explained(tmp_path):
    from examples.css_ccnn.stage2 import resolve_cf_max

    cfg = make_config("paper", overrides=[f"data.root={json.dumps(str(tmp_path))}"])
    with pytest.raises(ValueError, match=r"prior\.cf_max"):
        resolve_cf_max(cfg)


# ----------------------------------------------------------------------------- resume


def _weights(path):
    from examples.css_ccnn.checkpoint import load_checkpoint

    return load_checkpoint(path)


@pytest.mark.parametrize("stage", ["stage1", "stage2"])
def test_resume_is_exact(stage, tiny_cfg, tiny_root, tmp_path, stage1_ckpt):
    from examples.css_ccnn.stage1 import train_stage1
    from examples.css_ccnn.stage2 import train_stage2

    tiny_cfg.stage1.epochs = tiny_cfg.stage2.epochs = 3
    tiny_cfg.stage1.patience = tiny_cfg.stage2.patience = 10
    ds = open_dataset(tiny_root, labels=False)

    def run(out, stop_after=None):
        if stage == "stage1":
            return train_stage1(ds, tiny_cfg, out, stop_after=stop_after, progress=False)
        return train_stage2(
            ds,
            tiny_cfg,
            out,
            fen_checkpoint=stage1_ckpt,
            variant="plus",
            stop_after=stop_after,
            progress=False,
        )

    full = run(tmp_path / "full")
    part = run(tmp_path / "part", stop_after=1)
    assert not part.fit.finished and part.fit.epochs_run == 1
    resumed = run(tmp_path / "part")
    assert resumed.fit.finished and resumed.fit.epochs_run == full.fit.epochs_run == 3
    a, b = _weights(tmp_path / "full" / "last.pt"), _weights(tmp_path / "part" / "last.pt")
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    assert [h["val"] for h in a["history"]] == [h["val"] for h in b["history"]]
    assert a["stopper"] == b["stopper"]
    # a finished run is not retrained
    again = run(tmp_path / "part")
    assert again.fit.epochs_run == 3 and len(again.fit.history) == 3


def test_resume_refuses_changed_config(tiny_cfg, tiny_root, tmp_path):
    from examples.css_ccnn.stage1 import train_stage1

    ds = open_dataset(tiny_root, labels=False)
    train_stage1(ds, tiny_cfg, tmp_path, stop_after=1, progress=False)
    tiny_cfg.stage1.lr = 0.5
    with pytest.raises(ValueError, match=r"stage1\.lr: 0\.001 -> 0\.5"):
        train_stage1(ds, tiny_cfg, tmp_path, progress=False)
    tiny_cfg.stage1.lr = 1e-3
    tiny_cfg.stage1.epochs = 3  # more epochs may be asked for when resuming
    assert train_stage1(ds, tiny_cfg, tmp_path, progress=False).fit.epochs_run == 3


# ----------------------------------------------------------------------------- evaluation


def test_metrics_and_game():
    from examples.css_ccnn.evaluate import game

    density = np.zeros((4, 4))
    density[0, 0] = 2.0  # top-left region
    points = np.array([[1.0, 1.0], [30.0, 30.0]])  # one top-left, one bottom-right (32x32 image)
    assert game(density, points, (32, 32), 0) == 0.0
    assert game(density, points, (32, 32), 1) == 2.0
    assert game(density, points, (32, 32), 2) == 2.0


def test_evaluate_and_table(tiny_cfg, tiny_root, tmp_path):
    from examples.css_ccnn.evaluate import MeanPredictor, PriorPredictor, ResultsTable, evaluate
    from examples.css_ccnn.stage2 import build_prior

    test = open_dataset(tiny_root, split="test", labels=True)
    with pytest.raises(ValueError, match="labels=True"):
        evaluate(MeanPredictor(1.0), open_dataset(tiny_root, split="test", labels=False))
    truth = test.counts().astype(float)
    res = evaluate(MeanPredictor(10.0), test, min_side=64, max_side=128, game_levels=2)
    assert res.metrics["mae"] == pytest.approx(np.abs(10.0 - truth).mean())
    assert res.metrics["rmse"] == pytest.approx(np.sqrt(((10.0 - truth) ** 2).mean()))
    assert res.metrics["nae"] == pytest.approx((np.abs(10.0 - truth) / truth).mean())
    assert res.metrics["game0"] == pytest.approx(res.metrics["mae"])
    assert res.metrics["game2"] >= res.metrics["game1"] - 1e-9
    tiny_cfg.prior.crops_per_image = 4.0
    prior = build_prior(tiny_cfg, num_images=6)
    r1 = evaluate(PriorPredictor(prior, cell=2, seed=0), test, min_side=64, max_side=128)
    r2 = evaluate(PriorPredictor(prior, cell=2, seed=0), test, min_side=64, max_side=128)
    assert r1.predicted == r2.predicted and all(p > 0 for p in r1.predicted)
    table = ResultsTable()
    for seed in range(3):
        table.add("A", {"mae": 1.0 + seed, "rmse": 2.0})
    paths = table.save(tmp_path)
    summary = json.loads(paths["json"].read_text())["summary"]
    assert summary["A"]["mae"]["mean"] == pytest.approx(2.0) and summary["A"]["mae"][
        "std"
    ] == pytest.approx(1.0)
    assert "2.0 ± 1.0" in paths["md"].read_text() and "MSE (=RMSE)" in paths["md"].read_text()
    assert paths["csv"].read_text().startswith("method,runs,mae_mean,mae_std")


# ----------------------------------------------------------------------------- CLI


def test_cli_help_lists_every_command(capsys):
    from examples.css_ccnn.cli import main

    with pytest.raises(SystemExit) as err:
        main(["--help"])
    assert err.value.code == 0
    text = capsys.readouterr().out
    for command in ("make-synthetic", "stage1", "stage2", "baselines", "evaluate", "demo"):
        assert command in text
    with pytest.raises(SystemExit):
        main(["stage2", "--help"])
    text = capsys.readouterr().out
    assert "--variant" in text and "--set" in text and "--device" in text


def test_cli_smoke_every_command(tmp_path, capsys):
    from examples.css_ccnn.cli import main

    common = [
        "--preset",
        "tiny",
        "--out",
        str(tmp_path / "run"),
        "--data-root",
        str(tmp_path / "data"),
        "--device",
        "cpu",
        "--threads",
        "1",
        "--no-progress",
    ]
    assert main(["make-synthetic", *common]) == 0
    assert main(["stage1", *common]) == 0
    assert main(["stage2", *common, "--variant", "plain"]) == 0
    assert main(["stage2", *common, "--variant", "plus", "--set", "stage2.epochs=1"]) == 0
    assert main(["baselines", *common]) == 0
    assert main(["evaluate", *common]) == 0
    out = capsys.readouterr().out
    for method in (
        "CSS-CCNN",
        "CSS-CCNN++",
        "CCNN Random",
        "CCNN Mean",
        "CCNN P_prior",
        "CCNN Fully Supervised",
        "CCNN Self-Supervised with Labels",
    ):
        assert f"| {method} |" in out
    run = tmp_path / "run"
    for name in (
        "results.json",
        "results.csv",
        "results.md",
        "seed0/stage1/config.json",
        "seed0/stage2_plus/config.json",
        "seed0/stage2_plus/best.pt",
    ):
        assert (run / name).is_file(), name
    cfg = json.loads((run / "seed0/stage2_plus/config.json").read_text())
    assert cfg["stage2"]["epochs"] == 1 and cfg["preset"] == "tiny"


def test_cli_demo_tiny(tmp_path, capsys):
    from examples.css_ccnn.cli import main

    assert (
        main(
            [
                "demo",
                "--preset",
                "tiny",
                "--out",
                str(tmp_path),
                "--seeds",
                "1",
                "--device",
                "cpu",
                "--threads",
                "1",
                "--no-progress",
            ]
        )
        == 0
    )
    summary = json.loads((tmp_path / "demo_summary.json").read_text())
    assert set(summary["claim"]) >= {"css_mae", "mean_mae", "prior_mae", "random_mae"}
    for fig in ("predictions.png", "curves.png", "histograms.png"):
        assert (tmp_path / "figures" / fig).stat().st_size > 1000
    assert "claim" in capsys.readouterr().out


# ----------------------------------------------------------------------------- train (any dataset)


def _train_args(root, out, *extra):
    return [
        "train",
        "--preset",
        "tiny",
        "--data-root",
        str(root),
        "--out",
        str(out),
        "--device",
        "cpu",
        "--threads",
        "1",
        "--no-progress",
        *extra,
    ]


def test_train_with_labels_trains_and_evaluates_everything(tiny_root, tmp_path, capsys):
    from examples.css_ccnn.cli import main

    out = tmp_path / "run"
    assert main(_train_args(tiny_root, out, "--cf-max", "80")) == 0
    text = capsys.readouterr().out
    assert "labels for training images: yes, for test images: yes" in text
    assert "implied people per training image" in text  # the prior report, before stage 2
    for sub in ("stage1", "stage2_plain", "stage2_plus", "supervised_full", "supervised_ssl"):
        assert (out / "seed0" / sub / "best.pt").is_file(), sub
    for method in ("CSS-CCNN", "CSS-CCNN++", "CCNN Mean", "CCNN Fully Supervised"):
        assert f"| {method} |" in text
    config = json.loads((out / "config.json").read_text())
    assert config["prior"]["cf_max"] == 80.0
    assert (
        config["derived"]["prior"]["crops_per_image"]["value"] == config["prior"]["crops_per_image"]
    )
    report = json.loads((out / "prior_report.json").read_text())
    assert report["report"]["cf_max"] == 80.0 and report["report"]["median"] > 0
    # resumable: a second call retrains nothing and rewrites the same table
    stamp = (out / "seed0" / "stage2_plus" / "last.pt").stat().st_mtime_ns
    results = (out / "results.json").read_text()
    assert main(_train_args(tiny_root, out, "--cf-max", "80")) == 0
    assert (out / "seed0" / "stage2_plus" / "last.pt").stat().st_mtime_ns == stamp
    assert (out / "results.json").read_text() == results


def test_train_without_labels(tiny_root, tmp_path, capsys):
    """A plain folder of images: no annotations anywhere, so no baselines, no evaluation."""
    import shutil

    from examples.css_ccnn.cli import main

    folder = tmp_path / "photos"
    shutil.copytree(tiny_root / "train_data" / "images", folder / "a")
    out = tmp_path / "run"
    assert main(_train_args(folder, out, "--kind", "folder", "--cf-max", "80")) == 0
    text = capsys.readouterr().out
    assert "labels for training images: no, for test images: no" in text
    assert "evaluation skipped" in text
    assert (out / "seed0" / "stage2_plain" / "best.pt").is_file()
    assert (out / "seed0" / "stage2_plus" / "best.pt").is_file()
    assert not (out / "seed0" / "supervised_full").exists() and not (out / "results.json").exists()
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["prior"]["num_images"] == 6  # S: every image there is
    assert main(_train_args(folder, out, "--kind", "folder")) == 2  # Cf_max is required
    assert "--cf-max" in capsys.readouterr().err


def test_cosine_schedule_is_applied_and_resume_stays_exact(tiny_cfg, tiny_root, tmp_path):
    from examples.css_ccnn.checkpoint import load_checkpoint
    from examples.css_ccnn.stage1 import train_stage1
    from examples.css_ccnn.training import learning_rate

    tiny_cfg.stage1.epochs, tiny_cfg.stage1.patience = 3, 10
    tiny_cfg.stage1.schedule = "cosine"
    ds = open_dataset(tiny_root, labels=False)
    full = train_stage1(ds, tiny_cfg, tmp_path / "full", progress=False)
    train_stage1(ds, tiny_cfg, tmp_path / "part", stop_after=2, progress=False)
    resumed = train_stage1(ds, tiny_cfg, tmp_path / "part", progress=False)
    assert resumed.fit.epochs_run == full.fit.epochs_run == 3
    a, b = (
        load_checkpoint(tmp_path / "full" / "last.pt"),
        load_checkpoint(tmp_path / "part" / "last.pt"),
    )
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    last_lr = a["optimizer"]["param_groups"][0]["lr"]
    assert last_lr == pytest.approx(learning_rate(tiny_cfg.stage1, 2, 3))
    assert last_lr == pytest.approx(tiny_cfg.stage1.lr * 0.25)  # (1 + cos(2π/3)) / 2
    with pytest.raises(ValueError, match="schedule"):
        make_config("tiny", overrides=['stage2.schedule="step"'])


def test_families_command_writes_every_table(tmp_path, capsys):
    from examples.css_ccnn.cli import main

    args = ["families", "--preset", "tiny", "--out", str(tmp_path), "--families", "sparse"]
    args += ["--seeds", "2", "--num-train", "4", "--num-test", "2", "--device", "cpu"]
    assert main([*args, "--threads", "1", "--no-progress"]) == 0
    text = (tmp_path / "families.md").read_text()
    assert "## sparse" in text and "S_crop" in text and "λ" in text and "Bar:" in text
    for method in ("CSS-CCNN", "CSS-CCNN++", "CCNN Random", "Without Stage 1", "CCNN Mean"):
        assert f"| {method} |" in text
    record = json.loads((tmp_path / "families.json").read_text())["sparse"]
    assert record["summary"]["CSS-CCNN"]["runs"] == 2 and len(record["stage1_accuracy"]) == 2
    assert set(record["claim"]) >= {"css_mae", "mean_mae", "prior_mae", "random_mae"}
    meta = json.loads((tmp_path / "data" / "sparse" / "synthetic.json").read_text())
    assert meta["parameters"]["family"] == "sparse"


@pytest.mark.slow
def test_stage1_learns_rotation_on_the_cpu_preset(tmp_path):
    """The cpu preset's stage 1 gets well above chance (0.25) on a small medium-family set (the
    full 60-image runs reach 0.85; here 20 images and 10 epochs, about a minute)."""
    from examples.css_ccnn.stage1 import train_stage1

    root = make_synthetic(tmp_path / "d", family="medium", num_train=20, num_test=1, seed=4)
    cfg = make_config(
        "cpu", overrides=[f"data.root={json.dumps(str(root))}", 'device="cpu"', "stage1.epochs=10"]
    )
    result = train_stage1(open_dataset(root, labels=False), cfg, tmp_path / "s1", progress=False)
    assert result.best_accuracy > 0.6
