"""Launch, status and cancel of runs: the orchestration over profiles, bundles, backends and the store.

`launch` records the run in the store first (status created), uploads the bundle, starts the job detached
and stores its job id / process group before it returns; any failure on the way leaves the run `failed`
with the reason. `refresh_status` makes ONE batched query per cluster; a failed poll is logged and skipped.
"""

from __future__ import annotations

import base64
import json
import logging
import random
import secrets
import shlex
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import Any

from core.config import RunConfig, check_run_name, resolved_dict
from core.names import printable
from core.nodes import diagnose_failure
from core.plan import LaunchContext
from core.records import RunPaths, validate_record
from core.store import TERMINAL_STATUSES, RunRow, Store, UnknownRunError
from remote.backends import Backend, BackendError, CancelResult, JobRef, JobStatus
from remote.bundle import RUNS_DIR, stage_and_upload
from remote.transport import Transport, TransportError, expand_home

log = logging.getLogger(__name__)

POLL_BACKOFF_MAX_S = 120.0
AMBIGUOUS_SHOWN = 10  # candidates listed for an ambiguous run id prefix


class LaunchError(Exception):
    """The run could not be started; the run (if recorded) is marked failed with the same message."""


class LaunchRefused(LaunchError):
    """The guardrails found reasons the run cannot work (nothing was recorded or started; force overrides)."""

    def __init__(self, preflight: Any):
        self.preflight = preflight
        super().__init__(preflight.format())


def new_run_id(now: float | None = None) -> str:
    """Sortable and unique: UTC time to the second plus 24 random bits, e.g. 20261125-203000-1a2b3c."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime(time.time() if now is None else now))
    return f"{stamp}-{secrets.token_hex(3)}"


def _profile(name: str) -> Any:
    from remote.profiles import get_profile

    return get_profile(name)


def _transport(profile: Any) -> Transport:
    from remote.profiles import transport_for

    return transport_for(profile)


def work_root_for(profile: Any, transport: Transport) -> str:
    """The profile's work root as an absolute path on its machine (`~` expanded there)."""
    root = getattr(profile, "work_root", None)
    if not root:
        if profile.backend == "local":
            from core.paths import local_runs_dir

            return str(local_runs_dir().parent)
        root = "~/tunedeck"
    root = str(root)
    if root.startswith("~") or not PurePosixPath(root).is_absolute():
        home = transport.home()
        root = expand_home(root, home) if root.startswith("~") else f"{home.rstrip('/')}/{root}"
    return root.rstrip("/") or "/"


def launch_context(profile: Any, run_id: str, run_dir: str, **overrides: Any) -> LaunchContext:
    # Profile hostfile lines may carry `slots=N`; the plan takes bare host names (slots come from the config).
    lines = getattr(profile, "hostfile_hosts", None) or ()
    hosts = tuple(line.split()[0] for line in lines if line.strip()) or ("localhost",)
    python = getattr(profile, "python", None) or "python3"
    if profile.backend == "local" and python == "python3" and not getattr(sys, "frozen", False):
        # On this machine the training environment defaults to the interpreter TuneDeck itself runs in (a
        # bare `python3` on PATH is often a system Python without torch); a frozen app has no such Python.
        python = sys.executable
    values = dict(
        run_id=run_id, run_dir=run_dir, backend=profile.backend, env_setup=getattr(profile, "env_setup", "") or "",
        python=python,
        # A port per run: two runs on one node must not share the rendezvous port.
        master_port=random.randint(20000, 39999),
        partition=getattr(profile, "partition", None), account=getattr(profile, "account", None),
        qos=getattr(profile, "qos", None), time_limit=getattr(profile, "time_limit", None), hosts=hosts,
        eval_devices=_eval_devices(profile),
        extra_env=dict(getattr(profile, "env", None) or {}),
    )
    values.update(overrides)
    return LaunchContext(**values)


def _eval_devices(profile: Any) -> tuple[int, ...]:
    from core.placement import parse_devices

    return parse_devices(getattr(profile, "eval_devices", None))


