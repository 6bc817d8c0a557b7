# os.path / os.mkdir on purpose: pathlib would add an import to every sample's start.
# ruff: noqa: PTH102, PTH103, PTH106, PTH112
"""The sandbox launcher: sets up isolation for ONE sample, runs it, reports how it ended.

Standard library only, imports kept minimal (marshal and _signal, not json and signal). Two ways in:
`python -I -S sandbox_launcher.py CONFIG` (CONFIG: marshal, hex) runs one sample; `--serve FD` is the
zygote that remote/job/sandbox.py keeps per worker slot: it forks a per-sample launcher for each request
(config + stdin/stdout/stderr/status fds over a SEQPACKET socket), saving one interpreter start per sample.
Process tree per sample with our own namespaces (as root: "root-namespaces"; as anyone: "userns"):

    per-sample launcher (host namespaces, own session)   wall-clock timeout, report on the status pipe
      └─ init   (pid 1 of new pid/net/mount/ipc/uts [+user] namespaces, dies with the launcher: PDEATHSIG)
           └─ worker (pid 2, rlimits, no_new_privs, no capabilities) = a fresh `python -I -S -c STAGE2`

As root the worker drops to the worker slot's own uid. As an ordinary user ("userns") the launcher first
enters a new user namespace mapping the user to itself (drop to the slot uid first when root), so init may
mount; the worker's execve then leaves it without capabilities, and init forbids nested user namespaces.
With bubblewrap ("bwrap") the launcher's child execs `bwrap ... -- python -I -S -c STAGE2 NPROC` instead,
and bwrap builds the same view (its pid 1 plays init; --die-with-parent ties it to the launcher).

When init exits the kernel kills every process left in its pid namespace, so nothing a sample starts
(setsid, double fork) outlives it. The mount namespace gives the sample a private tmpfs /tmp (its cwd),
/var/tmp and /dev/shm, hides /root, /home and the user's home behind empty tmpfs (re-exposing only the
interpreter prefix, read-only, at its own path), and makes every other mount read-only. The net namespace
has only a down loopback: no connection goes anywhere. Without namespaces (`evaluation.sandbox:
unconfined`) the launcher forks the worker directly and the parent sweeps the session and the sample's
marker instead.
"""

import _signal as signal  # the C module: `signal` would import enum and functools (~10 ms per sample)
import marshal  # built in: json would import re and friends at every start
import os
import resource
import sys

CLONE_NEWNS = 0x00020000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_REMOUNT = 32
MS_NOATIME = 1024
MS_NODIRATIME = 2048
MS_BIND = 4096
MS_REC = 16384
MS_PRIVATE = 1 << 18
MS_RELATIME = 1 << 21
MS_STRICTATIME = 1 << 24
MNT_DETACH = 2
PR_SET_PDEATHSIG = 1
PR_SET_DUMPABLE = 4
PR_SET_NO_NEW_PRIVS = 38

# The code the worker runs: reads the token line and the program from stdin, closes stdin, runs the
# program, and prints the token only if the program ran to its end. Kept tiny: it runs once per sample.
STAGE2 = r"""
import os, sys, builtins
if len(sys.argv) > 1:  # under bwrap: the process limit, set here inside the sample's own user namespace
    import resource
    _n = int(sys.argv.pop()); resource.setrlimit(resource.RLIMIT_NPROC, (_n, _n)); del _n, resource
_d = sys.stdin.buffer.read()
_n = os.open(os.devnull, os.O_RDONLY); os.dup2(_n, 0); os.close(_n)
_i = _d.index(b"\n")
_t, _s = _d[:_i], _d[_i + 1:].decode("utf-8", "replace")
del _d, _i, _n
def _q(code=None):
    raise SystemExit(code)
builtins.exit = builtins.quit = _q
def _fail(kind, code):
    try:
        sys.stdout.flush()
    except BaseException:
        pass
    os.write(2, b"\n\x00tunedeck-error=" + kind.encode() + b"\n")
    os._exit(code)
def _run(tok, src):
    try:
        code = compile(src, "<sample>", "exec")
    except BaseException as e:
        import traceback; traceback.print_exc()
        _fail("syntax:" + type(e).__name__, 3)
    del src
    g = {"__name__": "__sandbox__", "__builtins__": builtins}
    try:
        exec(code, g)
    except BaseException as e:
        import traceback; traceback.print_exc()
        _fail(("exit:" + str(e.code)) if isinstance(e, SystemExit) else type(e).__name__, 4)
    try:
        sys.stdout.flush()
    except BaseException:
        pass
    os.write(1, b"\n" + tok + b"\n")
    os._exit(0)
_r = _run
del _run
_r(_t, _s)
"""


