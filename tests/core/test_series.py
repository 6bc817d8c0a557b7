import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.series import (
    Curve,
    EmaState,
    EvalProgress,
    MetricBatch,
    RunSeries,
    best_pass_at_1,
    ema,
    pass_at_1_series,
    resume_points,
    segments,
)


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


# ---------------------------------------------------------------------------------------------- RunSeries


def reference_segments(records, y_field, x_axis="step"):
    """The latest-attempt rule written as the plain loop it is defined by: per step, the highest attempt."""
    latest = {}
    for r in records:
        latest[r["step"]] = max(latest.get(r["step"], 0), r["attempt"])
    t0 = min(r["t"] for r in records)
    out = {}
    for r in records:
        if latest[r["step"]] == r["attempt"]:
            x = r["t"] - t0 if x_axis == "wall_time" else r[x_axis]
            out.setdefault(r["attempt"], {}).setdefault(r["step"], (x, math.nan if r[y_field] is None else r[y_field]))
    return {a: sorted(pts.items()) for a, pts in sorted(out.items())}


def _as_dict(segs):
    return {s.attempt: list(zip(s.x.tolist(), s.y.tolist(), strict=True)) for s in segs}


@st.composite
def resumed_runs(draw):
    """Records of a run resumed up to three times (each attempt from an earlier checkpoint), shuffled into
    batches, with some rows delivered twice."""
    records, start = [], 1
    for attempt in range(1, draw(st.integers(1, 3)) + 1):
        end = start + draw(st.integers(1, 30))
        records += [_m(s, attempt, float(draw(st.integers(0, 9))) if draw(st.booleans()) else None,
                       t=1000.0 + 100 * attempt + s) for s in range(start, end)]
        start = max(1, end - draw(st.integers(0, 25)))  # the next attempt resumes at or before the end
    order = draw(st.permutations(records))
    repeats = draw(st.lists(st.sampled_from(records), max_size=5))
    cuts = sorted(draw(st.lists(st.integers(0, len(order) + len(repeats)), max_size=6)))
    delivered = list(order) + repeats
    return records, [delivered[a:b] for a, b in zip([0, *cuts], [*cuts, len(delivered)], strict=True)]


@settings(max_examples=120, deadline=None)
@given(resumed_runs(), st.sampled_from(["step", "tokens", "wall_time"]))
def test_series_fed_in_any_batches_and_order_shows_each_step_once_from_its_latest_attempt(run, x_axis):
    records, batches = run
    series = RunSeries()
    for batch in batches:
        series.extend(batch)
    want = reference_segments(records, "loss", x_axis)
    got = _as_dict(series.segments("loss", x_axis))
    assert list(got) == list(want)
    for attempt, pts in want.items():
        np.testing.assert_allclose([p[1][0] for p in pts], [g[0] for g in got[attempt]])
        np.testing.assert_array_equal([p[1][1] for p in pts], [g[1] for g in got[attempt]])
    assert sorted(series.steps().tolist()) == sorted({r["step"] for r in records})
    assert series.rows_seen == sum(len(b) for b in batches)


def test_a_resumed_attempt_arriving_over_several_batches_takes_each_redone_step_as_it_comes():
    series = RunSeries()
    series.extend([_m(s, 1, 10.0) for s in range(1, 61)])
    series.extend([_m(s, 2, 5.0) for s in range(41, 51)])  # the resumed attempt's first batch
    assert series.column(1, "step").tolist() == list(range(1, 41)) + list(range(51, 61))
    series.extend([_m(s, 2, 5.0) for s in range(51, 56)])  # a later batch redoes more of attempt 1's steps
    assert series.column(1, "step").tolist() == list(range(1, 41)) + list(range(56, 61))
    assert series.column(2, "step").tolist() == list(range(41, 56))
    series.extend([_m(58, 1, 99.0)])  # a late row of the old attempt for a step not redone yet: shown
    series.extend([_m(45, 1, 99.0)])  # ... and one for a step already redone: never shown
    assert 99.0 not in series.column(2, "loss") and series.column(1, "step").tolist()[-5:] == [56, 57, 58, 59, 60]
    assert not series.extend([_m(45, 2, 1.0)])  # a re-delivered row changes nothing


