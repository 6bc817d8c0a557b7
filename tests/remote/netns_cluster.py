"""A real several-node Slurm cluster on this machine: one set of Linux namespaces per node.

Each node is a holder process that is PID 1 of its own network, UTS (hostname), mount and PID namespaces:
it sets the node's hostname, bind-mounts the cluster's /etc/hosts and an ssh client config over the real
ones (inside its mount namespace only), and reaps orphans. Everything that runs "on" a node (its sshd on
port 22, its slurmd, every job process started through them) enters those namespaces, so a node sees its
own processes only, has its own address on a test bridge and resolves the other nodes by name, as on a real
cluster. munged and slurmctld run in the root namespaces (the controller, on the bridge address); all
nodes share the filesystem (the shared work root of a real cluster) and the machine's cores.

    with NetnsCluster(Path(tempfile.mkdtemp()), n_nodes=2) as cluster:
        cluster.nodes[0].name            # "node1": the login node (its sshd is what profiles reach)
        cluster.ssh_config               # Host node1, node2 for ssh/paramiko from this (root) namespace
        cluster.nodes[1].pids_with_env("TUNEDECK_RUN_ID", run_id)   # a job's processes on node2

Clean-up: stopping kills each holder, and the kernel then kills every process of that node's PID namespace
and drops its network and mount namespaces (veth, /etc/hosts bind mounts) with it; the bridge is deleted
and the controller daemons stopped. A cluster left by a killed test session is cleaned by the next start:
each cluster holds an flock on its slot file (/run/tunedeck-testnet/slot-N.lock, released by the kernel when
its owner dies), so a free slot whose bridge, holders or daemons still exist is stale and removed first.
Several sessions (a developer's and CI's) get different slots: bridge tdbrN, subnet 10.231.N.0/24.

Measured facts and pitfalls: /work/shared/FACTS.md, "Several nodes on one machine (network namespaces)".
The namespaces have no default route: nothing leaves the test subnet.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from tests.remote.daemons import (
    MUNGED,
    SLURMCTLD,
    SLURMD,
    SSHD,
    START_TIMEOUT_S,
    DaemonsUnavailable,
    _alive,
    _kill,
    _stop_proc,
    _tail,
    descendants,
    ensure_packages,
    free_port,
    kill_leftovers,
    processes_mentioning,
    require_root,
)

SLOT_DIR = Path("/run/tunedeck-testnet")
N_SLOTS = 16
HOLDER_TAG = "tunedeck-testnet-slot"  # in every holder's argv, with the slot: how stale holders are found
TOOLS = {"unshare": "util-linux", "nsenter": "util-linux", "ip": "iproute2", "pdsh": "pdsh"}
NODE_CPUS = 8  # declared per node (SlurmdParameters=config_overrides); all nodes share the real cores
NODE_GPUS = 8  # fake GPUs per node (character devices), so --gpus-per-node scripts run
URGENT_PARTITION = "urgent"  # a higher-priority partition over the same nodes: its jobs preempt the others
CRED_EXPIRE_S = 5
KILL_WAIT_S = 30  # between the SIGTERM of a cancelled or preempted job and its SIGKILL (time to checkpoint)

# PID 1 of a node's namespaces. Python because PID 1 must reap the orphans reparented to it: a detached job
# (`setsid -f`) that ends would otherwise stay a zombie, and `pgrep` would count it as still running.
HOLDER = r"""
import os, signal, socket, subprocess, sys, time
tag, name, hosts, ssh_config, ready = sys.argv[1:6]
socket.sethostname(name)
for src, dst in ((hosts, "/etc/hosts"), (ssh_config, "/etc/ssh/ssh_config")):
    subprocess.run(["mount", "--bind", src, dst], check=True)
subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
# PID 1 ignores signals it has no handler for: TERM ends the node (the kernel then kills the rest of it).
signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
with open(ready + ".tmp", "w") as f:
    f.write(str(os.getpid()))
os.rename(ready + ".tmp", ready)
while True:
    try:
        os.waitpid(-1, 0)
    except ChildProcessError:
        time.sleep(0.2)
