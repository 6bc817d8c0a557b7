"""Counts the training job's host-device synchronisations on a GPU, by the line that asked for them.

    TUNEDECK_SYNC_AUDIT=PREFIX torchrun ... tests/bench/sync_probe.py RUN_DIR      (bench_gpu_throughput's job arm)

Runs the real job (`remote.job.train.run_main`). For the micro batches AUDIT_MICRO_STEPS (after start-up, before
the bench's timed window) it turns on torch.cuda.set_sync_debug_mode("warn"), which raises a warning at every
operation that makes the host wait for the GPU (.item(), bool(tensor), nonzero, a copy to the CPU...), and
tallies them by the innermost frame outside torch, noting the job's own frame (remote/job/...) where there is
one. Rank 0 writes PREFIX.rank0.json at the end of the window. Without a CUDA GPU it only runs the job.
"""

from __future__ import annotations

import collections
import json
import os
import sys
import traceback
import warnings
from typing import Any

AUDIT_MICRO_STEPS = (3, 6)  # micro batches [3, 6): three whole steps at gradient accumulation 1


def install(prefix: str) -> None:
    import torch
    from transformers import Trainer

    counts: collections.Counter[tuple[str, str | None]] = collections.Counter()
    window = {"micro": 0, "on": False}
    previous = warnings.showwarning
    warnings.filterwarnings("always", message=".*synchroniz.*")

    def show(message: Any, category: Any, filename: str, lineno: int, file: Any = None, line: Any = None) -> None:
        if window["on"] and "synchroniz" in str(message).lower():
            frames = traceback.extract_stack()[:-1]
            outside = [f for f in frames if "/torch/" not in f.filename and "/warnings.py" not in f.filename
                       and not f.filename.endswith("sync_probe.py")]
            where = f"{outside[-1].filename}:{outside[-1].lineno} {outside[-1].name}" if outside else "?"
            ours = next((f"{f.filename.split('/remote/job/')[-1]}:{f.lineno} {f.name}" for f in reversed(frames)
                         if "/remote/job/" in f.filename), None)
            counts[(where, ours)] += 1
            return
        previous(message, category, filename, lineno, file, line)

    def dump() -> None:
        if os.environ.get("RANK", "0") != "0":
            return
        start, end = AUDIT_MICRO_STEPS
        sources = [{"where": w, "job_frame": o, "count": n} for (w, o), n in counts.most_common()]
        with open(f"{prefix}.rank0.json", "w", encoding="utf-8") as out:
            json.dump({"micro_steps": end - start, "total": sum(counts.values()), "sources": sources}, out, indent=1)

    original = Trainer.training_step

    def training_step(self: Any, *args: Any, **kwargs: Any) -> Any:
        window["micro"] += 1
        on = AUDIT_MICRO_STEPS[0] <= window["micro"] < AUDIT_MICRO_STEPS[1]
        if on != window["on"]:
            torch.cuda.synchronize()  # what was queued before the window is not counted in it
            torch.cuda.set_sync_debug_mode("warn" if on else "default")
            window["on"] = on
            if not on:
                dump()
        return original(self, *args, **kwargs)

    warnings.showwarning = show
    Trainer.training_step = training_step  # type: ignore[method-assign]


def main() -> None:
    import torch

    if torch.cuda.is_available() and os.environ.get("TUNEDECK_SYNC_AUDIT"):
        try:
            install(os.environ["TUNEDECK_SYNC_AUDIT"])
        except Exception as exc:  # the audit is an extra: the job must run without it
            print(f"sync_probe: audit not installed ({type(exc).__name__}: {exc})", file=sys.stderr)
    from remote.job.train import run_main

    sys.argv = ["remote.job.train", *sys.argv[1:]]
    run_main()


if __name__ == "__main__":
    main()
