"""The training job for real: the tiny preset, DeepSpeed ZeRO-3 over gloo, 2 CPU processes.

One run directory is shared by most assertions (module fixture): attempt 1 is started as two plain rank
processes (as Slurm's srun starts tasks) and preempted with SIGTERM mid-run; attempt 2 is started with
torchrun and resumes to the end. ~2 minutes on 2 cores, most of it process start-up.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from core.config import resolved_dict
from core.presets import load_preset
from core.records import RunPaths, read_records, validate_record
from remote.job.callbacks import ATTEMPTS_FILE, PARTITION_FILE, RUN_CONFIG_IN_CHECKPOINT
from remote.job.launch_local import free_port, job_command, job_env

REPO_ROOT = Path(__file__).resolve().parents[2]
MAX_STEPS = 60
SAVE_STEPS = 20
PREEMPT_AFTER_STEP = 12
INCOMPLETE_STEP = 50
# The preset's 40 steps at lr 3e-3 over 256 examples take the loss only to ~0.8x its start (measured
# 0.78-0.84); 60 steps at 6e-3 over 64 examples reach ~0.70x, a margin worth asserting.
TRAINING = {"max_steps": MAX_STEPS, "save_steps": SAVE_STEPS, "save_total_limit": 2, "learning_rate": 0.006}
DEMO = {"n_examples": 64, "plant_humaneval": 3, "seed": 0}
LAUNCH_TIMEOUT_S = 300
ATTENTION_PROBE = REPO_ROOT / "tests" / "job" / "attention_probe.py"
ATTENTION_LOG = "attention-calls"  # attempt 1's ranks record every attention call to attention-calls.rankN.jsonl

pytestmark = pytest.mark.slow


def ds_config_dict(cfg: dict[str, Any]) -> dict[str, Any]:
    """The DeepSpeed config the bundle writes (core.plan.render_ds_config when it exists)."""
    try:
        from core.config import RunConfig
        from core.plan import render_ds_config  # type: ignore[import-not-found]

        return render_ds_config(RunConfig.model_validate({k: v for k, v in cfg.items() if k != "derived"}))
    except ImportError:
        pass
    d = cfg["deepspeed"]
    return {
        "train_batch_size": "auto",
        "train_micro_batch_size_per_gpu": "auto",
        "gradient_accumulation_steps": "auto",
        "gradient_clipping": "auto",
        "bf16": {"enabled": "auto"},
        "zero_optimization": {
            "stage": 3,
            "overlap_comm": d["overlap_comm"],
            "contiguous_gradients": d["contiguous_gradients"],
            "reduce_bucket_size": "auto",
            "stage3_prefetch_bucket_size": "auto",
            "stage3_param_persistence_threshold": "auto",
            "stage3_max_live_parameters": d["stage3_max_live_parameters"],
            "stage3_max_reuse_distance": d["stage3_max_reuse_distance"],
            "sub_group_size": d["sub_group_size"],
            "stage3_gather_16bit_weights_on_model_save": d["gather_16bit_weights_on_model_save"],
        },
        "optimizer": {"type": "AdamW", "params": {"lr": "auto", "betas": "auto", "eps": "auto", "weight_decay": "auto",
                                                  "torch_adam": d["torch_adam"]}},
    }


def make_run_dir(root: Path, demo: dict[str, Any] | None = None, **training: Any) -> RunPaths:
    cfg = resolved_dict(load_preset("tiny-demo"))
    cfg["training"].update(training)
    if demo:
        cfg["data"]["demo"] = demo
    paths = RunPaths(root)
    root.mkdir(parents=True, exist_ok=True)
    paths.config_json.write_text(json.dumps(cfg, indent=1))
    paths.ds_config.write_text(json.dumps(ds_config_dict(cfg), indent=1))
    return paths


def job_test_env() -> dict[str, str]:
    env = job_env(REPO_ROOT)
    env["TUNEDECK_NO_EVAL"] = "1"  # evaluation is another module's test; keep the CPU for training
    env["TUNEDECK_DEBUG_PARTITION"] = "1"
    env["OMP_NUM_THREADS"] = "1"
    return env


def wait_for(proc: subprocess.Popen[bytes], timeout: float = LAUNCH_TIMEOUT_S) -> int:
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        raise


def steps_logged(paths: RunPaths) -> list[int]:
    records, _ = read_records(paths.metrics, "metrics")
    return [r["step"] for r in records]


def events(paths: RunPaths, kind: str | None = None) -> list[dict[str, Any]]:
    records, _ = read_records(paths.events, "events")
    return [r for r in records if kind is None or r["event"] == kind]


def log_tail(path: Path) -> str:
    return path.read_text(errors="replace")[-4000:] if path.exists() else ""


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Attempt 1 (2 rank processes, SIGTERM after step 12), then attempt 2 (torchrun, resumes to the end)."""
    paths = make_run_dir(tmp_path_factory.mktemp("tiny") / "run", DEMO, **TRAINING)
    env = job_test_env()
    port = str(free_port())
    ranks = []
    with contextlib.ExitStack() as logs:
        for rank in range(2):
            rank_env = {**env, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2",
                        "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port,
                        "TUNEDECK_ATTENTION_LOG": str(paths / ATTENTION_LOG)}
            log = logs.enter_context(open(paths / f"attempt1-rank{rank}.log", "wb"))
            # The job's own entry point, with every attention call recorded around it (attention_probe.py).
            ranks.append(subprocess.Popen([sys.executable, str(ATTENTION_PROBE), str(paths.root)], env=rank_env,
                                          stdout=log, stderr=subprocess.STDOUT, start_new_session=True))
        try:
            deadline = time.time() + LAUNCH_TIMEOUT_S
            while not any(s >= PREEMPT_AFTER_STEP for s in steps_logged(paths)):
                assert all(p.poll() is None for p in ranks), log_tail(paths / "attempt1-rank0.log")
                assert time.time() < deadline, f"attempt 1 never reached step {PREEMPT_AFTER_STEP}"
                time.sleep(0.05)
            for p in ranks:  # Slurm signals every task of the step
                p.send_signal(signal.SIGTERM)
            preempt_rcs = [wait_for(p) for p in ranks]
        finally:
            for p in ranks:
                if p.poll() is None:
                    os.killpg(p.pid, signal.SIGKILL)
                    p.wait()
    after_attempt1 = {"steps": steps_logged(paths), "complete": [s for s, _ in paths.complete_checkpoints()],
                      "events": events(paths)}
    # A later save cut short by a hard kill (SIGKILL mid-write): all files but the marker. Never resumed from,
    # removed by the next pruning.
    stop = after_attempt1["steps"][-1]
    shutil.copytree(paths.checkpoint(stop), paths.checkpoint(INCOMPLETE_STEP))
    (paths.checkpoint(INCOMPLETE_STEP) / RunPaths.COMPLETE_MARKER).unlink()

    with open(paths / "attempt2.log", "wb") as log:
        torchrun = subprocess.Popen(job_command(paths.root, 2), env=env, stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True)
        rc2 = wait_for(torchrun)
    return {"paths": paths, "preempt_rcs": preempt_rcs, "after_attempt1": after_attempt1, "rc2": rc2}


