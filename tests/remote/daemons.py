"""Real sshd and a real single-node Slurm cluster (8 fake GPUs) on 127.0.0.1, for tests and benchmarks.

Everything lives in one work dir: keys, configs, logs, spool and state. The daemons run as root from
their own config files, in the foreground as our child processes, on free ports; nothing in /etc is
touched and no systemd is needed. Usable outside pytest (tests/bench):

    with start_daemons(Path(tempfile.mkdtemp())) as (sshd, slurm):
        ...  # sshd.alias in sshd.ssh_config reaches this machine as root; SLURM_CONF=slurm.slurm_conf

What was measured to make this work is in /work/shared/FACTS.md ("SSH and Slurm on loopback").
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

SSHD = "/usr/sbin/sshd"
SLURMCTLD = "/usr/sbin/slurmctld"
SLURMD = "/usr/sbin/slurmd"
MUNGED = "/usr/sbin/munged"
APT_PACKAGES = ("openssh-server", "slurm-wlm", "munge")
START_TIMEOUT_S = 30.0
N_FAKE_GPUS = 8
SLURM_CPUS = 16  # more than the real cores, declared through SlurmdParameters=config_overrides


class DaemonsUnavailable(RuntimeError):
    """The daemons cannot run here (not root, packages missing); tests skip with this message."""


def ensure_packages() -> None:
    """Install openssh-server, slurm-wlm and munge with apt-get when missing (root only)."""
    missing = [p for p in (SSHD, SLURMCTLD, SLURMD, MUNGED) if not Path(p).exists()]
    if not missing:
        return
    if os.geteuid() != 0:
        raise DaemonsUnavailable(f"needs root to install {' '.join(APT_PACKAGES)} (missing: {', '.join(missing)})")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *APT_PACKAGES]):
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
        if proc.returncode != 0:
            raise DaemonsUnavailable(f"`{' '.join(cmd)}` failed: {proc.stderr[-2000:]}")
    still = [p for p in (SSHD, SLURMCTLD, SLURMD, MUNGED) if not Path(p).exists()]
    if still:
        raise DaemonsUnavailable(f"installed {APT_PACKAGES} but still missing {still}")


def require_root() -> None:
    if os.geteuid() != 0:
        raise DaemonsUnavailable("the test sshd and Slurm run as root (daemons from their own configs); not root here")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float, proc: subprocess.Popen | None = None, log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"daemon exited with {proc.returncode} before listening on {port}: {_tail(log)}")
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.settimeout(0.2)
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.02)
    raise RuntimeError(f"nothing listened on 127.0.0.1:{port} within {timeout} s: {_tail(log)}")


def _tail(log: Path | None, n: int = 3000) -> str:
    if log is None or not log.exists():
        return ""
    return log.read_text(errors="replace")[-n:]


def _children_map() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # comm may contain spaces and parentheses: fields after the last ')' are fixed.
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    return children


def descendants(pid: int) -> list[int]:
    """All processes below `pid` (a snapshot)."""
    tree = _children_map()
    out, todo = [], [pid]
    while todo:
        for child in tree.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def _kill(pids: list[int], sig: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child counts as gone.
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _stop_proc(proc: subprocess.Popen | None, timeout: float = 5.0) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)


def processes_mentioning(marker: str) -> list[int]:
    """Pids whose environment or command line contains `marker` (our work dir), except us and our parents."""
    spare = {os.getpid()}
    pid = os.getppid()
    while pid > 1:
        spare.add(pid)
        try:
            pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except OSError:
            break
    found, needle = [], marker.encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) in spare:
            continue
        try:
            blob = (entry / "environ").read_bytes() + (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if needle in blob:
            found.append(int(entry.name))
    return found


def openssh_fingerprint(key_blob: bytes) -> str:
    """OpenSSH's `SHA256:...` fingerprint of a public key blob (base64 without padding)."""
    return "SHA256:" + base64.b64encode(hashlib.sha256(key_blob).digest()).decode().rstrip("=")


