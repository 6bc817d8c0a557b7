"""Feeding runs for the GUI tests: records ingested into the store exactly as the streamer ingests them
(with byte offsets), and run directories written the way a job writes them."""

from __future__ import annotations

import math
import subprocess
import threading
from pathlib import Path
from typing import Any

from core.records import RunPaths, encode_record, eval_record, event_record, metric_record

TOKENS_PER_STEP = 4096
SAMPLES_PER_STEP = 8


def create_run(store: Any, run_id: str, *, name: str | None = None, status: str = "running",
               run_dir: Path | None = None, config: dict | None = None, job_id: str | None = None) -> None:
    cfg = config if config is not None else {"training": {"learning_rate": 2e-5, "max_steps": 40}, "model": {"name": "tiny"}}
    store.create_run(run_id, name or run_id, "name: demo\n", cfg, cluster="local", backend="local",
                     run_dir=str(run_dir) if run_dir else None, preset="tiny-demo", status=status)
    if job_id is not None:
        store.update_run(run_id, job_id=job_id, started_at=1_700_000_000.0)


def metric(step: int, attempt: int = 1, t0: float = 1_700_000_000.0) -> dict[str, Any]:
    return metric_record(step=step, attempt=attempt, epoch=step / 100, samples=step * SAMPLES_PER_STEP,
                         tokens=step * TOKENS_PER_STEP, loss=3.0 * math.exp(-step / 60) + 0.3 + 0.05 * math.sin(step),
                         lr=2e-5 * min(1.0, step / 10), grad_norm=1.0 + 0.1 * math.cos(step),
                         tokens_per_s=5000.0 + step % 7, t=t0 + 0.5 * step + 100 * (attempt - 1))


def evals_at(step: int, values: dict[str, float], benchmark: str = "humaneval") -> list[dict[str, Any]]:
    return [eval_record(step=step, attempt=1, checkpoint=f"checkpoints/step-{step}", benchmark=benchmark, subset=s,
                        n_tasks=10, samples_per_task=1, temperature=0.0, pass_at={1: v}, t=1_700_000_000.0 + step)
            for s, v in values.items()]


class StoreFeeder:
    """Ingests records into the store with advancing byte offsets, as the streamer does."""

    def __init__(self, store: Any, run_id: str):
        self.store = store
        self.run_id = run_id

    def ingest(self, file_name: str, records: list[dict[str, Any]]) -> int:
        offset, line_no = self.store.offset(self.run_id, file_name)
        if file_name == RunPaths.STDOUT:
            size = sum(len(r["text"].encode()) for r in records)
            lines = sum(r["text"].count("\n") for r in records)
        else:
            size = sum(len(encode_record(r)) for r in records)
            lines = len(records)
        return self.store.ingest(self.run_id, file_name, records, offset + size, line_no + lines).inserted

    def metrics(self, steps: range | list[int], attempt: int = 1) -> int:
        return self.ingest(RunPaths.METRICS, [metric(s, attempt) for s in steps])

    def evals(self, step: int, values: dict[str, float], benchmark: str = "humaneval") -> int:
        return self.ingest(RunPaths.EVALS, evals_at(step, values, benchmark))

    def log(self, text: str) -> int:
        return self.ingest(RunPaths.STDOUT, [{"text": text}])

    def event(self, name: str, detail: dict | None = None) -> int:
        return self.ingest(RunPaths.EVENTS, [event_record(name, 1, detail or {})])


def start_process_group() -> subprocess.Popen:
    """A real detached process group standing in for a job (the local backend polls and cancels it).

    A thread reaps it as soon as it exits: an unreaped zombie still counts as a member of its group."""
    proc = subprocess.Popen(["sleep", "600"], start_new_session=True)
    threading.Thread(target=proc.wait, name="reap-job", daemon=True).start()
    return proc
