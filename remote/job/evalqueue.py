"""The run's evaluation queue, on the cluster: hand a checkpoint to its placement, cancel one, drain the rest.

Where an evaluation runs is the run's `derived.evaluation` (config.json, resolved at launch by
core.placement):

- alongside / devices: a detached `python -m remote.job.evaluate` on this node (its own session; devices sets
  CUDA_VISIBLE_DEVICES to the GPUs the profile reserves); evaluations queue on RUN_DIR/.eval.lock.
- slurm: `sbatch --job-name=tunedeck-<run>-eval-step-<N> eval.slurm ...`: its own job, its own GPUs.
- after_training: nothing starts now; `drain` (run by launch.sh once training has exited) evaluates every
  checkpoint still queued, one after the other, on the freed GPUs.

The training job calls `request` in-process (and records `eval_requested` in events.jsonl); the app and the
CLI run this module over SSH to re-queue or cancel one evaluation, which records `eval_requested` /
`eval_cancelled` in eval_events.jsonl (appends under RunPaths.EVAL_WRITE_LOCK, the evaluations' own lock):

    PYTHONPATH=RUN_DIR/code python -m remote.job.evalqueue request --run-dir RUN_DIR --step N [--checkpoint CKPT]
    PYTHONPATH=RUN_DIR/code python -m remote.job.evalqueue cancel --run-dir RUN_DIR --step N
    PYTHONPATH=RUN_DIR/code python -m remote.job.evalqueue drain --run-dir RUN_DIR

Standard library and the shipped core modules only.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from core.config import ConfigError, DerivedEvaluation, load_derived_evaluation
from core.evalstate import QUEUED, RUNNING, EvalState, derive_eval_states, eval_job_name
from core.records import JsonlWriter, RunPaths, event_record, read_records

# Variables of the training process group that an evaluation must not inherit (it is not a rank).
RANK_VARS = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "GROUP_RANK", "ROLE_RANK", "MASTER_ADDR",
             "MASTER_PORT", "TORCHELASTIC_RUN_ID", "GROUP_WORLD_SIZE", "ROLE_WORLD_SIZE")
CANCEL_WAIT_S = 30.0


class QueueError(Exception):
    """A request or cancel that cannot be carried out (said plainly, with the cluster's words)."""


# ------------------------------------------------------------------------------------------ records


@contextlib.contextmanager
def write_lock(paths: RunPaths) -> Iterator[None]:
    """The lock every append to evals.jsonl / eval_events.jsonl holds: one writer at a time, whichever
    evaluation (or queue command) it is, so lines never interleave, also from several Slurm jobs."""
    fd = os.open(paths / RunPaths.EVAL_WRITE_LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def append_event(paths: RunPaths, event: str, attempt: int, detail: dict[str, Any], t: float | None = None) -> None:
    with write_lock(paths), JsonlWriter(paths / RunPaths.EVAL_EVENTS) as writer:
        writer.write(event_record(event, attempt, detail, t=t))


def placement_of(paths: RunPaths) -> DerivedEvaluation:
    """The run's resolved evaluation placement (config.json derived.evaluation, read through the schema)."""
    try:
        return load_derived_evaluation(paths.config_json)
    except (ConfigError, OSError) as exc:
        raise QueueError(str(exc)) from exc


def states(paths: RunPaths) -> dict[int, EvalState]:
    """Every checkpoint's evaluation state from the run's two event files."""
    events = read_records(paths.events, "events")[0] + read_records(paths / RunPaths.EVAL_EVENTS, "events")[0]
    return derive_eval_states(events)


# ------------------------------------------------------------------------------------------ request


def evaluation_env(placement: DerivedEvaluation) -> dict[str, str]:
    """The environment of an evaluation started on this node: no rank variables; for devices, the GPUs
    the profile reserves."""
    env = {k: v for k, v in os.environ.items() if k not in RANK_VARS}
    if placement.placement == "devices" and placement.devices:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(str(d) for d in placement.devices)
    return env


def evaluate_command(paths: RunPaths, checkpoint: str, step: int, attempt: int) -> list[str]:
    return [sys.executable, "-m", "remote.job.evaluate", "--run-dir", str(paths.root), "--checkpoint",
            str(checkpoint), "--step", str(step), "--attempt", str(attempt)]


def run_id_of(paths: RunPaths) -> str:
    """The run id (run.json, else the environment, else the directory name)."""
    try:
        return str(json.loads(paths.run_json.read_text(encoding="utf-8"))["run_id"])
    except (OSError, ValueError, KeyError, TypeError):
        return os.environ.get("TUNEDECK_RUN_ID") or paths.root.name


def request(paths: RunPaths, checkpoint: str | os.PathLike[str], step: int, attempt: int,
            training_over: bool = False) -> tuple[dict[str, Any], subprocess.Popen[bytes] | None]:
    """Hand one checkpoint to the run's placement; returns the `eval_requested` detail (job id or pid) and
    the process started on this node, if any.

    TUNEDECK_NO_EVAL=1 (tests of training alone) records the request without starting anything.
    """
    placement = placement_of(paths)
    where = placement.placement
    detail: dict[str, Any] = {"step": int(step), "checkpoint": str(checkpoint), "placement": where,
                              "gpus": placement.gpus, "pid": None}
    if os.environ.get("TUNEDECK_NO_EVAL") == "1":
        detail["skipped"] = "TUNEDECK_NO_EVAL=1"  # recorded, but nothing will evaluate it
        return detail, None
    if where == "after_training" and not training_over:
        detail["queued"] = "until training has released the GPUs"
        return detail, None
    if where == "slurm":
        detail["job_id"] = submit_slurm(paths, checkpoint, step, attempt)
        return detail, None
    with open(paths / RunPaths.EVAL_LOG, "ab") as log:
        proc = subprocess.Popen(evaluate_command(paths, str(checkpoint), step, attempt), stdin=subprocess.DEVNULL,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                env=evaluation_env(placement), cwd=paths.root)
    detail["pid"] = proc.pid  # its own session: the process group id too
    if where == "devices":
        detail["cuda_visible_devices"] = ",".join(str(d) for d in placement.devices)
    return detail, proc


def submit_slurm(paths: RunPaths, checkpoint: str | os.PathLike[str], step: int, attempt: int) -> str:
    """sbatch eval.slurm for one checkpoint; returns the Slurm job id."""
    script = paths / RunPaths.EVAL_SLURM
    if not script.is_file():
        raise QueueError(f"{script}: missing (the run was launched without evaluation.placement slurm)")
    # Not the training job's own allocation: a job submitted from inside a job would otherwise inherit
    # its SLURM_* settings (sbatch reads some, e.g. SLURM_CPUS_PER_TASK via srun in the script).
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_JOB", "SLURM_STEP", "SLURM_CPUS",
                                                                    "SLURM_NTASKS", "SLURM_NNODES", "SLURM_MEM"))}
    env = {k: v for k, v in env.items() if k not in RANK_VARS}
    argv = ["sbatch", "--parsable", f"--job-name={eval_job_name(run_id_of(paths), step)}", str(script),
            "--checkpoint", str(checkpoint), "--step", str(int(step)), "--attempt", str(int(attempt))]
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=120, env=env, cwd=paths.root)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise QueueError(f"sbatch of the evaluation of step {step} failed: {exc}") from exc
    job_id = out.stdout.strip().split(";")[0].strip()
    if out.returncode != 0 or not job_id.isdigit():
        raise QueueError(f"sbatch refused the evaluation of step {step} (exit {out.returncode}): "
                         f"{(out.stderr or out.stdout).strip()[-1000:]}")
    return job_id


