"""A run's series: the one model every chart, table and export of a run's metrics renders.

Pure logic (numpy, no Qt). `RunSeries` takes the store's metric rows in batches, in any order and any
size, and keeps per-attempt columns under the latest-attempt rule (`RunSeries.extend`, the only place
that rule is written). `Curve` derives one chart line from it (a field against an x-axis choice, with
smoothing), updated incrementally: only the points that arrived are converted and smoothed. `EvalProgress`
follows the evaluation processes' events, and `pass_at_1_series` / `best_pass_at_1` read the eval records.
Views hand the arrays to pyqtgraph; they compute nothing.

Appending is amortised O(new rows) (columns grow by doubling), so a live run costs per batch what its new
rows cost. A batch may also hold a downsampled selection of a run's rows (one row per step kept): the rule
and the curves only need rows with a step and an attempt.
"""

from __future__ import annotations

import operator
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from core.evalstats import latest_evals
from core.records import unconfined_evaluations
from core.uncertainty import eval_record_interval

X_AXES = ("step", "tokens", "samples", "wall_time")
X_LABELS = {"step": "optimizer step", "tokens": "tokens", "samples": "samples", "wall_time": "wall time (s)"}
Y_FIELDS = ("loss", "lr", "grad_norm", "tokens_per_s")
COLUMNS = ("step", "tokens", "samples", "t", *Y_FIELDS)  # what a RunSeries keeps of each metric row
_MIN_CAPACITY = 256


# ---------------------------------------------------------------------------------------------- input


@dataclass(frozen=True)
class MetricBatch:
    """Metric rows as columns (float; NaN where a value is missing) with their attempts: what crosses from
    the thread that reads the store to the one that renders."""

    attempt: np.ndarray  # int64
    columns: dict[str, np.ndarray] = field(compare=False)
    rowid: np.ndarray | None = field(default=None, compare=False)  # the store's rowids, when read from it

    @property
    def size(self) -> int:
        return int(self.attempt.size)

    @classmethod
    def from_rows(cls, rows: Sequence[dict[str, Any]]) -> MetricBatch:
        """Columns of metric records (store rows or the job's records); rows without a step are skipped."""
        rows = [r for r in rows if r.get("step") is not None]
        if not rows:
            return cls(np.empty(0, dtype=np.int64), {c: np.empty(0) for c in COLUMNS})
        get = operator.itemgetter(*COLUMNS)
        try:
            table = np.array([get(r) for r in rows], dtype=float)
        except KeyError:  # a row that lacks an optional column: read it value by value
            table = np.array([[r.get(c) for c in COLUMNS] for r in rows], dtype=float)
        attempt = np.fromiter((r.get("attempt", 1) for r in rows), dtype=np.int64, count=len(rows))
        rowid = (np.fromiter((r["rowid"] for r in rows), dtype=np.int64, count=len(rows))
                 if "rowid" in rows[0] and "rowid" in rows[-1] else None)
        return cls(attempt, {c: np.ascontiguousarray(table[:, i]) for i, c in enumerate(COLUMNS)}, rowid)

    @classmethod
    def from_columns(cls, attempt: int | np.ndarray, **columns: Any) -> MetricBatch:
        """A batch from arrays (`step` required; columns not given are missing) and one attempt for all
        rows or an array of them."""
        steps = np.asarray(columns["step"], dtype=float)
        missing = np.full(steps.size, np.nan)
        attempts = np.broadcast_to(np.asarray(attempt, dtype=np.int64), steps.shape).copy()
        return cls(attempts, {c: np.asarray(columns[c], dtype=float) if c in columns else missing for c in COLUMNS})


def _batch(rows: MetricBatch | Sequence[dict[str, Any]]) -> MetricBatch:
    return rows if isinstance(rows, MetricBatch) else MetricBatch.from_rows(rows)


# ---------------------------------------------------------------------------------------------- the series


