"""The run store: one SQLite file holding runs, stream offsets, metrics, evals, events, logs and
contamination reports. Standard library only.

Durability: WAL journal with ``synchronous=NORMAL``. In WAL mode a commit is complete once its frames are
written to the -wal file (the OS page cache), so a writer killed with SIGKILL, at any moment, loses nothing
it committed and leaves no partial transaction; only an OS crash or power loss can drop the last
transactions (never corrupt the file). FULL would fsync on every commit, which costs a disk flush per
streamed batch for a guarantee against power loss that re-streaming from the run's files already gives.

Concurrency: a Store may be shared by threads (the GUI thread, streamer threads) and the same file by
processes (the CLI). Each thread gets its own sqlite3 connection (thread-local); writes take the write
lock up front (BEGIN IMMEDIATE) so two writers queue on the busy timeout instead of failing on a lock
upgrade, and readers never block writers (WAL). A forked child opens fresh connections.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from core.records import FILE_KIND, METRIC_REQUIRED, RANK_REQUIRED, RunPaths, json_safe, validate_record

STATUSES = ("created", "pending", "running", "completing", "finished", "failed", "cancelled", "unknown")
TERMINAL_STATUSES = ("finished", "failed", "cancelled")
BUSY_TIMEOUT_S = 15.0
LOG_KEEP_BYTES = 8 << 20  # stdout kept per run; older chunks are dropped (the run dir keeps the whole file)

_METRIC_COLUMNS = METRIC_REQUIRED  # t, attempt, step, epoch, samples, tokens, loss, lr, grad_norm, tokens_per_s
# Per-sample result columns (remote/job/evaluate.py write_outputs); other keys of a row go to `extra`.
_SAMPLE_COLUMNS = ("task_id", "sample", "passed", "subset", "completion", "error", "stderr_tail", "seconds")
_SAMPLE_KNOWN = frozenset(_SAMPLE_COLUMNS) | {"benchmark", "step"}
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

Migration = str | Callable[[sqlite3.Connection], None]
# MIGRATIONS[i] takes a store from user_version i to i + 1. Append only; never edit a released entry.
MIGRATIONS: tuple[Migration, ...] = (_V1, _V2, _V3, _V4)
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


def _run_row(row: sqlite3.Row) -> RunRow:
    values = {name: row[name] for name in _RUN_FIELDS}
    values["tags"] = tuple(json.loads(values["tags"] or "[]"))
    values["notes"] = values["notes"] or ""
    values["archived"] = bool(values["archived"])
    return RunRow(**values)


def _json(value: Any) -> str:
    return json.dumps(json_safe(value), separators=(",", ":"), allow_nan=False, ensure_ascii=False)


# ---------------------------------------------------------------------------------------------- store


class Store:
    """The run store. Thread-safe: each thread uses its own connection (see the module docstring), kept until
    close(), so prefer long-lived or pooled threads over one thread per call."""

    def __init__(self, path: str | os.PathLike[str] | None = None, *, log_keep_bytes: int = LOG_KEEP_BYTES):
        if path is None:
            from core.paths import store_path  # platformdirs is only needed for the default location

            path = store_path()
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.log_keep_bytes = log_keep_bytes
        self._local = threading.local()
        self._all_conns: list[sqlite3.Connection] = []
        self._conns_lock = threading.Lock()
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
        conn = getattr(self._local, "conn", None)
        if conn is None or self._local.pid != os.getpid():
            conn = self._connect()
            self._local.conn = conn
            self._local.pid = os.getpid()
        return conn

    def _connect(self) -> sqlite3.Connection:
        try:
            # isolation_level=None: we issue BEGIN/COMMIT ourselves. check_same_thread=False only so close()
            # can close every thread's connection; each connection is otherwise used by its own thread alone.
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
        with self._conns_lock:
            self._all_conns.append(conn)
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
        """A read transaction: the queries inside see one consistent snapshot."""
        conn = self._conn()
        conn.execute("BEGIN")
        try:
            yield conn
        finally:
            conn.execute("COMMIT")

    def close(self) -> None:
        """Close every thread's connection. Call when no other thread is using the store."""
        with self._conns_lock:
            conns, self._all_conns = self._all_conns, []
        for conn in conns:
            conn.close()
        self._closed = True

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
            for i, rec in enumerate(records):
                problems = validate_record(kind, rec)
                if problems:
                    raise ValueError(f"{file_name} record {i} of this batch is invalid: {'; '.join(problems)}")
        elif any(not isinstance(rec.get("text"), str) for rec in records):
            raise ValueError("stdout.log records must be {'text': str} chunks")
        inserted = 0
        with self._write() as conn:
            if conn.execute("SELECT 1 FROM runs WHERE run_id = ?", (run_id,)).fetchone() is None:
                raise UnknownRunError(f"no run with id {run_id!r}")
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

    @classmethod
    def _insert_metrics(cls, conn: sqlite3.Connection, run_id: str, records: Sequence[dict[str, Any]]) -> int:
        rows = []
        for rec in records:
            extra = {k: v for k, v in rec.items() if k not in _METRIC_COLUMNS}
            rows.append((run_id, *(rec[c] for c in _METRIC_COLUMNS), _json(extra) if extra else None))
        return cls._insert_or_ignore(conn, "metrics", ("run_id", *_METRIC_COLUMNS, "extra"), rows)

    @classmethod
    def _insert_evals(cls, conn: sqlite3.Connection, run_id: str, records: Sequence[dict[str, Any]]) -> int:
        rows = []
        for rec in records:
            pass_at = {k: v for k, v in rec.items() if k.startswith("pass@")}
            rows.append((run_id, *(rec[c] for c in _EVAL_COLUMNS), _json(pass_at)))
        return cls._insert_or_ignore(conn, "evals", ("run_id", *_EVAL_COLUMNS, "pass_at"), rows)

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
        self._trim_logs(conn, run_id)
        return len(rows)

    def _trim_logs(self, conn: sqlite3.Connection, run_id: str) -> None:
        """Keep the newest log_keep_bytes of stdout per run."""
        total = conn.execute("SELECT COALESCE(SUM(LENGTH(CAST(text AS BLOB))), 0) FROM logs WHERE run_id = ?",
                             (run_id,)).fetchone()[0]
        if total <= self.log_keep_bytes:
            return
        kept = 0
        cutoff = None
        for row_id, size in conn.execute(
                "SELECT id, LENGTH(CAST(text AS BLOB)) FROM logs WHERE run_id = ? ORDER BY id DESC", (run_id,)):
            if kept + size > self.log_keep_bytes:
                cutoff = row_id
                break
            kept += size
        if cutoff is not None:
            conn.execute("DELETE FROM logs WHERE run_id = ? AND id <= ?", (run_id, cutoff))

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
        ask only for rows newer than the largest it has seen."""
        return self._metric_dicts(
            f"SELECT rowid, {', '.join(_METRIC_COLUMNS)}, extra FROM metrics WHERE run_id = ? AND rowid > ?"
            " ORDER BY attempt, step", (run_id, since_rowid))

    def _metric_dicts(self, sql: str, args: tuple[Any, ...]) -> list[dict[str, Any]]:
        cur = self._conn().cursor()
        cur.row_factory = None  # plain tuples: building the dicts ourselves is several times faster
        keys = ("rowid", *_METRIC_COLUMNS)
        out = []
        for row in cur.execute(sql, args):
            rec = dict(zip(keys, row, strict=False))
            if row[-1]:
                rec.update(json.loads(row[-1]))
            out.append(rec)
        return out

    def evals(self, run_id: str) -> list[dict[str, Any]]:
        """Eval records ordered (step, attempt, benchmark, subset), with the pass@k keys as written."""
        rows = self._conn().execute(
            f"SELECT {', '.join(_EVAL_COLUMNS)}, pass_at FROM evals WHERE run_id = ?"
            " ORDER BY step, attempt, benchmark, subset, checkpoint", (run_id,)).fetchall()
        out = []
        for r in rows:
            rec = {c: r[c] for c in _EVAL_COLUMNS}
            rec.update(json.loads(r["pass_at"]))
            out.append(rec)
        return out

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
        """Numbers for the runs table and the compare view, by core.series' rules (RunSeries.summary).

        steps: the last step logged; final_loss: loss at the last step that has one (latest attempt per step);
        tokens: the tokens count at the last step; wall_time_s: last t - first t over all metric records;
        metric_points: the number of metric records; best_pass_at_1: {benchmark: {subset: best pass@1 over
        all checkpoints}}.
        """
        from core.series import MetricBatch, RunSeries, run_summary  # numpy: only the app needs summaries

        with self.snapshot() as conn:
            rows = conn.execute("SELECT attempt, step, tokens, t, loss FROM metrics WHERE run_id = ?",
                                (run_id,)).fetchall()
            evals = self.evals(run_id)
        series = RunSeries()
        series.extend(MetricBatch.from_table(rows, ("attempt", "step", "tokens", "t", "loss")))
        return run_summary(run_id, series, evals)

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
