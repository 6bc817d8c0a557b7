"""`tunedeck presets / config new|validate|render / estimate`, run as the real console script."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from core.presets import preset_names


def tunedeck_argv() -> list[str]:
    script = Path(sys.executable).with_name("tunedeck")
    return [str(script)] if script.exists() else [sys.executable, "-m", "app"]


def tunedeck(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.run([*tunedeck_argv(), *args], cwd=cwd, capture_output=True, text=True, timeout=120, env=env)


def test_new_validate_render_produces_the_phind_launch_plan(tmp_path: Path) -> None:
    new = tunedeck("config", "new", "--preset", "phind-codellama-34b-v1", "-o", "r.yaml", cwd=tmp_path)
    assert new.returncode == 0, new.stderr
    ok = tunedeck("config", "validate", "r.yaml", cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.startswith("OK: r.yaml")
    for fact in ("world size 32", "global batch 128", "accumulation 4"):
        assert fact in ok.stdout
    render = tunedeck("config", "render", "r.yaml", "--out", "plan/", cwd=tmp_path)
    assert render.returncode == 0, render.stderr
    plan = tmp_path / "plan"
    ds = json.loads((plan / "ds_config.json").read_text())
    assert ds["zero_optimization"]["stage"] == 3
    assert ds["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] is True
    assert (plan / "hostfile").read_text().splitlines() == [f"node{i} slots=8" for i in range(1, 5)]
    slurm = (plan / "launch.slurm").read_text()
    assert "#SBATCH --nodes=4" in slurm and "srun --kill-on-bad-exit=1" in slurm
    assert f"#SBATCH --output={plan.resolve()}/stdout.log" in slurm
    assert f"PYTHONPATH={plan.resolve()}/code" in (plan / ".deepspeed_env").read_text()
    assert os.access(plan / "launch.sh", os.X_OK)
    for name in ("ds_config.json", "hostfile", "launch.slurm", ".deepspeed_env", "launch.sh", "config.json"):
        assert name in render.stdout
    # Where the ranks run, the rendezvous host first.
    assert "node 1 of the allocation: ranks 0-7 -- rendezvous host (MASTER_ADDR, torchrun c10d on port 29500)" \
        in render.stdout
    assert "node 4 of the allocation: ranks 24-31" in render.stdout


def test_render_for_a_target_run_dir_and_local_backend(tmp_path: Path) -> None:
    assert tunedeck("config", "new", "--preset", "tiny-demo", "-o", "t.yaml", cwd=tmp_path).returncode == 0
    r = tunedeck("config", "render", "t.yaml", "--out", "p", "--run-dir", "/scratch/runs/t 1", "--backend", "local",
                 "--python", "/opt/venv/bin/python", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    script = (tmp_path / "p" / "launch.sh").read_text()
    assert "exec /opt/venv/bin/python -m remote.job.torchrun --standalone --nproc_per_node 2 -m remote.job.train '/scratch/runs/t 1'" in script
    assert (tmp_path / "p" / "hostfile").read_text() == "localhost slots=2\n"


def test_render_says_where_the_evaluations_go_on_the_backend_and_why(tmp_path: Path) -> None:
    assert tunedeck("config", "new", "--preset", "phind-codellama-34b-v1", "-o", "p.yaml", cwd=tmp_path).returncode == 0
    slurm = tunedeck("config", "render", "p.yaml", "--out", "s", "--backend", "slurm", cwd=tmp_path)
    assert slurm.returncode == 0, slurm.stderr
    assert "evaluation placement on slurm: slurm (auto)" in slurm.stdout and "own Slurm job on 2 GPUs" in slurm.stdout
    assert "KV cache" in slurm.stdout and (tmp_path / "s" / "eval.slurm").is_file()
    hostfile = tunedeck("config", "render", "p.yaml", "--out", "h", "--backend", "hostfile", cwd=tmp_path)
    assert hostfile.returncode == 0, hostfile.stderr
    assert "evaluation placement on hostfile: after_training (auto)" in hostfile.stdout
    assert "does not fit beside training" in hostfile.stdout
    assert json.loads((tmp_path / "h" / "config.json").read_text())["derived"]["evaluation"]["placement"] == "after_training"


def test_render_refuses_a_run_dir_sbatch_cannot_hold_and_writes_nothing(tmp_path: Path) -> None:
    assert tunedeck("config", "new", "--preset", "tiny-demo", "-o", "t.yaml", cwd=tmp_path).returncode == 0
    r = tunedeck("config", "render", "t.yaml", "--out", "p", "--run-dir", "/runs/a\nb", cwd=tmp_path)
    assert r.returncode == 2
    assert "run_dir" in r.stderr and "newline" in r.stderr
    assert not (tmp_path / "p").exists()


def test_new_refuses_to_overwrite_without_force(tmp_path: Path) -> None:
    target = tmp_path / "r.yaml"
    target.write_text("mine\n")
    r = tunedeck("config", "new", "--preset", "tiny-demo", "-o", "r.yaml", cwd=tmp_path)
    assert r.returncode == 2 and "--force" in r.stderr
    assert target.read_text() == "mine\n"
    r = tunedeck("config", "new", "--preset", "tiny-demo", "-o", "r.yaml", "--force", cwd=tmp_path)
    assert r.returncode == 0 and "preset: tiny-demo" in target.read_text()


def test_new_with_unknown_preset_lists_the_available_ones(tmp_path: Path) -> None:
    r = tunedeck("config", "new", "--preset", "llama-9000", "-o", "x.yaml", cwd=tmp_path)
    assert r.returncode == 2 and "phind-codellama-34b-v1" in r.stderr
    assert not (tmp_path / "x.yaml").exists()


BAD = """\
name: broken
model:
  name_or_path: codellama/CodeLlama-7b-hf
