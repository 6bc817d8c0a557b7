"""The Runs page: every run in the store with its status, progress, last loss and best pass@1.

The table is read from the store in a worker (a snapshot per refresh, stale replies dropped by request id);
refreshes are coalesced so that a burst of stream updates costs one query.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from PySide6.QtCore import (
    QItemSelectionModel,
    QModelIndex,
    QPersistentModelIndex,
    QSortFilterProxyModel,
    Qt,
    QTimer,
    Signal,
)
from PySide6.QtGui import QColor
from PySide6.QtWidgets import (
    QAbstractItemView,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QPushButton,
    QTableView,
    QVBoxLayout,
    QWidget,
)

from app.gui.app import palette_is_dark
from app.gui.table_model import RowTableModel
from app.gui.workers import WorkContext, Worker

REFRESH_COALESCE_MS = 400
PERIODIC_REFRESH_MS = 10_000  # runs launched by another process (the CLI) show up without a stream event
COLUMNS = ("Name", "Cluster", "Status", "Created", "Steps", "Last loss", "Best pass@1")
STATUS_COLORS = {  # (light, dark)
    "running": ("#1a7f37", "#4ade80"), "pending": ("#9a6700", "#facc15"), "completing": ("#0969da", "#60a5fa"),
    "finished": ("#57606a", "#a1a1aa"), "failed": ("#cf222e", "#f87171"), "cancelled": ("#8250df", "#c084fc"),
}


@dataclass(frozen=True)
class RunSummaryRow:
    """One table row, read off the UI thread."""

    run_id: str
    name: str
    cluster: str
    status: str
    reason: str
    created_at: float
    steps: int | None
    last_loss: float | None
    best_pass_at_1: float | None
    best_label: str


@dataclass(frozen=True)
class RunsSnapshot:
    request_id: int
    rows: tuple[RunSummaryRow, ...]


def read_runs(ctx: WorkContext, store: Any) -> RunsSnapshot:
    """Worker body: the runs and their summaries (one store query per run)."""
    rows = []
    for run in store.list_runs():
        if ctx.cancel.is_set():
            break
        s = store.summary(run.run_id)
        best, label = None, ""
        for bench, subsets in (s.get("best_pass_at_1") or {}).items():
            value = subsets.get("all", max(subsets.values()) if subsets else None)
            if value is not None and (best is None or value > best):
                best, label = value, bench
        rows.append(RunSummaryRow(run.run_id, run.name, run.cluster or "", run.status, run.status_reason or "",
                                  run.created_at, s.get("steps"), s.get("final_loss"), best, label))
    return RunsSnapshot(ctx.request_id, tuple(rows))


class RunsModel(RowTableModel):
    """One row per run (RunSummaryRow)."""

    COLUMNS = COLUMNS

    def data(self, index: QModelIndex | QPersistentModelIndex, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if not index.isValid():
            return None
        r = self.rows[index.row()]
        col = index.column()
        if role == Qt.ItemDataRole.DisplayRole:
            if col == 0:
                return r.name
            if col == 1:
                return r.cluster
            if col == 2:
                return f"{r.status} — {r.reason}" if r.reason else r.status
            if col == 3:
                return datetime.fromtimestamp(r.created_at).strftime("%Y-%m-%d %H:%M")
            if col == 4:
                return "" if r.steps is None else str(r.steps)
            if col == 5:
                return "" if r.last_loss is None else f"{r.last_loss:.4f}"
            if col == 6:
                return "" if r.best_pass_at_1 is None else f"{100 * r.best_pass_at_1:.1f}%  ({r.best_label})"
        if role == Qt.ItemDataRole.UserRole:  # sort keys
            return (r.name.lower(), r.cluster, r.status, r.created_at, r.steps or -1,
                    r.last_loss if r.last_loss is not None else float("inf"),
                    r.best_pass_at_1 if r.best_pass_at_1 is not None else -1.0)[col]
        if role == Qt.ItemDataRole.ToolTipRole:
            return f"{r.name}\nrun id {r.run_id}\n{r.status}{': ' + r.reason if r.reason else ''}"
        if role == Qt.ItemDataRole.ForegroundRole and col == 2 and r.status in STATUS_COLORS:
            return QColor(STATUS_COLORS[r.status][1 if palette_is_dark() else 0])
        if role == Qt.ItemDataRole.TextAlignmentRole and col >= 4:
            return int(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        return None


class RunsFilter(QSortFilterProxyModel):
    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.setSortRole(Qt.ItemDataRole.UserRole)
        self.text = ""

    def set_text(self, text: str) -> None:
        self.beginFilterChange()
        self.text = text.strip().lower()
        self.endFilterChange()

    def filterAcceptsRow(self, source_row: int, source_parent: QModelIndex | QPersistentModelIndex) -> bool:
        if not self.text:
            return True
        r = self.sourceModel().rows[source_row]
        return self.text in f"{r.name} {r.cluster} {r.status} {r.reason} {r.run_id}".lower()


class RunsPage(QWidget):
    """The Runs table; `open_requested(run_id)` and `compare_requested([run_id, ...])` go to the window."""

    open_requested = Signal(str)
    compare_requested = Signal(list)
    refreshed = Signal(int)  # number of runs

    def __init__(self, store: Any, parent: QWidget | None = None):
        super().__init__(parent)
        self.store = store
        self._worker: Worker | None = None
        self._request = 0
        self._pending = False

        self.filter_edit = QLineEdit()
        self.filter_edit.setObjectName("runs_filter")
        self.filter_edit.setPlaceholderText("Filter runs (Ctrl+F): name, cluster, status")
        self.filter_edit.setClearButtonEnabled(True)
        self.open_button = QPushButton("Open")
        self.compare_button = QPushButton("Compare")
        self.compare_button.setObjectName("compare_button")
        self.compare_button.setToolTip("Overlay the selected runs (select two or more)")
        refresh = QPushButton("Refresh")
        bar = QHBoxLayout()
        bar.addWidget(self.filter_edit, 1)
        bar.addWidget(refresh)
        bar.addWidget(self.open_button)
        bar.addWidget(self.compare_button)

        self.model = RunsModel(self)
        self.proxy = RunsFilter(self)
        self.proxy.setSourceModel(self.model)
        self.table = QTableView()
        self.table.setObjectName("runs_table")
        self.table.setModel(self.proxy)
        self.table.setSortingEnabled(True)
        self.table.sortByColumn(3, Qt.SortOrder.DescendingOrder)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.ExtendedSelection)
        self.table.setAlternatingRowColors(True)
        self.table.verticalHeader().hide()
        self.table.verticalHeader().setDefaultSectionSize(24)
        header = self.table.horizontalHeader()
        header.setSectionResizeMode(QHeaderView.ResizeMode.Interactive)
        header.setSectionResizeMode(0, QHeaderView.ResizeMode.Stretch)
        header.setSectionResizeMode(2, QHeaderView.ResizeMode.Stretch)
        for col, width in ((1, 100), (3, 130), (4, 70), (5, 90), (6, 150)):
            self.table.setColumnWidth(col, width)
        self.empty_label = QLabel("No runs yet. Build one on <b>New run</b> (Ctrl+N) and launch it (Ctrl+L).")
        self.empty_label.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.status_label = QLabel()

        layout = QVBoxLayout(self)
        layout.setContentsMargins(10, 10, 10, 6)
        layout.addLayout(bar)
        layout.addWidget(self.table, 1)
        layout.addWidget(self.empty_label)
        layout.addWidget(self.status_label)

        self.filter_edit.textChanged.connect(self.proxy.set_text)
        refresh.clicked.connect(self.refresh)
        self.open_button.clicked.connect(self._on_open_clicked)
        self.compare_button.clicked.connect(self._on_compare_clicked)
        self.table.doubleClicked.connect(lambda _index: self._on_open_clicked())
        self.table.activated.connect(lambda _index: self._on_open_clicked())
        self.table.selectionModel().selectionChanged.connect(self._update_buttons)
        self._timer = QTimer(self, singleShot=True, interval=REFRESH_COALESCE_MS)
        self._timer.timeout.connect(self.refresh)
        self._periodic = QTimer(self, interval=PERIODIC_REFRESH_MS)
        self._periodic.timeout.connect(lambda: self.refresh() if self.isVisible() else None)
        self._periodic.start()
        self._update_buttons()

    # ------------------------------------------------------------------ refresh

    def schedule_refresh(self, *_args: Any) -> None:
        """Coalesce bursts of store changes into one refresh."""
        if not self._timer.isActive():
            self._timer.start()

    @property
    def is_refreshing(self) -> bool:
        return self._worker is not None

    def refresh(self) -> None:
        if self.store is None:
            return
        if self._worker is not None:
            self._pending = True  # one more after the running one
            return
        worker = Worker(read_runs, self.store)
        self._request = worker.request_id
        worker.signals.finished.connect(self._on_snapshot)
        worker.signals.failed.connect(self._on_failed)
        self._worker = worker
        worker.start()

    def _after_worker(self) -> None:
        self._worker = None
        if self._pending:
            self._pending = False
            self.refresh()

    def _on_failed(self, _rid: int, message: str) -> None:
        self.status_label.setText(f"Could not read the run store: {message}")
        self._after_worker()

    def _on_snapshot(self, request_id: int, snapshot: RunsSnapshot) -> None:
        if request_id == self._request:
            selected = set(self.selected_run_ids())
            self.model.set_rows(list(snapshot.rows))
            self._reselect(selected)
            self.empty_label.setVisible(not snapshot.rows)
            active = sum(1 for r in snapshot.rows if r.status in ("pending", "running", "completing"))
            self.status_label.setText(f"{len(snapshot.rows)} runs, {active} active · updated {time.strftime('%H:%M:%S')}")
            self._update_buttons()
            self.refreshed.emit(len(snapshot.rows))
        self._after_worker()

    def _reselect(self, run_ids: set[str]) -> None:
        if not run_ids:
            return
        sel = self.table.selectionModel()
        for row in range(self.proxy.rowCount()):
            src = self.proxy.mapToSource(self.proxy.index(row, 0)).row()
            if self.model.rows[src].run_id in run_ids:
                sel.select(self.proxy.index(row, 0), QItemSelectionModel.SelectionFlag.Select | QItemSelectionModel.SelectionFlag.Rows)

    # ------------------------------------------------------------------ selection

    def selected_run_ids(self) -> list[str]:
        rows = sorted({i.row() for i in self.table.selectionModel().selectedRows()})
        return [self.model.rows[self.proxy.mapToSource(self.proxy.index(r, 0)).row()].run_id for r in rows]

    def select_runs(self, run_ids: list[str]) -> None:
        self.table.clearSelection()
        self._reselect(set(run_ids))

    def _update_buttons(self, *_args: Any) -> None:
        n = len(self.table.selectionModel().selectedRows())
        self.open_button.setEnabled(n >= 1)
        self.compare_button.setEnabled(n >= 2)
        self.compare_button.setText(f"Compare ({n})" if n >= 2 else "Compare")

    def _on_open_clicked(self) -> None:
        for run_id in self.selected_run_ids():
            self.open_requested.emit(run_id)

    def _on_compare_clicked(self) -> None:
        ids = self.selected_run_ids()
        if len(ids) >= 2:
            self.compare_requested.emit(ids)
