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
from PySide6.QtCore import QEvent, QObject, QPointF, Qt
from PySide6.QtGui import QPalette
from PySide6.QtWidgets import QCheckBox, QHBoxLayout, QLabel, QVBoxLayout, QWidget

from core.references import DEFAULT_SHOWN, Reference, references_for
from core.series import Curve, CurveSegment

# Colour-blind-safe qualitative palette (Okabe-Ito), cycled per run.
RUN_COLORS = ("#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#000000")
SUBSET_COLORS = {"all": "#0072B2", "clean": "#009E73", "contaminated": "#D55E00"}
UNCONFINED_COLOR = "#cf222e"  # the badge on pass@1 measured without a sandbox
MEASURED_COLOR = "#8250df"  # a measured reference without a published line of the same name

HOVER_RATE_HZ = 60  # mouse moves handled per second at most (pyqtgraph's SignalProxy drops the rest)
HOVER_REACH = 0.02  # a curve is read at the hovered x when its data reach within this share of the view width

pg.setConfigOptions(antialias=False, useOpenGL=False)


def format_number(value: float) -> str:
    """A chart value for a hover label: 4 significant digits, thousands separated, no float noise."""
    if value is None or not np.isfinite(value):
        return "—"
    if value != 0 and (abs(value) < 1e-3 or abs(value) >= 1e6):
        return f"{value:.4g}"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:.4g}"


def nearest_index(x: np.ndarray, xq: float, reach: float) -> int | None:
    """Index of the point of sorted `x` nearest to `xq`, or None when `xq` lies more than `reach` outside it
    (a run that ended before the hovered x shows no value there rather than its last one)."""
    n = x.size
    if n == 0 or not np.isfinite(xq):
        return None
    i = int(np.searchsorted(x, xq))
    candidates = [j for j in (i - 1, i) if 0 <= j < n and np.isfinite(x[j])]
    if not candidates:
        return None
    j = min(candidates, key=lambda k: abs(x[k] - xq))
    return j if abs(x[j] - xq) <= reach or x[0] <= xq <= x[-1] else None


def _configure_plot(plot: pg.PlotItem, downsample: bool) -> None:
    if downsample:
        plot.setDownsampling(auto=True, mode="peak")  # PlotItem calls it `mode`, PlotDataItem `method`
        plot.setClipToView(True)
    # The grid is its own item, not the axes' (showGrid): an axis that draws the grid spans the whole view, so
    # every curve update repaints both axes with all their tick labels. Measured on a live run view fed at
    # 20 Hz: UI-thread gaps of 50-155 ms with showGrid, under 60 ms with a GridItem.
    # Two levels of grid lines, not pyqtgraph's three: its finest level is ~100 lines per axis drawn at ~4%
    # opacity (barely visible), and replaying them was ~3/4 of a chart's paint (a first paint 20-30 ms of
    # the UI thread when a comparison opened; the picture is redone on every range change).
    grid = pg.GridItem(pen=pg.mkPen(128, 128, 128, 38), textPen=None)
    grid.setTickSpacing(x=[None, None], y=[None, None])
    plot.addItem(grid, ignoreBounds=True)


class _Axis(pg.AxisItem):
    """pyqtgraph's axis, setting its label's HTML only when the text changes.

    pyqtgraph 0.14 re-sets the label (QGraphicsTextItem.setHtml, a text layout) on every range change for its
    SI prefix, even when neither the text nor the prefix changed: with four live charts that was the largest
    single cost of a chart update (226 setHtml calls, ~80 ms, when the first run tab opened)."""

    _html: str | None = None

    def _updateLabel(self) -> None:
        html = self.labelString()
        if html != self._html:
            self._html = html
            self.label.setHtml(html)
            self._adjustSize()
        self.picture = None
        self.update()


