"""The main window: pages, shortcuts, the Runs table from the store, restored window state, recent files,
About, and the demo workspace / first-run offer."""

from __future__ import annotations

from PySide6.QtCore import Qt, QThreadPool, QTimer
from PySide6.QtWidgets import QApplication, QMessageBox

from app.gui.main_window import PAGE_CLUSTERS, PAGE_CONTAMINATION, PAGE_NEW_RUN, PAGE_RUNS, MainWindow
from core.config import resolved_dict
from core.presets import load_preset
from core.records import RunPaths, eval_record, metric_record


def _add_run(store, run_id: str, name: str, status: str, losses: list[float], pass1: float | None = None) -> None:
    config = load_preset("tiny-demo")
    store.create_run(run_id, name, config.to_yaml(), resolved_dict(config), cluster="local", backend="local",
                     run_dir=f"/tmp/{run_id}", preset="tiny-demo", status=status)
    records = [metric_record(step=i + 1, attempt=1, epoch=0.1 * i, samples=4 * (i + 1), tokens=1000 * (i + 1), loss=loss,
                             lr=1e-3, grad_norm=1.0, tokens_per_s=500.0) for i, loss in enumerate(losses)]
    if records:
        store.ingest(run_id, RunPaths.METRICS, records, offset=100 * len(records), line_no=len(records))
    if pass1 is not None:
        rec = eval_record(step=len(losses), attempt=1, checkpoint="checkpoint-x", benchmark="humaneval", subset="all",
                          n_tasks=16, samples_per_task=1, temperature=0.0, pass_at={1: pass1})
        store.ingest(run_id, RunPaths.EVALS, [rec], offset=50, line_no=1)


def test_shortcuts_switch_pages_and_focus_the_filter(main_window, qtbot):
    w = main_window
    w.show()
    w.activateWindow()
    qtbot.waitUntil(lambda: QApplication.activeWindow() is w)  # shortcuts reach only the active window
    w.tabs.setCurrentIndex(PAGE_RUNS)
    qtbot.keyClick(w, Qt.Key.Key_N, Qt.KeyboardModifier.ControlModifier)
    assert w.tabs.currentIndex() == PAGE_NEW_RUN
    qtbot.keyClick(w, Qt.Key.Key_3, Qt.KeyboardModifier.AltModifier)
    assert w.tabs.currentIndex() == PAGE_CONTAMINATION
    qtbot.keyClick(w, Qt.Key.Key_F, Qt.KeyboardModifier.ControlModifier)
    assert QApplication.focusWidget() is w.contamination_page.filter_edit
    w.tabs.setCurrentIndex(PAGE_RUNS)
    qtbot.keyClick(w, Qt.Key.Key_F, Qt.KeyboardModifier.ControlModifier)
    assert QApplication.focusWidget() is w.runs_page.filter_edit


def test_runs_table_shows_store_runs_and_multi_select_opens_compare(main_window, qtbot, store):
    qtbot.waitUntil(lambda: not main_window.runs_page.is_refreshing, timeout=5000)
    _add_run(store, "r1", "lr 3e-3", "finished", [2.0, 1.5, 1.2], pass1=0.0625)
    _add_run(store, "r2", "lr 1e-3", "running", [2.1, 1.8])
    _add_run(store, "r3", "bad batch", "failed", [])
    store.update_run("r3", status_reason="launch failed: no such partition")
    page = main_window.runs_page
    with qtbot.waitSignal(page.refreshed, timeout=5000):
        page.refresh()
    rows = {r.run_id: r for r in page.model.rows}
    assert set(rows) == {"r1", "r2", "r3"}
    assert (rows["r1"].steps, rows["r1"].last_loss, rows["r1"].best_pass_at_1) == (3, 1.2, 0.0625)
    by_name = {page.model.data(page.model.index(i, 0)): i for i in range(3)}
    assert page.model.data(page.model.index(by_name["bad batch"], 2)) == "failed — launch failed: no such partition"
    # the best pass@1 with the half-width of its 95% interval (Wilson over the 16 tasks of _add_run)
    assert page.model.data(page.model.index(by_name["lr 3e-3"], 6)) == "6.2% ± 13.6  (humaneval)"
    assert page.model.data(page.model.index(by_name["lr 3e-3"], 5)) == "1.2000"

    page.table.selectAll()
    assert page.compare_button.isEnabled() and page.compare_button.text() == "Compare (3)"
    with qtbot.waitSignal(page.compare_requested) as blocker:
        qtbot.mouseClick(page.compare_button, Qt.MouseButton.LeftButton)
    assert sorted(blocker.args[0]) == ["r1", "r2", "r3"]
    assert main_window.tabs.count() == 5  # the compare view opened as a tab
    assert main_window.tabs.tabText(4) == "Compare (3)"

    qtbot.keyClicks(page.filter_edit, "failed")
    assert page.proxy.rowCount() == 1
    page.filter_edit.clear()
    page.select_runs(["r1"])
    qtbot.mouseClick(page.open_button, Qt.MouseButton.LeftButton)
    assert "r1" in main_window.run_tabs
    assert main_window.tabs.currentWidget() is main_window.run_tabs["r1"]
    assert main_window.tabs.tabText(main_window.tabs.currentIndex()) == "lr 3e-3"
    main_window.close_tab(main_window.tabs.currentIndex())
    assert "r1" not in main_window.run_tabs
    main_window.close_tab(PAGE_RUNS)  # fixed pages never close
    assert main_window.tabs.widget(PAGE_RUNS) is page


