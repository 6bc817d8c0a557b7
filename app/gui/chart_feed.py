"""Feeding charts what they draw: envelopes of the visible range read off the UI thread, refined on zoom.

A ChartFeed serves the MetricCharts of one view (the run view's four, the comparison's one) for one or more
runs, each a core.window.RunWindow. It reads `Store.metric_envelope` for the range each chart shows, at about
one bucket per pixel column, on a Worker (one read in flight per view; a request made meanwhile waits for it
and asks again once), and hands the results to the windows; the charts are then redrawn one per event-loop turn,
so that no turn redraws and repaints them all. What asks for a read:

- a chart's x range changed by zoom or pan (debounced by ZOOM_DEBOUNCE_MS) and now reaches past what was read,
  or at a resolution more than RESOLUTION_SLACK off;
- rows streamed in (the view calls `data_changed`): they are drawn at once from the tail and folded into a new
  envelope at most every REFRESH_MS, or at once when they redo steps an envelope shows (a resumed attempt);
- the x axis or smoothing changed, the view was shown after missing updates.

Nothing runs while nothing changes: no timer is armed and no thread polls (the app's one StoreWatcher wakes a
view only when its run changed).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from PySide6.QtCore import QObject, QTimer, Signal

from app.gui.charts import MetricChart
from app.gui.ui_steps import ui_steps
from app.gui.workers import Worker
from core.store import Store
from core.window import RunWindow, WindowData, lead_in_points, read_window

log = logging.getLogger(__name__)
# Reads still running, held here (not by their view): a view closed mid-read is deleted with its feed, and a
# worker whose signal object went with it would emit from a pool thread into a deleted object.
_IN_FLIGHT: list[Worker] = []

ZOOM_DEBOUNCE_MS = 120  # a drag or wheel zoom reads once it pauses this long
REFRESH_MS = 1000  # streamed rows are folded into a new envelope at most this often per view
MIN_BUCKETS = 256
MAX_BUCKETS = 8192
PAN_MARGIN = 0.5  # read this share of the visible span beyond each side: a small pan needs no new read
RESOLUTION_SLACK = 1.6  # read again when a bucket grew or shrank by more than this against a pixel


class ChartFeed(QObject):
    """Reads envelopes for `charts` ({field: chart}) of the runs in `windows` ({run_id: RunWindow})."""

    applied = Signal()  # a read was handed to the windows and the charts redrawn
    chart_redrawn = Signal(str)  # field: that chart was redrawn with the read being applied
    failed = Signal(str)  # message

    def __init__(self, store: Store, windows: dict[str, RunWindow], charts: dict[str, MetricChart],
                 x_axis: Callable[[], str], smoothing: Callable[[str], float], parent: QObject | None = None, *,
                 extra_fields: tuple[str, ...] = ()):
        super().__init__(parent)
        self.store = store
        self.windows = windows
        self.charts = charts
        # read with every chart's field (a comparison reads every metric it can switch to: the tiles hold them all,
        # so the read costs about the same, and a switch draws at once)
        self.extra_fields = extra_fields
        self._x_axis = x_axis
        self._smoothing = smoothing
        self.reads = 0  # envelope reads applied (for tests and the benchmark)
        self._worker: Worker | None = None
        self._pending = False
        self._closed = False
        self._x_per_point: dict[str, float] = {}
        self._zoom_timer = QTimer(self, singleShot=True, interval=ZOOM_DEBOUNCE_MS)
        self._zoom_timer.timeout.connect(self.request)
        self._refresh_timer = QTimer(self, singleShot=True, interval=REFRESH_MS)
        self._refresh_timer.timeout.connect(lambda: self.request(force=True))
        self._force = True
        # charts still to redraw with the read just applied: one per event-loop turn (_redraw_next, app.gui.ui_steps).
        # Four charts redrawn and then painted in one turn held the UI thread 100-170 ms when a long run's tab opened.
        self._redraw: list[str] = []
        for chart in charts.values():
            self.watch_chart(chart)

    def watch_chart(self, chart: MetricChart) -> None:
        chart.plot.getViewBox().sigXRangeChanged.connect(lambda *_a: self._on_range_changed())

    def close(self) -> None:
        self._closed = True
        self._zoom_timer.stop()
        self._refresh_timer.stop()
        ui_steps().discard(self)
        self._redraw = []
        if self._worker is not None:
            self._worker.cancel()

    # ------------------------------------------------------------------ what asks for a read

    def _on_range_changed(self) -> None:
        if not self._closed:
            self._zoom_timer.start()

    def data_changed(self, urgent: bool = False) -> None:
        """Rows streamed in: read a new envelope soon (now when `urgent`), never more often than REFRESH_MS."""
        if self._closed:
            return
        if urgent:
            self.request(force=True)
        elif not self._refresh_timer.isActive():
            self._refresh_timer.start()

    def request(self, force: bool = False) -> None:
        """Read what the charts' ranges need (everything again when `force`)."""
        if self._closed:
            return
        self._force = self._force or force
        if self._worker is not None or self._redraw:  # one read at a time, applied before the next starts
            self._pending = True
            return
        plan = self._plan(self._force)
        self._force = False
        if not plan:
            return
        store, x_axis = self.store, self._x_axis()
        run_ids = list(self.windows)
        plan = {want: tuple(dict.fromkeys([*fields, *self.extra_fields])) for want, fields in plan.items()}

        def work(ctx: Any) -> list[WindowData]:
            out = []
            for (x_range, buckets), fields in plan.items():
                for run_id in run_ids:
                    if ctx.cancel.is_set():
                        return out
                    out.append(read_window(store, run_id, fields, x_axis, x_range, buckets))
            return out

        worker = Worker(work)
        worker.signals.finished.connect(self._on_read)  # bound methods: no closure keeps a cycle to the worker
        worker.signals.failed.connect(self._on_failed)
        self._worker = worker
        _IN_FLIGHT[:] = [w for w in _IN_FLIGHT if not w.done.is_set()]
        _IN_FLIGHT.append(worker)
        worker.start()

    # ------------------------------------------------------------------ planning

    def _plan(self, force: bool) -> dict[tuple[tuple[float, float] | None, int], list[str]]:
        """{(x_range, buckets): fields}: the reads the charts need, charts asking the same read grouped."""
        plan: dict[tuple[tuple[float, float] | None, int], list[str]] = {}
        x_axis = self._x_axis()
        for field_name, chart in self.charts.items():
            want = self._wanted(field_name, chart)
            held = [w.data.get(field_name) for w in self.windows.values()]
            if not force and all(d is not None and d.x_axis == x_axis and self._covers(d, want) for d in held):
                continue
            plan.setdefault(want, []).append(field_name)
        # Charts following the whole run are served by one read at the widest one's resolution: charts a few
        # pixels apart in width (their y-axis labels differ) read the same rows once, not once per width.
        whole = [want for want in plan if want[0] is None]
        if len(whole) > 1:
            merged = (None, max(buckets for _x, buckets in whole))
            fields = [f for want in whole for f in plan.pop(want)]
            plan[merged] = fields
        return plan

    def _wanted(self, field_name: str, chart: MetricChart) -> tuple[tuple[float, float] | None, int]:
        vb = chart.plot.getViewBox()
        pixels = max(MIN_BUCKETS, min(MAX_BUCKETS, int(vb.width()) or MIN_BUCKETS))
        if vb.state["autoRange"][0] or not self._has_data(field_name):
            return None, pixels  # following the whole run
        v0, v1 = vb.viewRange()[0]
        span = max(v1 - v0, 1e-9)
        lead = lead_in_points(self._smoothing(field_name)) * self._x_per_point.get(field_name, 1.0)
        r0, r1 = v0 - max(PAN_MARGIN * span, lead), v1 + PAN_MARGIN * span
        buckets = min(MAX_BUCKETS, int(pixels * (r1 - r0) / span))
        points = (r1 - r0) / self._x_per_point.get(field_name, 1.0)
        if points <= MAX_BUCKETS / 2:  # few enough to hold them all: buckets half a point apart hold one each
            buckets = max(buckets, int(2 * points) + 1)
        return (r0, r1), buckets

    def _has_data(self, field_name: str) -> bool:
        return any(w.data.get(field_name) is not None for w in self.windows.values())

    @staticmethod
    def _covers(data: WindowData, want: tuple[tuple[float, float] | None, int]) -> bool:
        """Does `data` already hold what `want` asks, at about the same resolution?"""
        x_range, buckets = want
        if x_range is None:  # the whole run, at about the resolution wanted (a chart resized a little: no read)
            return data.x_range is None and 1 / RESOLUTION_SLACK <= data.buckets / buckets <= RESOLUTION_SLACK
        if data.x_range is None:  # the whole run was read: enough when zoomed out to about the same width
            return False
        (a0, a1), (h0, h1) = x_range, data.x_range
        inside = h0 <= a0 + PAN_MARGIN * (a1 - a0) / (1 + 2 * PAN_MARGIN) and \
            h1 >= a1 - PAN_MARGIN * (a1 - a0) / (1 + 2 * PAN_MARGIN)
        ratio = ((a1 - a0) / buckets) / max((h1 - h0) / data.buckets, 1e-300)
        return inside and 1 / RESOLUTION_SLACK <= ratio <= RESOLUTION_SLACK

    # ------------------------------------------------------------------ results

    def _on_read(self, request_id: int, result: list[WindowData]) -> None:
        if self._worker is None or request_id != self._worker.request_id:
            return
        self._worker = None
        if self._closed:
            return
        x_axis = self._x_axis()
        for data in result:
            window = self.windows.get(data.run_id)
            if window is None or data.x_axis != x_axis:
                continue  # a run no longer compared, or an axis switched meanwhile (a read is pending)
            window.set_data(data)
            if data.x_range is None and data.points:  # the whole run: how far apart its points lie, on x
                for f, segs in data.fields.items():
                    extent = sum(s.x_last[-1] - s.x_first[0] for s in segs if s.x_first.size)
                    if extent > 0:
                        self._x_per_point[f] = extent / data.points
        self._redraw = list(self.charts)
        self._redraw_next()

    def _redraw_next(self) -> None:
        """Redraw the next chart with the read applied; once all are: count the read, announce it, and read
        again if asked meanwhile."""
        if self._closed:
            return
        if self._redraw:
            field_name = self._redraw.pop(0)
            self.charts[field_name].refresh()
            self.chart_redrawn.emit(field_name)
        if self._redraw:
            ui_steps().add(self, "redraw", self._redraw_next)
            return
        self.reads += 1
        self.applied.emit()
        if self._pending or any(w.needs_refresh for w in self.windows.values()):
            self._pending = False
            self.request()

    def _on_failed(self, request_id: int, message: str) -> None:
        if self._worker is not None and request_id == self._worker.request_id:
            self._worker = None
        log.warning("reading chart data failed: %s", message)
        self.failed.emit(message)
