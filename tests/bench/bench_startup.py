"""Benchmark: process start to first window shown, and no training stack in the GUI process.

Run explicitly: `.venv/bin/python tests/bench/bench_startup.py` (or `pytest -m bench tests/bench/bench_startup.py`).
Target: <= 1.0 s from process start to the main window shown (median of RUNS cold-ish starts), printed beside
a bare PySide6 window started the same way in the same run (the floor: interpreter + Qt). The child reports the
moment the window is shown and idle (a zero-delay timer after show), and its sys.modules, from inside the run.
Also runs the real `tunedeck gui --smoke` and checks its module list (TUNEDECK_DUMP_MODULES) the same way.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
RUNS = 5
TARGET_S = 1.0
FORBIDDEN = ("torch", "transformers", "deepspeed")

_CHILD = r"""
import json, os, sys, time
from PySide6.QtCore import QTimer
if sys.argv[1] == "tunedeck":
    from app.gui.app import create_app
    app = create_app()
    from app.gui.main_window import MainWindow
    from core.store import Store
    window = MainWindow(Store(), offer_demo=False)
else:
    from PySide6.QtWidgets import QApplication, QWidget
    app = QApplication([sys.argv[0]])
    window = QWidget()
    window.resize(1360, 880)
window.show()
def done():
    heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "transformers", "deepspeed"))
    print(json.dumps({"shown_at": time.time(), "heavy": heavy, "modules": len(sys.modules)}), flush=True)
    window.close()
    app.exit(0)
QTimer.singleShot(0, done)
app.exec()
"""


def start_once(kind: str, home: str) -> dict:
    env = dict(os.environ, QT_QPA_PLATFORM=os.environ.get("QT_QPA_PLATFORM", "offscreen"), TUNEDECK_HOME=home,
               PYTHONPATH=str(REPO))
    t0 = time.time()
    proc = subprocess.run([sys.executable, "-c", _CHILD, kind], env=env, capture_output=True, text=True, timeout=120,
                          cwd=REPO)
    if proc.returncode != 0:
        raise RuntimeError(f"{kind} start failed ({proc.returncode}): {proc.stderr[-2000:]}")
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")][-1]
    result = json.loads(line)
    result["start_to_shown_s"] = result["shown_at"] - t0
    return result


def smoke_modules(home: str) -> list[str]:
    """sys.modules of the real `tunedeck gui --smoke` (the packaged app's check), dumped from inside it."""
    dump = Path(home) / "modules.txt"
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen", TUNEDECK_HOME=home, TUNEDECK_DUMP_MODULES=str(dump))
    proc = subprocess.run([sys.executable, "-m", "app", "gui", "--smoke"], env=env, capture_output=True, text=True,
                          timeout=120, cwd=REPO)
    if proc.returncode != 0:
        raise RuntimeError(f"tunedeck gui --smoke failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return dump.read_text().split()


def run() -> dict:
    out: dict = {}
    with tempfile.TemporaryDirectory(prefix="tunedeck-startup-") as home:
        start_once("tunedeck", home)  # warm the page cache and compile bytecode, untimed
        for kind in ("bare", "tunedeck"):
            results = [start_once(kind, home) for _ in range(RUNS)]
            out[kind] = statistics.median(r["start_to_shown_s"] for r in results)
            out[f"{kind}_heavy"] = sorted({m for r in results for m in r["heavy"]})
        modules = smoke_modules(home)
        out["smoke_heavy"] = sorted(m for m in modules if m.split(".")[0] in FORBIDDEN)
        out["smoke_modules"] = len(modules)
    return out


def report(r: dict) -> str:
    return (f"process start to main window shown: TuneDeck {r['tunedeck']:.2f} s median of {RUNS}, bare PySide6 "
            f"window {r['bare']:.2f} s ({r['tunedeck'] / r['bare']:.1f}x the floor); target <= {TARGET_S:g} s: "
            f"{'met' if r['tunedeck'] <= TARGET_S else 'NOT met'}. Training stack in the GUI process: "
            f"{r['tunedeck_heavy'] or 'none'}; in `tunedeck gui --smoke` ({r['smoke_modules']} modules): "
            f"{r['smoke_heavy'] or 'none'}")


@pytest.mark.bench
def test_bench_startup():
    r = run()
    print(report(r))
    assert r["tunedeck_heavy"] == [] and r["smoke_heavy"] == []


if __name__ == "__main__":
    print(report(run()))