def test_summary_is_the_last_step_its_last_finite_loss_tokens_and_the_wall_time_of_every_row():
    series = RunSeries()
    first = [_m(s, 1, 3.0 - s / 100, t=100.0 + 2 * s) for s in range(30)]
    second = [_m(s, 2, 2.0 - s / 100, t=500.0 + 2 * s) for s in range(20, 41)]
    second[-1]["loss"] = None  # the last step logged no loss: the final loss is the one before
    series.extend(first + second)
    summary = series.summary()
    assert summary == {"steps": 40, "final_loss": pytest.approx(2.0 - 39 / 100), "tokens": 40_000,
                       "wall_time_s": pytest.approx(580.0 - 100.0), "metric_points": 51}
    assert RunSeries().summary() == {"steps": None, "final_loss": None, "tokens": None, "wall_time_s": None,
                                     "metric_points": 0}


@settings(max_examples=60, deadline=None)
@given(resumed_runs(), st.sampled_from(["step", "samples", "wall_time"]), st.sampled_from([0.0, 0.6, 0.95]))
def test_a_curve_refreshed_after_every_batch_equals_one_computed_at_the_end(run, x_axis, weight):
    _records, batches = run
    series = RunSeries()
    live = Curve(series, "loss", x_axis, weight)
    for batch in batches:
        series.extend(batch)
        live.refresh()
    final = Curve(series, "loss", x_axis, weight)
    final.refresh()
    assert live.attempts == final.attempts == series.attempts
    for a in series.attempts:
        got, want = live.segment(a), final.segment(a)
        np.testing.assert_allclose(got.x, want.x)
        np.testing.assert_array_equal(got.y, want.y)
        np.testing.assert_allclose(got.smooth, ema(want.y, weight), atol=1e-9)
    assert live.resume_points() == series.resume_points(x_axis)


def test_curve_refresh_reports_appends_then_a_reset_when_an_attempt_is_superseded_entirely():
    series = RunSeries()
    curve = Curve(series, "loss", "step", 0.5)
    series.extend([_m(s, 1, 1.0) for s in range(5, 11)])
    assert curve.refresh().reset  # the first draw
    series.extend([_m(s, 1, 1.0) for s in range(11, 13)])
    update = curve.refresh()
    assert not update.reset and update.changed == (1,)
    assert curve.segment(1).x.tolist() == list(range(5, 13))
    assert not curve.refresh()  # nothing new: nothing to draw
    series.extend([_m(s, 2, 1.0) for s in range(1, 20)])  # attempt 2 redoes every step of attempt 1
    update = curve.refresh()
    assert update.reset and curve.attempts == [2]
    curve.set_x_axis("tokens")
    assert curve.refresh().reset and curve.segment(2).x.tolist() == [s * 1000 for s in range(1, 20)]


def test_wall_time_counts_from_the_earliest_row_and_redraws_when_an_earlier_one_arrives():
    series = RunSeries()
    curve = Curve(series, "loss", "wall_time")
    series.extend([_m(s, 1, 1.0, t=100.0 + s) for s in range(5, 10)])
    curve.refresh()
    assert curve.segment(1).x.tolist() == [0.0, 1.0, 2.0, 3.0, 4.0]
    series.extend([_m(s, 1, 1.0, t=100.0 + s) for s in range(1, 5)])  # older rows, delivered late
    assert curve.refresh().reset
    assert curve.segment(1).x.tolist() == [float(i) for i in range(9)]


def test_metric_batch_reads_rows_with_missing_values_and_optional_columns_as_nan():
    batch = MetricBatch.from_rows([{"step": 1, "attempt": 2, "t": 5.0, "loss": None},
                                   {"step": None, "attempt": 1, "t": 6.0}])
    assert batch.size == 1 and batch.attempt.tolist() == [2]
    assert np.isnan(batch.columns["loss"][0]) and np.isnan(batch.columns["tokens"][0])


