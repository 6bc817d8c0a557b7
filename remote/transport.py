"""How TuneDeck runs commands and moves files on a machine: the Transport protocol and LocalTransport.

Every transport (this machine through subprocess, a cluster through SSH in remote/ssh.py) offers the same
calls, so backends, bundle upload and streaming are written once. argv lists are always quoted with
shlex.join before reaching a shell; `run_shell` is only for script text our own code built from quoted
values. File calls expand a leading `~/` to the machine's home directory.
"""

from __future__ import annotations

import contextlib
import os
import select
import shlex
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

from core.fsutil import atomic_path

# How long a closed stream's command gets after SIGTERM before SIGKILL.
STREAM_KILL_GRACE_S = 2.0
_READ_CHUNK = 65536


@dataclass(frozen=True)
class CommandResult:
    """What a finished command left: exit status and decoded output."""

    rc: int
    stdout: str
    stderr: str


class TransportError(Exception):
    """Base of every error a transport raises about the machine or the link (not about user input)."""


class RemoteCommandError(TransportError):
    """A command exited non-zero; carries the remote stderr so the user sees why."""

    def __init__(self, target: str, command: str, rc: int, stderr: str):
        self.target = target
        self.command = command
        self.rc = rc
        self.stderr = stderr
        tail = stderr.strip()[-2000:]
        super().__init__(f"{target}: `{command}` exited {rc}: {tail}" if tail else f"{target}: `{command}` exited {rc}")


class CommandTimeout(TransportError):
    """A command ran past its timeout and was killed (locally) or abandoned (its channel closed)."""

    def __init__(self, target: str, command: str, timeout: float):
        self.target = target
        self.command = command
        self.timeout = timeout
        super().__init__(f"{target}: `{command}` did not finish within {timeout:g} s")


class ConnectionLost(TransportError):
    """The link dropped while a call was in flight; the next call reconnects."""


class ConnectError(TransportError):
    """The machine could not be reached or refused the login (after the retries)."""


class AuthenticationFailed(ConnectError):
    """The host was reached (its key checked) but refused every key / password we have."""


class HostKeyError(TransportError):
    """Base of the host key errors (unknown or changed)."""


class UnknownHostKeyError(HostKeyError):
    """The host's key is not in known_hosts: show the fingerprint to the user, then `trust_host_key`."""

    def __init__(self, host: str, key_type: str, fingerprint_sha256: str, key: object = None,
                 known_hosts: str | None = None):
        self.host = host
        self.key_type = key_type
        self.fingerprint_sha256 = fingerprint_sha256
        self.key = key  # the paramiko PKey offered by the server (None outside SSH)
        self.known_hosts = known_hosts
        super().__init__(
            f"unknown host key for {host}: {key_type} {fingerprint_sha256} is not in "
            f"{known_hosts or 'known_hosts'}; check the fingerprint with the cluster admins, then "
            f"trust it (`tunedeck cluster trust NAME`)"
        )


class ChangedHostKeyError(HostKeyError):
    """The host offered a different key than the one recorded: refused (possible man-in-the-middle)."""

    def __init__(self, host: str, key_type: str, fingerprint_sha256: str, known_hosts: str, line: int | None,
                 expected_fingerprint: str | None = None):
        self.host = host
        self.key_type = key_type
        self.fingerprint_sha256 = fingerprint_sha256
        self.known_hosts = known_hosts
        self.line = line
        self.expected_fingerprint = expected_fingerprint
        where = f"{known_hosts}:{line}" if line else known_hosts
        super().__init__(
            f"REMOTE HOST KEY CHANGED for {host}: it offered {key_type} {fingerprint_sha256}"
            + (f" but {expected_fingerprint} is recorded" if expected_fingerprint else "")
            + f" in {where}. Someone could be intercepting the connection, or the host was reinstalled. "
            f"Refusing to connect; if the change is expected, remove that line and trust the new key."
        )


@runtime_checkable
class StreamProcess(Protocol):
    """A long-running command whose stdout arrives incrementally."""

    def read(self, timeout: float) -> bytes | None:
        """Bytes that arrived (b"" when nothing came within `timeout`); None at EOF (the command ended).

        Over SSH, a link that drops (or stays silent past the transport's idle probe) raises
        ConnectionLost instead: start the command again from the stored offset; the transport reconnects.
        """
        ...

    def close(self) -> None:
        """Stop the command (kills it) and release the channel."""
        ...

    @property
    def returncode(self) -> int | None: ...


@runtime_checkable
class Transport(Protocol):
    """One per cluster profile; thread-safe."""

    name: str

    def run(self, argv: list[str], *, timeout: float | None = 60, check: bool = True,
            stdin: bytes | None = None) -> CommandResult: ...

    def run_shell(self, script: str, *, timeout: float | None = 60, check: bool = True) -> CommandResult: ...

    def start(self, argv: list[str]) -> StreamProcess: ...

    def put_bytes(self, data: bytes, path: str, mode: int | None = None) -> None: ...

    def put_file(self, local: Path, path: str, mode: int | None = None) -> None: ...

    def read_bytes(self, path: str, offset: int = 0, max_bytes: int | None = None) -> bytes: ...

    def size(self, path: str) -> int | None: ...

    def makedirs(self, path: str) -> None: ...

    def home(self) -> str: ...

    def close(self) -> None: ...


