"""Each checkpoint's evaluation of one run: queued / running (with progress) / finished / failed / cancelled,
with Cancel, Re-queue and "Evaluate checkpoint…".

The widget renders core.evalstate.EvalState values it is given and emits what the user asks for; the run
view does the work (remote.evals, off the UI thread) and feeds the states back.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QColor
from PySide6.QtWidgets import (
    QAbstractItemView,
    QHBoxLayout,
    QHeaderView,
    QInputDialog,
    QLabel,
    QProgressBar,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from app.gui.theme import status_color
from core.evalstate import CANCELLED, FAILED, FINISHED, QUEUED, RUNNING, EvalState

# An evaluation's state is drawn in the colour of the run status it matches (app.gui.theme, one table).
_AS_RUN_STATUS = {QUEUED: "pending", RUNNING: "running", FINISHED: "finished", FAILED: "failed", CANCELLED: "cancelled"}
COLUMNS = ("Step", "State", "Progress", "Engine", "tokens/s", "pass@1", "Where")


class EvaluationsPanel(QWidget):
    """A table of the run's checkpoint evaluations and the actions on the selected one."""

    cancel_requested = Signal(int)  # step
    requeue_requested = Signal(int)  # step
    evaluate_requested = Signal(int)  # step (a checkpoint not evaluated yet, or again)
    checkpoints_wanted = Signal()  # "Evaluate checkpoint…": the view lists the run's checkpoints

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.states: dict[int, EvalState] = {}
        self.table = QTableWidget(0, len(COLUMNS))
        self.table.setObjectName("evaluations_table")
        self.table.setHorizontalHeaderLabels(list(COLUMNS))
        self.table.verticalHeader().hide()
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.horizontalHeader().setSectionResizeMode(1, QHeaderView.ResizeMode.Stretch)
        self.table.itemSelectionChanged.connect(self._update_buttons)
        self.cancel_button = QPushButton("Cancel evaluation")
        self.cancel_button.setToolTip("Stop the selected queued or running evaluation (its Slurm job or process)")
        self.cancel_button.clicked.connect(lambda: self._emit(self.cancel_requested))
        self.requeue_button = QPushButton("Re-queue")
        self.requeue_button.setToolTip("Evaluate the selected checkpoint again, where the run's evaluations go")
        self.requeue_button.clicked.connect(lambda: self._emit(self.requeue_requested))
        self.evaluate_button = QPushButton("Evaluate checkpoint…")
        self.evaluate_button.setToolTip("Evaluate any checkpoint of this run still on the cluster")
        self.evaluate_button.clicked.connect(self.checkpoints_wanted.emit)
        self.status_label = QLabel("No evaluation requested yet.")
        self.status_label.setObjectName("evaluations_status")
        self.status_label.setWordWrap(True)
        bar = QHBoxLayout()
        bar.addWidget(self.cancel_button)
        bar.addWidget(self.requeue_button)
        bar.addWidget(self.evaluate_button)
        bar.addStretch(1)
        bar.addWidget(self.status_label, 2)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(4, 4, 4, 4)
        layout.addLayout(bar)
        layout.addWidget(self.table, 1)
        self._update_buttons()

    # ------------------------------------------------------------------ model -> view

    def set_states(self, states: Mapping[int, EvalState]) -> None:
        """Show these evaluations (one row per step, newest step first), keeping the selected step."""
        selected = self.selected_step()
        self.states = dict(states)
        steps = sorted(self.states, reverse=True)
        self.table.setRowCount(len(steps))
        for row, step in enumerate(steps):
            s = self.states[step]
            cells = [str(step), s.label(), "", _engine(s), f"{s.tokens_per_s:,.0f}" if s.tokens_per_s else "",
                     _pass(s), _where(s)]
            for col, text in enumerate(cells):
                if col == 2:
                    continue
                item = self.table.item(row, col)
                if item is None:
                    item = QTableWidgetItem()
                    self.table.setItem(row, col, item)
                item.setText(text)
                item.setData(Qt.ItemDataRole.UserRole, step)
                if col == 1:
                    item.setForeground(QColor(status_color(_AS_RUN_STATUS.get(s.state, "unknown"))))
                    item.setToolTip(s.error or s.label())
            bar = self.table.cellWidget(row, 2)
            if not isinstance(bar, QProgressBar):  # one bar per row, kept and updated
                bar = QProgressBar()
                bar.setTextVisible(True)
                self.table.setCellWidget(row, 2, bar)
            _show_progress(bar, s)
        if selected in self.states:
            self.select_step(selected)
        n_open = sum(1 for s in self.states.values() if s.open)
        failed = sum(1 for s in self.states.values() if s.state == FAILED)
        self.status_label.setText(
            "No evaluation requested yet." if not self.states else
            f"{len(self.states)} checkpoint{'s' if len(self.states) != 1 else ''}: {n_open} queued or running"
            + (f", {failed} failed" if failed else ""))
        self.table.resizeColumnToContents(0)
        self._update_buttons()

    def progress_of(self, step: int) -> tuple[int, int] | None:
        """(value, maximum) of a row's progress bar (None without a bar)."""
        for row in range(self.table.rowCount()):
            item = self.table.item(row, 0)
            if item is not None and item.data(Qt.ItemDataRole.UserRole) == step:
                bar = self.table.cellWidget(row, 2)
                return (bar.value(), bar.maximum()) if isinstance(bar, QProgressBar) else None
        return None

    # ------------------------------------------------------------------ selection and actions

    def selected_step(self) -> int | None:
        items = self.table.selectedItems()
        return items[0].data(Qt.ItemDataRole.UserRole) if items else None

    def select_step(self, step: int) -> None:
        for row in range(self.table.rowCount()):
            item = self.table.item(row, 0)
            if item is not None and item.data(Qt.ItemDataRole.UserRole) == step:
                self.table.selectRow(row)
                return

    def _update_buttons(self) -> None:
        s = self.states.get(self.selected_step()) if self.selected_step() is not None else None
        self.cancel_button.setEnabled(s is not None and s.open)
        self.requeue_button.setEnabled(s is not None and s.state in (FAILED, CANCELLED, FINISHED))
        self.requeue_button.setText("Evaluate again" if s is not None and s.state == FINISHED else "Re-queue")

    def _emit(self, signal: Signal) -> None:
        step = self.selected_step()
        if step is not None:
            signal.emit(step)

    def set_busy(self, text: str | None) -> None:
        """Disable the actions while a request is on its way; None re-enables them."""
        for button in (self.cancel_button, self.requeue_button, self.evaluate_button):
            button.setEnabled(text is None)
        if text is None:
            self._update_buttons()
        else:
            self.status_label.setText(text)

    def choose_checkpoint(self, steps: Sequence[int]) -> int | None:
        """Ask which checkpoint to evaluate (the ones on the cluster); None when cancelled or there is none."""
        if not steps:
            self.status_label.setText("No checkpoint of this run is on the cluster (pruned, or none saved yet).")
            return None
        items = [f"step {s}" + (f" ({self.states[s].state})" if s in self.states else "") for s in steps]
        choice, ok = QInputDialog.getItem(self, "Evaluate checkpoint", "Checkpoint:", items, len(items) - 1, False)
        return steps[items.index(choice)] if ok and choice in items else None


def _engine(s: EvalState) -> str:
    if not s.engine:
        return ""
    return f"{s.engine} on {s.gpus}" if s.gpus else s.engine


def _pass(s: EvalState) -> str:
    shown = [f"{k.replace('/all', '')} {v * 100:.1f}%" for k, v in s.pass_at_1.items()
             if v is not None and k.endswith("/all")]
    return ", ".join(shown)


def _where(s: EvalState) -> str:
    if s.placement == "slurm":
        return f"Slurm job {s.job_id}" if s.job_id else "Slurm"
    return (s.placement or "").replace("_", " ")


def _show_progress(bar: QProgressBar, s: EvalState) -> None:
    if s.state == RUNNING and s.total:
        bar.setRange(0, s.total)
        bar.setValue(s.done)
        bar.setFormat(f"{s.phase} %v/%m")
    elif s.state == RUNNING:
        bar.setRange(0, 0)  # busy: no phase has reported its size yet
    elif s.state == FINISHED:
        bar.setRange(0, 1)
        bar.setValue(1)
        bar.setFormat("done")
    else:
        bar.setRange(0, 1)
        bar.setValue(0)
        bar.setFormat(s.state)


__all__ = ["EvaluationsPanel"]
