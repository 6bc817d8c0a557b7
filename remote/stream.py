"""Streaming a run's record files into the store: exactly once, across drops, restarts and sleeps.

Each streamed file (RunPaths.STREAMED: metrics.jsonl, evals.jsonl, events.jsonl, eval_events.jsonl,
stdout.log) is followed by byte offset; eval_events.jsonl is the evaluation processes' own events file
(events.jsonl has one writer, rank 0 of training) and lands in the same events table. The store keeps
the offset just past the last complete line ingested, in the SAME transaction as the records
(Store.ingest), so whoever resumes (after a dropped connection, an app restart, a laptop sleep) starts
there and every record arrives once. A partial last line is held back until its newline arrives.

Transport: one follower process per run (remote/job/follow.py, shipped in the run bundle, standard library
only) started through Transport.start: it follows all of the run's files and frames what it sends by file
and byte offset, so one SSH channel serves one run (inotify where the kernel offers it, a stat every half
second for shared file systems). When the channel ends it is started again from the stored offsets. Polling
`read_bytes` is the fallback (no python3 on the machine) and the final drain. Bytes are aligned by their file
position, so overlapping deliveries (a restarted follower, a drain racing it) are dropped, never ingested
twice. A file shorter than the stored offset, or replaced, was rewritten: the stream is reset and read again
(the store deduplicates records).
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import sqlite3
import statistics
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.records import FILE_KIND, FeedResult, IncrementalReader, RunPaths
from core.store import TERMINAL_STATUSES, IngestResult, RunRow, Store, StreamConflictError
from remote.job import follow
from remote.transport import LocalTransport, StreamProcess, Transport, TransportError

log = logging.getLogger(__name__)

UpdateCallback = Callable[[str, str, int], None]  # (run_id, file_name, n_new)

RESTART_BACKOFF_S = (0.2, 0.5, 1.0, 2.0, 5.0)
FOLLOWER = f"{RunPaths.JOB_CODE}/remote/job/follow.py"  # the follower's place in a run directory
LOG_CHUNK_MAX = 64 << 10  # stdout without a newline is ingested in pieces this large
FINAL_READ_TRIES = 5  # a run that ended is read to its end this many times before the manager gives up
CATCH_UP_S = 24 * 3600.0  # runs that ended this recently get one final read when a manager starts
HANG_K = 5.0
HANG_MIN_S = 60.0
# Errors the store raises about the data of a record (not about the database or the disk, which are worth
# retrying): a number it cannot bind, text it cannot encode, a record it finds invalid.
_UNSTORABLE = (ValueError, TypeError, OverflowError, UnicodeError, RecursionError, sqlite3.InterfaceError,
               sqlite3.DataError, sqlite3.IntegrityError)


@dataclass(frozen=True)
class HangWarning:
    """No new metric line for `silent_s` while the job runs: a suspected hang (not a state change)."""

    run_id: str
    silent_s: float
    median_step_s: float
    last_step: int | None
    stdout_tail: str

    def message(self) -> str:
        return (f"run {self.run_id}: no new metrics for {self.silent_s:.0f} s (median step {self.median_step_s:.1f} s,"
                f" last step {self.last_step}); suspected hang. Last output:\n{self.stdout_tail}")


class LogReader:
    """IncrementalReader's counterpart for stdout.log: text chunks of whole lines, with their offsets."""

    def __init__(self, offset: int = 0, line_no: int = 0):
        self.offset = offset
        self.line_no = line_no
        self._pending = bytearray()
        self.corrupt_count = 0

    @property
    def pending_bytes(self) -> int:
        return len(self._pending)

    def feed(self, chunk: bytes) -> list[dict[str, Any]]:
        self._pending += chunk
        cut = self._pending.rfind(b"\n") + 1
        if cut == 0 and len(self._pending) >= LOG_CHUNK_MAX:
            # A long line without newline (progress bars): cut it at a character boundary.
            cut = len(self._pending)
            while cut > 0 and (self._pending[cut - 1] & 0xC0) == 0x80:
                cut -= 1
            if cut > 0 and self._pending[cut - 1] >= 0xC0:
                cut -= 1
            cut = cut or len(self._pending)
        if cut == 0:
            return []
        data = bytes(self._pending[:cut])
        del self._pending[:cut]
        start = self.offset
        self.offset += len(data)
        self.line_no += data.count(b"\n")
        return [{"text": data.decode("utf-8", "replace"), "offset": start}]


