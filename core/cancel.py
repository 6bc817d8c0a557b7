"""Cancellation, one type for all long work: raised by work that saw its cancel flag (a threading or
multiprocessing Event it checks), caught by whoever runs it (the GUI's Worker, the CLI) to report "cancelled"
rather than a failure. Standard library only: shipped with every run bundle."""

from __future__ import annotations


class Cancelled(Exception):
    """The work stopped because it was asked to; it wrote nothing it would leave half done."""
