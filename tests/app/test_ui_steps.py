"""The app's queue of UI steps: one step per event-loop turn, in order, asked twice done once, dropped with
its owner. On a real Qt event loop (offscreen)."""

from __future__ import annotations

import time

from PySide6.QtCore import QTimer

from app.gui.ui_steps import UiSteps


class Owner:
    pass


def test_steps_run_one_per_turn_in_order_and_a_timer_ticks_between_them(qtbot):
    steps = UiSteps()
    done: list[str] = []
    ticks: list[int] = []  # how many steps had run at each tick of a 1 ms timer
    timer = QTimer(interval=1)
    timer.timeout.connect(lambda: ticks.append(len(done)))
    a, b = Owner(), Owner()

    def step(name: str) -> None:
        time.sleep(0.01)  # long enough that the timer is due again after each step
        done.append(name)

    timer.start()
    # two owners' chains (a view's chart builds, another's redraws): still one step per turn between them
    for name in ("a1", "a2"):
        steps.add(a, name, lambda n=name: step(n))
    steps.add(b, "b1", lambda: step("b1"))
    steps.add(a, "a3", lambda: (step("a3"), steps.add(a, "a4", lambda: step("a4"))))
    qtbot.waitUntil(lambda: len(done) == 5, timeout=5000)
    qtbot.wait(20)
    timer.stop()
    assert done == ["a1", "a2", "b1", "a3", "a4"]
    # between any two steps the timer ticked: no turn ran two of them
    assert set(range(1, 6)) <= set(ticks)


def test_a_step_asked_again_keeps_its_place_and_runs_once_and_discard_drops_an_owners_steps(qtbot):
    steps = UiSteps()
    done: list[str] = []
    a, b = Owner(), Owner()
    steps.add(a, "draw", lambda: done.append("old draw"))
    steps.add(b, "build", lambda: done.append("b build"))
    steps.add(a, "draw", lambda: done.append("new draw"))  # replaces the waiting one, keeps its place
    steps.add(a, "pass", lambda: done.append("a pass"))
    assert steps.pending(a, "pass")
    steps.discard(a)
    assert not steps.pending(a, "draw") and steps.pending(b, "build")
    steps.add(a, "draw", lambda: done.append("new draw"))
    qtbot.waitUntil(lambda: len(done) == 2, timeout=5000)
    qtbot.wait(20)
    assert done == ["b build", "new draw"]
