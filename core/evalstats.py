"""pass@1 of a run's evaluations with their 95% intervals, read from the run store: what tables, tooltips and
error bars show. core.uncertainty says which interval is used when.

An interval is exact (from the per-task results) when the store holds the evaluation's per-sample rows, and
otherwise computed from the stored pass@1 and task count (Wilson over tasks, conservative for n > 1).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from core.uncertainty import Interval, eval_record_interval

PREFERRED_BENCHMARKS = ("humaneval", "humanevalplus", "mbpp", "mbppplus")


@dataclass(frozen=True)
class EvalPoint:
    """One evaluation of one checkpoint on one benchmark subset, with its pass@1 interval."""

    step: int
    benchmark: str
    subset: str
    n_tasks: int
    samples_per_task: int
    interval: Interval
    from_samples: bool  # the interval came from the per-task results (else from the rate and task count)

    @property
    def pass_at_1(self) -> float:
        return self.interval.estimate

    def label(self) -> str:
        """'48.2% ± 7.6' (percentage points)."""
        return format_pass(self.interval)

    def tooltip(self) -> str:
        iv = self.interval
        n = f"{self.samples_per_task} sample{'s' if self.samples_per_task != 1 else ''} per task"
        return (f"{self.benchmark} ({self.subset}) at step {self.step}: pass@1 {100 * iv.estimate:.1f}%, "
                f"95% interval {100 * iv.low:.1f}–{100 * iv.high:.1f}% ({iv.describe()}; "
                f"{self.n_tasks} tasks, {n})")


def format_pass(iv: Interval) -> str:
    """pass@1 with the half-width of its 95% interval, in percent: '48.2% ± 7.6'."""
    return f"{100 * iv.estimate:.1f}% ± {100 * iv.half_width:.1f}"


def _subset_results(results: Mapping[str, tuple[str, list[bool]]], subset: str) -> dict[str, list[bool]]:
    return {t: passes for t, (s, passes) in results.items() if subset == "all" or s == subset}


def latest_evals(evals: Iterable[Mapping[str, Any]]) -> dict[tuple[int, str, str], Mapping[str, Any]]:
    """The eval record that counts for each (step, benchmark, subset): the latest attempt's (a resumed run that
    evaluated a checkpoint again), and within an attempt the latest written."""
    latest: dict[tuple[int, str, str], tuple[tuple[float, float], Mapping[str, Any]]] = {}
    for rec in evals:
        key = (int(rec["step"]), str(rec["benchmark"]), str(rec["subset"]))
        rank = (rec.get("attempt") or 0, rec.get("t") or 0.0)
        if key not in latest or rank >= latest[key][0]:
            latest[key] = (rank, rec)
    return {key: rec for key, (_rank, rec) in latest.items()}


def eval_points(evals: Sequence[Mapping[str, Any]],
                task_results: Mapping[tuple[int, str], Mapping[str, tuple[str, list[bool]]]] | None = None,
                ) -> list[EvalPoint]:
    """An EvalPoint per (step, benchmark, subset) of a run's evals records (Store.evals; the latest attempt
    wins), ordered by step. `task_results` maps (step, benchmark) to Store.task_results for the evaluations
    whose per-sample rows are stored."""
    points = []
    for (step, bench, subset), rec in sorted(latest_evals(evals).items()):
        per_task = (task_results or {}).get((step, bench))
        results = _subset_results(per_task, subset) if per_task else None
        if results and len(results) != rec.get("n_tasks"):
            results = None  # the stored rows are not this record's tasks (an older evaluation): use the rate
        try:
            interval = eval_record_interval(rec, results)
        except ValueError:
            interval = None
        if interval is None:
            continue
        points.append(EvalPoint(step, bench, subset, int(rec.get("n_tasks") or interval.n_tasks),
                                int(rec.get("samples_per_task") or 1), interval, bool(results)))
    return points


def store_eval_points(store: Any, run_id: str) -> list[EvalPoint]:
    """eval_points of a run in the store, exact wherever its per-sample results are stored."""
    sets = store.eval_sample_sets(run_id)
    results = {key: store.task_results(run_id, *key) for key in sets}
    return eval_points(store.evals(run_id), results)


def headline(points: Sequence[EvalPoint], benchmark: str | None = None) -> EvalPoint | None:
    """The number a run table shows: the latest step's evaluation on all tasks, of `benchmark` or else of the
    first of PREFERRED_BENCHMARKS the run has (else its first benchmark)."""
    candidates = [p for p in points if p.subset == "all"]
    if benchmark is not None:
        candidates = [p for p in candidates if p.benchmark == benchmark]
    if not candidates:
        return None
    benches = {p.benchmark for p in candidates}
    chosen = next((b for b in PREFERRED_BENCHMARKS if b in benches), sorted(benches)[0])
    return max((p for p in candidates if p.benchmark == chosen), key=lambda p: p.step)
