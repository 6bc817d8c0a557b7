"""The main window: Runs, New run, Contamination and Clusters pages, one tab per opened run (and compare),
a status bar with the cluster connections, shortcuts, recent files, and the About box."""

from __future__ import annotations

import importlib.metadata
import logging
import platform
from typing import Any

from PySide6.QtCore import QByteArray, QObject, QSettings, QTimer, Signal
from PySide6.QtGui import QAction, QCloseEvent, QKeySequence
from PySide6.QtWidgets import (
    QFileDialog,
    QLabel,
    QMainWindow,
    QMessageBox,
    QTabBar,
    QTabWidget,
    QWidget,
)

from app.gui.theme import app_icon
from app.gui.workers import WorkContext, Worker

log = logging.getLogger(__name__)

MAX_RECENT = 10
STATUS_REFRESH_MS = 2000
RUN_TITLES_REFRESH_MS = 15_000  # renames from the CLI reach open run tabs while the Runs page is hidden
FIXED_PAGES = 4  # Runs, New run, Contamination, Clusters; run and compare tabs follow
PAGE_RUNS, PAGE_NEW_RUN, PAGE_CONTAMINATION, PAGE_CLUSTERS = range(FIXED_PAGES)


def gui_settings() -> QSettings:
    """Window geometry, state and recent paths (an INI file in TuneDeck's config dir, per TUNEDECK_HOME)."""
    from core.paths import config_dir

    return QSettings(str(config_dir() / "gui.ini"), QSettings.Format.IniFormat)


class StoreEvents(QObject):
    """Re-emits the StreamManager's background-thread callbacks as Qt signals (queued to the UI thread)."""

    updated = Signal(str, str, int)  # run id, file name, new records
    status_changed = Signal(object)  # RunRow
    hang = Signal(object)  # HangWarning


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


