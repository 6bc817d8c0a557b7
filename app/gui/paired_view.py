"""A paired comparison of two evaluations, as a widget the compare view (and the main window) embeds.

It shows pass@1 of A and B with 95% intervals, the difference with its interval, McNemar's exact p, the 2x2
table of tasks solved by both / A only / B only / neither, a subset selector (all, clean, contaminated), and
the "A only" and "B only" task lists; choosing a task shows the two completions side by side with their test
output. The numbers come from core.paired; evaluations of runs are loaded off the UI thread
(remote.samples fetches per-sample results the store does not hold yet).
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from typing import Any

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QAbstractItemView,
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QFormLayout,
    QGridLayout,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QListWidget,
    QListWidgetItem,
    QPlainTextEdit,
    QSplitter,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from app.gui.workers import WorkContext, Worker
from core.paired import (
    ComparisonError,
    Evaluation,
    PairedComparison,
    available_subsets,
    compare,
    evaluated,
    format_p,
)

PASS_COLOR, FAIL_COLOR = "#1a7f37", "#cf222e"
SIGNIFICANCE = 0.05
LIST_CATEGORIES = ("a_only", "b_only", "both", "neither")
CATEGORY_TITLES = {"a_only": "A only", "b_only": "B only", "both": "both", "neither": "neither"}


@dataclass(frozen=True)
class EvaluationPair:
    """Two loaded evaluations (crosses from the loading worker to the UI thread)."""

    a: Evaluation
    b: Evaluation
    a_title: str
    b_title: str


def load_run_pair(ctx: WorkContext, store: Any, a_run: str, a_step: int | None, b_run: str, b_step: int | None,
                  benchmark: str | None, titles: tuple[str, str]) -> EvaluationPair:
    """Worker body: both runs' evaluations from the store (per-sample results fetched when missing)."""
    from remote.samples import run_evaluation

    rows = []
    for run_id in (a_run, b_run):
        row = store.get_run(run_id)
        if row is None:
            raise ComparisonError(f"no run with id {run_id!r}")
        rows.append(row)
    a = run_evaluation(store, rows[0], a_step, benchmark)
    b = run_evaluation(store, rows[1], b_step, benchmark or a.benchmark)
    return EvaluationPair(a, b, *titles)


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def verdict(c: PairedComparison) -> str:
    """One plain sentence: is there a difference at the 5% level, and which way."""
    if c.mcnemar_p >= SIGNIFICANCE:
        return (f"No significant difference (McNemar p = {format_p(c.mcnemar_p)} ≥ {SIGNIFICANCE}): these "
                f"{c.n_tasks} tasks cannot tell A and B apart.")
    better = "B" if len(c.b_only) > len(c.a_only) else "A"
    return f"{better} is better on these tasks (McNemar p = {format_p(c.mcnemar_p)} < {SIGNIFICANCE})."


def sample_text(samples: list[Any]) -> str:
    """Every sample of one task: verdict, completion, and the test output of failures."""
    parts = []
    for s in samples:
        head = f"# sample {s.sample}: {'PASSED' if s.passed else 'FAILED'}"
        if s.error:
            head += f" ({s.error})"
        if s.seconds is not None:
            head += f", {s.seconds:.2f} s"
        body = [head, s.completion.rstrip("\n") or "(empty completion)"]
        if s.stderr_tail.strip():
            body += ["", "# test output:", s.stderr_tail.rstrip("\n")]
        parts.append("\n".join(body))
    return "\n\n".join(parts) if parts else "(no sample for this task)"