_LIBC = None


def _libc():
    global _LIBC
    if _LIBC is None:
        _LIBC = _load_libc()
    return _LIBC


def _load_libc():
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)

    def check(ret, what):
        if ret != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"{what}: {os.strerror(err)}")

    def mount(src, target, fstype, flags, data):
        def enc(s):
            return None if s is None else s.encode()

        check(libc.mount(enc(src), enc(target), enc(fstype), ctypes.c_ulong(flags), enc(data)), f"mount {target}")

    def umount2(target, flags):
        check(libc.umount2(target.encode(), flags), f"umount {target}")

    def unshare(flags):
        check(libc.unshare(flags), "unshare")

    def prctl(option, arg):
        check(libc.prctl(option, ctypes.c_ulong(arg), 0, 0, 0), f"prctl {option}")

    return mount, umount2, unshare, prctl


_FLAG_NAMES = {"ro": MS_RDONLY, "nosuid": MS_NOSUID, "nodev": MS_NODEV, "noexec": MS_NOEXEC,
               "noatime": MS_NOATIME, "nodiratime": MS_NODIRATIME, "relatime": MS_RELATIME,
               "strictatime": MS_STRICTATIME}


def _mounts():
    """(mount point, per-mount flags) from /proc/self/mountinfo."""
    out = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            parts = line.split()
            point = parts[4].encode().decode("unicode_escape")  # \040 etc. are octal escapes
            flags = 0
            for opt in parts[5].split(","):
                flags |= _FLAG_NAMES.get(opt, 0)
            out.append((point, flags))
    return out


def _under(path, root):
    return path == root or path.startswith(root.rstrip("/") + "/")


def setup_mounts(cfg, mount, umount2):
    """Private /tmp, hidden homes, read-only everything else (inside the new mount namespace)."""
    mount(None, "/", None, MS_REC | MS_PRIVATE, None)
    if cfg.get("pid_ns"):
        mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, None)
    size = f"size={int(cfg['tmpfs_mb'])}m"
    mount("tunedeck-tmp", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, size + ",mode=1777")
    private = ["/tmp"]
    for extra in ("/var/tmp", "/dev/shm"):
        if os.path.isdir(extra):
            mount("tunedeck-tmp", extra, "tmpfs", MS_NOSUID | MS_NODEV, size + ",mode=1777")
            private.append(extra)
    prefix = cfg["prefix"]
    hidden = [h for h in cfg.get("hide", []) if os.path.isdir(h)]
    stage = None
    if any(_under(prefix, h) for h in hidden):
        stage = "/tmp/.tunedeck-prefix"
        os.mkdir(stage, 0o755)
        mount(prefix, stage, None, MS_BIND | MS_REC, None)
    for h in hidden:
        mount("tunedeck-hide", h, "tmpfs", MS_NOSUID | MS_NODEV, "size=1m,mode=755")
    if stage:
        os.makedirs(prefix, 0o755, exist_ok=True)
        mount(stage, prefix, None, MS_BIND | MS_REC, None)
        umount2(stage, MNT_DETACH)
        os.rmdir(stage)
    # Read-only remount of every mount except the private tmpfs ones and the kernel's pseudo file systems.
    keep_rw = (*private, "/proc", "/sys", "/dev/pts")
    for point, flags in _mounts():
        if any(_under(point, k) for k in keep_rw):
            continue
        if point != prefix and any(_under(point, h) and point != h for h in hidden):
            continue  # shadowed by the hiding tmpfs
        try:
            mount(None, point, None, MS_REMOUNT | MS_BIND | MS_RDONLY | flags, None)
        except OSError:
            if point in ("/", prefix):
                raise
    work = "/tmp/work"
    os.mkdir(work, 0o700)
    if cfg.get("uid") is not None:
        os.chown(work, cfg["uid"], cfg["gid"])
    return work


