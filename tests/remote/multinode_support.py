"""Shared real runs for the multi-node tests: the tiny preset on 2 nodes x 1 process of the namespace cluster.

Training is the slow part (each start imports the training stack in two processes on shared cores), so each
backend's story runs ONCE per session, as a user would live it, and the tests assert on what happened:

- Slurm (`slurm_story`): `tunedeck launch` over SSH to gpu-node-01 (srun + torchrun across two nodes), a
  preemption by a job in the higher-priority partition (Slurm requeues the run, which resumes on both nodes),
  then the run's processes on the second node hang mid-run (SIGSTOP, connections left open: the run must end
  failed, naming that node, within the collective timeout, and Slurm then kills them), then `tunedeck resume`
  continues from the last complete checkpoint to the end. Streamed into the store by a StreamManager in this process throughout.
- Hostfile (`hostfile_story`): DeepSpeed's launcher over pdsh on two nodes, a variable of the profile's env
  reaching the rank on the second node through .deepspeed_env; once a checkpoint is complete, every process of
  the run on the second node is killed (SIGKILL: the run must end failed, naming that node), then `tunedeck
  resume` continues from that checkpoint on both nodes to the end. (Cancel across nodes is tested with stand-in
  ranks in test_multinode_hostfile.py: it needs the launcher and pdsh, not another training start.)
"""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.records import RunPaths, read_records
from tests.remote.launch_support import (
    PYTHON,
    REPO,
    TORCH_EXT,
    VENV_BIN,
    fast_config,
    store_at,
    tunedeck_home,
)
from tests.remote.netns_cluster import URGENT_PARTITION, NetnsCluster, environ_of

NODES = 2
# The test config's collective timeout: the longest a surviving rank waits on a peer that stopped answering.
# The node failure is a hang (the peer's processes frozen, its connections left open, as when a node locks up
# or its network goes): only this timeout ends the wait, so the test holds the failure to it.
COLLECTIVE_TIMEOUT_S = 30
FAIL_SLACK_S = 45  # status polling, the launchers' shutdown and the shared cores, on top of the timeout
# Generous: on a machine shared with other work the stories run many times slower than in CI (~3 min).
STORY_TIMEOUT_S = float(os.environ.get("TUNEDECK_STORY_TIMEOUT_S", "900"))
HEARTBEAT_S = 1  # per-rank heartbeat interval in the test runs (TUNEDECK_HEARTBEAT_S)
SLURM_STEPS = 10
HOSTFILE_STEPS = 8
HOSTFILE_SAVE_STEPS = 3


def multinode_config(steps: int, save_steps: int):
    """tiny-demo on NODES nodes x 1 process, no evaluation, the test collective timeout."""
    cfg = fast_config(steps, save_steps)
    cluster = cfg.cluster.model_copy(update={"nodes": NODES, "gpus_per_node": 1,
                                             "collective_timeout_s": COLLECTIVE_TIMEOUT_S})
    data = cfg.model_dump(mode="json")
    data["cluster"] = cluster.model_dump(mode="json")
    from core.config import RunConfig

    return RunConfig.model_validate(data)


def job_env(proof: str) -> dict[str, str]:
    """The profile's env: what the job needs on every node (the op cache), and a value to find on node 2."""
    return {"TORCH_EXTENSIONS_DIR": TORCH_EXT, "TUNEDECK_NO_EVAL": "1", "TUNEDECK_HEARTBEAT_S": str(HEARTBEAT_S),
            "TUNEDECK_DEBUG_PARTITION": "1", "TUNEDECK_PROOF": proof}


def cluster_profile(name: str, backend: str, cluster: NetnsCluster, work_root: Path, proof: str):
    from remote.profiles import ClusterProfile

    hosts = [cluster.nodes[i].name for i in STORY_NODES[backend]]
    extra: dict[str, Any] = ({"partition": cluster.partition} if backend == "slurm"
                             else {"hostfile_hosts": [f"{h} slots=1" for h in hosts]})
    return ClusterProfile(name=name, backend=backend, host=hosts[0], ssh_config=str(cluster.ssh_config),
                          known_hosts=str(cluster.known_hosts), work_root=str(work_root), connect_timeout_s=10,
                          keepalive_s=5, python=PYTHON, env_setup=f"export PATH={VENV_BIN}:$PATH",
                          env=job_env(proof), nodes=NODES, gpus_per_node=1, **extra)


