"""`tunedeck launch | runs | status | resume | logs | cancel | sync | decontaminate-array`: runs on clusters.

Exit codes: 0 ok, 1 the run failed / cancel not confirmed, 2 bad input, 3 the cluster could not be reached.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import time
from pathlib import Path

from app.cli.errors import CliError

STATE_WIDTH = 10


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("launch", help="Upload a run config and start it on a cluster (prints the run id last).")
    p.add_argument("file", type=Path, help="Run config YAML.")
    p.add_argument("--cluster", default="local", help="Cluster profile name (default: local, this machine).")
    p.add_argument("--name", help="Run name (default: the config's name).")
    p.add_argument("--force", action="store_true",
                   help="Launch even when the guardrails say the run cannot work (no training data, packages the "
                        "cluster check found missing, GPUs that do not match, an estimate that does not fit).")
    p.set_defaults(handler=cmd_launch)

    p = subparsers.add_parser("runs", help="List runs, their states and latest pass@1 (with its 95%% interval).")
    p.add_argument("--json", action="store_true", help="Machine-readable output.")
    p.add_argument("--refresh", action="store_true", help="Poll the clusters first.")
    p.add_argument("--all", action="store_true", help="Include archived runs.")
    p.add_argument("--tag", action="append", default=[], metavar="TAG", help="Only runs with this tag (repeatable: all of them).")
    p.set_defaults(handler=cmd_runs)

    p = subparsers.add_parser("status", help="A run's state (pending, running, finished, failed, cancelled) and reason.")
    p.add_argument("run", help="Run id (or a unique prefix).")
    p.add_argument("--no-refresh", action="store_true", help="Show the stored state without asking the cluster.")
    p.set_defaults(handler=cmd_status)

    p = subparsers.add_parser("resume", help="Start an ended (failed, cancelled, preempted) run again: it continues "
                                             "from its newest complete checkpoint, on the same cluster.")
    p.add_argument("run", help="Run id (or a unique prefix).")
    p.set_defaults(handler=cmd_resume)

    p = subparsers.add_parser("logs", help="A run's output (stdout.log), read from its machine.")
    p.add_argument("run", help="Run id (or a unique prefix).")
    p.add_argument("-f", "--follow", action="store_true", help="Keep printing new output until the run ends.")
    p.add_argument("--tail", type=int, default=256 << 10, metavar="BYTES", help="Print at most the last BYTES.")
    p.set_defaults(handler=cmd_logs)

    p = subparsers.add_parser("cancel", help="Stop a run and confirm that its job and processes are gone.")
    p.add_argument("run", help="Run id (or a unique prefix).")
    p.add_argument("--grace", type=float, default=30.0, help="Seconds between SIGTERM and SIGKILL (hostfile/local).")
    p.set_defaults(handler=cmd_cancel)

    p = subparsers.add_parser("sync", help="Pull every run's new records (metrics, evals, events, output) into the store.")
    p.add_argument("-f", "--follow", action="store_true", help="Keep streaming until no run is active.")
    p.add_argument("--cluster", help="Only runs on this cluster profile.")
    p.set_defaults(handler=cmd_sync)

    p = subparsers.add_parser("decontaminate-array",
                              help="Run a contamination check as a Slurm job array (one task per shard) and merge.")
    p.add_argument("--cluster", required=True, help="A slurm cluster profile.")
    p.add_argument("--train", action="append", required=True, metavar="PATH", help="Training file (repeatable).")
    p.add_argument("--eval", action="append", default=[], metavar="SPEC",
                   help="Eval set: humaneval, mbpp=PATH, ... (repeatable; default humaneval).")
    p.add_argument("--shards", type=int, default=4, help="Array tasks (training files are split across them).")
    p.add_argument("--report", type=Path, required=True, metavar="OUT.json", help="Merged report to write.")
    p.add_argument("--timeout", type=float, default=3600.0, help="Seconds to wait for the array.")
    p.set_defaults(handler=cmd_decontam_array)


def _store():
    from core.store import Store

    return Store()


def _run(store, run_id: str):
    from core.store import UnknownRunError
    from remote.runs import get_run

    try:
        return get_run(store, run_id)
    except UnknownRunError as exc:
        raise CliError(str(exc)) from None


def _state_line(row) -> str:
    from core.names import printable

    return printable(row.status + (f": {row.status_reason}" if row.status_reason else ""))


def cmd_launch(args: argparse.Namespace) -> int:
    from core.config import ConfigError, load_config
    from remote.profiles import ProfileError, get_profile
    from remote.runs import LaunchError, LaunchRefused, launch

    try:
        config = load_config(args.file)
    except ConfigError as exc:
        raise CliError(exc.format()) from None
    except FileNotFoundError:
        raise CliError(f"{args.file}: file not found") from None
    try:
        profile = get_profile(args.cluster)
    except (ProfileError, KeyError) as exc:
        raise CliError(str(exc)) from None
    with _store() as store:
        try:
            run_id = launch(config, profile.name, store, name=args.name, base_dir=args.file.resolve().parent,
                            profile=profile, progress=lambda msg: print(msg, file=sys.stderr), force=args.force)
        except LaunchRefused as exc:
            raise CliError(f"{args.file} on {profile.name}: {exc}", code=1) from None
        except LaunchError as exc:
            raise CliError(str(exc), code=1) from None
    print(run_id)
    return 0


def cmd_runs(args: argparse.Namespace) -> int:
    with _store() as store:
        if args.refresh:
            from remote.runs import refresh_status

            errors: dict[str, str] = {}
            refresh_status(store, errors=errors)
            for cluster, err in errors.items():
                print(f"tunedeck: warning: {cluster}: {err}", file=sys.stderr)
        from core.evalstats import headline, store_eval_points
        from core.names import display_names, printable

        every = store.list_runs()
        names = display_names(every)  # unique among all runs, so a name does not change with the filter
        rows = [r for r in every if (args.all or not r.archived) and all(t in r.tags for t in args.tag)]
        scores = {r.run_id: headline(store_eval_points(store, r.run_id)) for r in rows}
        if args.json:
            keys = ("run_id", "name", "status", "status_reason", "cluster", "backend", "job_id", "run_dir",
                    "created_at", "started_at", "finished_at", "notes", "archived")
            out = []
            for r in rows:
                rec = {k: getattr(r, k) for k in keys}
                point = scores[r.run_id]
                rec.update({"display_name": names[r.run_id], "tags": list(r.tags),
                            "pass@1": point.pass_at_1 if point else None,
                            "pass@1_ci95": list(point.interval.pair) if point else None,
                            "pass@1_benchmark": point.benchmark if point else None,
                            "pass@1_step": point.step if point else None})
                out.append(rec)
            print(json.dumps(out, indent=1, ensure_ascii=False))
            return 0
        if not rows:
            hidden = sum(1 for r in every if r.archived)
            print("no runs" + (f" ({hidden} archived: tunedeck runs --all)" if hidden and not args.all else ""))
            return 0
        for r in rows:
            point = scores[r.run_id]
            score = f"{point.label()} {point.benchmark}@{point.step}" if point else "-"
            tags = ("  [" + ", ".join(printable(t) for t in r.tags) + "]") if r.tags else ""
            print(f"{r.run_id}  {r.status:<{STATE_WIDTH}}  {printable(r.cluster or '-'):<12}  {r.job_id or '-':<8}  "
                  f"{score:<28}  {names[r.run_id]}{tags}" + ("  (archived)" if r.archived else "")
                  + (f"  ({printable(r.status_reason)})" if r.status_reason else ""))
        hidden = sum(1 for r in every if r.archived) if not args.all else 0
        if hidden:
            print(f"({hidden} archived run{'s' if hidden != 1 else ''} hidden: tunedeck runs --all)", file=sys.stderr)
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from core.store import TERMINAL_STATUSES

    with _store() as store:
        row = _run(store, args.run)
        if not args.no_refresh and row.status not in TERMINAL_STATUSES and row.job_id:
            from remote.runs import refresh_cluster

            try:
                refresh_cluster(store, row.cluster, [row])
            except Exception as exc:  # noqa: BLE001 -- CLI boundary: say why, show the stored state
                print(f"tunedeck: warning: cannot reach {row.cluster}: {exc}; showing the stored state",
                      file=sys.stderr)
            row = _run(store, row.run_id)
        print(_state_line(row))
        _print_pass_at_1(store, row.run_id)
        for name, n in _corrupt_counts(store, row.run_id).items():
            print(f"{name}: {n} corrupt line{'s' if n != 1 else ''} skipped (unreadable, or values the store "
                  "cannot hold; `tunedeck sync` logs each one)")
        _print_nodes(store, row)
        return 1 if row.status == "failed" else 0


def _print_pass_at_1(store, run_id: str) -> None:
    """The latest checkpoint's pass@1 per benchmark and subset, with 95% intervals (nothing before any eval)."""
    from core.evalstats import store_eval_points

    points = store_eval_points(store, run_id)
    if not points:
        return
    last = max(p.step for p in points)
    for p in (p for p in points if p.step == last):
        iv = p.interval
        print(f"pass@1 {p.benchmark:<13} {p.subset:<12} step {p.step}: {p.label():<14} "
              f"(95% {100 * iv.low:.1f}–{100 * iv.high:.1f}, {iv.describe()}, {p.n_tasks} tasks)")


