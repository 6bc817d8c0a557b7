"""Evaluation placement per backend, the evaluation memory estimate, and the plan files that carry them out."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest

from core.config import RunConfig, validate_data
from core.estimate import GB, evaluation_gpus, evaluation_memory, format_estimate
from core.placement import PlacementError, parse_devices, resolve_placement
from core.plan import (
    LaunchContext,
    PlanError,
    hostfile_command,
    render_eval_slurm,
    render_hostfile,
    render_local_script,
    render_plan,
    render_reference_plan,
)
from core.presets import load_preset
from core.records import RunPaths


def variant(preset: str, **sections: dict) -> RunConfig:
    data = load_preset(preset).model_dump(mode="json")
    for section, values in sections.items():
        data[section].update(values)
    return RunConfig.model_validate(data)


def ctx(backend: str, **extra) -> LaunchContext:
    return LaunchContext(run_id="20240101-000000-abcd", run_dir="/scratch/runs/20240101-000000-abcd", backend=backend,
                         python="python3", partition="gpu", hosts=("gpu-node-01", "gpu-node-02", "gpu-node-03",
                                                                   "gpu-node-04"), **extra)


def test_phind_evaluation_memory_is_weights_plus_kv_cache_and_needs_two_a100s() -> None:
    cfg = load_preset("phind-codellama-34b-v1")
    one = evaluation_memory(cfg.model, cfg.cluster, cfg.evaluation, 1)
    p = cfg.model.architecture.parameter_count()
    assert one.weights == 2 * p  # bf16
    # 48 layers x 8 KV heads x 128 dims x (k, v) x 2 bytes per token, for 16 sequences of 460 + 512 tokens
    assert one.kv_cache == 48 * 8 * 128 * 2 * 2 * 16 * (460 + 512)
    assert one.per_gpu > 0.9 * 80 * GB  # 67.5 GB of weights alone leave too little of one A100-80GB
    assert evaluation_gpus(cfg.model, cfg.cluster, cfg.evaluation) == 2
    # the estimate report says the same numbers
    from core.estimate import estimate

    assert "Evaluation" in format_estimate(estimate(cfg)) and "2 GPUs" in format_estimate(estimate(cfg))


def test_auto_placement_per_backend_says_which_and_why() -> None:
    phind = load_preset("phind-codellama-34b-v1")
    slurm = resolve_placement(phind, "slurm")
    assert (slurm.placement, slurm.gpus) == ("slurm", 2) and "own Slurm job on 2 GPUs" in slurm.why
    hostfile = resolve_placement(phind, "hostfile")
    assert hostfile.placement == "after_training" and "does not fit beside training" in hostfile.why
    devices = resolve_placement(phind.model_copy(update={"cluster": phind.cluster.model_copy(update={"gpus_per_node": 6})}),
                                "local", (6, 7))
    assert devices.placement == "devices" and devices.devices == (6, 7) and devices.training_devices == (0, 1, 2, 3, 4, 5)
    seven_b = resolve_placement(load_preset("codellama-7b-base"), "local")
    assert seven_b.placement == "alongside" and "fits beside training on GPU 0" in seven_b.why
    tiny = resolve_placement(load_preset("tiny-demo"), "slurm")
    assert tiny.placement == "alongside" and "CPU" in tiny.why
    text = slurm.describe()
    assert "slurm (auto)" in text and "KV cache" in text and "67.49 GB" in text


def test_a_placement_the_backend_cannot_do_is_refused_with_the_choices() -> None:
    cfg = variant("codellama-7b-base", evaluation={"placement": "slurm"})
    with pytest.raises(PlacementError, match=r"not available on the hostfile backend.*alongside, after_training, devices"):
        resolve_placement(cfg, "hostfile")
    devices = variant("codellama-7b-base", evaluation={"placement": "devices"})
    with pytest.raises(PlacementError, match="eval_devices"):
        resolve_placement(devices, "local")
    with pytest.raises(PlanError, match=r"evaluation\.placement"):
        render_plan(cfg, ctx("hostfile"))
    assert parse_devices(" 6, 7") == (6, 7)
    with pytest.raises(PlacementError):
        parse_devices("7,seven")


def test_alongside_that_does_not_fit_beside_training_names_both_peaks() -> None:
    # 100 sequences: the evaluation alone fits one GPU (70 GB), but not beside training's 20 GB peak.
    cfg = variant("codellama-7b-base", evaluation={"placement": "alongside", "batch_size": 100})
    with pytest.raises(PlacementError, match=r"training peaks at 19\.8 GB.*adds 70\.2 GB.*90\.1 GB > 80 GB"):
        resolve_placement(cfg, "local")
    with pytest.raises(PlanError, match="does not fit"):
        render_plan(cfg, ctx("local"))


def test_reserved_gpus_too_small_for_the_evaluation_name_the_numbers() -> None:
    cfg = variant("phind-codellama-34b-v1", cluster={"gpus_per_node": 7}, training={"global_batch_size": 112},
                  evaluation={"placement": "devices"})
    with pytest.raises(PlacementError, match=r"needs 74\.4 GB \(74\.4 GB per GPU\).*reserves 1 GPU.* of 80 GB"):
        resolve_placement(cfg, "local", (7,))


def test_slurm_placement_ships_an_eval_job_script_and_the_placement_in_config_json() -> None:
    cfg = load_preset("phind-codellama-34b-v1")
    files = render_plan(cfg, ctx("slurm", account="codegen", time_limit="04:00:00"))
    derived = json.loads(files[RunPaths.CONFIG_JSON])["derived"]["evaluation"]
    assert derived["placement"] == "slurm" and derived["gpus"] == 2 and derived["memory_gb"] == pytest.approx(77.44)
    script = files[RunPaths.EVAL_SLURM]
    assert "#SBATCH --gpus-per-node=2" in script and "#SBATCH --nodes=1" in script
    assert "#SBATCH --no-requeue" in script and "#SBATCH --partition=gpu" in script
    assert "#SBATCH --output=/scratch/runs/20240101-000000-abcd/eval.log" in script
    assert script.rstrip().endswith('-m remote.job.evaluate --run-dir /scratch/runs/20240101-000000-abcd "$@"')
    # tiny on the Slurm backend evaluates alongside: no eval job script
    assert RunPaths.EVAL_SLURM not in render_plan(load_preset("tiny-demo"), ctx("slurm"))


def test_the_job_reads_the_placement_the_launch_wrote_through_one_schema(tmp_path: Path) -> None:
    from remote.job.evalqueue import QueueError, evaluation_env, placement_of

    six = variant("phind-codellama-34b-v1", cluster={"nodes": 1, "gpus_per_node": 6}, training={"global_batch_size": 96})
    lctx = ctx("local", eval_devices=(6, 7))
    run = RunPaths(tmp_path / "run")
    run.root.mkdir()
    run.config_json.write_text(render_plan(six, lctx)[RunPaths.CONFIG_JSON])
    read = placement_of(run)
    assert read == resolve_placement(six, "local", (6, 7)).derived()
    assert (read.placement, read.devices, read.training_devices) == ("devices", (6, 7), (0, 1, 2, 3, 4, 5))
    assert evaluation_env(read)["CUDA_VISIBLE_DEVICES"] == "6,7"

    # a config.json from before placements existed: its evaluations ran beside training
    data = json.loads(run.config_json.read_text())
    del data["derived"]["evaluation"]
    run.config_json.write_text(json.dumps(data))
    assert placement_of(run).placement == "alongside"
    # a block the schema refuses is an error naming the field, not a KeyError somewhere in the queue
    data["derived"]["evaluation"] = {"placement": "devices", "gpu": 2}
    run.config_json.write_text(json.dumps(data))
    with pytest.raises(QueueError, match=r"derived\.evaluation\.gpu"):
        placement_of(run)


def test_after_training_runs_the_queue_once_training_exits_and_devices_pin_training() -> None:
    phind = variant("phind-codellama-34b-v1", cluster={"nodes": 1})
    local = render_local_script(phind, ctx("local"))
    lines = local.splitlines()
    train = next(i for i, ln in enumerate(lines) if "remote.job.torchrun" in ln)
    drain = next(i for i, ln in enumerate(lines) if "remote.job.evalqueue drain" in ln)
    assert train < drain and lines[-1] == 'exit "$rc"' and lines[train].endswith("|| rc=$?")
    assert not any(ln.startswith("exec ") for ln in lines)  # the shell must outlive training to drain

    # 34B needs two GPUs for its evaluation: the profile reserves GPUs 6 and 7, training gets 0-5 (6 per node)
    six = variant("phind-codellama-34b-v1", cluster={"nodes": 1, "gpus_per_node": 6}, training={"global_batch_size": 96})
    pinned = render_local_script(six, ctx("local", eval_devices=(6, 7)))
    assert "export CUDA_VISIBLE_DEVICES=0,1,2,3,4,5\n" in pinned
    two_nodes = variant("phind-codellama-34b-v1", cluster={"nodes": 2, "gpus_per_node": 6}, training={"global_batch_size": 96})
    hctx = ctx("hostfile", eval_devices=(0, 1))
    assert render_hostfile(two_nodes, hctx) == "gpu-node-01 slots=8\ngpu-node-02 slots=6\n"
    argv = hostfile_command(two_nodes, hctx)
    assert argv[argv.index("--include") + 1] == "gpu-node-01:2,3,4,5,6,7@gpu-node-02"
    assert "--num_gpus" not in argv  # DeepSpeed refuses --num_gpus together with --include


def test_deepspeed_parses_the_include_filter_as_training_gpus() -> None:
    from deepspeed.launcher.runner import parse_resource_filter

    two_nodes = variant("phind-codellama-34b-v1", cluster={"nodes": 2, "gpus_per_node": 6}, training={"global_batch_size": 96})
    hctx = ctx("hostfile", eval_devices=(6, 7))
    hosts = {line.split()[0]: list(range(int(line.split("=")[1]))) for line in render_hostfile(two_nodes, hctx).splitlines()}
    argv = hostfile_command(two_nodes, hctx)
    picked = parse_resource_filter(hosts, include_str=argv[argv.index("--include") + 1])
    assert picked == {"gpu-node-01": [0, 1, 2, 3, 4, 5], "gpu-node-02": [0, 1, 2, 3, 4, 5]}


def test_reference_plan_evaluates_a_model_path_as_step_zero() -> None:
    from remote.runs import reference_config

    cfg = reference_config("/models/CodeLlama-34b-hf", "Code Llama-34B", gpus=2)
    files = render_reference_plan(cfg, ctx("slurm"), "/models/CodeLlama-34b-hf")
    slurm = files[RunPaths.SLURM_SCRIPT]
    assert "#SBATCH --gpus-per-node=2" in slurm and "tunedeck-20240101-000000-abcd-reference" in slurm
    last = shlex.split(slurm.strip().splitlines()[-1])
    assert last[last.index("--checkpoint") + 1] == "/models/CodeLlama-34b-hf" and last[last.index("--step") + 1] == "0"
    assert json.loads(files[RunPaths.CONFIG_JSON])["derived"]["evaluation"]["placement"] == "slurm"


def test_every_preset_validates_with_its_evaluation_estimate() -> None:
    from core.presets import preset_names

    for name in preset_names():
        _, problems = validate_data(load_preset(name).model_dump(mode="json"))
        assert problems == [], name


def test_eval_slurm_golden_and_shellcheck(tmp_path: Path) -> None:
    from tests.core.test_plan import GOLDEN, UPDATE, _shellcheck, golden_ctx

    cfg = load_preset("phind-codellama-34b-v1")
    text = render_eval_slurm(cfg, golden_ctx("phind-codellama-34b-v1", "slurm"))
    path = GOLDEN / "phind-codellama-34b-v1" / "eval.slurm"
    if UPDATE:
        path.write_text(text, encoding="utf-8")
    assert text == path.read_text(encoding="utf-8")
    _shellcheck(tmp_path, "eval.slurm", text)
    after = render_local_script(variant("phind-codellama-34b-v1", cluster={"nodes": 1}), ctx("local"))
    _shellcheck(tmp_path, "launch.sh", after)
