"""Launch-plan rendering: the files a run needs on its target machine, built from one RunConfig.

Pure functions (config + LaunchContext -> text), plus `write_plan`, which writes them atomically. Every
value that reaches a shell goes through `shlex.quote` (commands are built as lists, joined with
`shlex.join`); values that land where no shell quoting applies (#SBATCH directives, .deepspeed_env, the
DeepSpeed launcher's own remote command line) are validated against that consumer's rules and rejected
with a PlanError that names the field.

Entry-point contract with the training job: `python -m remote.job.train RUN_DIR` with
PYTHONPATH=RUN_DIR/code, runnable under torchrun / the deepspeed launcher with 1 or more processes.
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Literal

from core.config import DerivedEvaluation, RunConfig, resolved_dict
from core.evalstate import eval_job_prefix
from core.fsutil import atomic_write_text
from core.placement import PlacementError, PlacementPlan, resolve_placement
from core.records import RunPaths

JOB_MODULE = "remote.job.train"
TORCHRUN_MODULE = "remote.job.torchrun"  # torchrun with a clean end on SIGTERM (remote/job/torchrun.py)
EVAL_MODULE = "remote.job.evaluate"
QUEUE_MODULE = "remote.job.evalqueue"
Backend = Literal["slurm", "hostfile", "local"]
BACKENDS: tuple[str, ...] = ("slurm", "hostfile", "local")
# Seconds of notice Slurm gives (SIGTERM to the batch shell) before a time limit or preemption kill,
# long enough for a ZeRO-3 checkpoint of a 34B model to reach shared storage.
PREEMPT_NOTICE_S = 120


class PlanError(ValueError):
    """A value that cannot be placed safely into a launch file (names the field and the reason)."""


@dataclass(frozen=True)
class LaunchContext:
    """Where and how one run is launched; filled by the remote side from a cluster profile."""

    run_id: str
    run_dir: str  # absolute path ON THE TARGET machine
    backend: Backend = "local"
    env_setup: str = ""  # trusted shell snippet from the cluster profile (e.g. `source ~/venv/bin/activate`)
    python: str = "python3"
    master_port: int = 29500
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    time_limit: str | None = None  # Slurm time format, e.g. "04:00:00" or "1-00:00:00"
    job_name: str | None = None  # default: "tunedeck-<run_id>"
    hosts: tuple[str, ...] | list[str] = ("localhost",)
    cpus_per_task: int | None = None  # default: one per process on CPU clusters, cluster default on GPUs
    extra_env: dict[str, str] = field(default_factory=dict)
    eval_devices: tuple[int, ...] | list[int] = ()  # GPUs of the first node the profile reserves for evaluation

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise PlanError(f"backend: {self.backend!r} is not one of {', '.join(BACKENDS)}")
        if not PurePosixPath(self.run_dir).is_absolute():
            raise PlanError(f"run_dir: must be an absolute path on the target machine, got {self.run_dir!r}")
        if not 0 < int(self.master_port) < 65536:
            raise PlanError(f"master_port: {self.master_port} is not a TCP port")
        if not self.python:
            raise PlanError("python: the interpreter must not be empty")
        object.__setattr__(self, "hosts", tuple(self.hosts))
        object.__setattr__(self, "eval_devices", tuple(int(d) for d in self.eval_devices))
        for key in self.extra_env:
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
                raise PlanError(f"extra_env: {key!r} is not a valid environment variable name")

    @property
    def paths(self) -> RunPaths:
        return RunPaths(self.run_dir)

    @property
    def code_dir(self) -> str:
        return str(PurePosixPath(self.run_dir) / RunPaths.JOB_CODE)

    def path(self, name: str) -> str:
        return str(PurePosixPath(self.run_dir) / name)


def slurm_job_name(text: str, max_len: int = 64) -> str:
    """A job name Slurm shows cleanly (squeue truncates and some sites choke on odd characters)."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-")
    return name[:max_len] or "tunedeck"


