"""The tiny preset on this machine (local backend): detached, trains to the end, streamed once."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.remote._common_asserts import assert_streamed_exactly_once
from tests.remote.launch_support import shared_scenario

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def scenario(sshd_server, slurm_cluster, tmp_path_factory):
    return shared_scenario(sshd_server, slurm_cluster, tmp_path_factory.mktemp("scenario"))


def test_local_run_trains_to_the_end_under_the_user_data_dir_and_streams_once(scenario):
    assert not scenario.errors, scenario.errors
    with scenario.store_for("local") as store:
        row = store.get_run(scenario.run_ids["local"])
        assert Path(row.run_dir) == scenario.home_a / "data" / "runs" / row.run_id
        assert (Path(row.run_dir) / "exit_status").read_text().strip() == "0"
        assert_streamed_exactly_once(store, row.run_id, row.run_dir, scenario.steps["local"])
