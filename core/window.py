"""What a chart holds of a run: the store's envelope of the visible range, and the rows streamed since.

Pure logic (numpy, no Qt). A view never holds every point of a run: a worker reads `Store.metric_envelope`
for the range a chart shows (min/max per pixel column, exact points once zoomed in far enough) and hands a
`WindowData` to a `RunWindow`; rows the run logs afterwards arrive from the watcher as a small tail
(`RunWindow.extend`) that is drawn at once and folded into the next envelope. `WindowCurve` turns a
RunWindow into chart lines with the interface of core.series.Curve, so the charts draw either.

The rules a chart shows stay those of core.series:
- The latest attempt wins a step: the store applies it inside the envelope, RunSeries inside the tail, and
  a tail row that redoes a step of an earlier attempt asks for a new envelope at once (`needs_refresh`).
- Each attempt is its own segment.
- Smoothing is the same debiased EMA (core.series.ema), with its time constant kept in points: each held
  value stands for the n points of its bucket and decays the state by weight**n. Zoomed in far enough that
  the envelope is exact, the values are the points themselves, and the EMA runs over them from a lead-in of
  at least `lead_in_points(weight)` points before the visible range, so the line equals the EMA of the whole
  run to within LEAD_IN_WEIGHT of the data's range (the points before the lead-in weigh less than that). Zoomed
  out, a bucket's value is its mid-range (min + max) / 2, so the smoothed line is the same EMA run over
  pixel columns: its trend at screen resolution, drawn at each bucket's last x. Raw data is drawn as the
  min/max polyline of each bucket (what pyqtgraph's peak downsampling draws), exact points when zoomed in.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from core.series import CurveUpdate, MetricBatch, RunSeries, _check_axis, _check_weight, interpolate_x

LEAD_IN_WEIGHT = 1e-3  # what the points before a zoomed range's lead-in may weigh in its smoothed line
TAIL_MAX_ROWS = 50_000  # streamed rows held beyond the envelope before the window drops them and asks again


def lead_in_points(weight: float) -> int:
    """Points before a range that the EMA must see so that earlier ones weigh under LEAD_IN_WEIGHT."""
    _check_weight(weight)
    return 0 if weight == 0 else math.ceil(math.log(LEAD_IN_WEIGHT) / math.log(weight))


# ---------------------------------------------------------------------------------------------- smoothing


@dataclass
class DecayState:
    """The debiased EMA's running state, counted in points (so a bucket of n points decays it by weight**n)."""

    raw: float = 0.0  # the EMA before debiasing
    count: int = 0  # points folded in


def ema_weighted(values: np.ndarray, counts: np.ndarray, weight: float,
                 state: DecayState | None = None) -> tuple[np.ndarray, DecayState]:
    """The debiased EMA of `values`, each standing for `counts` points: with counts of 1 this is
    core.series.ema (and continuing a state is EmaState.extend). NaN values are skipped, not spread."""
    _check_weight(weight)
    state = DecayState() if state is None else DecayState(state.raw, state.count)
    values = np.asarray(values, dtype=float)
    out = np.full(values.size, np.nan)
    if weight == 0:
        return values.copy(), state
    raw, count = state.raw, state.count
    decays = np.power(weight, np.asarray(counts, dtype=float))
    for i, (v, a, n) in enumerate(zip(values.tolist(), decays.tolist(), np.asarray(counts).tolist(), strict=True)):
        if v != v:  # NaN
            continue
        raw = a * raw + (1 - a) * v
        count += int(n)
        out[i] = raw / (1 - weight**count)
    state.raw, state.count = raw, count
    return out, state


# ---------------------------------------------------------------------------------------------- the window


@dataclass(frozen=True)
class FieldEnvelope:
    """One attempt's envelope of one field, as numpy arrays (x span, y min/max and points per bucket)."""

    attempt: int
    x_first: np.ndarray
    x_last: np.ndarray
    y_min: np.ndarray
    y_max: np.ndarray
    n: np.ndarray