def _corrupt_counts(store, run_id: str) -> dict[str, int]:
    """Corrupt lines skipped so far per streamed file of a run (files with none left out)."""
    from core.records import RunPaths

    return {name: n for name in RunPaths.STREAMED if (n := store.stream_state(run_id, name)["corrupt_count"])}


def _print_nodes(store, row) -> None:
    """Every rank of the run's newest attempt, grouped by node (host, state, step, last heartbeat)."""
    from core.nodes import format_nodes, latest_attempt

    ranks = latest_attempt(store.ranks(row.run_id))
    if len(ranks) > 1 or len({r.host for r in ranks}) > 1:
        for line in format_nodes(ranks, now=row.finished_at if row.is_terminal and row.finished_at else None):
            print(line)


def cmd_resume(args: argparse.Namespace) -> int:
    from remote.runs import LaunchError, resume

    with _store() as store:
        row = _run(store, args.run)
        try:
            job_id, step = resume(row.run_id, store, progress=lambda msg: print(msg, file=sys.stderr))
        except LaunchError as exc:
            raise CliError(str(exc), code=1) from None
        except Exception as exc:  # noqa: BLE001 -- CLI boundary: the cluster's words, exit 3
            raise CliError(f"resume of run {row.run_id} failed: {exc}", code=3) from None
        what = "job" if row.backend == "slurm" else "process group"
        print(f"run {row.run_id}: resumed as {what} {job_id}"
              + (f", from checkpoint-{step}" if step is not None else ", from the start (no complete checkpoint)"))
    return 0