def test_sigterm_saves_complete_checkpoint_and_exits_zero(run: dict[str, Any]) -> None:
    paths, first = run["paths"], run["after_attempt1"]
    assert run["preempt_rcs"] == [0, 0], log_tail(paths / "attempt1-rank0.log")
    preempted = [e for e in first["events"] if e["event"] == "preempted"]
    assert len(preempted) == 1 and preempted[0]["attempt"] == 1
    stop = preempted[0]["detail"]["step"]
    assert PREEMPT_AFTER_STEP <= stop < MAX_STEPS
    assert stop in first["complete"], "the preemption checkpoint is complete"
    assert max(first["steps"]) == stop, "no step after the preemption checkpoint was trained"


def test_restart_resumes_from_checkpoint_with_attempt_2_and_continuous_steps(run: dict[str, Any]) -> None:
    paths = run["paths"]
    assert run["rc2"] == 0, log_tail(paths / "attempt2.log")
    stop = run["after_attempt1"]["steps"][-1]
    resumed = events(paths, "resumed")
    assert [(e["attempt"], e["detail"]["from_step"]) for e in resumed] == [(2, stop)], "not the incomplete one"
    assert (paths / ATTEMPTS_FILE).read_text().strip() == "2"
    records, corrupt = read_records(paths.metrics, "metrics")
    assert not corrupt
    assert [r["step"] for r in records] == list(range(1, MAX_STEPS + 1)), "one line per step, none twice"
    assert {r["attempt"] for r in records if r["step"] <= stop} == {1}
    assert {r["attempt"] for r in records if r["step"] > stop} == {2}
    finished = events(paths, "finished")
    assert len(finished) == 1 and finished[0]["attempt"] == 2 and finished[0]["detail"]["step"] == MAX_STEPS


