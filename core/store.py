"""The run store: one SQLite file holding runs, stream offsets, metrics, evals, events, logs and
contamination reports. Standard library only, but for numpy, imported by ingest (see _tiles_in_memory).

Durability: WAL journal with ``synchronous=NORMAL``. In WAL mode a commit is complete once its frames are
written to the -wal file (the OS page cache), so a writer killed with SIGKILL, at any moment, loses nothing
it committed and leaves no partial transaction; only an OS crash or power loss can drop the last
transactions (never corrupt the file). FULL would fsync on every commit, which costs a disk flush per
streamed batch for a guarantee against power loss that re-streaming from the run's files already gives.

Concurrency: a Store may be shared by threads (the GUI thread, streamer threads, Qt pool tasks) and the same
file by processes (the CLI). A thread takes a connection from a small pool on its first query and hands it
back when its thread state ends (a thread exits, a Qt pool task returns), so a thread keeps one connection for
as long as it lives and short-lived workers reuse the same few. Writes take the write lock up front (BEGIN
IMMEDIATE) so two writers queue on the busy timeout instead of failing on a lock upgrade, and readers never
block writers (WAL). A forked child opens fresh connections.

Scale: what is listed or drawn never walks every metric point. Ingest maintains, in the same transaction as
the records, a summary row per run (run_summaries), each attempt's step span (metric_attempts) and a pyramid of
min/max tiles per attempt (metric_tiles, 16 to 16,384 steps wide) from which metric_envelope() draws a curve
at screen resolution.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import json
import logging
import math
import operator
import os
import sqlite3
import threading
import time
from array import array
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from core.records import (
    FILE_KIND,
    METRIC_OPTIONAL,
    METRIC_REQUIRED,
    RANK_REQUIRED,
    RUN_STATUSES,
    TERMINAL_STATUSES,
    CheckedRecords,
    RunPaths,
    json_safe,
    validate_record,
)

log = logging.getLogger(__name__)

STATUSES = RUN_STATUSES
BUSY_TIMEOUT_S = 15.0
LOG_KEEP_BYTES = 8 << 20  # stdout kept per run; older chunks are dropped (the run dir keeps the whole file)
POOL_IDLE_MAX = 4  # idle connections kept for the next thread; more are closed when their thread ends

_METRIC_COLUMNS = METRIC_REQUIRED  # t, attempt, step, epoch, samples, tokens, loss, lr, grad_norm, tokens_per_s
# Per-sample result columns (remote/job/evaluate.py write_outputs); other keys of a row go to `extra`.
_SAMPLE_COLUMNS = ("task_id", "sample", "passed", "subset", "completion", "error", "stderr_tail", "seconds")
_SAMPLE_KNOWN = frozenset(_SAMPLE_COLUMNS) | {"benchmark", "step"}
_OPTIONAL_COLUMNS = METRIC_OPTIONAL  # gpu_mem_gb, gpu_mem_reserved_gb, step_time_s: columns since v5
_METRIC_ALL = (*_METRIC_COLUMNS, *_OPTIONAL_COLUMNS)
_KNOWN_METRIC_KEYS = frozenset(_METRIC_ALL)

# Metric tiles: level k holds, per attempt, the x extents and the min/max of each tiled field over
# 2**TILE_SHIFTS[k] steps.
TILE_SHIFTS = (4, 6, 8, 10, 12, 14)  # 16, 64, ..., 16384 steps: a chart reads 1-4 tiles per pixel column
TILED_FIELDS = ("loss", "lr", "grad_norm", "tokens_per_s")
X_COLUMNS = {"step": "step", "tokens": "tokens", "samples": "samples", "wall_time": "t"}
_EVAL_COLUMNS = ("t", "attempt", "step", "checkpoint", "benchmark", "subset", "n_tasks", "samples_per_task",
                 "temperature")
_RANK_COLUMNS = RANK_REQUIRED  # t, attempt, rank, local_rank, world_size, host, pid, state, started_t, step


class StoreError(Exception):
    """A problem with the run store the user has to act on."""


class StoreVersionError(StoreError):
    """The store was written by a newer TuneDeck."""


class RunExistsError(StoreError):
    pass


class UnknownRunError(StoreError, KeyError):
    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class StreamConflictError(StoreError):
    """ingest() was told where the stream should stand and it stands elsewhere (another streamer moved it)."""


# ---------------------------------------------------------------------------------------------- schema

_V1 = """
CREATE TABLE runs (
    run_id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    cluster TEXT,
    backend TEXT,
    run_dir TEXT,
    job_id TEXT,
    status TEXT NOT NULL DEFAULT 'created',
    status_reason TEXT,
    config_yaml TEXT,
    config_json TEXT,
    preset TEXT
);
CREATE TABLE stream_offsets (
    run_id TEXT NOT NULL REFERENCES runs(run_id) ON DELETE CASCADE,
    file_name TEXT NOT NULL,
    "offset" INTEGER NOT NULL DEFAULT 0,
    line_no INTEGER NOT NULL DEFAULT 0,
    corrupt_count INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (run_id, file_name)
);
CREATE TABLE metrics (
    run_id TEXT NOT NULL REFERENCES runs(run_id) ON DELETE CASCADE,
    attempt INTEGER NOT NULL,
    step INTEGER NOT NULL,
    t REAL,
    epoch REAL,
    samples INTEGER,
    tokens INTEGER,
    loss REAL,
    lr REAL,
    grad_norm REAL,
    tokens_per_s REAL,
    extra TEXT,
    PRIMARY KEY (run_id, attempt, step)
);
CREATE TABLE evals (
    id INTEGER PRIMARY KEY,
    run_id TEXT NOT NULL REFERENCES runs(run_id) ON DELETE CASCADE,
    attempt INTEGER NOT NULL,
    step INTEGER NOT NULL,
    checkpoint TEXT NOT NULL,
    benchmark TEXT NOT NULL,
    subset TEXT NOT NULL,
    n_tasks INTEGER,
    samples_per_task INTEGER,
    temperature REAL,
    pass_at TEXT NOT NULL,
    t REAL,
    UNIQUE (run_id, step, checkpoint, benchmark, subset, attempt)
);
CREATE TABLE events (
    seq INTEGER PRIMARY KEY,
    run_id TEXT NOT NULL REFERENCES runs(run_id) ON DELETE CASCADE,
    t REAL NOT NULL,
    attempt INTEGER NOT NULL,
    event TEXT NOT NULL,
    detail TEXT NOT NULL,
    UNIQUE (run_id, attempt, t, event)
);
"""

# v2: stdout logs and contamination reports; run tags, notes and start/finish times; duplicate counts.
_V2 = """
ALTER TABLE runs ADD COLUMN started_at REAL;
ALTER TABLE runs ADD COLUMN finished_at REAL;
ALTER TABLE runs ADD COLUMN tags TEXT NOT NULL DEFAULT '[]';
ALTER TABLE runs ADD COLUMN notes TEXT NOT NULL DEFAULT '';
ALTER TABLE stream_offsets ADD COLUMN duplicate_count INTEGER NOT NULL DEFAULT 0;
CREATE INDEX runs_created ON runs(created_at);
CREATE INDEX events_run ON events(run_id, seq);
CREATE TABLE logs (
    id INTEGER PRIMARY KEY,
    run_id TEXT NOT NULL REFERENCES runs(run_id) ON DELETE CASCADE,
    "offset" INTEGER NOT NULL,
    text TEXT NOT NULL
);
CREATE INDEX logs_run ON logs(run_id, id);
CREATE TABLE contamination_reports (
    id INTEGER PRIMARY KEY,
    created_at REAL NOT NULL,
    path TEXT,
    method TEXT,
    summary TEXT NOT NULL,
    report TEXT NOT NULL,
    run_id TEXT REFERENCES runs(run_id) ON DELETE SET NULL
);
"""

# v3: archived runs (hidden from listings by default), and the per-sample results of every evaluation
# (samples/step-N-BENCH.jsonl of the run directory), which paired comparisons and pass@k intervals need.
_V3 = """
ALTER TABLE runs ADD COLUMN archived INTEGER NOT NULL DEFAULT 0;
CREATE TABLE eval_samples (
    run_id TEXT NOT NULL REFERENCES runs(run_id) ON DELETE CASCADE,
    step INTEGER NOT NULL,
    benchmark TEXT NOT NULL,
    task_id TEXT NOT NULL,
    sample INTEGER NOT NULL,
    passed INTEGER NOT NULL,
    subset TEXT NOT NULL,
    completion TEXT,
    error TEXT,
    stderr_tail TEXT,
    seconds REAL,
    extra TEXT,
    PRIMARY KEY (run_id, step, benchmark, task_id, sample)
);
"""

# v4: each training process's latest heartbeat/host record (ranks/rank-N.json of the run), one row per rank.
_V4 = """
CREATE TABLE ranks (
    run_id TEXT NOT NULL REFERENCES runs(run_id) ON DELETE CASCADE,
    rank INTEGER NOT NULL,
    attempt INTEGER NOT NULL,
    local_rank INTEGER NOT NULL,
    world_size INTEGER NOT NULL,
    host TEXT NOT NULL,
    pid INTEGER NOT NULL,
    state TEXT NOT NULL,
    step INTEGER,
    started_t REAL NOT NULL,
    t REAL NOT NULL,
    error TEXT,
    stalled_s REAL,
    PRIMARY KEY (run_id, rank)
);
"""

# v5: what listing and drawing read instead of every metric point, kept up to date by ingest (see the module
# docstring); the trainer's optional metric fields as columns (no JSON to parse per point).
_V5_SQL = """
ALTER TABLE metrics ADD COLUMN gpu_mem_gb REAL;
ALTER TABLE metrics ADD COLUMN gpu_mem_reserved_gb REAL;
ALTER TABLE metrics ADD COLUMN step_time_s REAL;
CREATE TABLE run_summaries (
    run_id TEXT PRIMARY KEY REFERENCES runs(run_id) ON DELETE CASCADE,
    metric_points INTEGER NOT NULL DEFAULT 0,
    metrics_rowid INTEGER,
    eval_points INTEGER NOT NULL DEFAULT 0,
    attempts INTEGER NOT NULL DEFAULT 0,
    last_step INTEGER,
    last_attempt INTEGER,
    last_tokens INTEGER,
    loss_step INTEGER,
    last_loss REAL,
    first_t REAL,
    last_t REAL,
    best_pass_at_1 TEXT NOT NULL DEFAULT '{}',
    best_evals TEXT NOT NULL DEFAULT '[]',
    log_bytes INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE metric_attempts (
    run_id TEXT NOT NULL REFERENCES runs(run_id) ON DELETE CASCADE,
    attempt INTEGER NOT NULL,
    points INTEGER NOT NULL,
    min_step INTEGER NOT NULL,
    max_step INTEGER NOT NULL,
    max_loss_step INTEGER,
    first_t REAL,
    last_t REAL,
    PRIMARY KEY (run_id, attempt)
) WITHOUT ROWID;
CREATE TABLE metric_tiles (
    run_id TEXT NOT NULL REFERENCES runs(run_id) ON DELETE CASCADE,
    attempt INTEGER NOT NULL,
    level INTEGER NOT NULL,
    tile INTEGER NOT NULL,
    n INTEGER NOT NULL,
    step_lo INTEGER, step_hi INTEGER, t_lo REAL, t_hi REAL,
    tokens_lo INTEGER, tokens_hi INTEGER, samples_lo INTEGER, samples_hi INTEGER,
    loss_min REAL, loss_max REAL, lr_min REAL, lr_max REAL,
    grad_norm_min REAL, grad_norm_max REAL, tokens_per_s_min REAL, tokens_per_s_max REAL,
    PRIMARY KEY (run_id, attempt, level, tile)
) WITHOUT ROWID;
"""


def _v5(conn: sqlite3.Connection) -> None:
    for statement in _statements(_V5_SQL):
        conn.execute(statement)
    # The optional fields move out of the JSON column into theirs, so reading old runs parses no JSON either.
    optional = ", ".join(f"'$.{name}'" for name in METRIC_OPTIONAL)
    conn.execute(
        "UPDATE metrics SET " + ", ".join(f"{name} = json_extract(extra, '$.{name}')" for name in METRIC_OPTIONAL)
        + f", extra = NULLIF(json_remove(extra, {optional}), '{{}}') WHERE extra IS NOT NULL")
    runs = [r[0] for r in conn.execute("SELECT run_id FROM runs")]
    points = conn.execute("SELECT COUNT(*) FROM metrics").fetchone()[0]
    if points:
        log.info("upgrading the run store: summarising %d runs (%d metric points), once", len(runs), points)
    conn.execute(  # the newest metric row of each run, for polls (one pass over the table)
        "INSERT INTO run_summaries (run_id, metrics_rowid) SELECT run_id, MAX(rowid) FROM metrics GROUP BY run_id")
    conn.execute(
        "INSERT INTO metric_attempts (run_id, attempt, points, min_step, max_step, max_loss_step, first_t, last_t)"
        " SELECT run_id, attempt, COUNT(*), MIN(step), MAX(step), MAX(CASE WHEN loss IS NOT NULL THEN step END),"
        " MIN(t), MAX(t) FROM metrics GROUP BY run_id, attempt")
    for run_id in runs:
        conn.execute("INSERT OR IGNORE INTO run_summaries (run_id) VALUES (?)", (run_id,))
        conn.execute("UPDATE run_summaries SET log_bytes ="
                     " (SELECT COALESCE(SUM(LENGTH(CAST(text AS BLOB))), 0) FROM logs WHERE run_id = ?)"
                     " WHERE run_id = ?", (run_id, run_id))
        spans = conn.execute("SELECT attempt, min_step, max_step FROM metric_attempts WHERE run_id = ?",
                             (run_id,)).fetchall()
        for attempt, lo, hi in spans:
            _rebuild_tiles(conn, run_id, attempt, lo, hi)
        points = conn.execute("SELECT COALESCE(SUM(points), 0) FROM metric_attempts WHERE run_id = ?",
                              (run_id,)).fetchone()[0]
        evals = conn.execute("SELECT COUNT(*) FROM evals WHERE run_id = ?", (run_id,)).fetchone()[0]
        conn.execute("UPDATE run_summaries SET metric_points = ?, eval_points = ? WHERE run_id = ?",
                     (points, evals, run_id))
        _refresh_metric_summary(conn, run_id)
        _refresh_best_evals(conn, run_id)


Migration = str | Callable[[sqlite3.Connection], None]
# MIGRATIONS[i] takes a store from user_version i to i + 1. Append only; never edit a released entry.
MIGRATIONS: tuple[Migration, ...] = (_V1, _V2, _V3, _V4, _v5)
SCHEMA_VERSION = len(MIGRATIONS)


def _statements(script: str) -> Iterator[str]:
    """Split an SQL script into statements (executescript would COMMIT the migration's transaction)."""
    current = ""
    for line in script.splitlines(keepends=True):
        current += line
        if sqlite3.complete_statement(current):
            yield current.strip()
            current = ""
    if current.strip():
        raise ValueError(f"incomplete SQL statement in migration: {current.strip()[:80]!r}")


# ---------------------------------------------------------------------------------------------- rows


@dataclass(frozen=True)
class RunRow:
    run_id: str
    name: str
    created_at: float
    updated_at: float
    cluster: str | None
    backend: str | None
    run_dir: str | None
    job_id: str | None
    status: str
    status_reason: str | None
    config_yaml: str | None
    config_json: str | None  # the resolved config as JSON text; `config()` parses it
    preset: str | None
    started_at: float | None
    finished_at: float | None
    tags: tuple[str, ...]
    notes: str
    archived: bool = False  # hidden from run listings unless asked for (`runs --all`, "Show archived")

    def config(self) -> dict[str, Any]:
        return json.loads(self.config_json) if self.config_json else {}

    @property
    def is_terminal(self) -> bool:
        return self.status in TERMINAL_STATUSES


_RUN_FIELDS = tuple(f.name for f in fields(RunRow))
_UPDATABLE = frozenset(_RUN_FIELDS) - {"run_id", "created_at", "updated_at"}


@dataclass(frozen=True)
class IngestResult:
    inserted: int
    duplicates: int  # records already present (same run, attempt, step / eval key / event key): ignored


@dataclass(frozen=True)
class ContaminationReportRow:
    id: int
    created_at: float
    path: str | None
    method: str | None
    summary: dict[str, Any]
    run_id: str | None
    report: dict[str, Any] | None  # None in listings; the whole report from get_contamination_report


@dataclass(frozen=True)
class RunSummary:
    """A run's numbers as kept up to date by ingest: reading it costs one row, however long the run."""

    run_id: str
    steps: int | None  # the last step logged
    final_loss: float | None  # loss at the last step that has one (the latest attempt wins a redone step)
    tokens: int | None  # tokens seen at the last step
    first_t: float | None  # earliest and latest metric time over every attempt
    last_t: float | None
    metric_points: int  # metric records of every attempt
    eval_points: int
    attempts: int  # attempts that logged metrics
    best_pass_at_1: dict[str, dict[str, float]] = field(default_factory=dict)  # {benchmark: {subset: best}}
    log_bytes: int = 0  # stdout kept in the store
    # The eval record (as Store.evals gives it) holding each best pass@1 of best_pass_at_1: what an interval
    # needs (task and sample counts) without reading the run's evals.
    best_evals: tuple[dict[str, Any], ...] = ()

    @property
    def wall_time_s(self) -> float | None:
        return None if self.first_t is None or self.last_t is None or not self.metric_points \
            else self.last_t - self.first_t

    def as_dict(self) -> dict[str, Any]:
        """The dict Store.summary returns (the compare view's keys)."""
        return {"run_id": self.run_id, "steps": self.steps, "final_loss": self.final_loss, "tokens": self.tokens,
                "wall_time_s": self.wall_time_s, "metric_points": self.metric_points,
                "eval_points": self.eval_points, "attempts": self.attempts, "first_t": self.first_t,
                "last_t": self.last_t, "best_pass_at_1": self.best_pass_at_1, "best_evals": list(self.best_evals)}


_SUMMARY_COLUMNS = ("last_step", "last_loss", "last_tokens", "first_t", "last_t", "metric_points", "eval_points",
                    "attempts", "best_pass_at_1", "log_bytes", "best_evals")
_SUMMARY_SQL = f"SELECT {', '.join(_SUMMARY_COLUMNS)} FROM run_summaries"


def _run_summary(run_id: str, row: Sequence[Any] | None) -> RunSummary:
    if row is None or row[5] is None:  # no summary row (a LEFT JOIN's nulls): nothing ingested
        return RunSummary(run_id, None, None, None, None, None, 0, 0, 0, {}, 0)
    return RunSummary(run_id, row[0], row[1], row[2], row[3], row[4], row[5] or 0, row[6] or 0, row[7] or 0,
                      json.loads(row[8] or "{}"), row[9] or 0, tuple(json.loads(row[10] or "[]")))


@dataclass(frozen=True)
class EnvelopeSegment:
    """One attempt's curve at screen resolution: per x bucket where the field has values, the x span of the
    bucket's points and the field's min and max there. Arrays are array('d') (numpy wraps them without a copy:
    np.frombuffer(seg.y_min)). Draw a line through the (x_first, y_min), (x_last, y_max) pairs, or a band."""

    attempt: int
    x_first: array
    x_last: array
    y_min: array
    y_max: array
    n: array  # array('q'): metric rows in each bucket (1 everywhere: these are the points themselves)

    def __len__(self) -> int:
        return len(self.n)

    def polyline(self) -> tuple[array, array]:
        """(x, y) for one line through every bucket: its min at its first x, then its max at its last (as
        pyqtgraph's peak downsampling draws); a bucket holding one point is that point."""
        xs, ys = array("d"), array("d")
        for x0, x1, y0, y1, n in zip(self.x_first, self.x_last, self.y_min, self.y_max, self.n, strict=True):
            if n == 1:
                xs.append(x0)
                ys.append(y0)
            else:
                xs.extend((x0, x1))
                ys.extend((y0, y1))
        return xs, ys


@dataclass(frozen=True)
class MetricEnvelope:
    """metric_envelope()'s answer for one run: per field, its segments (one per attempt, oldest first)."""

    run_id: str
    x_axis: str
    x_range: tuple[float, float] | None  # the x range covered (None: the run has no metric points)
    buckets: int
    series: dict[str, tuple[EnvelopeSegment, ...]]
    points: int  # points read or summarised, over every field's winning rows in range
    exact: bool  # no bucket holds more than one point: these are the raw points (zoomed in far enough)


def _null_safe(fn: str, a: str, b: str) -> str:
    """SQL for min/max of two values where either may be NULL (SQLite's two-argument min() returns NULL then)."""
    return f"CASE WHEN {a} IS NULL THEN {b} WHEN {b} IS NULL THEN {a} ELSE {fn}({a}, {b}) END"


_UPSERT_ATTEMPT_SQL = (
    "INSERT INTO metric_attempts (run_id, attempt, points, min_step, max_step, max_loss_step, first_t, last_t)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (run_id, attempt) DO UPDATE SET points = points + excluded.points,"
    " min_step = MIN(min_step, excluded.min_step), max_step = MAX(max_step, excluded.max_step),"
    f" max_loss_step = {_null_safe('MAX', 'max_loss_step', 'excluded.max_loss_step')},"
    f" first_t = {_null_safe('MIN', 'first_t', 'excluded.first_t')},"
    f" last_t = {_null_safe('MAX', 'last_t', 'excluded.last_t')}")


def _run_row(row: sqlite3.Row) -> RunRow:
    values = {name: row[name] for name in _RUN_FIELDS}
    values["tags"] = tuple(json.loads(values["tags"] or "[]"))
    values["notes"] = values["notes"] or ""
    values["archived"] = bool(values["archived"])
    return RunRow(**values)


def _json(value: Any) -> str:
    return json.dumps(json_safe(value), separators=(",", ":"), allow_nan=False, ensure_ascii=False)


# ---------------------------------------------------------------------------------------------- derived data
# Functions of an open connection inside a write transaction: ingest and the v5 migration share them.


_TILE_X = ("step", "t", "tokens", "samples")
# Only min and max: each aggregate costs ~80 ns per ingested row, and an envelope needs no more.
_TILE_VALUE_COLUMNS = (*(f"{x}_{end}" for x in _TILE_X for end in ("lo", "hi")),
                       *(f"{f}_{agg}" for f in TILED_FIELDS for agg in ("min", "max")))
_TILE_FROM_ROWS = ", ".join(f"{agg}({c})" for c in (*_TILE_X, *TILED_FIELDS) for agg in ("MIN", "MAX"))
_TILE_FROM_TILES = ", ".join(
    [f"{agg}({x}_{end})" for x in _TILE_X for agg, end in (("MIN", "lo"), ("MAX", "hi"))]
    + [f"{agg}({f}_{end})" for f in TILED_FIELDS for agg, end in (("MIN", "min"), ("MAX", "max"))])
_TILE_INSERT = (f"INSERT OR REPLACE INTO metric_tiles (run_id, attempt, level, tile, n, {', '.join(_TILE_VALUE_COLUMNS)})")


def _rebuild_tiles(conn: sqlite3.Connection, run_id: str, attempt: int, lo: int, hi: int) -> None:
    """Recompute every tile of one attempt that covers steps lo..hi: level 0 from the stored rows (so rows a
    batch repeated count once, with their stored values), each coarser level from the level below."""
    shift = TILE_SHIFTS[0]
    first, last = lo >> shift, hi >> shift
    conn.execute(
        f"{_TILE_INSERT} SELECT run_id, attempt, 0, step >> {shift}, COUNT(*), {_TILE_FROM_ROWS} FROM metrics"
        f" WHERE run_id = ? AND attempt = ? AND step BETWEEN ? AND ? GROUP BY step >> {shift}",
        (run_id, attempt, first << shift, ((last + 1) << shift) - 1))
    _rebuild_coarse_tiles(conn, run_id, attempt, first, last)


def _rebuild_coarse_tiles(conn: sqlite3.Connection, run_id: str, attempt: int, first: int, last: int) -> None:
    """Recompute the tiles of levels 1 and up over level-0 tiles first..last, each from the level below."""
    for level in range(1, len(TILE_SHIFTS)):
        factor = TILE_SHIFTS[level] - TILE_SHIFTS[level - 1]
        first, last = first >> factor, last >> factor
        conn.execute(
            f"{_TILE_INSERT} SELECT run_id, attempt, ?, tile >> {factor}, SUM(n), {_TILE_FROM_TILES}"
            " FROM metric_tiles WHERE run_id = ? AND attempt = ? AND level = ? AND tile BETWEEN ? AND ?"
            f" GROUP BY tile >> {factor}",
            (level, run_id, attempt, level - 1, first << factor, ((last + 1) << factor) - 1))


# Level-0 tiles of rows just inserted, merged into what the tile already held (rows of an earlier batch). Exact
# because INSERT OR IGNORE never replaces a row: the tile's rows are the old ones plus these.
_TILE_MERGE_SQL = (
    f"INSERT INTO metric_tiles (run_id, attempt, level, tile, n, {', '.join(_TILE_VALUE_COLUMNS)})"
    f" VALUES (?, ?, 0, ?, ?, {', '.join('?' * len(_TILE_VALUE_COLUMNS))})"
    " ON CONFLICT (run_id, attempt, level, tile) DO UPDATE SET n = n + excluded.n, "
    + ", ".join(f"{c} = {_null_safe('MIN' if c.endswith(('_lo', '_min')) else 'MAX', c, 'excluded.' + c)}"
                for c in _TILE_VALUE_COLUMNS))
_TILE_SOURCE_COLUMNS = (*_TILE_X, *TILED_FIELDS)  # the metric column behind each (min, max) pair of a tile
_INT_METRIC_COLUMNS = ("attempt", "step", "samples", "tokens")  # INTEGER columns: exact in a float64 below 2**53


@dataclass(frozen=True)
class _MetricPlan:
    """How records with one set of fields are inserted: only the columns they fill are named, so no NULL is
    bound for an absent optional field (binding None costs Python's sqlite3 an adapter lookup: ~0.1 us each,
    a third of the insert for the trainer's records). Fields outside the known columns go to `extra` as JSON."""

    columns: tuple[str, ...]  # the known metric columns these records fill, in _METRIC_ALL order
    extra: bool  # the records carry other fields too: a row ends with their JSON

    def sql(self, run_id: str) -> str:
        # The run id is a literal (quotes doubled: SQLite's only escape), so each row binds only its own values
        # and the same tuples feed numpy for the tiles.
        if "\x00" in run_id:
            raise ValueError(f"run id {run_id!r} holds a NUL character")
        names = (*self.columns, "extra") if self.extra else self.columns
        literal = "'" + run_id.replace("'", "''") + "'"
        return (f"INSERT OR IGNORE INTO metrics (run_id, {', '.join(names)})"
                f" VALUES ({literal}, {', '.join('?' * len(names))})")

    @functools.cached_property
    def getter(self) -> Callable[[dict[str, Any]], tuple[Any, ...]]:
        return operator.itemgetter(*self.columns)

    @functools.cached_property
    def index(self) -> dict[str, int]:
        return {c: i for i, c in enumerate(self.columns)}

    @property
    def attempt(self) -> int:
        return self.index["attempt"]

    def row(self, rec: dict[str, Any]) -> tuple[Any, ...]:
        """One record's values (the general path; _metric_segments maps getter over a batch when it can)."""
        if not self.extra:
            return self.getter(rec)
        extra = {k: v for k, v in rec.items() if k not in _KNOWN_METRIC_KEYS}
        return (*self.getter(rec), _json(extra))


@functools.lru_cache(maxsize=64)
def _metric_plan(keys: frozenset[str]) -> _MetricPlan:
    return _MetricPlan(tuple(c for c in _METRIC_ALL if c in keys), not keys <= _KNOWN_METRIC_KEYS)


def _metric_segments(records: Sequence[dict[str, Any]]) -> list[tuple[_MetricPlan, list[tuple[Any, ...]]]]:
    """The records as consecutive segments of rows with the same fields, in file order: usually one segment
    (a writer logs the same fields every step), whose rows itemgetter builds in one C-level pass."""
    if not records:
        return []
    first = records[0]
    plan = _metric_plan(frozenset(first))
    if not plan.extra:
        width = len(first)
        # Same length and every column present: the same keys as the first record (a record lacking one of
        # them raises KeyError; one with another key instead of one of them too).
        if set(map(len, records)) == {width}:
            try:
                return [(plan, list(map(plan.getter, records)))]
            except KeyError:
                pass
    segments: list[tuple[_MetricPlan, list[tuple[Any, ...]]]] = []
    for keys, group in itertools.groupby(records, key=frozenset):
        plan = _metric_plan(keys)
        segments.append((plan, [plan.row(rec) for rec in group]))
    return segments


def _derive_attempt(conn: sqlite3.Connection, run_id: str, attempt: int, plan: _MetricPlan,
                    rows: list[tuple[Any, ...]], inserted: int) -> None:
    """Update the attempt's span and tiles for rows of one attempt just offered to INSERT OR IGNORE, of which
    `inserted` were new (the others repeat stored rows). New rows in ascending step order, as a live run writes
    them, have their level-0 tiles computed here with numpy and merged into the stored ones (~0.4 us a row;
    SQLite's GROUP BY over the rows just written costs 1.3 us); anything else (repeats, steps out of order)
    re-reads the rows in SQL."""
    all_new = inserted == len(rows)
    if all_new and not plan.extra:
        tiles = _tiles_in_memory(plan, rows)
        if tiles is not None:
            (lo, hi, loss_hi, first_t, last_t), level0 = tiles
            conn.execute(_UPSERT_ATTEMPT_SQL, (run_id, attempt, len(rows), lo, hi, loss_hi, first_t, last_t))
            conn.executemany(_TILE_MERGE_SQL, ((run_id, attempt, *tile) for tile in level0))
            shift = TILE_SHIFTS[0]
            _rebuild_coarse_tiles(conn, run_id, attempt, lo >> shift, hi >> shift)
            return
    step, loss, t = plan.index["step"], plan.index.get("loss"), plan.index.get("t")
    steps = [r[step] for r in rows]
    lo, hi = min(steps), max(steps)
    # an upper bound (a repeated row's loss may differ from the stored one): the summary walks down from it
    loss_hi = None if loss is None else max((r[step] for r in rows if r[loss] is not None), default=None)
    if all_new:
        times = [] if t is None else [r[t] for r in rows if r[t] is not None]
        first_t, last_t = (min(times), max(times)) if times else (None, None)
    else:  # some rows were repeats: the stored ones count, with their stored times
        first_t, last_t = conn.execute(
            "SELECT MIN(t), MAX(t) FROM metrics WHERE run_id = ? AND attempt = ? AND step BETWEEN ? AND ?",
            (run_id, attempt, lo, hi)).fetchone()
    conn.execute(_UPSERT_ATTEMPT_SQL, (run_id, attempt, inserted, lo, hi, loss_hi, first_t, last_t))
    _rebuild_tiles(conn, run_id, attempt, lo, hi)


def _tiles_in_memory(plan: _MetricPlan, rows: list[tuple[Any, ...]]) -> tuple[tuple[Any, ...], list[tuple[Any, ...]]] | None:
    """((lo, hi, loss_hi, first_t, last_t), level-0 tile rows (tile, n, *_TILE_VALUE_COLUMNS)) of rows of one
    attempt, or None where numpy could not give SQLite's exact answer (steps not ascending, an integer beyond
    float64's exact range, a value that is not a number)."""
    import numpy as np  # only ingest needs it: listing runs and the CLI start without it

    try:
        values = np.array(rows, dtype=np.float64)  # None -> nan, which SQLite stores as NULL
    except (TypeError, ValueError, OverflowError):
        return None
    if values.ndim != 2:
        return None
    index = plan.index
    integers = values[:, [index[c] for c in _INT_METRIC_COLUMNS]]  # samples and tokens may be null (nan)
    if np.isnan(values[:, index["step"]]).any() or np.any(np.abs(np.nan_to_num(integers)) >= 2.0 ** 53):
        return None
    steps = values[:, index["step"]].astype(np.int64)
    if len(steps) > 1 and not bool(np.all(steps[1:] > steps[:-1])):
        return None
    keys = steps >> TILE_SHIFTS[0]
    starts = np.flatnonzero(np.concatenate(([True], keys[1:] != keys[:-1])))
    source = values[:, [index[c] for c in _TILE_SOURCE_COLUMNS]]
    out = np.empty((len(starts), 2 * source.shape[1]))
    out[:, 0::2] = np.fmin.reduceat(source, starts, axis=0)  # fmin/fmax skip nan: SQL's MIN/MAX skip NULL
    out[:, 1::2] = np.fmax.reduceat(source, starts, axis=0)
    counts = np.diff(np.append(starts, len(steps)))
    level0 = list(zip(keys[starts].tolist(), counts.tolist(), *out.T.tolist(), strict=True))
    loss = values[:, index["loss"]]
    with_loss = np.flatnonzero(~np.isnan(loss))
    t = values[:, index["t"]]
    t = t[~np.isnan(t)]
    span = (int(steps[0]), int(steps[-1]), int(steps[with_loss[-1]]) if len(with_loss) else None,
            float(t.min()) if len(t) else None, float(t.max()) if len(t) else None)
    return span, level0


def _later_attempts_sql(later: Sequence[int]) -> str:
    """`AND NOT EXISTS ...`: the row is not superseded by a later attempt that logged the same step. The attempts
    are listed, so each check is one primary-key lookup per later attempt."""
    if not later:
        return ""
    listed = ", ".join(str(int(a)) for a in later)
    return (" AND NOT EXISTS (SELECT 1 FROM metrics n WHERE n.run_id = m.run_id AND n.attempt IN"
            f" ({listed}) AND n.step = m.step)")


def _refresh_metric_summary(conn: sqlite3.Connection, run_id: str) -> None:
    """Last step, its tokens, the final loss, first/last time and attempts, from metric_attempts and a few
    index lookups per attempt (never a walk over the run's points)."""
    spans = conn.execute("SELECT attempt, min_step, max_step, first_t, last_t, max_loss_step FROM metric_attempts"
                         " WHERE run_id = ? ORDER BY attempt", (run_id,)).fetchall()
    if not spans:
        conn.execute("UPDATE run_summaries SET attempts = 0, last_step = NULL, last_attempt = NULL,"
                     " last_tokens = NULL, loss_step = NULL, last_loss = NULL, first_t = NULL, last_t = NULL"
                     " WHERE run_id = ?", (run_id,))
        return
    last_step = max(span[2] for span in spans)
    last_attempt = max(span[0] for span in spans if span[2] == last_step)  # the latest attempt at that step
    tokens = conn.execute("SELECT tokens FROM metrics WHERE run_id = ? AND attempt = ? AND step = ?",
                          (run_id, last_attempt, last_step)).fetchone()[0]
    # The final loss: the largest step whose latest row has a loss. Per attempt, newest first, walk back from the
    # last step it logged a loss at, over steps past the best found so far: usually the first row answers.
    best_step, best_loss = None, None
    attempts = [span[0] for span in spans]
    for i in range(len(spans) - 1, -1, -1):
        attempt, loss_hi = spans[i][0], spans[i][5]
        if loss_hi is None or (best_step is not None and loss_hi <= best_step):
            continue
        row = conn.execute(
            "SELECT step, loss FROM metrics m WHERE run_id = ? AND attempt = ? AND step > ? AND step <= ?"
            f" AND loss IS NOT NULL{_later_attempts_sql(attempts[i + 1:])} ORDER BY step DESC LIMIT 1",
            (run_id, attempt, -(1 << 62) if best_step is None else best_step, loss_hi)).fetchone()
        if row is not None:
            best_step, best_loss = row
    first_t = min((span[3] for span in spans if span[3] is not None), default=None)
    last_t = max((span[4] for span in spans if span[4] is not None), default=None)
    conn.execute("UPDATE run_summaries SET attempts = ?, last_step = ?, last_attempt = ?, last_tokens = ?,"
                 " loss_step = ?, last_loss = ?, first_t = ?, last_t = ? WHERE run_id = ?",
                 (len(spans), last_step, last_attempt, tokens, best_step, best_loss, first_t, last_t, run_id))


def _eval_dicts(conn: sqlite3.Connection, run_id: str) -> list[dict[str, Any]]:
    rows = conn.execute(f"SELECT {', '.join(_EVAL_COLUMNS)}, pass_at FROM evals WHERE run_id = ?"
                        " ORDER BY step, attempt, benchmark, subset, checkpoint", (run_id,)).fetchall()
    out = []
    for r in rows:
        rec = dict(zip(_EVAL_COLUMNS, r[:-1], strict=True))
        rec.update(json.loads(r[-1]))
        out.append(rec)
    return out


def _refresh_best_evals(conn: sqlite3.Connection, run_id: str) -> None:
    """Best pass@1 per benchmark and subset over the run's checkpoints (a checkpoint evaluated again by a later
    attempt counts with its latest result), and the records holding them; from the run's eval records (a few
    per checkpoint)."""
    latest: dict[tuple[int, str, str], dict[str, Any]] = {}
    for rec in _eval_dicts(conn, run_id):  # ordered by step, then attempt: a later attempt replaces
        latest[(rec["step"], rec["benchmark"], rec["subset"])] = rec
    best: dict[tuple[str, str], dict[str, Any]] = {}
    for (_step, bench, subset), rec in sorted(latest.items()):
        value = rec.get("pass@1")
        held = best.get((bench, subset))
        if value is not None and (held is None or value > held["pass@1"]):  # ties: the earliest checkpoint
            best[(bench, subset)] = rec
    values: dict[str, dict[str, float]] = {}
    for (bench, subset), rec in sorted(best.items()):
        values.setdefault(bench, {})[subset] = rec["pass@1"]
    conn.execute("UPDATE run_summaries SET best_pass_at_1 = ?, best_evals = ? WHERE run_id = ?",
                 (_json(values), _json([best[k] for k in sorted(best)]), run_id))


# ---------------------------------------------------------------------------------------------- connections


class _ConnectionPool:
    """The store's connections: one lent to each thread that queries, idle ones kept for the next thread."""

    def __init__(self, connect: Callable[[], sqlite3.Connection], idle_max: int):
        self._connect = connect
        self._idle_max = idle_max
        self._lock = threading.RLock()  # re-entrant: a lease may be handed back from a finaliser on this thread
        self._idle: list[sqlite3.Connection] = []
        self._open: set[sqlite3.Connection] = set()
        self._pid = os.getpid()
        self.closed = False

    def _forked(self) -> None:
        # A child must not use (or close: that would release the parent's locks) what it inherited.
        self._idle, self._open, self._pid = [], set(), os.getpid()

    def acquire(self) -> sqlite3.Connection:
        with self._lock:
            if self._pid != os.getpid():
                self._forked()
            if self._idle:
                return self._idle.pop()
        conn = self._connect()
        with self._lock:
            if self.closed:
                conn.close()
                raise StoreError("the run store is closed")
            self._open.add(conn)
        return conn

    def release(self, conn: sqlite3.Connection, pid: int) -> None:
        with self._lock:
            if pid != os.getpid() or self._pid != pid or conn not in self._open:
                return
            keep = not self.closed and len(self._idle) < self._idle_max
            if not keep:
                self._open.discard(conn)
        try:
            if conn.in_transaction:  # its thread ended inside a read snapshot
                conn.rollback()
        except sqlite3.Error:
            with self._lock:
                self._open.discard(conn)
            keep = False
        if keep:
            with self._lock:
                self._idle.append(conn)
        else:
            conn.close()

    @property
    def open_count(self) -> int:
        with self._lock:
            return len(self._open) if self._pid == os.getpid() else 0

    def close(self, current: sqlite3.Connection | None = None) -> None:
        """Close the idle connections and `current` (the calling thread's) now. One lent to another thread is
        closed when that thread hands it back: closing a connection under another thread's running query
        crashes Python's sqlite3 (a segfault, seen when a view's worker was still reading as the store closed),
        and a thread that asks again after this gets StoreError."""
        with self._lock:
            if self._pid != os.getpid():
                self._open, self._idle, self.closed = set(), [], True
                return
            now = list(self._idle)
            if current is not None and current in self._open:
                now.append(current)
            self._open.difference_update(now)
            self._idle, self.closed = [], True
        for conn in now:
            conn.close()


class _Lease:
    """A thread's hold on its connection, kept in the store's threading.local: when the thread state goes (a
    thread exits; a Qt pool task returns, since Python gives each task on a foreign thread a fresh state), the
    lease is dropped and hands the connection back to the pool."""

    __slots__ = ("conn", "pid", "pool")

    def __init__(self, conn: sqlite3.Connection, pool: _ConnectionPool):
        self.conn = conn
        self.pid = os.getpid()
        self.pool = pool

    def __del__(self) -> None:
        try:
            self.pool.release(self.conn, self.pid)
        except Exception:  # a finaliser must not raise; the pool's close() still closes the connection
            log.debug("handing a store connection back failed", exc_info=True)


# ---------------------------------------------------------------------------------------------- store


class Store:
    """The run store. Thread-safe: each thread uses its own connection for as long as the thread lives, taken
    from and handed back to a small pool (see the module docstring)."""

    def __init__(self, path: str | os.PathLike[str] | None = None, *, log_keep_bytes: int = LOG_KEEP_BYTES):
        if path is None:
            from core.paths import store_path  # platformdirs is only needed for the default location

            path = store_path()
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.log_keep_bytes = log_keep_bytes
        self._local = threading.local()
        self._pool = _ConnectionPool(self._connect, POOL_IDLE_MAX)
        self._closed = False
        try:
            self._migrate()
        except BaseException:
            self.close()
            raise

    # ------------------------------------------------------------------ connections and transactions

    def _conn(self) -> sqlite3.Connection:
        if self._closed:
            raise StoreError(f"store {self.path} is closed")
        lease = getattr(self._local, "lease", None)
        if lease is None or lease.pid != os.getpid():
            lease = _Lease(self._pool.acquire(), self._pool)
            self._local.lease = lease
        return lease.conn

    @property
    def open_connections(self) -> int:
        """Connections this process holds open on the store (lent to threads or idle in the pool)."""
        return self._pool.open_count

    def _connect(self) -> sqlite3.Connection:
        try:
            # isolation_level=None: we issue BEGIN/COMMIT ourselves. check_same_thread=False so a connection can
            # serve the next thread after its first thread ended, and close() can close them all; a connection
            # is only ever used by the one thread it is lent to.
            conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None,
                                   check_same_thread=False)
            conn.row_factory = sqlite3.Row
            mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"cannot open the run store {self.path}: {exc}") from exc
        if mode.lower() != "wal":
            raise StoreError(f"the run store {self.path} cannot use WAL mode (journal_mode={mode})")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA foreign_keys=ON")
        return conn

    @contextlib.contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """A write transaction: everything inside commits together or not at all."""
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:  # some errors (disk full, ...) have already rolled it back
                conn.execute("ROLLBACK")
            raise

    @contextlib.contextmanager
    def snapshot(self) -> Iterator[sqlite3.Connection]:
        """A read transaction: the queries inside see one consistent snapshot (nested: the outer one's)."""
        conn = self._conn()
        if conn.in_transaction:
            yield conn
            return
        conn.execute("BEGIN")
        try:
            yield conn
        finally:
            conn.execute("COMMIT")

    def close(self) -> None:
        """Close the store: this thread's and the idle connections now, those other threads hold as each thread
        hands its connection back (when it ends); any further query raises StoreError."""
        self._closed = True
        lease = getattr(self._local, "lease", None)
        self._pool.close(lease.conn if lease is not None and lease.pid == os.getpid() else None)
        self._local.lease = None

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ schema

    def _migrate(self) -> None:
        with self._write() as conn:  # the write lock: two processes opening an old store migrate it once
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise StoreVersionError(
                    f"the run store {self.path} has schema version {version}, newer than this TuneDeck "
                    f"understands ({SCHEMA_VERSION}); upgrade TuneDeck or point TUNEDECK_STORE at another file")
            for target in range(version, SCHEMA_VERSION):
                migration = MIGRATIONS[target]
                if isinstance(migration, str):
                    for statement in _statements(migration):
                        conn.execute(statement)
                else:
                    migration(conn)
            if version != SCHEMA_VERSION:
                conn.execute(f"PRAGMA user_version={SCHEMA_VERSION:d}")

    def schema_version(self) -> int:
        return self._conn().execute("PRAGMA user_version").fetchone()[0]

    def integrity_check(self) -> str:
        """'ok' when SQLite finds the file sound, else its first complaint."""
        return self._conn().execute("PRAGMA integrity_check").fetchone()[0]

    # ------------------------------------------------------------------ runs

    def create_run(self, run_id: str, name: str, config_yaml: str | None, config_json: dict[str, Any] | str | None,
                   cluster: str | None, backend: str | None, run_dir: str | None, preset: str | None = None,
                   status: str = "created") -> RunRow:
        """Record a new run (RunExistsError when the id is taken). `config_json` is the resolved config, as a
        dict or JSON text; `cluster` is the profile name, `run_dir` the run directory on the target."""
        _check_status(status)
        if isinstance(config_json, dict):
            config_json = _json(config_json)
        now = time.time()
        try:
            with self._write() as conn:
                conn.execute(
                    "INSERT INTO runs (run_id, name, created_at, updated_at, cluster, backend, run_dir, status,"
                    " config_yaml, config_json, preset) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (run_id, name, now, now, cluster, backend, run_dir, status, config_yaml, config_json, preset))
                conn.execute("INSERT INTO run_summaries (run_id) VALUES (?)", (run_id,))
        except sqlite3.IntegrityError as exc:
            raise RunExistsError(f"a run with id {run_id!r} already exists") from exc
        row = self.get_run(run_id)
        assert row is not None
        return row

    def update_run(self, run_id: str, **changes: Any) -> RunRow:
        """Change fields of a run (status, status_reason, job_id, started_at, finished_at, tags, notes, ...)."""
        unknown = set(changes) - _UPDATABLE
        if unknown:
            raise ValueError(f"cannot update run field(s) {sorted(unknown)}; updatable: {sorted(_UPDATABLE)}")
        if "status" in changes:
            _check_status(changes["status"])
        if "name" in changes and not changes["name"]:
            raise ValueError("a run's name cannot be empty")
        values = dict(changes)
        if "tags" in values:
            values["tags"] = _json(list(values["tags"] or ()))
        if "notes" in values:
            values["notes"] = values["notes"] or ""
        if "archived" in values:
            values["archived"] = int(bool(values["archived"]))
        if isinstance(values.get("config_json"), dict):
            values["config_json"] = _json(values["config_json"])
        if "job_id" in values and values["job_id"] is not None:
            values["job_id"] = str(values["job_id"])
        values["updated_at"] = time.time()
        assignments = ", ".join(f"{name} = ?" for name in values)
        with self._write() as conn:
            cur = conn.execute(f"UPDATE runs SET {assignments} WHERE run_id = ?", (*values.values(), run_id))
            if cur.rowcount == 0:
                raise UnknownRunError(f"no run with id {run_id!r}")
        row = self.get_run(run_id)
        assert row is not None
        return row

    def get_run(self, run_id: str) -> RunRow | None:
        row = self._conn().execute("SELECT * FROM runs WHERE run_id = ?", (run_id,)).fetchone()
        return _run_row(row) if row is not None else None

    def list_runs(self) -> list[RunRow]:
        """Every run, newest first."""
        rows = self._conn().execute("SELECT * FROM runs ORDER BY created_at DESC, rowid DESC").fetchall()
        return [_run_row(r) for r in rows]

    def list_run_summaries(self) -> list[tuple[RunRow, RunSummary]]:
        """Every run with its summary, newest first: one row read per run, however many points each holds."""
        rows = self._conn().execute(
            f"SELECT r.*, {', '.join('s.' + c for c in _SUMMARY_COLUMNS)} FROM runs r"
            " LEFT JOIN run_summaries s ON s.run_id = r.run_id ORDER BY r.created_at DESC, r.rowid DESC").fetchall()
        n = len(_SUMMARY_COLUMNS)
        return [(_run_row(r), _run_summary(r["run_id"], tuple(r)[-n:])) for r in rows]

    def delete_run(self, run_id: str) -> bool:
        """Remove a run and everything recorded for it (its contamination reports stay, detached)."""
        with self._write() as conn:
            return conn.execute("DELETE FROM runs WHERE run_id = ?", (run_id,)).rowcount > 0

    # ------------------------------------------------------------------ streams

    def offset(self, run_id: str, file_name: str) -> tuple[int, int]:
        """(byte offset, line number) up to which `file_name` of the run has been ingested; (0, 0) when never."""
        row = self._conn().execute('SELECT "offset", line_no FROM stream_offsets WHERE run_id = ? AND file_name = ?',
                                   (run_id, file_name)).fetchone()
        return (row[0], row[1]) if row is not None else (0, 0)

    def stream_state(self, run_id: str, file_name: str) -> dict[str, int]:
        """offset, line_no, corrupt_count and duplicate_count of one streamed file (zeros when never streamed)."""
        row = self._conn().execute(
            'SELECT "offset", line_no, corrupt_count, duplicate_count FROM stream_offsets'
            " WHERE run_id = ? AND file_name = ?", (run_id, file_name)).fetchone()
        keys = ("offset", "line_no", "corrupt_count", "duplicate_count")
        return dict(zip(keys, row, strict=True)) if row is not None else dict.fromkeys(keys, 0)

    def reset_stream(self, run_id: str, file_name: str) -> None:
        """The file was truncated or replaced: the next ingest starts again from byte 0.

        Records already stored stay (metrics/evals/events re-read from the new file are deduplicated by their
        keys); the stored stdout log is cleared, since the new file's text starts over.
        """
        _check_file(file_name)
        with self._write() as conn:
            conn.execute('UPDATE stream_offsets SET "offset" = 0, line_no = 0 WHERE run_id = ? AND file_name = ?',
                         (run_id, file_name))
            if file_name == RunPaths.STDOUT:
                conn.execute("DELETE FROM logs WHERE run_id = ?", (run_id,))
                conn.execute("UPDATE run_summaries SET log_bytes = 0 WHERE run_id = ?", (run_id,))

    def ingest(self, run_id: str, file_name: str, records: Sequence[dict[str, Any]], offset: int, line_no: int,
               corrupt: int = 0, *, expect_offset: int | None = None) -> IngestResult:
        """Store the records read from one streamed file and the offset just past them, in ONE transaction.

        A streamer that resumes at `offset()` therefore sees every record exactly once, whenever it or this
        process is killed. `file_name` is one of RunPaths.STREAMED; for stdout.log `records` are
        `{"text": str}` chunks in file order. `corrupt` is the number of corrupt lines in this batch (added to
        the stream's count). When `expect_offset` is given and the stored offset differs (another streamer
        got there first), nothing is written and StreamConflictError is raised.
        """
        _check_file(file_name)
        kind = FILE_KIND.get(file_name)
        if kind is not None:
            checked = isinstance(records, CheckedRecords) and records.kind == kind  # by the reader, just now
            for i, rec in enumerate(() if checked else records):
                problems = validate_record(kind, rec)
                if problems:
                    raise ValueError(f"{file_name} record {i} of this batch is invalid: {'; '.join(problems)}")
        elif any(not isinstance(rec.get("text"), str) for rec in records):
            raise ValueError("stdout.log records must be {'text': str} chunks")
        inserted = 0
        with self._write() as conn:
            if conn.execute("SELECT 1 FROM runs WHERE run_id = ?", (run_id,)).fetchone() is None:
                raise UnknownRunError(f"no run with id {run_id!r}")
            conn.execute("INSERT OR IGNORE INTO run_summaries (run_id) VALUES (?)", (run_id,))
            if expect_offset is not None:
                row = conn.execute('SELECT "offset" FROM stream_offsets WHERE run_id = ? AND file_name = ?',
                                   (run_id, file_name)).fetchone()
                stored = row[0] if row is not None else 0
                if stored != expect_offset:
                    raise StreamConflictError(f"{file_name} of run {run_id!r} stands at byte {stored}, "
                                              f"not {expect_offset}: another streamer moved it")
            if kind == "metrics":
                inserted = self._insert_metrics(conn, run_id, records)
            elif kind == "evals":
                inserted = self._insert_evals(conn, run_id, records)
            elif kind == "events":
                inserted = self._insert_events(conn, run_id, records)
            else:
                inserted = self._insert_logs(conn, run_id, records, offset)
            duplicates = len(records) - inserted
            conn.execute(
                'INSERT INTO stream_offsets (run_id, file_name, "offset", line_no, corrupt_count, duplicate_count)'
                " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (run_id, file_name) DO UPDATE SET"
                ' "offset" = excluded."offset", line_no = excluded.line_no,'
                " corrupt_count = corrupt_count + excluded.corrupt_count,"
                " duplicate_count = duplicate_count + excluded.duplicate_count",
                (run_id, file_name, offset, line_no, corrupt, duplicates))
        return IngestResult(inserted=inserted, duplicates=duplicates)

    @staticmethod
    def _insert_or_ignore(conn: sqlite3.Connection, table: str, columns: Sequence[str],
                          rows: list[tuple[Any, ...]]) -> int:
        """Insert rows, ignoring those whose key is already stored (a re-delivered record); returns how many
        were new."""
        before = conn.total_changes
        conn.executemany(f"INSERT OR IGNORE INTO {table} ({', '.join(columns)})"
                         f" VALUES ({', '.join('?' * len(columns))})", rows)
        return conn.total_changes - before

    @staticmethod
    def _insert_metrics(conn: sqlite3.Connection, run_id: str, records: Sequence[dict[str, Any]]) -> int:
        inserted = 0
        for plan, values in _metric_segments(records):
            # Per attempt (a batch rarely holds more than one), so each attempt's span, tiles and inserted count
            # are known exactly; consecutive runs, so rows keep their file order (and their rowids that order).
            attempt_of = operator.itemgetter(plan.attempt)
            attempts = list(map(attempt_of, values))
            if attempts.count(attempts[0]) == len(attempts):
                runs: Iterable[tuple[int, Iterable[tuple[Any, ...]]]] = ((attempts[0], values),)
            else:
                runs = itertools.groupby(values, key=attempt_of)
            sql = plan.sql(run_id)
            for attempt, group in runs:
                rows = group if isinstance(group, list) else list(group)
                before = conn.total_changes
                conn.executemany(sql, rows)
                n = conn.total_changes - before
                if n:  # else every row was already stored: nothing derived changes
                    inserted += n
                    _derive_attempt(conn, run_id, attempt, plan, rows, n)
        if inserted:
            # Rowids grow in ingest order and this transaction holds the write lock: the table's newest row is
            # the run's newest, which a poll compares with the last row it saw.
            conn.execute("UPDATE run_summaries SET metric_points = metric_points + ?,"
                         " metrics_rowid = (SELECT MAX(rowid) FROM metrics) WHERE run_id = ?", (inserted, run_id))
            _refresh_metric_summary(conn, run_id)
        return inserted

    @classmethod
    def _insert_evals(cls, conn: sqlite3.Connection, run_id: str, records: Sequence[dict[str, Any]]) -> int:
        rows = []
        for rec in records:
            pass_at = {k: v for k, v in rec.items() if k.startswith("pass@")}
            rows.append((run_id, *(rec[c] for c in _EVAL_COLUMNS), _json(pass_at)))
        before = conn.total_changes
        conn.executemany(
            f"INSERT OR IGNORE INTO evals (run_id, {', '.join(_EVAL_COLUMNS)}, pass_at)"
            f" VALUES ({', '.join('?' * (len(_EVAL_COLUMNS) + 2))})", rows)
        inserted = conn.total_changes - before
        if inserted:
            conn.execute("UPDATE run_summaries SET eval_points = eval_points + ? WHERE run_id = ?", (inserted, run_id))
            _refresh_best_evals(conn, run_id)
        return inserted

    @classmethod
    def _insert_events(cls, conn: sqlite3.Connection, run_id: str, records: Sequence[dict[str, Any]]) -> int:
        # Both events files land here; their keys (attempt, t, event) cannot collide, since only the evaluation
        # processes write eval_started / eval_finished / eval_failed and only training writes the rest.
        rows = [(run_id, rec["t"], rec["attempt"], rec["event"], _json(rec["detail"])) for rec in records]
        return cls._insert_or_ignore(conn, "events", ("run_id", "t", "attempt", "event", "detail"), rows)

    def _insert_logs(self, conn: sqlite3.Connection, run_id: str, chunks: Sequence[dict[str, Any]],
                     end_offset: int) -> int:
        # Each chunk's start offset, counted back from the offset just past the last one.
        sizes = [len(c["text"].encode("utf-8", "surrogatepass")) for c in chunks]
        start = end_offset - sum(sizes)
        rows = []
        for chunk, size in zip(chunks, sizes, strict=True):
            rows.append((run_id, chunk.get("offset", start), chunk["text"]))
            start += size
        conn.executemany('INSERT INTO logs (run_id, "offset", text) VALUES (?, ?, ?)', rows)
        total = conn.execute("UPDATE run_summaries SET log_bytes = log_bytes + ? WHERE run_id = ? RETURNING log_bytes",
                             (sum(sizes), run_id)).fetchone()[0]
        if total > self.log_keep_bytes:
            self._trim_logs(conn, run_id, total)
        return len(rows)

    def _trim_logs(self, conn: sqlite3.Connection, run_id: str, total: int) -> None:
        """Keep the newest log_keep_bytes of stdout per run. `total` is the running byte count kept in the run's
        summary, so only the oldest rows that must go are read: each row is read once, when it is dropped."""
        dropped = 0
        cutoff = None
        for row_id, size in conn.execute(
                "SELECT id, LENGTH(CAST(text AS BLOB)) FROM logs WHERE run_id = ? ORDER BY id", (run_id,)):
            if total - dropped <= self.log_keep_bytes:
                break
            cutoff = row_id
            dropped += size
        if cutoff is not None:
            conn.execute("DELETE FROM logs WHERE run_id = ? AND id <= ?", (run_id, cutoff))
            conn.execute("UPDATE run_summaries SET log_bytes = log_bytes - ? WHERE run_id = ?", (dropped, run_id))

    # ------------------------------------------------------------------ ranks (per-process heartbeats)

    def upsert_ranks(self, run_id: str, records: Sequence[dict[str, Any]]) -> int:
        """Keep the newest record per rank (a later attempt, or the same attempt at a later time, replaces it);
        returns how many rows changed. Records are validated first: a bad one raises ValueError, nothing stored."""
        for i, rec in enumerate(records):
            problems = validate_record("ranks", rec)
            if problems:
                raise ValueError(f"rank record {i} of this batch is invalid: {'; '.join(problems)}")
        rows = [(run_id, *(rec[c] for c in _RANK_COLUMNS), rec.get("error"), rec.get("stalled_s")) for rec in records]
        with self._write() as conn:
            if conn.execute("SELECT 1 FROM runs WHERE run_id = ?", (run_id,)).fetchone() is None:
                raise UnknownRunError(f"no run with id {run_id!r}")
            before = conn.total_changes
            conn.executemany(
                f"INSERT INTO ranks (run_id, {', '.join(_RANK_COLUMNS)}, error, stalled_s)"
                f" VALUES ({', '.join('?' * (len(_RANK_COLUMNS) + 3))}) ON CONFLICT (run_id, rank) DO UPDATE SET"
                f" {', '.join(f'{c} = excluded.{c}' for c in _RANK_COLUMNS if c != 'rank')}, error = excluded.error,"
                " stalled_s = excluded.stalled_s"
                " WHERE excluded.attempt > ranks.attempt OR (excluded.attempt = ranks.attempt AND excluded.t > ranks.t)",
                rows)
            return conn.total_changes - before

    def ranks(self, run_id: str) -> list[dict[str, Any]]:
        """The newest record of every rank the run ever had, ordered by rank (filter by attempt to see one)."""
        rows = self._conn().execute(
            f"SELECT {', '.join(_RANK_COLUMNS)}, error, stalled_s FROM ranks WHERE run_id = ? ORDER BY rank",
            (run_id,)).fetchall()
        return [{k: r[k] for k in (*_RANK_COLUMNS, "error", "stalled_s")} for r in rows]

    # ------------------------------------------------------------------ reading records

    def metrics(self, run_id: str, since_rowid: int = 0) -> list[dict[str, Any]]:
        """Metric records of every attempt, ordered (attempt, step); each carries its `rowid` so a poller can
        ask only for rows newer than the largest it has seen.

        Rowids grow in ingest order across the store, and the run's summary holds its newest: a poll with
        nothing new reads one row; else it reads from the last seen row on (the rows ingested since, for any
        run) when that is fewer rows than the run holds. A first load reads the run's rows through its index."""
        select = f"SELECT rowid, {', '.join(_METRIC_ALL)}, extra FROM metrics"
        with self.snapshot() as conn:
            if since_rowid > 0:
                held = conn.execute("SELECT metric_points, metrics_rowid FROM run_summaries WHERE run_id = ?",
                                    (run_id,)).fetchone()
                if held is not None and held[1] is not None:
                    points, newest = held
                    if newest <= since_rowid:
                        return []
                    if newest - since_rowid < points:
                        # `+run_id` keeps SQLite on the rowid range instead of the run's index
                        return self._metric_dicts(
                            conn, f"{select} WHERE rowid > ? AND rowid <= ? AND +run_id = ? ORDER BY attempt, step",
                            (since_rowid, newest, run_id))
            return self._metric_dicts(conn, f"{select} WHERE run_id = ? AND rowid > ? ORDER BY attempt, step",
                                      (run_id, since_rowid))

    @staticmethod
    def _metric_dicts(conn: sqlite3.Connection, sql: str, args: tuple[Any, ...]) -> list[dict[str, Any]]:
        cur = conn.cursor()
        cur.row_factory = None  # plain tuples: building the dicts ourselves is several times faster
        keys = ("rowid", *_METRIC_COLUMNS)
        n_keys = len(keys)
        optional = tuple(enumerate(_OPTIONAL_COLUMNS, start=n_keys))
        out = []
        for row in cur.execute(sql, args):
            rec = dict(zip(keys, row[:n_keys], strict=True))
            for i, name in optional:
                if row[i] is not None:
                    rec[name] = row[i]
            if row[-1]:  # fields the store has no column for (JSON): only records that carry such fields
                rec.update(json.loads(row[-1]))
            out.append(rec)
        return out

    def evals(self, run_id: str) -> list[dict[str, Any]]:
        """Eval records ordered (step, attempt, benchmark, subset), with the pass@k keys as written."""
        return _eval_dicts(self._conn(), run_id)

    def events(self, run_id: str, since_seq: int = 0) -> list[dict[str, Any]]:
        """Event records of events.jsonl and eval_events.jsonl (the evaluation processes' eval_* events), in
        time order. Each carries its `seq`, which grows in ingest order (the two files stream independently,
        so a late-ingested event may be older than one already seen): a poller asks for `since_seq` = the
        largest seq it has seen to get only the events ingested since."""
        rows = self._conn().execute(
            "SELECT seq, t, attempt, event, detail FROM events WHERE run_id = ? AND seq > ? ORDER BY t, seq",
            (run_id, since_seq)).fetchall()
        return [{"seq": r["seq"], "t": r["t"], "attempt": r["attempt"], "event": r["event"],
                 "detail": json.loads(r["detail"])} for r in rows]

    def log_tail(self, run_id: str, max_bytes: int = 256 << 10) -> str:
        """The last `max_bytes` (UTF-8) of the run's stored stdout."""
        if max_bytes <= 0:
            return ""
        parts: list[bytes] = []
        size = 0
        for (text,) in self._conn().execute("SELECT text FROM logs WHERE run_id = ? ORDER BY id DESC", (run_id,)):
            data = text.encode("utf-8", "surrogatepass")
            parts.append(data)
            size += len(data)
            if size >= max_bytes:
                break
        data = b"".join(reversed(parts))[-max_bytes:]
        # The cut may land inside a multi-byte character: drop its continuation bytes.
        return data.decode("utf-8", "ignore")

    # ------------------------------------------------------------------ per-sample eval results

    def put_eval_samples(self, run_id: str, step: int, benchmark: str, rows: Sequence[dict[str, Any]]) -> int:
        """Store the per-sample results of one evaluation (the rows of samples/step-N-BENCH.jsonl), replacing
        any stored before for the same run, step and benchmark (a re-evaluation rewrites that file), in one
        transaction. Returns the number of rows stored."""
        values = []
        for i, row in enumerate(rows):
            problems = _sample_problems(row)
            if problems:
                raise ValueError(f"per-sample row {i} of {benchmark} step {step} is invalid: {'; '.join(problems)}")
            extra = {k: v for k, v in row.items() if k not in _SAMPLE_KNOWN}
            values.append((run_id, step, benchmark, str(row["task_id"]), int(row.get("sample", 0)),
                           int(bool(row["passed"])), row.get("subset") or "all", row.get("completion"),
                           row.get("error"), row.get("stderr_tail"), row.get("seconds"),
                           _json(extra) if extra else None))
        with self._write() as conn:
            if conn.execute("SELECT 1 FROM runs WHERE run_id = ?", (run_id,)).fetchone() is None:
                raise UnknownRunError(f"no run with id {run_id!r}")
            conn.execute("DELETE FROM eval_samples WHERE run_id = ? AND step = ? AND benchmark = ?",
                         (run_id, step, benchmark))
            conn.executemany(
                f"INSERT INTO eval_samples (run_id, step, benchmark, {', '.join(_SAMPLE_COLUMNS)}, extra)"
                f" VALUES (?, ?, ?, {', '.join('?' * len(_SAMPLE_COLUMNS))}, ?)", values)
        return len(values)

    def eval_samples(self, run_id: str, step: int, benchmark: str) -> list[dict[str, Any]]:
        """The stored per-sample rows of one evaluation (as the file had them, plus benchmark and step),
        ordered by task and sample; empty when none were stored."""
        rows = self._conn().execute(
            f"SELECT {', '.join(_SAMPLE_COLUMNS)}, extra FROM eval_samples WHERE run_id = ? AND step = ?"
            " AND benchmark = ? ORDER BY task_id, sample", (run_id, step, benchmark)).fetchall()
        out = []
        for r in rows:
            rec: dict[str, Any] = json.loads(r["extra"]) if r["extra"] else {}
            rec.update({c: r[c] for c in _SAMPLE_COLUMNS})
            rec["passed"] = bool(rec["passed"])
            rec.update(benchmark=benchmark, step=step)
            out.append(rec)
        return out

    def eval_sample_sets(self, run_id: str) -> list[tuple[int, str]]:
        """(step, benchmark) of every evaluation of the run whose per-sample results are stored, in order."""
        rows = self._conn().execute(
            "SELECT DISTINCT step, benchmark FROM eval_samples WHERE run_id = ? ORDER BY step, benchmark",
            (run_id,)).fetchall()
        return [(r[0], r[1]) for r in rows]

    def task_results(self, run_id: str, step: int, benchmark: str) -> dict[str, tuple[str, list[bool]]]:
        """task_id -> (subset, pass/fail per sample) of one stored evaluation: what pass@k intervals need."""
        out: dict[str, tuple[str, list[bool]]] = {}
        for task_id, subset, passed in self._conn().execute(
                "SELECT task_id, subset, passed FROM eval_samples WHERE run_id = ? AND step = ? AND benchmark = ?"
                " ORDER BY task_id, sample", (run_id, step, benchmark)):
            out.setdefault(task_id, (subset, []))[1].append(bool(passed))
        return out

    # ------------------------------------------------------------------ contamination reports

    def add_contamination_report(self, report: dict[str, Any], path: str | None, run_id: str | None = None) -> int:
        """Keep a contamination report (the matcher's JSON); its `method` and `summary` keys are indexed."""
        summary = report.get("summary", {})
        with self._write() as conn:
            if run_id is not None and conn.execute("SELECT 1 FROM runs WHERE run_id = ?", (run_id,)).fetchone() is None:
                raise UnknownRunError(f"no run with id {run_id!r}")
            cur = conn.execute(
                "INSERT INTO contamination_reports (created_at, path, method, summary, report, run_id)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (time.time(), path, report.get("method"), _json(summary), _json(report), run_id))
            assert cur.lastrowid is not None
            return cur.lastrowid

    def attach_contamination_report(self, report_id: int, run_id: str | None) -> None:
        with self._write() as conn:
            try:
                cur = conn.execute("UPDATE contamination_reports SET run_id = ? WHERE id = ?", (run_id, report_id))
            except sqlite3.IntegrityError as exc:
                raise UnknownRunError(f"no run with id {run_id!r}") from exc
            if cur.rowcount == 0:
                raise KeyError(f"no contamination report {report_id}")

    def contamination_reports(self, run_id: str | None = None) -> list[ContaminationReportRow]:
        """Reports newest first (without their bodies), all of them or those attached to `run_id`."""
        sql = "SELECT id, created_at, path, method, summary, run_id FROM contamination_reports"
        args: tuple[Any, ...] = ()
        if run_id is not None:
            sql += " WHERE run_id = ?"
            args = (run_id,)
        rows = self._conn().execute(sql + " ORDER BY id DESC", args).fetchall()
        return [ContaminationReportRow(r["id"], r["created_at"], r["path"], r["method"], json.loads(r["summary"]),
                                       r["run_id"], None) for r in rows]

    def get_contamination_report(self, report_id: int) -> ContaminationReportRow | None:
        r = self._conn().execute("SELECT * FROM contamination_reports WHERE id = ?", (report_id,)).fetchone()
        if r is None:
            return None
        return ContaminationReportRow(r["id"], r["created_at"], r["path"], r["method"], json.loads(r["summary"]),
                                      r["run_id"], json.loads(r["report"]))

    # ------------------------------------------------------------------ compare view

    def summary(self, run_id: str) -> dict[str, Any]:
        """Numbers for the compare view and the Runs page, kept up to date by ingest (one row read).

        steps: the last step logged; final_loss: loss at the last step that has one (latest attempt per step);
        tokens: the tokens count at the last step; wall_time_s: last t - first t over all metric records;
        best_pass_at_1: {benchmark: {subset: best pass@1 over all checkpoints}} (a checkpoint evaluated again counts
        with its latest attempt's result), best_evals: the records holding them; metric_points, eval_points,
        attempts, first_t, last_t.
        """
        return self.run_summary(run_id).as_dict()

    def run_summary(self, run_id: str) -> RunSummary:
        row = self._conn().execute(f"{_SUMMARY_SQL} WHERE run_id = ?", (run_id,)).fetchone()
        return _run_summary(run_id, row)

    # ------------------------------------------------------------------ charts at screen resolution

    def metric_envelope(self, run_id: str, fields: Sequence[str] = TILED_FIELDS, *, x_axis: str = "step",
                        x_range: tuple[float, float] | None = None, buckets: int = 1000,
                        t0: float | None = None) -> MetricEnvelope:
        """What a chart of `fields` over `x_range` needs at `buckets` (pixel columns) resolution: per attempt and
        bucket, the min and max of each field and the x span of the bucket's points. The latest attempt wins a
        step it redid. The cost follows the buckets drawn, not the points stored: wide ranges read the tiles
        ingest keeps (TILE_SHIFTS; fields other than TILED_FIELDS are aggregated from the rows in range), and
        zooming in reads the raw rows of the visible range only, down to the points themselves (`exact`). Call
        again with the new range when the view zooms or pans.

        x_axis: step, tokens, samples or wall_time (seconds since `t0`, by default the run's first metric time).
        x_range: (x0, x1) inclusive; None is the whole run. tokens, samples and t are taken to grow with the step
        within an attempt (they are counters and a clock): the visible steps are found through the tiles.
        """
        if x_axis not in X_COLUMNS:
            raise ValueError(f"x_axis must be one of {tuple(X_COLUMNS)}, not {x_axis!r}")
        unknown = [f for f in fields if f not in _METRIC_ALL or f in ("attempt", "step")]
        if unknown:
            raise ValueError(f"cannot draw metric field(s) {unknown}; one of {_METRIC_ALL[3:]} or t/epoch")
        if buckets < 1:
            raise ValueError("buckets must be at least 1")
        with self.snapshot() as conn:
            return _Envelope(conn, run_id, tuple(fields), x_axis, x_range, buckets, t0).build()

    def metric_rowid(self, run_id: str) -> int:
        """The rowid of the run's newest metric row (0: none): where a poll that skips the run's history starts,
        and what a chart's envelope read covers up to (one row read)."""
        row = self._conn().execute("SELECT metrics_rowid FROM run_summaries WHERE run_id = ?", (run_id,)).fetchone()
        return int(row[0]) if row is not None and row[0] is not None else 0

    # ------------------------------------------------------------------ watching

    def data_version(self) -> int:
        """A number that changes whenever another connection (thread or process) committed to the store."""
        return self._conn().execute("PRAGMA data_version").fetchone()[0]

    def change_marks(self, run_ids: Sequence[str]) -> dict[str, tuple[Any, ...]]:
        """Per run, a mark that changes when its row changes or any of its streams ingests (one indexed read
        per run: what lets a watcher skip runs that did not change)."""
        conn = self._conn()
        out: dict[str, tuple[Any, ...]] = {}
        for run_id in run_ids:
            out[run_id] = tuple(conn.execute(
                'SELECT (SELECT updated_at FROM runs WHERE run_id = ?), SUM("offset"), SUM(line_no),'
                " SUM(corrupt_count), COUNT(*) FROM stream_offsets WHERE run_id = ?", (run_id, run_id)).fetchone())
        return out


class _Envelope:
    """One metric_envelope() call, inside a read snapshot.

    Buckets accumulate [x_lo, x_hi, rows, min and max of each field...]; tiles and raw rows of disjoint step
    ranges feed the same buckets."""

    def __init__(self, conn: sqlite3.Connection, run_id: str, fields: tuple[str, ...], x_axis: str,
                 x_range: tuple[float, float] | None, buckets: int, t0: float | None):
        self.conn, self.run_id, self.fields, self.x_axis = conn, run_id, fields, x_axis
        self.x_range, self.buckets, self.t0 = x_range, buckets, t0
        self.xcol = x = X_COLUMNS[x_axis]
        self.tiled = all(f in TILED_FIELDS for f in fields)
        self.points = 0
        self._raw_sql = (f"SELECT CAST(({x} - ?) / ? AS INTEGER) AS b, COUNT(*), MIN({x}), MAX({x})"
                         + "".join(f", MIN({f}), MAX({f})" for f in fields)
                         + f" FROM metrics m WHERE run_id = ? AND attempt = ? AND step BETWEEN ? AND ?"
                         f" AND {x} BETWEEN ? AND ?")
        self._tile_sql = (f"SELECT n, {x}_lo, {x}_hi" + "".join(f", {f}_min, {f}_max" for f in fields)
                          + " FROM metric_tiles WHERE run_id = ? AND attempt = ? AND level = ? AND tile BETWEEN ? AND ?")

    def _empty(self) -> MetricEnvelope:
        return MetricEnvelope(self.run_id, self.x_axis, None, self.buckets, {f: () for f in self.fields}, 0, True)

    def build(self) -> MetricEnvelope:
        spans = self.conn.execute("SELECT attempt, min_step, max_step, first_t FROM metric_attempts"
                                  " WHERE run_id = ? ORDER BY attempt", (self.run_id,)).fetchall()
        if not spans:
            return self._empty()
        self.offset = 0.0
        if self.x_axis == "wall_time":
            self.offset = self.t0 if self.t0 is not None else min(s[3] for s in spans if s[3] is not None)
        extents = {a: self._x_extent(a, lo, hi) for a, lo, hi, _t in spans}
        if self.x_range is not None:
            x0, x1 = (float(v) for v in self.x_range)
            if not (math.isfinite(x0) and math.isfinite(x1)) or x1 < x0:
                raise ValueError(f"x_range must be two finite numbers, low first; got {self.x_range!r}")
        else:
            known = [e for e in extents.values() if e is not None]
            if not known:
                return self._empty()
            x0, x1 = min(e[0] for e in known), max(e[1] for e in known)
        self.x0, self.x1 = x0, x1
        self.width = (x1 - x0) / self.buckets if x1 > x0 else 1.0
        series: dict[str, list[EnvelopeSegment]] = {f: [] for f in self.fields}
        attempts = [s[0] for s in spans]
        for i, (attempt, lo, hi, _t) in enumerate(spans):
            extent = extents[attempt]
            steps = None if extent is None else self._visible_steps(attempt, lo, hi)
            if steps is None:
                continue
            s0, s1 = steps
            acc: dict[int, list[Any]] = {}
            level = self._level(lo, hi, extent)
            later = [(b_lo, b_hi) for _a, b_lo, b_hi, _t in spans[i + 1:] if b_hi >= s0 and b_lo <= s1]
            if later:  # steps a later attempt may have redone: raw rows, each checked against the later attempts
                c_lo = max(s0, min(b[0] for b in later))
                c_hi = min(s1, max(b[1] for b in later))
                self._clean(acc, attempt, s0, c_lo - 1, level, (lo, hi))
                self._raw(acc, attempt, c_lo, c_hi, attempts[i + 1:])
                self._clean(acc, attempt, c_hi + 1, s1, level, (lo, hi))
            else:
                self._clean(acc, attempt, s0, s1, level, (lo, hi))
            for j, f in enumerate(self.fields):
                seg = self._segment(attempt, acc, 3 + 2 * j)
                if seg is not None:
                    series[f].append(seg)
        exact = all(max(seg.n, default=0) <= 1 for segs in series.values() for seg in segs)
        return MetricEnvelope(self.run_id, self.x_axis, (x0, x1), self.buckets,
                              {f: tuple(v) for f, v in series.items()}, self.points, exact)

    def _x_extent(self, attempt: int, lo: int, hi: int) -> tuple[float, float] | None:
        """(min, max) of the attempt's x values, in axis units."""
        if self.x_axis == "step":
            return float(lo), float(hi)
        x = self.xcol
        row = self.conn.execute(  # the coarsest tiles cover the attempt in a handful of rows
            f"SELECT MIN({x}_lo), MAX({x}_hi) FROM metric_tiles WHERE run_id = ? AND attempt = ? AND level = ?",
            (self.run_id, attempt, len(TILE_SHIFTS) - 1)).fetchone()
        if row is None or row[0] is None:
            return None
        return row[0] - self.offset, row[1] - self.offset

    def _level(self, lo: int, hi: int, extent: tuple[float, float]) -> int | None:
        """The coarsest tile level no wider than a bucket (None: read raw rows)."""
        if not self.tiled:
            return None
        steps_per_bucket = self.width
        if self.x_axis != "step":  # x grows with the step: the attempt's average rate converts
            steps_per_bucket = self.width * (hi - lo + 1) / max(extent[1] - extent[0], 1e-300)
        for k in range(len(TILE_SHIFTS) - 1, -1, -1):
            if (1 << TILE_SHIFTS[k]) <= steps_per_bucket:
                return k
        return None

    def _visible_steps(self, attempt: int, lo: int, hi: int) -> tuple[int, int] | None:
        if self.x_axis == "step":
            s0, s1 = max(lo, math.ceil(self.x0)), min(hi, math.floor(self.x1))
            return (s0, s1) if s0 <= s1 else None
        # x grows with the step: descend the tile pyramid to the level-0 tiles where the x range starts and ends
        # (a few tiles read per level); the raw reads at the edges then filter on x exactly.
        first = self._edge_tile(attempt, self.x0 + self.offset, low=True)
        last = self._edge_tile(attempt, self.x1 + self.offset, low=False)
        if first is None or last is None or first[0] > last[1]:
            return None
        return first[0], last[1]

    def _edge_tile(self, attempt: int, value: float, *, low: bool) -> tuple[int, int] | None:
        """(step_lo, step_hi) of the first level-0 tile reaching `value` (low) or the last starting at or below it."""
        x = self.xcol
        test, pick = (f"{x}_hi >= ?", "MIN") if low else (f"{x}_lo <= ?", "MAX")
        tile = None
        for level in range(len(TILE_SHIFTS) - 1, -1, -1):
            args: tuple[Any, ...] = (self.run_id, attempt, level, value)
            bounds = ""
            if tile is not None:  # among the children of the tile found one level up
                factor = TILE_SHIFTS[level + 1] - TILE_SHIFTS[level]
                bounds = " AND tile BETWEEN ? AND ?"
                args += (tile << factor, ((tile + 1) << factor) - 1)
            found = self.conn.execute(f"SELECT {pick}(tile) FROM metric_tiles WHERE run_id = ? AND attempt = ?"
                                      f" AND level = ? AND {test}{bounds}", args).fetchone()[0]
            if found is None and tile is not None:  # x does not grow with the step here: search the whole level
                found = self.conn.execute(f"SELECT {pick}(tile) FROM metric_tiles WHERE run_id = ? AND attempt = ?"
                                          f" AND level = ? AND {test}", args[:4]).fetchone()[0]
            if found is None:
                return None
            tile = found
        return self.conn.execute("SELECT step_lo, step_hi FROM metric_tiles WHERE run_id = ? AND attempt = ?"
                                 " AND level = 0 AND tile = ?", (self.run_id, attempt, tile)).fetchone()

    def _clean(self, acc: dict[int, list[Any]], attempt: int, p0: int, p1: int, level: int | None,
               span: tuple[int, int]) -> None:
        """Steps p0..p1 of an attempt that no later attempt redid: whole tiles where they fit, raw rows around.
        `span` is the attempt's (min_step, max_step): a tile reaching past it holds no other rows."""
        if p0 > p1:
            return
        if level is None:
            self._raw(acc, attempt, p0, p1, ())
            return
        shift = TILE_SHIFTS[level]
        first, last = (p0 + (1 << shift) - 1) >> shift, ((p1 + 1) >> shift) - 1
        if self.x_axis == "step":
            if p0 <= span[0]:
                first = p0 >> shift
            if p1 >= span[1]:
                last = p1 >> shift
        else:  # the edge tiles may reach past the x range: read them raw
            first, last = first + 1, last - 1
        if first > last:
            self._raw(acc, attempt, p0, p1, ())
            return
        self._raw(acc, attempt, p0, (first << shift) - 1, ())
        self._tiles(acc, attempt, level, first, last)
        self._raw(acc, attempt, (last + 1) << shift, p1, ())

    def _raw(self, acc: dict[int, list[Any]], attempt: int, p0: int, p1: int, later: Sequence[int]) -> None:
        if p0 > p1:
            return
        lo_x, hi_x = self.x0 + self.offset, self.x1 + self.offset
        cur = self.conn.cursor()
        cur.row_factory = None
        for row in cur.execute(self._raw_sql + _later_attempts_sql(later) + " GROUP BY b",
                               (lo_x, self.width, self.run_id, attempt, p0, p1, lo_x, hi_x)):
            self._merge(acc, row[0], row, 1)

    def _tiles(self, acc: dict[int, list[Any]], attempt: int, level: int, first: int, last: int) -> None:
        base, width = self.x0 + self.offset, self.width
        cur = self.conn.cursor()
        cur.row_factory = None
        for row in cur.execute(self._tile_sql, (self.run_id, attempt, level, first, last)):
            if row[1] is not None:
                self._merge(acc, int((row[1] - base) / width), row, 0)

    def _merge(self, acc: dict[int, list[Any]], b: int, row: Sequence[Any], start: int) -> None:
        """Fold (rows, x_lo, x_hi, min/max per field) at row[start:] into bucket b."""
        b = 0 if b < 0 else self.buckets - 1 if b >= self.buckets else b
        self.points += row[start]
        cell = acc.get(b)
        if cell is None:
            acc[b] = [row[start + 1], row[start + 2], row[start], *row[start + 3:]]
            return
        if row[start + 1] < cell[0]:
            cell[0] = row[start + 1]
        if row[start + 2] > cell[1]:
            cell[1] = row[start + 2]
        cell[2] += row[start]
        for k in range(3, len(cell), 2):
            vmin, vmax = row[start + k], row[start + k + 1]
            if vmin is None:
                continue
            if cell[k] is None:
                cell[k], cell[k + 1] = vmin, vmax
            else:
                if vmin < cell[k]:
                    cell[k] = vmin
                if vmax > cell[k + 1]:
                    cell[k + 1] = vmax

    def _segment(self, attempt: int, acc: dict[int, list[Any]], k: int) -> EnvelopeSegment | None:
        cells = [acc[b] for b in sorted(acc) if acc[b][k] is not None]
        if not cells:
            return None
        off = self.offset
        return EnvelopeSegment(attempt, array("d", (c[0] - off for c in cells)), array("d", (c[1] - off for c in cells)),
                               array("d", (c[k] for c in cells)), array("d", (c[k + 1] for c in cells)),
                               array("q", (c[2] for c in cells)))


def _sample_problems(row: Any) -> list[str]:
    if not isinstance(row, dict):
        return ["not a JSON object"]
    problems = []
    if not isinstance(row.get("task_id"), str) or not row.get("task_id"):
        problems.append("'task_id' must be a non-empty string")
    if not isinstance(row.get("passed"), bool):
        problems.append("'passed' must be true or false")
    sample = row.get("sample", 0)
    if not isinstance(sample, int) or isinstance(sample, bool):
        problems.append("'sample' must be an integer")
    if row.get("subset", "all") not in (None, "all", "clean", "contaminated"):
        problems.append("'subset' must be all, clean or contaminated")
    for name in ("completion", "error", "stderr_tail"):
        if row.get(name) is not None and not isinstance(row[name], str):
            problems.append(f"{name!r} must be a string")
    seconds = row.get("seconds")
    if seconds is not None and (not isinstance(seconds, (int, float)) or isinstance(seconds, bool)):
        problems.append("'seconds' must be a number")
    return problems


def _check_status(status: str) -> None:
    if status not in STATUSES:
        raise ValueError(f"unknown run status {status!r} (one of {STATUSES})")


def _check_file(file_name: str) -> None:
    if file_name not in RunPaths.STREAMED:
        raise ValueError(f"{file_name!r} is not a streamed run file (one of {RunPaths.STREAMED})")