def placement_plan(config: RunConfig, ctx: LaunchContext) -> PlacementPlan:
    """The evaluation placement of this launch (PlanError names the field when it cannot work here)."""
    try:
        return resolve_placement(config, ctx.backend, ctx.eval_devices)
    except PlacementError as exc:
        raise PlanError(f"evaluation.placement: {exc}") from None


def _evaluating(config: RunConfig) -> bool:
    return config.evaluation.when != "never"


# ------------------------------------------------------------------------------------- DeepSpeed JSON


def _offload(device: str, nvme_path: str | None) -> dict[str, Any]:
    block: dict[str, Any] = {"device": device, "pin_memory": True}
    if device == "nvme":
        block["nvme_path"] = nvme_path
    return block


def render_ds_config(config: RunConfig) -> dict[str, Any]:
    """DeepSpeed config in the transformers-Trainer style: "auto" wherever the Trainer owns the value.

    No `scheduler` block: the Trainer then builds its own schedule (training.lr_scheduler: cosine has no
    DeepSpeed scheduler whose values the Trainer fills), which works with DeepSpeed's optimizer.
    """
    ds = config.deepspeed
    zero: dict[str, Any] = {"stage": ds.zero_stage}
    if ds.zero_stage > 0:
        if ds.offload_optimizer != "none":
            zero["offload_optimizer"] = _offload(ds.offload_optimizer, ds.nvme_path)
        if ds.zero_stage == 3 and ds.offload_param != "none":
            zero["offload_param"] = _offload(ds.offload_param, ds.nvme_path)
        zero["overlap_comm"] = ds.overlap_comm
        zero["contiguous_gradients"] = ds.contiguous_gradients
        zero["reduce_bucket_size"] = ds.reduce_bucket_size
    if ds.zero_stage == 3:
        zero["stage3_prefetch_bucket_size"] = ds.stage3_prefetch_bucket_size
        zero["stage3_param_persistence_threshold"] = ds.stage3_param_persistence_threshold
        zero["stage3_max_live_parameters"] = ds.stage3_max_live_parameters
        zero["stage3_max_reuse_distance"] = ds.stage3_max_reuse_distance
        zero["sub_group_size"] = ds.sub_group_size
        zero["stage3_gather_16bit_weights_on_model_save"] = ds.gather_16bit_weights_on_model_save
    optimizer_params: dict[str, Any] = {"lr": "auto", "betas": "auto", "eps": "auto", "weight_decay": "auto"}
    if ds.torch_adam:
        # torch's AdamW instead of DeepSpeed's fused/CPU Adam: no op compilation (80-95 s on CPU).
        optimizer_params["torch_adam"] = True
    return {
        "bf16": {"enabled": "auto"},
        "fp16": {"enabled": "auto"},
        "optimizer": {"type": "AdamW", "params": optimizer_params},
        "zero_optimization": zero,
        "gradient_accumulation_steps": "auto",
        "gradient_clipping": "auto",
        "train_batch_size": "auto",
        "train_micro_batch_size_per_gpu": "auto",
        # The job logs its own metrics; DeepSpeed's periodic prints would only clutter stdout.log.
        "steps_per_print": 1_000_000,
        "wall_clock_breakdown": False,
    }


# ------------------------------------------------------------------------------------ value checking


_FORBIDDEN_ANYWHERE = {"\n": "a newline", "\r": "a carriage return", "\x00": "a NUL byte"}


def _check_no_control(what: str, value: str) -> None:
    for ch, name in _FORBIDDEN_ANYWHERE.items():
        if ch in value:
            raise PlanError(f"{what}: contains {name}, which cannot be placed in a launch file: {value!r}")


_SBATCH_PLAIN = re.compile(r"[A-Za-z0-9._:/@+=,%-]+")


