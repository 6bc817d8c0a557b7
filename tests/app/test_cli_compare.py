"""`tunedeck compare A B`: paired comparisons of per-sample result files and of runs' evaluations.

The files are made the way users make them: `tunedeck eval --samples ... --out DIR` scores completions in the
sandbox and writes DIR/samples/step-0-humaneval.jsonl; run directories get theirs from evaluate.write_outputs.
"""

from __future__ import annotations

import gzip
import json
import math
from pathlib import Path

import pytest

from app.cli import main
from core.evalsets import load_humaneval
from core.records import JsonlWriter, RunPaths, read_records
from core.store import Store
from core.uncertainty import wilson_interval

N_TASKS = 20
CONTAMINATED = ["HumanEval/1", "HumanEval/4", "HumanEval/5", "HumanEval/8", "HumanEval/13", "HumanEval/16"]


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def problems(tmp_path_factory) -> tuple[Path, list[dict]]:
    rows = [json.loads(x) for x in gzip.decompress(Path(load_humaneval().path).read_bytes()).splitlines()][:N_TASKS]
    path = tmp_path_factory.mktemp("he") / f"he{N_TASKS}.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path, rows


def scored(tmp_path: Path, capsys, problems, name: str, solve, report: Path | None = None) -> Path:
    """`tunedeck eval --samples` on completions that are the canonical solution where solve(i), else wrong."""
    path, rows = problems
    samples = tmp_path / f"{name}-completions.jsonl"
    samples.write_text("".join(json.dumps({"task_id": r["task_id"], "completion": r["canonical_solution"] if solve(i)
                                           else "    return None\n"}) + "\n" for i, r in enumerate(rows)))
    out = tmp_path / name
    argv = ["eval", "--samples", str(samples), "--bench", f"humaneval={path}", "--out", str(out)]
    if report is not None:
        argv += ["--contamination", str(report)]
    code, _, err = run_cli(capsys, *argv)
    assert code == 0, err
    return out / RunPaths.SAMPLES / "step-0-humaneval.jsonl"


def _passed(path: Path) -> dict[str, bool]:
    return {r["task_id"]: r["passed"] for r in map(json.loads, path.read_text().splitlines())}


def test_compare_two_per_sample_files_gives_counts_and_an_exact_mcnemar_p_matching_a_direct_calculation(
        tmp_path, capsys, problems):
    report = tmp_path / "report.json"
    report.write_text(json.dumps({"clean": [], "contaminated": CONTAMINATED}))
    a = scored(tmp_path, capsys, problems, "a", lambda i: i % 2 == 0, report)
    b = scored(tmp_path, capsys, problems, "b", lambda i: i < 14, report)

    code, out, err = run_cli(capsys, "compare", str(a), str(b), "--json")

    assert code == 0, err
    got = json.loads(out)
    pa, pb = _passed(a), _passed(b)
    assert [t for t, ok in pa.items() if ok] == [f"HumanEval/{i}" for i in range(0, N_TASKS, 2)]  # as designed
    both = sum(pa[t] and pb[t] for t in pa)
    a_only = sum(pa[t] and not pb[t] for t in pa)
    b_only = sum(pb[t] and not pa[t] for t in pa)
    neither = sum(not pa[t] and not pb[t] for t in pa)
    assert (got["both"], got["a_only"], got["b_only"], got["neither"]) == (both, a_only, b_only, neither) == (7, 3, 7, 3)
    n = a_only + b_only
    direct_p = min(1.0, 2 * sum(math.comb(n, i) for i in range(min(a_only, b_only) + 1)) / 2 ** n)
    assert got["mcnemar_p"] == pytest.approx(direct_p, rel=1e-12)
    assert got["n_tasks"] == N_TASKS
    assert got["a_pass@1"] == pytest.approx(0.5) and got["b_pass@1"] == pytest.approx(0.7)
    assert got["a_ci95"] == pytest.approx(list(wilson_interval(10, N_TASKS)))
    assert got["b_ci95"] == pytest.approx(list(wilson_interval(14, N_TASKS)))
    assert got["diff"] == pytest.approx(0.2) and got["diff_ci95"][0] < 0.2 < got["diff_ci95"][1]
    assert sorted(got["a_only_tasks"]) == sorted(t for t in pa if pa[t] and not pb[t])
    # the clean and contaminated subsets separately
    dirty = got["by_subset"]["contaminated"]
    assert dirty["n_tasks"] == len(CONTAMINATED)
    assert dirty["a_only"] == sum(pa[t] and not pb[t] for t in CONTAMINATED)
    assert got["by_subset"]["clean"]["n_tasks"] == N_TASKS - len(CONTAMINATED)

    code, out, err = run_cli(capsys, "compare", str(a), str(b), "--subset", "contaminated", "--json")
    assert code == 0 and json.loads(out)["n_tasks"] == len(CONTAMINATED) and "by_subset" not in json.loads(out)

    code, out, err = run_cli(capsys, "compare", str(a.parent.parent), str(b))  # the --out directory names its file
    assert code == 0
    lines = out.splitlines()
    assert any(line.startswith("all ") and " 7 " in line for line in lines)
    assert any(line.startswith("contaminated ") for line in lines) and any(line.startswith("clean ") for line in lines)
    assert "A only (3): " in out and "Wilson" in err and "McNemar" in err


