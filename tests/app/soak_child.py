"""The soak's child process: a run view fed at 20 Hz through the real store and watcher for SOAK_S seconds.

Run by tests/app/test_soak.py in a subprocess, so that an abort (PySide6 6.12.0's None-refcount bug kills
the interpreter with "Fatal Python error: none_dealloc") fails the test with this process's output.
Prints one JSON line: RSS samples after warm-up and what was streamed.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

RATE_HZ = 20.0
PAGE = os.sysconf("SC_PAGE_SIZE")


def rss_bytes() -> int:
    with open("/proc/self/statm", encoding="ascii") as f:
        return int(f.read().split()[1]) * PAGE


def main() -> int:
    duration = float(sys.argv[1])
    warmup = min(30.0, duration / 5)
    home = Path(tempfile.mkdtemp(prefix="tunedeck-soak-"))
    os.environ["TUNEDECK_HOME"] = str(home)
    from PySide6.QtCore import QTimer

    from app.gui.app import create_app
    from app.gui.run_view import RunView
    from app.gui.store_watch import StoreWatcher
    from core.store import Store
    from tests.app.run_feed import StoreFeeder, create_run

    app = create_app()
    store = Store(home / "store.sqlite3")
    create_run(store, "soak", name="soak", job_id="1")
    feed = StoreFeeder(store, "soak")
    # The watcher polls as fast as the feed, so the charts are updated at 20 Hz.
    watcher = StoreWatcher(store, poll_s=1 / RATE_HZ, min_gap_s=1 / RATE_HZ)
    view = RunView(store, "soak", watcher=watcher)
    view.resize(1280, 800)
    view.show()

    stop = threading.Event()
    fed = {"steps": 0}

    def feeder() -> None:
        step = 0
        next_t = time.monotonic()
        while not stop.is_set():
            step += 1
            feed.metrics([step])
            feed.log(f"[rank0] step {step} loss {1.0 / step:.5f}\n")
            if step % 200 == 0:
                feed.evals(step, {"all": 0.3, "clean": 0.25, "contaminated": 0.6})
            fed["steps"] = step
            next_t += 1 / RATE_HZ
            stop.wait(max(0.0, next_t - time.monotonic()))

    samples: list[tuple[float, int]] = []
    start = time.monotonic()

    def sample() -> None:
        samples.append((time.monotonic() - start, rss_bytes()))
        if time.monotonic() - start >= duration and not stop.is_set():
            stop.set()
            thread.join(5)
            drain_until = time.monotonic() + 10
            drain = QTimer(interval=50)

            def caught_up() -> None:  # the last records fed are shown before the verdict
                if view.point_count() >= fed["steps"] or time.monotonic() > drain_until:
                    drain.stop()
                    app.quit()

            drain.timeout.connect(caught_up)
            drain.start()
            samples_timer.stop()

    thread = threading.Thread(target=feeder, name="soak-feed", daemon=True)
    thread.start()
    samples_timer = QTimer(interval=1000)
    samples_timer.timeout.connect(sample)
    samples_timer.start()
    app.exec()
    thread.join(5)
    view.close()
    after = [rss for t, rss in samples if t >= warmup]
    print(json.dumps({
        "duration_s": duration, "warmup_s": warmup, "steps_fed": fed["steps"], "points_shown": view.point_count(),
        "watcher_polls": watcher.polls, "rss_warm_mb": after[0] / 2**20 if after else None,
        "rss_end_mb": after[-1] / 2**20 if after else None, "rss_max_mb": max(after) / 2**20 if after else None,
    }), flush=True)
    store.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