class _Growable:
    """Columns that grow by doubling; `generation` changes whenever held points change (not on appends)."""

    def __init__(self, names: Sequence[str]):
        self.names = tuple(names)
        self.data = {c: np.empty(_MIN_CAPACITY) for c in self.names}
        self.n = 0
        self.generation = 0

    def column(self, name: str) -> np.ndarray:
        """The held values (a view: valid until the next change of these columns)."""
        return self.data[name][: self.n]

    def _reserve(self, need: int) -> None:
        cap = next(iter(self.data.values())).size
        if need <= cap:
            return
        cap = max(need, 2 * cap)
        for c in self.names:
            grown = np.empty(cap)
            grown[: self.n] = self.data[c][: self.n]
            self.data[c] = grown

    def append(self, cols: dict[str, np.ndarray]) -> None:
        k = next(iter(cols.values())).size
        self._reserve(self.n + k)
        for c in self.names:
            self.data[c][self.n : self.n + k] = cols[c]
        self.n += k

    def replace(self, cols: dict[str, np.ndarray]) -> None:
        self.n = 0
        self.append(cols)
        self.generation += 1


class _Attempt(_Growable):
    """One attempt's shown rows, ordered by step, no step twice."""

    def __init__(self) -> None:
        super().__init__(COLUMNS)

    @property
    def steps(self) -> np.ndarray:
        return self.column("step")

    def add(self, cols: dict[str, np.ndarray]) -> None:
        steps = cols["step"]
        if self.n == 0 or steps[0] > self.steps[-1]:
            self.append(cols)  # the live case: later steps of this attempt
            return
        held = self.steps
        fresh = ~np.isin(steps, held)  # a step already held is a re-delivery: the first one stays (as in the store)
        if not fresh.any():
            return
        merged = {c: np.concatenate([self.column(c), cols[c][fresh]]) for c in COLUMNS}
        order = np.argsort(merged["step"], kind="stable")
        self.replace({c: v[order] for c, v in merged.items()})

    def drop_steps(self, steps: np.ndarray) -> None:
        """Forget the rows of these steps (a later attempt redid them)."""
        held = self.steps
        if self.n == 0 or steps.size == 0 or steps[-1] < held[0] or steps[0] > held[-1]:
            return
        start = int(np.searchsorted(held, steps[0]))
        gone = np.isin(held[start:], steps)
        if not gone.any():
            return
        keep = np.concatenate([np.ones(start, dtype=bool), ~gone])
        self.replace({c: self.column(c)[keep] for c in COLUMNS})


