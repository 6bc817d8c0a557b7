"""Fixtures for running the sandbox as an ordinary user (see tests/job/sandbox_users.py)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.job.sandbox_users import OrdinaryUser, Unavailable, world_readable_job_code


@pytest.fixture(scope="session")
def ordinary_user() -> Iterator[OrdinaryUser]:
    """A login user made for this session (useradd), removed at the end with its home."""
    try:
        user = OrdinaryUser.create()
    except Unavailable as exc:
        pytest.skip(f"no ordinary user for the sandbox tests: {exc}")
    try:
        yield user
    finally:
        user.remove()


@pytest.fixture(scope="session")
def user_code_dir() -> Iterator[Path]:
    """The shipped job code in a world-readable directory (the ordinary user runs it with the system python)."""
    root = world_readable_job_code()
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)
