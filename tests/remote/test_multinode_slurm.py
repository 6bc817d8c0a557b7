"""The tiny preset on 2 nodes x 1 process of the namespace Slurm cluster, launched as a user would: over SSH
to the login node gpu-node-01 (srun + torchrun across both nodes), preempted by a higher-priority job and
requeued by Slurm, then its second node hung mid-run (processes frozen), then `tunedeck resume`d to the end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from core.records import RunPaths
from tests.remote.multinode_support import (
    COLLECTIVE_TIMEOUT_S,
    FAIL_SLACK_S,
    SLURM_STEPS,
    assert_streamed_once,
    latest_losses,
    shared_story,
)

pytestmark = pytest.mark.slow

STEPS = SLURM_STEPS


@pytest.fixture(scope="module")
def story(netns_cluster, tmp_path_factory):
    return shared_story("slurm", netns_cluster, tmp_path_factory.mktemp("multinode-slurm"))


def _attempt(story, attempt: int, name: str) -> list[dict]:
    return [e for e in story.events(name) if e["attempt"] == attempt]


def test_launch_over_ssh_trains_one_rank_per_node_on_two_nodes_to_the_end_and_the_loss_falls(story, netns_cluster):
    assert not story.errors, story.errors
    assert "started run" in story.cli_out["launch"] and "as job" in story.cli_out["launch"]
    with story.store() as store:
        row = store.get_run(story.run_id)
        assert (row.status, row.backend, row.cluster) == ("finished", "slurm", "ns-slurm")
    names = {n.name for n in netns_cluster.nodes}
    started = story.events("started")
    assert [e["attempt"] for e in started] == [1, 2, 3]
    for e in started:  # every attempt: one rank on each of two different hosts of the cluster
        d = e["detail"]
        assert d["world_size"] == 2 and len(d["ranks"]) == 2
        assert [r["rank"] for r in d["ranks"]] == [0, 1]
        assert len(set(d["hosts"])) == 2 and set(d["hosts"]) <= names
        assert [r["host"] for r in d["ranks"]] == d["hosts"] and d["host"] == d["hosts"][0]
        assert d["collective_timeout_s"] == COLLECTIVE_TIMEOUT_S
    assert story.events()[-1]["event"] == "finished" and story.events()[-1]["detail"]["step"] == STEPS
    losses = list(latest_losses(story.metrics()).values())
    assert len(losses) == STEPS
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 0.3, losses


def test_zero3_parameters_are_partitioned_across_the_two_hosts(story):
    shares = [json.loads((Path(story.run_dir) / f"partition-rank{r}.json").read_text()) for r in (0, 1)]
    assert len({s["host"] for s in shares}) == 2  # each rank reported from its own node
    total = shares[0]["total_numel"]
    assert all(s["total_numel"] == total and s["partitioned_params"] > 0 for s in shares)
    # Each rank holds about half of the parameter elements (small norm weights may stay whole on both).
    assert all(s["local_numel"] < 0.6 * total for s in shares), shares
    assert sum(s["local_numel"] for s in shares) >= total


def test_checkpoints_on_the_shared_work_root_hold_the_shards_written_on_both_nodes(story):
    final = Path(story.run_dir) / RunPaths.CHECKPOINTS / f"checkpoint-{STEPS}"
    assert (final / RunPaths.COMPLETE_MARKER).is_file() and (final / "model.safetensors").is_file()
    shards = sorted(p.name for p in (final / f"global_step{STEPS}").iterdir())
    # ZeRO-3: every rank writes its own optimizer and parameter shard; rank 1 ran on the other node.
    assert shards == [f"zero_pp_rank_{r}_mp_rank_00_{kind}_states.pt" for r in (0, 1) for kind in ("model", "optim")]
    assert sorted(p.name for p in final.glob("rng_state_*.pth")) == ["rng_state_0.pth", "rng_state_1.pth"]


def test_preempted_run_is_requeued_by_slurm_and_resumes_on_both_nodes(story):
    preempted = _attempt(story, 1, "preempted")
    assert len(preempted) == 1, story.events()
    stop = preempted[0]["detail"]["step"]
    assert f"checkpoint-{stop}" in preempted[0]["detail"]["checkpoint"]
    resumed = _attempt(story, 2, "resumed")
    assert [e["detail"]["from_step"] for e in resumed] == [stop]
    assert story.facts["job_id_at_failure"] == story.job_ids[0]  # Slurm requeued the same job: no new launch
    steps2 = [m["step"] for m in story.metrics() if m["attempt"] == 2]
    assert steps2 and steps2[0] == stop + 1
    assert "DUE TO PREEMPTION" in (Path(story.run_dir) / RunPaths.STDOUT).read_text(errors="replace")


def test_a_hung_second_node_fails_the_run_within_the_collective_timeout_naming_that_node(story):
    killed = story.facts["killed"]
    started = _attempt(story, 2, "started")[0]["detail"]
    assert killed["host"] == started["ranks"][1]["host"] and killed["pids"]
    took = story.marks["failed"] - story.marks["killed"]
    # Frozen processes close nothing: only the collective timeout ends the other rank's wait.
    assert COLLECTIVE_TIMEOUT_S - 5 <= took <= COLLECTIVE_TIMEOUT_S + FAIL_SLACK_S, f"failed {took:.0f} s after the hang"
    reason = story.facts["failed_reason"]
    assert f"node {killed['host']} failed (rank 1): rank 1 stopped answering for" in reason, reason
    assert "the process hung, or its node froze or lost its network" in reason
    # The surviving rank failed because its peer stopped answering, and said so: a victim, not the cause.
    failed = _attempt(story, 2, "failed")
    assert failed and failed[0]["detail"]["rank"] == 0
    assert "timed out" in failed[0]["detail"]["error"].lower() or "timeout" in failed[0]["detail"]["error"].lower()
    assert story.facts["victim_left"] == []  # then Slurm killed the hung processes on that node


def test_status_command_says_which_node_failed_and_lists_every_rank(story):
    out, host = story.cli_out["status"], story.facts["killed"]["host"]
    assert story.facts["status_rc"] == 1
    assert out.startswith("failed: ") and f"node {host} failed (rank 1)" in out
    lines = out.splitlines()
    assert "nodes: 2, world size 2 (attempt 2)" in out
    table = [ln for ln in lines if ln.startswith("  ")]
    assert len(table) == 2
    rank1 = next(ln for ln in table if " rank 1 " in ln)
    assert rank1.split()[0] == host and "(stalled " in rank1  # its heartbeat stopped while it hung
    rank0 = next(ln for ln in table if " rank 0 " in ln)
    assert " failed " in rank0 and "timed out" in rank0.lower()


def test_resume_after_the_node_failure_continues_from_the_last_complete_checkpoint_on_both_nodes(story):
    last = story.facts["killed"]["last_checkpoint"]
    assert f"from checkpoint-{last}" in story.cli_out["resume"]
    assert story.job_ids[-1] != story.job_ids[0]  # a new Slurm job, the same run
    assert [e["detail"]["from_step"] for e in _attempt(story, 3, "resumed")] == [last]
    steps3 = [m["step"] for m in story.metrics() if m["attempt"] == 3]
    assert steps3 == list(range(last + 1, STEPS + 1))
    assert len(set(_attempt(story, 3, "started")[0]["detail"]["hosts"])) == 2


def test_every_record_of_every_attempt_is_streamed_into_the_store_once(story):
    with story.store() as store:
        assert_streamed_once(store, story.run_id, story.run_dir)


def test_the_store_holds_each_ranks_host_step_and_last_heartbeat(story):
    with story.store() as store:
        ranks = store.ranks(story.run_id)
    assert [r["rank"] for r in ranks] == [0, 1]
    assert all(r["attempt"] == 3 and r["state"] == "finished" and r["step"] == STEPS for r in ranks)
    assert len({r["host"] for r in ranks}) == 2
    assert all(r["t"] >= r["started_t"] for r in ranks)
