"""Launch-plan rendering: golden files, shellcheck, hostile names executed for real, DeepSpeed's parser."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from core.config import RunConfig, resolved_dict
from core.plan import (
    JOB_MODULE,
    LaunchContext,
    PlanError,
    hostfile_command,
    local_command,
    render_deepspeed_env,
    render_ds_config,
    render_hostfile,
    render_hostfile_launch,
    render_local_script,
    render_slurm_script,
    write_plan,
)
from core.presets import load_preset
from core.records import RunPaths

GOLDEN = Path(__file__).parent / "golden"
UPDATE = os.environ.get("TUNEDECK_UPDATE_GOLDEN") == "1"
SHELLCHECK = shutil.which("shellcheck") or ("/usr/bin/shellcheck" if Path("/usr/bin/shellcheck").exists() else None)
HOSTILE = "it's a \"run\" $(touch SENTINEL) `touch SENTINEL`; rm -rf x & ü ☃ \\ %j"


def golden_ctx(preset: str, backend: str) -> LaunchContext:
    cfg = load_preset(preset)
    return LaunchContext(
        run_id="20240101-000000-abcd",
        run_dir="/scratch/tunedeck/runs/20240101-000000-abcd",
        backend=backend,
        env_setup="source /opt/envs/train/bin/activate",
        python="python3",
        master_port=29500,
        partition="gpu" if cfg.cluster.gpu_type != "cpu" else None,
        account="codegen" if cfg.cluster.gpu_type != "cpu" else None,
        time_limit="04:00:00",
        hosts=[f"gpu-node-{i:02d}" for i in range(1, cfg.cluster.nodes + 1)] if cfg.cluster.nodes > 1 else ["localhost"],
    )


RENDERERS = {
    "ds_config.json": lambda cfg, ctx: json.dumps(render_ds_config(cfg), indent=2) + "\n",
    "hostfile": render_hostfile,
    ".deepspeed_env": render_deepspeed_env,
    "launch.slurm": render_slurm_script,
    "launch-local.sh": render_local_script,
    "launch-hostfile.sh": render_hostfile_launch,
}


SCRIPT_BACKEND = {"launch-local.sh": "local", "launch-hostfile.sh": "hostfile"}


@pytest.mark.parametrize("preset", ["phind-codellama-34b-v1", "tiny-demo"])
@pytest.mark.parametrize("name", list(RENDERERS))
def test_rendered_file_matches_golden(preset: str, name: str) -> None:
    cfg = load_preset(preset)
    # Each launch script as its own backend renders it (the evaluation placement, and so the script's last
    # lines, depend on the backend): the golden text is what a launch there writes, and what
    # tests/remote/test_multinode_golden.py executes.
    text = RENDERERS[name](cfg, golden_ctx(preset, SCRIPT_BACKEND.get(name, "slurm")))
    path = GOLDEN / preset / name
    if UPDATE:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    assert path.is_file(), f"golden file {path} missing: run with TUNEDECK_UPDATE_GOLDEN=1"
    assert text == path.read_text(encoding="utf-8"), f"{path} differs (TUNEDECK_UPDATE_GOLDEN=1 regenerates it)"


def test_phind_ds_config_is_zero3_with_whole_weights_on_save() -> None:
    ds = render_ds_config(load_preset("phind-codellama-34b-v1"))
    zero = ds["zero_optimization"]
    assert zero["stage"] == 3
    assert zero["stage3_gather_16bit_weights_on_model_save"] is True
    for key in ("train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps", "gradient_clipping"):
        assert ds[key] == "auto"
    assert ds["optimizer"]["params"] == {"lr": "auto", "betas": "auto", "eps": "auto", "weight_decay": "auto"}
    assert ds["bf16"]["enabled"] == "auto"
    assert "offload_optimizer" not in zero and "offload_param" not in zero


def _variant(preset: str, **sections: dict) -> RunConfig:
    data = load_preset(preset).model_dump(mode="json")
    for section, values in sections.items():
        data[section].update(values)
    return RunConfig.model_validate(data)


def test_offload_and_torch_adam_reach_the_ds_config() -> None:
    cfg = _variant("phind-codellama-34b-v1", deepspeed={"offload_optimizer": "nvme", "offload_param": "cpu", "nvme_path": "/local/nvme", "torch_adam": True})
    zero = render_ds_config(cfg)["zero_optimization"]
    assert zero["offload_optimizer"] == {"device": "nvme", "pin_memory": True, "nvme_path": "/local/nvme"}
    assert zero["offload_param"] == {"device": "cpu", "pin_memory": True}
    assert render_ds_config(cfg)["optimizer"]["params"]["torch_adam"] is True


def test_stage2_config_has_no_stage3_keys() -> None:
    cfg = _variant("codellama-7b-base", deepspeed={"zero_stage": 2, "offload_optimizer": "cpu"})
    zero = render_ds_config(cfg)["zero_optimization"]
    assert zero["stage"] == 2 and zero["offload_optimizer"]["device"] == "cpu"
    assert not [k for k in zero if k.startswith("stage3_") or k in ("offload_param", "sub_group_size")]


DS_VARIANTS = {
    "phind": lambda: load_preset("phind-codellama-34b-v1"),
    "tiny": lambda: load_preset("tiny-demo"),
    "zero3-offload": lambda: _variant("codellama-7b-base", deepspeed={"offload_optimizer": "cpu", "offload_param": "nvme", "nvme_path": "/nvme"}),
    "zero2-offload": lambda: _variant("codellama-7b-base", deepspeed={"zero_stage": 2, "offload_optimizer": "cpu"}),
    "zero0": lambda: _variant("tiny-demo", deepspeed={"zero_stage": 0}),
}


@pytest.mark.parametrize("variant", list(DS_VARIANTS))
def test_deepspeed_parser_accepts_rendered_config_once_trainer_fills_auto(variant: str, tmp_path: Path) -> None:
    pytest.importorskip("deepspeed", reason="deepspeed is not installed")
    from types import SimpleNamespace

    from deepspeed.runtime.config import DeepSpeedConfig
    from transformers import TrainingArguments
    from transformers.integrations.deepspeed import HfTrainerDeepSpeedConfig, unset_hf_deepspeed_config

    cfg = DS_VARIANTS[variant]()
    t = cfg.training
    args = TrainingArguments(
        output_dir=str(tmp_path), per_device_train_batch_size=t.micro_batch_size,
        gradient_accumulation_steps=cfg.gradient_accumulation, learning_rate=t.learning_rate,
        max_grad_norm=t.max_grad_norm, weight_decay=t.weight_decay, use_cpu=True, report_to=[],
    )
    try:
        hf = HfTrainerDeepSpeedConfig(render_ds_config(cfg))
        hf.trainer_config_process(args)
        model_like = SimpleNamespace(config=SimpleNamespace(hidden_size=cfg.model.architecture.hidden_size))
        hf.trainer_config_finalize(args, model_like, 100)
        assert "auto" not in json.dumps(hf.config)
        parsed = DeepSpeedConfig(hf.config)
    finally:
        unset_hf_deepspeed_config()
    assert parsed.zero_config.stage == cfg.deepspeed.zero_stage
    assert parsed.train_micro_batch_size_per_gpu == t.micro_batch_size
    assert parsed.gradient_accumulation_steps == cfg.gradient_accumulation
    assert parsed.optimizer_name == "adamw"
    if cfg.deepspeed.zero_stage == 3:
        assert parsed.zero_config.gather_16bit_weights_on_model_save is True
        assert parsed.zero_config.param_persistence_threshold == 10 * cfg.model.architecture.hidden_size


def test_deepspeed_parser_rejects_a_misspelt_zero_key() -> None:
    # Guards the test above: the parser really is strict, so acceptance means something.
    pytest.importorskip("deepspeed", reason="deepspeed is not installed")
    from deepspeed.runtime.config import DeepSpeedConfig

    raw = {"train_batch_size": 1, "train_micro_batch_size_per_gpu": 1, "zero_optimization": {"stage": 3, "stage3_gather_16bit_weights_on_save": True}}
    with pytest.raises(Exception, match="stage3_gather_16bit_weights_on_save"):
        DeepSpeedConfig(raw)


# ------------------------------------------------------------------------------------------ shellcheck


def _shellcheck(tmp_path: Path, name: str, text: str) -> None:
    if SHELLCHECK is None:
        pytest.skip("shellcheck not installed (Debian package shellcheck)")
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    proc = subprocess.run([SHELLCHECK, "--shell=bash", "--severity=style", str(path)], capture_output=True, text=True)
    assert proc.returncode == 0, f"shellcheck on {name}:\n{proc.stdout}{proc.stderr}\n---\n{text}"


@pytest.mark.parametrize("preset", ["phind-codellama-34b-v1", "tiny-demo"])
@pytest.mark.parametrize("hostile", [False, True])
def test_rendered_scripts_are_shellcheck_clean(preset: str, hostile: bool, tmp_path: Path) -> None:
    cfg = load_preset(preset)
    ctx = golden_ctx(preset, "slurm")
    if hostile:
        ctx = LaunchContext(
            run_id=HOSTILE, run_dir="/runs/" + HOSTILE.replace("\\", ""), python="/opt/my env/bin/python3 $(x)",
            job_name="job 'x' \"y\"", partition="gpu;rm", hosts=ctx.hosts, extra_env={"HF_HOME": "/data/$(whoami) 'hf'"},
        )
    _shellcheck(tmp_path, "launch.slurm", render_slurm_script(cfg, ctx))
    # Each launch.sh as its backend writes it (phind: evaluations after training, so no `exec`).
    _shellcheck(tmp_path, "launch.sh", render_local_script(cfg, replace(ctx, backend="local")))
    if not hostile:  # the DeepSpeed launcher refuses such paths (tested below)
        _shellcheck(tmp_path, "launch-hostfile.sh", render_hostfile_launch(cfg, replace(ctx, backend="hostfile")))


# --------------------------------------------------------------------------- hostile values, executed


def _stub(bin_dir: Path, name: str, body: str) -> Path:
    path = bin_dir / name
    path.write_text("#!/bin/bash\n" + body, encoding="utf-8")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


# Records PWD, PYTHONPATH, TUNEDECK_RUN_ID and its own argv, NUL-separated, in $RECORD (a test harness
# stand-in for the interpreter/launchers; it never runs anything it is given).
RECORDER = 'printf "%s\\0" "$PWD" "${PYTHONPATH-}" "${TUNEDECK_RUN_ID-}" "$@" > "$RECORD"\n'


def _harness(tmp: Path) -> Path:
    bin_dir = tmp / "bin"
    bin_dir.mkdir()
    _stub(bin_dir, "recorder", RECORDER)
    _stub(bin_dir, "deepspeed", RECORDER)
    _stub(bin_dir, "srun", RECORDER)
    _stub(bin_dir, "scontrol", 'echo "node-a"\n')
    return bin_dir


def _run(script: str, tmp: Path, bin_dir: Path) -> list[str]:
    path = tmp / "script.sh"
    path.write_text(script, encoding="utf-8")
    record = tmp / "record"
    record.unlink(missing_ok=True)
    env = {
        "PATH": f"{bin_dir}:/usr/bin:/bin", "RECORD": str(record), "HOME": str(tmp),
        "SLURM_JOB_NODELIST": "node-a", "SLURM_NNODES": "1", "SLURM_JOB_ID": "77",
    }
    proc = subprocess.run(["bash", str(path)], cwd=tmp, env=env, capture_output=True, text=True, timeout=20)
    assert proc.returncode == 0, proc.stderr
    return record.read_bytes().decode("utf-8").split("\0")[:-1]


NAME_CHARS = st.sampled_from(list("ab Z09-_.'\"$()`;&|<>*?!#~{}[]=%:\\\n\tü☃é"))
NAMES = st.text(NAME_CHARS, min_size=1, max_size=24).filter(lambda s: s not in (".", "..") and not s.startswith("-"))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(run_name=NAMES, run_id=NAMES, backend=st.sampled_from(["local", "slurm", "hostfile"]))
def test_hostile_names_reach_the_job_verbatim_and_never_run(run_name: str, run_id: str, backend: str, tmp_path_factory) -> None:
    tmp = tmp_path_factory.mktemp("hostile")
    bin_dir = _harness(tmp)
    run_dir = tmp / "runs" / run_name
    run_dir.mkdir(parents=True)
    cfg = load_preset("tiny-demo")
    ctx = LaunchContext(run_id=run_id, run_dir=str(run_dir), backend=backend, python=str(bin_dir / "recorder"))
    try:
        if backend == "local":
            script, expected = render_local_script(cfg, ctx), local_command(cfg, ctx)[1:]
        elif backend == "hostfile":
            script, expected = render_hostfile_launch(cfg, ctx), hostfile_command(cfg, ctx)[1:]
        else:
            script = render_slurm_script(cfg, ctx)
            expected = [
                "--kill-on-bad-exit=1", ctx.python, "-m", "remote.job.torchrun", "--nnodes", "1",
                "--nproc_per_node", "2", "--rdzv_backend", "c10d", "--rdzv_endpoint", "node-a:29500",
                "--rdzv_id", "77", "-m", JOB_MODULE, str(run_dir),
            ]
    except PlanError as exc:
        # Only where the consumer cannot hold the value: sbatch lines / DeepSpeed's remote shell.
        assert backend != "local", exc
        if backend == "slurm":
            assert any(c in str(run_dir) for c in "\n\\") or "packjob" in str(run_dir).lower(), exc
        assert "run_dir" in str(exc)
        event(f"{backend}: refused")
        return
    event(f"{backend}: executed")
    argv = _run(script, tmp, bin_dir)
    assert not list(tmp.rglob("SENTINEL"))
    pwd, pythonpath, recorded_id, *args = argv
    assert Path(pwd) == run_dir
    assert pythonpath == str(run_dir / RunPaths.JOB_CODE)
    assert recorded_id == run_id
    assert args == expected
    if backend == "local":
        assert (run_dir / RunPaths.STDOUT).exists()  # output appended into the run directory


def test_hostile_run_dir_with_command_substitution_never_executes(tmp_path: Path) -> None:
    bin_dir = _harness(tmp_path)
    run_dir = tmp_path / "$(touch SENTINEL)`touch SENTINEL`;touch SENTINEL'\"\n"
    run_dir.mkdir()
    cfg = load_preset("tiny-demo")
    ctx = LaunchContext(run_id="x;touch SENTINEL", run_dir=str(run_dir), python=str(bin_dir / "recorder"),
                        extra_env={"NOTE": "$(touch SENTINEL)"})
    _run(render_local_script(cfg, ctx), tmp_path, bin_dir)
    assert not list(tmp_path.rglob("SENTINEL"))


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"partition": "gpu\n#SBATCH --account=other"}, "partition"),
        ({"job_name": "a\nb"}, "job_name"),
        ({"run_dir": "/runs/a\\b"}, "run_dir"),
        ({"time_limit": "packjob"}, "time_limit"),
    ],
)
def test_slurm_directive_values_that_sbatch_cannot_hold_are_refused(kwargs: dict, fragment: str) -> None:
    ctx = LaunchContext(**{"run_id": "r", "run_dir": "/runs/r", **kwargs})
    with pytest.raises(PlanError, match=fragment):
        render_slurm_script(load_preset("tiny-demo"), ctx)


def test_slurm_directives_quote_spaces_quotes_hashes_and_percent() -> None:
    ctx = LaunchContext(run_id="r", run_dir="/runs/my run's \"best\" #1 100%", job_name="my job")
    text = render_slurm_script(load_preset("tiny-demo"), ctx)
    assert '#SBATCH --job-name="my job"\n' in text
    assert '#SBATCH --output="/runs/my run\'s \\"best\\" #1 100%%/stdout.log"\n' in text
    assert '#SBATCH --chdir="/runs/my run\'s \\"best\\" #1 100%"\n' in text
    assert "#SBATCH --time=04:00:00\n" in render_slurm_script(load_preset("tiny-demo"), LaunchContext(run_id="r", run_dir="/r", time_limit="04:00:00"))


@pytest.mark.parametrize("run_dir", ["/runs/a'b", "/runs/$(x)", "/runs/a`b`", '/runs/a"b'])
def test_deepspeed_env_refuses_values_the_launcher_would_reinterpret(run_dir: str) -> None:
    ctx = LaunchContext(run_id="r", run_dir=run_dir, backend="hostfile")
    with pytest.raises(PlanError, match="DeepSpeed"):
        render_deepspeed_env(load_preset("tiny-demo"), ctx)


def test_deepspeed_env_lists_job_environment() -> None:
    ctx = LaunchContext(run_id="r1", run_dir="/runs/r1", extra_env={"HF_HOME": "/data/hf"})
    lines = render_deepspeed_env(load_preset("tiny-demo"), ctx).splitlines()
    assert "PYTHONPATH=/runs/r1/code" in lines
    assert "PYTHONUNBUFFERED=1" in lines
    assert "PYTHONWARNINGS=ignore::FutureWarning" in lines
    assert "HF_HOME=/data/hf" in lines


def test_hostfile_needs_a_host_per_node() -> None:
    cfg = load_preset("phind-codellama-34b-v1")
    with pytest.raises(PlanError, match=r"cluster\.nodes is 4"):
        render_hostfile(cfg, LaunchContext(run_id="r", run_dir="/r", hosts=["a", "b"]))
    text = render_hostfile(cfg, LaunchContext(run_id="r", run_dir="/r", hosts=["a", "b", "c", "d", "e"]))
    assert text == "a slots=8\nb slots=8\nc slots=8\nd slots=8\n"


def test_launch_context_rejects_relative_run_dir_and_bad_env_names() -> None:
    with pytest.raises(PlanError, match="absolute"):
        LaunchContext(run_id="r", run_dir="runs/r")
    with pytest.raises(PlanError, match="extra_env"):
        LaunchContext(run_id="r", run_dir="/r", extra_env={"A B": "x"})


def test_write_plan_writes_every_file_atomically_with_executable_scripts(tmp_path: Path) -> None:
    cfg = load_preset("tiny-demo")
    ctx = LaunchContext(run_id="r", run_dir=str(tmp_path / "run"), backend="local")
    written = write_plan(cfg, ctx, tmp_path / "plan")
    names = {RunPaths.DS_CONFIG, RunPaths.HOSTFILE, RunPaths.DEEPSPEED_ENV, RunPaths.SLURM_SCRIPT,
             RunPaths.LOCAL_SCRIPT, RunPaths.CONFIG_YAML, RunPaths.CONFIG_JSON}
    assert set(written) == names
    assert sorted(p.name for p in (tmp_path / "plan").iterdir()) == sorted(names)  # no temp files left
    assert os.access(written[RunPaths.LOCAL_SCRIPT], os.X_OK)
    shipped = json.loads(written[RunPaths.CONFIG_JSON].read_text())
    evaluation = shipped["derived"].pop("evaluation")  # where the job sends its evaluations (placement)
    assert shipped == json.loads(json.dumps(resolved_dict(cfg)))
    assert evaluation["placement"] == "alongside" and evaluation["backend"] == "local" and "CPU run" in evaluation["why"]
    assert RunConfig.model_validate(__import__("yaml").safe_load(written[RunPaths.CONFIG_YAML].read_text())) == cfg


def test_write_plan_writes_nothing_when_a_value_is_refused(tmp_path: Path) -> None:
    ctx = LaunchContext(run_id="r", run_dir="/runs/a\nb", backend="slurm")
    with pytest.raises(PlanError):
        write_plan(load_preset("tiny-demo"), ctx, tmp_path / "plan")
    assert not (tmp_path / "plan").exists()


# ------------------------------------------------------------------------ real sbatch / srun / scontrol


@pytest.fixture(scope="module")
def slurm_cluster_for_plan():
    """A real single-node Slurm on 127.0.0.1 (tests/remote/daemons.py), for this module only."""
    import tempfile

    daemons = pytest.importorskip("tests.remote.daemons")
    if os.geteuid() != 0:
        pytest.skip("the loopback Slurm cluster needs root")
    missing = [p for p in (daemons.SLURMCTLD, daemons.SLURMD, daemons.MUNGED) if not Path(p).exists()]
    if missing:
        pytest.skip(f"Slurm/munge not installed ({', '.join(missing)})")
    # A short path: munge's Unix socket path is limited to 108 bytes.
    workdir = Path(tempfile.mkdtemp(prefix="tdplan"))
    cluster = daemons.SlurmCluster(workdir / "slurm")
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
        daemons.kill_leftovers(str(workdir))
        shutil.rmtree(workdir, ignore_errors=True)


def _wait_job(cluster, job_id: str, timeout_s: float = 90.0) -> str:
    import time

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        out = cluster.scontrol("show", "job", job_id)
        state = out.split("JobState=", 1)[1].split()[0]
        if state in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY"):
            return out
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} not finished in {timeout_s} s: {cluster.scontrol('show', 'job', job_id)}")


@pytest.mark.parametrize("gpu_type", ["cpu", "A100-80GB"])
def test_slurm_script_runs_under_real_sbatch_with_hostile_paths(slurm_cluster_for_plan, gpu_type: str) -> None:
    cluster = slurm_cluster_for_plan
    base = cluster.workdir.parent / f"runs-{gpu_type}"
    run_dir = base / "it's a \"run\" $(touch SENTINEL) `touch SENTINEL`; 100% ü #1"
    run_dir.mkdir(parents=True)
    recorder = _stub(base, "py recorder", 'printf "%s\\0" "$PWD" "$PYTHONPATH" "${CUDA_VISIBLE_DEVICES-}" "$@" > "$RECORD"\n')
    record = run_dir / "argv.bin"
    cfg = _variant("tiny-demo", cluster={"gpu_type": gpu_type})
    job_name = "job 'x' \"y\" ü"
    ctx = LaunchContext(
        run_id="r1", run_dir=str(run_dir), backend="slurm", python=str(recorder), partition=cluster.partition,
        time_limit="00:05:00", job_name=job_name, master_port=29511, extra_env={"RECORD": str(record)},
    )
    written = write_plan(cfg, ctx, run_dir)
    assert RunPaths.DEEPSPEED_ENV not in written  # the DeepSpeed launcher cannot hold this path; Slurm can
    proc = subprocess.run(["sbatch", "--parsable", str(written[RunPaths.SLURM_SCRIPT])], env=cluster.env,
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    job_id = proc.stdout.strip().split(";")[0]
    info = _wait_job(cluster, job_id)
    log = (run_dir / RunPaths.STDOUT).read_text(errors="replace") if (run_dir / RunPaths.STDOUT).exists() else ""
    assert "JobState=COMPLETED" in info, f"{info}\n{log}\n{cluster.logs()}"
    assert f"JobName={job_name}" in info  # sbatch's own parser got the escaped directive back verbatim
    assert (run_dir / RunPaths.STDOUT).is_file()  # --output with % and spaces landed in the run dir
    assert not list(base.rglob("SENTINEL"))
    pwd, pythonpath, cuda, *args = record.read_bytes().decode().split("\0")[:-1]
    assert Path(pwd) == run_dir and pythonpath == str(run_dir / "code")
    assert args == [
        "-m", "remote.job.torchrun", "--nnodes", "1", "--nproc_per_node", "2", "--rdzv_backend", "c10d",
        "--rdzv_endpoint", f"{cluster.node}:29511", "--rdzv_id", job_id, "-m", JOB_MODULE, str(run_dir),
    ]
    if gpu_type != "cpu":
        assert len(cuda.split(",")) == 2  # --gpus-per-node=2 allocated two (fake) GPUs


@pytest.mark.parametrize("backend", ["hostfile", "local"])
def test_launch_script_starts_every_rank_through_the_real_launcher(backend: str, tmp_path: Path) -> None:
    """launch.sh run for real: the deepspeed launcher (hostfile) or torchrun (local) starts 2 ranks."""
    pytest.importorskip("deepspeed" if backend == "hostfile" else "torch", reason="training stack not installed")
    import sys

    run_dir = tmp_path / "run one ü+%"
    job = run_dir / RunPaths.JOB_CODE / "remote" / "job"
    job.mkdir(parents=True)
    for pkg in (job.parent, job):
        (pkg / "__init__.py").write_text("")
    # torchrun is started through the shipped wrapper (the bundle ships remote/job/*.py)
    shutil.copy(Path(__file__).resolve().parents[2] / "remote" / "job" / "torchrun.py", job / "torchrun.py")
    # A stand-in for the shipped job code: each rank records its argv and rendezvous variables.
    (job / "train.py").write_text(
        "import json, os, sys\n"
        "keys = ('RANK', 'WORLD_SIZE', 'LOCAL_RANK', 'MASTER_ADDR', 'MASTER_PORT', 'PYTHONPATH', 'PYTHONWARNINGS')\n"
        "out = os.path.join(sys.argv[1], 'rank-' + os.environ['RANK'] + '.json')\n"
        "json.dump({'argv': sys.argv[1:], 'env': {k: os.environ.get(k) for k in keys}}, open(out, 'w'))\n"
    )
    cfg = load_preset("tiny-demo")
    ctx = LaunchContext(run_id="r", run_dir=str(run_dir), backend=backend, master_port=29533, python=sys.executable)
    written = write_plan(cfg, ctx, run_dir)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    env.pop("PYTHONPATH", None)
    proc = subprocess.run(["bash", str(written[RunPaths.LOCAL_SCRIPT])], env=env, capture_output=True, text=True, timeout=120)
    log = (run_dir / RunPaths.STDOUT).read_text()
    assert proc.returncode == 0, log
    ranks = [json.loads((run_dir / f"rank-{r}.json").read_text()) for r in range(2)]
    for r, rec in enumerate(ranks):
        assert rec["argv"] == [str(run_dir)]  # the entry-point contract: `python -m remote.job.train RUN_DIR`
        env_seen = rec["env"]
        assert (env_seen["RANK"], env_seen["WORLD_SIZE"], env_seen["LOCAL_RANK"]) == (str(r), "2", str(r))
        assert env_seen["PYTHONPATH"] == str(run_dir / "code")
        assert env_seen["PYTHONWARNINGS"] == "ignore::FutureWarning"
        if backend == "hostfile":
            assert (env_seen["MASTER_ADDR"], env_seen["MASTER_PORT"]) == ("127.0.0.1", "29533")


def test_node_layout_names_the_rendezvous_host_and_the_ranks_of_every_node() -> None:
    from core.plan import describe_nodes

    cfg = load_preset("phind-codellama-34b-v1")
    hostfile = describe_nodes(cfg, golden_ctx("phind-codellama-34b-v1", "hostfile"))
    assert hostfile == ["4 nodes x 8 processes = world size 32; hosts from the hostfile",
                        "gpu-node-01: ranks 0-7 -- rendezvous host (MASTER_ADDR, port 29500)",
                        "gpu-node-02: ranks 8-15", "gpu-node-03: ranks 16-23", "gpu-node-04: ranks 24-31"]
    slurm = describe_nodes(cfg, golden_ctx("phind-codellama-34b-v1", "slurm"))
    assert slurm[1] == "node 1 of the allocation: ranks 0-7 -- rendezvous host (MASTER_ADDR, torchrun c10d on port 29500)"
    assert slurm[-1] == "node 4 of the allocation: ranks 24-31"
    local = describe_nodes(load_preset("tiny-demo"), LaunchContext(run_id="r", run_dir="/r", backend="local"))
    assert local == ["1 node x 2 processes = world size 2 on this machine (torchrun --standalone): rendezvous on "
                     "this machine"]
