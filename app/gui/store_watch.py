"""The app's feed of live run data: one background thread, with one SQLite connection, reads what is new in
the run store for every open run view and comparison and hands frozen batches to the UI thread.

The store is filled by the StreamManager (or `tunedeck sync`, or another process); the UI thread never
queries it for live data. Each poll of a subscription reads only what is new: metric rows past the largest
rowid seen (sent as a columnar MetricBatch, built on this thread), stdout past the byte offset seen, events
past the last seq. What wakes it:

- the stream, directly from its threads (`notify(run_id)`: no hop through the UI thread), for the runs that
  just ingested;
- every POLL_S, one `PRAGMA data_version` (does any other connection, in this process or another, commit?),
  and only when it moved, one indexed read per watched run (`Store.change_marks`) to find which runs did.

So a tab whose run does not change costs nothing, and polls of a busy run are coalesced to one per
MIN_POLL_GAP_S (a run logging at 100 Hz costs the UI one batch per gap, not one per record).
"""

from __future__ import annotations

import itertools
import logging
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from PySide6.QtCore import QObject, Signal

from core.records import RunPaths
from core.series import MetricBatch
from core.store import RunRow, Store

log = logging.getLogger(__name__)

POLL_S = 0.5  # how often writers the stream does not report (another process) are looked for
MIN_POLL_GAP_S = 0.4  # wakes come per ingested batch (hundreds a second across runs): polls stay this far apart
LOG_MAX_BYTES = 256 << 10  # stdout handed to the console at most per batch (older text is dropped first)
_sub_ids = itertools.count(1)


@dataclass(frozen=True)
class RunBatch:
    """What changed in one run since the subscriber's last batch."""

    sub_id: int
    run_id: str
    first: bool  # the subscriber's first batch: everything stored so far
    missing: bool  # the run is not (or no longer) in the store
    metrics: MetricBatch | None  # new metric rows (every attempt; core.series.RunSeries applies the rules)
    evals: tuple[dict[str, Any], ...] | None  # every eval record, when they changed
    events: tuple[dict[str, Any], ...]  # new events
    log_text: str  # new stdout text
    log_reset: bool  # the console should be cleared before log_text (first batch, file rewritten, gap)
    run: RunRow | None  # the run row, when it changed
    corrupt: dict[str, int] | None = None  # corrupt lines skipped per streamed file, when that changed
    metric_rowid: int = 0  # the newest metric row read for this subscriber so far (its cursor)

    @property
    def n_metric_rows(self) -> int:
        return self.metrics.size if self.metrics is not None else 0


