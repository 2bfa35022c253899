"""CSS-CCNN example: the prior's geometry from the data (S_crop, S), the λ = 0 rule, the
label-free consistency report, and the synthetic families."""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest
import torch

cv2 = pytest.importorskip("cv2")
sinkmatch = pytest.importorskip("sinkmatch")

from examples.css_ccnn.config import make_config  # noqa: E402
from examples.css_ccnn.data import open_dataset, resized_shape  # noqa: E402
from examples.css_ccnn.data.datasets import count_images  # noqa: E402
from examples.css_ccnn.data.synthetic import (  # noqa: E402
    FAMILIES,
    FAMILY_NAMES,
    make_synthetic,
)
from examples.css_ccnn.prior import (  # noqa: E402
    PriorRuleWarning,
    build_prior,
    measure_crops_per_image,
    prior_report,
    resolve_prior,
    training_shapes,
)

# tiny datasets have few images (small S): λ = 0 and its warning are expected where not tested
pytestmark = pytest.mark.filterwarnings("ignore::examples.css_ccnn.prior.PriorRuleWarning")


def _write(path, h, w):
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), np.full((h, w, 3), 128, np.uint8))


@pytest.fixture()
def mixed_root(tmp_path):
    """ShanghaiTech layout, images of several sizes, no annotations at all."""
    sizes = {"train": [(100, 150), (300, 400), (600, 1000), (240, 240)], "test": [(500, 500)]}
    for split, shapes in sizes.items():
        for i, (h, w) in enumerate(shapes, start=1):
            _write(tmp_path / f"{split}_data" / "images" / f"IMG_{i}.jpg", h, w)
    return tmp_path, sizes


def _cfg(root, *extra):
    return make_config("cpu", overrides=[f"data.root={json.dumps(str(root))}", *extra])


# ----------------------------------------------------------------------------- S_crop and S