class _FileState:
    """One followed file: its reader, the committed (stored) position, and the lock both feeders take."""

    def __init__(self, streamer: Streamer, file_name: str):
        self.s = streamer
        self.file_name = file_name
        self.path = f"{streamer.run_dir.rstrip('/')}/{file_name}"
        self.kind = FILE_KIND.get(file_name)
        self.lock = threading.RLock()
        self.need_restart = False
        self.load()

    def load(self) -> None:
        offset, line_no = self.s.store.offset(self.s.run_id, self.file_name)
        self.committed = offset
        self.reader: Any = (IncrementalReader(self.kind, offset=offset, line_no=line_no) if self.kind
                            else LogReader(offset, line_no))

    def rewind(self) -> None:
        """Drop what is held back; the next delivery starts at the committed offset again."""
        with self.lock:
            self.load()

    @property
    def expected(self) -> int:
        return self.reader.offset + self.reader.pending_bytes

    def feed(self, position: int, data: bytes) -> int:
        """Feed bytes that start at file `position`; returns the number of new records stored."""
        with self.lock:
            expected = self.expected
            if position + len(data) <= expected:
                return 0
            if position < expected:
                data = data[expected - position:]
            elif position > expected:
                log.warning("%s of %s: gap at byte %d (expected %d); re-reading", self.file_name, self.s.run_id,
                            position, expected)
                self.need_restart = True
                return 0
            res = None
            if self.kind:
                res = self.reader.feed(data)
                records, corrupt = res.records, len(res.corrupt)
                for c in res.corrupt:
                    log.warning("%s of run %s, line %d: corrupt (%s)", self.file_name, self.s.run_id, c.line_no,
                                c.reason)
            else:
                records, corrupt = self.reader.feed(data), 0
            if self.reader.offset == self.committed:
                return 0
            try:
                try:
                    result = self.s.store.ingest(self.s.run_id, self.file_name, records, self.reader.offset,
                                                 self.reader.line_no, corrupt, expect_offset=self.committed)
                except _UNSTORABLE as exc:
                    if res is None:
                        raise
                    # validate_record should have caught it; whatever the store still refuses is a corrupt
                    # record too (counted, skipped), never a reason to stop the stream and retry forever.
                    result = self._ingest_each(res, exc)
            except StreamConflictError as exc:
                log.info("%s", exc)
                self.load()
                self.need_restart = True
                return 0
            except Exception:
                # The records are not stored: go back to the stored offset and read them again.
                self.load()
                self.need_restart = True
                raise
            self.committed = self.reader.offset
        n = result.inserted if self.kind else len(records)
        if self.kind == "metrics" and records:
            self.s._saw_metrics(records)
        if self.kind == "evals" and result.inserted:
            self.s._saw_evals(records)
        if n and self.s.on_update is not None:
            try:
                self.s.on_update(self.s.run_id, self.file_name, n)
            except Exception:  # a callback's bug must not stop the stream
                log.exception("on_update callback failed")
        return n

    def _ingest_each(self, res: FeedResult, batch_error: BaseException) -> IngestResult:
        """Ingest a batch the store refused one record at a time; the records it refuses count as corrupt
        lines. Each step commits its offset, so the stream resumes correctly whenever it stops."""
        store, run_id, name = self.s.store, self.s.run_id, self.file_name
        inserted = duplicates = 0
        corrupt = len(res.corrupt)  # the reader's corrupt lines of this batch, stored with the last step
        pending = 0  # refused records not yet counted in the store
        for rec, offset, line_no in zip(res.records, res.offsets, res.line_nos, strict=True):
            try:
                one = store.ingest(run_id, name, [rec], offset, line_no, pending, expect_offset=self.committed)
            except _UNSTORABLE as exc:
                log.warning("%s of run %s, line %d: corrupt (the run store cannot hold it: %s: %s)", name, run_id,
                            line_no, type(exc).__name__, exc)
                pending += 1
                continue
            self.committed, pending = offset, 0
            inserted, duplicates = inserted + one.inserted, duplicates + one.duplicates
        store.ingest(run_id, name, [], self.reader.offset, self.reader.line_no, corrupt + pending,
                     expect_offset=self.committed)
        log.info("%s of run %s: a batch the store refused (%s) was stored record by record", name, run_id,
                 batch_error)
        return IngestResult(inserted=inserted, duplicates=duplicates)

    def restart_from_zero(self, size: int) -> None:
        """The follower found the file shrunk or replaced and sends it again from byte 0."""
        with self.lock:
            log.warning("%s of run %s was rewritten (now %d bytes; stored offset %d): reading it again",
                        self.file_name, self.s.run_id, size, self.committed)
            self.s.store.reset_stream(self.s.run_id, self.file_name)
            self.load()

    def check_truncated(self, size: int | None) -> bool:
        with self.lock:
            if size is not None and size < self.committed:
                log.warning("%s of run %s shrank to %d bytes (stored offset %d): truncated or rewritten; "
                            "reading it again", self.file_name, self.s.run_id, size, self.committed)
                self.s.store.reset_stream(self.s.run_id, self.file_name)
                self.load()
                self.need_restart = True
                return True
        return False

    def drain(self, max_bytes: int = 8 << 20) -> int:
        """Read everything new by polling (read_bytes) up to the current end of file."""
        total = 0
        with self.lock:
            size = self.s.transport.size(self.path)
            if size is None:
                return 0
            self.check_truncated(size)
            while True:
                start = self.expected
                if start >= size:
                    break
                data = self.s.transport.read_bytes(self.path, start, min(max_bytes, size - start))
                if not data:
                    break
                total += self.feed(start, data)
        return total


