"""Live charts: curves created once, then `setData` with peak downsampling and clip-to-view.

Widgets here only render arrays that core.series computed (MetricChart draws core.series.Curve objects). Measured (FACTS.md): 1M points per frame cost
~11 ms with `setDownsampling(auto=True, method='peak')` + `setClipToView(True)`, ~140 ms without.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import Qt
from PySide6.QtWidgets import QLabel, QVBoxLayout, QWidget

from core.references import DEFAULT_SHOWN, Reference, references_for
from core.series import Curve, CurveSegment

# Colour-blind-safe qualitative palette (Okabe-Ito), cycled per run.
RUN_COLORS = ("#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#000000")
SUBSET_COLORS = {"all": "#0072B2", "clean": "#009E73", "contaminated": "#D55E00"}
UNCONFINED_COLOR = "#cf222e"  # the badge on pass@1 measured without a sandbox
MEASURED_COLOR = "#8250df"  # a measured reference without a published line of the same name

pg.setConfigOptions(antialias=False, useOpenGL=False)


def _configure_plot(plot: pg.PlotItem, downsample: bool) -> None:
    if downsample:
        plot.setDownsampling(auto=True, mode="peak")  # PlotItem calls it `mode`, PlotDataItem `method`
        plot.setClipToView(True)
    # The grid is its own item, not the axes' (showGrid): an axis that draws the grid spans the whole view, so
    # every curve update repaints both axes with all their tick labels. Measured on a live run view fed at
    # 20 Hz: UI-thread gaps of 50-155 ms with showGrid, under 60 ms with a GridItem.
    plot.addItem(pg.GridItem(pen=pg.mkPen(128, 128, 128, 38), textPen=None), ignoreBounds=True)


class ChartWidget(QWidget):
    """A pyqtgraph plot with a legend, a title, and PNG/SVG/CSV export."""

    def __init__(self, title: str, y_label: str, x_label: str = "optimizer step", parent: QWidget | None = None,
                 downsample: bool = True):
        super().__init__(parent)
        self.plot_widget = pg.PlotWidget(background=None)
        self.plot: pg.PlotItem = self.plot_widget.getPlotItem()
        self.plot.setTitle(title)
        self.plot.setLabel("left", y_label)
        self.plot.setLabel("bottom", x_label)
        self.legend = self.plot.addLegend(offset=(-10, 10))
        self.downsample = downsample
        _configure_plot(self.plot, downsample)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.plot_widget)
        self._curves: dict[tuple, pg.PlotDataItem] = {}
        self._lines: dict[tuple, pg.InfiniteLine] = {}
        self.setObjectName(f"chart:{title}")

    def set_x_label(self, label: str) -> None:
        self.plot.setLabel("bottom", label)

    def curve(self, key: tuple, *, name: str | None, color: str, width: float = 1, alpha: int = 255,
              style: Qt.PenStyle = Qt.PenStyle.SolidLine, symbol: str | None = None) -> pg.PlotDataItem:
        """The curve for `key`, created on first use (never re-created: setData updates it).

        Dense curves keep width 1: Qt's raster engine draws a 1 px cosmetic pen ~7x faster than 2 px
        (measured: 8 curves of 1M points, 3.5 ms against 24 ms per frame)."""
        item = self._curves.get(key)
        if item is None:
            qcolor = pg.mkColor(color)
            qcolor.setAlpha(alpha)
            pen = pg.mkPen(qcolor, width=width, style=style)
            kwargs = {"symbol": symbol, "symbolBrush": qcolor, "symbolPen": pen, "symbolSize": 7} if symbol else {}
            item = self.plot.plot([], [], pen=pen, name=name, **kwargs)
            if self.downsample:
                item.setDownsampling(auto=True, method="peak")
                item.setClipToView(True)
            self._curves[key] = item
        return item

    def curve_keys(self) -> list[tuple]:
        return list(self._curves)

    def remove_curves(self, keep: Iterable[tuple]) -> None:
        keep = set(keep)
        for key in [k for k in self._curves if k not in keep]:
            item = self._curves.pop(key)
            self.plot.removeItem(item)
            self.legend.removeItem(item)

    def vline(self, key: tuple, x: float, label: str, color: str) -> None:
        line = self._lines.get(key)
        if line is None:
            line = pg.InfiniteLine(angle=90, movable=False, pen=pg.mkPen(color, width=1, style=Qt.PenStyle.DotLine),
                                   label=label, labelOpts={"position": 0.95, "color": color})
            self.plot.addItem(line, ignoreBounds=True)
            self._lines[key] = line
        line.setValue(x)

    def hline(self, key: tuple, y: float, label: str, color: str, visible: bool = True,
              label_position: float = 0.02) -> pg.InfiniteLine:
        line = self._lines.get(key)
        if line is None:
            line = pg.InfiniteLine(pos=y, angle=0, movable=False, pen=pg.mkPen(color, width=1, style=Qt.PenStyle.DashLine),
                                   label=label, labelOpts={"position": label_position, "color": color,
                                                           "anchors": [(0, 1), (0, 1)]})
            self.plot.addItem(line, ignoreBounds=True)
            self._lines[key] = line
        line.setVisible(visible)
        return line

    def remove_lines(self, keep: Iterable[tuple]) -> None:
        keep = set(keep)
        for key in [k for k in self._lines if k not in keep]:
            self.plot.removeItem(self._lines.pop(key))

    # ------------------------------------------------------------------------------------------ export

    def export_image(self, path: str | Path) -> Path:
        """PNG (or any raster format by suffix) or SVG, by the file's suffix."""
        from pyqtgraph.exporters import ImageExporter

        path = Path(path)
        if path.suffix.lower() == ".svg":
            self._export_svg(path)
        else:
            ImageExporter(self.plot).export(str(path))
        return path

    def _export_svg(self, path: Path) -> None:
        # pyqtgraph 0.14's SVGExporter fails to parse the path data Qt 6.11 emits ("not enough values to
        # unpack"); Qt's own SVG generator renders the same scene correctly.
        from PySide6.QtCore import QRectF, QSize
        from PySide6.QtGui import QPainter
        from PySide6.QtSvg import QSvgGenerator

        rect = self.plot.sceneBoundingRect()
        generator = QSvgGenerator()
        generator.setFileName(str(path))
        generator.setSize(QSize(int(rect.width()), int(rect.height())))
        generator.setViewBox(QRectF(0, 0, rect.width(), rect.height()))
        generator.setTitle(self.plot.titleLabel.text or "TuneDeck chart")
        painter = QPainter(generator)
        try:
            self.plot.scene().render(painter, QRectF(0, 0, rect.width(), rect.height()), rect)
        finally:
            painter.end()

    def export_csv(self, path: str | Path) -> Path:
        """Every visible curve's data as long-format CSV: series, x, y (the data, not the downsampled view)."""
        path = Path(path)
        with open(path, "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(["series", "x", "y"])
            for key, item in self._curves.items():
                if not item.isVisible():
                    continue
                full = getattr(item, "full_data", None)  # a curve drawn as an envelope keeps its data here
                x, y = full if full is not None else (item.xData, item.yData)
                if x is None:
                    continue
                name = item.name() or "/".join(map(str, key))
                writer.writerows((name, float(a), "" if np.isnan(b) else float(b)) for a, b in zip(x, y, strict=True))
        return path


FLAT_SPAN = 0.02  # the y-axis never spans less than this share of the data's magnitude (a constant lr, say)
ENVELOPE_MIN_POINTS = 1 << 16  # longer curves are drawn from a min/max envelope while the whole run is in view
ENVELOPE_MAX_BINS = 4096  # ~3 bins per pixel on a wide chart: the envelope draws what peak downsampling would
ENVELOPE_ZOOM = 0.5  # zoomed in to less than this share of the run: draw the points (pyqtgraph clips and downsamples)


class _Envelope:
    """Min/max per bin (2^k points) of a growing series, updated only where points arrived.

    pyqtgraph's peak downsampling re-reads every point of a curve on every setData (~7 ms per 1M-point curve,
    so ~60 ms per frame for 8 live runs); this keeps that work proportional to the new points."""

    def __init__(self) -> None:
        self.bin = 1
        self.n = 0
        self.bx = np.empty(0)
        self.lo = np.empty(0)
        self.hi = np.empty(0)

    def update(self, x: np.ndarray, y: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
        b = self.bin
        while n > b * ENVELOPE_MAX_BINS:
            b *= 2
        start = 0 if (b != self.bin or n < self.n) else (self.n // b)  # the last, partial bin is redone
        self.bin = b
        lo_i = start * b
        seg = y[lo_i:n]
        full = seg.size // b
        parts_lo = [np.fmin.reduce(seg[: full * b].reshape(full, b), axis=1)] if full else []
        parts_hi = [np.fmax.reduce(seg[: full * b].reshape(full, b), axis=1)] if full else []
        if seg.size > full * b:
            parts_lo.append(np.array([np.fmin.reduce(seg[full * b:])]))
            parts_hi.append(np.array([np.fmax.reduce(seg[full * b:])]))
        n_bins = -(-n // b)
        self.lo = np.concatenate([self.lo[:start], *parts_lo]) if parts_lo else self.lo[:start]
        self.hi = np.concatenate([self.hi[:start], *parts_hi]) if parts_hi else self.hi[:start]
        self.bx = x[0:n:b][:n_bins]
        self.n = n
        return np.repeat(self.bx, 2), np.column_stack((self.lo, self.hi)).ravel()


class MetricChart(ChartWidget):
    """One training metric for one or more runs, each a core.series.Curve: raw (faint) and smoothed lines, one
    segment per attempt, a dotted line where each resumed attempt starts. The curve computes (only what is
    new, on `refresh`); the chart hands its arrays to pyqtgraph."""

    def __init__(self, title: str, y_label: str, parent: QWidget | None = None, log_y: bool = False):
        super().__init__(title, y_label, parent=parent)
        self.show_raw = True
        self._runs: dict[str, tuple[str, str, Curve]] = {}  # run key -> (label, colour, curve)
        self._drawn: dict[tuple[str, int], CurveSegment] = {}  # what each attempt's items show
        self._envelopes: dict[tuple, _Envelope] = {}
        self._zoomed = False
        self.use_envelope = True  # False: always hand pyqtgraph every point (the benchmark's baseline)
        self.log_y = log_y
        self._min_y_range = 0.0
        self._y_clamp: tuple[float | None, float | None] = (None, None)
        if log_y:
            self.plot.setLogMode(y=True)
        self.plot.getViewBox().sigXRangeChanged.connect(self._on_x_range_changed)

    def _data_x_span(self) -> tuple[float, float] | None:
        spans = [(seg.x[0], seg.x[-1]) for seg in self._drawn.values() if seg.n]
        if not spans:
            return None
        return min(a for a, _ in spans), max(b for _, b in spans)

    def _on_x_range_changed(self, _vb: object, x_range: tuple[float, float]) -> None:
        """Zoomed in: draw the points themselves; the whole run in view: draw the envelopes."""
        span = self._data_x_span()
        if span is None or span[1] <= span[0]:
            return
        zoomed = (x_range[1] - x_range[0]) < ENVELOPE_ZOOM * (span[1] - span[0])
        if zoomed != self._zoomed:
            self._zoomed = zoomed
            for (run_key, attempt), seg in list(self._drawn.items()):
                if seg.n >= ENVELOPE_MIN_POINTS:
                    self._push(run_key, attempt, seg)

    def _set_curve(self, item: pg.PlotDataItem, key: tuple, x: np.ndarray, y: np.ndarray) -> None:
        """setData with the full arrays, or their envelope for a long curve while the whole run is in view."""
        if self.use_envelope and x.size >= ENVELOPE_MIN_POINTS and not self._zoomed:
            env = self._envelopes.get(key)
            if env is None:
                env = self._envelopes[key] = _Envelope()
            ex, ey = env.update(x, y, x.size)
            item.setData(ex, ey, connect="finite")
        else:
            self._envelopes.pop(key, None)
            item.setData(x, y, connect="finite")
        item.full_data = (x, y)

    def set_curve(self, run_key: str, label: str, color: str, curve: Curve) -> None:
        """Show `curve` as the run's line (replacing what the run showed) and draw it."""
        self.clear_run(run_key)
        self._runs[run_key] = (label, color, curve)
        self.refresh(run_key)

    def set_label(self, run_key: str, label: str) -> None:
        if run_key in self._runs and self._runs[run_key][0] != label:
            _old, color, curve = self._runs[run_key]
            self.set_curve(run_key, label, color, curve)

    def refresh(self, run_key: str | None = None) -> bool:
        """Bring the drawn lines up to their curves (one run, or every run): only the attempts that changed
        are handed to pyqtgraph again. True when anything was redrawn."""
        drew = False
        for key in [run_key] if run_key is not None else list(self._runs):
            if key not in self._runs:
                continue
            curve = self._runs[key][2]
            update = curve.refresh()
            if update.reset:
                self._drop_attempts(key, curve.attempts)
            for attempt in curve.attempts if update.reset else update.changed:
                self._push(key, attempt, curve.segment(attempt))
                drew = True
        if drew:
            self._keep_flat_curves_readable()
        return drew

    def set_show_raw(self, show: bool) -> None:
        was = self.show_raw
        self.show_raw = show
        if show and not was:  # hidden raw curves were not kept up to date (see _push): refresh them
            for (run_key, attempt), seg in list(self._drawn.items()):
                self._push(run_key, attempt, seg)
        for (run_key, _attempt, kind), item in self._curves.items():
            if kind == "raw":
                item.setVisible(show and self._runs[run_key][2].smoothing > 0)

    def _drop_attempts(self, run_key: str, attempts: list[int]) -> None:
        """Before a full redraw: keep the items of attempts still there (curves are created once, then
        setData), unless the first attempt (the one named in the legend) changed."""
        drawn = sorted(a for r, a in self._drawn if r == run_key)
        if drawn[:1] != attempts[:1]:
            self._clear_items(run_key)
            return
        keep = set(attempts)
        for attempt in [a for a in drawn if a not in keep]:
            del self._drawn[(run_key, attempt)]
        self.remove_curves([k for k in self._curves if k[0] != run_key or k[1] in keep])
        self.remove_lines([k for k in self._lines if k[0] != run_key or k[1] in keep])

    def _clear_items(self, run_key: str) -> None:
        for key in [k for k in self._drawn if k[0] == run_key]:
            del self._drawn[key]
        for key in [k for k in self._envelopes if k[0] == run_key]:
            del self._envelopes[key]
        self.remove_curves([k for k in self._curves if k[0] != run_key])
        self.remove_lines([k for k in self._lines if k[0] != run_key])

    def clear_run(self, run_key: str) -> None:
        self._clear_items(run_key)
        self._runs.pop(run_key, None)

    def run_keys(self) -> list[str]:
        return list(self._runs)

    def point_count(self, run_key: str) -> int:
        return sum(seg.n for (r, _), seg in self._drawn.items() if r == run_key)

    def _push(self, run_key: str, attempt: int, seg: CurveSegment) -> None:
        if self._drawn.get((run_key, attempt)) is not seg:  # new data, not more of the drawn one
            for kind in ("raw", "smooth"):
                self._envelopes.pop((run_key, attempt, kind), None)
            self._drawn[(run_key, attempt)] = seg
        label, color, curve = self._runs[run_key]
        first = attempt == curve.attempts[0]
        name = label if first else None
        raw = self.curve((run_key, attempt, "raw"), name=None, color=color, width=1, alpha=70)
        line = self.curve((run_key, attempt, "smooth"), name=name, color=color, width=1)
        if curve.smoothing > 0:
            if self.show_raw:  # a hidden curve's setData would still cost bounds and downsampling per update
                self._set_curve(raw, (run_key, attempt, "raw"), seg.x, seg.y)
            raw.setVisible(self.show_raw)
        else:
            raw.setVisible(False)
        # a curve read as an envelope (core.window.WindowCurve) draws its smoothed line at its own x (one value
        # per bucket) beside the raw min/max polyline
        self._set_curve(line, (run_key, attempt, "smooth"), getattr(seg, "smooth_x", seg.x), seg.smooth)
        if not first and seg.n:
            self.vline((run_key, attempt, "resume"), float(seg.x[0]), f"attempt {attempt}", color)

    def _keep_flat_curves_readable(self) -> None:
        """A curve that hardly varies (a constant learning rate, a throughput steady to the last digit) would
        make autorange zoom into float noise (ticks like 1.000000000000003) or, exactly flat, pad it by +-0.5
        whatever its scale (a 3e-3 learning rate drawn on +-0.5). The y-range is kept at least FLAT_SPAN of the
        data's magnitude (0.01 decade on a log axis) while the curves are that flat, and framed by that span
        around them; curves that vary keep pyqtgraph's own range and zoom."""
        if self.log_y:
            wanted, clamp = 0.01, (None, None)
        else:
            bufs = [b for b in (c.bounds() for _l, _c, c in self._runs.values()) if b[1] >= b[0]]
            lo = min((b[0] for b in bufs), default=0.0)
            hi = max((b[1] for b in bufs), default=0.0)
            magnitude = max(abs(lo), abs(hi))
            flat_span = FLAT_SPAN * magnitude if magnitude > 0 else 1e-9
            # Only a flat curve gets the floor: one that varies (a spike early on, say) stays free to zoom into
            # detail, down to where float rounding would show.
            wanted = flat_span if bufs and hi - lo < flat_span else 1e-9 * magnitude
            clamp = (None, None)
            if bufs and hi - lo < flat_span:
                old_lo, old_hi = self._y_clamp
                if old_lo is not None and old_hi is not None and old_lo <= lo and hi <= old_hi:
                    clamp = self._y_clamp  # still inside the frame: leave it
                else:
                    mid = (lo + hi) / 2
                    clamp = (mid - wanted, mid + wanted)
        if clamp != self._y_clamp or not (0.8 * self._min_y_range <= wanted <= 1.25 * self._min_y_range):
            self._min_y_range, self._y_clamp = wanted, clamp
            self.plot.getViewBox().setLimits(minYRange=wanted or None, yMin=clamp[0], yMax=clamp[1])


class PassAtOneChart(ChartWidget):
    """pass@1 per checkpoint for all / clean / contaminated items, with published reference lines."""

    def __init__(self, benchmark: str = "humaneval", parent: QWidget | None = None):
        super().__init__(f"{benchmark} pass@1", "pass@1 (%)", parent=parent, downsample=False)
        self.benchmark = benchmark
        self.plot.setYRange(0, 100)
        self.references: dict[str, Reference] = {}
        self._measured: dict[str, tuple[pg.ScatterPlotItem, pg.TextItem]] = {}
        # Labels alternate between the left and the middle in value order, so close numbers (GPT-4 67.0,
        # Phind 67.6) do not print over each other.
        for i, ref in enumerate(sorted(references_for(benchmark), key=lambda r: r.pass_at_1)):
            self.references[ref.model] = ref
            self.hline(("ref", ref.model), ref.pass_at_1, f"{ref.model} {ref.pass_at_1:g}", "#888888",
                       visible=ref.model in DEFAULT_SHOWN, label_position=0.02 if i % 2 == 0 else 0.5)
        # pass@1 measured without a sandbox (evaluation.sandbox: unconfined): a red ring on each such point
        # and a red badge over the chart naming their steps
        self.unconfined_badge = QLabel()
        self.unconfined_badge.setObjectName("unconfined_badge")
        self.unconfined_badge.setWordWrap(True)
        self.unconfined_badge.setStyleSheet(f"background: {UNCONFINED_COLOR}; color: white; font-weight: 600;"
                                            " border-radius: 4px; padding: 2px 6px;")
        self.unconfined_badge.hide()
        self.layout().insertWidget(0, self.unconfined_badge)
        self._unconfined: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self._unconfined_items: dict[str, pg.ScatterPlotItem] = {}

    def set_reference_visible(self, model: str, visible: bool) -> None:
        self._lines[("ref", model)].setVisible(visible)

    def set_measured(self, measured: Sequence[tuple[str, float]]) -> None:
        """Measured references (label, pass@1 in %): a diamond marker each, at the right end of the curves,
        beside the published line of the same name (shown then), which it shares its colour with."""
        wanted = {label: value for label, value in measured}
        for label in [k for k in self._measured if k not in wanted]:
            for item in self._measured.pop(label):
                self.plot.removeItem(item)
        for label, value in wanted.items():
            published = self.references.get(label)
            color = "#555555" if published is not None else MEASURED_COLOR
            if published is not None:
                self.set_reference_visible(label, True)
            items = self._measured.get(label)
            if items is None:
                marker = pg.ScatterPlotItem(symbol="d", size=13, brush=pg.mkBrush(color), pen=pg.mkPen("w", width=1))
                text = pg.TextItem(anchor=(1.0, 1.1), color=color)
                self.plot.addItem(marker, ignoreBounds=True)
                self.plot.addItem(text, ignoreBounds=True)
                items = self._measured[label] = (marker, text)
            marker, text = items
            marker.setData([self._measured_x()], [value])
            marker.setToolTip(f"{label}: {value:.1f} (measured with this harness)"
                              + (f"; published {published.pass_at_1:g}" if published else ""))
            text.setText(f"{label} measured {value:.1f}")
            text.setPos(self._measured_x(), value)

    def measured(self) -> dict[str, float]:
        """Measured references shown: label -> pass@1 (%)."""
        return {label: float(items[0].data["y"][0]) for label, items in self._measured.items()}

    def _measured_x(self) -> float:
        xs = [float(np.nanmax(c.xData)) for c in self._curves.values() if c.xData is not None and len(c.xData)]
        return max(xs) if xs else 0.0

    def visible_references(self) -> list[str]:
        return [m for m in self.references if self._lines[("ref", m)].isVisible()]

    def set_subset(self, run_key: str, label: str, subset: str, steps: np.ndarray, values: np.ndarray,
                   color: str | None = None) -> tuple:
        key = (run_key, subset)
        style = {"all": Qt.PenStyle.SolidLine, "clean": Qt.PenStyle.DashLine, "contaminated": Qt.PenStyle.DotLine}[subset]
        item = self.curve(key, name=f"{label} {subset}" if label else subset, color=color or SUBSET_COLORS[subset],
                          width=2, style=style, symbol="o")
        item.setData(steps, values)
        if self._measured:  # keep the measured markers at the right end of the curves
            self.set_measured(list(self.measured().items()))
        return key

    def set_unconfined(self, subset: str, steps: np.ndarray, values: np.ndarray) -> None:
        """Mark the pass@1 points of `subset` that came from an unconfined evaluation (none: clear)."""
        scatter = self._unconfined_items.get(subset)
        if scatter is None:
            scatter = pg.ScatterPlotItem(symbol="o", size=15, pen=pg.mkPen(UNCONFINED_COLOR, width=2.5),
                                         brush=None)
            scatter.setZValue(10)
            self.plot.addItem(scatter)
            self._unconfined_items[subset] = scatter
        scatter.setData(steps, values)
        self._unconfined[subset] = (np.asarray(steps), np.asarray(values))
        marked = sorted({int(s) for xs, _ in self._unconfined.values() for s in xs})
        if marked:
            shown = ", ".join(map(str, marked[:8])) + (" …" if len(marked) > 8 else "")
            self.unconfined_badge.setText(f"⚠ UNCONFINED: pass@1 of step{'s' if len(marked) > 1 else ''} {shown} "
                                          "ran without a sandbox")
            self.unconfined_badge.setToolTip("These samples ran with evaluation.sandbox: unconfined: as the user, "
                                             "with their files and network, and only resource limits around them.")
        self.unconfined_badge.setVisible(bool(marked))

    def unconfined_points(self) -> dict[str, list[tuple[float, float]]]:
        """The marked points per subset, (step, pass@1 %)."""
        return {k: list(zip(xs.tolist(), ys.tolist(), strict=True)) for k, (xs, ys) in self._unconfined.items() if xs.size}
