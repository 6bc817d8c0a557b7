"""Backends: how a run is started, polled and cancelled on its machine (Slurm, DeepSpeed hostfile, local).

Every backend talks to its machine only through a Transport (remote/transport.py), so the same code runs
over SSH and on this machine. Runs never belong to the connection: Slurm owns its jobs, and hostfile/local
runs are started with `setsid` so they lead their own process group, which is what status and cancel use.
Status is ONE batched query per cluster per poll (squeue for all Slurm jobs, one shell script for all
process groups).
"""

from __future__ import annotations

import json
import logging
import re
import shlex
import time
from dataclasses import dataclass
from typing import ClassVar

from core.evalstate import eval_job_prefix, step_of_job_name
from core.records import RunPaths
from core.store import TERMINAL_STATUSES
from remote.transport import CommandResult, RemoteCommandError, Transport

log = logging.getLogger(__name__)

# Files the detach wrapper writes into the run directory (hostfile/local backends).
DETACH_SCRIPT = "tunedeck-detach.sh"
PGID_FILE = RunPaths.PGID
EXIT_FILE = RunPaths.EXIT_STATUS
RUN_ID_ENV = "TUNEDECK_RUN_ID"  # exported by every launch script; used to find a run's leftover processes

# How long a just-started wrapper may take to record its process group.
START_WAIT_S = 15.0
# TERM, then this long for the job to checkpoint and exit, then KILL.
CANCEL_GRACE_S = 30.0
# After scancel / KILL: how long to wait for the job and its processes to be gone.
CONFIRM_WAIT_S = 60.0

# The wrapper hostfile/local runs are started through. `setsid` makes it the process-group leader, so its
# pid is the group id; it survives the group's SIGTERM (a trap, reset to default in its children) to write
# the launch script's exit status, which tells "finished" from "failed" once the group is gone.
DETACH_WRAPPER = """#!/bin/bash
# TuneDeck detach wrapper: records the run's process group, runs launch.sh, records its exit status.
cd "$(dirname "$0")" || exit 1
echo "$$" > .pgid.tmp && mv -f .pgid.tmp pgid
trap ':' TERM HUP
bash ./launch.sh >> stdout.log 2>&1
rc=$?
echo "$rc" > .exit_status.tmp && mv -f .exit_status.tmp exit_status
exit "$rc"
"""


class BackendError(Exception):
    """A launch, status or cancel step failed in a way the user has to see (carries the machine's words)."""


@dataclass(frozen=True)
class JobRef:
    """What the store knows about one started run: enough to poll or cancel it."""

    run_id: str
    job_id: str  # Slurm job id, or the process group id for hostfile/local
    run_dir: str


@dataclass(frozen=True)
class JobStatus:
    state: str  # pending / running / completing / finished / failed / cancelled / unknown
    reason: str = ""
    exit_code: int | None = None

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL_STATUSES


@dataclass(frozen=True)
class CancelResult:
    confirmed_gone: bool
    detail: str
    already_ended: bool = False  # nothing was cancelled: the run had ended before


# ----------------------------------------------------------------------------------------- helpers


def leftover_pids(transport: Transport, run_id: str) -> list[int]:
    """Processes on the transport's machine whose environment carries this run's TUNEDECK_RUN_ID.

    The environment, not the command line, is searched: the search's own argv holds the pattern, its
    environment does not. Only the machine the transport reaches is searched (the login node on Slurm).
    """
    res = transport.run_shell(_pid_search(run_id) + "; true", timeout=30, check=False)
    return sorted(int(x) for x in res.stdout.split() if x.isdigit())


def _pid_search(run_id: str) -> str:
    """Shell that prints the pids whose environment carries this run's TUNEDECK_RUN_ID (one per line)."""
    if not re.fullmatch(r"[A-Za-z0-9._-]+", run_id):
        raise ValueError(f"run id {run_id!r} has characters a process search cannot hold")
    return (f"grep -lzxF -e {shlex.quote(f'{RUN_ID_ENV}={run_id}')} /proc/[0-9]*/environ 2>/dev/null"
            " | sed -n 's#^/proc/\\([0-9]*\\)/environ$#\\1#p'")


# SSH from the login node to the other nodes of a hostfile run: as pdsh and DeepSpeed's launcher do (plain
# ssh, keys and known hosts from the user's ssh config there), never asking for anything.
NODE_SSH = ("ssh", "-o", "BatchMode=yes", "-o", "ConnectTimeout=10")


