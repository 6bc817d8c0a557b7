"""evaluation.sandbox: refusing where no sandbox works, `unconfined` on request, and `cluster check` saying which.

Where unprivileged user namespaces are forbidden is simulated honestly: the ordinary user's driver runs in
a user namespace whose limit on nested ones is 0 (tests/job/sandbox_driver.py --no-userns), so bubblewrap
and our own unshare(CLONE_NEWUSER) both fail in the kernel, as on such a machine.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from core.config import resolved_dict
from core.evalsets import load_humaneval
from core.presets import load_preset
from core.records import read_records, unconfined_evaluations
from remote.check import check_cluster
from remote.job.sandbox import find_bwrap
from remote.profiles import ClusterProfile
from remote.transport import CommandResult
from tests.job.sandbox_users import Driver, OrdinaryUser


class DriverTransport:
    """A transport whose commands run as the driver's user, in the driver's namespaces (`cluster check` needs
    only run_shell)."""

    def __init__(self, driver: Driver):
        self.driver = driver

    def run_shell(self, script: str, *, timeout: float | None = 60, check: bool = True) -> CommandResult:
        reply = self.driver.call(op="shell", script=script, timeout=timeout)
        return CommandResult(reply["rc"], reply["stdout"], reply["stderr"])


@pytest.fixture
def user_dir(ordinary_user: OrdinaryUser) -> Iterator[Path]:
    """A directory the ordinary user owns (results go there), removed afterwards."""
    import os

    path = Path(tempfile.mkdtemp(prefix="tunedeck-policy-"))
    os.chown(path, ordinary_user.uid, ordinary_user.gid)
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def no_userns_driver(ordinary_user: OrdinaryUser, user_code_dir: Path) -> Iterator[Driver]:
    driver = Driver(ordinary_user, user_code_dir, no_userns=True).start()
    try:
        yield driver
    finally:
        driver.stop()


def _profile(tmp: Path) -> ClusterProfile:
    return ClusterProfile(name="as-user", backend="local", python="/usr/bin/python3", work_root=str(tmp / "work"))


def test_without_bubblewrap_and_user_namespaces_evaluation_refuses_before_running_model_code(
        no_userns_driver: Driver, ordinary_user: OrdinaryUser, user_code_dir: Path, user_dir: Path) -> None:
    driver = no_userns_driver
    reply = driver.call(op="caps", policy="auto")
    assert "refused" in reply, reply
    message = reply["refused"]
    # one paragraph: what is missing (each way tried, with the kernel's word) and the ways out
    assert "\n" not in message and f"as {ordinary_user.name}" in message
    assert "unprivileged user namespaces are not allowed" in message and "user.max_user_namespaces is 0" in message
    assert "ask the administrators to allow unprivileged user namespaces" in message
    assert "`evaluation.sandbox: unconfined`" in message and "--sandbox unconfined" in message
    if find_bwrap():  # installed, and it fails for real in the same kernel
        assert set(reply["reasons"]) == {"bwrap", "userns"}
        assert "bubblewrap failed (bwrap: " in message
    else:
        assert "bubblewrap (bwrap) is not installed" in message and "apt-get install bubblewrap" in message

    # A sample that solves its task and leaves a file in the user's home when it runs at all.
    task = load_humaneval().tasks[0]
    ran = ordinary_user.home / "sample-ran.txt"
    completion = task.reference[len(task.prompt):] + f"\nopen({str(ran)!r}, 'w').write('ran')\n"
    samples = user_dir / "samples.jsonl"
    samples.write_text(json.dumps({"task_id": task.task_id, "completion": completion}) + "\n")
    samples.chmod(0o644)
    bench = ["humaneval", str(user_code_dir / "HumanEval.jsonl.gz")]
    refused = driver.call(op="score", samples=str(samples), bench=bench, out=str(user_dir / "out"))
    assert refused.get("refused") == message
    assert not ran.exists()  # nothing ran: not the sample, not its file
    assert not (user_dir / "out" / "evals.jsonl").exists() and not (user_dir / "out" / "samples").exists()

    # evaluation.sandbox: unconfined runs it, as the user, unprotected, and says so in every record.
    records = driver.call(op="score", samples=str(samples), bench=bench, out=str(user_dir / "out"),
                          policy="unconfined")["records"]
    assert [(r["pass@1"], r["sandbox"]) for r in records] == [(1.0, "unconfined")]
    assert ran.read_text() == "ran"  # the proof that unconfined means exactly that
    ran.unlink()


def test_a_refused_checkpoint_evaluation_is_recorded_as_eval_failed_with_the_message(
        no_userns_driver: Driver, user_code_dir: Path, user_dir: Path) -> None:
    """The cluster's path (`python -m remote.job.evaluate` after each checkpoint): the refusal comes before
    any model is loaded, and the GUI's eval_failed banner carries the paragraph."""
    run, ckpt = user_dir / "run", user_dir / "run" / "checkpoints" / "checkpoint-20"
    ckpt.mkdir(parents=True)
    (ckpt / "config.json").write_text("{}")  # never loaded: the refusal comes first
    config = resolved_dict(load_preset("tiny-demo"))  # a whole run config, as the app writes it
    config["evaluation"].update({"benchmarks": [{"name": "humaneval", "path": str(user_code_dir / "HumanEval.jsonl.gz")}],
                                 "sandbox": "auto"})
    (run / "config.json").write_text(json.dumps(config))
    for p in (run, ckpt.parent, ckpt):
        shutil.chown(p, user=no_userns_driver.user.name)
    reply = no_userns_driver.call(op="evaluate_checkpoint", run_dir=str(run), checkpoint=str(ckpt), step=20)
    assert "refuses to run model-written code" in reply["refused"]
    events, _ = read_records(run / "eval_events.jsonl", "events")
    assert [e["event"] for e in events] == ["eval_failed"]
    assert "refuses to run model-written code" in events[0]["detail"]["error"]


