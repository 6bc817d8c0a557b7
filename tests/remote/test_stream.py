"""Streamer and StreamManager on this machine (LocalTransport, real `tail -F`, real SQLite store)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from core.records import JsonlWriter, RunPaths, encode_record, event_record, metric_record
from core.store import Store
from remote.stream import HangWarning, Streamer, StreamManager, sync_all
from remote.transport import LocalTransport, wait_for


def metric(step: int, t: float | None = None) -> dict:
    return metric_record(step=step, attempt=1, epoch=step / 100, samples=step * 4, tokens=step * 400,
                         loss=1.0 / step, lr=1e-3, grad_norm=0.5, tokens_per_s=1000.0, t=t)


@pytest.fixture
def store(tmp_path: Path):
    with Store(tmp_path / "store.sqlite3") as s:
        yield s


@pytest.fixture
def run(store: Store, tmp_path: Path) -> tuple[str, Path]:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    store.create_run("r1", "stream test", None, None, cluster="here", backend="local", run_dir=str(run_dir),
                     status="running")
    store.update_run("r1", job_id="999999")
    return "r1", run_dir


def steps_in_store(store: Store, run_id: str) -> list[int]:
    return [m["step"] for m in store.metrics(run_id)]


def test_partial_last_line_is_held_back_until_its_newline_arrives(store, run):
    run_id, run_dir = run
    data = (b'{"t":1,"attempt":1,"step":1,"epoch":0,"samples":4,"tokens":10,"loss":1,"lr":0.1,'
            b'"grad_norm":1,"tokens_per_s":5}\n')
    half = len(data) // 2
    (run_dir / RunPaths.METRICS).write_bytes(data[:half])
    s = Streamer(store, LocalTransport("here"), run_id, str(run_dir))
    assert s.drain()[RunPaths.METRICS] == 0
    assert store.offset(run_id, RunPaths.METRICS) == (0, 0)
    with open(run_dir / RunPaths.METRICS, "ab") as f:
        f.write(data[half:])
    assert s.drain()[RunPaths.METRICS] == 1
    assert store.offset(run_id, RunPaths.METRICS) == (len(data), 1)


def test_new_streamer_resumes_at_stored_offset_so_each_record_arrives_once(store, run):
    run_id, run_dir = run
    with JsonlWriter(run_dir / RunPaths.METRICS) as w:
        for step in range(1, 6):
            w.write(metric(step))
    Streamer(store, LocalTransport("here"), run_id, str(run_dir)).drain()
    with JsonlWriter(run_dir / RunPaths.METRICS) as w:
        for step in range(6, 11):
            w.write(metric(step))
    # A fresh streamer (an app restart) starts from the store's offset, not from byte 0.
    again = Streamer(store, LocalTransport("here"), run_id, str(run_dir))
    assert again.drain()[RunPaths.METRICS] == 5
    assert steps_in_store(store, run_id) == list(range(1, 11))
    assert store.stream_state(run_id, RunPaths.METRICS)["duplicate_count"] == 0


def test_tail_follower_delivers_appended_lines_and_stdout_text(store, run):
    run_id, run_dir = run
    seen: list[tuple[str, int]] = []
    s = Streamer(store, LocalTransport("here"), run_id, str(run_dir), on_update=lambda r, f, n: seen.append((f, n)))
    s.start()
    try:
        with JsonlWriter(run_dir / RunPaths.METRICS) as w, open(run_dir / RunPaths.STDOUT, "a") as out:
            for step in range(1, 21):
                w.write(metric(step))
                out.write(f"step {step} ünïcode\n")
                out.flush()
                time.sleep(0.01)
        assert wait_for(lambda: len(store.metrics(run_id)) == 20, 15)
        assert wait_for(lambda: store.log_tail(run_id).count("\n") == 20, 15)
    finally:
        s.stop()
    assert steps_in_store(store, run_id) == list(range(1, 21))
    assert store.log_tail(run_id) == (run_dir / RunPaths.STDOUT).read_text()
    assert any(f == RunPaths.METRICS for f, _ in seen)


def test_truncated_file_is_detected_and_read_again_from_the_start(store, run):
    run_id, run_dir = run
    path = run_dir / RunPaths.STDOUT
    path.write_text("first line that is long\nsecond line\n")
    s = Streamer(store, LocalTransport("here"), run_id, str(run_dir))
    s.drain()
    path.write_text("new\n")  # rewritten shorter than what was consumed
    s.drain()
    assert store.log_tail(run_id) == "new\n"
    assert store.offset(run_id, RunPaths.STDOUT) == (4, 1)


def test_drain_racing_the_tail_never_ingests_a_line_twice(store, run):
    run_id, run_dir = run
    s = Streamer(store, LocalTransport("here"), run_id, str(run_dir))
    s.start()
    try:
        with JsonlWriter(run_dir / RunPaths.EVENTS) as w:
            for i in range(50):
                w.write(event_record("warning", 1, {"message": f"m{i}"}, t=1000.0 + i))
                if i % 7 == 0:
                    s.drain()
        assert wait_for(lambda: len(store.events(run_id)) == 50, 15)
    finally:
        s.stop()
    assert [e["detail"]["message"] for e in store.events(run_id)] == [f"m{i}" for i in range(50)]
    assert store.stream_state(run_id, RunPaths.EVENTS)["duplicate_count"] == 0


def test_eval_events_file_is_followed_beside_events_each_record_once_across_restart_and_rewrite(store, run):
    run_id, run_dir = run
    seen: list[tuple[str, int]] = []
    s = Streamer(store, LocalTransport("here"), run_id, str(run_dir), on_update=lambda r, f, n: seen.append((f, n)))
    s.start()  # eval_events.jsonl does not exist yet: the evaluation process creates it later
    try:
        with JsonlWriter(run_dir / RunPaths.EVENTS) as train, JsonlWriter(run_dir / RunPaths.EVAL_EVENTS) as ev:
            train.write(event_record("started", 1, t=100.0))
            for i, step in enumerate((20, 40, 60)):
                t = 110.0 + 10 * i
                train.write(event_record("checkpoint_saved", 1, {"step": step}, t=t))
                ev.write(event_record("eval_started", 1, {"step": step, "checkpoint": f"checkpoint-{step}"}, t=t + 1))
                s.drain()  # a polling pass racing the tail
                end = ("eval_failed", {"step": step, "error": "boom"}) if step == 40 else ("eval_finished", {"step": step})
                ev.write(event_record(end[0], 1, end[1], t=t + 5))
        assert wait_for(lambda: len(store.events(run_id)) == 10, 15)
    finally:
        s.stop()
    eval_file = run_dir / RunPaths.EVAL_EVENTS
    state = store.stream_state(run_id, RunPaths.EVAL_EVENTS)
    assert state["offset"] == eval_file.stat().st_size and state["line_no"] == 6 and state["duplicate_count"] == 0
    assert any(f == RunPaths.EVAL_EVENTS and n > 0 for f, n in seen)
    expected = ["started"] + ["checkpoint_saved", "eval_started", "eval_finished"] * 3
    expected[6] = "eval_failed"  # step 40
    assert [e["event"] for e in store.events(run_id)] == expected

    # An app restart: a new streamer resumes at the stored offset and gets only what was appended since.
    with JsonlWriter(eval_file) as ev:
        ev.write(event_record("eval_started", 1, {"step": 80}, t=150.0))
    assert Streamer(store, LocalTransport("here"), run_id, str(run_dir)).drain()[RunPaths.EVAL_EVENTS] == 1
    # The file rewritten shorter than the stored offset: read again from byte 0, old records not doubled.
    eval_file.write_bytes(encode_record(event_record("eval_started", 1, {"step": 80}, t=150.0))
                          + encode_record(event_record("eval_finished", 1, {"step": 80}, t=160.0)))
    assert Streamer(store, LocalTransport("here"), run_id, str(run_dir)).drain()[RunPaths.EVAL_EVENTS] == 1
    assert [e["event"] for e in store.events(run_id)][-2:] == ["eval_started", "eval_finished"]
    assert len(store.events(run_id)) == 12
    assert store.offset(run_id, RunPaths.EVAL_EVENTS) == (eval_file.stat().st_size, 2)


def test_hang_watchdog_warns_once_after_k_median_steps_with_stdout_tail(store, run):
    run_id, run_dir = run
    (run_dir / RunPaths.STDOUT).write_text("loading...\nNCCL WARN stuck in all_reduce\n")
    with JsonlWriter(run_dir / RunPaths.METRICS) as w:
        for step in range(1, 6):
            w.write(metric(step, t=100.0 + 2.0 * step))  # 2 s per step
    s = Streamer(store, LocalTransport("here"), run_id, str(run_dir))
    s.drain()
    assert s.median_step_s() == pytest.approx(2.0)
    last = s.last_metric_at
    assert s.check_hang(k=5, min_s=1, now=last + 9.0) is None  # 9 s < 5 x 2 s
    warning = s.check_hang(k=5, min_s=1, now=last + 11.0)
    assert isinstance(warning, HangWarning)
    assert warning.last_step == 5 and "stuck in all_reduce" in warning.stdout_tail
    assert s.check_hang(k=5, min_s=1, now=last + 30.0) is None  # reported once per silence
    fresh = Streamer(store, LocalTransport("here"), run_id, str(run_dir))
    fresh._saw_metrics([metric(1, t=0.0), metric(2, t=2.0)])
    assert fresh.check_hang(k=5, min_s=60, now=fresh.last_metric_at + 30.0) is None  # below the 60 s floor


def test_stream_manager_streams_active_runs_and_drains_them_when_they_end(store, run):
    run_id, run_dir = run
    updates: list[tuple[str, str, int]] = []
    manager = StreamManager(store, poll_s=0.2, transports={"here": LocalTransport("here")},
                            on_update=lambda *a: updates.append(a))
    # No process group 999999 exists: the first poll marks the run failed (no exit status), so the manager
    # does its final drain and stops following.
    with JsonlWriter(run_dir / RunPaths.METRICS) as w:
        for step in range(1, 4):
            w.write(metric(step))
    assert manager.run_until_idle(timeout=30)
    row = store.get_run(run_id)
    assert row.status == "failed" and "no exit status" in row.status_reason
    assert steps_in_store(store, run_id) == [1, 2, 3]
    assert (run_id, RunPaths.METRICS, 3) in updates


def test_sync_all_pulls_new_records_of_every_run(store, run, tmp_path):
    run_id, run_dir = run
    (run_dir / "exit_status").write_text("0\n")
    with JsonlWriter(run_dir / RunPaths.METRICS) as w:
        w.write(metric(1))
    result = sync_all(store, transports={"here": LocalTransport("here")})
    assert result[run_id][RunPaths.METRICS] == 1
    assert store.get_run(run_id).status == "finished"
    assert sync_all(store, transports={"here": LocalTransport("here")})[run_id][RunPaths.METRICS] == 0


def test_stream_manager_reports_a_suspected_hang_of_a_running_job_with_its_output(store, run):
    import subprocess

    run_id, run_dir = run
    job = subprocess.Popen(["sleep", "60"], start_new_session=True)  # a live process group: the run is running
    try:
        store.update_run(run_id, job_id=str(job.pid))
        (run_dir / RunPaths.STDOUT).write_text("rank 1: waiting in all_gather\n")
        with JsonlWriter(run_dir / RunPaths.METRICS) as w:
            for step in range(1, 6):
                w.write(metric(step, t=50.0 + 0.1 * step))  # 0.1 s per step, then silence
        hangs: list[HangWarning] = []
        manager = StreamManager(store, poll_s=0.2, transports={"here": LocalTransport("here")},
                                on_hang=hangs.append, hang_k=5, hang_min_s=1.0)
        manager.start()
        try:
            assert wait_for(lambda: len(hangs) == 1, 20)
        finally:
            manager.stop()
        assert store.get_run(run_id).status == "running"  # a warning, not a state change
        assert hangs[0].run_id == run_id and hangs[0].silent_s >= 1.0
        assert "waiting in all_gather" in hangs[0].stdout_tail
    finally:
        job.kill()
        job.wait()


def test_failed_status_poll_is_logged_skipped_and_backed_off(store, run, tmp_path, caplog):
    import socket

    from remote.profiles import ClusterProfile, make_transport
    from remote.runs import StatusPoller

    with socket.socket() as s:  # a port nothing listens on: every connection is refused
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    (tmp_path / "known_hosts").write_text("")
    dead = make_transport(ClusterProfile(name="dead", backend="slurm", host="127.0.0.1", port=port,
                                         known_hosts=str(tmp_path / "known_hosts"), connect_timeout_s=2))
    run_id, _ = run
    store.update_run(run_id, cluster="dead", backend="slurm", job_id="42", status="pending")
    poller = StatusPoller(store, interval_s=1.0, transports={"dead": dead})
    assert poller.poll() == {}
    assert "dead" in poller.last_errors and "status poll of dead failed" in caplog.text
    assert store.get_run(run_id).status == "pending"  # unchanged: a failed poll decides nothing
    assert poller._next["dead"] - time.monotonic() > 1.5  # backed off beyond the normal interval
    caplog.clear()
    assert poller.poll() == {}  # within the backoff: not even tried
    assert "status poll" not in caplog.text
    dead.close()


def test_manager_start_reads_the_rest_of_runs_that_ended_while_nobody_streamed(store, run):
    run_id, run_dir = run
    with JsonlWriter(run_dir / RunPaths.METRICS) as w:
        for step in range(1, 4):
            w.write(metric(step))
    # `tunedeck status` (or a previous app) saw the end but nobody read the records.
    store.update_run(run_id, status="finished", finished_at=time.time())
    manager = StreamManager(store, poll_s=0.2, transports={"here": LocalTransport("here")})
    assert manager.run_until_idle(timeout=30)
    assert steps_in_store(store, run_id) == [1, 2, 3]


def test_per_sample_results_reach_the_store_with_their_evals_record_before_listeners_hear_of_it(store, run):
    import json

    from core.records import eval_record

    run_id, run_dir = run
    samples = run_dir / RunPaths.SAMPLES / RunPaths.sample_file_name(40, "humaneval")
    samples.parent.mkdir()
    samples.write_text("".join(json.dumps({"task_id": f"HumanEval/{i}", "sample": 0, "passed": i < 3,
                                           "subset": "all", "benchmark": "humaneval", "step": 40}) + "\n"
                               for i in range(5)) + "{not json\n")
    with JsonlWriter(run_dir / RunPaths.EVALS) as w:
        w.write(eval_record(step=40, attempt=1, checkpoint="checkpoint-40", benchmark="humaneval", subset="all",
                            n_tasks=5, samples_per_task=1, temperature=0.0, pass_at={1: 0.6}))
    at_update: list[list[tuple[int, str]]] = []
    s = Streamer(store, LocalTransport("here"), run_id, str(run_dir),
                 on_update=lambda r, f, n: at_update.append(store.eval_sample_sets(r)) if f == RunPaths.EVALS else None)
    assert s.drain()[RunPaths.EVALS] == 1
    assert at_update == [[(40, "humaneval")]]  # stored before the evals update went out
    assert [r["passed"] for r in store.eval_samples(run_id, 40, "humaneval")] == [True] * 3 + [False] * 2


# Lines the job could write (a bug, a foreign writer) that parse as JSON and look like records, but that the
# store cannot hold as they are: each must be counted as corrupt and skipped, never stop the stream.
HUGE = "99999999999999999999999"
UNSTORABLE_METRICS = [
    b'{"t":1,"attempt":1,"step":' + HUGE.encode() + b',"epoch":0,"samples":1,"tokens":1,"loss":1,"lr":1,'
    b'"grad_norm":1,"tokens_per_s":1}\n',
    b'{"t":1,"attempt":1,"step":5,"epoch":0,"samples":' + b"9" * 5000 + b',"tokens":1,"loss":1,"lr":1,'
    b'"grad_norm":1,"tokens_per_s":1}\n',
    b'{"t":1,"attempt":1,"step":6,"epoch":0,"samples":1,"tokens":1,"loss":1,"lr":1,"grad_norm":1,'
    b'"tokens_per_s":1,"note":"\\ud800"}\n',
    b"[" * 100_000 + b"]" * 100_000 + b"\n",
]
UNSTORABLE_EVENTS = [
    b'{"t":5,"attempt":' + HUGE.encode() + b',"event":"warning","detail":{}}\n',
    b'{"t":1e999,"attempt":1,"event":"warning","detail":{}}\n',
    b'{"t":6,"attempt":1,"event":"warning","detail":' + b'{"a":' * 200 + b"1" + b"}" * 200 + b"}\n",
]


def test_records_the_store_cannot_hold_are_counted_skipped_and_the_live_stream_flows_on(store, run, tmp_path):
    import subprocess

    run_id, run_dir = run
    other_dir = tmp_path / "other"
    other_dir.mkdir()
    store.create_run("r2", "same cluster", None, None, cluster="here", backend="local", run_dir=str(other_dir),
                     status="running")
    jobs = [subprocess.Popen(["sleep", "120"], start_new_session=True) for _ in range(2)]  # both runs running
    store.update_run(run_id, job_id=str(jobs[0].pid))
    store.update_run("r2", job_id=str(jobs[1].pid))
    manager = StreamManager(store, poll_s=0.2, transports={"here": LocalTransport("here")})
    manager.start()
    try:
        with open(run_dir / RunPaths.METRICS, "ab") as m, open(run_dir / RunPaths.EVENTS, "ab") as e:
            m.write(encode_record(metric(1)))
            e.write(encode_record(event_record("started", 1, t=1.0)))
            for bad in UNSTORABLE_METRICS:
                m.write(bad)
            for bad in UNSTORABLE_EVENTS:
                e.write(bad)
            m.write(encode_record(metric(2)))
            e.write(encode_record(event_record("warning", 1, {"message": "after"}, t=7.0)))
        with JsonlWriter(other_dir / RunPaths.METRICS) as w:
            w.write(metric(1))
        assert wait_for(lambda: steps_in_store(store, run_id) == [1, 2], 20), steps_in_store(store, run_id)
        assert wait_for(lambda: len(store.events(run_id)) == 2, 20)
        # The run goes on writing: the follower is still following.
        with JsonlWriter(run_dir / RunPaths.METRICS) as w:
            w.write(metric(3))
        with JsonlWriter(other_dir / RunPaths.METRICS) as w:
            w.write(metric(2))
        assert wait_for(lambda: steps_in_store(store, run_id) == [1, 2, 3], 20)
        assert wait_for(lambda: steps_in_store(store, "r2") == [1, 2], 20)
        assert manager.errors == {}
    finally:
        manager.stop()
        for job in jobs:
            job.kill()
            job.wait()
    metrics_state = store.stream_state(run_id, RunPaths.METRICS)
    assert metrics_state["corrupt_count"] == len(UNSTORABLE_METRICS)
    assert metrics_state["offset"] == (run_dir / RunPaths.METRICS).stat().st_size
    events_state = store.stream_state(run_id, RunPaths.EVENTS)
    assert events_state["corrupt_count"] == len(UNSTORABLE_EVENTS)
    assert events_state["offset"] == (run_dir / RunPaths.EVENTS).stat().st_size
    assert [e["event"] for e in store.events(run_id)] == ["started", "warning"]

    # A one-shot sync afterwards: nothing new, nothing failed, the other run is not called unreachable.
    result = sync_all(store, transports={"here": LocalTransport("here")})
    assert set(result) == {run_id, "r2"}
    assert all("error" not in counts and "failed" not in counts for counts in result.values()), result


class _RefusingStore(Store):
    """A real store that refuses step 13 the way SQLite refuses an unbindable value: a refusal that
    validate_record does not foresee."""

    def ingest(self, run_id, file_name, records, *args, **kwargs):
        if any(r.get("step") == 13 for r in records):
            import sqlite3

            raise sqlite3.InterfaceError("Error binding parameter 3: type 'x' is not supported")
        return super().ingest(run_id, file_name, records, *args, **kwargs)


def test_a_record_the_store_refuses_unforeseen_is_skipped_as_corrupt_and_the_rest_is_stored(tmp_path):
    with _RefusingStore(tmp_path / "s.sqlite3") as store:
        run_dir = tmp_path / "run"
        run_dir.mkdir()
        store.create_run("r1", "x", None, None, cluster="here", backend="local", run_dir=str(run_dir))
        with JsonlWriter(run_dir / RunPaths.METRICS) as w:
            for step in range(10, 17):
                w.write(metric(step))
        with open(run_dir / RunPaths.METRICS, "ab") as f:
            f.write(b"not json\n")
        s = Streamer(store, LocalTransport("here"), "r1", str(run_dir))
        assert s.drain()[RunPaths.METRICS] == 6
        assert steps_in_store(store, "r1") == [10, 11, 12, 14, 15, 16]
        state = store.stream_state("r1", RunPaths.METRICS)
        assert state["corrupt_count"] == 2 and state["line_no"] == 8
        assert state["offset"] == (run_dir / RunPaths.METRICS).stat().st_size
        with JsonlWriter(run_dir / RunPaths.METRICS) as w:
            w.write(metric(17))
        assert Streamer(store, LocalTransport("here"), "r1", str(run_dir)).drain()[RunPaths.METRICS] == 1