def hostfile_hosts(transport: Transport, run_dir: str) -> list[str]:
    """The hosts of a run's DeepSpeed hostfile (empty when it has none)."""
    res = transport.run_shell(f"cat {shlex.quote(f'{run_dir}/{RunPaths.HOSTFILE}')} 2>/dev/null; true", timeout=30,
                              check=False)
    hosts = [ln.split("#", 1)[0].split()[0] for ln in res.stdout.splitlines() if ln.split("#", 1)[0].strip()]
    return list(dict.fromkeys(hosts))


def node_processes(transport: Transport, run_id: str, hosts: list[str], signal_name: str | None = None, *,
                   ranks_only: bool = False) -> dict[str, tuple[list[int], str]]:
    """{host: (pids of this run there, error)} for every host, asked over ssh from the transport's machine
    (the login node) in parallel; with `signal_name` those processes are sent that signal first. `ranks_only`:
    only the training processes (their environment has RANK; launchers and shells have not)."""
    search = _pid_search(run_id)
    if ranks_only:
        search = f"for x in $({search}); do grep -qz '^RANK=' /proc/$x/environ 2>/dev/null && echo $x; done"
    remote = f"p=$({search}); "
    if signal_name:
        remote += f'[ -n "$p" ] && kill -{signal_name} $p 2>/dev/null; '
    remote += 'echo $p'
    q = shlex.quote
    lines = ["set +e"]
    for host in hosts:
        lines.append(f"( out=$({shlex.join(NODE_SSH)} {q(host)} {q(remote)} 2>&1); rc=$?; "
                     f"printf 'H|%s|%s|%s\\n' {q(host)} \"$rc\" \"$(printf '%s' \"$out\" | tr '\\n' ' ')\" ) &")
    lines.append("wait")
    res = transport.run_shell("\n".join(lines) + "\n", timeout=120, check=False)
    out: dict[str, tuple[list[int], str]] = {h: ([], "no answer") for h in hosts}
    for line in res.stdout.splitlines():
        parts = line.split("|", 3)
        if len(parts) != 4 or parts[0] != "H":
            continue
        _, host, rc, text = parts
        if rc == "0":
            out[host] = (sorted(int(x) for x in text.split() if x.isdigit()), "")
        else:
            out[host] = ([], f"ssh {host} failed (exit {rc}): {text.strip()[-300:]}")
    return out


def _last_event(line: str) -> dict | None:
    try:
        rec = json.loads(line)
    except (json.JSONDecodeError, ValueError):
        return None
    return rec if isinstance(rec, dict) else None


def _event_reason(rec: dict | None) -> str:
    if not rec:
        return ""
    detail = rec.get("detail") or {}
    text = detail.get("error") or detail.get("reason") or detail.get("message") or ""
    return f"{rec.get('event')}: {text}".strip(": ") if text else str(rec.get("event", ""))


# ----------------------------------------------------------------------------------------- backends


class Backend:
    """Base of the three backends; `for_name` picks one."""

    name: ClassVar[str]

    def submit(self, transport: Transport, run_dir: str, run_id: str) -> str:
        raise NotImplementedError

    def status_many(self, transport: Transport, jobs: list[JobRef]) -> dict[str, JobStatus]:
        raise NotImplementedError

    def cancel(self, transport: Transport, job: JobRef, *, grace_s: float = CANCEL_GRACE_S,
               confirm_s: float = CONFIRM_WAIT_S) -> CancelResult:
        raise NotImplementedError

    @staticmethod
    def for_name(name: str) -> Backend:
        try:
            return _BACKENDS[name]()
        except KeyError:
            raise BackendError(f"unknown backend {name!r} (one of {', '.join(_BACKENDS)})") from None


