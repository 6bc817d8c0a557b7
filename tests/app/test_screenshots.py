"""Screenshots of every page under Xvfb (a real X server, the xcb platform), light and dark, saved to
test-artifacts/screenshots/ (gitignored) for a person to look at."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

SCRIPT = r'''
import os, sys
from pathlib import Path
from PySide6.QtCore import QThreadPool
from PySide6.QtWidgets import QApplication
from app.gui.app import create_app
app = create_app()
from app.gui.main_window import MainWindow
from core.config import resolved_dict
from core.presets import load_preset
from core.records import RunPaths, eval_record, event_record, metric_record
from core.store import Store

out = Path(sys.argv[1]); scheme = sys.argv[2]
store = Store()
config = load_preset("tiny-demo")
for i, (name, status, reason) in enumerate([("tiny demo lr 3e-3", "finished", None), ("tiny demo lr 1e-3", "running", None),
                                             ("phind 34b full", "failed", "launch failed: sbatch: invalid partition 'gpu'")]):
    rid = f"20261125-1200{i}-demo{i}"
    store.create_run(rid, name, config.to_yaml(), resolved_dict(config), cluster="local", backend="local",
                     run_dir=f"/tmp/{rid}", preset="tiny-demo", status=status)
    if reason:
        store.update_run(rid, status_reason=reason)
    n = 40 - 15 * i
    recs = [metric_record(step=s, attempt=1, epoch=s / 40, samples=4 * s, tokens=1024 * s, loss=6.9 * 0.97 ** s + 0.1 * i,
                          lr=3e-3, grad_norm=1.0, tokens_per_s=900.0) for s in range(1, n + 1)]
    if recs:
        store.ingest(rid, RunPaths.METRICS, recs, offset=100 * n, line_no=n)
    if status == "finished":
        evals = [eval_record(step=step, attempt=1, checkpoint=f"checkpoint-{step}", benchmark="humaneval", subset=subset,
                             n_tasks=n_tasks, samples_per_task=1, temperature=0.0, pass_at={1: p})
                 for step in (10, 20, 30) for subset, n_tasks, p in (("all", 164, 0.02 * step / 10),
                                                                    ("clean", 161, 0.018 * step / 10),
                                                                    ("contaminated", 3, step / 30))]
        store.ingest(rid, RunPaths.EVALS, evals, offset=10 * len(evals), line_no=len(evals))
        store.ingest(rid, RunPaths.EVAL_EVENTS, [
            event_record("eval_started", 1, {"step": 40, "checkpoint": "checkpoint-40", "benchmarks": ["humaneval"]}),
            event_record("eval_failed", 1, {"step": 40, "checkpoint": "checkpoint-40",
                                            "error": "MemoryError: the sandbox's 4 GiB address-space limit"})], offset=20, line_no=2)

w = MainWindow(store, demo_workspace=True, offer_demo=False, stream=False)
w.resize(1440, 900)
w.show()

def wait(cond, timeout=60.0):
    import time
    end = time.monotonic() + timeout
    while not cond():
        app.processEvents()
        if time.monotonic() > end:
            raise SystemExit(f"timed out waiting in the screenshot script")
        time.sleep(0.01)

def settle():
    for _ in range(30):
        app.processEvents()

def shot(name):
    settle()
    w.grab().save(str(out / f"{name}-{scheme}.png"))

wait(lambda: w.demo_dataset is not None)
w.runs_page.refresh(); wait(lambda: not w.runs_page.is_refreshing and w.runs_page.model.rows)
w.tabs.setCurrentIndex(0); shot("1-runs")
w.tabs.setCurrentIndex(1); shot("2-new-run-yaml")
w.config_page.tabs.setCurrentIndex(1); wait(lambda: "Memory" in w.config_page.previews["Estimate"].toPlainText()); shot("3-new-run-estimate")
w.config_page.form.rows["training.learning_rate"].editor.edit.setText("fast")
w.config_page.form.rows["training.learning_rate"].editor.edited.emit()
w.config_page.tabs.setCurrentIndex(3); shot("4-new-run-error-slurm")
w.tabs.setCurrentIndex(2)
page = w.contamination_page
done = []
page.check_finished.connect(lambda r: done.append(r))
page.start_check(); wait(lambda: done)
page.contaminated_only.setChecked(True); page.table.selectRow(0); shot("5-contamination")
w.tabs.setCurrentIndex(3)
cp = w.clusters_page
checked = []
cp.check_done.connect(lambda o: checked.append(o))
cp.start_check(); wait(lambda: checked, 120); shot("6-clusters")
view = w.open_run("20261125-12000-demo0")
wait(lambda: view.point_count() > 0 and view.eval_banner.isVisible()); shot("7-run-view")
loaded = []
cmp_view = w.open_compare(["20261125-12000-demo0", "20261125-12001-demo1"])
cmp_view.data_loaded.connect(lambda d: loaded.append(d)); wait(lambda: loaded); shot("8-compare")
# the config was edited above ("fast"): closing would ask about it in a modal box; the edit is a prop
w.config_page._mark_unmodified()
w.close()
QThreadPool.globalInstance().waitForDone(10000)
'''


def _free_display() -> int:
    for n in range(90, 140):
        if not Path(f"/tmp/.X11-unix/X{n}").exists() and not Path(f"/tmp/.X{n}-lock").exists():
            return n
    raise RuntimeError("no free X display number")


@pytest.fixture
def xvfb():
    if not shutil.which("Xvfb"):
        pytest.skip("Xvfb is not installed (apt-get install xvfb)")
    display = _free_display()
    proc = subprocess.Popen(["Xvfb", f":{display}", "-screen", "0", "1600x1000x24", "-nolisten", "tcp"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 10
    while not Path(f"/tmp/.X11-unix/X{display}").exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.skip(f"Xvfb did not start: {proc.stderr.read().decode()[-500:] if proc.stderr else ''}")
        time.sleep(0.05)
    yield f":{display}"
    proc.terminate()
    proc.wait(10)


@pytest.mark.slow
def test_screenshot_of_each_page_in_light_and_dark(xvfb, repo_root, tmp_path):
    out = repo_root / "test-artifacts" / "screenshots"
    out.mkdir(parents=True, exist_ok=True)
    for scheme in ("light", "dark"):
        env = {k: v for k, v in os.environ.items() if k != "QT_QPA_PLATFORM"}
        env.update(DISPLAY=xvfb, QT_QPA_PLATFORM="xcb", TUNEDECK_COLOR_SCHEME=scheme, TUNEDECK_HOME=str(tmp_path / scheme))
        proc = subprocess.run([sys.executable, "-c", SCRIPT, str(out), scheme], env=env, cwd=repo_root,
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        for name in ("1-runs", "2-new-run-yaml", "3-new-run-estimate", "4-new-run-error-slurm", "5-contamination", "6-clusters",
                     "7-run-view", "8-compare"):
            png = out / f"{name}-{scheme}.png"
            assert png.stat().st_size > 10_000, png