class PairedView(QWidget):
    """The paired comparison of two evaluations; `set_evaluations(a, b)` fills it, or `load_runs(...)`."""

    comparison_changed = Signal(object)  # PairedComparison (None when the pair cannot be compared)
    task_shown = Signal(str)  # task id whose completions are shown
    load_failed = Signal(str)

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.a: Evaluation | None = None
        self.b: Evaluation | None = None
        self.comparison: PairedComparison | None = None
        self._worker: Worker | None = None
        self._request = 0
        self.prompts: dict[str, dict[str, str] | str] = {}  # benchmark -> task prompts, or why there are none
        self._prompt_workers: list[Worker] = []
        self.shown_task: str | None = None

        self.title_label = QLabel("Choose two evaluations to compare.")
        self.title_label.setObjectName("paired_title")
        self.title_label.setWordWrap(True)
        self.title_label.setTextFormat(Qt.TextFormat.RichText)
        self.subset_combo = QComboBox()
        self.subset_combo.setObjectName("paired_subset")
        self.subset_combo.setToolTip("All tasks, or the clean / contaminated ones of the contamination report "
                                     "both evaluations used")
        self.subset_combo.currentTextChanged.connect(self._on_subset_changed)
        top = QHBoxLayout()
        top.addWidget(self.title_label, 1)
        top.addWidget(QLabel("Tasks:"))
        top.addWidget(self.subset_combo)

        # numbers
        self.a_label, self.b_label, self.diff_label, self.p_label = (QLabel() for _ in range(4))
        for name, label in (("paired_a", self.a_label), ("paired_b", self.b_label), ("paired_diff", self.diff_label),
                            ("paired_p", self.p_label)):
            label.setObjectName(name)
            label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        numbers = QFormLayout()
        numbers.addRow("A pass@1", self.a_label)
        numbers.addRow("B pass@1", self.b_label)
        numbers.addRow("B − A", self.diff_label)
        numbers.addRow("McNemar p", self.p_label)
        self.verdict_label = QLabel()
        self.verdict_label.setObjectName("paired_verdict")
        self.verdict_label.setWordWrap(True)
        self.method_label = QLabel()
        self.method_label.setWordWrap(True)
        self.method_label.setStyleSheet("color: palette(mid);")

        # the 2x2 table: rows A solved / failed, columns B solved / failed
        self.table = QTableWidget(2, 2)
        self.table.setObjectName("paired_table")
        self.table.setHorizontalHeaderLabels(["B solved", "B failed"])
        self.table.setVerticalHeaderLabels(["A solved", "A failed"])
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.Stretch)
        self.table.verticalHeader().setSectionResizeMode(QHeaderView.ResizeMode.Stretch)
        self.table.setMaximumHeight(110)
        self.table.setToolTip("Click a cell to list its tasks")
        self.table.cellClicked.connect(self._on_cell_clicked)

        left_top = QVBoxLayout()
        left_top.addLayout(numbers)
        left_top.addWidget(self.verdict_label)
        summary = QHBoxLayout()
        summary.addLayout(left_top, 1)
        summary.addWidget(self.table, 1)

        # task lists
        self.lists: dict[str, QListWidget] = {}
        lists_row = QHBoxLayout()
        self.list_titles: dict[str, QLabel] = {}
        for key in ("a_only", "b_only"):
            box = QVBoxLayout()
            title = QLabel(CATEGORY_TITLES[key])
            title.setStyleSheet("font-weight: 600;")
            lst = QListWidget()
            lst.setObjectName(f"paired_{key}")
            lst.currentItemChanged.connect(lambda item, _prev: self._on_task_item(item))
            lst.itemClicked.connect(self._on_task_item)
            box.addWidget(title)
            box.addWidget(lst, 1)
            lists_row.addLayout(box)
            self.lists[key] = lst
            self.list_titles[key] = title
        self.other_list = QListWidget()  # both / neither, shown when their cell of the table is clicked
        self.other_list.setObjectName("paired_other")
        self.other_list.currentItemChanged.connect(lambda item, _prev: self._on_task_item(item))
        self.other_title = QLabel("both")
        self.other_title.setStyleSheet("font-weight: 600;")
        other = QVBoxLayout()
        other.addWidget(self.other_title)
        other.addWidget(self.other_list, 1)
        lists_row.addLayout(other)
        lists = QWidget()
        lists.setLayout(lists_row)

        # the two completions side by side
        from app.gui.theme import monospace_font

        self.a_title, self.b_title = QLabel("A"), QLabel("B")
        self.a_text, self.b_text = QPlainTextEdit(), QPlainTextEdit()
        for name, edit in (("paired_a_text", self.a_text), ("paired_b_text", self.b_text)):
            edit.setObjectName(name)
            edit.setReadOnly(True)
            edit.setFont(monospace_font())
            edit.setLineWrapMode(QPlainTextEdit.LineWrapMode.NoWrap)
            edit.setPlaceholderText("Choose a task in a list to see its completion and test output.")
        # the task's prompt beside them: what both completions continue
        self.prompt_title = QLabel("Prompt")
        self.prompt_text = QPlainTextEdit()
        self.prompt_text.setObjectName("paired_prompt")
        self.prompt_text.setReadOnly(True)
        self.prompt_text.setFont(monospace_font())
        self.prompt_text.setLineWrapMode(QPlainTextEdit.LineWrapMode.WidgetWidth)
        self.prompt_text.setPlaceholderText("The task's prompt, what both completions continue.")
        grid = QGridLayout()
        grid.setContentsMargins(0, 0, 0, 0)
        grid.addWidget(self.prompt_title, 0, 0)
        grid.addWidget(self.a_title, 0, 1)
        grid.addWidget(self.b_title, 0, 2)
        grid.addWidget(self.prompt_text, 1, 0)
        grid.addWidget(self.a_text, 1, 1)
        grid.addWidget(self.b_text, 1, 2)
        texts = QWidget()
        texts.setLayout(grid)

        split = QSplitter(Qt.Orientation.Vertical)
        split.addWidget(lists)
        split.addWidget(texts)
        split.setStretchFactor(0, 1)
        split.setStretchFactor(1, 2)

        self.message = QLabel()
        self.message.setObjectName("paired_message")
        self.message.setWordWrap(True)
        self.message.setStyleSheet(f"color: {FAIL_COLOR};")
        self.message.hide()

        layout = QVBoxLayout(self)
        layout.setContentsMargins(8, 8, 8, 8)
        layout.addLayout(top)
        layout.addWidget(self.message)
        layout.addLayout(summary)
        layout.addWidget(self.method_label)
        layout.addWidget(split, 1)
        self._set_enabled(False)

    # ------------------------------------------------------------------ loading

    def load_runs(self, store: Any, a_run: str, b_run: str, *, a_step: int | None = None, b_step: int | None = None,
                  benchmark: str | None = None, titles: tuple[str, str] | None = None) -> Worker:
        """Load two runs' evaluations (latest checkpoint unless a step is given) off the UI thread."""
        if self._worker is not None:
            self._worker.cancel()
        worker = Worker(load_run_pair, store, a_run, a_step, b_run, b_step, benchmark, titles or (a_run, b_run))
        self._request = worker.request_id
        worker.signals.finished.connect(self._on_loaded)
        worker.signals.failed.connect(self._on_load_failed)
        self._worker = worker
        self.title_label.setText("Loading the per-sample results…")
        self.message.hide()
        return worker.start()

    def _on_loaded(self, request_id: int, pair: EvaluationPair) -> None:
        if request_id != self._request:
            return  # a newer pair was asked for
        self._worker = None
        self.set_evaluations(pair.a, pair.b, pair.a_title, pair.b_title)

    def _on_load_failed(self, request_id: int, message: str) -> None:
        if request_id != self._request:
            return
        self._worker = None
        self.title_label.setText("Cannot compare these evaluations.")
        self._show_message(message)
        self.load_failed.emit(message)

    # ------------------------------------------------------------------ model -> UI

    def set_evaluations(self, a: Evaluation, b: Evaluation, a_title: str | None = None,
                        b_title: str | None = None) -> None:
        """Show the comparison of A and B (on all tasks first); a pair that cannot be compared shows why."""
        self.a, self.b = a, b
        a_title, b_title = a_title or a.label, b_title or b.label
        self.title_label.setText(
            f"<b>A</b> {html.escape(a_title)} &nbsp;vs&nbsp; <b>B</b> {html.escape(b_title)} — {html.escape(a.benchmark)}"
            + (f" / {html.escape(b.benchmark)}" if b.benchmark != a.benchmark else ""))
        self.a_title.setText(f"A — {a_title}")
        self.b_title.setText(f"B — {b_title}")
        self._load_prompts(a.benchmark)
        subsets = available_subsets(a, b) if a.benchmark == b.benchmark else ["all"]
        self.subset_combo.blockSignals(True)
        self.subset_combo.clear()
        self.subset_combo.addItems(subsets)
        self.subset_combo.setEnabled(len(subsets) > 1)
        self.subset_combo.blockSignals(False)
        self.show_subset("all")

    def show_subset(self, subset: str) -> None:
        if self.a is None or self.b is None:
            return
        if self.subset_combo.currentText() != subset:
            self.subset_combo.setCurrentText(subset)  # comes back through _on_subset_changed
            if self.subset_combo.currentText() == subset:
                return
        try:
            c = compare(self.a, self.b, subset)
        except ComparisonError as exc:
            self.comparison = None
            self._clear()
            self._show_message(str(exc))
            self.comparison_changed.emit(None)
            return
        self.message.hide()
        self.comparison = c
        self._set_enabled(True)
        self.a_label.setText(f"{_pct(c.a.estimate)}  [{_pct(c.a.low)}, {_pct(c.a.high)}]")
        self.b_label.setText(f"{_pct(c.b.estimate)}  [{_pct(c.b.low)}, {_pct(c.b.high)}]")
        d = c.diff
        self.diff_label.setText(f"{100 * d.estimate:+.1f} points  [{100 * d.low:+.1f}, {100 * d.high:+.1f}]")
        self.p_label.setText(f"{format_p(c.mcnemar_p)}  ({len(c.a_only) + len(c.b_only)} discordant of "
                             f"{c.n_tasks} tasks)")
        self.verdict_label.setText(verdict(c))
        self.method_label.setText(
            f"95% intervals: pass@1 by {c.a.describe()}; B − A by {d.describe()}. McNemar's exact test is the "
            "two-sided binomial test of the tasks solved by one side only."
            + (" With several samples per task a task counts as solved when at least half pass."
               if max(c.samples_per_task) > 1 else ""))
        cells = {(0, 0): c.both, (0, 1): c.a_only, (1, 0): c.b_only, (1, 1): c.neither}
        for (r, col), ids in cells.items():
            item = QTableWidgetItem(str(len(ids)))
            item.setTextAlignment(Qt.AlignmentFlag.AlignCenter)
            if (r, col) in ((0, 1), (1, 0)):
                item.setToolTip(f"{CATEGORY_TITLES['a_only' if r == 0 else 'b_only']}: solved by one side only "
                                "(the discordant tasks McNemar's test counts)")
            self.table.setItem(r, col, item)
        for key in ("a_only", "b_only"):
            ids = getattr(c, key)
            self._fill(self.lists[key], ids)
            self.list_titles[key].setText(f"{CATEGORY_TITLES[key]} ({len(ids)})")
        self._show_other("both")
        self.a_text.clear()
        self.b_text.clear()
        self.comparison_changed.emit(c)

    def _fill(self, lst: QListWidget, ids: tuple[str, ...]) -> None:
        lst.blockSignals(True)
        lst.clear()
        for task_id in ids:
            item = QListWidgetItem(task_id)
            item.setData(Qt.ItemDataRole.UserRole, task_id)
            lst.addItem(item)
        lst.blockSignals(False)

    def _show_other(self, key: str) -> None:
        ids = getattr(self.comparison, key) if self.comparison is not None else ()
        self.other_title.setText(f"{CATEGORY_TITLES[key]} ({len(ids)})")
        self._fill(self.other_list, ids)

    def _clear(self) -> None:
        for label in (self.a_label, self.b_label, self.diff_label, self.p_label, self.verdict_label, self.method_label):
            label.clear()
        for r in range(2):
            for col in range(2):
                self.table.setItem(r, col, QTableWidgetItem(""))
        for lst in (*self.lists.values(), self.other_list):
            lst.clear()
        self.a_text.clear()
        self.b_text.clear()
        self._set_enabled(False)

    def _set_enabled(self, on: bool) -> None:
        for w in (self.table, *self.lists.values(), self.other_list):
            w.setEnabled(on)

    def _show_message(self, text: str) -> None:
        self.message.setText(text)
        self.message.show()

    # ------------------------------------------------------------------ UI -> model

    def _on_subset_changed(self, subset: str) -> None:
        if subset:
            self.show_subset(subset)

    def _on_cell_clicked(self, row: int, col: int) -> None:
        key = {(0, 0): "both", (0, 1): "a_only", (1, 0): "b_only", (1, 1): "neither"}[(row, col)]
        if key in self.lists:
            lst = self.lists[key]
            if lst.count():
                lst.setCurrentRow(0)
                lst.setFocus()
        else:
            self._show_other(key)
            if self.other_list.count():
                self.other_list.setCurrentRow(0)

    def _on_task_item(self, item: QListWidgetItem | None) -> None:
        if item is not None:
            self.show_task(item.data(Qt.ItemDataRole.UserRole))

    def _load_prompts(self, benchmark: str) -> None:
        """Read the benchmark's prompts off the UI thread, once per benchmark."""
        if benchmark in self.prompts:
            return
        self.prompts[benchmark] = "loading the prompts…"

        def work(_ctx: WorkContext) -> dict[str, str]:
            from core.evalsets import task_prompts
            from core.paths import bench_data_dir

            return task_prompts(benchmark, bench_data_dir())

        worker = Worker(work)
        worker.signals.finished.connect(lambda _rid, prompts: self._on_prompts(benchmark, prompts))
        worker.signals.failed.connect(lambda _rid, msg: self._on_prompts(benchmark, f"prompt not available: {msg}"))
        self._prompt_workers = [w for w in self._prompt_workers if not w.done.is_set()] + [worker]
        worker.start()

    def _on_prompts(self, benchmark: str, prompts: dict[str, str] | str) -> None:
        self.prompts[benchmark] = prompts
        if self.shown_task is not None and self.a is not None and self.a.benchmark == benchmark:
            self._show_prompt(self.shown_task)

    def _show_prompt(self, task_id: str) -> None:
        prompts = self.prompts.get(self.a.benchmark if self.a is not None else "", "")
        if isinstance(prompts, dict):
            text = prompts.get(task_id, f"(task {task_id} is not in this benchmark's prompts)")
        else:
            text = f"({prompts})"
        self.prompt_text.setPlainText(text)
        self.prompt_title.setText(f"<b>Prompt</b> — {html.escape(task_id)}")

    def show_task(self, task_id: str) -> None:
        """Both sides' completions of one task with their test output, beside the task's prompt."""
        if self.a is None or self.b is None:
            return
        self.shown_task = task_id
        self._show_prompt(task_id)
        for edit, ev, title, side in ((self.a_text, self.a, self.a_title, "A"), (self.b_text, self.b, self.b_title, "B")):
            samples = ev.samples_of(task_id)
            passed = sum(s.passed for s in samples)
            edit.setPlainText(sample_text(samples))
            color = PASS_COLOR if samples and 2 * passed >= len(samples) else FAIL_COLOR
            title.setText(f"<b>{side}</b> — {html.escape(task_id)}: <span style='color:{color}'>"
                          f"{passed}/{len(samples)} passed</span>")
        self.task_shown.emit(task_id)


