"""remote.job.torchrun: torchrun itself, but a cancel (SIGTERM) ends the log with one clear line, not the
SignalException traceback torchrun prints (which read like a crash). Real torch, real processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("torch", reason="training stack not installed")

REPO = Path(__file__).resolve().parents[2]


def _wait_for(path: Path, text: str, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = path.read_text(errors="replace") if path.exists() else ""
        if text in out:
            return out
        time.sleep(0.2)
    raise AssertionError(f"{text!r} not seen in {timeout} s:\n{path.read_text(errors='replace')}")


def test_sigterm_ends_torchrun_with_a_cancelled_line_and_no_traceback(tmp_path):
    worker = tmp_path / "worker.py"
    worker.write_text("import time\nprint('rank up', flush=True)\ntime.sleep(300)\n")
    log = tmp_path / "stdout.log"
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONWARNINGS": "ignore::FutureWarning"}
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "remote.job.torchrun", "--standalone", "--nproc_per_node", "1",
                                 str(worker)], stdout=out, stderr=subprocess.STDOUT, env=env, cwd=tmp_path)
    try:
        _wait_for(log, "rank up", 120)
        proc.send_signal(signal.SIGTERM)  # what a cancel sends (the launch script execs into this process)
        rc = proc.wait(60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = log.read_text(errors="replace")
    assert rc == 128 + signal.SIGTERM, text
    assert "Traceback" not in text and "SignalException" not in text
    last = [line for line in text.splitlines() if line.strip()][-1]
    assert last.startswith("[tunedeck] run cancelled by SIGTERM"), text


def test_a_failing_rank_still_reads_as_a_failure(tmp_path):
    # (a clean run through the wrapper: tests/core/test_plan.py starts the local launch script for real)
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONWARNINGS": "ignore::FutureWarning"}
    bad = tmp_path / "bad.py"
    bad.write_text("raise SystemExit(3)\n")
    failed = subprocess.run([sys.executable, "-m", "remote.job.torchrun", "--standalone", "--nproc_per_node", "1",
                             str(bad)], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert failed.returncode != 0 and "ChildFailedError" in failed.stderr
    assert "cancelled" not in failed.stderr
