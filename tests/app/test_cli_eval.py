"""`tunedeck eval`: scoring a samples file, evaluating a model, and clear errors for bad input."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from app.cli import build_parser, main, subparsers_names
from core.evalsets import load_humaneval
from core.records import read_records


@pytest.fixture
def problem_subset(tmp_path: Path) -> Path:
    rows = [json.loads(x) for x in gzip.decompress(Path(load_humaneval().path).read_bytes()).splitlines()][:6]
    path = tmp_path / "he6.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _samples(tmp_path: Path, problem_subset: Path) -> Path:
    rows = [json.loads(x) for x in problem_subset.read_text().splitlines()]
    out = tmp_path / "samples.jsonl"
    lines = []
    for i, r in enumerate(rows):
        good = r["canonical_solution"] if i % 2 == 0 else "    return None\n"
        lines.append(json.dumps({"task_id": r["task_id"], "completion": good}))
    out.write_text("\n".join(lines) + "\n")
    return out


def test_eval_is_registered_in_the_cli() -> None:
    assert "eval" in subparsers_names(build_parser())


def test_eval_scores_a_samples_file_and_prints_a_summary(tmp_path: Path, problem_subset: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    samples = _samples(tmp_path, problem_subset)
    out = tmp_path / "out"
    code = main(["eval", "--samples", str(samples), "--bench", f"humaneval={problem_subset}", "--out", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "humaneval" in printed and "50.0%" in printed
    records, _ = read_records(out / "evals.jsonl", "evals")
    assert [(r["subset"], r["n_tasks"], r["pass@1"]) for r in records] == [("all", 6, 0.5)]
    rows = [json.loads(x) for x in (out / "samples" / "step-0-humaneval.jsonl").read_text().splitlines()]
    assert [r["passed"] for r in rows] == [True, False] * 3


def test_eval_with_a_contamination_report_adds_clean_and_contaminated_rows(tmp_path: Path, problem_subset: Path,
                                                                          capsys: pytest.CaptureFixture[str]) -> None:
    samples = _samples(tmp_path, problem_subset)
    report = tmp_path / "report.json"
    report.write_text(json.dumps({"clean": [], "contaminated": ["HumanEval/0", "HumanEval/2"]}))
    out = tmp_path / "out"
    assert main(["eval", "--samples", str(samples), "--bench", f"humaneval={problem_subset}", "--out", str(out),
                 "--contamination", str(report)]) == 0
    records, _ = read_records(out / "evals.jsonl", "evals")
    got = {r["subset"]: (r["n_tasks"], r["pass@1"]) for r in records}
    assert got == {"all": (6, 0.5), "contaminated": (2, 1.0), "clean": (4, 0.25)}
    assert "contaminated" in capsys.readouterr().out


def test_eval_generates_with_a_model_and_scores_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from tests.job.test_evaluate import build_tiny_model

    model = build_tiny_model(tmp_path / "model")
    out = tmp_path / "out"
    assert main(["eval", "--model", str(model), "--bench", "humaneval", "--limit", "2", "--max-new-tokens", "8",
                 "--n", "2", "--temperature", "0.7", "--out", str(out)]) == 0
    records, _ = read_records(out / "evals.jsonl", "evals")
    assert len(records) == 1 and records[0]["n_tasks"] == 2 and "pass@2" in records[0]
    assert records[0]["pass@1"] <= 0.5  # random weights
    assert len((out / "samples" / "step-0-humaneval.jsonl").read_text().splitlines()) == 4
    assert "pass@1" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--bench", "nosuch"], "unknown eval set 'nosuch'"),
        (["--bench", "mbpp"], "needs a path"),
        (["--bench", "humaneval", "--bench", "humaneval"], "exactly one --bench"),
    ],
)
def test_eval_rejects_bad_benchmark_specs(argv: list[str], message: str, tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    samples = tmp_path / "s.jsonl"
    samples.write_text(json.dumps({"task_id": "HumanEval/0", "completion": "    pass\n"}) + "\n")
    code = main(["eval", "--samples", str(samples), "--out", str(tmp_path / "o"), *argv])
    assert code == 2
    assert message in capsys.readouterr().err


def test_eval_reports_the_file_and_line_of_a_bad_sample(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    samples = tmp_path / "s.jsonl"
    samples.write_text(json.dumps({"task_id": "HumanEval/0", "completion": "    pass\n"}) + "\n{not json\n")
    code = main(["eval", "--samples", str(samples), "--bench", "humaneval", "--out", str(tmp_path / "o")])
    assert code == 2
    assert f"{samples}:2:" in capsys.readouterr().err
    assert not (tmp_path / "o" / "evals.jsonl").exists()


def test_eval_reports_an_unknown_task_id(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    samples = tmp_path / "s.jsonl"
    samples.write_text(json.dumps({"task_id": "HumanEval/999", "completion": "x"}) + "\n")
    assert main(["eval", "--samples", str(samples), "--bench", "humaneval", "--out", str(tmp_path / "o")]) == 2
    assert "HumanEval/999" in capsys.readouterr().err


def test_eval_with_sandbox_unconfined_runs_and_marks_every_pass_at_1(tmp_path: Path, problem_subset: Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    samples = _samples(tmp_path, problem_subset)
    out = tmp_path / "out"
    assert main(["eval", "--samples", str(samples), "--bench", f"humaneval={problem_subset}", "--out", str(out),
                 "--sandbox", "unconfined"]) == 0
    captured = capsys.readouterr()
    rows = [line for line in captured.out.splitlines() if line.startswith("humaneval")]
    assert rows and all(line.endswith("UNCONFINED") for line in rows)
    assert "sandbox: UNCONFINED" in captured.err
    records, _ = read_records(out / "evals.jsonl", "evals")
    assert [(r["pass@1"], r["sandbox"]) for r in records] == [(0.5, "unconfined")]


def test_eval_default_sandbox_is_confined_and_recorded(tmp_path: Path, problem_subset: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    samples = _samples(tmp_path, problem_subset)
    out = tmp_path / "out"
    assert main(["eval", "--samples", str(samples), "--bench", f"humaneval={problem_subset}", "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert "UNCONFINED" not in captured.out + captured.err
    records, _ = read_records(out / "evals.jsonl", "evals")
    assert records[0]["sandbox"] in ("root-namespaces", "bwrap", "userns")


def test_eval_refuses_with_the_paragraph_when_the_chosen_sandbox_is_missing(
        tmp_path: Path, problem_subset: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    from remote.job import sandbox

    monkeypatch.setattr(sandbox, "_modes", {})  # probe afresh, with bubblewrap gone
    monkeypatch.setenv("TUNEDECK_BWRAP", "")
    samples = _samples(tmp_path, problem_subset)
    out = tmp_path / "out"
    code = main(["eval", "--samples", str(samples), "--bench", f"humaneval={problem_subset}", "--out", str(out),
                 "--sandbox", "bwrap"])
    assert code == 1
    err = capsys.readouterr().err
    assert "refuses to run model-written code" in err and "(evaluation.sandbox is 'bwrap')" in err
    assert "bubblewrap (bwrap) is not installed" in err and "apt-get install bubblewrap" in err
    assert "--sandbox unconfined" in err
    assert not out.exists()  # stopped before anything was scored or written


def test_eval_rejects_an_unknown_sandbox_policy(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["eval", "--samples", "s.jsonl", "--bench", "humaneval", "--out", str(tmp_path), "--sandbox", "none"])
    assert exit_info.value.code == 2
    assert "--sandbox: invalid choice: 'none'" in capsys.readouterr().err


def test_eval_of_a_runs_checkpoint_lists_cancels_and_requeues_it(tmp_path: Path, repo_root: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """`tunedeck eval --run RUN --list / --step N --cancel / --step N` through the real queue tool on this
    machine (a run directory whose placement is after_training: nothing is evaluated here)."""
    from core.records import RunPaths
    from core.store import Store
    from remote.job.evalqueue import append_event
    from tests.app.run_feed import create_run
    from tests.app.test_eval_panel import _run_dir

    run = _run_dir(tmp_path, repo_root)
    with Store() as store:
        create_run(store, "20260101-000000-aaaaaa", run_dir=run, job_id="4244", status="finished")
    append_event(RunPaths(run), "eval_requested", 1, {"step": 20, "placement": "after_training",
                                                      "checkpoint": str(run / "checkpoints/checkpoint-20")})
    (run / RunPaths.EXIT_STATUS).write_text("1\n")  # the job is over: a re-queue now starts at once
    assert main(["eval", "--run", "20260101", "--list"]) == 0
    assert "step     20  failed: ended without a result: the run finished" in capsys.readouterr().out
    # the queue on the cluster still holds it (its drain never ran it): a cancel takes it off
    assert main(["eval", "--run", "20260101", "--step", "20", "--cancel"]) == 0
    assert "removed from the queue" in capsys.readouterr().out
    assert main(["eval", "--run", "20260101", "--list"]) == 0
    assert "step     20  cancelled" in capsys.readouterr().out
    assert main(["eval", "--run", "20260101", "--step", "20", "--cancel"]) == 1  # nothing open any more
    assert "no queued or running evaluation of step 20 (it is cancelled)" in capsys.readouterr().err
    assert main(["eval", "--run", "20260101", "--step", "30", "--no-wait"]) == 1
    assert "no checkpoint of step 30 there" in capsys.readouterr().err