training:
  epochs: lots
  micro_batch_size: 3
  global_batch_size: 100
  colour: blue
cluster:
  nodes: 1
  gpus_per_node: 8
"""


def test_validate_prints_every_problem_with_file_line_and_field(tmp_path: Path) -> None:
    (tmp_path / "bad.yaml").write_text(BAD)
    r = tunedeck("config", "validate", "bad.yaml", cwd=tmp_path)
    assert r.returncode == 1
    lines = r.stderr.splitlines()
    assert lines[0].startswith("bad.yaml:5:3: training.epochs: ")
    assert lines[1].startswith("bad.yaml:7:3: training.global_batch_size: training.global_batch_size (100) is not divisible")
    assert lines[2].startswith("bad.yaml:8:3: training.colour: unknown field")
    assert "3 problems" in lines[3]
    assert r.stdout == ""
    # render and estimate refuse the same file the same way
    for args in (("config", "render", "bad.yaml", "--out", "p"), ("estimate", "bad.yaml")):
        r2 = tunedeck(*args, cwd=tmp_path)
        assert r2.returncode == 1 and r2.stderr.splitlines()[:3] == lines[:3]
    assert not (tmp_path / "p").exists()


def test_validate_missing_file_exits_1(tmp_path: Path) -> None:
    r = tunedeck("config", "validate", "nope.yaml", cwd=tmp_path)
    assert r.returncode == 1
    assert r.stderr.startswith("nope.yaml: (top level): file not found")


def test_usage_errors_exit_2(tmp_path: Path) -> None:
    assert tunedeck("config", "validate", cwd=tmp_path).returncode == 2
    assert tunedeck("estimate", "x.yaml", "--mfu", "abc", cwd=tmp_path).returncode == 2


def test_estimate_prints_memory_steps_time_and_assumptions(tmp_path: Path) -> None:
    assert tunedeck("config", "new", "--preset", "phind-codellama-34b-v1", "-o", "r.yaml", cwd=tmp_path).returncode == 0
    r = tunedeck("estimate", "r.yaml", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    for needle in ("Memory per GPU", "peak total", "verdict: FITS in 80 GB", "optimizer steps       312",
                   "time                  2.", "Assumptions", "tokens per example", "MFU", "Published comparison"):
        assert needle in r.stdout, needle
    r = tunedeck("estimate", "r.yaml", "--mfu", "0.3", cwd=tmp_path)
    assert "time                  3.00 h" in r.stdout
    assert tunedeck("estimate", "r.yaml", "--mfu", "1.5", cwd=tmp_path).returncode == 2


def test_estimate_counts_rows_and_characters_of_given_data(tmp_path: Path) -> None:
    assert tunedeck("config", "new", "--preset", "codellama-7b-base", "-o", "r.yaml", cwd=tmp_path).returncode == 0
    rows = [{"instruction": "a" * 300, "answer": "b" * 400}, {"instruction": "c" * 50, "answer": "d" * 650}]
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    r = tunedeck("estimate", "r.yaml", "--data", "train.jsonl", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "examples per epoch    2\n" in r.stdout
    assert f"tokens per epoch      {round(1400 / 3.5)}\n" in r.stdout  # 1,400 characters at 3.5 per token
    assert "1,400 characters / 3.5 chars per token" in r.stdout
    (tmp_path / "wrong.jsonl").write_text(json.dumps({"prompt": "x", "completion": "y"}) + "\n")
    r = tunedeck("estimate", "r.yaml", "--data", "wrong.jsonl", cwd=tmp_path)
    assert r.returncode == 2 and "instruction" in r.stderr


def test_presets_lists_every_preset_with_model_and_cluster(tmp_path: Path) -> None:
    r = tunedeck("presets", cwd=tmp_path)
    assert r.returncode == 0
    lines = r.stdout.splitlines()
    assert lines[0].split()[:4] == ["NAME", "MODEL", "KIND", "CLUSTER"]
    assert {line.split()[0] for line in lines[1:]} == set(preset_names())
    phind = next(line for line in lines if line.startswith("phind-codellama-34b-v1"))
    assert "codellama/CodeLlama-34b-hf" in phind and "4x8 A100-80GB" in phind


@pytest.mark.parametrize("argv", [("config",), ()])
def test_bare_group_prints_help(argv: tuple[str, ...], tmp_path: Path) -> None:
    r = tunedeck(*argv, "--help", cwd=tmp_path)
    assert r.returncode == 0 and "usage: tunedeck" in r.stdout


def test_estimate_calibrated_by_a_stored_run_prints_measured_and_assumed_times(tmp_path: Path) -> None:
    """`--calibrate RUN` reads the run's config, metrics and `started` event from the run store."""
    from core.config import resolved_dict
    from core.presets import load_preset
    from core.records import RunPaths, event_record, metric_record
    from core.store import Store

    store_file = tmp_path / "store.sqlite"
    cfg = load_preset("tiny-demo")
    metrics = [metric_record(step=s, attempt=1, epoch=0.1, samples=8 * s, tokens=1000 * s, loss=1.0, lr=1e-3,
                             grad_norm=1.0, tokens_per_s=400.0 if s <= 3 else 2000.0, t=1000.0 + s) for s in range(1, 21)]
    with Store(store_file) as store:
        store.create_run("20260101-000000-cafe01", "measured", None, resolved_dict(cfg), cluster="local",
                         backend="local", run_dir=str(tmp_path / "run"))
        store.ingest("20260101-000000-cafe01", RunPaths.METRICS, metrics, offset=1, line_no=len(metrics))
        store.ingest("20260101-000000-cafe01", RunPaths.EVENTS,
                     [event_record("started", 1, {"world_size": 2, "device": "cpu"}, t=1000.0)], offset=1, line_no=1)
        store.update_run("20260101-000000-cafe01", status="finished")
    assert tunedeck("config", "new", "--preset", "tiny-demo", "-o", "r.yaml", cwd=tmp_path).returncode == 0
    env_store = {"TUNEDECK_STORE": str(store_file)}
    r = subprocess.run([*tunedeck_argv(), "estimate", "r.yaml", "--calibrate", "20260101-000000-caf"], cwd=tmp_path,
                       capture_output=True, text=True, timeout=120, env={**os.environ, "COLUMNS": "200", **env_store})
    assert r.returncode == 0, r.stderr
    assert "time, measured rate" in r.stdout and "time, assumed" in r.stdout
    assert "1,000 tokens/s per GPU" in r.stdout  # median 2,000 tokens/s over the run's 2 processes
    r = subprocess.run([*tunedeck_argv(), "estimate", "r.yaml", "--calibrate", "nosuchrun"], cwd=tmp_path,
                       capture_output=True, text=True, timeout=120, env={**os.environ, **env_store})
    assert r.returncode == 2 and "no run with id 'nosuchrun'" in r.stderr


