"""The run's evaluation queue on the cluster: after-training drain, reserved devices, cancel, re-queue, and
pruning that keeps a pending evaluation's weights (a tiny random model, real processes)."""

from __future__ import annotations

import fcntl
import json
import os
import sys
import time
from pathlib import Path

import pytest

from core.evalstate import derive_eval_states
from core.records import RunPaths, read_records
from remote.job import evalqueue
from tests.job.test_evaluate import _run_dir, build_tiny_model


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny-model"))


def run_with(tmp_path: Path, model: Path, placement: dict, **evaluation) -> RunPaths:
    run = _run_dir(tmp_path, model, **{"limit": 1, "max_new_tokens": 4, **evaluation})
    cfg = json.loads((run / "config.json").read_text())
    cfg["derived"] = {"evaluation": placement}
    (run / "config.json").write_text(json.dumps(cfg))
    return RunPaths(run)


def states(paths: RunPaths):
    return evalqueue.states(paths)


@pytest.fixture
def job_env(monkeypatch: pytest.MonkeyPatch, repo_root: Path):
    """The evaluation processes import the project from this checkout (as PYTHONPATH=RUN_DIR/code would)."""
    monkeypatch.setenv("PYTHONPATH", str(repo_root))
    monkeypatch.setenv("PYTHONWARNINGS", "ignore")
    monkeypatch.delenv("TUNEDECK_NO_EVAL", raising=False)


def wait_until(predicate, timeout: float = 240.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.3)


def test_after_training_requests_wait_and_the_drain_evaluates_them_in_step_order(tmp_path, tiny_model, job_env):
    paths = run_with(tmp_path, tiny_model, {"placement": "after_training", "gpus": 1})
    records = []
    for step in (4, 2):
        detail, proc = evalqueue.request(paths, tiny_model, step, 1)
        assert proc is None and detail["placement"] == "after_training" and "training" in detail["queued"]
        records.append((step, detail))
    # what the training job writes for each request (events.jsonl is its file)
    from core.records import JsonlWriter, event_record

    with JsonlWriter(paths.events) as w:
        for i, (_step, detail) in enumerate(records):
            w.write(event_record("eval_requested", 1, detail, t=time.time() + i * 0.001))
    assert {s: st.label() for s, st in states(paths).items()} == {4: "queued (after training)",
                                                                   2: "queued (after training)"}

    assert evalqueue.drain(paths) == [2, 4]

    assert {s: st.state for s, st in states(paths).items()} == {2: "finished", 4: "finished"}
    evals, _ = read_records(paths.evals, "evals")
    assert sorted(r["step"] for r in evals if r["subset"] == "all") == [2, 4]
    assert evalqueue.drain(paths) == []  # nothing twice


def test_devices_placement_gives_the_evaluation_the_reserved_gpus(tmp_path, tiny_model, job_env):
    paths = run_with(tmp_path, tiny_model, {"placement": "devices", "gpus": 1, "devices": [7]})
    detail, proc = evalqueue.request(paths, tiny_model, 3, 1)
    assert detail["cuda_visible_devices"] == "7" and proc is not None
    environ = dict(line.split("=", 1) for line in Path(f"/proc/{proc.pid}/environ").read_bytes().decode(
        "utf-8", "replace").split("\0") if "=" in line)
    assert environ["CUDA_VISIBLE_DEVICES"] == "7" and "RANK" not in environ
    assert os.getpgid(proc.pid) == proc.pid  # its own process group: a cancel stops it alone
    os.killpg(proc.pid, 9)  # the evaluation itself is tested elsewhere
    proc.wait(timeout=60)


