"""Background work for the GUI: a QRunnable on the global QThreadPool whose signals live on a QObject.

Modelled on superqt's WorkerBase: the work function gets a `WorkContext` with a cancel flag
(a threading.Event the work checks) and a `progress(done, total)` callback; the result, an error
message or the cancellation comes back as a Qt signal, delivered on the UI thread.
"""

from __future__ import annotations

import itertools
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from PySide6.QtCore import QObject, QRunnable, QThreadPool, Signal

from core.cancel import Cancelled

log = logging.getLogger(__name__)
_request_ids = itertools.count(1)


@dataclass(frozen=True)
class WorkContext:
    """What the work function receives: its request id, the cancel flag and a progress callback."""

    request_id: int
    cancel: threading.Event
    progress: Callable[[int, int], None] = field(compare=False)


class WorkerSignals(QObject):
    started = Signal(int)  # request id
    progress = Signal(int, object, object)  # request id, done, total (objects: byte counts exceed 32 bits)
    finished = Signal(int, object)  # request id, result
    failed = Signal(int, str)  # request id, message
    cancelled = Signal(int)  # request id


class Worker(QRunnable):
    """Run `fn(ctx, *args, **kwargs)` off the UI thread; connect to `signals` before `start()`."""

    def __init__(self, fn: Callable[..., Any], *args: Any, **kwargs: Any):
        super().__init__()
        # autoDelete stays on: the pool deletes the C++ runnable after run(), never while it runs (a Python
        # owner dropping its last reference mid-run would). What callers keep using lives on the Python side:
        # the signals QObject, the cancel flag, the request id.
        self._fn, self._args, self._kwargs = fn, args, kwargs
        self.request_id = next(_request_ids)
        self.cancel_event = threading.Event()
        self.signals = WorkerSignals()
        self.done = threading.Event()

    def cancel(self) -> None:
        self.cancel_event.set()

    @property
    def is_cancelled(self) -> bool:
        return self.cancel_event.is_set()

    def start(self, pool: QThreadPool | None = None) -> Worker:
        (pool or QThreadPool.globalInstance()).start(self)
        return self

    def _progress(self, done: int, total: int) -> None:
        self.signals.progress.emit(self.request_id, int(done), int(total))

    def run(self) -> None:  # runs on a pool thread
        rid = self.request_id
        try:
            self.signals.started.emit(rid)
            ctx = WorkContext(rid, self.cancel_event, self._progress)
            result = self._fn(ctx, *self._args, **self._kwargs)
        except Exception as exc:  # thread boundary: log and report, never let it vanish
            if isinstance(exc, Cancelled) or (self.is_cancelled and isinstance(exc, InterruptedError)):
                self.signals.cancelled.emit(rid)
            else:
                log.exception("background work %s failed", getattr(self._fn, "__name__", self._fn))
                self.signals.failed.emit(rid, f"{type(exc).__name__}: {exc}" if not str(exc) else str(exc))
        else:
            if self.is_cancelled:
                self.signals.cancelled.emit(rid)
            else:
                self.signals.finished.emit(rid, result)
        finally:
            self.done.set()
