"""The run store on real SQLite files: transactions, exactly-once ingest, SIGKILL survival, migrations."""

from __future__ import annotations

import json
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from core.records import RunPaths, encode_record, eval_record, event_record, metric_record, rank_record
from core.store import (
    SCHEMA_VERSION,
    RunExistsError,
    Store,
    StoreError,
    StoreVersionError,
    StreamConflictError,
    UnknownRunError,
)

CHILD = Path(__file__).with_name("store_writer_child.py")


def _metric(step: int, attempt: int = 0, t: float | None = None, loss: float | None = None, **extra) -> dict:
    return metric_record(step=step, attempt=attempt, epoch=step / 100, samples=8 * step, tokens=1000 * step,
                         loss=(1.0 / (step + 1) if loss is None else loss), lr=1e-5, grad_norm=0.5,
                         tokens_per_s=1234.5, t=(1000.0 + step if t is None else t), **extra)


def _eval(step: int, bench: str, subset: str, p1: float, attempt: int = 0) -> dict:
    return eval_record(step=step, attempt=attempt, checkpoint=f"checkpoint-{step}", benchmark=bench, subset=subset,
                       n_tasks=100, samples_per_task=1, temperature=0.0, pass_at={1: p1}, t=2000.0 + step)


@pytest.fixture
def store(tmp_path: Path) -> Store:
    s = Store(tmp_path / "store.sqlite3")
    yield s
    s.close()


def _new_run(store: Store, run_id: str = "r1") -> None:
    store.create_run(run_id, f"run {run_id}", "model: x\n", {"model": "x"}, "local", "local", f"/runs/{run_id}",
                     preset="tiny-demo")


# ---------------------------------------------------------------------------------------------- basics


def test_default_store_lives_under_tunedeck_home_and_env_var_overrides_it(tmp_path, monkeypatch):
    home = tmp_path / "home"
    monkeypatch.setenv("TUNEDECK_HOME", str(home))
    with Store() as s:
        assert s.path == home / "data" / "tunedeck.sqlite3"
        assert s.path.is_file()
    monkeypatch.setenv("TUNEDECK_STORE", str(tmp_path / "elsewhere.db"))
    with Store() as s:
        assert s.path == tmp_path / "elsewhere.db"
        journal = s._conn().execute("PRAGMA journal_mode").fetchone()[0]
        assert journal == "wal"
        assert s._conn().execute("PRAGMA foreign_keys").fetchone()[0] == 1


def test_run_lifecycle_create_update_list_newest_first_and_delete(store):
    _new_run(store, "a")
    _new_run(store, "b")
    row = store.get_run("a")
    assert row is not None and row.status == "created" and row.preset == "tiny-demo"
    assert row.config() == {"model": "x"}
    assert [r.run_id for r in store.list_runs()] == ["b", "a"]
    with pytest.raises(RunExistsError):
        _new_run(store, "a")

    updated = store.update_run("a", status="running", job_id=4242, started_at=5.0, tags=["ablation"], notes="lr x2")
    assert (updated.status, updated.job_id, updated.started_at, updated.tags, updated.notes) == \
        ("running", "4242", 5.0, ("ablation",), "lr x2")
    assert updated.updated_at >= row.updated_at
    with pytest.raises(ValueError, match="bogus"):
        store.update_run("a", bogus=1)
    with pytest.raises(ValueError, match="status"):
        store.update_run("a", status="exploded")
    with pytest.raises(UnknownRunError):
        store.update_run("nope", status="failed")
    assert store.get_run("a").status == "running"  # the refused updates changed nothing

    store.ingest("a", RunPaths.METRICS, [_metric(1)], 100, 1)
    assert store.delete_run("a")
    assert store.get_run("a") is None
    assert store.metrics("a") == []
    assert store.offset("a", RunPaths.METRICS) == (0, 0)  # cascaded
    assert not store.delete_run("a")


