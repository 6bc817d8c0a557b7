"""How the app looks: the light/dark palette (following the system), fonts, the icon and the run status
colours. Every page and view takes its looks from here (a leaf module: it imports no other GUI module)."""

from __future__ import annotations

import os

from PySide6.QtCore import Qt
from PySide6.QtGui import QColor, QFont, QFontDatabase, QGuiApplication, QIcon, QPalette
from PySide6.QtWidgets import QApplication, QWidget

from resources import RESOURCES_DIR

ICON_PATH = RESOURCES_DIR / "icons" / "tunedeck.svg"

# A run's status as a colour, (light palette, dark palette): the runs table and the run view's status line.
STATUS_COLORS = {
    "created": ("#6e7781", "#9ca3af"), "pending": ("#9a6700", "#facc15"), "running": ("#1a7f37", "#4ade80"),
    "completing": ("#1a7f37", "#4ade80"), "finished": ("#0969da", "#60a5fa"), "failed": ("#cf222e", "#f87171"),
    "cancelled": ("#8250df", "#c084fc"), "unknown": ("#6e7781", "#9ca3af"),
}


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


def set_title_font(label: QWidget) -> None:
    """The look of a view's title (a run's name, "Comparing N runs"): larger and bold."""
    font = label.font()
    font.setPointSizeF(font.pointSizeF() * 1.35)
    font.setBold(True)
    label.setFont(font)


def app_icon() -> QIcon:
    return QIcon(str(ICON_PATH))


def status_color(status: str) -> str:
    """The colour of a run status for the palette in use."""
    light, dark = STATUS_COLORS.get(status, STATUS_COLORS["unknown"])
    return dark if palette_is_dark() else light
