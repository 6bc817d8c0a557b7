"""The several-node test cluster itself: what the multi-node tests rely on must hold (separate hosts that
find each other, Slurm across them, ssh between them, nothing left behind, stale clusters cleaned)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.remote.netns_cluster import SLOT_DIR, NetnsCluster, _alive, _link_exists

REPO = Path(__file__).resolve().parents[2]


def _ssh(cluster, host: str, command: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(["ssh", "-F", str(cluster.ssh_config), host, command], capture_output=True, text=True,
                          timeout=timeout)


def test_each_node_has_its_own_hostname_address_and_process_list(netns_cluster):
    first, second = netns_cluster.nodes[:2]
    assert first.run(["hostname"]).stdout.strip() == first.name
    assert second.run(["hostname"]).stdout.strip() == second.name
    assert f"inet {second.ip}/24" in second.run(["ip", "-o", "addr", "show", "eth0"]).stdout
    # Every node resolves every other node by name (torchrun's rendezvous needs it).
    resolved = first.run(["getent", "hosts", second.name]).stdout.split()
    assert resolved[:1] == [second.ip]
    # A node sees its own processes only: its sshd and slurmd, not the other node's.
    own = first.run(["ps", "-e", "-o", "comm="]).stdout.split()
    assert "sshd" in own and "slurmd" in own
    assert set(first.pids()).isdisjoint(second.pids())
    # No default route: nothing leaves the test subnet.
    assert "default" not in first.run(["ip", "route"]).stdout


def test_srun_over_ssh_to_the_login_node_runs_a_task_on_every_node(netns_cluster):
    names = [n.name for n in netns_cluster.nodes]
    res = _ssh(netns_cluster, names[0], f"srun -N{len(names)} --ntasks-per-node=1 -p {netns_cluster.partition} hostname")
    assert res.returncode == 0, res.stderr
    assert sorted(res.stdout.split()) == names


def test_plain_ssh_and_pdsh_on_a_node_reach_every_node(netns_cluster):
    names = [n.name for n in netns_cluster.nodes]
    res = _ssh(netns_cluster, names[0], f"ssh {names[-1]} hostname && pdsh -R ssh -w {','.join(names)} hostname")
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert lines[0] == names[-1]
    assert sorted(lines[1:]) == sorted(f"{n}: {n}" for n in names)


def _root_mounts() -> list[str]:
    return sorted(Path("/proc/self/mounts").read_text().splitlines())


OWNER = """
import json, sys, time
from pathlib import Path
from tests.remote.netns_cluster import NetnsCluster
c = NetnsCluster(Path(sys.argv[1]), n_nodes=2, slot=int(sys.argv[2]))
c.start()
print(json.dumps({"slot": c.slot, "holders": [n.holder.pid for n in c.nodes], "inits": [n.init_pid for n in c.nodes],
                  "ctld": c.procs["slurmctld"].pid}), flush=True)
time.sleep(3600)
"""


def _free_slot() -> int:
    import fcntl

    SLOT_DIR.mkdir(parents=True, exist_ok=True)
    for slot in range(15, 0, -1):  # from the top: the session cluster takes the lowest free one
        with open(SLOT_DIR / f"slot-{slot}.lock", "a+") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue
            fcntl.flock(f, fcntl.LOCK_UN)
            return slot
    pytest.skip("no free test-network slot")


def test_a_cluster_whose_owner_was_killed_is_cleaned_by_the_next_start_which_leaves_nothing(tmp_path):
    """A test session SIGKILLed mid-run leaves its bridge, node namespaces and daemons behind; the next
    start on that slot removes them, and a normal stop leaves nothing: no process, bridge, veth or mount."""
    mounts_before = _root_mounts()
    slot = _free_slot()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    owner = subprocess.Popen([sys.executable, "-c", OWNER, str(tmp_path / "old"), str(slot)], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        line = owner.stdout.readline()
        assert line, owner.stderr.read()
        info = json.loads(line)
    finally:
        os.killpg(owner.pid, signal.SIGKILL)  # the owner dies without any clean-up
        owner.wait(timeout=10)
    stale = info["holders"] + info["inits"] + [info["ctld"]]
    assert all(_alive(p) for p in stale), "the killed owner's nodes and controller outlive it"
    assert _link_exists(f"tdbr{slot}")

    cluster = NetnsCluster(tmp_path / "new", n_nodes=2, slot=slot)
    try:
        cluster.start()
        assert cluster.slot == slot
        assert not any(_alive(p) for p in stale), "the stale cluster was removed before the new one started"
        res = _ssh(cluster, "node1", "srun -N2 hostname")
        assert sorted(res.stdout.split()) == ["node1", "node2"], res.stderr
        nodes = list(cluster.nodes)
    finally:
        cluster.stop()
    assert cluster.leftovers() == {}
    assert not _link_exists(f"tdbr{slot}")
    assert not any(n.alive or _alive(n.init_pid) for n in nodes)
    deadline = time.monotonic() + 5
    while _root_mounts() != mounts_before and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _root_mounts() == mounts_before  # the nodes' /etc/hosts and ssh_config mounts died with them