def set_limits(cfg, skip=()):
    for name, value in cfg["rlimits"].items():
        if name not in skip:
            res = getattr(resource, name)
            resource.setrlimit(res, (value, value))


def _switch_user(uid, gid):
    os.setgroups([])
    os.setgid(gid)
    os.setuid(uid)
    if os.getuid() != uid or os.geteuid() != uid:
        raise OSError("uid drop did not stick")


def drop_privileges(cfg, prctl):
    if cfg.get("uid") is not None:
        _switch_user(cfg["uid"], cfg["gid"])
    if prctl is not None:
        prctl(PR_SET_NO_NEW_PRIVS, 1)


def become_slot_user(cfg):
    """Root in the userns and bwrap modes: become the slot's uid BEFORE the user namespace exists, since a
    namespace owned by root would hand the sample root's access to every file it can see."""
    if cfg.get("pre_uid") is not None:
        _switch_user(cfg["pre_uid"], cfg["pre_gid"])
        # The uid change made the process undumpable, which makes /proc/self/{uid_map,gid_map,setgroups} root's:
        # the (new) owner could not write its own maps.
        _libc()[3](PR_SET_DUMPABLE, 1)


def _write_file(path, text):
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def enter_user_namespace(unshare, flags):
    """unshare(CLONE_NEWUSER | flags), the user mapped to itself: this process keeps full capabilities in the
    new namespace (so init can mount) until an execve, which the worker's is (and it is not uid 0 there)."""
    uid, gid = os.getuid(), os.getgid()
    unshare(flags | CLONE_NEWUSER)
    _write_file("/proc/self/setgroups", "deny")  # required before an unprivileged gid_map
    _write_file("/proc/self/uid_map", f"{uid} {uid} 1")
    _write_file("/proc/self/gid_map", f"{gid} {gid} 1")


def forbid_nested_user_namespaces():
    """In the sample's user namespace: no further ones (less kernel surface; what bwrap --disable-userns does).
    Hardening only (kernels before 4.9 have no per-namespace limit): the worker holds no capabilities anyway."""
    try:
        _write_file("/proc/sys/user/max_user_namespaces", "0")
    except OSError:
        pass


def exec_worker(cfg, work, prctl, err_w):
    """In the worker: limits, user drop, exec the interpreter. Never returns."""
    try:
        set_limits(cfg)
        drop_privileges(cfg, prctl)
        os.chdir(work)
        os.execve(cfg["python"], [cfg["python"], "-I", "-S", "-c", STAGE2], cfg["env"])
    except BaseException as exc:  # noqa: BLE001  (the forked child must never return into the launcher's code)
        os.write(err_w, f"worker setup: {exc}".encode()[:4000])
    os._exit(125)


