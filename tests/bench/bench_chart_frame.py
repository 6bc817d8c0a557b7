"""Benchmark: chart frame time (update + paint) with 8 runs of 1M points each.

Run explicitly: `.venv/bin/python tests/bench/bench_chart_frame.py [points]` (or `pytest -m bench
tests/bench/bench_chart_frame.py`). Target: <= 16 ms per frame with TuneDeck's chart (peak downsampling,
clip-to-view, 1 px pens), printed beside the same plot without downsampling, measured in the same run.

TuneDeck's chart draws a long curve from an incrementally updated min/max envelope while the whole run is in
view (app.gui.charts._Envelope), so a frame costs what the new points cost; the variant with pyqtgraph's
peak downsampling alone is printed too.

A frame is what a live compare view does when every run has logged one more step: each of the 8 runs' series
takes one more metric row (core.series.RunSeries.extend), the chart refreshes (each run's Curve converts and
smooths only the new point; setData on the grown arrays), then the plot widget is repainted synchronously
(QWidget.repaint: pyqtgraph's whole paint path, offscreen platform).
"""

from __future__ import annotations

import os
import statistics
import sys
import time

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

N_RUNS = 8
N_POINTS = 1_000_000
FRAMES = 30
TARGET_MS = 16.0


def build(chart_cls, downsample: bool, n_points: int, envelope: bool = True):
    from app.gui.charts import RUN_COLORS, MetricChart
    from core.series import Curve, MetricBatch, RunSeries

    chart = MetricChart("Loss", "loss")
    chart.use_envelope = envelope and downsample
    if not downsample:  # the same plot without downsampling or clipping (pyqtgraph's defaults)
        chart.plot.setDownsampling(auto=False, ds=1)
        chart.plot.setClipToView(False)
        chart.downsample = False
    chart.set_show_raw(False)  # the compare view's overlay: smoothed curves only
    rng = np.random.default_rng(0)
    x = np.arange(1, n_points + 1, dtype=float)
    chart.series = []
    for run in range(N_RUNS):
        y = 3 * np.exp(-x / n_points * 4) + 0.05 * rng.standard_normal(n_points) + 0.1 * run
        series = RunSeries()
        series.extend(MetricBatch.from_columns(1, step=x, t=x, loss=y))
        chart.set_curve(f"run{run}", f"run {run}", RUN_COLORS[run % len(RUN_COLORS)], Curve(series, "loss", "step", 0.6))
        chart.series.append(series)
    if not downsample:
        for item in chart._curves.values():
            item.setDownsampling(auto=False, ds=1)
            item.setClipToView(False)
    chart.resize(1280, 720)
    chart.show()
    return chart


def frame_times(chart, n_points: int, frames: int) -> list[float]:
    from PySide6.QtCore import QCoreApplication

    from core.series import MetricBatch

    view = chart.plot_widget.viewport()
    QCoreApplication.processEvents()
    view.repaint()  # first paint (caches) outside the timing
    times = []
    for k in range(frames):
        t0 = time.perf_counter()
        for run in range(N_RUNS):
            step = np.array([float(n_points + k + 1)])
            chart.series[run].extend(MetricBatch.from_columns(1, step=step, t=step, loss=[0.5 + 0.1 * run]))
        chart.refresh()
        view.repaint()  # synchronous paintEvent of the visible widget (offscreen platform: into its backing store)
        times.append((time.perf_counter() - t0) * 1000)
    return times


def run(n_points: int = N_POINTS, frames: int = FRAMES) -> dict[str, float]:
    from app.gui.app import create_app
    from app.gui.charts import MetricChart

    create_app()
    out = {}
    variants = (("tunedeck", True, True, frames), ("peak-only", True, False, max(5, frames // 3)),
                ("no-downsampling", False, False, max(3, frames // 6)))
    for name, downsample, envelope, n in variants:
        chart = build(MetricChart, downsample, n_points, envelope)
        times = frame_times(chart, n_points, n)
        out[name] = statistics.median(times)
        out[f"{name}_p90"] = sorted(times)[int(0.9 * (len(times) - 1))]
        chart.close()
        chart.deleteLater()
    return out


def report(result: dict[str, float], n_points: int) -> str:
    ratio = result["no-downsampling"] / result["tunedeck"]
    return (f"chart frame (append 1 point to each of {N_RUNS} runs x {n_points:,} points, then paint): "
            f"TuneDeck {result['tunedeck']:.1f} ms median (p90 {result['tunedeck_p90']:.1f}), "
            f"without downsampling {result['no-downsampling']:.1f} ms median -> {ratio:.1f}x faster "
            f"(pyqtgraph's peak downsampling alone, no envelope: {result['peak-only']:.1f} ms); "
            f"target <= {TARGET_MS:g} ms: {'met' if result['tunedeck'] <= TARGET_MS else 'NOT met'}")


@pytest.mark.bench
def test_bench_chart_frame():
    result = run()
    print(report(result, N_POINTS))
    assert result["tunedeck"] < result["no-downsampling"]


if __name__ == "__main__":
    n = int(sys.argv[1]) if len(sys.argv) > 1 else N_POINTS
    print(report(run(n), n))
