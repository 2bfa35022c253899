"""Packing ragged groups and the CSS-CCNN++ percentile split."""

from __future__ import annotations

import doctest
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import sinkmatch.grouping
from sinkmatch.grouping import pack_groups, percentile_split


def test_doctests():
    assert doctest.testmod(sinkmatch.grouping).failed == 0


# ---------------------------------------------------------------- pack_groups


def test_list_form_layout_and_weights():
    g0 = torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])
    g1 = torch.zeros(0, 2)
    g2 = torch.tensor([[7.0, 8.0]])
    packed = pack_groups([g0, g1, g2], pad_value=-9.0)
    assert packed.points.shape == (3, 3, 2)
    assert torch.equal(packed.points[0], g0)
    assert torch.equal(packed.points[2, 0], g2[0])
    assert torch.all(packed.points[1] == -9.0) and torch.all(packed.points[2, 1:] == -9.0)
    default = pack_groups([g0, g1, g2])  # padding repeats the group's first point, 0 if empty
    assert torch.all(default.points[2, 1:] == g2[0]) and torch.all(default.points[1] == 0)
    assert packed.sizes.tolist() == [3, 0, 1]
    assert torch.allclose(packed.weights.sum(-1), torch.tensor([1.0, 0.0, 1.0]))
    assert torch.all(packed.weights[packed.index < 0] == 0)
    assert packed.nonempty.tolist() == [True, False, True]
    assert packed.mask.sum().item() == 4
    assert packed.index[0].tolist() == [0, 1, 2] and packed.index[2].tolist() == [0, -1, -1]


def test_id_form_keeps_order_and_trailing_empty_groups():
    x = torch.tensor([10.0, 11.0, 12.0, 13.0, 14.0])
    w = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0])
    ids = torch.tensor([2, 0, 2, 0, 0])
    packed = pack_groups(x, w, groups=ids, num_groups=4)
    assert packed.points.shape == (4, 3, 1)
    assert packed.points[0, :, 0].tolist() == [11.0, 13.0, 14.0]
    assert packed.points[2, :2, 0].tolist() == [10.0, 12.0]
    assert packed.weights.tolist() == [[2.0, 4.0, 5.0], [0, 0, 0], [1.0, 3.0, 0], [0, 0, 0]]
    assert packed.index[2].tolist() == [0, 2, -1]
    assert packed.sizes.tolist() == [3, 0, 2, 0]
    # default num_groups: largest id + 1
    assert pack_groups(x, groups=ids).points.shape[0] == 3


def test_packing_is_differentiable_and_padding_is_constant():
    x = torch.randn(6, 2, dtype=torch.float64, requires_grad=True)
    ids = torch.tensor([1, 1, 0, 1, 0, 1])
    packed = pack_groups(x, groups=ids)
    weights = torch.randn_like(packed.points)
    (packed.points * weights).sum().backward()
    # each point receives exactly the weight of its own slot
    expected = torch.zeros_like(x)
    for g in range(2):
        for s in range(int(packed.sizes[g])):
            expected[packed.index[g, s]] = weights[g, s]
    assert torch.equal(x.grad, expected)