def apply_profile_shape(config: RunConfig, profile: Any) -> RunConfig:
    """The profile's nodes / GPUs per node, when set, override the config's (validated again: the batch
    split rules depend on them)."""
    shape = {k: getattr(profile, k, None) for k in ("nodes", "gpus_per_node")}
    shape = {k: v for k, v in shape.items() if v is not None and v != getattr(config.cluster, k)}
    if not shape:
        return config
    data = config.model_dump(mode="json")
    data["cluster"].update(shape)
    try:
        return RunConfig.model_validate(data)
    except ValueError as exc:
        raise LaunchError(f"cluster profile {profile.name!r} sets {shape}, which this config cannot use: {exc}") from exc


def launch(config: RunConfig, profile_name: str, store: Store, *, name: str | None = None,
           base_dir: Path | None = None, profile: Any = None, transport: Transport | None = None,
           progress: Callable[[str], None] | None = None, include_decontam: bool = False,
           ctx_overrides: dict[str, Any] | None = None, force: bool = False, tags: tuple[str, ...] = (),
           renderer: Callable[[RunConfig, LaunchContext], dict[str, str]] | None = None) -> str:
    """Upload the run and start it detached on the profile's machine; returns the new run id.

    Unless `force`, the guardrails (remote.preflight: training data, the profile's last cluster check, GPU
    shape and memory, the estimate, the evaluation placement) run first; LaunchRefused says why, with
    nothing recorded or started. The job id (Slurm) or process group id (hostfile/local) is in the store
    when this returns.
    """
    profile = profile if profile is not None else _profile(profile_name)
    transport = transport if transport is not None else _transport(profile)
    backend = Backend.for_name(profile.backend)
    if name:
        try:
            check_run_name(name)
        except ValueError as exc:
            raise LaunchError(f"run name {name!r}: {exc}") from None
        config = config.model_copy(update={"name": name})
    config = apply_profile_shape(config, profile)
    if not force:
        from remote.preflight import preflight

        if progress:
            progress(f"checking that run {config.name!r} can work on {profile.name}")
        found = preflight(config, profile, transport)
        if not found.ok:
            raise LaunchRefused(found)
    run_id = new_run_id()
    row = store.create_run(run_id, config.name, config.to_yaml(), resolved_dict(config), cluster=profile.name,
                           backend=profile.backend, run_dir=None, preset=config.preset, status="created")
    if tags:
        row = store.update_run(run_id, tags=tags)
    try:
        work_root = work_root_for(profile, transport)
        run_dir = f"{work_root}/{RUNS_DIR}/{run_id}"
        store.update_run(run_id, run_dir=run_dir)
        ctx = launch_context(profile, run_id, run_dir, **(ctx_overrides or {}))
        if progress:
            progress(f"uploading run {run_id} to {transport.name}:{run_dir}")
        stage_and_upload(config, ctx, work_root, transport, base_dir=base_dir,
                         run_info={"name": config.name, "cluster": profile.name}, include_decontam=include_decontam,
                         renderer=renderer)
        job_id = backend.submit(transport, run_dir, run_id)
        store.update_run(run_id, job_id=job_id, status="pending", status_reason=None)
        if progress:
            progress(f"started run {run_id} as {'job' if backend.name == 'slurm' else 'process group'} {job_id}")
        log.info("launched run %s on %s as %s", run_id, profile.name, job_id)
        return row.run_id
    except Exception as exc:
        store.update_run(run_id, status="failed", status_reason=f"launch failed: {exc}", finished_at=time.time())
        raise LaunchError(f"run {run_id} on {profile.name}: {exc}") from exc


REFERENCE_TAG = "reference"  # an evaluation-only run of a model: its pass@1 is a measured reference