class ChartWidget(QWidget):
    """A pyqtgraph plot with a legend, a title, and PNG/SVG/CSV export."""

    def __init__(self, title: str, y_label: str, x_label: str = "optimizer step", parent: QWidget | None = None,
                 downsample: bool = True, log_toggle: bool = True):
        super().__init__(parent)
        self.plot_widget = pg.PlotWidget(background=None, axisItems={side: _Axis(side) for side in ("left", "bottom")})
        self.plot: pg.PlotItem = self.plot_widget.getPlotItem()
        self.plot.setTitle(title)
        self.plot.setLabel("left", y_label)
        self.plot.setLabel("bottom", x_label)
        self.legend = self.plot.addLegend(offset=(-10, 10))
        self.downsample = downsample
        _configure_plot(self.plot, downsample)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(0)
        # A visible log-scale switch per chart (pyqtgraph's own is hidden in the right-click menu).
        self.log_check = QCheckBox("log y")
        self.log_check.setObjectName("log_y")
        self.log_check.setToolTip("Logarithmic y-axis. Values at or below zero have no logarithm: they are not "
                                  "drawn while it is on (the note beside says how many).")
        self.log_check.toggled.connect(self.set_log_y)
        self.log_note = QLabel("")
        self.log_note.setObjectName("log_note")
        self.log_note.setStyleSheet("color: palette(placeholder-text);")
        tools = QHBoxLayout()
        tools.setContentsMargins(4, 0, 4, 0)
        tools.addStretch(1)
        tools.addWidget(self.log_note)
        tools.addWidget(self.log_check)
        layout.addLayout(tools)
        # only now: the box has its parent (a parentless widget made visible is a top-level window of its own,
        # which flashed up and took the focus from the main window)
        self.log_check.setVisible(log_toggle)
        layout.addWidget(self.plot_widget)
        self._curves: dict[tuple, pg.PlotDataItem] = {}
        self._lines: dict[tuple, pg.InfiniteLine] = {}
        self.setObjectName(f"chart:{title}")
        self._build_hover()

    # ------------------------------------------------------------------------------------------ hover

    def _build_hover(self) -> None:
        """A crosshair (a vertical line at the mouse) and a label with every curve's value at that x."""
        text_color = self.palette().color(QPalette.ColorRole.Text)
        base = self.palette().color(QPalette.ColorRole.Base)
        base.setAlpha(225)
        self.crosshair = pg.InfiniteLine(angle=90, movable=False,
                                         pen=pg.mkPen(text_color, width=1, style=Qt.PenStyle.DashLine))
        self.crosshair.setZValue(50)
        self.hover_label = pg.TextItem(anchor=(0, 0), color=text_color, fill=pg.mkBrush(base),
                                       border=pg.mkPen(128, 128, 128, 160))
        self.hover_label.setZValue(51)
        for item in (self.crosshair, self.hover_label):
            item.setVisible(False)
            self.plot.addItem(item, ignoreBounds=True)
        self.hover_x: float | None = None
        self._hover_text = ""
        self.plot_widget.viewport().installEventFilter(self)
        self._hover_proxy = pg.SignalProxy(self.plot.scene().sigMouseMoved, rateLimit=HOVER_RATE_HZ,
                                           slot=self._on_mouse_moved)

    def _on_mouse_moved(self, args: tuple) -> None:
        pos = args[0]
        vb = self.plot.getViewBox()
        if not vb.sceneBoundingRect().contains(pos):
            self.hide_hover()
            return
        self.show_hover(vb.mapSceneToView(pos).x())

    def eventFilter(self, watched: QObject, event: QEvent) -> bool:
        if event.type() == QEvent.Type.Leave:  # the mouse left the plot: no value is hovered any more
            self.hide_hover()
        return False

    def hide_hover(self) -> None:
        self.hover_x = None
        self.crosshair.setVisible(False)
        self.hover_label.setVisible(False)

    def show_hover(self, x: float) -> None:
        """The crosshair at view x (log10 of it on a log x-axis: pyqtgraph's view coordinates) and the values
        of every curve there."""
        vb = self.plot.getViewBox()
        (x_lo, x_hi), (_y_lo, y_hi) = vb.viewRange()
        rows = self.hover_rows(x, HOVER_REACH * (x_hi - x_lo))
        if rows:  # the line snaps to the data point read (the first curve's), as the header says
            x = rows[0][3]
        self.hover_x = x
        lines = [(self.hover_header(x), None)] + [
            (f"{name}: {text}" + (f" at {format_number(px)}" if px != x else ""), color)
            for name, color, text, px in rows]
        if not rows:
            lines.append(("no data here", None))
        self._hover_text = "\n".join(t for t, _c in lines)
        html = "<br>".join(
            (f"<span style='color:{c}'>&#9679;</span> " if c else "") + _html(t) for t, c in lines)
        self.hover_label.setHtml(f"<div style='font-size:9pt'>{html}</div>")
        self.hover_label.setAnchor((0, 0) if x < (x_lo + x_hi) / 2 else (1, 0))  # keep it inside the view
        self.hover_label.setPos(QPointF(x, y_hi))
        self.crosshair.setValue(x)
        self.crosshair.setVisible(True)
        self.hover_label.setVisible(True)

    def hover_header(self, x: float) -> str:
        """The hover label's first line: where the values are read."""
        return f"{self.plot.getAxis('bottom').labelText or 'x'} {format_number(x)}"

    def hover_text(self) -> str:
        """What the hover label says (plain text, one line per curve): empty while the mouse is elsewhere."""
        return self._hover_text if self.hover_label.isVisible() else ""

    def hover_rows(self, x: float, reach: float) -> list[tuple[str, str, str, float]]:
        """(name, colour, value text, x of the point read) of each curve near x; charts override it."""
        rows = []
        for key, item in self._curves.items():
            if not item.isVisible() or item.xData is None:
                continue
            full = getattr(item, "full_data", None)
            xs, ys = full if full is not None else (item.xData, item.yData)
            i = nearest_index(np.asarray(xs), x, reach)
            if i is not None:
                rows.append((item.name() or "/".join(map(str, key)), item.opts["pen"].color().name(),
                             format_number(float(ys[i])), float(xs[i])))
        return rows

    # ------------------------------------------------------------------------------------------ log scale

    def set_log_y(self, on: bool) -> None:
        """A logarithmic y-axis (pyqtgraph maps values <= 0 to NaN: gaps, counted in the note)."""
        if self.log_check.isChecked() != on:
            self.log_check.setChecked(on)  # comes back here through toggled
            return
        self.plot.setLogMode(y=on)
        self._log_changed(on)
        self.plot.getViewBox().enableAutoRange(y=True)
        self.update_log_note()

    def _log_changed(self, on: bool) -> None:
        """Subclasses reframe what depends on the y units."""

    def is_log_y(self) -> bool:
        return self.log_check.isChecked()

    def non_positive_points(self) -> int:
        """Points of the visible curves at or below zero (not drawn on a log axis)."""
        n = 0
        for item in self._curves.values():
            if item.isVisible():
                full = getattr(item, "full_data", None)
                y = full[1] if full is not None else item.yData
                if y is not None:
                    n += int(np.count_nonzero(np.asarray(y) <= 0))
        return n

    def update_log_note(self) -> None:
        n = self.non_positive_points() if self.is_log_y() else 0
        self.log_note.setText(f"{n:,} point{'s' if n != 1 else ''} ≤ 0 not drawn" if n else "")

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


