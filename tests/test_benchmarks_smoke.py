"""Smoke test of the comparison harness (benchmarks/compare.py, plot_results.py, workloads.py).

Runs the smallest case end to end (one child process per library configuration, pinned and
capped like the full run) and checks the CSV and the generated Markdown. Anchor libraries that
are not installed are recorded as unavailable, never a failure.
"""

from __future__ import annotations

import csv
import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import compare, plot_results  # noqa: E402
from benchmarks.workloads import exact_1d, load_workload, make_workload, save_workload  # noqa: E402

HAS_POT = importlib.util.find_spec("ot") is not None


def test_exact_1d_reference_matches_sorting_and_averages_ties():
    rng = np.random.default_rng(0)
    x, y = rng.random(50), 3 * rng.random(50)
    w = np.full(50, 1 / 50)
    value, grad = exact_1d(x, y, w, w)
    assert value == pytest.approx(np.mean((np.sort(x) - np.sort(y)) ** 2), rel=1e-12)
    expect = np.empty(50)
    expect[np.argsort(x)] = 2 / 50 * (np.sort(x) - np.sort(y))
    np.testing.assert_allclose(grad, expect, atol=1e-14)
    # two tied points coupled to 1 and 3 both move towards the average, 2
    value, grad = exact_1d(
        np.array([0.0, 0.0]), np.array([1.0, 3.0]), np.full(2, 0.5), np.full(2, 0.5)
    )
    assert value == pytest.approx(5.0)
    np.testing.assert_allclose(grad, [-2.0, -2.0])


def test_workload_names_round_trip(tmp_path):
    w = make_workload("css1d-40x60")
    assert (w.n_total, w.m_total, w.d, w.eps) == (40, 60, 1, 0.1)
    assert w.problems[0].x.dtype == np.float32 and (w.problems[0].x >= 0).all()
    save_workload(w, tmp_path / "w.npz")
    back = load_workload(tmp_path / "w.npz")
    np.testing.assert_array_equal(back.problems[0].y, w.problems[0].y)
    assert back.name == w.name and back.mode == "single"
    g = make_workload("gauss-d3-n64-e0.05")
    assert g.d == 3 and g.eps == pytest.approx(0.05 * g.info["median_cost"])
    with pytest.raises(ValueError, match="workload name"):
        make_workload("nonsense-12")


def test_compare_smallest_case_end_to_end(tmp_path):
    out = tmp_path / "cmp.csv"
    adapters = "exact:sinkmatch,sinkmatch:default" + (",pot:sinkhorn" if HAS_POT else "")
    rc = compare.main(
        [
            "--cases",
            "css1d-48",
            "--adapters",
            adapters,
            "--out",
            str(out),
            "--floor-sizes",
            "none",
            "--time-limit",
            "60",
            "--repeats",
            "1",
            "--mem-gb",
            "4",
        ]
    )
    assert rc == 0
    with out.open() as fh:
        rows = {r["adapter"]: r for r in csv.DictReader(fh)}
    exact = rows["exact:sinkmatch"]
    assert exact["status"] == "ok", exact["reason"]
    assert float(exact["cost_rel_err"]) < 1e-5  # float32 sort vs float64 reference
    sm = rows["sinkmatch:default"]
    assert sm["status"] == "ok", sm["reason"]
    assert float(sm["time_s"]) > 0 and float(sm["peak_rss_mb"]) > 0
    assert float(sm["err_a"]) >= 0 and float(sm["err_b"]) >= 0
    assert sm["torch"] and sm["cpu"] and sm["date_utc"]
    if HAS_POT:
        assert rows["pot:sinkhorn"]["status"] in ("ok", "oom", "error", "timeout")
    # the plot script turns the CSV into tables between markers, leaving the prose alone
    doc = tmp_path / "bench.md"
    doc.write_text(
        "# Bench\n\nprose stays\n\n"
        "<!-- BEGIN GENERATED: bars -->\nold\n<!-- END GENERATED: bars -->\n"
    )
    assert (
        plot_results.main(
            ["--csv", str(out), "--doc", str(doc), "--figures", str(tmp_path / "fig")]
        )
        == 0
    )
    text = doc.read_text()
    assert "prose stays" in text and "old" not in text
    assert "| sinkmatch:default | ok |" in text
    assert (tmp_path / "fig" / "compare_time_vs_n.png").stat().st_size > 1000
