"""The `tunedeck` command line: one argparse tree, one module per feature area.

Each feature area's module exposes `register(subparsers)`; handlers import their heavy dependencies lazily so
that `tunedeck --help` and the GUI's start stay fast (the GUI never imports torch).
"""

from __future__ import annotations

import argparse
import os
import sys

from app.cli.errors import CliError

__all__ = ["CliError", "build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tunedeck",
        description="TuneDeck: build, decontaminate, launch, watch and compare code-LLM fine-tunes.",
    )
    from core.version import __version__

    parser.add_argument("--version", action="version", version=f"tunedeck {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    from app.cli import (
        cluster_cmds,
        compare_cmds,
        config_cmds,
        decontam_cmds,
        demo_cmds,
        eval_cmds,
        gui_cmds,
        remote_cmds,
        run_cmds,
    )

    # Feature areas, each owning its subcommands, in the order help lists them.
    for module in (config_cmds,  # presets, config new/validate/render, estimate
                   decontam_cmds,  # decontaminate, decontaminate merge, data download
                   eval_cmds,  # eval
                   cluster_cmds,  # cluster add/list/check/remove/trust
                   remote_cmds,  # launch, runs, status, logs, cancel, sync
                   run_cmds,  # rename, tag, note, archive, unarchive, delete
                   compare_cmds,  # compare (paired comparison of two evaluations)
                   gui_cmds,  # gui
                   demo_cmds):  # demo (the newcomer's path without a screen)
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    if not argv:
        argv = ["gui"] if "gui" in subparsers_names(parser) else ["--help"]
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help()
        return 2
    try:
        return int(args.handler(args) or 0)
    except CliError as exc:
        print(f"tunedeck: error: {exc}", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        print("tunedeck: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (`tunedeck runs --json | head`): not an error worth a traceback. Point stdout
        # at /dev/null so that the flush at exit does not raise again, and exit as SIGPIPE would.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141


def subparsers_names(parser: argparse.ArgumentParser) -> set[str]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return set(action.choices)
    return set()


if __name__ == "__main__":
    sys.exit(main())
