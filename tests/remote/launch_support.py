"""Shared real runs for the launch/stream tests: the tiny preset trained once per session on every backend.

Training is the slow part (2 ranks of DeepSpeed ZeRO-3 on shared CPUs), so ONE scenario runs the three
backends concurrently and records what happened; test_launch_slurm / _hostfile / _local assert on it:

- slurm over SSH, streamed in this process by a StreamManager while sshd is killed and restarted five
  times (after the first metric arrived, i.e. while metric lines are being written);
- hostfile over SSH, streamed by a separate app process (`tunedeck sync -f`) that is SIGKILLed and started
  again twice mid-run (own TUNEDECK_HOME, own store);
- local, streamed in this process by the same StreamManager.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from core.records import RunPaths, read_records

REPO = Path(__file__).resolve().parents[2]
# Resolved: a worktree's .venv may link to a shared one. DeepSpeed's launcher starts ranks with the interpreter
# of its script's shebang (the real path), and torch's op cache (TORCH_EXTENSIONS_DIR, shared) rebuilds an op
# whenever the venv path it was built from differs: every process should name the venv the same way.
VENV_BIN = (REPO / ".venv").resolve() / "bin"
PYTHON = str(VENV_BIN / "python") if (VENV_BIN / "python").exists() else sys.executable
TORCH_EXT = os.environ.get("TORCH_EXTENSIONS_DIR", "/tmp/tunedeck-torch-ext")
# The training environment on the "cluster" (this machine): the project's venv, a shared op cache.
ENV_SETUP = f"export PATH={VENV_BIN}:$PATH TORCH_EXTENSIONS_DIR={TORCH_EXT} TUNEDECK_NO_EVAL=1"
SCENARIO_TIMEOUT_S = 900
SSHD_KILLS = 5
APP_KILLS = 2


def fast_config(steps: int = 12, save_steps: int = 6):
    """tiny-demo with few steps and no evaluation (CI time)."""
    from core.presets import load_preset

    cfg = load_preset("tiny-demo")
    return cfg.model_copy(update={
        "training": cfg.training.model_copy(update={"max_steps": steps, "save_steps": save_steps}),
        "evaluation": cfg.evaluation.model_copy(update={"when": "never"}),
    })


def ssh_profile(name: str, backend: str, sshd, work_root: Path, **extra):
    from remote.profiles import ClusterProfile

    return ClusterProfile(name=name, backend=backend, host=sshd.alias, ssh_config=str(sshd.ssh_config),
                          known_hosts=str(sshd.known_hosts), work_root=str(work_root), connect_timeout_s=10,
                          keepalive_s=5, python=PYTHON, env_setup=ENV_SETUP, **extra)


@contextlib.contextmanager
def tunedeck_home(home: Path):
    """Point core.paths at `home` for a block (profiles are saved where the app process will read them)."""
    old = os.environ.get("TUNEDECK_HOME")
    os.environ["TUNEDECK_HOME"] = str(home)
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("TUNEDECK_HOME", None)
        else:
            os.environ["TUNEDECK_HOME"] = old


def store_at(home: Path):
    from core.store import Store

    return Store(home / "data" / "tunedeck.sqlite3")


def app_process(home: Path, *args: str) -> subprocess.Popen:
    """`tunedeck ARGS` as its own process with its own TUNEDECK_HOME."""
    env = {**os.environ, "TUNEDECK_HOME": str(home), "PYTHONPATH": str(REPO)}
    code = "import sys; from app.cli import main; sys.exit(main(sys.argv[1:]))"
    return subprocess.Popen([PYTHON, "-c", code, *args], cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True)


@dataclass
class Scenario:
    root: Path
    home_a: Path  # slurm + local runs (streamed in the test process)
    home_b: Path  # the hostfile run (streamed by the app subprocess)
    run_ids: dict[str, str] = field(default_factory=dict)
    run_dirs: dict[str, str] = field(default_factory=dict)
    steps: dict[str, int] = field(default_factory=dict)
    sshd_kills: int = 0
    kills_after_first_metric: int = 0
    app_kills: int = 0
    app_output: str = ""
    errors: list[str] = field(default_factory=list)
    elapsed_s: float = 0.0

    def store_for(self, backend: str):
        return store_at(self.home_b if backend == "hostfile" else self.home_a)

    def file_records(self, backend: str, name: str = RunPaths.METRICS) -> list[dict]:
        recs, corrupt = read_records(Path(self.run_dirs[backend]) / name, "metrics" if name == RunPaths.METRICS
                                     else "events")
        assert not corrupt
        return recs


_SCENARIO: Scenario | None = None
_LOCK = threading.Lock()


def shared_scenario(sshd, slurm, root: Path) -> Scenario:
    global _SCENARIO
    with _LOCK:
        if _SCENARIO is None:
            _SCENARIO = _run_scenario(sshd, slurm, root)
        return _SCENARIO


def _metric_count(store, run_id: str) -> int:
    return len(store.metrics(run_id))


def _run_scenario(sshd, slurm, root: Path) -> Scenario:
    from remote.profiles import ClusterProfile, make_transport, save_profile
    from remote.runs import launch
    from remote.stream import StreamManager
    from remote.transport import LocalTransport

    t0 = time.monotonic()
    sc = Scenario(root=root, home_a=root / "home-a", home_b=root / "home-b")
    slurm_p = ssh_profile("loop-slurm", "slurm", sshd, root / "work-slurm", partition=slurm.partition)
    host_p = ssh_profile("loop-hostfile", "hostfile", sshd, root / "work-hostfile",
                         hostfile_hosts=["localhost slots=2"])
    local_p = ClusterProfile(name="loop-local", backend="local", python=PYTHON, env_setup=ENV_SETUP)
    with tunedeck_home(sc.home_a):
        save_profile(slurm_p)
        save_profile(local_p)
    with tunedeck_home(sc.home_b):
        save_profile(host_p)
    store_a, store_b = store_at(sc.home_a), store_at(sc.home_b)
    ssh_a, ssh_b = make_transport(slurm_p), make_transport(host_p)
    local_t = LocalTransport("loop-local")
    sc.steps = {"slurm": 24, "hostfile": 16, "local": 12}
    with tunedeck_home(sc.home_a):
        sc.run_ids["slurm"] = launch(fast_config(24, 12), slurm_p.name, store_a, profile=slurm_p, transport=ssh_a)
        sc.run_ids["local"] = launch(fast_config(12, 6), local_p.name, store_a, profile=local_p, transport=local_t)
    with tunedeck_home(sc.home_b):
        sc.run_ids["hostfile"] = launch(fast_config(16, 8), host_p.name, store_b, profile=host_p, transport=ssh_b)
    sc.run_dirs = {b: store_a.get_run(r).run_dir if b != "hostfile" else store_b.get_run(r).run_dir
                   for b, r in sc.run_ids.items()}
    ssh_b.close()

    manager = StreamManager(store_a, poll_s=1.0, transports={"loop-slurm": ssh_a, "loop-local": local_t})
    manager.start()
    app = app_process(sc.home_b, "sync", "-f")
    outputs: list[bytes] = []
    deadline = time.monotonic() + SCENARIO_TIMEOUT_S
    slurm_id, host_id = sc.run_ids["slurm"], sc.run_ids["hostfile"]
    last_kill = 0.0
    try:
        while time.monotonic() < deadline:
            now = time.monotonic()
            # sshd: five kill + restart cycles once slurm metric lines are flowing, a second apart.
            if sc.sshd_kills < SSHD_KILLS and now - last_kill > 1.0:
                n_metrics = _metric_count(store_a, slurm_id)
                if n_metrics > 0 or store_a.get_run(slurm_id).is_terminal:
                    sshd.kill()
                    time.sleep(0.2)
                    sshd.start()
                    sc.sshd_kills += 1
                    sc.kills_after_first_metric += n_metrics > 0
                    last_kill = time.monotonic()
            # The app process: killed once while stdout streams in, once after the first metric.
            if sc.app_kills < APP_KILLS and app.poll() is None:
                with store_at(sc.home_b) as sb:
                    ready = (sb.stream_state(host_id, RunPaths.STDOUT)["offset"] > 0 if sc.app_kills == 0
                             else _metric_count(sb, host_id) > 0)
                if ready:
                    os.killpg(app.pid, signal.SIGKILL)
                    outputs.append(app.communicate()[0])
                    sc.app_kills += 1
                    app = app_process(sc.home_b, "sync", "-f")
            done_a = all(store_a.get_run(sc.run_ids[b]).is_terminal for b in ("slurm", "local"))
            if done_a and not manager.streamers and sc.sshd_kills >= SSHD_KILLS and app.poll() is not None:
                break
            time.sleep(0.2)
        else:
            sc.errors.append(f"scenario did not finish within {SCENARIO_TIMEOUT_S} s")
    finally:
        manager.stop()
        if not sshd.running:
            sshd.start()
        # Whatever happened, no job of the scenario outlives it (all "machines" are this one).
        from remote.backends import leftover_pids

        for rid in sc.run_ids.values():
            pids = leftover_pids(local_t, rid)
            if pids:
                sc.errors.append(f"run {rid} still had processes {pids} at the end: killed")
                local_t.run(["kill", "-KILL", *map(str, pids)], check=False)
        if app.poll() is None:
            os.killpg(app.pid, signal.SIGKILL)
        outputs.append(app.communicate()[0])
        ssh_a.close()
        store_a.close()
        store_b.close()
    sc.app_output = b"\n----\n".join(outputs).decode("utf-8", "replace")
    sc.elapsed_s = time.monotonic() - t0
    return sc