def exec_bwrap(cfg, err_w, info_w):
    """In the launcher's child: exec bubblewrap, which builds the namespaces and runs the worker. Never returns.

    The rlimits are inherited through bwrap, except RLIMIT_NPROC: the kernel counts processes per (user
    namespace, uid) at every level up to the host, and caps each parent level at the limit its creator had
    when the namespace was made. Set here, 32 would cap ALL of the user's processes on the host at 32 (bwrap
    itself could not fork on a busy login node); set by STAGE2 inside, it caps this sample alone."""
    try:
        become_slot_user(cfg)
        set_limits(cfg, skip=("RLIMIT_NPROC",))
        os.set_inheritable(info_w, True)  # bwrap reports its pid 1 there (the launcher kills that one at the limit)
        argv = [*cfg["bwrap"], "--info-fd", str(info_w), "--", cfg["python"], "-I", "-S", "-c", STAGE2,
                str(cfg["rlimits"]["RLIMIT_NPROC"])]
        os.execve(argv[0], argv, cfg["env"])
    except BaseException as exc:  # noqa: BLE001  (the forked child must never return into the launcher's code)
        os.write(err_w, f"bwrap start: {exc}".encode()[:4000])
    os._exit(125)


def bwrap_pid1(info_r):
    """The host pid of bwrap's pid 1 (its --info-fd JSON, `"child-pid": N`), or None before bwrap wrote it."""
    try:
        text = os.read(info_r, 4096).decode("ascii", "replace")
    except BlockingIOError:
        return None
    _, found, rest = text.partition('"child-pid"')
    digits = rest.lstrip(" :\t\n")
    digits = digits[: len(digits) - len(digits.lstrip("0123456789"))]
    return int(digits) if found and digits else None


