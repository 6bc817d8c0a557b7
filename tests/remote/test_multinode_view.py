"""The run view on the real two-node runs of the namespace cluster (tests/remote/multinode_support.py), as
the store held them the moment each run failed: the Nodes tab, beside Evaluations, lists both nodes' ranks
with their heartbeats and marks the node that failed, and the header says which node and why."""

from __future__ import annotations

import os

# Here, not in tests/app, so the stories run where they always did in the suite (after the single-node training
# tests); Qt offscreen as tests/app/conftest.py sets it, before any QApplication exists (collection time).
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import pytest

pytest.importorskip("pytestqt")

from app.gui.run_view import RunView
from core.store import Store
from tests.remote.multinode_support import shared_story

pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def tunedeck_app(qapp):
    """The QApplication as `tunedeck gui` configures it; background reads end before the widgets go."""
    from PySide6.QtCore import QThreadPool

    from app.gui.app import create_app

    yield create_app()
    QThreadPool.globalInstance().waitForDone(30_000)


@pytest.fixture(scope="module", params=["slurm", "hostfile"])
def story(request, netns_cluster, tmp_path_factory):
    return shared_story(request.param, netns_cluster, tmp_path_factory.mktemp("multinode-view"))


def test_nodes_tab_of_the_failed_two_node_run_marks_the_node_that_failed(qtbot, story):
    assert "store_at_failure" in story.facts, story.errors
    host = story.facts["killed"]["host"]
    store = Store(story.facts["store_at_failure"])
    try:
        view = RunView(store, story.run_id)
        qtbot.addWidget(view)
        view.show()
        qtbot.waitUntil(lambda: view.loaded, timeout=10_000)
        tabs = [view.bottom_tabs.tabText(i) for i in range(view.bottom_tabs.count())]
        assert tabs.index("Nodes") == tabs.index("Evaluations") + 1, tabs
        view.bottom_tabs.setCurrentWidget(view.nodes)
        panel = view.nodes
        qtbot.waitUntil(lambda: panel.table.rowCount() == 2, timeout=10_000)
        rows = panel.rows_text()
        assert [r[1] for r in rows] == ["0", "1"] and rows[1][0] == host and rows[0][0] != host
        assert all(r[6] for r in rows)  # every rank's last heartbeat
        assert panel.row_is_marked_failed(1) and not panel.row_is_marked_failed(0)
        assert not panel.failure_label.isHidden()
        assert panel.failure_label.text().startswith(f"node {host} failed (rank 1): ")
        assert f"rendezvous on {rows[0][0]} (rank 0)" in panel.summary.text()
        status = view.status_label.text()
        assert "failed" in status and f"node {host} failed (rank 1)" in status, status
        view.close()
    finally:
        store.close()