def sbatch_value(what: str, value: str, *, filename: bool = False) -> str:
    """Quote a value for an #SBATCH line (no shell reads it: sbatch's own parser does).

    Measured with Slurm 22.05's sbatch: an argument ends at unquoted whitespace (a backslash-escaped space
    ends it too) and at an unquoted `#`; inside "..." whitespace, `#` and `'` are literal and a backslash
    escapes the next character. So anything beyond a plain token is double-quoted, with double quotes and
    backslashes escaped. In filename patterns (--output) `%` starts a replacement symbol (`%%` is a literal %) and a
    backslash switches symbol processing off, so paths with a backslash are refused.
    """
    value = str(value)
    _check_no_control(what, value)
    if not value:
        raise PlanError(f"{what}: must not be empty")
    if "packjob" in value.lower():
        raise PlanError(f"{what}: sbatch blanks the word 'packjob' in directive lines: {value!r}")
    if filename:
        if "\\" in value:
            raise PlanError(f"{what}: a backslash in a Slurm output path turns off its %-patterns: {value!r}")
        value = value.replace("%", "%%")
    if _SBATCH_PLAIN.fullmatch(value):
        return value
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'




# DeepSpeed's launcher re-quotes .deepspeed_env values and user arguments for the remote shell naively
# (multinode_runner.add_export wraps them in "...", PDSHRunner.parse_user_args in '...'), so characters
# a shell still interprets there are refused rather than escaped.
_DEEPSPEED_UNSAFE = set("\"'$`\\!")


def _deepspeed_value(what: str, value: str) -> str:
    _check_no_control(what, value)
    bad = sorted(set(value) & _DEEPSPEED_UNSAFE)
    if bad:
        raise PlanError(
            f"{what}: contains {' '.join(bad)}, which DeepSpeed's launcher passes unescaped to the remote "
            f"shell (.deepspeed_env / pdsh); use a path without them: {value!r}"
        )
    if value != value.strip():
        raise PlanError(f"{what}: DeepSpeed's launcher strips leading/trailing whitespace: {value!r}")
    return value


# ------------------------------------------------------------------------------------------- env files


def job_env(config: RunConfig, ctx: LaunchContext) -> dict[str, str]:
    """Environment every training process gets (the launcher exports it on every node)."""
    env = {
        "PYTHONPATH": ctx.code_dir,
        "PYTHONUNBUFFERED": "1",
        # Gloo collectives print ~1,800 FutureWarnings per short run.
        "PYTHONWARNINGS": "ignore::FutureWarning",
        "TUNEDECK_RUN_ID": ctx.run_id,
    }
    env.update(ctx.extra_env)
    return env


def render_deepspeed_env(config: RunConfig, ctx: LaunchContext) -> str:
    """`.deepspeed_env`: KEY=VALUE lines the deepspeed launcher exports on every node."""
    lines = [f"{key}={_deepspeed_value(f'environment variable {key}', str(v))}" for key, v in job_env(config, ctx).items()]
    return "\n".join(lines) + "\n"


def render_hostfile(config: RunConfig, ctx: LaunchContext) -> str:
    """DeepSpeed hostfile: one `host slots=G` line per node (the first `cluster.nodes` of ctx.hosts)."""
    hosts = list(ctx.hosts)
    if len(hosts) < config.cluster.nodes:
        raise PlanError(
            f"hosts: cluster.nodes is {config.cluster.nodes} but only {len(hosts)} host(s) given: {', '.join(hosts)}"
        )
    for host in hosts:
        if not re.fullmatch(r"[A-Za-z0-9_.:@%-]+", host):
            raise PlanError(f"hosts: {host!r} is not a host name the DeepSpeed hostfile can hold")
    slots = [config.cluster.gpus_per_node] * config.cluster.nodes
    if ctx.backend == "hostfile" and _evaluating(config):
        plan = placement_plan(config, ctx)
        if plan.placement == "devices":
            # The first node lists every GPU (training's and evaluation's); --include picks training's.
            slots[0] = max((*plan.devices, *plan.training_devices)) + 1
    return "".join(f"{h} slots={n}\n" for h, n in zip(hosts[: config.cluster.nodes], slots, strict=True))


# ----------------------------------------------------------------------------------------- commands


def _torchrun(ctx: LaunchContext, *launcher_args: str) -> list[str]:
    # remote.job.torchrun is torchrun itself, save that a cancel (SIGTERM) ends in one line, not a traceback
    return [ctx.python, "-m", TORCHRUN_MODULE, *launcher_args, "-m", JOB_MODULE, ctx.run_dir]


