"""The app's one store watcher: one thread and connection for every run view and comparison, woken directly by
the stream, reading only the runs that changed."""

from __future__ import annotations

import threading
import time

from app.gui.compare_view import CompareView
from app.gui.main_window import MainWindow
from app.gui.run_view import RunView
from app.gui.store_watch import StoreWatcher
from tests.app.run_feed import StoreFeeder, create_run

WAIT_MS = 10_000


def watcher_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "store-watch" and t.is_alive()]


def test_every_view_of_the_window_shares_one_watcher_and_an_idle_run_is_never_read_again(qtbot, store):
    for run_id in ("busy", "idle"):
        create_run(store, run_id, job_id="1")
        StoreFeeder(store, run_id).metrics(range(1, 11))
    window = MainWindow(store, offer_demo=False, stream=False)
    qtbot.addWidget(window)
    busy, idle = window.open_run("busy"), window.open_run("idle")
    compare = window.open_compare(["busy", "idle"])
    qtbot.waitUntil(lambda: busy.loaded and idle.loaded and compare.data is not None, timeout=WAIT_MS)
    assert busy.watcher is idle.watcher is compare.watcher is window.watcher
    assert len(watcher_threads()) == 1
    watcher = window.watcher
    idle_reads = watcher.polls_by_run["idle"]
    feed = StoreFeeder(store, "busy")
    for lo in range(11, 41, 10):  # commits on the test's own connection: found by data_version, not told
        feed.metrics(range(lo, lo + 10))
        qtbot.wait(150)
    qtbot.waitUntil(lambda: busy.point_count() == 40 and compare.data.runs[0].summary["steps"] == 40,
                    timeout=WAIT_MS)
    assert idle.point_count() == 10
    assert watcher.polls_by_run["idle"] == idle_reads  # its run did not change: not one read
    quiet = watcher.polls
    qtbot.wait(1200)  # nothing changes anywhere: two poll ticks, and no subscription is read
    assert watcher.polls == quiet
    window.close()
    assert not watcher.running


def test_the_stream_wakes_the_watcher_directly_without_waiting_for_its_poll(qtbot, store):
    create_run(store, "r1", job_id="1")
    feed = StoreFeeder(store, "r1")
    watcher = StoreWatcher(store, poll_s=60.0)  # its own look at the store comes only once a minute
    view = RunView(store, "r1", watcher=watcher)
    qtbot.addWidget(view)
    view.show()
    qtbot.waitUntil(lambda: view.loaded, timeout=WAIT_MS)
    feed.metrics(range(1, 6))
    qtbot.wait(600)
    assert view.point_count() == 0  # not told, not polled yet
    started = time.monotonic()
    threading.Thread(target=watcher.notify, args=("r1", "metrics.jsonl", 5)).start()  # as the streamer calls it
    qtbot.waitUntil(lambda: view.point_count() == 5, timeout=WAIT_MS)
    assert time.monotonic() - started < 5.0
    view.close()
    watcher.stop()
    assert not watcher.running


def test_a_view_of_a_deleted_run_says_so_and_a_comparison_lists_it_as_missing(qtbot, store):
    create_run(store, "kept", status="finished")
    view = RunView(store, "gone")
    qtbot.addWidget(view)
    view.show()
    qtbot.waitUntil(lambda: view.loaded, timeout=WAIT_MS)
    assert "not in the run store" in view.banner.text()
    view.close()
    compare = CompareView(store, ["kept", "gone"])
    qtbot.addWidget(compare)
    qtbot.waitUntil(lambda: compare.data is not None, timeout=WAIT_MS)
    assert [r.run_id for r in compare.data.runs] == ["kept"] and compare.data.missing == ("gone",)
    assert "1 deleted: gone" in compare.state_label.text()
    compare.close()
