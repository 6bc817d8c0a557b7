"""The run views' feed: a background thread polls the run store and hands frozen batches to the UI thread.

The store is filled by the StreamManager (or `tunedeck sync`, or another process); the UI thread never
queries it for live data. Each poll reads only what is new: metric rows past the largest rowid seen, stdout
past the byte offset seen, events past the last seq. Batches are coalesced by the poll interval, so a run
logging at 100 Hz costs the UI one batch per interval, not one per record. A StreamManager update (via
`wake()`) makes the next poll happen at once, so latency stays low without polling fast.
"""

from __future__ import annotations

import itertools
import logging
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PySide6.QtCore import QObject, Signal

from core.records import RunPaths
from core.store import RunRow, Store

log = logging.getLogger(__name__)

POLL_S = 0.5  # when nobody wakes the watcher (the store fed by another process)
MIN_POLL_GAP_S = 0.4  # wakes come per ingested batch (hundreds a second across runs): polls stay this far apart
LOG_MAX_BYTES = 256 << 10  # stdout handed to the console at most per batch (older text is dropped first)
COLUMNS = ("step", "tokens", "samples", "t", "loss", "lr", "grad_norm", "tokens_per_s")
_sub_ids = itertools.count(1)


@dataclass(frozen=True)
class MetricColumns:
    """One attempt's metric rows as columns (NaN where a value is missing), ordered by step."""

    attempt: int
    data: dict[str, np.ndarray] = field(compare=False)

    @property
    def size(self) -> int:
        return int(self.data["step"].size)


@dataclass(frozen=True)
class RunBatch:
    """What changed in one run since the subscriber's last batch."""

    sub_id: int
    run_id: str
    first: bool  # the subscriber's first batch: everything stored so far
    replace: bool  # metrics replace everything held (first batch, or an attempt changed which rows win)
    metrics: tuple[MetricColumns, ...]
    evals: tuple[dict[str, Any], ...] | None  # every eval record, when they changed
    events: tuple[dict[str, Any], ...]  # new events
    log_text: str  # new stdout text
    log_reset: bool  # the console should be cleared before log_text (first batch, file rewritten, gap)
    run: RunRow | None  # the run row, when it changed
    corrupt: dict[str, int] | None = None  # corrupt lines skipped per streamed file, when that changed


    @property
    def n_metric_rows(self) -> int:
        return sum(c.size for c in self.metrics)


def metric_columns(records: Sequence[dict[str, Any]]) -> tuple[MetricColumns, ...]:
    """Per-attempt columns with the latest attempt winning a step it redid (core.series.segments' rule)."""
    latest: dict[int, int] = {}
    for r in records:
        step = r["step"]
        latest[step] = max(latest.get(step, 0), r["attempt"])
    by_attempt: dict[int, list[dict[str, Any]]] = {}
    for r in records:
        if latest[r["step"]] == r["attempt"]:
            by_attempt.setdefault(r["attempt"], []).append(r)
    out = []
    for attempt in sorted(by_attempt):
        rows = sorted(by_attempt[attempt], key=lambda r: r["step"])
        data = {c: np.array([np.nan if r.get(c) is None else r[c] for r in rows], dtype=float) for c in COLUMNS}
        out.append(MetricColumns(attempt, data))
    return tuple(out)


@dataclass
class _Cursor:
    sub_id: int
    run_id: str
    first: bool = True
    metric_rowid: int = 0
    max_attempt: int = 0
    evals_key: tuple = ()
    event_seq: int = 0
    log_offset: int = -1
    run: RunRow | None = None
    corrupt: dict[str, int] = field(default_factory=dict)


GIL_SWITCH_S = 0.001


def keep_ui_thread_responsive() -> None:
    """Shorten the interpreter's GIL switch interval (default 5 ms) for the GUI process.

    Every Qt call from Python releases the GIL and takes it back; while a background thread (streamer,
    watcher, worker) runs Python code, each take-back waits up to the switch interval. A chart repaint makes
    hundreds of such calls, so with busy background threads the default turned a repaint into a multi-second
    UI stall on a loaded machine (measured in tests/app/test_responsiveness.py: 6.3 s; 0.7 s at 0.5 ms).
    """
    if sys.getswitchinterval() > GIL_SWITCH_S:
        sys.setswitchinterval(GIL_SWITCH_S)


