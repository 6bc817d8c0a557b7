"""The run bundle: plan files, job code, datasets by content (uploaded once), through a real transport."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from core.plan import LaunchContext
from core.records import RunPaths
from remote.backends import DETACH_SCRIPT
from remote.bundle import BundleError, build_bundle, job_code_files, stage_and_upload, upload_bundle
from remote.transport import LocalTransport
from tests.remote.launch_support import fast_config


def config_with_data(tmp_path: Path, rows: int = 5):
    data = tmp_path / "my data.jsonl"
    data.write_text("".join(json.dumps({"instruction": f"q{i}", "answer": f"a{i}"}) + "\n" for i in range(rows)))
    cfg = fast_config()
    return cfg.model_copy(update={"data": cfg.data.model_copy(update={"demo": None, "train_files": [str(data)]})}), data


def ctx_for(root: Path, run_id: str = "20260101-000000-abcdef", backend: str = "local") -> LaunchContext:
    return LaunchContext(run_id=run_id, run_dir=str(root / "runs" / run_id), backend=backend)


def test_bundle_holds_plan_job_code_and_points_data_at_its_content_address(tmp_path):
    cfg, data = config_with_data(tmp_path)
    root = tmp_path / "work"
    bundle = build_bundle(cfg, ctx_for(root), str(root), tmp_path / "stage")
    assert bundle.datasets[0].local == data.resolve()
    for name in (RunPaths.CONFIG_YAML, RunPaths.CONFIG_JSON, RunPaths.DS_CONFIG, RunPaths.LOCAL_SCRIPT,
                 RunPaths.RUN_JSON, DETACH_SCRIPT, "code/core/records.py", "code/core/evalsets.py",
                 "code/core/passk.py", "code/core/fsutil.py", "code/core/config.py", "code/core/cancel.py",
                 "code/core/datafiles.py", "code/core/__init__.py", "code/remote/__init__.py",
                 "code/remote/job/train.py", "code/remote/job/follow.py"):
        assert name in bundle.files, name
    assert not any(rel.startswith("code/core/decontam/") for rel in bundle.files)
    assert "code/core/store.py" not in bundle.files  # the app's store never travels
    [up] = bundle.datasets
    assert up.remote_path == f"{root}/datasets/{up.sha256}/my data.jsonl"
    shipped = json.loads((tmp_path / "stage" / RunPaths.CONFIG_JSON).read_text())
    assert shipped["data"]["train_files"] == [up.remote_path]


def test_decontam_bundles_also_ship_the_matcher():
    files = job_code_files(include_decontam=True)
    assert "core/decontam/__init__.py" in files and "core/decontam/matcher.py" in files


def test_dataset_with_the_same_sha256_is_uploaded_once(tmp_path):
    cfg, _ = config_with_data(tmp_path)
    root = tmp_path / "work"
    t = LocalTransport()
    first = build_bundle(cfg, ctx_for(root, "20260101-000000-aaaaaa"), str(root), tmp_path / "s1")
    counts1 = upload_bundle(first, t)
    second = build_bundle(cfg, ctx_for(root, "20260101-000000-bbbbbb"), str(root), tmp_path / "s2")
    counts2 = upload_bundle(second, t)
    assert counts1["datasets_uploaded"] == 1 and counts2["datasets_reused"] == 1
    assert len(list((root / "datasets").iterdir())) == 1
    run_dir = Path(second.run_dir)
    assert (run_dir / RunPaths.LOCAL_SCRIPT).stat().st_mode & 0o111
    assert (run_dir / "code/remote/job/train.py").read_bytes() == job_code_files()["remote/job/train.py"].read_bytes()


def test_shipped_code_imports_without_the_app_installed(tmp_path):
    cfg, _ = config_with_data(tmp_path)
    root = tmp_path / "work"
    bundle = stage_and_upload(cfg, ctx_for(root), str(root), LocalTransport())
    code = Path(bundle.run_dir) / RunPaths.JOB_CODE
    probe = ("import sys; sys.path.insert(0, sys.argv[1]); import core, core.records, core.evalsets, core.passk, "
             "core.fsutil, core.config, remote.job, remote.job.train; "
             "assert core.config.__file__.startswith(sys.argv[1]), core.config.__file__; "
             "assert remote.job.train.__file__.startswith(sys.argv[1]), remote.job.train.__file__; "
             "cfg = core.config.load_resolved_json(sys.argv[2]); print('ok', cfg.name)")
    config_json = Path(bundle.run_dir) / RunPaths.CONFIG_JSON
    out = subprocess.run([sys.executable, "-I", "-c", probe, str(code), str(config_json)], capture_output=True,
                         text=True, timeout=60)
    assert out.stdout.strip() == f"ok {cfg.name}", out.stderr


def test_missing_dataset_fails_naming_the_field_and_path(tmp_path):
    cfg = fast_config()
    cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update={"demo": None,
                                                                      "train_files": ["nowhere/x.jsonl"]})})
    with pytest.raises(BundleError, match=r"data\.train_files\[0\]: 'nowhere/x\.jsonl' not found"):
        build_bundle(cfg, ctx_for(tmp_path), str(tmp_path), tmp_path / "stage")


def test_profile_nodes_and_gpus_override_the_config_shape_and_are_validated():
    from remote.profiles import ClusterProfile
    from remote.runs import apply_profile_shape

    cfg = fast_config()
    shaped = apply_profile_shape(cfg, ClusterProfile(name="p", backend="local", gpus_per_node=1))
    assert shaped.cluster.gpus_per_node == 1 and shaped.world_size == 1
    assert apply_profile_shape(cfg, ClusterProfile(name="p", backend="local")) is cfg


def test_local_profile_default_python_is_the_apps_own_interpreter():
    from remote.profiles import ClusterProfile
    from remote.runs import launch_context

    ctx = launch_context(ClusterProfile(name="local", backend="local"), "r", "/x/runs/r")
    assert ctx.python == sys.executable
    custom = launch_context(ClusterProfile(name="l2", backend="local", python="/opt/env/bin/python"), "r", "/x/r")
    assert custom.python == "/opt/env/bin/python"