"""


class NetnsUnavailable(DaemonsUnavailable):
    """Namespaces, tools or a free slot are missing here; the multi-node tests skip with this message."""


def ensure_tools() -> None:
    """unshare/nsenter (util-linux), ip (iproute2) and pdsh, installed with apt-get when missing (root)."""
    missing = sorted({pkg for tool, pkg in TOOLS.items() if shutil.which(tool) is None})
    if not missing:
        return
    if os.geteuid() != 0:
        raise NetnsUnavailable(f"needs root to install {' '.join(missing)}")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing]):
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
        if proc.returncode != 0:
            raise NetnsUnavailable(f"`{' '.join(cmd)}` failed: {proc.stderr[-2000:]}")


def _run(argv: list[str], check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise RuntimeError(f"`{' '.join(argv)}` failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc


def _link_exists(name: str) -> bool:
    return _run(["ip", "link", "show", name], check=False).returncode == 0


def _pids_tagged(tag: str) -> list[int]:
    """Processes whose command line holds `tag` as a whole argument."""
    found, needle = [], tag.encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if needle in argv:
            found.append(int(entry.name))
    return found


def _ns_of(pid: int, kind: str = "pid") -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/ns/{kind}")
    except OSError:
        return None


def environ_of(pid: int) -> dict[str, str]:
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return {}
    out = {}
    for item in raw.split(b"\0"):
        key, sep, value = item.partition(b"=")
        if sep:
            out[key.decode(errors="replace")] = value.decode(errors="replace")
    return out


@dataclass
class ClusterNode:
    """One node: its name, address and namespaces (entered through the holder, PID 1 of the node)."""

    name: str
    index: int  # 1-based
    ip: str
    holder: subprocess.Popen | None = None  # `unshare ... python3 HOLDER` (root namespaces)
    init_pid: int = 0  # the holder's child: PID 1 inside the node (as seen from the root namespace)
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)

    def enter(self, *argv: str) -> list[str]:
        """argv that runs `argv` on this node (its network, hostname, mounts and process list)."""
        return ["nsenter", "-t", str(self.init_pid), "-n", "-u", "-m", "-p", "--", *argv]

    def run(self, argv: list[str], timeout: float = 60, env: dict[str, str] | None = None
            ) -> subprocess.CompletedProcess:
        return subprocess.run(self.enter(*argv), capture_output=True, text=True, timeout=timeout, env=env)

    @property
    def pid_namespace(self) -> str | None:
        return _ns_of(self.init_pid)

    def pids(self) -> list[int]:
        """Every process on this node (root-namespace pids), PID 1 of the node excepted."""
        ns = self.pid_namespace
        if ns is None:
            return []
        out = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit() and int(entry.name) != self.init_pid and _ns_of(int(entry.name)) == ns \
                    and _alive(int(entry.name)):
                out.append(int(entry.name))
        return sorted(out)

    def pids_with_env(self, key: str, value: str) -> list[int]:
        """Processes on this node whose environment has key=value (a run's processes: TUNEDECK_RUN_ID)."""
        return [p for p in self.pids() if environ_of(p).get(key) == value]

    def kill(self, pids: list[int], sig: int = signal.SIGKILL) -> None:
        _kill(pids, sig)

    def bind_mount(self, src: str | Path, dst: str | Path) -> None:
        """Mount `src` over `dst` on this node only (its own mount namespace), e.g. to make it differ."""
        proc = self.run(["mount", "--bind", str(src), str(dst)])
        if proc.returncode != 0:
            raise RuntimeError(f"{self.name}: mount --bind {src} {dst}: {proc.stderr.strip()}")

    def umount(self, dst: str | Path) -> None:
        proc = self.run(["umount", str(dst)])
        if proc.returncode != 0:
            raise RuntimeError(f"{self.name}: umount {dst}: {proc.stderr.strip()}")

    @property
    def alive(self) -> bool:
        return self.holder is not None and self.holder.poll() is None


class NetnsCluster:
    """A Slurm cluster of `n_nodes` namespace nodes (node1..nodeN) plus one sshd per node on port 22.

    Clients in the root namespace use `ssh_config` (Host node1.. as root with `client_key`, host keys pinned
    in `known_hosts`) and SLURM_CONF=`slurm_conf` (`env`). Inside the nodes, plain `ssh nodeJ` works too
    (a per-node /etc/ssh/ssh_config with the same key and known_hosts): what pdsh and DeepSpeed's launcher
    call. Remote commands get SLURM_CONF through sshd's SetEnv.
    """

    def __init__(self, workdir: Path, n_nodes: int = 2, partition: str = "multi", cluster_name: str = "tdmulti",
                 node_names: list[str] | None = None, gpus_per_node: int = NODE_GPUS, cpus_per_node: int = NODE_CPUS,
                 slot: int | None = None):
        if not 1 <= n_nodes <= 9:
            raise ValueError("n_nodes must be 1..9")
        self.node_names = list(node_names or [f"node{i}" for i in range(1, n_nodes + 1)])
        if len(self.node_names) != n_nodes or len(set(self.node_names)) != n_nodes:
            raise ValueError(f"need {n_nodes} distinct node names, got {self.node_names}")
        self.workdir = Path(workdir)
        self.n_nodes = n_nodes
        self.gpus_per_node = gpus_per_node
        self.cpus_per_node = cpus_per_node
        self.partition = partition
        self.cluster_name = cluster_name
        self.wanted_slot = slot  # None: the first free one
        self.slot: int | None = None
        self._slot_file: IO[str] | None = None
        self.nodes: list[ClusterNode] = []
        self.procs: dict[str, subprocess.Popen] = {}  # controller daemons (root namespaces)
        w = self.workdir
        self.slurm_conf = w / "slurm.conf"
        self.munge_socket = w / "munge" / "munge.socket.2"
        self.client_key = w / "ssh" / "id_ed25519"
        self.known_hosts = w / "ssh" / "known_hosts"
        self.ssh_config = w / "ssh" / "ssh_config"  # for clients in the root namespace (tests, paramiko)
        self.node_ssh_config = w / "ssh" / "node_ssh_config"  # mounted as /etc/ssh/ssh_config on every node
        self.hosts_file = w / "hosts"
        self.ctld_port = 0
        self.slurmd_port = 0
        self.start_s = 0.0
        self.stop_s = 0.0

    # ------------------------------------------------------------------ names

    @property
    def bridge(self) -> str:
        return f"tdbr{self.slot}"

    @property
    def subnet(self) -> str:
        return f"10.231.{self.slot}"

    @property
    def controller_ip(self) -> str:
        return f"{self.subnet}.1"

    @property
    def controller_host(self) -> str:
        # slurmctld refuses any name but this machine's short hostname ("not a valid controller").
        return socket.gethostname().split(".")[0]

    @property
    def tag(self) -> str:
        return f"{HOLDER_TAG}-{self.slot}"

    @property
    def env(self) -> dict[str, str]:
        """os.environ plus SLURM_CONF: for sinfo/squeue/scontrol from the root namespace."""
        return {**os.environ, "SLURM_CONF": str(self.slurm_conf)}

    def node(self, name: str) -> ClusterNode:
        return next(n for n in self.nodes if n.name == name)

    # ------------------------------------------------------------------ slot (one cluster per slot)

    def _claim_slot(self) -> None:
        try:
            SLOT_DIR.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise NetnsUnavailable(f"cannot create {SLOT_DIR}: {exc}") from None
        for slot in (range(N_SLOTS) if self.wanted_slot is None else [self.wanted_slot]):
            f = open(SLOT_DIR / f"slot-{slot}.lock", "a+")  # noqa: SIM115 -- held open while the cluster lives
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                f.close()
                continue
            f.seek(0)
            previous = f.read()
            self.slot, self._slot_file = slot, f
            clean_stale_slot(slot, previous)
            f.seek(0)
            f.truncate()
            f.write(json.dumps({"pid": os.getpid(), "workdir": str(self.workdir), "started": time.time()}))
            f.flush()
            return
        raise NetnsUnavailable(f"no free test-network slot in {SLOT_DIR} (wanted {self.wanted_slot})")

    def _release_slot(self) -> None:
        if self._slot_file is not None:
            self._slot_file.seek(0)
            self._slot_file.truncate()
            self._slot_file.flush()
            fcntl.flock(self._slot_file, fcntl.LOCK_UN)
            self._slot_file.close()
            self._slot_file = None

    # ------------------------------------------------------------------ files

    def _keygen(self, path: Path) -> str:
        if not path.exists():
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "tunedeck-netns", "-f", str(path)],
                           check=True, capture_output=True)
        return " ".join(path.with_suffix(".pub").read_text().split()[:2])

    def _write_files(self) -> None:
        w = self.workdir
        for sub in ("ssh", "state", "spool", "log", "munge", "dev", "run"):
            (w / sub).mkdir(parents=True, exist_ok=True)
        (w / "munge").chmod(0o755)  # munged refuses a socket dir others can write
        client_pub = self._keygen(self.client_key)
        self.client_key.chmod(0o600)
        (w / "ssh" / "authorized_keys").write_text(client_pub + "\n")
        known, client_cfg = [], []
        for node in self.nodes:
            host_pub = self._keygen(w / "ssh" / f"{node.name}_host_ed25519_key")
            known.append(f"{node.name},{node.ip} {host_pub}")
            client_cfg.append(f"Host {node.name}\n    HostName {node.ip}\n    Port 22\n    User root\n"
                              f"    IdentityFile {self.client_key}\n    UserKnownHostsFile {self.known_hosts}\n"
                              "    StrictHostKeyChecking yes\n    BatchMode yes\n    ConnectTimeout 10\n")
            (w / "spool" / node.name).mkdir(exist_ok=True)
            (w / "ssh" / f"sshd_config.{node.name}").write_text("\n".join([
                "Port 22",
                "ListenAddress 0.0.0.0",
                f"HostKey {w / 'ssh' / f'{node.name}_host_ed25519_key'}",
                f"PidFile {w / 'run' / f'sshd-{node.name}.pid'}",
                f"AuthorizedKeysFile {w / 'ssh' / 'authorized_keys'}",
                "StrictModes no",  # keys live under /tmp
                "PermitRootLogin prohibit-password",
                "PubkeyAuthentication yes",
                "PasswordAuthentication no",
                "KbdInteractiveAuthentication no",
                "UsePAM no",
                "MaxSessions 200",
                "MaxStartups 100:30:200",
                "Subsystem sftp internal-sftp",  # uploads use SFTP
                "LogLevel VERBOSE",
                f"SetEnv SLURM_CONF={self.slurm_conf}",
            ]) + "\n")
        self.known_hosts.write_text("\n".join(known) + "\n")
        self.known_hosts.chmod(0o600)
        self.ssh_config.write_text("\n".join(client_cfg))
        # Inside the nodes (pdsh, DeepSpeed's ssh check, `ssh node2`): plain ssh as root with the same key.
        self.node_ssh_config.write_text(
            "Host *\n    User root\n"
            f"    IdentityFile {self.client_key}\n    UserKnownHostsFile {self.known_hosts}\n"
            "    StrictHostKeyChecking yes\n    BatchMode yes\n    ConnectTimeout 10\n    LogLevel ERROR\n")
        # torchrun's rendezvous needs every node's name to resolve, on every node.
        self.hosts_file.write_text(
            "127.0.0.1 localhost\n"
            f"{self.controller_ip} {self.controller_host}\n"
            + "".join(f"{n.ip} {n.name}\n" for n in self.nodes))
        for i in range(self.gpus_per_node):
            dev = w / "dev" / f"nvidia{i}"
            if not dev.exists():
                # A character device (like /dev/null): Slurm leaves CUDA_VISIBLE_DEVICES empty for regular files.
                os.mknod(dev, 0o666 | 0o020000, os.makedev(1, 3))
        names = ",".join(self.node_names)
        gpu_files = f"nvidia[0-{self.gpus_per_node - 1}]" if self.gpus_per_node > 1 else "nvidia0"
        (w / "gres.conf").write_text(f"NodeName={names} Name=gpu File={w / 'dev'}/{gpu_files}\n")
        self.slurm_conf.write_text("\n".join([
            f"ClusterName={self.cluster_name}",
            f"SlurmctldHost={self.controller_host}({self.controller_ip})",
            f"SlurmctldPort={self.ctld_port}",
            f"SlurmdPort={self.slurmd_port}",
            "SlurmUser=root",
            "SlurmdUser=root",
            "AuthType=auth/munge",
            "CredType=cred/munge",
            # cred_expire also holds a requeued (preempted) job back this long before it may start again (120 s
            # by default).
            f"AuthInfo=socket={self.munge_socket},cred_expire={CRED_EXPIRE_S}",
            f"StateSaveLocation={w / 'state'}",
            f"SlurmdSpoolDir={w / 'spool'}/%n",
            f"SlurmctldPidFile={w / 'run' / 'slurmctld.pid'}",
            f"SlurmdPidFile={w / 'run'}/slurmd-%n.pid",
            f"SlurmctldLogFile={w / 'log' / 'slurmctld.log'}",
            f"SlurmdLogFile={w / 'log'}/slurmd-%n.log",
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_Core",
            "SchedulerParameters=batch_sched_delay=0,sched_interval=1",  # a requeued job restarts at once
            "SlurmdParameters=config_overrides",
            "MailProg=/bin/true",
            "MinJobAge=3600",
            "ReturnToService=2",
            "GresTypes=gpu",
            "MpiDefault=none",
            "JobCompType=jobcomp/none",
            "JobAcctGatherType=jobacct_gather/none",
            "AccountingStorageType=accounting_storage/none",
            f"KillWait={KILL_WAIT_S}",
            "InactiveLimit=0",
            "SlurmctldTimeout=30",
            "SlurmdTimeout=60",
            *(f"NodeName={n.name} NodeAddr={n.ip} NodeHostname={n.name} CPUs={self.cpus_per_node} RealMemory=8000 "
              f"Gres=gpu:{self.gpus_per_node} State=UNKNOWN" for n in self.nodes),
            # Preemption as on a shared cluster: a job in `urgent` that needs the nodes requeues the jobs of the
            # default partition: SIGTERM, KillWait to save a checkpoint, SIGKILL, back to the queue. (With a
            # GraceTime, Slurm 22.05 lets a job that exits within it end COMPLETED: not requeued.)
            "PreemptType=preempt/partition_prio",
            "PreemptMode=REQUEUE",
            f"PartitionName={self.partition} Nodes={names} Default=YES MaxTime=INFINITE State=UP PriorityTier=1",
            f"PartitionName={URGENT_PARTITION} Nodes={names} MaxTime=INFINITE State=UP PriorityTier=10",
        ]) + "\n")

    # ------------------------------------------------------------------ start / stop

    def __enter__(self) -> NetnsCluster:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self, timeout: float = START_TIMEOUT_S) -> None:
        t0 = time.monotonic()
        require_root()
        ensure_packages()
        ensure_tools()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._claim_slot()
        try:
            self.ctld_port = free_port()
            self.slurmd_port = free_port()  # each node listens in its own network namespace
            self.nodes = [ClusterNode(name, i, f"{self.subnet}.{10 + i}")
                          for i, name in enumerate(self.node_names, 1)]
            self._write_files()
            _run(["ip", "link", "add", self.bridge, "type", "bridge"])
            _run(["ip", "addr", "add", f"{self.controller_ip}/24", "dev", self.bridge])
            _run(["ip", "link", "set", self.bridge, "up"])
            for node in self.nodes:
                self._start_holder(node, timeout)
            self._start_controller(timeout)
            for node in self.nodes:
                node.procs["sshd"] = self._spawn_on(node, "sshd", [
                    SSHD, "-D", "-f", str(self.workdir / "ssh" / f"sshd_config.{node.name}"),
                    "-E", str(self.workdir / "log" / f"sshd-{node.name}.log")])
                node.procs["slurmd"] = self._spawn_on(node, "slurmd", [SLURMD, "-D", "-f", str(self.slurm_conf),
                                                                       "-N", node.name])
            for node in self.nodes:
                self._wait_port(node, 22, timeout)
            self.wait_idle(timeout)
        except BaseException:
            self.stop()
            raise
        self.start_s = time.monotonic() - t0

    def _start_holder(self, node: ClusterNode, timeout: float) -> None:
        ready = self.workdir / "run" / f"{node.name}.ready"
        ready.unlink(missing_ok=True)
        log = open(self.workdir / "log" / f"holder-{node.name}.log", "ab")  # noqa: SIM115 -- kept by the child
        node.holder = subprocess.Popen(
            ["unshare", "--net", "--uts", "--mount", "--pid", "--fork", "--propagation", "slave", "--mount-proc",
             "--kill-child", "python3", "-c", HOLDER, self.tag, node.name, str(self.hosts_file),
             str(self.node_ssh_config), str(ready)],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        deadline = time.monotonic() + timeout
        while not ready.exists():
            if node.holder.poll() is not None or time.monotonic() > deadline:
                raise NetnsUnavailable(f"{node.name}: namespaces could not be set up: "
                                       f"{_tail(self.workdir / 'log' / f'holder-{node.name}.log')}")
            time.sleep(0.02)
        kids = descendants(node.holder.pid)
        if not kids:
            raise RuntimeError(f"{node.name}: the holder has no child")
        node.init_pid = kids[0]
        veth = f"td{self.slot}n{node.index}"
        _run(["ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", str(node.init_pid)])
        _run(["ip", "link", "set", veth, "master", self.bridge, "up"])
        for argv in (["ip", "addr", "add", f"{node.ip}/24", "dev", "eth0"], ["ip", "link", "set", "eth0", "up"]):
            proc = node.run(argv, timeout=30)
            if proc.returncode != 0:
                raise RuntimeError(f"{node.name}: {' '.join(argv)}: {proc.stderr}")

    def _spawn_on(self, node: ClusterNode | None, name: str, argv: list[str]) -> subprocess.Popen:
        label = f"{name}-{node.name}" if node else name
        with open(self.workdir / "log" / f"{label}.out", "ab") as out:
            return subprocess.Popen(node.enter(*argv) if node else argv, stdin=subprocess.DEVNULL, stdout=out,
                                    stderr=subprocess.STDOUT, env=self.env, start_new_session=True)

    def _start_controller(self, timeout: float) -> None:
        w = self.workdir
        key = w / "munge" / "munge.key"
        if not key.exists():
            key.write_bytes(os.urandom(1024))
            key.chmod(0o600)
        munged = self.procs["munged"] = self._spawn_on(None, "munged", [
            MUNGED, "--foreground", "--force", f"--key-file={key}", f"--socket={self.munge_socket}",
            f"--pid-file={w / 'munge' / 'munged.pid'}", f"--log-file={w / 'log' / 'munged.log'}",
            f"--seed-file={w / 'munge' / 'munged.seed'}"])
        deadline = time.monotonic() + timeout
        while not self.munge_socket.exists():
            if munged.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"munged did not start: {_tail(w / 'log' / 'munged.out')}")
            time.sleep(0.01)
        ctld = self.procs["slurmctld"] = self._spawn_on(None, "slurmctld", [SLURMCTLD, "-D", "-i", "-f",
                                                                            str(self.slurm_conf)])
        deadline = time.monotonic() + timeout
        while True:
            with socket.socket() as s:
                s.settimeout(0.2)
                if s.connect_ex((self.controller_ip, self.ctld_port)) == 0:
                    break
            if ctld.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"slurmctld did not start: {_tail(w / 'log' / 'slurmctld.log')}")
            time.sleep(0.02)

    def _wait_port(self, node: ClusterNode, port: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            with socket.socket() as s:
                s.settimeout(0.2)
                if s.connect_ex((node.ip, port)) == 0:
                    return
            proc = node.procs.get("sshd")
            if (proc is not None and proc.poll() is not None) or time.monotonic() > deadline:
                raise RuntimeError(f"{node.name}: nothing listens on {node.ip}:{port}: "
                                   f"{_tail(self.workdir / 'log' / f'sshd-{node.name}.log')}")
            time.sleep(0.02)

    def sinfo(self) -> dict[str, str]:
        """{node: state} from sinfo."""
        out = subprocess.run(["sinfo", "-h", "-N", "-o", "%N %T"], env=self.env, capture_output=True, text=True)
        return dict(line.split()[:2] for line in out.stdout.splitlines() if len(line.split()) >= 2)

    def wait_idle(self, timeout: float = START_TIMEOUT_S) -> None:
        """Until every node is registered and ready to run jobs."""
        deadline = time.monotonic() + timeout
        states: dict[str, str] = {}
        while time.monotonic() < deadline:
            for label, proc in [*self.procs.items(), *((f"{k}@{n.name}", p) for n in self.nodes
                                                       for k, p in n.procs.items())]:
                if proc.poll() is not None:
                    raise RuntimeError(f"{label} exited with {proc.returncode}: {self.logs()}")
            states = self.sinfo()
            if len(states) == self.n_nodes and all(s.rstrip("*") in {"idle", "mixed", "allocated"}
                                                   for s in states.values()):
                return
            time.sleep(0.05)
        raise RuntimeError(f"Slurm nodes not ready within {timeout} s ({states}): {self.logs()}")

    def logs(self) -> str:
        return " | ".join(f"{p.name}: {_tail(p, 1500)}" for p in sorted((self.workdir / "log").glob("*")))

    def scontrol(self, *args: str) -> str:
        return subprocess.run(["scontrol", *args], env=self.env, capture_output=True, text=True, check=True).stdout

    def squeue_state(self, job_id: str) -> str:
        return subprocess.run(["squeue", "-h", "-t", "all", "-j", job_id, "-o", "%T"], env=self.env,
                              capture_output=True, text=True).stdout.strip()

    def stop(self) -> None:
        """Everything down, nothing left: jobs, node namespaces (with their processes, mounts and veths),
        controller daemons, the bridge, stray processes naming the work dir; then the slot is free."""
        t0 = time.monotonic()
        if self.procs.get("slurmctld") is not None and self.procs["slurmctld"].poll() is None:
            subprocess.run(["scancel", "--full", "-p", self.partition], env=self.env, capture_output=True)
        for node in self.nodes:
            if node.init_pid and _alive(node.init_pid):
                _kill([node.init_pid], signal.SIGTERM)
        for node in self.nodes:
            if node.holder is not None:
                try:
                    node.holder.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    _kill([node.init_pid, node.holder.pid], signal.SIGKILL)
                    node.holder.wait(timeout=10)
            for proc in node.procs.values():  # the nsenter parents end once their children are gone
                _stop_proc(proc, timeout=5)
        for name in ("slurmctld", "munged"):
            _stop_proc(self.procs.get(name))
        self.procs.clear()
        if self.slot is not None:
            if _link_exists(self.bridge):
                _run(["ip", "link", "del", self.bridge], check=False)
            kill_leftovers(str(self.workdir))
            self._release_slot()
        self.stop_s = time.monotonic() - t0

    # ------------------------------------------------------------------ checks

    def leftovers(self) -> dict[str, object]:
        """What would show that clean-up failed: live holders, processes naming the work dir, the bridge,
        veths of this slot (empty when everything is gone)."""
        out: dict[str, object] = {}
        if self.slot is None:
            return out
        holders = [p for p in _pids_tagged(self.tag) if _alive(p)]
        procs = [p for p in processes_mentioning(str(self.workdir)) if _alive(p)]
        links = [ln for ln in _run(["ip", "-o", "link", "show"]).stdout.splitlines()
                 if f" {self.bridge}:" in ln or f" td{self.slot}n" in ln]
        for key, value in (("holders", holders), ("processes", procs), ("links", links)):
            if value:
                out[key] = value
        return out


def clean_stale_slot(slot: int, previous_owner: str = "") -> list[str]:
    """Remove what a dead owner of `slot` left behind: its node holders (their namespaces and every process
    in them go too), its controller daemons (found by its work dir) and its bridge. Returns what it did."""
    done = []
    holders = _pids_tagged(f"{HOLDER_TAG}-{slot}")
    if holders:
        inits = [c for h in holders for c in descendants(h)]
        _kill(inits + holders, signal.SIGKILL)
        done.append(f"killed stale node holders {holders}")
    with contextlib.suppress(ValueError, TypeError):
        workdir = json.loads(previous_owner).get("workdir") if previous_owner.strip() else None
        if workdir:
            killed = kill_leftovers(workdir, grace_s=1.0)
            if killed:
                done.append(f"killed stale processes of {workdir}: {killed}")
    bridge = f"tdbr{slot}"
    if _link_exists(bridge):
        _run(["ip", "link", "del", bridge], check=False)
        done.append(f"deleted stale bridge {bridge}")
    deadline = time.monotonic() + 5
    while any(_alive(p) for p in holders) and time.monotonic() < deadline:
        time.sleep(0.02)
    return done
