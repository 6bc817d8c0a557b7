"""Child process of test_first_run_tab: a fresh interpreter (nothing imported yet, as when the app starts)
opens the main window, waits `--settle` seconds, then opens the first run tab while a 5 ms timer measures the
longest UI-thread stall (tests/app/test_responsiveness.py's StallMeter). Prints one JSON line."""

from __future__ import annotations

import json
import os
import sys
import time

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")


def main() -> None:
    store_path, settle_s = sys.argv[1], float(sys.argv[2])
    from PySide6.QtCore import QTimer

    from app.gui.app import create_app

    app = create_app()
    from app.gui.main_window import MainWindow
    from core.store import Store

    store = Store(store_path)
    window = MainWindow(store, offer_demo=False, stream=False)
    window.resize(1360, 880)
    window.show()
    loaded_at_show = "pyqtgraph" in sys.modules
    from tests.app.test_responsiveness import StallMeter  # after the window: its imports are the app's own

    result: dict = {}
    idle = StallMeter()  # the same window, nothing happening: what the machine alone costs

    def open_tab() -> None:
        idle.stop()
        result["idle_worst_ms"] = idle.worst_ms
        result["preload_done"] = window.preloader.done.is_set()
        result["pyqtgraph_loaded_before_open"] = "pyqtgraph" in sys.modules
        meter = StallMeter()
        meter.start()
        t = time.perf_counter()
        view = window.open_run("r1")
        result["open_ms"] = (time.perf_counter() - t) * 1000

        def done() -> None:
            meter.stop()
            result.update(worst_ms=meter.worst_ms, long_gaps=meter.long_gaps, loaded=view.loaded,
                          points=view.point_count(), pyqtgraph_at_show=loaded_at_show)
            print(json.dumps(result), flush=True)
            window.close()
            app.exit(0)

        QTimer.singleShot(1500, done)

    QTimer.singleShot(max(0, int(settle_s * 1000) - 1500), idle.start)
    QTimer.singleShot(int(settle_s * 1000), open_tab)
    app.exec()


if __name__ == "__main__":
    main()
