"""The Runs page keeps runs in order: unique names, rename, tags, notes, archive, delete (asked first), and the
config fields that differ between the listed runs as sortable, filterable columns. Real store, real widgets."""

from __future__ import annotations

import pytest
from PySide6.QtCore import Qt
from PySide6.QtWidgets import QApplication, QDialogButtonBox, QMessageBox

from core.config import resolved_dict
from core.presets import load_preset
from core.records import RunPaths, eval_record


def _add(store, run_id: str, name: str, status: str = "finished", lr: float = 2e-4, pass1: float | None = None):
    config = load_preset("tiny-demo")
    data = resolved_dict(config)
    data["training"]["learning_rate"] = lr
    store.create_run(run_id, name, config.to_yaml(), data, cluster="local", backend="local", run_dir=f"/tmp/{run_id}",
                     status=status)
    if pass1 is not None:
        rec = eval_record(step=10, attempt=1, checkpoint="c", benchmark="humaneval", subset="all", n_tasks=164,
                          samples_per_task=1, temperature=0.0, pass_at={1: pass1})
        store.ingest(run_id, RunPaths.EVALS, [rec], offset=10, line_no=1)


@pytest.fixture
def window(main_window, qtbot, store):
    _add(store, "20260101-100000-1a2b3c", "Tiny demo (CPU)", lr=2e-4, pass1=0.5)
    _add(store, "20260101-110000-4d5e6f", "Tiny demo (CPU)", lr=1e-3)
    _add(store, "20260101-120000-777777", "phind", status="running", lr=3e-5)
    page = main_window.runs_page
    qtbot.waitUntil(lambda: not page.is_refreshing, timeout=5000)
    with qtbot.waitSignal(page.refreshed, timeout=5000):
        page.refresh()
    return main_window


def _cell(page, run_id: str, col: int) -> str:
    for row in range(page.proxy.rowCount()):
        idx = page.proxy.index(row, col)
        if page.model.rows[page.proxy.mapToSource(idx).row()].run_id == run_id:
            return page.proxy.data(idx)
    raise LookupError(f"{run_id} is not listed")


def _listed(page) -> list[str]:
    return sorted(page.model.rows[page.proxy.mapToSource(page.proxy.index(r, 0)).row()].run_id
                  for r in range(page.proxy.rowCount()))


def _ok(dialog):
    return dialog.findChild(QDialogButtonBox).button(QDialogButtonBox.StandardButton.Ok)


def test_same_named_runs_show_their_id_suffix_in_the_table_and_in_tab_titles(window, qtbot, store):
    page = window.runs_page
    assert _cell(page, "20260101-100000-1a2b3c", 0) == "Tiny demo (CPU) · 1a2b3c"
    assert _cell(page, "20260101-110000-4d5e6f", 0) == "Tiny demo (CPU) · 4d5e6f"
    assert _cell(page, "20260101-120000-777777", 0) == "phind"
    window.open_run("20260101-110000-4d5e6f")
    assert window.tabs.tabText(window.tabs.currentIndex()) == "Tiny demo (CPU) · 4d5e6f"
    store.update_run("20260101-100000-1a2b3c", name="renamed by the CLI")  # another process renames its twin
    with qtbot.waitSignal(page.refreshed, timeout=5000):
        page.refresh()
    assert window.tabs.tabText(window.tabs.currentIndex()) == "Tiny demo (CPU)"  # no twin left: no suffix
    assert _cell(page, "20260101-100000-1a2b3c", 6).startswith("50.0% ± 7.6")  # Wilson half-width on 164 tasks
    assert _cell(page, "20260101-100000-1a2b3c", 0) == "renamed by the CLI"


def test_rename_checks_the_name_then_renames_in_the_store_table_and_tab(window, qtbot, store):
    page = window.runs_page
    window.open_run("20260101-100000-1a2b3c")
    page.select_runs(["20260101-100000-1a2b3c"])
    dialog = page.rename_selected()
    assert dialog is page.dialog and dialog.text() == "Tiny demo (CPU)"
    dialog.set_text("bad\x1bname")
    qtbot.mouseClick(_ok(dialog), Qt.MouseButton.LeftButton)
    assert dialog.isVisible() and "U+001B" in dialog.error.text()  # refused, the dialog stays
    dialog.set_text("  baseline lr 2e-4 ")
    with qtbot.waitSignal(page.runs_edited, timeout=5000), qtbot.waitSignal(page.refreshed, timeout=5000):
        qtbot.mouseClick(_ok(dialog), Qt.MouseButton.LeftButton)
    assert store.get_run("20260101-100000-1a2b3c").name == "baseline lr 2e-4"
    assert _cell(page, "20260101-100000-1a2b3c", 0) == "baseline lr 2e-4"
    assert _cell(page, "20260101-110000-4d5e6f", 0) == "Tiny demo (CPU)"  # no twin left: the suffix goes
    tab = window.tabs.indexOf(window.run_tabs["20260101-100000-1a2b3c"])
    assert window.tabs.tabText(tab) == "baseline lr 2e-4"


