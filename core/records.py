"""Run directory layout and the JSONL record formats, shared by the writer (the job) and the readers.

Standard library only: this module is shipped with every run bundle so the cluster-side job writes records
with the same code the app reads them with. Records are append-only JSONL, one writer per file.

metrics.jsonl  t, attempt, step, epoch, samples, tokens, loss, lr, grad_norm, tokens_per_s [, gpu_mem_gb, ...]
evals.jsonl    t, attempt, step, checkpoint, benchmark, subset, n_tasks, samples_per_task, temperature,
               pass@1 [, pass@10, ...] [, sandbox: the sandbox mode its samples ran in]
events.jsonl   t, attempt, event, detail
eval_events.jsonl  the same, written by the evaluation processes and the evaluation queue (eval_requested for a
               re-queue, eval_started / eval_progress / eval_finished / eval_failed / eval_cancelled), each
               append under RunPaths.EVAL_WRITE_LOCK; eval_started's detail.sandbox is sandbox_capabilities():
               mode "unconfined" marks its pass@1
ranks/rank-N.json  one per training process, rewritten in place (temp + rename) by that process alone every
               few seconds: t (last heartbeat), attempt, rank, local_rank, world_size, host, pid, state,
               started_t, step [, error, stalled_s]. Not streamed: the status poll reads them (one small file per rank).
NaN and infinities are written as null.
"""

from __future__ import annotations

import json
import json.scanner
import math
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

RECORD_FORMAT_VERSION = 1


class RunPaths:
    """Where each file of a run lives: the one place that knows the run directory layout."""

    RUN_JSON = "run.json"
    CONFIG_YAML = "config.yaml"
    CONFIG_JSON = "config.json"  # the resolved config (plain JSON + derived values) the job reads
    DS_CONFIG = "ds_config.json"
    METRICS = "metrics.jsonl"
    EVALS = "evals.jsonl"
    EVENTS = "events.jsonl"
    STDOUT = "stdout.log"
    HEARTBEAT = "heartbeat"
    CHECKPOINTS = "checkpoints"
    SAMPLES = "samples"  # per-checkpoint evaluation samples (JSONL per benchmark)
    HOSTFILE = "hostfile"
    DEEPSPEED_ENV = ".deepspeed_env"
    SLURM_SCRIPT = "launch.slurm"
    LOCAL_SCRIPT = "launch.sh"
    JOB_CODE = "code"  # the shipped job code (core/ + remote/job/) lives here
    COMPLETE_MARKER = "COMPLETE"  # written last into a checkpoint directory
    ATTEMPTS = "attempts"  # how many times the job has started in this run directory
    TOKENIZER = "tokenizer"  # a tokenizer trained at start (train:bpe), reused on resume
    EVAL_LOG = "eval.log"  # stdout/stderr of the evaluation subprocesses
    EVAL_EVENTS = "eval_events.jsonl"  # the evaluation processes' own events (events.jsonl has one writer)
    EVAL_LOCK = ".eval.lock"  # evaluations sharing the job's devices take turns on this lock
    EVAL_WRITE_LOCK = ".eval-write.lock"  # held for each append to evals.jsonl / eval_events.jsonl (one writer)
    EVAL_SLURM = "eval.slurm"  # the batch script of one checkpoint's evaluation (placement slurm)
    PGID = "pgid"  # process group of a detached hostfile/local job
    EXIT_STATUS = "exit_status"  # the launch script's exit status, written by the detach wrapper
    RANKS = "ranks"  # one heartbeat/host record per training process: ranks/rank-N.json

    STREAMED = (METRICS, EVALS, EVENTS, EVAL_EVENTS, STDOUT)  # followed into the run store by byte offset

    def __init__(self, root: str | os.PathLike[str]):
        self.root = Path(root)

    def __truediv__(self, name: str) -> Path:
        return self.root / name

    @property
    def run_json(self) -> Path:
        return self.root / self.RUN_JSON

    @property
    def config_yaml(self) -> Path:
        return self.root / self.CONFIG_YAML

    @property
    def config_json(self) -> Path:
        return self.root / self.CONFIG_JSON

    @property
    def ds_config(self) -> Path:
        return self.root / self.DS_CONFIG

    @property
    def metrics(self) -> Path:
        return self.root / self.METRICS

    @property
    def evals(self) -> Path:
        return self.root / self.EVALS

    @property
    def events(self) -> Path:
        return self.root / self.EVENTS

    @property
    def stdout(self) -> Path:
        return self.root / self.STDOUT

    @property
    def heartbeat(self) -> Path:
        return self.root / self.HEARTBEAT

    @property
    def checkpoints(self) -> Path:
        return self.root / self.CHECKPOINTS

    @property
    def samples(self) -> Path:
        return self.root / self.SAMPLES

    @property
    def ranks(self) -> Path:
        return self.root / self.RANKS

    def rank_file(self, rank: int) -> Path:
        return self.ranks / f"rank-{int(rank)}.json"

    def checkpoint(self, step: int) -> Path:
        return self.checkpoints / f"checkpoint-{step}"

    @staticmethod
    def sample_file_name(step: int, benchmark: str) -> str:
        """The per-sample results of one evaluation, under samples/: step-N-BENCH.jsonl."""
        return f"step-{step}-{benchmark}.jsonl"

    def complete_checkpoints(self) -> list[tuple[int, Path]]:
        """(step, dir) of every checkpoint that has its completion marker, oldest first."""
        found = []
        if self.checkpoints.is_dir():
            for d in self.checkpoints.iterdir():
                name = d.name
                if name.startswith("checkpoint-") and name[11:].isdigit() and (d / self.COMPLETE_MARKER).exists():
                    found.append((int(name[11:]), d))
        return sorted(found)


