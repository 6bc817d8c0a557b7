"""Nodes and ranks of one run: where each training process runs, how far it got, when it was last heard from
and how it ended; the node a failed run lost first is marked, a rank that fell silent is flagged.

Self-contained: it reads the run store (the per-rank records the status poll ingests, core.records
rank_record) on its own timer, off the UI thread, and renders a frozen snapshot; the judging is core.nodes'.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from PySide6.QtCore import QTimer
from PySide6.QtGui import QColor
from PySide6.QtWidgets import (
    QAbstractItemView,
    QHeaderView,
    QLabel,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from app.gui.workers import WorkContext, Worker
from core.nodes import (
    SILENT_AFTER_S,
    STALL_MIN_S,
    NodeFailure,
    RankState,
    diagnose_failure,
    latest_attempt,
    nodes,
)
from core.store import TERMINAL_STATUSES, Store

REFRESH_MS = 2000
COLUMNS = ("Node", "Rank", "Local rank", "PID", "State", "Step", "Last heartbeat", "Error")
FAILED_BG = QColor("#ffebe9")
SILENT_BG = QColor("#fff8c5")


@dataclass(frozen=True)
class NodesSnapshot:
    """What the panel shows, read on a worker thread."""

    ranks: tuple[RankState, ...]
    failure: NodeFailure | None
    now: float  # the clock heartbeats are judged against (the end of the run, once it ended)
    status: str | None


def read_nodes(ctx: WorkContext, store: Store, run_id: str) -> NodesSnapshot:
    row = store.get_run(run_id)
    records = store.ranks(run_id)
    ranks = tuple(latest_attempt(records))
    failure = diagnose_failure(records) if row is not None and row.status == "failed" else None
    ended = row is not None and row.status in TERMINAL_STATUSES and row.finished_at
    return NodesSnapshot(ranks, failure, float(row.finished_at) if ended else time.time(),
                         row.status if row is not None else None)


def _ago(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s ago"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min ago"
    return f"{seconds / 3600:.1f} h ago"


class NodesPanel(QWidget):
    """A table of the run's ranks grouped by node (the rendezvous host first), refreshed while shown."""

    def __init__(self, store: Store, run_id: str, parent: QWidget | None = None, refresh_ms: int = REFRESH_MS):
        super().__init__(parent)
        self.setObjectName("nodes_panel")
        self.store = store
        self.run_id = run_id
        self.snapshot: NodesSnapshot | None = None
        self._worker: Worker | None = None
        self.summary = QLabel("No rank has reported yet (each training process writes its own record once it starts).")
        self.summary.setObjectName("nodes_summary")
        self.summary.setWordWrap(True)
        self.failure_label = QLabel()
        self.failure_label.setObjectName("nodes_failure")
        self.failure_label.setWordWrap(True)
        self.failure_label.setStyleSheet("color:#82071e; background:#ffebe9; border:1px solid #ff8182; padding:4px;")
        self.failure_label.hide()
        self.table = QTableWidget(0, len(COLUMNS))
        self.table.setObjectName("nodes_table")
        self.table.setHorizontalHeaderLabels(COLUMNS)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.verticalHeader().hide()
        self.table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        self.table.horizontalHeader().setStretchLastSection(True)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(4, 4, 4, 4)
        layout.addWidget(self.summary)
        layout.addWidget(self.failure_label)
        layout.addWidget(self.table, 1)
        self.timer = QTimer(self)
        self.timer.setInterval(refresh_ms)
        self.timer.timeout.connect(self.refresh)
        self.refresh()

    # ------------------------------------------------------------------ data in

    def refresh(self) -> None:
        """Read the store again (skipped while a read is still running)."""
        if self._worker is not None and not self._worker.done.is_set():
            return
        worker = Worker(read_nodes, self.store, self.run_id)
        worker.signals.finished.connect(self._on_read)
        self._worker = worker
        worker.start()

    def _on_read(self, request_id: int, snapshot: NodesSnapshot) -> None:
        if self._worker is None or request_id != self._worker.request_id:
            return
        self.snapshot = snapshot
        self._render()
        if snapshot.status in TERMINAL_STATUSES:
            self.timer.stop()  # nothing changes any more

    def showEvent(self, event: Any) -> None:
        super().showEvent(event)
        if self.snapshot is None or self.snapshot.status not in TERMINAL_STATUSES:
            self.timer.start()
        self.refresh()

    def hideEvent(self, event: Any) -> None:
        super().hideEvent(event)
        self.timer.stop()

    def stop(self) -> None:
        self.timer.stop()

    # ------------------------------------------------------------------ rendering

    def _render(self) -> None:
        snap = self.snapshot
        if snap is None or not snap.ranks:
            self.table.setRowCount(0)
            return
        groups = nodes(snap.ranks)
        first = snap.ranks[0]
        self.summary.setText(f"{len(groups)} node{'s' if len(groups) != 1 else ''} · world size {first.world_size} · "
                             f"attempt {first.attempt} · rendezvous on {groups[0].host} (rank 0)")
        failed_host = snap.failure.host if snap.failure is not None else None
        if snap.failure is not None:
            self.failure_label.setText(snap.failure.summary())
            self.failure_label.show()
        else:
            self.failure_label.hide()
        rows = [r for g in groups for r in g.ranks]
        self.table.setRowCount(len(rows))
        for i, r in enumerate(rows):
            silent = r.silent_for(snap.now)
            state = r.state
            beat = f"{time.strftime('%H:%M:%S', time.localtime(r.t))} ({_ago(max(0.0, snap.now - r.t))})"
            if r.stalled_s >= STALL_MIN_S:
                beat += f", once silent for {r.stalled_s:.0f} s"
            if silent > SILENT_AFTER_S:
                state = f"{r.state} · silent for {silent:.0f} s" if snap.status not in TERMINAL_STATUSES else \
                    f"{r.state} · no end recorded"
            values = (r.host, str(r.rank), str(r.local_rank), str(r.pid), state,
                      "" if r.step is None else str(r.step), beat, (r.error or "").splitlines()[0][:300] if r.error else "")
            for col, value in enumerate(values):
                item = QTableWidgetItem(value)
                if r.error and col == len(values) - 1:
                    item.setToolTip(r.error)
                if r.host == failed_host:
                    item.setBackground(FAILED_BG)
                elif silent > SILENT_AFTER_S or (snap.status in TERMINAL_STATUSES and not r.ended):
                    item.setBackground(SILENT_BG)
                self.table.setItem(i, col, item)

    def rows_text(self) -> list[list[str]]:
        """The table's cells as text (what a user reads)."""
        return [[self.table.item(i, c).text() for c in range(self.table.columnCount())]
                for i in range(self.table.rowCount())]

    def row_is_marked_failed(self, row: int) -> bool:
        return self.table.item(row, 0).background().color() == FAILED_BG
