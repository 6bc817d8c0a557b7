"""The command line's error type (a leaf module: every command module raises it, the entry point prints it)."""

from __future__ import annotations


class CliError(Exception):
    """A user-facing error: printed as `tunedeck: error: ...` with exit status `code`."""

    def __init__(self, message: str, code: int = 2):
        super().__init__(message)
        self.code = code
