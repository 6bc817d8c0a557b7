"""evaluation.placement slurm on the loopback cluster: each checkpoint's evaluation is its own Slurm job
(named with the run id and the step) while training runs, every checkpoint's pass@1 arrives exactly once,
and cancelling the run leaves no job of it in squeue (real sshd + real Slurm on 127.0.0.1)."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from core.evalstate import derive_eval_states, eval_job_prefix
from core.records import RunPaths, read_records
from tests.remote.launch_support import PYTHON, TORCH_EXT, VENV_BIN, fast_config, ssh_profile

pytestmark = pytest.mark.slow

# The training environment with evaluation on (launch_support's ENV_SETUP turns it off for speed).
EVAL_ENV_SETUP = f"export PATH={VENV_BIN}:$PATH TORCH_EXTENSIONS_DIR={TORCH_EXT} OMP_NUM_THREADS=1"


def slurm_eval_config(steps: int, save_steps: int):
    cfg = fast_config(steps, save_steps)
    return cfg.model_copy(update={"evaluation": cfg.evaluation.model_copy(update={
        "when": "per_checkpoint", "placement": "slurm", "limit": 2, "max_new_tokens": 8, "batch_size": 2,
        "timeout_s": 5.0})})


def squeue(slurm_cluster) -> list[tuple[str, str, str]]:
    """(job id, name, state) of every job Slurm still holds as queued or running."""
    out = subprocess.run(["squeue", "-h", "-o", "%i|%j|%T"], env=slurm_cluster.env, capture_output=True, text=True,
                         timeout=30, check=True)
    return [tuple(line.split("|", 2)) for line in out.stdout.splitlines() if line.count("|") == 2]


def _profile(sshd_server, slurm_cluster, root: Path, name: str):
    profile = ssh_profile(name, "slurm", sshd_server, root, partition=slurm_cluster.partition)
    return profile.model_copy(update={"python": PYTHON, "env_setup": EVAL_ENV_SETUP})


def test_each_checkpoint_is_evaluated_by_its_own_slurm_job_and_its_pass_at_1_arrives_once(
        sshd_server, slurm_cluster, tmp_path):
    from core.store import Store
    from remote.profiles import make_transport
    from remote.runs import launch
    from remote.stream import sync_all

    profile = _profile(sshd_server, slurm_cluster, tmp_path / "work", "eval-slurm")
    transport = make_transport(profile)
    store = Store(tmp_path / "store.sqlite3")
    try:
        run_id = launch(slurm_eval_config(6, 3), profile.name, store, profile=profile, transport=transport)
        row = store.get_run(run_id)
        prefix = eval_job_prefix(run_id)
        during_training: set[str] = set()  # evaluation job names seen while the training job was running
        completing = False
        deadline = time.monotonic() + 900
        while time.monotonic() < deadline:
            jobs = squeue(slurm_cluster)
            main_running = any(j[0] == row.job_id and j[2] == "RUNNING" for j in jobs)
            if main_running:
                during_training |= {name for _, name, _ in jobs if name.startswith(prefix)}
            sync_all(store, transports={profile.name: transport})
            now = store.get_run(run_id)
            completing |= now.status == "completing" and "evaluating step" in (now.status_reason or "")
            if now.is_terminal:
                break
            time.sleep(1.0)
        row = store.get_run(run_id)
        assert row.status == "finished", (row.status, row.status_reason, _tail(Path(row.run_dir) / "stdout.log"),
                                          _tail(Path(row.run_dir) / "eval.log"))
        # While training ran, squeue listed evaluations as jobs of their own, named with run id and step.
        assert during_training, "no evaluation job was seen in squeue while the training job ran"
        assert during_training <= {f"{prefix}step-{s}" for s in (3, 6)}
        # Every checkpoint's pass@1, once: in the run's file and in the store.
        evals, corrupt = read_records(Path(row.run_dir) / RunPaths.EVALS, "evals")
        assert not corrupt
        assert sorted((r["step"], r["subset"]) for r in evals) == [(3, "all"), (6, "all")]
        assert sorted((r["step"], r["subset"]) for r in store.evals(run_id)) == [(3, "all"), (6, "all")]
        assert all(r["n_tasks"] == 2 for r in evals)
        states = derive_eval_states(store.events(run_id), row.status)
        assert {s: st.state for s, st in states.items()} == {3: "finished", 6: "finished"}
        slurm_ids = {st.job_id for st in states.values()}
        assert all(j and j.isdigit() and j != row.job_id for j in slurm_ids) and len(slurm_ids) == 2
        started = [e["detail"] for e in store.events(run_id) if e["event"] == "eval_started"]
        assert sorted(d["job_id"] for d in started) == sorted(slurm_ids)  # each ran as the job it was submitted as
        assert all(d["placement"] == "slurm" and d["engine"] == "transformers" for d in started)
        finished = [e["detail"] for e in store.events(run_id) if e["event"] == "eval_finished"]
        assert all(d["tokens_generated"] > 0 and d["tokens_per_s"] > 0 for d in finished)
        assert store.stream_state(run_id, RunPaths.EVAL_EVENTS)["duplicate_count"] == 0
    finally:
        slurm_cluster.cancel_all()
        transport.close()
        store.close()


# Stands in for the training job (the profile's `python`): submits two evaluation jobs named as the real job
# names them, one held in the queue (--begin in an hour) and one running, then trains (sleeps). The real
# submission path is the test above; this one is about what a cancel of the run takes down.
STAND_IN = """#!/bin/bash
prefix="tunedeck-${{TUNEDECK_RUN_ID}}-eval-step-"
sbatch --parsable --job-name="${{prefix}}2" --output=/dev/null --wrap "sleep 600"
sbatch --parsable --job-name="${{prefix}}4" --begin=now+3600 --output=/dev/null --wrap "sleep 600"
echo submitted
exec sleep 600
"""


def test_cancelling_the_run_cancels_its_queued_and_running_evaluation_jobs(sshd_server, slurm_cluster, tmp_path):
    from core.store import Store
    from remote.profiles import make_transport
    from remote.runs import cancel, launch

    stand_in = tmp_path / "train-stand-in"
    stand_in.write_text(STAND_IN.format())
    stand_in.chmod(0o755)
    profile = _profile(sshd_server, slurm_cluster, tmp_path / "work", "eval-cancel")
    profile = profile.model_copy(update={"python": str(stand_in)})
    transport = make_transport(profile)
    store = Store(tmp_path / "store.sqlite3")
    try:
        # force: the stand-in is no Python, which the launch guardrails would rightly refuse
        run_id = launch(slurm_eval_config(400, 2), profile.name, store, profile=profile, transport=transport,
                        force=True)
        row = store.get_run(run_id)
        prefix = eval_job_prefix(run_id)
        deadline = time.monotonic() + 120
        states: set[str] = set()
        while time.monotonic() < deadline and states != {"PENDING", "RUNNING"}:
            states = {j[2] for j in squeue(slurm_cluster) if j[1].startswith(prefix)}
            time.sleep(0.3)
        assert states == {"PENDING", "RUNNING"}, "one queued and one running evaluation job expected"
        assert any(j[0] == row.job_id and j[2] == "RUNNING" for j in squeue(slurm_cluster))

        result = cancel(run_id, store, transport=transport, grace_s=10)

        assert result.confirmed_gone, result.detail
        assert "scancel of 2 evaluation job(s)" in result.detail and "no evaluation job of the run is left" in result.detail
        left = [j for j in squeue(slurm_cluster) if j[0] == row.job_id or j[1].startswith(prefix)]
        assert left == []
        assert store.get_run(run_id).status == "cancelled"
    finally:
        slurm_cluster.cancel_all()
        transport.close()
        store.close()


def _tail(path: Path) -> str:
    return path.read_text(errors="replace")[-3000:] if path.exists() else f"({path.name} missing)"
