"""The run store at scale, on real SQLite files: summaries kept by ingest, envelopes drawn from tiles, and no
path that grows with what is stored (work is counted in SQLite virtual-machine instructions, not timed)."""

from __future__ import annotations

import bisect
import json
import os
import random
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from core.records import METRIC_REQUIRED, RunPaths, eval_record, metric_record
from core.series import RunSeries
from core.store import (
    MIGRATIONS,
    POOL_IDLE_MAX,
    SCHEMA_VERSION,
    TILE_SHIFTS,
    Store,
    _rebuild_tiles,
    _statements,
)
from tests.core.test_store import V1_SQL


def _metric(step: int, attempt: int = 0, loss: float | None = 1.0, *, tokens: int | None = None,
            t: float | None = None, **optional) -> dict:
    return metric_record(step=step, attempt=attempt, epoch=step / 100, samples=8 * step,
                         tokens=1000 * step if tokens is None else tokens, loss=loss, lr=1e-5 * (1 + step % 7),
                         grad_norm=0.5, tokens_per_s=1234.5, t=1000.0 + step + 10_000 * attempt if t is None else t,
                         **optional)


def _eval(step: int, bench: str, subset: str, p1: float, attempt: int = 0) -> dict:
    return eval_record(step=step, attempt=attempt, checkpoint=f"checkpoint-{step}", benchmark=bench, subset=subset,
                       n_tasks=100, samples_per_task=1, temperature=0.0, pass_at={1: p1}, t=5000.0 + step)


class Feeder:
    """Ingests batches with advancing offsets, as the streamer does."""

    def __init__(self, store: Store, run_id: str):
        self.store, self.run_id = store, run_id
        store.create_run(run_id, f"run {run_id}", None, None, "local", "local", None)
        self.lines = {}

    def __call__(self, file_name: str, records: list[dict]) -> int:
        n = self.lines.get(file_name, 0) + len(records)
        self.lines[file_name] = n
        return self.store.ingest(self.run_id, file_name, records, 100 * n, n).inserted


def _latest_per_step(records: list[dict]) -> dict[int, dict]:
    """Each step's row under core.series' latest-attempt rule: the store's summaries and envelopes apply the
    same rule in SQL (for speed), and these tests hold them to the one definition the charts use."""
    series = RunSeries()
    series.extend(records)
    rows = {(r["attempt"], r["step"]): r for r in records}
    return {int(step): rows[(attempt, int(step))] for attempt in series.attempts
            for step in series.column(attempt, "step")}


def _expected_summary(store: Store, run_id: str) -> dict:
    """The numbers recomputed from every stored record (what Store.summary computed before v5)."""
    records = store.metrics(run_id)
    latest = _latest_per_step(records)
    steps = sorted(latest)
    checkpoints: dict[tuple, dict] = {}
    for e in store.evals(run_id):  # a checkpoint evaluated again counts with its latest attempt
        key = (e["step"], e["benchmark"], e["subset"])
        if key not in checkpoints or e["attempt"] >= checkpoints[key]["attempt"]:
            checkpoints[key] = e
    best: dict[str, dict[str, float]] = {}
    for e in checkpoints.values():
        if e.get("pass@1") is not None:
            subsets = best.setdefault(e["benchmark"], {})
            subsets[e["subset"]] = max(subsets.get(e["subset"], float("-inf")), e["pass@1"])
    ts = [r["t"] for r in records]
    return {
        "steps": steps[-1] if steps else None,
        "final_loss": next((latest[s]["loss"] for s in reversed(steps) if latest[s]["loss"] is not None), None),
        "tokens": latest[steps[-1]]["tokens"] if steps else None,
        "wall_time_s": max(ts) - min(ts) if ts else None,
        "metric_points": len(records),
        "eval_points": len(store.evals(run_id)),
        "attempts": len({r["attempt"] for r in records}),
        "best_pass_at_1": best,
    }


def _summary_subset(summary: dict) -> dict:
    return {k: summary[k] for k in ("steps", "final_loss", "tokens", "wall_time_s", "metric_points", "eval_points",
                                    "attempts", "best_pass_at_1")}


def _vm_steps(store: Store, fn: Callable[[], object]) -> int:
    """SQLite virtual-machine instructions executed by fn() on this thread's connection: a count of the work
    done, independent of timing."""
    conn = store._conn()
    count = 0

    def tick() -> int:
        nonlocal count
        count += 1
        return 0

    conn.set_progress_handler(tick, 1)
    try:
        fn()
    finally:
        conn.set_progress_handler(None, 1)
    return count


@pytest.fixture
def store(tmp_path: Path):
    s = Store(tmp_path / "store.sqlite3")
    yield s
    s.close()


# ---------------------------------------------------------------------------------------------- summaries