def _ppid(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


def wait_child(pid, deadline_s, info_r=None):
    """waitpid with a wall-clock limit; SIGKILLs the child (and with it its pid namespace) at the limit.

    Under bwrap the child is bwrap's monitor, outside the namespace: killing it would leave its pid 1 to die
    by PDEATHSIG a moment later, after we report. So bwrap's pid 1 is killed instead: the kernel kills and
    reaps everything in its namespace before pid 1's exit completes, the monitor then exits, and when waitpid
    returns here nothing of the sample is left."""
    state = {"timed_out": False}

    def on_alarm(signum, frame):
        state["timed_out"] = True
        target = bwrap_pid1(info_r) if info_r is not None else None
        if target is not None and _ppid(target) != pid:
            target = None  # not bwrap's child (gone already): kill the monitor instead
        try:
            os.kill(target or pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, max(deadline_s, 0.001))
    _, status, usage = os.wait4(pid, 0)
    signal.setitimer(signal.ITIMER_REAL, 0)
    return status, usage, state["timed_out"]


def read_all(fd):
    chunks = []
    while True:
        b = os.read(fd, 65536)
        if not b:
            return b"".join(chunks).decode("utf-8", "replace")
        chunks.append(b)


def run_sample(cfg):
    """Run one sample as configured and write the report to cfg["status_fd"]. Never returns."""
    status_fd = cfg["status_fd"]
    os.set_inheritable(status_fd, False)
    report = {"setup_error": None, "timed_out": False, "exit": None, "signal": None}
    prctl = None
    err_r, err_w = os.pipe()
    bwrap = bool(cfg.get("bwrap"))
    try:
        mount = umount2 = None
        if cfg.get("namespaces"):
            mount, umount2, unshare, prctl = _libc()
            flags = CLONE_NEWNS | CLONE_NEWIPC | CLONE_NEWUTS
            flags |= CLONE_NEWPID if cfg.get("pid_ns") else 0
            flags |= CLONE_NEWNET if cfg.get("net_ns") else 0
            if cfg.get("user_ns"):
                become_slot_user(cfg)
                enter_user_namespace(unshare, flags)
            else:
                unshare(flags)
        elif cfg.get("no_new_privs") and not bwrap:  # bwrap sets no_new_privs itself
            _, _, _, prctl = _libc()
    except OSError as exc:
        report["setup_error"] = f"launcher: {exc}"
        os.write(status_fd, marshal.dumps(report))
        os._exit(125)
    launcher_pid = os.getpid()
    info_r, info_w = os.pipe() if bwrap else (None, None)
    pid = os.fork()
    if pid == 0:
        try:
            os.close(err_r)
            if bwrap:
                os.close(info_r)
                exec_bwrap(cfg, err_w, info_w)
            if cfg.get("namespaces"):
                prctl(PR_SET_PDEATHSIG, signal.SIGKILL)  # init dies with the launcher, and with it the namespace
                # (under a new pid namespace getppid() is 0: the launcher is outside it)
                if not cfg.get("pid_ns") and os.getppid() != launcher_pid:
                    os._exit(125)
                work = setup_mounts(cfg, mount, umount2)
                if cfg.get("user_ns"):
                    forbid_nested_user_namespaces()
                worker = os.fork()
                if worker == 0:
                    exec_worker(cfg, work, prctl, err_w)
                os.close(err_w)
                # init: wait for the worker only (orphans are reaped by the kernel when init exits)
                _, status = os.waitpid(worker, 0)
                if os.WIFEXITED(status):
                    os._exit(os.WEXITSTATUS(status))
                os._exit(128 + os.WTERMSIG(status))
            work = cfg["workdir"]
            exec_worker(cfg, work, prctl, err_w)
        except BaseException as exc:  # noqa: BLE001  (process boundary: report, then exit)
            try:
                os.write(err_w, f"init setup: {exc}".encode()[:4000])
            finally:
                os._exit(125)
    os.close(err_w)
    if info_w is not None:
        os.close(info_w)
        os.set_blocking(info_r, False)
    status, usage, timed_out = wait_child(pid, cfg["timeout_s"], info_r)
    err = read_all(err_r)
    if err:
        report["setup_error"] = err
    report["timed_out"] = timed_out
    if os.WIFEXITED(status):
        code = os.WEXITSTATUS(status)
        # With a pid namespace, init (ours or bwrap's) reports the worker's death by signal as 128+N.
        if (cfg.get("namespaces") or bwrap) and code > 128 and not err:
            report["signal"] = code - 128
        else:
            report["exit"] = code
    else:
        report["signal"] = os.WTERMSIG(status)
    report["cpu_s"] = usage.ru_utime + usage.ru_stime
    report["maxrss_kb"] = usage.ru_maxrss
    os.write(status_fd, marshal.dumps(report))
    os._exit(0)


def serve(sock_fd):
    """Zygote mode: one long-lived launcher per worker slot forks a per-sample launcher for each request,
    which saves an interpreter start (and the ctypes import) per sample. Each request on the SEQPACKET
    socket is a marshal'd config with four fds (stdin, stdout, stderr, status); the reply is the pid of
    the per-sample launcher (its own session: the parent kills that group on its backup timeout)."""
    import socket

    sock = socket.socket(fileno=sock_fd)
    _libc()  # loaded once here, inherited by every per-sample fork
    # No PDEATHSIG here: it fires when the *thread* that started us exits (a pool thread, after each
    # batch). The evaluation's death closes its end of the socket instead, and recv_fds returns EOF.
    while True:
        while True:  # reap finished per-sample launchers
            try:
                pid, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
        try:
            msg, fds, _, _ = socket.recv_fds(sock, 1 << 20, 4)
        except OSError:
            return
        if not msg:
            return
        if len(fds) != 4:
            for fd in fds:
                os.close(fd)
            sock.sendall(marshal.dumps(-1))
            continue
        pid = os.fork()
        if pid == 0:
            try:
                sock.close()
                os.setsid()
                for target, fd in enumerate(fds[:3]):
                    os.dup2(fd, target)
                for fd in fds[:3]:
                    if fd > 2:
                        os.close(fd)
                cfg = marshal.loads(msg)
                cfg["status_fd"] = fds[3]
                run_sample(cfg)
            finally:
                os._exit(125)
        for fd in fds:
            os.close(fd)
        sock.sendall(marshal.dumps(pid))



def main():
    if sys.argv[1] == "--serve":
        serve(int(sys.argv[2]))
        return
    run_sample(marshal.loads(bytes.fromhex(sys.argv[1])))


if __name__ == "__main__":
    main()
