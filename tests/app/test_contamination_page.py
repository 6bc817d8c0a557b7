"""The Contamination page on the demo data: the planted items are flagged, highlights are the report's spans,
the check cancels, and the UI thread never stalls while it runs."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from PySide6.QtCore import QElapsedTimer, Qt, QTimer

from app.gui.contamination_page import ContaminationPage, highlighted_texts
from core.decontam.normalize import process

STALL_LIMIT_MS = 100
CHECK_TIMEOUT_MS = 60_000


@pytest.fixture
def page(qtbot):
    page = ContaminationPage()
    qtbot.addWidget(page)
    page.resize(1400, 900)
    page.show()
    return page


def _run(page, qtbot, timeout=CHECK_TIMEOUT_MS):
    with qtbot.waitSignal(page.check_finished, timeout=timeout) as blocker:
        page.start_check()
    return blocker.args[0]


def _big_corpus(path: Path, demo_path: Path, megabytes: int) -> Path:
    """`megabytes` of demo rows repeated (ids made unique), the planted rows included each round."""
    rows = [json.loads(line) for line in demo_path.read_text(encoding="utf-8").splitlines()]
    target = megabytes << 20
    size, n = 0, 0
    with open(path, "w", encoding="utf-8") as fh:
        while size < target:
            for row in rows:
                line = json.dumps({**row, "id": f"{row['id']}-{n}"}) + "\n"
                fh.write(line)
                size += len(line)
            n += 1
    return path


def test_demo_data_flags_exactly_the_planted_items_with_highlights_equal_to_the_matched_text(page, qtbot, demo_dataset):
    page.set_train_paths([str(demo_dataset.path)])
    result = _run(page, qtbot)
    flagged = {i["task_id"] for i in result.report["items"] if i["contaminated"]}
    assert flagged == set(demo_dataset.planted_task_ids) and len(flagged) == 3
    assert f"{len(flagged)}</b> of 164" in page.summary_label.text()

    page.contaminated_only.setChecked(True)
    assert page.proxy.rowCount() == len(flagged)
    for task_id in sorted(flagged):
        assert page.select_item("humaneval", task_id)
        item = next(i for i in result.report["items"] if i["task_id"] == task_id)
        assert item["matches"], task_id
        # one entry per matching training row, however many of the item's windows it contains
        rows = list(dict.fromkeys((m["train_index"], m["field"]) for m in item["matches"]))
        assert page.matches_list.count() == len(rows) == item["n_matching_rows"] == 1
        for index, key in enumerate(rows):
            page.matches_list.setCurrentRow(index)
            same_row = [m for m in item["matches"] if (m["train_index"], m["field"]) == key]
            eval_sels = {(sel.cursor.selectionStart(), sel.cursor.selectionEnd()): text for text, sel in
                         zip(highlighted_texts(page.eval_view), page.eval_view.extraSelections(), strict=True)}
            train_sels = {(sel.cursor.selectionStart(), sel.cursor.selectionEnd()): text for text, sel in
                          zip(highlighted_texts(page.train_view), page.train_view.extraSelections(), strict=True)}
            for match in same_row:  # every matched window of the row is highlighted: the report's raw spans
                row_text = result.rows[match["train_index"]][match["field"]]
                es, ee = match["eval_span"]
                ts, te = match["train_span"]
                raw_eval, raw_train = item["question"][es:ee], row_text[ts:te]
                assert eval_sels[(es, ee)] == raw_eval.replace("\r", " ")
                assert train_sels[(ts, te)] == raw_train.replace("\r", " ")
                assert process(eval_sels[(es, ee)]) == process(train_sels[(ts, te)]) == process(raw_eval)
                assert len(process(raw_eval)) >= 50
        assert page.windows_list.count() == len(item["windows"]) == 3
        assert "Training row" in page.train_title.text() and item["matches"][0]["field"] in page.train_title.text()


def test_a_training_row_matching_several_windows_is_listed_once_with_all_its_windows_highlighted(page, qtbot):
    from app.gui.check_process import CheckResult

    question = "def add(a, b):\n    " + "".join(f"x{i} = a + b * {i}\n    " for i in range(40)) + "return x1\n"
    train = "### copied\n" + question
    shift = len("### copied\n")
    spans = [(20, 90), (200, 270), (400, 470)]
    matches = [{"file_index": 0, "file_row": 7, "train_index": 7, "train_id": "row-7", "field": "text", "window": w,
                "eval_span": [s, e], "train_span": [s + shift, e + shift], "text": question[s:e]}
               for w, (s, e) in enumerate(spans)]
    matches.append({"file_index": 0, "file_row": 9, "train_index": 9, "train_id": "row-9", "field": "text",
                    "window": 1, "eval_span": [200, 270], "train_span": [0, 70], "text": question[200:270]})
    item = {"benchmark": "humaneval", "task_id": "HumanEval/0", "question": question, "contaminated": True,
            "windows": [{"text": question[s:e], "eval_span": [s, e]} for s, e in spans], "n_matching_rows": 2,
            "matches": matches}
    rows = {7: {"text": train}, 9: {"text": question[200:270] + " tail"}}
    page.show_result(CheckResult({"items": [item]}, rows=rows))

    assert page.matches_list.count() == 2  # two rows, not four matched windows
    assert page.matches_list.item(0).text().startswith("#7  row-7") and "3 windows" in page.matches_list.item(0).text()
    page.matches_list.setCurrentRow(0)
    assert highlighted_texts(page.train_view) == [train[s + shift:e + shift] for s, e in spans]
    assert highlighted_texts(page.eval_view) == [question[s:e] for s, e in spans]
    page.matches_list.setCurrentRow(1)
    assert highlighted_texts(page.train_view) == [question[200:270]] and "row-9" in page.train_title.text()


def test_filter_and_contaminated_only_narrow_the_table(page, qtbot, demo_dataset):
    page.set_train_paths([str(demo_dataset.path)])
    _run(page, qtbot)
    assert page.proxy.rowCount() == 164
    qtbot.keyClicks(page.filter_edit, "HumanEval/1")  # HumanEval/1, /10-/19, /100-/163
    assert page.proxy.rowCount() == 1 + 10 + 64
    page.filter_edit.clear()
    qtbot.keyClicks(page.filter_edit, "factorize")  # question text
    assert page.proxy.rowCount() == 1
    page.filter_edit.clear()
    page.contaminated_only.setChecked(True)
    assert page.proxy.rowCount() == 3
    page.contaminated_only.setChecked(False)
    assert page.proxy.rowCount() == 164


def test_cancel_stops_a_running_check(page, qtbot, demo_dataset, tmp_path):
    corpus = _big_corpus(tmp_path / "big.jsonl", demo_dataset.path, 40)
    page.set_train_paths([str(corpus)])
    page.mode_combo.setCurrentText("exhaustive")
    with qtbot.waitSignal(page.check_cancelled, timeout=30_000):
        page.start_check()
        qtbot.waitUntil(lambda: page.progress.value() > 0, timeout=20_000)
        assert page.running and page.cancel_button.isEnabled()
        qtbot.mouseClick(page.cancel_button, Qt.MouseButton.LeftButton)
    assert not page.running
    assert page.progress.format() == "cancelled"
    assert page.run_button.isEnabled() and page.result is None


def test_attach_report_sets_it_on_the_new_run_form(main_window, qtbot, demo_dataset):
    from core.decontam import load_report

    page = main_window.contamination_page
    page.set_train_paths([str(demo_dataset.path)])
    _run(page, qtbot)
    qtbot.mouseClick(page.attach_button, Qt.MouseButton.LeftButton)
    path = main_window.config_page.field_value("data.contamination_report")
    assert path and Path(path).is_file()
    assert load_report(path)["items"] == page.result.report["items"]
    assert Path(path).with_name(Path(path).stem + ".clean_ids.json").is_file()  # evaluation's subset lists
    assert main_window.config_page.config.data.contamination_report == path
    assert main_window.tabs.currentWidget() is main_window.config_page


def test_write_clean_removes_exactly_the_flagged_rows(page, qtbot, demo_dataset, tmp_path):
    page.set_train_paths([str(demo_dataset.path)])
    _run(page, qtbot)
    out = tmp_path / "clean.jsonl"
    # The page's own signal, connected before the work starts (a worker can finish before a test connects)
    with qtbot.waitSignal(page.clean_written, timeout=20_000) as blocker:
        assert page.write_clean(out) is not None
    assert blocker.args == [str(out)]
    kept = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(kept) == demo_dataset.n_rows - 3
    assert not any(r["planted_task_id"] for r in kept)


def _gaps_ms(qtbot, seconds: float | None = None, page=None) -> tuple[list[float], float]:
    """UI-thread gaps seen by a 5 ms QTimer: while `page` runs its check (until the result reaches the UI
    thread), or for `seconds` of idle time. Returns (gaps, elapsed seconds)."""
    ticks: list[tuple[float, float]] = []
    clock = QElapsedTimer()
    timer = QTimer(interval=5)
    timer.timeout.connect(lambda: ticks.append((time.monotonic(), clock.restart())))
    clock.start()
    timer.start()
    started = time.monotonic()
    if page is None:
        qtbot.wait(int(seconds * 1000))
        end = time.monotonic()
    else:
        result = _run(page, qtbot, timeout=120_000)
        assert result.report["items"] and page.finished_at is not None
        end = page.finished_at
    timer.stop()
    return [gap for t, gap in ticks[1:] if t <= end], end - started


@pytest.mark.slow
def test_ui_thread_never_stalls_over_100ms_while_a_50mb_check_runs(page, qtbot, demo_dataset, tmp_path):
    corpus = _big_corpus(tmp_path / "big.jsonl", demo_dataset.path, 50)
    page.set_train_paths([str(corpus)])
    page.mode_combo.setCurrentText("exhaustive")  # the most matching work per byte
    # The limit is wall-clock, so a machine starved by other processes can stall any thread: up to three
    # attempts, each printed beside an idle baseline measured in the same run. A check that blocks the UI
    # thread (or holds the GIL for long stretches) fails all three.
    worst_seen = []
    for attempt in range(3):
        gaps, elapsed = _gaps_ms(qtbot, page=page)
        idle, _ = _gaps_ms(qtbot, seconds=min(elapsed, 2.0))
        worst = max(gaps)
        worst_seen.append(worst)
        print(f"\nattempt {attempt + 1}: 50 MB exhaustive check {elapsed:.1f} s, {len(gaps)} ticks, longest UI-thread "
              f"gap {worst:.0f} ms ({sum(g > 50 for g in gaps)} over 50 ms); idle baseline longest gap {max(idle):.0f} ms")
        assert len(gaps) > elapsed * 1000 / 5 / 4  # the timer really ticked throughout
        if worst < STALL_LIMIT_MS:
            break
    assert min(worst_seen) < STALL_LIMIT_MS, worst_seen


def test_a_file_without_text_fails_the_check_or_with_the_option_shows_a_loud_warning(page, qtbot, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    data = tmp_path / "numbers.parquet"
    pq.write_table(pa.table({"score": [1, 2, 3]}), data)
    page.set_train_paths([str(data)])
    page.hide()  # no modal error box in the test: the failure is read from the signal
    with qtbot.waitSignal(page.check_failed, timeout=CHECK_TIMEOUT_MS) as blocker:
        page.start_check()
    assert "no text was checked" in blocker.args[0]
    page.show()
    page.allow_no_text_check.setChecked(True)
    result = _run(page, qtbot)
    assert result.report["warnings"] and "NO TEXT CHECKED" in page.summary_label.text()
    assert "score (int)" in page.summary_label.text()
