"""The run bundle: everything a run needs on its machine, staged locally, then uploaded into the run dir.

Layout under `<work_root>/runs/<run_id>/`: the launch plan (core.plan.write_plan: config.yaml, config.json,
ds_config.json, hostfile, .deepspeed_env, launch.slurm, launch.sh), run.json, the detach wrapper, and
code/ with the job code (core/{__init__,records,evalsets,passk,fsutil,config,evalstate,evalmemory,cancel,datafiles}.py,
remote/__init__.py, remote/job/**.py, and core/decontam/** for decontamination jobs). Dataset files go once per content to
`<work_root>/datasets/<sha256>/<name>` and the shipped config points at them there; a file whose sha256
is already present is not uploaded again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import core
import remote
from core.config import RunConfig
from core.fsutil import atomic_write_text, sha256_file
from core.plan import LaunchContext, write_plan
from core.records import RunPaths
from remote.backends import DETACH_SCRIPT, DETACH_WRAPPER
from remote.transport import Transport

log = logging.getLogger(__name__)

# config.py: the job reads its config.json through the app's own schema (pydantic + PyYAML, both on every
# machine that can train: DeepSpeed depends on pydantic, transformers on PyYAML). datafiles.py: the one reader
# of training data (the job loads its rows through it, with `datasets`).
CORE_JOB_MODULES = ("__init__.py", "records.py", "evalsets.py", "passk.py", "fsutil.py", "config.py", "evalstate.py",
                    "evalmemory.py", "cancel.py", "datafiles.py")
DATASETS_DIR = "datasets"
RUNS_DIR = "runs"
COMPLETE = ".complete"  # written last into a dataset directory upload


class BundleError(Exception):
    """A file the run needs is missing or unreadable (names the config field and the path)."""


@dataclass
class Bundle:
    """A staged bundle: files relative to the run dir, and dataset uploads (local path -> remote path)."""

    stage_dir: Path
    run_dir: str
    config: RunConfig  # the config as shipped (dataset paths point at the remote copies)
    files: dict[str, Path] = field(default_factory=dict)  # relative posix path -> local file
    datasets: list[DatasetUpload] = field(default_factory=list)


@dataclass(frozen=True)
class DatasetUpload:
    field: str  # the config field it came from (for messages)
    local: Path
    sha256: str
    remote_path: str  # where the config points on the machine
    remote_dir: str  # <work_root>/datasets/<sha256>
    members: tuple[tuple[str, Path], ...]  # (relative path, local file) for a directory dataset


def job_code_files(include_decontam: bool = False) -> dict[str, Path]:
    """{relative path under code/: local file} of the code shipped with every run."""
    core_dir = Path(core.__file__).parent
    remote_dir = Path(remote.__file__).parent
    files: dict[str, Path] = {}
    for name in CORE_JOB_MODULES:
        files[f"core/{name}"] = core_dir / name
    files["remote/__init__.py"] = remote_dir / "__init__.py"
    for path in sorted((remote_dir / "job").rglob("*.py")):
        files[f"remote/{path.relative_to(remote_dir).as_posix()}"] = path
    if include_decontam and (core_dir / "decontam").is_dir():
        for path in sorted((core_dir / "decontam").rglob("*.py")):
            files[f"core/{path.relative_to(core_dir).as_posix()}"] = path
    missing = [rel for rel, p in files.items() if not p.is_file()]
    if missing:
        raise BundleError(f"job code missing from this installation: {', '.join(missing)}")
    return files


def _dir_digest(root: Path) -> tuple[str, tuple[tuple[str, Path], ...]]:
    h = hashlib.sha256()
    members = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = path.relative_to(root).as_posix()
        h.update(rel.encode() + b"\0" + sha256_file(path).encode() + b"\n")
        members.append((rel, path))
    return h.hexdigest(), tuple(members)


def _resolve_local(value: str, what: str, base_dir: Path | None) -> Path:
    path = Path(value).expanduser()
    candidates = [path] if path.is_absolute() else [Path.cwd() / path] + ([base_dir / path] if base_dir else [])
    for cand in candidates:
        if cand.exists():
            return cand.resolve()
    raise BundleError(f"{what}: {value!r} not found (looked at {', '.join(str(c) for c in candidates)})")


def _dataset(what: str, value: str, work_root: str, base_dir: Path | None) -> DatasetUpload:
    local = _resolve_local(value, what, base_dir)
    if local.is_dir():
        digest, members = _dir_digest(local)
        if not members:
            raise BundleError(f"{what}: directory {local} holds no files")
    else:
        digest, members = sha256_file(local), ()
    remote_dir = f"{work_root}/{DATASETS_DIR}/{digest}"
    return DatasetUpload(what, local, digest, f"{remote_dir}/{local.name}", remote_dir, members)


def ship_config(config: RunConfig, work_root: str, base_dir: Path | None = None
                ) -> tuple[RunConfig, list[DatasetUpload]]:
    """The config with every local data path replaced by its content-addressed place on the machine."""
    data = config.model_dump(mode="json")
    uploads: list[DatasetUpload] = []

    def swap(what: str, value: str | None) -> str | None:
        if not value:
            return value
        up = _dataset(what, value, work_root, base_dir)
        uploads.append(up)
        return up.remote_path

    data["data"]["train_files"] = [swap(f"data.train_files[{i}]", v) for i, v in enumerate(data["data"]["train_files"])]
    data["data"]["dataset_dir"] = swap("data.dataset_dir", data["data"].get("dataset_dir"))
    data["data"]["contamination_report"] = swap("data.contamination_report", data["data"].get("contamination_report"))
    for i, bench in enumerate(data["evaluation"]["benchmarks"]):
        bench["path"] = swap(f"evaluation.benchmarks[{i}].path", bench.get("path"))
    return RunConfig.model_validate(data), uploads


def build_bundle(config: RunConfig, ctx: LaunchContext, work_root: str, stage_dir: Path, *,
                 base_dir: Path | None = None, run_info: dict[str, Any] | None = None,
                 include_decontam: bool = False,
                 renderer: Callable[[RunConfig, LaunchContext], dict[str, str]] | None = None) -> Bundle:
    """Stage the run's files under `stage_dir` (nothing is uploaded yet). `renderer` replaces the training
    launch plan (core.plan.render_plan), e.g. with an evaluation-only run's files."""
    shipped, uploads = ship_config(config, work_root, base_dir)
    written = write_plan(shipped, ctx, stage_dir, renderer(shipped, ctx) if renderer is not None else None)
    bundle = Bundle(stage_dir=stage_dir, run_dir=ctx.run_dir, config=shipped, datasets=uploads)
    for name, path in written.items():
        bundle.files[name] = path
    info = {"run_id": ctx.run_id, "backend": ctx.backend, "created_at": time.time(),
            "record_format": 1, **(run_info or {})}
    atomic_write_text(stage_dir / RunPaths.RUN_JSON, json.dumps(info, indent=2, ensure_ascii=False) + "\n")
    bundle.files[RunPaths.RUN_JSON] = stage_dir / RunPaths.RUN_JSON
    if ctx.backend != "slurm":
        atomic_write_text(stage_dir / DETACH_SCRIPT, DETACH_WRAPPER, mode=0o755)
        bundle.files[DETACH_SCRIPT] = stage_dir / DETACH_SCRIPT
    for rel, path in job_code_files(include_decontam).items():
        bundle.files[f"{RunPaths.JOB_CODE}/{rel}"] = path
    return bundle


