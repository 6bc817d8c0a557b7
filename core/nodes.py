"""Nodes and ranks of a run: who ran where, when each process was last heard from, which node failed and why.

Pure functions over the per-rank records the job writes (core.records.rank_record: every training process
rewrites its own ranks/rank-N.json with its host, step and, at the end, how it ended) and over the launcher
lines of the job's output that name a node (srun, pdsh). Standard library only.

Telling the failed node from its victims: when one node dies, the ranks elsewhere fail too, a moment later,
with a communication error ("Connection closed by peer", a collective timing out). So the node that failed
is, in this order: the host of the first rank that failed with an error of its own (an exception that is not
about a peer); else the host of a rank whose heartbeat stalled far longer than any other's (it hung, then
woke and failed like the rest); else the host of the first rank that stopped without writing how it ended
(SIGKILL, OOM killer, power or network loss: its record still says running); else the first node the
launcher names; else the first rank that failed at all.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from core.records import RANK_ENDED

# A rank heard from less recently than this (and not ended) is silent: hung, killed, or its node is gone.
SILENT_AFTER_S = 30.0
# All ranks ending within this many seconds of each other, none with a word: the whole job was killed.
TOGETHER_S = 10.0
# A rank whose heartbeat stopped this long (and far longer than any other's) hung: frozen, or its node did.
STALL_MIN_S = 15.0

# Errors that say a peer went away (the rank reporting them is a victim, not the cause).
PEER_ERROR = re.compile(
    r"connection (closed|reset) by peer|broken pipe|connection refused|no route to host|timed out|timeout"
    r"|remote process exited|peer .*(closed|exited|died)|communicator was aborted|NCCL error|gloo",
    re.IGNORECASE)
# Lines in which a launcher names the node a task ended on.
SRUN_LINE = re.compile(r"^srun: error: (?P<host>[A-Za-z0-9_.-]+): tasks? (?P<tasks>[0-9,\[\]-]+): (?P<what>.+?)\s*$",
                       re.MULTILINE)
PDSH_LINE = re.compile(r"^pdsh@[A-Za-z0-9_.-]+: (?P<host>[A-Za-z0-9_.-]+): (?P<what>ssh exited with exit code \d+)\s*$",
                       re.MULTILINE)


@dataclass(frozen=True)
class RankState:
    """One training process, from its latest record."""

    rank: int
    local_rank: int
    host: str
    pid: int
    attempt: int
    world_size: int
    state: str  # starting / running / finished / preempted / failed
    step: int | None
    started_t: float
    t: float  # last heartbeat
    error: str | None = None
    stalled_s: float = 0.0  # the longest gap between its heartbeats: long for a process that hung, then woke


    @property
    def ended(self) -> bool:
        return self.state in RANK_ENDED

    def silent_for(self, now: float) -> float:
        """Seconds since the last heartbeat (0 for a process that ended: it has nothing more to say)."""
        return 0.0 if self.ended else max(0.0, now - self.t)

    @classmethod
    def from_record(cls, rec: dict[str, Any]) -> RankState:
        return cls(rank=int(rec["rank"]), local_rank=int(rec["local_rank"]), host=str(rec["host"]), pid=int(rec["pid"]),
                   attempt=int(rec["attempt"]), world_size=int(rec["world_size"]), state=str(rec["state"]),
                   step=rec.get("step"), started_t=float(rec["started_t"]), t=float(rec["t"]), error=rec.get("error"),
                   stalled_s=float(rec.get("stalled_s") or 0.0))


@dataclass(frozen=True)
class NodeState:
    """The ranks of one host (in rank order) and what they add up to."""

    host: str
    ranks: tuple[RankState, ...]

    @property
    def last_heartbeat(self) -> float:
        return max(r.t for r in self.ranks)

    @property
    def state(self) -> str:
        states = {r.state for r in self.ranks}
        for worst in ("failed", "running", "starting", "preempted"):
            if worst in states:
                return worst
        return "finished"


@dataclass(frozen=True)
class NodeFailure:
    """The node a failed run lost first (host None: no single node; the whole job was stopped from outside)."""

    host: str | None
    ranks: tuple[int, ...]
    reason: str

    def summary(self) -> str:
        if self.host is None:
            return self.reason
        which = f"rank {self.ranks[0]}" if len(self.ranks) == 1 else \
            f"ranks {', '.join(map(str, self.ranks))}" if self.ranks else "no rank recorded"
        return f"node {self.host} failed ({which}): {self.reason}"


def latest_attempt(records: Iterable[dict[str, Any]]) -> list[RankState]:
    """The ranks of the newest attempt, in rank order (older attempts' leftovers are dropped)."""
    ranks = [RankState.from_record(r) for r in records]
    if not ranks:
        return []
    newest = max(r.attempt for r in ranks)
    return sorted((r for r in ranks if r.attempt == newest), key=lambda r: r.rank)


def nodes(ranks: Sequence[RankState]) -> list[NodeState]:
    """Ranks grouped by host, hosts in the order of their lowest rank (rank 0's host, the rendezvous, first)."""
    by_host: dict[str, list[RankState]] = {}
    for r in sorted(ranks, key=lambda r: r.rank):
        by_host.setdefault(r.host, []).append(r)
    return [NodeState(host, tuple(rs)) for host, rs in by_host.items()]


def launcher_failures(log_text: str) -> list[tuple[str, str]]:
    """(host, what) for every line of srun or pdsh that names a node a task ended badly on, in log order."""
    found = [(m.start(), m["host"], f"srun: task {m['tasks']} on {m['host']}: {m['what']}")
             for m in SRUN_LINE.finditer(log_text)]
    found += [(m.start(), m["host"], f"pdsh: {m['host']}: {m['what']}") for m in PDSH_LINE.finditer(log_text)]
    return [(host, what) for _, host, what in sorted(found)]


def _clock(t: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(t))


def _is_peer_error(error: str | None) -> bool:
    return bool(error) and bool(PEER_ERROR.search(error or ""))


def diagnose_failure(records: Iterable[dict[str, Any]], log_text: str = "") -> NodeFailure | None:
    """Which node a failed run lost first, and why (see the module docstring); None without any evidence."""
    ranks = latest_attempt(records)
    launcher = launcher_failures(log_text)
    by_host: dict[str, str] = {}
    for host, what in launcher:
        by_host.setdefault(host, what)
    own = [r for r in ranks if r.state == "failed" and r.error and not _is_peer_error(r.error)]
    if own:
        first = min(own, key=lambda r: r.t)
        same = tuple(r.rank for r in own if r.host == first.host)
        return NodeFailure(first.host, same, f"rank {first.rank} failed: {first.error}")
    stalled = [r for r in ranks if r.stalled_s >= STALL_MIN_S
               and all(r.stalled_s > 2 * o.stalled_s for o in ranks if o.rank != r.rank)]
    if stalled:
        # Hung, then woken (SIGCONT before Slurm's kill, a node that came back): its error is a consequence.
        first = stalled[0]
        end = f"; then {first.state}" + (f": {first.error}" if first.error else "")
        return NodeFailure(first.host, (first.rank,),
                           f"rank {first.rank} stopped answering for {first.stalled_s:.0f} s (no heartbeat: the "
                           f"process hung, or its node froze or lost its network){end}")
    lost = [r for r in ranks if not r.ended]
    if lost:
        if len(lost) == len(ranks) and len(ranks) > 1 and max(r.t for r in lost) - min(r.t for r in lost) < TOGETHER_S:
            hosts = ", ".join(dict.fromkeys(r.host for r in ranks))
            why = f"; {launcher[0][1]}" if launcher else ""
            return NodeFailure(None, tuple(r.rank for r in ranks),
                               f"no process recorded an end: all {len(ranks)} ranks on {hosts} stopped together at "
                               f"{_clock(max(r.t for r in lost))} (killed from outside: time limit, OOM killer, "
                               f"scancel){why}")
        first = min(lost, key=lambda r: r.t)
        on_host = tuple(r.rank for r in lost if r.host == first.host)
        ended = [r.t for r in ranks if r.ended]
        gap = f", {max(ended) - first.t:.0f} s before the other ranks ended" if ended else ""
        parts = [f"{'rank' if len(on_host) == 1 else 'ranks'} {', '.join(map(str, on_host))} stopped without "
                 f"recording an end (last heartbeat {_clock(first.t)}{gap}): its processes were killed or hung, or "
                 "the node went down"]
        if first.host in by_host:
            parts.append(by_host[first.host])
        victims = sorted((r for r in ranks if r.state == "failed"), key=lambda r: r.t)
        if victims:
            parts.append(f"then rank {victims[0].rank} on {victims[0].host} failed: {victims[0].error}")
        return NodeFailure(first.host, on_host, "; ".join(parts))
    if launcher:
        host, what = launcher[0]
        return NodeFailure(host, tuple(r.rank for r in ranks if r.host == host), what)
    failed = sorted((r for r in ranks if r.state == "failed"), key=lambda r: r.t)
    if failed:
        first = failed[0]
        return NodeFailure(first.host, (first.rank,), f"rank {first.rank} failed: {first.error}")
    return None


def silent_ranks(ranks: Sequence[RankState], now: float | None = None,
                 after_s: float = SILENT_AFTER_S) -> list[RankState]:
    """Ranks of a running job not heard from for `after_s` (hung, or their node is gone)."""
    now = time.time() if now is None else now
    return [r for r in ranks if r.silent_for(now) > after_s]


def format_nodes(ranks: Sequence[RankState], now: float | None = None) -> list[str]:
    """Plain-text lines, one per rank grouped by node: host, rank, state, step, last heartbeat, error."""
    if not ranks:
        return []
    now = time.time() if now is None else now
    groups = nodes(ranks)
    lines = [f"nodes: {len(groups)}, world size {ranks[0].world_size} (attempt {ranks[0].attempt}); "
             f"rendezvous on {groups[0].host} (rank 0)"]
    width = max(len(g.host) for g in groups)
    for group in groups:
        for r in group.ranks:
            beat = f"heartbeat {_clock(r.t)}"
            silent = r.silent_for(now)
            if silent > SILENT_AFTER_S:
                beat += f" (silent for {silent:.0f} s)"
            state = r.state if r.ended or silent <= SILENT_AFTER_S else f"{r.state}?"
            if r.stalled_s >= STALL_MIN_S:
                beat += f" (stalled {r.stalled_s:.0f} s)"
            line = (f"  {group.host.ljust(width)}  rank {r.rank:<3} local {r.local_rank:<2} pid {r.pid:<8} "
                    f"{state:<10} step {'-' if r.step is None else r.step:<6} {beat}")
            if r.error:
                line += f"  {r.error.splitlines()[0][:200]}"
            lines.append(line)
    return lines
