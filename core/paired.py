"""Paired comparison of two evaluations on the same tasks: which tasks each solves, McNemar's exact test,
and pass@1 of both and of their difference with 95% intervals (core.uncertainty says which intervals).

Pure logic: the per-sample rows come from a file (`tunedeck eval --out` writes OUT/samples/step-N-BENCH.jsonl)
or from the run store; the CLI, the app's paired view and the tests all compare through `compare`.

A task counts as solved when at least half of its samples pass (with one sample per task: when it passes).
The 2x2 table and McNemar's test need one outcome per task; the pass@1 values and the difference interval use
every sample (the per-task rates).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.records import jsonl_objects
from core.uncertainty import Interval, mcnemar_exact_p, paired_difference_interval, pass_at_k_interval

SUBSET_CHOICES = ("all", "clean", "contaminated")
SPLIT_SUBSETS = ("clean", "contaminated")
MAX_LISTED = 5  # task ids named in an error message


class ComparisonError(ValueError):
    """Two evaluations that cannot be compared, or a per-sample file that cannot be read; says why."""


def task_sort_key(task_id: str) -> tuple[str, int, str]:
    """HumanEval/2 before HumanEval/10 (numeric suffixes compare as numbers)."""
    head, _, tail = task_id.rpartition("/")
    return (head, int(tail), "") if tail.isdigit() else (task_id, -1, task_id)


@dataclass(frozen=True)
class SampleResult:
    """One sample of one task as the evaluation recorded it."""

    task_id: str
    sample: int
    passed: bool
    subset: str  # "clean" / "contaminated" when the evaluation had a contamination report, else "all"
    completion: str = ""
    error: str | None = None
    stderr_tail: str = ""
    seconds: float | None = None


@dataclass(frozen=True)
class Evaluation:
    """The per-sample results of one evaluation (one checkpoint or model on one benchmark)."""

    label: str  # what the user named it: a file path, or RUN@STEP
    benchmark: str
    step: int | None
    samples: tuple[SampleResult, ...]
    _by_task: dict[str, list[SampleResult]] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        for s in self.samples:
            self._by_task.setdefault(s.task_id, []).append(s)
        for rows in self._by_task.values():
            rows.sort(key=lambda s: s.sample)

    @property
    def task_ids(self) -> list[str]:
        return sorted(self._by_task, key=task_sort_key)

    @property
    def has_split(self) -> bool:
        """Whether the evaluation marked its tasks clean / contaminated (it had a contamination report)."""
        return any(s.subset in SPLIT_SUBSETS for s in self.samples)

    def subset_of(self, task_id: str) -> str:
        return self._by_task[task_id][0].subset

    def samples_of(self, task_id: str) -> list[SampleResult]:
        return list(self._by_task.get(task_id, ()))

    def results(self, subset: str = "all") -> dict[str, list[bool]]:
        """task_id -> pass/fail per sample, for the tasks of `subset`, in task order."""
        return {t: [s.passed for s in self._by_task[t]] for t in self.task_ids
                if subset == "all" or self.subset_of(t) == subset}

    def samples_per_task(self) -> int:
        return min((len(v) for v in self._by_task.values()), default=0)


def solved(passes: Sequence[bool]) -> bool:
    """A task is solved when at least half of its samples pass."""
    return bool(passes) and 2 * sum(map(bool, passes)) >= len(passes)


# ---------------------------------------------------------------------------------------------- reading


def evaluation_from_rows(rows: Iterable[Mapping[str, Any]], label: str, *, benchmark: str | None = None,
                         step: int | None = None, where: str | None = None) -> Evaluation:
    """An Evaluation from per-sample rows ({task_id, sample, passed, subset, benchmark, step, completion, ...},
    as evaluate.write_outputs writes them). `where` names the source in error messages."""
    where = where or label
    samples: list[SampleResult] = []
    benches: set[str] = set()
    steps: set[int] = set()
    seen: set[tuple[str, int]] = set()
    for i, row in enumerate(rows, 1):
        at = f"{where}: row {i}" if not isinstance(row, _Located) else f"{where}:{row.line_no}"
        if "task_id" not in row:
            raise ComparisonError(f"{at}: no 'task_id'")
        if "passed" not in row:
            raise ComparisonError(
                f"{at}: no 'passed' field: this is not a per-sample result file (those come from "
                "`tunedeck eval --out DIR`, in DIR/samples/); a file of completions to score goes to "
                "`tunedeck eval --samples`")
        if not isinstance(row["passed"], bool):
            raise ComparisonError(f"{at}: 'passed' must be true or false, not {row['passed']!r}")
        sample = row.get("sample", 0)
        if not isinstance(sample, int) or isinstance(sample, bool):
            raise ComparisonError(f"{at}: 'sample' must be an integer, not {sample!r}")
        task_id = str(row["task_id"])
        if (task_id, sample) in seen:
            raise ComparisonError(f"{at}: task {task_id} sample {sample} appears twice")
        seen.add((task_id, sample))
        if isinstance(row.get("benchmark"), str):
            benches.add(row["benchmark"])
        if isinstance(row.get("step"), int) and not isinstance(row.get("step"), bool):
            steps.add(row["step"])
        subset = row.get("subset", "all")
        if subset not in SUBSET_CHOICES:
            raise ComparisonError(f"{at}: 'subset' must be one of {', '.join(SUBSET_CHOICES)}, not {subset!r}")
        seconds = row.get("seconds")
        samples.append(SampleResult(
            task_id=task_id, sample=sample, passed=row["passed"], subset=subset,
            completion=str(row.get("completion") or ""), error=(str(row["error"]) if row.get("error") else None),
            stderr_tail=str(row.get("stderr_tail") or ""),
            seconds=float(seconds) if isinstance(seconds, (int, float)) and not isinstance(seconds, bool) else None))
    if not samples:
        raise ComparisonError(f"{where}: no per-sample results")
    if len(benches) > 1:
        raise ComparisonError(f"{where}: rows of several benchmarks ({', '.join(sorted(benches))})")
    bench = benchmark or (benches.pop() if benches else None)
    if not bench:
        raise ComparisonError(f"{where}: the rows do not say their benchmark")
    if step is None and len(steps) == 1:
        step = steps.pop()
    subsets = {}
    for s in samples:
        if subsets.setdefault(s.task_id, s.subset) != s.subset:
            raise ComparisonError(f"{where}: task {s.task_id} is marked both {subsets[s.task_id]} and {s.subset}")
    return Evaluation(label=label, benchmark=bench, step=step, samples=tuple(samples))


class _Located(dict):
    """A row that remembers its line in the file (for error messages)."""

    line_no: int = 0


def read_samples_file(path: str | os.PathLike[str], benchmark: str | None = None) -> Evaluation:
    """The per-sample results in a file written by `tunedeck eval --out DIR` (DIR/samples/step-N-BENCH.jsonl).

    DIR itself (or DIR/samples) is accepted when it holds one such file, or one for `benchmark`."""
    p = Path(path)
    if p.is_dir():
        p = _pick_in_dir(p, benchmark)
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise ComparisonError(f"{path}: {exc.strerror or exc}") from None
    rows: list[_Located] = []
    for line_no, rec in jsonl_objects(data, p, ComparisonError):
        row = _Located(rec)
        row.line_no = line_no
        rows.append(row)
    ev = evaluation_from_rows(rows, str(path), where=str(p))
    if benchmark is not None and ev.benchmark != benchmark:
        raise ComparisonError(f"{p} holds {ev.benchmark} results, not {benchmark}")
    return ev


def _pick_in_dir(d: Path, benchmark: str | None) -> Path:
    folder = d / "samples" if (d / "samples").is_dir() else d
    files = sorted(folder.glob("step-*.jsonl"))
    if benchmark is not None:
        files = [f for f in files if f.stem.split("-", 2)[-1] == benchmark]
    if len(files) == 1:
        return files[0]
    if not files:
        raise ComparisonError(f"{d}: no per-sample result file (samples/step-N-BENCH.jsonl)"
                              + (f" for {benchmark}" if benchmark else ""))
    raise ComparisonError(f"{d} holds several per-sample files ({', '.join(f.name for f in files[:MAX_LISTED])}): "
                          "name one, or choose the benchmark with --bench")


# ---------------------------------------------------------------------------------------------- comparing


@dataclass(frozen=True)
class PairedComparison:
    """Two evaluations of the same tasks, side by side. `diff` is pass@1(B) - pass@1(A)."""

    a_label: str
    b_label: str
    benchmark: str
    subset: str
    a: Interval  # pass@1 of A with its interval
    b: Interval
    diff: Interval
    both: tuple[str, ...]
    a_only: tuple[str, ...]
    b_only: tuple[str, ...]
    neither: tuple[str, ...]
    mcnemar_p: float
    samples_per_task: tuple[int, int]

    @property
    def n_tasks(self) -> int:
        return len(self.both) + len(self.a_only) + len(self.b_only) + len(self.neither)

    def to_json(self, with_tasks: bool = True) -> dict[str, Any]:
        out: dict[str, Any] = {
            "a": self.a_label, "b": self.b_label, "benchmark": self.benchmark, "subset": self.subset,
            "n_tasks": self.n_tasks,
            "a_pass@1": self.a.estimate, "b_pass@1": self.b.estimate,
            "a_ci95": list(self.a.pair), "b_ci95": list(self.b.pair),
            "diff": self.diff.estimate, "diff_ci95": list(self.diff.pair),
            "both": len(self.both), "a_only": len(self.a_only), "b_only": len(self.b_only),
            "neither": len(self.neither), "mcnemar_p": self.mcnemar_p,
            "samples_per_task": list(self.samples_per_task),
            "ci_method": {"a": self.a.method, "b": self.b.method, "diff": self.diff.method},
        }
        if with_tasks:
            out.update(both_tasks=list(self.both), a_only_tasks=list(self.a_only), b_only_tasks=list(self.b_only),
                       neither_tasks=list(self.neither))
        return out


def _examples(ids: Iterable[str]) -> str:
    ids = sorted(ids, key=task_sort_key)
    shown = ", ".join(ids[:MAX_LISTED])
    return shown + (f" and {len(ids) - MAX_LISTED} more" if len(ids) > MAX_LISTED else "")


def check_comparable(a: Evaluation, b: Evaluation, subset: str = "all") -> None:
    """Raise ComparisonError, saying why, unless A and B can be compared on `subset`."""
    if subset not in SUBSET_CHOICES:
        raise ComparisonError(f"subset must be one of {', '.join(SUBSET_CHOICES)}, not {subset!r}")
    if a.benchmark != b.benchmark:
        raise ComparisonError(f"A ({a.label}) is a {a.benchmark} evaluation and B ({b.label}) a {b.benchmark} one: "
                              "a paired comparison needs the same benchmark on both sides")
    ta, tb = set(a.task_ids), set(b.task_ids)
    if ta != tb:
        only_a, only_b = ta - tb, tb - ta
        parts = []
        if only_a:
            parts.append(f"{len(only_a)} only in A ({_examples(only_a)})")
        if only_b:
            parts.append(f"{len(only_b)} only in B ({_examples(only_b)})")
        raise ComparisonError(
            f"A ({a.label}) has {len(ta)} {a.benchmark} tasks and B ({b.label}) {len(tb)}, not the same set: "
            f"{'; '.join(parts)}. A paired comparison needs both evaluated on the same tasks "
            "(was one of them run with --limit?)")
    if subset != "all":
        missing = [side for side, ev in (("A", a), ("B", b)) if not ev.has_split]
        if missing:
            who = " and ".join(f"{s} ({(a if s == 'A' else b).label})" for s in missing)
            raise ComparisonError(
                f"{who} {'was' if len(missing) == 1 else 'were'} evaluated without a contamination report, so "
                f"{'it has' if len(missing) == 1 else 'they have'} no {subset} subset; compare --subset all, or "
                "evaluate with --contamination REPORT")
        differ = [t for t in ta if (a.subset_of(t) == "contaminated") != (b.subset_of(t) == "contaminated")]
        if differ:
            raise ComparisonError(
                f"A and B mark different tasks as contaminated ({len(differ)} differ: {_examples(differ)}): they "
                "were evaluated with different contamination reports, so their clean and contaminated subsets "
                "are not the same tasks")
        if not a.results(subset):
            raise ComparisonError(f"no {subset} tasks in these {a.benchmark} evaluations")


def compare(a: Evaluation, b: Evaluation, subset: str = "all") -> PairedComparison:
    """The paired comparison of A and B on the tasks of `subset` (ComparisonError when they differ in
    benchmark, task set or contamination split)."""
    check_comparable(a, b, subset)
    ra, rb = a.results(subset), b.results(subset)
    tasks = list(ra)
    both, a_only, b_only, neither = [], [], [], []
    for t in tasks:
        sa, sb = solved(ra[t]), solved(rb[t])
        (both if sa and sb else a_only if sa else b_only if sb else neither).append(t)
    return PairedComparison(
        a_label=a.label, b_label=b.label, benchmark=a.benchmark, subset=subset,
        a=pass_at_k_interval(ra, 1), b=pass_at_k_interval(rb, 1),
        diff=paired_difference_interval(ra, rb, tasks),
        both=tuple(both), a_only=tuple(a_only), b_only=tuple(b_only), neither=tuple(neither),
        mcnemar_p=mcnemar_exact_p(len(a_only), len(b_only)),
        samples_per_task=(a.samples_per_task(), b.samples_per_task()),
    )


def available_subsets(a: Evaluation, b: Evaluation) -> list[str]:
    """The subsets A and B can be compared on: all, plus clean and contaminated when both carry the same split
    and it is not empty."""
    out = ["all"]
    for subset in SPLIT_SUBSETS:
        try:
            check_comparable(a, b, subset)
        except ComparisonError:
            continue
        out.append(subset)
    return out


def format_p(p: float) -> str:
    """A p-value as a table shows it (three significant digits; '< 0.0001' below that)."""
    if not math.isfinite(p):
        return "-"
    if p < 1e-4:
        return "< 0.0001"
    return f"{p:.3g}" if p < 0.1 else f"{p:.2f}"


# ---------------------------------------------------------------------------------------------- run store


def evaluated(evals: Iterable[Mapping[str, Any]]) -> dict[int, list[str]]:
    """step -> benchmarks evaluated at that step, from a run's evals records (Store.evals), in order."""
    out: dict[int, list[str]] = {}
    for rec in evals:
        benches = out.setdefault(int(rec["step"]), [])
        if rec["benchmark"] not in benches:
            benches.append(rec["benchmark"])
    return dict(sorted(out.items()))