@dataclass(frozen=True)
class WindowData:
    """A worker's read of one run for one chart range (what crosses to the UI thread).

    `rowid`: the run's newest metric row when it was read (the tail keeps only rows after it); `t0`: where wall
    time starts (the run's first metric time); `points`: rows the envelope covers; `exact`: every bucket holds
    one point; `summary`: the store's RunSummary of the run (core.store), read in the same snapshot."""

    run_id: str
    x_axis: str
    x_range: tuple[float, float] | None  # what was asked (None: the whole run)
    buckets: int
    fields: dict[str, tuple[FieldEnvelope, ...]]
    rowid: int
    t0: float | None
    points: int
    exact: bool
    summary: Any = None

    @classmethod
    def from_envelope(cls, envelope: Any, rowid: int, t0: float | None, x_range: tuple[float, float] | None,
                      summary: Any = None) -> WindowData:
        """From a core.store.MetricEnvelope."""
        fields = {f: tuple(FieldEnvelope(s.attempt, np.frombuffer(s.x_first), np.frombuffer(s.x_last),
                                         np.frombuffer(s.y_min), np.frombuffer(s.y_max),
                                         np.frombuffer(s.n, dtype=np.int64))
                           for s in segs) for f, segs in envelope.series.items()}
        return cls(envelope.run_id, envelope.x_axis, x_range, envelope.buckets, fields, rowid, t0, envelope.points,
                   envelope.exact, summary)


def read_window(store: Any, run_id: str, fields: tuple[str, ...], x_axis: str = "step",
                x_range: tuple[float, float] | None = None, buckets: int = 1000) -> WindowData:
    """One run's envelope of `fields` over `x_range` with its rowid, wall-time origin and summary, all from
    one read snapshot of `store` (a core.store.Store). Runs on a worker thread."""
    with store.snapshot():
        summary = store.run_summary(run_id)
        rowid = store.metric_rowid(run_id)
        envelope = store.metric_envelope(run_id, fields, x_axis=x_axis, x_range=x_range, buckets=buckets,
                                         t0=summary.first_t)
    return WindowData.from_envelope(envelope, rowid, summary.first_t, x_range, summary)


STEP_AXES_BUCKETS = 2048  # resolution of a run's step -> tokens / samples / time map (checkpoints are placed by it)


@dataclass(frozen=True)
class StepAxes:
    """Where a run's steps lie on the other x-axes: (step, value) pairs of its metric rows, from an envelope
    on the step axis (each bucket's first and last step with the min and max of tokens, samples and t: these
    counters and the clock grow with the step). What places a checkpoint (a step) on the chosen x-axis."""

    steps: np.ndarray
    values: dict[str, np.ndarray]  # x-axis -> its value at `steps` (wall_time counted from t0)
    last_step: float | None

    def x_at(self, steps: np.ndarray, x_axis: str) -> np.ndarray:
        _check_axis(x_axis)
        steps = np.asarray(steps, dtype=float)
        return steps.copy() if x_axis == "step" else interpolate_x(self.steps, self.values[x_axis], steps)


def read_step_axes(store: Any, run_id: str, buckets: int = STEP_AXES_BUCKETS) -> StepAxes:
    """A run's StepAxes from the store (runs on a worker thread: one envelope read, bounded by `buckets`)."""
    with store.snapshot():
        summary = store.run_summary(run_id)
        env = store.metric_envelope(run_id, ("tokens", "samples", "t"), x_axis="step", buckets=buckets)
    t0 = summary.first_t or 0.0
    steps, values = [], {"tokens": [], "samples": [], "wall_time": []}
    segs = {f: env.series[f] for f in ("tokens", "samples", "t")}
    for i, seg in enumerate(segs["t"]):
        first, last = np.frombuffer(seg.x_first), np.frombuffer(seg.x_last)
        steps.append(np.concatenate([first, last]))
        for axis, f in (("tokens", "tokens"), ("samples", "samples"), ("wall_time", "t")):
            s = segs[f][i]
            lo, hi = np.frombuffer(s.y_min), np.frombuffer(s.y_max)
            values[axis].append(np.concatenate([lo, hi]) - (t0 if axis == "wall_time" else 0.0))
    if not steps:
        return StepAxes(np.empty(0), {a: np.empty(0) for a in values}, None)
    all_steps = np.concatenate(steps)
    return StepAxes(all_steps, {a: np.concatenate(v) for a, v in values.items()},
                    float(all_steps.max()) if all_steps.size else None)


