"""`tunedeck rename | tag | note | archive | unarchive | delete`: keeping the run list in order.

All of them change the run store only: a run's files on its machine stay where they are.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from app.cli.errors import CliError

ACTIVE_STATUSES = ("pending", "running", "completing")


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("rename", help="Give a run another name (its id stays).")
    p.add_argument("run", help="Run id (or a unique prefix).")
    p.add_argument("name", help="The new name.")
    p.set_defaults(handler=cmd_rename)

    p = subparsers.add_parser("tag", help="Add tags to a run, remove some with -r TAG; no tags: list them.")
    p.add_argument("run", help="Run id (or a unique prefix).")
    p.add_argument("tags", nargs="*", metavar="TAG", help="Tags to add.")
    p.add_argument("-r", "--remove", action="append", default=[], metavar="TAG", help="A tag to remove (repeatable).")
    p.set_defaults(handler=cmd_tag)

    p = subparsers.add_parser("note", help="Set a run's notes (TEXT, or - for standard input); no TEXT: print them.")
    p.add_argument("run", help="Run id (or a unique prefix).")
    p.add_argument("text", nargs="?", help="The notes (replacing what was there); - reads them from standard input.")
    p.add_argument("-a", "--append", metavar="TEXT", help="Add TEXT (- for standard input) as a new line after the notes.")
    p.add_argument("--clear", action="store_true", help="Remove the notes.")
    p.set_defaults(handler=cmd_note)

    p = subparsers.add_parser("archive", help="Hide runs from `tunedeck runs` and the Runs page (shown with --all).")
    p.add_argument("runs", nargs="+", metavar="RUN", help="Run ids (or unique prefixes).")
    p.set_defaults(handler=cmd_archive, archived=True)

    p = subparsers.add_parser("unarchive", help="Show archived runs in the run list again.")
    p.add_argument("runs", nargs="+", metavar="RUN", help="Run ids (or unique prefixes).")
    p.set_defaults(handler=cmd_archive, archived=False)

    p = subparsers.add_parser("delete", help="Remove runs and everything recorded for them from the run store.")
    p.add_argument("runs", nargs="+", metavar="RUN", help="Run ids (or unique prefixes).")
    p.add_argument("-y", "--yes", action="store_true", help="Do not ask for confirmation.")
    p.set_defaults(handler=cmd_delete)


def _store() -> Any:
    from core.store import Store

    return Store()


def _run(store: Any, ref: str) -> Any:
    from core.store import UnknownRunError
    from remote.runs import get_run

    try:
        return get_run(store, ref)
    except UnknownRunError as exc:
        raise CliError(str(exc)) from None


def _shown(store: Any, row: Any) -> str:
    from core.names import display_names

    return f"{display_names(store.list_runs()).get(row.run_id, row.name)} ({row.run_id})"


def cmd_rename(args: argparse.Namespace) -> int:
    from core.names import clean_name

    try:
        name = clean_name(args.name)
    except ValueError as exc:
        raise CliError(str(exc)) from None
    with _store() as store:
        row = _run(store, args.run)
        store.update_run(row.run_id, name=name)
        print(f"run {row.run_id} renamed: {_shown(store, store.get_run(row.run_id))}")
    return 0


def cmd_tag(args: argparse.Namespace) -> int:
    from core.names import clean_tag, printable

    try:
        tags = [clean_tag(t) for t in args.tags]
    except ValueError as exc:
        raise CliError(str(exc)) from None
    remove = {t.strip() for t in args.remove}
    with _store() as store:
        row = _run(store, args.run)
        if tags or remove:
            current = [t for t in row.tags if t not in remove]
            row = store.update_run(row.run_id, tags=current + [t for t in dict.fromkeys(tags) if t not in current])
        print(" ".join(printable(t) for t in row.tags) if row.tags else f"run {row.run_id} has no tags")
    return 0


def cmd_note(args: argparse.Namespace) -> int:
    with _store() as store:
        row = _run(store, args.run)
        given = [x for x in (args.text is not None, args.append is not None, args.clear) if x]
        if len(given) > 1:
            raise CliError("give one of TEXT, --append TEXT or --clear")
        if args.clear:
            store.update_run(row.run_id, notes="")
            print(f"run {row.run_id}: notes removed")
            return 0
        if not given:
            print(row.notes if row.notes else f"run {row.run_id} has no notes")
            return 0
        raw = args.text if args.text is not None else args.append
        text = (sys.stdin.read() if raw == "-" else raw).rstrip("\n")
        if "\0" in text:
            raise CliError("notes cannot contain NUL characters")
        notes = f"{row.notes}\n{text}" if args.append is not None and row.notes else text
        store.update_run(row.run_id, notes=notes)
        print(f"run {row.run_id}: notes saved ({len(notes.splitlines()) or 1} line(s))")
    return 0


def cmd_archive(args: argparse.Namespace) -> int:
    with _store() as store:
        rows = [_run(store, ref) for ref in args.runs]
        for row in dict.fromkeys(rows):
            store.update_run(row.run_id, archived=args.archived)
            verb = "archived (hidden from `tunedeck runs`; see --all)" if args.archived else "unarchived"
            print(f"{_shown(store, row)}: {verb}")
    return 0


def cmd_delete(args: argparse.Namespace) -> int:
    with _store() as store:
        rows = list(dict.fromkeys(_run(store, ref) for ref in args.runs))
        active = [r for r in rows if r.status in ACTIVE_STATUSES]
        if active:
            ids = ", ".join(f"{r.run_id} ({r.status})" for r in active)
            raise CliError(f"cannot delete a run that is still going: {ids}; cancel it first "
                           f"(tunedeck cancel {active[0].run_id})")
        shown = [_shown(store, r) for r in rows]
        if not args.yes:
            if not sys.stdin.isatty():
                raise CliError("delete asks for confirmation on a terminal; pass --yes to delete without asking")
            print("Delete from the run store (metrics, evaluations, logs, notes):\n  " + "\n  ".join(shown))
            answer = input(f"Delete {len(rows)} run{'s' if len(rows) != 1 else ''}? [y/N] ").strip().lower()
            if answer not in ("y", "yes"):
                print("nothing deleted")
                return 1
        for row, text in zip(rows, shown, strict=True):
            store.delete_run(row.run_id)
            where = f"; its files stay in {row.run_dir} on {row.cluster}" if row.run_dir and row.cluster else ""
            print(f"deleted {text}{where}")
    return 0
