"""`tunedeck eval --model PATH --cluster NAME`: a model on the cluster evaluated with the checkpoints' harness,
kept as a measured reference (real sshd + real Slurm on 127.0.0.1, a tiny random model)."""

from __future__ import annotations

import pytest

from app.cli import main
from tests.job.test_evaluate import build_tiny_model
from tests.remote.test_eval_placement_slurm import _profile

pytestmark = pytest.mark.slow


def test_eval_of_a_model_path_on_a_slurm_cluster_is_recorded_as_a_measured_reference(
        sshd_server, slurm_cluster, tmp_path, capsys):
    from core.store import Store
    from remote.profiles import close_transports, save_profile
    from remote.runs import REFERENCE_TAG, measured_references

    model = build_tiny_model(tmp_path / "CodeLlama-34b-hf")  # "a model path on the cluster" (this machine)
    save_profile(_profile(sshd_server, slurm_cluster, tmp_path / "work", "ref-slurm"))
    try:
        rc = main(["eval", "--model", str(model), "--cluster", "ref-slurm", "--label", "Code Llama-34B",
                   "--limit", "3", "--max-new-tokens", "8", "--batch-size", "2", "--gpus", "0"])
        out, err = capsys.readouterr()
    finally:
        close_transports()
        slurm_cluster.cancel_all()
    assert rc == 0, err
    run_id = out.strip().splitlines()[-1]
    assert "humaneval" in out and "all" in out  # the pass@1 table
    with Store() as store:
        row = store.get_run(run_id)
        assert row.status == "finished" and row.backend == "slurm" and REFERENCE_TAG in row.tags
        assert row.name == "Code Llama-34B" and row.config()["model"]["name_or_path"] == str(model)
        (ref,) = measured_references(store)
        assert (ref["label"], ref["benchmark"], ref["n_tasks"], ref["run_id"]) == ("Code Llama-34B", "humaneval", 3, run_id)
        assert 0.0 <= ref["pass@1"] <= 1.0
        started = [e["detail"] for e in store.events(run_id) if e["event"] == "eval_started"]
        assert len(started) == 1 and started[0]["checkpoint"] == str(model) and started[0]["job_id"] == row.job_id
