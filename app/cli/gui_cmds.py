"""`tunedeck gui`: the desktop app (the default when `tunedeck` runs without arguments)."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("gui", help="open the desktop app", description="Open the TuneDeck desktop app.")
    parser.add_argument("--smoke", action="store_true",
                        help="open the main window with the demo workspace, wait until it is shown and idle, exit 0")
    parser.add_argument("--demo", action="store_true", help="open the demo workspace (local profile, tiny preset, demo data)")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    # Qt is imported here, not at module level: `tunedeck --help` and the other commands stay Qt-free.
    from app.gui.app import run_gui

    return run_gui(smoke=args.smoke, demo=args.demo)