def test_runs_table_refreshes_when_the_stream_reports_changes(main_window, qtbot, store):
    page = main_window.runs_page
    main_window.tabs.setCurrentIndex(PAGE_RUNS)
    main_window.show()  # a hidden Runs page only notes that it is stale (tests/app/test_runs_page.py)
    qtbot.waitUntil(lambda: not page.is_refreshing, timeout=5000)
    assert page.model.rows == []
    _add_run(store, "late", "arrived later", "running", [3.0])
    with qtbot.waitSignal(page.refreshed, timeout=5000):
        main_window.events.updated.emit("late", RunPaths.METRICS, 1)
    assert [r.run_id for r in page.model.rows] == ["late"]


def test_window_geometry_page_and_splitters_are_restored(qtbot, store):
    first = MainWindow(store, offer_demo=False, stream=False)
    qtbot.addWidget(first)
    first.show()
    first.resize(first.minimumSizeHint().width() + 13, first.minimumSizeHint().height() + 7)
    size = (first.width(), first.height())
    assert size != (1360, 880)  # not the default size
    first.tabs.setCurrentIndex(PAGE_CLUSTERS)
    first.contamination_page.splitter.setSizes([300, 700])
    sizes = first.contamination_page.splitter.sizes()
    first.close()
    QThreadPool.globalInstance().waitForDone(10_000)

    second = MainWindow(store, offer_demo=False, stream=False)
    qtbot.addWidget(second)
    second.show()
    assert (second.width(), second.height()) == size
    assert second.tabs.currentIndex() == PAGE_CLUSTERS
    assert second.contamination_page.splitter.sizes() == sizes
    second.close()


def test_recent_files_menu_lists_opened_configs_across_sessions(qtbot, store, tmp_path):
    path = tmp_path / "phind.yaml"
    path.write_text(load_preset("phind-codellama-34b-v1").to_yaml())
    first = MainWindow(store, offer_demo=False, stream=False)
    qtbot.addWidget(first)
    first.open_config(str(path))
    assert first.config_page.config == load_preset("phind-codellama-34b-v1")
    first.close()
    second = MainWindow(store, offer_demo=False, stream=False)
    qtbot.addWidget(second)
    actions = second.recent_menu.actions()
    assert [a.text() for a in actions] == [str(path)]
    second.config_page.load_preset("tiny-demo")
    actions[0].trigger()
    assert second.config_page.config.preset == "phind-codellama-34b-v1"
    assert second.tabs.currentWidget() is second.config_page
    second.close()


def test_about_lists_versions_and_benchmark_licences(main_window):
    from core.evalsets import LICENCES

    text = main_window.about_text()
    for benchmark, licence in LICENCES.items():
        assert benchmark in text and licence in text
    assert "PySide6" in text and "Qt" in text and "Python" in text


def test_demo_workspace_points_every_page_at_the_demo_data(qtbot, store):
    window = MainWindow(store, demo_workspace=True, offer_demo=False, stream=False)
    qtbot.addWidget(window)
    qtbot.waitUntil(lambda: window.demo_dataset is not None, timeout=30_000)
    demo_path = str(window.demo_dataset.path)
    assert window.contamination_page.train_paths() == [demo_path]
    assert window.contamination_page.humaneval_check.isChecked()
    assert window.config_page.config is not None
    assert window.config_page.config.data.train_files == [demo_path]
    assert window.config_page.config.preset == "tiny-demo"
    assert window.config_page.profile_combo.currentText() == "local"
    window.close()


