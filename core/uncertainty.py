"""How sure a pass@k is: 95% intervals for one evaluation and for the difference between two, and McNemar's
exact test. Standard library only (no scipy): the few distributions needed are computed here.

Which interval, when:

* pass@1 with ONE sample per task (greedy decoding, the usual HumanEval number): each task is a Bernoulli
  trial, and the interval is Wilson's score interval on (tasks solved, tasks). It stays inside [0, 1] and
  keeps its coverage near 0% and 100%, where the textbook p +- 1.96 sqrt(p(1-p)/n) collapses.
* pass@k with n samples per task: the estimate is the mean over tasks of the per-task unbiased estimates
  (core.passk.pass_at_k); the interval is Student's t interval over those per-task estimates (the central
  limit interval over questions of Miller 2024, "Adding Error Bars to Evals", with t instead of z so that a
  handful of tasks gets an honestly wide interval). Its uncertainty is over which tasks were drawn, which is
  what decides whether another benchmark of the same kind would agree. When every task has the same estimate
  (all solved, none solved) the t interval has zero width; Wilson's interval over the task count is used then.
* Without the per-task results (only a stored pass@1 and a task count): Wilson's interval over the task count,
  which is conservative for n > 1 (averaging samples within a task can only narrow it).
* A paired difference (two evaluations on the same tasks): Newcombe's hybrid score interval (1998, method 10)
  for one sample per task; the t interval over the per-task differences of the estimates for n > 1.
* McNemar's exact test: the two-sided binomial test of the discordant tasks (solved by one side only) against
  an even split; a p-value, not an interval.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache

from core.passk import pass_at_k

CONFIDENCE = 0.95
Z95 = 1.959963984540054  # the standard normal's 97.5% quantile
_T_NORMAL_DF = 10_000  # beyond this many degrees of freedom the t quantile equals z to 4 decimals

WILSON = "wilson"
T_OVER_TASKS = "t-over-tasks"
NEWCOMBE = "newcombe-paired"
T_PAIRED = "t-paired-over-tasks"
METHOD_TEXT = {
    WILSON: "Wilson score interval over tasks",
    T_OVER_TASKS: "Student t interval over the per-task estimates",
    NEWCOMBE: "Newcombe's paired score interval (method 10)",
    T_PAIRED: "Student t interval over the per-task differences",
}


@dataclass(frozen=True)
class Interval:
    """A point estimate with its 95% interval, and how the interval was computed."""

    estimate: float
    low: float
    high: float
    method: str  # one of WILSON, T_OVER_TASKS, NEWCOMBE, T_PAIRED
    n_tasks: int

    @property
    def pair(self) -> tuple[float, float]:
        return (self.low, self.high)

    @property
    def half_width(self) -> float:
        """Half the interval's width (the '±' a table shows; the interval itself need not be symmetric)."""
        return (self.high - self.low) / 2

    def describe(self) -> str:
        return METHOD_TEXT.get(self.method, self.method)


# ---------------------------------------------------------------------------------------------- distributions