# ---------------------------------------------------------------------------------------------- schema

# A run's status, as the store keeps it; a run in a terminal status has ended (the one definition: the store,
# the app and the evaluation states read these).
RUN_STATUSES = ("created", "pending", "running", "completing", "finished", "failed", "cancelled", "unknown")
TERMINAL_STATUSES = ("finished", "failed", "cancelled")
METRIC_REQUIRED = ("t", "attempt", "step", "epoch", "samples", "tokens", "loss", "lr", "grad_norm", "tokens_per_s")
METRIC_OPTIONAL = ("gpu_mem_gb", "gpu_mem_reserved_gb", "step_time_s")
EVAL_REQUIRED = ("t", "attempt", "step", "checkpoint", "benchmark", "subset", "n_tasks", "samples_per_task", "temperature", "pass@1")
EVENT_REQUIRED = ("t", "attempt", "event", "detail")
SUBSETS = ("all", "clean", "contaminated")
SANDBOX_UNCONFINED = "unconfined"  # the sandbox mode of `evaluation.sandbox: unconfined` (no namespaces)
EVENT_KINDS = (
    "started",
    "attention",
    "performance",  # the job's speed-relevant choices: optimizer, kernels, data loading, each with its reason
    "training_plan",  # the Trainer's total optimizer steps (from the batch math) and the step it starts at
    "resumed",
    "checkpoint_saved",
    "eval_requested",
    "eval_started",
    "eval_progress",
    "eval_finished",
    "eval_failed",
    "eval_cancelled",
    "preempted",
    "finished",
    "failed",
    "cancelled",
    "warning",
)
RANK_REQUIRED = ("t", "attempt", "rank", "local_rank", "world_size", "host", "pid", "state", "started_t", "step")
# starting: before training began; running: training; then how this process ended. A record still "starting" or
# "running" after the run ended belongs to a process that died without a word (killed, or its node went down).
RANK_STATES = ("starting", "running", "finished", "preempted", "failed")
RANK_ENDED = ("finished", "preempted", "failed")
KIND_REQUIRED = {"metrics": METRIC_REQUIRED, "evals": EVAL_REQUIRED, "events": EVENT_REQUIRED, "ranks": RANK_REQUIRED}
FILE_KIND = {RunPaths.METRICS: "metrics", RunPaths.EVALS: "evals", RunPaths.EVENTS: "events",
             RunPaths.EVAL_EVENTS: "events"}