def test_first_run_offers_the_demo_once(qtbot, store):
    seen: list[str] = []

    def answer() -> None:
        box = QApplication.activeModalWidget()
        if not isinstance(box, QMessageBox):
            QTimer.singleShot(20, answer)
            return
        seen.append(box.text())
        next(b for b in box.buttons() if b.text() == "Open the demo").click()

    QTimer.singleShot(20, answer)
    window = MainWindow(store, offer_demo=True, stream=False)
    qtbot.addWidget(window)
    window.show()
    qtbot.waitUntil(lambda: window.demo_dataset is not None, timeout=30_000)
    assert seen and "Try the demo" in seen[0]
    assert window.tabs.currentWidget() is window.contamination_page
    window.close()

    again = MainWindow(store, offer_demo=True, stream=False)
    qtbot.addWidget(again)
    again.show()
    qtbot.wait(200)
    assert QApplication.activeModalWidget() is None  # not asked twice
    again.close()


def test_launch_shortcut_starts_the_run_on_the_local_profile_and_opens_its_view(main_window, qtbot, store):
    from remote.runs import cancel

    w = main_window
    w.show()
    w.activateWindow()
    qtbot.waitUntil(lambda: QApplication.activeWindow() is w)
    assert w.config_page.profile_combo.currentText() == "local"
    with qtbot.waitSignal(w.config_page.launched, timeout=120_000) as blocker:
        qtbot.keyClick(w, Qt.Key.Key_L, Qt.KeyboardModifier.ControlModifier)
        assert w.config_page.launch_button.text() == "Launching…"
    run_id = blocker.args[0]
    try:
        row = store.get_run(run_id)
        assert row is not None and row.cluster == "local" and row.job_id  # the process group is recorded
        assert row.status in ("pending", "running", "completing", "finished")
        assert w.tabs.currentWidget() is w.run_tabs[run_id]
        assert w.config_page.launch_button.text() == "Launch" and w.config_page.launch_button.isEnabled()
    finally:
        assert cancel(run_id, store).confirmed_gone


def test_status_bar_shows_cluster_connection_state_from_checks(main_window):
    from app.gui.clusters_page import CheckLine, CheckOutcome

    label = main_window.connection_label
    assert "none connected" in label.text()
    main_window.clusters_page.check_done.emit(CheckOutcome("gpu-a", (CheckLine("connection", True, "ok"),), True, "all present"))
    main_window.clusters_page.check_done.emit(CheckOutcome("gpu-b", (CheckLine("connection", False, "refused"),), False, "missing: connection"))
    assert "gpu-a" in label.text() and "gpu-b" in label.text()
    assert "gpu-a: connected — all present" in label.toolTip()
    assert "gpu-b: error — missing: connection" in label.toolTip()


def test_a_suspected_hang_is_shown_in_the_status_bar(main_window):
    from remote.stream import HangWarning

    warning = HangWarning("r1", silent_s=75.0, median_step_s=1.1, last_step=6, stdout_tail="last line\n")
    main_window.events.hang.emit(warning)  # (it raised a TypeError in the event loop: message is a method)
    assert main_window.statusBar().currentMessage() == warning.message().splitlines()[0]
    assert "suspected hang" in main_window.statusBar().currentMessage()


def test_run_names_with_control_characters_show_escaped_in_the_table_and_tab(main_window, qtbot, store):
    page = main_window.runs_page
    qtbot.waitUntil(lambda: not page.is_refreshing, timeout=5000)
    _add_run(store, "r1", "two\nlines\x1b[2J", "failed", [1.0])
    store.update_run("r1", status_reason="boom\x1b]0;x\x07")
    with qtbot.waitSignal(page.refreshed, timeout=5000):
        page.refresh()
    assert page.model.data(page.model.index(0, 0)) == "two\\nlines\\x1b[2J"
    assert page.model.data(page.model.index(0, 2)) == "failed — boom\\x1b]0;x\\x07"
    page.select_runs(["r1"])
    qtbot.mouseClick(page.open_button, Qt.MouseButton.LeftButton)
    assert main_window.tabs.tabText(main_window.tabs.currentIndex()) == "two\\nlines\\x1b[2J"
    view = main_window.run_tabs["r1"]
    qtbot.waitUntil(lambda: view.loaded, timeout=10_000)
    assert view.title_label.text() == "two\\nlines\\x1b[2J"
    assert view.title_label.textFormat() == Qt.TextFormat.PlainText



def test_quitting_with_an_edited_run_config_asks_first_and_cancel_keeps_the_window(main_window, qtbot):
    from tests.app.test_config_form import _answer_unsaved, _type_into

    main_window.show()
    page = main_window.config_page
    main_window.show_new_run()
    _type_into(qtbot, page, "name", "edited, not saved")
    assert page.is_modified()
    asked = _answer_unsaved(page, qtbot, "Cancel")
    assert not main_window.close()  # the close was refused
    assert asked and "not saved" in asked[0] and "quit" in asked[0]
    assert main_window.isVisible() and page.data["name"] == "edited, not saved"
    asked = _answer_unsaved(page, qtbot, "Discard")
    assert main_window.close()
    assert asked and not main_window.isVisible()