def reference_config(model_path: str, label: str, *, benchmarks: list[tuple[str, str | None]] | None = None,
                     gpus: int = 1, kind: str = "base", template: str = "raw", limit: int | None = None,
                     max_new_tokens: int = 512, batch_size: int = 16, n_samples: int = 1,
                     temperature: float | None = None, timeout_s: float = 10.0,
                     contamination: str | None = None, sandbox: str = "auto") -> RunConfig:
    """The config of an evaluation-only run (nothing is trained: the model is evaluated as it is)."""
    sampled = n_samples > 1
    data: dict[str, Any] = {
        "schema_version": 1, "name": label, "description": f"measured reference: {model_path}",
        "model": {"name_or_path": model_path, "kind": kind, "init": "pretrained"},
        "data": {"prompt_template": template, **({"contamination_report": contamination} if contamination else {})},
        "cluster": {"nodes": 1, "gpus_per_node": max(1, gpus), "gpu_type": "cpu" if gpus == 0 else "unknown",
                    **({"gpu_memory_gb": 1.0} if gpus == 0 else {})},
        "evaluation": {"benchmarks": [{"name": n, **({"path": p} if p else {})} for n, p in (benchmarks or [("humaneval", None)])],
                       "when": "end", "decoding": "sampled" if sampled else "greedy", "n_samples": n_samples,
                       "temperature": temperature if temperature is not None else 0.2,
                       "max_new_tokens": max_new_tokens, "batch_size": batch_size, "timeout_s": timeout_s,
                       "sandbox": sandbox,
                       **({"limit": limit} if limit else {}), **({"gpus": gpus} if gpus else {})},
    }
    return RunConfig.model_validate(data)


def launch_reference(model_path: str, profile_name: str, store: Store, config: RunConfig, *, profile: Any = None,
                     transport: Transport | None = None, progress: Callable[[str], None] | None = None,
                     force: bool = False) -> str:
    """Evaluate a model on the cluster with the same harness as checkpoints; returns the run id.

    The run is tagged `reference` and named by its label: its pass@1 shows on every pass@1 chart of the same
    benchmark as a measured marker beside the published line. Unless `force`, the profile's last check must
    show the evaluation's packages.
    """
    from core.plan import render_reference_plan

    profile = profile if profile is not None else _profile(profile_name)
    transport = transport if transport is not None else _transport(profile)
    if not force:
        from core.guardrails import Preflight, launch_findings
        from remote.preflight import cluster_facts

        facts = cluster_facts(profile, transport)
        found = [f for f in launch_findings(config, profile.backend, facts) if f.code == "missing_packages"]
        if found:
            raise LaunchRefused(Preflight(tuple(found), facts))
    return launch(config, profile.name, store, profile=profile, transport=transport, progress=progress, force=True,
                  tags=(REFERENCE_TAG,), renderer=lambda cfg, ctx: render_reference_plan(cfg, ctx, model_path))


def measured_references(store: Store) -> list[dict[str, Any]]:
    """Every measured reference's pass@1 (subset all): label, benchmark, pass@1, run id, model path."""
    out = []
    for row in store.list_runs():
        if REFERENCE_TAG not in row.tags:
            continue
        model = (row.config().get("model") or {}).get("name_or_path")
        for rec in store.evals(row.run_id):
            if rec["subset"] == "all" and rec.get("pass@1") is not None:
                out.append({"label": row.name, "benchmark": rec["benchmark"], "pass@1": rec["pass@1"],
                            "run_id": row.run_id, "model": model, "n_tasks": rec["n_tasks"], "t": rec["t"]})
    return out


def job_ref(row: RunRow) -> JobRef:
    if not row.job_id or not row.run_dir:
        raise BackendError(f"run {row.run_id} was never started (status {row.status}: {row.status_reason or ''})")
    return JobRef(row.run_id, row.job_id, row.run_dir)


