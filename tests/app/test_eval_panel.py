"""The run view's Evaluations tab (offscreen, real store): each checkpoint's state with progress, cancel and
re-queue through the real queue tool on this machine, and measured references on the pass@1 chart."""

from __future__ import annotations

import json
import shlex
import shutil
import time
from pathlib import Path

from app.gui.theme import status_color
from core.records import RunPaths, event_record
from core.store import Store
from tests.app.run_feed import StoreFeeder, create_run
from tests.app.test_run_view import WAIT_MS, close_view, open_view


def feed_events(store: Store, run_id: str, *events: dict) -> None:
    StoreFeeder(store, run_id).ingest(RunPaths.EVAL_EVENTS, list(events))


def test_each_checkpoint_shows_queued_running_with_progress_finished_and_failed(qtbot, store):
    create_run(store, "r1", job_id="4242")
    t0 = time.time()
    feed_events(store, "r1",
                event_record("eval_requested", 1, {"step": 20, "placement": "slurm", "job_id": "71"}, t=t0),
                event_record("eval_started", 1, {"step": 20, "engine": "vllm", "gpus": "0,1", "job_id": "71"}, t=t0 + 1),
                event_record("eval_progress", 1, {"step": 20, "phase": "generate humaneval", "done": 64, "total": 164},
                             t=t0 + 2),
                event_record("eval_requested", 1, {"step": 40, "placement": "slurm", "job_id": "72"}, t=t0 + 3),
                event_record("eval_requested", 1, {"step": 10, "placement": "slurm", "job_id": "70"}, t=t0 - 9),
                event_record("eval_finished", 1, {"step": 10, "engine": "vllm", "gpus": "0,1", "tokens_per_s": 2400.0,
                                                  "pass@1": {"humaneval/all": 0.5}}, t=t0 - 5),
                event_record("eval_requested", 1, {"step": 5, "placement": "slurm", "job_id": "69"}, t=t0 - 20),
                event_record("eval_failed", 1, {"step": 5, "error": "CUDA out of memory"}, t=t0 - 19))
    view = open_view(qtbot, store, "r1")
    panel = view.evaluations
    qtbot.waitUntil(lambda: len(panel.states) == 4, timeout=WAIT_MS)
    rows = {panel.table.item(r, 0).text(): panel.table.item(r, 1).text() for r in range(panel.table.rowCount())}
    assert rows == {"40": "queued (Slurm job 72)", "20": "running: generate humaneval 64/164", "10": "finished",
                    "5": "failed: CUDA out of memory"}
    assert panel.progress_of(20) == (64, 164)
    # each state in the colour of the run status it matches: the runs table's, from the one table in app.gui.theme
    colors = {panel.table.item(r, 0).text(): panel.table.item(r, 1).foreground().color().name()
              for r in range(panel.table.rowCount())}
    assert colors == {"40": status_color("pending"), "20": status_color("running"), "10": status_color("finished"),
                      "5": status_color("failed")}
    assert len(set(colors.values())) == 4
    ten = next(r for r in range(panel.table.rowCount()) if panel.table.item(r, 0).text() == "10")
    assert panel.table.item(ten, 3).text() == "vllm on 0,1" and panel.table.item(ten, 5).text() == "humaneval 50.0%"
    panel.select_step(20)
    assert panel.cancel_button.isEnabled() and not panel.requeue_button.isEnabled()
    panel.select_step(5)
    assert not panel.cancel_button.isEnabled() and panel.requeue_button.isEnabled()
    # progress moves on, then the evaluation finishes: the row follows
    feed_events(store, "r1", event_record("eval_progress", 1, {"step": 20, "phase": "run humaneval", "done": 100,
                                                               "total": 164}, t=t0 + 4))
    qtbot.waitUntil(lambda: panel.progress_of(20) == (100, 164), timeout=WAIT_MS)
    feed_events(store, "r1", event_record("eval_finished", 1, {"step": 20, "pass@1": {"humaneval/all": 0.25}}, t=t0 + 5))
    qtbot.waitUntil(lambda: view.eval_states[20].state == "finished", timeout=WAIT_MS)
    assert panel.status_label.text() == "4 checkpoints: 1 queued or running, 1 failed"
    close_view(view)


