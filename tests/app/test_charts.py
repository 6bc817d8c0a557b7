"""Chart widgets, offscreen: they draw core.series curves, create each line once and update it, export the data
exactly, frame flat lines at their own scale; reference lines toggle."""

import csv

import numpy as np
import pytest

pytest.importorskip("pytestqt")

from app.gui.charts import MetricChart, PassAtOneChart
from core.series import Curve, MetricBatch, RunSeries, ema


def feed(series: RunSeries, attempt: int, x, y, field: str = "loss") -> RunSeries:
    """Rows of one attempt whose step is x and whose `field` is y."""
    series.extend(MetricBatch.from_columns(attempt, step=np.asarray(x, float), t=np.asarray(x, float),
                                           **{field: np.asarray(y, float)}))
    return series


def line(chart: MetricChart, x, y, *, smoothing: float = 0.0, run: str = "r", label: str = "r",
         field: str = "loss") -> Curve:
    curve = Curve(feed(RunSeries(), 1, x, y, field), field, "step", smoothing)
    chart.set_curve(run, label, "#000000", curve)
    return curve


def test_live_rows_update_the_existing_lines_and_the_curve_smooths_only_new_points(qtbot):
    chart = MetricChart("loss", "loss")
    qtbot.addWidget(chart)
    series = RunSeries()
    chart.set_curve("run-a", "run a", "#0072B2", Curve(series, "loss", "step", 0.9))
    x = np.arange(1, 501, dtype=float)
    y = 5 * np.exp(-x / 200) + np.sin(x)
    for lo in range(0, 500, 50):
        feed(series, 1, x[lo : lo + 50], y[lo : lo + 50])
        assert chart.refresh("run-a")
    assert not chart.refresh("run-a")  # nothing new: nothing handed to pyqtgraph
    assert len(chart.curve_keys()) == 2  # raw + smoothed, created once, not once per batch
    smooth = chart._curves[("run-a", 1, "smooth")]
    np.testing.assert_allclose(smooth.yData, ema(y, 0.9), atol=1e-12)
    np.testing.assert_array_equal(chart._curves[("run-a", 1, "raw")].xData, x)


def test_changing_the_curves_smoothing_redraws_the_same_items_from_the_raw_data(qtbot):
    chart = MetricChart("loss", "loss")
    qtbot.addWidget(chart)
    y = np.random.default_rng(0).random(300)
    curve = line(chart, np.arange(300.0), y)
    item = chart._curves[("r", 1, "smooth")]
    curve.set_smoothing(0.5)
    chart.refresh()
    assert chart._curves[("r", 1, "smooth")] is item and chart._curves[("r", 1, "raw")].isVisible()
    np.testing.assert_allclose(item.yData, ema(y, 0.5), atol=1e-12)
    curve.set_smoothing(0.0)
    chart.refresh()
    np.testing.assert_array_equal(item.yData, y)
    assert not chart._curves[("r", 1, "raw")].isVisible()  # unsmoothed: one line


def test_resumed_attempt_is_its_own_segment_with_a_marker_line(qtbot):
    chart = MetricChart("loss", "loss")
    qtbot.addWidget(chart)
    series = feed(feed(RunSeries(), 1, np.arange(1.0, 16), np.ones(15)), 2, np.arange(11.0, 21), np.ones(10))
    chart.set_curve("r", "r", "#000000", Curve(series, "loss"))
    assert chart._curves[("r", 1, "smooth")].xData.tolist() == list(range(1, 11))
    assert ("r", 2, "resume") in chart._lines
    assert chart._lines[("r", 2, "resume")].value() == 11.0
    chart.clear_run("r")
    assert chart.curve_keys() == []


