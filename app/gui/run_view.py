"""The live view of one run: training charts, pass@1 per checkpoint, log console, status, cancel, samples.

Data arrives from the app's StoreWatcher (one background thread reading only what is new in the run store) as
frozen RunBatch objects: status, events, evaluations, stdout, and the metric rows logged since the view opened.
The charts hold no more than they draw: a ChartFeed (app.gui.chart_feed) reads each chart's envelope of its
visible range from the store off the UI thread (core.window: the latest-attempt rule, attempts as segments,
what smoothing means over an envelope), and new rows are drawn at once from the window's tail. The run's
evaluation progress (core.series.EvalProgress) computes too; this widget draws.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PySide6.QtCore import Qt, QTimer, Signal
from PySide6.QtGui import QAction, QColor, QTextCursor
from PySide6.QtWidgets import (
    QAbstractItemView,
    QCheckBox,
    QComboBox,
    QFileDialog,
    QFrame,
    QGridLayout,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QMenu,
    QMessageBox,
    QPlainTextEdit,
    QProgressBar,
    QPushButton,
    QSizePolicy,
    QSlider,
    QSplitter,
    QSystemTrayIcon,
    QTableWidget,
    QTableWidgetItem,
    QTabWidget,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from app.gui.chart_feed import ChartFeed
from app.gui.charts import RUN_COLORS, SUBSET_COLORS, ChartWidget, MetricChart, PassAtOneChart
from app.gui.eval_panel import EvaluationsPanel
from app.gui.nodes_panel import NodesPanel
from app.gui.store_watch import RunBatch, StoreWatcher
from app.gui.theme import app_icon, monospace_font, set_title_font, status_color
from app.gui.ui_steps import ui_steps
from app.gui.workers import Worker
from core.evalstate import EVAL_EVENTS, EvalState, derive_eval_states
from core.names import printable
from core.records import SUBSETS, RunPaths
from core.series import (
    X_AXES,
    X_LABELS,
    EvalProgress,
    TrainingProgress,
    pass_at_1_points,
    step_time,
    total_steps,
    training_progress,
    unconfined_pass_at_1,
)
from core.store import TERMINAL_STATUSES, RunRow, Store
from core.window import RunWindow, StepAxes, WindowCurve, read_step_axes

log = logging.getLogger(__name__)

LOG_MAX_BLOCKS = 5000  # console lines kept (the store keeps more; the run dir keeps everything)
DEFAULT_SMOOTHING = 0.6
METRICS = (("loss", "Loss", "loss"), ("lr", "Learning rate", "lr"), ("grad_norm", "Gradient norm", "‖g‖"),
           ("tokens_per_s", "Throughput", "tokens/s"))
UNSMOOTHED = {"lr"}  # a schedule is exact: smoothing it would only lag it
BANNER_STYLES = {
    "info": "background:#ddf4ff; color:#0a3069; border:1px solid #54aeff;",
    "ok": "background:#dafbe1; color:#116329; border:1px solid #4ac26b;",
    "warn": "background:#fff8c5; color:#4d2d00; border:1px solid #d4a72c;",
    "error": "background:#ffebe9; color:#82071e; border:1px solid #ff8182;",
}
EVAL_COLOR = "#9a6700"
PROGRESS_TICK_MS = 1000  # the progress bar's ETA and the elapsed time tick this often, rows or not
EVAL_FAILURES_SHOWN = 3  # the eval-failure strip lists this many (newest steps); older ones are counted


# ---------------------------------------------------------------------------------------------- helpers


def export_chart_dialog(parent: QWidget, chart: ChartWidget, fmt: str,
                        write_csv: Callable[[Path], Any] | None = None) -> Path | None:
    """Ask for a file and export `chart` as PNG, SVG or its data as CSV."""
    title = chart.plot.titleLabel.text or "chart"
    stem = "".join(c if c.isalnum() else "-" for c in title).strip("-").lower() or "chart"
    filters = {"png": "PNG image (*.png)", "svg": "SVG image (*.svg)", "csv": "CSV data (*.csv)"}
    path, _ = QFileDialog.getSaveFileName(parent, f"Export {title}", f"{stem}.{fmt}", filters[fmt])
    if not path:
        return None
    out = Path(path)
    if fmt == "csv":
        (write_csv or chart.export_csv)(out)
    else:
        chart.export_image(out)
    return out


def add_export_actions(parent: QWidget, chart: ChartWidget, write_csv: Callable[[Path], Any] | None = None) -> None:
    """Export entries in the chart's right-click menu (beside pyqtgraph's own)."""
    menu = chart.plot.getViewBox().menu
    menu.addSeparator()
    for fmt, text in (("png", "Export chart as PNG…"), ("svg", "Export chart as SVG…"), ("csv", "Export data as CSV…")):
        action = QAction(text, menu)
        action.triggered.connect(lambda _c=False, f=fmt: export_chart_dialog(parent, chart, f, write_csv))
        menu.addAction(action)


def export_button(parent: QWidget, charts: Callable[[], Sequence[tuple[str, ChartWidget, Any]]]) -> QToolButton:
    """An "Export" toolbar button whose menu lists every chart (PNG / SVG / CSV), rebuilt when opened."""
    button = QToolButton(parent)
    button.setText("Export")
    button.setToolTip("Export a chart as PNG or SVG, or its data as CSV")
    button.setPopupMode(QToolButton.ToolButtonPopupMode.InstantPopup)
    menu = QMenu(button)
    button.setMenu(menu)

    def rebuild() -> None:
        menu.clear()
        for name, chart, write_csv in charts():
            sub = menu.addMenu(name)
            for fmt, text in (("png", "PNG image…"), ("svg", "SVG image…"), ("csv", "Data (CSV)…")):
                sub.addAction(text).triggered.connect(
                    lambda _c=False, ch=chart, f=fmt, w=write_csv: export_chart_dialog(parent, ch, f, w))

    menu.aboutToShow.connect(rebuild)
    return button


def select_data(combo: QComboBox, value: Any) -> None:
    """Show the item whose data is `value` (no signal when it is already shown)."""
    index = combo.findData(value)
    if index != combo.currentIndex():
        combo.setCurrentIndex(index)


class Banner(QFrame):
    """A dismissable in-app message strip (hang warnings, cancel results, finished/failed notices)."""

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.setObjectName("banner")
        layout = QHBoxLayout(self)
        layout.setContentsMargins(10, 6, 6, 6)
        self.label = QLabel()
        self.label.setWordWrap(True)
        self.label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        close = QToolButton()
        close.setText("✕")
        close.setAutoRaise(True)
        close.clicked.connect(self.hide)
        layout.addWidget(self.label, 1)
        layout.addWidget(close, 0, Qt.AlignmentFlag.AlignTop)
        self.kind = ""
        self.hide()

    def show_message(self, text: str, kind: str = "info") -> None:
        self.kind = kind
        self.setStyleSheet(f"QFrame#banner {{ {BANNER_STYLES[kind]} border-radius:4px; }}"
                           f" QLabel {{ {BANNER_STYLES[kind].split(';')[1]}; border:none; background:transparent; }}")
        self.label.setText(text)
        self.show()

    def text(self) -> str:
        return self.label.text()


# ---------------------------------------------------------------------------------------------- samples


def _is_local(row: RunRow) -> bool:
    return (row.backend or "") == "local" or (row.cluster or "") == "local"


def list_sample_files(row: RunRow) -> list[str]:
    """Names of the run's per-sample files (samples/step-N-benchmark.jsonl), oldest step first."""
    if not row.run_dir:
        return []
    samples = f"{row.run_dir}/{RunPaths.SAMPLES}"
    if _is_local(row):
        d = Path(samples)
        names = [p.name for p in d.glob("step-*.jsonl")] if d.is_dir() else []
    else:
        from remote.runs import transport_for_run

        res = transport_for_run(row).run(["ls", "-1", samples], timeout=30, check=False)
        names = [n for n in res.stdout.split() if n.startswith("step-") and n.endswith(".jsonl")] if res.rc == 0 else []

    def key(name: str) -> tuple[int, str]:
        parts = name.removesuffix(".jsonl").split("-", 2)
        return (int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0, name)

    return sorted(names, key=key)


