"""Which node a failed multi-node run lost first, from the per-rank records and the launcher's lines."""

from __future__ import annotations

from core.nodes import diagnose_failure, format_nodes, latest_attempt, launcher_failures, nodes, silent_ranks
from core.records import rank_record

GLOO_PEER = "RuntimeError: [../third_party/gloo/gloo/transport/tcp/pair.cc:534] Connection closed by peer [10.0.0.12]:4417"


def rec(rank: int, host: str, state: str, t: float, attempt: int = 2, error: str | None = None, step: int = 7,
        stalled_s: float = 1.0):
    return rank_record(rank=rank, local_rank=rank % 2, world_size=4, host=host, pid=1000 + rank, attempt=attempt,
                       state=state, started_t=1.0, step=step, error=error, stalled_s=stalled_s, t=t)


def test_a_killed_node_is_named_from_its_silent_ranks_not_from_the_victims_errors():
    records = [rec(0, "node1", "failed", 100.4, error=GLOO_PEER), rec(1, "node1", "failed", 100.5, error=GLOO_PEER),
               rec(2, "node2", "running", 98.0), rec(3, "node2", "running", 98.1)]
    log = "step 7\nsrun: error: node1: task 0: Exited with exit code 1\nsrun: error: node2: task 1: Killed\n"
    failure = diagnose_failure(records, log)
    assert failure is not None and failure.host == "node2" and failure.ranks == (2, 3)
    text = failure.summary()
    assert text.startswith("node node2 failed (ranks 2, 3): ranks 2, 3 stopped without recording an end")
    assert "killed or hung, or the node went down" in text and "srun: task 1 on node2: Killed" in text
    assert "then rank 0 on node1 failed: RuntimeError" in text


def test_a_rank_that_failed_with_its_own_error_wins_over_earlier_peer_errors():
    # Clocks differ between nodes: the victim's error may even carry an earlier time than the cause.
    records = [rec(0, "node1", "failed", 99.0, error=GLOO_PEER),
               rec(1, "node2", "failed", 100.0, error="torch.OutOfMemoryError: CUDA out of memory")]
    failure = diagnose_failure(records)
    assert failure.host == "node2" and failure.ranks == (1,)
    assert failure.reason == "rank 1 failed: torch.OutOfMemoryError: CUDA out of memory"


def test_ranks_stopped_together_without_a_word_blame_no_single_node():
    records = [rec(0, "node1", "running", 200.0), rec(1, "node2", "running", 201.0)]
    failure = diagnose_failure(records, "slurmstepd: error: *** JOB 5 ON node1 CANCELLED DUE TO TIME LIMIT ***\n")
    assert failure.host is None and failure.ranks == (0, 1)
    assert "all 2 ranks on node1, node2 stopped together" in failure.summary()


def test_the_launcher_names_the_node_when_no_rank_record_exists():
    log = "pdsh@node1: node3: ssh exited with exit code 137\npdsh@node1: node1: ssh exited with exit code 1\n"
    assert launcher_failures(log) == [("node3", "pdsh: node3: ssh exited with exit code 137"),
                                      ("node1", "pdsh: node1: ssh exited with exit code 1")]
    failure = diagnose_failure([], log)
    assert failure.host == "node3" and failure.reason == "pdsh: node3: ssh exited with exit code 137"
    assert diagnose_failure([], "nothing useful\n") is None


def test_only_the_newest_attempt_counts():
    records = [rec(0, "node1", "failed", 50.0, attempt=1, error="ValueError: old"),
               rec(0, "node1", "running", 150.0, attempt=2), rec(1, "node4", "running", 140.0, attempt=2),
               rec(2, "node2", "running", 160.0, attempt=2)]
    ranks = latest_attempt(records)
    assert [(r.rank, r.attempt) for r in ranks] == [(0, 2), (1, 2), (2, 2)]
    assert [n.host for n in nodes(ranks)] == ["node1", "node4", "node2"]  # rank order: rendezvous host first
    assert diagnose_failure(records).host == "node4"  # the first one to fall silent


def test_silent_ranks_and_the_nodes_table():
    ranks = latest_attempt([rec(0, "node1", "running", 1000.0), rec(1, "node2", "running", 950.0),
                            rec(2, "node2", "finished", 900.0)])
    assert [r.rank for r in silent_ranks(ranks, now=1005.0)] == [1]
    lines = format_nodes(ranks, now=1005.0)
    assert lines[0] == "nodes: 2, world size 4 (attempt 2); rendezvous on node1 (rank 0)"
    assert lines[1].split()[:3] == ["node1", "rank", "0"] and " running " in lines[1]
    assert "running?" in lines[2] and "silent for 55 s" in lines[2]
    assert " finished " in lines[3] and "silent" not in lines[3]


def test_a_rank_that_hung_then_woke_is_named_although_every_rank_reports_a_peer_error():
    # Node 2 froze (its heartbeat stopped for 34 s); node 1's collective timed out; Slurm's SIGCONT before the
    # kill woke node 2, which then failed on the closed connection like a victim would.
    timeout = "RuntimeError: [gloo/transport/tcp/unbound_buffer.cc:81] Timed out waiting 30000ms for recv operation"
    records = [rec(0, "node1", "failed", 130.0, error=timeout, stalled_s=1.2),
               rec(1, "node2", "failed", 131.0, error=GLOO_PEER, stalled_s=34.0)]
    failure = diagnose_failure(records, "srun: error: node1: task 0: Exited with exit code 1\n")
    assert failure.host == "node2" and failure.ranks == (1,)
    assert failure.reason.startswith("rank 1 stopped answering for 34 s (no heartbeat: the process hung")
    assert "then failed: RuntimeError" in failure.reason
    assert "(stalled 34 s)" in format_nodes(latest_attempt(records), now=131.0)[2]
    # Gaps alike on every rank (a busy machine) blame nobody by themselves.
    even = [rec(0, "node1", "failed", 130.0, error=timeout, stalled_s=20.0),
            rec(1, "node2", "failed", 131.0, error=GLOO_PEER, stalled_s=25.0)]
    assert diagnose_failure(even).reason.startswith("rank 0 failed: RuntimeError")