def test_a_running_evaluation_cancelled_shows_cancelled_and_its_sigterm_is_no_failure_banner(qtbot, store):
    create_run(store, "r3", job_id="4244")
    t0 = time.time()
    feed_events(store, "r3",
                event_record("eval_requested", 1, {"step": 30, "placement": "alongside", "pid": 99}, t=t0),
                event_record("eval_started", 1, {"step": 30, "engine": "transformers", "gpus": "cpu"}, t=t0 + 1))
    view = open_view(qtbot, store, "r3")
    qtbot.waitUntil(lambda: view.evaluating_steps() == [30], timeout=WAIT_MS)
    # the queue tool's cancel, then the evaluation reporting the SIGTERM it got
    feed_events(store, "r3",
                event_record("eval_cancelled", 1, {"step": 30, "reason": "cancelled by the user"}, t=t0 + 2),
                event_record("eval_failed", 1, {"step": 30, "error": "SIGTERM"}, t=t0 + 3))
    qtbot.waitUntil(lambda: 30 in view.eval_states and view.eval_states[30].state == "cancelled", timeout=WAIT_MS)
    assert view.evaluating_steps() == [] and view.progress.failures == {}
    assert view.eval_banner.isHidden()
    close_view(view)


def _run_dir(tmp_path: Path, repo_root: Path) -> Path:
    """A run directory as the bundle ships it: config.json (after_training placement) and the job code."""
    from remote.bundle import job_code_files

    run = tmp_path / "run"
    for rel, path in job_code_files().items():
        (run / "code" / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, run / "code" / rel)
    (run / "config.json").write_text(json.dumps({"derived": {"evaluation": {"placement": "after_training", "gpus": 1}}}))
    ckpt = run / "checkpoints" / "checkpoint-20"
    ckpt.mkdir(parents=True)
    (ckpt / "config.json").write_text("{}")
    return run


def test_cancel_and_requeue_one_evaluation_through_the_queue_tool(qtbot, store, tmp_path, repo_root):
    from remote.job.evalqueue import append_event
    from remote.stream import Streamer
    from remote.transport import LocalTransport

    run = _run_dir(tmp_path, repo_root)
    create_run(store, "r2", run_dir=run, job_id="4243")
    append_event(RunPaths(run), "eval_requested", 1, {"step": 20, "checkpoint": str(run / "checkpoints/checkpoint-20"),
                                                      "placement": "after_training"})
    streamer = Streamer(store, LocalTransport("local"), "r2", str(run))
    streamer.drain()
    view = open_view(qtbot, store, "r2")
    panel = view.evaluations
    qtbot.waitUntil(lambda: 20 in panel.states, timeout=WAIT_MS)
    assert panel.states[20].label() == "queued (after training)"
    panel.select_step(20)
    with qtbot.waitSignal(view.eval_action_done, timeout=60_000) as done:
        panel.cancel_button.click()
    assert view.eval_action_result[0] == "ok", view.eval_action_result
    assert "removed from the queue" in done.args[0]
    streamer.drain()  # the queue tool's eval_cancelled line, as the streamer brings it in
    qtbot.waitUntil(lambda: view.eval_states[20].state == "cancelled", timeout=WAIT_MS)
    panel.select_step(20)
    assert panel.requeue_button.isEnabled()
    with qtbot.waitSignal(view.eval_action_done, timeout=60_000):
        panel.requeue_button.click()
    assert view.eval_action_result == ("ok", "Evaluation of step 20 queued (after_training)")
    streamer.drain()
    qtbot.waitUntil(lambda: view.eval_states[20].state == "queued", timeout=WAIT_MS)
    assert view.eval_states[20].requests == 2
    events = [json.loads(x)["event"] for x in (run / RunPaths.EVAL_EVENTS).read_text().splitlines()]
    assert events == ["eval_requested", "eval_cancelled", "eval_requested"]
    close_view(view)


