"""The pass@1 chart: a 95% interval on every point (error bars and the hover label), the x-axis choice
followed, reference labels that never overlap, and a sensible frame around a single checkpoint."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from app.gui.charts import PassAtOneChart
from app.gui.run_view import RunView
from core.uncertainty import wilson_interval
from tests.app.run_feed import TOKENS_PER_STEP, StoreFeeder, create_run, metric
from tests.app.test_chart_hover_log import move_to, shown

WAIT_MS = 10_000


def test_every_pass_at_1_point_has_its_wilson_interval_as_an_error_bar_and_in_the_hover(qtbot, store):
    create_run(store, "r1", job_id="1")
    feed = StoreFeeder(store, "r1")
    feed.metrics(range(1, 41))
    feed.evals(20, {"all": 0.3, "clean": 0.2})  # 10 tasks each (run_feed.evals_at)
    feed.evals(40, {"all": 0.6, "clean": 0.5})
    view = RunView(store, "r1")
    qtbot.addWidget(view)
    view.resize(1200, 800)
    view.show()
    qtbot.waitUntil(lambda: "humaneval" in view.pass_charts, timeout=WAIT_MS)
    chart = view.pass_charts["humaneval"]
    qtbot.waitUntil(lambda: ("r1", "clean") in chart._errors, timeout=WAIT_MS)
    for subset, rates in (("all", (0.3, 0.6)), ("clean", (0.2, 0.5))):
        bars = chart._errors[("r1", subset)]
        want = [wilson_interval(round(r * 10), 10) for r in rates]
        np.testing.assert_allclose(bars.opts["x"], [20, 40])
        np.testing.assert_allclose(bars.opts["y"] - bars.opts["bottom"], [100 * lo for lo, _ in want])
        np.testing.assert_allclose(bars.opts["y"] + bars.opts["top"], [100 * hi for _, hi in want])
    lo, hi = wilson_interval(6, 10)
    qtbot.wait(50)
    chart.plot_widget.grab()  # the layout and the auto-range settled: the mouse lands where intended
    move_to(qtbot, chart, 40.0, 60.0)
    qtbot.waitUntil(lambda: chart.hover_x == 40.0, timeout=2000)
    assert f"all: 60.0% (95% CI {100 * lo:.1f}–{100 * hi:.1f}, 10 tasks)" in chart.hover_text().splitlines()
    view.close()


def test_pass_at_1_follows_the_x_axis_choice_through_the_runs_metric_rows(qtbot, store):
    create_run(store, "r1", job_id="1")
    feed = StoreFeeder(store, "r1")
    feed.metrics(range(1, 41))
    feed.evals(20, {"all": 0.3})
    feed.evals(40, {"all": 0.6})
    view = RunView(store, "r1")
    qtbot.addWidget(view)
    view.show()
    qtbot.waitUntil(lambda: view.loaded and "humaneval" in view.pass_charts and view.point_count() == 40,
                    timeout=WAIT_MS)
    chart = view.pass_charts["humaneval"]
    t0 = metric(1)["t"]
    expected = {"step": [20, 40], "tokens": [20 * TOKENS_PER_STEP, 40 * TOKENS_PER_STEP],
                "samples": [metric(20)["samples"], metric(40)["samples"]],
                "wall_time": [metric(20)["t"] - t0, metric(40)["t"] - t0]}
    def drawn_x():  # the run's step -> x map is read from the store off the UI thread: wait for it
        x = chart._curves[("r1", "all")].xData
        return np.empty(0) if x is None else np.asarray(x)

    for axis in ("tokens", "wall_time", "samples", "step"):
        view.x_combo.setCurrentIndex(view.x_combo.findData(axis))
        qtbot.waitUntil(lambda axis=axis: drawn_x().shape == (2,) and np.allclose(drawn_x(), expected[axis]),
                        timeout=WAIT_MS)
        item = chart._curves[("r1", "all")]
        np.testing.assert_allclose(item.xData, expected[axis], err_msg=axis)
        np.testing.assert_allclose(chart._errors[("r1", "all")].opts["x"], expected[axis])
        assert chart.plot.getAxis("bottom").labelText == view.charts["loss"].plot.getAxis("bottom").labelText
    # a checkpoint beyond the metric rows cannot be placed on tokens: it is left out and said so, not guessed
    feed.evals(60, {"all": 0.7})
    view.x_combo.setCurrentIndex(view.x_combo.findData("tokens"))
    qtbot.waitUntil(lambda: chart.log_note.text() != "" and drawn_x().shape == (2,), timeout=WAIT_MS)
    assert len(chart._curves[("r1", "all")].xData) == 2
    assert chart.log_note.text().startswith("1 checkpoint not placed")
    view.close()


def _label_rects(chart):
    return {model: chart._lines[("ref", model)].label.sceneBoundingRect() for model in chart.visible_references()}


@pytest.mark.parametrize("size", [(420, 260), (640, 420)])
def test_reference_labels_never_overlap_even_for_close_values(qtbot, size):
    chart = PassAtOneChart("humaneval")
    qtbot.addWidget(chart)
    for model in chart.references:
        chart.set_reference_visible(model, model in {"GPT-4", "Phind-CodeLlama-34B-v1", "Phind-CodeLlama-34B-Python-v1",
                                                     "Code Llama-34B", "GPT-3.5", "Code Llama-Python-34B"})
    chart.set_subset("r", "", "all", np.array([10.0, 20.0]), np.array([30.0, 40.0]))
    shown(qtbot, chart)
    chart.resize(*size)
    qtbot.wait(50)
    chart.plot_widget.grab()
    rects = _label_rects(chart)
    assert {"GPT-4", "Phind-CodeLlama-34B-v1"} <= set(rects)
    for (a, ra), (b, rb) in itertools.combinations(rects.items(), 2):
        assert not ra.intersects(rb), (a, b, ra, rb)
    view = chart.plot.getViewBox().sceneBoundingRect()
    for model, rect in rects.items():  # and every label stays inside the plot
        assert view.adjusted(-1, -1, 1, 1).contains(rect), (model, rect, view)


def test_a_single_checkpoint_is_framed_from_zero_not_plus_minus_half_a_step(qtbot):
    chart = PassAtOneChart("humaneval")
    qtbot.addWidget(chart)
    chart.set_subset("r", "", "all", np.array([20.0]), np.array([25.0]), low=np.array([10.0]), high=np.array([45.0]))
    shown(qtbot, chart)
    (x_lo, x_hi), (y_lo, y_hi) = chart.plot.getViewBox().viewRange()
    assert x_lo <= 0.0 and 20.0 < x_hi <= 30.0, (x_lo, x_hi)
    assert y_lo <= 0.0 and y_hi >= 100.0, (y_lo, y_hi)
    chart.set_subset("r", "", "all", np.array([20.0, 40.0]), np.array([25.0, 30.0]))  # a second one: auto-range
    chart.plot_widget.grab()
    x_lo, x_hi = chart.plot.getViewBox().viewRange()[0]
    assert 0.0 < x_lo < 20.0 and 40.0 < x_hi < 45.0, (x_lo, x_hi)
