"""The Runs page at scale: background reads leave nothing behind, and refreshes happen only while the page is
visible, coalesced, never back to back."""

from __future__ import annotations

import os
import threading
import time

from PySide6.QtCore import QThreadPool

from app.gui.main_window import PAGE_NEW_RUN, PAGE_RUNS
from app.gui.runs_page import REFRESH_COALESCE_MS, RunsSnapshot, read_runs
from app.gui.workers import Worker
from core.records import RunPaths
from core.store import POOL_IDLE_MAX
from tests.app.run_feed import StoreFeeder, create_run, evals_at


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _runs(store, n: int = 5, steps: int = 40) -> None:
    for i in range(n):
        create_run(store, f"run{i}", name=f"run {i}")
        feed = StoreFeeder(store, f"run{i}")
        feed.metrics(range(1, steps + 1))
        feed.ingest(RunPaths.EVALS, evals_at(steps, {"all": 0.1 * i}))


def test_a_thousand_background_reads_on_the_thread_pool_leave_no_connection_or_descriptor_behind(qtbot, store):
    _runs(store)
    results: list[RunsSnapshot] = []
    workers: list[Worker] = []  # kept until their queued results are delivered

    def read(ctx, store, pause_s: float = 0.0) -> RunsSnapshot:
        if pause_s:  # hold this thread's connection a while, so the pool's threads hold theirs at once
            store.summary("run0")
            time.sleep(pause_s)
        return read_runs(ctx, store)

    def read_batch(n: int, pause_s: float = 0.0) -> None:
        for _ in range(n):
            worker = Worker(read, store, pause_s)
            worker.signals.finished.connect(lambda _rid, snapshot: results.append(snapshot))
            workers.append(worker.start())
        assert QThreadPool.globalInstance().waitForDone(60_000)
        qtbot.waitUntil(lambda: len(results) == len(workers), timeout=10_000)

    # Slow reads first, so every pool thread holds a connection at the same time: from here on the connections
    # (and their files) a busy pool needs exist; a leak would add two descriptors per read.
    read_batch(4 * QThreadPool.globalInstance().maxThreadCount(), pause_s=0.05)
    fds, conns = _fds(), store.open_connections
    assert conns <= POOL_IDLE_MAX + 1
    for _ in range(20):
        read_batch(50)
        assert (store.open_connections, _fds()) == (conns, fds)
    assert len(results) == len(workers) >= 1000 and all(len(r.rows) == 5 for r in results)
    assert results[-1].rows[0].steps == 40 and results[-1].rows[0].best_pass_at_1 is not None


def test_a_hidden_runs_page_waits_until_shown_to_refresh(main_window, qtbot, store):
    page = main_window.runs_page
    main_window.tabs.setCurrentIndex(PAGE_RUNS)
    main_window.show()
    qtbot.waitUntil(lambda: not page.is_refreshing and page.refresh_count >= 1, timeout=5000)
    main_window.tabs.setCurrentIndex(PAGE_NEW_RUN)
    assert not page.isVisible()
    count = page.refresh_count
    _runs(store, n=2)
    for _ in range(30):  # stream updates while another page is shown
        main_window.events.updated.emit("run0", RunPaths.METRICS, 1)
    qtbot.wait(REFRESH_COALESCE_MS + 300)
    assert page.refresh_count == count and page.model.rows == []
    with qtbot.waitSignal(page.refreshed, timeout=5000):
        main_window.tabs.setCurrentIndex(PAGE_RUNS)
    assert page.refresh_count == count + 1
    assert sorted(r.run_id for r in page.model.rows) == ["run0", "run1"]


