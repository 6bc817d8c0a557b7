"""The Runs page: every run in the store with its status, progress, last loss and best pass@1 (with its 95%
interval), tags, notes, and the config fields that differ between the listed runs as columns.

The table is read from the store in a worker (a snapshot per refresh, stale replies dropped by request id) from
the run summaries ingest keeps (one row per run, however long the runs). Refreshes happen only while the page
is visible (a hidden page notes that it is stale and refreshes when shown) and are coalesced: a burst of stream
updates costs one query, and a refresh asked for during one starts only after a pause at least as long as
the last refresh took, so refreshes never run back to back. Runs are renamed, tagged, annotated, archived
(hidden unless "Show archived") and deleted (after a confirmation) from here; the store writes run in a
worker too, and `runs_edited` tells the window (tab titles follow).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
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
from PySide6.QtGui import QAction, QColor, QKeySequence
from PySide6.QtWidgets import (
    QAbstractItemView,
    QCheckBox,
    QDialog,
    QDialogButtonBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QMenu,
    QMessageBox,
    QPlainTextEdit,
    QPushButton,
    QTableView,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from app.gui.table_model import RowTableModel
from app.gui.theme import status_color
from app.gui.workers import WorkContext, Worker
from core.configdiff import MISSING, differing_paths, flatten, format_value, short_labels, sort_key
from core.names import printable

REFRESH_COALESCE_MS = 400
PERIODIC_REFRESH_MS = 10_000  # runs launched by another process (the CLI) show up without a stream event
COLUMNS = ("Name", "Cluster", "Status", "Created", "Steps", "Last loss", "Best pass@1", "Tags", "Notes")
COL_TAGS, COL_NOTES = 7, 8
MAX_CONFIG_COLUMNS = 24  # differing config fields shown as columns (the rest: tunedeck compare / the compare view)
ACTIVE_STATUSES = ("pending", "running", "completing")


log = logging.getLogger(__name__)


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
    display_name: str = ""  # unique among all runs (core.names), control characters escaped
    tags: tuple[str, ...] = ()
    notes: str = ""
    archived: bool = False
    best_half_width: float | None = None  # of the best pass@1's 95% interval
    best_tooltip: str = ""
    config: dict[str, Any] = field(default_factory=dict)  # flattened resolved config (dotted paths)

    @property
    def shown_name(self) -> str:
        return self.display_name or self.name


@dataclass(frozen=True)
class RunsSnapshot:
    request_id: int
    rows: tuple[RunSummaryRow, ...]


def _best_point(evals: list[dict[str, Any]]) -> Any:
    """The best pass@1 over checkpoints (a benchmark's 'all' subset, else its best subset) with its interval."""
    from core.evalstats import eval_points

    best = None
    by_bench: dict[str, list[Any]] = {}
    for p in eval_points(evals):
        by_bench.setdefault(p.benchmark, []).append(p)
    for points in by_bench.values():
        pool = [p for p in points if p.subset == "all"] or points
        top = max(pool, key=lambda p: p.pass_at_1)
        if best is None or top.pass_at_1 > best.pass_at_1:
            best = top
    return best


def read_runs(ctx: WorkContext, store: Any) -> RunsSnapshot:
    """Worker body: the runs with the summaries ingest keeps, in one query reading one row per run (the best
    pass@1's interval comes from the eval record the summary keeps for it)."""
    from core.names import display_names

    listed = store.list_run_summaries()
    names = display_names([run for run, _summary in listed])
    rows = []
    for run, s in listed:
        if ctx.cancel.is_set():
            break
        # The interval from the stored rate and task count (exact for greedy decoding): the summary holds the
        # record of each benchmark's and subset's best, which is all _best_point picks from.
        point = _best_point(list(s.best_evals))
        rows.append(RunSummaryRow(
            run.run_id, run.name, run.cluster or "", run.status, run.status_reason or "", run.created_at,
            s.steps, s.final_loss, point.pass_at_1 if point else None,
            point.benchmark if point else "", display_name=names[run.run_id], tags=tuple(run.tags), notes=run.notes,
            archived=run.archived, best_half_width=point.interval.half_width if point else None,
            best_tooltip=point.tooltip() if point else "", config=flatten(run.config())))
    return RunsSnapshot(ctx.request_id, tuple(rows))


def edit_run(ctx: WorkContext, store: Any, run_ids: list[str], changes: dict[str, Any]) -> list[str]:
    """Worker body: the same changes to each run (rename, tags, notes, archived)."""
    for run_id in run_ids:
        store.update_run(run_id, **changes)
    return run_ids


def delete_runs(ctx: WorkContext, store: Any, run_ids: list[str]) -> list[str]:
    """Worker body: remove runs from the store (their files on the cluster stay)."""
    return [run_id for run_id in run_ids if store.delete_run(run_id)]


class RunsModel(RowTableModel):
    """One row per run (RunSummaryRow); after the fixed COLUMNS, one column per config field that differs
    between the listed runs."""

    COLUMNS = COLUMNS

    def __init__(self, parent: Any = None):
        super().__init__(parent)
        self.config_paths: list[str] = []
        self.config_labels: dict[str, str] = {}

    def set_rows(self, rows: list[Any], config_paths: list[str] | None = None) -> None:
        self.beginResetModel()
        self.rows = rows
        self.config_paths = list(config_paths or [])
        self.config_labels = short_labels(self.config_paths)
        self.COLUMNS = (*COLUMNS, *(self.config_labels[p] for p in self.config_paths))  # type: ignore[misc]
        self.endResetModel()

    def config_path(self, col: int) -> str | None:
        return self.config_paths[col - len(COLUMNS)] if col >= len(COLUMNS) else None

    def headerData(self, section: int, orientation: Qt.Orientation, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if orientation == Qt.Orientation.Horizontal and role == Qt.ItemDataRole.ToolTipRole:
            path = self.config_path(section)
            return f"config: {path} (differs between the listed runs)" if path else None
        return super().headerData(section, orientation, role)

    def sort_key(self, row: int, col: int) -> Any:
        r = self.rows[row]
        path = self.config_path(col)
        if path is not None:
            return sort_key(r.config.get(path, MISSING))
        if col == COL_TAGS:
            return (not r.tags, ", ".join(r.tags).lower())
        if col == COL_NOTES:
            return (not r.notes, r.notes.lower())
        return (r.shown_name.lower(), r.cluster, r.status, r.created_at, r.steps or -1,
                r.last_loss if r.last_loss is not None else float("inf"),
                r.best_pass_at_1 if r.best_pass_at_1 is not None else -1.0)[col]

    def data(self, index: QModelIndex | QPersistentModelIndex, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if not index.isValid():
            return None
        r = self.rows[index.row()]
        col = index.column()
        path = self.config_path(col)
        if path is not None:
            if role in (Qt.ItemDataRole.DisplayRole, Qt.ItemDataRole.ToolTipRole):
                value = r.config.get(path, MISSING)
                return format_value(value) if role == Qt.ItemDataRole.DisplayRole else f"{path} = {format_value(value)}"
            if role == Qt.ItemDataRole.UserRole:
                return self.sort_key(index.row(), col)
            return None
        if role == Qt.ItemDataRole.DisplayRole:
            if col == COL_TAGS:
                return ", ".join(r.tags)
            if col == COL_NOTES:
                return r.notes.splitlines()[0] if r.notes else ""
            if col == 0:
                return r.shown_name
            if col == 1:
                return r.cluster
            if col == 2:
                return printable(f"{r.status} — {r.reason}" if r.reason else r.status)
            if col == 3:
                return datetime.fromtimestamp(r.created_at).strftime("%Y-%m-%d %H:%M")
            if col == 4:
                return "" if r.steps is None else str(r.steps)
            if col == 5:
                return "" if r.last_loss is None else f"{r.last_loss:.4f}"
            if col == 6:
                if r.best_pass_at_1 is None:
                    return ""
                spread = f" ± {100 * r.best_half_width:.1f}" if r.best_half_width is not None else ""
                return f"{100 * r.best_pass_at_1:.1f}%{spread}  ({r.best_label})"
        if role == Qt.ItemDataRole.UserRole:  # sort keys
            return self.sort_key(index.row(), col)
        if role == Qt.ItemDataRole.ToolTipRole:
            if col == 6 and r.best_tooltip:
                return r.best_tooltip
            tip = f"{r.shown_name}\nrun id {r.run_id}\n{r.status}{': ' + r.reason if r.reason else ''}"
            if r.tags:
                tip += "\ntags: " + ", ".join(r.tags)
            if r.archived:
                tip += "\narchived"
            return tip + (f"\n\n{r.notes}" if r.notes else "")
        if role == Qt.ItemDataRole.ForegroundRole and r.archived and col == 0:
            return QColor("#8c959f")
        if role == Qt.ItemDataRole.ForegroundRole and col == 2:
            return QColor(status_color(r.status))
        if role == Qt.ItemDataRole.TextAlignmentRole and col >= 4:
            return int(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        return None


def row_matches(r: RunSummaryRow, text: str, labels: dict[str, str] | None = None) -> bool:
    """The Runs filter: every whitespace-separated term must match. `tag:X` matches a tag starting with X;
    `FIELD=VALUE` a config field (its dotted path or column title) whose value starts with VALUE (`lr=3e-4`);
    any other term is looked for in the name, id, cluster, status, tags, notes and config values."""
    labels = labels or {}
    for term in text.lower().split():
        if term.startswith("tag:"):
            want = term[4:]
            if not any(t.lower().startswith(want) for t in r.tags):
                return False
            continue
        key, eq, want = term.partition("=")
        if eq and key:
            paths = [p for p in r.config if p.lower() == key or labels.get(p, "").lower() == key
                     or p.lower().endswith("." + key)]
            if not any(format_value(r.config[p]).lower().startswith(want) for p in paths):
                return False
            continue
        hay = " ".join([r.shown_name, r.name, r.run_id, r.cluster, r.status, r.reason, *r.tags, r.notes,
                        *(format_value(r.config.get(p, MISSING)) for p in labels)]).lower()
        if term not in hay:
            return False
    return True


class RunsFilter(QSortFilterProxyModel):
    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.setSortRole(Qt.ItemDataRole.UserRole)
        self.text = ""
        self.show_archived = False

    def set_text(self, text: str) -> None:
        self.beginFilterChange()
        self.text = text.strip().lower()
        self.endFilterChange()

    def set_show_archived(self, on: bool) -> None:
        self.beginFilterChange()
        self.show_archived = on
        self.endFilterChange()

    def lessThan(self, left: QModelIndex | QPersistentModelIndex, right: QModelIndex | QPersistentModelIndex) -> bool:
        # Python keys (tuples: numbers before text, missing last) that a QVariant comparison cannot order
        model = self.sourceModel()
        return model.sort_key(left.row(), left.column()) < model.sort_key(right.row(), right.column())

    def filterAcceptsRow(self, source_row: int, source_parent: QModelIndex | QPersistentModelIndex) -> bool:
        model = self.sourceModel()
        r = model.rows[source_row]
        if r.archived and not self.show_archived:
            return False
        if not self.text:
            return True
        return row_matches(r, self.text, model.config_labels)


class TextDialog(QDialog):
    """One text to edit (a name, tags, notes) with a check on OK: a bad value shows why and keeps the dialog."""

    def __init__(self, title: str, label: str, text: str, check: Callable[[str], Any], *, multiline: bool = False,
                 parent: QWidget | None = None):
        super().__init__(parent)
        self.setWindowTitle(title)
        self.setObjectName("run_edit_dialog")
        self.check = check
        self.value: Any = None
        self.edit: QLineEdit | QPlainTextEdit
        if multiline:
            self.edit = QPlainTextEdit(text)
            self.edit.setMinimumSize(420, 180)
        else:
            self.edit = QLineEdit(text)
            self.edit.selectAll()
            self.edit.setMinimumWidth(360)
        self.edit.setObjectName("run_edit_text")
        self.error = QLabel()
        self.error.setObjectName("run_edit_error")
        self.error.setStyleSheet("color: #cf222e;")
        self.error.setWordWrap(True)
        self.error.hide()
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel)
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        layout = QVBoxLayout(self)
        layout.addWidget(QLabel(label))
        layout.addWidget(self.edit)
        layout.addWidget(self.error)
        layout.addWidget(buttons)

    def text(self) -> str:
        return self.edit.toPlainText() if isinstance(self.edit, QPlainTextEdit) else self.edit.text()

    def set_text(self, text: str) -> None:
        if isinstance(self.edit, QPlainTextEdit):
            self.edit.setPlainText(text)
        else:
            self.edit.setText(text)

    def accept(self) -> None:
        try:
            self.value = self.check(self.text())
        except ValueError as exc:
            self.error.setText(str(exc))
            self.error.show()
            return
        super().accept()


def parse_tags(text: str) -> list[str]:
    """Tags as typed in the dialog: separated by commas or spaces, each checked (core.names.clean_tag)."""
    from core.names import clean_tag

    return list(dict.fromkeys(clean_tag(t) for t in text.replace(",", " ").split()))


def parse_notes(text: str) -> str:
    if "\0" in text:
        raise ValueError("notes cannot contain NUL characters")
    return text.rstrip()


class RunsPage(QWidget):
    """The Runs table; `open_requested(run_id)` and `compare_requested([run_id, ...])` go to the window."""

    open_requested = Signal(str)
    compare_requested = Signal(list)
    refreshed = Signal(int)  # number of runs
    runs_edited = Signal(list)  # run ids renamed, tagged, annotated, archived or deleted (written to the store)
    edit_failed = Signal(str)
    model_evaluation_done = Signal(str)  # run id, or "" when it was refused or failed

    def __init__(self, store: Any, parent: QWidget | None = None):
        super().__init__(parent)
        self.store = store
        self._worker: Worker | None = None
        self._request = 0
        self._pending = False  # a refresh was asked for while one ran
        self._stale = False  # changes were reported while the page was hidden
        self._started_at = 0.0
        self.last_refresh_s = 0.0  # how long the last refresh took, worker start to table filled
        self.refresh_count = 0

        self.filter_edit = QLineEdit()
        self.filter_edit.setObjectName("runs_filter")
        self.filter_edit.setPlaceholderText("Filter runs (Ctrl+F): name, status, tags, notes; tag:sweep; lr=3e-4")
        self.filter_edit.setToolTip("Every word must match. tag:X matches tags starting with X; FIELD=VALUE matches "
                                    "a config field (its column title or dotted path) whose value starts with VALUE.")
        self.filter_edit.setClearButtonEnabled(True)
        self.archived_check = QCheckBox("Show archived")
        self.archived_check.setObjectName("show_archived")
        self.archived_check.setToolTip("Archived runs are hidden from the list (and from `tunedeck runs`)")
        self.open_button = QPushButton("Open")
        self.compare_button = QPushButton("Compare")
        self.compare_button.setObjectName("compare_button")
        self.compare_button.setToolTip("Overlay the selected runs (select two or more)")
        refresh = QPushButton("Refresh")
        self.rename_action = QAction("Rename…", self, shortcut=QKeySequence("F2"))
        self.rename_action.triggered.connect(self.rename_selected)
        self.tags_action = QAction("Edit tags…", self)
        self.tags_action.triggered.connect(self.edit_tags_selected)
        self.notes_action = QAction("Edit notes…", self)
        self.notes_action.triggered.connect(self.edit_notes_selected)
        self.archive_action = QAction("Archive", self)
        self.archive_action.triggered.connect(self.toggle_archive_selected)
        self.delete_action = QAction("Delete…", self, shortcut=QKeySequence.StandardKey.Delete)
        self.delete_action.triggered.connect(self.delete_selected)
        self.edit_menu = QMenu(self)
        for action in (self.rename_action, self.tags_action, self.notes_action, None, self.archive_action,
                       self.delete_action):
            if action is None:
                self.edit_menu.addSeparator()
            else:
                self.edit_menu.addAction(action)
        self.edit_button = QToolButton()
        self.edit_button.setObjectName("run_edit_button")
        self.edit_button.setText("Run")
        self.edit_button.setToolTip("Rename, tag, annotate, archive or delete the selected runs")
        self.edit_button.setPopupMode(QToolButton.ToolButtonPopupMode.InstantPopup)
        self.edit_button.setMenu(self.edit_menu)
        self.evaluate_button = QPushButton("Evaluate model…")
        self.evaluate_button.setObjectName("evaluate_model_button")
        self.evaluate_button.setToolTip("Evaluate a model on a cluster (e.g. Code Llama-34B itself) with the same "
                                        "harness as checkpoints: a measured reference for the pass@1 charts")
        self.evaluate_button.clicked.connect(self.ask_model_evaluation)
        self.eval_dialog: Any = None
        self.eval_result: Any = None  # the last "Evaluate model…" outcome (run id or error text)
        self.eval_message: QMessageBox | None = None
        bar = QHBoxLayout()
        bar.addWidget(self.filter_edit, 1)
        bar.addWidget(self.archived_check)
        bar.addWidget(refresh)
        bar.addWidget(self.edit_button)
        bar.addWidget(self.evaluate_button)
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
        for col, width in ((1, 100), (3, 130), (4, 70), (5, 90), (6, 170), (COL_TAGS, 120), (COL_NOTES, 160)):
            self.table.setColumnWidth(col, width)
        for action in (self.rename_action, self.delete_action):
            # keys act on the table only: Delete in the filter box edits the filter text
            action.setShortcutContext(Qt.ShortcutContext.WidgetShortcut)
            self.table.addAction(action)
        self.table.setContextMenuPolicy(Qt.ContextMenuPolicy.CustomContextMenu)
        self.table.customContextMenuRequested.connect(
            lambda pos: self.edit_menu.popup(self.table.viewport().mapToGlobal(pos)))
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
        self.archived_check.toggled.connect(self._on_show_archived)
        refresh.clicked.connect(self.refresh)
        self.open_button.clicked.connect(self._on_open_clicked)
        self.compare_button.clicked.connect(self._on_compare_clicked)
        self.table.doubleClicked.connect(lambda _index: self._on_open_clicked())
        self.table.activated.connect(lambda _index: self._on_open_clicked())
        self.table.selectionModel().selectionChanged.connect(self._update_buttons)
        self._timer = QTimer(self, singleShot=True, interval=REFRESH_COALESCE_MS)
        self._timer.timeout.connect(self._on_timer)
        self._periodic = QTimer(self, interval=PERIODIC_REFRESH_MS)
        self._periodic.timeout.connect(self.schedule_refresh)
        self._periodic.start()
        self._edit_workers: list[Worker] = []
        self.dialog: QDialog | QMessageBox | None = None  # the open rename/tags/notes/delete dialog
        self._rows: list[RunSummaryRow] = []
        self._update_buttons()

    # ------------------------------------------------------------------ refresh

    def schedule_refresh(self, *_args: Any) -> None:
        """The store changed: refresh soon if the page is visible (bursts coalesce into one refresh), else
        when it is next shown."""
        if not self.isVisible():
            self._stale = True
            return
        if self._worker is not None:
            self._pending = True
        elif not self._timer.isActive():
            self._timer.start(REFRESH_COALESCE_MS)

    def _on_timer(self) -> None:
        if self.isVisible():
            self.refresh()
        else:
            self._stale = True

    def showEvent(self, event: Any) -> None:
        super().showEvent(event)
        if self._stale:
            self._stale = False
            self.refresh()

    @property
    def is_refreshing(self) -> bool:
        return self._worker is not None

    def refresh(self) -> None:
        """Read the table now (or, while a refresh runs, once more after it, coalesced)."""
        if self.store is None:
            return
        if self._worker is not None:
            self._pending = True
            return
        self._timer.stop()
        self._started_at = time.monotonic()
        worker = Worker(read_runs, self.store)
        self._request = worker.request_id
        worker.signals.finished.connect(self._on_snapshot)
        worker.signals.failed.connect(self._on_failed)
        self._worker = worker
        worker.start()

    def _after_worker(self) -> None:
        self._worker = None
        self.last_refresh_s = time.monotonic() - self._started_at
        self.refresh_count += 1
        if self._pending:
            # Never back to back: the next refresh waits at least as long as this one took, so a slow store
            # costs at most half a core however often changes are reported.
            self._pending = False
            if self.isVisible():
                self._timer.start(max(REFRESH_COALESCE_MS, int(1000 * self.last_refresh_s)))
            else:
                self._stale = True

    def _on_failed(self, _rid: int, message: str) -> None:
        self.status_label.setText(f"Could not read the run store: {message}")
        self._after_worker()

    def _on_snapshot(self, request_id: int, snapshot: RunsSnapshot) -> None:
        if request_id == self._request:
            self._rows = list(snapshot.rows)
            self._show_rows()
            self.refreshed.emit(len(snapshot.rows))
        self._after_worker()

    def _show_rows(self) -> None:
        """Fill the table; the config columns are the fields that differ between the runs listed (archived ones
        only when shown), so that the columns do not change while a filter is typed."""
        rows = self._rows
        selected = set(self.selected_run_ids())
        listed = [r for r in rows if self.archived_check.isChecked() or not r.archived]
        paths = differing_paths([r.config for r in listed], limit=MAX_CONFIG_COLUMNS)
        self.model.set_rows(rows, paths)
        for col in range(len(COLUMNS), self.model.columnCount()):
            self.table.setColumnWidth(col, 90)
        self._reselect(selected)
        self.empty_label.setVisible(not rows)
        active = sum(1 for r in rows if r.status in ACTIVE_STATUSES)
        hidden = len(rows) - len(listed)
        self.status_label.setText(f"{len(listed)} runs, {active} active" + (f", {hidden} archived hidden" if hidden else "")
                                  + f" · updated {time.strftime('%H:%M:%S')}")
        self._update_buttons()

    def _on_show_archived(self, on: bool) -> None:
        self.proxy.set_show_archived(on)
        self._show_rows()

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
        for action in (self.rename_action, self.tags_action, self.notes_action):
            action.setEnabled(n == 1)
        for action in (self.archive_action, self.delete_action):
            action.setEnabled(n >= 1)
        self.edit_button.setEnabled(n >= 1)
        rows = self.selected_rows()
        self.archive_action.setText("Unarchive" if rows and all(r.archived for r in rows) else "Archive")

    def selected_rows(self) -> list[RunSummaryRow]:
        by_id = {r.run_id: r for r in self.model.rows}
        return [by_id[i] for i in self.selected_run_ids() if i in by_id]

    # ------------------------------------------------------------------ run management

    def _single(self) -> RunSummaryRow | None:
        rows = self.selected_rows()
        return rows[0] if len(rows) == 1 else None

    def _open_dialog(self, dialog: QDialog, on_accepted: Callable[[], None]) -> QDialog:
        """Open a dialog window-modally without blocking (tests and the event loop go on); `self.dialog` holds it."""
        self.dialog = dialog
        dialog.accepted.connect(on_accepted)
        dialog.finished.connect(lambda _result: setattr(self, "dialog", None))
        dialog.open()
        return dialog

    def rename_selected(self) -> QDialog | None:
        from core.names import clean_name

        row = self._single()
        if row is None:
            return None
        dialog = TextDialog("Rename run", f"New name for run {row.run_id}:", row.name, clean_name, parent=self)
        return self._open_dialog(dialog, lambda: self._edit([row.run_id], {"name": dialog.value}))

    def edit_tags_selected(self) -> QDialog | None:
        row = self._single()
        if row is None:
            return None
        dialog = TextDialog("Edit tags", f"Tags of {row.shown_name}, separated by spaces or commas:",
                            " ".join(row.tags), parse_tags, parent=self)
        return self._open_dialog(dialog, lambda: self._edit([row.run_id], {"tags": dialog.value}))

    def edit_notes_selected(self) -> QDialog | None:
        row = self._single()
        if row is None:
            return None
        dialog = TextDialog("Edit notes", f"Notes on {row.shown_name}:", row.notes, parse_notes, multiline=True,
                            parent=self)
        return self._open_dialog(dialog, lambda: self._edit([row.run_id], {"notes": dialog.value}))

    def toggle_archive_selected(self) -> None:
        """Archive the selected runs (unarchive them when all are archived already)."""
        rows = self.selected_rows()
        if rows:
            self._edit([r.run_id for r in rows], {"archived": not all(r.archived for r in rows)})

    def delete_selected(self) -> QMessageBox | None:
        """Ask, then delete the selected runs from the store; runs still going are refused (cancel them first)."""
        rows = self.selected_rows()
        if not rows:
            return None
        active = [r for r in rows if r.status in ACTIVE_STATUSES]
        box = QMessageBox(self)
        box.setObjectName("delete_runs_dialog")
        box.setWindowTitle("Delete runs")
        if active:
            box.setIcon(QMessageBox.Icon.Information)
            box.setText(f"{len(active)} of the selected runs {'is' if len(active) == 1 else 'are'} still going: "
                        + ", ".join(r.shown_name for r in active) + ". Cancel them first.")
            box.setStandardButtons(QMessageBox.StandardButton.Ok)
            self.dialog = box
            box.finished.connect(lambda _result: setattr(self, "dialog", None))
            box.open()
            return box
        box.setIcon(QMessageBox.Icon.Warning)
        names = "\n".join(f"• {r.shown_name}" for r in rows[:12]) + (f"\n… and {len(rows) - 12} more" if len(rows) > 12 else "")
        box.setText(f"Delete {len(rows)} run{'s' if len(rows) != 1 else ''} from TuneDeck?")
        box.setInformativeText(f"{names}\n\nTheir metrics, evaluations, logs, tags and notes are removed from the "
                               "run store. Their files on the cluster stay. Archive a run instead to only hide it.")
        delete = box.addButton("Delete", QMessageBox.ButtonRole.DestructiveRole)
        box.addButton(QMessageBox.StandardButton.Cancel)
        box.setDefaultButton(QMessageBox.StandardButton.Cancel)
        ids = [r.run_id for r in rows]
        box.buttonClicked.connect(lambda button: self._start_edit(Worker(delete_runs, self.store, ids))
                                  if button is delete else None)
        self.dialog = box
        box.finished.connect(lambda _result: setattr(self, "dialog", None))
        box.open()
        return box

    def _edit(self, run_ids: list[str], changes: dict[str, Any]) -> None:
        self._start_edit(Worker(edit_run, self.store, run_ids, changes))

    def _start_edit(self, worker: Worker) -> None:
        worker.signals.finished.connect(lambda _rid, ids: self._on_edited(ids))
        worker.signals.failed.connect(self._on_edit_failed)
        self._edit_workers = [w for w in self._edit_workers if not w.done.is_set()]
        self._edit_workers.append(worker)
        worker.start()

    def _on_edited(self, run_ids: list[str]) -> None:
        self.refresh()
        self.runs_edited.emit(list(run_ids))

    def _on_edit_failed(self, _rid: int, message: str) -> None:
        self.status_label.setText(f"Could not change the run: {message}")
        self.edit_failed.emit(message)

    def _on_open_clicked(self) -> None:
        for run_id in self.selected_run_ids():
            self.open_requested.emit(run_id)

    def _on_compare_clicked(self) -> None:
        ids = self.selected_run_ids()
        if len(ids) >= 2:
            self.compare_requested.emit(ids)

    # ------------------------------------------------------------------ evaluate a model

    def ask_model_evaluation(self) -> Any:
        """Open the "Evaluate model…" dialog (window-modal, answered asynchronously)."""
        from app.gui.eval_dialog import EvaluateModelDialog

        try:
            from remote.profiles import load_profiles

            clusters = list(load_profiles())
        except Exception as exc:  # noqa: BLE001 -- a broken profiles file: say so, offer this machine only
            log.warning("cannot read cluster profiles: %s", exc)
            clusters = ["local"]
        dialog = EvaluateModelDialog(clusters, self)
        dialog.accepted.connect(lambda: self.evaluate_model(dialog.request()))
        self.eval_dialog = dialog
        dialog.open()
        return dialog

    def evaluate_model(self, request: Any, force: bool = False) -> None:
        """Launch the evaluation-only run in a worker; the new run opens when it is started."""
        if request is None:
            return
        store = self.store

        def work(_ctx: Any) -> str:
            from remote.runs import launch_reference, reference_config

            config = reference_config(
                request.model_path, request.label, benchmarks=[_bench(b) for b in request.benchmarks],
                gpus=request.gpus, limit=request.limit, max_new_tokens=request.max_new_tokens,
                batch_size=request.batch_size)
            return launch_reference(request.model_path, request.cluster, store, config, force=force)

        worker = Worker(work)
        worker.signals.finished.connect(lambda _rid, run_id: self._on_model_evaluation(run_id))
        worker.signals.failed.connect(lambda _rid, msg: self._on_model_evaluation_failed(request, msg))
        self.evaluate_button.setEnabled(False)
        self._eval_worker = worker
        worker.start()

    def _on_model_evaluation(self, run_id: str) -> None:
        self.evaluate_button.setEnabled(True)
        self.eval_result = run_id
        self.schedule_refresh()
        self.open_requested.emit(run_id)
        self.model_evaluation_done.emit(run_id)

    def _on_model_evaluation_failed(self, request: Any, message: str) -> None:
        self.evaluate_button.setEnabled(True)
        self.eval_result = message
        self.model_evaluation_done.emit("")
        refused = "launch refused:" in message
        box = QMessageBox(QMessageBox.Icon.Warning if refused else QMessageBox.Icon.Critical,
                          "Evaluation refused" if refused else "Evaluation failed",
                          message.split("launch refused:", 1)[1].strip() if refused else message,
                          (QMessageBox.StandardButton.Yes if refused else QMessageBox.StandardButton.NoButton)
                          | QMessageBox.StandardButton.Cancel, self)
        if refused:
            box.button(QMessageBox.StandardButton.Yes).setText("Evaluate anyway")
            box.finished.connect(lambda result: self.evaluate_model(request, force=True)
                                 if result == QMessageBox.StandardButton.Yes else None)
        box.setWindowModality(Qt.WindowModality.WindowModal)
        self.eval_message = box
        box.open()


def _bench(spec: str) -> tuple[str, str | None]:
    from core.evalsets import parse_eval_spec

    return parse_eval_spec(spec)
