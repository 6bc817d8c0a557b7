"""The demo workspace: what a newcomer gets with nothing configured (used by the GUI and `tunedeck demo`).

The local cluster profile, the tiny-demo preset trained on the demo dataset (instruction/answer pairs from
the installed Python standard library, with a few HumanEval prompts planted so the contamination check has
something to find), and the contamination report attached to the run config. No Qt here.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.config import RunConfig
from core.fsutil import atomic_write_text
from core.paths import data_dir

DEMO_PRESET = "tiny-demo"
DEMO_FILE = "demo-train.jsonl"
DEMO_REPORT = "demo-contamination.json"


@dataclass(frozen=True)
class DemoDataset:
    """The demo training file and the HumanEval task ids planted in it."""

    path: Path
    planted_task_ids: tuple[str, ...]
    n_rows: int


def demo_dir() -> Path:
    path = data_dir() / "demo"
    path.mkdir(parents=True, exist_ok=True)
    return path


def demo_dataset_path() -> Path:
    return demo_dir() / DEMO_FILE


def demo_report_path() -> Path:
    return demo_dir() / DEMO_REPORT


def demo_parameters() -> dict[str, Any]:
    """n_examples / plant_humaneval / seed of the tiny-demo preset (the job generates the same rows)."""
    from core.presets import load_preset

    demo = load_preset(DEMO_PRESET).data.demo
    if demo is None:
        raise RuntimeError("the tiny-demo preset must use the demo dataset")
    return {"n_examples": demo.n_examples, "plant_humaneval": demo.plant_humaneval, "seed": demo.seed}


def ensure_demo_dataset() -> DemoDataset:
    """Write the demo dataset to the TuneDeck data dir (once; rewritten if its parameters changed).

    Takes a second or two (it reads many standard-library modules): call it off the UI thread."""
    from remote.job.demo_data import generate, planted_task_ids, write_jsonl

    params = demo_parameters()
    path = demo_dataset_path()
    meta_path = path.with_suffix(".meta.json")
    if path.is_file() and meta_path.is_file():
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        if meta.get("params") == params:
            return DemoDataset(path, tuple(meta["planted_task_ids"]), meta["n_rows"])
    rows = generate(params["n_examples"], params["plant_humaneval"], params["seed"])
    write_jsonl(path, rows)
    planted = planted_task_ids(rows)
    atomic_write_text(meta_path, json.dumps({"params": params, "planted_task_ids": planted, "n_rows": len(rows)}))
    return DemoDataset(path, tuple(planted), len(rows))


def demo_config(dataset: DemoDataset, report_path: Path | None = None, *, name: str | None = None,
                max_steps: int | None = None) -> RunConfig:
    """The tiny-demo preset reading the demo file (so the run trains on exactly what was checked), with the
    contamination report attached when given; `max_steps` shortens it (checkpoints at its half and end)."""
    from core.presets import load_preset

    data = load_preset(DEMO_PRESET).model_dump(mode="json")
    data["data"].update(demo=None, train_files=[str(dataset.path)],
                        contamination_report=str(report_path) if report_path else None)
    # All 164 HumanEval items (the preset's quick limit would leave out the planted ones), so pass@1 on the
    # contaminated subset has items in it; the tiny model takes ~30 s per checkpoint for that on a CPU.
    data["evaluation"]["limit"] = None
    if max_steps:
        data["training"].update(max_steps=max_steps, save_steps=max(1, max_steps // 2))
    if name:
        data["name"] = name
    return RunConfig.model_validate(data)


def check_demo_contamination(dataset: DemoDataset, progress: Callable[[int, int | None], None] | None = None,
                             cancel: Any = None) -> dict[str, Any]:
    """OpenAI's sampled method against HumanEval on the demo file; the report is also saved beside it."""
    from core.decontam import run_check

    report = run_check([str(dataset.path)], ["humaneval"], mode="sampled", seed=0, progress=progress, cancel=cancel)
    atomic_write_text(demo_report_path(), json.dumps(report, indent=1))
    return report
