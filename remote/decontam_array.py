"""Contamination checks at cluster scale: the matcher's shards as one Slurm job array, then one merge.

Task i of the array runs `core.decontam.run_check(..., shard=(i, N))` on the cluster (training files i with
i % N == i go to shard i) and writes `reports/shard-<i>.json` atomically; `merge` reads the N partial
reports back and combines them with `core.decontam.merge_reports` into the report one process would give.
The array is a run like any other: recorded in the store, uploaded with the run bundle's code (plus
core/decontam), polled with the same batched squeue, streamed (events.jsonl, stdout.log), cancelled with
scancel.
"""

from __future__ import annotations

import json
import logging
import shlex
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from core.fsutil import atomic_write_text
from core.plan import sbatch_value, slurm_job_name
from core.records import RunPaths
from core.store import Store
from remote.backends import Backend
from remote.bundle import RUNS_DIR, Bundle, _dataset, job_code_files, upload_bundle
from remote.runs import LaunchError, _profile, _transport, get_run, new_run_id, work_root_for
from remote.transport import Transport

log = logging.getLogger(__name__)

SHARD_SCRIPT = "decontam_shard.py"
SPEC_FILE = "decontam.json"
REPORTS_DIR = "reports"

# Runs on the cluster (standard library + core.decontam, shipped in code/). Arguments: RUN_DIR INDEX COUNT.
SHARD_MAIN = '''"""One shard of a TuneDeck contamination check (a Slurm array task)."""
import json
import sys
import time
from pathlib import Path

from core.decontam import run_check
from core.fsutil import atomic_write_text
from core.records import JsonlWriter, RunPaths, event_record


def main() -> int:
    run_dir, index, count = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    spec = json.loads((run_dir / "decontam.json").read_text(encoding="utf-8"))
    events = JsonlWriter(run_dir / RunPaths.EVENTS)
    events.write(event_record("started", 1, {"shard": index, "count": count}))
    t0 = time.time()
    try:
        report = run_check(spec["train"], spec["evals"], shard=(index, count), **spec.get("options", {}))
    except Exception as exc:
        events.write(event_record("failed", 1, {"shard": index, "error": f"{type(exc).__name__}: {exc}"}))
        raise
    out = run_dir / "reports" / f"shard-{index}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, json.dumps(report, ensure_ascii=False))
    events.write(event_record("finished", 1, {"shard": index, "seconds": round(time.time() - t0, 3)}))
    print(f"shard {index}/{count}: done in {time.time() - t0:.1f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
'''


class DecontamArrayError(Exception):
    """The array could not be launched or merged (says which shard and why)."""


def render_array_script(run_id: str, run_dir: str, count: int, *, python: str = "python3", env_setup: str = "",
                        partition: str | None = None, account: str | None = None, qos: str | None = None,
                        time_limit: str | None = None) -> str:
    """launch.slurm for the array: one task per shard, all appending to stdout.log."""
    q = shlex.quote
    header = [
        f"--job-name={sbatch_value('job_name', slurm_job_name(f'tunedeck-decontam-{run_id}'))}",
        f"--array=0-{count - 1}",
        "--ntasks=1",
        "--cpus-per-task=1",
        f"--chdir={sbatch_value('run_dir', run_dir)}",
        f"--output={sbatch_value('run_dir', f'{run_dir}/{RunPaths.STDOUT}', filename=True)}",
        "--open-mode=append",
    ]
    for name, value in (("partition", partition), ("account", account), ("qos", qos), ("time", time_limit)):
        if value:
            header.append(f"--{name}={sbatch_value(name, value)}")
    lines = ["#!/bin/bash", f"# TuneDeck contamination check {run_id}: {count} shards as a job array."]
    lines += [f"#SBATCH {h}" for h in header]
    lines += ["set -euo pipefail", f"cd {q(run_dir)}"]
    if env_setup.strip():
        lines += ["set +u", env_setup, "set -u"]
    lines += [
        f"export PYTHONPATH={q(run_dir + '/' + RunPaths.JOB_CODE)}",
        "export PYTHONUNBUFFERED=1",
        f"exec {q(python)} {q(f'{run_dir}/{RunPaths.JOB_CODE}/{SHARD_SCRIPT}')} {q(run_dir)} "
        f'"$SLURM_ARRAY_TASK_ID" {int(count)}',
    ]
    return "\n".join(lines) + "\n"


