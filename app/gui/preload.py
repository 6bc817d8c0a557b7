"""Import the chart stack (numpy, pyqtgraph and the views built on them) on a background thread at app start.

The main window starts without them (its start stays fast), but the first run tab needs them: imported on the
UI thread at that moment they froze the window for 1-3 s (measured in a fresh process by
tests/app/test_first_run_tab.py: ~1.3 s on 2 loaded cores). Imported here while the user reads the Runs page,
the first tab only builds its widgets. Importing a module defines classes and module-level values; no Qt
object is created off the UI thread (pyqtgraph makes none at import)."""

from __future__ import annotations

import importlib
import logging
import threading

log = logging.getLogger(__name__)

PRELOADED = ("numpy", "numpy.ma", "pyqtgraph", "core.series", "app.gui.store_watch", "app.gui.charts",
             "app.gui.run_view",
             "app.gui.compare_view")


class Preloader:
    """The preload thread; `done` is set once every module is imported (or failed to: the UI thread then
    imports it when needed and reports the error there)."""

    def __init__(self, modules: tuple[str, ...] = PRELOADED):
        self.modules = modules
        self.done = threading.Event()
        self.failed: dict[str, str] = {}
        self.thread = threading.Thread(target=self._run, name="tunedeck-preload", daemon=True)

    def start(self) -> Preloader:
        self.thread.start()
        return self

    def _run(self) -> None:
        try:
            for name in self.modules:
                try:
                    importlib.import_module(name)
                except Exception as exc:  # noqa: BLE001 -- a thread boundary: logged; the UI's own import raises it
                    self.failed[name] = f"{type(exc).__name__}: {exc}"
                    log.warning("preloading %s failed: %s", name, exc)
        finally:
            self.done.set()