@dataclass
class SshdServer:
    """A real OpenSSH server on 127.0.0.1:`port` letting `user` in with `client_key`.

    `ssh_config` defines the Host aliases `alias` (direct) and `jump_alias` (the same server reached
    through itself with ProxyJump). `known_hosts` pins `host_key_fingerprint` for 127.0.0.1:port.
    `kill()` drops the server and every live connection; `start()` brings it back on the same port.
    """

    workdir: Path
    port: int
    host: str = "127.0.0.1"
    user: str = "root"
    alias: str = "tdtest-sshd"
    jump_alias: str = "tdtest-via-jump"
    set_env: dict[str, str] = field(default_factory=dict)
    max_sessions: int = 200  # channels per connection (OpenSSH's default is 10)
    proc: subprocess.Popen | None = None

    def __post_init__(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.host_key = self.workdir / "ssh_host_ed25519_key"
        self.client_key = self.workdir / "id_ed25519"
        self.known_hosts = self.workdir / "known_hosts"
        self.ssh_config = self.workdir / "ssh_config"
        self.config = self.workdir / "sshd_config"
        self.log = self.workdir / "sshd.log"
        for key in (self.host_key, self.client_key):
            if not key.exists():
                subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "tunedeck-test", "-f", str(key)],
                               check=True, capture_output=True)
        (self.workdir / "authorized_keys").write_text(self.client_key.with_suffix(".pub").read_text())
        key_type, key_b64 = self.host_key.with_suffix(".pub").read_text().split()[:2]
        self.host_key_type = key_type
        self.host_key_line = f"{self.known_hosts_name} {key_type} {key_b64}\n"
        self.host_key_fingerprint = openssh_fingerprint(base64.b64decode(key_b64))
        self.known_hosts.write_text(self.host_key_line)
        self.known_hosts.chmod(0o600)
        self.client_key.chmod(0o600)
        self._write_configs()

    @property
    def known_hosts_name(self) -> str:
        """How known_hosts names this server (OpenSSH's `[host]:port` for a non-22 port)."""
        return f"[{self.host}]:{self.port}"

    def _write_configs(self) -> None:
        set_env = " ".join(f"{k}={v}" for k, v in self.set_env.items())
        lines = [
            f"Port {self.port}",
            f"ListenAddress {self.host}",
            f"HostKey {self.host_key}",
            f"PidFile {self.workdir / 'sshd.pid'}",
            f"AuthorizedKeysFile {self.workdir / 'authorized_keys'}",
            "StrictModes no",  # keys live under /tmp
            "PermitRootLogin prohibit-password",
            "PubkeyAuthentication yes",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "UsePAM no",
            f"MaxSessions {self.max_sessions}",  # one connection carries many channels (streams of several runs)
            "MaxStartups 100:30:200",
            "AllowTcpForwarding yes",  # ProxyJump through this server
            "Subsystem sftp internal-sftp",
            "LogLevel VERBOSE",
        ]
        if set_env:
            lines.append(f"SetEnv {set_env}")
        self.config.write_text("\n".join(lines) + "\n")
        self.ssh_config.write_text(
            f"Host {self.alias}\n"
            f"    HostName {self.host}\n    Port {self.port}\n    User {self.user}\n"
            f"    IdentityFile {self.client_key}\n    UserKnownHostsFile {self.known_hosts}\n\n"
            f"Host {self.jump_alias}\n"
            f"    HostName {self.host}\n    Port {self.port}\n    User {self.user}\n"
            f"    IdentityFile {self.client_key}\n    UserKnownHostsFile {self.known_hosts}\n"
            f"    ProxyJump {self.alias}\n"
        )

    def start(self, timeout: float = START_TIMEOUT_S) -> None:
        """Start (or restart after `kill`) on the same port; returns once it accepts connections."""
        if self.running:
            return
        Path("/run/sshd").mkdir(parents=True, exist_ok=True)  # privilege separation dir
        # Absolute path: sshd refuses to re-exec itself otherwise. -D: stay our child; -e: log to -E file.
        self.proc = subprocess.Popen([SSHD, "-D", "-f", str(self.config), "-E", str(self.log)],
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     start_new_session=True)
        wait_port(self.port, timeout, self.proc, self.log)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.running else None

    def connection_pids(self) -> list[int]:
        """The per-connection sshd processes (not the commands they run)."""
        if not self.running:
            return []
        return [p for p in descendants(self.proc.pid) if _comm(p).startswith("sshd")]  # sshd-session in 9.8+

    def kill(self) -> None:
        """SIGKILL the listener and every connection's sshd: clients see their link drop at once.

        Commands started through it lose their channel (and exit when they write or, like `tail -F`,
        notice); detached jobs (sbatch, setsid nohup) keep running, as on a real cluster.
        """
        if self.proc is None:
            return
        conns = self.connection_pids()
        _kill([self.proc.pid, *conns], signal.SIGKILL)
        self.proc.wait(timeout=5)
        deadline = time.monotonic() + 5
        while any(_alive(p) for p in conns) and time.monotonic() < deadline:
            time.sleep(0.01)

    def restart(self, timeout: float = START_TIMEOUT_S) -> None:
        self.kill()
        self.start(timeout)

    def stop(self) -> None:
        self.kill()
        self.proc = None