@dataclass
class _Cursor:
    sub_id: int
    run_id: str
    with_log: bool
    history: bool = True  # the first batch holds every stored metric row (else only rows logged after it)
    first: bool = True
    metric_rowid: int = 0
    evals_key: tuple = ()
    event_seq: int = 0
    log_offset: int = -1
    run: RunRow | None = None
    corrupt: dict[str, int] = field(default_factory=dict)
    mark: tuple | None = None


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
    """Reads the store for every subscription on one background thread; each subscriber's RunBatch objects
    reach its receiver on the UI thread. The main window owns one for the whole app."""

    _delivered = Signal(object)  # RunBatch, queued to the UI thread, then handed to its receiver
    failed = Signal(str, str)  # run id, message

    def __init__(self, store: Store, poll_s: float = POLL_S, parent: QObject | None = None, *,
                 min_gap_s: float = MIN_POLL_GAP_S):
        super().__init__(parent)
        keep_ui_thread_responsive()
        self.store = store
        self.poll_s = poll_s
        self.min_gap_s = min_gap_s
        self._cursors: dict[int, _Cursor] = {}
        self._receivers: dict[int, Callable[[RunBatch], None]] = {}
        self._notified: set[str] = set()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._data_version: int | None = None
        self.polls = 0  # subscription polls that read the store (for tests and the soak)
        self.polls_by_run: Counter[str] = Counter()
        self._delivered.connect(self._deliver)

    # ------------------------------------------------------------------ subscriptions (UI thread)

    def watch(self, run_id: str, receiver: Callable[[RunBatch], None], *, log_text: bool = True,
              metric_history: bool = True) -> int:
        """Feed `run_id` to `receiver` from its beginning; returns the subscription id its batches carry.
        `log_text=False`: the subscriber does not show stdout (a comparison). `metric_history=False`: metric
        rows stored before the first batch are not read (a view that reads envelopes from the store gets only
        the rows logged since; each batch's metric_rowid says where its reads start)."""
        sub_id = next(_sub_ids)
        with self._lock:
            self._cursors[sub_id] = _Cursor(sub_id, run_id, log_text, metric_history)
            self._receivers[sub_id] = receiver
            self._notified.add(run_id)
            if self._thread is None:
                self._stop.clear()
                self._thread = threading.Thread(target=self._loop, name="store-watch", daemon=True)
                self._thread.start()
        self._wake.set()
        return sub_id

    def unwatch(self, sub_id: int) -> None:
        with self._lock:
            self._cursors.pop(sub_id, None)
            self._receivers.pop(sub_id, None)

    def _deliver(self, batch: RunBatch) -> None:
        receiver = self._receivers.get(batch.sub_id)
        if receiver is not None:  # else unwatched while the batch was queued: its view is gone
            receiver(batch)

    # ------------------------------------------------------------------ wake-ups (any thread)

    def notify(self, run_id: str, *_ignored: Any) -> None:
        """New records of `run_id` were just committed (called by the stream from its own threads)."""
        with self._lock:
            if not any(c.run_id == run_id for c in self._cursors.values()):
                return
            self._notified.add(run_id)
        self._wake.set()

    def wake(self) -> None:
        """Read every watched run now (e.g. after a cancel, whose end the stream may not report)."""
        with self._lock:
            self._notified.update(c.run_id for c in self._cursors.values())
        self._wake.set()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._wake.set()
        thread = self._thread
        if thread is not None:
            thread.join(timeout)
        self._thread = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    # ------------------------------------------------------------------ the thread

    def _loop(self) -> None:
        last = 0.0
        while not self._stop.is_set():
            with self._lock:
                idle = not self._cursors
            # Nothing watched: sleep until a subscription (or stop) wakes the thread, at no cost.
            self._wake.wait(None if idle else self.poll_s)
            # Coalesce: however often the stream wakes us, the UI gets at most one batch per run per gap.
            self._stop.wait(max(0.0, last + self.min_gap_s - time.monotonic()))
            self._wake.clear()
            if self._stop.is_set():
                break
            last = time.monotonic()
            try:
                due = self._due()
            except Exception as exc:  # thread boundary: report, try again next time
                log.exception("watching the run store failed")
                self.failed.emit("", f"{type(exc).__name__}: {exc}")
                continue
            for cur in due:
                try:
                    batch = self.poll(cur)
                except Exception as exc:  # thread boundary: report, keep polling the others
                    log.exception("watching run %s failed", cur.run_id)
                    self.failed.emit(cur.run_id, f"{type(exc).__name__}: {exc}")
                    continue
                self.polls += 1
                self.polls_by_run[cur.run_id] += 1
                if batch is not None and not self._stop.is_set():
                    self._delivered.emit(batch)

    def _due(self) -> list[_Cursor]:
        """The subscriptions to read now: new ones, those of notified runs, and those whose run changed
        without a notification (found by the store's change marks, read only when the store changed)."""
        with self._lock:
            cursors = list(self._cursors.values())
            notified, self._notified = self._notified, set()
        if not cursors:
            return []
        version = self.store.data_version()
        moved = version != self._data_version
        self._data_version = version
        # A new subscription takes the mark its first read starts from, so that it is not read again for
        # changes that read already saw.
        if moved or any(c.mark is None for c in cursors):
            marks = self.store.change_marks(sorted({c.run_id for c in cursors}))
        else:
            marks = {}
        due = []
        for cur in cursors:
            mark = marks.get(cur.run_id, cur.mark)
            if cur.first or cur.run_id in notified or mark != cur.mark:
                due.append(cur)
            cur.mark = mark
        return due

    def poll(self, cur: _Cursor) -> RunBatch | None:
        """Read what is new for one subscriber (runs on the watcher thread); None when nothing is."""
        store, run_id = self.store, cur.run_id
        first = cur.first
        row = store.get_run(run_id)
        run_changed = row != cur.run
        cur.run = row
        if row is None:
            cur.first = False
            if not (first or run_changed):
                return None
            return RunBatch(cur.sub_id, run_id, first, True, None, None, (), "", False, None)

        if first and not cur.history:
            cur.metric_rowid = store.metric_rowid(run_id)  # one row read: the history is the envelope's
            new = []
        else:
            new = store.metrics(run_id, since_rowid=cur.metric_rowid)
        metrics = None
        if new:
            cur.metric_rowid = max(r["rowid"] for r in new)
            metrics = MetricBatch.from_rows(new)

        evals = store.evals(run_id)
        evals_key = tuple((e["step"], e["attempt"], e["benchmark"], e["subset"], e["t"]) for e in evals)
        evals_changed = evals_key != cur.evals_key
        cur.evals_key = evals_key

        events = store.events(run_id, since_seq=cur.event_seq)  # in time order, so the largest seq may not be last
        if events:
            cur.event_seq = max(e["seq"] for e in events)

        log_text, log_reset = self._read_log(cur) if cur.with_log else ("", False)
        corrupt = {name: n for name in RunPaths.STREAMED
                   if (n := store.stream_state(run_id, name)["corrupt_count"])}
        corrupt_changed = corrupt != cur.corrupt
        cur.corrupt = corrupt
        cur.first = False
        if not (first or run_changed or metrics is not None or evals_changed or events or log_text or log_reset
                or corrupt_changed):
            return None
        return RunBatch(cur.sub_id, run_id, first, False, metrics,
                        tuple(evals) if (evals_changed or first) else None, tuple(events), log_text,
                        log_reset, row if (run_changed or first) else None,
                        corrupt if (corrupt_changed or first) else None, cur.metric_rowid)

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