class RunSeries:
    """One run's metric rows, per attempt, under the latest-attempt rule; fed by `extend` in batches.

    The rule: an attempt (a resumed job) that logs a step an earlier attempt also logged supersedes it, so
    each step is shown once, from the latest attempt that logged it, and every attempt is its own segment.
    Rows arrive in any order and batches of any size; a re-delivered row changes nothing.
    """

    def __init__(self) -> None:
        self._attempts: dict[int, _Attempt] = {}
        self.t0: float | None = None  # the earliest time of any row: where wall time starts
        self.t0_generation = 0
        self.rows_seen = 0  # every row extended, superseded ones too (the store's count of metric points)
        self.t_max: float | None = None
        self.version = 0  # grows with every change: consumers compare it to skip work

    # ------------------------------------------------------------------ input

    def extend(self, rows: MetricBatch | Sequence[dict[str, Any]]) -> bool:
        """Take a batch of metric rows; True when anything shown changed."""
        batch = _batch(rows)
        if batch.size == 0:
            return False
        self.rows_seen += batch.size
        t = batch.columns["t"]
        if np.isfinite(t).any():
            lo, hi = float(np.nanmin(t)), float(np.nanmax(t))
            if self.t0 is None or lo < self.t0:
                self.t0 = lo
                self.t0_generation += 1
            self.t_max = hi if self.t_max is None else max(self.t_max, hi)
        before = self._state()
        for attempt in np.unique(batch.attempt).tolist():
            sel = batch.attempt == attempt
            self._extend_attempt(int(attempt), {c: batch.columns[c][sel] for c in COLUMNS})
        changed = self._state() != before
        if changed:
            self.version += 1
        return changed

    def _state(self) -> tuple[tuple[int, int, int], ...]:
        return tuple((a, held.n, held.generation) for a, held in self._attempts.items())

    def _extend_attempt(self, attempt: int, cols: dict[str, np.ndarray]) -> None:
        steps = cols["step"]
        if steps.size > 1 and not (np.diff(steps) > 0).all():
            # out of order or a step twice in one batch: sort, keep each step's first row
            steps, first = np.unique(steps, return_index=True)
            cols = {c: v[first] for c, v in cols.items()}
        # The latest attempt wins: drop rows that a later attempt already redid, and take from earlier
        # attempts the steps this one redoes.
        for later in (a for a in self._attempts if a > attempt):
            taken = self._attempts[later].steps
            if taken.size:
                keep = ~np.isin(steps, taken)
                if not keep.all():
                    cols = {c: v[keep] for c, v in cols.items()}
                    steps = cols["step"]
        if steps.size == 0:
            return
        for earlier in [a for a in self._attempts if a < attempt]:
            held = self._attempts[earlier]
            held.drop_steps(steps)
            if held.n == 0:
                del self._attempts[earlier]
        held = self._attempts.get(attempt)
        if held is None:
            held = self._attempts[attempt] = _Attempt()
            self._attempts = dict(sorted(self._attempts.items()))
        held.add(cols)

    # ------------------------------------------------------------------ output

    @property
    def attempts(self) -> list[int]:
        return list(self._attempts)

    def columns(self, attempt: int) -> _Attempt:
        return self._attempts[attempt]

    def column(self, attempt: int, name: str) -> np.ndarray:
        """One attempt's shown values of a column (`step`, `tokens`, ..., `loss`), by step."""
        return self._attempts[attempt].column(name)

    def x(self, attempt: int, x_axis: str) -> np.ndarray:
        """One attempt's x values on an x-axis choice (wall time counts from the run's first row)."""
        _check_axis(x_axis)
        if x_axis == "wall_time":
            return self.column(attempt, "t") - (self.t0 or 0.0)
        return self.column(attempt, x_axis)

    def __len__(self) -> int:
        """Rows shown (each step once)."""
        return sum(a.n for a in self._attempts.values())

    def steps(self) -> np.ndarray:
        """Every step shown, attempt by attempt."""
        parts = [a.steps for a in self._attempts.values()]
        return np.concatenate(parts) if parts else np.empty(0)

    @property
    def last_step(self) -> int | None:
        ends = [a.steps[-1] for a in self._attempts.values() if a.n]
        return int(max(ends)) if ends else None

    def segments(self, y_field: str, x_axis: str = "step") -> list[Segment]:
        """Per-attempt (x, y) of one field: a resumed run draws each attempt as its own segment."""
        return [Segment(a, self.x(a, x_axis).copy(), self.column(a, y_field).copy()) for a in self._attempts]

    def resume_points(self, x_axis: str = "step") -> list[tuple[int, float]]:
        """(attempt, x) where each attempt after the first starts: drawn as a marker line on the charts."""
        return [(a, float(self.x(a, x_axis)[0])) for a in list(self._attempts)[1:]]

    def summary(self) -> dict[str, Any]:
        """The numbers the runs table and the compare view show: last step, the loss at the last step that has
        one, tokens at the last step, wall time (last - first time of every row) and the number of rows."""
        by_step = sorted(((float(s), a) for a, held in self._attempts.items() for s in held.steps[-1:]),
                         reverse=True)
        steps = tokens = final_loss = None
        if by_step:
            last_attempt = by_step[0][1]
            steps = int(by_step[0][0])
            tok = self.column(last_attempt, "tokens")[-1]
            tokens = None if np.isnan(tok) else int(tok)
            # the last finite loss, over the shown rows in step order
            best: tuple[float, float] | None = None
            for held in self._attempts.values():
                loss, st = held.column("loss"), held.steps
                finite = np.flatnonzero(~np.isnan(loss))
                if finite.size and (best is None or st[finite[-1]] > best[0]):
                    best = (float(st[finite[-1]]), float(loss[finite[-1]]))
            final_loss = best[1] if best else None
        wall = (self.t_max - self.t0) if (self.t0 is not None and self.t_max is not None) else None
        return {"steps": steps, "final_loss": final_loss, "tokens": tokens, "wall_time_s": wall,
                "metric_points": self.rows_seen}