def read_sample_file(row: RunRow, name: str) -> tuple[list[dict[str, Any]], int]:
    """(sample rows, number of unreadable lines) of one per-sample file, from the run dir or over the transport."""
    path = f"{row.run_dir}/{RunPaths.SAMPLES}/{name}"
    from remote.samples import parse_sample_lines

    if _is_local(row):
        return parse_sample_lines(Path(path).read_bytes())
    from remote.runs import transport_for_run

    return parse_sample_lines(transport_for_run(row).read_bytes(path))


class SampleViewer(QWidget):
    """Each evaluated task of a checkpoint: pass/fail, error, time; the selected one's completion below."""

    loaded = Signal(str, int)  # file name, rows

    def __init__(self, store: Store, run_id: str, parent: QWidget | None = None):
        super().__init__(parent)
        self.store = store
        self.run_id = run_id
        self.rows: list[dict[str, Any]] = []
        self._workers: list[Worker] = []
        self._files: list[str] = []
        self.closed = False  # set by the run view on close: late worker replies are dropped
        self.file_combo = QComboBox()
        self.file_combo.setMinimumContentsLength(24)
        self.file_combo.setToolTip("Evaluated checkpoint and benchmark (samples/step-N-benchmark.jsonl)")
        self.file_combo.currentTextChanged.connect(self._on_file_changed)
        self.filter_combo = QComboBox()
        self.filter_combo.addItems(["all tasks", "passed", "failed"])
        self.filter_combo.currentIndexChanged.connect(self._fill_table)
        self.refresh_button = QPushButton("Refresh")
        self.refresh_button.clicked.connect(self.refresh)
        self.summary_label = QLabel("No evaluated checkpoints yet.")
        self.summary_label.setObjectName("samples_summary")
        top = QHBoxLayout()
        top.addWidget(QLabel("Checkpoint:"))
        top.addWidget(self.file_combo)
        top.addWidget(self.filter_combo)
        top.addWidget(self.refresh_button)
        top.addStretch(1)
        top.addWidget(self.summary_label)

        self.table = QTableWidget(0, 6)
        self.table.setHorizontalHeaderLabels(["Task", "Subset", "Sample", "Result", "Error", "Seconds"])
        self.table.verticalHeader().hide()
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.setAlternatingRowColors(True)
        self.table.horizontalHeader().setSectionResizeMode(4, QHeaderView.ResizeMode.Stretch)
        self.table.itemSelectionChanged.connect(self._on_selection)
        self.detail = QPlainTextEdit()
        self.detail.setReadOnly(True)
        self.detail.setPlaceholderText("Select a task to see its completion and error.")
        self.detail.setFont(monospace_font())
        split = QSplitter(Qt.Orientation.Horizontal)
        split.addWidget(self.table)
        split.addWidget(self.detail)
        split.setSizes([520, 480])
        layout = QVBoxLayout(self)
        layout.setContentsMargins(4, 4, 4, 4)
        layout.addLayout(top)
        layout.addWidget(split, 1)

    def refresh(self) -> None:
        """List the sample files again (off the UI thread), keeping the current choice."""
        row = self.store.get_run(self.run_id)
        if row is None:
            return
        worker = Worker(lambda _ctx: list_sample_files(row))
        worker.signals.finished.connect(lambda _rid, names: self._on_listed(names))
        worker.signals.failed.connect(lambda _rid, msg: self.summary_label.setText(f"Cannot list samples: {msg}"))
        self._start(worker)

    def _start(self, worker: Worker) -> None:
        self._workers = [w for w in self._workers if not w.done.is_set()]
        self._workers.append(worker)
        worker.start()

    def _on_listed(self, names: list[str]) -> None:
        if self.closed or names == self._files:
            return
        current = self.file_combo.currentText()
        self._files = list(names)
        self.file_combo.blockSignals(True)
        self.file_combo.clear()
        self.file_combo.addItems(names)
        self.file_combo.blockSignals(False)
        if not names:
            self.summary_label.setText("No evaluated checkpoints yet.")
            return
        self.file_combo.setCurrentText(current if current in names else names[-1])
        self._on_file_changed(self.file_combo.currentText())

    def _on_file_changed(self, name: str) -> None:
        row = self.store.get_run(self.run_id)
        if not name or row is None:
            return
        worker = Worker(lambda _ctx: read_sample_file(row, name))
        worker.signals.finished.connect(lambda _rid, result: self._on_read(name, *result))
        worker.signals.failed.connect(lambda _rid, msg: self.summary_label.setText(f"Cannot read {name}: {msg}"))
        self._start(worker)

    def _on_read(self, name: str, rows: list[dict[str, Any]], bad: int) -> None:
        if self.closed or name != self.file_combo.currentText():
            return  # a stale reply: another file was chosen meanwhile
        self.rows = rows
        passed = sum(1 for r in rows if r.get("passed"))
        text = f"{passed}/{len(rows)} samples passed"
        if bad:
            text += f" ({bad} unreadable lines skipped)"
        self.summary_label.setText(text)
        self._fill_table()
        self.loaded.emit(name, len(rows))

    def visible_rows(self) -> list[dict[str, Any]]:
        mode = self.filter_combo.currentIndex()
        return [r for r in self.rows if mode == 0 or bool(r.get("passed")) == (mode == 1)]

    def _fill_table(self) -> None:
        rows = self.visible_rows()
        self.table.setSortingEnabled(False)
        self.table.setRowCount(len(rows))
        for i, r in enumerate(rows):
            ok = bool(r.get("passed"))
            cells = [str(r.get("task_id", "")), str(r.get("subset", "")), str(r.get("sample", 0)),
                     "pass" if ok else "fail", str(r.get("error") or ""), f"{r.get('seconds', 0) or 0:.2f}"]
            for j, text in enumerate(cells):
                item = QTableWidgetItem(text)
                item.setData(Qt.ItemDataRole.UserRole, i)
                if j == 3:
                    item.setForeground(QColor("#1a7f37" if ok else "#cf222e"))
                self.table.setItem(i, j, item)
        self.table.resizeColumnsToContents()
        self.table.horizontalHeader().setSectionResizeMode(4, QHeaderView.ResizeMode.Stretch)
        self.detail.clear()

    def _on_selection(self) -> None:
        items = self.table.selectedItems()
        if not items:
            return
        r = self.visible_rows()[items[0].data(Qt.ItemDataRole.UserRole)]
        parts = [f"# {r.get('task_id')}  ({'passed' if r.get('passed') else 'failed'})", "", r.get("completion", "")]
        if r.get("error"):
            parts += ["", f"# error: {r['error']}"]
        if r.get("stderr_tail"):
            parts += ["", "# stderr (tail)", r["stderr_tail"]]
        self.detail.setPlainText("\n".join(parts))


