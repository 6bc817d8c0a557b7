"""Who the sandbox tests run the sandbox as: this process, or an ordinary user created for the session.

The sandbox suite runs once per identity (tests/job/test_sandbox.py's `sb` fixture):
- "this-process": remote.job.sandbox in this process (in CI: root, so "root-namespaces");
- "user-bwrap": a user made with `useradd`, driving the shipped job code with /usr/bin/python3 through
  `runuser` (tests/job/sandbox_driver.py): bubblewrap, as a researcher on a cluster gets it;
- "user-userns": the same user with bubblewrap pointed at a missing file ($TUNEDECK_BWRAP), so `auto`
  falls back to our own unshare(CLONE_NEWUSER | ...) path.

An ordinary user cannot read the test venv (its python lives under /root, mode 700), so the job code (standard
library, plus pydantic for reading a run's config) is copied into a world-readable directory with pydantic
beside it, and run with the system python. All
the checks (files, processes, listeners) are made from this process, which sees everything.
"""

from __future__ import annotations

import importlib.util
import json
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from remote.job.sandbox import SandboxJob, SandboxResult, find_processes

SYSTEM_PYTHON = "/usr/bin/python3"
# What the shipped job code imports beyond the standard library without the training stack (core.config)
JOB_THIRD_PARTY = ("pydantic", "pydantic_core", "annotated_types", "typing_inspection", "typing_extensions")
DRIVER = Path(__file__).with_name("sandbox_driver.py")
SECRET = "fake-secret-4242-do-not-leak"
KEY_TEXT = f"-----BEGIN OPENSSH PRIVATE KEY-----\n{SECRET}\n-----END OPENSSH PRIVATE KEY-----\n"


USER_PREFIX = "tdsbx"


def _remove_stale_users() -> None:
    """Users left by a killed session (named after its pid, which is gone): removed with their homes."""
    for pw in pwd.getpwall():
        pid = pw.pw_name.removeprefix(USER_PREFIX)
        stale = pw.pw_name.startswith(USER_PREFIX) and pid.isdigit() and not Path(f"/proc/{pid}").exists()
        if stale and not find_processes(uid=pw.pw_uid):
            subprocess.run(["userdel", "--remove", pw.pw_name], capture_output=True)


class Unavailable(Exception):
    """This machine cannot host the ordinary-user runs (not root, no useradd/runuser, no system python)."""


@dataclass
class OrdinaryUser:
    """A throwaway login user with a home holding an SSH key and a canary file, as a researcher has."""

    name: str
    uid: int
    gid: int
    home: Path

    @property
    def key(self) -> Path:
        return self.home / ".ssh" / "id_ed25519"

    @property
    def canary(self) -> Path:
        return self.home / "checkpoints" / "canary.txt"

    @classmethod
    def create(cls) -> OrdinaryUser:
        if os.geteuid() != 0:
            raise Unavailable("creating an ordinary user needs root (useradd + runuser)")
        for tool in ("useradd", "userdel", "runuser"):
            if shutil.which(tool) is None:
                raise Unavailable(f"{tool} not found")
        if not Path(SYSTEM_PYTHON).is_file():
            raise Unavailable(f"{SYSTEM_PYTHON} not found (an ordinary user needs a python it can read)")
        _remove_stale_users()
        name = f"{USER_PREFIX}{os.getpid()}"  # unique per session: concurrent test runs on one machine do not collide
        subprocess.run(["useradd", "--create-home", "--shell", "/bin/sh", name], check=True, capture_output=True)
        pw = pwd.getpwnam(name)
        user = cls(name, pw.pw_uid, pw.pw_gid, Path(pw.pw_dir))
        user.home.chmod(0o700)
        for path, text, mode in ((user.key, KEY_TEXT, 0o600), (user.canary, "alive\n", 0o644)):
            path.parent.mkdir(mode=0o700, exist_ok=True)
            path.write_text(text)
            path.chmod(mode)
        subprocess.run(["chown", "-R", f"{user.uid}:{user.gid}", str(user.home)], check=True)
        return user

    def processes(self) -> list[int]:
        return find_processes(uid=self.uid)

    def home_snapshot(self) -> dict[str, bytes]:
        return {str(p.relative_to(self.home)): p.read_bytes() for p in sorted(self.home.rglob("*")) if p.is_file()}

    def remove(self) -> None:
        for pid in self.processes():  # only this session's processes run as this fresh user
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        subprocess.run(["userdel", "--remove", self.name], capture_output=True)