def test_cluster_check_reports_no_sandbox_where_evaluation_would_refuse(no_userns_driver: Driver, tmp_path: Path) -> None:
    report = check_cluster(_profile(tmp_path), transport=DriverTransport(no_userns_driver))
    item = report.item("sandbox")
    assert not item.ok and not item.required
    assert item.value.startswith("NONE: evaluation will refuse to run model-written samples")
    assert "userns:" in item.value and "No space left on device" in item.value
    assert "evaluation.sandbox: unconfined" in item.fix and "bubblewrap" in item.fix
    assert "sandbox" in report.format() and "warn" in report.format()


def test_cluster_check_as_an_ordinary_user_reports_the_sandbox_the_evaluation_will_get(
        ordinary_user: OrdinaryUser, user_code_dir: Path, tmp_path: Path) -> None:
    driver = Driver(ordinary_user, user_code_dir).start()
    try:
        report = check_cluster(_profile(tmp_path), transport=DriverTransport(driver))
    finally:
        driver.stop()
    item = report.item("sandbox")
    assert item.ok, item.value
    mode = "bwrap" if find_bwrap() else "userns"
    assert item.value.startswith(mode) and "namespaces" in item.value and "homes hidden" in item.value
    assert report.raw["sandbox"]["mode"] == mode and report.raw["sandbox"]["confined"] is True


def test_unconfined_evaluations_come_from_eval_started_events_only() -> None:
    events = [
        {"attempt": 1, "event": "eval_started", "detail": {"step": 20, "sandbox": {"mode": "unconfined"}}},
        {"attempt": 1, "event": "eval_started", "detail": {"step": 40, "sandbox": {"mode": "bwrap"}}},
        {"attempt": 2, "event": "eval_started", "detail": {"step": 40, "sandbox": {"mode": "unconfined"}}},
        {"attempt": 1, "event": "eval_finished", "detail": {"step": 60, "sandbox": {"mode": "unconfined"}}},
        {"attempt": 1, "event": "eval_started", "detail": {"step": 80}},  # before the sandbox was recorded
        {"attempt": 1, "event": "eval_started", "detail": {"step": "x", "sandbox": {"mode": "unconfined"}}},
    ]
    assert unconfined_evaluations(events) == {(1, 20), (2, 40)}