class RunWindow:
    """One run as the charts of one range hold it: per field, the envelope last read, and the rows streamed
    since (the tail, under RunSeries' rule). `version` grows with every change."""

    def __init__(self, run_id: str = ""):
        self.run_id = run_id
        self.data: dict[str, WindowData] = {}  # field -> its latest read
        self._tail: list[tuple[np.ndarray, MetricBatch]] = []  # (rowids, rows) since the oldest read
        self.tail_rows = 0
        self.version = 0
        self.needs_refresh = False  # the tail redid steps an envelope shows, or outgrew TAIL_MAX_ROWS
        self.t0: float | None = None

    # ------------------------------------------------------------------ input

    def set_data(self, data: WindowData) -> None:
        """Take a worker's read (for each of its fields); tail rows it already covers are dropped."""
        for f in data.fields:
            self.data[f] = data
        if data.t0 is not None:
            self.t0 = data.t0
        self.needs_refresh = False
        oldest = min((d.rowid for d in self.data.values()), default=0)
        kept = [(r, b) for r, b in self._tail if r.size and r[-1] > oldest]
        self._tail = [(r[r > oldest], _take(b, r > oldest)) for r, b in kept]
        self.tail_rows = sum(r.size for r, _ in self._tail)
        self.version += 1

    def extend(self, batch: MetricBatch) -> bool:
        """Rows the watcher read since its last batch (with their rowids); True when any is new to the window."""
        if batch.size == 0 or batch.rowid is None:
            return False
        fresh = batch.rowid > min((d.rowid for d in self.data.values()), default=0)
        if not fresh.any():
            return False
        rowid = batch.rowid[fresh]
        rows = _take(batch, fresh)
        self._tail.append((rowid, rows))
        self.tail_rows += rowid.size
        if self.tail_rows > TAIL_MAX_ROWS:
            self._tail.clear()
            self.tail_rows = 0
            self.needs_refresh = True
        elif self._redoes_shown_steps(rows):
            self.needs_refresh = True
        self.version += 1
        return True

    def _redoes_shown_steps(self, rows: MetricBatch) -> bool:
        """A row of a later attempt at a step an earlier attempt shows: the envelope must be read again."""
        steps, attempts = rows.columns["step"], rows.attempt
        for data in self.data.values():
            for segs in data.fields.values():
                for seg in segs:
                    later = attempts > seg.attempt
                    if later.any() and data.x_axis == "step" and seg.x_last.size \
                            and steps[later].min() <= seg.x_last[-1]:
                        return True
                    if later.any() and data.x_axis != "step":
                        return True  # no step in the envelope to compare with: read again
        return False

    # ------------------------------------------------------------------ output

    def tail_series(self, after_rowid: int) -> RunSeries:
        """The tail rows newer than `after_rowid`, under the latest-attempt rule."""
        series = RunSeries()
        for rowid, rows in self._tail:
            keep = rowid > after_rowid
            if keep.any():
                series.extend(_take(rows, keep))
        return series

    def points(self, field_name: str) -> int:
        """Rows the window shows of a field's range: the envelope's and the tail's."""
        data = self.data.get(field_name)
        if data is None:
            return self.tail_rows
        return data.points + sum(int((r > data.rowid).sum()) for r, _ in self._tail)


def _take(batch: MetricBatch, keep: np.ndarray) -> MetricBatch:
    return MetricBatch(batch.attempt[keep], {c: v[keep] for c, v in batch.columns.items()},
                       None if batch.rowid is None else batch.rowid[keep])


# ---------------------------------------------------------------------------------------------- curves


class WindowSegment:
    """One attempt's lines of a WindowCurve: the raw min/max polyline (x, y), the smoothed line
    (smooth_x, smooth) and the finite y bounds. Its size is bounded by the buckets, not the run's points."""

    def __init__(self, x: np.ndarray, y: np.ndarray, smooth_x: np.ndarray, smooth: np.ndarray):
        self.x, self.y, self.smooth_x, self.smooth = x, y, smooth_x, smooth
        finite = y[np.isfinite(y)]
        self.lo = float(finite.min()) if finite.size else np.inf
        self.hi = float(finite.max()) if finite.size else -np.inf

    @property
    def n(self) -> int:
        return int(self.y.size)