def test_tags_and_notes_are_edited_shown_and_filtered_on(window, qtbot, store):
    page = window.runs_page
    page.select_runs(["20260101-110000-4d5e6f"])
    dialog = page.edit_tags_selected()
    dialog.set_text("sweep, lr-1e-3 sweep")
    with qtbot.waitSignal(page.refreshed, timeout=5000):
        qtbot.mouseClick(_ok(dialog), Qt.MouseButton.LeftButton)
    assert store.get_run("20260101-110000-4d5e6f").tags == ("sweep", "lr-1e-3")
    assert _cell(page, "20260101-110000-4d5e6f", 7) == "sweep, lr-1e-3"

    page.select_runs(["20260101-110000-4d5e6f"])
    dialog = page.edit_notes_selected()
    dialog.set_text("loss spikes at step 40\nlr too high?")
    with qtbot.waitSignal(page.refreshed, timeout=5000):
        qtbot.mouseClick(_ok(dialog), Qt.MouseButton.LeftButton)
    assert store.get_run("20260101-110000-4d5e6f").notes == "loss spikes at step 40\nlr too high?"
    assert _cell(page, "20260101-110000-4d5e6f", 8) == "loss spikes at step 40"
    row = next(r for r in range(page.proxy.rowCount())
               if page.model.rows[page.proxy.mapToSource(page.proxy.index(r, 0)).row()].run_id.endswith("4d5e6f"))
    assert "lr too high?" in page.proxy.data(page.proxy.index(row, 0), Qt.ItemDataRole.ToolTipRole)

    qtbot.keyClicks(page.filter_edit, "tag:swe")
    assert _listed(page) == ["20260101-110000-4d5e6f"]
    page.filter_edit.setText("spikes")
    assert _listed(page) == ["20260101-110000-4d5e6f"]
    page.filter_edit.setText("tag:nope")
    assert _listed(page) == []


def test_archive_hides_runs_until_show_archived_and_unarchive_brings_them_back(window, qtbot, store):
    page = window.runs_page
    page.select_runs(["20260101-100000-1a2b3c", "20260101-110000-4d5e6f"])
    assert page.archive_action.text() == "Archive"
    with qtbot.waitSignal(page.refreshed, timeout=5000):
        page.archive_action.trigger()
    assert store.get_run("20260101-100000-1a2b3c").archived and store.get_run("20260101-110000-4d5e6f").archived
    assert _listed(page) == ["20260101-120000-777777"]
    assert "2 archived hidden" in page.status_label.text()
    page.archived_check.setChecked(True)
    assert len(_listed(page)) == 3
    page.select_runs(["20260101-100000-1a2b3c"])
    assert page.archive_action.text() == "Unarchive"
    with qtbot.waitSignal(page.refreshed, timeout=5000):
        page.archive_action.trigger()
    page.archived_check.setChecked(False)
    assert _listed(page) == ["20260101-100000-1a2b3c", "20260101-120000-777777"]


def test_delete_asks_first_refuses_running_runs_and_closes_the_deleted_runs_tab(window, qtbot, store):
    page = window.runs_page
    window.open_run("20260101-110000-4d5e6f")
    page.select_runs(["20260101-110000-4d5e6f"])
    box = page.delete_selected()
    assert "Delete 1 run" in box.text() and "Tiny demo (CPU) · 4d5e6f" in box.informativeText()
    qtbot.mouseClick(box.button(QMessageBox.StandardButton.Cancel), Qt.MouseButton.LeftButton)
    assert store.get_run("20260101-110000-4d5e6f") is not None  # cancelled: nothing deleted

    page.select_runs(["20260101-120000-777777"])
    box = page.delete_selected()
    assert "still going" in box.text() and box.button(QMessageBox.StandardButton.Ok) is not None
    box.accept()
    assert store.get_run("20260101-120000-777777") is not None

    window.tabs.setCurrentWidget(page)
    window.show()
    window.activateWindow()
    qtbot.waitUntil(lambda: QApplication.activeWindow() is window)  # shortcuts reach only the active window
    page.filter_edit.setFocus()
    qtbot.keyClick(page.filter_edit, Qt.Key.Key_Delete)  # Delete in the filter box edits the filter only
    assert page.dialog is None
    page.select_runs(["20260101-110000-4d5e6f"])
    page.table.setFocus()
    qtbot.keyClick(page.table, Qt.Key.Key_Delete)  # the Delete key on the table asks
    box = page.dialog
    assert isinstance(box, QMessageBox) and "Delete 1 run" in box.text()
    delete = next(b for b in box.buttons() if b.text() == "Delete")
    with qtbot.waitSignal(page.runs_edited, timeout=5000), qtbot.waitSignal(page.refreshed, timeout=5000):
        qtbot.mouseClick(delete, Qt.MouseButton.LeftButton)
    assert store.get_run("20260101-110000-4d5e6f") is None
    assert "20260101-110000-4d5e6f" not in _listed(page)
    assert "20260101-110000-4d5e6f" not in window.run_tabs  # its tab closed
    assert _cell(page, "20260101-100000-1a2b3c", 0) == "Tiny demo (CPU)"


def test_config_fields_that_differ_become_sortable_filterable_columns(window, qtbot):
    page = window.runs_page
    headers = [page.model.headerData(c, Qt.Orientation.Horizontal) for c in range(page.model.columnCount())]
    assert "learning_rate" in headers and "seed" not in headers  # only what differs
    col = headers.index("learning_rate")
    assert page.model.headerData(col, Qt.Orientation.Horizontal, Qt.ItemDataRole.ToolTipRole).startswith(
        "config: training.learning_rate")
    assert _cell(page, "20260101-110000-4d5e6f", col) == "0.001"
    page.table.sortByColumn(col, Qt.SortOrder.AscendingOrder)
    order = [page.proxy.data(page.proxy.index(r, col)) for r in range(page.proxy.rowCount())]
    assert order == ["3e-05", "0.0002", "0.001"]  # by value, not as text
    page.filter_edit.setText("learning_rate=0.001")
    assert _listed(page) == ["20260101-110000-4d5e6f"]
    page.filter_edit.setText("lr=3e")  # "lr" names no field: nothing matches
    assert _listed(page) == []
    page.filter_edit.setText("learning_rate=3e")
    assert _listed(page) == ["20260101-120000-777777"]