def _resolvable_node_name(fallback: str = "tdnode") -> str:
    name = socket.gethostname()
    try:
        return name if name and socket.gethostbyname(name) else fallback
    except OSError:
        return fallback


@dataclass
class SlurmCluster:
    """slurmctld + slurmd + munged from config files in `workdir`: one node `node` with
    SLURM_CPUS CPUs and N_FAKE_GPUS GPUs (character devices) in partition `partition`.

    Clients need SLURM_CONF=`slurm_conf` (see `env`); sshd passes it to remote commands with SetEnv.
    Finished jobs stay visible to `squeue -t all` / `scontrol show job` for MinJobAge (1 h); no sacct.
    """

    workdir: Path
    partition: str = "debug"
    # The node is named after this machine when its name resolves: Slurm launch scripts reach the first
    # node of a job by its hostname (torchrun rendezvous), and a made-up name does not resolve.
    node: str = field(default_factory=lambda: _resolvable_node_name())
    cluster_name: str = "tdtest"
    gpus: int = N_FAKE_GPUS
    cpus: int = SLURM_CPUS
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.slurm_conf = self.workdir / "slurm.conf"
        self.munge_socket = self.workdir / "munge" / "munge.socket.2"
        self.ctld_port = free_port()
        self.slurmd_port = free_port()
        while self.slurmd_port == self.ctld_port:
            self.slurmd_port = free_port()

    @property
    def env(self) -> dict[str, str]:
        """os.environ plus SLURM_CONF: pass to subprocess for local sbatch/squeue."""
        return {**os.environ, "SLURM_CONF": str(self.slurm_conf)}

    def _write_configs(self) -> None:
        w = self.workdir
        for sub in ("state", "spool", "log", "munge", "dev"):
            (w / sub).mkdir(exist_ok=True)
        (w / "munge").chmod(0o755)  # munged refuses a socket dir others can write
        gpu_files = []
        for i in range(self.gpus):
            dev = w / "dev" / f"nvidia{i}"
            if not dev.exists():
                # A character device (like /dev/null): Slurm leaves CUDA_VISIBLE_DEVICES empty for regular files.
                os.mknod(dev, 0o666 | 0o020000, os.makedev(1, 3))
            gpu_files.append(str(dev))
        (w / "gres.conf").write_text(
            f"NodeName={self.node} Name=gpu File={w / 'dev'}/nvidia[0-{self.gpus - 1}]\n")
        (w / "slurm.conf").write_text(
            "\n".join([
                f"ClusterName={self.cluster_name}",
                f"SlurmctldHost={socket.gethostname().split('.')[0]}(127.0.0.1)",  # must name this host
                f"SlurmctldPort={self.ctld_port}",
                f"SlurmdPort={self.slurmd_port}",
                "SlurmUser=root",
                "SlurmdUser=root",
                "AuthType=auth/munge",
                "CredType=cred/munge",
                f"AuthInfo=socket={self.munge_socket}",
                f"StateSaveLocation={w / 'state'}",
                f"SlurmdSpoolDir={w / 'spool'}",
                f"SlurmctldPidFile={w / 'slurmctld.pid'}",
                f"SlurmdPidFile={w / 'slurmd.pid'}",
                f"SlurmctldLogFile={w / 'log' / 'slurmctld.log'}",
                f"SlurmdLogFile={w / 'log' / 'slurmd.log'}",
                "ProctrackType=proctrack/linuxproc",
                "TaskPlugin=task/none",
                "SelectType=select/cons_tres",
                "SelectTypeParameters=CR_Core",
                "SchedulerParameters=batch_sched_delay=0",
                "SlurmdParameters=config_overrides",
                "MailProg=/bin/true",
                "MinJobAge=3600",
                "ReturnToService=2",
                "GresTypes=gpu",
                "MpiDefault=none",
                "JobCompType=jobcomp/none",
                "JobAcctGatherType=jobacct_gather/none",
                "AccountingStorageType=accounting_storage/none",
                "KillWait=5",
                "InactiveLimit=0",
                "SlurmctldTimeout=30",
                "SlurmdTimeout=60",
                f"NodeName={self.node} NodeAddr=127.0.0.1 NodeHostname={self.node} CPUs={self.cpus} "
                f"RealMemory=16000 Gres=gpu:{self.gpus} State=UNKNOWN",
                f"PartitionName={self.partition} Nodes={self.node} Default=YES MaxTime=INFINITE State=UP",
            ]) + "\n"
        )

    def _spawn(self, name: str, argv: list[str]) -> subprocess.Popen:
        log = self.workdir / "log" / f"{name}.out"
        with open(log, "ab") as out:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                    env=self.env, start_new_session=True)
        self.procs[name] = proc
        return proc

    def start(self, timeout: float = START_TIMEOUT_S) -> None:
        self._write_configs()
        key = self.workdir / "munge" / "munge.key"
        if not key.exists():
            key.write_bytes(os.urandom(1024))
            key.chmod(0o600)
        w = self.workdir
        munged = self._spawn("munged", [
            MUNGED, "--foreground", "--force", f"--key-file={key}", f"--socket={self.munge_socket}",
            f"--pid-file={w / 'munge' / 'munged.pid'}", f"--log-file={w / 'log' / 'munged.log'}",
            f"--seed-file={w / 'munge' / 'munged.seed'}",
        ])
        deadline = time.monotonic() + timeout
        while not self.munge_socket.exists():
            if munged.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"munged did not start: {_tail(w / 'log' / 'munged.out')} {_tail(w / 'log' / 'munged.log')}")
            time.sleep(0.01)
        ctld = self._spawn("slurmctld", [SLURMCTLD, "-D", "-i", "-f", str(self.slurm_conf)])
        wait_port(self.ctld_port, timeout, ctld, w / "log" / "slurmctld.log")
        self._spawn("slurmd", [SLURMD, "-D", "-f", str(self.slurm_conf), "-N", self.node])
        self.wait_idle(timeout)

    def wait_idle(self, timeout: float) -> None:
        """Until the node is registered and idle (or mixed/allocated: ready to run jobs)."""
        deadline = time.monotonic() + timeout
        state = ""
        while time.monotonic() < deadline:
            for name, proc in self.procs.items():
                if proc.poll() is not None:
                    raise RuntimeError(f"{name} exited with {proc.returncode}: {self.logs()}")
            out = subprocess.run(["sinfo", "-h", "-N", "-o", "%T"], env=self.env, capture_output=True, text=True)
            state = out.stdout.strip()
            if out.returncode == 0 and state in {"idle", "mixed", "allocated"}:
                return
            time.sleep(0.05)
        raise RuntimeError(f"Slurm node not idle within {timeout} s (state {state!r}): {self.logs()}")

    def logs(self) -> str:
        return " | ".join(f"{p.name}: {_tail(p, 1500)}" for p in sorted((self.workdir / "log").glob("*")))

    def scontrol(self, *args: str) -> str:
        return subprocess.run(["scontrol", *args], env=self.env, capture_output=True, text=True, check=True).stdout

    def cancel_all(self) -> None:
        subprocess.run(["scancel", "--full", "-p", self.partition], env=self.env, capture_output=True)

    def stop(self) -> None:
        """Cancel every job, stop the daemons, then kill whatever still runs from this cluster."""
        if any(p.poll() is None for p in self.procs.values()):
            self.cancel_all()
        for name in ("slurmd", "slurmctld", "munged"):
            _stop_proc(self.procs.get(name))
        self.procs.clear()


