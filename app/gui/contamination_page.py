"""The Contamination page: pick training files and eval sets, run core.decontam's matcher in the background,
then inspect each eval item with the matched span highlighted in the eval question and the training row.

Highlights come straight from the report's raw-text spans (`eval_span`, `train_span`); nothing is re-matched
here. The check runs in a child process driven from a pool thread (app.gui.check_process says why).
"""

from __future__ import annotations

import html
import logging
import time
from pathlib import Path
from typing import Any

from PySide6.QtCore import (
    QModelIndex,
    QPersistentModelIndex,
    QSortFilterProxyModel,
    Qt,
    Signal,
)
from PySide6.QtGui import QColor, QTextCharFormat, QTextCursor
from PySide6.QtWidgets import (
    QAbstractItemView,
    QCheckBox,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QListWidget,
    QListWidgetItem,
    QMessageBox,
    QPlainTextEdit,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QSplitter,
    QTableView,
    QTextEdit,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from app.gui.check_process import CheckRequest, CheckResult, run_in_process
from app.gui.table_model import RowTableModel
from app.gui.theme import monospace_font, palette_is_dark
from app.gui.workers import WorkContext, Worker

log = logging.getLogger(__name__)

OPTIONAL_BENCHMARKS = ("mbpp", "mbppplus", "humanevalplus")
BENCHMARK_TITLES = {"humaneval": "HumanEval", "mbpp": "MBPP", "mbppplus": "MBPP+", "humanevalplus": "HumanEval+"}
MODES = ("sampled", "exhaustive", "ngram13")


# ------------------------------------------------------------------------------------- thread crossing


def run_check_job(ctx: WorkContext, request: CheckRequest) -> CheckResult:
    """Worker body: the check in a child process (see app.gui.check_process for why), progress relayed."""
    return run_in_process(request, ctx.progress, ctx.cancel)


# ------------------------------------------------------------------------------------------ table model


COLUMNS = ("Benchmark", "Task", "Contaminated", "Rows")


class ItemsModel(RowTableModel):
    """The report's eval items as rows."""

    COLUMNS = COLUMNS

    def data(self, index: QModelIndex | QPersistentModelIndex, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if not index.isValid():
            return None
        item = self.rows[index.row()]
        col = index.column()
        if role == Qt.ItemDataRole.DisplayRole:
            return (
                BENCHMARK_TITLES.get(item["benchmark"], item["benchmark"]),
                item["task_id"],
                "yes" if item["contaminated"] else "no",
                item.get("n_matching_rows", len(item.get("matches", []))),
            )[col]
        if role == Qt.ItemDataRole.UserRole:  # sort key
            return (item["benchmark"], _task_sort_key(item["task_id"]), int(item["contaminated"]),
                    item.get("n_matching_rows", 0))[col]
        if role == Qt.ItemDataRole.ForegroundRole and item["contaminated"] and col == 2:
            return QColor("#f87171" if palette_is_dark() else "#cf222e")
        if role == Qt.ItemDataRole.TextAlignmentRole and col == 3:
            return int(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        return None


def group_matches(matches: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """The report's matches (one per matched window) grouped by training row and field, in report order."""
    groups: dict[tuple[Any, Any, str], list[dict[str, Any]]] = {}
    for m in matches:
        groups.setdefault((m.get("file_index"), m["train_index"], m["field"]), []).append(m)
    return list(groups.values())


def _task_sort_key(task_id: str) -> tuple[str, int]:
    head, _, tail = task_id.rpartition("/")
    return (head, int(tail)) if tail.isdigit() else (task_id, 0)


class ItemsFilter(QSortFilterProxyModel):
    """Text filter over benchmark/task id/question, and a contaminated-only switch."""

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.contaminated_only = False
        self.text = ""
        self.setSortRole(Qt.ItemDataRole.UserRole)

    def set_filter(self, text: str | None = None, contaminated_only: bool | None = None) -> None:
        self.beginFilterChange()
        if text is not None:
            self.text = text.strip().lower()
        if contaminated_only is not None:
            self.contaminated_only = contaminated_only
        self.endFilterChange()

    def filterAcceptsRow(self, source_row: int, source_parent: QModelIndex | QPersistentModelIndex) -> bool:
        item = self.sourceModel().rows[source_row]
        if self.contaminated_only and not item["contaminated"]:
            return False
        if self.text:
            hay = f"{item['benchmark']} {BENCHMARK_TITLES.get(item['benchmark'], '')} {item['task_id']} {item.get('question', '')}".lower()
            return self.text in hay
        return True


# ------------------------------------------------------------------------------------------ highlighting


def utf16_offset(text: str, index: int) -> int:
    """Qt text positions count UTF-16 code units; Python indexes code points."""
    prefix = text[:index]
    return index + sum(1 for ch in prefix if ord(ch) > 0xFFFF)


def display_text(raw: str) -> str:
    """The raw text as shown: carriage returns become spaces so every offset stays the same."""
    return raw.replace("\r", " ").replace("\u2029", " ").replace("\u2028", " ")


def highlight_formats() -> tuple[QTextCharFormat, QTextCharFormat]:
    """(strong, faint) highlight formats readable on the current palette."""
    strong, faint = QTextCharFormat(), QTextCharFormat()
    if palette_is_dark():
        strong.setBackground(QColor("#8a6d00"))
        strong.setForeground(QColor("#fff7d6"))
        faint.setBackground(QColor("#3d3520"))
    else:
        strong.setBackground(QColor("#ffe066"))
        strong.setForeground(QColor("#1f2328"))
        faint.setBackground(QColor("#fff4c2"))
    return strong, faint


def set_highlights(edit: QPlainTextEdit, raw: str, spans: list[tuple[int, int]], strong_index: int | None = 0) -> None:
    """Show `raw` with each [start, end) span highlighted (one strong, the others faint) via ExtraSelections."""
    edit.setPlainText(display_text(raw))
    strong_fmt, faint_fmt = highlight_formats()
    selections = []
    first_cursor = None
    for i, (start, end) in enumerate(spans):
        sel = QTextEdit.ExtraSelection()
        cursor = QTextCursor(edit.document())
        cursor.setPosition(utf16_offset(raw, start))
        cursor.setPosition(utf16_offset(raw, end), QTextCursor.MoveMode.KeepAnchor)
        sel.cursor = cursor
        sel.format = strong_fmt if i == strong_index else faint_fmt
        selections.append(sel)
        if i == strong_index:
            first_cursor = QTextCursor(cursor)
    edit.setExtraSelections(selections)
    if first_cursor is not None:
        c = QTextCursor(edit.document())
        c.setPosition(first_cursor.selectionStart())
        edit.setTextCursor(c)
        edit.ensureCursorVisible()


def highlighted_texts(edit: QPlainTextEdit) -> list[str]:
    """The text under each highlight as the widget holds it (tests compare it with the report)."""
    return [sel.cursor.selectedText().replace("\u2029", "\n") for sel in edit.extraSelections()]


# ------------------------------------------------------------------------------------------ the page


class EvalSetRow(QWidget):
    """One optional benchmark: a checkbox and the file it comes from."""

    def __init__(self, name: str, parent: QWidget | None = None):
        super().__init__(parent)
        self.name = name
        self.check = QCheckBox(BENCHMARK_TITLES[name])
        self.check.setMinimumWidth(110)
        self.path = QLineEdit()
        self.path.setPlaceholderText(f"{name} data file (tunedeck data download)")
        self.path.textEdited.connect(lambda text: self.check.setChecked(bool(text)))
        browse = QToolButton()
        browse.setText("…")
        browse.clicked.connect(self._on_browse_clicked)
        layout = QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.check)
        layout.addWidget(self.path, 1)
        layout.addWidget(browse)

    def _on_browse_clicked(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, BENCHMARK_TITLES[self.name], self.path.text(), "Data (*.jsonl *.json *.parquet);;All files (*)")
        if path:
            self.path.setText(path)
            self.check.setChecked(True)

    def spec(self) -> str | None:
        if self.check.isChecked() and self.path.text().strip():
            return f"{self.name}={self.path.text().strip()}"
        return None


class ContaminationPage(QWidget):
    """Check training data against eval sets and inspect every flagged item."""

    report_attached = Signal(str)  # path of the saved report
    check_finished = Signal(object)  # CheckResult
    check_failed = Signal(str)
    check_cancelled = Signal()
    clean_written = Signal(str)  # path of the cleaned training set, once written

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.result: CheckResult | None = None
        self.report_path: Path | None = None
        self._worker: Worker | None = None
        self._request: CheckRequest | None = None
        self._matches: list[dict[str, Any]] = []
        self._row_matches: list[list[dict[str, Any]]] = []  # the matches grouped by training row and field
        self._item: dict[str, Any] | None = None
        self.finished_at: float | None = None

        # ---- inputs
        self.train_list = QListWidget()
        self.train_list.setObjectName("train_list")
        self.train_list.setMaximumHeight(70)
        self.train_list.setSelectionMode(QAbstractItemView.SelectionMode.ExtendedSelection)
        add = QPushButton("Add…")
        add.clicked.connect(self._on_add_train_clicked)
        remove = QPushButton("Remove")
        remove.clicked.connect(lambda: [self.train_list.takeItem(self.train_list.row(i)) for i in self.train_list.selectedItems()])
        train_buttons = QVBoxLayout()
        train_buttons.addWidget(add)
        train_buttons.addWidget(remove)
        train_buttons.addStretch(1)
        train_row = QHBoxLayout()
        train_row.addWidget(self.train_list, 1)
        train_row.addLayout(train_buttons)
        self.fields_edit = QLineEdit()
        self.fields_edit.setPlaceholderText("all text fields (or e.g. instruction, answer)")
        self.fields_edit.setToolTip("Training text fields to check, comma-separated; empty: every string field of a row")

        self.humaneval_check = QCheckBox("HumanEval (built in)")
        self.humaneval_check.setChecked(True)
        self.eval_rows = {name: EvalSetRow(name) for name in OPTIONAL_BENCHMARKS}
        evals = QVBoxLayout()
        evals.setSpacing(2)
        evals.addWidget(self.humaneval_check)
        for row in self.eval_rows.values():
            evals.addWidget(row)

        self.mode_combo = QComboBox()
        self.mode_combo.addItems(MODES)
        self.mode_combo.setToolTip("sampled: OpenAI's three random 50-character windows per item; exhaustive: every "
                                   "window; ngram13: GPT-3 style 13-word n-grams")
        self.allow_no_text_check = QCheckBox("Report files without text (marked NO TEXT CHECKED) instead of failing")
        self.allow_no_text_check.setObjectName("allow_no_text_check")
        self.allow_no_text_check.setToolTip("A training file whose rows hold no text (say, only number columns) "
                                            "cannot be checked; by default that stops the check with an error")
        self.seed_spin = QSpinBox()
        self.seed_spin.setRange(0, 2**31 - 1)
        self.seed_spin.setToolTip("Seed for the sampled windows (the same seed gives the same report)")
        self.run_button = QPushButton("Run check")
        self.run_button.setObjectName("run_check_button")
        self.run_button.setDefault(True)
        self.run_button.clicked.connect(self.start_check)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setObjectName("cancel_check_button")
        self.cancel_button.setEnabled(False)
        self.cancel_button.clicked.connect(self.cancel_check)
        self.progress = QProgressBar()
        self.progress.setObjectName("check_progress")
        self.progress.setRange(0, 1000)
        self.progress.setValue(0)
        self.progress.setTextVisible(True)
        self.progress.setFormat("idle")

        inputs = QGroupBox("Check")
        form = QFormLayout(inputs)
        form.setLabelAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignTop)
        form.addRow("Training data", train_row)
        form.addRow("Text fields", self.fields_edit)
        form.addRow("", self.allow_no_text_check)
        form.addRow("Eval sets", evals)
        options = QHBoxLayout()
        options.addWidget(QLabel("Mode"))
        options.addWidget(self.mode_combo)
        options.addSpacing(12)
        options.addWidget(QLabel("Seed"))
        options.addWidget(self.seed_spin)
        options.addSpacing(12)
        options.addWidget(self.progress, 1)
        options.addWidget(self.run_button)
        options.addWidget(self.cancel_button)
        form.addRow("", options)

        # ---- results: table
        self.filter_edit = QLineEdit()
        self.filter_edit.setObjectName("items_filter")
        self.filter_edit.setPlaceholderText("Filter items (Ctrl+F): benchmark, task id or question text")
        self.filter_edit.setClearButtonEnabled(True)
        self.contaminated_only = QCheckBox("Contaminated only")
        self.contaminated_only.setObjectName("contaminated_only")
        self.model = ItemsModel(self)
        self.proxy = ItemsFilter(self)
        self.proxy.setSourceModel(self.model)
        self.filter_edit.textChanged.connect(lambda text: self.proxy.set_filter(text=text))
        self.contaminated_only.toggled.connect(lambda on: self.proxy.set_filter(contaminated_only=on))
        self.table = QTableView()
        self.table.setObjectName("items_table")
        self.table.setModel(self.proxy)
        self.table.setSortingEnabled(True)
        self.table.sortByColumn(2, Qt.SortOrder.DescendingOrder)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.table.setAlternatingRowColors(True)
        self.table.verticalHeader().hide()
        self.table.verticalHeader().setDefaultSectionSize(22)
        header = self.table.horizontalHeader()
        header.setSectionResizeMode(1, QHeaderView.ResizeMode.Stretch)
        header.setSectionResizeMode(0, QHeaderView.ResizeMode.ResizeToContents)
        header.setSectionResizeMode(2, QHeaderView.ResizeMode.ResizeToContents)
        header.setSectionResizeMode(3, QHeaderView.ResizeMode.ResizeToContents)
        self.table.selectionModel().currentRowChanged.connect(self._on_table_current_changed)
        self.summary_label = QLabel("Run a check to see the eval items.")
        self.summary_label.setObjectName("summary_label")
        self.summary_label.setWordWrap(True)
        left = QWidget()
        ll = QVBoxLayout(left)
        ll.setContentsMargins(0, 0, 0, 0)
        fl = QHBoxLayout()
        fl.addWidget(self.filter_edit, 1)
        fl.addWidget(self.contaminated_only)
        ll.addLayout(fl)
        ll.addWidget(self.table, 1)
        ll.addWidget(self.summary_label)

        # ---- results: detail
        mono = monospace_font()
        self.eval_title = QLabel("Eval question")
        self.eval_title.setStyleSheet("font-weight: 600;")
        self.eval_view = QPlainTextEdit()
        self.eval_view.setObjectName("eval_view")
        self.eval_view.setReadOnly(True)
        self.eval_view.setFont(mono)
        self.train_title = QLabel("Training row")
        self.train_title.setStyleSheet("font-weight: 600;")
        self.train_view = QPlainTextEdit()
        self.train_view.setObjectName("train_view")
        self.train_view.setReadOnly(True)
        self.train_view.setFont(mono)
        texts = QSplitter(Qt.Orientation.Horizontal)
        texts.addWidget(_titled(self.eval_title, self.eval_view))
        texts.addWidget(_titled(self.train_title, self.train_view))
        texts.setChildrenCollapsible(False)
        self.matches_list = QListWidget()
        self.matches_list.setObjectName("matches_list")
        self.matches_list.currentRowChanged.connect(self._on_match_selected)
        self.windows_list = QListWidget()
        self.windows_list.setObjectName("windows_list")
        self.windows_list.setFont(mono)
        lists = QSplitter(Qt.Orientation.Horizontal)
        lists.addWidget(_titled(QLabel("Matching training rows"), self.matches_list))
        lists.addWidget(_titled(QLabel("Sampled windows (processed text)"), self.windows_list))
        detail = QSplitter(Qt.Orientation.Vertical)
        detail.addWidget(texts)
        detail.addWidget(lists)
        detail.setStretchFactor(0, 3)
        detail.setStretchFactor(1, 1)

        results = QSplitter(Qt.Orientation.Horizontal)
        results.setObjectName("contamination_splitter")
        results.addWidget(left)
        results.addWidget(detail)
        results.setStretchFactor(0, 2)
        results.setStretchFactor(1, 5)
        results.setSizes([500, 900])
        self.splitter = results

        # ---- actions
        self.export_button = QPushButton("Export report…")
        self.export_button.clicked.connect(self._on_export_clicked)
        self.clean_button = QPushButton("Write cleaned training set…")
        self.clean_button.clicked.connect(self._on_clean_clicked)
        self.attach_button = QPushButton("Attach to run config")
        self.attach_button.setObjectName("attach_button")
        self.attach_button.setToolTip("Save the report and set data.contamination_report on the New run form")
        self.attach_button.clicked.connect(self.attach_report)
        for b in (self.export_button, self.clean_button, self.attach_button):
            b.setEnabled(False)
        actions = QHBoxLayout()
        actions.addStretch(1)
        actions.addWidget(self.export_button)
        actions.addWidget(self.clean_button)
        actions.addWidget(self.attach_button)

        layout = QVBoxLayout(self)
        layout.setContentsMargins(10, 10, 10, 6)
        layout.addWidget(inputs)
        layout.addWidget(results, 1)
        layout.addLayout(actions)

    # ------------------------------------------------------------------ inputs

    def _on_add_train_clicked(self) -> None:
        paths, _ = QFileDialog.getOpenFileNames(self, "Training data", "", "Data (*.jsonl *.json *.parquet *.csv);;All files (*)")
        self.set_train_paths([*self.train_paths(), *paths])

    def set_train_paths(self, paths: list[str]) -> None:
        self.train_list.clear()
        self.train_list.addItems([str(p) for p in paths])

    def train_paths(self) -> list[str]:
        return [self.train_list.item(i).text() for i in range(self.train_list.count())]

    def request(self) -> CheckRequest:
        specs = ["humaneval"] if self.humaneval_check.isChecked() else []
        specs += [s for row in self.eval_rows.values() if (s := row.spec())]
        fields = tuple(f.strip() for f in self.fields_edit.text().split(",") if f.strip()) or None
        return CheckRequest(tuple(self.train_paths()), tuple(specs), self.mode_combo.currentText(),
                            self.seed_spin.value(), fields, allow_no_text=self.allow_no_text_check.isChecked())

    # ------------------------------------------------------------------ running

    @property
    def running(self) -> bool:
        return self._worker is not None

    def start_check(self) -> None:
        request = self.request()
        if not request.train_paths:
            QMessageBox.information(self, "Contamination check", "Add at least one training data file.")
            return
        if not request.eval_specs:
            QMessageBox.information(self, "Contamination check", "Choose at least one eval set.")
            return
        if self._worker is not None:
            return
        worker = Worker(run_check_job, request)
        worker.signals.progress.connect(self._on_worker_progress)
        worker.signals.finished.connect(self._on_worker_finished)
        worker.signals.failed.connect(self._on_worker_failed)
        worker.signals.cancelled.connect(self._on_worker_cancelled)
        self._worker = worker
        self._request = request
        self.run_button.setEnabled(False)
        self.cancel_button.setEnabled(True)
        self.progress.setValue(0)
        self.progress.setFormat("starting…")
        worker.start()

    def cancel_check(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            self.cancel_button.setEnabled(False)
            self.progress.setFormat("cancelling…")

    def _finish_worker(self) -> None:
        self._worker = None
        self.run_button.setEnabled(True)
        self.cancel_button.setEnabled(False)

    def _on_worker_progress(self, _rid: int, done: int, total: int) -> None:
        if total > 0:
            self.progress.setValue(int(1000 * done / total))
            self.progress.setFormat(f"{done / 1e6:.1f} / {total / 1e6:.1f} MB  (%p%)")

    def _on_worker_finished(self, _rid: int, result: CheckResult) -> None:
        self.finished_at = time.monotonic()  # when the result reached the UI thread (the stall test reads it)
        self._finish_worker()
        self.progress.setValue(1000)
        self.progress.setFormat(f"done in {result.seconds:.1f} s")
        self.show_result(result)
        self.check_finished.emit(result)

    def _on_worker_failed(self, _rid: int, message: str) -> None:
        self._finish_worker()
        self.progress.setFormat("failed")
        self.check_failed.emit(message)
        if self.isVisible():
            QMessageBox.critical(self, "Contamination check failed", message)

    def _on_worker_cancelled(self, _rid: int) -> None:
        self._finish_worker()
        self.progress.setValue(0)
        self.progress.setFormat("cancelled")
        self.check_cancelled.emit()

    # ------------------------------------------------------------------ results

    def show_result(self, result: CheckResult) -> None:
        self.result = result
        self.report_path = None
        items = result.report.get("items", [])
        self.model.set_rows(items)
        n_bad = sum(1 for i in items if i["contaminated"])
        per_bench: dict[str, list[int]] = {}
        for i in items:
            counts = per_bench.setdefault(i["benchmark"], [0, 0])
            counts[0] += 1
            counts[1] += int(i["contaminated"])
        parts = [f"{BENCHMARK_TITLES.get(b, b)}: {c} of {n}" for b, (n, c) in per_bench.items()]
        text = f"<b>{n_bad}</b> of {len(items)} eval items contaminated — " + ", ".join(parts)
        warnings = result.report.get("warnings") or []
        if warnings:
            # Loud: "0 contaminated" means nothing when some training text was never compared.
            text = "".join(f"<div style='color:#cf222e; font-weight:600'>⚠ {html.escape(w)}</div>" for w in warnings) + text
        self.summary_label.setText(text)
        for b in (self.export_button, self.clean_button, self.attach_button):
            b.setEnabled(True)
        if self.proxy.rowCount():
            self.table.selectRow(0)

    def select_item(self, benchmark: str, task_id: str) -> bool:
        for row in range(self.proxy.rowCount()):
            item = self.model.rows[self.proxy.mapToSource(self.proxy.index(row, 0)).row()]
            if item["benchmark"] == benchmark and item["task_id"] == task_id:
                self.table.selectRow(row)
                return True
        return False

    def _on_table_current_changed(self, current: QModelIndex, _previous: QModelIndex) -> None:
        if not current.isValid():
            return
        item = self.model.rows[self.proxy.mapToSource(current).row()]
        self._item = item
        self._matches = item.get("matches", [])
        title = f"{BENCHMARK_TITLES.get(item['benchmark'], item['benchmark'])} {item['task_id']}"
        self.eval_title.setText(f"Eval question — {title}" + ("  (contaminated)" if item["contaminated"] else ""))
        self.matches_list.clear()
        rows = self.result.rows if self.result else {}
        # One entry per matched training row (and field): a row that contains several of the item's windows is
        # one contaminating row, not one per window.
        self._row_matches = group_matches(self._matches)
        for group in self._row_matches:
            m = group[0]
            ident = m.get("train_id") or f"row {m['train_index']}"
            windows = f"{len(group)} windows" if len(group) > 1 else f"{m['train_span'][1] - m['train_span'][0]} chars"
            entry = QListWidgetItem(f"#{m['train_index']}  {ident}  ·  {m['field']}  ·  {windows}")
            if m["train_index"] not in rows:
                entry.setToolTip("row text not loaded")
            self.matches_list.addItem(entry)
        extra = item.get("n_matching_rows", len(self._matches)) - len({m["train_index"] for m in self._matches})
        if extra > 0:
            self.matches_list.addItem(QListWidgetItem(f"… and {extra} more rows (not recorded: cap)"))
        self.windows_list.clear()
        for w in item.get("windows", []):
            span = w.get("eval_span")
            self.windows_list.addItem(f"{w.get('text', '')}   [{span[0]}:{span[1]}]" if span else w.get("text", ""))
        if self._matches:
            self.matches_list.setCurrentRow(0)
        else:
            spans = [tuple(w["eval_span"]) for w in item.get("windows", []) if w.get("eval_span")]
            set_highlights(self.eval_view, item.get("question", ""), spans, strong_index=None)
            self.train_title.setText("Training row")
            self.train_view.setPlainText("No training row matches this item." if not item["contaminated"] else "")

    def _on_match_selected(self, index: int) -> None:
        if self._item is None or not 0 <= index < len(self._row_matches):
            return
        # every recorded match of this training row, the first one strong
        same_row = self._row_matches[index]
        match, strong = same_row[0], 0
        set_highlights(self.eval_view, self._item.get("question", ""), [tuple(m["eval_span"]) for m in same_row], strong)
        row = (self.result.rows if self.result else {}).get(match["train_index"], {})
        text = row.get(match["field"])
        ident = match.get("train_id") or f"row {match['train_index']}"
        self.train_title.setText(f"Training row — {ident} · field {match['field']}")
        if text is None:
            # the row could not be re-read: show the matched text alone, highlighted whole
            text = match.get("text", "")
            set_highlights(self.train_view, text, [(0, len(text))], 0)
        else:
            set_highlights(self.train_view, text, [tuple(m["train_span"]) for m in same_row], strong)

    # ------------------------------------------------------------------ actions

    def save_report(self, path: str | Path) -> Path:
        """Write the report and its clean/contaminated id lists (core.decontam's writer: all or nothing)."""
        from core.decontam import write_outputs

        assert self.result is not None
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_outputs(self.result.report, str(path))
        self.report_path = path
        return path

    def _on_export_clicked(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Export contamination report", "contamination-report.json", "JSON (*.json)")
        if path:
            self.save_report(path)

    def default_report_path(self) -> Path:
        from core.paths import data_dir

        stamp = time.strftime("%Y%m%d-%H%M%S")
        return data_dir() / "reports" / f"contamination-{stamp}.json"

    def attach_report(self) -> None:
        """Save the report (if not yet saved) and hand its path to the New run form."""
        if self.result is None:
            return
        path = self.report_path or self.save_report(self.default_report_path())
        self.report_attached.emit(str(path))

    def _on_clean_clicked(self) -> None:
        if self.result is None or self._request is None:
            return
        out, _ = QFileDialog.getSaveFileName(self, "Write cleaned training set", "train-clean.jsonl", "Data (*.jsonl *.json *.parquet *.csv)")
        if out:
            self.write_clean(out)

    def write_clean(self, out: str | Path) -> Worker | None:
        """Write the training set without the flagged rows (core.decontam's writer, in a worker)."""
        if self.result is None or self._request is None:
            return None
        from core.decontam import write_clean

        request, result = self._request, self.result

        def work(ctx: WorkContext) -> Any:
            return write_clean(list(request.train_paths), result.flagged, str(out), result.report)

        def written(_rid: int, _res: Any) -> None:
            self.progress.setFormat(f"cleaned set written to {out}")
            self.clean_written.emit(str(out))

        worker = Worker(work)
        worker.signals.finished.connect(written)
        worker.signals.failed.connect(lambda _rid, msg: QMessageBox.critical(self, "Write cleaned training set", msg))
        self._clean_worker = worker
        return worker.start()


def _titled(title: QLabel, widget: QWidget) -> QWidget:
    box = QWidget()
    layout = QVBoxLayout(box)
    layout.setContentsMargins(0, 0, 0, 0)
    layout.setSpacing(3)
    layout.addWidget(title)
    layout.addWidget(widget, 1)
    return box
