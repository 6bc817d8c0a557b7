"""The run view's Nodes tab: every rank with its host and last heartbeat, the node a failed run lost first
marked, and a new attempt replacing the old one, read from a real run store."""

from __future__ import annotations

import time

import pytest

from app.gui.nodes_panel import NodesPanel
from core.records import rank_record
from core.store import Store

PEER = "RuntimeError: [gloo/transport/tcp/pair.cc:537] Read error [10.231.0.12]:5766: Connection reset by peer"


def _rank(rank: int, host: str, state: str, t: float, attempt: int, error: str | None = None, step: int = 5):
    return rank_record(rank=rank, local_rank=0, world_size=2, host=host, pid=40 + rank, attempt=attempt, state=state,
                       started_t=t - 60, step=step, error=error, t=t)


@pytest.fixture
def store(tmp_path):
    s = Store(tmp_path / "store.sqlite3")
    s.create_run("r1", "two nodes", None, None, "ns", "slurm", "/runs/r1", status="running")
    yield s
    s.close()


def test_nodes_tab_marks_the_node_a_failed_run_lost_and_lists_both_ranks(qtbot, store):
    now = time.time()
    store.upsert_ranks("r1", [_rank(0, "gpu-node-01", "failed", now - 1, 2, PEER), _rank(1, "gpu-node-02", "running", now - 3, 2)])
    store.update_run("r1", status="failed", finished_at=now)
    panel = NodesPanel(store, "r1")
    qtbot.addWidget(panel)
    qtbot.waitUntil(lambda: panel.table.rowCount() == 2, timeout=5000)
    rows = panel.rows_text()
    assert [r[:2] for r in rows] == [["gpu-node-01", "0"], ["gpu-node-02", "1"]]
    assert rows[0][4] == "failed" and "Connection reset by peer" in rows[0][7]
    assert rows[1][4] == "running" and rows[1][6].endswith("(3 s ago)")  # judged at the end of the run
    assert panel.summary.text() == "2 nodes · world size 2 · attempt 2 · rendezvous on gpu-node-01 (rank 0)"
    assert panel.failure_label.text().startswith("node gpu-node-02 failed (rank 1): rank 1 stopped without recording")
    assert panel.row_is_marked_failed(1) and not panel.row_is_marked_failed(0)


def test_nodes_tab_follows_a_running_run_flags_a_silent_rank_and_shows_the_new_attempt(qtbot, store):
    now = time.time()
    store.upsert_ranks("r1", [_rank(0, "gpu-node-01", "running", now, 1), _rank(1, "gpu-node-02", "running", now - 120, 1)])
    panel = NodesPanel(store, "r1", refresh_ms=100)
    qtbot.addWidget(panel)
    panel.show()
    qtbot.waitUntil(lambda: panel.table.rowCount() == 2, timeout=5000)
    assert panel.rows_text()[1][4].startswith("running · silent for 1")  # no heartbeat for two minutes
    assert panel.failure_label.isHidden()
    store.upsert_ranks("r1", [_rank(0, "gpu-node-03", "running", now + 5, 2, step=9),
                              _rank(1, "gpu-node-04", "running", now + 5, 2, step=9)])
    qtbot.waitUntil(lambda: panel.rows_text()[0][0] == "gpu-node-03", timeout=5000)
    assert [r[0] for r in panel.rows_text()] == ["gpu-node-03", "gpu-node-04"]
    assert "attempt 2" in panel.summary.text()
