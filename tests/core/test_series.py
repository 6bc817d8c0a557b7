import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.series import EmaState, ema, pass_at_1_series, resume_points, segments


def reference_ema(y, w):
    """TensorBoard's debiased EMA written as the plain loop it is defined by."""
    out, last, n = [], 0.0, 0
    for v in y:
        if math.isnan(v):
            out.append(math.nan)
            continue
        last = last * w + (1 - w) * v
        n += 1
        out.append(last / (1 - w**n))
    return np.array(out)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.one_of(st.floats(-1e6, 1e6), st.just(math.nan)), min_size=0, max_size=700),
    st.sampled_from([0.0, 0.1, 0.6, 0.9, 0.99, 0.999]),
)
def test_vectorised_ema_equals_the_defining_loop(values, weight):
    y = np.array(values, dtype=float)
    got = ema(y, weight)
    want = y if weight == 0 else reference_ema(values, weight)
    assert np.array_equal(np.isnan(got), np.isnan(want))
    scale = max(1.0, float(np.nanmax(np.abs(y)))) if np.isfinite(y).any() else 1.0
    np.testing.assert_allclose(got[~np.isnan(got)], want[~np.isnan(want)], rtol=0, atol=1e-9 * scale)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.floats(0, 10), min_size=1, max_size=400), st.lists(st.integers(0, 400), max_size=5),
       st.sampled_from([0.3, 0.9, 0.99]))
def test_incremental_ema_continues_exactly_where_it_left_off(values, cuts, weight):
    y = np.array(values)
    state = EmaState(weight)
    parts = [state.extend(chunk) for chunk in np.array_split(y, sorted(set(min(c, len(y)) for c in cuts)))]
    np.testing.assert_allclose(np.concatenate(parts), ema(y, weight), atol=1e-9)


def test_ema_rejects_weight_of_one():
    with pytest.raises(ValueError, match="smoothing weight"):
        ema(np.ones(3), 1.0)


def _m(step, attempt, loss, t=None):
    return {"t": 1000.0 + step if t is None else t, "attempt": attempt, "step": step, "epoch": 0.0, "samples": step * 8,
            "tokens": step * 1000, "loss": loss, "lr": 1e-4, "grad_norm": 1.0, "tokens_per_s": 10.0}


def test_resumed_attempt_supersedes_the_steps_it_redid_and_starts_a_segment():
    records = [_m(s, 1, 10.0 - s) for s in range(1, 8)] + [_m(s, 2, 5.0 - s / 10) for s in range(5, 10)]
    segs = segments(records, "loss")
    assert [s.attempt for s in segs] == [1, 2]
    assert segs[0].x.tolist() == [1, 2, 3, 4]  # steps 5..7 of attempt 1 were redone by attempt 2
    assert segs[1].x.tolist() == [5, 6, 7, 8, 9]
    assert resume_points(records) == [(2, 5.0)]


def test_segments_on_token_and_wall_time_axes_and_null_losses():
    records = [_m(1, 1, 3.0, t=50.0), _m(2, 1, None, t=52.5), _m(3, 1, 2.0, t=55.0)]
    seg = segments(records, "loss", "tokens")[0]
    assert seg.x.tolist() == [1000, 2000, 3000]
    assert np.isnan(seg.y[1])
    assert segments(records, "loss", "wall_time")[0].x.tolist() == [0.0, 2.5, 5.0]
    with pytest.raises(ValueError):
        segments(records, "loss", "epochs")


def test_pass_at_1_series_takes_latest_record_per_step_in_percent():
    evals = [
        {"t": 1, "step": 20, "benchmark": "humaneval", "subset": "all", "pass@1": 0.1},
        {"t": 2, "step": 20, "benchmark": "humaneval", "subset": "all", "pass@1": 0.2},
        {"t": 3, "step": 10, "benchmark": "humaneval", "subset": "all", "pass@1": 0.05},
        {"t": 3, "step": 10, "benchmark": "humaneval", "subset": "clean", "pass@1": 0.5},
        {"t": 3, "step": 10, "benchmark": "mbpp", "subset": "all", "pass@1": 0.7},
    ]
    steps, values = pass_at_1_series(evals, "humaneval", "all")
    assert steps.tolist() == [10, 20]
    np.testing.assert_allclose(values, [5.0, 20.0])