def cli(home: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """`tunedeck ARGS` as the user runs it (its own process, TUNEDECK_HOME=home)."""
    env = {**os.environ, "TUNEDECK_HOME": str(home), "PYTHONPATH": str(REPO)}
    code = "import sys; from app.cli import main; sys.exit(main(sys.argv[1:]))"
    return subprocess.run([PYTHON, "-c", code, *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=timeout)


@dataclass
class Story:
    backend: str
    home: Path
    run_id: str = ""
    run_dir: str = ""
    job_ids: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    cli_out: dict[str, str] = field(default_factory=dict)  # command name -> its stdout + stderr
    marks: dict[str, float] = field(default_factory=dict)  # monotonic times of what happened
    facts: dict[str, Any] = field(default_factory=dict)
    elapsed_s: float = 0.0

    def store(self):
        return store_at(self.home)

    def events(self, name: str | None = None) -> list[dict]:
        recs, corrupt = read_records(Path(self.run_dir) / RunPaths.EVENTS, "events")
        assert not corrupt
        return [e for e in recs if name is None or e["event"] == name]

    def metrics(self) -> list[dict]:
        recs, corrupt = read_records(Path(self.run_dir) / RunPaths.METRICS, "metrics")
        assert not corrupt
        return recs


class _Waiter:
    """Polls a condition on the store while a StreamManager streams; records a timeout as an error."""

    def __init__(self, story: Story, deadline: float):
        self.story = story
        self.deadline = deadline

    def until(self, what: str, check, interval: float = 0.3) -> bool:
        while time.monotonic() < self.deadline:
            with contextlib.suppress(FileNotFoundError):
                if check():
                    self.story.marks[what] = time.monotonic()
                    return True
            time.sleep(interval)
        self.story.errors.append(f"timed out waiting for: {what}")
        return False


def _events_of(story: Story, attempt: int, name: str) -> list[dict]:
    return [e for e in story.events(name) if e["attempt"] == attempt]


def _metric_steps(story: Story, attempt: int) -> list[int]:
    return [m["step"] for m in story.metrics() if m["attempt"] == attempt]


def _status(story: Story) -> str:
    with story.store() as store:
        return store.get_run(story.run_id).status


_STORIES: dict[str, Story] = {}
_THREADS: dict[str, threading.Thread] = {}
_LOCK = threading.Lock()
_HOME_LOCK = threading.Lock()
# Each story on its own two nodes: Slurm allocates the lowest idle ones, the hostfile names the others.
STORY_NODES = {"slurm": (0, 1), "hostfile": (2, 3)}


def shared_story(backend: str, cluster: NetnsCluster, root: Path) -> Story:
    """Both stories start together on first use (they spend much of their time waiting on each other's
    processes anyway: sharing the cores, they finish sooner together than one after the other)."""
    with _LOCK:
        if not _THREADS:
            for name, fn in (("slurm", slurm_story), ("hostfile", hostfile_story)):
                def run(name: str = name, fn=fn) -> None:
                    try:
                        _STORIES[name] = fn(cluster, root)
                    except BaseException as exc:  # a thread boundary: the tests report it
                        story = Story(name, root / f"home-{name}")
                        story.errors.append(f"the {name} story crashed: {type(exc).__name__}: {exc}")
                        _STORIES[name] = story
                _THREADS[name] = threading.Thread(target=run, name=f"story-{name}", daemon=True)
                _THREADS[name].start()
    _THREADS[backend].join(STORY_TIMEOUT_S + 120)
    return _STORIES[backend]


def _start(story: Story, cluster: NetnsCluster, root: Path, steps: int, save_steps: int):
    """Save the profile, write the config, `tunedeck launch` it; returns (profile, transport, manager)."""
    from remote.profiles import make_transport, save_profile
    from remote.stream import StreamManager

    name = f"ns-{story.backend}"
    profile = cluster_profile(name, story.backend, cluster, root / f"work-{story.backend}", proof=f"proof-{name}")
    with _HOME_LOCK, tunedeck_home(story.home):  # TUNEDECK_HOME is process-wide: one story at a time
        save_profile(profile)
    cfg_path = root / f"{name}.yaml"
    cfg_path.write_text(multinode_config(steps, save_steps).to_yaml())
    res = cli(story.home, "launch", str(cfg_path), "--cluster", name)
    story.cli_out["launch"] = res.stdout + res.stderr
    if res.returncode != 0:
        raise AssertionError(f"tunedeck launch failed ({res.returncode}): {res.stdout}\n{res.stderr}")
    story.run_id = res.stdout.strip().splitlines()[-1]
    with story.store() as store:
        row = store.get_run(story.run_id)
        story.run_dir, story.job_ids = row.run_dir, [row.job_id]
    transport = make_transport(profile)
    manager = StreamManager(store_at(story.home), poll_s=2.0, transports={name: transport})
    manager.start()
    return profile, transport, manager


def _finish(story: Story, transport, manager, waiter: _Waiter) -> None:
    """Let the manager read everything to the end (the run ended), then stop it."""
    waiter.until("streams drained", lambda: not manager.streamers and _status(story) in ("finished", "failed",
                                                                                       "cancelled"))
    manager.stop()
    manager.store.close()
    transport.close()


def slurm_story(cluster: NetnsCluster, root: Path) -> Story:
    t0 = time.monotonic()
    story = Story("slurm", root / "home-slurm")
    waiter = _Waiter(story, t0 + STORY_TIMEOUT_S)
    profile, transport, manager = _start(story, cluster, root, steps=SLURM_STEPS, save_steps=4)
    try:
        # 1. Preemption: once attempt 1 trains, a job of the urgent partition takes every node.
        if waiter.until("attempt 1 training", lambda: len(_metric_steps(story, 1)) >= 2):
            res = subprocess.run(["ssh", "-F", str(cluster.ssh_config), profile.host,
                                  f"sbatch --parsable -p {URGENT_PARTITION} -N{cluster.n_nodes} --exclusive "
                                  f"-o /dev/null --wrap 'sleep 1'"], capture_output=True, text=True, timeout=60)
            story.facts["urgent_job"] = res.stdout.strip() or res.stderr
        # Slurm requeues the run: attempt 2 starts by itself and resumes.
        waiter.until("attempt 2 resumed and training", lambda: _events_of(story, 2, "resumed")
                     and len(_metric_steps(story, 2)) >= 1)
        # 2. Node failure: once attempt 2 has a complete checkpoint of its own and trains on, node 2 hangs: its
        # processes are frozen mid-run (SIGSTOP: no exit, no closed connection), so the rank elsewhere waits in a
        # collective until the collective timeout; then Slurm kills the step on every node.
        def saved_and_going() -> bool:
            saved = [e["detail"]["step"] for e in _events_of(story, 2, "checkpoint_saved")]
            return bool(saved) and max(_metric_steps(story, 2), default=0) > max(saved)
        if waiter.until("attempt 2 past a checkpoint", saved_and_going):
            started = _events_of(story, 2, "started")[0]["detail"]
            victim = cluster.node(started["ranks"][1]["host"])
            pids = victim.pids_with_env("TUNEDECK_RUN_ID", story.run_id)
            story.facts["killed"] = {"host": victim.name, "pids": pids,
                                     "last_checkpoint": max(e["detail"]["step"]
                                                            for e in _events_of(story, 2, "checkpoint_saved"))}
            victim.kill(pids, signal.SIGSTOP)
            story.marks["killed"] = time.monotonic()
        waiter.until("failed", lambda: _status(story) == "failed", interval=0.2)
        if "killed" in story.facts:
            victim = cluster.node(story.facts["killed"]["host"])
            waiter.until("hung processes gone", lambda: not victim.pids_with_env("TUNEDECK_RUN_ID", story.run_id))
            story.facts["victim_left"] = victim.pids_with_env("TUNEDECK_RUN_ID", story.run_id)
        _failure_facts(story, root)
        # 3. Relaunch: `tunedeck resume` continues from the last complete checkpoint, to the end.
        res = cli(story.home, "resume", story.run_id)
        story.cli_out["resume"] = res.stdout + res.stderr
        manager.wake()
        waiter.until("finished", lambda: _status(story) == "finished")
        _finish(story, transport, manager, waiter)
    finally:
        manager.stop()
        transport.close()
        _cleanup(story, cluster)
    with story.store() as store:
        story.job_ids.append(store.get_run(story.run_id).job_id)
    story.elapsed_s = time.monotonic() - t0
    return story


def hostfile_story(cluster: NetnsCluster, root: Path) -> Story:
    t0 = time.monotonic()
    story = Story("hostfile", root / "home-hostfile")
    waiter = _Waiter(story, t0 + STORY_TIMEOUT_S)
    _profile, transport, manager = _start(story, cluster, root, steps=HOSTFILE_STEPS, save_steps=HOSTFILE_SAVE_STEPS)
    try:
        # Both ranks train; the rank on node 2 got the profile's env through .deepspeed_env.
        first, second = (cluster.nodes[i] for i in STORY_NODES["hostfile"])
        if waiter.until("attempt 1 training", lambda: len(_metric_steps(story, 1)) >= 2):
            pids = second.pids_with_env("TUNEDECK_RUN_ID", story.run_id)
            story.facts["node2_env"] = [
                {k: v for k, v in environ_of(p).items() if k in ("RANK", "TUNEDECK_PROOF", "TORCH_EXTENSIONS_DIR")}
                for p in pids]
            story.facts["node1_sees_node2"] = sorted(set(pids) & set(first.pids()))
        # Node failure, the plain kind: once a checkpoint is complete and training went on, every process of
        # the run on node 2 is killed (SIGKILL: the launcher pdsh started there and its rank). The rank on
        # node 1 loses its peer; the run must end failed, naming node 2, well within the collective timeout.
        def saved_and_going() -> bool:
            saved = [e["detail"]["step"] for e in _events_of(story, 1, "checkpoint_saved")]
            return bool(saved) and max(_metric_steps(story, 1), default=0) > max(saved)
        if waiter.until("attempt 1 past a checkpoint", saved_and_going, interval=0.1):
            pids = second.pids_with_env("TUNEDECK_RUN_ID", story.run_id)
            story.facts["killed"] = {"host": second.name, "pids": pids,
                                     "last_checkpoint": max(e["detail"]["step"]
                                                            for e in _events_of(story, 1, "checkpoint_saved"))}
            second.kill(pids, signal.SIGKILL)
            story.marks["killed"] = time.monotonic()
        if waiter.until("failed", lambda: _status(story) == "failed", interval=0.2):
            _failure_facts(story, root)
        # Relaunch: `tunedeck resume` continues from the last complete checkpoint, on both nodes, to the end.
        res = cli(story.home, "resume", story.run_id)
        story.cli_out["resume"] = res.stdout + res.stderr
        manager.wake()
        waiter.until("finished", lambda: _status(story) == "finished")
        _finish(story, transport, manager, waiter)
    finally:
        manager.stop()
        transport.close()
        _cleanup(story, cluster)
    story.elapsed_s = time.monotonic() - t0
    return story


def _failure_facts(story: Story, root: Path) -> None:
    """What the user is told once the run failed: the store's reason, `tunedeck status`, and a copy of the
    store as it was then (the app's run view is opened on it: the run goes on to finish after the resume)."""
    with story.store() as store:
        row = store.get_run(story.run_id)
        story.facts["failed_reason"] = row.status_reason
        story.facts["job_id_at_failure"] = row.job_id
        path = store.path
    snapshot = root / f"store-{story.backend}-at-failure.sqlite3"
    source, target = sqlite3.connect(path), sqlite3.connect(snapshot)
    try:
        source.backup(target)
    finally:
        source.close()
        target.close()
    story.facts["store_at_failure"] = str(snapshot)
    res = cli(story.home, "status", story.run_id)
    story.cli_out["status"] = res.stdout + res.stderr
    story.facts["status_rc"] = res.returncode


def _cleanup(story: Story, cluster: NetnsCluster) -> None:
    """Whatever happened, nothing of the story outlives it (its processes on every node, its Slurm jobs)."""
    if not story.run_id:
        return
    with story.store() as store:
        job_id = store.get_run(story.run_id).job_id
    if story.backend == "slurm" and job_id:
        subprocess.run(["scancel", "--full", job_id], env=cluster.env, capture_output=True)
    for node in cluster.nodes:
        pids = node.pids_with_env("TUNEDECK_RUN_ID", story.run_id)
        if pids:
            story.errors.append(f"run {story.run_id} still had processes {pids} on {node.name} at the end: killed")
            node.kill(pids)


def assert_streamed_once(store, run_id: str, run_dir: str) -> None:
    """Every line of the run's record files (all attempts) is in the store once, in order; stdout is identical;
    nothing was delivered twice or read corrupt, and every file was read to its end."""
    file_metrics, corrupt = read_records(Path(run_dir) / RunPaths.METRICS, "metrics")
    assert not corrupt and file_metrics
    key = ("attempt", "step", "loss", "lr", "grad_norm", "tokens", "t")
    assert [tuple(r[k] for k in key) for r in store.metrics(run_id)] == [tuple(r[k] for k in key) for r in file_metrics]
    file_events, _ = read_records(Path(run_dir) / RunPaths.EVENTS, "events")
    eval_events, _ = read_records(Path(run_dir) / RunPaths.EVAL_EVENTS, "events")
    both = sorted(file_events + eval_events, key=lambda e: e["t"])
    assert [(e["event"], e["t"]) for e in store.events(run_id)] == [(e["event"], e["t"]) for e in both]
    stdout = (Path(run_dir) / RunPaths.STDOUT).read_bytes().decode("utf-8", "replace")
    assert store.log_tail(run_id, len(stdout.encode()) + 1) == stdout
    for name in RunPaths.STREAMED:
        state = store.stream_state(run_id, name)
        size = (Path(run_dir) / name).stat().st_size if (Path(run_dir) / name).exists() else 0
        assert state["duplicate_count"] == 0 and state["corrupt_count"] == 0, (name, state)
        assert state["offset"] == size, (name, state, size)


def latest_losses(metrics: list[dict]) -> dict[int, float]:
    """Loss per step from the latest attempt that logged it (a resumed attempt redoes steps after a kill)."""
    out: dict[int, tuple[int, float]] = {}
    for m in metrics:
        if m["step"] not in out or m["attempt"] >= out[m["step"]][0]:
            out[m["step"]] = (m["attempt"], m["loss"])
    return {step: loss for step, (_, loss) in sorted(out.items())}