def test_compare_refuses_different_task_sets_benchmarks_and_missing_splits(tmp_path, capsys, problems):
    a = scored(tmp_path, capsys, problems, "a", lambda i: True)
    short = tmp_path / "short.jsonl"
    short.write_text("".join(line + "\n" for line in a.read_text().splitlines()[:12]))
    code, out, err = run_cli(capsys, "compare", str(a), str(short))
    assert code == 2 and out == ""
    assert "has 20 humaneval tasks and B" in err and "8 only in A" in err

    mbpp = tmp_path / "mbpp.jsonl"
    mbpp.write_text("".join(json.dumps({"task_id": f"mbpp/{i}", "sample": 0, "passed": True, "benchmark": "mbpp"}) + "\n"
                            for i in range(20)))
    code, _, err = run_cli(capsys, "compare", str(a), str(mbpp), "--json")
    assert code == 2 and "same benchmark" in err

    code, _, err = run_cli(capsys, "compare", str(a), str(a), "--subset", "clean")
    assert code == 2 and "without a contamination report" in err
    code, _, err = run_cli(capsys, "compare", str(a), str(tmp_path / "missing.jsonl"))
    assert code == 2 and "missing.jsonl: no such file" in err


def _run_with_evals(store: Store, run_dir: Path, run_id: str, outcomes: dict[int, list[bool]]) -> None:
    """A finished local run whose run directory holds per-sample files written by the evaluation's writer."""
    from remote.job.evaluate import GenSettings, write_outputs

    es = load_humaneval()
    es.tasks = es.tasks[:N_TASKS]
    store.create_run(run_id, "Tiny demo (CPU)", None, {"training": {"lr": 1e-4}}, "local", "local", str(run_dir),
                     status="finished")
    with JsonlWriter(run_dir / RunPaths.EVALS) as writer:
        for step, passed in outcomes.items():
            rows = [{"task_id": t.task_id, "sample": 0, "completion": f"# step {step}", "passed": ok, "error": None,
                     "seconds": 0.1} for t, ok in zip(es.tasks, passed, strict=True)]
            write_outputs(run_dir, es, rows, {"all": [t.task_id for t in es.tasks]}, step=step, attempt=0,
                          checkpoint=f"checkpoint-{step}", gen=GenSettings(), evals_writer=writer)
    records, _ = read_records(run_dir / RunPaths.EVALS, "evals")
    store.ingest(run_id, RunPaths.EVALS, records, (run_dir / RunPaths.EVALS).stat().st_size, len(records))


def test_compare_run_ids_uses_the_latest_evaluation_or_run_at_step_and_keeps_the_samples(tmp_path, capsys, problems):
    with Store() as store:
        _run_with_evals(store, tmp_path / "r1", "20260101-100000-aaaaaa",
                        {10: [i < 8 for i in range(N_TASKS)], 20: [i < 12 for i in range(N_TASKS)]})
        _run_with_evals(store, tmp_path / "r2", "20260101-110000-bbbbbb", {30: [i % 4 != 0 for i in range(N_TASKS)]})
        assert store.eval_sample_sets("20260101-100000-aaaaaa") == []  # nothing copied yet

    code, out, err = run_cli(capsys, "compare", "20260101-100000-aaaaaa@10", "20260101-100000-aaaaaa", "--json")
    assert code == 0, err
    got = json.loads(out)
    assert (got["a"], got["b"]) == ("20260101-100000-aaaaaa@10", "20260101-100000-aaaaaa@20")
    assert (got["both"], got["a_only"], got["b_only"], got["neither"]) == (8, 0, 4, 8)
    assert got["mcnemar_p"] == pytest.approx(2 / 16)
    with Store() as store:  # fetched once from the run directory, then read from the store
        assert store.eval_sample_sets("20260101-100000-aaaaaa") == [(10, "humaneval"), (20, "humaneval")]

    code, out, _ = run_cli(capsys, "compare", "20260101-100000-aaaaaa@10", "20260101-110000-bbbbbb")
    assert code == 0 and "A  Tiny demo (CPU) · aaaaaa  (20260101-100000-aaaaaa@10), 1 sample per task" in out
    assert "B  Tiny demo (CPU) · bbbbbb  (20260101-110000-bbbbbb@30)" in out

    code, out, err = run_cli(capsys, "compare", "20260101-1000", "20260101-1100", "--json")  # unique prefixes
    assert code == 0, err
    got = json.loads(out)
    assert (got["both"], got["a_only"], got["b_only"], got["neither"]) == (9, 3, 6, 2)

    code, _, err = run_cli(capsys, "compare", "20260101-100000-aaaaaa@15", "20260101-110000-bbbbbb")
    assert code == 2 and "no evaluation at step 15 (evaluated steps: 10, 20)" in err
    code, _, err = run_cli(capsys, "compare", "20260101-100000-aaaaaa", "20260101-100000-aaaaaa", "--bench", "mbpp")
    assert code == 2 and "has no mbpp evaluation" in err

    # the same numbers appear, with their intervals, where runs are listed
    code, out, _ = run_cli(capsys, "status", "20260101-100000-aaaaaa", "--no-refresh")
    assert "pass@1 humaneval" in out and f"60.0% ± {50 * (wilson_interval(12, 20)[1] - wilson_interval(12, 20)[0]):.1f}" in out
    code, out, _ = run_cli(capsys, "runs")
    assert "60.0% ±" in out and "humaneval@20" in out
    assert "Tiny demo (CPU) · aaaaaa" in out and "Tiny demo (CPU) · bbbbbb" in out
    code, out, _ = run_cli(capsys, "runs", "--json")
    row = next(r for r in json.loads(out) if r["run_id"] == "20260101-110000-bbbbbb")
    assert row["pass@1"] == pytest.approx(0.75) and row["pass@1_ci95"] == pytest.approx(list(wilson_interval(15, 20)))