def _apply(store: Store, row: RunRow, st: JobStatus) -> RunRow:
    state, reason = st.state, st.reason
    if state == "unknown":
        # Slurm forgot the job (MinJobAge) before we saw its end: the job's own events say how it ended.
        ends = [e["event"] for e in store.events(row.run_id) if e["event"] in TERMINAL_STATUSES]
        if ends:
            state = ends[-1]
            reason = f"{reason}; the job reported {ends[-1]}"
    if state == row.status and (reason or None) == row.status_reason:
        return row
    changes: dict[str, Any] = {"status": state, "status_reason": reason or None}
    if state in ("running", "completing") and row.started_at is None:
        changes["started_at"] = time.time()
    if state in TERMINAL_STATUSES and row.finished_at is None:
        changes["finished_at"] = time.time()
    return store.update_run(row.run_id, **changes)


def active_runs(store: Store, cluster: str | None = None) -> list[RunRow]:
    return [r for r in store.list_runs() if r.status not in TERMINAL_STATUSES and r.job_id and r.cluster
            and (cluster is None or r.cluster == cluster)]


# Bytes of a failed run's stdout.log searched for launcher lines naming a node (srun / pdsh errors).
LAUNCHER_TAIL_BYTES = 256 << 10
RANK_FILE_MAX_BYTES = 16 << 10


def read_run_nodes(transport: Transport, rows: list[RunRow], failed: set[str] = frozenset()
                   ) -> tuple[dict[str, list[dict[str, Any]]], dict[str, str]]:
    """ONE remote call: every rank record (ranks/rank-N.json) of `rows`, and for the runs in `failed` the
    launcher lines of their stdout.log that name a node. Returns ({run_id: [records]}, {run_id: lines})."""
    q = shlex.quote
    lines = [
        "rk() { for f in \"$2\"/" + RunPaths.RANKS + "/rank-*.json; do [ -f \"$f\" ] || continue;"
        f" printf 'K|%s|' \"$1\"; head -c {RANK_FILE_MAX_BYTES} \"$f\" | tr -d '\\n'; echo; done; }}",
        f"lt() {{ printf 'L|%s|' \"$1\"; tail -c {LAUNCHER_TAIL_BYTES} \"$2/{RunPaths.STDOUT}\" 2>/dev/null"
        " | grep -aE '^(srun: error: |pdsh@)' | tail -n 50 | base64 | tr -d '\\n'; echo; }",
    ]
    for r in rows:
        if r.run_dir:
            lines.append(f"rk {q(r.run_id)} {q(r.run_dir)}")
            if r.run_id in failed:
                lines.append(f"lt {q(r.run_id)} {q(r.run_dir)}")
    res = transport.run_shell("\n".join(lines) + "\ntrue\n", timeout=60, check=False)
    ranks: dict[str, list[dict[str, Any]]] = {}
    launcher: dict[str, str] = {}
    for line in res.stdout.splitlines():
        kind, _, rest = line.partition("|")
        run_id, _, payload = rest.partition("|")
        if kind == "K":
            try:
                rec = json.loads(payload)
            except json.JSONDecodeError:
                continue  # a rank file being replaced right now: the next poll reads it whole
            if not validate_record("ranks", rec):
                ranks.setdefault(run_id, []).append(rec)
        elif kind == "L" and payload:
            launcher[run_id] = base64.b64decode(payload).decode("utf-8", "replace")
    return ranks, launcher