def test_ingest_stores_records_and_offset_and_duplicates_are_ignored_and_counted(store):
    _new_run(store)
    recs = [_metric(s, gpu_mem_gb=10.0 + s) for s in range(3)]
    res = store.ingest("r1", RunPaths.METRICS, recs, 300, 3, corrupt=1)
    assert (res.inserted, res.duplicates) == (3, 0)
    assert store.offset("r1", RunPaths.METRICS) == (300, 3)
    got = store.metrics("r1")
    assert [m["step"] for m in got] == [0, 1, 2]
    assert got[2]["gpu_mem_gb"] == 12.0 and got[2]["loss"] == pytest.approx(1 / 3)

    # the same records re-read after a truncation: nothing doubled, the duplicates are counted
    store.reset_stream("r1", RunPaths.METRICS)
    assert store.offset("r1", RunPaths.METRICS) == (0, 0)
    res = store.ingest("r1", RunPaths.METRICS, [*recs, _metric(3)], 400, 4)
    assert (res.inserted, res.duplicates) == (1, 3)
    assert [m["step"] for m in store.metrics("r1")] == [0, 1, 2, 3]
    state = store.stream_state("r1", RunPaths.METRICS)
    assert state == {"offset": 400, "line_no": 4, "corrupt_count": 1, "duplicate_count": 3}

    newest = max(m["rowid"] for m in got)
    assert [m["step"] for m in store.metrics("r1", since_rowid=newest)] == [3]


def test_invalid_record_rejects_the_whole_batch_and_leaves_the_offset(store):
    _new_run(store)
    bad = _metric(1)
    del bad["loss"]
    with pytest.raises(ValueError, match=r"record 1 .*'loss'"):
        store.ingest("r1", RunPaths.METRICS, [_metric(0), bad], 200, 2)
    assert store.metrics("r1") == []
    assert store.offset("r1", RunPaths.METRICS) == (0, 0)
    with pytest.raises(ValueError, match="streamed"):
        store.ingest("r1", "run.json", [], 0, 0)
    with pytest.raises(UnknownRunError):
        store.ingest("ghost", RunPaths.METRICS, [_metric(0)], 100, 1)


def test_ingest_with_stale_expected_offset_writes_nothing(store):
    _new_run(store)
    store.ingest("r1", RunPaths.EVENTS, [event_record("started", 0, t=1.0)], 50, 1, expect_offset=0)
    with pytest.raises(StreamConflictError, match="byte 50"):
        store.ingest("r1", RunPaths.EVENTS, [event_record("finished", 0, t=2.0)], 100, 2, expect_offset=0)
    assert [e["event"] for e in store.events("r1")] == ["started"]
    assert store.offset("r1", RunPaths.EVENTS) == (50, 1)


def test_evals_events_and_logs_round_trip(store):
    _new_run(store)
    evals = [_eval(20, "mbpp", "all", 0.25), _eval(20, "mbpp", "clean", 0.3)]
    evals[0]["pass@10"] = 0.5
    store.ingest("r1", RunPaths.EVALS, evals, 10, 2)
    assert store.ingest("r1", RunPaths.EVALS, evals[:1], 20, 3).duplicates == 1
    got = store.evals("r1")
    assert [(e["subset"], e["pass@1"]) for e in got] == [("all", 0.25), ("clean", 0.3)]
    assert got[0]["pass@10"] == 0.5 and "pass@10" not in got[1]

    store.ingest("r1", RunPaths.EVENTS, [event_record("started", 0, {"host": "n1", "x": float("nan")}, t=1.0),
                                          event_record("preempted", 0, t=2.0), event_record("resumed", 1, t=3.0)],
                 30, 3)
    assert [(e["event"], e["attempt"]) for e in store.events("r1")] == [("started", 0), ("preempted", 0),
                                                                         ("resumed", 1)]
    assert store.events("r1")[0]["detail"] == {"host": "n1", "x": None}

    store.ingest("r1", RunPaths.STDOUT, [{"text": "héllo\n"}, {"text": "world\n"}], 13, 0)
    assert store.log_tail("r1", 1 << 20) == "héllo\nworld\n"
    assert store.log_tail("r1", 8) == "o\nworld\n"
    assert store.log_tail("r1", 11) == "llo\nworld\n"  # the cut fell inside "é": its stray byte is dropped
    store.reset_stream("r1", RunPaths.STDOUT)
    assert store.log_tail("r1", 100) == ""