# ---------------------------------------------------------------------------------------------- evaluations


def _ev(name, attempt, **detail):
    return {"event": name, "attempt": attempt, "t": 0.0, "detail": detail}


def test_eval_progress_follows_started_finished_and_failed_evaluations():
    progress = EvalProgress()
    assert progress.apply([_ev("eval_started", 1, step=20), _ev("eval_started", 1, step=40)]) == []
    assert progress.evaluating_steps() == [20, 40]
    assert progress.apply([_ev("eval_failed", 1, step=40, error="CUDA out of memory")]) == [(1, 40)]
    assert progress.evaluating_steps() == [20] and progress.failures == {(1, 40): "CUDA out of memory"}
    progress.apply([_ev("eval_finished", 1, step=40)])  # a later evaluation of the same checkpoint succeeded
    assert progress.failures == {}
    progress.apply([_ev("eval_started", 1, step="forty")])  # malformed: kept aside for the view to log
    assert len(progress.ignored) == 1 and progress.evaluating_steps() == [20]


def test_a_new_attempt_ends_evaluations_its_predecessor_left_open_and_a_failure_later_fixed_is_not_announced():
    progress = EvalProgress()
    progress.apply([_ev("eval_started", 1, step=40)])
    progress.apply([_ev("started", 2)])
    assert progress.evaluating_steps() == []
    failed = progress.apply([_ev("eval_failed", 2, step=60, error="x"), _ev("eval_finished", 2, step=60)])
    assert failed == [] and progress.failures == {}


def test_a_cancelled_evaluation_ends_and_the_failure_its_cancel_causes_is_not_announced_until_queued_again():
    progress = EvalProgress()
    progress.apply([_ev("eval_requested", 1, step=20), _ev("eval_started", 1, step=20)])
    assert progress.evaluating_steps() == [20]
    # the queue tool records the cancel, then the evaluation reports the SIGTERM it got as a failure
    failed = progress.apply([_ev("eval_cancelled", 1, step=20, reason="cancelled by the user"),
                             _ev("eval_failed", 1, step=20, error="SIGTERM")])
    assert failed == [] and progress.failures == {} and progress.evaluating_steps() == []
    # queued again, it fails for real: that is announced
    failed = progress.apply([_ev("eval_requested", 1, step=20), _ev("eval_failed", 1, step=20, error="no checkpoint")])
    assert failed == [(1, 20)] and progress.failures == {(1, 20): "no checkpoint"}


def test_best_pass_at_1_per_benchmark_and_subset():
    evals = [{"step": 10, "benchmark": "humaneval", "subset": "all", "pass@1": 0.2},
             {"step": 20, "benchmark": "humaneval", "subset": "all", "pass@1": 0.35},
             {"step": 20, "benchmark": "humaneval", "subset": "clean", "pass@1": None},
             {"step": 20, "benchmark": "mbpp", "subset": "clean", "pass@1": 0.1}]
    assert best_pass_at_1(evals) == {"humaneval": {"all": 0.35}, "mbpp": {"clean": 0.1}}


def test_the_chart_and_the_intervals_count_the_same_record_of_a_checkpoint_evaluated_twice():
    from core.evalstats import eval_points

    def ev(attempt, t, value):
        return {"step": 20, "attempt": attempt, "t": t, "benchmark": "humaneval", "subset": "all", "pass@1": value,
                "n_tasks": 164, "samples_per_task": 1}

    # the resumed attempt evaluated step 20 again; the first attempt's evaluation ended late
    evals = [ev(1, 5.0, 0.2), ev(2, 9.0, 0.3), ev(1, 12.0, 0.9)]
    steps, values = pass_at_1_series(evals, "humaneval", "all")
    assert steps.tolist() == [20] and values.tolist() == [30.0]
    assert [p.pass_at_1 for p in eval_points(evals)] == [pytest.approx(0.3)]
    assert best_pass_at_1(evals) == {"humaneval": {"all": 0.3}}