def test_validate_of_a_directory_and_render_onto_a_file_give_one_clear_error_each(tmp_path: Path) -> None:
    assert tunedeck("config", "new", "--preset", "tiny-demo", "-o", "t.yaml", cwd=tmp_path).returncode == 0
    (tmp_path / "adir").mkdir()
    v = tunedeck("config", "validate", "adir", cwd=tmp_path)
    assert v.returncode == 1 and "Traceback" not in v.stderr
    assert "adir: (top level): is a directory, not a config file" in v.stderr
    (tmp_path / "plan.txt").write_text("keep me\n")
    r = tunedeck("config", "render", "t.yaml", "--out", "plan.txt", cwd=tmp_path)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "--out plan.txt: exists and is not a directory" in r.stderr
    assert (tmp_path / "plan.txt").read_text() == "keep me\n"


def test_a_billion_laughs_config_is_refused_at_once_by_validate_estimate_and_launch(tmp_path: Path) -> None:
    lines = ['a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    lines += [f"a{i}: &a{i} [{','.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 10)]
    (tmp_path / "laughs.yaml").write_text("\n".join(lines) + "\n")
    for argv in (["config", "validate"], ["estimate"], ["launch", "--cluster", "local"]):
        r = tunedeck(*argv, "laughs.yaml", cwd=tmp_path)
        assert r.returncode in (1, 2) and "Traceback" not in r.stderr, (argv, r.stderr)
        assert "expand to more than" in r.stderr, (argv, r.stderr)