_NUMBER = (int, float)


def json_safe(value: Any) -> Any:
    """NaN/inf become None (JSON null), also inside nested dicts/lists; everything else passes through."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


_finite = json_safe


def _is_number(value: Any) -> bool:
    return isinstance(value, _NUMBER) and not isinstance(value, bool)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def metric_record(*, step: int, attempt: int, epoch: float, samples: int, tokens: int, loss: float | None,
                  lr: float | None, grad_norm: float | None, tokens_per_s: float | None, t: float | None = None,
                  **extra: float | None) -> dict[str, Any]:
    unknown = set(extra) - set(METRIC_OPTIONAL)
    if unknown:
        raise ValueError(f"unknown metric fields: {sorted(unknown)}")
    rec = {"t": time.time() if t is None else t, "attempt": attempt, "step": step, "epoch": epoch,
           "samples": samples, "tokens": tokens, "loss": loss, "lr": lr, "grad_norm": grad_norm,
           "tokens_per_s": tokens_per_s}
    rec.update(extra)
    return {k: _finite(v) for k, v in rec.items()}


def eval_record(*, step: int, attempt: int, checkpoint: str, benchmark: str, subset: str, n_tasks: int,
                samples_per_task: int, temperature: float, pass_at: dict[int, float], t: float | None = None,
                sandbox: str | None = None) -> dict[str, Any]:
    if subset not in SUBSETS:
        raise ValueError(f"subset must be one of {SUBSETS}, got {subset!r}")
    if 1 not in pass_at:
        raise ValueError("pass_at must include k=1")
    rec: dict[str, Any] = {"t": time.time() if t is None else t, "attempt": attempt, "step": step,
                           "checkpoint": checkpoint, "benchmark": benchmark, "subset": subset, "n_tasks": n_tasks,
                           "samples_per_task": samples_per_task, "temperature": temperature}
    for k in sorted(pass_at):
        rec[f"pass@{k}"] = _finite(pass_at[k])
    if sandbox is not None:
        rec["sandbox"] = sandbox  # the sandbox mode its samples ran in (remote/job/sandbox.py)
    return rec


def unconfined_evaluations(events: Iterable[dict[str, Any]]) -> set[tuple[int, int]]:
    """(attempt, step) of every evaluation whose eval_started event says its samples ran unconfined
    (`evaluation.sandbox: unconfined`): the app marks the pass@1 they produced."""
    out = set()
    for e in events:
        detail = e.get("detail") if e.get("event") == "eval_started" else None
        sandbox = detail.get("sandbox") if isinstance(detail, dict) else None
        if isinstance(sandbox, dict) and sandbox.get("mode") == SANDBOX_UNCONFINED:
            step, attempt = detail.get("step"), e.get("attempt")
            if _is_int(step) and _is_int(attempt):
                out.add((int(attempt), int(step)))
    return out


def event_record(event: str, attempt: int, detail: dict[str, Any] | None = None, t: float | None = None) -> dict[str, Any]:
    if event not in EVENT_KINDS:
        raise ValueError(f"unknown event {event!r} (one of {EVENT_KINDS})")
    return {"t": time.time() if t is None else t, "attempt": attempt, "event": event,
            "detail": json_safe(detail or {})}


# What the run store (SQLite) can hold: 64-bit integers, UTF-8 text. Deeper nesting than this is no record
# the job writes, and would exhaust the recursion of whoever walks it.
INT64_MIN, INT64_MAX = -(1 << 63), (1 << 63) - 1
MAX_RECORD_DEPTH = 32


def _unstorable(value: Any, where: str, depth: int = 0) -> str | None:
    """Why `value` cannot be stored as it is (an integer beyond 64 bits, text SQLite cannot encode, nesting
    too deep), naming the field; None when it can."""
    if isinstance(value, bool) or value is None or isinstance(value, float):
        return None
    if isinstance(value, int):
        return None if INT64_MIN <= value <= INT64_MAX else f"field {where!r}: integer out of the 64-bit range"
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return f"field {where!r}: text with an unpaired surrogate (not UTF-8)"
        return None
    if depth >= MAX_RECORD_DEPTH:
        return f"field {where!r}: nested more than {MAX_RECORD_DEPTH} levels deep"
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, item in items:
        problem = (_unstorable(key, f"{where}.{key!r}", depth + 1) if isinstance(key, str) else None) or \
            _unstorable(item, f"{where}.{key}", depth + 1)
        if problem:
            return problem
    return None


def rank_record(*, rank: int, local_rank: int, world_size: int, host: str, pid: int, attempt: int, state: str,
                started_t: float, step: int | None = None, error: str | None = None, stalled_s: float | None = None,
                t: float | None = None) -> dict[str, Any]:
    """One training process's heartbeat/host record (ranks/rank-N.json). `stalled_s`: the longest time this
    process went without a heartbeat (a process that hung, or whose node froze, shows it once it wakes)."""
    if state not in RANK_STATES:
        raise ValueError(f"rank state must be one of {RANK_STATES}, got {state!r}")
    rec: dict[str, Any] = {"t": time.time() if t is None else t, "attempt": attempt, "rank": rank,
                           "local_rank": local_rank, "world_size": world_size, "host": host, "pid": pid,
                           "state": state, "started_t": started_t, "step": step}
    if error is not None:
        rec["error"] = error[:2000]
    if stalled_s is not None:
        rec["stalled_s"] = round(float(stalled_s), 1)
    return rec


def write_rank_record(path: str | os.PathLike[str], rec: dict[str, Any]) -> None:
    """Replace a rank record whole (temp + rename in the same directory: a reader never sees half of it)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".{p.name}.{os.getpid()}.tmp")
    tmp.write_bytes(encode_record(rec))
    tmp.replace(p)