def test_evaluate_checkpoint_lists_the_runs_checkpoints_and_queues_the_chosen_one(qtbot, store, tmp_path, repo_root):
    from PySide6.QtCore import QTimer
    from PySide6.QtWidgets import QApplication, QInputDialog

    from remote.stream import Streamer
    from remote.transport import LocalTransport

    run = _run_dir(tmp_path, repo_root)
    for step in (40, 60):  # 60 is incomplete (no config.json yet): not offered
        (run / "checkpoints" / f"checkpoint-{step}").mkdir()
    (run / "checkpoints" / "checkpoint-40" / "config.json").write_text("{}")
    create_run(store, "r4", run_dir=run, job_id="4245")
    streamer = Streamer(store, LocalTransport("local"), "r4", str(run))
    view = open_view(qtbot, store, "r4")
    panel = view.evaluations
    offered: list[list[str]] = []

    def answer_the_dialog() -> None:  # the modal "Evaluate checkpoint" question: take its default, the newest
        dialog = QApplication.activeModalWidget()
        if not isinstance(dialog, QInputDialog):
            QTimer.singleShot(50, answer_the_dialog)
            return
        offered.append(list(dialog.comboBoxItems()))
        dialog.accept()

    QTimer.singleShot(50, answer_the_dialog)
    with qtbot.waitSignal(view.eval_action_done, timeout=60_000):
        panel.evaluate_button.click()
    assert offered == [["step 20", "step 40"]]
    assert view.eval_action_result == ("ok", "Evaluation of step 40 queued (after_training)")
    streamer.drain()
    qtbot.waitUntil(lambda: 40 in view.eval_states and view.eval_states[40].state == "queued", timeout=WAIT_MS)
    assert 20 not in view.eval_states
    close_view(view)


def test_a_measured_reference_is_a_marker_beside_the_published_line(qtbot, store):
    create_run(store, "ref", name="Code Llama-34B", status="finished")
    store.update_run("ref", tags=("reference",))
    StoreFeeder(store, "ref").evals(0, {"all": 0.47})
    create_run(store, "run", job_id="1")
    StoreFeeder(store, "run").evals(20, {"all": 0.25})
    view = open_view(qtbot, store, "run")
    qtbot.waitUntil(lambda: "humaneval" in view.pass_charts, timeout=WAIT_MS)
    chart = view.pass_charts["humaneval"]
    qtbot.waitUntil(lambda: chart.measured() == {"Code Llama-34B": 47.0}, timeout=WAIT_MS)
    assert "Code Llama-34B" in chart.visible_references()  # the published 48.8 line shown beside it
    marker, text = chart._measured["Code Llama-34B"]
    assert list(marker.data["x"]) == [20.0] and "measured 47.0" in text.toPlainText()
    close_view(view)


def test_evaluate_model_from_the_runs_page_launches_a_measured_reference_run(qtbot, store, tmp_path):
    import sys

    from app.gui.runs_page import RunsPage
    from remote.profiles import ClusterProfile, save_profile
    from tests.job.test_evaluate import build_tiny_model

    model = build_tiny_model(tmp_path / "tiny-coder")
    save_profile(ClusterProfile(name="here", backend="local", python=sys.executable))
    page = RunsPage(store)
    qtbot.addWidget(page)
    page.show()
    dialog = page.ask_model_evaluation()
    dialog.model_edit.setText(str(model))
    dialog.cluster_combo.setCurrentText("here")
    dialog.limit_spin.setValue(1)
    dialog.gpus_spin.setValue(0)
    dialog.tokens_spin.setValue(4)
    with qtbot.waitSignal(page.open_requested, timeout=120_000) as opened:
        dialog._on_accept()
    run_id = opened.args[0]
    row = store.get_run(run_id)
    assert row.name == "tiny-coder" and "reference" in row.tags and row.cluster == "here"
    assert row.config()["model"]["name_or_path"] == str(model)
    # the evaluation-only job started (tests/remote/test_eval_reference.py follows one to its pass@1)
    assert row.job_id and shlex.split((Path(row.run_dir) / RunPaths.LOCAL_SCRIPT).read_text().splitlines()[-1])[:6] == \
        ["exec", sys.executable, "-m", "remote.job.evaluate", "--run-dir", row.run_dir]
    from remote.runs import cancel

    assert cancel(run_id, store, grace_s=10).confirmed_gone