def test_a_queued_evaluation_is_cancelled_and_can_be_queued_again(tmp_path, tiny_model, job_env):
    paths = run_with(tmp_path, tiny_model, {"placement": "alongside", "gpus": 1})
    lock = os.open(paths / RunPaths.EVAL_LOCK, os.O_RDWR | os.O_CREAT)
    fcntl.flock(lock, fcntl.LOCK_EX)  # another evaluation holds the job's devices: this one queues
    try:
        assert evalqueue.main(["request", "--run-dir", str(paths.root), "--step", "5", "--checkpoint",
                               str(tiny_model)]) == 0
        st = states(paths)[5]
        assert st.state == "queued" and st.job_id and st.placement == "alongside"
        pgid = int(st.job_id)
        os.killpg(pgid, 0)  # its process exists, waiting on the lock
        assert evalqueue.main(["request", "--run-dir", str(paths.root), "--step", "5", "--checkpoint",
                               str(tiny_model)]) == 1  # already queued: refused, nothing doubled

        assert evalqueue.main(["cancel", "--run-dir", str(paths.root), "--step", "5"]) == 0

        # it ended (exited, or a zombie this test process, its parent, has not reaped)
        assert _state_of(pgid) in (None, "Z")
        st = states(paths)[5]
        assert st.state == "cancelled" and st.error == "cancelled by the user"
    finally:
        fcntl.flock(lock, fcntl.LOCK_UN)
        os.close(lock)
    assert evalqueue.main(["request", "--run-dir", str(paths.root), "--step", "5", "--checkpoint", str(tiny_model)]) == 0
    wait_until(lambda: states(paths)[5].state == "finished")
    assert states(paths)[5].requests == 2
    assert not read_records(paths.evals, "evals")[1]


def test_pruning_keeps_only_the_weights_of_a_checkpoint_whose_evaluation_is_pending(tmp_path: Path) -> None:
    from remote.job.callbacks import WEIGHTS_ONLY_MARKER, CheckpointCallback, Recorder

    paths = RunPaths(tmp_path / "run")
    for step in (10, 20, 30):
        ckpt = paths.checkpoint(step)
        (ckpt / "global_step" / "zero").mkdir(parents=True)
        (ckpt / "global_step" / "zero" / "optim_states.pt").write_bytes(b"x" * 1000)
        for name in ("model.safetensors", "config.json", "tokenizer.json", "trainer_state.json", "rng_state_0.pth"):
            (ckpt / name).write_text(name)
        (ckpt / RunPaths.COMPLETE_MARKER).write_text("1\n")
    evalqueue.append_event(paths, "eval_requested", 1, {"step": 10, "placement": "slurm", "job_id": "77"})
    callback = CheckpointCallback(Recorder(paths, 1, enabled=False), paths, {}, keep=1, eval_when="per_checkpoint")

    callback.prune(current=30)

    kept = paths.checkpoint(10)
    assert sorted(p.name for p in kept.iterdir()) == sorted(["config.json", "model.safetensors", "tokenizer.json",
                                                              WEIGHTS_ONLY_MARKER])
    assert not paths.checkpoint(20).exists()  # evaluated (nothing pending): pruned
    assert [s for s, _ in paths.complete_checkpoints()] == [30]  # the slimmed one is no longer resumable
    callback.prune(current=30)
    assert kept.is_dir()  # still pending: spared again
    evalqueue.append_event(paths, "eval_finished", 1, {"step": 10})
    callback.prune(current=30)
    assert not kept.exists()


def test_the_queue_tool_runs_from_the_shipped_code_directory(tmp_path: Path) -> None:
    import shutil
    import subprocess

    from remote.bundle import job_code_files

    code = tmp_path / "code"
    for rel, path in job_code_files().items():  # exactly what the bundle ships
        (code / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, code / rel)
    # the app's side (Qt, SSH) is not on a cluster: an import of it fails loudly
    for blocked in ("PySide6", "paramiko", "pyqtgraph"):
        (code / f"{blocked}.py").write_text(f"raise ImportError('{blocked} is not available on the cluster')\n")
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"derived": {"evaluation": {"placement": "after_training"}}}))
    out = subprocess.run([sys.executable, "-m", "remote.job.evalqueue", "drain", "--run-dir", str(run)],
                         env={**os.environ, "PYTHONPATH": str(code)}, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.splitlines()[-1]) == {"evaluated": []}
    assert derive_eval_states([]) == {}


def _state_of(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None