class BarChart(ChartWidget):
    """Bars per category (benchmark / subset) and series (run); the hover lists every series' bar of the
    category under the mouse."""

    def __init__(self, title: str, y_label: str, x_label: str, parent: QWidget | None = None):
        super().__init__(title, y_label, x_label=x_label, parent=parent, downsample=False, log_toggle=False)
        self.categories: list[str] = []
        self.series: list[tuple[str, str, dict[int, float]]] = []  # (name, colour, {category index: height})

    def set_bars(self, categories: list[str], series: list[tuple[str, str, dict[int, float]]]) -> None:
        """What the bars show, for the hover (the caller draws the BarGraphItems)."""
        self.categories, self.series = list(categories), list(series)

    def hover_header(self, x: float) -> str:
        i = round(x)
        return self.categories[i].replace("\n", " ") if 0 <= i < len(self.categories) else ""

    def hover_rows(self, x: float, reach: float) -> list[tuple[str, str, str, float]]:
        i = round(x)
        return [(name, color, f"{bars[i]:.1f}%", float(i)) for name, color, bars in self.series if i in bars]


def _html(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


# pyqtgraph's own "no limit" (ViewBox's default): None breaks its log-mode limits (a comparison with None)
NO_LIMIT = 1e307
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
        self.log_y = False
        self._min_y_range = 0.0
        self._y_clamp: tuple[float | None, float | None] = (None, None)
        if log_y:
            self.set_log_y(True)
        self.plot.getViewBox().sigXRangeChanged.connect(self._on_x_range_changed)

    def _log_changed(self, on: bool) -> None:
        """The flat-curve frame is in the axis' units (log10 of the values on a log axis): drop the old one."""
        self.log_y = on
        self._min_y_range, self._y_clamp = 0.0, (None, None)
        self.plot.getViewBox().setLimits(minYRange=None, yMin=-NO_LIMIT, yMax=NO_LIMIT)
        self._keep_flat_curves_readable()

    def non_positive_points(self) -> int:
        n = 0
        for (run_key, _attempt), seg in self._drawn.items():
            curve = self._runs[run_key][2]
            if curve.bounds()[0] <= 0:  # the curve's running minimum: no scan while every value is positive
                n += int(np.count_nonzero(seg.y <= 0))
        return n

    def hover_rows(self, x: float, reach: float) -> list[tuple[str, str, str, float]]:
        """Each run's smoothed value (and raw, when shown and smoothed) at the drawn point nearest to x, from
        the attempt whose segment holds x (a resumed run: the later attempt)."""
        rows = []
        for run_key, (label, color, curve) in self._runs.items():
            for attempt in reversed(curve.attempts):
                seg = self._drawn.get((run_key, attempt))
                if seg is None or not seg.n:
                    continue
                i = nearest_index(seg.x, x, reach)
                if i is None:
                    continue
                text = format_number(float(seg.smooth[i]))
                if curve.smoothing > 0 and self.show_raw:
                    text += f" (raw {format_number(float(seg.y[i]))})"
                if attempt != curve.attempts[0]:
                    text += f" · attempt {attempt}"
                rows.append((label, color, text, float(seg.x[i])))
                break
        return rows

    def _data_x_span(self) -> tuple[float, float] | None:
        spans = [(seg.x[0], seg.x[-1]) for seg in self._drawn.values() if seg.n]
        if not spans:
            return None
        return min(a for a, _ in spans), max(b for _, b in spans)

    def reframe_x(self) -> None:
        """Frame the x-axis on the data after its units changed (another x-axis choice), then follow it again.

        With clip-to-view and auto downsampling, pyqtgraph clips and downsamples new data to the CURRENT view
        and auto-ranges on what that leaves: data in new units (0-55 s of wall time) inside a view still
        spanning the old ones (0-110,000 tokens) falls within one pixel, is downsampled to nothing, and the
        range never moves again (the blank charts of issue 15). So the view is set from the data itself."""
        xs = [seg.x[np.isfinite(seg.x)] for seg in self._drawn.values() if seg.n]
        xs = [x for x in xs if x.size]
        vb = self.plot.getViewBox()
        if xs:
            lo, hi = min(float(x.min()) for x in xs), max(float(x.max()) for x in xs)
            if hi <= lo:
                lo, hi = lo - 0.5, hi + 0.5
            vb.setXRange(lo, hi)
        vb.enableAutoRange(x=True)

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
            if self.log_y:
                self.update_log_note()
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
        line = self.curve((run_key, attempt, "smooth"), name=name, color=color, width=1)
        # The faint raw line is created only once it is shown: a comparison (smoothed lines only) or an unsmoothed
        # metric never shows it, and each pyqtgraph item costs ~1 ms of the UI thread to create (10 runs x 4
        # charts of them held the UI thread ~100 ms when a comparison opened).
        raw_key = (run_key, attempt, "raw")
        shown = curve.smoothing > 0 and self.show_raw
        raw = self._curves.get(raw_key)
        if raw is None and shown:
            raw = self.curve(raw_key, name=None, color=color, width=1, alpha=70)
            raw.stackBefore(line)  # under the smoothed line, as when both are created together
        if raw is not None:
            if shown:  # a hidden curve's setData would still cost bounds and downsampling per update
                self._set_curve(raw, raw_key, seg.x, seg.y)
            raw.setVisible(shown)
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
            self.plot.getViewBox().setLimits(minYRange=wanted or None,
                                             yMin=-NO_LIMIT if clamp[0] is None else clamp[0],
                                             yMax=NO_LIMIT if clamp[1] is None else clamp[1])


LABEL_SLOTS = ((0.02, "below"), (0.02, "above"), (0.98, "below"), (0.98, "above"))  # (along the line, side)
LABEL_HEIGHT_PX = 17  # a reference label's height, what two labels on the same side must keep apart


class PassAtOneChart(ChartWidget):
    """pass@1 per checkpoint for all / clean / contaminated items, each point with its 95% interval as an
    error bar, against the chosen x-axis; with published reference lines whose labels never print over each
    other. y stays 0-100 %: a pass@1 is read against the whole scale (and a log axis would only distort it,
    so this chart has no log switch)."""

    def __init__(self, benchmark: str = "humaneval", parent: QWidget | None = None):
        super().__init__(f"{benchmark} pass@1", "pass@1 (%)", parent=parent, downsample=False, log_toggle=False)
        self.benchmark = benchmark
        self.plot.setYRange(0, 100, padding=0.02)
        self.references: dict[str, Reference] = {}
        self._measured: dict[str, tuple[pg.ScatterPlotItem, pg.TextItem]] = {}
        self._errors: dict[tuple, pg.ErrorBarItem] = {}
        # per curve: (steps, x, pass@1 %, low %, high %, tasks) of the points drawn
        self._points: dict[tuple, tuple[np.ndarray, ...]] = {}
        self._unplaced: dict[tuple, int] = {}  # checkpoints the x-axis choice cannot place, per curve
        self.x_is_step = True
        for ref in sorted(references_for(benchmark), key=lambda r: r.pass_at_1):
            self.references[ref.model] = ref
            if ref.model in DEFAULT_SHOWN:  # a hidden line is created once it is first shown (~1 ms of UI each)
                self._reference_line(ref.model)
        vb = self.plot.getViewBox()
        vb.sigResized.connect(lambda _vb: self._layout_reference_labels())
        vb.sigYRangeChanged.connect(lambda _vb, _r: self._layout_reference_labels())
        self._layout_reference_labels()
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

    def _reference_line(self, model: str) -> pg.InfiniteLine:
        ref = self.references[model]
        return self.hline(("ref", model), ref.pass_at_1, f"{model} {ref.pass_at_1:g}", "#888888")

    def _reference_shown(self, model: str) -> bool:
        line = self._lines.get(("ref", model))
        return line is not None and line.isVisible()

    def set_reference_visible(self, model: str, visible: bool) -> None:
        if visible:
            self._reference_line(model)
        elif ("ref", model) in self._lines:
            self._lines[("ref", model)].setVisible(False)
        self._layout_reference_labels()

    def _layout_reference_labels(self) -> None:
        """Give each shown reference label a slot (left or right end of its line, above or below it) so that
        labels of close values (GPT-4 67.0, Phind-CodeLlama-34B-v1 67.6) do not overlap: in value order, each
        takes the first slot whose band (the label's height, in % at the chart's current scale) is free."""
        vb = self.plot.getViewBox()
        y_lo, y_hi = vb.viewRange()[1]
        height_px = max(vb.height(), 1.0)
        band = LABEL_HEIGHT_PX * (y_hi - y_lo) / height_px
        taken: list[tuple[float, str, float, float]] = []  # (position, side, low, high) of placed labels
        shown = sorted((ref for ref in self.references.values() if self._reference_shown(ref.model)),
                       key=lambda r: r.pass_at_1)
        for ref in shown:
            v = ref.pass_at_1

            def clashes(slot: tuple[float, str], v: float = v) -> int:
                lo, hi = (v - band, v) if slot[1] == "below" else (v, v + band)
                return sum(1 for p, side, a, b in taken if p == slot[0] and a < hi and lo < b)

            slot = min(LABEL_SLOTS, key=lambda sl: (clashes(sl) > 0, clashes(sl), LABEL_SLOTS.index(sl)))
            taken.append((slot[0], slot[1], *((v - band, v) if slot[1] == "below" else (v, v + band))))
            label = self._lines[("ref", ref.model)].label
            anchor = (0.0 if slot[0] < 0.5 else 1.0, 0.0 if slot[1] == "below" else 1.0)
            label.anchors = [anchor, anchor]
            label.setPosition(slot[0])

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
        return [m for m in self.references if self._reference_shown(m)]

    def set_subset(self, run_key: str, label: str, subset: str, steps: np.ndarray, values: np.ndarray,
                   color: str | None = None, *, low: np.ndarray | None = None, high: np.ndarray | None = None,
                   n_tasks: np.ndarray | None = None, x: np.ndarray | None = None) -> tuple:
        """One curve of pass@1 (%) per checkpoint step, drawn at `x` (the steps on the chosen x-axis, NaN where
        it cannot place one: those are left out and counted in the note), with its 95% interval [low, high]
        as error bars."""
        key = (run_key, subset)
        steps = np.asarray(steps, dtype=float)
        values = np.asarray(values, dtype=float)
        x = steps if x is None else np.asarray(x, dtype=float)
        nan = np.full(steps.shape, np.nan)
        low = nan if low is None else np.asarray(low, dtype=float)
        high = nan if high is None else np.asarray(high, dtype=float)
        n_tasks = nan if n_tasks is None else np.asarray(n_tasks, dtype=float)
        placed = np.isfinite(x)
        self._unplaced[key] = int(np.count_nonzero(~placed))
        pts = tuple(a[placed] for a in (steps, x, values, low, high, n_tasks))
        self._points[key] = pts
        style = {"all": Qt.PenStyle.SolidLine, "clean": Qt.PenStyle.DashLine, "contaminated": Qt.PenStyle.DotLine}[subset]
        color = color or SUBSET_COLORS[subset]
        item = self.curve(key, name=f"{label} {subset}" if label else subset, color=color, width=2, style=style,
                          symbol="o")
        item.setData(pts[1], pts[2])
        bars = self._errors.get(key)
        if bars is None:
            bars = self._errors[key] = pg.ErrorBarItem(pen=pg.mkPen(color, width=1.5))
            self.plot.addItem(bars)
        px, pv, plo, phi = pts[1], pts[2], pts[3], pts[4]
        span = float(px.max() - px.min()) if px.size > 1 else (abs(float(px[0])) if px.size else 1.0) or 1.0
        bars.setData(x=px, y=pv, top=np.nan_to_num(phi - pv), bottom=np.nan_to_num(pv - plo), beam=0.012 * span)
        self._frame_x()
        self._update_note()
        if self._measured:  # keep the measured markers at the right end of the curves
            self.set_measured(list(self.measured().items()))
        return key

    def remove_subsets(self, keep: Iterable[tuple]) -> None:
        """Drop the curves (and their error bars) not in `keep` (a run hidden from a comparison)."""
        keep = set(keep)
        for key in [k for k in self._points if k not in keep]:
            self._points.pop(key)
            self._unplaced.pop(key, None)
            bars = self._errors.pop(key, None)
            if bars is not None:
                self.plot.removeItem(bars)
        self.remove_curves([k for k in self._curves if k in keep])
        self._update_note()

    def set_x_axis(self, label: str, is_step: bool) -> None:
        """The x-axis' label; the caller then sets every curve again at the new x."""
        self.set_x_label(label)
        self.x_is_step = is_step

    def intervals(self, key: tuple) -> list[tuple[float, float, float]]:
        """(pass@1, low, high) in % of the points of one curve, as drawn."""
        _s, _x, v, lo, hi, _n = self._points[key]
        return list(zip(v.tolist(), lo.tolist(), hi.tolist(), strict=True))

    def _frame_x(self) -> None:
        """Auto-range x, except around a single checkpoint (or several at one x), which pyqtgraph would frame
        as +-0.4 around it (19.6-20.4): from 0 to past it, as a run starts at 0."""
        xs = np.concatenate([p[1] for p in self._points.values()]) if self._points else np.empty(0)
        xs = xs[np.isfinite(xs)]
        vb = self.plot.getViewBox()
        if xs.size and xs.min() == xs.max():
            x0 = float(xs[0])
            lo, hi = (0.0, 1.1 * x0) if x0 > 0 else (x0 - 1.0, x0 + 1.0)
            vb.setXRange(lo, hi, padding=0.02)
        else:
            vb.enableAutoRange(x=True)

    def _update_note(self) -> None:
        n = sum(self._unplaced.values())
        self.log_note.setText(f"{n} checkpoint{'s' if n != 1 else ''} not placed: no metric rows around "
                              "their steps to read this x-axis from" if n else "")

    def hover_rows(self, x: float, reach: float) -> list[tuple[str, str, str, float]]:
        """Each curve's pass@1 at the checkpoint nearest to x, with its 95% interval (and step, when the x-axis
        is not the step)."""
        rows = []
        for key, (steps, px, v, lo, hi, n) in self._points.items():
            item = self._curves.get(key)
            if item is None or not item.isVisible():
                continue
            order = np.argsort(px, kind="stable")
            i = nearest_index(px[order], x, max(reach, 0.0))
            if i is None:
                continue
            j = int(order[i])
            text = f"{v[j]:.1f}%"
            if np.isfinite(lo[j]) and np.isfinite(hi[j]):
                text += f" (95% CI {lo[j]:.1f}–{hi[j]:.1f}" + (f", {int(n[j])} tasks)" if n[j] > 0 else ")")
            if not self.x_is_step:
                text += f" · step {int(steps[j])}"
            rows.append((item.name() or key[1], item.opts["pen"].color().name(), text, float(px[j])))
        return rows

    def set_unconfined(self, subset: str, steps: np.ndarray, values: np.ndarray, x: np.ndarray | None = None) -> None:
        """Mark the pass@1 points of `subset` that came from an unconfined evaluation (none: clear); drawn at
        `x` (the steps on the chosen x-axis), the badge names their steps."""
        scatter = self._unconfined_items.get(subset)
        if scatter is None:
            scatter = pg.ScatterPlotItem(symbol="o", size=15, pen=pg.mkPen(UNCONFINED_COLOR, width=2.5),
                                         brush=None)
            scatter.setZValue(10)
            self.plot.addItem(scatter)
            self._unconfined_items[subset] = scatter
        x = np.asarray(steps, dtype=float) if x is None else np.asarray(x, dtype=float)
        placed = np.isfinite(x)
        scatter.setData(x[placed], np.asarray(values, dtype=float)[placed])
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