def _check_axis(x_axis: str) -> None:
    if x_axis not in X_AXES:
        raise ValueError(f"x_axis must be one of {X_AXES}, got {x_axis!r}")


@dataclass(frozen=True)
class Segment:
    """One attempt's part of a curve (a resumed run draws each attempt as its own segment)."""

    attempt: int
    x: np.ndarray
    y: np.ndarray


def segments(records: Iterable[dict[str, Any]], y_field: str, x_axis: str = "step") -> list[Segment]:
    """Per-attempt segments of metric records (RunSeries' rule: the latest attempt wins a step it redid)."""
    _check_axis(x_axis)
    series = RunSeries()
    series.extend(list(records))
    return series.segments(y_field, x_axis)


def resume_points(records: Sequence[dict[str, Any]], x_axis: str = "step") -> list[tuple[int, float]]:
    """(attempt, x) where each attempt after the first starts."""
    series = RunSeries()
    series.extend(list(records))
    return series.resume_points(x_axis)


# ---------------------------------------------------------------------------------------------- smoothing


def ema(y: np.ndarray, weight: float) -> np.ndarray:
    """Debiased exponential moving average (TensorBoard's smoothing); NaNs are skipped, not spread.

    weight 0 returns y; 0.99 is very smooth. Vectorised in blocks (a 1M-point curve takes milliseconds):
    within a block the recurrence is a small lower-triangular matrix product, and one carry per block
    links the blocks.
    """
    _check_weight(weight)
    y = np.asarray(y, dtype=float)
    if weight == 0 or y.size == 0:
        return y.copy()
    return EmaState(weight).extend(y)


def _check_weight(weight: float) -> None:
    if not 0 <= weight < 1:
        raise ValueError("smoothing weight must be in [0, 1)")


def ema_raw(v: np.ndarray, weight: float) -> np.ndarray:
    """Zero-state EMA (no debias, no NaNs): s_i = w s_(i-1) + (1-w) v_i, s_(-1) = 0."""
    n = v.size
    block = 128
    pad = (-n) % block
    vb = np.concatenate([v, np.zeros(pad)]).reshape(-1, block)
    idx = np.arange(block)
    powers = weight ** np.arange(1, block + 1)  # w^1 .. w^B
    diff = idx[:, None] - idx[None, :]
    lower = np.where(diff >= 0, (1 - weight) * weight ** np.clip(diff, 0, None), 0.0)
    local = vb @ lower.T  # each block's EMA started from a zero state
    carry = np.empty(local.shape[0])
    state = 0.0
    w_block = weight**block
    for k in range(local.shape[0]):  # one step per block: n/128 iterations
        carry[k] = state
        state = local[k, -1] + w_block * state
    return (local + carry[:, None] * powers[None, :]).reshape(-1)[:n]


@dataclass
class EmaState:
    """Running state of the debiased EMA, so live curves smooth only the points that arrived."""

    weight: float
    value: float = 0.0
    count: int = 0

    def extend(self, y: np.ndarray) -> np.ndarray:
        """Smoothed values for `y`, continuing from this state (same result as `ema` over the whole)."""
        y = np.asarray(y, dtype=float)
        if self.weight == 0:
            return y.copy()
        out = np.full_like(y, np.nan)
        finite = ~np.isnan(y)
        v = y[finite]
        if v.size == 0:
            return out
        w = self.weight
        # continue the recurrence from (value, count): undo the debias, smooth, redo it
        raw_prev = self.value * (1 - w**self.count) if self.count else 0.0
        local = ema_raw(v, w)  # zero-state EMA of the new points
        k = np.arange(1, v.size + 1)
        raw = local + raw_prev * w**k
        counts = self.count + k
        smoothed = raw / (1 - w**counts)
        out[finite] = smoothed
        self.value = float(smoothed[-1])
        self.count = int(counts[-1])
        return out


# ---------------------------------------------------------------------------------------------- curves


