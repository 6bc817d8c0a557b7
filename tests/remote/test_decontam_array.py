"""A contamination check as a Slurm job array over 4 shards (real sshd + Slurm on 127.0.0.1): the merged
report equals the single-process report over the same files."""

from __future__ import annotations

import json
import time

import pytest

from core.decontam import run_check
from core.evalsets import load_humaneval
from core.records import RunPaths
from core.store import Store
from remote.decontam_array import launch_array, merge, render_array_script
from remote.profiles import make_transport
from remote.runs import refresh_cluster
from remote.stream import Streamer
from tests.remote.launch_support import ssh_profile

pytestmark = pytest.mark.slow


def write_train_files(tmp_path, n_files: int = 6) -> list[str]:
    tasks = load_humaneval().tasks
    paths = []
    for i in range(n_files):
        rows = [{"instruction": f"Write function number {i}-{j} that adds numbers", "answer": f"def f{j}(a): return a + {j}"}
                for j in range(30)]
        if i in (1, 4):  # plant two HumanEval prompts in two different shards
            rows.insert(7, {"instruction": tasks[i].question, "answer": "pass"})
        path = tmp_path / f"train-{i}.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        paths.append(str(path))
    return paths


def test_array_script_has_one_task_per_shard_and_quotes_the_run_dir():
    text = render_array_script("r1", "/w/runs/a b$(x)", 4, python="/opt/py thon")
    assert "#SBATCH --array=0-3" in text
    assert "exec '/opt/py thon' '/w/runs/a b$(x)/code/decontam_shard.py' '/w/runs/a b$(x)' \"$SLURM_ARRAY_TASK_ID\" 4" in text
    [chdir] = [line for line in text.splitlines() if line.startswith("#SBATCH --chdir=")]
    assert "/w/runs/a" in chdir and "b$(x)" in chdir  # escaped for sbatch's own parser (core.plan)


def test_job_array_decontamination_over_4_shards_equals_single_process_report(sshd_server, slurm_cluster, tmp_path):
    profile = ssh_profile("decontam-slurm", "slurm", sshd_server, tmp_path / "work", partition=slurm_cluster.partition)
    transport = make_transport(profile)
    train = write_train_files(tmp_path)
    try:
        with Store(tmp_path / "store.sqlite3") as store:
            run_id = launch_array(train, ["humaneval"], profile.name, store, shards=4, profile=profile,
                                  transport=transport)
            row = store.get_run(run_id)
            assert row.job_id.isdigit()
            deadline = time.monotonic() + 180
            while not store.get_run(run_id).is_terminal and time.monotonic() < deadline:
                time.sleep(0.5)
                refresh_cluster(store, profile.name, [store.get_run(run_id)], transport)
            row = store.get_run(run_id)
            assert row.status == "finished", (row.status, row.status_reason,
                                              transport.read_bytes(f"{row.run_dir}/{RunPaths.STDOUT}")[-3000:])
            merged = merge(run_id, store, transport=transport, out_path=tmp_path / "merged.json")

            # The same streaming machinery follows the array's events: one started + finished per shard.
            Streamer(store, transport, run_id, row.run_dir).drain()
            events = store.events(run_id)
            assert sorted(e["detail"]["shard"] for e in events if e["event"] == "finished") == [0, 1, 2, 3]
            assert store.contamination_reports(run_id)[0].summary == merged["summary"]

        remote_train = json.loads((tmp_path / "work" / "runs" / run_id / "decontam.json").read_text())["train"]
        single = run_check(remote_train, ["humaneval"])
        assert merged == single
        flagged = [it["task_id"] for it in merged["items"] if it["contaminated"]]
        assert len(flagged) == 2, flagged
        assert json.loads((tmp_path / "merged.json").read_text()) == merged
    finally:
        slurm_cluster.cancel_all()
        transport.close()
