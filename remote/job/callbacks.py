"""Trainer callbacks and helpers of the training job: records, heartbeat, SIGTERM, checkpoint completion.

Records are written by rank 0 only (one writer per file); the one exception is a `failed` event, which the
rank that failed writes itself (otherwise a crash on rank 1 would leave no trace in events.jsonl).

Checkpoints: the Trainer writes RUN_DIR/checkpoints/checkpoint-N (DeepSpeed shards, gathered 16-bit
model.safetensors, tokenizer, trainer state); `CheckpointCallback.on_save` then waits for every rank, copies
the resolved run config in, writes the COMPLETE marker last, hands the checkpoint to the evaluation queue
(remote.job.evalqueue: the run's placement decides where it runs), and prunes to the newest K complete
checkpoints (removing stale incomplete ones; one still awaiting its evaluation keeps its weights). Only
complete checkpoints are resumed from.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from core.config import RunConfig, resolved_dict
from core.fsutil import atomic_write_text
from core.records import (
    JsonlWriter,
    RunPaths,
    event_record,
    metric_record,
    rank_record,
    touch_heartbeat,
    write_rank_record,
)

# Files of a run directory that only the job uses (beside RunPaths' shared layout).
ATTEMPTS_FILE = RunPaths.ATTEMPTS  # how many times the job has started in this run directory
TOKENIZER_DIR = RunPaths.TOKENIZER  # a tokenizer trained at start (train:bpe), reused on resume
EVAL_LOG = RunPaths.EVAL_LOG  # stdout/stderr of the evaluation subprocesses
RUN_CONFIG_IN_CHECKPOINT = "tunedeck_config.json"  # the resolved run config, saved with every checkpoint
PARTITION_FILE = "partition-rank{rank}.json"  # TUNEDECK_DEBUG_PARTITION=1: each rank's share of the params
HEARTBEAT_S = float(os.environ.get("TUNEDECK_HEARTBEAT_S", "5"))


def dist_rank() -> int:
    return int(os.environ.get("RANK", "0"))


_CONTROL_GROUP: Any = None
# The job's collective timeout (cluster.collective_timeout_s), set by train(): the control group waits no longer
# than the training group (a new group would otherwise take torch's 30-minute default).
COLLECTIVE_TIMEOUT_S: float | None = None


def control_group() -> Any:
    """A gloo process group for small agreements between ranks (the preemption flag, token counts).

    A CPU tensor reduced over gloo never waits for the GPU; the same over NCCL needs a device tensor and a
    `.item()`, which stalls the host until the GPU has drained its queue. On a CPU run the default group is
    gloo already. Created on first use, which every rank reaches at the same point (collective call)."""
    global _CONTROL_GROUP
    import torch.distributed as dist

    if _CONTROL_GROUP is None:
        if dist.get_backend() == "gloo":
            _CONTROL_GROUP = dist.group.WORLD
        else:
            from datetime import timedelta

            timeout = timedelta(seconds=COLLECTIVE_TIMEOUT_S) if COLLECTIVE_TIMEOUT_S else None
            _CONTROL_GROUP = dist.new_group(backend="gloo", timeout=timeout)
    return _CONTROL_GROUP


def host_all_reduce(values: list[float], op: str = "sum") -> list[float]:
    """Reduce small numbers over all ranks on the host (`op`: sum or max); the values as given when alone."""
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return list(values)
    tensor = torch.tensor(values, dtype=torch.float64)  # exact for integers below 2**53
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX if op == "max" else dist.ReduceOp.SUM, group=control_group())
    return tensor.tolist()


def bump_attempt(paths: RunPaths) -> int:
    """1 + the number of earlier starts in this run directory (persisted; call on rank 0 only)."""
    attempt = read_attempt(paths) + 1
    atomic_write_text(paths / ATTEMPTS_FILE, f"{attempt}\n")
    return attempt


def read_attempt(paths: RunPaths) -> int:
    try:
        return int((paths / ATTEMPTS_FILE).read_text().strip())
    except (FileNotFoundError, ValueError):
        return 0


class Recorder:
    """Writes metrics and events for one attempt; a no-op on ranks other than 0."""

    def __init__(self, paths: RunPaths, attempt: int, enabled: bool):
        self.paths = paths
        self.attempt = attempt
        self.enabled = enabled
        self._events = JsonlWriter(paths.events) if enabled else None
        self._metrics = JsonlWriter(paths.metrics) if enabled else None

    def event(self, kind: str, detail: dict[str, Any] | None = None, t: float | None = None) -> None:
        if self._events is not None:
            self._events.write(event_record(kind, self.attempt, detail, t=t))
            print(f"[tunedeck] {kind}: {json.dumps(detail or {}, default=str)[:2000]}", flush=True)

    def failure(self, exc: BaseException) -> None:
        """A `failed` event with the traceback's last lines, from whichever rank failed."""
        tail = "".join(traceback.format_exception(exc)).splitlines()[-25:]
        detail = {"rank": dist_rank(), "error": f"{type(exc).__name__}: {exc}"[:2000], "traceback": tail}
        with JsonlWriter(self.paths.events) as writer:
            writer.write(event_record("failed", self.attempt, detail))

    def metric(self, **fields: Any) -> None:
        if self._metrics is not None:
            self._metrics.write(metric_record(attempt=self.attempt, **fields))

    def close(self) -> None:
        for w in (self._events, self._metrics):
            if w is not None:
                w.close()