# ---------------------------------------------------------------------------------------------- choosing


class ChooseEvaluationsDialog(QDialog):
    """Pick two runs (and optionally a checkpoint of each, and the benchmark) to compare."""

    def __init__(self, store: Any, parent: QWidget | None = None, preselect: list[str] | None = None):
        super().__init__(parent)
        from core.names import display_names

        self.setWindowTitle("Compare evaluations")
        self.setObjectName("choose_evaluations")
        self.store = store
        runs = [r for r in store.list_runs() if not r.archived or r.run_id in (preselect or [])]
        names = display_names(store.list_runs())
        self.evals = {r.run_id: evaluated(store.evals(r.run_id)) for r in runs}
        self.runs = [r for r in runs if self.evals[r.run_id]]
        self.names = {r.run_id: names[r.run_id] for r in self.runs}
        form = QFormLayout(self)
        self.run_combos: list[QComboBox] = []
        self.step_combos: list[QComboBox] = []
        for i, side in enumerate(("A", "B")):
            run_combo, step_combo = QComboBox(), QComboBox()
            run_combo.setObjectName(f"run_{side.lower()}")
            step_combo.setObjectName(f"step_{side.lower()}")
            for r in self.runs:
                run_combo.addItem(self.names[r.run_id], r.run_id)
            run_combo.currentIndexChanged.connect(lambda _i, k=i: self._fill_steps(k))
            row = QHBoxLayout()
            row.addWidget(run_combo, 1)
            row.addWidget(QLabel("checkpoint"))
            row.addWidget(step_combo)
            form.addRow(f"{side}:", row)
            self.run_combos.append(run_combo)
            self.step_combos.append(step_combo)
        self.bench_combo = QComboBox()
        self.bench_combo.setObjectName("bench")
        form.addRow("Benchmark:", self.bench_combo)
        self.note = QLabel("" if len(self.runs) >= 1 else "No run has an evaluation yet.")
        self.note.setWordWrap(True)
        form.addRow(self.note)
        self.buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel)
        self.buttons.button(QDialogButtonBox.StandardButton.Ok).setText("Compare")
        self.buttons.accepted.connect(self.accept)
        self.buttons.rejected.connect(self.reject)
        form.addRow(self.buttons)
        ids = [r.run_id for r in self.runs]
        for k, run_id in enumerate((preselect or [])[:2]):
            if run_id in ids:
                self.run_combos[k].setCurrentIndex(ids.index(run_id))
        if len(ids) > 1 and not preselect:
            # runs are listed newest first: A the one before, B the latest (B - A: what the latest changed)
            self.run_combos[0].setCurrentIndex(1)
            self.run_combos[1].setCurrentIndex(0)
        for k in (0, 1):
            self._fill_steps(k)
        self.buttons.button(QDialogButtonBox.StandardButton.Ok).setEnabled(bool(self.runs))

    def _fill_steps(self, k: int) -> None:
        run_id = self.run_combos[k].currentData()
        combo = self.step_combos[k]
        combo.clear()
        combo.addItem("latest", None)
        for step in reversed(list(self.evals.get(run_id, {}))):
            combo.addItem(str(step), step)
        benches: list[str] = []
        for c in self.run_combos:
            for bs in self.evals.get(c.currentData(), {}).values():
                benches += [b for b in bs if b not in benches]
        current = self.bench_combo.currentText()
        self.bench_combo.clear()
        self.bench_combo.addItems(benches)
        if current in benches:
            self.bench_combo.setCurrentText(current)

    def choice(self) -> dict[str, Any]:
        """Arguments for PairedView.load_runs."""
        a, b = (c.currentData() for c in self.run_combos)
        return {"a_run": a, "b_run": b, "a_step": self.step_combos[0].currentData(),
                "b_step": self.step_combos[1].currentData(), "benchmark": self.bench_combo.currentText() or None,
                "titles": (self.names.get(a, a), self.names.get(b, b))}
