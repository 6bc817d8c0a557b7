"""DeepSpeed's hostfile launcher across nodes of the namespace cluster (pdsh over ssh from the login node):
the tiny preset trains on 2 nodes x 1 process to the end, and a cancel stops every process of a run on every
node. Each node's processes are checked in that node's own process list (the nodes are separate PID
namespaces: node 1 cannot see node 2's processes)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from core.plan import LaunchContext, write_plan
from core.records import RunPaths
from remote.backends import DETACH_SCRIPT, DETACH_WRAPPER
from tests.remote.launch_support import PYTHON, VENV_BIN
from tests.remote.multinode_support import (
    HOSTFILE_STEPS,
    STORY_NODES,
    assert_streamed_once,
    multinode_config,
    shared_story,
)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def story(netns_cluster, tmp_path_factory):
    return shared_story("hostfile", netns_cluster, tmp_path_factory.mktemp("multinode-hostfile"))


def _pair(cluster):
    return [cluster.nodes[i] for i in STORY_NODES["hostfile"]]


def test_deepspeed_launcher_over_pdsh_trains_on_both_nodes_to_the_end(story, netns_cluster):
    assert not story.errors, story.errors
    with story.store() as store:
        row = store.get_run(story.run_id)
        assert (row.status, row.backend) == ("finished", "hostfile")
    first, second = (n.name for n in _pair(netns_cluster))
    started = story.events("started")
    assert len(started) == 1
    # Hostfile order: rank 0 on the first host, which is the rendezvous host.
    assert started[0]["detail"]["hosts"] == [first, second] and started[0]["detail"]["world_size"] == 2
    assert story.events()[-1]["event"] == "finished" and story.events()[-1]["detail"]["step"] == HOSTFILE_STEPS
    log = (Path(story.run_dir) / RunPaths.STDOUT).read_text(errors="replace")
    assert "pdsh" in log and f"{first},{second}" in log
    with story.store() as store:
        ranks = store.ranks(story.run_id)
    assert [(r["rank"], r["host"], r["state"]) for r in ranks] == [(0, first, "finished"), (1, second, "finished")]


def test_the_profile_env_reaches_the_rank_on_the_second_node_through_deepspeed_env(story):
    env_file = (Path(story.run_dir) / RunPaths.DEEPSPEED_ENV).read_text()
    assert "TUNEDECK_PROOF=proof-ns-hostfile" in env_file.splitlines()
    rank1 = [e for e in story.facts["node2_env"] if e.get("RANK") == "1"]
    assert rank1, story.facts["node2_env"]
    # Only PYTHON* variables cross pdsh by themselves: these came through .deepspeed_env.
    assert rank1[0]["TUNEDECK_PROOF"] == "proof-ns-hostfile"
    assert rank1[0]["TORCH_EXTENSIONS_DIR"]
    assert story.facts["node1_sees_node2"] == []  # separate process lists: the nodes really are apart


def test_every_record_is_streamed_into_the_store_once(story):
    with story.store() as store:
        assert_streamed_once(store, story.run_id, story.run_dir)


# A stand-in rank for the cancel test: says it is up, then on SIGTERM prints (its stdout still reaches the
# launcher?), "saves" for a moment and exits 0, recording what it saw.
STUB = r'''
import json, os, signal, socket, sys, time
run_dir, rank = sys.argv[-1], os.environ["RANK"]
def on_term(signum, frame):
    try:
        print(f"rank {rank} on {socket.gethostname()}: SIGTERM, saving", flush=True)
        printed = True
    except OSError:
        printed = False
    time.sleep(1.0)
    with open(os.path.join(run_dir, f"term-rank{rank}.json"), "w") as f:
        json.dump({"host": socket.gethostname(), "printed": printed}, f)
    os._exit(0)
signal.signal(signal.SIGTERM, on_term)
open(os.path.join(run_dir, f"up-rank{rank}"), "w").close()
while True:
    print(f"rank {rank} working", flush=True)
    time.sleep(0.5)
'''


def test_cancel_stops_the_ranks_on_every_node_while_their_output_still_flows_then_the_launchers(
        netns_cluster, tmp_path, capsys):
    from app.cli import main
    from core.store import Store
    from remote.backends import Backend
    from remote.profiles import ClusterProfile, make_transport, save_profile

    first, second = _pair(netns_cluster)
    run_id = "cancel-across-nodes"
    run_dir = tmp_path / "runs" / run_id
    ctx = LaunchContext(run_id=run_id, run_dir=str(run_dir), backend="hostfile", env_setup=f"export PATH={VENV_BIN}:$PATH",
                        python=PYTHON, master_port=29611, hosts=[first.name, second.name])
    write_plan(multinode_config(6, 3), ctx, run_dir)
    job = run_dir / RunPaths.JOB_CODE / "remote" / "job"
    job.mkdir(parents=True)
    for pkg in (job.parent, job):
        (pkg / "__init__.py").write_text("")
    (job / "train.py").write_text(STUB)
    (run_dir / DETACH_SCRIPT).write_text(DETACH_WRAPPER)
    profile = ClusterProfile(name="ns-cancel", backend="hostfile", host=first.name,
                             ssh_config=str(netns_cluster.ssh_config), known_hosts=str(netns_cluster.known_hosts),
                             hostfile_hosts=[f"{first.name} slots=1", f"{second.name} slots=1"])
    save_profile(profile)
    transport = make_transport(profile)
    try:
        pgid = Backend.for_name("hostfile").submit(transport, str(run_dir), run_id)
    finally:
        transport.close()
    with Store() as store:
        store.create_run(run_id, "cancel", None, None, profile.name, "hostfile", str(run_dir), status="running")
        store.update_run(run_id, job_id=pgid)
    deadline = time.monotonic() + 180
    while not all((run_dir / f"up-rank{r}").exists() for r in (0, 1)):
        assert time.monotonic() < deadline, (run_dir / RunPaths.STDOUT).read_text(errors="replace")[-3000:]
        time.sleep(0.3)
    before = {n.name: n.pids_with_env("TUNEDECK_RUN_ID", run_id) for n in (first, second)}
    assert before[first.name] and before[second.name], before
    assert not set(before[second.name]) & set(first.pids())  # node 1 cannot even see node 2's processes

    rc = main(["cancel", run_id, "--grace", "30"])
    out = capsys.readouterr().out

    assert rc == 0, out
    after = {n.name: n.pids_with_env("TUNEDECK_RUN_ID", run_id) for n in (first, second)}
    assert after == {first.name: [], second.name: []}, (after, out)
    assert f"sent SIGTERM to the training processes on {first.name} (1), {second.name} (1)" in out
    assert f"or on any of its nodes ({first.name}, {second.name})" in out and "cancelled, confirmed gone" in out
    # Each rank got the TERM on its own node while pdsh still carried its output: a real job saves then.
    terms = {r: json.loads((run_dir / f"term-rank{r}.json").read_text()) for r in (0, 1)}
    assert terms == {0: {"host": first.name, "printed": True}, 1: {"host": second.name, "printed": True}}
    log = (run_dir / RunPaths.STDOUT).read_text(errors="replace")
    assert f"rank 1 on {second.name}: SIGTERM, saving" in log
    with Store() as store:
        assert store.get_run(run_id).status == "cancelled"