def test_pass_at_1_points_carry_the_wilson_interval_of_each_record():
    from core.records import eval_record
    from core.series import pass_at_1_points
    from core.uncertainty import wilson_interval

    evals = [eval_record(step=s, attempt=1, checkpoint=f"c{s}", benchmark="humaneval", subset="all", n_tasks=164,
                         samples_per_task=1, temperature=0.0, pass_at={1: solved / 164}, t=float(s))
             for s, solved in ((10, 50), (20, 82))]
    points = pass_at_1_points(evals, "humaneval", "all")
    np.testing.assert_array_equal(points.steps, [10, 20])
    for i, solved in enumerate((50, 82)):
        lo, hi = wilson_interval(solved, 164)
        assert points.low[i] == pytest.approx(100 * lo) and points.high[i] == pytest.approx(100 * hi)
    assert points.high[1] - points.values[1] == pytest.approx(7.5, abs=0.2)  # 50% of 164 tasks: about +-7.5


def test_x_at_steps_reads_each_checkpoint_on_the_chosen_axis_and_does_not_extrapolate():
    from core.series import x_at_steps

    series = RunSeries()
    # logged every 10 steps; attempt 2 redid steps 30-50 at other times
    series.extend([{"step": s, "attempt": 1, "tokens": 100.0 * s, "samples": 2.0 * s, "t": 1000.0 + s}
                   for s in range(10, 41, 10)])
    series.extend([{"step": s, "attempt": 2, "tokens": 100.0 * s, "samples": 2.0 * s, "t": 2000.0 + s}
                   for s in range(30, 51, 10)])
    steps = np.array([5.0, 15.0, 30.0, 50.0, 60.0])
    np.testing.assert_allclose(x_at_steps(series, steps, "tokens"), [np.nan, 1500.0, 3000.0, 5000.0, np.nan])
    np.testing.assert_allclose(x_at_steps(series, steps, "step"), steps)
    # wall time from the run's first row; step 30 is the redone one (attempt 2's time)
    np.testing.assert_allclose(x_at_steps(series, steps, "wall_time"), [np.nan, 5.0, 1020.0, 1040.0, np.nan])


def test_total_steps_prefer_the_trainers_plan_of_the_latest_attempt_over_the_config():
    from core.series import total_steps

    plans = [{"event": "training_plan", "attempt": 1, "t": 1.0, "detail": {"total_steps": 300}},
             {"event": "training_plan", "attempt": 2, "t": 9.0, "detail": {"total_steps": 320}},
             {"event": "started", "attempt": 2, "t": 8.0, "detail": {}}]
    assert total_steps(plans, {"training": {"max_steps": 40}}) == 320
    assert total_steps([], {"training": {"max_steps": 40}}) == 40
    assert total_steps([], {"training": {"epochs": 3}}) is None


def test_training_progress_measures_the_step_time_of_the_latest_attempt_and_counts_the_eta_down():
    from core.series import step_time, training_progress

    series = RunSeries()
    series.extend([{"step": s, "attempt": 1, "t": 100.0 + 2.0 * s} for s in range(1, 11)])
    series.extend([{"step": s, "attempt": 2, "t": 1000.0 + 0.5 * s} for s in range(8, 21)])  # faster after resume
    assert step_time(series) == 0.5
    assert step_time(RunSeries()) is None
    p = training_progress(20, 100, 0.5, last_t=1010.0, now=1010.0, running=True)
    assert (p.done, p.total, p.step_s, p.fraction) == (20, 100, 0.5, 0.2)
    assert p.eta_s == pytest.approx(80 * 0.5)  # the last row is from now
    assert training_progress(20, 100, 0.5, 1010.0, now=1013.0, running=True).eta_s == pytest.approx(37.0)
    assert training_progress(20, 100, 0.5, 1010.0, now=1013.0, running=False).eta_s == pytest.approx(40.0)
    assert training_progress(20, None, 0.5, 1010.0, now=1013.0, running=True).eta_s is None
