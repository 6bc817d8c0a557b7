"""The contamination check in a child process, for the GUI (no Qt here: the child imports only this module).

Measured (tests/app/test_contamination_page.py, 50 MB corpus): run in a thread, the matcher's Python-level
work competes with the UI thread for the GIL and the UI stalled up to 75 ms (sampled) and 158 ms
(exhaustive); in a child process the UI thread stays free. Progress and the result come back through a
multiprocessing queue; cancel is a multiprocessing Event that core.decontam checks like a threading.Event.
"""

from __future__ import annotations

import logging
import multiprocessing
import queue as queue_module
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from core.cancel import Cancelled

log = logging.getLogger(__name__)

PROGRESS_MIN_INTERVAL_S = 0.05  # at most 20 progress messages per second
POLL_S = 0.05
CANCEL_GRACE_S = 10.0  # after this the child is terminated


@dataclass(frozen=True)
class CheckRequest:
    """What the check needs (built on the UI thread, read by the worker and the child)."""

    train_paths: tuple[str, ...]
    eval_specs: tuple[str, ...]  # "humaneval", "mbpp=PATH", ...
    mode: str = "sampled"
    seed: int = 0
    fields: tuple[str, ...] | None = None
    jobs: int = 1
    allow_no_text: bool = False  # a file without text gives a report marked NO TEXT CHECKED, not an error


@dataclass(frozen=True)
class CheckResult:
    """The report plus, per matched training row, its text fields (to show beside the eval question)."""

    report: dict[str, Any]
    rows: dict[int, dict[str, str]] = field(default_factory=dict)  # train_index -> {field: raw text}
    seconds: float = 0.0
    flagged: dict[tuple[int, int], list[int]] = field(default_factory=dict)  # for core.decontam.write_clean


def matched_row_texts(train_paths: tuple[str, ...], indices: set[int], fields: tuple[str, ...] | None,
                      cancel: Any) -> dict[int, dict[str, str]]:
    """The text fields of the training rows at `indices` (0-based over the files in order), read with
    core.decontam's reader so that the field names and texts are the ones the matcher saw."""
    from core.decontam.reader import iter_rows, plan_units, row_segments

    out: dict[int, dict[str, str]] = {}
    if not indices:
        return out
    last = max(indices)
    index = 0
    for file_index, path in enumerate(train_paths):
        for unit in plan_units(file_index, path):
            for where, row, _done in iter_rows(unit):
                if index in indices:
                    # A text too long to hold (a LongText) is left out: the page then shows the matched text
                    # alone, not hundreds of MB in a text view.
                    out[index] = {name: text for name, text in row_segments(row, list(fields) if fields else None,
                                                                             unit, where) if isinstance(text, str)}
                index += 1
                if index > last or cancel.is_set():
                    return out
    return out


def compute(request: CheckRequest, progress: Callable[[int, int], None], cancel: Any) -> CheckResult:
    """core.decontam's scan with throttled progress, then the matched rows' texts."""
    from core.decontam import scan

    started = time.monotonic()
    last = [0.0]

    def throttled(done: int, total: int | None) -> None:
        now = time.monotonic()
        if now - last[0] >= PROGRESS_MIN_INTERVAL_S or (total and done >= total):
            last[0] = now
            progress(done, total or 0)

    report, flagged = scan(list(request.train_paths), list(request.eval_specs),
                           fields=list(request.fields) if request.fields else None, mode=request.mode,
                           seed=request.seed, jobs=request.jobs, progress=throttled, cancel=cancel,
                           allow_no_text=request.allow_no_text)
    indices = {m["train_index"] for item in report.get("items", []) for m in item.get("matches", [])}
    rows = matched_row_texts(request.train_paths, indices, request.fields, cancel)
    if cancel.is_set():
        raise Cancelled()
    return CheckResult(report, rows, time.monotonic() - started, flagged)


def _child(request: CheckRequest, out: Any, cancel: Any) -> None:
    try:
        result = compute(request, lambda d, t: out.put(("progress", d, t)), cancel)
    except Cancelled:
        out.put(("cancelled",))
    except Exception as exc:  # process boundary: report it to the parent, which shows it
        log.exception("contamination check failed")
        out.put(("error", str(exc) or type(exc).__name__))
    else:
        out.put(("done", result))


def run_in_process(request: CheckRequest, progress: Callable[[int, int], None], cancel: threading.Event) -> CheckResult:
    """Run `compute` in a spawned child; returns its result, raises Cancelled or RuntimeError."""
    mp = multiprocessing.get_context("spawn")  # never fork a process that runs Qt
    out = mp.Queue()
    child_cancel = mp.Event()
    proc = mp.Process(target=_child, args=(request, out, child_cancel), name="tunedeck-decontam", daemon=True)
    proc.start()
    cancel_at: float | None = None
    try:
        while True:
            if cancel.is_set() and cancel_at is None:
                child_cancel.set()
                cancel_at = time.monotonic()
            if cancel_at is not None and time.monotonic() - cancel_at > CANCEL_GRACE_S:
                proc.terminate()
                raise Cancelled()
            try:
                message = out.get(timeout=POLL_S)
            except queue_module.Empty:
                if not proc.is_alive() and out.empty():
                    raise RuntimeError(f"the contamination check process ended unexpectedly (exit code {proc.exitcode})") from None
                continue
            kind = message[0]
            if kind == "progress":
                progress(message[1], message[2])
            elif kind == "done":
                return message[1]
            elif kind == "cancelled":
                raise Cancelled()
            else:
                raise RuntimeError(message[1])
    finally:
        proc.join(5)
        if proc.is_alive():
            proc.terminate()
            proc.join(5)
        out.close()