def launch_array(train_paths: list[str], eval_specs: list[str], profile_name: str, store: Store, *,
                 shards: int = 4, name: str | None = None, options: dict[str, Any] | None = None,
                 profile: Any = None, transport: Transport | None = None,
                 progress: Callable[[str], None] | None = None) -> str:
    """Upload data + code and submit the shards as one Slurm job array; returns the run id."""
    if shards < 1:
        raise DecontamArrayError("shards must be >= 1")
    if not train_paths:
        raise DecontamArrayError("no training files given")
    profile = profile if profile is not None else _profile(profile_name)
    if profile.backend != "slurm":
        raise DecontamArrayError(f"cluster {profile.name!r} uses the {profile.backend} backend; a job array needs slurm")
    transport = transport if transport is not None else _transport(profile)
    run_id = new_run_id()
    spec_info = {"kind": "decontam", "train": list(train_paths), "evals": list(eval_specs), "shards": shards,
                 "options": options or {}}
    store.create_run(run_id, name or f"contamination check ({len(train_paths)} files, {shards} shards)", None,
                     spec_info, cluster=profile.name, backend="slurm", run_dir=None, status="created")
    try:
        work_root = work_root_for(profile, transport)
        run_dir = f"{work_root}/{RUNS_DIR}/{run_id}"
        store.update_run(run_id, run_dir=run_dir)
        uploads = [_dataset(f"train[{i}]", p, work_root, None) for i, p in enumerate(train_paths)]
        remote_evals = []
        for i, spec in enumerate(eval_specs):
            bench, _, path = spec.partition("=")
            if path:
                up = _dataset(f"evals[{i}]", path, work_root, None)
                uploads.append(up)
                remote_evals.append(f"{bench}={up.remote_path}")
            else:
                remote_evals.append(spec)
        remote_spec = {"train": [u.remote_path for u in uploads[:len(train_paths)]], "evals": remote_evals,
                       "options": options or {}}
        with tempfile.TemporaryDirectory(prefix="tunedeck-decontam-") as tmp:
            stage = Path(tmp)
            bundle = Bundle(stage_dir=stage, run_dir=run_dir, config=None, datasets=uploads)  # type: ignore[arg-type]
            texts = {
                SPEC_FILE: json.dumps(remote_spec, indent=2, ensure_ascii=False) + "\n",
                RunPaths.SLURM_SCRIPT: render_array_script(
                    run_id, run_dir, shards, python=getattr(profile, "python", None) or "python3",
                    env_setup=getattr(profile, "env_setup", "") or "", partition=profile.partition,
                    account=profile.account, qos=profile.qos, time_limit=profile.time_limit),
                RunPaths.RUN_JSON: json.dumps({"run_id": run_id, "kind": "decontam", "created_at": time.time(),
                                               "shards": shards}) + "\n",
                f"{RunPaths.JOB_CODE}/{SHARD_SCRIPT}": SHARD_MAIN,
            }
            for rel, text in texts.items():
                atomic_write_text(stage / rel, text)
                bundle.files[rel] = stage / rel
            for rel, path in job_code_files(include_decontam=True).items():
                bundle.files[f"{RunPaths.JOB_CODE}/{rel}"] = path
            upload_bundle(bundle, transport, progress)
        job_id = Backend.for_name("slurm").submit(transport, run_dir, run_id)
        store.update_run(run_id, job_id=job_id, status="pending")
        if progress:
            progress(f"submitted {shards} shards as array job {job_id} (run {run_id})")
        return run_id
    except Exception as exc:
        store.update_run(run_id, status="failed", status_reason=f"launch failed: {exc}", finished_at=time.time())
        raise LaunchError(f"contamination array {run_id} on {profile.name}: {exc}") from exc


def merge(run_id: str, store: Store, *, transport: Transport | None = None, out_path: Path | None = None,
          attach: bool = True) -> dict[str, Any]:
    """Read every shard's partial report from the cluster and merge them (optionally into the store)."""
    from core.decontam import merge_reports

    row = get_run(store, run_id)
    spec = row.config()
    count = int(spec.get("shards", 0))
    if spec.get("kind") != "decontam" or count < 1 or not row.run_dir:
        raise DecontamArrayError(f"run {row.run_id} is not a contamination array")
    if transport is None:
        transport = _transport(_profile(row.cluster))
    reports = []
    missing = []
    for i in range(count):
        path = f"{row.run_dir}/{REPORTS_DIR}/shard-{i}.json"
        try:
            reports.append(json.loads(transport.read_bytes(path)))
        except FileNotFoundError:
            missing.append(i)
    if missing:
        raise DecontamArrayError(f"run {row.run_id}: shard(s) {missing} wrote no report "
                                 f"(status {row.status}: {row.status_reason or ''}); see `tunedeck logs {row.run_id}`")
    merged = merge_reports(reports)
    if out_path is not None:
        atomic_write_text(Path(out_path), json.dumps(merged, indent=1, ensure_ascii=False) + "\n")
    if attach:
        store.add_contamination_report(merged, str(out_path) if out_path else None, run_id=row.run_id)
    return merged