@settings(max_examples=30, deadline=None)
@given(sizes=st.lists(st.integers(0, 5), min_size=1, max_size=5), dim=st.integers(1, 3))
def test_list_and_id_forms_agree(sizes, dim):
    gen = torch.Generator().manual_seed(sum(sizes) + dim)
    groups = [torch.randn(s, dim, generator=gen) for s in sizes]
    by_list = pack_groups(groups)
    flat = torch.cat(groups)
    ids = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))
    by_ids = pack_groups(flat, groups=ids, num_groups=len(sizes))
    assert torch.equal(by_list.points, by_ids.points)
    assert torch.equal(by_list.weights, by_ids.weights)
    assert by_list.sizes.tolist() == sizes
    for k, g in enumerate(groups):  # every group is recovered from its mask
        assert torch.equal(by_list.points[k][by_list.mask[k]], g)


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda: pack_groups(torch.zeros(3)), ValueError, "groups="),
        (lambda: pack_groups([]), ValueError, "non-empty list"),
        (lambda: pack_groups([torch.zeros(2, 1), torch.zeros(2, 2)]), ValueError, "dimension"),
        (lambda: pack_groups([torch.zeros(2)], groups=torch.zeros(2)), ValueError, "id form"),
        (
            lambda: pack_groups(torch.zeros(3), groups=torch.tensor([0.0, 1.0, 0.0])),
            TypeError,
            "integer",
        ),
        (lambda: pack_groups(torch.zeros(3), groups=torch.tensor([0, 1])), ValueError, "shape"),
        (lambda: pack_groups(torch.zeros(3), groups=torch.tensor([0, -1, 0])), ValueError, ">= 0"),
        (
            lambda: pack_groups(torch.zeros(3), groups=torch.tensor([0, 3, 0]), num_groups=2),
            ValueError,
            "< num_groups",
        ),
        (
            lambda: pack_groups(torch.tensor([0.0, math.nan]), groups=torch.tensor([0, 0])),
            ValueError,
            "finite",
        ),
        (lambda: pack_groups([torch.zeros(2)], [torch.ones(3)]), ValueError, "weights"),
        (
            lambda: pack_groups([torch.zeros(2)], [torch.tensor([1.0, -1.0])]),
            ValueError,
            "nonnegative",
        ),
        (lambda: pack_groups([torch.zeros(2, 2, 2)]), ValueError, "shape"),
        (lambda: pack_groups([torch.zeros(2, dtype=torch.long)]), TypeError, "floating"),
    ],
)
def test_pack_groups_bad_input(call, error, match):
    with pytest.raises(error, match=match):
        call()


# ---------------------------------------------------------------- percentile_split


def test_split_sizes_are_exact_under_massive_ties():
    # Canny-like pseudo density: 70% exact zeros
    gen = torch.Generator().manual_seed(0)
    score = torch.rand(100, generator=gen)
    score[torch.randperm(100, generator=gen)[:70]] = 0.0
    pred = torch.rand(100, generator=gen)
    target = torch.rand(543, generator=gen)
    for ties in ("pred", "random", "index"):
        split = percentile_split(pred, score, target, q=0.3, ties=ties, generator=gen)
        assert int(split.pred_sparse.sum()) == 30
        assert int(split.target_sparse.sum()) == round(0.3 * 543) == 163
        assert not split.fallback
        # every sparse score <= every dense score
        assert score[split.pred_sparse].max() <= score[split.pred_dense].min()
        assert target[split.target_sparse].max() <= target[split.target_dense].min()


def test_split_ties_by_prediction_value():
    score = torch.tensor([0.0, 0.0, 0.0, 0.0, 0.9, 0.8])
    pred = torch.tensor([4.0, 1.0, 3.0, 2.0, 0.0, 0.0])
    split = percentile_split(pred, score, torch.arange(6.0), q=0.5, min_group_size=1)
    # three lowest scores: among the four zeros, the lowest predictions 1, 2, 3
    assert split.pred_sparse.tolist() == [False, True, True, True, False, False]
    index = percentile_split(pred, score, torch.arange(6.0), q=0.5, ties="index", min_group_size=1)
    assert index.pred_sparse.tolist() == [True, True, True, False, False, False]


def test_split_random_ties_reproducible_with_generator():
    score = torch.zeros(50)
    pred = torch.zeros(50)
    target = torch.arange(50.0)

    def run(seed):
        gen = torch.Generator().manual_seed(seed)
        return percentile_split(pred, score, target, ties="random", generator=gen).pred_sparse

    assert torch.equal(run(1), run(1))
    assert not torch.equal(run(1), run(2))
    assert int(run(3).sum()) == 15


