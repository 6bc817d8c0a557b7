"""Following a growing file on a machine (`tunedeck logs -f`): across dropped connections, from the byte
where it stopped.

`tail -c +OFFSET -F` is restarted from the last byte delivered whenever its channel ends or the link drops
(sshd restarted, a network change), with backoff while the machine cannot be reached, so every byte is
delivered once and in order. It ends when `stop` is set or when `ended()` says the writer is done and the
file holds nothing past what was delivered.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable

from remote.transport import StreamProcess, Transport, TransportError

log = logging.getLogger(__name__)

RETRY_BACKOFF_S = (0.5, 1.0, 2.0, 4.0, 8.0)
END_CHECK_S = 5.0  # how often `ended()` is asked (a status poll of the run)
READ_WAIT_S = 0.5


def follow_file(transport: Transport, path: str, start: int, on_data: Callable[[bytes], None], *,
                stop: threading.Event, ended: Callable[[], bool],
                on_retry: Callable[[BaseException, float], None] | None = None,
                end_check_s: float = END_CHECK_S, backoff_s: tuple[float, ...] = RETRY_BACKOFF_S) -> int:
    """Deliver the bytes of `path` from `start` on as they are written; returns the offset reached.

    `on_retry(error, delay)` is told of each lost connection before the wait that follows it."""
    pos = start
    failures = 0
    next_check = time.monotonic() + end_check_s
    while not stop.is_set():
        proc: StreamProcess | None = None
        try:
            proc = transport.start(["tail", "-c", f"+{pos + 1}", "-F", path])
            while not stop.is_set():
                chunk = proc.read(READ_WAIT_S)
                if chunk is None:  # the channel ended: start again where we are
                    break
                if chunk:
                    on_data(chunk)
                    pos += len(chunk)
                    failures = 0
                if time.monotonic() >= next_check:
                    next_check = time.monotonic() + end_check_s
                    if ended() and (transport.size(path) or 0) <= pos:
                        return pos
        except TransportError as exc:
            delay = backoff_s[min(failures, len(backoff_s) - 1)]
            failures += 1
            log.info("following %s: %s; again in %.1f s", path, exc, delay)
            if on_retry is not None:
                on_retry(exc, delay)
            stop.wait(delay)
            continue
        finally:
            if proc is not None:
                with contextlib.suppress(Exception):  # closing over a dead link may raise anything
                    proc.close()
        stop.wait(backoff_s[0] if failures else 0.2)  # a channel that ended cleanly: restart at once-ish
    return pos