class Streamer:
    """Follows one run's streamed files into the store: one follower process (one channel) when started."""

    def __init__(self, store: Store, transport: Transport, run_id: str, run_dir: str, *,
                 on_update: UpdateCallback | None = None, follow: bool = True, poll_s: float = 1.0,
                 files: tuple[str, ...] = RunPaths.STREAMED, python: str | None = None):
        self.store = store
        self.transport = transport
        self.run_id = run_id
        self.run_dir = run_dir
        self.on_update = on_update
        self.follow = follow
        self.poll_s = poll_s
        # The follower needs only the standard library: this interpreter here, any python3 on a cluster.
        self.python = python or (sys.executable if isinstance(transport, LocalTransport) else "python3")
        self.files = {name: _FileState(self, name) for name in files}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._proc: StreamProcess | None = None
        self._proc_lock = threading.Lock()
        self._inline_follower = False  # the run's bundle has no follower (an older TuneDeck launched it)
        self._bundled_seen = False
        # Hang watchdog inputs: arrival time of the last new metric, and recent (step, t) pairs.
        self.started_at = time.monotonic()
        self.last_metric_at: float | None = None
        self._steps: deque[tuple[int, float]] = deque(maxlen=64)
        self.last_step: int | None = None
        self.hang_reported = False

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=f"stream-{self.run_id}", daemon=True)
        self._thread.start()

    def request_stop(self) -> None:
        """Ask the follower thread to end (it closes its own channel within a read timeout); see stop()."""
        self._stop.set()

    def stop(self, timeout: float = 10.0) -> None:
        """End following and wait for it. Stopping several streamers: request_stop() each first, then
        stop() each, so that their channels close in parallel."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        with self._proc_lock:
            proc = self._proc  # still there only if the thread did not end in time
        if proc is not None:
            with contextlib.suppress(Exception):
                proc.close()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def drain(self) -> dict[str, int]:
        """One polling pass over every file to its current end: {file: new records}."""
        return {name: st.drain() for name, st in self.files.items()}

    # ------------------------------------------------------------------ following

    def _run(self) -> None:
        failures = 0
        while not self._stop.is_set():
            try:
                got = self._follow_remote() if self.follow else self._follow_poll()
                failures = 0 if got else failures + 1
            except Exception as exc:  # noqa: BLE001 -- thread boundary: log, back off, resume from the stored offsets
                failures += 1
                log.warning("streaming run %s: %s (retrying)", self.run_id, exc)
            if self._stop.is_set():
                break
            for st in self.files.values():
                st.rewind()
            self._stop.wait(RESTART_BACKOFF_S[min(failures, len(RESTART_BACKOFF_S) - 1)])

    def follower_argv(self) -> list[str]:
        """The command that starts this run's follower from the stored offsets: the run bundle's copy, or this
        installation's (sent inline) for a run whose bundle has none."""
        python = self.python
        starts = [f"{name}={st.committed}" for name, st in self.files.items()]
        bundled = f"{self.run_dir.rstrip('/')}/{FOLLOWER}"
        if not self._inline_follower and not self._bundled_seen:
            self._inline_follower = self.transport.size(bundled) is None
            self._bundled_seen = not self._inline_follower
        if self._inline_follower:
            return [python, "-u", "-c", Path(follow.__file__).read_text(encoding="utf-8"), self.run_dir, *starts]
        return [python, "-u", bundled, self.run_dir, *starts]

    def _follow_remote(self) -> bool:
        """Run one follower until its channel ends (or a stream must restart); True if bytes arrived."""
        for st in self.files.values():
            st.rewind()
            st.need_restart = False
        by_index = list(self.files.values())
        try:
            proc = self.transport.start(self.follower_argv())
        except FileNotFoundError:  # this machine (LocalTransport) has no such interpreter
            self._no_follower(None)
            return False
        with self._proc_lock:
            self._proc = proc
        decoder = follow.FrameDecoder()
        hello = False
        got = False
        try:
            while not self._stop.is_set():
                try:
                    data = proc.read(0.5)
                except (TransportError, OSError, EOFError) as exc:
                    log.info("follower of run %s ended: %s", self.run_id, exc)
                    break
                if data is None:
                    if not hello:
                        self._no_follower(proc)
                    break
                for frame in decoder.feed(data) if data else ():
                    kind = frame[0]
                    if kind == "data":
                        got = True
                        by_index[frame[1]].feed(frame[2], frame[3])
                    elif kind == "truncated":
                        by_index[frame[1]].restart_from_zero(frame[2])
                    elif kind == "hello":
                        hello = True
                        if frame[1] != follow.PROTOCOL_VERSION and not self._inline_follower:
                            log.info("run %s: its bundled follower speaks protocol %d, not %d: sending ours",
                                     self.run_id, frame[1], follow.PROTOCOL_VERSION)
                            self._inline_follower = True
                            return got
                if any(st.need_restart for st in by_index):
                    break
        finally:
            with self._proc_lock:
                self._proc = None
            with contextlib.suppress(Exception):
                proc.close()
        return got

    def _no_follower(self, proc: StreamProcess | None) -> None:
        """The follower ended before saying hello: without a python3 there, poll the files instead."""
        if proc is None or proc.returncode == 127:
            log.warning("run %s: no python3 on %s to follow the run with; polling its files every %g s instead",
                        self.run_id, self.transport.name, self.poll_s)
            self.follow = False

    def _follow_poll(self) -> bool:
        got = False
        while not self._stop.is_set():
            for st in self.files.values():
                before = st.expected
                st.drain()
                got = got or st.expected != before
                st.need_restart = False
            self._stop.wait(self.poll_s)
        return got

    # ------------------------------------------------------------------ per-sample results

    def _saw_evals(self, records: list[dict[str, Any]]) -> None:
        """New evals records: copy their per-sample files into the store (the evaluation writes the file
        before the records, so it is there). A failure is logged: `ensure_eval_samples` fetches it later."""
        from remote.samples import copy_eval_samples

        for step, benchmark in dict.fromkeys((int(r["step"]), str(r["benchmark"])) for r in records):
            try:
                copy_eval_samples(self.store, self.transport, self.run_id, self.run_dir, step, benchmark)
            except Exception as exc:  # noqa: BLE001 -- per-sample results are fetched again on demand
                log.warning("per-sample results of run %s step %d (%s) not copied: %s", self.run_id, step,
                            benchmark, exc)

    # ------------------------------------------------------------------ hang watchdog

    def _saw_metrics(self, records: list[dict[str, Any]]) -> None:
        self.last_metric_at = time.monotonic()
        self.hang_reported = False
        for rec in records:
            self._steps.append((int(rec["step"]), float(rec["t"])))
            self.last_step = int(rec["step"])

    def median_step_s(self) -> float | None:
        steps = list(self._steps)
        per_step = [(t2 - t1) / (s2 - s1) for (s1, t1), (s2, t2) in itertools.pairwise(steps)
                    if s2 > s1 and t2 >= t1]
        return statistics.median(per_step) if per_step else None

    def check_hang(self, k: float = HANG_K, min_s: float = HANG_MIN_S, now: float | None = None
                   ) -> HangWarning | None:
        """A HangWarning (once per silence) when no metric arrived for max(k * median step, min_s)."""
        median = self.median_step_s()
        if median is None or self.last_metric_at is None or self.hang_reported:
            return None
        now = time.monotonic() if now is None else now
        silent = now - self.last_metric_at
        if silent < max(k * median, min_s):
            return None
        self.hang_reported = True
        return HangWarning(self.run_id, silent, median, self.last_step, self.store.log_tail(self.run_id, 4000))