class ProcessGroupBackend(Backend):
    """hostfile and local: `setsid nohup` of the wrapper; the process group id is the job id."""

    name = "local"

    def submit(self, transport: Transport, run_dir: str, run_id: str) -> str:
        q = shlex.quote
        script = "\n".join([
            f"cd {q(run_dir)} || exit 97",
            # A resumed run starts again in its run directory: the last start's group and exit status are stale.
            f"rm -f {PGID_FILE} {EXIT_FILE}",
            # The run id in the wrapper's environment lets cancel find every process of the run.
            f"{RUN_ID_ENV}={q(run_id)} setsid -f nohup bash {q(DETACH_SCRIPT)} </dev/null >/dev/null 2>&1",
            f"for _ in $(seq {int(START_WAIT_S * 20)}); do [ -s {PGID_FILE} ] && break; sleep 0.05; done",
            f"cat {PGID_FILE}",
        ])
        res = transport.run_shell(script, timeout=START_WAIT_S + 30, check=False)
        pgid = res.stdout.strip()
        if res.rc != 0 or not pgid.isdigit():
            raise BackendError(
                f"{transport.name}: the run did not start in {run_dir} (exit {res.rc}): "
                f"{(res.stderr or res.stdout).strip()[-1000:] or 'no process group was recorded'}")
        return pgid

    def status_many(self, transport: Transport, jobs: list[JobRef]) -> dict[str, JobStatus]:
        if not jobs:
            return {}
        q = shlex.quote
        lines = [
            "st() {",
            '  if pgrep -g "$2" >/dev/null 2>&1; then a=1; else a=0; fi',
            '  e=$(head -c 16 "$3/exit_status" 2>/dev/null | tr -dc 0-9)',
            '  v=$(tail -n 1 "$3/events.jsonl" 2>/dev/null | head -c 4000)',
            "  printf 'R|%s|%s|%s|%s\\n' \"$1\" \"$a\" \"$e\" \"$v\"",
            "}",
        ]
        for job in jobs:
            if not job.job_id.isdigit():
                continue
            lines.append(f"st {q(job.run_id)} {q(job.job_id)} {q(job.run_dir)}")
        res = transport.run_shell("\n".join(lines) + "\n", timeout=60)
        out: dict[str, JobStatus] = {}
        for line in res.stdout.splitlines():
            parts = line.split("|", 4)
            if len(parts) != 5 or parts[0] != "R":
                continue
            _, run_id, alive, exit_text, event_line = parts
            out[run_id] = self._map(alive == "1", int(exit_text) if exit_text else None, _last_event(event_line))
        return out

    @staticmethod
    def _map(alive: bool, exit_code: int | None, event: dict | None) -> JobStatus:
        event_name = (event or {}).get("event")
        if exit_code is not None:
            if alive:
                return JobStatus("completing", "launch script exited; processes still stopping", exit_code)
            if exit_code == 0:
                return JobStatus("finished", "exit status 0", 0)
            reason = f"exit status {exit_code}"
            if event_name in ("failed", "cancelled", "preempted"):
                reason += f" ({_event_reason(event)})"
            return JobStatus("failed", reason, exit_code)
        if alive:
            return JobStatus("running")
        if event_name == "finished":
            return JobStatus("finished", "job reported finished; no exit status was recorded")
        return JobStatus("failed", "the run's process group is gone and recorded no exit status (killed?)"
                         + (f"; last event {_event_reason(event)}" if event else ""))

    def _group_alive(self, transport: Transport, pgid: str) -> bool:
        res = transport.run(["pgrep", "-g", pgid], timeout=30, check=False)
        return res.rc == 0 and bool(res.stdout.strip())

    def cancel(self, transport: Transport, job: JobRef, *, grace_s: float = CANCEL_GRACE_S,
               confirm_s: float = CONFIRM_WAIT_S) -> CancelResult:
        pgid = job.job_id
        if not pgid.isdigit() or int(pgid) <= 1:
            raise BackendError(f"run {job.run_id}: {pgid!r} is not a process group id")
        steps = []
        deadline = time.monotonic() + grace_s
        # A hostfile run on several nodes: pdsh started the ranks over ssh, so they are outside this group and
        # their output flows back through pdsh's ssh connections. The ranks are stopped first, on every node,
        # while those connections still carry what they print as they save their checkpoint; the launchers
        # (this group) only after. Killing pdsh first would break the ranks' stdout mid-save.
        hosts = hostfile_hosts(transport, job.run_dir) if self.name == "hostfile" else []
        hosts = hosts if len(hosts) > 1 else []
        if hosts:
            nodes = node_processes(transport, job.run_id, hosts, "TERM", ranks_only=True)
            steps.append("sent SIGTERM to the training processes on " + ", ".join(
                f"{h} ({len(p)})" if not err else f"{h} (unreachable: {err})" for h, (p, err) in nodes.items()))
            while time.monotonic() < deadline and \
                    any(p for p, _ in node_processes(transport, job.run_id, hosts, ranks_only=True).values()):
                time.sleep(0.5)
        transport.run(["kill", "-TERM", "--", f"-{pgid}"], timeout=30, check=False)
        steps.append(f"sent SIGTERM to process group {pgid}")
        if hosts:
            node_processes(transport, job.run_id, hosts, "TERM")  # what is left of the run there: launchers
        while time.monotonic() < deadline:
            if not self._group_alive(transport, pgid) and \
                    not (hosts and any(p for p, _ in node_processes(transport, job.run_id, hosts).values())):
                break
            time.sleep(0.5)
        if self._group_alive(transport, pgid):
            transport.run(["kill", "-KILL", "--", f"-{pgid}"], timeout=30, check=False)
            steps.append(f"still running after {grace_s:g} s: sent SIGKILL")
        if hosts:
            left = {h: p for h, (p, _) in node_processes(transport, job.run_id, hosts, "KILL").items() if p}
            if left:
                steps.append("still running after the grace time: sent SIGKILL to " + ", ".join(
                    f"{h} {p}" for h, p in left.items()))
        return self._confirm(transport, job, steps, confirm_s, hosts)

    def _confirm(self, transport: Transport, job: JobRef, steps: list[str], confirm_s: float,
                 hosts: list[str] | None = None) -> CancelResult:
        deadline = time.monotonic() + confirm_s
        remote: dict[str, tuple[list[int], str]] = {}
        while True:
            group = self._group_alive(transport, job.job_id)
            pids = leftover_pids(transport, job.run_id)
            remote = node_processes(transport, job.run_id, hosts) if hosts else {}
            remote_left = {h: v for h, v in remote.items() if v[0] or v[1]}
            if not group and not pids and not remote_left:
                where = f"on {transport.name}" + (f" or on any of its nodes ({', '.join(hosts)})" if hosts else "")
                steps.append(f"confirmed: process group {job.job_id} is empty and no process of run "
                             f"{job.run_id} remains {where}")
                return CancelResult(True, "; ".join(steps))
            if time.monotonic() >= deadline:
                break
            if pids and not group:
                # Escaped the group (a daemonised child): they carry the run id, so kill them by pid.
                transport.run(["kill", "-KILL", *map(str, pids)], timeout=30, check=False)
            if any(p for p, _ in remote_left.values()):
                node_processes(transport, job.run_id, [h for h, (p, _) in remote_left.items() if p], "KILL")
            time.sleep(0.5)
        nodes = "; ".join(f"{h}: {err or p}" for h, (p, err) in remote.items() if p or err)
        steps.append(f"NOT confirmed: after {confirm_s:g} s, group alive={group}, leftover pids={pids}"
                     + (f", on other nodes: {nodes}" if nodes else ""))
        return CancelResult(False, "; ".join(steps))