def kill_leftovers(marker: str, grace_s: float = 2.0) -> list[int]:
    """TERM then KILL every process whose environment or argv names `marker` (our work dir): job steps,
    tails and detached jobs started through the test sshd (it sets SLURM_CONF to a path under it)."""
    pids = processes_mentioning(marker)
    if not pids:
        return []
    _kill(pids, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and any(_alive(p) for p in pids):
        time.sleep(0.02)
    _kill([p for p in pids if _alive(p)], signal.SIGKILL)
    return pids


@contextlib.contextmanager
def start_daemons(workdir: Path) -> Iterator[tuple[SshdServer, SlurmCluster]]:
    """Start Slurm then sshd (which hands SLURM_CONF to remote commands); stop both and leftovers on exit."""
    ensure_packages()
    require_root()
    if shutil.which("ssh-keygen") is None:
        raise DaemonsUnavailable("ssh-keygen not found (openssh-client)")
    slurm = SlurmCluster(workdir / "slurm")
    sshd = None
    try:
        slurm.start()
        sshd = SshdServer(workdir / "sshd", port=free_port(), set_env={"SLURM_CONF": str(slurm.slurm_conf)})
        sshd.start()
        yield sshd, slurm
    finally:
        if sshd is not None:
            sshd.stop()
        slurm.stop()
        kill_leftovers(str(workdir))