def test_summary_after_each_random_batch_matches_a_recomputation_from_every_record(store):
    """Resumed attempts, repeated batches, rows of an older attempt arriving late, null losses: after every
    batch the summary kept by ingest equals the numbers recomputed from all stored records."""
    rng = random.Random(1717)
    feed = Feeder(store, "r1")
    attempt_starts = {0: 1}
    sent: list[list[dict]] = []
    step = {0: 0}
    for _batch in range(60):
        roll = rng.random()
        if roll < 0.1 and sent:  # a batch delivered again (a re-stream after truncation)
            batch = rng.choice(sent)
        else:
            if roll < 0.25:  # a new attempt resumes from an earlier step
                attempt = max(attempt_starts) + 1
                start = rng.randint(1, max(1, max(step.values())))
                attempt_starts[attempt] = start
                step[attempt] = start - 1
            elif roll < 0.35 and len(step) > 1:  # late rows of an older attempt
                attempt = rng.choice(sorted(step)[:-1])
            else:
                attempt = max(step)
            batch = []
            for _ in range(rng.randint(1, 12)):
                step[attempt] += 1
                loss = None if rng.random() < 0.3 else round(rng.uniform(0.1, 3.0), 6)
                batch.append(_metric(step[attempt], attempt, loss=loss, t=rng.uniform(0, 1e6)))
            sent.append(batch)
        feed(RunPaths.METRICS, batch)
        if rng.random() < 0.2:
            s = rng.choice([10, 20, 30])
            feed(RunPaths.EVALS, [_eval(s, rng.choice(["humaneval", "mbpp"]), rng.choice(["all", "clean"]),
                                        rng.random(), attempt=max(step))])
        got = _summary_subset(store.summary("r1"))
        assert got == _expected_summary(store, "r1"), f"after batch {_batch}"
    assert len(attempt_starts) >= 3  # the random walk really resumed


def test_resumed_attempt_takes_over_the_last_step_and_final_loss_only_where_it_logged(store):
    feed = Feeder(store, "r1")
    feed(RunPaths.METRICS, [_metric(s, 0, loss=10.0 + s) for s in range(1, 31)])
    assert (store.summary("r1")["steps"], store.summary("r1")["final_loss"]) == (30, 40.0)
    # attempt 1 resumes from the step-20 checkpoint: until it passes step 30, attempt 0's step 30 is the last
    feed(RunPaths.METRICS, [_metric(s, 1, loss=1.0 + s / 100) for s in range(21, 26)])
    s = store.summary("r1")
    assert (s["steps"], s["final_loss"], s["tokens"], s["attempts"]) == (30, 40.0, 30_000, 2)
    feed(RunPaths.METRICS, [_metric(s, 1, loss=1.0 + s / 100) for s in range(26, 36)])
    assert (store.summary("r1")["steps"], store.summary("r1")["final_loss"]) == (35, 1.35)
    # the last step logged no loss (NaN): the final loss is the one before it
    feed(RunPaths.METRICS, [_metric(36, 1, loss=None)])
    assert (store.summary("r1")["steps"], store.summary("r1")["final_loss"]) == (36, 1.35)
    # attempt 2 redoes step 35 without a loss: step 35's loss no longer counts, step 34's does
    feed(RunPaths.METRICS, [_metric(35, 2, loss=None)])
    assert store.summary("r1")["final_loss"] == 1.34
    assert store.summary("r1")["metric_points"] == 30 + 15 + 1 + 1
    assert store.summary("r1")["wall_time_s"] == (1000.0 + 35 + 20_000) - (1000.0 + 1)


def test_summary_counts_evals_and_keeps_the_best_pass_at_1_per_benchmark_and_subset(store):
    feed = Feeder(store, "r1")
    feed(RunPaths.EVALS, [_eval(10, "humaneval", "all", 0.25), _eval(10, "humaneval", "clean", 0.2)])
    feed(RunPaths.EVALS, [_eval(20, "humaneval", "all", 0.5), _eval(20, "mbpp", "all", 0.125)])
    feed(RunPaths.EVALS, [_eval(30, "humaneval", "all", 0.375)])
    assert feed(RunPaths.EVALS, [_eval(30, "humaneval", "all", 0.375)]) == 0  # repeated: ignored
    s = store.summary("r1")
    assert s["best_pass_at_1"] == {"humaneval": {"all": 0.5, "clean": 0.2}, "mbpp": {"all": 0.125}}
    assert (s["eval_points"], s["steps"], s["metric_points"]) == (5, None, 0)
    assert [(e["benchmark"], e["subset"], e["step"], e["n_tasks"]) for e in s["best_evals"]] == \
        [("humaneval", "all", 20, 100), ("humaneval", "clean", 10, 100), ("mbpp", "all", 20, 100)]
    # a resumed run evaluates step 20 again: its latest result counts, the earlier 0.5 no longer
    feed(RunPaths.EVALS, [_eval(20, "humaneval", "all", 0.3, attempt=1)])
    s = store.summary("r1")
    assert s["best_pass_at_1"]["humaneval"]["all"] == 0.375
    assert s["best_evals"][0]["step"] == 30 and s["eval_points"] == 6