class StoreWatcher(QObject):
    """Polls the store for the watched runs on a background thread; `batch` carries RunBatch objects.

    One thread (and so one SQLite connection) serves every run this watcher watches.
    """

    batch = Signal(object)  # RunBatch, delivered on the UI thread (queued)
    failed = Signal(str, str)  # run id, message

    def __init__(self, store: Store, poll_s: float = POLL_S, parent: QObject | None = None, *,
                 min_gap_s: float = MIN_POLL_GAP_S):
        super().__init__(parent)
        keep_ui_thread_responsive()
        self.store = store
        self.poll_s = poll_s
        self.min_gap_s = min_gap_s
        self._cursors: dict[int, _Cursor] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.polls = 0

    def watch(self, run_id: str) -> int:
        """Start feeding `run_id` from its beginning; returns the subscription id carried by its batches."""
        sub_id = next(_sub_ids)
        with self._lock:
            self._cursors[sub_id] = _Cursor(sub_id, run_id)
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="store-watch", daemon=True)
            self._thread.start()
        self.wake()
        return sub_id

    def unwatch(self, sub_id: int) -> None:
        with self._lock:
            self._cursors.pop(sub_id, None)

    def wake(self) -> None:
        """Poll now (new records were just ingested)."""
        self._wake.set()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _loop(self) -> None:
        last = 0.0
        while not self._stop.is_set():
            self._wake.wait(self.poll_s)
            # Coalesce: however often the stream wakes us, the UI gets at most one batch per run per gap.
            self._stop.wait(max(0.0, last + self.min_gap_s - time.monotonic()))
            self._wake.clear()
            if self._stop.is_set():
                break
            last = time.monotonic()
            with self._lock:
                cursors = list(self._cursors.values())
            for cur in cursors:
                try:
                    batch = self.poll(cur)
                except Exception as exc:  # thread boundary: report, keep polling the others
                    log.exception("watching run %s failed", cur.run_id)
                    self.failed.emit(cur.run_id, f"{type(exc).__name__}: {exc}")
                    continue
                with self._lock:
                    if cur.sub_id not in self._cursors or self._stop.is_set():
                        continue  # unwatched while polling: its view is gone
                if batch is not None:
                    self.batch.emit(batch)
            self.polls += 1

    def poll(self, cur: _Cursor) -> RunBatch | None:
        """Read what is new for one subscriber (runs on the watcher thread); None when nothing is."""
        store, run_id = self.store, cur.run_id
        first = cur.first
        row = store.get_run(run_id)
        run_changed = row != cur.run
        cur.run = row

        new = store.metrics(run_id, since_rowid=cur.metric_rowid)
        replace = first
        metrics: tuple[MetricColumns, ...] = ()
        if new:
            cur.metric_rowid = max(r["rowid"] for r in new)
            attempts = {r["attempt"] for r in new}
            # A new attempt may redo steps an earlier one logged, and an old attempt's late rows may lose to a
            # newer one: either way the winners change, so the subscriber gets the whole picture again.
            if not first and (max(attempts) > cur.max_attempt > 0 or min(attempts) < cur.max_attempt):
                replace = True
                new = store.metrics(run_id)
            cur.max_attempt = max(cur.max_attempt, *attempts)
            metrics = metric_columns(new)

        evals = store.evals(run_id)
        evals_key = tuple((e["step"], e["attempt"], e["benchmark"], e["subset"], e["t"]) for e in evals)
        evals_changed = evals_key != cur.evals_key
        cur.evals_key = evals_key

        events = store.events(run_id, since_seq=cur.event_seq)  # in time order, so the largest seq may not be last
        if events:
            cur.event_seq = max(e["seq"] for e in events)

        log_text, log_reset = self._read_log(cur)
        corrupt = {name: n for name in RunPaths.STREAMED
                   if (n := store.stream_state(run_id, name)["corrupt_count"])}
        corrupt_changed = corrupt != cur.corrupt
        cur.corrupt = corrupt
        cur.first = False
        if not (first or run_changed or metrics or evals_changed or events or log_text or log_reset
                or corrupt_changed):
            return None
        return RunBatch(cur.sub_id, run_id, first, replace, metrics,
                        tuple(evals) if (evals_changed or first) else None, tuple(events), log_text,
                        log_reset, row if (run_changed or first) else None,
                        corrupt if (corrupt_changed or first) else None)

    def _read_log(self, cur: _Cursor) -> tuple[str, bool]:
        store = self.store
        # One read snapshot: the offset and the text must describe the same ingested bytes, or a chunk
        # ingested between the two queries would be shown twice.
        with store.snapshot():
            offset = store.stream_state(cur.run_id, RunPaths.STDOUT)["offset"]
            if offset == cur.log_offset:
                return "", False
            delta = offset - cur.log_offset
            if cur.log_offset < 0 or delta < 0 or delta > LOG_MAX_BYTES:
                text, reset = store.log_tail(cur.run_id, LOG_MAX_BYTES), True
            else:
                text, reset = store.log_tail(cur.run_id, delta), False
        cur.log_offset = offset
        return text, reset