def local_command(config: RunConfig, ctx: LaunchContext) -> list[str]:
    """argv that trains on this machine: torchrun, standalone rendezvous, one process per GPU/slot."""
    return _torchrun(ctx, "--standalone", "--nproc_per_node", str(config.cluster.gpus_per_node))


def hostfile_command(config: RunConfig, ctx: LaunchContext) -> list[str]:
    """argv of the deepspeed launcher over the run's hostfile."""
    _deepspeed_value("run_dir", ctx.run_dir)
    argv = ["deepspeed", "--hostfile", ctx.path(RunPaths.HOSTFILE), "--master_port", str(ctx.master_port)]
    if config.cluster.nodes == 1:
        # One host: the launcher starts the ranks right here, so skip its ssh probe of the host and
        # rendezvous on loopback (without --master_addr it asks the host over ssh for `hostname -I`).
        argv += ["--no_ssh_check", "--master_addr", "127.0.0.1"]
    else:
        argv += ["--master_addr", ctx.hosts[0]]
    plan = placement_plan(config, ctx) if ctx.backend == "hostfile" and _evaluating(config) else None
    if plan is not None and plan.placement == "devices":
        # Training on the first node's other GPUs (the launcher sets each node's CUDA_VISIBLE_DEVICES from
        # this); --include and --num_gpus exclude each other.
        first = f"{ctx.hosts[0]}:{','.join(str(d) for d in plan.training_devices)}"
        argv += ["--include", "@".join([first, *ctx.hosts[1: config.cluster.nodes]])]
    else:
        # On a host without GPUs the launcher starts one process unless told how many.
        argv += ["--num_gpus", str(config.cluster.gpus_per_node)]
    return [
        *argv,
        # The job reads LOCAL_RANK from its environment; its argv stays exactly `RUN_DIR`.
        "--no_local_rank",
        "--module", JOB_MODULE,
        ctx.run_dir,
    ]


def _exports(config: RunConfig, ctx: LaunchContext) -> list[str]:
    return [f"export {key}={shlex.quote(value)}" for key, value in job_env(config, ctx).items()]


def _env_setup(ctx: LaunchContext) -> list[str]:
    if not ctx.env_setup.strip():
        return []
    # A profile's activation snippet (conda, modules) often reads unset variables: relax -u around it.
    # The snippet is the profile's own shell code (trusted, not quoted); shellcheck cannot follow what it
    # sources.
    return ["set +u", "# shellcheck disable=SC1090,SC1091", ctx.env_setup, "set -u"]


# Values are single-quoted literals on purpose (a `$(...)` in a run name must stay text): SC2016 would
# flag exactly that.
_SHELLCHECK_LITERALS = "# shellcheck disable=SC2016"


def _script(lines: list[str]) -> str:
    return "\n".join(lines) + "\n"


def _run_training(config: RunConfig, ctx: LaunchContext, command: list[str], backend: str) -> list[str]:
    """The script's last lines: training (exec'd, so a SIGTERM to the script reaches the launcher, which
    forwards it to the ranks), or for placement after_training, training and then the evaluations it queued
    (a SIGTERM kills this shell before it gets there: a cancelled run evaluates nothing more)."""
    stdout = shlex.quote(ctx.path(RunPaths.STDOUT))
    plan = placement_plan(config, ctx) if ctx.backend == backend and _evaluating(config) else None
    lines = []
    if plan is not None and plan.placement == "devices":
        # Training sees only its GPUs; the evaluations get the reserved ones (derived.evaluation in config.json).
        lines.append(f"export CUDA_VISIBLE_DEVICES={','.join(str(d) for d in plan.training_devices)}")
    if plan is None or plan.placement != "after_training":
        return [*lines, f"exec {shlex.join(command)} >> {stdout} 2>&1"]
    drain = [ctx.python, "-m", QUEUE_MODULE, "drain", "--run-dir", ctx.run_dir]
    # `command`: the program is a quoted value, whatever characters its path holds.
    return [
        *lines,
        "rc=0",
        f"command {shlex.join(command)} >> {stdout} 2>&1 || rc=$?",
        "# evaluation.placement after_training: the checkpoints queued during training, now on the freed GPUs",
        f"command {shlex.join(drain)} >> {shlex.quote(ctx.path(RunPaths.EVAL_LOG))} 2>&1 || true",
        'exit "$rc"',
    ]