def test_listing_runs_returns_each_run_with_its_summary_newest_first(store):
    for run_id, steps in (("a", 5), ("b", 0), ("c", 12)):
        feed = Feeder(store, run_id)
        if steps:
            feed(RunPaths.METRICS, [_metric(s, 0, loss=1.0 / s) for s in range(1, steps + 1)])
    listed = store.list_run_summaries()
    assert [(run.run_id, s.steps, s.metric_points) for run, s in listed] == [("c", 12, 12), ("b", None, 0),
                                                                             ("a", 5, 5)]
    assert listed[0][1].final_loss == pytest.approx(1 / 12)
    assert [run.run_id for run in store.list_runs()] == [run.run_id for run, _ in listed]
    store.delete_run("c")  # its summary, attempts and tiles go with it
    conn = store._conn()
    for table in ("run_summaries", "metric_attempts", "metric_tiles"):
        assert conn.execute(f"SELECT COUNT(*) FROM {table} WHERE run_id = 'c'").fetchone()[0] == 0


def test_listing_runs_reads_the_same_rows_whether_runs_hold_ten_or_five_hundred_times_more_points(tmp_path):
    def build(path: Path, points: int) -> Store:
        store = Store(path)
        for i in range(4):
            feed = Feeder(store, f"run{i}")
            feed(RunPaths.METRICS, [_metric(s, 0, loss=1.0 + i) for s in range(1, points + 1)])
            feed(RunPaths.METRICS, [_metric(s, 1, loss=0.5 + i) for s in range(points // 2, points + 3)])
            feed(RunPaths.EVALS, [_eval(points, "humaneval", "all", 0.25 + i / 100)])
        return store

    small, large = build(tmp_path / "small.db", 10), build(tmp_path / "large.db", 5_000)
    try:
        assert large.summary("run3")["metric_points"] == 5_000 + 2_503
        steps_small = _vm_steps(small, small.list_run_summaries)
        steps_large = _vm_steps(large, large.list_run_summaries)
        # The same plan over the same number of rows: equal but for the width of the stored integers.
        assert steps_large <= steps_small * 1.05, (steps_small, steps_large)
        one_small = _vm_steps(small, lambda: small.summary("run3"))
        one_large = _vm_steps(large, lambda: large.summary("run3"))
        assert one_large <= one_small * 1.05, (one_small, one_large)
    finally:
        small.close()
        large.close()


def test_records_the_reader_checked_are_not_checked_again_but_any_other_list_is(store):
    from core.records import CheckedRecords, IncrementalReader, encode_record

    feed = Feeder(store, "r1")
    reader = IncrementalReader("metrics")
    res = reader.feed(b"".join(encode_record(_metric(s)) for s in range(1, 4)) + b'{"step": 4}\n')
    assert isinstance(res.records, CheckedRecords) and res.records.kind == "metrics" and len(res.corrupt) == 1
    assert res.line_nos == [1, 2, 3] and res.corrupt[0].line_no == 4
    assert feed(RunPaths.METRICS, res.records) == 3
    bad = _metric(5)
    bad["step"] = "five"
    with pytest.raises(ValueError, match=r"record 1 .*'step' must be an integer"):
        feed(RunPaths.METRICS, [_metric(6), bad])  # a plain list: checked
    as_evals = CheckedRecords("evals")
    as_evals.extend([_metric(7), bad])
    with pytest.raises(ValueError, match="record 1"):
        feed(RunPaths.METRICS, as_evals)  # checked for another kind: checked again
    copy = res.records[:]  # a slice is a plain list
    copy.append(bad)
    assert type(copy) is list
    with pytest.raises(ValueError, match="record 3"):
        feed(RunPaths.METRICS, copy)
    assert store.summary("r1")["steps"] == 3


def test_the_fast_metric_check_refuses_what_the_full_check_refuses():
    from core.records import _plain_metric_ok, validate_record

    good = _metric(5, step_time_s=0.5)
    assert _plain_metric_ok(good) and validate_record("metrics", good) == []
    refused = {"step": 1 << 64, "tokens": -(1 << 63) - 1, "t": float("inf"), "attempt": True, "loss": "1.0"}
    for name, value in refused.items():
        rec = {**good, name: value}
        assert not _plain_metric_ok(rec) and validate_record("metrics", rec), name
    rec = {**good, "mfu": 0.4}  # a field the trainer does not write: the full check decides (it is fine)
    assert not _plain_metric_ok(rec) and validate_record("metrics", rec) == []
    assert not _plain_metric_ok({k: v for k, v in good.items() if k != "loss"})
    assert validate_record("metrics", {k: v for k, v in good.items() if k != "loss"}) == ["missing field 'loss'"]


# ---------------------------------------------------------------------------------------------- migration

# A store as schema v2 created it (v1 plus the released v2 migration), with v2-era rows.
def _make_v2_store(path: Path) -> None:
    conn = sqlite3.connect(path)
    conn.executescript(V1_SQL)
    with conn:
        for statement in _statements(MIGRATIONS[1]):
            conn.execute(statement)
        conn.execute("PRAGMA user_version = 2")
        for run_id, created in (("old", 1.0), ("empty", 2.0)):
            conn.execute("INSERT INTO runs (run_id, name, created_at, updated_at, status) VALUES (?, ?, ?, ?, ?)",
                         (run_id, f"{run_id} run", created, created, "finished"))
        rows = []
        for attempt, steps in ((0, range(1, 301)), (1, range(201, 451))):
            for s in steps:
                loss = None if s == 450 else 5.0 - s / 100 - attempt
                extra = json.dumps({"step_time_s": 0.5, "gpu_mem_gb": 20.0 + attempt, **({"mfu": 0.4} if s == 7 else {})}) \
                    if s % 2 else None
                rows.append(("old", attempt, s, 100.0 + s + 1000 * attempt, s / 100, 8 * s, 1000 * s, loss, 1e-5,
                             0.5, 999.0, extra))
        conn.executemany("INSERT INTO metrics (run_id, attempt, step, t, epoch, samples, tokens, loss, lr,"
                         " grad_norm, tokens_per_s, extra) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
        conn.execute("INSERT INTO evals (run_id, attempt, step, checkpoint, benchmark, subset, pass_at, t)"
                     " VALUES ('old', 1, 400, 'checkpoint-400', 'humaneval', 'all', '{\"pass@1\": 0.3}', 9.0)")
        conn.execute("INSERT INTO logs (run_id, \"offset\", text) VALUES ('old', 0, 'héllo\n')")
    conn.close()


def test_v2_store_is_migrated_with_summaries_attempt_spans_and_tiles_of_its_old_rows(tmp_path):
    path = tmp_path / "v2.sqlite3"
    _make_v2_store(path)
    with Store(path, log_keep_bytes=20) as store:
        assert store.schema_version() == SCHEMA_VERSION == 5
        assert store.integrity_check() == "ok"
        summary = store.summary("old")
        assert _summary_subset(summary) == _expected_summary(store, "old")
        assert (summary["steps"], summary["final_loss"], summary["attempts"]) == (450, 5.0 - 4.49 - 1, 2)
        assert summary["best_pass_at_1"] == {"humaneval": {"all": 0.3}}
        assert store.summary("empty")["metric_points"] == 0
        # v2's JSON extras moved into the optional fields' columns; a field without a column stays JSON
        old_rows = store.metrics("old")
        assert (old_rows[0]["gpu_mem_gb"], old_rows[0]["step_time_s"]) == (20.0, 0.5)
        assert "gpu_mem_gb" not in old_rows[1]
        assert old_rows[6]["step"] == 7 and old_rows[6]["mfu"] == 0.4 and old_rows[6]["step_time_s"] == 0.5
        extras = store._conn().execute("SELECT extra FROM metrics WHERE extra IS NOT NULL").fetchall()
        assert [json.loads(e[0]) for e in extras] == [{"mfu": 0.4}]
        env = store.metric_envelope("old", ("loss",), buckets=10_000)
        assert env.exact and env.points == 450
        winners = _latest_per_step(old_rows)
        drawn = {int(x): y for seg in env.series["loss"] for x, y in zip(seg.x_first, seg.y_min, strict=True)}
        assert drawn == {s: r["loss"] for s, r in winners.items() if r["loss"] is not None}
        # ingest continues on the migrated summary; the log's running total was counted from the old rows
        store.ingest("old", RunPaths.METRICS, [_metric(451, 1, loss=0.25, step_time_s=0.4)], 999, 451)
        assert (store.summary("old")["steps"], store.summary("old")["final_loss"]) == (451, 0.25)
        assert store.metrics("old", since_rowid=max(r["rowid"] for r in old_rows))[0]["step_time_s"] == 0.4
        store.ingest("old", RunPaths.STDOUT, [{"text": "0123456789abcdef\n"}], 30, 0)
        assert store.log_tail("old", 100) == "0123456789abcdef\n"  # 7 old bytes + 17 new > 20: the old went


# ---------------------------------------------------------------------------------------------- no growing paths


def _tiles_and_spans(store: Store, run_id: str) -> tuple[list, list]:
    conn = store._conn()
    tiles = conn.execute("SELECT * FROM metric_tiles WHERE run_id = ? ORDER BY attempt, level, tile",
                         (run_id,)).fetchall()
    spans = conn.execute("SELECT attempt, points, min_step, max_step, first_t, last_t FROM metric_attempts"
                         " WHERE run_id = ? ORDER BY attempt", (run_id,)).fetchall()
    return [tuple(r) for r in tiles], [tuple(r) for r in spans]


def test_tiles_and_spans_kept_by_ingest_equal_a_recomputation_from_the_stored_rows(store):
    """Ingest computes the tiles of new, ascending rows in memory and merges them into the stored ones, and
    re-reads the rows in SQL otherwise (repeats, steps out of order, fields it has no column for). Whatever mix
    arrives, the tiles and attempt spans equal those recomputed from every stored row, and every stored row is
    the first delivery of its (attempt, step) with its fields as sent."""
    rng = random.Random(2024)
    feed = Feeder(store, "r1")
    sent: list[dict] = []
    next_step = {0: 1, 1: 1, 2: 1}
    for batch_no in range(80):
        roll = rng.random()
        attempt = rng.choice(sorted(next_step))
        if roll < 0.1 and sent:  # a re-delivered stretch, partly overlapping new rows
            start = rng.randrange(len(sent))
            batch = [dict(r, loss=-1.0) for r in sent[start:start + rng.randint(1, 40)]]  # a repeat never wins
            batch += [_metric(next_step[attempt] + i, attempt) for i in range(rng.randint(0, 5))]
        else:
            n = rng.choice([1, 3, 17, 64, 300, 2000])
            steps = list(range(next_step[attempt], next_step[attempt] + n))
            if roll < 0.2:
                rng.shuffle(steps)  # out of order
            batch = []
            for s in steps:
                kind = rng.random()
                loss = None if kind < 0.2 else rng.uniform(0.1, 3.0)
                if kind < 0.1:
                    rec = _metric(s, attempt, loss=loss)
                    rec.update(tokens=None, samples=None, lr=None)  # nulls in tiled columns (t is required)
                elif kind < 0.3:
                    rec = _metric(s, attempt, loss=loss, gpu_mem_gb=rng.uniform(1, 80), step_time_s=0.5)
                elif kind < 0.35:
                    rec = dict(_metric(s, attempt, loss=loss), custom_metric=rng.random(), note="x")
                else:
                    rec = _metric(s, attempt, loss=loss)
                batch.append(rec)
        next_step[attempt] = max([next_step[attempt], *(r["step"] + 1 for r in batch if r["attempt"] == attempt)])
        feed(RunPaths.METRICS, batch)
        sent.extend(batch)
        if batch_no % 20 == 19:
            kept, spans = _tiles_and_spans(store, "r1")
            with store._write() as conn:
                for attempt_, _points, lo, hi, _t0, _t1 in spans:
                    _rebuild_tiles(conn, "r1", attempt_, lo, hi)
                conn.execute("DELETE FROM metric_attempts WHERE run_id = 'r1'")
                conn.execute(
                    "INSERT INTO metric_attempts (run_id, attempt, points, min_step, max_step, first_t, last_t)"
                    " SELECT run_id, attempt, COUNT(*), MIN(step), MAX(step), MIN(t), MAX(t) FROM metrics"
                    " WHERE run_id = 'r1' GROUP BY attempt")
            assert _tiles_and_spans(store, "r1") == (kept, spans), f"after batch {batch_no}"
    first: dict[tuple[int, int], dict] = {}
    for rec in sent:
        first.setdefault((rec["attempt"], rec["step"]), rec)
    stored = {(r["attempt"], r["step"]): {k: v for k, v in r.items() if k != "rowid"} for r in store.metrics("r1")}
    expected = {key: {k: v for k, v in rec.items() if v is not None or k in METRIC_REQUIRED}
                for key, rec in first.items()}
    assert stored == expected
    assert any("custom_metric" in r for r in stored.values()) and any("gpu_mem_gb" in r for r in stored.values())


def test_a_run_id_with_quotes_and_sql_in_it_is_stored_as_given(store):
    """The metric INSERT names the run id as an SQL literal (so each row binds only its values): quoting holds."""
    run_id = "o'brien'); DROP TABLE metrics; --"
    feed = Feeder(store, run_id)
    feed(RunPaths.METRICS, [_metric(s) for s in range(1, 40)])
    other = Feeder(store, "other")
    other(RunPaths.METRICS, [_metric(s) for s in range(1, 5)])
    assert [r["step"] for r in store.metrics(run_id)] == list(range(1, 40))
    assert store.summary(run_id)["metric_points"] == 39 and store.summary("other")["metric_points"] == 4


@pytest.mark.parametrize("losses", ["every step", "never", "every tenth step"])
def test_ingesting_a_batch_costs_the_same_into_a_short_or_a_long_run(tmp_path, losses):
    """Summary, attempt spans and tiles are updated from the batch and a few index lookups: a batch into a run
    of 20k points costs what it costs into one of 600, resumed or not, whatever the losses logged."""
    def loss(step: int) -> float | None:
        return {"every step": 1.0 / step, "never": None, "every tenth step": 1.0 / step if step % 10 == 0 else None}[
            losses]

    costs = []
    with Store(tmp_path / "s.db") as store:
        for run_id, n in (("short", 600), ("long", 20_000)):
            feed = Feeder(store, run_id)
            for lo in range(1, n + 1, 3000):
                feed(RunPaths.METRICS, [_metric(s, 0, loss=loss(s)) for s in range(lo, min(n, lo + 2999) + 1)])
            # attempt 1 resumes 100 steps back, then logs in batches of 10 as a live run does
            feed(RunPaths.METRICS, [_metric(s, 1, loss=loss(s)) for s in range(n - 99, n - 9)])
            costs.append(_vm_steps(store, lambda feed=feed, n=n: feed(
                RunPaths.METRICS, [_metric(s, 1, loss=loss(s)) for s in range(n - 9, n + 1)])))
            assert _summary_subset(store.summary(run_id)) == _expected_summary(store, run_id)
    short, long = costs
    assert long <= short * 1.3, costs


def test_log_trimming_costs_the_same_with_ten_or_two_thousand_stored_chunks(tmp_path):
    cap = 256 << 10
    with Store(tmp_path / "s.db", log_keep_bytes=cap) as store:
        feed = Feeder(store, "r1")
        line = "[rank0] step 0000 loss 1.2345 " + "." * 70 + "\n"  # 101 bytes

        def one_line() -> None:
            feed(RunPaths.STDOUT, [{"text": line}])

        for _ in range(10):
            one_line()
        early = _vm_steps(store, one_line)
        for _ in range(2000):
            one_line()
        late = _vm_steps(store, one_line)
        assert late <= early * 1.2, (early, late)
        # past the cap (2,595 lines of 101 bytes) each line drops the oldest: still no walk over the rest
        for _ in range(1000):
            one_line()
        capped = _vm_steps(store, one_line)
        assert capped <= early * 2, (early, capped)
        tail = store.log_tail("r1", 2 * cap)
        assert len(tail.encode()) <= cap and len(tail.encode()) > cap - 101 and tail.endswith(line)
        assert store.summary("r1")  # the running total agrees with what is stored
        kept = store._conn().execute("SELECT SUM(LENGTH(CAST(text AS BLOB))) FROM logs").fetchone()[0]
        assert store._conn().execute("SELECT log_bytes FROM run_summaries").fetchone()[0] == kept
        store.reset_stream("r1", RunPaths.STDOUT)
        assert store._conn().execute("SELECT log_bytes FROM run_summaries").fetchone()[0] == 0


def test_incremental_poll_returns_exactly_the_new_rows_and_reads_from_the_last_seen_one(tmp_path):
    def poll_cost(points: int) -> tuple[int, list[tuple[int, int]]]:
        with Store(tmp_path / f"poll{points}.db") as store:
            feed, other = Feeder(store, "r1"), Feeder(store, "other")
            for lo in range(1, points + 1, 1000):
                feed(RunPaths.METRICS, [_metric(s) for s in range(lo, min(points, lo + 999) + 1)])
                other(RunPaths.METRICS, [_metric(s) for s in range(lo, lo + 10)])
            seen = max(r["rowid"] for r in store.metrics("r1"))
            feed(RunPaths.METRICS, [_metric(s, 1) for s in range(points - 2, points + 3)])  # a resume
            other(RunPaths.METRICS, [_metric(s) for s in range(points + 20, points + 25)])
            got: list = []
            steps = _vm_steps(store, lambda: got.extend(store.metrics("r1", since_rowid=seen)))
            other(RunPaths.METRICS, [_metric(s) for s in range(points + 30, points + 35)])  # r1 is not the newest
            latest = max(r["rowid"] for r in got)
            idle: list = []
            idle_steps = _vm_steps(store, lambda: idle.extend(store.metrics("r1", since_rowid=latest)))
            assert idle == []
            return steps, idle_steps, [(r["attempt"], r["step"]) for r in got]

    small_cost, small_idle, small_rows = poll_cost(1_000)
    large_cost, large_idle, large_rows = poll_cost(20_000)
    assert small_rows == [(1, s) for s in range(998, 1003)]
    assert large_rows == [(1, s) for s in range(19_998, 20_003)]
    assert large_cost <= small_cost * 1.2, (small_cost, large_cost)
    assert large_idle <= small_idle * 1.2 and large_idle < 200, (small_idle, large_idle)  # nothing new: one row


def test_a_poll_far_behind_reads_the_run_by_its_index_not_every_run_since(tmp_path):
    with Store(tmp_path / "s.db") as store:
        feed, busy = Feeder(store, "quiet"), Feeder(store, "busy")
        feed(RunPaths.METRICS, [_metric(s) for s in range(1, 11)])
        seen = max(r["rowid"] for r in store.metrics("quiet"))
        for lo in range(0, 20_000, 1000):
            busy(RunPaths.METRICS, [_metric(s) for s in range(lo + 1, lo + 1001)])
        feed(RunPaths.METRICS, [_metric(11)])
        got: list = []
        cost = _vm_steps(store, lambda: got.extend(store.metrics("quiet", since_rowid=seen)))
        assert [r["step"] for r in got] == [11]
        assert cost < 2_000, cost  # 11 rows through the index, not 20,000 rows of the busy run


def test_a_thousand_reads_on_short_lived_threads_leave_no_connection_or_descriptor_behind(store):
    Feeder(store, "r1")(RunPaths.METRICS, [_metric(s) for s in range(1, 50)])

    def fds() -> int:
        return len(os.listdir("/proc/self/fd"))

    def read() -> None:
        assert store.summary("r1")["steps"] == 49
        with store.snapshot():  # a thread that ends inside a snapshot hands back a clean connection
            store.metric_envelope("r1", ("loss",), buckets=10)

    for _ in range(20):  # warm up the pool
        t = threading.Thread(target=read)
        t.start()
        t.join()
    before_fds, before_conns = fds(), store.open_connections
    for _ in range(1000):
        t = threading.Thread(target=read)
        t.start()
        t.join()
    assert store.open_connections == before_conns <= POOL_IDLE_MAX + 1
    assert fds() <= before_fds
    # concurrent threads each get their own connection, and hand them back
    barrier = threading.Barrier(8)
    threads = [threading.Thread(target=lambda: (barrier.wait(), read(), barrier.wait())) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert store.open_connections <= POOL_IDLE_MAX + 1
    store.close()
    assert store.open_connections == 0


_CLOSE_UNDER_READERS = """
import sys, threading, time
from core.records import RunPaths, metric_record
from core.store import Store, StoreError
store = Store(sys.argv[1])
store.create_run("r1", "r1", None, None, "local", "local", None)
store.ingest("r1", RunPaths.METRICS, [metric_record(step=s, attempt=0, epoch=0.0, samples=s, tokens=s, loss=1.0,
             lr=None, grad_norm=None, tokens_per_s=None, t=1.0 + s) for s in range(1, 2001)], 1, 1)
started, told, other = threading.Barrier(9), [], []
def read(i):
    started.wait()
    try:
        while True:  # short queries and longer ones: the close lands inside some
            if i % 2:
                store.metrics("r1")
            store.get_run("r1")
            store.ranks("r1")
    except StoreError as exc:
        told.append(str(exc))
    except Exception as exc:
        other.append(repr(exc))
threads = [threading.Thread(target=read, args=(i,)) for i in range(8)]
for t in threads:
    t.start()
started.wait()
time.sleep(0.05)
store.close()
for t in threads:
    t.join()
print(len(told), store.open_connections, other)
"""


def test_closing_the_store_while_other_threads_read_crashes_nothing_and_each_reader_is_told(tmp_path):
    """A view's worker may still be reading when its window closes the store: the store closes its idle
    connections at once and each reader's when that reader hands it back (closing one under a running query
    crashed the process in 5 of 15 tries, and the others' readers got sqlite3's ProgrammingError), and each
    reader's next query raises StoreError."""
    import subprocess
    import sys

    for attempt in range(4):  # the close lands at another point of the readers' queries each time
        proc = subprocess.run([sys.executable, "-c", _CLOSE_UNDER_READERS, str(tmp_path / f"s{attempt}.db")],
                              capture_output=True, text=True, timeout=300,
                              env={**os.environ, "PYTHONFAULTHANDLER": "1"})
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert proc.stdout.split() == ["8", "0", "[]"], proc.stdout  # 8 readers told, nothing left open



# ---------------------------------------------------------------------------------------------- envelopes


def _winning_points(store: Store, run_id: str, field: str, x_axis: str = "step", x_range=None, t0: float = 0.0):
    xcol = {"step": "step", "tokens": "tokens", "samples": "samples", "wall_time": "t"}[x_axis]
    out = []
    for r in _latest_per_step(store.metrics(run_id)).values():
        x = r[xcol] - (t0 if x_axis == "wall_time" else 0)
        if r[field] is None or (x_range and not x_range[0] <= x <= x_range[1]):
            continue
        out.append((x, r[field], r["attempt"]))
    return sorted(out)


def _resumed_run(store: Store, run_id: str = "r1", n: int = 20_000) -> None:
    """Three attempts: 1 resumes at 6,001 (attempt 0 reached 8,000), 2 at 15,001; attempt 0's redone steps
    logged a loss of 100+ that must never be drawn."""
    feed = Feeder(store, run_id)
    rng = random.Random(5)
    for lo in range(1, 8001, 2000):
        feed(RunPaths.METRICS, [_metric(s, 0, loss=(100.0 + s if s > 6000 else rng.uniform(1, 3)))
                                for s in range(lo, lo + 2000)])
    for lo in range(6001, 17001, 1000):
        feed(RunPaths.METRICS, [_metric(s, 1, loss=None if s % 97 == 0 else rng.uniform(1, 3))
                                for s in range(lo, lo + 1000)])
    feed(RunPaths.METRICS, [_metric(s, 2, loss=rng.uniform(0.5, 1)) for s in range(15_001, n + 1)])


@pytest.fixture(scope="module")
def resumed(tmp_path_factory) -> Store:
    """One store with _resumed_run's run, shared by the envelope tests that only read it."""
    s = Store(tmp_path_factory.mktemp("resumed") / "store.sqlite3")
    _resumed_run(s)
    yield s
    s.close()


@pytest.mark.parametrize(("x_range", "buckets"), [(None, 500), (None, 37), ((5990.0, 6200.0), 300),
                                                  ((7000.5, 15_500.0), 1000), ((100.0, 130.0), 1000)])
def test_envelope_bounds_every_winning_point_and_no_superseded_one(resumed, x_range, buckets):
    store = resumed
    env = store.metric_envelope("r1", ("loss", "lr"), x_range=x_range, buckets=buckets)
    lo, hi = env.x_range
    assert (lo, hi) == (x_range or (1.0, 20_000.0))
    for field in ("loss", "lr"):
        points = _winning_points(store, "r1", field, x_range=(lo, hi))
        segs = env.series[field]
        assert [s.attempt for s in segs] == sorted({a for _x, _y, a in points})
        width = (hi - lo) / buckets
        for seg in segs:
            mine = [(x, y) for x, y, a in points if a == seg.attempt]
            xs = [x for x, _y in mine]
            assert sum(seg.n) >= len(mine)  # every winning point is in some bucket...
            assert min(seg.y_min) == min(y for _x, y in mine) and max(seg.y_max) == max(y for _x, y in mine)
            for x0, x1, y0, y1 in zip(seg.x_first, seg.x_last, seg.y_min, seg.y_max, strict=True):
                inside = [y for _x, y in mine[bisect.bisect_left(xs, x0):bisect.bisect_right(xs, x1)]]
                assert inside and (y0, y1) == (min(inside), max(inside))  # ...and each bucket is its points'
                assert x1 - x0 < 2 * width + 1
        assert len(segs[0]) <= buckets
    assert max(max(s.y_max) for s in env.series["loss"]) < 100  # attempt 0's redone steps are never drawn


def test_envelope_refines_on_zoom_down_to_the_points_themselves(resumed):
    store = resumed
    coarse = store.metric_envelope("r1", ("loss",), buckets=200)
    assert not coarse.exact and max(max(s.n) for s in coarse.series["loss"]) >= 90
    mid = store.metric_envelope("r1", ("loss",), x_range=(6000, 6400), buckets=200)
    assert max(max(s.n) for s in mid.series["loss"]) <= 3
    xs, ys = coarse.series["loss"][-1].polyline()
    seg = coarse.series["loss"][-1]
    assert len(xs) == len(ys) == 2 * len(seg) and list(ys[:2]) == [seg.y_min[0], seg.y_max[0]]
    fine = store.metric_envelope("r1", ("loss",), x_range=(5990, 6150), buckets=200)
    assert fine.exact
    xs, ys = fine.series["loss"][-1].polyline()
    assert list(xs) == list(fine.series["loss"][-1].x_first) and list(ys) == list(fine.series["loss"][-1].y_min)
    drawn = sorted((x, y, s.attempt) for s in fine.series["loss"] for x, y in zip(s.x_first, s.y_min, strict=True))
    assert drawn == _winning_points(store, "r1", "loss", x_range=(5990, 6150))


def test_envelope_reads_as_many_rows_for_a_run_four_times_longer(tmp_path):
    costs = {}
    for n in (8192, 32_768):
        with Store(tmp_path / f"e{n}.db") as store:
            feed = Feeder(store, "r1")
            for lo in range(1, n + 1, 4096):
                feed(RunPaths.METRICS, [_metric(s, 0, loss=1.0 / s) for s in range(lo, lo + 4096)])
            env = store.metric_envelope("r1", buckets=100)
            assert env.points == n
            costs[n] = _vm_steps(store, lambda store=store: store.metric_envelope("r1", buckets=100))
    assert costs[32_768] <= costs[8192] * 1.5, costs


@pytest.mark.parametrize("x_axis", ["tokens", "samples", "wall_time"])
def test_envelope_over_counters_and_wall_time_bounds_the_points_in_range(store, x_axis):
    feed = Feeder(store, "r1")
    rng = random.Random(3)
    tokens, t = 0, 500.0
    records = []
    for s in range(1, 5001):
        tokens += rng.randint(1000, 5000)  # packing: tokens per step vary
        t += rng.uniform(0.5, 2.0) + (300.0 if s % 1000 == 0 else 0.0)  # evaluation pauses
        records.append(_metric(s, 0, loss=rng.uniform(1, 2), tokens=tokens, t=t))
    for lo in range(0, 5000, 700):
        feed(RunPaths.METRICS, records[lo:lo + 700])
    full = store.metric_envelope("r1", ("loss",), x_axis=x_axis, buckets=100)
    xs = [r[{"tokens": "tokens", "samples": "samples", "wall_time": "t"}[x_axis]] for r in records]
    t0 = records[0]["t"] if x_axis == "wall_time" else 0.0
    assert full.x_range == (xs[0] - t0, xs[-1] - t0)
    assert full.points == 5000 and sum(full.series["loss"][0].n) == 5000
    lo, hi = xs[1234] - t0, xs[3210] - t0
    env = store.metric_envelope("r1", ("loss",), x_axis=x_axis, x_range=(lo, hi), buckets=50)
    seg = env.series["loss"][0]
    points = _winning_points(store, "r1", "loss", x_axis, (lo, hi), t0=t0)
    assert sum(seg.n) == len(points) == 3210 - 1234 + 1
    assert (seg.x_first[0], seg.x_last[-1]) == (points[0][0], points[-1][0])
    assert (min(seg.y_min), max(seg.y_max)) == (min(p[1] for p in points), max(p[1] for p in points))


def test_envelope_of_an_empty_or_unknown_run_and_bad_arguments(store):
    Feeder(store, "empty")
    env = store.metric_envelope("empty")
    assert env.x_range is None and env.points == 0 and all(v == () for v in env.series.values())
    assert store.metric_envelope("nope").points == 0
    with pytest.raises(ValueError, match="x_axis"):
        store.metric_envelope("empty", x_axis="epochs")
    with pytest.raises(ValueError, match="field"):
        store.metric_envelope("empty", ("loss; DROP TABLE runs",))
    Feeder(store, "r1")(RunPaths.METRICS, [_metric(s) for s in range(1, 10)])
    with pytest.raises(ValueError, match="x_range"):
        store.metric_envelope("r1", x_range=(5, 1))
    assert TILE_SHIFTS[0] == 4  # the finest tile: 16 steps
