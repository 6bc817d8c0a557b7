"""Paired comparisons of two evaluations: the 2x2 table, McNemar, intervals, and refusals that say why."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from core.paired import (
    ComparisonError,
    available_subsets,
    compare,
    evaluation_from_rows,
    parse_run_ref,
    pick_evaluation,
    read_samples_file,
    solved,
)
from core.uncertainty import newcombe_paired_interval, wilson_interval


def _rows(outcomes: dict[str, list[bool]], subsets: dict[str, str] | None = None, bench: str = "humaneval"):
    return [{"task_id": t, "sample": i, "passed": p, "subset": (subsets or {}).get(t, "all"), "benchmark": bench,
             "step": 0, "completion": f"# {t} sample {i}"} for t, ps in outcomes.items() for i, p in enumerate(ps)]


def _ev(outcomes, subsets=None, bench="humaneval", label="x"):
    return evaluation_from_rows(_rows(outcomes, subsets, bench), label)


def test_two_by_two_counts_mcnemar_and_intervals_match_a_direct_calculation():
    tasks = [f"HumanEval/{i}" for i in range(40)]
    a = {t: [i < 22] for i, t in enumerate(tasks)}  # A solves 0..21
    b = {t: [3 <= i < 30] for i, t in enumerate(tasks)}  # B solves 3..29
    c = compare(_ev(a, label="A"), _ev(b, label="B"))
    assert (len(c.both), len(c.a_only), len(c.b_only), len(c.neither)) == (19, 3, 8, 10)
    assert c.a_only == ("HumanEval/0", "HumanEval/1", "HumanEval/2")  # numeric task order
    assert c.n_tasks == 40
    expected_p = min(1.0, 2 * sum(math.comb(11, i) for i in range(4)) / 2 ** 11)
    assert c.mcnemar_p == pytest.approx(expected_p)
    assert c.a.pair == pytest.approx(wilson_interval(22, 40)) and c.b.pair == pytest.approx(wilson_interval(27, 40))
    assert (c.diff.estimate, *c.diff.pair) == pytest.approx(newcombe_paired_interval(19, 3, 8, 10))
    js = c.to_json()
    assert js["a_pass@1"] == pytest.approx(0.55) and js["b_pass@1"] == pytest.approx(0.675)
    assert js["a_ci95"] == pytest.approx(list(wilson_interval(22, 40)))
    assert (js["both"], js["a_only"], js["b_only"], js["neither"]) == (19, 3, 8, 10)
    assert js["b_only_tasks"] == [f"HumanEval/{i}" for i in range(22, 30)]


def test_several_samples_per_task_count_a_task_solved_when_half_or_more_pass():
    assert solved([True, False]) and solved([True, True, False]) and not solved([True, False, False])
    a = _ev({"t/0": [True, True, False], "t/1": [False, False, True], "t/2": [True, False, True]})
    b = _ev({"t/0": [False, False, False], "t/1": [True, True, True], "t/2": [True, True, True]})
    c = compare(a, b)
    assert (c.a_only, c.b_only, c.both) == (("t/0",), ("t/1",), ("t/2",))
    assert c.a.estimate == pytest.approx(5 / 9) and c.b.estimate == pytest.approx(6 / 9)
    assert c.diff.method == "t-paired-over-tasks" and c.samples_per_task == (3, 3)


def test_clean_and_contaminated_subsets_are_compared_separately():
    outcomes_a = {f"t/{i}": [i % 2 == 0] for i in range(10)}
    outcomes_b = {f"t/{i}": [True] for i in range(10)}
    split = {f"t/{i}": ("contaminated" if i < 3 else "clean") for i in range(10)}
    a, b = _ev(outcomes_a, split), _ev(outcomes_b, split)
    assert available_subsets(a, b) == ["all", "clean", "contaminated"]
    dirty = compare(a, b, "contaminated")
    assert dirty.n_tasks == 3 and dirty.b_only == ("t/1",) and dirty.both == ("t/0", "t/2")
    clean = compare(a, b, "clean")
    assert clean.n_tasks == 7 and clean.b_only == ("t/3", "t/5", "t/7", "t/9")


def test_different_benchmarks_task_sets_or_splits_are_refused_with_the_reason():
    base = {f"HumanEval/{i}": [True] for i in range(10)}
    with pytest.raises(ComparisonError, match=r"humaneval evaluation and B .* a mbpp one"):
        compare(_ev(base, label="A"), _ev({f"mbpp/{i}": [True] for i in range(10)}, bench="mbpp", label="B"))
    fewer = {f"HumanEval/{i}": [True] for i in range(6)}
    with pytest.raises(ComparisonError, match=r"has 10 humaneval tasks and B \(B\) 6.*4 only in A \(HumanEval/6, "
                                              r"HumanEval/7, HumanEval/8, HumanEval/9\).*--limit"):
        compare(_ev(base, label="A"), _ev(fewer, label="B"))
    with pytest.raises(ComparisonError, match=r"B .* was evaluated without a contamination report.*no clean subset"):
        compare(_ev(base, {"HumanEval/1": "contaminated"}), _ev(base, label="B"), "clean")
    other_split = {"HumanEval/2": "contaminated"}
    with pytest.raises(ComparisonError, match=r"mark different tasks as contaminated \(2 differ"):
        compare(_ev(base, {"HumanEval/1": "contaminated"}), _ev(base, other_split), "clean")
    with pytest.raises(ComparisonError, match=r"no contaminated tasks"):
        all_clean = {t: "clean" for t in base}
        compare(_ev(base, all_clean), _ev(base, all_clean), "contaminated")


def test_per_sample_files_are_read_with_errors_that_name_file_and_line(tmp_path: Path):
    good = tmp_path / "samples" / "step-0-humaneval.jsonl"
    good.parent.mkdir()
    good.write_text("".join(json.dumps(r) + "\n" for r in _rows({"HumanEval/0": [True], "HumanEval/1": [False]})))
    ev = read_samples_file(good)
    assert ev.benchmark == "humaneval" and ev.task_ids == ["HumanEval/0", "HumanEval/1"] and ev.step == 0
    assert read_samples_file(tmp_path).task_ids == ev.task_ids  # the `eval --out` directory names its one file
    with pytest.raises(ComparisonError, match="holds humaneval results, not mbpp"):
        read_samples_file(good, "mbpp")
    completions = tmp_path / "completions.jsonl"
    completions.write_text(json.dumps({"task_id": "HumanEval/0", "completion": "pass"}) + "\n")
    with pytest.raises(ComparisonError, match=r"completions.jsonl:1: no 'passed' field.*tunedeck eval --samples"):
        read_samples_file(completions)
    broken = tmp_path / "broken.jsonl"
    broken.write_text(good.read_text() + "\n{not json\n")
    with pytest.raises(ComparisonError, match=r"broken.jsonl:4: not JSON"):
        read_samples_file(broken)
    dup = tmp_path / "dup.jsonl"
    dup.write_text(good.read_text().splitlines()[0] + "\n" + good.read_text().splitlines()[0] + "\n")
    with pytest.raises(ComparisonError, match=r"dup.jsonl:2: task HumanEval/0 sample 0 appears twice"):
        read_samples_file(dup)
    with pytest.raises(ComparisonError, match="no per-sample results"):
        (tmp_path / "empty.jsonl").write_text("\n")
        read_samples_file(tmp_path / "empty.jsonl")


def test_run_references_pick_the_latest_evaluation_or_the_step_asked_for():
    evals = [{"step": s, "benchmark": b} for s, b in ((10, "humaneval"), (10, "mbpp"), (20, "humaneval"))]
    assert parse_run_ref("20260101-000000-abc123@20") == ("20260101-000000-abc123", 20)
    assert parse_run_ref("abc") == ("abc", None)
    with pytest.raises(ComparisonError, match="step number"):
        parse_run_ref("abc@last")
    assert pick_evaluation(evals, "r") == (20, ["humaneval"])
    assert pick_evaluation(evals, "r", benchmark="mbpp") == (10, ["mbpp"])
    assert pick_evaluation(evals, "r", step=10) == (10, ["humaneval", "mbpp"])
    with pytest.raises(ComparisonError, match=r"no evaluation at step 15 \(evaluated steps: 10, 20\)"):
        pick_evaluation(evals, "r", step=15)
    with pytest.raises(ComparisonError, match="no evaluation yet"):
        pick_evaluation([], "r")


def test_task_prompts_come_from_each_benchmarks_own_data_and_say_why_when_missing(tmp_path):
    from core.evalsets import EvalSetError, task_prompts

    humaneval = task_prompts("humaneval", tmp_path)
    assert len(humaneval) == 164 and humaneval["HumanEval/0"].lstrip().startswith("from typing import List")
    with pytest.raises(EvalSetError, match=r"mbpp\.jsonl not found .*tunedeck data download"):
        task_prompts("mbpp", tmp_path)  # nothing downloaded here
    with pytest.raises(EvalSetError, match="no prompts known for benchmark 'custom'"):
        task_prompts("custom", tmp_path)