def world_readable_job_code() -> Path:
    """The shipped job code, the driver and HumanEval's data in a fresh directory anyone may read."""
    from remote.bundle import job_code_files

    root = Path(tempfile.mkdtemp(prefix="tunedeck-sbx-code-"))
    for rel, src in job_code_files().items():
        dst = root / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dst)
    shutil.copyfile(DRIVER, root / DRIVER.name)
    # The job reads a run's config.json through core.config, which needs pydantic: on a cluster it comes with the
    # training stack (DeepSpeed depends on it). The system python standing in for a cluster's gets this venv's
    # copy (the same CPython minor version), beside the code.
    for module in JOB_THIRD_PARTY:
        spec = importlib.util.find_spec(module)
        assert spec is not None and spec.origin, f"{module} is not installed in the test environment"
        origin = Path(spec.origin)
        if origin.name == "__init__.py":
            shutil.copytree(origin.parent, root / module, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copyfile(origin, root / origin.name)
    from core.evalsets import humaneval_path

    shutil.copyfile(humaneval_path(), root / "HumanEval.jsonl.gz")
    for dirpath, _dirnames, filenames in os.walk(root):
        Path(dirpath).chmod(0o755)
        for f in filenames:
            (Path(dirpath) / f).chmod(0o644)
    return root


def result_from(d: dict[str, Any]) -> SandboxResult:
    return SandboxResult(**d)


@dataclass
class Driver:
    """tests/job/sandbox_driver.py running as `user`: the job code's sandbox, called over JSON lines."""

    user: OrdinaryUser
    code_dir: Path
    env: dict[str, str] = field(default_factory=dict)
    no_userns: bool = False
    proc: subprocess.Popen | None = None
    pid: int = 0

    def start(self, as_user: str | None = None) -> Driver:
        """Start the driver as the ordinary user (or `as_user`, e.g. root for a like-for-like baseline)."""
        argv = ["runuser", "-u", as_user or self.user.name, "--", "env", "-i", f"HOME={self.user.home}", "PATH=/usr/bin:/bin",
                *(f"{k}={v}" for k, v in self.env.items()),
                SYSTEM_PYTHON, "-I", str(self.code_dir / DRIVER.name), str(self.code_dir)]
        if self.no_userns:
            argv.append("--no-userns")
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd="/")
        hello = self.proc.stdout.readline()
        if not hello:
            raise RuntimeError(f"sandbox driver as {self.user.name} did not start (exit {self.proc.wait()})")
        self.pid = json.loads(hello)["pid"]
        return self

    def call(self, **req: Any) -> dict[str, Any]:
        assert self.proc is not None and self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(req) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"sandbox driver exited (code {self.proc.wait()})")
        reply = json.loads(line)
        if "error" in reply:
            raise RuntimeError(f"driver: {reply['error']}\n{reply.get('traceback', '')}")
        return reply

    def own_processes(self) -> set[int]:
        """The driver and its launcher servers (zygotes): long-lived by design, not a sample's leftovers."""
        out = {self.pid}
        for name in os.listdir("/proc"):
            if name.isdigit():
                try:
                    stat = Path(f"/proc/{name}/stat").read_text()
                    cmdline = Path(f"/proc/{name}/cmdline").read_bytes()
                except OSError:
                    continue
                if int(stat.rsplit(")", 1)[1].split()[1]) == self.pid and b"--serve" in cmdline:
                    out.add(int(name))
        return out

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class SandboxUnderTest:
    """What the suite needs of an identity: run programs, and where its files and secrets live."""

    label: str
    caps: dict[str, Any]
    home: Path  # a directory this identity may write outside any sample's: canaries go there
    key: Path  # an SSH private key of this identity (contains SECRET)
    uid: int

    def run(self, programs: Sequence[SandboxJob | str], workers: int | None = None, timeout_s: float = 10.0,
            cancel: bool = False, policy: str | None = None) -> tuple[list[SandboxResult], list[int]]:
        raise NotImplementedError

    def check(self, program: str, timeout_s: float = 10.0, policy: str | None = None) -> SandboxResult:
        return self.run([program], workers=1, timeout_s=timeout_s, policy=policy)[0][0]

    def leftovers(self, marker: str) -> list[int]:
        raise NotImplementedError


