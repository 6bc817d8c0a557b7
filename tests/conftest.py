"""Shared fixtures: benchmark data location, isolated user dirs, the repo root."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]

# The loopback sshd + Slurm fixtures, registered here (not in tests/remote/conftest.py) so tests anywhere
# share ONE session-wide set of daemons.
pytest_plugins = ("tests.remote.fixtures",)


def bench_data_path() -> Path:
    """../shared/data beside the checkout, or $TUNEDECK_BENCH_DATA (set by .ci/run)."""
    env = os.environ.get("TUNEDECK_BENCH_DATA")
    return Path(env) if env else REPO_ROOT.parent / "shared" / "data"


def _snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="session", autouse=True)
def benchmark_data_left_untouched():
    """The shared benchmark data is read, never written: a test that writes there (say, `tunedeck data
    download` following TUNEDECK_BENCH_DATA) would corrupt it for every later test and run. Checked at the end."""
    root = bench_data_path()
    before = _snapshot(root) if root.is_dir() else {}
    yield
    after = _snapshot(root) if root.is_dir() else {}
    changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    assert not changed, f"tests changed the shared benchmark data in {root}: {changed}"


@pytest.fixture
def bench_data() -> Path:
    path = bench_data_path()
    if not (path / "mbpp" / "mbpp.jsonl").is_file():
        pytest.skip(f"benchmark data not found at {path} (set TUNEDECK_BENCH_DATA or get it with `tunedeck data download`)")
    return path


@pytest.fixture
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(autouse=True)
def isolated_user_dirs(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test gets its own TuneDeck home (store, profiles, local runs), never the real user's."""
    home = tmp_path_factory.mktemp("tunedeck-home")
    monkeypatch.setenv("TUNEDECK_HOME", str(home))
    return home
