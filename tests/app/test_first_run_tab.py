"""Opening the first run tab does not freeze the window: numpy and pyqtgraph are imported in the background at
app start (app.gui.preload), and the run view builds its charts one per event-loop turn.

Measured in a fresh interpreter (tests/app/first_tab_child.py), where nothing is imported yet, with the
responsiveness probe of tests/app/test_responsiveness.py (a 5 ms timer's longest gap). Before the preload the
first tab stalled the UI thread 1.0-1.5 s (pyqtgraph's and numpy's imports on it)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.app.run_feed import StoreFeeder, create_run
from tests.app.test_responsiveness import MAX_STALL_MS

ATTEMPTS = 3  # the limit is wall-clock: a machine starved by other processes can stall any thread
SETTLE_S = 4.0  # the user looks at the Runs page this long before opening a run (the preload takes ~1-2 s)


def test_the_first_run_tab_opens_without_a_ui_stall_over_100ms(store, tmp_path):
    create_run(store, "r1", job_id="1")
    StoreFeeder(store, "r1").metrics(range(1, 201))
    child = Path(__file__).with_name("first_tab_child.py")
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen", "PYTHONPATH": str(Path(__file__).parents[2])}
    reports = []
    for _ in range(ATTEMPTS):
        out = subprocess.run([sys.executable, str(child), str(store.path), str(SETTLE_S)], env=env, text=True,
                             capture_output=True, timeout=120)
        assert out.returncode == 0, out.stderr[-3000:]
        report = json.loads(out.stdout.strip().splitlines()[-1])
        reports.append(report)
        assert report["loaded"] and report["points"] == 200
        assert report["preload_done"] and report["pyqtgraph_loaded_before_open"]
        assert not report["pyqtgraph_at_show"]  # the window itself still starts without them
        if report["worst_ms"] < MAX_STALL_MS:
            break
    print(f"first run tab: longest UI-thread stall per attempt (ms): {[round(r['worst_ms']) for r in reports]}; "
          f"idle baseline: {[round(r['idle_worst_ms']) for r in reports]}; open_run: "
          f"{[round(r['open_ms']) for r in reports]} ms; load average {os.getloadavg()[0]:.1f}")
    assert reports[-1]["worst_ms"] < MAX_STALL_MS, reports
