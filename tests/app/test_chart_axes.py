"""Switching a run's x-axis while points stream in never leaves a chart blank: every curve holds the data of
the chosen axis and every chart's view range covers it (a defect seen once: blank charts, range stuck at
0-110,000 after switching to wall time, blank again after switching back)."""

from __future__ import annotations

import os

import numpy as np
import pytest

from app.gui.run_view import METRICS, RunView
from core.series import X_AXES
from tests.app.run_feed import StoreFeeder, create_run, metric

WAIT_MS = 10_000
REPEATS = int(os.environ.get("TUNEDECK_AXIS_REPEATS", "2"))  # 50 in a row: TUNEDECK_AXIS_REPEATS=50
STEPS_PER_SWITCH = 7


def expected_x(axis: str, steps: np.ndarray) -> np.ndarray:
    rows = [metric(int(s)) for s in steps]
    if axis == "wall_time":
        return np.array([r["t"] for r in rows]) - metric(1)["t"]
    return np.array([r[axis] for r in rows], dtype=float)


def drawn_on(chart, key: tuple, want: np.ndarray) -> bool:
    """Does the chart draw `want` as the x of curve `key` (its data is read off the UI thread)?"""
    item = chart._curves.get(key)
    full = getattr(item, "full_data", None) if item is not None else None
    return full is not None and full[0].shape == want.shape and bool(np.allclose(full[0], want))


def check_chart(chart, axis: str, steps: np.ndarray) -> None:
    want = expected_x(axis, steps)
    chart.plot_widget.grab()  # a paint: pyqtgraph applies a pending auto-range then
    x_lo, x_hi = chart.plot.getViewBox().viewRange()[0]
    y_lo, y_hi = chart.plot.getViewBox().viewRange()[1]
    shown = [item for key, item in chart._curves.items() if key[2] == "smooth"]
    assert shown, chart.objectName()
    for item in shown:
        x, y = item.full_data
        np.testing.assert_allclose(x, want, err_msg=f"{chart.objectName()} on {axis}")
        assert np.isfinite(item.xData).all()
        # the range covers the data and is not much wider than it (a stale range from another axis is)
        span = max(want[-1] - want[0], 1e-9)
        assert x_lo <= want[0] + 1e-9 and want[-1] - 1e-9 <= x_hi, (chart.objectName(), axis, (x_lo, x_hi), want[[0, -1]])
        assert x_hi - x_lo < 3 * span, (chart.objectName(), axis, (x_lo, x_hi), want[[0, -1]])
        finite = y[np.isfinite(y)]
        if chart.log_y:
            finite = np.log10(finite[finite > 0])
        assert y_lo <= finite.min() + 1e-9 and finite.max() - 1e-9 <= y_hi, (chart.objectName(), axis, (y_lo, y_hi))


@pytest.mark.parametrize("repeat", range(REPEATS))
def test_switching_the_x_axis_while_points_stream_keeps_every_curve_drawn_and_in_range(qtbot, store, repeat):
    create_run(store, "r1", job_id="1")
    feed = StoreFeeder(store, "r1")
    feed.metrics(range(1, 11))
    view = RunView(store, "r1")
    qtbot.addWidget(view)
    view.resize(1200, 800)
    view.show()
    qtbot.waitUntil(lambda: view.loaded and view.point_count() == 10, timeout=WAIT_MS)
    last = 10
    order = list(X_AXES) + list(reversed(X_AXES))
    for axis in order * 2:
        feed.metrics(range(last + 1, last + 1 + STEPS_PER_SWITCH))  # points arrive as the axis changes
        view.x_combo.setCurrentIndex(view.x_combo.findData(axis))
        last += STEPS_PER_SWITCH
        qtbot.waitUntil(lambda last=last: view.point_count() == last, timeout=WAIT_MS)
        for field_name, _title, _y in METRICS:
            want = expected_x(axis, np.arange(1, last + 1))
            qtbot.waitUntil(lambda c=view.charts[field_name], w=want: drawn_on(c, ("r1", 1, "smooth"), w),
                            timeout=WAIT_MS)
            check_chart(view.charts[field_name], axis, np.arange(1, last + 1))
    view.close()
