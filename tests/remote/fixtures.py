"""Real daemons on 127.0.0.1 for the remote tests (code in tests/remote/daemons.py).

Fixtures (names are stable; the launch/stream tests use them too):

- `daemons` (session): (SshdServer, SlurmCluster), started once per test session; skips with a reason
  when not root or the packages cannot be installed.
- `sshd_server` (session): SshdServer with
    .host "127.0.0.1", .port, .user "root", .client_key (Path, unencrypted ed25519),
    .known_hosts (Path; pins the host key for "[127.0.0.1]:PORT"; treat as read-only, copy it to modify),
    .host_key_fingerprint ("SHA256:..."), .host_key_type, .host_key_line (the known_hosts line),
    .known_hosts_name ("[127.0.0.1]:PORT"), .host_key / .client_key (private key paths),
    .ssh_config (Path) defining Host aliases .alias ("tdtest-sshd") and .jump_alias ("tdtest-via-jump",
    the same server reached through itself with ProxyJump), .log (sshd log),
    .kill() (SIGKILL listener + live connections), .start() (same port), .restart(), .running,
    .connection_pids(). Remote commands get SLURM_CONF of the test cluster (sshd SetEnv).
  A test that kills sshd must leave it running (use `sshd_running_after` or call .start() in finally).
- `slurm_cluster` (session): SlurmCluster with .slurm_conf (Path), .env (os.environ + SLURM_CONF),
    .partition ("debug"), .node (this machine's hostname when it resolves, else "tdnode": the torchrun rendezvous needs a resolvable name), .gpus (8 fake GPUs: `--gres=gpu:N` sets CUDA_VISIBLE_DEVICES),
    .cpus (16), .scontrol(*args), .cancel_all(), .logs(). Finished jobs stay in `squeue -t all` for 1 h.
- `ssh_profile_slurm`, `ssh_profile_hostfile` (function): ClusterProfile objects (not saved) reaching
  sshd_server through its alias, with a fresh work_root under the test's tmp dir (absolute path),
  partition / hostfile_hosts ["localhost slots=2"] set. Save them with remote.profiles.save_profile
  when a test goes through get_profile/transport_for by name.
- `ssh_transport` (function): an SshTransport for ssh_profile_slurm, closed after the test.
- `sshd_running_after` (function): yields sshd_server and restarts it after the test if it was left dead.
- `netns_cluster` (session): a real 4-node Slurm cluster on this machine, one set of namespaces per node
  (tests/remote/netns_cluster.py): NetnsCluster with .nodes (ClusterNode: .name "gpu-node-01".., .ip,
  .run(argv), .pids(), .pids_with_env(key, value), .kill(pids), .bind_mount(src, dst)), .partition "gpu",
  8 fake GPUs and 8 CPUs per node, .ssh_config (Host gpu-node-01.. as root), .known_hosts, .env
  (SLURM_CONF), .scontrol(), .sinfo(), .leftovers(). Started on first use, torn down at the end of the
  session (also after failures); skips with a reason where namespaces or root are missing. Inside the
  nodes plain `ssh gpu-node-0N` works (pdsh, DeepSpeed's launcher).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.remote.daemons import DaemonsUnavailable, SlurmCluster, SshdServer, start_daemons
from tests.remote.netns_cluster import NetnsCluster


@pytest.fixture(scope="session")
def daemons(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[SshdServer, SlurmCluster]]:
    # A short path: Unix socket paths (munge) are limited to 108 bytes.
    workdir = tmp_path_factory.mktemp("daemons")
    try:
        cm = start_daemons(workdir)
        pair = cm.__enter__()
    except DaemonsUnavailable as exc:
        pytest.skip(f"sshd/Slurm test daemons unavailable: {exc}")
    try:
        yield pair
    finally:
        cm.__exit__(None, None, None)


@pytest.fixture(scope="session")
def netns_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NetnsCluster]:
    # Four nodes named and shaped like the Phind launch the golden files pin (4 x 8 GPUs, partition gpu).
    cluster = NetnsCluster(tmp_path_factory.mktemp("netns"), n_nodes=4, partition="gpu",
                           node_names=[f"gpu-node-{i:02d}" for i in range(1, 5)])
    try:
        cluster.start()
    except DaemonsUnavailable as exc:
        pytest.skip(f"several-node test cluster unavailable: {exc}")
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="session")
def sshd_server(daemons: tuple[SshdServer, SlurmCluster]) -> SshdServer:
    return daemons[0]


@pytest.fixture(scope="session")
def slurm_cluster(daemons: tuple[SshdServer, SlurmCluster]) -> SlurmCluster:
    return daemons[1]


@pytest.fixture
def sshd_running_after(sshd_server: SshdServer) -> Iterator[SshdServer]:
    yield sshd_server
    if not sshd_server.running:
        sshd_server.start()


def _profile(name: str, backend: str, sshd: SshdServer, work_root: Path, **extra):
    from remote.profiles import ClusterProfile

    return ClusterProfile(
        name=name, backend=backend, host=sshd.alias, ssh_config=str(sshd.ssh_config),
        known_hosts=str(sshd.known_hosts), work_root=str(work_root), connect_timeout_s=10, keepalive_s=5,
        **extra,
    )


@pytest.fixture
def ssh_profile_slurm(sshd_server: SshdServer, slurm_cluster: SlurmCluster, tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("slurm-work-root")
    return _profile("test-slurm", "slurm", sshd_server, root, partition=slurm_cluster.partition, nodes=1,
                    gpus_per_node=2, python=_python())


@pytest.fixture
def ssh_profile_hostfile(sshd_server: SshdServer, tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("hostfile-work-root")
    return _profile("test-hostfile", "hostfile", sshd_server, root, hostfile_hosts=["localhost slots=2"],
                    nodes=1, gpus_per_node=2, python=_python())


@pytest.fixture
def ssh_transport(ssh_profile_slurm):
    from remote.profiles import make_transport

    transport = make_transport(ssh_profile_slurm)
    yield transport
    transport.close()


def _python() -> str:
    """The training environment's python on the 'cluster' (this machine): the project's venv."""
    venv = Path(__file__).resolve().parents[2] / ".venv" / "bin" / "python"
    return str(venv) if venv.exists() else os.environ.get("PYTHON", "python3")
