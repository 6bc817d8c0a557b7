"""The compare view, offscreen, on a real store: config diff, metrics table, curves, bars, exports."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from PySide6.QtCore import Qt

from app.gui.compare_view import CompareView
from core.configdiff import flatten
from tests.app.run_feed import StoreFeeder, create_run, evals_at, metric

WAIT_MS = 10_000


def base_config() -> dict:
    return {"model": {"name": "codellama/CodeLlama-7b-hf", "max_seq_len": 4096},
            "training": {"learning_rate": 2e-5, "epochs": 3, "warmup_steps": 10, "seed": 1},
            "deepspeed": {"zero_stage": 3, "offload_optimizer": False},
            "cluster": {"hosts": ["node1", "node2"]}}


def open_compare(qtbot, store, run_ids) -> CompareView:
    view = CompareView(store, run_ids)
    qtbot.addWidget(view)
    view.resize(1200, 800)
    view.show()
    qtbot.waitUntil(lambda: view.is_drawn(), timeout=WAIT_MS)
    return view


def test_differences_only_shows_exactly_the_differing_fields(qtbot, store):
    a = base_config()
    b = base_config()
    b["training"]["learning_rate"] = 1e-5
    b["cluster"]["hosts"] = ["node1", "node3"]
    c = base_config()
    c["deepspeed"]["offload_optimizer"] = True
    c["evaluation"] = {"n_samples": 10}  # a section only one run has
    for run_id, cfg in (("a", a), ("b", b), ("c", c)):
        create_run(store, run_id, config=cfg, status="finished")
    view = open_compare(qtbot, store, ["a", "b", "c"])
    assert view.diff_only_check.isChecked()
    assert view.diff_paths() == ["cluster.hosts", "deepspeed.offload_optimizer", "evaluation.n_samples",
                                 "training.learning_rate"]
    table = view.diff_table
    row = view.diff_paths().index("training.learning_rate")
    assert [table.item(row, j).text() for j in (1, 2, 3)] == ["2e-05", "1e-05", "2e-05"]
    row = view.diff_paths().index("evaluation.n_samples")
    assert [table.item(row, j).text() for j in (1, 2, 3)] == ["", "", "10"]
    assert view.diff_count_label.text() == "4 differing settings"
    view.diff_only_check.setChecked(False)
    every = sorted(set(flatten(a)) | set(flatten(b)) | set(flatten(c)))
    assert view.diff_paths() == every
    view.diff_only_check.setChecked(True)
    assert len(view.diff_paths()) == 4


def test_metrics_table_matches_the_summary_computed_from_the_records(qtbot, store):
    feeds = {}
    for run_id in ("a", "b"):
        create_run(store, run_id, name=f"run {run_id}", status="finished")
        feeds[run_id] = StoreFeeder(store, run_id)
    feeds["a"].metrics(range(1, 61))
    feeds["a"].metrics(range(41, 91), attempt=2)  # resumed: step 90 of attempt 2 is the last
    feeds["a"].evals(30, {"all": 0.25, "clean": 0.2, "contaminated": 0.5})
    feeds["a"].evals(60, {"all": 0.375, "clean": 0.35, "contaminated": 0.45})
    feeds["b"].metrics(range(1, 41))
    feeds["b"].evals(40, {"all": 0.1})
    view = open_compare(qtbot, store, ["a", "b"])

    # independently, from the records written
    records_a = [metric(s) for s in range(1, 61)] + [metric(s, 2) for s in range(41, 91)]
    expected = {
        "a": {"Steps": 90, "Final loss": metric(90, 2)["loss"], "Tokens": metric(90, 2)["tokens"],
              "Wall time": max(r["t"] for r in records_a) - min(r["t"] for r in records_a),
              "humaneval all\npass@1 (%)": 0.375, "humaneval clean\npass@1 (%)": 0.35,
              "humaneval contaminated\npass@1 (%)": 0.5},
        "b": {"Steps": 40, "Final loss": metric(40)["loss"], "Tokens": metric(40)["tokens"],
              "Wall time": metric(40)["t"] - metric(1)["t"], "humaneval all\npass@1 (%)": 0.1,
              "humaneval clean\npass@1 (%)": None, "humaneval contaminated\npass@1 (%)": None},
    }
    table = view.metrics_table
    headers = [table.horizontalHeaderItem(j).text() for j in range(table.columnCount())]
    assert headers[:6] == ["Run", "Status", "Steps", "Final loss", "Tokens", "Wall time"]
    for i, run_id in enumerate(("a", "b")):
        summary = store.summary(run_id)
        for header, want in expected[run_id].items():
            got = table.item(i, headers.index(header)).data(Qt.ItemDataRole.UserRole)
            assert got == pytest.approx(want), (run_id, header)
        assert table.item(i, headers.index("Final loss")).text() == f"{summary['final_loss']:.4f}"
        assert table.item(i, headers.index("Steps")).data(Qt.ItemDataRole.UserRole) == summary["steps"]
    assert table.item(0, headers.index("humaneval all\npass@1 (%)")).text() == "37.5"
    assert table.item(1, headers.index("humaneval clean\npass@1 (%)")).text() == "—"
    assert sorted(view.bar_values()) == sorted([
        ("a", "humaneval", "all", 37.5), ("a", "humaneval", "clean", 35.0), ("a", "humaneval", "contaminated", 50.0),
        ("b", "humaneval", "all", 10.0)])


def test_curves_overlay_every_run_smoothed_only_with_one_colour_each(qtbot, store):
    run_ids = [f"r{i:02d}" for i in range(12)]  # more runs than the palette has colours: no cap
    for i, run_id in enumerate(run_ids):
        create_run(store, run_id, name=f"run {i}", status="finished")
        StoreFeeder(store, run_id).metrics(range(1, 21 + i))
    view = open_compare(qtbot, store, run_ids)
    chart = view.curve_chart
    smooth = {k[0]: chart._curves[k] for k in chart.curve_keys() if k[2] == "smooth"}
    assert sorted(smooth) == run_ids
    assert all(not chart._curves[k].isVisible() for k in chart.curve_keys() if k[2] == "raw")
    colors = {item.opts["pen"].color().name() for item in smooth.values()}
    assert len(colors) == 12
    assert len(chart.legend.items) == 12
    np.testing.assert_array_equal(smooth["r03"].xData, np.arange(1, 24))
    # hide one run from the legend list: its curve goes
    item = view.legend_list.item(3)
    item.setCheckState(Qt.CheckState.Unchecked)
    assert "r03" not in {k[0] for k in chart.curve_keys()}
    lr = view.charts["lr"]._curves[("r00", 1, "smooth")]
    np.testing.assert_allclose(lr.yData, [metric(s)["lr"] for s in range(1, 21)])  # lr is never smoothed


def test_a_compared_run_that_streams_updates_its_curve_table_bars_and_status_live(qtbot, store):
    create_run(store, "a", status="running")
    feed = StoreFeeder(store, "a")
    feed.metrics(range(1, 11))
    view = open_compare(qtbot, store, ["a"])
    assert view.data.runs[0].summary["steps"] == 10
    smooth = view.curve_chart._curves[("a", 1, "smooth")]
    feed.metrics(range(11, 31))
    feed.ingest("evals.jsonl", evals_at(30, {"all": 0.5}))
    # the table's numbers come from the store's summary, the bars from the streamed evaluations: wait for both
    qtbot.waitUntil(lambda: view.data.runs[0].summary["steps"] == 30 and bool(view.bar_values()), timeout=WAIT_MS)
    assert view.bar_values() == [("a", "humaneval", "all", 50.0)]
    assert view.curve_chart._curves[("a", 1, "smooth")] is smooth  # the same item, given the new points
    np.testing.assert_array_equal(smooth.xData, np.arange(1, 31))
    store.update_run("a", status="finished")
    qtbot.waitUntil(lambda: view.data.runs[0].status == "finished", timeout=WAIT_MS)
    assert "finished" in view.legend_list.item(0).text()
    view.close()
    assert not view.watcher.running


def test_exports_write_the_bars_and_curves_data(qtbot, store, tmp_path):
    for run_id, value in (("a", 0.25), ("b", 0.5)):
        create_run(store, run_id, name=f"run {run_id}", status="finished")
        feed = StoreFeeder(store, run_id)
        feed.metrics(range(1, 11))
        feed.evals(10, {"all": value})
    view = open_compare(qtbot, store, ["a", "b"])
    rows = list(csv.DictReader(view.export_bars_csv(tmp_path / "bars.csv").open()))
    assert [(r["run"], r["benchmark"], r["subset"], float(r["pass@1"])) for r in rows] == [
        ("run a", "humaneval", "all", 25.0), ("run b", "humaneval", "all", 50.0)]
    curves = list(csv.DictReader(view.curve_chart.export_csv(tmp_path / "curves.csv").open()))
    assert {r["series"] for r in curves} == {"run a", "run b"}
    assert len(curves) == 20
    for fmt in ("png", "svg"):
        out = view.bar_chart.export_image(tmp_path / f"bars.{fmt}")
        assert out.stat().st_size > 1000


def test_best_pass_at_1_from_an_unconfined_evaluation_is_badged_in_the_table(qtbot, store):
    from core.records import RunPaths, event_record

    for run_id in ("a", "b"):
        create_run(store, run_id, name=f"run {run_id}", status="finished")
    fa, fb = StoreFeeder(store, "a"), StoreFeeder(store, "b")
    fa.evals(30, {"all": 0.25, "clean": 0.4})
    fa.evals(60, {"all": 0.375, "clean": 0.35})
    # step 60 ran unconfined: its all-subset 37.5 is the best (badged); clean's best (40.0, step 30) is not
    fa.ingest(RunPaths.EVAL_EVENTS, [event_record("eval_started", 1, {"step": 60, "sandbox": {"mode": "unconfined"}}),
                                     event_record("eval_started", 1, {"step": 30, "sandbox": {"mode": "bwrap"}})])
    fb.evals(40, {"all": 0.1, "clean": 0.1})
    view = open_compare(qtbot, store, ["a", "b"])
    table = view.metrics_table
    headers = [table.horizontalHeaderItem(j).text() for j in range(table.columnCount())]
    cell_all = table.item(0, headers.index("humaneval all\npass@1 (%)"))
    assert cell_all.text() == "37.5 ⚠ unconfined" and "unconfined" in cell_all.toolTip()
    assert cell_all.background().color().name() == "#cf222e"
    assert cell_all.data(Qt.ItemDataRole.UserRole) == pytest.approx(0.375)  # the number itself is unchanged
    assert table.item(0, headers.index("humaneval clean\npass@1 (%)")).text() == "40.0"
    assert table.item(1, headers.index("humaneval all\npass@1 (%)")).text() == "10.0"


def test_compare_is_a_grid_of_every_metric_and_pass_at_1_with_one_legend_of_unique_names(qtbot, store):
    from app.gui.run_view import METRICS
    from core.uncertainty import wilson_interval
    from tests.app.test_chart_hover_log import move_to

    ids = ("20261125-203000-1a2b3c", "20261125-213000-9f8e7d")
    for run_id, value in zip(ids, (0.3, 0.6), strict=True):
        create_run(store, run_id, name="Tiny demo (CPU)", status="finished")  # the same name twice
        feed = StoreFeeder(store, run_id)
        feed.metrics(range(1, 31))
        feed.evals(30, {"all": value, "clean": value})
    view = open_compare(qtbot, store, list(ids))
    qtbot.waitUntil(lambda: "humaneval" in view.pass_charts, timeout=WAIT_MS)
    shown = ["Tiny demo (CPU) · 1a2b3c", "Tiny demo (CPU) · 9f8e7d"]
    # one legend: the run list, with names that tell the runs apart; the charts' own legends are hidden
    assert [view.legend_list.item(i).text().splitlines()[0] for i in range(2)] == shown
    for field_name, _title, _y in METRICS:
        chart = view.charts[field_name]
        assert chart.isVisibleTo(view) and not chart.legend.isVisible()
        assert {chart._curves[(r, 1, "smooth")].name() for r in ids} == set(shown)
        np.testing.assert_allclose(chart._curves[(ids[1], 1, "smooth")].full_data[0], np.arange(1, 31))
    pass_chart = view.pass_charts["humaneval"]
    assert pass_chart.isVisibleTo(view) and not pass_chart.legend.isVisible()
    for run_id, solved in zip(ids, (3, 6), strict=True):
        lo, hi = wilson_interval(solved, 10)
        assert pass_chart.intervals((run_id, "all")) == [pytest.approx((10.0 * solved, 100 * lo, 100 * hi))]
    assert [view.metrics_table.item(i, 0).text() for i in range(2)] == shown

    # the hover over any chart lists every run at that x, by its unique name
    loss = view.charts["loss"]
    view.tabs.setCurrentIndex(0)
    qtbot.wait(50)
    loss.plot_widget.grab()
    move_to(qtbot, loss, 12.0)
    qtbot.waitUntil(lambda: loss.hover_text() != "", timeout=2000)
    lines = loss.hover_text().splitlines()
    assert lines[0].startswith("optimizer step ") and [ln.split(":")[0] for ln in lines[1:]] == shown

    # untick a run: it leaves every chart of the grid
    view.legend_list.item(0).setCheckState(Qt.CheckState.Unchecked)
    for chart in view.charts.values():
        assert ids[0] not in chart.run_keys()
    assert (ids[0], "all") not in pass_chart._points and (ids[1], "all") in pass_chart._points
    view.close()


def test_switching_the_compare_x_axis_redraws_and_frames_every_chart_of_the_grid(qtbot, store):
    from tests.app.test_chart_axes import drawn_on, expected_x

    for run_id in ("a", "b"):
        create_run(store, run_id, status="finished")
        feed = StoreFeeder(store, run_id)
        feed.metrics(range(1, 41))
        feed.evals(40, {"all": 0.5})
    view = open_compare(qtbot, store, ["a", "b"])
    qtbot.waitUntil(lambda: "humaneval" in view.pass_charts, timeout=WAIT_MS)
    for axis in ("tokens", "wall_time", "samples", "step", "wall_time", "tokens"):
        view.x_combo.setCurrentIndex(view.x_combo.findData(axis))
        want = expected_x(axis, np.arange(1, 41))
        for chart in view.charts.values():  # each chart reads the new axis from the store off the UI thread
            qtbot.waitUntil(lambda c=chart, w=want: drawn_on(c, ("b", 1, "smooth"), w), timeout=WAIT_MS)
            chart.plot_widget.grab()
            x_lo, x_hi = chart.plot.getViewBox().viewRange()[0]
            assert x_lo <= want[0] and want[-1] <= x_hi and x_hi - x_lo < 3 * (want[-1] - want[0]), (axis, chart)
            np.testing.assert_allclose(chart._curves[("b", 1, "smooth")].full_data[0], want)
        pass_item = view.pass_charts["humaneval"]._curves[("a", "all")]
        qtbot.waitUntil(lambda p=pass_item, w=want: p.xData is not None and len(p.xData) == 1
                        and np.allclose(p.xData, w[-1:]), timeout=WAIT_MS)
    view.close()


def test_hovering_the_pass_at_1_bars_lists_each_runs_bar_of_that_benchmark_and_subset(qtbot, store):
    from tests.app.test_chart_hover_log import move_to

    for run_id, values in (("a", {"all": 0.25, "clean": 0.3}), ("b", {"all": 0.5})):
        create_run(store, run_id, name=f"run {run_id}", status="finished")
        StoreFeeder(store, run_id).evals(10, values)
    view = open_compare(qtbot, store, ["a", "b"])
    view.tabs.setCurrentIndex(1)
    chart = view.bar_chart
    qtbot.waitExposed(chart)
    chart.plot_widget.grab()
    move_to(qtbot, chart, 0.1, 20.0)  # the first category: humaneval all
    qtbot.waitUntil(lambda: chart.hover_text() != "", timeout=2000)
    assert chart.hover_text().splitlines() == ["humaneval all", "run a: 25.0%", "run b: 50.0%"]
    move_to(qtbot, chart, 0.9, 20.0)
    qtbot.waitUntil(lambda: chart.hover_text().startswith("humaneval clean"), timeout=2000)
    assert chart.hover_text().splitlines() == ["humaneval clean", "run a: 30.0%"]