def test_each_attempt_records_the_trainers_total_steps_for_the_progress_bar(run: dict[str, Any]) -> None:
    paths = run["paths"]
    stop = run["after_attempt1"]["steps"][-1]
    plans = events(paths, "training_plan")
    assert [(e["attempt"], e["detail"]["total_steps"], e["detail"]["start_step"]) for e in plans] == [
        (1, MAX_STEPS, 0), (2, MAX_STEPS, stop)]


def test_metrics_validate_and_loss_falls(run: dict[str, Any]) -> None:
    paths = run["paths"]
    lines = paths.metrics.read_text().splitlines()
    for line in lines:
        rec = json.loads(line)
        assert validate_record("metrics", rec) == []
        assert rec["tokens"] > 0 and rec["tokens_per_s"] > 0 and rec["grad_norm"] is not None
    losses = [json.loads(line)["loss"] for line in lines]
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    # Seeded, this run ends near 0.60x its start here (an uninterrupted run too). Float reduction order still
    # differs between machines, and a loss spike on one batch (step ~12) amplifies it: unseeded runs
    # measured 0.61-0.71x here and one reached 0.77x on CI. 0.85x is a fall no stalled or diverged run makes.
    assert last < 0.85 * first, f"loss fell from {first:.3f} to only {last:.3f}"
    for rec in events(paths):
        assert validate_record("events", rec) == []


def test_learning_rate_follows_one_schedule_across_the_preemption(run: dict[str, Any]) -> None:
    """The resumed attempt restores the scheduler: every step's lr is the uninterrupted cosine schedule's."""
    import torch
    from transformers import get_cosine_schedule_with_warmup

    cfg = json.loads(run["paths"].config_json.read_text())["training"]
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=cfg["learning_rate"])
    schedule = get_cosine_schedule_with_warmup(optimizer, cfg["warmup_steps"], MAX_STEPS).lr_lambdas[0]
    records, _ = read_records(run["paths"].metrics, "metrics")
    got = [(r["step"], r["lr"]) for r in records]
    want = [(step, cfg["learning_rate"] * schedule(step)) for step in range(1, MAX_STEPS + 1)]
    assert [s for s, _ in got] == [s for s, _ in want]
    for (step, lr), (_, expected) in zip(got, want, strict=True):
        assert lr == pytest.approx(expected, rel=1e-6, abs=1e-12), f"step {step}"


def test_parameters_are_partitioned_across_the_two_ranks(run: dict[str, Any]) -> None:
    paths = run["paths"]
    shares = [json.loads((paths / PARTITION_FILE.format(rank=r)).read_text()) for r in (0, 1)]
    total = shares[0]["total_numel"]
    assert total == load_preset("tiny-demo").model.architecture.parameter_count()
    for share in shares:
        assert share["world_size"] == 2 and share["partitioned_params"] > 0
        assert abs(share["local_numel"] - total / 2) <= 0.01 * total, share