def test_eval_events_are_ingested_once_beside_training_events_and_read_back_in_time_order(store):
    _new_run(store)
    training = [event_record("started", 0, t=1.0), event_record("checkpoint_saved", 0, {"step": 20}, t=3.0),
                event_record("eval_requested", 0, {"step": 20}, t=3.5), event_record("finished", 0, t=9.0)]
    evaluation = [event_record("eval_started", 0, {"step": 20, "checkpoint": "checkpoint-20"}, t=4.0),
                  event_record("eval_failed", 0, {"step": 20, "checkpoint": "checkpoint-20",
                                                  "error": "RuntimeError: out of memory"}, t=6.0)]
    store.ingest("r1", RunPaths.EVENTS, training, 400, 4)
    seen = max(e["seq"] for e in store.events("r1"))
    # The evaluation process's file streams on its own: ingested after the training events, yet older.
    store.ingest("r1", RunPaths.EVAL_EVENTS, evaluation, 250, 2, expect_offset=0)
    assert store.offset("r1", RunPaths.EVAL_EVENTS) == (250, 2)
    assert store.offset("r1", RunPaths.EVENTS) == (400, 4)
    order = ["started", "checkpoint_saved", "eval_requested", "eval_started", "eval_failed", "finished"]
    assert [e["event"] for e in store.events("r1")] == order
    assert store.events("r1")[4]["detail"]["error"] == "RuntimeError: out of memory"
    # A poller that saw the training batch gets exactly the two later-ingested events, though they are older.
    assert [e["event"] for e in store.events("r1", since_seq=seen)] == ["eval_started", "eval_failed"]

    # eval_events.jsonl rewritten (or a stream reset): read again from byte 0, nothing doubled.
    store.reset_stream("r1", RunPaths.EVAL_EVENTS)
    res = store.ingest("r1", RunPaths.EVAL_EVENTS, evaluation, 250, 2)
    assert (res.inserted, res.duplicates) == (0, 2)
    assert [e["event"] for e in store.events("r1")] == order
    assert store.stream_state("r1", RunPaths.EVAL_EVENTS)["duplicate_count"] == 2
    assert store.stream_state("r1", RunPaths.EVENTS)["duplicate_count"] == 0


def test_log_keeps_only_the_newest_bytes_per_run(tmp_path):
    with Store(tmp_path / "s.db", log_keep_bytes=1000) as store:
        _new_run(store, "a")
        _new_run(store, "b")
        store.ingest("b", RunPaths.STDOUT, [{"text": "b" * 900 + "\n"}], 901, 0)
        offset = 0
        for i in range(30):
            chunk = f"{i:03d}" + "x" * 96 + "\n"
            offset += len(chunk)
            store.ingest("a", RunPaths.STDOUT, [{"text": chunk}], offset, 0)
        tail = store.log_tail("a", 10_000)
        assert len(tail) == 1000 and tail.startswith("020") and tail.endswith("029" + "x" * 96 + "\n")
        assert store.log_tail("b", 10_000) == "b" * 900 + "\n"  # another run's log is untouched


def test_metrics_of_every_attempt_are_kept_in_attempt_then_step_order(store):
    _new_run(store)
    first = [_metric(s, attempt=0, loss=2.0 + s) for s in range(1, 11)]  # attempt 0 reached step 10
    second = [_metric(s, attempt=1, loss=1.0 + s) for s in range(6, 13)]  # resumed from step 5, redid 6..10
    store.ingest("r1", RunPaths.METRICS, first, 1000, 10)
    store.ingest("r1", RunPaths.METRICS, second, 1700, 17)
    # The store keeps every attempt's rows; which one a chart shows is core.series' rule (tests/core/test_series.py).
    assert len(store.metrics("r1")) == 17
    assert [(m["attempt"], m["step"]) for m in store.metrics("r1")][9:11] == [(0, 10), (1, 6)]