class HostfileBackend(ProcessGroupBackend):
    name = "hostfile"


class LocalBackend(ProcessGroupBackend):
    name = "local"


# Slurm job states (squeue %T) mapped to run states.
SLURM_STATES = {
    "PENDING": "pending", "CONFIGURING": "pending", "REQUEUED": "pending", "REQUEUE_HOLD": "pending",
    "REQUEUE_FED": "pending", "PREEMPTED": "pending", "RESV_DEL_HOLD": "pending", "SUSPENDED": "pending",
    "STOPPED": "pending", "RESIZING": "running", "RUNNING": "running", "SIGNALING": "running",
    "COMPLETING": "completing", "STAGE_OUT": "completing", "COMPLETED": "finished",
    "FAILED": "failed", "NODE_FAIL": "failed", "OUT_OF_MEMORY": "failed", "TIMEOUT": "failed",
    "BOOT_FAIL": "failed", "DEADLINE": "failed", "SPECIAL_EXIT": "failed",
    "CANCELLED": "cancelled", "REVOKED": "cancelled",
}


def _aggregate(tasks: list[tuple[str, str]]) -> tuple[str, str]:
    """One (state, reason) for a job from its tasks: active states first, then the worst ending."""
    if len(tasks) == 1:
        return tasks[0]
    rank = {"running": 0, "completing": 1, "pending": 2, "unknown": 3, "failed": 4, "cancelled": 5, "finished": 6}
    mapped = sorted(tasks, key=lambda t: rank[SLURM_STATES.get(t[0].split()[0].rstrip("+"), "unknown")])
    state, reason = mapped[0]
    counts: dict[str, int] = {}
    for s, _ in tasks:
        counts[s] = counts.get(s, 0) + 1
    summary = ", ".join(f"{n} {s.lower()}" for s, n in sorted(counts.items()))
    return state, f"{reason}; array tasks: {summary}".lstrip("; ") if reason not in ("", "None") else \
        f"array tasks: {summary}"