# ------------------------------------------------------------------------------------------- cancel


def cancel(paths: RunPaths, step: int, reason: str = "cancelled by the user") -> str:
    """Stop one checkpoint's evaluation (scancel, or TERM to its process group) and record eval_cancelled."""
    state = states(paths).get(int(step))
    if state is None or not state.open:
        raise QueueError(f"no queued or running evaluation of step {step}"
                         + (f" (it is {state.state})" if state is not None else ""))
    done = _stop(state)
    append_event(paths, "eval_cancelled", state.attempt, {"step": int(step), "checkpoint": state.checkpoint,
                                                          "reason": reason, "stopped": done})
    return done


def _stop(state: EvalState) -> str:
    if state.placement == "slurm" and state.job_id:
        out = subprocess.run(["scancel", state.job_id], capture_output=True, text=True, timeout=60)
        if out.returncode != 0:
            raise QueueError(f"scancel {state.job_id} failed: {out.stderr.strip()}")
        return f"scancel {state.job_id}"
    if state.job_id and state.job_id.isdigit() and int(state.job_id) > 1:
        pgid = int(state.job_id)
        try:
            os.killpg(pgid, signal.SIGTERM)
        except ProcessLookupError:
            return f"process group {pgid} had already ended"
        deadline = time.monotonic() + CANCEL_WAIT_S
        while time.monotonic() < deadline:
            if not group_alive(pgid):
                return f"stopped process group {pgid}"
            time.sleep(0.2)
        os.killpg(pgid, signal.SIGKILL)
        return f"killed process group {pgid} (no exit {CANCEL_WAIT_S:g} s after SIGTERM)"
    if state.state == QUEUED:
        return "removed from the queue"
    return "nothing was running"