class CurveSegment:
    """One attempt's line of a Curve: x, raw y, smoothed y (views, valid until the next refresh), and the
    finite bounds of y (what a chart frames a flat line by)."""

    def __init__(self, weight: float, own_x: bool):
        self.generation = -1
        self.x_buf = _Growable(("x", "s")) if own_x else _Growable(("s",))
        self.own_x = own_x
        self.ema = EmaState(weight)
        self.lo, self.hi = np.inf, -np.inf
        self.x: np.ndarray = np.empty(0)
        self.y: np.ndarray = np.empty(0)
        self.smooth: np.ndarray = np.empty(0)

    @property
    def n(self) -> int:
        return int(self.y.size)

    def _bounds(self, y: np.ndarray) -> None:
        finite = y[np.isfinite(y)]
        if finite.size:
            self.lo = min(self.lo, float(finite.min()))
            self.hi = max(self.hi, float(finite.max()))


@dataclass(frozen=True)
class CurveUpdate:
    """What a Curve.refresh changed: `reset` (redraw every segment; attempts may have gone) or the attempts
    that grew or changed."""

    reset: bool
    changed: tuple[int, ...] = ()

    def __bool__(self) -> bool:
        return self.reset or bool(self.changed)


class Curve:
    """One field of a RunSeries against an x-axis choice, smoothed per attempt; refreshed incrementally.

    `refresh()` converts and smooths only the rows the series gained since the last refresh; a change to
    rows already drawn (an attempt that redid steps, a new earliest time on the wall-time axis, a new axis or
    weight) recomputes what it touched and reports it.
    """

    def __init__(self, series: RunSeries, y_field: str, x_axis: str = "step", smoothing: float = 0.0):
        _check_axis(x_axis)
        _check_weight(smoothing)
        self.series = series
        self.y_field = y_field
        self.x_axis = x_axis
        self.smoothing = smoothing
        self._segs: dict[int, CurveSegment] = {}
        self._t0_generation = -1
        self._version = -1
        self._reset_pending = True

    def set_x_axis(self, x_axis: str) -> None:
        _check_axis(x_axis)
        if x_axis != self.x_axis:
            self.x_axis = x_axis
            self._invalidate()

    def set_smoothing(self, weight: float) -> None:
        _check_weight(weight)
        if weight != self.smoothing:
            self.smoothing = weight
            self._invalidate()

    def _invalidate(self) -> None:
        self._segs.clear()
        self._reset_pending = True
        self._version = -1

    def refresh(self) -> CurveUpdate:
        series = self.series
        if self._version == series.version and not self._reset_pending and (
                self.x_axis != "wall_time" or self._t0_generation == series.t0_generation):
            return CurveUpdate(False)
        reset = self._reset_pending
        self._reset_pending = False
        if self.x_axis == "wall_time" and self._t0_generation != series.t0_generation:
            self._t0_generation = series.t0_generation
            self._segs.clear()
            reset = True
        attempts = series.attempts
        if set(self._segs) - set(attempts):
            reset = True
            self._segs = {a: s for a, s in self._segs.items() if a in attempts}
        held = list(self._segs)
        if held and attempts[: len(held)] != held:
            reset = True  # an attempt arrived before one already drawn: the first segment (its legend) moved
        changed = []
        for attempt in attempts:
            if self._update_segment(attempt):
                changed.append(attempt)
        self._segs = {a: self._segs[a] for a in attempts}
        self._version = series.version
        return CurveUpdate(reset, tuple(changed))

    def _update_segment(self, attempt: int) -> bool:
        held = self.series.columns(attempt)
        seg = self._segs.get(attempt)
        own_x = self.x_axis == "wall_time"
        if seg is None or seg.generation != held.generation:
            seg = self._segs[attempt] = CurveSegment(self.smoothing, own_x)
            seg.generation = held.generation
            start = 0
        else:
            start = seg.n
            if start == held.n:
                return False
        y_new = held.column(self.y_field)[start:]
        smoothed = seg.ema.extend(y_new) if self.smoothing > 0 else None
        if own_x:
            x_new = held.column("t")[start:] - (self.series.t0 or 0.0)
            seg.x_buf.append({"x": x_new, "s": smoothed if smoothed is not None else y_new})
            seg.x = seg.x_buf.column("x")
        else:
            if smoothed is not None:
                seg.x_buf.append({"s": smoothed})
            seg.x = held.column(self.x_axis)
        seg.y = held.column(self.y_field)
        seg.smooth = seg.x_buf.column("s") if smoothed is not None else seg.y
        seg._bounds(y_new)
        return True

    @property
    def attempts(self) -> list[int]:
        return list(self._segs)

    def segment(self, attempt: int) -> CurveSegment:
        return self._segs[attempt]

    def segments(self) -> list[CurveSegment]:
        return list(self._segs.values())

    def resume_points(self) -> list[tuple[int, float]]:
        """(attempt, x) where each attempt after the first starts."""
        return [(a, float(s.x[0])) for a, s in list(self._segs.items())[1:] if s.n]

    def bounds(self) -> tuple[float, float]:
        """Finite y bounds over every segment ((inf, -inf) when there is none)."""
        return (min((s.lo for s in self._segs.values()), default=np.inf),
                max((s.hi for s in self._segs.values()), default=-np.inf))