def cmd_logs(args: argparse.Namespace) -> int:
    from core.records import RunPaths
    from core.store import TERMINAL_STATUSES
    from remote.logfollow import follow_file
    from remote.runs import refresh_cluster, transport_for_run
    from remote.transport import TransportError

    with _store() as store:
        row = _run(store, args.run)
        if not row.run_dir:
            raise CliError(f"run {row.run_id} was never uploaded ({_state_line(row)})")
        try:
            transport = transport_for_run(row)
        except Exception as exc:  # noqa: BLE001 -- a removed profile and the like: say which, no traceback
            raise CliError(f"run {row.run_id}: {exc}") from None
        path = f"{row.run_dir}/{RunPaths.STDOUT}"
        try:
            size = transport.size(path) or 0
            start = max(0, size - args.tail)
            data = transport.read_bytes(path, start) if size else b""
        except TransportError as exc:
            raise CliError(f"cannot read the output of run {row.run_id}: {exc}", code=3) from None
        out = sys.stdout.buffer
        out.write(data)
        out.flush()
        if not args.follow:
            return 0
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        current = [row]

        def write(chunk: bytes) -> None:
            out.write(chunk)
            out.flush()

        def ended() -> bool:
            if current[0].status not in TERMINAL_STATUSES:
                try:
                    refresh_cluster(store, current[0].cluster, [current[0]], transport)
                except Exception as exc:  # noqa: BLE001 -- keep following through a failed poll
                    print(f"tunedeck: warning: status poll failed: {exc}", file=sys.stderr)
                current[0] = _run(store, current[0].run_id)
            return current[0].status in TERMINAL_STATUSES

        def retry(exc: BaseException, delay: float) -> None:
            print(f"[tunedeck] connection lost ({exc}); reconnecting in {delay:g} s and resuming at the byte "
                  "where the output stopped", file=sys.stderr, flush=True)

        follow_file(transport, path, start + len(data), write, stop=stop, ended=ended, on_retry=retry)
        print(f"[tunedeck] run {row.run_id}: {_state_line(current[0])}" if current[0].status in TERMINAL_STATUSES
              else f"[tunedeck] stopped following run {row.run_id} ({_state_line(current[0])})", file=sys.stderr)
    return 0


