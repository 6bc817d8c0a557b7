"""What every module of the contamination check shares, beneath all of them (so none imports another for it):
its error type and the size it reads files in."""

from __future__ import annotations

READ_BYTES = 1 << 20


class DecontamError(Exception):
    """Bad input or a bad report: says which file, which line or field, and why."""