# ---------------------------------------------------------------------------------------------- evaluations


def pass_at_1_series(evals: Iterable[dict[str, Any]], benchmark: str, subset: str) -> tuple[np.ndarray, np.ndarray]:
    """(steps, pass@1 in %) for one benchmark and subset, from the record that counts per step
    (core.evalstats.latest_evals)."""
    points = sorted((step, 100.0 * float(rec["pass@1"])) for (step, bench, sub), rec in latest_evals(evals).items()
                    if bench == benchmark and sub == subset and rec.get("pass@1") is not None)
    return np.asarray([p[0] for p in points], dtype=float), np.asarray([p[1] for p in points], dtype=float)


@dataclass(frozen=True)
class PassAtOnePoints:
    """pass@1 per checkpoint of one benchmark and subset, in %, with each point's 95% interval
    (core.uncertainty.eval_record_interval: Wilson over the record's task count; NaN where the record has
    no task count)."""

    steps: np.ndarray
    values: np.ndarray
    low: np.ndarray
    high: np.ndarray
    n_tasks: np.ndarray


def pass_at_1_points(evals: Iterable[dict[str, Any]], benchmark: str, subset: str) -> PassAtOnePoints:
    """pass_at_1_series with each point's 95% interval and task count."""
    rows = []
    for (step, bench, sub), rec in latest_evals(evals).items():
        if bench != benchmark or sub != subset or rec.get("pass@1") is None:
            continue
        interval = eval_record_interval(rec)
        low, high = (100.0 * interval.low, 100.0 * interval.high) if interval else (np.nan, np.nan)
        n_tasks = rec.get("n_tasks")
        rows.append((step, 100.0 * float(rec["pass@1"]), low, high, n_tasks if isinstance(n_tasks, int) else 0))
    rows.sort()
    cols = [np.asarray([r[i] for r in rows], dtype=float) for i in range(5)]
    return PassAtOnePoints(*cols)


def interpolate_x(known_steps: np.ndarray, known_x: np.ndarray, steps: np.ndarray) -> np.ndarray:
    """x at `steps` from (step, x) pairs of a run's metric rows: linear between logged steps; NaN outside them
    or where x is unknown (no extrapolation: a guess would look like a measurement)."""
    steps = np.asarray(steps, dtype=float)
    ks, kx = np.asarray(known_steps, dtype=float), np.asarray(known_x, dtype=float)
    ok = np.isfinite(ks) & np.isfinite(kx)
    ks, kx = ks[ok], kx[ok]
    if ks.size == 0:
        return np.full(steps.shape, np.nan)
    order = np.argsort(ks, kind="stable")
    ks, kx = ks[order], kx[order]
    out = np.interp(steps, ks, kx)
    out[(steps < ks[0]) | (steps > ks[-1])] = np.nan
    return out