def refresh_cluster(store: Store, cluster: str, rows: list[RunRow], transport: Transport | None = None,
                    backend_name: str | None = None) -> dict[str, RunRow]:
    """One batched status query for `rows` (all on `cluster`), then one read of their rank records; updates
    the store (a failed run's reason names the node it lost first); raises on a failed status poll."""
    if not rows:
        return {}
    if transport is None:
        transport = _transport(_profile(cluster))
    by_backend: dict[str, list[RunRow]] = {}
    for r in rows:
        by_backend.setdefault(backend_name or r.backend or "local", []).append(r)
    out: dict[str, RunRow] = {}
    for name, group in by_backend.items():
        statuses = Backend.for_name(name).status_many(transport, [job_ref(r) for r in group])
        failed = {r.run_id for r in group if (st := statuses.get(r.run_id)) is not None and st.state == "failed"}
        launcher: dict[str, str] = {}
        try:
            ranks, launcher = read_run_nodes(transport, group, failed)
            for run_id, records in ranks.items():
                store.upsert_ranks(run_id, records)
        except Exception as exc:  # noqa: BLE001 -- the rank records only add detail: the states still count
            log.warning("reading the rank records of %s failed: %s", cluster, exc)
        for r in group:
            st = statuses.get(r.run_id)
            if st is None:
                continue
            if st.state == "failed" and r.status != "failed":
                failure = diagnose_failure(store.ranks(r.run_id), launcher.get(r.run_id, ""))
                if failure is not None:
                    st = JobStatus(st.state, "; ".join(x for x in (st.reason, failure.summary()) if x), st.exit_code)
            out[r.run_id] = _apply(store, r, st)
    return out


def refresh_status(store: Store, profile: str | None = None, *, transports: dict[str, Transport] | None = None,
                   errors: dict[str, str] | None = None) -> dict[str, RunRow]:
    """Poll every active run (of one profile, or all), one query per cluster; failed polls are logged,
    recorded in `errors` and skipped."""
    groups: dict[str, list[RunRow]] = {}
    for r in active_runs(store, profile):
        groups.setdefault(r.cluster, []).append(r)
    out: dict[str, RunRow] = {}
    for cluster, rows in groups.items():
        try:
            transport = (transports or {}).get(cluster)
            out.update(refresh_cluster(store, cluster, rows, transport))
        except (TransportError, BackendError, OSError) as exc:
            log.warning("status poll of %s failed (skipped): %s", cluster, exc)
            if errors is not None:
                errors[cluster] = str(exc)
        except Exception as exc:  # noqa: BLE001 -- a profile lookup error and the like: one cluster must not stop the rest
            log.warning("status poll of %s failed (skipped): %s", cluster, exc)
            if errors is not None:
                errors[cluster] = str(exc)
    return out


class StatusPoller:
    """refresh_status with per-cluster exponential backoff after failures (for the StreamManager)."""

    def __init__(self, store: Store, interval_s: float = 5.0, transports: dict[str, Transport] | None = None):
        self.store = store
        self.interval_s = interval_s
        self.transports = transports or {}
        self._next: dict[str, float] = {}
        self._fail: dict[str, int] = {}
        self._lock = threading.Lock()
        self.last_errors: dict[str, str] = {}

    def poll(self, force: bool = False) -> dict[str, RunRow]:
        now = time.monotonic()
        groups: dict[str, list[RunRow]] = {}
        for r in active_runs(self.store):
            groups.setdefault(r.cluster, []).append(r)
        out: dict[str, RunRow] = {}
        with self._lock:
            for cluster, rows in groups.items():
                if not force and now < self._next.get(cluster, 0):
                    continue
                try:
                    out.update(refresh_cluster(self.store, cluster, rows, self.transports.get(cluster)))
                    self._fail[cluster] = 0
                    self.last_errors.pop(cluster, None)
                    self._next[cluster] = time.monotonic() + self.interval_s
                except Exception as exc:  # noqa: BLE001 -- thread boundary of the poller: log, back off, go on
                    n = self._fail.get(cluster, 0) + 1
                    self._fail[cluster] = n
                    delay = min(POLL_BACKOFF_MAX_S, self.interval_s * 2 ** n)
                    self._next[cluster] = time.monotonic() + delay  # from now: a failed connect can be slow
                    self.last_errors[cluster] = str(exc)
                    log.warning("status poll of %s failed (%d in a row; next in %.0f s): %s", cluster, n, delay, exc)
        return out


def transport_for_run(row: RunRow) -> Transport:
    if not row.cluster:
        raise BackendError(f"run {row.run_id} has no cluster recorded")
    return _transport(_profile(row.cluster))


