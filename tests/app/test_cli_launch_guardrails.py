"""`tunedeck launch` refuses what cannot work, one paragraph per reason, and `--force` goes ahead anyway.

Real parts: the local profile's cluster check runs for real (this machine has no GPU), the stored check is
re-run when a day old, and the forced launch starts a real job that fails on its own (no training data).
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import time
from pathlib import Path

import pytest

from app.cli import main
from core.store import Store
from remote.check import checks_dir, load_report
from remote.profiles import ClusterProfile, save_profile
from tests.remote.launch_support import PYTHON, fast_config

SYSTEM_PYTHON = "/usr/bin/python3"


def _no_gpu_here() -> bool:
    return subprocess.run(["sh", "-c", "command -v nvidia-smi"], capture_output=True).returncode != 0


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.mark.skipif(not _no_gpu_here(), reason="this machine has a GPU: it is no CPU-only profile")
def test_phind_preset_on_a_cpu_only_profile_is_refused_with_reasons_and_force_launches_it(tmp_path, capsys):
    # Two training processes where the preset says 8 per node: the forced job below stays cheap.
    save_profile(ClusterProfile(name="cpu-only", backend="local", python=PYTHON, nodes=1, gpus_per_node=2))
    rc, out, err = run_cli(capsys, "config", "new", "--preset", "phind-codellama-34b-v1", "-o", str(tmp_path / "p.yaml"))
    assert rc == 0, err

    rc, out, err = run_cli(capsys, "launch", str(tmp_path / "p.yaml"), "--cluster", "cpu-only")

    assert rc == 1 and out == ""
    assert "launch refused: 3 reasons this run cannot work (--force launches anyway)" in err
    paragraphs = [p for p in err.split("\n\n") if p.strip()]
    assert any(p.startswith("No training data:") for p in paragraphs)
    # 34B over the profile's 2 processes: ZeRO-3 cannot spread it thin enough
    fit = next(p for p in paragraphs if p.startswith("The estimate says training does not fit in GPU memory:"))
    assert "ZeRO-3 over 2 GPUs" in fit and "> 80 GB" in fit
    gpu = next(p for p in paragraphs if p.startswith("No GPU where this config needs GPUs:"))
    assert "2 GPUs per node of type A100-80GB (80 GB each)" in gpu and "found no GPU" in gpu and "34B" in gpu
    with Store() as store:
        assert store.list_runs() == []  # nothing recorded, nothing started
    assert load_report("cpu-only") is not None  # the check ran and was kept

    rc, out, err = run_cli(capsys, "launch", str(tmp_path / "p.yaml"), "--cluster", "cpu-only", "--force")

    assert rc == 0, err
    run_id = out.strip().splitlines()[-1]
    with Store() as store:
        row = store.get_run(run_id)
        assert row is not None and row.preset == "phind-codellama-34b-v1"
    # The job starts and fails on its own, for the reason the guardrail gave.
    deadline = time.monotonic() + 240
    status = ""
    while time.monotonic() < deadline:
        rc, out, err = run_cli(capsys, "status", run_id)
        status = out.strip()
        if status.startswith(("failed", "finished", "cancelled")):
            break
        time.sleep(1.0)
    assert status.startswith("failed"), status
    events = [json.loads(x) for x in (Path(row.run_dir) / "events.jsonl").read_text().splitlines()]
    assert any(e["event"] == "failed" and "no training data" in e["detail"]["error"] for e in events)


@pytest.mark.skipif(not Path(SYSTEM_PYTHON).exists() or subprocess.run(
    [SYSTEM_PYTHON, "-c", "import importlib.util as u, sys; sys.exit(u.find_spec('torch') is not None)"]).returncode,
    reason="needs a system python without torch")
def test_a_profile_whose_python_lacks_torch_is_refused_with_the_checks_fix_line(tmp_path, capsys):
    save_profile(ClusterProfile(name="no-torch", backend="local", python=SYSTEM_PYTHON))
    # A day-old check that found everything: too old to trust, so the launch checks again.
    stale = {"profile": "no-torch", "backend": "local", "checked_at": time.time() - 25 * 3600, "raw": {},
             "items": [{"name": "torch", "ok": True, "value": "2.13.0", "fix": None, "required": True}]}
    checks_dir().mkdir(parents=True, exist_ok=True)
    (checks_dir() / "no-torch.json").write_text(json.dumps(stale))
    config = tmp_path / "tiny.yaml"
    config.write_text(fast_config().to_yaml())

    rc, out, err = run_cli(capsys, "launch", str(config), "--cluster", "no-torch")

    assert rc == 1 and out == ""
    paragraph = next(p for p in err.split("\n\n") if "missing torch" in p)
    assert "torch: not installed" in paragraph and "(just now)" in paragraph
    assert "Fix: pip install torch==2.13.0" in paragraph and "tunedeck cluster check no-torch" in paragraph
    assert importlib.util.find_spec("torch") is not None  # (the app's own python has it: the profile's lacks it)
    assert time.time() - load_report("no-torch").checked_at < 120  # re-run, and the new result kept
    with Store() as store:
        assert store.list_runs() == []