def x_at_steps(series: RunSeries, steps: np.ndarray, x_axis: str) -> np.ndarray:
    """Where optimizer steps (a checkpoint's) lie on an x-axis choice, read from the run's metric rows: the x
    of the row at that step (the latest attempt's), linearly interpolated between logged steps; NaN where the
    series cannot say (interpolate_x)."""
    _check_axis(x_axis)
    steps = np.asarray(steps, dtype=float)
    if x_axis == "step":
        return steps.copy()
    attempts = series.attempts
    if not attempts:
        return np.full(steps.shape, np.nan)
    return interpolate_x(np.concatenate([series.column(a, "step") for a in attempts]),
                         np.concatenate([series.x(a, x_axis) for a in attempts]), steps)


def unconfined_pass_at_1(evals: Iterable[dict[str, Any]], benchmark: str, subset: str,
                         unconfined: set[tuple[int, int]]) -> tuple[np.ndarray, np.ndarray]:
    """The points of pass_at_1_series whose record came from an evaluation run unconfined (`unconfined`:
    its (attempt, step) keys, EvalProgress.unconfined)."""
    points = sorted((step, 100.0 * float(rec["pass@1"])) for (step, bench, sub), rec in latest_evals(evals).items()
                    if bench == benchmark and sub == subset and rec.get("pass@1") is not None
                    and (int(rec["attempt"]), step) in unconfined)
    return np.asarray([p[0] for p in points], dtype=float), np.asarray([p[1] for p in points], dtype=float)


def unconfined_best(evals: Iterable[dict[str, Any]], unconfined: set[tuple[int, int]]) -> set[tuple[str, str]]:
    """(benchmark, subset) whose best pass@1 (best_pass_at_1, the compare view's number) some unconfined
    evaluation gave."""
    best: dict[tuple[str, str], tuple[float, bool]] = {}
    for (step, bench, subset), rec in latest_evals(evals).items():
        if rec.get("pass@1") is None:
            continue
        key, value = (bench, subset), float(rec["pass@1"])
        flagged = (int(rec["attempt"]), step) in unconfined
        held = best.get(key)
        if held is None or value > held[0]:
            best[key] = (value, flagged)
        elif value == held[0]:
            best[key] = (value, held[1] or flagged)
    return {key for key, (_value, flagged) in best.items() if flagged}