class StreamManager:
    """Streams every active run in the background and polls their status (one query per cluster).

    Callbacks run on background threads (the GUI re-emits them as Qt signals): on_update(run_id, file,
    n_new), on_status(row) when a run's state changed, on_hang(HangWarning).
    """

    def __init__(self, store: Store, *, on_update: UpdateCallback | None = None,
                 on_status: Callable[[RunRow], None] | None = None,
                 on_hang: Callable[[HangWarning], None] | None = None, poll_s: float = 5.0,
                 follow: bool = True, transports: dict[str, Transport] | None = None,
                 hang_k: float = HANG_K, hang_min_s: float = HANG_MIN_S):
        from remote.runs import StatusPoller

        self.store = store
        self.on_update = on_update
        self.on_status = on_status
        self.on_hang = on_hang
        self.poll_s = poll_s
        self.follow = follow
        self.transports = dict(transports or {})
        self.hang_k = hang_k
        self.hang_min_s = hang_min_s
        self.poller = StatusPoller(store, interval_s=poll_s, transports=self.transports)
        self.streamers: dict[str, Streamer] = {}
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self.errors: dict[str, str] = {}
        self._caught_up = False
        self._drain_failures: dict[str, int] = {}
        self._states: dict[str, tuple[str, str | None]] = {}  # (status, reason) last reported per run

    def transport(self, cluster: str) -> Transport:
        if cluster not in self.transports:
            from remote.profiles import get_profile, transport_for

            self.transports[cluster] = transport_for(get_profile(cluster))
        return self.transports[cluster]

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="stream-manager", daemon=True)
        self._thread.start()

    def wake(self) -> None:
        """Poll now (e.g. right after a launch)."""
        self._wake.set()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(30)
        stop_all(list(self.streamers.values()))
        self.streamers.clear()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.step()
            except Exception:  # thread boundary: log and keep going
                log.exception("stream manager step failed")
            self._wake.wait(min(self.poll_s, 1.0))
            self._wake.clear()

    def step(self) -> list[str]:
        """Poll statuses, start streamers for active runs, drain and stop ended ones; returns active ids."""
        changed = self.poller.poll()
        self.errors = dict(self.poller.last_errors)
        ended = [row for row in changed.values() if row.status in TERMINAL_STATUSES]
        if not self._caught_up:
            # Runs that ended recently while nobody streamed them (the app was closed, `tunedeck status`
            # saw the end): one final read each, so the charts are complete.
            self._caught_up = True
            recent = time.time() - CATCH_UP_S
            ended += [row for row in self.store.list_runs() if row.is_terminal and row.run_dir and row.job_id
                      and (row.finished_at or 0) >= recent and row.run_id not in changed]
        for row in ended:
            if row.run_id not in self.streamers and row.cluster:
                # Ended before we followed it: one final read so nothing written before the end is missed.
                try:
                    self.streamers[row.run_id] = Streamer(self.store, self.transport(row.cluster), row.run_id,
                                                          row.run_dir, on_update=self.on_update,
                                                          follow=self.follow)
                except Exception as exc:  # noqa: BLE001 -- an unknown profile: report, keep the others going
                    self.errors[row.cluster] = str(exc)
        for row in changed.values():
            # The poller returns every run it polled; callers hear only of a state they have not seen.
            state = (row.status, row.status_reason)
            if self._states.get(row.run_id) == state:
                continue
            self._states[row.run_id] = state
            if self.on_status is not None:
                try:
                    self.on_status(row)
                except Exception:
                    log.exception("on_status callback failed")
        active = []
        for row in self.store.list_runs():
            if not (row.run_dir and row.job_id and row.cluster):
                continue
            streamer = self.streamers.get(row.run_id)
            if row.status in TERMINAL_STATUSES:
                if streamer is not None:
                    self._finish(streamer, row)
                continue
            active.append(row.run_id)
            if streamer is None:
                try:
                    transport = self.transport(row.cluster)
                except Exception as exc:  # noqa: BLE001 -- an unknown profile: report, keep the others going
                    self.errors[row.cluster] = str(exc)
                    continue
                streamer = Streamer(self.store, transport, row.run_id, row.run_dir, on_update=self.on_update,
                                    follow=self.follow)
                self.streamers[row.run_id] = streamer
                streamer.start()
            if row.status == "running" and self.on_hang is not None:
                warning = streamer.check_hang(self.hang_k, self.hang_min_s)
                if warning is not None:
                    log.warning("%s", warning.message())
                    self.on_hang(warning)
        return active

    def _finish(self, streamer: Streamer, row: RunRow) -> None:
        """The run ended: stop following, then read what is left up to the end of every file."""
        streamer.stop()
        try:
            streamer.drain()
        except Exception as exc:  # noqa: BLE001 -- the final drain is retried on the next steps
            n = self._drain_failures.get(row.run_id, 0) + 1
            self._drain_failures[row.run_id] = n
            if n < FINAL_READ_TRIES:
                log.warning("final read of run %s failed (try %d, will retry): %s", row.run_id, n, exc)
                return
            log.warning("final read of run %s failed %d times; giving up (`tunedeck sync` reads the rest): %s",
                        row.run_id, n, exc)
            self.errors[row.cluster or "?"] = str(exc)
        self._drain_failures.pop(row.run_id, None)
        del self.streamers[row.run_id]

    def run_until_idle(self, timeout: float | None = None, stop: threading.Event | None = None) -> bool:
        """Step in this thread until no run is active (True) or the timeout/stop flag (False)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            active = self.step()
            if not active and not self.streamers:
                return True
            if (deadline is not None and time.monotonic() >= deadline) or (stop is not None and stop.is_set()):
                return False
            time.sleep(min(self.poll_s, 1.0))


def stop_all(streamers: list[Streamer]) -> None:
    """Stop streamers together: each closes its own channel at once, not one after another."""
    for s in streamers:
        s.request_stop()
    for s in streamers:
        s.stop()


def sync_all(store: Store, *, profile: str | None = None, transports: dict[str, Transport] | None = None,
             progress: Callable[[str], None] | None = None) -> dict[str, dict[str, int]]:
    """`tunedeck sync`: refresh statuses, then pull every run's new records into the store.

    Returns {run_id: {file: new records}}; a run whose machine cannot be reached is logged and skipped
    (its error under the key "error"), one that failed for a reason of its own has it under "failed" (the
    other runs of its cluster are still synced).
    """
    from remote.runs import refresh_status

    transports = dict(transports or {})
    errors: dict[str, str] = {}
    refresh_status(store, profile, transports=transports, errors=errors)
    out: dict[str, dict[str, int]] = {}
    for row in store.list_runs():
        if not (row.run_dir and row.job_id and row.cluster) or (profile and row.cluster != profile):
            continue
        if row.cluster in errors:
            out[row.run_id] = {"error": errors[row.cluster]}  # type: ignore[dict-item]
            continue
        try:
            if row.cluster not in transports:
                from remote.profiles import get_profile, transport_for

                transports[row.cluster] = transport_for(get_profile(row.cluster))
        except Exception as exc:  # noqa: BLE001 -- an unknown profile: its runs are skipped, the others go on
            errors[row.cluster] = str(exc)
            out[row.run_id] = {"error": str(exc)}  # type: ignore[dict-item]
            continue
        try:
            out[row.run_id] = Streamer(store, transports[row.cluster], row.run_id, row.run_dir).drain()
        except TransportError as exc:  # the machine is unreachable: skip its other runs at once
            log.warning("sync of run %s failed: %s", row.run_id, exc)
            errors[row.cluster] = str(exc)
            out[row.run_id] = {"error": str(exc)}  # type: ignore[dict-item]
        except Exception as exc:  # noqa: BLE001 -- this run's problem: the cluster's other runs still sync
            log.warning("sync of run %s failed: %s", row.run_id, exc)
            out[row.run_id] = {"failed": f"{type(exc).__name__}: {exc}"}  # type: ignore[dict-item]
        if progress:
            progress(f"{row.run_id}: {out[row.run_id]}")
    return out