class Heartbeat:
    """A daemon thread touching RUN_DIR/heartbeat every few seconds while the job lives."""

    def __init__(self, path: Path, interval_s: float = HEARTBEAT_S):
        self.path = path
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="heartbeat", daemon=True)

    def start(self) -> Heartbeat:
        touch_heartbeat(self.path)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                touch_heartbeat(self.path)
            except OSError as exc:  # a full or flaky disk must not kill training; say so and retry
                print(f"[tunedeck] heartbeat failed: {exc}", file=sys.stderr, flush=True)

    def stop(self) -> None:
        self._stop.set()


def rank_identity() -> dict[str, Any]:
    """Who this process is and where it runs."""
    return {"rank": dist_rank(), "local_rank": int(os.environ.get("LOCAL_RANK", "0")), "host": platform.node(),
            "pid": os.getpid()}


def gather_ranks() -> list[dict[str, Any]]:
    """Every rank's identity, in rank order (a collective: call it on every rank once the group exists)."""
    import torch.distributed as dist

    me = rank_identity()
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return [me]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, me)
    return out


class RankHeartbeat(TrainerCallback):
    """This process's own heartbeat/host record, RUN_DIR/ranks/rank-N.json (every rank writes its own file).

    A daemon thread rewrites it every few seconds with the step reached; the last write says how the process
    ended (finished / preempted / failed, with the error). A process that is killed, or whose node goes down,
    leaves a record that still says running: that is how the app tells the node that failed from the ranks
    that then failed because a peer was gone.
    """

    def __init__(self, paths: RunPaths, attempt_of: Callable[[], int | None], interval_s: float = HEARTBEAT_S):
        self.paths = paths
        self.attempt_of = attempt_of
        self.interval_s = interval_s
        self.me = rank_identity()
        self.world_size = int(os.environ.get("WORLD_SIZE", "1"))
        self.started_t = time.time()
        self.state = "starting"
        self.step: int | None = None
        self.error: str | None = None
        self.stalled_s = 0.0  # the longest gap between two of this process's heartbeats
        self._last_write: float | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rank-heartbeat", daemon=True)

    def start(self) -> RankHeartbeat:
        self.write()
        self._thread.start()
        return self

    def write(self) -> None:
        # Until rank 0 has counted this attempt, other ranks name the newest one recorded so far.
        attempt = self.attempt_of()
        with self._lock:
            now = time.time()
            if self._last_write is not None:
                # A frozen process (SIGSTOP, a hung node, a VM paused) writes nothing until it wakes: the gap says so.
                self.stalled_s = max(self.stalled_s, now - self._last_write)
            self._last_write = now
            rec = rank_record(**self.me, world_size=self.world_size, attempt=attempt if attempt is not None
                              else read_attempt(self.paths), state=self.state, started_t=self.started_t,
                              step=self.step, error=self.error, stalled_s=self.stalled_s, t=now)
            try:
                write_rank_record(self.paths.rank_file(self.me["rank"]), rec)
            except OSError as exc:  # a full or flaky disk must not kill training; say so and retry
                print(f"[tunedeck] rank heartbeat failed: {exc}", file=sys.stderr, flush=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.write()

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.state, self.step = "running", int(state.global_step)
        self.write()

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.step = int(state.global_step)  # the thread writes it: no file write per step

    def finish(self, state: str, error: str | None = None) -> None:
        """The last record: how this process ended."""
        self._stop.set()
        self.state, self.error = state, error
        self.write()


class PreemptionCallback(TrainerCallback):
    """SIGTERM (Slurm preemption, scancel, torchrun forwarding) -> save a checkpoint, then stop cleanly.

    The handler only sets a flag. At each step end the ranks agree on it with one all_reduce(MAX), so every
    rank saves the same step even when only one got the signal; then should_save + should_training_stop.
    """

    def __init__(self) -> None:
        self.requested = False  # set by the signal handler (this rank)
        self.stopped_at: int | None = None  # the step at which training stopped for it (all ranks)
        self.signal_time: float | None = None

    def install(self) -> None:
        signal.signal(signal.SIGTERM, self._on_signal)

    def _on_signal(self, signum: int, frame: Any) -> None:
        if not self.requested:
            self.signal_time = time.time()
        self.requested = True
        print(f"[tunedeck] rank {dist_rank()}: got signal {signum}; checkpointing at the end of this step", file=sys.stderr, flush=True)

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        if host_all_reduce([1.0 if self.requested else 0.0], "max")[0] > 0:
            self.requested = True
            self.stopped_at = state.global_step
            control.should_save = True
            control.should_training_stop = True
        elif state.max_steps and state.global_step >= state.max_steps:
            control.should_save = True  # the final model is always a checkpoint (even off the save_steps grid)
        return control


class TokenCounter(TrainerCallback):
    """Real (non-padding) tokens trained, counted on the host and summed over ranks only where they are read.

    The collator knows each micro batch's token count as an int; the trainer adds it here. At a step that logs
    or saves, one host all_reduce moves the sum into `state.num_input_tokens_seen` (which checkpoints keep).
    The Trainer's own counting gathers a device tensor and calls .item() on every micro batch."""

    def __init__(self) -> None:
        self.unsynced = 0  # this rank's tokens since the last sum

    def add(self, tokens: int) -> None:
        self.unsynced += int(tokens)

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        last = bool(state.max_steps) and state.global_step >= state.max_steps
        if control.should_log or control.should_save or control.should_training_stop or last:
            state.num_input_tokens_seen = int(state.num_input_tokens_seen or 0) + int(host_all_reduce([self.unsynced])[0])
            self.unsynced = 0


class MetricsCallback(TrainerCallback):
    """One metrics.jsonl line per logging step (rank 0), from the Trainer's own logs."""

    def __init__(self, recorder: Recorder, global_batch_size: int):
        self.recorder = recorder
        self.global_batch_size = global_batch_size
        self._last_t = time.time()
        self._last_tokens = 0
        self._last_logged_step = -1

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._last_t = time.time()
        self._last_tokens = int(state.num_input_tokens_seen or 0)
        self._last_logged_step = state.global_step  # resumed: steps up to here are already recorded
        if state.max_steps and state.max_steps > 0:
            # The total the Trainer computed (epochs x batches, or training.max_steps): the GUI's progress bar
            # and ETA read it, as the config alone does not say it when training by epochs.
            self.recorder.event("training_plan", {"total_steps": int(state.max_steps),
                                                  "start_step": int(state.global_step)})

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any) -> None:
        if not logs or "loss" not in logs or state.global_step <= self._last_logged_step:
            return  # the end-of-training summary (train_loss, runtime) is not a step
        now = time.time()
        tokens = int(state.num_input_tokens_seen or 0)
        dt = now - self._last_t
        extra: dict[str, Any] = {}
        try:
            import torch

            if torch.cuda.is_available():
                extra["gpu_mem_gb"] = torch.cuda.max_memory_allocated() / 1e9
                extra["gpu_mem_reserved_gb"] = torch.cuda.max_memory_reserved() / 1e9
        except RuntimeError as exc:  # a broken CUDA context must not lose the metric line
            print(f"[tunedeck] gpu memory query failed: {exc}", file=sys.stderr, flush=True)
        steps = max(state.global_step - self._last_logged_step, 1)
        self.recorder.metric(
            step=int(state.global_step),
            epoch=float(state.epoch or 0.0),
            samples=int(state.global_step * self.global_batch_size),
            tokens=tokens,
            loss=float(logs["loss"]),
            lr=float(logs["learning_rate"]) if logs.get("learning_rate") is not None else None,
            grad_norm=float(logs["grad_norm"]) if logs.get("grad_norm") is not None else None,
            tokens_per_s=(tokens - self._last_tokens) / dt if dt > 0 else None,
            step_time_s=dt / steps,
            **extra,
        )
        self._last_t, self._last_tokens, self._last_logged_step = now, tokens, state.global_step


