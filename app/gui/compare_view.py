"""Comparing any number of runs: overlaid smoothed curves, a metrics table, pass@1 bars, a config diff.

Every compared run is a subscription of the app's StoreWatcher (one background thread for every view) for its
status, evaluations and the metric rows logged since the view opened; the curves hold no more than they draw:
a ChartFeed (app.gui.chart_feed) reads each run's envelope of the visible range from the store off the UI
thread (core.window.WindowCurve), with the run's summary (core.store.RunSummary, kept by ingest) for the
metrics table; live runs update as they stream. The widget only renders; the diff logic
lives in core.configdiff.
"""

from __future__ import annotations

import csv
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QBrush, QColor, QFont, QIcon, QPixmap
from PySide6.QtWidgets import (
    QAbstractItemView,
    QCheckBox,
    QComboBox,
    QFrame,
    QGridLayout,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QListWidget,
    QListWidgetItem,
    QPushButton,
    QScrollArea,
    QSizePolicy,
    QSlider,
    QSplitter,
    QTableWidget,
    QTableWidgetItem,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from app.gui.chart_feed import ChartFeed
from app.gui.charts import RUN_COLORS, UNCONFINED_COLOR, BarChart, ChartWidget, MetricChart, PassAtOneChart
from app.gui.run_view import (
    DEFAULT_SMOOTHING,
    METRICS,
    UNSMOOTHED,
    add_export_actions,
    export_button,
    select_data,
)
from app.gui.store_watch import RunBatch, StoreWatcher
from app.gui.theme import set_title_font
from app.gui.ui_steps import ui_steps
from app.gui.workers import Worker
from core.configdiff import diff, format_value
from core.names import display_names
from core.records import SUBSETS
from core.series import X_AXES, X_LABELS, EvalProgress, best_pass_at_1, pass_at_1_points, unconfined_best
from core.store import RunRow, Store
from core.window import RunWindow, StepAxes, WindowCurve, read_step_axes

log = logging.getLogger(__name__)

# A chart's curves for runs new to it are created for at most this long per event-loop turn (each run's items
# cost the UI thread ~3-4 ms: 10 runs of one chart in one turn, then its paint, made a ~55 ms stall; a comparison
# has no cap on its runs).
DRAW_BUDGET_S = 0.015


@dataclass(frozen=True)
class RunData:
    """One compared run as the table, the bars and the diff show it."""

    run_id: str
    name: str
    status: str
    color: str
    config: dict[str, Any]
    summary: dict[str, Any]  # core.store.RunSummary.as_dict, best_pass_at_1 from the evaluations held
    evals: tuple[dict[str, Any], ...]
    unconfined: frozenset[tuple[int, int]] = frozenset()  # (attempt, step) evaluated unconfined
    shown: str = ""  # the display name: unique among the compared runs (core.names.display_names)


@dataclass(frozen=True)
class CompareData:
    runs: tuple[RunData, ...]
    missing: tuple[str, ...]  # run ids no longer in the store


class _Compared:
    """What the view holds for one compared run: its subscription, series, curve, evaluations and latest row."""

    def __init__(self, run_id: str, color: str, x_axis: str, smoothing: float):
        self.run_id = run_id
        self.color = color
        self.sub_id = 0
        self.loaded = False
        self.missing = False
        self.watch_rowid = -1  # where the watcher's metric rows start (its first batch)
        self.row: RunRow | None = None
        self.evals: tuple[dict[str, Any], ...] = ()
        self.progress = EvalProgress()  # which evaluations ran unconfined
        self.window = RunWindow(run_id)
        # one curve per metric of the grid (lr is never smoothed)
        self.curves = {f: WindowCurve(self.window, f, x_axis, 0.0 if f in UNSMOOTHED else smoothing)
                       for f, _t, _y in METRICS}
        self.step_axes: StepAxes | None = None  # where its steps lie on the other x-axes (checkpoints)

    def summary(self) -> dict[str, Any]:
        """The store's summary of the run (its latest read), with the best pass@1 of the evaluations held."""
        data = next(iter(self.window.data.values()), None)
        held = data.summary.as_dict() if data is not None and data.summary is not None else \
            {"run_id": self.run_id, "steps": None, "final_loss": None, "tokens": None, "wall_time_s": None,
             "metric_points": 0}
        return {**held, "best_pass_at_1": best_pass_at_1(self.evals)}

    def last_step(self) -> int | None:
        data = next(iter(self.window.data.values()), None)
        tail = self.window.tail_series(0).last_step
        steps = [s for s in (data.summary.steps if data is not None and data.summary is not None else None, tail)
                 if s is not None]
        return max(steps) if steps else None

    def data(self, shown: str) -> RunData:
        assert self.row is not None
        return RunData(self.run_id, self.row.name, self.row.status, self.color, self.row.config(),
                       self.summary(), self.evals, frozenset(self.progress.unconfined), shown)


def compare_color(index: int) -> str:
    """The palette's colours first, then evenly spaced hues: no two compared runs share a colour."""
    if index < len(RUN_COLORS):
        return RUN_COLORS[index]
    k = index - len(RUN_COLORS)
    return QColor.fromHsvF((0.11 + 0.618034 * k) % 1.0, 0.7 - 0.15 * (k % 3) / 2, 0.85 - 0.1 * (k % 2)).name()


def _swatch(color: str) -> QIcon:
    pix = QPixmap(12, 12)
    pix.fill(QColor(color))
    return QIcon(pix)


def _fmt(value: Any, kind: str) -> str:
    if value is None:
        return "—"
    if kind == "loss":
        return f"{value:.4f}"
    if kind == "int":
        return f"{int(value):,}"
    if kind == "time":
        seconds = int(value)
        h, rem = divmod(seconds, 3600)
        m, s = divmod(rem, 60)
        return f"{h}:{m:02d}:{s:02d}"
    if kind == "pct":
        return f"{100 * value:.1f}"
    return str(value)


class CompareView(QWidget):
    """The main window opens it as `CompareView(store, run_ids, parent, watcher=its watcher)`; without a
    watcher the view starts its own."""

    data_loaded = Signal(object)  # CompareData, once rendered and drawn (again after every live update)

    def __init__(self, store: Store, run_ids: list[str], parent: QWidget | None = None, *,
                 watcher: StoreWatcher | None = None):
        super().__init__(parent)
        self.setObjectName("compare_view")
        self.store = store
        self.run_ids = list(dict.fromkeys(run_ids))  # no cap on how many; duplicates ignored
        self.data: CompareData | None = None
        self.x_axis = "step"
        self.hidden: set[str] = set()
        self._runs: dict[str, _Compared] = {}
        self._config_key: tuple = ()
        self._bar_items: list[Any] = []
        self._closed = False
        # What a render left to draw, in order: ("curves", field) per metric chart, ("pass", benchmark) per
        # pass@1 chart; drawn one per event-loop turn (_draw_next), then data_loaded. 10 runs x 4 metrics of
        # pyqtgraph items created in one turn held the UI thread ~300 ms when a comparison of long runs opened.
        self._due: dict[tuple[str, str], None] = {}
        self._build()
        self._windows: dict[str, RunWindow] = {}
        self._reframe_pending: set[str] = set()
        self._step_axes_workers: dict[str, Worker] = {}
        self.feed = ChartFeed(store, self._windows, self.charts, lambda: self.x_axis, self._weight, self,
                              extra_fields=tuple(f for f, _t, _y in METRICS))
        self.feed.applied.connect(self._on_feed_applied)
        self.feed.chart_redrawn.connect(self._on_feed_chart_redrawn)
        self.feed.failed.connect(lambda msg: self.state_label.setText(f"Could not read the runs: {msg}"))
        self._own_watcher = watcher is None
        self.watcher = watcher if watcher is not None else StoreWatcher(store, parent=self)
        self.watcher.failed.connect(self._on_watch_failed)
        self.reload()

    def _weight(self, field_name: str) -> float:
        return 0.0 if field_name in UNSMOOTHED else self.smoothing_slider.value() / 100

    # ------------------------------------------------------------------ layout

    def _build(self) -> None:
        self.title_label = QLabel(f"Comparing {len(self.run_ids)} runs")
        set_title_font(self.title_label)
        self.state_label = QLabel("loading…")
        self.state_label.setStyleSheet("color: palette(placeholder-text);")
        refresh = QPushButton("Refresh")
        refresh.clicked.connect(self.reload)
        self.export_button = export_button(self, self.exportable_charts)
        header = QHBoxLayout()
        header.addWidget(self.title_label)
        header.addSpacing(12)
        header.addWidget(self.state_label)
        header.addStretch(1)
        header.addWidget(refresh)
        header.addWidget(self.export_button)

        self.legend_list = QListWidget()
        self.legend_list.setObjectName("compare_runs")
        self.legend_list.setToolTip("Untick a run to hide it from the charts")
        self.legend_list.itemChanged.connect(self._on_legend_item_changed)
        self.legend_list.setMaximumWidth(340)  # wide enough for a run id (20261125-230816-ab4d2e) beside its status

        # curves: every metric at once, a grid of charts sharing the run list on the left as their legend
        self.x_combo = QComboBox()
        for axis in X_AXES:
            self.x_combo.addItem(X_LABELS[axis], axis)
        self.x_combo.currentIndexChanged.connect(lambda _i: self.set_x_axis(self.x_combo.currentData()))
        self.smoothing_slider = QSlider(Qt.Orientation.Horizontal)
        self.smoothing_slider.setRange(0, 99)
        self.smoothing_slider.setValue(int(DEFAULT_SMOOTHING * 100))
        self.smoothing_slider.setFixedWidth(160)
        self.smoothing_label = QLabel(f"{DEFAULT_SMOOTHING:.2f}")
        self.smoothing_slider.valueChanged.connect(self._on_smoothing_changed)
        controls = QHBoxLayout()
        for label, widget in (("X axis:", self.x_combo), ("Smoothing:", self.smoothing_slider)):
            controls.addWidget(QLabel(label))
            controls.addWidget(widget)
            controls.addSpacing(10)
        controls.addWidget(self.smoothing_label)
        controls.addStretch(1)
        controls.addWidget(QLabel("Legend: the run list on the left (untick a run to hide it everywhere)"))
        # The grid's charts are built one per event-loop turn (_build_next), in slots that keep their cells: the
        # metric charts, then an empty pass@1 chart per benchmark as soon as the runs' evaluations name it, so the
        # grid is laid out before curves are drawn (a pass@1 chart added later re-laid out and repainted every
        # chart of the grid with its curves). All built in one turn, they held the UI thread ~130 ms.
        self.charts: dict[str, MetricChart] = {}
        self.pass_charts: dict[str, PassAtOneChart] = {}
        self._pass_unplaced: dict[str, PassAtOneChart] = {}  # built, not in the grid yet
        self._pass_slots: dict[str, PassAtOneChart] = {}  # in the grid, not drawn yet
        self._chart_slots: dict[str, QWidget] = {}
        self.chart_grid = QGridLayout()
        self.chart_grid.setSpacing(6)
        for i, (field_name, title, _y_label) in enumerate(METRICS):
            slot = QLabel(f"{title}…")
            slot.setAlignment(Qt.AlignmentFlag.AlignCenter)
            slot.setMinimumSize(260, 200)
            slot.setStyleSheet("color: palette(placeholder-text);")
            slot.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)
            self._chart_slots[field_name] = slot
            self.chart_grid.addWidget(slot, i // 2, i % 2)
        # rows and columns share the grid evenly whatever their widgets' size hints: a chart replacing its slot
        # moves no other chart (a re-layout resizes and repaints every chart built so far)
        for k in range(2):
            self.chart_grid.setRowStretch(k, 1)
            self.chart_grid.setColumnStretch(k, 1)
        ui_steps().add(self, "build", self._build_next)
        grid_host = QWidget()
        grid_host.setLayout(self.chart_grid)
        scroll = QScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setFrameShape(QFrame.Shape.NoFrame)
        scroll.setWidget(grid_host)
        curves = QWidget()
        curves_layout = QVBoxLayout(curves)
        curves_layout.setContentsMargins(0, 4, 0, 0)
        curves_layout.addLayout(controls)
        curves_layout.addWidget(scroll, 1)

        # metrics table and pass@1 bars
        self.metrics_table = QTableWidget(0, 0)
        self.metrics_table.setObjectName("metrics_table")
        self.metrics_table.verticalHeader().hide()
        self.metrics_table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.metrics_table.setAlternatingRowColors(True)
        self.metrics_table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.bar_chart = BarChart("Best pass@1 per subset", "pass@1 (%)", x_label="benchmark / subset")
        self.bar_chart.plot.setYRange(0, 100)
        self.bar_chart.plot.showGrid(x=False, y=True, alpha=0.15)
        self.bar_chart.plot.setMouseEnabled(x=False, y=False)
        add_export_actions(self, self.bar_chart, self.export_bars_csv)
        numbers = QSplitter(Qt.Orientation.Vertical)
        numbers.addWidget(self.metrics_table)
        numbers.addWidget(self.bar_chart)
        numbers.setSizes([220, 420])

        # config diff
        self.diff_only_check = QCheckBox("Differences only")
        self.diff_only_check.setChecked(True)
        self.diff_only_check.toggled.connect(lambda _on: self._fill_diff())
        self.diff_count_label = QLabel("")
        self.diff_count_label.setStyleSheet("color: palette(placeholder-text);")
        self.diff_table = QTableWidget(0, 0)
        self.diff_table.setObjectName("config_diff")
        self.diff_table.verticalHeader().hide()
        self.diff_table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.diff_table.setWordWrap(False)
        diff_page = QWidget()
        diff_layout = QVBoxLayout(diff_page)
        diff_layout.setContentsMargins(0, 4, 0, 0)
        row = QHBoxLayout()
        row.addWidget(self.diff_only_check)
        row.addStretch(1)
        row.addWidget(self.diff_count_label)
        diff_layout.addLayout(row)
        diff_layout.addWidget(self.diff_table, 1)

        self.tabs = QTabWidget()
        self.tabs.setDocumentMode(True)
        self.tabs.addTab(curves, "Curves")
        self.tabs.addTab(numbers, "Metrics && pass@1")
        self.tabs.addTab(diff_page, "Config diff")

        body = QSplitter(Qt.Orientation.Horizontal)
        body.addWidget(self.legend_list)
        body.addWidget(self.tabs)
        body.setStretchFactor(1, 1)
        body.setSizes([300, 1100])
        layout = QVBoxLayout(self)
        layout.setContentsMargins(10, 8, 10, 8)
        layout.addLayout(header)
        layout.addWidget(body, 1)

    def closeEvent(self, event: Any) -> None:
        self.shutdown()
        super().closeEvent(event)

    def shutdown(self) -> None:
        """Stop feeding this view (its own watcher, if it has one, stops)."""
        self._closed = True
        ui_steps().discard(self)
        for chart in self._pass_unplaced.values():  # built, never given a parent
            chart.deleteLater()
        self._pass_unplaced.clear()
        self.feed.close()
        for run in self._runs.values():
            self.watcher.unwatch(run.sub_id)
        if self._own_watcher:
            self.watcher.stop()

    @property
    def curve_chart(self) -> MetricChart:
        """The loss chart (built in the first turn after the view is created)."""
        return self.charts["loss"]

    def charts_built(self) -> bool:
        return len(self.charts) == len(METRICS)

    def _build_next(self) -> None:
        """Build the next chart of the grid, then the next one in the next event-loop turn."""
        if self._closed:
            return
        pending = [m for m in METRICS if m[0] not in self.charts]
        if pending:
            self._build_metric_chart(*pending[0])
        elif self._pass_unplaced:  # placed a turn after it is built: placing it re-lays out the grid
            bench = next(iter(self._pass_unplaced))
            self._pass_slots[bench] = self._place_pass_chart(self._pass_unplaced.pop(bench))
        else:
            new = [b for b in self._known_benchmarks() if b not in self.pass_charts and b not in self._pass_slots]
            if not new:
                return
            self._pass_unplaced[new[0]] = self._new_pass_chart(new[0])
        ui_steps().add(self, "build", self._build_next)

    def _build_metric_chart(self, field_name: str, title: str, y_label: str) -> None:
        chart = MetricChart(title, y_label)
        chart.setMinimumSize(260, 200)
        chart.set_x_label(X_LABELS[self.x_axis])
        chart.set_show_raw(False)  # overlays show smoothed curves only: raw noise hides the comparison
        chart.legend.hide()  # one legend for the grid: the run list
        add_export_actions(self, chart)
        slot = self._chart_slots.pop(field_name)
        self.chart_grid.replaceWidget(slot, chart)
        slot.deleteLater()
        self.charts[field_name] = chart
        self.feed.watch_chart(chart)
        if len(self.charts) == 1:
            # the first picture: one read of every metric for every run (the feed reads them all with the first
            # chart's; the charts built next are served by it), in the next turn: at the width it is laid out to
            ui_steps().add(self, "first picture", lambda: self.feed.request(force=True))
        elif self.data is not None:  # built after the first picture: draw its curves
            self._due[("curves", field_name)] = None
            ui_steps().add(self, "draw", self._draw_next)

    def _known_benchmarks(self) -> list[str]:
        """Benchmarks the shown runs' evaluations name (before the first picture too)."""
        return sorted({e["benchmark"] for r in self._runs.values() if r.run_id not in self.hidden for e in r.evals})

    def _new_pass_chart(self, bench: str) -> PassAtOneChart:
        """A pass@1 chart, not in the grid yet (no parent: shown only once placed)."""
        chart = PassAtOneChart(bench)
        chart.setMinimumSize(260, 200)
        chart.legend.hide()
        add_export_actions(self, chart)
        return chart

    def _place_pass_chart(self, chart: PassAtOneChart) -> PassAtOneChart:
        n = len(METRICS) + len(self.pass_charts) + len(self._pass_slots)
        self.chart_grid.addWidget(chart, n // 2, n % 2)
        self.chart_grid.setRowStretch(n // 2, 1)
        chart.show()
        return chart

    def exportable_charts(self) -> list[tuple[str, ChartWidget, Any]]:
        out: list[tuple[str, ChartWidget, Any]] = [(title, self.charts[f], None) for f, title, _ in METRICS
                                                   if f in self.charts]
        out += [(f"{b} pass@1", c, None) for b, c in self.pass_charts.items()]
        return [*out, ("pass@1 bars", self.bar_chart, self.export_bars_csv)]

    # ------------------------------------------------------------------ data

    def reload(self) -> None:
        """Read every compared run again from its start (the Refresh button); live updates need no reload."""
        for run in self._runs.values():
            self.watcher.unwatch(run.sub_id)
        weight = self.smoothing_slider.value() / 100
        self._runs = {run_id: _Compared(run_id, compare_color(i), self.x_axis, weight)
                      for i, run_id in enumerate(self.run_ids)}
        self._windows.clear()
        self._windows.update({run.run_id: run.window for run in self._runs.values()})
        self._reads_seen = self.feed.reads
        self.feed.request(force=True)
        for run in self._runs.values():
            for chart in self.charts.values():
                chart.clear_run(run.run_id)
            run.sub_id = self.watcher.watch(run.run_id, self._on_batch, log_text=False, metric_history=False)

    def _on_watch_failed(self, run_id: str, message: str) -> None:
        if run_id in self._runs or not run_id:
            self.state_label.setText(f"Could not read the runs: {message}")

    def _on_batch(self, batch: RunBatch) -> None:
        run = self._runs.get(batch.run_id)
        if self._closed or run is None or run.sub_id != batch.sub_id:
            return  # a batch of a subscription replaced by a reload
        run.loaded = True
        run.missing = batch.missing
        if batch.first:
            run.watch_rowid = batch.metric_rowid
        if batch.run is not None:
            run.row = batch.run
        if batch.evals is not None:
            run.evals = batch.evals
            ui_steps().add(self, "build", self._build_next)  # an empty pass@1 chart for a benchmark new to the grid
        if batch.events:
            run.progress.apply(batch.events)
        grew = batch.metrics is not None and run.window.extend(batch.metrics)
        if grew:
            self.feed.data_changed(urgent=run.window.needs_refresh)
        self._render(grew, batch.run is not None, batch.evals is not None or bool(batch.events))

    def _on_feed_applied(self) -> None:
        if self._closed:
            return
        if any(r.window.data and min(d.rowid for d in r.window.data.values()) < r.watch_rowid
               for r in self._runs.values()):
            self.feed.request(force=True)  # read before a watcher started: rows between would be missing
        self._render(True, False, False)

    def _on_feed_chart_redrawn(self, field_name: str) -> None:
        if field_name in self._reframe_pending and \
                all(r.curves[field_name].data is not None for r in self._runs.values() if r.window.data):
            self.charts[field_name].reframe_x()  # the new axis' data is drawn: frame it
            self._reframe_pending.discard(field_name)

    def _render(self, grew: bool, run_changed: bool, evals_changed: bool) -> None:
        if not all(r.loaded for r in self._runs.values()) or self.feed.reads <= self._reads_seen:
            return  # the first picture waits for every run and the first read of the curves
        first = self.data is None
        present = [r for r in self._runs.values() if r.row is not None and not r.missing]
        names = display_names([r.row for r in present])  # unique among the compared runs
        self.data = CompareData(tuple(r.data(names[r.run_id]) for r in present),
                                tuple(r.run_id for r in self._runs.values() if r.missing or r.row is None))
        text = f"{len(self.data.runs)} runs"
        if self.data.missing:
            text += f" ({len(self.data.missing)} deleted: {', '.join(self.data.missing)})"
        self.state_label.setText(text)
        self._fill_legend()
        # Charts that only get new points for the curves they hold are drawn now; charts that must create items
        # (runs new to them: the first picture, a reload) wait for a turn of their own.
        if first or grew or run_changed:
            shown = [r.run_id for r in self.visible_runs()]
            for field_name, chart in self.charts.items():
                if ("curves", field_name) in self._due or not set(shown) <= set(chart.run_keys()):
                    self._due[("curves", field_name)] = None
                else:
                    self._draw_chart(field_name)
        if first or grew or evals_changed:
            for bench in self._benchmarks():
                if ("pass", bench) in self._due or bench not in self.pass_charts:
                    self._due[("pass", bench)] = None
                else:
                    self._draw_pass_at_1(bench)
        self._fill_metrics()
        self._draw_bars()
        config_key = tuple((r.run_id, r.config_json) for r in (x.row for x in self._runs.values()) if r is not None)
        if config_key != self._config_key:
            self._config_key = config_key
            self._fill_diff()
        if not self._due:
            if self.charts_built():  # else the last chart built draws, then announces
                self.data_loaded.emit(self.data)
        elif not ui_steps().pending(self, "draw"):
            ui_steps().add(self, "draw", self._draw_next)

    def _draw_next(self) -> None:
        """Draw the next chart a render left due; data_loaded once none is left."""
        if self._closed or self.data is None:
            return
        if self._due:
            kind, name = next(iter(self._due))
            if kind == "curves":
                if self._draw_chart(name, DRAW_BUDGET_S):
                    self._due.pop((kind, name), None)
            else:
                self._draw_pass_at_1(name)
        if self._due:
            ui_steps().add(self, "draw", self._draw_next)
        elif self.charts_built():
            self.data_loaded.emit(self.data)

    def is_drawn(self) -> bool:
        """Rendered, and every chart built and drawn (what data_loaded announces)."""
        return self.data is not None and not self._due and self.charts_built()

    # ------------------------------------------------------------------ rendering

    def _fill_legend(self) -> None:
        assert self.data is not None
        self.legend_list.blockSignals(True)
        self.legend_list.clear()
        for run in self.data.runs:
            item = QListWidgetItem(_swatch(run.color), f"{run.shown}\n{run.status} · {run.run_id}")
            item.setData(Qt.ItemDataRole.UserRole, run.run_id)
            item.setToolTip(f"{run.shown}\n{run.status} · {run.run_id}")
            item.setFlags(item.flags() | Qt.ItemFlag.ItemIsUserCheckable)
            item.setCheckState(Qt.CheckState.Unchecked if run.run_id in self.hidden else Qt.CheckState.Checked)
            self.legend_list.addItem(item)
        self.legend_list.blockSignals(False)

    def _on_legend_item_changed(self, item: QListWidgetItem) -> None:
        run_id = item.data(Qt.ItemDataRole.UserRole)
        if item.checkState() == Qt.CheckState.Checked:
            self.hidden.discard(run_id)
        else:
            self.hidden.add(run_id)
        self._draw_curves()
        self._draw_pass_at_1()
        self._draw_bars()

    def visible_runs(self) -> list[RunData]:
        return [r for r in (self.data.runs if self.data else ()) if r.run_id not in self.hidden]

    def _draw_curves(self) -> None:
        """Every metric chart: one smoothed curve per shown run, named by its display name."""
        for field_name in self.charts:
            self._due.pop(("curves", field_name), None)
            self._draw_chart(field_name)

    def _draw_chart(self, field_name: str, budget_s: float | None = None) -> bool:
        """One metric chart's curves; with `budget_s`, the curves of runs new to the chart are created until that
        long has passed (False: runs are left for the next call)."""
        started = time.perf_counter()
        shown = {r.run_id: r for r in self.visible_runs()}
        chart = self.charts[field_name]
        chart.set_x_label(X_LABELS[self.x_axis])
        for run_key in set(chart.run_keys()) - set(shown):
            chart.clear_run(run_key)
        done = True
        for run_id, data in shown.items():
            run = self._runs[run_id]
            if run_id not in chart.run_keys():
                if budget_s is not None and time.perf_counter() - started > budget_s:
                    done = False
                    break
                chart.set_curve(run_id, data.shown, run.color, run.curves[field_name])
            else:
                chart.set_label(run_id, data.shown)
        chart.refresh()
        return done

    def _benchmarks(self) -> list[str]:
        return sorted({e["benchmark"] for r in self.visible_runs() for e in r.evals})

    def _draw_pass_at_1(self, only: str | None = None) -> None:
        """One pass@1 chart per benchmark in the grid (or only the one named): each run's 'all' subset per
        checkpoint in its colour, with 95% intervals, on the chosen x-axis."""
        shown = self.visible_runs()
        benchmarks = [b for b in self._benchmarks() if only is None or b == only]
        for bench in benchmarks:
            self._due.pop(("pass", bench), None)
            chart = self.pass_charts.get(bench)
            if chart is None:
                chart = self._pass_slots.pop(bench, None) or self._place_pass_chart(
                    self._pass_unplaced.pop(bench, None) or self._new_pass_chart(bench))
                self.pass_charts[bench] = chart
            chart.set_x_axis(X_LABELS[self.x_axis], self.x_axis == "step")
            keep = set()
            for data in shown:
                run = self._runs[data.run_id]
                points = pass_at_1_points(data.evals, bench, "all")
                if not points.steps.size:
                    continue
                keep.add((data.run_id, "all"))
                chart.set_subset(data.run_id, data.shown, "all", points.steps, points.values, color=run.color,
                                 low=points.low, high=points.high, n_tasks=points.n_tasks,
                                 x=self._x_of_steps(run, points.steps))
            chart.remove_subsets(keep)

    def _x_of_steps(self, run: _Compared, steps: np.ndarray) -> np.ndarray:
        """A run's checkpoint steps on the chosen x-axis (core.window.StepAxes, read off the UI thread; NaN
        until read)."""
        if self.x_axis == "step":
            return np.asarray(steps, dtype=float)
        held, last = run.step_axes, run.last_step()
        if run.run_id not in self._step_axes_workers and (held is None or held.last_step is None or (
                last is not None and held.last_step < last)):
            store, run_id = self.store, run.run_id
            worker = Worker(lambda _ctx: read_step_axes(store, run_id))
            worker.signals.finished.connect(lambda _rid, axes, r=run: self._on_step_axes(r, axes))
            worker.signals.failed.connect(lambda _rid, msg, r=run: self._on_step_axes(r, None, msg))
            self._step_axes_workers[run.run_id] = worker
            worker.start()
        return held.x_at(steps, self.x_axis) if held is not None else np.full(np.shape(steps), np.nan)

    def _on_step_axes(self, run: _Compared, axes: StepAxes | None, error: str = "") -> None:
        self._step_axes_workers.pop(run.run_id, None)
        if self._closed:
            return
        if axes is None:
            log.warning("run %s: reading where its steps lie on the x-axes failed: %s", run.run_id, error)
            return
        run.step_axes = axes
        self._draw_pass_at_1()

    def _subset_columns(self) -> list[tuple[str, str]]:
        seen: set[tuple[str, str]] = set()
        for run in self.data.runs if self.data else ():
            for bench, subsets in run.summary.get("best_pass_at_1", {}).items():
                seen.update((bench, s) for s in subsets)
        return sorted(seen, key=lambda bs: (bs[0], SUBSETS.index(bs[1]) if bs[1] in SUBSETS else 9, bs[1]))

    def _fill_metrics(self) -> None:
        assert self.data is not None
        subset_cols = self._subset_columns()
        headers = ["Run", "Status", "Steps", "Final loss", "Tokens", "Wall time"] + [
            f"{b} {s}\npass@1 (%)" for b, s in subset_cols]
        table = self.metrics_table
        table.clear()
        table.setColumnCount(len(headers))
        table.setHorizontalHeaderLabels(headers)
        table.setRowCount(len(self.data.runs))
        for i, run in enumerate(self.data.runs):
        # each cell keeps the raw value (UserRole) beside its text, for sorting and for exact checks
            s = run.summary
            cells: list[tuple[str, Any]] = [
                (run.shown, run.name), (run.status, run.status), (_fmt(s.get("steps"), "int"), s.get("steps")),
                (_fmt(s.get("final_loss"), "loss"), s.get("final_loss")), (_fmt(s.get("tokens"), "int"), s.get("tokens")),
                (_fmt(s.get("wall_time_s"), "time"), s.get("wall_time_s"))]
            best = s.get("best_pass_at_1", {})
            flagged = unconfined_best(run.evals, set(run.unconfined)) if run.unconfined else set()
            for bench, subset in subset_cols:
                value = best.get(bench, {}).get(subset)
                cells.append((_fmt(value, "pct") + (" ⚠ unconfined" if (bench, subset) in flagged else ""), value))
            for j, (text, value) in enumerate(cells):
                item = QTableWidgetItem(text)
                item.setData(Qt.ItemDataRole.UserRole, value)
                if j == 0:
                    item.setIcon(_swatch(run.color))
                    item.setToolTip(run.run_id)
                elif j >= 2:
                    item.setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
                if text.endswith("⚠ unconfined"):  # a red badge: this pass@1 came from samples run without a sandbox
                    item.setBackground(QBrush(QColor(UNCONFINED_COLOR)))
                    item.setForeground(QBrush(QColor("white")))
                    item.setToolTip("Measured with evaluation.sandbox: unconfined: the samples ran as the user, "
                                    "with their files and network, and only resource limits around them.")
                table.setItem(i, j, item)
        table.resizeColumnsToContents()
        table.horizontalHeader().setStretchLastSection(False)

    def bar_values(self) -> list[tuple[str, str, str, float]]:
        """(run id, benchmark, subset, best pass@1 in %) for every visible run and subset."""
        out = []
        for run in self.visible_runs():
            for bench, subset in self._subset_columns():
                value = run.summary.get("best_pass_at_1", {}).get(bench, {}).get(subset)
                if value is not None:
                    out.append((run.run_id, bench, subset, 100.0 * value))
        return out

    def _draw_bars(self) -> None:
        plot = self.bar_chart.plot
        for item in self._bar_items:
            plot.removeItem(item)
            self.bar_chart.legend.removeItem(item)
        self._bar_items = []
        categories = self._subset_columns()
        runs = self.visible_runs()
        n = max(1, len(runs))
        width = 0.8 / n
        index = {c: i for i, c in enumerate(categories)}
        hover = []
        for j, run in enumerate(runs):
            xs, heights = [], []
            for run_id, bench, subset, value in self.bar_values():
                if run_id == run.run_id:
                    xs.append(index[(bench, subset)] + (j - (n - 1) / 2) * width)
                    heights.append(value)
            hover.append((run.shown, run.color, {round(x): h for x, h in zip(xs, heights, strict=True)}))
            bars = pg.BarGraphItem(x=xs, height=heights, width=width * 0.92, brush=QBrush(QColor(run.color)),
                                   pen=pg.mkPen(None))
            plot.addItem(bars)
            self.bar_chart.legend.addItem(bars, run.shown)  # pyqtgraph's legend draws a bar item as a filled box
            self._bar_items.append(bars)
        axis = plot.getAxis("bottom")
        axis.setTicks([[(i, f"{b}\n{s}") for i, (b, s) in enumerate(categories)]])
        self.bar_chart.set_bars([f"{b} {s}" for b, s in categories], hover)
        plot.setXRange(-0.6, max(0.6, len(categories) - 0.4), padding=0)
        plot.setYRange(0, 100)

    def export_bars_csv(self, path: str | Path) -> Path:
        path = Path(path)
        names = {r.run_id: r.shown for r in self.visible_runs()}
        with open(path, "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(["run_id", "run", "benchmark", "subset", "pass@1"])
            for run_id, bench, subset, value in self.bar_values():
                writer.writerow([run_id, names[run_id], bench, subset, value])
        return path

    def _fill_diff(self) -> None:
        if self.data is None:
            return
        runs = self.data.runs
        rows = diff([r.config for r in runs], differences_only=self.diff_only_check.isChecked())
        table = self.diff_table
        table.clear()
        table.setColumnCount(1 + len(runs))
        table.setHorizontalHeaderLabels(["Setting", *[r.shown for r in runs]])
        table.setRowCount(len(rows))
        bold = QFont(table.font())
        bold.setBold(True)
        highlight = QColor(255, 196, 0, 60)
        for i, row in enumerate(rows):
            path_item = QTableWidgetItem(row.path)
            if row.differs:
                path_item.setFont(bold)
            table.setItem(i, 0, path_item)
            for j, value in enumerate(row.values):
                item = QTableWidgetItem(format_value(value))
                item.setToolTip(format_value(value))
                if row.differs:
                    item.setBackground(highlight)
                table.setItem(i, 1 + j, item)
        n_diff = sum(1 for r in diff([r.config for r in runs], differences_only=True))
        self.diff_count_label.setText(f"{n_diff} differing settings")
        table.resizeColumnsToContents()
        header = table.horizontalHeader()
        header.setSectionResizeMode(QHeaderView.ResizeMode.Interactive)
        header.setStretchLastSection(True)

    def diff_paths(self) -> list[str]:
        return [self.diff_table.item(i, 0).text() for i in range(self.diff_table.rowCount())]

    # ------------------------------------------------------------------ controls

    def set_x_axis(self, axis: str) -> None:
        if axis == self.x_axis:
            return
        self.x_axis = axis
        select_data(self.x_combo, axis)
        for run in self._runs.values():
            for curve in run.curves.values():
                curve.set_x_axis(axis)
        for chart in self.charts.values():
            chart.plot.enableAutoRange(x=True)  # a range on the old axis means nothing on the new one
        self._reframe_pending = set(self.charts)  # framed on the new axis' data once it is read
        self.feed.request(force=True)
        self._draw_curves()
        for chart in self.charts.values():
            chart.reframe_x()  # new units: frame them (see MetricChart.reframe_x)
        self._draw_pass_at_1()

    def _on_smoothing_changed(self, value: int) -> None:
        self.smoothing_label.setText(f"{value / 100:.2f}")
        for run in self._runs.values():
            for field_name, curve in run.curves.items():
                if field_name not in UNSMOOTHED:
                    curve.set_smoothing(value / 100)
        self._draw_curves()
        self.feed.request()  # a zoomed chart may need a longer lead-in for the new weight
