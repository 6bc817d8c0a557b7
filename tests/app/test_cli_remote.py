"""`tunedeck launch / runs / status / logs / sync / cancel` on this machine (the local profile).

The training interpreter is a small job script (the profile's `python`) that prints, writes metric lines
and sleeps: the CLI paths are real (detached process group, status from the group and its exit status,
streaming into the store, TERM/KILL and confirmation), without a DeepSpeed run per test.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from app.cli import main
from core.records import RunPaths
from remote.backends import leftover_pids
from remote.profiles import ClusterProfile, save_profile
from remote.transport import LocalTransport
from tests.remote.launch_support import PYTHON, fast_config

JOB = """#!{python}
# Stands in for the training interpreter: prints, writes metric lines, then sleeps SECONDS.
import json, sys, time
print("hello from the job", flush=True)
with open("metrics.jsonl", "a") as f:
    for step in range(1, 4):
        rec = {{"t": time.time(), "attempt": 1, "step": step, "epoch": 0.1, "samples": 4, "tokens": 40,
               "loss": 1.0 / step, "lr": 0.001, "grad_norm": 1.0, "tokens_per_s": 100.0}}
        f.write(json.dumps(rec) + "\\n")
        f.flush()
        print(f"step {{step}}", flush=True)
time.sleep({seconds})
print("job done", flush=True)
"""


@pytest.fixture
def cluster(tmp_path: Path):
    def profile(name: str, seconds: float) -> None:
        job = tmp_path / f"job-{name}"
        job.write_text(JOB.format(python=PYTHON, seconds=seconds))
        job.chmod(0o755)
        save_profile(ClusterProfile(name=name, backend="local", python=str(job)))

    profile("quick", 1.0)
    profile("slow", 600.0)
    yield "quick"
    # A failed test must not leave a job sleeping: kill whatever still carries one of this test's run ids.
    from core.store import Store

    with Store() as store:
        pids = [p for r in store.list_runs() for p in leftover_pids(LocalTransport(), r.run_id)]
    if pids:
        LocalTransport().run(["kill", "-KILL", *map(str, pids)], check=False)


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "run.yaml"
    path.write_text(fast_config().to_yaml())
    return path


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def launch(capsys, config_file: Path, cluster: str) -> str:
    # --force: the profile's python is a stand-in job script, which the launch guardrails rightly find is no
    # Python with a training stack (tests/app/test_cli_launch_guardrails.py covers that refusal).
    rc, out, err = run_cli(capsys, "launch", str(config_file), "--cluster", cluster, "--name", "cli test", "--force")
    assert rc == 0, err
    return out.strip().splitlines()[-1]


def wait_status(capsys, run_id: str, want: str, timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    out = ""
    while time.monotonic() < deadline:
        _, out, _ = run_cli(capsys, "status", run_id)
        if out.startswith(want):
            return out
        time.sleep(0.3)
    raise AssertionError(f"status never became {want}: {out}")


def test_launch_prints_run_id_then_status_logs_sync_and_runs_report_it(capsys, cluster, config_file):
    run_id = launch(capsys, config_file, cluster)
    assert len(run_id.split("-")) == 3 and run_id[:8].isdigit()
    assert wait_status(capsys, run_id, "finished").strip() == "finished: exit status 0"

    rc, out, _ = run_cli(capsys, "logs", run_id)
    assert rc == 0 and "hello from the job" in out and "job done" in out

    rc, out, _ = run_cli(capsys, "sync")
    assert rc == 0 and f"{run_id}: 3 new in metrics.jsonl" in out
    rc, out, _ = run_cli(capsys, "sync")
    assert rc == 0 and "new in metrics" not in out  # nothing twice

    rc, out, _ = run_cli(capsys, "runs", "--json")
    [row] = [r for r in json.loads(out) if r["run_id"] == run_id]
    assert row["status"] == "finished" and row["cluster"] == "quick" and row["job_id"].isdigit()
    assert row["name"] == "cli test"


def test_logs_follow_prints_output_until_the_run_ends(capsys, cluster, config_file):
    run_id = launch(capsys, config_file, cluster)
    rc, out, err = run_cli(capsys, "logs", run_id, "-f")
    assert rc == 0
    assert out.index("hello from the job") < out.index("step 3") < out.index("job done")
    assert "finished" in err


def test_cancel_stops_the_run_and_confirms_its_processes_are_gone(capsys, cluster, config_file):
    run_id = launch(capsys, config_file, "slow")
    wait_status(capsys, run_id, "running")
    assert leftover_pids(LocalTransport(), run_id)  # the job is there before the cancel

    rc, out, err = run_cli(capsys, "cancel", run_id, "--grace", "5")

    assert rc == 0, err
    assert "confirmed gone" in out and "SIGTERM" in out
    assert leftover_pids(LocalTransport(), run_id) == []
    rc, out, _ = run_cli(capsys, "status", run_id)
    assert out.strip() == "cancelled: cancelled by the user"
    rc, out, err = run_cli(capsys, "cancel", run_id)
    assert rc == 0 and "already ended" in out and "nothing to cancel" in out
    assert "confirmed gone" not in out + err and len(out.strip().splitlines()) == 1  # one message, the right one


def test_unknown_run_and_bad_config_fail_with_clear_errors(capsys, cluster, tmp_path):
    rc, _, err = run_cli(capsys, "status", "no-such-run")
    assert rc == 2 and "no run with id 'no-such-run'" in err
    bad = tmp_path / "bad.yaml"
    bad.write_text(fast_config().to_yaml().replace("max_steps: 12", "max_steps: -3"))
    rc, _, err = run_cli(capsys, "launch", str(bad), "--cluster", cluster)
    assert rc == 2 and "training.max_steps" in err
    rc, _, err = run_cli(capsys, "launch", str(bad.with_name("missing.yaml")), "--cluster", cluster)
    assert rc == 2 and "missing.yaml" in err


def test_local_runs_live_under_the_user_data_dir(capsys, cluster, config_file, isolated_user_dirs):
    run_id = launch(capsys, config_file, cluster)
    wait_status(capsys, run_id, "finished")
    run_dir = isolated_user_dirs / "data" / "runs" / run_id
    assert (run_dir / RunPaths.CONFIG_YAML).is_file() and (run_dir / "exit_status").read_text().strip() == "0"


def test_status_of_a_failed_run_says_failed_with_the_exit_status(capsys, config_file, tmp_path):
    job = tmp_path / "job-broken"
    job.write_text("#!/bin/sh\necho 'Traceback: boom'\nexit 3\n")
    job.chmod(0o755)
    save_profile(ClusterProfile(name="broken", backend="local", python=str(job)))
    run_id = launch(capsys, config_file, "broken")
    out = wait_status(capsys, run_id, "failed")
    assert out.strip() == "failed: exit status 3"
    rc, _, _ = run_cli(capsys, "status", run_id)
    assert rc == 1


def test_sync_skips_a_record_the_store_cannot_hold_shows_it_and_syncs_the_clusters_other_runs(capsys, tmp_path):
    from core.records import encode_record, metric_record
    from core.store import Store

    def metric(step):
        return encode_record(metric_record(step=step, attempt=1, epoch=0.0, samples=1, tokens=1, loss=1.0, lr=0.1,
                                           grad_norm=1.0, tokens_per_s=1.0, t=float(step)))

    with Store() as store:
        for run_id in ("20260101-000000-aaaaaa", "20260101-000000-bbbbbb"):
            run_dir = tmp_path / run_id
            run_dir.mkdir()
            (run_dir / "exit_status").write_text("0\n")
            store.create_run(run_id, run_id, None, None, cluster="local", backend="local", run_dir=str(run_dir),
                             status="running")
            store.update_run(run_id, job_id="999999")
        bad = tmp_path / "20260101-000000-aaaaaa" / RunPaths.METRICS
        bad.write_bytes(metric(1) + metric(2).replace(b'"step":2', b'"step":99999999999999999999999') + metric(3))
        (tmp_path / "20260101-000000-bbbbbb" / RunPaths.METRICS).write_bytes(metric(1))
    rc, out, err = run_cli(capsys, "sync")
    assert rc == 0, err
    assert "20260101-000000-aaaaaa: 2 new in metrics.jsonl" in out
    assert "20260101-000000-bbbbbb: 1 new in metrics.jsonl" in out
    assert "synced 2 run(s)" in out and "unreachable" not in out + err
    assert "20260101-000000-aaaaaa: 1 corrupt line skipped in metrics.jsonl" in err
    rc, out, _ = run_cli(capsys, "status", "20260101-000000-aaaaaa")
    assert out.splitlines()[0].startswith("finished")
    assert "metrics.jsonl: 1 corrupt line skipped" in out
    rc, out, _ = run_cli(capsys, "sync")
    assert rc == 0 and "corrupt" not in out  # counted once


def _stored_runs(*names: str, status: str = "finished") -> list[str]:
    from core.store import Store

    ids = []
    with Store() as store:
        for i, name in enumerate(names):
            run_id = f"20260102-0000{i:02d}-{i:06x}"
            store.create_run(run_id, name, None, None, cluster="local", backend="local", run_dir=None, status=status)
            ids.append(run_id)
    return ids


def test_runs_and_status_escape_control_characters_in_names_one_run_per_line(capsys):
    from core.store import Store

    ids = _stored_runs("clear\x1b[2Jscreen", "two\nlines", "bidi\u202eevil", "plain ünïcode")
    with Store() as store:
        store.update_run(ids[0], status_reason="exit\x1b]0;title\x07 status 0")
    rc, out, _ = run_cli(capsys, "runs")
    assert rc == 0
    lines = out.splitlines()
    assert len(lines) == 4, out
    assert not any(c in out for c in "\x1b\x07\u202e")
    assert "clear\\x1b[2Jscreen" in out and "two\\nlines" in out and "bidi\\u202eevil" in out
    assert "plain ünïcode" in out  # other text is left as it is
    rc, out, _ = run_cli(capsys, "status", ids[0], "--no-refresh")
    assert out.strip() == "finished: exit\\x1b]0;title\\x07 status 0"


def test_launch_refuses_a_run_name_with_control_characters(capsys, cluster, config_file):
    rc, _, err = run_cli(capsys, "launch", str(config_file), "--cluster", cluster, "--name", "x\x1b[2J")
    assert rc == 1 and "control or invisible format characters" in err and "U+001B" in err
    from core.store import Store

    with Store() as store:
        assert store.list_runs() == []  # refused before anything was recorded or uploaded


def test_an_ambiguous_run_id_prefix_lists_the_candidates(capsys):
    ids = _stored_runs("first", "second")
    rc, _, err = run_cli(capsys, "status", "20260102-0000")
    assert rc == 2 and "is ambiguous" in err
    for run_id, name in zip(ids, ("first", "second"), strict=True):
        assert f"{run_id} ({name}, finished)" in err
    rc, out, _ = run_cli(capsys, "status", ids[1][:-2], "--no-refresh")
    assert rc == 0 and out.startswith("finished")


def test_runs_json_into_a_pipe_closed_early_ends_without_a_traceback(tmp_path):
    import os
    import subprocess
    import sys

    _stored_runs(*[f"run {i} " + "x" * 200 for i in range(600)])  # well over a pipe buffer of JSON
    script = Path(sys.executable).with_name("tunedeck")
    argv = [str(script)] if script.exists() else [sys.executable, "-m", "app"]
    proc = subprocess.Popen([*argv, "runs", "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=os.environ.copy())
    assert proc.stdout.read(100).startswith(b"[")  # what `| head -c 100` reads, then it exits
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 141
    assert "Traceback" not in err and "BrokenPipeError" not in err and "Exception ignored" not in err, err


def test_sync_follow_prints_each_state_once_and_on_sigterm_says_the_streams_are_not_complete(
        capsys, cluster, config_file):
    import os
    import signal
    import subprocess
    import sys

    run_id = launch(capsys, config_file, "slow")
    wait_status(capsys, run_id, "running")
    script = Path(sys.executable).with_name("tunedeck")
    argv = [str(script)] if script.exists() else [sys.executable, "-m", "app"]
    proc = subprocess.Popen([*argv, "sync", "-f"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=os.environ.copy())
    try:
        time.sleep(6)  # three status polls (every 2 s) of a run whose state does not change
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
        run_cli(capsys, "cancel", run_id, "--grace", "2")
    assert proc.returncode == 0, err
    assert out.count(f"{run_id}: running") == 1, out
    assert "streams complete" not in out
    assert f"still active: {run_id}" in out and "NOT complete" in out


def test_resume_starts_an_ended_run_again_in_its_run_directory_and_refuses_running_or_finished_ones(
        capsys, cluster, config_file):
    from core.store import Store

    run_id = launch(capsys, config_file, "slow")
    wait_status(capsys, run_id, "running")
    rc, _, err = run_cli(capsys, "resume", run_id)
    assert rc == 1 and "is running: only an ended run can be resumed" in err
    with Store() as store:
        first = store.get_run(run_id)
    assert run_cli(capsys, "cancel", run_id, "--grace", "5")[0] == 0

    rc, out, err = run_cli(capsys, "resume", run_id)

    assert rc == 0, err
    assert f"run {run_id}: resumed as process group" in out and "from the start (no complete checkpoint)" in out
    with Store() as store:
        again = store.get_run(run_id)
    assert again.job_id != first.job_id and again.run_dir == first.run_dir and again.finished_at is None
    wait_status(capsys, run_id, "running")
    stdout = Path(first.run_dir, RunPaths.STDOUT).read_text()
    assert stdout.count("hello from the job") == 2  # the same run directory, started a second time
    assert run_cli(capsys, "cancel", run_id, "--grace", "5")[0] == 0

    done = launch(capsys, config_file, cluster)
    wait_status(capsys, done, "finished")
    rc, _, err = run_cli(capsys, "resume", done)
    assert rc == 1 and "finished: there is nothing left to train" in err
