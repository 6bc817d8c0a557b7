"""`tunedeck logs -f` over SSH (the loopback sshd) keeps following a run's output across an sshd restart:
every line once, in order, and it ends when the run ends."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

from core.records import RunPaths
from core.store import Store
from remote.profiles import save_profile

WRITER = """
import os, sys, time
run_dir = sys.argv[1]
with open(os.path.join(run_dir, "stdout.log"), "a", buffering=1) as out:
    for i in range(LINES):
        out.write(f"line {i}\\n")
        time.sleep(0.04)
with open(os.path.join(run_dir, "exit_status"), "w") as f:
    f.write("0\\n")
"""
LINES = 150  # ~6 s of output


def _cli() -> list[str]:
    script = Path(sys.executable).with_name("tunedeck")
    return [str(script)] if script.exists() else [sys.executable, "-m", "app"]


def test_logs_follow_reconnects_after_sshd_restart_and_prints_every_line_once(
        sshd_running_after, ssh_profile_hostfile, tmp_path):
    sshd = sshd_running_after
    save_profile(ssh_profile_hostfile)
    run_id = "20260103-000000-abcdef"
    run_dir = Path(ssh_profile_hostfile.work_root) / "runs" / run_id
    run_dir.mkdir(parents=True)
    (run_dir / RunPaths.STDOUT).write_text("")
    writer = subprocess.Popen([sys.executable, "-c", WRITER.replace("LINES", str(LINES)), str(run_dir)],
                              start_new_session=True)  # its own process group: the hostfile backend's job id
    threading.Thread(target=writer.wait, daemon=True).start()  # reaped at its end (a zombie would look alive)
    with Store() as store:
        store.create_run(run_id, "follow me", None, None, cluster=ssh_profile_hostfile.name, backend="hostfile",
                         run_dir=str(run_dir), status="running")
        store.update_run(run_id, job_id=str(writer.pid))
    follower = subprocess.Popen([*_cli(), "logs", run_id, "-f"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                env=os.environ.copy())
    lines: list[bytes] = []
    reader = threading.Thread(target=lambda: lines.extend(follower.stdout), daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 30
        while len(lines) < 40 and time.monotonic() < deadline:
            time.sleep(0.04)
        assert len(lines) >= 40, "the follower printed too little before the drop"
        sshd.kill()
        time.sleep(2.0)  # the output goes on while the link is down
        sshd.start()
        rc = follower.wait(timeout=90)
    finally:
        if follower.poll() is None:
            follower.kill()
        writer.kill()
        writer.wait()
    reader.join(10)
    err = follower.stderr.read().decode()
    assert rc == 0, err
    assert [ln.decode().rstrip("\n") for ln in lines] == [f"line {i}" for i in range(LINES)], err
    assert "Traceback" not in err
    assert "connection lost" in err and "reconnecting" in err
    assert f"run {run_id}: finished" in err
