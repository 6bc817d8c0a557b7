"""The tiny preset through Slurm over SSH: trains to the end, streams exactly once through five sshd
restarts, and a cancelled job is confirmed gone (real sshd + real Slurm on 127.0.0.1)."""

from __future__ import annotations

import time

import pytest

from core.records import RunPaths
from tests.remote._common_asserts import assert_streamed_exactly_once
from tests.remote.launch_support import SSHD_KILLS, fast_config, shared_scenario, ssh_profile

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def scenario(sshd_server, slurm_cluster, tmp_path_factory):
    return shared_scenario(sshd_server, slurm_cluster, tmp_path_factory.mktemp("scenario"))


def test_slurm_run_over_ssh_trains_to_the_end_and_streams_every_metric_once(scenario):
    assert not scenario.errors, scenario.errors
    with scenario.store_for("slurm") as store:
        row = store.get_run(scenario.run_ids["slurm"])
        assert row.backend == "slurm" and row.job_id.isdigit() and row.cluster == "loop-slurm"
        assert row.config()["training"]["max_steps"] == scenario.steps["slurm"]
        assert "max_steps: 24" in row.config_yaml
        assert_streamed_exactly_once(store, row.run_id, row.run_dir, scenario.steps["slurm"])


def test_stream_resumes_after_sshd_restart_five_times_without_loss_or_duplicates(scenario):
    assert scenario.sshd_kills == SSHD_KILLS
    assert scenario.kills_after_first_metric >= 1  # at least one kill while metric lines were being written
    with scenario.store_for("slurm") as store:
        row = store.get_run(scenario.run_ids["slurm"])
        assert_streamed_exactly_once(store, row.run_id, row.run_dir, scenario.steps["slurm"])


def test_cancelled_slurm_job_is_confirmed_gone_with_no_leftover_processes(sshd_server, slurm_cluster, tmp_path):
    from core.store import Store
    from remote.backends import leftover_pids
    from remote.profiles import make_transport
    from remote.runs import cancel, launch, refresh_cluster
    from tests.remote.daemons import processes_mentioning

    profile = ssh_profile("cancel-slurm", "slurm", sshd_server, tmp_path / "work", partition=slurm_cluster.partition)
    transport = make_transport(profile)
    store = Store(tmp_path / "store.sqlite3")
    try:
        run_id = launch(fast_config(500, 250), profile.name, store, profile=profile, transport=transport)
        row = store.get_run(run_id)
        assert row.job_id.isdigit()  # stored before launch returned
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            refresh_cluster(store, profile.name, [store.get_run(run_id)], transport)
            if store.get_run(run_id).status == "running" and (transport.size(f"{row.run_dir}/{RunPaths.STDOUT}") or 0):
                break
            time.sleep(0.5)
        assert store.get_run(run_id).status == "running"
        assert leftover_pids(transport, run_id)  # the job's processes exist and are found by run id

        result = cancel(run_id, store, transport=transport)

        assert result.confirmed_gone, result.detail
        assert "CANCELLED" in result.detail
        assert store.get_run(run_id).status == "cancelled"
        state = slurm_cluster.scontrol("show", "job", "-o", row.job_id)
        assert "JobState=CANCELLED" in state
        assert leftover_pids(transport, run_id) == []
        assert processes_mentioning(row.run_dir) == []
    finally:
        slurm_cluster.cancel_all()
        transport.close()
        store.close()


def test_failed_slurm_job_is_reported_failed_with_its_exit_code(sshd_server, slurm_cluster, tmp_path):
    from core.store import Store
    from remote.profiles import make_transport
    from remote.runs import launch, refresh_status

    failing = tmp_path / "failing-python"
    failing.write_text("#!/bin/sh\necho 'CUDA error: out of memory' >&2\nexit 3\n")
    failing.chmod(0o755)
    profile = ssh_profile("fail-slurm", "slurm", sshd_server, tmp_path / "work", partition=slurm_cluster.partition)
    profile = profile.model_copy(update={"python": str(failing)})
    transport = make_transport(profile)
    try:
        with Store(tmp_path / "store.sqlite3") as store:
            # force: the guardrails would refuse this python (the cluster check cannot run it); the test is
            # about how a job that fails on the cluster is reported.
            run_id = launch(fast_config(), profile.name, store, profile=profile, transport=transport, force=True)
            deadline = time.monotonic() + 60
            while not store.get_run(run_id).is_terminal and time.monotonic() < deadline:
                time.sleep(0.3)
                errors: dict[str, str] = {}
                refresh_status(store, transports={profile.name: transport}, errors=errors)
                assert not errors
            row = store.get_run(run_id)
            assert row.status == "failed", row
            assert "FAILED" in row.status_reason and "exit code 3" in row.status_reason
            assert row.finished_at is not None
            log = transport.read_bytes(f"{row.run_dir}/{RunPaths.STDOUT}").decode()
            assert "CUDA error: out of memory" in log
    finally:
        transport.close()
