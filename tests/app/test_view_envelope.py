"""Views that load what they draw: a long run's charts hold about a bucket per pixel column, not its points,
refine to the points themselves when zoomed in, and still show what streams in. Offscreen, on a real store."""

from __future__ import annotations

import numpy as np

from app.gui.compare_view import CompareView
from app.gui.run_view import RunView
from core.series import ema
from core.window import lead_in_points
from tests.app.run_feed import StoreFeeder, create_run, metric

WAIT_MS = 20_000
N = 50_000


def held(chart, run_key) -> int:
    """Values the chart's curves of a run hand to pyqtgraph (raw polyline and smoothed line, every attempt)."""
    return sum(item.xData.size for key, item in chart._curves.items() if key[0] == run_key and item.xData is not None)


def long_run(store, run_id: str, n: int = N) -> StoreFeeder:
    create_run(store, run_id, status="running", job_id="1")
    feed = StoreFeeder(store, run_id)
    for lo in range(1, n + 1, 10_000):
        feed.metrics(range(lo, min(n, lo + 9_999) + 1))
    return feed


def test_a_long_run_view_holds_what_it_draws_refines_on_zoom_and_shows_streamed_points(qtbot, store):
    feed = long_run(store, "big")
    view = RunView(store, "big")
    qtbot.addWidget(view)
    view.resize(1200, 800)
    view.show()
    qtbot.waitUntil(lambda: view.loaded, timeout=WAIT_MS)
    chart = view.charts["loss"]
    buckets = view.curves["loss"].data.buckets
    assert view.point_count() == N  # every point is accounted for by the envelope...
    assert 0 < held(chart, "big") <= 3 * buckets < N / 10  # ...but the chart holds per bucket, not per point
    assert not view.curves["loss"].data.exact

    # zoom into 400 steps: the chart reads again and holds the points themselves in the visible range
    chart.plot.setXRange(20_000, 20_400, padding=0)
    qtbot.waitUntil(lambda: view.curves["loss"].data.exact and view.curves["loss"].data.x_range is not None,
                    timeout=WAIT_MS)
    raw = chart._curves[("big", 1, "raw")]
    visible = (raw.xData >= 20_000) & (raw.xData <= 20_400)
    np.testing.assert_array_equal(raw.xData[visible], np.arange(20_000, 20_401))
    np.testing.assert_allclose(raw.yData[visible], [metric(s)["loss"] for s in range(20_000, 20_401)])
    # smoothing over the exact points means what it meant: the EMA of the whole run (the lead-in before the
    # range makes the earlier points weigh under 1e-3 of the data's range)
    weight = view.curves["loss"].smoothing
    assert lead_in_points(weight) > 0
    smooth = chart._curves[("big", 1, "smooth")]
    whole = ema(np.array([metric(s)["loss"] for s in range(1, N + 1)]), weight)
    shown = (smooth.xData >= 20_000) & (smooth.xData <= 20_400)
    np.testing.assert_allclose(smooth.yData[shown], whole[19_999:20_400], atol=1e-3 * np.ptp(whole[19_000:21_000]))
    assert held(chart, "big") < 10 * 800  # the zoomed read stays bounded too (pan margins and lead-in included)

    # back to the whole run, then a streamed point appears at once, and the next read folds it in
    chart.plot.enableAutoRange(x=True)
    qtbot.waitUntil(lambda: view.curves["loss"].data.x_range is None, timeout=WAIT_MS)
    reads = view.feed.reads
    feed.metrics([N + 1])
    view.watcher.notify("big")
    qtbot.waitUntil(lambda: view.point_count() == N + 1, timeout=WAIT_MS)
    qtbot.waitUntil(lambda: chart._curves[("big", 1, "raw")].xData[-1] == N + 1, timeout=WAIT_MS)
    qtbot.waitUntil(lambda: view.feed.reads > reads and view.window.tail_rows == 0, timeout=WAIT_MS)
    assert view.point_count() == N + 1 and chart._curves[("big", 1, "raw")].xData[-1] == N + 1
    assert held(chart, "big") <= 3 * view.curves["loss"].data.buckets
    view.close()


def test_a_resumed_long_run_keeps_the_latest_attempt_rule_in_its_envelope(qtbot, store):
    feed = long_run(store, "res", 20_000)
    feed.metrics(range(15_001, 20_001), attempt=2)  # resumed from step 15,000: attempt 2 wins 15,001-20,000
    view = RunView(store, "res")
    qtbot.addWidget(view)
    view.resize(1200, 800)
    view.show()
    qtbot.waitUntil(lambda: view.loaded, timeout=WAIT_MS)
    chart = view.charts["loss"]
    assert chart._curves[("res", 1, "raw")].xData.max() <= 15_000
    assert chart._curves[("res", 2, "raw")].xData.min() == 15_001
    assert view.point_count() == 20_000
    view.close()


def test_compare_of_long_runs_holds_bounded_data_per_run(qtbot, store):
    run_ids = [f"c{i}" for i in range(4)]
    for run_id in run_ids:
        long_run(store, run_id, 20_000)
    view = CompareView(store, run_ids)
    qtbot.addWidget(view)
    view.resize(1200, 800)
    view.show()
    qtbot.waitUntil(lambda: view.is_drawn(), timeout=WAIT_MS)
    # every metric of the grid holds bounded data per run (the grid reads all four with one picture)
    for field_name, chart in view.charts.items():
        for run_id in run_ids:
            run = view._runs[run_id]
            assert run.window.points(field_name) == 20_000
            assert 0 < held(chart, run_id) <= 3 * run.curves[field_name].data.buckets < 20_000 / 5
    for run_id in run_ids:
        assert view.data.runs[run_ids.index(run_id)].summary["steps"] == 20_000
    view.close()


def test_charts_following_the_whole_run_share_one_read_and_a_small_resize_reads_nothing_again(qtbot, store):
    from app.gui.chart_feed import ZOOM_DEBOUNCE_MS, ChartFeed

    long_run(store, "one", 20_000)
    calls: list[tuple] = []
    view = RunView(store, "one")
    qtbot.addWidget(view)
    view.resize(1200, 800)
    view.show()
    qtbot.waitUntil(lambda: view.loaded, timeout=WAIT_MS)
    # the four charts (their widths differ by their y-axis labels) were read once, at one resolution: the
    # widest laid-out chart's, not a width from before the layout
    widths = [chart.plot.getViewBox().width() for chart in view.charts.values()]
    data = [view.curves[f].data for f in view.charts]
    assert view.feed.reads == 1 and len({d.buckets for d in data}) == 1
    assert int(max(widths)) <= data[0].buckets <= 1.1 * max(widths)
    # a window a little narrower: the whole-run envelope still serves every chart (within RESOLUTION_SLACK)
    original = ChartFeed.request

    def counting(feed, force=False):
        calls.append((feed is view.feed, force))
        return original(feed, force)

    ChartFeed.request = counting
    try:
        view.resize(1100, 800)
        qtbot.wait(ZOOM_DEBOUNCE_MS * 3)
        assert any(mine for mine, _force in calls)  # the range change asked...
        assert view.feed.reads == 1 and not view.feed._worker  # ...and nothing needed reading
    finally:
        ChartFeed.request = original
    view.close()