def test_checkpoints_complete_pruned_and_recorded(run: dict[str, Any]) -> None:
    paths = run["paths"]
    complete = [s for s, _ in paths.complete_checkpoints()]
    assert complete == [40, 60], "save_total_limit 2 keeps the two newest complete checkpoints"
    assert sorted(d.name for d in paths.checkpoints.glob("checkpoint-*")) == ["checkpoint-40", "checkpoint-60"], \
        "older complete ones and the incomplete checkpoint-50 are pruned"
    final = paths.checkpoint(MAX_STEPS)
    saved_cfg = json.loads((final / RUN_CONFIG_IN_CHECKPOINT).read_text())
    assert saved_cfg["training"]["max_steps"] == MAX_STEPS
    marker_mtime = (final / RunPaths.COMPLETE_MARKER).stat().st_mtime
    assert all(f.stat().st_mtime <= marker_mtime for f in final.rglob("*") if f.is_file()), "marker written last"
    saved_steps = [e["detail"]["step"] for e in events(paths, "checkpoint_saved")]
    stop = run["after_attempt1"]["steps"][-1]
    assert saved_steps == sorted({20, 40, 60, stop}), "each save once, the preemption one included"
    requested = events(paths, "eval_requested")
    assert [e["detail"]["step"] for e in requested] == saved_steps  # per_checkpoint evaluation in the preset
    assert all(e["detail"]["pid"] is None for e in requested)  # TUNEDECK_NO_EVAL=1


def test_every_attention_call_of_the_packed_run_stays_within_a_row_and_a_document(run: dict[str, Any]) -> None:
    """Attempt 1 ran with every attention call recorded (tests/job/attention_probe.py): no query is computed
    against more keys than max_seq_length (the flattened micro batch would be 4 x 256), and none may see a
    key of another document. Documents come from the model input, where each starts with a BOS token."""
    from tests.job.attention_probe import read_log

    paths = run["paths"]
    max_seq = json.loads(paths.config_json.read_text())["training"]["max_seq_length"]
    records = read_log(paths / ATTENTION_LOG)
    inputs = [r for r in records if r["kernel"] == "model_input"]
    calls = [r for r in records if r["kernel"] != "model_input"]
    layers = load_preset("tiny-demo").model.architecture.num_hidden_layers
    assert len(inputs) >= 2 * PREEMPT_AFTER_STEP and len(calls) == layers * len(inputs)
    assert {r["kernel"] for r in calls} == {"sdpa"}
    assert max(r["documents_max_per_row"] for r in inputs) >= 2, "packing put several documents in a row"
    assert all(r["starts_without_bos"] == 0 for r in inputs), "positions restart exactly where documents start"
    too_wide = [r for r in calls if r["keys_per_query"] > max_seq]
    assert not too_wide, f"{len(too_wide)} attention calls over more than {max_seq} keys per query: {too_wide[:3]}"
    crossing = [r for r in calls if r["cross_document_pairs"] != 0]
    assert not crossing, f"{len(crossing)} attention calls let a query see another document: {crossing[:3]}"


def test_flash_attention_request_runs_with_sdpa_and_records_why(run: dict[str, Any]) -> None:
    paths = run["paths"]
    attention = events(paths, "attention")
    assert len(attention) == 2
    for e in attention:
        assert e["detail"]["requested"] == "flash_attention_2" and e["detail"]["used"] == "sdpa"
        assert "no CUDA GPU" in e["detail"]["reason"]
        assert "block-diagonal" in e["detail"]["packing_behaviour"] and e["detail"]["path"] == "rows"
    performance = events(paths, "performance")
    assert len(performance) == 2
    for e in performance:
        assert e["detail"]["optimizer"]["used"] == "torch.optim.AdamW"  # the preset's torch_adam, on a CPU
        assert e["detail"]["liger_kernel"]["used"] is False and e["detail"]["liger_kernel"]["reason"]
        assert e["detail"]["data_loading"]["used"]["workers"] == 0  # a CPU run keeps its cores for training
    started = events(paths, "started")
    assert started[0]["detail"]["world_size"] == 2 and started[0]["detail"]["versions"]["deepspeed"]
    assert "fp32" in started[0]["detail"]["precision"]


