"""Where TuneDeck keeps its files on the workstation (platformdirs), overridable for tests and CI.

TUNEDECK_HOME, when set, holds everything (store, profiles, local runs, downloaded data);
otherwise the platform's user data and config dirs are used.
"""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs

APP_NAME = "tunedeck"


def _home() -> Path | None:
    env = os.environ.get("TUNEDECK_HOME")
    return Path(env) if env else None


def data_dir() -> Path:
    home = _home()
    path = home / "data" if home else Path(platformdirs.user_data_dir(APP_NAME, appauthor=False))
    path.mkdir(parents=True, exist_ok=True)
    return path


def config_dir() -> Path:
    home = _home()
    path = home / "config" if home else Path(platformdirs.user_config_dir(APP_NAME, appauthor=False))
    path.mkdir(parents=True, exist_ok=True)
    return path


def store_path() -> Path:
    """The run store (SQLite). TUNEDECK_STORE overrides it alone."""
    env = os.environ.get("TUNEDECK_STORE")
    return Path(env) if env else data_dir() / "tunedeck.sqlite3"


def local_runs_dir() -> Path:
    path = data_dir() / "runs"
    path.mkdir(parents=True, exist_ok=True)
    return path


def bench_data_dir() -> Path:
    """Where `tunedeck data download` puts benchmark files (TUNEDECK_BENCH_DATA overrides)."""
    env = os.environ.get("TUNEDECK_BENCH_DATA")
    return Path(env) if env else data_dir() / "benchmarks"