class WindowCurve:
    """One field of a RunWindow against an x-axis choice, smoothed per attempt (see the module docstring for
    what smoothing means over an envelope). Same interface as core.series.Curve: MetricChart draws either."""

    def __init__(self, window: RunWindow, y_field: str, x_axis: str = "step", smoothing: float = 0.0):
        _check_axis(x_axis)
        _check_weight(smoothing)
        self.window = window
        self.y_field = y_field
        self.x_axis = x_axis
        self.smoothing = smoothing
        self._segs: dict[int, WindowSegment] = {}
        self._version = -1

    def set_x_axis(self, x_axis: str) -> None:
        _check_axis(x_axis)
        if x_axis != self.x_axis:
            self.x_axis = x_axis
            self._version = -1

    def set_smoothing(self, weight: float) -> None:
        _check_weight(weight)
        if weight != self.smoothing:
            self.smoothing = weight
            self._version = -1

    @property
    def data(self) -> WindowData | None:
        """The envelope this curve draws (None until read, or when read for another x axis)."""
        data = self.window.data.get(self.y_field)
        return data if data is not None and data.x_axis == self.x_axis else None

    def refresh(self) -> CurveUpdate:
        if self._version == self.window.version:
            return CurveUpdate(False)
        self._version = self.window.version
        before = list(self._segs)
        self._segs = self._build()
        return CurveUpdate(list(self._segs) != before, tuple(self._segs))

    def _build(self) -> dict[int, WindowSegment]:
        data = self.data
        parts: dict[int, list[tuple[np.ndarray, ...]]] = {}
        states: dict[int, DecayState] = {}
        w = self.smoothing
        for seg in data.fields.get(self.y_field, ()) if data is not None else ():
            single = seg.n == 1
            # the min/max polyline: a bucket of one point is that point; else its min at its first x, max at its last
            reps = np.where(single, 1, 2)
            x = np.repeat(seg.x_first, reps)
            y = np.repeat(seg.y_min, reps)
            second = np.cumsum(reps) - 1  # the second entry of each two-point bucket
            x[second[~single]] = seg.x_last[~single]
            y[second[~single]] = seg.y_max[~single]
            mid = np.where(single, seg.y_min, (seg.y_min + seg.y_max) / 2)
            smooth, states[seg.attempt] = ema_weighted(mid, seg.n, w)
            parts.setdefault(seg.attempt, []).append((x, y, seg.x_last, smooth))
        tail = self.window.tail_series(data.rowid if data is not None else 0)
        t0 = self.window.t0 if self.window.t0 is not None else (tail.t0 or 0.0)
        for attempt in tail.attempts:
            x = tail.column(attempt, "t") - t0 if self.x_axis == "wall_time" else tail.column(attempt, self.x_axis)
            y = tail.column(attempt, self.y_field)
            held = parts.get(attempt)
            if held:  # only what lies past the envelope's end continues its line
                keep = x > held[-1][0][-1]
                x, y = x[keep], y[keep]
            if not x.size:
                continue
            smooth, states[attempt] = ema_weighted(y, np.ones(y.size), w, states.get(attempt))
            parts.setdefault(attempt, []).append((x.copy(), y.copy(), x.copy(), smooth))
        out = {}
        for attempt in sorted(parts):
            x, y, sx, s = (np.concatenate(cols) for cols in zip(*parts[attempt], strict=True))
            out[attempt] = WindowSegment(x, y, sx, s)
        return out

    @property
    def attempts(self) -> list[int]:
        return list(self._segs)

    def segment(self, attempt: int) -> WindowSegment:
        return self._segs[attempt]

    def segments(self) -> list[WindowSegment]:
        return list(self._segs.values())

    def resume_points(self) -> list[tuple[int, float]]:
        return [(a, float(s.x[0])) for a, s in list(self._segs.items())[1:] if s.n]

    def bounds(self) -> tuple[float, float]:
        return (min((s.lo for s in self._segs.values()), default=np.inf),
                max((s.hi for s in self._segs.values()), default=-np.inf))

    def held_points(self) -> int:
        """Values this curve holds (raw polyline and smoothed line): bounded by the buckets read."""
        return sum(s.x.size + s.smooth.size for s in self._segs.values())