def test_summary_matches_numbers_computed_from_the_records(store):
    _new_run(store)
    rng = random.Random(7)
    attempt0 = [_metric(s, 0, t=100.0 + 2 * s, loss=rng.uniform(0.5, 3)) for s in range(30)]
    attempt1 = [_metric(s, 1, t=500.0 + 2 * s, loss=rng.uniform(0.5, 3)) for s in range(20, 41)]
    attempt1[-1]["loss"] = None  # the last step logged no loss (NaN -> null): the final loss is the one before
    store.ingest("r1", RunPaths.METRICS, attempt0 + attempt1, 5000, 51)
    evals = []
    for step in (10, 20, 30, 40):
        for bench in ("mbpp", "humaneval"):
            for subset in ("all", "clean"):
                evals.append(_eval(step, bench, subset, rng.random(), attempt=0 if step < 20 else 1))
    store.ingest("r1", RunPaths.EVALS, evals, 900, len(evals))

    expected_best: dict[str, dict[str, float]] = {}
    for e in evals:
        cur = expected_best.setdefault(e["benchmark"], {}).get(e["subset"], -1.0)
        expected_best[e["benchmark"]][e["subset"]] = max(cur, e["pass@1"])
    summary = store.summary("r1")
    assert summary["steps"] == 40
    assert summary["final_loss"] == pytest.approx(attempt1[-2]["loss"])
    assert summary["tokens"] == attempt1[-1]["tokens"] == 40_000
    assert summary["wall_time_s"] == pytest.approx((500.0 + 80) - 100.0)
    assert summary["metric_points"] == 51
    assert summary["best_pass_at_1"] == expected_best

    _new_run(store, "empty")
    empty = store.summary("empty")
    assert (empty["steps"], empty["final_loss"], empty["wall_time_s"], empty["best_pass_at_1"]) == \
        (None, None, None, {})


def test_contamination_reports_attach_to_runs_and_survive_run_deletion(store):
    _new_run(store)
    report = {"method": "substring-50", "summary": {"mbpp": {"contaminated": 3, "total": 500}},
              "matches": [{"task_id": "Mbpp/11", "train_index": 7}]}
    loose = store.add_contamination_report(report, "/tmp/report.json")
    attached = store.add_contamination_report(report, None, run_id="r1")
    listed = store.contamination_reports()
    assert [r.id for r in listed] == [attached, loose]
    assert listed[0].method == "substring-50" and listed[0].summary == report["summary"]
    assert listed[0].report is None
    assert store.get_contamination_report(attached).report == report
    assert [r.id for r in store.contamination_reports(run_id="r1")] == [attached]
    with pytest.raises(UnknownRunError):
        store.add_contamination_report(report, None, run_id="ghost")
    store.attach_contamination_report(loose, "r1")
    store.delete_run("r1")
    assert {r.run_id for r in store.contamination_reports()} == {None}
    assert store.get_contamination_report(9999) is None


# ---------------------------------------------------------------------------------------------- schema