def group_alive(pgid: int) -> bool:
    """Whether a process of the group still runs (an exited one its parent has not reaped yet does not)."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # gone meanwhile
        if len(fields) > 2 and fields[2] == str(pgid) and fields[0] != "Z":
            return True
    return False


# -------------------------------------------------------------------------------------------- drain


def drain(paths: RunPaths) -> list[int]:
    """Evaluate, one after the other, every checkpoint still queued for after_training; returns their steps.

    Runs each in its own process (so each starts with all GPU memory free) with the job's GPUs visible.
    """
    placement = placement_of(paths)
    done: list[int] = []
    while True:
        pending = [s for s in states(paths).values()
                   if s.state == QUEUED and s.placement == "after_training" and s.step not in done]
        if not pending:
            return done
        s = min(pending, key=lambda x: x.step)
        print(f"[tunedeck] evaluating step {s.step} ({s.checkpoint}) after training", flush=True)
        # Its own process group (as every evaluation): a cancel of this one stops it alone.
        subprocess.run(evaluate_command(paths, s.checkpoint or "", s.step, s.attempt), env=evaluation_env(placement),
                       cwd=paths.root, stdin=subprocess.DEVNULL, check=False, start_new_session=True)
        done.append(s.step)


def pending_steps(paths: RunPaths) -> set[int]:
    """Steps whose evaluation is queued or running (pruning spares their checkpoints' weights)."""
    return {step for step, s in states(paths).items() if s.state in (QUEUED, RUNNING)}


# --------------------------------------------------------------------------------------------- main


def _checkpoint_for(paths: RunPaths, step: int, given: str | None) -> str:
    if given:
        return given
    ckpt = paths.checkpoint(step)
    if not (ckpt / "config.json").is_file():
        raise QueueError(f"{ckpt}: no checkpoint of step {step} there (pruned, or never saved)")
    return str(ckpt)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m remote.job.evalqueue", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="action", required=True)
    req = sub.add_parser("request", help="queue one checkpoint's evaluation (again)")
    req.add_argument("--run-dir", required=True)
    req.add_argument("--step", type=int, required=True)
    req.add_argument("--checkpoint", help="default: RUN_DIR/checkpoints/checkpoint-STEP")
    can = sub.add_parser("cancel", help="stop one checkpoint's evaluation")
    can.add_argument("--run-dir", required=True)
    can.add_argument("--step", type=int, required=True)
    dr = sub.add_parser("drain", help="evaluate every checkpoint queued for after training")
    dr.add_argument("--run-dir", required=True)
    args = p.parse_args(argv)
    paths = RunPaths(Path(args.run_dir).resolve())
    try:
        if args.action == "request":
            previous = states(paths).get(args.step)
            if previous is not None and previous.open:
                raise QueueError(f"the evaluation of step {args.step} is already {previous.state}")
            attempt = previous.attempt if previous is not None else _attempt(paths)
            checkpoint = _checkpoint_for(paths, args.step, args.checkpoint)
            t = time.time()
            # after_training, re-queued once the job (and its drain) has ended: the GPUs are free now.
            over = (paths / RunPaths.EXIT_STATUS).exists()
            detail, _proc = request(paths, checkpoint, args.step, attempt, training_over=over)
            append_event(paths, "eval_requested", attempt, {**detail, "source": "requeue"}, t=t)
            print(json.dumps(detail))
        elif args.action == "cancel":
            print(cancel(paths, args.step))
        else:
            print(json.dumps({"evaluated": drain(paths)}))
    except QueueError as exc:
        print(f"evalqueue: {exc}", file=sys.stderr)
        return 1
    return 0


def _attempt(paths: RunPaths) -> int:
    try:
        return int((paths / RunPaths.ATTEMPTS).read_text().strip())
    except (OSError, ValueError):
        return 0


if __name__ == "__main__":
    sys.exit(main())