def test_refreshes_asked_for_during_a_slow_one_coalesce_into_one_after_a_pause(main_window, qtbot, store):
    """A refresh taking longer than the stream's updates arrive: the requests made meanwhile cost one more
    refresh, which starts only after a pause at least as long as the slow one took."""
    page = main_window.runs_page
    main_window.tabs.setCurrentIndex(PAGE_RUNS)
    main_window.show()
    qtbot.waitUntil(lambda: not page.is_refreshing and page.refresh_count >= 1, timeout=5000)
    _runs(store, n=1)

    class SlowStore:
        """The real store, read through a slow disk: each listing takes 0.8 s."""

        def __init__(self) -> None:
            self.starts: list[float] = []
            self.ends: list[float] = []

        def list_run_summaries(self):
            self.starts.append(time.monotonic())
            time.sleep(0.8)
            rows = store.list_run_summaries()
            self.ends.append(time.monotonic())
            return rows

        def __getattr__(self, name: str):
            return getattr(store, name)

    slow = SlowStore()
    page.store = slow
    count = page.refresh_count
    page.refresh()
    qtbot.waitUntil(lambda: len(slow.starts) == 1, timeout=5000)
    for _ in range(50):  # the stream reports changes all the while
        page.schedule_refresh()
        qtbot.wait(10)
    qtbot.waitUntil(lambda: page.refresh_count == count + 2, timeout=10_000)
    qtbot.wait(REFRESH_COALESCE_MS + 1000)
    assert page.refresh_count == count + 2 and len(slow.starts) == 2  # one follow-up, not fifty
    assert slow.starts[1] - slow.ends[0] >= 0.8 * 0.95  # a pause as long as the refresh took, not back to back
    assert [r.run_id for r in page.model.rows] == ["run0"]
    page.store = store


def test_background_reads_on_plain_threads_share_the_pool(store):
    _runs(store, n=2)
    snapshots = []

    class Ctx:
        request_id = 1
        cancel = threading.Event()

    def work() -> None:
        snapshots.append(read_runs(Ctx(), store))

    threads = [threading.Thread(target=work) for _ in range(200)]
    for t in threads:
        t.start()
        t.join()
    assert len(snapshots) == 200 and all(len(s.rows) == 2 for s in snapshots)
    assert store.open_connections <= POOL_IDLE_MAX + 1


def test_open_run_tabs_follow_a_cli_rename_while_the_runs_page_is_hidden(main_window, qtbot, store):
    _runs(store, n=1)
    main_window.show()
    main_window._titles_timer.setInterval(300)  # 15 s in the app
    view = main_window.open_run("run0")
    assert not main_window.runs_page.isVisible()
    store.update_run("run0", name="renamed by the CLI")  # another process: no signal reaches the window
    qtbot.waitUntil(lambda: main_window.tabs.tabText(main_window.tabs.indexOf(view)) == "renamed by the CLI",
                    timeout=5000)
    main_window.tabs.setCurrentIndex(PAGE_NEW_RUN)
    main_window.close_tab(main_window.tabs.indexOf(view))  # no run tab: the hidden page is left alone
    qtbot.waitUntil(lambda: not main_window.runs_page.is_refreshing, timeout=5000)
    count = main_window.runs_page.refresh_count
    qtbot.wait(1000)
    assert main_window.runs_page.refresh_count == count


def test_best_pass_at_1_and_its_interval_from_the_summary_match_those_from_every_eval_record(store):
    from app.gui.runs_page import _best_point

    create_run(store, "r1")
    feed = StoreFeeder(store, "r1")
    feed.ingest(RunPaths.EVALS, evals_at(10, {"all": 0.25, "clean": 0.3, "contaminated": 0.1}))
    feed.ingest(RunPaths.EVALS, evals_at(20, {"all": 0.4, "clean": 0.45}) + evals_at(20, {"all": 0.35}, "mbpp"))
    feed.ingest(RunPaths.EVALS, evals_at(30, {"all": 0.4, "clean": 0.5}))  # a tie with step 20

    class Ctx:
        request_id = 1
        cancel = threading.Event()

    def check(step: int) -> None:
        row = read_runs(Ctx(), store).rows[0]
        want = _best_point(store.evals("r1"))
        assert (row.best_pass_at_1, row.best_label, row.best_half_width, row.best_tooltip) == \
            (want.pass_at_1, want.benchmark, want.interval.half_width, want.tooltip())
        assert (want.step, want.pass_at_1) == (step, 0.4)

    check(20)  # the tie goes to the earlier checkpoint
    redo = evals_at(20, {"all": 0.2})
    redo[0]["attempt"] = 2  # step 20 evaluated again by a resumed attempt: its 0.4 no longer counts
    feed.ingest(RunPaths.EVALS, redo)
    check(30)