# The v1 schema exactly as the first release created it (kept here, frozen, to test upgrading a real old file).
V1_SQL = """
CREATE TABLE runs (run_id TEXT PRIMARY KEY, name TEXT NOT NULL, created_at REAL NOT NULL, updated_at REAL NOT NULL,
    cluster TEXT, backend TEXT, run_dir TEXT, job_id TEXT, status TEXT NOT NULL DEFAULT 'created',
    status_reason TEXT, config_yaml TEXT, config_json TEXT, preset TEXT);
CREATE TABLE stream_offsets (run_id TEXT NOT NULL REFERENCES runs(run_id) ON DELETE CASCADE,
    file_name TEXT NOT NULL, "offset" INTEGER NOT NULL DEFAULT 0, line_no INTEGER NOT NULL DEFAULT 0,
    corrupt_count INTEGER NOT NULL DEFAULT 0, PRIMARY KEY (run_id, file_name));
CREATE TABLE metrics (run_id TEXT NOT NULL REFERENCES runs(run_id) ON DELETE CASCADE, attempt INTEGER NOT NULL,
    step INTEGER NOT NULL, t REAL, epoch REAL, samples INTEGER, tokens INTEGER, loss REAL, lr REAL,
    grad_norm REAL, tokens_per_s REAL, extra TEXT, PRIMARY KEY (run_id, attempt, step));
CREATE TABLE evals (id INTEGER PRIMARY KEY, run_id TEXT NOT NULL REFERENCES runs(run_id) ON DELETE CASCADE,
    attempt INTEGER NOT NULL, step INTEGER NOT NULL, checkpoint TEXT NOT NULL, benchmark TEXT NOT NULL,
    subset TEXT NOT NULL, n_tasks INTEGER, samples_per_task INTEGER, temperature REAL, pass_at TEXT NOT NULL, t REAL,
    UNIQUE (run_id, step, checkpoint, benchmark, subset, attempt));
CREATE TABLE events (seq INTEGER PRIMARY KEY, run_id TEXT NOT NULL REFERENCES runs(run_id) ON DELETE CASCADE,
    t REAL NOT NULL, attempt INTEGER NOT NULL, event TEXT NOT NULL, detail TEXT NOT NULL,
    UNIQUE (run_id, attempt, t, event));
PRAGMA user_version = 1;
"""


def test_v1_store_is_migrated_to_current_keeping_its_data(tmp_path):
    path = tmp_path / "old.sqlite3"
    old = sqlite3.connect(path)
    old.executescript(V1_SQL)
    with old:
        old.execute("INSERT INTO runs (run_id, name, created_at, updated_at, status, job_id) "
                    "VALUES ('old', 'old run', 1.0, 2.0, 'finished', '77')")
        old.execute("INSERT INTO metrics (run_id, attempt, step, t, loss) VALUES ('old', 0, 5, 10.0, 1.5)")
        old.execute("INSERT INTO stream_offsets (run_id, file_name, \"offset\", line_no) "
                    "VALUES ('old', 'metrics.jsonl', 120, 1)")
    old.close()

    with Store(path) as store:
        assert store.schema_version() == SCHEMA_VERSION == 5
        row = store.get_run("old")
        assert (row.name, row.status, row.job_id, row.tags, row.notes, row.finished_at, row.archived) == \
            ("old run", "finished", "77", (), "", None, False)
        assert [(m["step"], m["loss"]) for m in store.metrics("old")] == [(5, 1.5)]
        assert store.stream_state("old", RunPaths.METRICS)["duplicate_count"] == 0
        assert store.offset("old", RunPaths.METRICS) == (120, 1)
        # v2 features work on the migrated file
        store.update_run("old", tags=["legacy"], finished_at=3.0)
        store.ingest("old", RunPaths.STDOUT, [{"text": "line\n"}], 5, 0)
        assert store.log_tail("old", 100) == "line\n"
        store.add_contamination_report({"method": "m", "summary": {}}, None, run_id="old")
        # v3 features too: archiving and per-sample eval results
        store.update_run("old", archived=True)
        store.put_eval_samples("old", 5, "humaneval", [{"task_id": "HumanEval/0", "sample": 0, "passed": True}])
        assert store.get_run("old").archived and store.eval_sample_sets("old") == [(5, "humaneval")]
        # v4: per-rank heartbeat records
        store.upsert_ranks("old", [rank_record(rank=0, local_rank=0, world_size=1, host="n1", pid=9, attempt=0,
                                               state="finished", started_t=1.0, step=5, t=2.0)])
        assert [r["host"] for r in store.ranks("old")] == ["n1"]
        assert store.integrity_check() == "ok"
    with Store(path) as again:  # reopening a current store changes nothing
        assert again.get_run("old").tags == ("legacy",)


def test_store_from_a_newer_version_is_refused_and_left_untouched(tmp_path):
    path = tmp_path / "future.sqlite3"
    Store(path).close()
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(StoreVersionError, match=rf"schema version {SCHEMA_VERSION + 1}.*upgrade TuneDeck"):
        Store(path)
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION + 1
    conn.close()