def pick_evaluation(evals: Iterable[Mapping[str, Any]], run_label: str, step: int | None = None,
                    benchmark: str | None = None) -> tuple[int, list[str]]:
    """(step, benchmarks) of the evaluation a run reference means: `step` when given, else the latest step
    evaluated (on `benchmark` when given). ComparisonError says what the run has when nothing fits."""
    done = evaluated(evals)
    if not done:
        raise ComparisonError(f"run {run_label} has no evaluation yet")
    if benchmark is not None:
        done = {s: [b for b in bs if b == benchmark] for s, bs in done.items()}
        done = {s: bs for s, bs in done.items() if bs}
        if not done:
            raise ComparisonError(f"run {run_label} has no {benchmark} evaluation")
    if step is None:
        step = max(done)
    elif step not in done:
        steps = ", ".join(map(str, sorted(done)))
        raise ComparisonError(f"run {run_label} has no evaluation at step {step}"
                              + (f" on {benchmark}" if benchmark else "") + f" (evaluated steps: {steps})")
    return step, done[step]


def parse_run_ref(text: str) -> tuple[str, int | None]:
    """'RUN' or 'RUN@STEP' -> (run, step or None)."""
    run, sep, step = text.rpartition("@")
    if not sep:
        return text, None
    if not step.isdigit():
        raise ComparisonError(f"{text!r}: after '@' comes a step number (RUN@STEP)")
    if not run:
        raise ComparisonError(f"{text!r}: a run id goes before '@STEP'")
    return run, int(step)