def _launch_sh(config: RunConfig, ctx: LaunchContext, what: str, argv: list[str], backend: str,
               comment: str | None = None) -> str:
    """A launch.sh: into the run directory, the profile's environment, the job's variables, then the
    launcher with its output appended to stdout.log (_run_training: exec'd, or followed by the queued
    evaluations for placement after_training)."""
    return _script([
        "#!/bin/bash",
        f"# TuneDeck run {_comment(ctx.run_id)}: {what}.",
        *([comment] if comment else []),
        _SHELLCHECK_LITERALS,
        "set -euo pipefail",
        f"cd {shlex.quote(ctx.run_dir)}",
        *_env_setup(ctx),
        *_exports(config, ctx),
        *_run_training(config, ctx, argv, backend),
    ])


def render_local_script(config: RunConfig, ctx: LaunchContext) -> str:
    """launch.sh for the local backend: torchrun in the foreground of this script, which forwards a SIGTERM
    to the ranks."""
    return _launch_sh(config, ctx, "local launch (torchrun, standalone)", local_command(config, ctx), "local")


def render_hostfile_launch(config: RunConfig, ctx: LaunchContext) -> str:
    """launch.sh for the hostfile backend (started with `setsid nohup`): the deepspeed launcher, run from
    the run directory so it finds .deepspeed_env."""
    return _launch_sh(config, ctx, "DeepSpeed hostfile launch", hostfile_command(config, ctx), "hostfile",
                      comment=_rendezvous_comment(config, ctx, "hostfile"))


def _rank_span(first: int, count: int) -> str:
    return f"rank {first}" if count == 1 else f"ranks {first}-{first + count - 1}"


def describe_nodes(config: RunConfig, ctx: LaunchContext) -> list[str]:
    """Where the ranks run and which node is the rendezvous host, one line per node (plan preview)."""
    c = config.cluster
    g, port = c.gpus_per_node, int(ctx.master_port)
    head = f"{c.nodes} node{'s' if c.nodes > 1 else ''} x {g} process{'es' if g > 1 else ''} = world size {c.world_size}"
    if ctx.backend == "slurm":
        lines = [f"{head}; Slurm picks the nodes",
                 f"node 1 of the allocation: {_rank_span(0, g)} -- rendezvous host (MASTER_ADDR, torchrun c10d on "
                 f"port {port})"]
        lines += [f"node {i + 1} of the allocation: {_rank_span(i * g, g)}" for i in range(1, c.nodes)]
        return lines
    if ctx.backend == "local":
        return [f"{head} on this machine (torchrun --standalone): rendezvous on this machine"]
    hosts = list(ctx.hosts)[: c.nodes]
    lines = [f"{head}; hosts from the hostfile"]
    for i, host in enumerate(hosts):
        role = f" -- rendezvous host (MASTER_ADDR, port {port})" if i == 0 else ""
        lines.append(f"{host}: {_rank_span(i * g, g)}{role}")
    return lines


def _rendezvous_comment(config: RunConfig, ctx: LaunchContext, backend: str) -> str:
    """The script's comment line that says where the ranks meet."""
    c = config.cluster
    shape = f"{c.nodes} node(s) x {c.gpus_per_node} process(es)"
    if backend == "slurm":
        return (f"# Rendezvous: the first node of the allocation (MASTER_ADDR below), port {int(ctx.master_port)}; "
                f"{shape}.")
    if c.nodes == 1:
        return f"# Rendezvous: the launching host (127.0.0.1), port {int(ctx.master_port)}; {shape}."
    return (f"# Rendezvous: {_comment(ctx.hosts[0])} (MASTER_ADDR, rank 0), port {int(ctx.master_port)}; {shape}; "
            "ranks in hostfile order.")