def test_a_file_that_is_not_a_store_gives_a_clear_error(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_bytes(b"these are not the tables you are looking for" * 100)
    with pytest.raises(StoreError, match=r"cannot open the run store .*notes\.txt"):
        Store(path)


def test_failing_migration_rolls_back_to_the_old_version(tmp_path, monkeypatch):
    import core.store as store_module

    path = tmp_path / "s.db"
    Store(path).close()

    def broken(conn: sqlite3.Connection) -> None:
        conn.execute("CREATE TABLE half_done (x)")
        raise RuntimeError("migration bug")

    monkeypatch.setattr(store_module, "MIGRATIONS", (*store_module.MIGRATIONS, broken))
    monkeypatch.setattr(store_module, "SCHEMA_VERSION", SCHEMA_VERSION + 1)
    with pytest.raises(RuntimeError, match="migration bug"):
        Store(path)
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert conn.execute("SELECT name FROM sqlite_master WHERE name = 'half_done'").fetchone() is None
    conn.close()


# ---------------------------------------------------------------------------------------------- concurrency


def test_reader_thread_sees_whole_batches_while_a_writer_thread_ingests(store):
    _new_run(store)
    batches, per_batch = 150, 20
    errors: list[BaseException] = []
    done = threading.Event()
    observations = 0

    def writer() -> None:
        try:
            for b in range(batches):
                recs = [_metric(b * per_batch + i) for i in range(per_batch)]
                n = (b + 1) * per_batch
                store.ingest("r1", RunPaths.METRICS, recs, n * 100, n)
        except BaseException as exc:  # reported to the test thread
            errors.append(exc)
        finally:
            done.set()

    def reader() -> None:
        nonlocal observations
        try:
            while not done.is_set():
                _, line_no = store.offset("r1", RunPaths.METRICS)
                steps = [m["step"] for m in store.metrics("r1")]
                # read after the offset, so at least that many rows; never a half-applied batch
                assert len(steps) >= line_no
                assert len(steps) % per_batch == 0
                assert steps == list(range(len(steps)))
                observations += 1
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=writer), threading.Thread(target=reader)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    assert observations > 0
    assert store.offset("r1", RunPaths.METRICS) == (batches * per_batch * 100, batches * per_batch)
    assert len(store.metrics("r1")) == batches * per_batch


def _write_run_files(run_dir: RunPaths, n_lines: int, every_corrupt: int) -> tuple[bytes, bytes]:
    run_dir.root.mkdir(parents=True)
    lines = []
    step = 0
    for i in range(n_lines):
        if i % every_corrupt == every_corrupt - 1:
            lines.append(b'{"t": 1.0, "step": oops\n')
        else:
            lines.append(encode_record(_metric(step, t=float(step))))
            step += 1
    metrics = b"".join(lines)
    log = b"".join(f"[rank0] step {i} loss {1 / (i + 1):.6f} " .encode() + b"." * (100 + i % 50) + b"\n"
                   for i in range(n_lines))
    run_dir.metrics.write_bytes(metrics)
    run_dir.stdout.write_bytes(log)
    return metrics, log


def _check_store_matches_files(store_path: Path, metrics: bytes, log: bytes, committed: tuple[int, int],
                               run_id: str = "r1") -> tuple:
    with Store(store_path) as store:
        assert store.integrity_check() == "ok"
        state = store.stream_state(run_id, RunPaths.METRICS)
        m_off, l_off = state["offset"], store.offset(run_id, RunPaths.STDOUT)[0]
        # nothing the child reported committed is lost
        assert m_off >= committed[0] and l_off >= committed[1]
        # the stored offset and the stored records agree exactly: no batch half-applied, none repeated
        assert m_off == 0 or metrics[m_off - 1:m_off] == b"\n"
        prefix = metrics[:m_off].splitlines()
        assert state["line_no"] == len(prefix)
        good = [ln for ln in prefix if b"oops" not in ln]
        assert state["corrupt_count"] == len(prefix) - len(good)
        assert state["duplicate_count"] == 0
        stored = store.metrics(run_id)
        assert [m["step"] for m in stored] == [json.loads(ln)["step"] for ln in good]
        assert store.log_tail(run_id, len(log) + 1) == log[:l_off].decode()
        return m_off, l_off


