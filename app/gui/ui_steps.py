"""UI work split into steps that run one per event-loop turn, for the whole app.

A view that opens builds charts, creates curves and redraws them with a read in several steps, so that no turn
holds the UI thread long. Each view chaining its own zero-delay timers is not enough: Qt fires every due timer
in one pass, so two chains (a view's chart builds and its pass@1 charts, a comparison's grid and the chart
feed's redraws) ran back to back and made one stall of their sum. One queue for the app runs one step per turn
whoever asked for it; between steps the event loop paints, handles input and runs other timers.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable

from PySide6.QtCore import QObject, QTimer

_STEPS: UiSteps | None = None


class UiSteps(QObject):
    """An ordered queue of (owner, name) -> step; one step runs per event-loop turn."""

    def __init__(self, parent: QObject | None = None):
        super().__init__(parent)
        self._steps: dict[tuple[int, Hashable], tuple[object, Callable[[], object]]] = {}
        self._timer = QTimer(self, singleShot=True, interval=0)
        self._timer.timeout.connect(self._run_one)

    def add(self, owner: object, name: Hashable, step: Callable[[], object]) -> None:
        """Run `step` in a turn of its own. A step of the same owner and name still waiting keeps its place in
        the queue and runs the new `step` instead (asked twice, done once)."""
        key = (id(owner), name)
        self._steps[key] = (owner, step)  # an existing key keeps its position in the dict
        if not self._timer.isActive():
            self._timer.start()

    def pending(self, owner: object, name: Hashable) -> bool:
        return (id(owner), name) in self._steps

    def discard(self, owner: object) -> None:
        """Drop every waiting step of `owner` (a view closing)."""
        for key in [k for k, (o, _s) in self._steps.items() if o is owner]:
            del self._steps[key]

    def _run_one(self) -> None:
        if not self._steps:
            return
        key = next(iter(self._steps))
        _owner, step = self._steps.pop(key)
        try:
            step()
        finally:
            if self._steps:
                # (re)started once the step is done, also when the step added one: a zero timer started earlier
                # would be due before other timers that fell due during the step, and run first, in the same pass
                self._timer.start()


def ui_steps() -> UiSteps:
    """The app's queue (created on first use, once the QApplication exists)."""
    global _STEPS
    if _STEPS is None:
        _STEPS = UiSteps()
    return _STEPS