def _comment(text: str) -> str:
    """Text for a comment line: quoted so it cannot end the comment or hide a newline."""
    return re.sub(r"[^\x20-\x7e]", "?", repr(text))


def slurm_directives(config: RunConfig, ctx: LaunchContext) -> list[tuple[str, str]]:
    """(option, escaped value) pairs of the #SBATCH header."""
    c = config.cluster
    job_name = ctx.job_name if ctx.job_name is not None else slurm_job_name(f"tunedeck-{ctx.run_id}")
    opts: list[tuple[str, str]] = [
        ("job-name", sbatch_value("job_name", job_name)),
        ("nodes", str(c.nodes)),
        ("ntasks-per-node", "1"),  # one torchrun per node; it starts the per-GPU ranks
    ]
    if c.gpu_type != "cpu":
        opts.append(("gpus-per-node", str(c.gpus_per_node)))
    cpus = ctx.cpus_per_task if ctx.cpus_per_task is not None else (c.gpus_per_node if c.gpu_type == "cpu" else None)
    if cpus is not None:
        opts.append(("cpus-per-task", str(int(cpus))))
    for name, value in (("partition", ctx.partition), ("account", ctx.account), ("qos", ctx.qos), ("time", ctx.time_limit)):
        if value:
            opts.append((name, sbatch_value(name if name != "time" else "time_limit", value)))
    opts += [
        ("chdir", sbatch_value("run_dir", ctx.run_dir)),
        ("output", sbatch_value("run_dir", ctx.path(RunPaths.STDOUT), filename=True)),
        ("open-mode", "append"),
        # SIGTERM to the batch shell (exec'd into srun, which forwards it to torchrun and the ranks) some
        # time before the kill, so the job can save a checkpoint and exit cleanly.
        ("signal", f"B:TERM@{PREEMPT_NOTICE_S}"),
        ("requeue", ""),
    ]
    return opts


def render_slurm_script(config: RunConfig, ctx: LaunchContext) -> str:
    """launch.slurm: one srun task per node, each running torchrun with a c10d rendezvous on the first node."""
    c = config.cluster
    header = [f"#SBATCH --{name}={value}" if value else f"#SBATCH --{name}" for name, value in slurm_directives(config, ctx)]
    srun = [
        "srun", "--kill-on-bad-exit=1",
        *_torchrun(
            ctx,
            "--nnodes", "$SLURM_NNODES",
            "--nproc_per_node", str(c.gpus_per_node),
            "--rdzv_backend", "c10d",
            "--rdzv_endpoint", f"$MASTER_ADDR:{ctx.master_port}",
            "--rdzv_id", "$SLURM_JOB_ID",
        ),
    ]
    # shlex.join would single-quote the three $-words; they are ours and must expand, so they are
    # double-quoted instead while everything else stays shlex-quoted.
    expand = {"$SLURM_NNODES", f"$MASTER_ADDR:{ctx.master_port}", "$SLURM_JOB_ID"}
    command = " ".join(f'"{a}"' if a in expand else shlex.quote(a) for a in srun)
    return _script(
        [
            "#!/bin/bash",
            f"# TuneDeck run {_comment(ctx.run_id)}: Slurm batch script.",
            *header,
            _rendezvous_comment(config, ctx, "slurm"),
            _SHELLCHECK_LITERALS,
            "set -euo pipefail",
            f"cd {shlex.quote(ctx.run_dir)}",
            *_env_setup(ctx),
            *_exports(config, ctx),
            'MASTER_ADDR="$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n1)"',
            "export MASTER_ADDR",
            f"export MASTER_PORT={int(ctx.master_port)}",
            f"exec {command}",
        ]
    )


