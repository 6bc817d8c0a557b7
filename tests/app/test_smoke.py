"""`tunedeck gui --smoke` in a fresh process: the window is shown, the process exits 0, and the GUI process
never imports the training stack."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

FORBIDDEN = ("torch", "transformers", "deepspeed", "accelerate", "trl")


def test_gui_smoke_exits_zero_and_imports_no_training_stack(tmp_path, repo_root):
    dump = tmp_path / "modules.txt"
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen", "TUNEDECK_DUMP_MODULES": str(dump),
           "TUNEDECK_HOME": str(tmp_path / "home")}
    tunedeck = Path(sys.executable).with_name("tunedeck")
    cmd = [str(tunedeck)] if tunedeck.exists() else [sys.executable, "-m", "app"]
    proc = subprocess.run([*cmd, "gui", "--smoke"], env=env, cwd=repo_root, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    modules = set(dump.read_text().split())
    assert "PySide6.QtWidgets" in modules and "app.gui.main_window" in modules  # the window really opened
    loaded = sorted(m for m in modules if m.split(".")[0] in FORBIDDEN)
    assert loaded == [], f"the GUI process imported {loaded}"
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
