"""Hover values with a crosshair and the per-chart log-scale switch, driven as a user drives them: mouse moves
over the plot, a click on the "log y" box."""

from __future__ import annotations

import numpy as np
from PySide6.QtCore import QPoint, QPointF, Qt

from app.gui.charts import MetricChart
from core.series import Curve, MetricBatch, RunSeries, ema


def series_of(x, y, field="loss") -> RunSeries:
    series = RunSeries()
    series.extend(MetricBatch.from_columns(1, step=np.asarray(x, float), **{field: np.asarray(y, float)}))
    return series


def shown(qtbot, chart) -> None:
    chart.resize(640, 420)
    chart.show()
    qtbot.waitExposed(chart)
    chart.plot_widget.grab()  # a paint: the auto-range is applied (twice: it settles in two passes)
    qtbot.wait(30)
    chart.plot_widget.grab()


def move_to(qtbot, chart, x: float, y: float | None = None) -> QPoint:
    """Move the mouse over the plot to data x (and y, default mid-height) as a user would."""
    vb = chart.plot.getViewBox()
    if y is None:
        y = sum(vb.viewRange()[1]) / 2
    scene = vb.mapViewToScene(QPointF(x, y))
    pos = chart.plot_widget.mapFromScene(scene)
    qtbot.mouseMove(chart.plot_widget.viewport(), pos)
    return pos


def test_hover_shows_a_crosshair_and_the_values_of_every_run_at_that_x(qtbot):
    chart = MetricChart("Loss", "loss")
    qtbot.addWidget(chart)
    steps = np.arange(1.0, 101.0)
    a = Curve(series_of(steps, 3.0 - steps / 100), "loss", smoothing=0.6)
    b = Curve(series_of(steps[:50], 5.0 + steps[:50] / 10), "loss")  # a shorter run
    chart.set_curve("a", "Tiny demo (CPU) · 1a2b3c", "#0072B2", a)
    chart.set_curve("b", "Tiny demo (CPU) · 9f8e7d", "#E69F00", b)
    shown(qtbot, chart)
    assert chart.hover_text() == "" and not chart.crosshair.isVisible()

    move_to(qtbot, chart, 40.0)
    qtbot.waitUntil(lambda: chart.hover_text() != "", timeout=2000)
    assert chart.crosshair.isVisible() and chart.crosshair.value() == chart.hover_x
    x = chart.hover_x
    assert x == round(x) and abs(x - 40.0) <= 2  # snapped to the step nearest to the mouse
    x = int(x)
    lines = chart.hover_text().splitlines()
    assert lines[0] == f"optimizer step {x}"
    smooth_a = ema(3.0 - steps / 100, 0.6)[x - 1]
    assert lines[1] == f"Tiny demo (CPU) · 1a2b3c: {smooth_a:.4g} (raw {3.0 - x / 100:.4g})"
    assert lines[2] == f"Tiny demo (CPU) · 9f8e7d: {5.0 + x / 10:.4g}"

    move_to(qtbot, chart, 80.0)  # past the end of run b: only run a has a value there
    qtbot.waitUntil(lambda: chart.hover_x is not None and chart.hover_x > 70, timeout=2000)
    text = chart.hover_text()
    assert "1a2b3c" in text and "9f8e7d" not in text

    qtbot.mouseMove(chart.log_check, QPoint(2, 2))  # leaving the plot hides them
    qtbot.waitUntil(lambda: chart.hover_text() == "", timeout=2000)
    assert not chart.crosshair.isVisible()


def test_log_toggle_switches_the_view_to_log10_keeps_the_data_and_counts_values_it_cannot_draw(qtbot):
    chart = MetricChart("Gradient norm", "|g|")
    qtbot.addWidget(chart)
    steps = np.arange(1.0, 61.0)
    y = 10.0 ** (-steps / 20)  # 1e-0.05 .. 1e-3
    y[[9, 19]] = [0.0, -1.0]  # values a log axis cannot draw
    chart.set_curve("r", "r", "#000000", Curve(series_of(steps, y, "grad_norm"), "grad_norm"))
    shown(qtbot, chart)
    vb = chart.plot.getViewBox()
    assert not chart.log_check.isChecked() and not chart.plot.ctrl.logYCheck.isChecked()
    assert chart.log_note.text() == ""

    qtbot.mouseClick(chart.log_check, Qt.MouseButton.LeftButton)
    assert chart.log_check.isChecked() and chart.plot.ctrl.logYCheck.isChecked()  # pyqtgraph's own log mode
    item = chart._curves[("r", 1, "smooth")]  # unsmoothed: the one line drawn
    np.testing.assert_array_equal(item.yData, y)  # the data is unchanged: only the mapping is
    chart.plot_widget.grab()
    lo, hi = vb.viewRange()[1]
    finite = y[y > 0]
    assert lo <= np.log10(finite.min()) and np.log10(finite.max()) <= hi, (lo, hi)  # log10 units
    assert hi - lo < 10, (lo, hi)  # not stretched by the zero and the negative value
    assert chart.log_note.text() == "2 points ≤ 0 not drawn"

    move_to(qtbot, chart, 30.0)  # the hover reads values, not log10 of them
    qtbot.waitUntil(lambda: chart.hover_text() != "", timeout=2000)
    x = int(chart.hover_x)
    assert chart.hover_text().splitlines()[1] == f"r: {10.0 ** (-x / 20):.4g}"

    chart.log_check.click()
    assert not chart.plot.ctrl.logYCheck.isChecked() and chart.log_note.text() == ""
    chart.plot_widget.grab()
    lo, hi = vb.viewRange()[1]
    assert lo <= -1.0 and hi >= 10.0 ** (-0.05)


def test_a_flat_curve_on_a_log_axis_keeps_a_readable_frame(qtbot):
    chart = MetricChart("Learning rate", "lr", log_y=True)
    qtbot.addWidget(chart)
    chart.set_curve("r", "r", "#000000", Curve(series_of(np.arange(1.0, 41.0), np.full(40, 3e-4), "lr"), "lr"))
    shown(qtbot, chart)
    lo, hi = chart.plot.getViewBox().viewRange()[1]
    assert lo < np.log10(3e-4) < hi and hi - lo >= 0.01 * 0.99, (lo, hi)
    chart.log_check.click()  # back to linear: the frame is in value units again, around 3e-4
    chart.plot_widget.grab()
    lo, hi = chart.plot.getViewBox().viewRange()[1]
    assert lo < 3e-4 < hi and hi - lo < 0.2 * 3e-4, (lo, hi)



def test_building_a_chart_opens_no_window_of_its_own(qtbot):
    # The log-y box was made visible before it had a parent: for a moment it was a top-level window of its own,
    # which took the focus from the main window (keyboard shortcuts then stopped reaching it).
    from PySide6.QtWidgets import QApplication, QWidget

    main = QWidget()
    qtbot.addWidget(main)
    main.show()
    main.activateWindow()
    qtbot.waitUntil(lambda: QApplication.activeWindow() is main)
    chart = MetricChart("loss", "loss")
    qtbot.addWidget(chart)
    qtbot.wait(50)
    assert QApplication.activeWindow() is main
    assert chart.log_check.parent() is not None and not chart.log_check.isWindow()