_METRIC_KEYS = frozenset(METRIC_REQUIRED)
_METRIC_ALL_KEYS = frozenset(METRIC_REQUIRED + METRIC_OPTIONAL)
_NUMBER_TYPES = (int, float)
_NUMBER_OR_NULL = frozenset((int, float, type(None)))


def _plain_metric_ok(rec: Any) -> bool:
    """The common well-formed metric record (the trainer's fields only, numbers or null, integers within 64 bits,
    a finite time), checked with exact types in C-level loops: the fast path of validate_record, which every
    streamed line and every ingested record passes through. False sends the record to the full check."""
    if type(rec) is not dict or not _METRIC_KEYS <= rec.keys() <= _METRIC_ALL_KEYS:
        return False
    if type(rec["attempt"]) is not int or type(rec["step"]) is not int:
        return False
    values = rec.values()
    if not set(map(type, values)) <= _NUMBER_OR_NULL:
        return False
    t = rec["t"]
    if t is None or t - t != 0:  # null, NaN or infinite
        return False
    ints = [v for v in values if type(v) is int]
    return min(ints) >= INT64_MIN and max(ints) <= INT64_MAX


def validate_record(kind: str, rec: Any) -> list[str]:
    """Problems with a record of `kind` (metrics, evals, events, ranks); empty when it is well formed AND the run
    store can hold it as it is (what passes here never makes Store.ingest fail)."""
    if kind == "metrics" and _plain_metric_ok(rec):
        return []
    if not isinstance(rec, dict):
        return [f"a {kind} record must be a JSON object"]
    problems = [f"missing field {name!r}" for name in KIND_REQUIRED[kind] if name not in rec]
    for key, value in rec.items():
        problem = _unstorable(key, key) or _unstorable(value, key)
        if problem:
            problems.append(problem)
    if "t" in rec and not (_is_number(rec["t"]) and math.isfinite(rec["t"])):
        problems.append("field 't' must be a number (a finite one)")
    # attempt and step key the store's rows, so they must be whole numbers (1.0 would not match 1 there).
    for name in ("attempt", "step") if kind != "ranks" else ("attempt",):  # a rank has no step before training
        if name in rec and not _is_int(rec[name]):
            problems.append(f"field {name!r} must be an integer")
    if kind == "metrics":
        for name in METRIC_REQUIRED[3:] + METRIC_OPTIONAL:
            v = rec.get(name)
            if v is not None and not _is_number(v):
                problems.append(f"field {name!r} must be a number or null")
    elif kind == "evals":
        if rec.get("subset") not in SUBSETS:
            problems.append(f"field 'subset' must be one of {SUBSETS}")
        for name in ("checkpoint", "benchmark", "sandbox"):
            if name in rec and not isinstance(rec[name], str):
                problems.append(f"field {name!r} must be a string")
        for name in ("n_tasks", "samples_per_task"):
            if name in rec and not _is_int(rec[name]):
                problems.append(f"field {name!r} must be an integer")
        if "temperature" in rec and not _is_number(rec["temperature"]):
            problems.append("field 'temperature' must be a number")
        for key, v in rec.items():
            if key.startswith("pass@") and v is not None and not _is_number(v):
                problems.append(f"field {key!r} must be a number or null")
    elif kind == "ranks":
        for name in ("rank", "local_rank", "world_size", "pid"):
            if name in rec and not _is_int(rec[name]):
                problems.append(f"field {name!r} must be an integer")
        if rec.get("step") is not None and not _is_int(rec["step"]):
            problems.append("field 'step' must be an integer or null")
        if "started_t" in rec and not _is_number(rec["started_t"]):
            problems.append("field 'started_t' must be a number")
        if "host" in rec and not (isinstance(rec["host"], str) and rec["host"]):
            problems.append("field 'host' must be a non-empty string")
        if "state" in rec and rec["state"] not in RANK_STATES:
            problems.append(f"field 'state' must be one of {RANK_STATES}")
        if rec.get("error") is not None and not isinstance(rec["error"], str):
            problems.append("field 'error' must be a string or null")
        if rec.get("stalled_s") is not None and not _is_number(rec["stalled_s"]):
            problems.append("field 'stalled_s' must be a number or null")
    elif kind == "events":
        if "event" in rec and rec["event"] not in EVENT_KINDS:
            problems.append(f"unknown event {rec.get('event')!r}")
        if "detail" in rec and not isinstance(rec["detail"], dict):
            problems.append("field 'detail' must be a JSON object")
    return problems