def best_pass_at_1(evals: Iterable[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """{benchmark: {subset: best pass@1 (fraction) over every checkpoint}}, of the records that count."""
    best: dict[str, dict[str, float]] = {}
    for (_step, bench, subset), rec in latest_evals(evals).items():
        value = rec.get("pass@1")
        if value is not None and value > best.setdefault(bench, {}).get(subset, float("-inf")):
            best[bench][subset] = value
    return {bench: subsets for bench, subsets in best.items() if subsets}


def run_summary(run_id: str, series: RunSeries, evals: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """What the runs table and the compare view show of a run: RunSeries.summary and the best pass@1."""
    return {"run_id": run_id, **series.summary(), "best_pass_at_1": best_pass_at_1(evals)}


STEP_TIME_WINDOW = 20  # logged rows the step time is measured over: recent enough to follow a speed change


@dataclass(frozen=True)
class TrainingProgress:
    """How far a run's training is: steps done of the total, the measured time per step and what remains."""

    done: int
    total: int | None
    step_s: float | None  # seconds per optimizer step over the last logged rows of the latest attempt
    eta_s: float | None  # seconds left: remaining steps x step time, counted down since the last row

    @property
    def fraction(self) -> float | None:
        return None if not self.total else min(1.0, self.done / self.total)


def total_steps(events: Iterable[dict[str, Any]], config: dict[str, Any] | None) -> int | None:
    """The run's total optimizer steps: the latest attempt's `training_plan` event (the Trainer's own batch
    math), else the config's training.max_steps; None when neither says."""
    plans = [e for e in events if e.get("event") == "training_plan"]
    if plans:
        latest = max(plans, key=lambda e: (int(e.get("attempt", 1)), float(e.get("t", 0.0))))
        value = (latest.get("detail") or {}).get("total_steps")
        if isinstance(value, int) and value > 0:
            return value
    value = ((config or {}).get("training") or {}).get("max_steps")
    return value if isinstance(value, int) and value > 0 else None


def step_time(series: RunSeries) -> float | None:
    """Seconds per optimizer step over the last STEP_TIME_WINDOW rows of the latest attempt (None: fewer than
    two timed rows)."""
    attempts = series.attempts
    if not attempts:
        return None
    steps = series.column(attempts[-1], "step")[-STEP_TIME_WINDOW:]
    t = series.column(attempts[-1], "t")[-STEP_TIME_WINDOW:]
    ok = np.isfinite(t)
    steps, t = steps[ok], t[ok]
    if steps.size >= 2 and steps[-1] > steps[0] and t[-1] > t[0]:
        return float((t[-1] - t[0]) / (steps[-1] - steps[0]))
    return None


def training_progress(done: int | None, total: int | None, step_s: float | None, last_t: float | None,
                      now: float, running: bool) -> TrainingProgress:
    """Steps done of the total and the ETA: remaining steps x the measured step time, less the time since the
    last row (`last_t`) while `running`, so that it counts down between rows; None where nothing says."""
    done = done or 0
    eta = None
    if total is not None and step_s is not None:
        eta = max(0, total - done) * step_s
        if running and last_t is not None:
            eta = max(0.0, eta - max(0.0, now - last_t))
    return TrainingProgress(done, total, step_s, eta)


# The evaluation events that queue, start or end an evaluation (core.evalstate.EVAL_EVENTS has the whole set).
PROGRESS_EVENTS = ("eval_requested", "eval_started", "eval_finished", "eval_failed", "eval_cancelled")


class EvalProgress:
    """What the evaluation processes' events say, keyed (attempt, step): evaluations started and not yet
    ended, evaluations that failed (until a later evaluation of the same checkpoint succeeds), and those whose
    samples ran unconfined (core.records.unconfined_evaluations: their pass@1 is marked)."""

    def __init__(self) -> None:
        self.evaluating: dict[tuple[int, int], dict[str, Any]] = {}
        self.failures: dict[tuple[int, int], str] = {}
        self.unconfined: set[tuple[int, int]] = set()
        self.cancelled: set[tuple[int, int]] = set()  # cancelled and not queued again since
        self.ignored: list[dict[str, Any]] = []  # eval events without an integer step (logged by the view)

    def apply(self, events: Sequence[dict[str, Any]]) -> list[tuple[int, int]]:
        """Follow events in time order; returns the (attempt, step) of the evaluations that failed in them."""
        failed_now: list[tuple[int, int]] = []
        self.unconfined |= unconfined_evaluations(events)
        for e in events:
            name = e["event"]
            if name == "started":  # a new attempt: an evaluation an earlier one left without an end is gone
                self.evaluating = {k: v for k, v in self.evaluating.items() if k[0] >= int(e["attempt"])}
                continue
            if name not in PROGRESS_EVENTS:
                continue
            detail = e.get("detail") or {}
            step = detail.get("step")
            if not isinstance(step, int) or isinstance(step, bool):
                self.ignored.append(e)
                continue
            key = (int(e["attempt"]), step)
            if name == "eval_requested":  # queued (again): what happens next counts, a failure too
                self.cancelled.discard(key)
                continue
            if name == "eval_started":
                self.evaluating[key] = detail
                continue
            self.evaluating.pop(key, None)
            if name == "eval_finished":
                self.failures.pop(key, None)  # a later evaluation of the same checkpoint succeeded
            elif name == "eval_cancelled":
                self.cancelled.add(key)
            elif name == "eval_failed" and key not in self.cancelled:
                # (after a cancel, the failure is the cancel's own SIGTERM reported by the evaluation: it is no
                # failure to announce, as core.evalstate keeps such an evaluation cancelled)
                self.failures[key] = str(detail.get("error") or "no error text recorded")
                failed_now.append(key)
        return [k for k in failed_now if k in self.failures]

    def evaluating_steps(self) -> list[int]:
        """Steps whose evaluation started (eval_started) and has not ended (eval_finished / eval_failed)."""
        return sorted({step for _attempt, step in self.evaluating})