def upload_bundle(bundle: Bundle, transport: Transport,
                  progress: Callable[[str], None] | None = None) -> dict[str, int]:
    """Upload datasets (unless already there) then the run files; returns counts for the log."""
    counts = {"files": 0, "datasets_uploaded": 0, "datasets_reused": 0}
    for up in bundle.datasets:
        marker = f"{up.remote_dir}/{COMPLETE}"
        if transport.size(marker) is not None:
            counts["datasets_reused"] += 1
            continue
        if progress:
            progress(f"uploading {up.field}: {up.local}")
        transport.makedirs(up.remote_dir)
        if up.members:
            root = up.remote_path
            for rel, local in up.members:
                parent = str(PurePosixPath(root, rel).parent)
                transport.makedirs(parent)
                transport.put_file(local, f"{root}/{rel}")
        else:
            transport.put_file(up.local, up.remote_path)
        transport.put_bytes(f"{up.sha256}\n".encode(), marker)  # last: the upload counts only once complete
        counts["datasets_uploaded"] += 1
    dirs = sorted({str(PurePosixPath(bundle.run_dir, rel).parent) for rel in bundle.files})
    for d in dirs:
        transport.makedirs(d)
    for rel, local in bundle.files.items():
        mode = 0o755 if rel.endswith(".sh") or rel in (RunPaths.SLURM_SCRIPT, RunPaths.EVAL_SLURM) else 0o644
        transport.put_file(local, f"{bundle.run_dir}/{rel}", mode=mode)
        counts["files"] += 1
    if progress:
        progress(f"uploaded {counts['files']} files to {bundle.run_dir}")
    return counts


def stage_and_upload(config: RunConfig, ctx: LaunchContext, work_root: str, transport: Transport, *,
                     base_dir: Path | None = None, run_info: dict[str, Any] | None = None,
                     include_decontam: bool = False,
                     renderer: Callable[[RunConfig, LaunchContext], dict[str, str]] | None = None) -> Bundle:
    """build_bundle in a temp dir, then upload_bundle."""
    with tempfile.TemporaryDirectory(prefix="tunedeck-bundle-") as tmp:
        bundle = build_bundle(config, ctx, work_root, Path(tmp), base_dir=base_dir, run_info=run_info,
                              include_decontam=include_decontam, renderer=renderer)
        upload_bundle(bundle, transport)
    return bundle