def get_run(store: Store, run_id: str) -> RunRow:
    row = store.get_run(run_id)
    if row is None:
        # Allow a unique prefix, like git.
        matches = [r for r in store.list_runs() if r.run_id.startswith(run_id)]
        if len(matches) == 1:
            return matches[0]
        if matches:
            shown = [f"{r.run_id} ({printable(r.name)}, {r.status})" for r in matches[:AMBIGUOUS_SHOWN]]
            more = f", and {len(matches) - AMBIGUOUS_SHOWN} more" if len(matches) > AMBIGUOUS_SHOWN else ""
            raise UnknownRunError(f"run id prefix {run_id!r} is ambiguous: it matches {len(matches)} runs: "
                                  + "; ".join(shown) + more + ". Give more of the id.")
        raise UnknownRunError(f"no run with id {run_id!r}")
    return row


def resume(run_id: str, store: Store, *, transport: Transport | None = None,
           progress: Callable[[str], None] | None = None) -> tuple[str, int | None]:
    """Start an ended run again in its own run directory (same run id, a new job): the job counts a new
    attempt and continues from its newest complete checkpoint. Returns (job id, checkpoint step or None)."""
    row = get_run(store, run_id)
    if row.status not in TERMINAL_STATUSES and row.status != "unknown":
        raise LaunchError(f"run {row.run_id} is {row.status}: only an ended run can be resumed")
    if row.status == "finished":
        raise LaunchError(f"run {row.run_id} finished: there is nothing left to train")
    if not row.run_dir or not row.backend:
        raise LaunchError(f"run {row.run_id} was never uploaded: launch it again instead")
    transport = transport if transport is not None else transport_for_run(row)
    backend = Backend.for_name(row.backend)
    q = shlex.quote
    listing = transport.run_shell(f"ls -d {q(row.run_dir)}/{RunPaths.CHECKPOINTS}/checkpoint-*/{RunPaths.COMPLETE_MARKER}"
                                  " 2>/dev/null; true", timeout=60, check=False).stdout
    steps = sorted(int(p.split("/checkpoint-")[-1].split("/")[0]) for p in listing.split()
                   if p.split("/checkpoint-")[-1].split("/")[0].isdigit())
    step = steps[-1] if steps else None
    if progress:
        progress(f"resuming run {row.run_id} on {row.cluster}" +
                 (f" from checkpoint-{step}" if step is not None else " from the start (no complete checkpoint)"))
    try:
        job_id = backend.submit(transport, row.run_dir, row.run_id)
    except BackendError as exc:
        raise LaunchError(f"run {row.run_id}: {exc}") from exc
    store.update_run(row.run_id, job_id=job_id, status="pending", finished_at=None,
                     status_reason=f"resumed after {row.status}" + (f" from checkpoint-{step}" if step is not None else ""))
    log.info("resumed run %s on %s as %s", row.run_id, row.cluster, job_id)
    return job_id, step


def cancel(run_id: str, store: Store, *, transport: Transport | None = None, grace_s: float | None = None,
           confirm_s: float | None = None) -> CancelResult:
    """Stop the run (scancel, or TERM then KILL of its process group) and confirm it is gone."""
    row = get_run(store, run_id)
    if row.status in TERMINAL_STATUSES:
        return CancelResult(True, f"run {row.run_id} had already ended: {row.status}"
                            + (f" ({row.status_reason})" if row.status_reason else "") + "; nothing to cancel",
                            already_ended=True)
    ref = job_ref(row)
    transport = transport if transport is not None else transport_for_run(row)
    backend = Backend.for_name(row.backend or "local")
    kwargs = {k: v for k, v in (("grace_s", grace_s), ("confirm_s", confirm_s)) if v is not None}
    result = backend.cancel(transport, ref, **kwargs)
    if result.confirmed_gone:
        store.update_run(row.run_id, status="cancelled", status_reason="cancelled by the user",
                         finished_at=time.time())
    else:
        store.update_run(row.run_id, status_reason=f"cancel requested, not confirmed: {result.detail}")
    return result
