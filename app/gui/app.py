"""QApplication setup (style, palette, icon from app.gui.theme) and `run_gui`."""

from __future__ import annotations

import logging
import os
import sys

from PySide6.QtCore import QCoreApplication, QThreadPool, QTimer
from PySide6.QtGui import QGuiApplication
from PySide6.QtWidgets import QApplication

from app.gui.theme import app_icon, apply_palette

log = logging.getLogger(__name__)

ORG_NAME = "TuneDeck"
APP_NAME = "TuneDeck"
SHUTDOWN_WAIT_MS = 10_000


def create_app(argv: list[str] | None = None) -> QApplication:
    """The QApplication (created once): Fusion style, palette, icon, organisation names for QSettings."""
    app = QApplication.instance()
    if app is None:
        QCoreApplication.setOrganizationName(ORG_NAME)
        QCoreApplication.setApplicationName(APP_NAME)
        QGuiApplication.setDesktopFileName("tunedeck")
        app = QApplication(argv if argv is not None else [sys.argv[0]])
    app.setStyle("Fusion")
    app.setWindowIcon(app_icon())
    apply_palette(app)
    QGuiApplication.styleHints().colorSchemeChanged.connect(lambda _scheme: apply_palette(app))
    return app


def run_gui(smoke: bool = False, demo: bool = False) -> int:
    """Open the main window. smoke: demo workspace, exit 0 once shown and the event loop is idle."""
    logging.basicConfig(level=os.environ.get("TUNEDECK_LOG", "WARNING"))
    app = create_app()
    from app.gui.main_window import MainWindow

    window = MainWindow(demo_workspace=smoke or demo, offer_demo=not smoke)
    window.show()
    if smoke:
        # A zero-delay single shot runs once the queue is drained: the window is shown and the loop idle.
        def finish() -> None:
            ok = (window.isVisible() and window.windowHandle() is not None and window.windowHandle().isExposed()) or (
                QGuiApplication.platformName() in ("offscreen", "minimal") and window.isVisible()
            )
            window.close()
            app.exit(0 if ok else 1)

        QTimer.singleShot(0, lambda: QTimer.singleShot(0, finish))
    rc = app.exec()
    # Let background work end while its signal objects still exist (they are deleted at interpreter exit).
    QThreadPool.globalInstance().waitForDone(SHUTDOWN_WAIT_MS)
    if os.environ.get("TUNEDECK_DUMP_MODULES"):  # for the test that the GUI never imports the training stack
        with open(os.environ["TUNEDECK_DUMP_MODULES"], "w", encoding="utf-8") as fh:
            fh.write("\n".join(sorted(sys.modules)))
    return rc