def cmd_cancel(args: argparse.Namespace) -> int:
    from core.names import printable
    from remote.runs import cancel

    with _store() as store:
        row = _run(store, args.run)
        try:
            result = cancel(row.run_id, store, grace_s=args.grace)
        except Exception as exc:  # noqa: BLE001 -- CLI boundary: the cluster's words, exit 3
            raise CliError(f"cancel of run {row.run_id} failed: {exc}", code=3) from None
        print(printable(result.detail))
        if result.already_ended:
            return 0  # one message: the run had ended, nothing was cancelled
        if not result.confirmed_gone:
            print(f"run {row.run_id}: NOT confirmed gone", file=sys.stderr)
            return 1
        print(f"run {row.run_id}: cancelled, confirmed gone")
    return 0


def cmd_sync(args: argparse.Namespace) -> int:
    from remote.stream import StreamManager, stop_all, sync_all

    with _store() as store:
        if not args.follow:
            before = {row.run_id: _corrupt_counts(store, row.run_id) for row in store.list_runs()}
            result = sync_all(store, profile=args.cluster)
            unreachable = failed = 0
            for run_id, counts in result.items():
                if "error" in counts:
                    unreachable += 1
                    print(f"{run_id}: not synced: {counts['error']}", file=sys.stderr)
                    continue
                if "failed" in counts:
                    failed += 1
                    print(f"{run_id}: not synced: {counts['failed']}", file=sys.stderr)
                    continue
                if any(counts.values()):
                    print(f"{run_id}: " + ", ".join(f"{n} new in {f}" for f, n in counts.items() if n))
                old = before.get(run_id, {})
                for name, n in _corrupt_counts(store, run_id).items():
                    if n > old.get(name, 0):
                        k = n - old.get(name, 0)
                        print(f"{run_id}: {k} corrupt line{'s' if k != 1 else ''} skipped in {name} (see the "
                              "warnings above)", file=sys.stderr)
            tail = [f"{unreachable} unreachable"] * bool(unreachable) + [f"{failed} failed"] * bool(failed)
            print(f"synced {len(result) - unreachable - failed} run(s)" + "".join(f", {t}" for t in tail))
            return 3 if unreachable else 1 if failed else 0
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        manager = StreamManager(store, poll_s=2.0,
                                on_hang=lambda w: print(w.message(), file=sys.stderr, flush=True),
                                on_status=lambda r: print(f"{r.run_id}: {_state_line(r)}", flush=True))
        try:
            sync_all(store, profile=args.cluster)
            idle = manager.run_until_idle(stop=stop)
        finally:
            stop_all(list(manager.streamers.values()))
        if idle:
            print("all runs ended; streams complete", flush=True)
            return 0
        from remote.runs import active_runs

        active = [r.run_id for r in active_runs(store, args.cluster)]
        print(f"stopped (SIGTERM) with {len(active)} run(s) still active" + (f": {', '.join(active)}" if active else "")
              + "; their streams are NOT complete: `tunedeck sync` (or -f) resumes where this stopped", flush=True)
    return 0


def cmd_decontam_array(args: argparse.Namespace) -> int:
    from core.store import TERMINAL_STATUSES
    from remote.decontam_array import DecontamArrayError, launch_array, merge
    from remote.runs import LaunchError, refresh_cluster

    with _store() as store:
        try:
            run_id = launch_array([str(p) for p in args.train], args.eval or ["humaneval"], args.cluster, store,
                                  shards=args.shards, progress=lambda m: print(m, file=sys.stderr))
        except (LaunchError, DecontamArrayError) as exc:
            raise CliError(str(exc), code=1) from None
        print(run_id, file=sys.stderr)
        deadline = time.monotonic() + args.timeout
        row = store.get_run(run_id)
        while row.status not in TERMINAL_STATUSES:
            if time.monotonic() > deadline:
                raise CliError(f"run {run_id} still {row.status} after {args.timeout:g} s", code=1)
            time.sleep(1.0)
            refresh_cluster(store, row.cluster, [row])
            row = store.get_run(run_id)
        if row.status != "finished":
            raise CliError(f"run {run_id} {_state_line(row)}", code=1)
        try:
            report = merge(run_id, store, out_path=args.report)
        except DecontamArrayError as exc:
            raise CliError(str(exc), code=1) from None
        print(json.dumps(report.get("summary", {}), indent=1))
        print(run_id)
    return 0
