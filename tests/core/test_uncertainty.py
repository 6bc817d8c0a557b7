"""95% intervals and McNemar's exact test, checked against published values and direct calculations."""

from __future__ import annotations

import math
import random

import pytest

from core.passk import pass_at_k
from core.uncertainty import (
    NEWCOMBE,
    T_OVER_TASKS,
    T_PAIRED,
    WILSON,
    eval_record_interval,
    interval_from_rate,
    mcnemar_exact_p,
    newcombe_paired_interval,
    paired_difference_interval,
    pass_at_k_interval,
    t_quantile,
    wilson_interval,
)


@pytest.mark.parametrize(("successes", "n", "low", "high"), [
    # Newcombe (1998), "Two-sided confidence intervals for the single proportion", table I, method 3
    (81, 263, 0.2553, 0.3662), (15, 148, 0.0624, 0.1605), (0, 20, 0.0, 0.1611), (1, 29, 0.0061, 0.1718),
])
def test_wilson_interval_matches_newcombes_published_values(successes, n, low, high):
    lo, hi = wilson_interval(successes, n)
    assert lo == pytest.approx(low, abs=6e-5) and hi == pytest.approx(high, abs=6e-5)


def test_humaneval_at_fifty_percent_has_the_interval_the_issue_quotes():
    lo, hi = wilson_interval(82, 164)
    assert (hi - lo) / 2 == pytest.approx(0.075, abs=0.003)  # about +-7.5 points on 164 tasks
    assert wilson_interval(164, 164)[1] == 1.0 and wilson_interval(0, 164)[0] == 0.0


@pytest.mark.parametrize(("df", "q"), [(1, 12.7062), (2, 4.3027), (4, 2.7764), (10, 2.2281), (30, 2.0423),
                                       (163, 1.9746), (20_000, 1.9600)])
def test_t_quantile_matches_the_tables(df, q):
    assert t_quantile(df) == pytest.approx(q, abs=1e-4)


def _mcnemar_reference(b: int, c: int) -> float:
    """Two-sided exact McNemar p, written out: double the smaller binomial tail of Bin(b + c, 1/2)."""
    n = b + c
    if n == 0:
        return 1.0
    lower = sum(math.comb(n, i) for i in range(min(b, c) + 1)) / 2 ** n
    return min(1.0, 2 * lower)


@pytest.mark.parametrize(("b", "c"), [(0, 0), (1, 0), (10, 2), (2, 10), (5, 5), (7, 8), (0, 12), (40, 25)])
def test_mcnemar_exact_p_is_the_doubled_binomial_tail(b, c):
    assert mcnemar_exact_p(b, c) == pytest.approx(_mcnemar_reference(b, c), rel=1e-12)


def test_mcnemar_exact_p_known_value_and_large_counts():
    assert mcnemar_exact_p(10, 2) == pytest.approx(79 / 2048)  # 2 * (1 + 12 + 66) / 4096
    assert 0 < mcnemar_exact_p(600, 700) < 0.01  # n = 1300: no float overflow on 2**n
    with pytest.raises(ValueError):
        mcnemar_exact_p(-1, 3)


def test_pass_at_1_with_one_sample_per_task_is_wilson_over_tasks():
    results = {f"t/{i}": [i % 3 == 0] for i in range(30)}  # 10 of 30 solved
    iv = pass_at_k_interval(results)
    assert iv.method == WILSON and iv.estimate == pytest.approx(1 / 3)
    assert iv.pair == pytest.approx(wilson_interval(10, 30))


def test_pass_at_k_with_several_samples_is_a_t_interval_over_the_per_task_estimates():
    rng = random.Random(7)
    results = {f"t/{i}": [rng.random() < (i % 5) / 5 for _ in range(10)] for i in range(40)}
    for k in (1, 5):
        per_task = [pass_at_k(10, sum(v), k) for v in results.values()]
        mean = sum(per_task) / 40
        sd = math.sqrt(sum((x - mean) ** 2 for x in per_task) / 39)
        half = 2.0227 * sd / math.sqrt(40)  # t(0.975, 39)
        iv = pass_at_k_interval(results, k)
        assert iv.method == T_OVER_TASKS
        assert iv.estimate == pytest.approx(mean)
        assert iv.low == pytest.approx(max(0.0, mean - half), abs=2e-4)
        assert iv.high == pytest.approx(min(1.0, mean + half), abs=2e-4)


def test_unanimous_tasks_do_not_get_a_zero_width_interval():
    iv = pass_at_k_interval({f"t/{i}": [True] * 4 for i in range(20)})
    assert iv.estimate == 1.0 and iv.high == 1.0 and iv.low == pytest.approx(wilson_interval(20, 20)[0])
    assert iv.low < 0.9