def test_sigkilled_writer_process_loses_no_committed_batch_and_store_continues(tmp_path):
    store_path = tmp_path / "store.sqlite3"
    run_dir = RunPaths(tmp_path / "run")
    metrics, log = _write_run_files(run_dir, n_lines=40_000, every_corrupt=97)
    with Store(store_path) as s:
        _new_run(s)
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    cmd = [sys.executable, str(CHILD), str(store_path), "r1", str(run_dir.root)]
    reader = Store(store_path)
    kills = 0
    progress = (0, 0)
    for _round in range(8):
        child = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        first = child.stdout.readline()  # the child is up and committing
        assert first, child.stderr.read().decode()
        # meanwhile this process reads the store the child is writing (WAL: readers never block the writer)
        deadline = time.monotonic() + rng.uniform(0.0, 0.1)
        seen = (0, 0)
        while time.monotonic() < deadline:
            now = reader.offset("r1", RunPaths.METRICS)
            assert now >= seen
            seen = now
        child.send_signal(signal.SIGKILL)
        out, err = child.communicate(timeout=30)
        if b"eof" in out:
            break  # the files were consumed before the kill landed
        assert child.returncode == -signal.SIGKILL, err.decode()
        kills += 1
        # only newline-terminated lines are reports: the kill may cut the last one
        reported = [line.split() for line in (first + out).decode().split("\n")[:-1]]
        last = reported[-1]
        committed = (int(last[1]), int(last[2]))
        new_progress = _check_store_matches_files(store_path, metrics, log, committed)
        assert new_progress > progress, f"round {_round} made no progress (seed {seed})"
        progress = new_progress
        if kills >= 4:
            break
    reader.close()
    assert kills >= 2, f"the child finished before it could be killed twice (seed {seed})"

    # the store reopens and the streamer continues to the end of both files, exactly once
    done = subprocess.run(cmd, capture_output=True, timeout=120, check=True)
    assert done.stdout.decode().splitlines()[-1] == "eof"
    assert _check_store_matches_files(store_path, metrics, log, (0, 0)) == (len(metrics), len(log))


def test_two_writer_processes_share_one_store_without_lock_errors(tmp_path):
    store_path = tmp_path / "store.sqlite3"
    files = {}
    with Store(store_path) as s:
        for run_id in ("a", "b"):
            _new_run(s, run_id)
            files[run_id] = _write_run_files(RunPaths(tmp_path / run_id), n_lines=4000, every_corrupt=50)
    procs = {run_id: subprocess.Popen([sys.executable, str(CHILD), str(store_path), run_id, str(tmp_path / run_id)],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) for run_id in files}
    for proc in procs.values():
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err.decode()
    for run_id, (metrics, log) in files.items():
        assert _check_store_matches_files(store_path, metrics, log, (0, 0), run_id) == (len(metrics), len(log))


# ---------------------------------------------------------------------------------------------- v3


def _sample(task: str, passed: bool, sample: int = 0, subset: str = "all", **extra) -> dict:
    return {"task_id": task, "sample": sample, "passed": passed, "subset": subset, "completion": f"  return {task!r}",
            "error": None if passed else "AssertionError", "seconds": 0.25, **extra}