# Files of a checkpoint an evaluation reads; a checkpoint kept only for its pending evaluation is slimmed to
# these (its optimizer shards, the bulk of a ZeRO-3 checkpoint, go).
EVAL_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json", "tokenizer.model",
              "special_tokens_map.json", "chat_template.jinja", RUN_CONFIG_IN_CHECKPOINT)
WEIGHTS_ONLY_MARKER = "WEIGHTS_ONLY"  # a slimmed checkpoint: evaluable, no longer resumable


def start_evaluation(paths: RunPaths, checkpoint: Path, step: int,
                     attempt: int) -> tuple[dict[str, Any], subprocess.Popen[bytes] | None]:
    """Hand a complete checkpoint to the run's evaluation placement (remote.job.evalqueue): a detached
    process on this node (alongside / devices), a Slurm job (slurm) or a place in the queue that runs once
    training has ended (after_training). Returns the eval_requested detail and the local process, if any."""
    from remote.job.evalqueue import request

    return request(paths, checkpoint, step, attempt)


class CheckpointCallback(TrainerCallback):
    """Marks a saved checkpoint complete (after every rank wrote its part), prunes, requests evaluation."""

    def __init__(self, recorder: Recorder, paths: RunPaths, run_config: RunConfig, keep: int, eval_when: str):
        self.recorder = recorder
        self.paths = paths
        self.run_config = run_config
        self.keep = keep
        self.eval_when = eval_when
        self.last_complete: tuple[int, Path] | None = None
        self.evaluations: dict[Path, subprocess.Popen[bytes]] = {}  # checkpoint -> its evaluation process

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.barrier()  # every rank has written its optimizer shard and rng state
        step = int(state.global_step)
        ckpt = self.paths.checkpoint(step)
        if not self.recorder.enabled:
            return
        if not (ckpt / "trainer_state.json").is_file():
            self.recorder.event("warning", {"message": f"checkpoint {ckpt} has no trainer_state.json; not marked complete"})
            return
        atomic_write_text(ckpt / RUN_CONFIG_IN_CHECKPOINT, json.dumps(resolved_dict(self.run_config), indent=1))
        atomic_write_text(ckpt / RunPaths.COMPLETE_MARKER, f"{time.time():.3f}\n")  # LAST: the checkpoint counts now
        self.last_complete = (step, ckpt)
        self.recorder.event("checkpoint_saved", {"step": step, "path": str(ckpt)})
        final = bool(state.max_steps) and step >= state.max_steps
        if self.eval_when == "per_checkpoint" or (self.eval_when == "end" and final):
            t = time.time()  # before the submission: the evaluation's own events come after this
            try:
                detail, proc = start_evaluation(self.paths, ckpt, step, self.recorder.attempt)
            except Exception as exc:  # noqa: BLE001 -- a refused submission must not stop training
                detail, proc = {"step": step, "checkpoint": str(ckpt), "pid": None}, None
                self.recorder.event("eval_requested", detail, t=t)
                self.recorder.event("eval_failed", {"step": step, "checkpoint": str(ckpt),
                                                    "error": f"could not be queued: {type(exc).__name__}: {exc}"})
            else:
                if proc is not None:
                    self.evaluations[ckpt] = proc
                self.recorder.event("eval_requested", detail, t=t)
        self.prune(current=step)

    def evaluation_pending(self, ckpt: Path) -> bool:
        proc = self.evaluations.get(ckpt)
        if proc is None:
            return False
        if proc.poll() is None:
            return True
        del self.evaluations[ckpt]  # finished (and reaped)
        return False

    def wait_for_evaluations(self, timeout_s: float) -> list[str]:
        """Block until the evaluations this job started on its node have ended (at most timeout_s); returns
        the checkpoints whose evaluation is still running then. Slurm evaluations are jobs of their own."""
        deadline = time.monotonic() + timeout_s
        for ckpt, proc in list(self.evaluations.items()):
            try:
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                continue
            self.evaluations.pop(ckpt, None)
        return [str(c) for c in self.evaluations]

    def _queued_steps(self) -> set[int]:
        """Steps whose evaluation is queued or running outside this process's children (a Slurm job, the
        after-training queue), from the run's event files."""
        from remote.job.evalqueue import pending_steps

        try:
            return pending_steps(self.paths)
        except Exception as exc:  # noqa: BLE001 -- unreadable records: spare nothing more, but say so
            print(f"[tunedeck] cannot read the evaluation queue: {exc}", file=sys.stderr, flush=True)
            return set()

    def prune(self, current: int) -> None:
        """Keep the newest `keep` complete checkpoints; drop older ones and any incomplete leftovers.

        A checkpoint whose evaluation is still queued or running is spared until a later save: pruning must
        not pull a model from under one. Beyond the kept ones, such a checkpoint keeps only what the
        evaluation reads (weights, config, tokenizer); its optimizer state, most of its size, goes.
        """
        complete = self.paths.complete_checkpoints()
        complete_dirs = {d for _, d in complete}
        queued = self._queued_steps() if self.eval_when != "never" else set()
        old = complete[:-self.keep] if self.keep > 0 else []
        doomed, slim = [], []
        for step, d in old:
            (slim if self.evaluation_pending(d) or step in queued else doomed).append(d)
        if self.paths.checkpoints.is_dir():
            for d in self.paths.checkpoints.iterdir():
                if d.is_dir() and d.name.startswith("checkpoint-") and d not in complete_dirs and d != self.paths.checkpoint(current):
                    if (d / WEIGHTS_ONLY_MARKER).exists():
                        step_text = d.name[len("checkpoint-"):]
                        if step_text.isdigit() and int(step_text) in queued:
                            continue  # slimmed earlier and still awaiting its evaluation
                    doomed.append(d)  # a save cut short by a hard kill: never resumed, never kept
        for d in doomed:
            shutil.rmtree(d, ignore_errors=True)
        for d in slim:
            slim_checkpoint(d)


