"""pass@1 points of a run with their intervals, from the store's eval records and per-sample results."""

from __future__ import annotations

import pytest

from core.evalstats import eval_points, headline, store_eval_points
from core.records import RunPaths, eval_record
from core.store import Store
from core.uncertainty import T_OVER_TASKS, WILSON, wilson_interval


def _rec(step, bench, subset, p1, n_tasks, spt=1, attempt=0):
    return eval_record(step=step, attempt=attempt, checkpoint=f"c{step}", benchmark=bench, subset=subset,
                       n_tasks=n_tasks, samples_per_task=spt, temperature=0.0, pass_at={1: p1}, t=1.0 + step)


def test_points_come_from_the_rate_without_samples_and_from_the_tasks_with_them(tmp_path):
    with Store(tmp_path / "s.sqlite3") as store:
        store.create_run("r", "run", None, None, "local", "local", "/x")
        recs = [_rec(10, "humaneval", "all", 0.5, 4, spt=2), _rec(20, "humaneval", "all", 0.625, 4, spt=2),
                _rec(20, "humaneval", "clean", 0.5, 2, spt=2), _rec(20, "mbpp", "all", 0.0, 3)]
        store.ingest("r", RunPaths.EVALS, recs, 100, len(recs))
        rows = [{"task_id": f"HumanEval/{t}", "sample": s, "passed": p, "subset": "clean" if t < 2 else "contaminated"}
                for t, outcomes in enumerate([[True, False], [False, False], [True, True], [True, True]])
                for s, p in enumerate(outcomes)]
        store.put_eval_samples("r", 20, "humaneval", rows)
        points = store_eval_points(store, "r")
    by_key = {(p.step, p.benchmark, p.subset): p for p in points}
    assert list(by_key) == [(10, "humaneval", "all"), (20, "humaneval", "all"), (20, "humaneval", "clean"),
                            (20, "mbpp", "all")]
    old = by_key[(10, "humaneval", "all")]
    assert not old.from_samples and old.interval.method == WILSON and old.interval.pair == wilson_interval(2, 4)
    new = by_key[(20, "humaneval", "all")]
    assert new.from_samples and new.interval.method == T_OVER_TASKS and new.pass_at_1 == pytest.approx(0.625)
    clean = by_key[(20, "humaneval", "clean")]
    assert clean.from_samples and clean.n_tasks == 2 and clean.pass_at_1 == pytest.approx(0.25)
    assert headline(points).step == 20 and headline(points).benchmark == "humaneval"
    assert headline(points, "mbpp").label() == f"0.0% ± {100 * wilson_interval(0, 3)[1] / 2:.1f}"
    assert "95% interval" in new.tooltip() and "2 samples per task" in new.tooltip()


def test_a_resumed_attempt_replaces_the_earlier_record_of_the_same_step():
    points = eval_points([_rec(5, "humaneval", "all", 0.2, 10, attempt=0), _rec(5, "humaneval", "all", 0.4, 10, attempt=1)])
    assert [p.pass_at_1 for p in points] == [0.4]
    assert headline([]) is None
