"""How runs are named on screen: one display name per run, unique among the runs shown, safe to print.

Run names are free text (a config's `name`, a rename), so two runs are often both "Tiny demo (CPU)". Every
place that shows a run by name (CLI tables, the Runs page, tab titles, legends) calls `display_names`, which
appends the run id's random suffix to the names that collide, and escapes control characters so that a name
can neither break a table row nor send escape sequences to a terminal.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable
from typing import Any, Protocol

SEPARATOR = " · "
MAX_NAME_CHARS = 200
MAX_TAG_CHARS = 64


class _Named(Protocol):
    run_id: str
    name: str


def printable(text: str) -> str:
    """`text` with control and invisible format characters escaped (\\n, \\t, \\x1b, \\u202e, ...), so that it
    prints on one line as what it is."""
    out = []
    for ch in text:
        if ch == "\\":
            out.append(ch)
        elif ch in "\n\r\t":
            out.append({"\n": "\\n", "\r": "\\r", "\t": "\\t"}[ch])
        elif unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp", "Cs", "Co", "Cn") and ch != "\u200d":
            # controls, bidi overrides and other format characters, separators, surrogates, unassigned
            code = ord(ch)
            out.append(f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}")
        else:
            out.append(ch)
    return "".join(out)


def run_suffix(run_id: str) -> str:
    """The short part of a run id that tells runs apart: its random tail (20261125-203000-1a2b3c -> 1a2b3c)."""
    tail = run_id.rsplit("-", 1)[-1]
    return tail if tail and tail != run_id else run_id[-6:]


def display_names(runs: Iterable[_Named | Any]) -> dict[str, str]:
    """run_id -> the name to show: the run's name made printable, with SEPARATOR + its id's suffix when
    another run in `runs` has the same name (compared case- and space-insensitively, as a reader would);
    the whole id when even the suffixes collide."""
    rows = [(r.run_id, printable((r.name or "").strip()) or r.run_id) for r in runs]
    groups: dict[str, list[str]] = {}
    for run_id, name in rows:
        groups.setdefault(" ".join(name.casefold().split()), []).append(run_id)
    out: dict[str, str] = {}
    for run_id, name in rows:
        group = groups[" ".join(name.casefold().split())]
        if len(group) == 1:
            out[run_id] = name
            continue
        suffixes = [run_suffix(r) for r in group]
        tag = run_suffix(run_id) if suffixes.count(run_suffix(run_id)) == 1 else run_id
        out[run_id] = f"{name}{SEPARATOR}{tag}"
    return out


def display_name(run: _Named | Any, others: Iterable[_Named | Any]) -> str:
    """The display name of one run among `others` (which may include it)."""
    pool = {r.run_id: r for r in others}
    pool[run.run_id] = run
    return display_names(pool.values())[run.run_id]


def clean_name(text: str) -> str:
    """A run name as typed: stripped, one line, no control characters (ValueError says what is wrong)."""
    name = text.strip()
    if not name:
        raise ValueError("a run name cannot be empty")
    bad = sorted({f"U+{ord(c):04X}" for c in name if unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp")
                  and c != "\u200d"})
    if bad:
        raise ValueError(f"a run name cannot contain control or invisible format characters ({', '.join(bad)})")
    if len(name) > MAX_NAME_CHARS:
        raise ValueError(f"a run name is at most {MAX_NAME_CHARS} characters (this one has {len(name)})")
    return name


def clean_tag(text: str) -> str:
    """A tag as typed: stripped, no spaces inside, commas or control characters."""
    tag = text.strip()
    if not tag:
        raise ValueError("a tag cannot be empty")
    if any(c.isspace() or c == "," for c in tag) or not tag.isprintable():
        raise ValueError(f"tag {tag!r}: no spaces, commas or control characters (use - or _ instead)")
    if len(tag) > MAX_TAG_CHARS:
        raise ValueError(f"tag {tag!r} is longer than {MAX_TAG_CHARS} characters")
    return tag
