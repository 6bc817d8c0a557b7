"""First run out of the box: the local profile, the tiny-demo preset and the demo dataset (with a few planted
HumanEval items) so that a newcomer can check contamination, launch, watch and compare without any setup."""

from __future__ import annotations

from typing import Any

from PySide6.QtWidgets import QCheckBox, QMessageBox, QWidget

from remote.demo import DEMO_PRESET, DemoDataset, demo_config, ensure_demo_dataset

# The demo data and config live in remote/demo.py (shared with `tunedeck demo`); this module adds the dialog.
__all__ = ["DEMO_PRESET", "DemoDataset", "demo_config", "ensure_demo_dataset", "nothing_configured", "offer_demo"]


def nothing_configured(store: Any | None) -> bool:
    """True on a fresh install: no saved cluster profiles and no runs."""
    from remote.profiles import profiles_path

    if profiles_path().exists():
        return False
    return not (store is not None and store.list_runs())


def offer_demo(parent: QWidget) -> tuple[bool, bool]:
    """The first-run dialog: (open the demo?, ask again next time?)."""
    box = QMessageBox(parent)
    box.setWindowTitle("Welcome to TuneDeck")
    box.setIcon(QMessageBox.Icon.Information)
    box.setText("<b>Nothing is configured yet.</b> Try the demo?")
    box.setInformativeText(
        "The demo uses this machine (the <i>local</i> cluster profile), the <i>tiny-demo</i> preset (a tiny "
        "Llama trained with DeepSpeed ZeRO-3 on 2 CPU processes) and a demo dataset with a few HumanEval "
        "problems planted in it.<br><br>Check contamination (the planted items are flagged), launch, watch "
        "the loss fall, see pass@1 per checkpoint and compare two runs — no setup needed."
    )
    open_demo = box.addButton("Open the demo", QMessageBox.ButtonRole.AcceptRole)
    box.addButton("Not now", QMessageBox.ButtonRole.RejectRole)
    again = QCheckBox("Ask again next time")
    again.setChecked(False)
    box.setCheckBox(again)
    box.setDefaultButton(open_demo)
    box.exec()
    return box.clickedButton() is open_demo, again.isChecked()