def render_eval_slurm(config: RunConfig, ctx: LaunchContext) -> str:
    """eval.slurm: one checkpoint's evaluation as its own Slurm job (placement slurm).

    Submitted by the training job when a checkpoint is complete (or by `tunedeck eval` / the app to
    re-queue one) as `sbatch --job-name=tunedeck-<run>-eval-step-<N> eval.slurm --checkpoint CKPT --step N
    --attempt A`; the name lets squeue show the run and the step, and lets a cancel of the run find its
    evaluations. No --requeue: a re-run would score the same checkpoint twice.
    """
    plan = placement_plan(config, ctx)
    c = config.cluster
    opts: list[tuple[str, str]] = [
        ("job-name", sbatch_value("job_name", slurm_job_name(eval_job_prefix(ctx.run_id) + "step"))),
        ("nodes", "1"),
        ("ntasks", "1"),
    ]
    if c.gpu_type != "cpu":
        opts.append(("gpus-per-node", str(plan.gpus)))
    if ctx.cpus_per_task is not None:
        opts.append(("cpus-per-task", str(int(ctx.cpus_per_task))))
    for name, value in (("partition", ctx.partition), ("account", ctx.account), ("qos", ctx.qos), ("time", ctx.time_limit)):
        if value:
            opts.append((name, sbatch_value(name if name != "time" else "time_limit", value)))
    opts += [
        ("chdir", sbatch_value("run_dir", ctx.run_dir)),
        ("output", sbatch_value("run_dir", ctx.path(RunPaths.EVAL_LOG), filename=True)),
        ("open-mode", "append"),
        ("no-requeue", ""),
    ]
    header = [f"#SBATCH --{name}={value}" if value else f"#SBATCH --{name}" for name, value in opts]
    command = [ctx.python, "-m", EVAL_MODULE, "--run-dir", ctx.run_dir]
    return _script(
        [
            "#!/bin/bash",
            f"# TuneDeck run {_comment(ctx.run_id)}: one checkpoint's evaluation ({plan.gpus} "
            f"{'device' if c.gpu_type == 'cpu' else 'GPU'}{'s' if plan.gpus != 1 else ''}).",
            *header,
            _SHELLCHECK_LITERALS,
            "set -euo pipefail",
            f"cd {shlex.quote(ctx.run_dir)}",
            *_env_setup(ctx),
            *_exports(config, ctx),
            # "$@": --checkpoint, --step, --attempt from the sbatch command line.
            f'exec {shlex.join(command)} "$@"',
        ]
    )


# -------------------------------------------------------------------------------------------- writing


def launch_script(config: RunConfig, ctx: LaunchContext) -> str:
    """The launch.sh matching ctx.backend (Slurm runs launch.slurm instead; launch.sh is then the local form)."""
    if ctx.backend == "hostfile":
        return render_hostfile_launch(config, ctx)
    return render_local_script(config, ctx)


def render_plan(config: RunConfig, ctx: LaunchContext) -> dict[str, str]:
    """Every launch file as text, keyed by its RunPaths name. Files whose backend cannot hold a value
    (e.g. a run_dir with a quote for the DeepSpeed launcher) are left out unless ctx.backend needs them."""
    plan = placement_plan(config, ctx)
    resolved = resolved_dict(config)
    # The job reads where its evaluations go from here (the placement depends on the backend and profile).
    resolved["derived"]["evaluation"] = plan.to_json()
    files: dict[str, str] = {
        RunPaths.CONFIG_YAML: config.to_yaml(),
        RunPaths.CONFIG_JSON: json.dumps(resolved, indent=2, sort_keys=False) + "\n",
        RunPaths.DS_CONFIG: json.dumps(render_ds_config(config), indent=2) + "\n",
    }
    if plan.placement == "slurm" and _evaluating(config):
        files[RunPaths.EVAL_SLURM] = render_eval_slurm(config, ctx)
    optional = {
        RunPaths.HOSTFILE: ("hostfile", render_hostfile),
        RunPaths.DEEPSPEED_ENV: ("hostfile", render_deepspeed_env),
        RunPaths.SLURM_SCRIPT: ("slurm", render_slurm_script),
    }
    for name, (backend, fn) in optional.items():
        try:
            files[name] = fn(config, ctx)
        except PlanError:
            if ctx.backend == backend:
                raise
    files[RunPaths.LOCAL_SCRIPT] = launch_script(config, ctx)
    return files


