"""The paired-comparison widget: numbers from core.paired, the 2x2 table, subsets, and the A-only / B-only task
lists opening both completions side by side with their test output; loading two runs; the main window's
"Compare evaluations…" action."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PySide6.QtCore import Qt, QTimer
from PySide6.QtWidgets import QApplication, QDialogButtonBox

from app.gui.paired_view import PairedView
from core.paired import compare, evaluation_from_rows
from core.records import JsonlWriter, RunPaths, eval_record, read_records

N = 12
DIRTY = {"HumanEval/2", "HumanEval/5", "HumanEval/7"}


def _rows(solved: set[int], tag: str) -> list[dict]:
    return [{"task_id": f"HumanEval/{i}", "sample": 0, "passed": i in solved, "benchmark": "humaneval", "step": 0,
             "subset": "contaminated" if f"HumanEval/{i}" in DIRTY else "clean",
             "completion": f"    return {tag}_{i}\n", "error": None if i in solved else "AssertionError",
             "stderr_tail": "" if i in solved else f"AssertionError: {tag} failed task {i}"} for i in range(N)]


A_SOLVED, B_SOLVED = {0, 1, 2, 3, 4, 5}, {0, 1, 5, 6, 7, 8, 9, 10}


@pytest.fixture
def view(qtbot):
    w = PairedView()
    qtbot.addWidget(w)
    return w


def test_numbers_table_and_lists_match_core_and_a_task_opens_both_completions(view, qtbot):
    a = evaluation_from_rows(_rows(A_SOLVED, "a"), "A.jsonl")
    b = evaluation_from_rows(_rows(B_SOLVED, "b"), "B.jsonl")
    with qtbot.waitSignal(view.comparison_changed) as got:
        view.set_evaluations(a, b, "checkpoint 100", "checkpoint 200")
    expected = compare(a, b)
    assert got.args[0] == expected
    cells = [[view.table.item(r, c).text() for c in range(2)] for r in range(2)]
    assert cells == [["3", "3"], ["5", "1"]]  # both, A only / B only, neither
    assert view.a_label.text().startswith("50.0%") and view.b_label.text().startswith("66.7%")
    assert view.diff_label.text().startswith("+16.7 points")
    assert view.p_label.text().startswith(f"{expected.mcnemar_p:.2f}")
    assert "No significant difference" in view.verdict_label.text()
    a_only = [view.lists["a_only"].item(i).text() for i in range(view.lists["a_only"].count())]
    b_only = [view.lists["b_only"].item(i).text() for i in range(view.lists["b_only"].count())]
    assert a_only == ["HumanEval/2", "HumanEval/3", "HumanEval/4"]
    assert b_only == ["HumanEval/6", "HumanEval/7", "HumanEval/8", "HumanEval/9", "HumanEval/10"]
    assert view.subset_combo.isEnabled() and [view.subset_combo.itemText(i) for i in range(3)] == \
        ["all", "clean", "contaminated"]

    view.show()
    qtbot.waitExposed(view)
    item = view.lists["a_only"].item(1)
    rect = view.lists["a_only"].visualItemRect(item)
    with qtbot.waitSignal(view.task_shown) as shown:
        qtbot.mouseClick(view.lists["a_only"].viewport(), Qt.MouseButton.LeftButton, pos=rect.center())
    assert shown.args == ["HumanEval/3"]
    assert "return a_3" in view.a_text.toPlainText() and "PASSED" in view.a_text.toPlainText()
    b_text = view.b_text.toPlainText()
    assert "return b_3" in b_text and "FAILED (AssertionError)" in b_text and "AssertionError: b failed task 3" in b_text
    assert "0/1 passed" in view.b_title.text()
    # the task's prompt beside the two completions (HumanEval's own, read off the UI thread)
    from core.evalsets import load_humaneval

    prompt = next(t.prompt for t in load_humaneval().tasks if t.task_id == "HumanEval/3")
    qtbot.waitUntil(lambda: view.prompt_text.toPlainText() == prompt, timeout=10_000)
    assert "HumanEval/3" in view.prompt_title.text()

    # a 2x2 cell lists its tasks: "neither" goes to the third list
    view.table.cellClicked.emit(1, 1)
    assert [view.other_list.item(i).text() for i in range(view.other_list.count())] == ["HumanEval/11"]
    assert view.other_title.text() == "neither (1)"


def test_subset_selector_compares_clean_and_contaminated_tasks_separately(view, qtbot):
    a = evaluation_from_rows(_rows(A_SOLVED, "a"), "A")
    b = evaluation_from_rows(_rows(B_SOLVED, "b"), "B")
    view.set_evaluations(a, b)
    with qtbot.waitSignal(view.comparison_changed) as got:
        view.subset_combo.setCurrentText("contaminated")
    assert got.args[0].n_tasks == 3 and got.args[0].subset == "contaminated"
    assert [view.lists["a_only"].item(i).text() for i in range(view.lists["a_only"].count())] == ["HumanEval/2"]
    assert [view.lists["b_only"].item(i).text() for i in range(view.lists["b_only"].count())] == ["HumanEval/7"]
    view.subset_combo.setCurrentText("clean")
    assert view.comparison.n_tasks == 9


def test_a_pair_that_cannot_be_compared_says_why_and_shows_no_numbers(view, qtbot):
    a = evaluation_from_rows(_rows(A_SOLVED, "a"), "A")
    fewer = evaluation_from_rows([r for r in _rows(B_SOLVED, "b") if r["task_id"] != "HumanEval/11"], "B")
    with qtbot.waitSignal(view.comparison_changed) as got:
        view.set_evaluations(a, fewer)
    assert got.args[0] is None and view.comparison is None
    assert view.message.isVisibleTo(view) and "1 only in A (HumanEval/11)" in view.message.text()
    assert view.a_label.text() == "" and view.lists["a_only"].count() == 0


def _run(store, run_dir: Path, run_id: str, name: str, solved_by_step: dict[int, set[int]]) -> None:
    run_dir.mkdir(parents=True)
    store.create_run(run_id, name, None, {}, "local", "local", str(run_dir), status="finished")
    with JsonlWriter(run_dir / RunPaths.EVALS) as evals:
        for step, solved in solved_by_step.items():
            path = run_dir / RunPaths.SAMPLES / RunPaths.sample_file_name(step, "humaneval")
            path.parent.mkdir(exist_ok=True)
            path.write_text("".join(json.dumps(r) + "\n" for r in _rows(solved, f"s{step}")))
            evals.write(eval_record(step=step, attempt=0, checkpoint=f"c{step}", benchmark="humaneval", subset="all",
                                    n_tasks=N, samples_per_task=1, temperature=0.0, pass_at={1: len(solved) / N}))
    records, _ = read_records(run_dir / RunPaths.EVALS, "evals")
    store.ingest(run_id, RunPaths.EVALS, records, (run_dir / RunPaths.EVALS).stat().st_size, len(records))


def test_two_runs_load_in_the_background_with_their_latest_or_chosen_checkpoint(view, qtbot, store, tmp_path):
    _run(store, tmp_path / "r1", "r1", "first", {10: A_SOLVED, 20: B_SOLVED})
    with qtbot.waitSignal(view.comparison_changed, timeout=10_000) as got:
        view.load_runs(store, "r1", "r1", a_step=10)
    assert (len(got.args[0].a_only), len(got.args[0].b_only)) == (3, 5)
    assert store.eval_sample_sets("r1") == [(10, "humaneval"), (20, "humaneval")]  # kept in the store
    with qtbot.waitSignal(view.load_failed, timeout=10_000) as failed:
        view.load_runs(store, "r1", "r1", a_step=15)
    assert "no evaluation at step 15" in failed.args[0] and view.message.isVisibleTo(view)


def test_main_window_compare_evaluations_opens_a_paired_tab_for_two_chosen_runs(main_window, qtbot, store, tmp_path):
    _run(store, tmp_path / "r1", "20260101-100000-aaaaaa", "Tiny demo (CPU)", {10: A_SOLVED})
    _run(store, tmp_path / "r2", "20260101-110000-bbbbbb", "Tiny demo (CPU)", {10: B_SOLVED})
    page = main_window.runs_page
    qtbot.waitUntil(lambda: not page.is_refreshing, timeout=5000)  # the window's first read may predate the runs
    with qtbot.waitSignal(page.refreshed, timeout=5000):
        page.refresh()
    page.select_runs(["20260101-100000-aaaaaa", "20260101-110000-bbbbbb"])

    def answer() -> None:
        dialog = main_window._paired_dialog
        if dialog is None or not dialog.isVisible():
            QTimer.singleShot(20, answer)
            return
        names = [dialog.run_combos[0].itemText(i) for i in range(dialog.run_combos[0].count())]
        assert "Tiny demo (CPU) · aaaaaa" in names and "Tiny demo (CPU) · bbbbbb" in names
        dialog.buttons.button(QDialogButtonBox.StandardButton.Ok).click()

    QTimer.singleShot(0, answer)
    view = main_window.choose_paired()
    assert isinstance(view, PairedView) and main_window.tabs.currentWidget() is view
    qtbot.waitUntil(lambda: view.comparison is not None, timeout=10_000)
    assert main_window.tabs.tabText(main_window.tabs.currentIndex()) == \
        "Tiny demo (CPU) · aaaaaa vs Tiny demo (CPU) · bbbbbb"
    assert (len(view.comparison.a_only), len(view.comparison.b_only)) == (3, 5)
    assert QApplication.activeModalWidget() is None