def test_s_crop_from_training_image_sizes(mixed_root):
    root, sizes = mixed_root
    cfg = _cfg(root, "prior.cf_max=500")
    train = open_dataset(root, labels=False)
    shapes = training_shapes(train, cfg)
    # the cpu preset halves every image, then bounds it to [112, 512], sides multiples of 8
    expected = [
        resized_shape(h, w, min_side=112, max_side=512, scale=0.5) for h, w in sizes["train"]
    ]
    assert shapes == expected
    assert shapes[2] == (304, 504) and shapes[0] == (112, 168)  # shrunk and enlarged
    cell = 8 * (cfg.stage2.crop_size // 8 // cfg.prior.grid)  # 32 px
    s_crop = np.mean([h * w for h, w in expected]) / (3 * cell) ** 2
    assert measure_crops_per_image(shapes, cfg) == pytest.approx(s_crop, rel=1e-12)
    assert not float(s_crop).is_integer()  # a float, not rounded

    resolved = resolve_prior(cfg, train)
    got = resolved.derived["prior"]
    assert resolved.prior.crops_per_image == pytest.approx(s_crop, rel=1e-12)
    assert got["crops_per_image"]["value"] == pytest.approx(s_crop, rel=1e-12)
    assert "mean training-image area" in got["crops_per_image"]["source"]
    # S: every image of the dataset, training and test, counted without any annotation
    assert resolved.prior.num_images == 5 == count_images(root)
    assert got["num_images"]["value"] == 5 and got["cf_max"]["value"] == 500
    prior = build_prior(resolved)
    assert got["lambda"]["value"] == prior.lam and got["c_max"]["value"] == prior.c_max
    assert prior.c_max == pytest.approx(500 / (9 * s_crop))


def test_user_values_override_and_resolution_is_idempotent(mixed_root):
    root, _ = mixed_root
    train = open_dataset(root, labels=False)
    cfg = resolve_prior(
        _cfg(root, "prior.cf_max=500", "prior.crops_per_image=2.5", "prior.num_images=300"), train
    )
    assert cfg.prior.crops_per_image == 2.5 and cfg.prior.num_images == 300
    assert cfg.derived["prior"]["crops_per_image"] == {"value": 2.5, "source": "config"}
    again = resolve_prior(cfg, train)
    assert again.derived == cfg.derived and again is not cfg
    with pytest.raises(ValueError, match="crops_per_image"):
        build_prior(_cfg(root, "prior.cf_max=500"))  # not resolved, not given


def test_resolved_values_are_saved_with_the_run(tmp_path):
    from examples.css_ccnn.checkpoint import load_checkpoint
    from examples.css_ccnn.stage2 import train_stage2

    root = make_synthetic(
        tmp_path / "d", num_train=4, num_test=1, image_size=96, count_range=(20, 150)
    )
    cfg = make_config("tiny", overrides=[f"data.root={json.dumps(str(root))}", 'device="cpu"'])
    cfg.stage2.epochs = 1
    train = open_dataset(root, labels=False)
    train_stage2(train, cfg, tmp_path / "s2", fen_checkpoint=None, progress=False)
    saved = json.loads((tmp_path / "s2" / "config.json").read_text())
    meta = load_checkpoint(tmp_path / "s2" / "last.pt")["meta"]["config"]
    expected = resolve_prior(cfg, train)
    for stored in (saved, meta):
        assert stored["prior"]["crops_per_image"] == pytest.approx(expected.prior.crops_per_image)
        assert stored["prior"]["num_images"] == 5
        assert stored["derived"]["prior"]["lambda"]["value"] == pytest.approx(
            expected.derived["prior"]["lambda"]["value"]
        )


# ----------------------------------------------------------------------------- the tail rule


def test_no_positive_lambda_gives_lambda_zero_with_a_warning(mixed_root):
    root, _ = mixed_root
    # the case: Cf_max 3000, 3 x 3 cells, S_crop 5 and 60 images: CDF(66.7) = 0.985 >= 0.983
    cfg = _cfg(root, "prior.cf_max=3000", "prior.crops_per_image=5.0", "prior.num_images=60")
    with pytest.raises(ValueError, match="no lambda"):
        sinkmatch.CountPrior.from_max_count(3000, num_images=60, crops_per_image=5.0)
    with pytest.warns(PriorRuleWarning, match=r"λ = 0"):
        prior = build_prior(cfg)
    assert prior.lam == 0.0 and prior.c_max == pytest.approx(3000 / 45)
    base = sinkmatch.TruncatedPowerLaw(2.0, 0.0, x_min=1.0)
    assert float(base.cdf(prior.c_max)) >= 1 - 1 / 60  # the rule could not be met by λ > 0
    assert float(prior.cdf(prior.threshold)) == pytest.approx(0.3)  # head mass kept
    draws = prior.sample(20_000, generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(draws).all() and (draws >= 0).all()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # with the paper's S the rule has a solution: no warning
        assert (
            build_prior(
                _cfg(root, "prior.cf_max=3000", "prior.crops_per_image=5.0", "prior.num_images=482")
            ).lam
            > 0
        )


def test_cells_too_small_for_the_prior_are_refused(mixed_root):
    root, _ = mixed_root
    cfg = _cfg(root, "prior.cf_max=20", "prior.crops_per_image=4.0", "prior.num_images=50")
    with pytest.raises(ValueError, match="too small"):
        build_prior(cfg)  # C_max = 20 / 36 < 1 person per cell


# ----------------------------------------------------------------------------- the report


def _report(root, *extra):
    train = open_dataset(root, labels=False)
    cfg = resolve_prior(_cfg(root, *extra), train)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PriorRuleWarning)
        return prior_report(build_prior(cfg), cfg, training_shapes(train, cfg))


def test_report_is_silent_on_a_consistent_prior(mixed_root):
    root, _ = mixed_root
    report = _report(root, "prior.cf_max=800", "prior.num_images=100")
    assert report.warnings == []
    assert 0 < report.median < report.tail < 800
    assert f"Cf_max {800:g}" in report.text() and "warning" not in report.text()
    again = _report(root, "prior.cf_max=800", "prior.num_images=100")
    assert (again.median, again.tail) == (report.median, report.tail)  # seeded draws


def test_report_warns_when_the_typical_image_exceeds_cf_max(mixed_root):
    root, _ = mixed_root
    # the geometry: S_crop forced to 1 on images of ~3 crops, small Cf_max
    report = _report(root, "prior.cf_max=60", "prior.crops_per_image=0.2", "prior.num_images=100")
    assert report.median > 60
    assert any("typical training image" in w for w in report.warnings), report.warnings
    assert "warning: " in report.text()


def test_report_warns_when_the_prior_never_comes_near_cf_max(mixed_root):
    root, _ = mixed_root
    # S_crop claimed 100x too large: C_max tiny per cell, so the implied images stay small
    report = _report(
        root, "prior.cf_max=5000", "prior.crops_per_image=150.0", "prior.num_images=100"
    )
    assert report.tail < 5000 / 20
    assert any("never comes near" in w for w in report.warnings), report.warnings


def test_report_names_lambda_zero(mixed_root):
    root, _ = mixed_root
    report = _report(root, "prior.cf_max=3000", "prior.crops_per_image=5.0", "prior.num_images=10")
    assert report.lam == 0.0 and any("λ = 0" in w for w in report.warnings)


# ----------------------------------------------------------------------------- families


def test_every_family_keeps_its_sizes_and_counts(tmp_path):
    assert set(FAMILY_NAMES) >= {"sparse", "medium", "dense", "blind"}
    shipped = [FAMILIES[n] for n in ("sparse", "medium", "dense")]
    for field in ("long_side", "count_range", "head_size", "clutter"):
        values = [getattr(s, field) for s in shipped]
        assert len(set(values)) == 3, field  # the families differ in every respect
    for name in ("sparse", "medium", "dense"):
        scene = FAMILIES[name]
        root = make_synthetic(tmp_path / name, family=name, num_train=3, num_test=2, seed=1)
        meta = json.loads((root / "synthetic.json").read_text())
        assert meta["parameters"]["family"] == name
        for split in ("train", "test"):
            ds = open_dataset(root, split=split)
            for i, (h, w) in enumerate(ds.image_shapes()):
                assert scene.long_side[0] <= w <= scene.long_side[1]
                assert scene.aspect[0] - 0.01 <= h / w <= scene.aspect[1] + 0.01
                points = ds.read_points(i)
                assert scene.count_range[0] <= len(points) <= scene.count_range[1]
                assert np.all((points >= 0) & (points <= [w - 1, h - 1]))
    assert 256 <= FAMILIES["sparse"].long_side[0] and FAMILIES["dense"].long_side[1] <= 1024
    assert FAMILIES["sparse"].count_range[0] <= 20 and FAMILIES["dense"].count_range[1] >= 3000


def test_family_options_and_errors(tmp_path):
    root = make_synthetic(
        tmp_path / "x",
        family="dense",
        num_train=1,
        num_test=0,
        image_size=(64, 80),
        count_range=(30, 30),
        clutter=0.0,
        figure="top_view",
    )
    params = json.loads((root / "synthetic.json").read_text())["parameters"]
    assert params["image_size"] == [64, 80] and params["figure"] == "top_view"
    assert params["head_size"] == list(FAMILIES["dense"].head_size)
    assert len(open_dataset(root).read_points(0)) == 30
    with pytest.raises(ValueError, match="family"):
        make_synthetic(tmp_path / "y", family="nope")
    with pytest.raises(ValueError, match="figure"):
        make_synthetic(tmp_path / "y", figure="stick")
    with pytest.raises(ValueError, match="clutter"):
        make_synthetic(tmp_path / "y", clutter=-1.0)
    with pytest.raises(ValueError, match="head_size"):
        make_synthetic(tmp_path / "y", head_size=(0.3, 0.4))
    assert math.isfinite(FAMILIES["default"].clutter)