def encode_record(rec: dict[str, Any]) -> bytes:
    """One JSONL line (NaN written as null; never emits the non-JSON NaN token)."""
    clean = {k: _finite(v) for k, v in rec.items()}
    return (json.dumps(clean, separators=(",", ":"), allow_nan=False, ensure_ascii=False) + "\n").encode("utf-8")


# ---------------------------------------------------------------------------------------------- writing


class JsonlWriter:
    """Appends records to one JSONL file, one whole line per write(2), flushed at once.

    A single O_APPEND write per record keeps lines whole even if the process dies mid-run; readers
    elsewhere (the streamer over SSH) see only complete lines or a partial tail they hold back.
    """

    def __init__(self, path: str | os.PathLike[str], fsync: bool = False):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self._fsync = fsync

    def write(self, rec: dict[str, Any]) -> None:
        data = encode_record(rec)
        view = memoryview(data)
        while view:
            n = os.write(self._fd, view)
            view = view[n:]
        if self._fsync:
            os.fsync(self._fd)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> JsonlWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def touch_heartbeat(path: str | os.PathLike[str]) -> None:
    """Write the current time to the heartbeat file (temp + rename: a reader never sees it empty)."""
    p = Path(path)
    tmp = p.with_name(f".{p.name}.{os.getpid()}.tmp")
    with open(tmp, "w") as f:
        f.write(f"{time.time():.3f}\n")
    tmp.replace(p)


