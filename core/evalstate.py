"""Each checkpoint's evaluation as a state (queued / running / finished / failed / cancelled), from events.

The events come from two writers: the training job (`eval_requested` in events.jsonl, when a complete
checkpoint is handed to the evaluation queue) and the evaluation processes / the queue tool
(`eval_requested` for a re-queue, `eval_started`, `eval_progress`, `eval_finished`, `eval_failed`,
`eval_cancelled` in eval_events.jsonl). `derive_eval_states` folds them, in time order, into one
`EvalState` per step: the newest request of a step starts a new evaluation of it, so a re-queued failure
shows as queued again.

Standard library only: shipped with the job (remote.job.evalqueue reads the queue with it) and used by the
app (run view) and the CLI.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from core.records import TERMINAL_STATUSES

QUEUED, RUNNING, FINISHED, FAILED, CANCELLED = "queued", "running", "finished", "failed", "cancelled"
EVAL_STATES = (QUEUED, RUNNING, FINISHED, FAILED, CANCELLED)
OPEN_STATES = (QUEUED, RUNNING)
EVAL_EVENTS = ("eval_requested", "eval_started", "eval_progress", "eval_finished", "eval_failed", "eval_cancelled")


def eval_job_prefix(run_id: str) -> str:
    """The name every Slurm evaluation job of a run starts with (squeue shows the run id and the step)."""
    return _clean(f"tunedeck-{run_id}-eval-")


def eval_job_name(run_id: str, step: int) -> str:
    """`tunedeck-<run id>-eval-step-<N>` (Slurm job names: letters, digits, . _ - only)."""
    return (eval_job_prefix(run_id) + f"step-{int(step)}")[:120]


def step_of_job_name(run_id: str, name: str) -> int | None:
    """The step an evaluation job's name carries, or None when the name is not one of the run's."""
    prefix = eval_job_prefix(run_id)
    if not name.startswith(prefix + "step-"):
        return None
    tail = name[len(prefix) + 5:]
    return int(tail) if tail.isdigit() else None


def _clean(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text)


@dataclass(frozen=True)
class EvalState:
    """One checkpoint's evaluation as the events tell it."""

    step: int
    state: str  # queued | running | finished | failed | cancelled
    attempt: int = 0
    checkpoint: str | None = None
    placement: str | None = None
    job_id: str | None = None  # Slurm job id, or the process group of a detached evaluation
    phase: str | None = None  # "generate humaneval", "run humaneval", ...
    done: int = 0
    total: int = 0
    engine: str | None = None
    gpus: str | None = None
    tokens: int | None = None
    tokens_per_s: float | None = None
    pass_at_1: Mapping[str, float | None] = field(default_factory=dict)
    error: str | None = None
    requested_t: float | None = None
    started_t: float | None = None
    ended_t: float | None = None
    requests: int = 0  # how many times this step was handed to the queue (re-queues count)

    @property
    def open(self) -> bool:
        return self.state in OPEN_STATES

    @property
    def fraction(self) -> float | None:
        """Progress of the current phase (0..1), when a phase has reported its size."""
        return self.done / self.total if self.total else None

    def label(self) -> str:
        """A short human text: `running: generate humaneval 12/164`, `failed: ...`."""
        if self.state == RUNNING and self.phase:
            return f"running: {self.phase} {self.done}/{self.total}" if self.total else f"running: {self.phase}"
        if self.state == FAILED and self.error:
            return f"failed: {self.error}"
        if self.state == QUEUED and self.placement == "after_training":
            return "queued (after training)"
        if self.state == QUEUED and self.placement == "slurm" and self.job_id:
            return f"queued (Slurm job {self.job_id})"
        return self.state


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def derive_eval_states(events: Iterable[Mapping[str, Any]], run_status: str | None = None) -> dict[int, EvalState]:
    """{step: EvalState} from a run's events (any order: sorted here by time, then input order).

    A training `started` event of a later attempt ends the open evaluations of earlier attempts that ran
    inside the job (placements other than slurm: they died with it). When the run itself has ended
    (`run_status` terminal), evaluations still queued or running inside the job ended without a result; Slurm
    evaluations are their own jobs and keep their state until their events say otherwise, except after a
    cancelled run, whose cancel took them down too.
    """
    ordered = sorted(enumerate(events), key=lambda ie: (float(ie[1].get("t") or 0.0), ie[0]))
    states: dict[int, EvalState] = {}
    for _i, e in ordered:
        name = e.get("event")
        detail = e.get("detail") or {}
        attempt = _int(e.get("attempt")) or 0
        t = e.get("t")
        if name == "started":
            for step, s in list(states.items()):
                if s.open and s.attempt < attempt and s.placement != "slurm":
                    states[step] = replace(s, state=FAILED, ended_t=t,
                                           error="ended without a result: the training job restarted")
            continue
        if name not in EVAL_EVENTS:
            continue
        step = _int(detail.get("step"))
        if step is None:
            continue
        prev = states.get(step)
        if name == "eval_requested":
            if detail.get("skipped"):
                continue  # recorded with evaluation switched off (TUNEDECK_NO_EVAL): nothing will run
            states[step] = EvalState(
                step=step, state=QUEUED, attempt=attempt, checkpoint=detail.get("checkpoint"),
                placement=detail.get("placement") or (prev.placement if prev else None),
                job_id=_job_id(detail), requested_t=t, requests=(prev.requests if prev else 0) + 1)
            continue
        s = prev or EvalState(step=step, state=QUEUED, attempt=attempt, checkpoint=detail.get("checkpoint"))
        if name == "eval_started":
            s = replace(s, state=RUNNING, attempt=attempt, started_t=t, error=None, phase=None, done=0, total=0,
                        checkpoint=detail.get("checkpoint") or s.checkpoint,
                        engine=detail.get("engine") or detail.get("backend") or s.engine,
                        gpus=_gpus(detail.get("gpus")) or s.gpus, job_id=_job_id(detail) or s.job_id,
                        placement=detail.get("placement") or s.placement)
        elif name == "eval_progress":
            if s.state in (FINISHED, FAILED, CANCELLED):
                continue  # a late progress line of an ended evaluation
            s = replace(s, state=RUNNING, phase=str(detail.get("phase") or ""), done=_int(detail.get("done")) or 0,
                        total=_int(detail.get("total")) or 0)
        elif name == "eval_finished":
            pass_at = detail.get("pass@1") if isinstance(detail.get("pass@1"), dict) else {}
            s = replace(s, state=FINISHED, ended_t=t, error=None, engine=detail.get("engine") or s.engine,
                        gpus=_gpus(detail.get("gpus")) or s.gpus, tokens=_int(detail.get("tokens_generated")),
                        tokens_per_s=_float(detail.get("tokens_per_s")), pass_at_1=dict(pass_at))
        elif name == "eval_failed":
            if s.state == CANCELLED:
                continue  # the cancel's SIGTERM, reported by the evaluation itself: it stays cancelled
            s = replace(s, state=FAILED, ended_t=t, error=str(detail.get("error") or "no error text recorded"))
        elif name == "eval_cancelled":
            s = replace(s, state=CANCELLED, ended_t=t, error=str(detail.get("reason") or "cancelled"))
        states[step] = s
    if run_status in TERMINAL_STATUSES:
        for step, s in list(states.items()):
            if not s.open:
                continue
            if s.placement != "slurm":
                states[step] = replace(s, state=FAILED, error=f"ended without a result: the run {run_status}")
            elif run_status == "cancelled":
                states[step] = replace(s, state=CANCELLED, error="cancelled with the run")
    return states


def _job_id(detail: Mapping[str, Any]) -> str | None:
    for key in ("job_id", "pgid", "pid"):
        value = detail.get(key)
        if value not in (None, ""):
            return str(value)
    return None


def _gpus(value: Any) -> str | None:
    if value in (None, ""):
        return None
    if isinstance(value, list | tuple):
        return ",".join(str(v) for v in value)
    return str(value)


def _float(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def open_steps(states: Mapping[int, EvalState]) -> list[int]:
    """Steps whose evaluation is queued or running."""
    return sorted(step for step, s in states.items() if s.open)