def test_csv_export_holds_the_full_data_not_the_downsampled_view(qtbot, tmp_path):
    chart = MetricChart("loss", "loss")
    qtbot.addWidget(chart)
    n = 20_000
    line(chart, np.arange(n, dtype=float), np.arange(n, dtype=float) * 2, label="big run")
    chart.resize(400, 300)
    chart.show()
    qtbot.waitExposed(chart)
    with open(chart.export_csv(tmp_path / "loss.csv"), encoding="utf-8") as f:
        rows = list(csv.reader(f))
    data = [r for r in rows[1:] if r[0] == "big run"]
    assert len(data) == n
    assert float(data[-1][1]) == n - 1 and float(data[-1][2]) == 2 * (n - 1)
    png = chart.export_image(tmp_path / "loss.png")
    assert png.stat().st_size > 1000
    svg = chart.export_image(tmp_path / "loss.svg")
    assert "<svg" in svg.read_text(encoding="utf-8")[:2000]


def test_pass_at_one_reference_lines_toggle(qtbot):
    chart = PassAtOneChart("humaneval")
    qtbot.addWidget(chart)
    assert "Phind-CodeLlama-34B-v1" in chart.visible_references()
    assert chart.references["Code Llama-34B"].pass_at_1 == 48.8
    chart.set_reference_visible("Phind-CodeLlama-34B-v1", False)
    assert "Phind-CodeLlama-34B-v1" not in chart.visible_references()
    key = chart.set_subset("r", "", "clean", np.array([10.0, 20.0]), np.array([1.0, 2.5]))
    assert chart._curves[key].yData.tolist() == [1.0, 2.5]
    mbpp = PassAtOneChart("mbpp")
    qtbot.addWidget(mbpp)
    assert mbpp.references["Code Llama-34B"].pass_at_1 == 55.0


def _y_range(chart, qtbot) -> tuple[float, float]:
    chart.resize(600, 400)
    chart.show()
    qtbot.waitExposed(chart)
    vb = chart.plot.getViewBox()
    vb.updateAutoRange()
    lo, hi = vb.viewRange()[1]
    return lo, hi


def test_a_constant_learning_rate_is_framed_at_its_own_scale_not_plus_minus_half(qtbot):
    chart = MetricChart("Learning rate", "lr")
    qtbot.addWidget(chart)
    curve = line(chart, np.arange(1.0, 41.0), np.full(40, 3e-3), field="lr")
    lo, hi = _y_range(chart, qtbot)
    assert lo < 3e-3 < hi and hi - lo < 0.2 * 3e-3, (lo, hi)  # pyqtgraph alone pads a flat line by +-0.5
    feed(curve.series, 1, np.arange(41.0, 61.0), np.linspace(3e-3, 1e-3, 20), "lr")  # then the schedule decays
    chart.refresh()
    lo, hi = _y_range(chart, qtbot)
    assert lo <= 1e-3 and hi >= 3e-3, "the frame follows data that starts to vary"


def test_float_noise_on_a_steady_value_is_not_zoomed_into(qtbot):
    chart = MetricChart("Throughput", "tokens/s")
    qtbot.addWidget(chart)
    y = 900.0 + np.random.default_rng(1).normal(0, 1e-13, 100)
    line(chart, np.arange(100.0), y)
    lo, hi = _y_range(chart, qtbot)
    assert hi - lo >= 0.02 * 900 * 0.99, (lo, hi)


def test_one_early_spike_does_not_stop_zooming_into_the_late_curve(qtbot):
    chart = MetricChart("Gradient norm", "|g|")
    qtbot.addWidget(chart)
    y = 1.5 + 0.5 * np.sin(np.arange(200.0) / 7)
    y[3] = 1000.0  # a loss spike's gradient
    line(chart, np.arange(200.0), y)
    _y_range(chart, qtbot)
    vb = chart.plot.getViewBox()
    vb.setYRange(1.0, 2.0, padding=0)
    lo, hi = vb.viewRange()[1]
    assert hi - lo < 1.5, (lo, hi)  # a floor of 2% of the spike would force a span of 20