def read_heartbeat(path: str | os.PathLike[str]) -> float | None:
    """The time in the heartbeat file, or None when it is missing, empty or garbage."""
    try:
        value = float(Path(path).read_text().strip())
    except (OSError, ValueError):
        return None
    return value if math.isfinite(value) else None


# ---------------------------------------------------------------------------------------------- reading


@dataclass
class CorruptLine:
    offset: int  # byte offset of the line's start in the file
    line_no: int  # 1-based line number in the file
    reason: str
    text: str


class CheckedRecords(list):
    """Records that passed validate_record for `kind`, as IncrementalReader returns them: Store.ingest does not
    check them a second time. A slice or a copy is a plain list, and is checked again."""

    __slots__ = ("kind",)

    def __init__(self, kind: str):
        super().__init__()
        self.kind = kind


@dataclass
class FeedResult:
    records: list[dict[str, Any]] = field(default_factory=list)
    offsets: list[int] = field(default_factory=list)  # byte offset just past each record's line
    line_nos: list[int] = field(default_factory=list)  # 1-based line number of each record
    corrupt: list[CorruptLine] = field(default_factory=list)


_JSON_SPACE = " \t\n\r\x0b\x0c"  # what bytes.strip() removes: the fast path strips the same
_scan_once = json.scanner.make_scanner(json.JSONDecoder(parse_constant=lambda _token: None))