def slim_checkpoint(ckpt: Path) -> None:
    """Reduce a checkpoint to what an evaluation reads. The COMPLETE marker goes first (it is no longer a
    checkpoint training can resume from), then everything but the weights, config and tokenizer files."""
    marker = ckpt / RunPaths.COMPLETE_MARKER
    if not marker.exists():
        return
    atomic_write_text(ckpt / WEIGHTS_ONLY_MARKER, "kept for its pending evaluation\n")
    marker.unlink()
    for item in ckpt.iterdir():
        keep = item.name in EVAL_FILES or item.name == WEIGHTS_ONLY_MARKER or (
            item.is_file() and item.name.startswith("model") and item.suffix in (".safetensors", ".json"))
        if keep:
            continue
        if item.is_dir():
            shutil.rmtree(item, ignore_errors=True)
        else:
            item.unlink(missing_ok=True)


class PartitionProbe(TrainerCallback):
    """TUNEDECK_DEBUG_PARTITION=1: each rank writes how many parameter elements it holds under ZeRO-3."""

    def __init__(self, paths: RunPaths):
        self.paths = paths

    def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        if model is None:
            return
        local = total = 0
        partitioned = 0
        for p in model.parameters():
            if hasattr(p, "ds_tensor"):
                partitioned += 1
                local += p.ds_tensor.numel()
                total += p.ds_numel
            else:
                local += p.numel()
                total += p.numel()
        out = {"rank": dist_rank(), "local_numel": local, "total_numel": total, "partitioned_params": partitioned,
               "world_size": int(os.environ.get("WORLD_SIZE", "1")), "host": platform.node()}
        atomic_write_text(self.paths / PARTITION_FILE.format(rank=dist_rank()), json.dumps(out))
