"""The run header's progress bar: steps done / total (the Trainer's training_plan event, else the config's
max_steps), an ETA from the measured step time, and the elapsed time, ticking every second without data."""

from __future__ import annotations

import re
import time

from app.gui.run_view import RunView
from core.records import RunPaths
from tests.app.run_feed import StoreFeeder, create_run, metric

WAIT_MS = 10_000


def open_view(qtbot, store, run_id) -> RunView:
    view = RunView(store, run_id)
    qtbot.addWidget(view)
    view.resize(1200, 800)
    view.show()
    qtbot.waitUntil(lambda: view.loaded, timeout=WAIT_MS)
    return view


def eta_s(text: str) -> int:
    m = re.search(r"ETA (?:(\d+)m )?(\d+)s", text)
    assert m, text
    return int(m.group(1) or 0) * 60 + int(m.group(2))


def test_progress_bar_shows_steps_of_the_trainers_total_and_an_eta_that_ticks_without_data(qtbot, store):
    create_run(store, "r1", job_id="1")  # its config says max_steps 40; the Trainer's plan says 120
    now = time.time()
    store.update_run("r1", started_at=now - 17)
    feed = StoreFeeder(store, "r1")
    feed.event("training_plan", {"total_steps": 120, "start_step": 0})
    # 20 steps at 0.5 s each, the last one logged just now
    feed.ingest(RunPaths.METRICS, [metric(s, t0=now - 10.0) for s in range(1, 21)])
    view = open_view(qtbot, store, "r1")
    qtbot.waitUntil(lambda: view.point_count() == 20 and view.progress_bar.isVisible(), timeout=WAIT_MS)
    bar = view.progress_bar
    assert bar.text().startswith("20 / 120 steps · ETA ")
    assert bar.value() == round(1000 * 20 / 120)
    assert view.training_progress.step_s == 0.5
    first_eta = eta_s(bar.text())
    assert 44 <= first_eta <= 50  # 100 steps left x 0.5 s, less the seconds since the last row
    info = view.info_label.text()
    assert re.search(r"running (1[7-9]|2\d)s", info), info

    t = time.monotonic()
    qtbot.wait(2300)  # no data arrives: the clock alone moves the ETA and the elapsed time
    waited = time.monotonic() - t
    assert view.point_count() == 20
    qtbot.wait(50)
    assert waited - 2 <= first_eta - eta_s(bar.text()) <= waited + 2  # it counted down as the seconds passed
    assert view.info_label.text() != info

    feed.ingest(RunPaths.METRICS, [metric(s, t0=time.time() - 20.0) for s in range(21, 41)])  # 40 of 120
    qtbot.waitUntil(lambda: bar.text().startswith("40 / 120 steps"), timeout=WAIT_MS)
    store.update_run("r1", status="finished")
    qtbot.waitUntil(lambda: not view._clock.isActive(), timeout=WAIT_MS)
    assert bar.text() == "40 / 120 steps"  # ended: no ETA
    view.close()


def test_without_a_training_plan_the_total_comes_from_the_configs_max_steps(qtbot, store):
    create_run(store, "r1", job_id="1")  # training.max_steps: 40
    feed = StoreFeeder(store, "r1")
    feed.ingest(RunPaths.METRICS, [metric(s, t0=time.time() - 5.0) for s in range(1, 11)])
    view = open_view(qtbot, store, "r1")
    qtbot.waitUntil(lambda: view.progress_bar.isVisible(), timeout=WAIT_MS)
    assert view.progress_bar.text().startswith("10 / 40 steps · ETA ")
    assert "max_steps" in view.progress_bar.toolTip()
    view.close()


def test_a_run_with_no_known_total_shows_no_bar(qtbot, store):
    create_run(store, "r1", job_id="1", config={"training": {"epochs": 2}, "model": {"name": "tiny"}})
    StoreFeeder(store, "r1").metrics(range(1, 6))
    view = open_view(qtbot, store, "r1")
    qtbot.waitUntil(lambda: view.point_count() == 5, timeout=WAIT_MS)
    assert not view.progress_bar.isVisible() and view.training_progress.total is None
    view.close()
