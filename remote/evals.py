"""One checkpoint's evaluation, from the app or the CLI: request (again), cancel, list what can be evaluated.

Runs the job-side queue tool on the run's machine, as the job itself would (the profile's env_setup, the
run's shipped code on PYTHONPATH, its run id in the environment so that a cancel of the run finds what it
started): `python -m remote.job.evalqueue request|cancel --run-dir RUN_DIR --step N`. That tool hands the
checkpoint to the run's placement (a Slurm job, a detached process on the node, or the after-training
queue) and records eval_requested / eval_cancelled in eval_events.jsonl, which streams back like every record.
"""

from __future__ import annotations

import json
import shlex
from typing import Any

from core.records import RunPaths
from core.store import RunRow, Store
from remote.transport import Transport


class EvaluationRequestError(Exception):
    """The cluster refused a request or cancel (carries its words)."""


def _row(store: Store, run_id: str) -> RunRow:
    from remote.runs import get_run

    row = get_run(store, run_id)
    if not row.run_dir or not row.cluster:
        raise EvaluationRequestError(f"run {row.run_id} was never uploaded to a cluster")
    return row


def _context(row: RunRow) -> tuple[Any, Transport]:
    from remote.profiles import get_profile, transport_for

    profile = get_profile(row.cluster)
    return profile, transport_for(profile)


def queue_script(row: RunRow, profile: Any, action: str, step: int, checkpoint: str | None = None) -> str:
    """The shell text that runs the queue tool for one step (every value quoted; env_setup as the profile
    writes it, like the launch scripts)."""
    from remote.runs import launch_context

    ctx = launch_context(profile, row.run_id, row.run_dir)
    argv = [ctx.python, "-m", "remote.job.evalqueue", action, "--run-dir", row.run_dir, "--step", str(int(step))]
    if checkpoint:
        argv += ["--checkpoint", checkpoint]
    setup = (getattr(profile, "env_setup", "") or "").strip()
    env = {"PYTHONPATH": f"{row.run_dir}/{RunPaths.JOB_CODE}", "PYTHONUNBUFFERED": "1",
           "PYTHONWARNINGS": "ignore::FutureWarning", "TUNEDECK_RUN_ID": row.run_id}
    lines = [f"cd {shlex.quote(row.run_dir)} || exit 97"]
    if setup:
        lines.append(setup)
    lines.append("exec env " + " ".join(shlex.quote(f"{k}={v}") for k, v in env.items()) + " " + shlex.join(argv))
    return "\n".join(lines) + "\n"


def _run(store: Store, run_id: str, action: str, step: int, checkpoint: str | None = None,
         transport: Transport | None = None) -> str:
    row = _row(store, run_id)
    profile, default_transport = _context(row)
    transport = transport or default_transport
    res = transport.run_shell(queue_script(row, profile, action, step, checkpoint), timeout=180, check=False)
    if res.rc != 0:
        words = (res.stderr or res.stdout).strip().splitlines()
        raise EvaluationRequestError(words[-1] if words else f"the queue tool exited {res.rc}")
    return res.stdout.strip()


def request_evaluation(store: Store, run_id: str, step: int, checkpoint: str | None = None, *,
                       transport: Transport | None = None) -> dict[str, Any]:
    """Queue (or re-queue) the evaluation of checkpoint `step` of a run; returns the request's detail."""
    out = _run(store, run_id, "request", step, checkpoint, transport)
    try:
        return json.loads(out.splitlines()[-1])
    except (ValueError, IndexError):
        return {"step": step, "output": out}


def cancel_evaluation(store: Store, run_id: str, step: int, *, transport: Transport | None = None) -> str:
    """Stop the evaluation of checkpoint `step` (scancel, or TERM to its processes); returns what was done."""
    return _run(store, run_id, "cancel", step, None, transport)


def list_checkpoints(store: Store, run_id: str, *, transport: Transport | None = None) -> list[int]:
    """Steps of the run's checkpoints that an evaluation can read (complete, or kept for their evaluation)."""
    row = _row(store, run_id)
    if transport is None:
        transport = _context(row)[1]
    script = (f"cd {shlex.quote(row.run_dir)}/{RunPaths.CHECKPOINTS} 2>/dev/null || exit 0\n"
              "for d in checkpoint-*; do [ -f \"$d/config.json\" ] && echo \"${d#checkpoint-}\"; done; true\n")
    res = transport.run_shell(script, timeout=60, check=False)
    return sorted(int(x) for x in res.stdout.split() if x.isdigit())