REFERENCE_STEP = 0  # a measured reference is "step 0" of its evaluation-only run


def render_reference_plan(config: RunConfig, ctx: LaunchContext, model_path: str) -> dict[str, str]:
    """The files of an evaluation-only run: `model_path` (a model directory on the cluster) evaluated on the
    config's benchmarks with the same harness as a run's checkpoints, as one Slurm job (launch.slurm) or a
    detached process (launch.sh). Its pass@1 becomes a measured reference."""
    _check_no_control("model path", model_path)
    slurm = ctx.backend == "slurm"
    gpus = config.evaluation.gpus or 1
    evaluation = DerivedEvaluation(placement="slurm" if slurm else "alongside", requested="reference",
                                   backend=ctx.backend, gpus=gpus if config.cluster.gpu_type != "cpu" else 1,
                                   why="an evaluation-only run (measured reference)")
    resolved = resolved_dict(config)
    resolved["derived"]["evaluation"] = evaluation.model_dump(mode="json")
    resolved["derived"]["reference_model"] = model_path
    command = [ctx.python, "-m", EVAL_MODULE, "--run-dir", ctx.run_dir, "--checkpoint", model_path,
               "--step", str(REFERENCE_STEP), "--attempt", "1"]
    stdout = shlex.quote(ctx.path(RunPaths.STDOUT))
    body = [_SHELLCHECK_LITERALS, "set -euo pipefail", f"cd {shlex.quote(ctx.run_dir)}", *_env_setup(ctx),
            *_exports(config, ctx)]
    files = {
        RunPaths.CONFIG_YAML: config.to_yaml(),
        RunPaths.CONFIG_JSON: json.dumps(resolved, indent=2, sort_keys=False) + "\n",
    }
    if slurm:
        opts = [("job-name", sbatch_value("job_name", slurm_job_name(f"tunedeck-{ctx.run_id}-reference"))),
                ("nodes", "1"), ("ntasks", "1")]
        if config.cluster.gpu_type != "cpu":
            opts.append(("gpus-per-node", str(gpus)))
        for name, value in (("partition", ctx.partition), ("account", ctx.account), ("qos", ctx.qos), ("time", ctx.time_limit)):
            if value:
                opts.append((name, sbatch_value(name if name != "time" else "time_limit", value)))
        opts += [("chdir", sbatch_value("run_dir", ctx.run_dir)),
                 ("output", sbatch_value("run_dir", ctx.path(RunPaths.STDOUT), filename=True)),
                 ("open-mode", "append")]
        header = [f"#SBATCH --{name}={value}" for name, value in opts]
        files[RunPaths.SLURM_SCRIPT] = _script(["#!/bin/bash", f"# TuneDeck run {_comment(ctx.run_id)}: evaluation of "
                                                f"{_comment(model_path)} (measured reference).", *header, *body,
                                                f"exec {shlex.join(command)}"])
    files[RunPaths.LOCAL_SCRIPT] = _script(["#!/bin/bash", f"# TuneDeck run {_comment(ctx.run_id)}: evaluation of "
                                            f"{_comment(model_path)} (measured reference).", *body,
                                            f"exec {shlex.join(command)} >> {stdout} 2>&1"])
    return files


def write_plan(config: RunConfig, ctx: LaunchContext, out_dir: str | Path,
               files: dict[str, str] | None = None) -> dict[str, Path]:
    """Render everything first (or take `files`, already rendered), then write each file atomically into
    out_dir (launch scripts executable)."""
    files = render_plan(config, ctx) if files is None else files
    out = Path(out_dir)
    written: dict[str, Path] = {}
    for name, text in files.items():
        mode = 0o755 if name in (RunPaths.LOCAL_SCRIPT, RunPaths.SLURM_SCRIPT, RunPaths.EVAL_SLURM) else 0o644
        atomic_write_text(out / name, text, mode=mode)
        written[name] = out / name
    return written
