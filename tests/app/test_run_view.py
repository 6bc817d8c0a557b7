"""The run view, offscreen, on a real store fed the way the streamer feeds it."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from PySide6.QtWidgets import QMessageBox

from app.gui.run_view import RunView
from core.records import RunPaths, event_record
from core.series import ema
from core.store import Store
from tests.app.run_feed import TOKENS_PER_STEP, StoreFeeder, create_run, metric, start_process_group

WAIT_MS = 10_000


def open_view(qtbot, store, run_id) -> RunView:
    view = RunView(store, run_id)
    qtbot.addWidget(view)
    view.resize(1200, 800)
    view.show()
    qtbot.waitUntil(lambda: view.loaded, timeout=WAIT_MS)
    return view


def close_view(view: RunView) -> None:
    view.close()
    assert not view.watcher.running


def test_view_receives_points_until_the_run_finishes_and_pass_at_1_appears(qtbot, store):
    create_run(store, "r1", name="demo", job_id="4242")
    feed = StoreFeeder(store, "r1")
    view = open_view(qtbot, store, "r1")
    assert view.point_count() == 0 and view.pass_placeholder.isVisibleTo(view)
    for lo in range(1, 41, 10):
        feed.metrics(range(lo, lo + 10))
        qtbot.waitUntil(lambda lo=lo: view.point_count() == lo + 9, timeout=WAIT_MS)
    loss = view.charts["loss"]._curves[("r1", 1, "raw")]
    np.testing.assert_array_equal(loss.xData, np.arange(1, 41))
    np.testing.assert_allclose(loss.yData, [metric(s)["loss"] for s in range(1, 41)])
    assert "pass@1" not in " ".join(view.pass_charts)
    feed.evals(20, {"all": 0.25, "clean": 0.2, "contaminated": 0.5})
    feed.evals(40, {"all": 0.375, "clean": 0.3, "contaminated": 0.75})
    qtbot.waitUntil(lambda: "humaneval" in view.pass_charts, timeout=WAIT_MS)
    chart = view.pass_charts["humaneval"]
    qtbot.waitUntil(lambda: chart._curves[("r1", "all")].yData is not None
                    and len(chart._curves[("r1", "all")].yData) == 2, timeout=WAIT_MS)
    np.testing.assert_allclose(chart._curves[("r1", "all")].yData, [25.0, 37.5])
    np.testing.assert_allclose(chart._curves[("r1", "contaminated")].yData, [50.0, 75.0])
    assert not view.pass_placeholder.isVisibleTo(view)
    assert view.cancel_button.isEnabled()
    store.update_run("r1", status="finished", status_reason="exit status 0")
    qtbot.waitUntil(lambda: bool(view.notifications), timeout=WAIT_MS)
    assert view.notifications[0][0] == "Run demo finished"
    assert view.banner.isVisibleTo(view) and "finished" in view.banner.text()
    assert "exit status 0" in view.status_label.text()
    assert not view.cancel_button.isEnabled()
    close_view(view)


def test_an_already_finished_run_opens_without_a_notification(qtbot, store):
    create_run(store, "old", status="finished")
    StoreFeeder(store, "old").metrics(range(1, 6))
    view = open_view(qtbot, store, "old")
    assert view.point_count() == 5 and view.notifications == []
    close_view(view)


def test_reopening_with_a_new_store_mid_run_continues_the_curve_without_gaps_or_duplicates(qtbot, store):
    create_run(store, "r1", job_id="1")
    feed = StoreFeeder(store, "r1")
    feed.metrics(range(1, 51))
    view = open_view(qtbot, store, "r1")
    qtbot.waitUntil(lambda: view.point_count() == 50, timeout=WAIT_MS)
    close_view(view)
    feed.metrics(range(51, 81))  # the run goes on while no view is open (as after the app quits)
    again = Store(store.path)  # a new Store instance on the same file, as after an app restart
    try:
        view2 = open_view(qtbot, again, "r1")
        qtbot.waitUntil(lambda: view2.point_count() == 80, timeout=WAIT_MS)
        StoreFeeder(again, "r1").metrics(range(81, 101))
        feed.metrics(range(95, 101))  # a re-delivered tail (ignored by the store) must not double points
        qtbot.waitUntil(lambda: view2.point_count() == 100, timeout=WAIT_MS)
        np.testing.assert_array_equal(view2.steps_shown(), np.arange(1, 101))
        curve = view2.charts["loss"]._curves[("r1", 1, "raw")]
        np.testing.assert_array_equal(curve.xData, np.arange(1, 101))
        close_view(view2)
    finally:
        again.close()


def test_a_resumed_attempt_is_drawn_as_its_own_segment_and_wins_the_steps_it_redid(qtbot, store):
    create_run(store, "r1", job_id="1")
    feed = StoreFeeder(store, "r1")
    feed.metrics(range(1, 61))
    view = open_view(qtbot, store, "r1")
    qtbot.waitUntil(lambda: view.point_count() == 60, timeout=WAIT_MS)
    feed.metrics(range(41, 81), attempt=2)  # resumed from the step-40 checkpoint
    qtbot.waitUntil(lambda: view.point_count() == 80, timeout=WAIT_MS)
    chart = view.charts["loss"]
    np.testing.assert_array_equal(chart._curves[("r1", 1, "raw")].xData, np.arange(1, 41))
    np.testing.assert_array_equal(chart._curves[("r1", 2, "raw")].xData, np.arange(41, 81))
    assert chart._lines[("r1", 2, "resume")].value() == 41
    np.testing.assert_array_equal(view.steps_shown(), np.arange(1, 81))
    close_view(view)


def test_x_axis_and_smoothing_controls_redraw_from_the_same_data(qtbot, store):
    create_run(store, "r1", job_id="1")
    StoreFeeder(store, "r1").metrics(range(1, 101))
    view = open_view(qtbot, store, "r1")
    qtbot.waitUntil(lambda: view.point_count() == 100, timeout=WAIT_MS)
    chart = view.charts["loss"]

    def drawn_x():  # the charts read the new axis from the store off the UI thread: wait for it
        item = chart._curves.get(("r1", 1, "smooth"))
        return item.xData if item is not None and item.xData is not None else np.empty(0)

    view.x_combo.setCurrentIndex(view.x_combo.findData("tokens"))
    qtbot.waitUntil(lambda: drawn_x().size == 100 and drawn_x()[-1] == 100 * TOKENS_PER_STEP, timeout=WAIT_MS)
    smooth = chart._curves[("r1", 1, "smooth")]
    np.testing.assert_array_equal(smooth.xData, np.arange(1, 101) * TOKENS_PER_STEP)
    assert view.charts["loss"].plot.getAxis("bottom").labelText == "tokens"
    view.x_combo.setCurrentIndex(view.x_combo.findData("wall_time"))
    qtbot.waitUntil(lambda: drawn_x().size == 100 and drawn_x()[-1] == 0.5 * 99, timeout=WAIT_MS)
    smooth = view.charts["loss"]._curves[("r1", 1, "smooth")]
    np.testing.assert_allclose(smooth.xData, 0.5 * np.arange(0, 100))
    losses = np.array([metric(s)["loss"] for s in range(1, 101)])
    view.smoothing_slider.setValue(90)
    np.testing.assert_allclose(smooth.yData, ema(losses, 0.9), atol=1e-12)
    assert view.smoothing_label.text() == "0.90"
    view.smoothing_slider.setValue(0)
    np.testing.assert_allclose(smooth.yData, losses)
    lr = view.charts["lr"]._curves[("r1", 1, "smooth")]
    np.testing.assert_allclose(lr.yData, [metric(s)["lr"] for s in range(1, 101)])  # never smoothed
    view.raw_check.setChecked(False)
    view.smoothing_slider.setValue(50)
    assert not view.charts["loss"]._curves[("r1", 1, "raw")].isVisible()
    close_view(view)


def test_log_console_tails_stdout_in_order_and_stays_bounded(qtbot, store):
    create_run(store, "r1", job_id="1")
    feed = StoreFeeder(store, "r1")
    feed.log("".join(f"line {i}\n" for i in range(100)))
    view = open_view(qtbot, store, "r1")
    qtbot.waitUntil(lambda: "line 99" in view.console.toPlainText(), timeout=WAIT_MS)
    for lo in range(100, 7000, 1000):
        feed.log("".join(f"line {i}\n" for i in range(lo, lo + 1000)))
    qtbot.waitUntil(lambda: "line 7099" in view.console.toPlainText(), timeout=WAIT_MS)
    lines = view.console.toPlainText().splitlines()
    assert view.console.document().blockCount() <= view.console.maximumBlockCount()
    assert lines[-1] == "line 7099"
    numbers = [int(line.split()[1]) for line in lines if line]
    assert numbers == list(range(numbers[0], 7100))  # contiguous: nothing doubled or skipped
    close_view(view)


def test_hang_warning_from_the_watchdog_shows_a_banner_for_this_run_only(qtbot, store):
    from app.gui.main_window import StoreEvents
    from remote.stream import HangWarning

    create_run(store, "r1", job_id="1")
    view = open_view(qtbot, store, "r1")
    events = StoreEvents()
    view.attach_events(events)
    events.hang.emit(HangWarning("other", 300, 2.0, 10, "x"))
    assert not view.hang_banner.isVisibleTo(view)
    events.hang.emit(HangWarning("r1", 312, 2.5, 57, "NCCL watchdog waiting\nallreduce timeout"))
    assert view.hang_banner.isVisibleTo(view)
    assert "312 s" in view.hang_banner.text() and "allreduce timeout" in view.hang_banner.text()
    close_view(view)


def test_eval_started_shows_evaluating_in_the_status_and_eval_failed_warns_with_its_error(qtbot, store):
    create_run(store, "r1", name="demo", job_id="4242")
    feed = StoreFeeder(store, "r1")
    feed.event("checkpoint_saved", {"step": 40})
    view = open_view(qtbot, store, "r1")
    assert "evaluating" not in view.status_label.text()
    ckpt = "/runs/r1/checkpoints/checkpoint-40"
    # The evaluation process's own file, ingested as the streamer ingests eval_events.jsonl.
    feed.ingest(RunPaths.EVAL_EVENTS, [event_record("eval_started", 1, {"step": 40, "checkpoint": ckpt,
                                                                         "backend": "transformers",
                                                                         "benchmarks": ["humaneval"]})])
    qtbot.waitUntil(lambda: "evaluating step 40…" in view.status_label.text(), timeout=WAIT_MS)
    assert "running" in view.status_label.text() and ckpt in view.status_label.toolTip()
    assert view.evaluating_steps() == [40]
    assert not view.eval_banner.isVisibleTo(view) and view.notifications == []
    error = "RuntimeError: CUDA out of memory <tried 2 GiB>"
    feed.ingest(RunPaths.EVAL_EVENTS, [event_record("eval_failed", 1, {"step": 40, "checkpoint": ckpt, "error": error})])
    qtbot.waitUntil(lambda: view.eval_banner.isVisibleTo(view), timeout=WAIT_MS)
    assert "evaluating" not in view.status_label.text() and view.evaluating_steps() == []
    assert "Evaluation of step 40 failed" in view.eval_banner.text()
    assert "CUDA out of memory &lt;tried 2 GiB&gt;" in view.eval_banner.text()
    assert view.notifications == [("Run demo: evaluation of step 40 failed", error)]
    # The run's own end takes the general banner; the evaluation failure stays in view beside it.
    store.update_run("r1", status="finished", status_reason="exit status 0")
    qtbot.waitUntil(lambda: len(view.notifications) == 2, timeout=WAIT_MS)
    assert view.banner.isVisibleTo(view) and "finished" in view.banner.text()
    assert view.eval_banner.isVisibleTo(view) and "step 40 failed" in view.eval_banner.text()
    close_view(view)
    # Opened again later: the failure is shown from the stored events, without a second notification.
    again = open_view(qtbot, store, "r1")
    assert again.eval_banner.isVisibleTo(again) and "step 40 failed" in again.eval_banner.text()
    assert again.notifications == [] and again.evaluating_steps() == []
    close_view(again)


def test_an_evaluation_cut_short_by_the_end_of_its_run_is_not_shown_as_still_running(qtbot, store):
    create_run(store, "r1", name="demo", job_id="4242")
    feed = StoreFeeder(store, "r1")
    feed.ingest(RunPaths.EVAL_EVENTS, [event_record("eval_started", 1, {"step": 20, "checkpoint": "c"})])
    view = open_view(qtbot, store, "r1")
    qtbot.waitUntil(lambda: "evaluating step 20…" in view.status_label.text(), timeout=WAIT_MS)
    store.update_run("r1", status="cancelled", status_reason="cancelled by the user")
    qtbot.waitUntil(lambda: "cancelled" in view.status_label.text(), timeout=WAIT_MS)
    assert "evaluating step 20…" not in view.status_label.text()
    assert "evaluation of step 20 ended without a result" in view.status_label.text()
    close_view(view)


def test_a_new_attempt_clears_an_evaluation_its_predecessor_left_without_an_end(qtbot, store):
    create_run(store, "r1", name="demo", job_id="4242")
    feed = StoreFeeder(store, "r1")
    feed.ingest(RunPaths.EVAL_EVENTS, [event_record("eval_started", 1, {"step": 40, "checkpoint": "c"})])
    view = open_view(qtbot, store, "r1")
    qtbot.waitUntil(lambda: view.evaluating_steps() == [40], timeout=WAIT_MS)
    feed.ingest(RunPaths.EVENTS, [event_record("started", 2, {"world_size": 2})])  # preempted, requeued: attempt 2
    qtbot.waitUntil(lambda: view.evaluating_steps() == [], timeout=WAIT_MS)
    assert "evaluating" not in view.status_label.text()
    close_view(view)


def test_cancel_asks_first_then_stops_the_real_process_group_and_reports_it_gone(qtbot, store, tmp_path):
    proc = start_process_group()
    try:
        run_dir = tmp_path / "run"
        run_dir.mkdir()
        create_run(store, "r1", name="to-cancel", job_id=str(proc.pid), run_dir=run_dir)
        view = open_view(qtbot, store, "r1")
        qtbot.waitUntil(view.cancel_button.isEnabled, timeout=WAIT_MS)
        box = view.request_cancel()
        box.button(QMessageBox.StandardButton.No).click()  # "Keep running"
        qtbot.wait(100)
        assert proc.poll() is None and view.cancel_result is None
        box = view.request_cancel()
        box.button(QMessageBox.StandardButton.Yes).click()
        qtbot.waitUntil(lambda: view.cancel_result is not None, timeout=60_000)
        assert view.cancel_result.confirmed_gone, view.cancel_result
        assert proc.wait(timeout=10) is not None
        assert "confirmed gone" in view.banner.text()
        assert store.get_run("r1").status == "cancelled"
        qtbot.waitUntil(lambda: "cancelled" in view.status_label.text(), timeout=WAIT_MS)
        close_view(view)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_sample_viewer_lists_each_task_with_pass_fail_error_and_completion(qtbot, store, tmp_path):
    run_dir = tmp_path / "run"
    samples = run_dir / RunPaths.SAMPLES
    samples.mkdir(parents=True)
    rows = [{"task_id": f"HumanEval/{i}", "sample": 0, "completion": f"    return {i}\n", "passed": i % 2 == 0,
             "error": None if i % 2 == 0 else "AssertionError", "seconds": 0.1, "subset": "clean"} for i in range(6)]
    (samples / "step-20-humaneval.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + "{broken\n")
    (samples / "step-10-humaneval.jsonl").write_text(json.dumps(rows[0]) + "\n")
    create_run(store, "r1", run_dir=run_dir, status="finished")
    view = open_view(qtbot, store, "r1")
    viewer = view.samples
    qtbot.waitUntil(lambda: viewer.table.rowCount() == 6, timeout=WAIT_MS)
    assert [viewer.file_combo.itemText(i) for i in range(viewer.file_combo.count())] == [
        "step-10-humaneval.jsonl", "step-20-humaneval.jsonl"]
    assert viewer.summary_label.text() == "3/6 samples passed (1 unreadable lines skipped)"
    assert [viewer.table.item(i, 3).text() for i in range(6)] == ["pass", "fail"] * 3
    assert viewer.table.item(1, 4).text() == "AssertionError"
    viewer.filter_combo.setCurrentIndex(2)  # failed only
    assert [viewer.table.item(i, 0).text() for i in range(viewer.table.rowCount())] == [
        "HumanEval/1", "HumanEval/3", "HumanEval/5"]
    viewer.table.selectRow(1)
    assert "return 3" in viewer.detail.toPlainText() and "AssertionError" in viewer.detail.toPlainText()
    close_view(view)


@pytest.mark.parametrize("fmt", ["png", "svg", "csv"])
def test_chart_export_writes_the_file_with_the_charts_data(qtbot, store, tmp_path, fmt):
    create_run(store, "r1", job_id="1")
    StoreFeeder(store, "r1").metrics(range(1, 31))
    view = open_view(qtbot, store, "r1")
    qtbot.waitUntil(lambda: view.point_count() == 30, timeout=WAIT_MS)
    names = [name for name, _chart, _csv in view.exportable_charts()]
    assert names == ["Loss", "Learning rate", "Gradient norm", "Throughput"]
    out = tmp_path / f"loss.{fmt}"
    view.charts["loss"].export_csv(out) if fmt == "csv" else view.charts["loss"].export_image(out)
    if fmt == "png":
        assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    elif fmt == "svg":
        assert b"<svg" in out.read_bytes()
    else:
        rows = list(csv.DictReader(out.open()))
        raw = [r for r in rows if r["series"] != "r1"]  # the faint raw curve has no legend name
        assert [float(r["x"]) for r in raw] == list(range(1, 31))
        np.testing.assert_allclose([float(r["y"]) for r in raw], [metric(s)["loss"] for s in range(1, 31)])
    close_view(view)


@pytest.mark.slow
def test_launch_tiny_preset_locally_from_the_gui_and_watch_it_to_pass_at_1(qtbot, store):
    """End to end: New run page -> Launch on the local backend -> the run tab fills live until the run
    finishes and pass@1 of its checkpoints appears (real DeepSpeed ZeRO-3 on CPU, real evaluation)."""
    from app.gui.main_window import MainWindow

    window = MainWindow(store, offer_demo=False, stream=True)
    qtbot.addWidget(window)
    window.resize(1360, 880)
    window.show()
    try:
        page = window.config_page
        page.load_preset("tiny-demo")
        page.set_field("training.max_steps", 6)
        page.set_field("training.save_steps", 3)
        page.set_field("evaluation.limit", 4)
        assert page.config is not None, page.problems
        page.profile_combo.setCurrentText("local")
        with qtbot.waitSignal(page.launched, timeout=180_000) as launched:
            window.launch()
        run_id = launched.args[0]
        view = window.run_tabs[run_id]
        assert window.tabs.currentWidget() is view
        qtbot.waitUntil(lambda: view.point_count() > 0, timeout=600_000)
        first_points = view.point_count()
        qtbot.waitUntil(lambda: view.run is not None and view.run.status in ("finished", "failed", "cancelled"),
                        timeout=900_000)
        assert view.run.status == "finished", (view.run.status_reason, view.console.toPlainText()[-3000:])
        qtbot.waitUntil(lambda: view.point_count() == 6 and "humaneval" in view.pass_charts, timeout=120_000)
        assert first_points <= 6
        np.testing.assert_array_equal(view.steps_shown(), np.arange(1, 7))
        steps = view.pass_charts["humaneval"]._curves[(run_id, "all")].xData
        assert list(steps) == [3.0, 6.0]
        assert view.notifications and view.notifications[-1][0].endswith("finished")
        assert view.console.toPlainText().strip()
    finally:
        window.close()


def _eval_started(step: int, mode: str, attempt: int = 1) -> dict:
    return event_record("eval_started", attempt, {"step": step, "checkpoint": f"c{step}", "backend": "transformers",
                                                  "benchmarks": ["humaneval"], "sandbox": {"mode": mode}})


def test_pass_at_1_from_an_unconfined_evaluation_gets_a_red_badge_and_confined_ones_do_not(qtbot, store):
    create_run(store, "r1", name="demo", job_id="4242")
    feed = StoreFeeder(store, "r1")
    feed.ingest(RunPaths.EVAL_EVENTS, [_eval_started(20, "bwrap")])
    feed.evals(20, {"all": 0.25, "clean": 0.2})
    view = open_view(qtbot, store, "r1")
    qtbot.waitUntil(lambda: "humaneval" in view.pass_charts, timeout=WAIT_MS)
    chart = view.pass_charts["humaneval"]
    assert not chart.unconfined_badge.isVisibleTo(view) and chart.unconfined_points() == {}
    # a later checkpoint evaluated with evaluation.sandbox: unconfined, its events after its records
    feed.evals(40, {"all": 0.375, "clean": 0.3})
    feed.ingest(RunPaths.EVAL_EVENTS, [_eval_started(40, "unconfined")])
    qtbot.waitUntil(lambda: chart.unconfined_badge.isVisibleTo(view), timeout=WAIT_MS)
    assert chart.unconfined_points() == {"all": [(40.0, 37.5)], "clean": [(40.0, 30.0)]}
    assert "UNCONFINED" in chart.unconfined_badge.text() and "step 40 " in chart.unconfined_badge.text()
    assert "20" not in chart.unconfined_badge.text()
    close_view(view)
    # opened again later: the badge comes from the stored events
    again = open_view(qtbot, store, "r1")
    qtbot.waitUntil(lambda: "humaneval" in again.pass_charts, timeout=WAIT_MS)
    qtbot.waitUntil(lambda: again.pass_charts["humaneval"].unconfined_badge.isVisibleTo(again), timeout=WAIT_MS)
    assert again.pass_charts["humaneval"].unconfined_points()["all"] == [(40.0, 37.5)]
    close_view(again)


def test_corrupt_lines_skipped_while_streaming_are_shown_in_the_run_header(qtbot, store):
    create_run(store, "r1", job_id="1")
    feed = StoreFeeder(store, "r1")
    feed.metrics(range(1, 4))
    view = open_view(qtbot, store, "r1")
    assert "corrupt" not in view.info_label.text()
    # The streamer skipped two metrics lines (say, a step beyond 64 bits) and one events line.
    offset, line_no = store.offset("r1", RunPaths.METRICS)
    store.ingest("r1", RunPaths.METRICS, [metric(4)], offset + 500, line_no + 3, corrupt=2)
    offset, line_no = store.offset("r1", RunPaths.EVENTS)
    store.ingest("r1", RunPaths.EVENTS, [], offset + 90, line_no + 1, corrupt=1)
    view.watcher.wake()
    qtbot.waitUntil(lambda: "3 corrupt lines skipped" in view.info_label.text(), timeout=WAIT_MS)
    assert view.point_count() == 4
    tip = view.info_label.toolTip()
    assert "metrics.jsonl: 2" in tip and "events.jsonl: 1" in tip
    close_view(view)
