"""Entry point of the packaged app: the same CLI as `tunedeck` (no arguments opens the GUI)."""

import sys

from app.cli import main

if __name__ == "__main__":
    sys.exit(main())