class IncrementalReader:
    """Parses a JSONL file from bytes as they arrive.

    `feed(chunk)` returns the complete records in it; a partial last line is held back until its newline
    arrives. `offset` is the byte offset just past the last complete line consumed: store it and resume
    there (`IncrementalReader(kind, offset=...)`) to get every record exactly once. Corrupt lines are
    counted and reported, never fatal. `check_size(size)` reports truncation: a file shorter than what was
    already consumed has been rewritten or truncated.
    """

    MAX_LINE_BYTES = 16 << 20

    def __init__(self, kind: str | None = None, offset: int = 0, line_no: int = 0):
        self.kind = kind  # metrics/evals/events to validate, or None for any JSON object
        self.offset = offset
        self.line_no = line_no
        self._pending = bytearray()
        self._skipping = False  # inside an over-long line: drop bytes until its newline
        self.corrupt_count = 0
        self.truncated = False

    @property
    def pending_bytes(self) -> int:
        return len(self._pending)

    def reset(self) -> None:
        """Start again from byte 0 (after truncation was detected and the file is read anew)."""
        self.offset = 0
        self.line_no = 0
        self._pending.clear()
        self._skipping = False
        self.truncated = False

    def feed(self, chunk: bytes) -> FeedResult:
        result = FeedResult(CheckedRecords(self.kind)) if self.kind is not None else FeedResult()
        if self._skipping:
            nl = chunk.find(b"\n")
            if nl < 0:
                self.offset += len(chunk)
                return result
            # The over-long line ends here; it was reported (and its line number counted) when skipping began.
            self.offset += nl + 1
            chunk = chunk[nl + 1:]
            self._skipping = False
        self._pending += chunk
        start = 0
        buf = self._pending
        last_nl = buf.rfind(b"\n")
        if last_nl >= 0 and buf.isascii():
            start = self._feed_ascii(buf, last_nl, result)
        while True:
            nl = buf.find(b"\n", start)
            if nl < 0:
                break
            line = bytes(buf[start:nl])
            line_offset = self.offset
            self.offset += nl + 1 - start
            self.line_no += 1
            start = nl + 1
            stripped = line.strip()
            if not stripped:
                continue
            rec, reason = self._parse(stripped)
            if reason is not None:
                self.corrupt_count += 1
                result.corrupt.append(CorruptLine(line_offset, self.line_no, reason, line[:200].decode("utf-8", "replace")))
            else:
                result.records.append(rec)
                result.offsets.append(self.offset)
                result.line_nos.append(self.line_no)
        del buf[:start]
        if len(buf) > self.MAX_LINE_BYTES:
            # A "line" this long is garbage (a binary file, a runaway writer): skip it to its newline, report it
            # once. The offset moves past the skipped bytes so a resumed reader does not re-read them.
            self.corrupt_count += 1
            self.line_no += 1
            result.corrupt.append(CorruptLine(self.offset, self.line_no, f"line longer than {self.MAX_LINE_BYTES} bytes",
                                              bytes(buf[:200]).decode("utf-8", "replace")))
            self.offset += len(buf)
            buf.clear()
            self._skipping = True
        return result

    def _feed_ascii(self, buf: bytearray, last_nl: int, result: FeedResult) -> int:
        """The complete lines of an ASCII buffer (metrics lines always are), parsed with the C JSON scanner on
        one decoded string: ~3x faster than json.loads per line. A line it cannot take whole goes through
        _parse, so a corrupt line is reported exactly as the slow path reports it. Returns the bytes consumed."""
        text = buf[:last_nl + 1].decode("ascii")
        find = text.find
        offsets, records, line_nos = result.offsets, result.records, result.line_nos
        pos = 0
        while True:
            nl = find("\n", pos)
            if nl < 0:
                break
            line = text[pos:nl]
            line_offset = self.offset
            self.offset += nl + 1 - pos
            self.line_no += 1
            pos = nl + 1
            stripped = line.strip(_JSON_SPACE)
            if not stripped:
                continue
            try:
                rec, end = _scan_once(stripped, 0)
                whole = end == len(stripped)
            except (StopIteration, ValueError, RecursionError):
                rec, whole = None, False
            fine = whole and (not validate_record(self.kind, rec) if self.kind is not None else isinstance(rec, dict))
            if not fine:
                rec, reason = self._parse(stripped.encode("ascii"))
                if reason is not None:
                    self.corrupt_count += 1
                    result.corrupt.append(CorruptLine(line_offset, self.line_no, reason, line[:200]))
                    continue
            records.append(rec)
            offsets.append(self.offset)
            line_nos.append(self.line_no)
        return pos

    def _parse(self, line: bytes) -> tuple[dict[str, Any] | None, str | None]:
        try:
            # Another writer may have emitted Python's non-JSON NaN/Infinity tokens: read them as null.
            rec = json.loads(line, parse_constant=lambda _token: None)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            return None, f"not JSON: {exc}"
        except RecursionError:
            return None, "not JSON this reader can hold: nested too deeply"
        except ValueError as exc:  # an integer of more than 4300 digits (Python's int parsing limit)
            return None, f"not JSON this reader can hold: {exc}"
        if self.kind is not None:
            problems = validate_record(self.kind, rec)
            if problems:
                return None, "; ".join(problems)
        elif not isinstance(rec, dict):
            return None, "not a JSON object"
        return rec, None

    def check_size(self, size: int) -> bool:
        """True (and `truncated` set) when the file is now shorter than what was consumed."""
        if size < self.offset:
            self.truncated = True
        return self.truncated


def read_records(path: str | os.PathLike[str], kind: str | None = None) -> tuple[list[dict[str, Any]], list[CorruptLine]]:
    """All complete records of a JSONL file (a partial last line is left out)."""
    reader = IncrementalReader(kind)
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        return [], []
    res = reader.feed(data)
    return res.records, res.corrupt


def jsonl_objects(data: bytes, path: str | os.PathLike[str], error: type[Exception]) -> list[tuple[int, dict[str, Any]]]:
    """(line number, object) of every non-blank line of a JSONL file that must hold one JSON object per line;
    `error` is raised naming the first line that does not (`PATH:LINE: not JSON (...)`)."""
    rows = []
    for line_no, line in enumerate(data.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise error(f"{path}:{line_no}: not JSON ({exc})") from None
        if not isinstance(row, dict):
            raise error(f"{path}:{line_no}: expected a JSON object per line")
        rows.append((line_no, row))
    return rows
