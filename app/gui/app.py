"""QApplication setup: style, light/dark palette following the system, icon, and `run_gui`."""

from __future__ import annotations

import logging
import os
import sys

from PySide6.QtCore import QCoreApplication, Qt, QThreadPool, QTimer
from PySide6.QtGui import QColor, QFont, QFontDatabase, QGuiApplication, QIcon, QPalette
from PySide6.QtWidgets import QApplication

from resources import RESOURCES_DIR

log = logging.getLogger(__name__)

ORG_NAME = "TuneDeck"
APP_NAME = "TuneDeck"
ICON_PATH = RESOURCES_DIR / "icons" / "tunedeck.svg"
SHUTDOWN_WAIT_MS = 10_000


def is_dark() -> bool:
    """Whether the app currently shows the dark palette (follows the system's colour scheme)."""
    app = QGuiApplication.instance()
    if app is None:
        return False
    scheme = QGuiApplication.styleHints().colorScheme()
    if scheme == Qt.ColorScheme.Dark:
        return True
    if scheme == Qt.ColorScheme.Light:
        return False
    return app.palette().color(QPalette.ColorRole.Window).lightness() < 128


def _palette(dark: bool) -> QPalette:
    pal = QPalette()
    if dark:
        colors = {
            QPalette.ColorRole.Window: "#202225", QPalette.ColorRole.WindowText: "#e3e5e8",
            QPalette.ColorRole.Base: "#17181a", QPalette.ColorRole.AlternateBase: "#25272b",
            QPalette.ColorRole.Text: "#e3e5e8", QPalette.ColorRole.Button: "#2b2d31",
            QPalette.ColorRole.ButtonText: "#e3e5e8", QPalette.ColorRole.Highlight: "#3b82f6",
            QPalette.ColorRole.HighlightedText: "#ffffff", QPalette.ColorRole.ToolTipBase: "#2b2d31",
            QPalette.ColorRole.ToolTipText: "#e3e5e8", QPalette.ColorRole.PlaceholderText: "#8a8f98",
            QPalette.ColorRole.Link: "#60a5fa", QPalette.ColorRole.Mid: "#3a3d42",
            QPalette.ColorRole.Midlight: "#34373c", QPalette.ColorRole.Dark: "#111214",
            QPalette.ColorRole.Light: "#45484e",
        }
        disabled = "#6b6f76"
    else:
        colors = {
            QPalette.ColorRole.Window: "#f3f4f6", QPalette.ColorRole.WindowText: "#1f2328",
            QPalette.ColorRole.Base: "#ffffff", QPalette.ColorRole.AlternateBase: "#f6f8fa",
            QPalette.ColorRole.Text: "#1f2328", QPalette.ColorRole.Button: "#f6f7f9",
            QPalette.ColorRole.ButtonText: "#1f2328", QPalette.ColorRole.Highlight: "#2563eb",
            QPalette.ColorRole.HighlightedText: "#ffffff", QPalette.ColorRole.ToolTipBase: "#ffffff",
            QPalette.ColorRole.ToolTipText: "#1f2328", QPalette.ColorRole.PlaceholderText: "#8c959f",
            QPalette.ColorRole.Link: "#0969da", QPalette.ColorRole.Mid: "#d0d7de",
            QPalette.ColorRole.Midlight: "#e5e7eb", QPalette.ColorRole.Dark: "#9ca3af",
            QPalette.ColorRole.Light: "#ffffff",
        }
        disabled = "#a0a7b0"
    for role, color in colors.items():
        pal.setColor(role, QColor(color))
    for role in (QPalette.ColorRole.Text, QPalette.ColorRole.WindowText, QPalette.ColorRole.ButtonText):
        pal.setColor(QPalette.ColorGroup.Disabled, role, QColor(disabled))
    return pal


def apply_palette(app: QApplication, dark: bool | None = None) -> None:
    """Apply the light or dark palette (None: follow the system's colour scheme)."""
    if dark is None:
        forced = os.environ.get("TUNEDECK_COLOR_SCHEME", "").lower()  # light | dark: override the system's
        dark = forced == "dark" if forced in ("light", "dark") else QGuiApplication.styleHints().colorScheme() == Qt.ColorScheme.Dark
    app.setPalette(_palette(dark))
    app.setProperty("tunedeck_dark", dark)


def palette_is_dark() -> bool:
    app = QApplication.instance()
    return bool(app and app.property("tunedeck_dark"))


def monospace_font(point_size: int | None = None) -> QFont:
    font = QFontDatabase.systemFont(QFontDatabase.SystemFont.FixedFont)
    if point_size:
        font.setPointSize(point_size)
    return font


def app_icon() -> QIcon:
    return QIcon(str(ICON_PATH))


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
