"""Chart data from run records: per-attempt arrays for an x-axis choice, smoothing, resume points.

Pure logic (numpy, no Qt): the GUI's charts call these and only hand the arrays to pyqtgraph.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

X_AXES = ("step", "tokens", "samples", "wall_time")
X_LABELS = {"step": "optimizer step", "tokens": "tokens", "samples": "samples", "wall_time": "wall time (s)"}
Y_FIELDS = ("loss", "lr", "grad_norm", "tokens_per_s")


@dataclass(frozen=True)
class Segment:
    """One attempt's part of a curve (a resumed run draws each attempt as its own segment)."""

    attempt: int
    x: np.ndarray
    y: np.ndarray


def segments(records: Iterable[dict[str, Any]], y_field: str, x_axis: str = "step", t0: float | None = None) -> list[Segment]:
    """Split metric records into per-attempt segments; a step redone by a later attempt is dropped from
    the earlier one (the latest attempt wins), so segments never overlap and no step appears twice."""
    if x_axis not in X_AXES:
        raise ValueError(f"x_axis must be one of {X_AXES}")
    rows = [r for r in records if r.get("step") is not None]
    if not rows:
        return []
    latest: dict[int, int] = {}
    for r in rows:
        latest[r["step"]] = max(latest.get(r["step"], 0), r.get("attempt", 1))
    start = t0 if t0 is not None else min(r["t"] for r in rows)
    by_attempt: dict[int, list[tuple[float, float]]] = {}
    for r in rows:
        attempt = r.get("attempt", 1)
        if latest[r["step"]] != attempt:
            continue
        x = r["t"] - start if x_axis == "wall_time" else r.get(x_axis)
        y = r.get(y_field)
        if x is None:
            continue
        by_attempt.setdefault(attempt, []).append((float(x), np.nan if y is None else float(y)))
    out = []
    for attempt in sorted(by_attempt):
        pts = sorted(by_attempt[attempt])
        arr = np.asarray(pts, dtype=float)
        out.append(Segment(attempt, arr[:, 0], arr[:, 1]))
    return out


def ema(y: np.ndarray, weight: float) -> np.ndarray:
    """Debiased exponential moving average (TensorBoard's smoothing); NaNs are skipped, not spread.

    weight 0 returns y; 0.99 is very smooth. Vectorised in blocks (a 1M-point curve takes milliseconds):
    within a block the recurrence is a small lower-triangular matrix product, and one carry per block
    links the blocks.
    """
    if not 0 <= weight < 1:
        raise ValueError("smoothing weight must be in [0, 1)")
    y = np.asarray(y, dtype=float)
    if weight == 0 or y.size == 0:
        return y.copy()
    finite = ~np.isnan(y)
    v = y[finite]
    out = np.full_like(y, np.nan)
    if v.size == 0:
        return out
    out[finite] = ema_raw(v, weight) / (1 - weight ** np.arange(1, v.size + 1))
    return out


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


def resume_points(records: Sequence[dict[str, Any]], x_axis: str = "step", t0: float | None = None) -> list[tuple[int, float]]:
    """(attempt, x) where each attempt after the first starts: drawn as a marker line on the charts."""
    segs = segments(records, "loss", x_axis, t0)
    return [(s.attempt, float(s.x[0])) for s in segs[1:] if s.x.size]


def _latest_per_step(evals: Iterable[dict[str, Any]], benchmark: str, subset: str) -> dict[int, dict[str, Any]]:
    best: dict[int, dict[str, Any]] = {}
    for r in evals:
        if r.get("benchmark") != benchmark or r.get("subset") != subset or r.get("pass@1") is None:
            continue
        step = int(r["step"])
        if step not in best or r["t"] >= best[step]["t"]:
            best[step] = r
    return best


def pass_at_1_series(evals: Iterable[dict[str, Any]], benchmark: str, subset: str) -> tuple[np.ndarray, np.ndarray]:
    """(steps, pass@1 in %) for one benchmark and subset; the latest record per step wins."""
    best = _latest_per_step(evals, benchmark, subset)
    steps = sorted(best)
    return np.asarray(steps, dtype=float), np.asarray([100.0 * float(best[s]["pass@1"]) for s in steps], dtype=float)


def unconfined_pass_at_1(evals: Iterable[dict[str, Any]], benchmark: str, subset: str,
                         unconfined: set[tuple[int, int]]) -> tuple[np.ndarray, np.ndarray]:
    """The points of pass_at_1_series whose record came from an evaluation run unconfined (`unconfined`:
    its (attempt, step) keys, core.records.unconfined_evaluations)."""
    best = _latest_per_step(evals, benchmark, subset)
    steps = sorted(s for s, r in best.items() if (int(r["attempt"]), s) in unconfined)
    return np.asarray(steps, dtype=float), np.asarray([100.0 * float(best[s]["pass@1"]) for s in steps], dtype=float)


def unconfined_best(evals: Iterable[dict[str, Any]], unconfined: set[tuple[int, int]]) -> set[tuple[str, str]]:
    """(benchmark, subset) whose best pass@1 (the compare view's number) some unconfined evaluation gave."""
    best: dict[tuple[str, str], tuple[float, bool]] = {}
    for r in evals:
        if r.get("pass@1") is None:
            continue
        key, value = (r["benchmark"], r["subset"]), float(r["pass@1"])
        flagged = (int(r["attempt"]), int(r["step"])) in unconfined
        held = best.get(key)
        if held is None or value > held[0]:
            best[key] = (value, flagged)
        elif value == held[0]:
            best[key] = (value, held[1] or flagged)
    return {key for key, (_value, flagged) in best.items() if flagged}