def test_bad_inputs_are_refused_with_a_reason():
    with pytest.raises(ValueError, match="no tasks"):
        pass_at_k_interval({})
    with pytest.raises(ValueError, match="no samples"):
        pass_at_k_interval({"a": []})
    with pytest.raises(ValueError, match="pass@5 needs at least 5"):
        pass_at_k_interval({"a": [True, False]}, k=5)
    with pytest.raises(ValueError):
        wilson_interval(3, 2)


def test_stored_records_get_an_interval_from_their_rate_or_their_per_task_results():
    rec = {"pass@1": 0.5, "n_tasks": 164, "samples_per_task": 1}
    iv = eval_record_interval(rec)
    assert iv.pair == pytest.approx(wilson_interval(82, 164))
    assert eval_record_interval({"pass@1": None, "n_tasks": 164}) is None
    assert eval_record_interval({"pass@1": 0.5, "n_tasks": 0}) is None
    exact = eval_record_interval(rec, {f"t/{i}": [i < 82] for i in range(164)})
    assert exact.pair == pytest.approx(iv.pair)
    # a mean of per-sample rates that is no whole number of tasks stays inside its own interval
    odd = interval_from_rate(0.503, 10)
    assert odd.low <= 0.503 <= odd.high


def _newcombe_reference(a: int, b: int, c: int, d: int) -> tuple[float, float]:
    """Newcombe 1998 method 10, written from the paper's formulas for theta = p1 - p2 with p1 = (a+b)/n,
    p2 = (a+c)/n (cells: a both, b first only, c second only, d neither)."""
    n = a + b + c + d
    z = 1.959963984540054

    def wilson(x: int) -> tuple[float, float]:
        p = x / n
        centre, rad = 2 * n * p + z * z, z * math.sqrt(z * z + 4 * n * p * (1 - p))
        return ((centre - rad) / (2 * (n + z * z)), (centre + rad) / (2 * (n + z * z)))

    p1, p2 = (a + b) / n, (a + c) / n
    l1, u1 = wilson(a + b)
    l2, u2 = wilson(a + c)
    marg = (a + b) * (c + d) * (a + c) * (b + d)
    num = a * d - b * c
    phi = 0.0 if marg == 0 else (max(num - n / 2, 0) if num > 0 else num) / math.sqrt(marg)
    delta = math.sqrt((p1 - l1) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2) + (u2 - p2) ** 2)
    eps = math.sqrt((u1 - p1) ** 2 - 2 * phi * (u1 - p1) * (p2 - l2) + (p2 - l2) ** 2)
    return (p1 - p2 - delta, p1 - p2 + eps)


@pytest.mark.parametrize("cells", [(50, 10, 20, 84), (70, 9, 14, 71), (12, 0, 5, 3), (5, 5, 5, 5), (30, 0, 0, 10)])
def test_newcombe_paired_interval_matches_the_papers_formulas(cells):
    both, a_only, b_only, neither = cells
    diff, low, high = newcombe_paired_interval(both, a_only, b_only, neither)
    # B - A is the paper's p1 - p2 with B as the first measurement (its "first only" cell is b_only)
    ref_low, ref_high = _newcombe_reference(both, b_only, a_only, neither)
    assert diff == pytest.approx((b_only - a_only) / sum(cells))
    assert (low, high) == pytest.approx((ref_low, ref_high), abs=1e-12)
    assert low <= diff <= high


def test_paired_difference_is_newcombe_for_one_sample_and_t_over_task_differences_for_more():
    tasks = [f"t/{i}" for i in range(20)]
    a = {t: [i < 10] for i, t in enumerate(tasks)}
    b = {t: [i < 14] for i, t in enumerate(tasks)}
    iv = paired_difference_interval(a, b, tasks)
    assert iv.method == NEWCOMBE and iv.estimate == pytest.approx(0.2)
    assert iv.pair == pytest.approx(newcombe_paired_interval(10, 0, 4, 6)[1:])
    a3 = {t: [i < 10, i < 5, False] for i, t in enumerate(tasks)}
    b3 = {t: [i < 14, i < 12, True] for i, t in enumerate(tasks)}
    iv3 = paired_difference_interval(a3, b3, tasks)
    diffs = [sum(b3[t]) / 3 - sum(a3[t]) / 3 for t in tasks]
    mean = sum(diffs) / 20
    sd = math.sqrt(sum((x - mean) ** 2 for x in diffs) / 19)
    assert iv3.method == T_PAIRED and iv3.estimate == pytest.approx(mean)
    assert iv3.pair == pytest.approx((mean - 2.0930 * sd / math.sqrt(20), mean + 2.0930 * sd / math.sqrt(20)),
                                     abs=2e-4)