class InProcess(SandboxUnderTest):
    def __init__(self, home: Path, key: Path):
        from remote.job.sandbox import sandbox_capabilities

        self.label = "this-process"
        self.caps = sandbox_capabilities()
        self.home, self.key, self.uid = home, key, os.getuid()

    def run(self, programs, workers=None, timeout_s=10.0, cancel=False, policy=None):
        import threading

        from remote.job.sandbox import run_samples

        seen: list[int] = []
        event = threading.Event()
        if cancel:
            event.set()
        res = run_samples(programs, workers=workers, timeout_s=timeout_s, progress=lambda d, n: seen.append(d),
                          cancel=event, policy=policy or "auto")
        return res, seen

    def leftovers(self, marker: str) -> list[int]:
        from remote.job.sandbox import active_uids

        time.sleep(0.05)
        pids = find_processes(marker=marker)
        if self.caps["user_drop"]:
            for uid in active_uids():  # the uids this process reserved (other evaluations use others)
                pids += find_processes(uid=uid)
        return pids


class AsUser(SandboxUnderTest):
    def __init__(self, label: str, driver: Driver):
        self.label, self.driver = label, driver
        reply = driver.call(op="caps", policy="auto")
        if "refused" in reply:
            # Only the kernel's own verdict excuses it: util-linux's unshare, as the same user.
            probe = subprocess.run(["runuser", "-u", driver.user.name, "--", "unshare", "-Urnp", "--fork", "true"],
                                   capture_output=True, text=True)
            if probe.returncode != 0:
                pytest.skip(f"unprivileged user namespaces are off here (`unshare -Urnp` as {driver.user.name}: "
                            f"{probe.stderr.strip()})")
            pytest.fail(f"the sandbox refused as {driver.user.name} although `unshare -Urnp` works: {reply['refused']}")
        self.caps = reply["caps"]
        self.home, self.key, self.uid = driver.user.home, driver.user.key, driver.user.uid

    def run(self, programs, workers=None, timeout_s=10.0, cancel=False, policy=None):
        jobs = [p if isinstance(p, SandboxJob) else SandboxJob(p) for p in programs]
        reply = self.driver.call(op="run", jobs=[{"program": j.program, "job_id": j.job_id, "timeout_s": j.timeout_s}
                                                 for j in jobs],
                                 workers=workers, timeout_s=timeout_s, cancel=cancel, policy=policy or "auto")
        return [result_from(d) for d in reply["results"]], reply["progress"]

    def leftovers(self, marker: str) -> list[int]:
        time.sleep(0.05)
        own = self.driver.own_processes()
        return sorted(set(find_processes(marker=marker)) | {p for p in find_processes(uid=self.uid) if p not in own})


def user_sandboxes(user: OrdinaryUser, code_dir: Path, label: str) -> Iterator[AsUser]:
    """The driver for one ordinary-user identity, stopped afterwards."""
    env = {"TUNEDECK_BWRAP": "/nonexistent/bwrap"} if label == "user-userns" else {}
    driver = Driver(user, code_dir, env).start()
    try:
        yield AsUser(label, driver)
    finally:
        driver.stop()
