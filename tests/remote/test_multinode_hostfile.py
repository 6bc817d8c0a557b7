"""DeepSpeed's hostfile launcher across nodes of the namespace cluster (pdsh over ssh from the login node):
the tiny preset trains on 2 nodes x 1 process, fails naming node 2 when its processes are killed, resumes on
both nodes to the end, and a cancel stops every process of a run on every node. Each node's processes are checked in that node's own process list (the nodes are separate PID
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
    COLLECTIVE_TIMEOUT_S,
    FAIL_SLACK_S,
    HOSTFILE_STEPS,
    STORY_NODES,
    assert_streamed_once,
    multinode_config,
    shared_story,
)
from tests.remote.netns_cluster import environ_of

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
    assert [e["attempt"] for e in started] == [1, 2]  # the launch, then the resume after the node failure
    for e in started:  # hostfile order: rank 0 on the first host, which is the rendezvous host
        assert e["detail"]["hosts"] == [first, second] and e["detail"]["world_size"] == 2
    assert story.events()[-1]["event"] == "finished" and story.events()[-1]["detail"]["step"] == HOSTFILE_STEPS
    log = (Path(story.run_dir) / RunPaths.STDOUT).read_text(errors="replace")
    assert "pdsh" in log and f"{first},{second}" in log
    with story.store() as store:
        ranks = store.ranks(story.run_id)
    assert [(r["rank"], r["host"], r["state"], r["attempt"]) for r in ranks] == [
        (0, first, "finished", 2), (1, second, "finished", 2)]


def test_the_profile_env_reaches_the_rank_on_the_second_node_through_deepspeed_env(story):
    env_file = (Path(story.run_dir) / RunPaths.DEEPSPEED_ENV).read_text()
    assert "TUNEDECK_PROOF=proof-ns-hostfile" in env_file.splitlines()
    rank1 = [e for e in story.facts["node2_env"] if e.get("RANK") == "1"]
    assert rank1, story.facts["node2_env"]
    # Only PYTHON* variables cross pdsh by themselves: these came through .deepspeed_env.
    assert rank1[0]["TUNEDECK_PROOF"] == "proof-ns-hostfile"
    assert rank1[0]["TORCH_EXTENSIONS_DIR"]
    assert story.facts["node1_sees_node2"] == []  # separate process lists: the nodes really are apart


def test_killing_the_runs_processes_on_the_second_node_fails_the_run_naming_that_node(story, netns_cluster):
    first, second = (n.name for n in _pair(netns_cluster))
    killed = story.facts["killed"]
    assert killed["host"] == second and killed["pids"]
    failed_attempt = [e for e in story.events() if e["attempt"] == 1]
    assert not [e for e in failed_attempt if e["event"] == "finished"]
    # Dead processes close their connections: the peer notices at once, far within the collective timeout.
    took = story.marks["failed"] - story.marks["killed"]
    assert took <= COLLECTIVE_TIMEOUT_S + FAIL_SLACK_S, f"failed {took:.0f} s after the kill"
    reason = story.facts["failed_reason"]
    assert f"node {second} failed (rank 1): rank 1 stopped without recording an end" in reason, reason
    out = story.cli_out["status"]
    assert story.facts["status_rc"] == 1
    assert out.startswith("failed: ") and f"node {second} failed (rank 1)" in out, out
    table = [ln for ln in out.splitlines() if ln.startswith("  ")]
    assert [ln.split()[0] for ln in table] == [first, second], out


def test_resume_after_the_kill_continues_from_the_last_complete_checkpoint_on_both_nodes(story):
    last = story.facts["killed"]["last_checkpoint"]
    assert f"from checkpoint-{last}" in story.cli_out["resume"], story.cli_out["resume"]
    assert [e["detail"]["from_step"] for e in story.events("resumed") if e["attempt"] == 2] == [last]
    steps2 = [m["step"] for m in story.metrics() if m["attempt"] == 2]
    assert steps2 == list(range(last + 1, HOSTFILE_STEPS + 1))
    final = Path(story.run_dir) / RunPaths.CHECKPOINTS / f"checkpoint-{HOSTFILE_STEPS}" / f"global_step{HOSTFILE_STEPS}"
    # Both nodes wrote their ZeRO-3 shards of the resumed attempt's last checkpoint on the shared work root.
    assert sorted(p.name for p in final.glob("zero_pp_rank_*_model_states.pt")) == [
        f"zero_pp_rank_{r}_mp_rank_00_model_states.pt" for r in (0, 1)]


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


def _new_processes(node, existing: set[int]) -> dict[int, str]:
    """pid -> command line of the node's processes not in `existing`, except a Slurm job's (the Slurm story's
    preempting job spans every node of the cluster: its processes are Slurm's, not this run's)."""
    out = {}
    for pid in set(node.pids()) - existing:
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            continue  # gone meanwhile
        if cmd.startswith("slurmstepd") or "SLURM_JOB_ID" in environ_of(pid):
            continue
        out[pid] = cmd
    return out


def test_cancel_stops_the_ranks_on_every_node_while_their_output_still_flows_then_the_launchers(
        netns_cluster, tmp_path, capsys):
    from app.cli import main
    from core.store import Store
    from remote.backends import Backend
    from remote.profiles import ClusterProfile, close_transports, make_transport, save_profile

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
    # Every process of each node before the launch: whatever is new after the cancel was left by it.
    existing = {n.name: set(n.pids()) for n in (first, second)}
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
    close_transports()  # the CLI's own SSH connection to the login node ends with its process

    assert rc == 0, out
    after = {n.name: n.pids_with_env("TUNEDECK_RUN_ID", run_id) for n in (first, second)}
    assert after == {first.name: [], second.name: []}, (after, out)
    # Nor anything else the run started in either namespace (pdsh, its ssh clients, the sshd sessions and
    # shells on node 2 that carry no run variable); sshd sessions close a moment after their command ends.
    deadline = time.monotonic() + 15
    while (left := {n.name: _new_processes(n, existing[n.name]) for n in (first, second)}) != \
            {first.name: {}, second.name: {}} and time.monotonic() < deadline:
        time.sleep(0.3)
    assert left == {first.name: {}, second.name: {}}, left
    assert f"sent SIGTERM to the training processes on {first.name} (1), {second.name} (1)" in out
    assert f"or on any of its nodes ({first.name}, {second.name})" in out and "cancelled, confirmed gone" in out
    # Each rank got the TERM on its own node while pdsh still carried its output: a real job saves then.
    terms = {r: json.loads((run_dir / f"term-rank{r}.json").read_text()) for r in (0, 1)}
    assert terms == {0: {"host": first.name, "printed": True}, 1: {"host": second.name, "printed": True}}
    log = (run_dir / RunPaths.STDOUT).read_text(errors="replace")
    assert f"rank 1 on {second.name}: SIGTERM, saving" in log
    with Store() as store:
        assert store.get_run(run_id).status == "cancelled"