def expand_home(path: str, home: str) -> str:
    """`~` and `~/x` relative to `home`; other paths unchanged (`~user` is not supported)."""
    if path == "~":
        return home
    if path.startswith("~/"):
        return home.rstrip("/") + path[1:]
    return path


def _decode(data: bytes) -> str:
    return data.decode("utf-8", errors="replace")


class LocalStreamProcess:
    """A command on this machine in its own session; `close` kills its whole process group."""

    def __init__(self, argv: list[str]):
        self._proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        self._fd = self._proc.stdout.fileno()
        self._eof = False
        self._lock = threading.Lock()

    def read(self, timeout: float) -> bytes | None:
        with self._lock:
            if self._eof:
                return None
            ready, _, _ = select.select([self._fd], [], [], max(0.0, timeout))
            if not ready:
                return b""
            data = os.read(self._fd, _READ_CHUNK)
            if not data:
                self._eof = True
                self._proc.wait()
                return None
            return data

    @property
    def returncode(self) -> int | None:
        return self._proc.poll()

    @property
    def pid(self) -> int:
        return self._proc.pid

    def close(self) -> None:
        _kill_group(self._proc, STREAM_KILL_GRACE_S)
        with self._lock:
            self._eof = True
            if self._proc.stdout and not self._proc.stdout.closed:
                self._proc.stdout.close()


def _kill_group(proc: subprocess.Popen, grace_s: float) -> None:
    """TERM then KILL the process group led by `proc` (started with start_new_session)."""
    if proc.poll() is not None:
        return
    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=wait_s)
            return
        except subprocess.TimeoutExpired:
            continue


class LocalTransport:
    """This machine through subprocess: the `local` profile's transport (no shell unless `run_shell`)."""

    def __init__(self, name: str = "local"):
        self.name = name

    def __repr__(self) -> str:
        return f"LocalTransport({self.name!r})"

    def _exec(self, argv: list[str], shown: str, timeout: float | None, check: bool,
              stdin: bytes | None) -> CommandResult:
        try:
            proc = subprocess.Popen(
                argv, stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
            )
        except FileNotFoundError as exc:
            # Same shape as a shell's "command not found" so callers handle both transports alike.
            result = CommandResult(127, "", f"{argv[0]}: command not found ({exc.strerror})\n")
            if check:
                raise RemoteCommandError(self.name, shown, result.rc, result.stderr) from exc
            return result
        try:
            out, err = proc.communicate(stdin, timeout=timeout)
        except subprocess.TimeoutExpired as exc:
            _kill_group(proc, 1.0)
            proc.communicate()
            raise CommandTimeout(self.name, shown, timeout or 0) from exc
        result = CommandResult(proc.returncode, _decode(out), _decode(err))
        if check and result.rc != 0:
            raise RemoteCommandError(self.name, shown, result.rc, result.stderr)
        return result

    def run(self, argv: list[str], *, timeout: float | None = 60, check: bool = True,
            stdin: bytes | None = None) -> CommandResult:
        argv = [str(a) for a in argv]
        return self._exec(argv, shlex.join(argv), timeout, check, stdin)

    def run_shell(self, script: str, *, timeout: float | None = 60, check: bool = True) -> CommandResult:
        return self._exec(["bash", "-c", script], script, timeout, check, None)

    def start(self, argv: list[str]) -> LocalStreamProcess:
        return LocalStreamProcess([str(a) for a in argv])

    def _path(self, path: str) -> Path:
        return Path(expand_home(str(path), self.home()))

    def put_bytes(self, data: bytes, path: str, mode: int | None = None) -> None:
        target = self._path(path)
        with atomic_path(target) as tmp:
            tmp.write_bytes(data)
            if mode is not None:
                tmp.chmod(mode)

    def put_file(self, local: Path, path: str, mode: int | None = None) -> None:
        target = self._path(path)
        with atomic_path(target) as tmp:
            with open(local, "rb") as src, open(tmp, "wb") as dst:
                while block := src.read(1 << 20):
                    dst.write(block)
            if mode is not None:
                tmp.chmod(mode)

    def read_bytes(self, path: str, offset: int = 0, max_bytes: int | None = None) -> bytes:
        with open(self._path(path), "rb") as f:
            if offset:
                f.seek(offset)
            return f.read() if max_bytes is None else f.read(max_bytes)

    def size(self, path: str) -> int | None:
        try:
            return self._path(path).stat().st_size
        except FileNotFoundError:
            return None

    def makedirs(self, path: str) -> None:
        self._path(path).mkdir(parents=True, exist_ok=True)

    def home(self) -> str:
        return str(Path.home())

    def close(self) -> None:
        """Nothing to release for this machine."""


def wait_for(predicate, timeout: float, interval: float = 0.05) -> bool:
    """Poll `predicate` until it is true or `timeout` passes; returns its last value (for tests and checks)."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)
