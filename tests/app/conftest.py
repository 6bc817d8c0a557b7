"""GUI test setup: Qt offscreen, the app's palette and style, an isolated run store, the demo dataset."""

from __future__ import annotations

import os

# Before any QApplication exists: tests never need a display (the screenshot test starts its own Xvfb).
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import pytest

pytest.importorskip("pytestqt")


@pytest.fixture(autouse=True)
def tunedeck_app(qapp):
    """The QApplication configured as `tunedeck gui` does (Fusion style, palette, names)."""
    from PySide6.QtCore import QThreadPool

    from app.gui.app import create_app

    yield create_app()
    # background work must end before its widgets go (its signals would reach deleted objects)
    QThreadPool.globalInstance().waitForDone(30_000)


@pytest.fixture
def store(tmp_path):
    from PySide6.QtCore import QThreadPool

    from core.store import Store

    s = Store(tmp_path / "store.sqlite3")
    yield s
    # Store.close is for when no other thread uses the store: reads a closed view started (chart envelopes,
    # step maps) end first, else sqlite is closed under them (a segfault)
    QThreadPool.globalInstance().waitForDone(30_000)
    s.close()


@pytest.fixture
def demo_dataset():
    """The tiny-demo preset's dataset written to this test's TuneDeck data dir (planted HumanEval items)."""
    from app.gui.demo import ensure_demo_dataset

    return ensure_demo_dataset()


@pytest.fixture
def main_window(qtbot, store):
    """A main window on the test store, without the first-run dialog or the background streamer."""
    from PySide6.QtCore import QThreadPool

    from app.gui.main_window import MainWindow

    window = MainWindow(store, offer_demo=False, stream=False)
    # the test is over when pytest-qt closes it: closing must not ask about the test's edits (a modal box)
    qtbot.addWidget(window, before_close_func=lambda w: w.config_page._mark_unmodified())
    yield window
    window.config_page._mark_unmodified()
    window.close()
    QThreadPool.globalInstance().waitForDone(10_000)