def test_split_groups_ids_and_flattening():
    pred = torch.rand(2, 1, 3, 3)
    score = torch.rand(2, 1, 3, 3)
    split = percentile_split(pred, score, torch.rand(40), q=0.3)
    assert split.pred_sparse.shape == (18,)
    assert torch.equal(split.pred_groups, (~split.pred_sparse).long())
    assert torch.equal(split.target_groups, split.target_dense.long())
    assert int(split.pred_sparse.sum()) == round(0.3 * 18) == 5


def test_split_fallback_for_tiny_groups():
    score = torch.rand(8)
    split = percentile_split(score, score, torch.rand(100), q=0.3)  # 2 sparse predictions
    assert int(split.pred_sparse.sum()) == 2 and split.fallback
    split = percentile_split(score, score, torch.rand(100), q=0.3, min_group_size=2)
    assert not split.fallback


def test_legacy_mode_reproduces_original_threshold_rule():
    gen = torch.Generator().manual_seed(5)
    score = torch.rand(288, generator=gen)
    target = torch.rand(1568, generator=gen)
    split = percentile_split(score, score, target, q=0.3, mode="legacy")
    # original: threshold = int(0.7 * n)-th largest value, sparse strictly below it
    thr = torch.topk(score, int(0.7 * 288)).values[-1]
    assert torch.equal(split.pred_sparse, score < thr)
    assert int(split.pred_sparse.sum()) == 288 - 201
    assert int(split.target_sparse.sum()) == 1568 - int(0.7 * 1568)
    # with 70% zeros the strict rule leaves the sparse group empty: fallback, never an error
    score[:210] = 0.0
    tied = percentile_split(score, score, target, q=0.3, mode="legacy")
    assert int(tied.pred_sparse.sum()) == 0 and tied.fallback


@settings(max_examples=30, deadline=None)
@given(n=st.integers(1, 60), m=st.integers(1, 60), q=st.floats(0.01, 0.99), zeros=st.floats(0, 1))
def test_split_properties(n, m, q, zeros):
    gen = torch.Generator().manual_seed(n * 100 + m)
    score = torch.rand(n, generator=gen)
    score[torch.rand(n, generator=gen) < zeros] = 0.0
    target = torch.rand(m, generator=gen)
    split = percentile_split(torch.rand(n, generator=gen), score, target, q=q, min_group_size=1)
    k = int(split.pred_sparse.sum())
    assert k == math.floor(q * n + 0.5)
    assert int(split.target_sparse.sum()) == math.floor(q * m + 0.5)
    if 0 < k < n:
        assert score[split.pred_sparse].max() <= score[split.pred_dense].min()
    assert split.fallback == (
        min(k, n - k, int(split.target_sparse.sum()), m - int(split.target_sparse.sum())) < 1
    )


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"q": 0.0}, ValueError, r"\(0, 1\)"),
        ({"q": 1.0}, ValueError, r"\(0, 1\)"),
        ({"q": 1.5}, ValueError, r"\(0, 1\)"),
        ({"min_group_size": 0}, ValueError, "min_group_size"),
        ({"ties": "first"}, ValueError, "ties"),
        ({"mode": "median"}, ValueError, "mode"),
        ({"score": torch.rand(5)}, ValueError, "one value per prediction"),
        ({"score": torch.tensor([0.0, math.nan, 0.0, 1.0])}, ValueError, "finite"),
        ({"target": torch.rand(2, 3)}, ValueError, r"\(M,\)"),
        ({"target": torch.zeros(0)}, ValueError, r"\(M,\)"),
        ({"pred": torch.zeros(0), "score": torch.zeros(0)}, ValueError, "at least one"),
        ({"score": [0.0, 1.0, 2.0, 3.0]}, TypeError, "score"),
    ],
)
def test_split_bad_input(kwargs, error, match):
    args = {"pred": torch.rand(4), "score": torch.rand(4), "target": torch.rand(10)}
    args.update(kwargs)
    pred, score, target = args.pop("pred"), args.pop("score"), args.pop("target")
    with pytest.raises(error, match=match):
        percentile_split(pred, score, target, **args)
