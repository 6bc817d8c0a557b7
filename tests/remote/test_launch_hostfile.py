"""The tiny preset through the DeepSpeed hostfile backend over SSH, streamed by an app process that is
killed and restarted mid-run: it resumes from the stored offsets (real sshd on 127.0.0.1)."""

from __future__ import annotations

import pytest

from tests.remote._common_asserts import assert_streamed_exactly_once
from tests.remote.launch_support import APP_KILLS, shared_scenario

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def scenario(sshd_server, slurm_cluster, tmp_path_factory):
    return shared_scenario(sshd_server, slurm_cluster, tmp_path_factory.mktemp("scenario"))


def test_hostfile_run_over_ssh_trains_to_the_end_and_streams_every_metric_once(scenario):
    assert not scenario.errors, scenario.errors
    with scenario.store_for("hostfile") as store:
        row = store.get_run(scenario.run_ids["hostfile"])
        assert row.backend == "hostfile" and row.job_id.isdigit()  # the process group id
        assert_streamed_exactly_once(store, row.run_id, row.run_dir, scenario.steps["hostfile"])


def test_app_process_killed_mid_run_resumes_from_stored_offsets(scenario):
    assert scenario.app_kills == APP_KILLS, scenario.app_output[-3000:]
    assert "all runs ended; streams complete" in scenario.app_output, scenario.app_output[-3000:]
    with scenario.store_for("hostfile") as store:
        row = store.get_run(scenario.run_ids["hostfile"])
        assert_streamed_exactly_once(store, row.run_id, row.run_dir, scenario.steps["hostfile"])