def wilson_interval(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson's score interval for a binomial proportion (successes out of n)."""
    if n <= 0:
        raise ValueError("a proportion needs at least one trial")
    if not 0 <= successes <= n:
        raise ValueError(f"successes must be in 0..{n}, got {successes}")
    p = successes / n
    z2 = z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z / (1 + z2 / n) * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    # Exact at the ends: rounding must not put the interval a hair beside the estimate.
    low = 0.0 if successes == 0 else max(0.0, centre - half)
    high = 1.0 if successes == n else min(1.0, centre + half)
    return (low, high)


def _t_two_sided_mass(t: float, df: int) -> float:
    """P(|T| <= t) for Student's t with integer df (Abramowitz & Stegun 26.7.3 and 26.7.4, exact sums)."""
    theta = math.atan(t / math.sqrt(df))
    c2 = math.cos(theta) ** 2
    s = math.sin(theta)
    if df % 2 == 1:
        if df == 1:
            return 2 * theta / math.pi
        term, total = math.cos(theta), math.cos(theta)
        for j in range(3, df - 1, 2):  # cos θ (1 + 2/3 cos²θ + (2·4)/(3·5) cos⁴θ + ...)
            term *= c2 * (j - 1) / j
            total += term
        return 2 / math.pi * (theta + s * total)
    term, total = 1.0, 1.0
    for j in range(2, df - 1, 2):  # 1 + 1/2 cos²θ + (1·3)/(2·4) cos⁴θ + ...
        term *= c2 * (j - 1) / j
        total += term
    return s * total


@lru_cache(maxsize=256)
def t_quantile(df: int, confidence: float = CONFIDENCE) -> float:
    """The two-sided critical value of Student's t: P(|T| <= q) = confidence (q = 12.706 for df 1 at 95%)."""
    if df < 1:
        raise ValueError("Student's t needs at least one degree of freedom")
    if df > _T_NORMAL_DF:
        from statistics import NormalDist

        return NormalDist().inv_cdf(0.5 + confidence / 2)
    lo, hi = 0.0, 1.0
    while _t_two_sided_mass(hi, df) < confidence:
        hi *= 2
    for _ in range(80):  # bisection to float precision
        mid = (lo + hi) / 2
        if _t_two_sided_mass(mid, df) < confidence:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def t_interval(values: Sequence[float], lower: float, upper: float) -> tuple[float, float, float]:
    """(mean, low, high): Student's t interval of the mean of `values`, clipped to [lower, upper]."""
    n = len(values)
    if n == 0:
        raise ValueError("an interval needs at least one value")
    mean = math.fsum(values) / n
    if n == 1:
        return (mean, lower, upper)  # one task says nothing about the spread
    var = math.fsum((v - mean) ** 2 for v in values) / (n - 1)
    half = t_quantile(n - 1) * math.sqrt(var / n)
    return (mean, max(lower, mean - half), min(upper, mean + half))


def mcnemar_exact_p(a_only: int, b_only: int) -> float:
    """McNemar's exact test: two-sided binomial p-value of the discordant counts against p = 1/2.

    p = min(1, 2 * P(X <= min(a_only, b_only))) with X ~ Binomial(a_only + b_only, 1/2); 1.0 when no task is
    discordant (nothing tells the two apart)."""
    if a_only < 0 or b_only < 0:
        raise ValueError("discordant counts cannot be negative")
    n = a_only + b_only
    if n == 0:
        return 1.0
    k = min(a_only, b_only)
    tail = sum(math.comb(n, i) for i in range(k + 1))
    # Integers to the end: Python divides big ints with correct rounding, so 2**n never overflows a float.
    return min(1.0, (2 * tail) / (1 << n))


# ---------------------------------------------------------------------------------------------- pass@k


def _check_results(results: Mapping[str, Sequence[bool]]) -> None:
    if not results:
        raise ValueError("no tasks: an interval needs at least one evaluated task")
    empty = [t for t, v in results.items() if len(v) == 0]
    if empty:
        raise ValueError(f"task {empty[0]!r} has no samples")


def pass_at_k_interval(results: Mapping[str, Sequence[bool]], k: int = 1) -> Interval:
    """pass@k over tasks with its 95% interval, from each task's pass/fail per sample.

    One sample per task (and k = 1): Wilson's interval over tasks. More samples: Student's t interval over
    the per-task unbiased estimates (Wilson's over tasks when those all agree). See the module docstring.
    """
    _check_results(results)
    counts = [(len(v), sum(bool(x) for x in v)) for v in results.values()]
    if any(k > n for n, _ in counts):
        raise ValueError(f"pass@{k} needs at least {k} samples for every task")
    n_tasks = len(counts)
    if k == 1 and all(n == 1 for n, _ in counts):
        solved = sum(c for _, c in counts)
        low, high = wilson_interval(solved, n_tasks)
        return Interval(solved / n_tasks, low, high, WILSON, n_tasks)
    per_task = [pass_at_k(n, c, k) for n, c in counts]
    mean, low, high = t_interval(per_task, 0.0, 1.0)
    if len(set(per_task)) == 1 and per_task[0] in (0.0, 1.0):
        low, high = wilson_interval(round(mean * n_tasks), n_tasks)
        return Interval(mean, low, high, WILSON, n_tasks)
    return Interval(mean, low, high, T_OVER_TASKS, n_tasks)


def interval_from_rate(pass_at_1: float, n_tasks: int) -> Interval:
    """The interval of a stored pass@1 when only the rate and the task count are known (Wilson over tasks:
    exact for one sample per task, conservative for more)."""
    if n_tasks <= 0:
        raise ValueError("an interval needs at least one evaluated task")
    if not 0.0 <= pass_at_1 <= 1.0:
        raise ValueError(f"pass@1 must be in [0, 1], got {pass_at_1}")
    solved = round(pass_at_1 * n_tasks)
    low, high = wilson_interval(solved, n_tasks)
    # The stored rate may be a mean of per-sample rates (n > 1): keep it as the estimate, inside its interval.
    return Interval(pass_at_1, min(low, pass_at_1), max(high, pass_at_1), WILSON, n_tasks)


def eval_record_interval(record: Mapping[str, object],
                         results: Mapping[str, Sequence[bool]] | None = None) -> Interval | None:
    """The pass@1 interval of a stored evals record ({pass@1, n_tasks, samples_per_task, ...}): from the
    per-task results when given (see pass_at_k_interval), else from the rate and the task count. None when
    the record has no pass@1 or no tasks."""
    value = record.get("pass@1")
    n_tasks = record.get("n_tasks")
    if results:
        return pass_at_k_interval(results, 1)
    if not isinstance(value, (int, float)) or not isinstance(n_tasks, int) or n_tasks <= 0 \
            or not math.isfinite(float(value)):
        return None
    return interval_from_rate(float(value), n_tasks)


# ---------------------------------------------------------------------------------------------- paired


def newcombe_paired_interval(both: int, a_only: int, b_only: int, neither: int, z: float = Z95
                             ) -> tuple[float, float, float]:
    """(difference, low, high) of p_B - p_A for paired binary outcomes: Newcombe's hybrid score interval
    (Statistics in Medicine 17:2635, 1998, method 10), built from the Wilson intervals of both rates and the
    phi correlation of the 2x2 table (with its continuity correction when phi > 0)."""
    n = both + a_only + b_only + neither
    if n <= 0:
        raise ValueError("a paired interval needs at least one task")
    p_a, p_b = (both + a_only) / n, (both + b_only) / n
    l_a, u_a = wilson_interval(both + a_only, n, z)
    l_b, u_b = wilson_interval(both + b_only, n, z)
    # phi of the table, rows = A solved / not, columns = B solved / not: cells both, a_only, b_only, neither.
    denom = (both + a_only) * (b_only + neither) * (both + b_only) * (a_only + neither)
    if denom == 0:
        phi = 0.0
    else:
        cross = both * neither - a_only * b_only
        if cross > 0:
            cross = max(cross - n / 2, 0.0)
        phi = cross / math.sqrt(denom)
    diff = p_b - p_a
    # For p_B - p_A the lower limit takes B's lower and A's upper distance, and the reverse for the upper.
    dl = math.sqrt(max(0.0, (p_b - l_b) ** 2 - 2 * phi * (p_b - l_b) * (u_a - p_a) + (u_a - p_a) ** 2))
    du = math.sqrt(max(0.0, (u_b - p_b) ** 2 - 2 * phi * (u_b - p_b) * (p_a - l_a) + (p_a - l_a) ** 2))
    return (diff, max(-1.0, diff - dl), min(1.0, diff + du))


def paired_difference_interval(a: Mapping[str, Sequence[bool]], b: Mapping[str, Sequence[bool]],
                               tasks: Iterable[str]) -> Interval:
    """pass@1(B) - pass@1(A) over the same tasks with its 95% interval: Newcombe's paired interval when both
    have one sample per task, else Student's t over the per-task differences of the per-task estimates."""
    ids = list(tasks)
    if not ids:
        raise ValueError("a paired interval needs at least one task")
    if all(len(a[t]) == 1 and len(b[t]) == 1 for t in ids):
        sa = {t for t in ids if a[t][0]}
        sb = {t for t in ids if b[t][0]}
        both = len(sa & sb)
        diff, low, high = newcombe_paired_interval(both, len(sa) - both, len(sb) - both,
                                                   len(ids) - len(sa | sb))
        return Interval(diff, low, high, NEWCOMBE, len(ids))
    diffs = [sum(map(bool, b[t])) / len(b[t]) - sum(map(bool, a[t])) / len(a[t]) for t in ids]
    mean, low, high = t_interval(diffs, -1.0, 1.0)
    return Interval(mean, low, high, T_PAIRED, len(ids))
