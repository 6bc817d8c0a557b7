"""Per-sample eval results of runs: each evaluation writes samples/step-N-BENCH.jsonl in the run directory
(on the run's machine); this copies such files into the run store, where paired comparisons and pass@k
intervals read them, and builds core.paired Evaluations from the store.

The streamer copies a file as soon as its evals record arrives (the evaluation writes the file first);
`ensure_eval_samples` fetches one on demand for runs streamed before that existed.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from core.paired import ComparisonError, Evaluation, evaluation_from_rows, parse_run_ref, pick_evaluation
from core.records import RunPaths
from core.store import RunRow, Store
from remote.transport import Transport

log = logging.getLogger(__name__)


def parse_sample_lines(data: bytes) -> tuple[list[dict[str, Any]], int]:
    """(rows, unreadable lines) of a per-sample JSONL file; rows without task_id or passed count as unreadable."""
    rows, bad = [], 0
    for line in data.splitlines():
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except (UnicodeDecodeError, json.JSONDecodeError):
            bad += 1
            continue
        if isinstance(rec, dict) and isinstance(rec.get("task_id"), str) and isinstance(rec.get("passed"), bool):
            rows.append(rec)
        else:
            bad += 1
    return rows, bad


def _transport(row: RunRow, transport: Transport | None) -> Transport:
    if transport is not None:
        return transport
    from remote.runs import transport_for_run

    return transport_for_run(row)


def copy_eval_samples(store: Store, transport: Transport, run_id: str, run_dir: str, step: int,
                      benchmark: str) -> int | None:
    """Copy samples/step-STEP-BENCH.jsonl of a run directory into the store; the number of rows stored, or
    None when there is no such file."""
    path = f"{run_dir.rstrip('/')}/{RunPaths.SAMPLES}/{RunPaths.sample_file_name(step, benchmark)}"
    if transport.size(path) is None:
        return None
    rows, bad = parse_sample_lines(transport.read_bytes(path))
    if bad:
        log.warning("%s of run %s: %d unreadable line(s) skipped", path, run_id, bad)
    return store.put_eval_samples(run_id, step, benchmark, rows)


def fetch_eval_samples(store: Store, row: RunRow, step: int, benchmark: str,
                       transport: Transport | None = None) -> int | None:
    """copy_eval_samples for a stored run, over its cluster's transport unless one is given."""
    if not row.run_dir:
        return None
    return copy_eval_samples(store, _transport(row, transport), row.run_id, row.run_dir, step, benchmark)


def ensure_eval_samples(store: Store, row: RunRow, step: int, benchmark: str,
                        transport: Transport | None = None) -> bool:
    """True when the store holds the evaluation's per-sample results, fetching them first if it does not."""
    if (step, benchmark) in store.eval_sample_sets(row.run_id):
        return True
    return bool(fetch_eval_samples(store, row, step, benchmark, transport))


def run_evaluation(store: Store, row: RunRow, step: int | None = None, benchmark: str | None = None, *,
                   transport: Transport | None = None, fetch: bool = True) -> Evaluation:
    """The Evaluation of run `row` at `step` (default: its latest evaluated step) on `benchmark` (default: the
    only one evaluated there). Per-sample results missing from the store are fetched from the run directory
    when `fetch`; ComparisonError says what is missing."""
    label = row.run_id
    step, benches = pick_evaluation(store.evals(row.run_id), label, step, benchmark)
    if benchmark is None:
        if len(benches) > 1:
            raise ComparisonError(f"run {label} evaluated {', '.join(benches)} at step {step}: choose one with --bench")
        benchmark = benches[0]
    if (step, benchmark) not in store.eval_sample_sets(row.run_id):
        if not fetch:
            raise ComparisonError(f"the per-sample results of run {label} at step {step} ({benchmark}) are not in "
                                  "the store yet")
        try:
            found = fetch_eval_samples(store, row, step, benchmark, transport)
        except Exception as exc:
            raise ComparisonError(f"cannot read the per-sample results of run {label} at step {step} from "
                                  f"{row.cluster}: {exc}") from exc
        if not found:
            raise ComparisonError(
                f"run {label} has no per-sample results for step {step} ({benchmark}): "
                f"{RunPaths.SAMPLES}/{RunPaths.sample_file_name(step, benchmark)} is not in its run directory "
                f"{row.run_dir or '(never uploaded)'}")
    rows = store.eval_samples(row.run_id, step, benchmark)
    return evaluation_from_rows(rows, f"{label}@{step}", benchmark=benchmark, step=step)


def resolve_run_ref(store: Store, text: str, benchmark: str | None = None, *,
                    transport: Transport | None = None) -> Evaluation:
    """`RUN` (its latest evaluation) or `RUN@STEP`, RUN being a run id or a unique prefix of one."""
    from core.store import UnknownRunError
    from remote.runs import get_run

    run, step = parse_run_ref(text)
    try:
        row = get_run(store, run)
    except UnknownRunError as exc:
        raise ComparisonError(str(exc)) from None
    return run_evaluation(store, row, step, benchmark, transport=transport)