def test_final_checkpoint_loads_and_generates(run: dict[str, Any]) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    final = run["paths"].checkpoint(MAX_STEPS)
    model = AutoModelForCausalLM.from_pretrained(final)
    tokenizer = AutoTokenizer.from_pretrained(final)
    n_params = sum(p.numel() for p in model.parameters())
    assert n_params == load_preset("tiny-demo").model.architecture.parameter_count()
    assert all(p.abs().sum() > 0 for p in model.parameters()), "whole weights were gathered, not empty ZeRO stubs"
    prompt = "### System Prompt\nYou are an intelligent programming assistant.\n\n### User Message\nWrite a function.\n\n### Assistant\n"
    inputs = tokenizer(prompt, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=12, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    assert out.shape[1] > inputs["input_ids"].shape[1]
    assert isinstance(tokenizer.decode(out[0, inputs["input_ids"].shape[1]:]), str)


def test_bad_data_path_fails_with_clear_event(tmp_path: Path) -> None:
    paths = make_run_dir(tmp_path / "bad")
    cfg = json.loads(paths.config_json.read_text())
    cfg["data"]["demo"] = None
    cfg["data"]["train_files"] = [str(tmp_path / "missing.jsonl")]
    paths.config_json.write_text(json.dumps(cfg))
    proc = subprocess.run([sys.executable, "-m", "remote.job.train", str(paths.root)], env=job_test_env(),
                          capture_output=True, timeout=LAUNCH_TIMEOUT_S)
    assert proc.returncode != 0
    failed = events(paths, "failed")
    assert len(failed) == 1 and failed[0]["attempt"] == 1
    assert "missing.jsonl: file not found" in failed[0]["detail"]["error"]
    assert any("JobError" in line for line in failed[0]["detail"]["traceback"])


def test_deepspeed_launcher_single_process_trains_and_evaluates_each_checkpoint(tmp_path: Path) -> None:
    """One process under the deepspeed launcher; evaluation on (2 HumanEval tasks): every complete checkpoint
    gets a detached evaluation, and pruning spares a checkpoint until its evaluation has read it."""
    paths = make_run_dir(tmp_path / "ds1", max_steps=4, save_steps=2, save_total_limit=1)
    cfg = json.loads(paths.config_json.read_text())
    cfg["evaluation"].update({"limit": 2, "max_new_tokens": 16, "when": "per_checkpoint"})
    paths.config_json.write_text(json.dumps(cfg))
    env = job_test_env()
    del env["TUNEDECK_NO_EVAL"]
    pids: list[int] = []
    try:
        with open(paths / "launcher.log", "wb") as log:
            proc = subprocess.Popen(job_command(paths.root, 1, launcher="deepspeed"), env=env, stdout=log,
                                    stderr=subprocess.STDOUT, start_new_session=True)
            rc = wait_for(proc)
        assert rc == 0, log_tail(paths / "launcher.log")
        assert steps_logged(paths) == [1, 2, 3, 4]
        assert events(paths, "started")[0]["detail"]["world_size"] == 1
        share = json.loads((paths / PARTITION_FILE.format(rank=0)).read_text())
        assert share["local_numel"] >= share["total_numel"]
        requested = events(paths, "eval_requested")
        assert [e["detail"]["step"] for e in requested] == [2, 4]
        pids = [e["detail"]["pid"] for e in requested]
        assert all(isinstance(pid, int) for pid in pids)
        deadline = time.time() + LAUNCH_TIMEOUT_S
        while {r["step"] for r in read_records(paths.evals, "evals")[0]} != {2, 4}:
            assert time.time() < deadline, log_tail(paths / "eval.log")
            time.sleep(0.5)
        evals = read_records(paths.evals, "evals")[0]
        assert all(r["n_tasks"] == 2 and r["attempt"] == 1 for r in evals)
    finally:
        for pid in pids:  # evaluations run in their own sessions: end the ones this test started
            try:
                os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
