"""`tunedeck compare A B`: a paired comparison of two evaluations on the same tasks.

A and B are each a run (its latest evaluated checkpoint), RUN@STEP, or a per-sample results file written by
`tunedeck eval --out DIR` (DIR/samples/step-N-BENCH.jsonl; DIR itself when it holds one such file).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from app.cli.errors import CliError

INTERVAL_NOTE = ("95% intervals: pass@1 by {a_method}; B - A by {diff_method}. McNemar's exact test: two-sided "
                 "binomial on the {discordant} task(s) solved by one side only.")


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "compare",
        help="Paired comparison of two evaluations: tasks solved by each, McNemar's exact test, pass@1 and "
             "the difference with 95%% intervals.",
        description="Compare two evaluations on the same tasks. A and B are each a run id (its latest evaluated "
                    "checkpoint), RUN@STEP, or a per-sample results file from `tunedeck eval --out DIR` "
                    "(DIR/samples/step-N-BENCH.jsonl). Intervals: Wilson's score interval over tasks for pass@1 "
                    "with one sample per task, Student's t over the per-task estimates with more; the difference "
                    "B - A by Newcombe's paired score interval (t over per-task differences with more samples). "
                    "With several samples per task a task counts as solved when at least half pass.",
    )
    p.add_argument("a", metavar="A", help="RUN, RUN@STEP or a per-sample results file")
    p.add_argument("b", metavar="B", help="RUN, RUN@STEP or a per-sample results file")
    p.add_argument("--bench", help="benchmark to compare (needed when a run evaluated several)")
    p.add_argument("--subset", choices=("all", "clean", "contaminated"), default="all",
                   help="tasks to compare: all (default), or the clean / contaminated ones of the contamination "
                        "report both evaluations used")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(handler=cmd_compare)


def _is_file_ref(text: str) -> bool:
    p = Path(text)
    return p.exists() or text.endswith((".jsonl", ".json")) or "/" in text.replace("\\", "/")


def _load_file(text: str, bench: str | None) -> Any:
    from core.paired import ComparisonError, read_samples_file

    if not Path(text).exists():
        raise CliError(f"{text}: no such file (A and B are run ids, RUN@STEP, or per-sample result files)")
    try:
        return read_samples_file(text, bench)
    except ComparisonError as exc:
        raise CliError(str(exc)) from None


def _load_run(text: str, bench: str | None, store: Any) -> Any:
    from core.paired import ComparisonError
    from remote.samples import resolve_run_ref

    try:
        return resolve_run_ref(store, text, bench)
    except ComparisonError as exc:
        raise CliError(str(exc)) from None


def cmd_compare(args: argparse.Namespace) -> int:
    from core.paired import ComparisonError, available_subsets, compare

    sides: dict[str, Any] = {}
    refs = {"a": args.a, "b": args.b}
    for key, text in refs.items():
        if _is_file_ref(text):
            sides[key] = _load_file(text, args.bench)
    # A file fixes the benchmark for a run on the other side; with two runs, A's benchmark is B's.
    bench = args.bench or next((ev.benchmark for ev in sides.values()), None)
    names: dict[str, str] = {}
    if len(sides) < 2:
        from core.names import display_names
        from core.store import Store

        with Store() as store:
            for key, text in refs.items():
                if key not in sides:
                    sides[key] = _load_run(text, bench, store)
                    bench = bench or sides[key].benchmark
                    run_id = sides[key].label.rpartition("@")[0]
                    names[key] = display_names(store.list_runs()).get(run_id, run_id)
    a, b = sides["a"], sides["b"]
    try:
        main = compare(a, b, args.subset)
    except ComparisonError as exc:
        raise CliError(str(exc)) from None
    subsets = available_subsets(a, b) if args.subset == "all" else [args.subset]
    others = {s: compare(a, b, s) for s in subsets if s != args.subset}
    if args.json:
        out = main.to_json()
        if others:
            out["by_subset"] = {s: c.to_json(with_tasks=False) for s, c in {args.subset: main, **others}.items()}
        print(json.dumps(out, indent=1))
        return 0
    _print_text(main, [main, *others.values()], a, b, names)
    return 0


def _pct(x: float) -> str:
    return f"{100 * x:.1f}"


def _print_text(main: Any, rows: list[Any], a: Any, b: Any, names: dict[str, str]) -> None:
    from core.names import printable
    from core.paired import format_p

    for side, ev, n in (("A", a, main.samples_per_task[0]), ("B", b, main.samples_per_task[1])):
        name = names.get(side.lower())
        label = f"{name}  ({printable(ev.label)})" if name else printable(ev.label)
        print(f"{side}  {label}, {n} sample{'s' if n != 1 else ''} per task")
    print(f"   {main.benchmark}, {main.n_tasks} tasks in common")
    print()
    head = (f"{'subset':<13} {'tasks':>5}  {'A pass@1 % [95%]':<19} {'B pass@1 % [95%]':<19} {'B - A pts [95%]':<21} "
            f"{'both':>5} {'A only':>6} {'B only':>6} {'neither':>7}  McNemar p")
    print(head)
    print("-" * len(head))
    for c in rows:
        a_cell = f"{_pct(c.a.estimate)} [{_pct(c.a.low)}, {_pct(c.a.high)}]"
        b_cell = f"{_pct(c.b.estimate)} [{_pct(c.b.low)}, {_pct(c.b.high)}]"
        d = c.diff
        d_cell = f"{100 * d.estimate:+.1f} [{100 * d.low:+.1f}, {100 * d.high:+.1f}]"
        print(f"{c.subset:<13} {c.n_tasks:>5}  {a_cell:<19} {b_cell:<19} {d_cell:<21} {len(c.both):>5} "
              f"{len(c.a_only):>6} {len(c.b_only):>6} {len(c.neither):>7}  {format_p(c.mcnemar_p)}")
    print()
    for title, ids in (("A only", main.a_only), ("B only", main.b_only)):
        print(f"{title} ({len(ids)}): " + (", ".join(ids) if ids else "none"))
    print()
    note = INTERVAL_NOTE.format(a_method=main.a.describe(), diff_method=main.diff.describe(),
                                discordant=len(main.a_only) + len(main.b_only))
    print(note, file=sys.stderr)
