"""Long live curves: drawn from an incrementally updated min/max envelope, the full points when zoomed in,
and exported in full."""

from __future__ import annotations

import csv

import numpy as np

from app.gui.charts import ENVELOPE_MAX_BINS, ENVELOPE_MIN_POINTS, MetricChart, _Envelope
from core.series import Curve, MetricBatch, RunSeries


def brute_envelope(x: np.ndarray, y: np.ndarray, b: int) -> tuple[np.ndarray, np.ndarray]:
    lo = [np.fmin.reduce(y[i:i + b]) for i in range(0, y.size, b)]
    hi = [np.fmax.reduce(y[i:i + b]) for i in range(0, y.size, b)]
    return np.repeat(x[::b], 2), np.column_stack((lo, hi)).ravel()


def test_incremental_envelope_equals_one_computed_from_scratch_as_the_bin_size_grows():
    rng = np.random.default_rng(1)
    n_total = 3 * ENVELOPE_MAX_BINS * 4 + 17
    x = np.arange(n_total, dtype=float)
    y = rng.standard_normal(n_total)
    y[rng.choice(n_total, 50, replace=False)] = np.nan  # missing values are skipped, as by peak downsampling
    env = _Envelope()
    n = 0
    for chunk in (1, 5, 100, 4000, 1, 9000, 17, 30_000):
        n = min(n_total, n + chunk)
        ex, ey = env.update(x, y, n)
    ex, ey = env.update(x, y, n_total)
    assert env.bin == 16  # 49k points need bins of 16 to stay within the 4096-bin budget
    bx, by = brute_envelope(x[:n_total], y[:n_total], env.bin)
    np.testing.assert_array_equal(ex, bx)
    np.testing.assert_array_equal(ey, by)


def test_long_curve_draws_the_envelope_zoomed_in_draws_points_and_exports_everything(qtbot, tmp_path):
    chart = MetricChart("loss", "loss")
    qtbot.addWidget(chart)
    chart.resize(600, 400)
    chart.show()
    n = ENVELOPE_MIN_POINTS * 2
    x = np.arange(n, dtype=float)
    y = np.sin(x / 1000)
    series = RunSeries()
    chart.set_curve("r", "run", "#000000", Curve(series, "loss"))
    half = n // 2
    for part in (slice(0, half), slice(half, n)):  # two live batches: the envelope grows, not recomputed
        series.extend(MetricBatch.from_columns(1, step=x[part], loss=y[part]))
        chart.refresh()
    item = chart._curves[("r", 1, "smooth")]
    assert item.xData.size <= 2 * ENVELOPE_MAX_BINS  # the envelope, not the 131k points
    assert np.nanmax(item.yData) == np.max(y) and np.nanmin(item.yData) == np.min(y)
    chart.plot.setXRange(1000, 5000, padding=0)  # zoomed in: the points themselves
    assert item.xData.size == n
    # the whole run again: back to the envelope (with clipToView, pyqtgraph's auto-range reads the clipped
    # data, so the view is reset in two steps)
    chart.plot.enableAutoRange()
    qtbot.wait(10)
    chart.plot.getViewBox().autoRange()
    qtbot.waitUntil(lambda: item.xData.size <= 2 * ENVELOPE_MAX_BINS, timeout=5000)
    with open(chart.export_csv(tmp_path / "loss.csv"), encoding="utf-8") as f:
        rows = [r for r in csv.reader(f)][1:]
    assert len(rows) == n and float(rows[-1][1]) == n - 1
