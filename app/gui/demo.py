"""First run out of the box: the local profile, the tiny-demo preset and the demo dataset (with a few planted
HumanEval items) so that a newcomer can check contamination, launch, watch and compare without any setup."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PySide6.QtWidgets import QCheckBox, QMessageBox, QWidget

from core.paths import config_dir, data_dir

DEMO_PRESET = "tiny-demo"
DEMO_FILE = "demo-train.jsonl"


@dataclass(frozen=True)
class DemoDataset:
    """The demo training file and the HumanEval task ids planted in it."""

    path: Path
    planted_task_ids: tuple[str, ...]
    n_rows: int


def demo_dataset_path() -> Path:
    return data_dir() / "demo" / DEMO_FILE


def demo_parameters() -> dict[str, Any]:
    """n_examples / plant_humaneval / seed of the tiny-demo preset (the job generates the same rows)."""
    from core.presets import load_preset

    demo = load_preset(DEMO_PRESET).data.demo
    assert demo is not None, "the tiny-demo preset must use the demo dataset"
    return {"n_examples": demo.n_examples, "plant_humaneval": demo.plant_humaneval, "seed": demo.seed}


def ensure_demo_dataset() -> DemoDataset:
    """Write the demo dataset to the TuneDeck data dir (once; rewritten if its parameters changed).

    Slow-ish (imports and reads many stdlib modules): call it off the UI thread."""
    from remote.job.demo_data import generate, planted_task_ids, write_jsonl

    params = demo_parameters()
    path = demo_dataset_path()
    meta_path = path.with_suffix(".meta.json")
    if path.is_file() and meta_path.is_file():
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        if meta.get("params") == params:
            return DemoDataset(path, tuple(meta["planted_task_ids"]), meta["n_rows"])
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = generate(params["n_examples"], params["plant_humaneval"], params["seed"])
    write_jsonl(path, rows)
    planted = planted_task_ids(rows)
    from core.fsutil import atomic_write_text

    atomic_write_text(meta_path, json.dumps({"params": params, "planted_task_ids": planted, "n_rows": len(rows)}))
    return DemoDataset(path, tuple(planted), len(rows))


def nothing_configured(store: Any | None) -> bool:
    """True on a fresh install: no saved cluster profiles and no runs."""
    if (config_dir() / "clusters.yaml").exists():
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