# ---------------------------------------------------------------------------------------------- run view


class RunView(QWidget):
    """Live view of one run. The main window opens it as `RunView(store, run_id, parent, watcher=its watcher)`
    and calls attach_events; without a watcher the view starts its own (tests, a view on its own)."""

    notified = Signal(str, str)  # title, message (finished / failed), also shown in the banner
    batch_applied = Signal(int)  # metric rows added by the batch just rendered
    measured_loaded = Signal(int)  # measured references read from the store
    eval_action_done = Signal(str)  # a cancel / re-queue of one evaluation was answered (its text)

    def __init__(self, store: Store, run_id: str, parent: QWidget | None = None, *,
                 watcher: StoreWatcher | None = None):
        super().__init__(parent)
        self.setObjectName("run_view")
        self.store = store
        self.run_id = run_id
        self.run: RunRow | None = None
        self.loaded = False
        self._reframe_pending: set[str] = set()  # charts to frame on the new x-axis once its data is read
        self._step_axes: StepAxes | None = None  # where the run's steps lie on the other x-axes (checkpoints)
        self._step_axes_worker: Worker | None = None
        self.x_axis = "step"
        self.window = RunWindow(run_id)  # what the charts hold: envelopes of their ranges and the streamed tail
        self.curves = {f: WindowCurve(self.window, f, self.x_axis, 0.0 if f in UNSMOOTHED else DEFAULT_SMOOTHING)
                       for f, _title, _y in METRICS}
        self._watch_rowid = -1  # where the watcher's metric rows start (set by the first batch)
        self.progress = EvalProgress()
        self._corrupt: dict[str, int] = {}  # corrupt lines skipped per streamed file
        self._charts_stale = False
        self._evals: tuple[dict[str, Any], ...] = ()
        self._eval_events: list[dict[str, Any]] = []  # evaluation events and training starts (core.evalstate)
        self.eval_states: dict[int, EvalState] = {}
        self.eval_action_result: Any = None  # the last cancel / re-queue answer (tests wait on it)
        self.notifications: list[tuple[str, str]] = []
        self._workers: list[Worker] = []
        self._tray: QSystemTrayIcon | None = None
        self.cancel_box: QMessageBox | None = None
        self.cancel_result: Any = None
        self._closed = False
        # pass@1 drawn from a batch waits for its own event-loop turn (see _schedule_pass_at_1)
        self._pass_due: bool | None = None  # None: nothing due; else whether to read measured references too

        self._build()
        self.feed = ChartFeed(store, {run_id: self.window}, self.charts, lambda: self.x_axis,
                              lambda f: self.curves[f].smoothing, self)
        self.feed.applied.connect(self._on_feed_applied)
        self.feed.chart_redrawn.connect(self._on_feed_chart_redrawn)
        self.feed.failed.connect(lambda msg: self.banner.show_message(f"Reading the charts failed: {msg}", "error"))
        self.feed.request(force=True)  # the first picture, while the watcher reads the rest
        self._own_watcher = watcher is None
        self.watcher = watcher if watcher is not None else StoreWatcher(store, parent=self)
        self.watcher.failed.connect(self._on_watch_failed)
        self._sub_id = self.watcher.watch(run_id, self._on_batch, metric_history=False)
        self._clock.start()

    # ------------------------------------------------------------------ layout

    def _build(self) -> None:
        self.title_label = QLabel(self.run_id)
        self.title_label.setObjectName("run_title")
        self.title_label.setTextFormat(Qt.TextFormat.PlainText)  # a run name is text, never markup
        set_title_font(self.title_label)
        self.status_label = QLabel("loading…")
        self.status_label.setObjectName("run_status")
        self.status_label.setTextFormat(Qt.TextFormat.RichText)
        self.info_label = QLabel("")
        self.info_label.setObjectName("run_info")
        self.info_label.setStyleSheet("color: palette(placeholder-text);")
        # steps done / total with an ETA from the measured step time; a 1 s timer keeps it (and the elapsed
        # time beside it) ticking between metric rows
        self.progress_bar = QProgressBar()
        self.progress_bar.setObjectName("run_progress")
        self.progress_bar.setRange(0, 1000)
        self.progress_bar.setFixedWidth(280)
        self.progress_bar.setTextVisible(True)
        self.progress_bar.hide()
        self.training_progress: TrainingProgress | None = None
        self._plans: list[dict[str, Any]] = []  # training_plan events: the Trainer's total steps
        self._clock = QTimer(self, interval=PROGRESS_TICK_MS)
        self._clock.timeout.connect(self._update_info)
        self.cancel_button = QPushButton("Cancel run…")
        self.cancel_button.setObjectName("cancel_button")
        self.cancel_button.setToolTip("Stop the job on its cluster (asks first) and confirm it is gone")
        self.cancel_button.clicked.connect(self.request_cancel)
        self.cancel_button.setEnabled(False)
        header = QHBoxLayout()
        header.addWidget(self.title_label)
        header.addSpacing(12)
        header.addWidget(self.status_label)
        header.addStretch(1)
        header.addWidget(self.progress_bar)
        header.addSpacing(8)
        header.addWidget(self.info_label)
        header.addSpacing(12)
        header.addWidget(self.cancel_button)

        self.banner = Banner(self)
        self.hang_banner = Banner(self)
        self.hang_banner.setObjectName("banner")
        self.eval_banner = Banner(self)  # failed evaluations: stays until dismissed, whatever else is announced

        # controls
        self.x_combo = QComboBox()
        for axis in X_AXES:
            self.x_combo.addItem(X_LABELS[axis], axis)
        self.x_combo.setToolTip("What the training charts are plotted against")
        self.x_combo.currentIndexChanged.connect(lambda _i: self.set_x_axis(self.x_combo.currentData()))
        self.smoothing_slider = QSlider(Qt.Orientation.Horizontal)
        self.smoothing_slider.setRange(0, 99)
        self.smoothing_slider.setValue(int(DEFAULT_SMOOTHING * 100))
        self.smoothing_slider.setFixedWidth(160)
        self.smoothing_slider.setToolTip("Exponential moving average weight (0: raw only; TensorBoard's smoothing)")
        self.smoothing_label = QLabel(f"{DEFAULT_SMOOTHING:.2f}")
        self.smoothing_label.setMinimumWidth(34)
        self.smoothing_slider.valueChanged.connect(self._on_smoothing_changed)
        self.raw_check = QCheckBox("Show raw")
        self.raw_check.setChecked(True)
        self.raw_check.toggled.connect(self._on_raw_toggled)
        self.refs_button = QToolButton()
        self.refs_button.setText("Reference lines")
        self.refs_button.setToolTip("Published pass@1 numbers drawn on the pass@1 charts")
        self.refs_button.setPopupMode(QToolButton.ToolButtonPopupMode.InstantPopup)
        self.refs_menu = QMenu(self.refs_button)
        self.refs_menu.aboutToShow.connect(self._rebuild_refs_menu)
        self.refs_button.setMenu(self.refs_menu)
        self.export_button = export_button(self, self.exportable_charts)
        controls = QHBoxLayout()
        controls.addWidget(QLabel("X axis:"))
        controls.addWidget(self.x_combo)
        controls.addSpacing(16)
        controls.addWidget(QLabel("Smoothing:"))
        controls.addWidget(self.smoothing_slider)
        controls.addWidget(self.smoothing_label)
        controls.addWidget(self.raw_check)
        controls.addStretch(1)
        controls.addWidget(self.refs_button)
        controls.addWidget(self.export_button)

        # training charts (2 x 2) and pass@1 charts (one per benchmark, created when evals appear). The
        # training charts are built one per event-loop turn (_build_next_chart): four pyqtgraph plots built
        # and painted at once held the UI thread for several hundred ms when the tab opened.
        self.charts: dict[str, MetricChart] = {}
        self._chart_slots: dict[str, QWidget] = {}
        grid_host = QWidget()
        self._chart_grid = grid = QGridLayout(grid_host)
        grid.setContentsMargins(0, 0, 0, 0)
        grid.setSpacing(6)
        for i, (field_name, title, _y_label) in enumerate(METRICS):
            slot = QLabel(f"{title}…")
            slot.setAlignment(Qt.AlignmentFlag.AlignCenter)
            slot.setMinimumSize(260, 180)
            slot.setStyleSheet("color: palette(placeholder-text);")
            # the slot takes the cell a chart will take, so that a chart replacing it moves no other chart
            # (a re-layout would resize and repaint every chart built so far)
            slot.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)
            self._chart_slots[field_name] = slot
            grid.addWidget(slot, i // 2, i % 2)
        for k in range(2):
            grid.setRowStretch(k, 1)
            grid.setColumnStretch(k, 1)
        ui_steps().add(self, "build", self._build_next_chart)
        self.pass_charts: dict[str, PassAtOneChart] = {}
        self.pass_host = QWidget()
        self.pass_layout = QVBoxLayout(self.pass_host)
        self.pass_layout.setContentsMargins(0, 0, 0, 0)
        self.pass_placeholder = QLabel("pass@1 appears here once a checkpoint has been evaluated.")
        self.pass_placeholder.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.pass_placeholder.setWordWrap(True)
        self.pass_placeholder.setStyleSheet("color: palette(placeholder-text); border: 1px dashed palette(mid);"
                                            " border-radius: 6px; padding: 16px;")
        self.pass_layout.addWidget(self.pass_placeholder)
        charts_split = QSplitter(Qt.Orientation.Horizontal)
        charts_split.addWidget(grid_host)
        charts_split.addWidget(self.pass_host)
        charts_split.setStretchFactor(0, 2)
        charts_split.setStretchFactor(1, 1)
        charts_split.setSizes([860, 420])

        # bottom: log console and sample viewer
        self.console = QPlainTextEdit()
        self.console.setObjectName("log_console")
        self.console.setReadOnly(True)
        self.console.setMaximumBlockCount(LOG_MAX_BLOCKS)
        self.console.setLineWrapMode(QPlainTextEdit.LineWrapMode.NoWrap)
        self.console.setPlaceholderText("The job's stdout appears here as it is streamed.")
        self.console.setFont(monospace_font())
        self.samples = SampleViewer(self.store, self.run_id)
        self.nodes = NodesPanel(self.store, self.run_id)  # host, rank and last heartbeat of every process
        self.bottom_tabs = QTabWidget()
        self.bottom_tabs.setDocumentMode(True)
        self.bottom_tabs.addTab(self.console, "Log")
        self.bottom_tabs.addTab(self.samples, "Samples")
        self.evaluations = EvaluationsPanel()
        self.evaluations.cancel_requested.connect(self._on_evaluation_cancel)
        self.evaluations.requeue_requested.connect(self._on_evaluation_request)
        self.evaluations.evaluate_requested.connect(self._on_evaluation_request)
        self.evaluations.checkpoints_wanted.connect(self._on_evaluations_checkpoints_wanted)
        self.bottom_tabs.addTab(self.evaluations, "Evaluations")
        self.bottom_tabs.addTab(self.nodes, "Nodes")
        self.bottom_tabs.currentChanged.connect(self._on_bottom_tab)

        self.splitter = QSplitter(Qt.Orientation.Vertical)
        self.splitter.addWidget(charts_split)
        self.splitter.addWidget(self.bottom_tabs)
        self.splitter.setStretchFactor(0, 3)
        self.splitter.setStretchFactor(1, 1)
        self.splitter.setSizes([600, 240])

        layout = QVBoxLayout(self)
        layout.setContentsMargins(10, 8, 10, 8)
        layout.addLayout(header)
        layout.addWidget(self.banner)
        layout.addWidget(self.hang_banner)
        layout.addWidget(self.eval_banner)
        layout.addLayout(controls)
        layout.addWidget(self.splitter, 1)

    def _build_next_chart(self) -> None:
        """Build the next training chart in its slot, set up as the controls are now; then the next one."""
        if self._closed:
            return
        pending = [m for m in METRICS if m[0] not in self.charts]
        if not pending:
            return
        field_name, title, y_label = pending[0]
        chart = MetricChart(title, y_label)
        chart.set_x_label(X_LABELS[self.x_axis])
        chart.setMinimumSize(260, 180)
        if field_name not in UNSMOOTHED:
            chart.set_show_raw(self.raw_check.isChecked())
        chart.set_curve(self.run_id, self._label(), RUN_COLORS[0], self.curves[field_name])
        chart.legend.hide()  # one run per view: the title names the metric, the header the run
        add_export_actions(self, chart)
        slot = self._chart_slots.pop(field_name)
        self._chart_grid.replaceWidget(slot, chart)
        slot.deleteLater()
        self.charts[field_name] = chart
        self.feed.watch_chart(chart)
        if len(pending) > 1:
            ui_steps().add(self, "build", self._build_next_chart)
        else:
            # the first picture, read in the next turn: every chart is laid out to its width by then (read now,
            # a chart's width is still its default and the envelope had ~2x the buckets the chart shows)
            ui_steps().add(self, "first picture", lambda: self.feed.request(force=True))

    def charts_built(self) -> bool:
        return len(self.charts) == len(METRICS)

    def exportable_charts(self) -> list[tuple[str, ChartWidget, Any]]:
        out: list[tuple[str, ChartWidget, Any]] = [(title, self.charts[f], None) for f, title, _ in METRICS
                                                   if f in self.charts]
        out += [(f"{b} pass@1", c, None) for b, c in self.pass_charts.items()]
        return out

    def attach_events(self, events: Any) -> None:
        """Hook the main window's StreamManager signals: a suspected hang shows a banner."""
        events.hang.connect(self.show_hang_warning)

    # ------------------------------------------------------------------ data in

    def _on_watch_failed(self, run_id: str, message: str) -> None:
        if run_id == self.run_id:
            self.banner.show_message(f"Reading this run from the store failed: {message}", "error")

    def _on_batch(self, batch: RunBatch) -> None:
        if self._closed:
            return
        if batch.missing:
            self.banner.show_message(f"Run {self.run_id} is not in the run store (deleted?).", "warn")
        if batch.run is not None:
            self._set_run(batch.run, announce=not batch.first)
        if batch.events:
            self._apply_events(batch.events, announce=not batch.first)
        if batch.first:
            self._watch_rowid = batch.metric_rowid
            if self.feed.reads and min(d.rowid for d in self.window.data.values()) < batch.metric_rowid:
                self._charts_stale = True  # the picture was read before rows the watcher will not send
        if batch.metrics is not None and self.window.extend(batch.metrics):
            self._charts_stale = True
        if self.isVisible():
            self._flush_charts()
        # else: a hidden tab only keeps the rows (a bounded tail) and reads what it missed once shown (4 open
        # runs cost the UI thread one chart update per batch, not four)
        if batch.evals is not None:
            self._evals = batch.evals
            self._schedule_pass_at_1()
            if batch.evals and not batch.first:
                self.samples.refresh()
        if batch.log_reset:
            self.console.clear()
        if batch.log_text:
            self._append_log(batch.log_text)
        if batch.first:
            self._check_loaded()
            self.samples.refresh()
        if batch.corrupt is not None:
            self._corrupt = batch.corrupt
        self._update_info()
        self.batch_applied.emit(batch.n_metric_rows)

    def _label(self) -> str:
        return printable(self.run.name) if self.run is not None else self.run_id

    def _on_feed_applied(self) -> None:
        if self._closed:
            return
        if self._watch_rowid >= 0 and min(d.rowid for d in self.window.data.values()) < self._watch_rowid:
            self.feed.request(force=True)  # read before the watcher started: rows between would be missing
        if self.x_axis != "step" and self._evals:
            self._want_step_axes()  # checkpoints are placed through the metric rows, which may have grown
        self._check_loaded()
        self._update_info()

    def _on_feed_chart_redrawn(self, field_name: str) -> None:
        if field_name in self._reframe_pending and field_name in self.charts \
                and self.curves[field_name].data is not None:
            self.charts[field_name].reframe_x()  # the new axis' data is drawn: frame it (MetricChart.reframe_x)
            self._reframe_pending.discard(field_name)

    def _check_loaded(self) -> None:
        """Loaded: the first batch (status, events, log) is shown, every chart is built and drawn."""
        if not self.loaded and self._watch_rowid >= 0 and self.feed.reads and self.charts_built() \
                and self._pass_due is None:
            self.loaded = True

    def point_count(self) -> int:
        """Metric rows the loss chart shows over its range (each step once, from its latest attempt): the
        envelope's rows and the rows streamed since."""
        return self.window.points("loss")

    def showEvent(self, event: Any) -> None:
        super().showEvent(event)
        self._flush_charts()

    def _flush_charts(self) -> None:
        """Draw the streamed rows at once and ask for a new envelope (soon; now if they redid shown steps)."""
        if not self._charts_stale:
            return
        self._charts_stale = False
        for chart in self.charts.values():
            chart.refresh()
        self.feed.data_changed(urgent=self.window.needs_refresh or not self.window.data)

    def steps_shown(self) -> np.ndarray:
        """The steps the loss chart shows, attempt by attempt, when its picture holds the points themselves
        (exact, on the step axis); else every step the store would show (for checks that nothing is missing
        or doubled)."""
        curve = self.curves["loss"]
        data = curve.data
        if data is not None and data.exact and self.x_axis == "step":
            return np.concatenate([s.x for s in curve.segments()]) if curve.segments() else np.empty(0)
        env = self.store.metric_envelope(self.run_id, ("t",), buckets=max(1, (self._last_step() or 0) + 1))
        return np.concatenate([np.frombuffer(s.x_first) for s in env.series["t"]]) if env.series["t"] \
            else np.empty(0)

    def _summary(self) -> Any:
        """The store's RunSummary of the run, as the latest envelope read brought it (None before the first)."""
        data = next(iter(self.window.data.values()), None)
        return data.summary if data is not None else None

    def _last_step(self) -> int | None:
        data = self.window.data.get("loss")
        steps = [data.summary.steps] if data is not None and data.summary is not None and data.summary.steps \
            is not None else []
        tail = self.window.tail_series(0).last_step
        if tail is not None:
            steps.append(tail)
        return max(steps) if steps else None

    def _schedule_pass_at_1(self, measured: bool = True) -> None:
        """Draw the pass@1 charts in the next event-loop turn (requests meanwhile fold into one draw). Creating a
        pass@1 chart and its curves costs the UI thread tens of ms: in the same turn as the batch that brought
        the evaluations (the first holds the run's status, events and log) it made the longest stall of a tab
        opening on a long run."""
        self._pass_due = measured or bool(self._pass_due)
        ui_steps().add(self, "pass", self._draw_due_pass_at_1)

    def _draw_due_pass_at_1(self) -> None:
        if self._closed:
            return
        new = [b for b in self._benchmarks() if b not in self.pass_charts]
        if len(new) > 1:  # one new chart per turn (each ~20-30 ms of the UI thread with its curves)
            self._draw_pass_at_1(measured=False, only=new[0])
            ui_steps().add(self, "pass", self._draw_due_pass_at_1)
            return
        measured, self._pass_due = bool(self._pass_due), None
        self._draw_pass_at_1(measured)
        self._check_loaded()

    def _benchmarks(self) -> list[str]:
        return sorted({e["benchmark"] for e in self._evals})

    def _draw_pass_at_1(self, measured: bool = True, only: str | None = None) -> None:
        """The pass@1 charts from the eval records, or only the named one's (`measured`: also read the measured
        references again)."""
        benchmarks = self._benchmarks()
        for bench in benchmarks:
            if only is not None and bench != only:
                continue
            chart = self.pass_charts.get(bench)
            if chart is None:
                chart = PassAtOneChart(bench)
                chart.setMinimumHeight(180)
                add_export_actions(self, chart)
                self.pass_charts[bench] = chart
                self.pass_layout.addWidget(chart, 1)
            chart.set_x_axis(X_LABELS[self.x_axis], self.x_axis == "step")
            for subset in SUBSETS:
                points = pass_at_1_points(self._evals, bench, subset)
                if points.steps.size:
                    chart.set_subset(self.run_id, "", subset, points.steps, points.values, color=SUBSET_COLORS[subset],
                                     low=points.low, high=points.high, n_tasks=points.n_tasks,
                                     x=self._x_of_steps(points.steps))
                    marked = unconfined_pass_at_1(self._evals, bench, subset, self.progress.unconfined)
                    chart.set_unconfined(subset, *marked, x=self._x_of_steps(marked[0]))
        self.pass_placeholder.setVisible(not benchmarks)
        if benchmarks and measured and only is None:
            self._load_measured_references()

    def _x_of_steps(self, steps: np.ndarray) -> np.ndarray:
        """Checkpoint steps on the chosen x-axis (core.window.StepAxes, read from the store; NaN until read)."""
        if self.x_axis == "step":
            return np.asarray(steps, dtype=float)
        if self._step_axes is None:
            self._want_step_axes()
            return np.full(np.shape(steps), np.nan)
        return self._step_axes.x_at(steps, self.x_axis)

    def _want_step_axes(self) -> None:
        """Read where the run's steps lie on tokens / samples / wall time (off the UI thread) when the map held
        does not reach the last step logged; the pass@1 charts are drawn again with it."""
        last = self._last_step()
        held = self._step_axes
        if self._step_axes_worker is not None or (held is not None and held.last_step is not None
                                                  and last is not None and held.last_step >= last):
            return
        store, run_id = self.store, self.run_id
        worker = Worker(lambda _ctx: read_step_axes(store, run_id))
        worker.signals.finished.connect(self._on_step_axes)
        worker.signals.failed.connect(lambda _rid, msg: self._on_step_axes(_rid, None, msg))
        self._step_axes_worker = worker
        self._workers.append(worker)
        worker.start()

    def _on_step_axes(self, _rid: int, axes: StepAxes | None, error: str = "") -> None:
        self._step_axes_worker = None
        if self._closed:
            return
        if axes is None:
            log.warning("run %s: reading where its steps lie on the x-axes failed: %s", self.run_id, error)
            return
        self._step_axes = axes
        if self.pass_charts:
            self._draw_pass_at_1(measured=False)

    def _load_measured_references(self) -> None:
        """Measured references (evaluation-only runs tagged `reference`) as markers on the pass@1 charts."""
        store = self.store

        def work(_ctx: Any) -> list[dict[str, Any]]:
            from remote.runs import measured_references

            return measured_references(store)

        worker = Worker(work)
        worker.signals.finished.connect(lambda _rid, refs: self._on_measured_references(refs))
        worker.signals.failed.connect(lambda _rid, msg: log.warning("measured references: %s", msg))
        self._workers.append(worker)
        worker.start()

    def _on_measured_references(self, refs: list[dict[str, Any]]) -> None:
        if self._closed:
            return
        for bench, chart in self.pass_charts.items():
            latest: dict[str, tuple[float, float]] = {}  # label -> (t, pass@1 %): the newest measurement
            for r in refs:
                newer = r["label"] not in latest or r["t"] >= latest[r["label"]][0]
                if r["benchmark"] == bench and r["run_id"] != self.run_id and newer:
                    latest[r["label"]] = (r["t"], 100.0 * float(r["pass@1"]))
            chart.set_measured([(label, v) for label, (_t, v) in sorted(latest.items())])
        self.measured_loaded.emit(len(refs))

    def _append_log(self, text: str) -> None:
        bar = self.console.verticalScrollBar()
        at_bottom = bar.value() >= bar.maximum() - 2
        cursor = QTextCursor(self.console.document())
        cursor.movePosition(QTextCursor.MoveOperation.End)
        cursor.insertText(text)
        if at_bottom:
            bar.setValue(bar.maximum())

    # ------------------------------------------------------------------ status and notifications

    def _set_run(self, row: RunRow, announce: bool) -> None:
        previous = self.run
        self.run = row
        self.title_label.setText(printable(row.name))
        for chart in self.charts.values():
            chart.set_label(self.run_id, printable(row.name))
        self.title_label.setToolTip(f"{row.run_id}\n{row.cluster or '?'} ({row.backend or '?'}) {row.run_dir or ''}")
        self._render_status()
        if previous is None or previous.status != row.status:
            self._refresh_eval_states()
        self.cancel_button.setEnabled(row.status not in TERMINAL_STATUSES and bool(row.job_id))
        if row.status in TERMINAL_STATUSES:
            self.hang_banner.hide()
        was_terminal = previous is not None and previous.status in TERMINAL_STATUSES
        if announce and row.status in ("finished", "failed") and not was_terminal:
            title = f"Run {printable(row.name)} {row.status}"
            self.notify(title, row.status_reason or ("training and evaluation done" if row.status == "finished"
                                                     else "see the log for the error"),
                        "ok" if row.status == "finished" else "error")

    def _render_status(self) -> None:
        """The status line: the run's state with its reason, then any evaluation in progress."""
        row = self.run
        if row is None:
            return
        color = status_color(row.status)
        reason = f" — {row.status_reason}" if row.status_reason else ""
        text = (f"<span style='color:{color}; font-weight:600'>● {row.status}</span>"
                f"<span style='color:palette(placeholder-text)'>{_escape(reason)}</span>")
        tip = row.status_reason or row.status
        steps = self.evaluating_steps()
        if steps:
            plural = "s" if len(steps) > 1 else ""
            label = f"evaluating step{plural} {', '.join(map(str, steps))}…"
            if row.status in TERMINAL_STATUSES:  # e.g. cancelled mid-evaluation: its process is gone too
                label = f"evaluation of step{plural} {', '.join(map(str, steps))} ended without a result"
            text += f"<span style='color:{EVAL_COLOR}'> · {_escape(label)}</span>"
            for (_attempt, step), detail in sorted(self.progress.evaluating.items(), key=lambda kv: kv[0][1]):
                tip += (f"\nstep {step}: evaluating {detail.get('checkpoint', '?')}"
                        f" on {', '.join(map(str, detail.get('benchmarks') or [])) or '?'}"
                        f" ({detail.get('backend', '?')})")
        self.status_label.setText(text)
        self.status_label.setToolTip(tip)

    def evaluating_steps(self) -> list[int]:
        """Steps whose evaluation started (eval_started) and has not ended (eval_finished / eval_failed)."""
        return self.progress.evaluating_steps()

    def _apply_events(self, events: Sequence[dict[str, Any]], announce: bool) -> None:
        """Follow the evaluation processes' events: what is being evaluated, what failed, what ran unconfined."""
        self._plans.extend(e for e in events if e["event"] == "training_plan")
        failures_before = dict(self.progress.failures)
        unconfined_before = len(self.progress.unconfined)
        failed_now = self.progress.apply(events)
        for e in self.progress.ignored:
            log.warning("run %s: %s event without an integer step: %r", self.run_id, e["event"], e.get("detail"))
        self.progress.ignored.clear()
        if len(self.progress.unconfined) != unconfined_before:
            self._schedule_pass_at_1()
        self._eval_events.extend(e for e in events if e["event"] == "started" or e["event"] in EVAL_EVENTS)
        self._render_status()
        if any(e["event"] == "started" or e["event"] in EVAL_EVENTS for e in events):
            self._refresh_eval_states()
        if self.progress.failures != failures_before:  # else leave the strip as it is (shown, or dismissed)
            self._render_eval_failures()
        if announce:
            for attempt, step in failed_now:
                self.notify(f"Run {self._label()}: evaluation of step {step} failed",
                            self.progress.failures[(attempt, step)], "warn", banner=False)

    def _render_eval_failures(self) -> None:
        if not self.progress.failures:
            self.eval_banner.hide()
            return
        failures = sorted(self.progress.failures.items(), key=lambda kv: (kv[0][1], kv[0][0]))
        shown = failures[-EVAL_FAILURES_SHOWN:]
        lines = [f"<b>Evaluation of step {step} failed</b>: {_escape(error)}" for (_attempt, step), error in shown]
        if len(failures) > len(shown):
            lines.append(f"(and {len(failures) - len(shown)} earlier failed evaluations)")
        lines.append("Their pass@1 will not appear; eval.log in the run directory has the details.")
        self.eval_banner.show_message("<br>".join(lines), "warn")

    def notify(self, title: str, message: str, kind: str = "info", *, banner: bool = True) -> None:
        """A desktop notification when the system has a tray, and the in-app banner (unless `banner` is False:
        the caller shows the message in its own strip)."""
        self.notifications.append((title, message))
        if banner:
            self.banner.show_message(f"<b>{_escape(title)}</b>: {_escape(message)}", kind)
        if QSystemTrayIcon.isSystemTrayAvailable():
            if self._tray is None:
                self._tray = QSystemTrayIcon(app_icon(), self)
                self._tray.show()
            icon = {"error": QSystemTrayIcon.MessageIcon.Critical,
                    "warn": QSystemTrayIcon.MessageIcon.Warning}.get(kind, QSystemTrayIcon.MessageIcon.Information)
            self._tray.showMessage(title, message, icon, 10_000)
        self.notified.emit(title, message)

    def show_hang_warning(self, warning: Any) -> None:
        if getattr(warning, "run_id", self.run_id) != self.run_id:
            return
        tail = (getattr(warning, "stdout_tail", "") or "").strip().splitlines()[-3:]
        text = (f"<b>Suspected hang</b>: no new metrics for {warning.silent_s:.0f} s "
                f"(median step {warning.median_step_s:.1f} s, last step {warning.last_step}). "
                "The job is still running; check the log below.")
        if tail:
            text += "<br><code>" + "<br>".join(_escape(t) for t in tail) + "</code>"
        self.hang_banner.show_message(text, "warn")

    def _update_info(self) -> None:
        """The header's progress bar and info line; called per batch and every second by the clock."""
        n, last = self.point_count(), self._last_step()
        started = self.run.started_at if self.run is not None else None
        running = self.run is not None and self.run.status not in TERMINAL_STATUSES
        parts = [f"step {last}" if last is not None else "no steps yet", f"{n} points"]
        if self.run is not None and started and running:
            parts.append(f"running {_duration(time.time() - started)}")
        if self.run is not None and not running:
            self._clock.stop()  # nothing ticks any more
        self._render_progress(running)
        skipped = sum(self._corrupt.values())
        if skipped:
            # Lines the job wrote that could not be read or stored: shown, so a gap in a chart has a cause.
            parts.append(f"⚠ {skipped} corrupt line{'s' if skipped != 1 else ''} skipped")
            self.info_label.setToolTip("Skipped while streaming (unreadable, or values the store cannot hold):\n"
                                       + "\n".join(f"{name}: {n}" for name, n in sorted(self._corrupt.items()))
                                       + "\nThe app log names each line and the reason.")
        self.info_label.setText(" · ".join(parts))

    def _render_progress(self, running: bool) -> None:
        total = total_steps(self._plans, self.run.config() if self.run is not None else None)
        summary = self._summary()
        tail = self.window.tail_series(0)  # the rows streamed since the view opened: the recent step time
        step_s = step_time(tail)
        if step_s is None and summary is not None and summary.steps and summary.wall_time_s:
            step_s = summary.wall_time_s / max(1, summary.steps - 1)  # until rows stream: the run's average
        last_t = max((t for t in (tail.t_max, summary.last_t if summary is not None else None) if t is not None),
                     default=None)
        progress = self.training_progress = training_progress(self._last_step(), total, step_s, last_t,
                                                              time.time(), running)
        bar = self.progress_bar
        if progress.total is None:
            bar.hide()
            return
        bar.setValue(round(1000 * (progress.fraction or 0.0)))
        text = f"{progress.done:,} / {progress.total:,} steps"
        if running and progress.done < progress.total:
            text += f" · ETA {_duration(progress.eta_s)}" if progress.eta_s is not None else " · ETA measuring…"
        bar.setFormat(text)
        bar.setToolTip(f"{100 * (progress.fraction or 0):.1f}% of the optimizer steps"
                       + (f"; {progress.step_s:.2f} s per step over the last logged steps" if progress.step_s else "")
                       + ("" if self._plans else "\nThe total is the config's training.max_steps"))
        bar.show()

    # ------------------------------------------------------------------ controls

    def set_x_axis(self, axis: str) -> None:
        if axis not in X_AXES or axis == self.x_axis:
            return
        self.x_axis = axis
        select_data(self.x_combo, axis)
        for field_name, chart in self.charts.items():
            self.curves[field_name].set_x_axis(axis)
            chart.set_x_label(X_LABELS[axis])
            chart.plot.enableAutoRange(x=True)  # a range on the old axis means nothing on the new one
            chart.refresh()
        self.feed.request(force=True)
        self._reframe_pending = set(self.charts)  # framed on the new axis' data once it is read
        self._draw_pass_at_1(measured=False)  # pass@1 follows the x-axis too: each checkpoint's step on the new axis

    def _on_smoothing_changed(self, value: int) -> None:
        weight = value / 100
        self.smoothing_label.setText(f"{weight:.2f}")
        for field_name, chart in self.charts.items():
            if field_name not in UNSMOOTHED:
                self.curves[field_name].set_smoothing(weight)
                chart.refresh()
        self.feed.request()  # a zoomed chart may need a longer lead-in for the new weight

    def _on_raw_toggled(self, show: bool) -> None:
        for field_name, chart in self.charts.items():
            if field_name not in UNSMOOTHED:
                chart.set_show_raw(show)

    def _rebuild_refs_menu(self) -> None:
        self.refs_menu.clear()
        if not self.pass_charts:
            self.refs_menu.addAction("No pass@1 chart yet").setEnabled(False)
        for bench, chart in self.pass_charts.items():
            self.refs_menu.addSection(bench)
            shown = set(chart.visible_references())
            for model, ref in chart.references.items():
                action = self.refs_menu.addAction(f"{model} ({ref.pass_at_1:g})")
                action.setCheckable(True)
                action.setChecked(model in shown)
                action.setToolTip(ref.source)
                action.toggled.connect(lambda on, c=chart, m=model: c.set_reference_visible(m, on))

    def _on_bottom_tab(self, index: int) -> None:
        if self.bottom_tabs.widget(index) is self.samples:
            self.samples.refresh()

    # ------------------------------------------------------------------ evaluations

    def _refresh_eval_states(self) -> None:
        """Each checkpoint's evaluation state (core.evalstate) into the Evaluations tab."""
        self.eval_states = derive_eval_states(self._eval_events, self.run.status if self.run is not None else None)
        self.evaluations.set_states(self.eval_states)

    def _eval_action(self, text: str, fn: Callable[[Any], Any]) -> None:
        self.evaluations.set_busy(text)
        worker = Worker(fn)
        worker.signals.finished.connect(lambda _rid, res: self._on_eval_action(str(res), "ok"))
        worker.signals.failed.connect(lambda _rid, msg: self._on_eval_action(msg, "error"))
        self._workers.append(worker)
        worker.start()

    def _on_eval_action(self, text: str, kind: str) -> None:
        self.eval_action_result = (kind, text)
        if self._closed:
            return
        self.evaluations.set_busy(None)
        self.banner.show_message(_escape(text), kind)
        self.watcher.wake()
        self.eval_action_done.emit(text)

    def _on_evaluation_cancel(self, step: int) -> None:
        store, run_id = self.store, self.run_id

        def work(_ctx: Any) -> str:
            from remote.evals import cancel_evaluation

            return f"Evaluation of step {step}: {cancel_evaluation(store, run_id, step)}"

        self._eval_action(f"Cancelling the evaluation of step {step}…", work)

    def _on_evaluation_request(self, step: int) -> None:
        store, run_id = self.store, self.run_id
        checkpoint = self.eval_states[step].checkpoint if step in self.eval_states else None

        def work(_ctx: Any) -> str:
            from remote.evals import request_evaluation

            detail = request_evaluation(store, run_id, step, checkpoint)
            where = f"Slurm job {detail['job_id']}" if detail.get("job_id") else (detail.get("placement") or "queued")
            return f"Evaluation of step {step} queued ({where})"

        self._eval_action(f"Queuing the evaluation of step {step}…", work)

    def _on_evaluations_checkpoints_wanted(self) -> None:
        store, run_id = self.store, self.run_id

        def work(_ctx: Any) -> list[int]:
            from remote.evals import list_checkpoints

            return list_checkpoints(store, run_id)

        worker = Worker(work)
        worker.signals.finished.connect(lambda _rid, steps: self._on_checkpoints_listed(steps))
        worker.signals.failed.connect(lambda _rid, msg: self._on_eval_action(f"Cannot list checkpoints: {msg}", "error"))
        self._workers.append(worker)
        worker.start()

    def _on_checkpoints_listed(self, steps: list[int]) -> None:
        if self._closed:
            return
        step = self.evaluations.choose_checkpoint(steps)
        if step is not None:
            self._on_evaluation_request(step)

    # ------------------------------------------------------------------ cancel

    def request_cancel(self) -> QMessageBox:
        """Ask for confirmation (a window-modal box, answered asynchronously), then cancel in the background."""
        box = QMessageBox(QMessageBox.Icon.Warning, "Cancel run",
                          f"Cancel run {self._label()}?\n\nThe job is stopped on {self.run.cluster if self.run else '?'}"
                          " and TuneDeck checks that it is gone. Checkpoints already written stay.",
                          QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No, self)
        box.setDefaultButton(QMessageBox.StandardButton.No)
        box.button(QMessageBox.StandardButton.Yes).setText("Cancel run")
        box.button(QMessageBox.StandardButton.No).setText("Keep running")
        box.setWindowModality(Qt.WindowModality.WindowModal)
        box.finished.connect(lambda result: self._on_cancel_answer(result))
        self.cancel_box = box
        box.open()
        return box

    def _on_cancel_answer(self, result: int) -> None:
        self.cancel_box = None
        if result != QMessageBox.StandardButton.Yes:
            return
        self.cancel_button.setEnabled(False)
        self.banner.show_message(f"Cancelling {self._label()}…", "info")
        store, run_id = self.store, self.run_id

        def work(_ctx: Any) -> Any:
            from remote.runs import cancel

            return cancel(run_id, store)

        worker = Worker(work)
        worker.signals.finished.connect(lambda _rid, res: self._on_cancelled(res))
        worker.signals.failed.connect(lambda _rid, msg: self._on_cancel_failed(msg))
        self._workers.append(worker)
        worker.start()

    def _on_cancelled(self, result: Any) -> None:
        self.cancel_result = result
        if self._closed:
            return
        if getattr(result, "already_ended", False):
            self.banner.show_message(f"<b>Nothing to cancel</b>: {_escape(result.detail)}", "info")
        elif result.confirmed_gone:
            self.banner.show_message(f"<b>Cancelled</b>: the job is confirmed gone. {_escape(result.detail)}", "ok")
        else:
            self.banner.show_message("<b>Cancel sent, but the job is NOT confirmed gone</b>: "
                                     f"{_escape(result.detail)}", "error")
            self.cancel_button.setEnabled(True)
        self.watcher.notify(self.run_id)

    def _on_cancel_failed(self, message: str) -> None:
        self.cancel_result = message
        if self._closed:
            return
        self.banner.show_message(f"<b>Cancel failed</b>: {_escape(message)}", "error")
        self.cancel_button.setEnabled(True)

    # ------------------------------------------------------------------ lifecycle

    def closeEvent(self, event: Any) -> None:
        self.shutdown()
        super().closeEvent(event)

    def shutdown(self) -> None:
        """Stop feeding this view (the watcher thread ends if this view owns it)."""
        self._closed = True
        ui_steps().discard(self)
        self._clock.stop()
        self.samples.closed = True
        self.nodes.stop()
        self.feed.close()
        self.watcher.unwatch(self._sub_id)
        if self._own_watcher:
            self.watcher.stop()
        if self._tray is not None:
            self._tray.hide()


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _duration(seconds: float) -> str:
    seconds = int(max(0, seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h {m:02d}m" if h else (f"{m}m {s:02d}s" if m else f"{s}s")