class MainWindow(QMainWindow):
    def __init__(self, store: Any = None, *, demo_workspace: bool = False, offer_demo: bool = True,
                 stream: bool = True, parent: QWidget | None = None):
        super().__init__(parent)
        self.setWindowTitle("TuneDeck")
        self.setWindowIcon(app_icon())
        self.setObjectName("tunedeck_main_window")
        from core.store import Store

        self.store = store if store is not None else Store()
        self.events = StoreEvents(self)
        self.stream_manager: Any = None
        self.watcher: Any = None  # the StoreWatcher, made when the first run view or comparison opens
        self.run_tabs: dict[str, QWidget] = {}
        self._paired_dialog: Any = None  # the "Compare evaluations" chooser while it is open
        self._workers: list[Worker] = []
        self.demo_dataset: Any = None

        from app.gui.clusters_page import ClustersPage
        from app.gui.config_form import ConfigPage
        from app.gui.contamination_page import ContaminationPage
        from app.gui.runs_page import RunsPage

        self.runs_page = RunsPage(self.store)
        self.config_page = ConfigPage(store_provider=lambda: self.store)
        self.contamination_page = ContaminationPage()
        self.clusters_page = ClustersPage()
        self.tabs = QTabWidget()
        self.tabs.setObjectName("pages")
        self.tabs.setDocumentMode(True)
        self.tabs.setTabsClosable(True)
        self.tabs.setMovable(False)
        for page, title in ((self.runs_page, "Runs"), (self.config_page, "New run"),
                            (self.contamination_page, "Contamination"), (self.clusters_page, "Clusters")):
            self.tabs.addTab(page, title)
        for i in range(FIXED_PAGES):
            self.tabs.tabBar().setTabButton(i, QTabBar.ButtonPosition.RightSide, None)
            self.tabs.tabBar().setTabButton(i, QTabBar.ButtonPosition.LeftSide, None)
        self.tabs.tabCloseRequested.connect(self.close_tab)
        self.setCentralWidget(self.tabs)

        # wiring between pages
        self.runs_page.open_requested.connect(self.open_run)
        self.runs_page.compare_requested.connect(self.open_compare)
        # tab titles follow renames and deletions, from the app or the CLI (the Runs page's snapshots carry them)
        self.runs_page.refreshed.connect(lambda _n: self.refresh_run_titles())
        # The Runs page refreshes itself only while shown; while a run tab hides it, one refresh in a while
        # (one row per run) keeps those tabs' titles current.
        self._titles_timer = QTimer(self, interval=RUN_TITLES_REFRESH_MS)
        self._titles_timer.timeout.connect(
            lambda: self.runs_page.refresh() if self.run_tabs and not self.runs_page.isVisible() else None)
        self._titles_timer.start()
        self.config_page.launched.connect(self._on_launched)
        self.config_page.file_opened.connect(self.add_recent_file)
        self.config_page.file_saved.connect(self.add_recent_file)
        self.contamination_page.report_attached.connect(self._on_report_attached)
        self.clusters_page.profiles_changed.connect(self.config_page.refresh_profiles)
        self.clusters_page.check_done.connect(lambda outcome: self._set_cluster_state(outcome.profile_name, outcome.ok, outcome.summary))
        self.events.updated.connect(self.runs_page.schedule_refresh)
        self.events.status_changed.connect(self._on_status_changed)
        self.events.hang.connect(self._on_hang)

        self._build_menus()
        self._build_shortcuts()
        self._build_status_bar()

        # numpy and pyqtgraph load in the background now, not on the UI thread when the first run tab opens
        from app.gui.preload import Preloader

        self.preloader = Preloader().start()
        self.config_page.load_preset("tiny-demo")
        self.restore_state()
        self.runs_page.refresh()
        if stream:
            self._start_streaming()
        if demo_workspace:
            self.open_demo_workspace()
        elif offer_demo:
            QTimer.singleShot(0, self._maybe_offer_demo)

    # ------------------------------------------------------------------ building

    def _build_menus(self) -> None:
        bar = self.menuBar()
        file_menu = bar.addMenu("&File")
        self.new_run_action = QAction("&New run", self, shortcut=QKeySequence("Ctrl+N"))
        self.new_run_action.triggered.connect(self.show_new_run)
        open_action = QAction("&Open config…", self, shortcut=QKeySequence.StandardKey.Open)
        open_action.triggered.connect(self._on_open_config)
        save_action = QAction("&Save config…", self, shortcut=QKeySequence.StandardKey.Save)
        save_action.triggered.connect(self._on_save_config)
        self.recent_menu = file_menu.addMenu("Open &recent")
        self.launch_action = QAction("&Launch", self, shortcut=QKeySequence("Ctrl+L"))
        self.launch_action.triggered.connect(self.launch)
        quit_action = QAction("&Quit", self, shortcut=QKeySequence.StandardKey.Quit)
        quit_action.triggered.connect(self.close)
        file_menu.insertAction(self.recent_menu.menuAction(), self.new_run_action)
        file_menu.insertAction(self.recent_menu.menuAction(), open_action)
        file_menu.addAction(save_action)
        file_menu.addSeparator()
        file_menu.addAction(self.launch_action)
        file_menu.addSeparator()
        file_menu.addAction(quit_action)

        view_menu = bar.addMenu("&View")
        for i, title in enumerate(("Runs", "New run", "Contamination", "Clusters")):
            action = QAction(title, self, shortcut=QKeySequence(f"Alt+{i + 1}"))
            action.triggered.connect(lambda _checked=False, i=i: self.tabs.setCurrentIndex(i))
            view_menu.addAction(action)
        view_menu.addSeparator()
        find_action = QAction("&Find / filter", self, shortcut=QKeySequence("Ctrl+F"))
        find_action.triggered.connect(self.focus_filter)
        view_menu.addAction(find_action)
        self.paired_action = QAction("Compare &evaluations…", self, shortcut=QKeySequence("Ctrl+Shift+E"))
        self.paired_action.setToolTip("Paired comparison of two evaluations: tasks solved by each, McNemar's test, "
                                      "pass@1 and the difference with 95% intervals")
        self.paired_action.triggered.connect(self.choose_paired)
        view_menu.addAction(self.paired_action)
        close_tab = QAction("Close run tab", self, shortcut=QKeySequence("Ctrl+W"))
        close_tab.triggered.connect(lambda: self.close_tab(self.tabs.currentIndex()))
        view_menu.addAction(close_tab)

        help_menu = bar.addMenu("&Help")
        demo_action = QAction("Open the &demo workspace", self)
        demo_action.triggered.connect(self.open_demo_workspace)
        help_menu.addAction(demo_action)
        about = QAction("&About TuneDeck", self)
        about.triggered.connect(self.show_about)
        help_menu.addAction(about)
        self._rebuild_recent_menu()

    def _build_shortcuts(self) -> None:
        # menu actions carry Ctrl+N / Ctrl+L / Ctrl+F; these keep working when the menu bar is hidden (macOS-like)
        for action in (self.new_run_action, self.launch_action):
            self.addAction(action)

    def _build_status_bar(self) -> None:
        self.connection_label = QLabel()
        self.connection_label.setObjectName("connection_label")
        self.statusBar().addPermanentWidget(self.connection_label)
        self._cluster_state: dict[str, tuple[bool, str]] = {}
        self._status_timer = QTimer(self, interval=STATUS_REFRESH_MS)
        self._status_timer.timeout.connect(self._refresh_connections)
        self._status_timer.start()
        self._refresh_connections()

    # ------------------------------------------------------------------ streaming

    def _start_streaming(self) -> None:
        from remote.stream import StreamManager

        ev = self.events

        def on_update(run_id: str, name: str, n: int) -> None:
            # On the streamer's thread: the watcher is woken directly; the runs page hears it through Qt.
            watcher = self.watcher
            if watcher is not None:
                watcher.notify(run_id)
            ev.updated.emit(run_id, name, int(n))

        self.stream_manager = StreamManager(self.store, on_update=on_update, on_status=ev.status_changed.emit,
                                            on_hang=ev.hang.emit)
        self.stream_manager.start()

    def _on_status_changed(self, row: Any) -> None:
        self.runs_page.schedule_refresh()
        if row.is_terminal:
            reason = f" ({row.status_reason})" if row.status_reason else ""
            self.statusBar().showMessage(f"Run {self.run_title(row.run_id)} {row.status}{reason}", 10_000)

    def _on_hang(self, warning: Any) -> None:
        self.statusBar().showMessage(warning.message().splitlines()[0], 15_000)  # the warning's first line

    def _set_cluster_state(self, name: str, ok: bool, detail: str) -> None:
        self._cluster_state[name] = (ok, detail)
        self._refresh_connections()

    def _refresh_connections(self) -> None:
        """The status bar's cluster connections: profiles with active runs or a recent check."""
        states = dict(self._cluster_state)
        if self.stream_manager is not None:
            errors = dict(self.stream_manager.errors)
            streaming = [s.transport.name for s in list(self.stream_manager.streamers.values())]
            for cluster in filter(None, streaming):
                n = streaming.count(cluster)
                states[cluster] = (True, f"streaming {n} run{'s' if n != 1 else ''}")
            for cluster, message in errors.items():
                states[cluster] = (False, message)
        if not states:
            self.connection_label.setText("Clusters: none connected")
            self.connection_label.setToolTip("")
            return
        parts, tips = [], []
        for name, (ok, detail) in sorted(states.items()):
            color = "#2da44e" if ok else "#cf222e"
            parts.append(f"<span style='color:{color}'>●</span> {name}")
            tips.append(f"{name}: {'connected' if ok else 'error'} — {detail}")
        self.connection_label.setText("  ".join(parts))
        self.connection_label.setToolTip("\n".join(tips))

    # ------------------------------------------------------------------ pages and tabs

    def show_new_run(self) -> None:
        self.tabs.setCurrentWidget(self.config_page)

    def launch(self) -> None:
        self.tabs.setCurrentWidget(self.config_page)
        self.config_page.launch()

    def focus_filter(self) -> None:
        page = self.tabs.currentWidget()
        edit = getattr(page, "filter_edit", None)
        if edit is not None:
            edit.setFocus()
            edit.selectAll()

    def _on_launched(self, run_id: str) -> None:
        if self.stream_manager is not None:
            self.stream_manager.wake()
        self.runs_page.refresh()
        self.statusBar().showMessage(f"Launched run {run_id}", 8000)
        self.open_run(run_id)

    def _on_report_attached(self, path: str) -> None:
        self.config_page.set_field("data.contamination_report", path)
        self.statusBar().showMessage(f"Contamination report attached to the run config: {path}", 8000)
        self.tabs.setCurrentWidget(self.config_page)

    def store_watcher(self) -> Any:
        """The app's one StoreWatcher (every run view and comparison subscribes to it), made on first use:
        its imports (numpy, the series model) stay off the window's start."""
        if self.watcher is None:
            from app.gui.store_watch import StoreWatcher

            self.watcher = StoreWatcher(self.store, parent=self)
        return self.watcher

    def open_run(self, run_id: str) -> QWidget:
        if run_id in self.run_tabs:
            self.tabs.setCurrentWidget(self.run_tabs[run_id])
            return self.run_tabs[run_id]
        from app.gui.run_view import RunView

        view = RunView(self.store, run_id, self, watcher=self.store_watcher())
        view.attach_events(self.events)
        self.run_tabs[run_id] = view
        index = self.tabs.addTab(view, self.run_title(run_id))
        self.tabs.setTabToolTip(index, run_id)
        self.tabs.setCurrentIndex(index)
        return view

    def run_title(self, run_id: str) -> str:
        """A run's display name: unique among all runs (core.names), for tab titles."""
        from core.names import display_names

        return display_names(self.store.list_runs()).get(run_id, run_id)

    def refresh_run_titles(self) -> None:
        """Tab titles follow renames, and gain or lose the id suffix as names start or stop colliding; the tab
        of a deleted run closes. Names come from the Runs page's last snapshot (no store query here)."""
        names = {r.run_id: r.shown_name for r in self.runs_page.model.rows}
        for run_id, view in list(self.run_tabs.items()):
            index = self.tabs.indexOf(view)
            if index < 0:
                continue
            if run_id not in names:
                if self.store.get_run(run_id) is None:  # deleted (not merely absent from an older snapshot)
                    self.close_tab(index)
            elif self.tabs.tabText(index) != names[run_id]:
                self.tabs.setTabText(index, names[run_id])

    def choose_paired(self) -> QWidget | None:
        """Pick two evaluations (the Runs page's selection first) and open their paired comparison."""
        from app.gui.paired_view import ChooseEvaluationsDialog

        # the older selected run is A, so that B - A reads as what the newer run changed
        created = {r.run_id: r.created_at for r in self.store.list_runs()}
        selected = sorted((i for i in self.runs_page.selected_run_ids() if i in created), key=created.__getitem__)
        dialog = ChooseEvaluationsDialog(self.store, self, preselect=selected)
        self._paired_dialog = dialog  # reachable while open (tests answer it)
        try:
            if dialog.exec() != ChooseEvaluationsDialog.DialogCode.Accepted:
                return None
            return self.open_paired(**dialog.choice())
        finally:
            self._paired_dialog = None
            dialog.deleteLater()

    def open_paired(self, a_run: str, b_run: str, *, a_step: int | None = None, b_step: int | None = None,
                    benchmark: str | None = None, titles: tuple[str, str] | None = None) -> QWidget:
        """A tab with the paired comparison of two runs' evaluations (loaded in the background)."""
        from app.gui.paired_view import PairedView

        titles = titles or (self.run_title(a_run), self.run_title(b_run))
        labels = tuple(f"{t}@{s}" if s is not None else t for t, s in zip(titles, (a_step, b_step), strict=True))
        view = PairedView(self)
        view.load_runs(self.store, a_run, b_run, a_step=a_step, b_step=b_step, benchmark=benchmark, titles=labels)
        index = self.tabs.addTab(view, f"{labels[0]} vs {labels[1]}")
        self.tabs.setTabToolTip(index, f"Paired comparison: {a_run} vs {b_run}")
        self.tabs.setCurrentIndex(index)
        return view

    def open_compare(self, run_ids: list[str]) -> QWidget:
        from app.gui.compare_view import CompareView

        view = CompareView(self.store, list(run_ids), self, watcher=self.store_watcher())
        index = self.tabs.addTab(view, f"Compare ({len(run_ids)})")
        self.tabs.setTabToolTip(index, ", ".join(run_ids))
        self.tabs.setCurrentIndex(index)
        return view

    def close_tab(self, index: int) -> None:
        if index < FIXED_PAGES:
            return
        widget = self.tabs.widget(index)
        self.tabs.removeTab(index)
        for run_id, view in list(self.run_tabs.items()):
            if view is widget:
                del self.run_tabs[run_id]
        if widget is not None:
            widget.close()
            widget.deleteLater()

    # ------------------------------------------------------------------ files

    def _on_open_config(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Open run config", "", "YAML (*.yaml *.yml);;All files (*)")
        if path:
            self.open_config(path)

    def open_config(self, path: str) -> None:
        self.config_page.open_file(path)
        self.tabs.setCurrentWidget(self.config_page)

    def _on_save_config(self) -> None:
        self.tabs.setCurrentWidget(self.config_page)
        self.config_page._on_save_clicked()

    def recent_files(self) -> list[str]:
        value = gui_settings().value("recent_files", [])
        if isinstance(value, str):
            value = [value]
        return [str(v) for v in value or []]

    def add_recent_file(self, path: str) -> None:
        files = [path, *[p for p in self.recent_files() if p != path]][:MAX_RECENT]
        gui_settings().setValue("recent_files", files)
        self._rebuild_recent_menu()

    def _rebuild_recent_menu(self) -> None:
        self.recent_menu.clear()
        files = self.recent_files()
        for path in files:
            action = self.recent_menu.addAction(path)
            action.triggered.connect(lambda _checked=False, p=path: self.open_config(p))
        self.recent_menu.setEnabled(bool(files))

    # ------------------------------------------------------------------ demo

    def open_demo_workspace(self) -> None:
        """The local profile, the tiny-demo preset, and the demo dataset on the Contamination page."""
        from app.gui.demo import DEMO_PRESET, ensure_demo_dataset

        self.config_page.load_preset(DEMO_PRESET)
        idx = self.config_page.profile_combo.findText("local")
        if idx >= 0:
            self.config_page.profile_combo.setCurrentIndex(idx)
        self.contamination_page.humaneval_check.setChecked(True)

        def work(ctx: WorkContext) -> Any:
            return ensure_demo_dataset()

        worker = Worker(work)
        worker.signals.finished.connect(self._on_demo_ready)
        worker.signals.failed.connect(lambda _rid, msg: self.statusBar().showMessage(f"Demo dataset: {msg}", 15_000))
        self._workers.append(worker)
        worker.start()

    def _on_demo_ready(self, _rid: int, dataset: Any) -> None:
        from app.gui.demo import demo_config

        self.demo_dataset = dataset
        self.contamination_page.set_train_paths([str(dataset.path)])
        # the run trains on exactly the file the contamination page checks
        self.config_page.set_data(demo_config(dataset).model_dump(mode="json", exclude_none=True), unmodified=True)
        self.statusBar().showMessage(
            f"Demo workspace ready: {dataset.n_rows} training rows with {len(dataset.planted_task_ids)} planted "
            "HumanEval items; run the contamination check, then launch the tiny demo (Ctrl+L).", 15_000)

    def _maybe_offer_demo(self) -> None:
        from app.gui.demo import nothing_configured, offer_demo

        settings = gui_settings()
        if settings.value("demo/dont_offer", False, type=bool) or not nothing_configured(self.store):
            return
        accepted, ask_again = offer_demo(self)
        settings.setValue("demo/dont_offer", not ask_again)
        if accepted:
            self.open_demo_workspace()
            self.tabs.setCurrentWidget(self.contamination_page)

    # ------------------------------------------------------------------ about

    def about_text(self) -> str:
        from PySide6 import __version__ as pyside_version
        from PySide6.QtCore import qVersion

        from core.evalsets import LICENCES
        from core.version import __version__

        versions = [
            ("TuneDeck", __version__), ("Python", platform.python_version()), ("Qt", qVersion()),
            ("PySide6", pyside_version), ("pyqtgraph", _version("pyqtgraph")), ("pydantic", _version("pydantic")),
            ("paramiko", _version("paramiko")), ("datasets", _version("datasets")),
        ]
        rows = "".join(f"<tr><td>{k}</td><td>&nbsp;{v}</td></tr>" for k, v in versions)
        lic = "".join(f"<tr><td>{k}</td><td>&nbsp;{v}</td></tr>" for k, v in sorted(LICENCES.items()))
        return (
            "<h3>TuneDeck</h3><p>Build, decontaminate, launch, watch and compare code-LLM fine-tunes.</p>"
            f"<table>{rows}</table><p><b>Benchmark data licences</b></p><table>{lic}</table>"
            "<p>TuneDeck itself: Apache-2.0.</p>"
        )

    def show_about(self) -> None:
        QMessageBox.about(self, "About TuneDeck", self.about_text())

    # ------------------------------------------------------------------ state

    def restore_state(self) -> None:
        s = gui_settings()
        geometry = s.value("main_window/geometry")
        if isinstance(geometry, QByteArray) and not geometry.isEmpty():
            self.restoreGeometry(geometry)
        else:
            self.resize(1360, 880)
        state = s.value("main_window/state")
        if isinstance(state, QByteArray):
            self.restoreState(state)
        for key, splitter in self._splitters().items():
            value = s.value(f"splitters/{key}")
            if isinstance(value, QByteArray):
                splitter.restoreState(value)
        page = s.value("main_window/page", PAGE_RUNS, type=int)
        if 0 <= page < FIXED_PAGES:
            self.tabs.setCurrentIndex(page)

    def save_state(self) -> None:
        s = gui_settings()
        s.setValue("main_window/geometry", self.saveGeometry())
        s.setValue("main_window/state", self.saveState())
        s.setValue("main_window/page", min(self.tabs.currentIndex(), PAGE_RUNS if self.tabs.currentIndex() >= FIXED_PAGES else self.tabs.currentIndex()))
        for key, splitter in self._splitters().items():
            s.setValue(f"splitters/{key}", splitter.saveState())
        s.sync()

    def _splitters(self) -> dict[str, Any]:
        return {"config": self.config_page.splitter, "contamination": self.contamination_page.splitter,
                "clusters": self.clusters_page.splitter}

    def closeEvent(self, event: QCloseEvent) -> None:
        # Quitting would lose an edited run config as surely as loading another one: the same question first.
        if not self.config_page.confirm_discard("quit"):
            event.ignore()
            return
        self.save_state()
        self.contamination_page.cancel_check()
        self._status_timer.stop()
        for index in range(self.tabs.count() - 1, FIXED_PAGES - 1, -1):
            self.close_tab(index)
        if self.stream_manager is not None:
            self.stream_manager.stop()
            self.stream_manager = None
        if self.watcher is not None:
            self.watcher.stop()
        super().closeEvent(event)