def test_eval_samples_are_replaced_per_evaluation_and_read_back_with_their_extra_keys(store):
    _new_run(store)
    rows = [_sample("HumanEval/0", True), _sample("HumanEval/1", False, stderr_tail="Traceback ...", plus_tests=True),
            _sample("HumanEval/1", True, sample=1)]
    assert store.put_eval_samples("r1", 10, "humaneval", rows) == 3
    store.put_eval_samples("r1", 10, "mbpp", [_sample("mbpp/11", True)])
    back = store.eval_samples("r1", 10, "humaneval")
    assert [(r["task_id"], r["sample"], r["passed"]) for r in back] == \
        [("HumanEval/0", 0, True), ("HumanEval/1", 0, False), ("HumanEval/1", 1, True)]
    assert back[1]["stderr_tail"] == "Traceback ..." and back[1]["plus_tests"] is True
    assert back[1]["benchmark"] == "humaneval" and back[1]["step"] == 10
    assert store.task_results("r1", 10, "humaneval") == {"HumanEval/0": ("all", [True]),
                                                         "HumanEval/1": ("all", [False, True])}
    # a re-evaluation of the same checkpoint rewrites its file: the store follows, the other benchmark stays
    store.put_eval_samples("r1", 10, "humaneval", [_sample("HumanEval/0", False)])
    assert [r["passed"] for r in store.eval_samples("r1", 10, "humaneval")] == [False]
    assert store.eval_sample_sets("r1") == [(10, "humaneval"), (10, "mbpp")]
    store.delete_run("r1")
    assert store.eval_sample_sets("r1") == []


def test_invalid_eval_sample_rows_store_nothing(store):
    _new_run(store)
    store.put_eval_samples("r1", 1, "humaneval", [_sample("HumanEval/0", True)])
    with pytest.raises(ValueError, match=r"row 1 .*'passed' must be true or false"):
        store.put_eval_samples("r1", 1, "humaneval", [_sample("HumanEval/0", False), {"task_id": "x", "passed": 1}])
    assert [r["passed"] for r in store.eval_samples("r1", 1, "humaneval")] == [True]
    with pytest.raises(UnknownRunError):
        store.put_eval_samples("nope", 1, "humaneval", [_sample("HumanEval/0", True)])


def test_archived_flag_round_trips_and_archived_runs_stay_listed_for_the_streamer(store):
    _new_run(store, "a")
    _new_run(store, "b")
    row = store.update_run("a", archived=True)
    assert row.archived is True and store.get_run("b").archived is False
    # list_runs is what the stream manager walks: an archived run that is still going keeps streaming
    assert {r.run_id for r in store.list_runs()} == {"a", "b"}
    assert store.update_run("a", archived=False).archived is False


def _rank(rank: int, attempt: int, t: float, state: str = "running", host: str = "node1", **kw):
    return rank_record(rank=rank, local_rank=0, world_size=2, host=host, pid=100 + rank, attempt=attempt, state=state,
                       started_t=1.0, step=kw.pop("step", 3), t=t, **kw)


def test_rank_records_keep_the_newest_per_rank_and_a_later_attempt_replaces_an_earlier_one(store):
    store.create_run("r1", "run", None, None, None, None, None)
    assert store.upsert_ranks("r1", [_rank(0, 1, 10.0), _rank(1, 1, 10.0, host="node2")]) == 2
    assert store.upsert_ranks("r1", [_rank(0, 1, 5.0, state="failed")]) == 0  # older than what is stored
    assert store.upsert_ranks("r1", [_rank(0, 1, 15.0, state="failed", error="RuntimeError: peer gone")]) == 1
    assert store.upsert_ranks("r1", [_rank(1, 2, 3.0, host="node3", step=None)]) == 1  # a new attempt wins
    ranks = store.ranks("r1")
    assert [(r["rank"], r["attempt"], r["host"], r["state"], r["step"]) for r in ranks] == \
        [(0, 1, "node1", "failed", 3), (1, 2, "node3", "running", None)]
    assert ranks[0]["error"] == "RuntimeError: peer gone" and ranks[1]["error"] is None


def test_an_invalid_rank_record_stores_nothing_and_says_which_field(store):
    store.create_run("r1", "run", None, None, None, None, None)
    bad = {**_rank(1, 1, 2.0), "host": ""}
    with pytest.raises(ValueError, match=r"record 1 .*'host'"):
        store.upsert_ranks("r1", [_rank(0, 1, 1.0), bad])
    assert store.ranks("r1") == []