class SlurmBackend(Backend):
    name = "slurm"

    def submit(self, transport: Transport, run_dir: str, run_id: str) -> str:
        argv = ["env", f"{RUN_ID_ENV}={run_id}", "sbatch", "--parsable", f"--chdir={run_dir}",
                f"{run_dir}/{RunPaths.SLURM_SCRIPT}"]
        try:
            res = transport.run(argv, timeout=120)
        except RemoteCommandError as exc:
            raise BackendError(f"sbatch refused run {run_id}: {exc}") from exc
        job_id = res.stdout.strip().split(";")[0].strip()
        if not job_id.isdigit():
            raise BackendError(f"sbatch printed no job id for run {run_id}: {res.stdout!r} {res.stderr!r}")
        return job_id

    def query(self, transport: Transport, job_ids: list[str]) -> dict[str, tuple[str, str]]:
        """{job id: (SLURM STATE, reason)} from one squeue call (jobs Slurm no longer knows are absent)."""
        ids = [j for j in job_ids if j.isdigit()]
        if not ids:
            return {}
        fmt = ["-h", "-t", "all", "-o", "%i|%T|%r"]
        res = transport.run(["squeue", *fmt, "-j", ",".join(ids)], timeout=60, check=False)
        if res.rc != 0:
            if "Invalid job id" not in res.stderr:
                raise RemoteCommandError(transport.name, "squeue", res.rc, res.stderr)
            # Every id has aged out of slurmctld (MinJobAge) or one of them has: list all jobs instead.
            res = transport.run(["squeue", *fmt], timeout=60)
        tasks: dict[str, list[tuple[str, str]]] = {}
        for line in res.stdout.splitlines():
            parts = line.strip().split("|", 2)
            if len(parts) != 3:
                continue
            # An array job shows one line per task (123_0, 123_[1-3]): aggregated under the array's id.
            base = parts[0].split("_", 1)[0]
            if base in ids:
                tasks.setdefault(base, []).append((parts[1].strip(), parts[2].strip()))
        return {job_id: _aggregate(lines) for job_id, lines in tasks.items()}

    def eval_jobs(self, transport: Transport, run_ids: list[str]) -> dict[str, list[tuple[str, str, int]]]:
        """{run id: [(job id, SLURM STATE, step)]} of the runs' evaluation jobs Slurm still holds as queued or
        running (placement slurm: each checkpoint's evaluation is a job named tunedeck-<run>-eval-step-<N>).
        One squeue call for every run."""
        if not run_ids:
            return {}
        res = transport.run(["squeue", "-h", "--me", "-o", "%i|%T|%j"], timeout=60, check=False)
        if res.rc != 0:
            raise RemoteCommandError(transport.name, "squeue", res.rc, res.stderr)
        prefixes = {eval_job_prefix(r): r for r in run_ids}
        out: dict[str, list[tuple[str, str, int]]] = {}
        for line in res.stdout.splitlines():
            parts = line.strip().split("|", 2)
            if len(parts) != 3:
                continue
            job_id, state, name = (p.strip() for p in parts)
            for prefix, run_id in prefixes.items():
                step = step_of_job_name(run_id, name) if name.startswith(prefix) else None
                if step is not None and SLURM_STATES.get(state.split()[0].rstrip("+")) in ("pending", "running",
                                                                                          "completing"):
                    out.setdefault(run_id, []).append((job_id, state, step))
        return out

    def _exit_code(self, transport: Transport, job_id: str) -> str:
        res = transport.run(["scontrol", "show", "job", "-o", job_id], timeout=30, check=False)
        m = re.search(r"\bExitCode=(\S+)", res.stdout)
        return m.group(1) if m else ""

    def status_many(self, transport: Transport, jobs: list[JobRef]) -> dict[str, JobStatus]:
        found = self.query(transport, [j.job_id for j in jobs])
        out: dict[str, JobStatus] = {}
        for job in jobs:
            if job.job_id not in found:
                out[job.run_id] = JobStatus("unknown", f"Slurm no longer knows job {job.job_id}")
                continue
            slurm_state, reason = found[job.job_id]
            base = slurm_state.split()[0].rstrip("+")
            state = SLURM_STATES.get(base, "unknown")
            reason = "" if reason in ("None", "(null)") else reason
            if state == "failed":
                code = self._exit_code(transport, job.job_id)
                detail = ", ".join(x for x in (reason, f"exit code {code}" if code else "") if x)
                out[job.run_id] = JobStatus("failed", f"{base}" + (f" ({detail})" if detail else ""))
            elif state in ("pending", "cancelled"):
                text = base if base not in ("PENDING", "CANCELLED") else ""
                out[job.run_id] = JobStatus(state, ", ".join(x for x in (text, reason) if x))
            else:
                out[job.run_id] = JobStatus(state, "" if base in ("RUNNING", "COMPLETED") else base)
        ended = [j.run_id for j in jobs if out.get(j.run_id) is not None and out[j.run_id].state in ("finished", "failed")]
        if ended:
            # Training is over but its evaluation jobs are queued or running: the run is still completing
            # (its records keep streaming in); its own ending is said in the reason.
            for run_id, evals in self.eval_jobs(transport, ended).items():
                st = out[run_id]
                what = ", ".join(f"step {step} ({state.lower()}, job {jid})" for jid, state, step in sorted(evals, key=lambda e: e[2]))
                out[run_id] = JobStatus("completing", f"training {st.state}" + (f" ({st.reason})" if st.reason else "")
                                        + f"; evaluating {what}", st.exit_code)
        return out

    def cancel(self, transport: Transport, job: JobRef, *, grace_s: float = CANCEL_GRACE_S,
               confirm_s: float = CONFIRM_WAIT_S) -> CancelResult:
        # scancel sends SIGTERM to the batch shell and its steps (the job checkpoints), then SIGKILL after
        # the cluster's KillWait.
        res = transport.run(["scancel", job.job_id], timeout=60, check=False)
        steps = [f"scancel {job.job_id}" + (f" (exit {res.rc}: {res.stderr.strip()})" if res.rc else "")]
        deadline = time.monotonic() + grace_s + confirm_s
        state = ""
        while time.monotonic() < deadline:
            found = self.query(transport, [job.job_id])
            state = found.get(job.job_id, ("GONE", ""))[0]
            if SLURM_STATES.get(state.split()[0].rstrip("+"), "") in TERMINAL_STATUSES or \
                    state == "GONE":
                break
            time.sleep(0.5)
        else:
            steps.append(f"NOT confirmed: Slurm still shows job {job.job_id} as {state}")
            return CancelResult(False, "; ".join(steps))
        steps.append(f"Slurm shows job {job.job_id} as {state}")
        # The run's evaluation jobs, now that the job that submits them has ended (none can appear any more).
        evals = self.eval_jobs(transport, [job.run_id]).get(job.run_id, [])
        if evals:
            ids = [jid for jid, _, _ in evals]
            res = transport.run(["scancel", *ids], timeout=60, check=False)
            steps.append(f"scancel of {len(ids)} evaluation job(s) {', '.join(ids)}"
                         + (f" (exit {res.rc}: {res.stderr.strip()})" if res.rc else ""))
            while True:
                left = self.eval_jobs(transport, [job.run_id]).get(job.run_id, [])
                if not left:
                    steps.append("no evaluation job of the run is left in squeue")
                    break
                if time.monotonic() >= deadline:
                    steps.append(f"NOT confirmed: evaluation jobs {', '.join(j for j, _, _ in left)} remain")
                    return CancelResult(False, "; ".join(steps))
                time.sleep(0.5)
        while True:
            pids = leftover_pids(transport, job.run_id)
            if not pids:
                steps.append(f"confirmed: no process of run {job.run_id} remains on {transport.name}")
                return CancelResult(True, "; ".join(steps))
            if time.monotonic() >= deadline:
                steps.append(f"NOT confirmed: processes {pids} of run {job.run_id} remain on {transport.name}")
                return CancelResult(False, "; ".join(steps))
            time.sleep(0.5)


_BACKENDS: dict[str, type[Backend]] = {"slurm": SlurmBackend, "hostfile": HostfileBackend, "local": LocalBackend}


def describe(result: CommandResult) -> str:
    return (result.stderr or result.stdout).strip()[-500:]
