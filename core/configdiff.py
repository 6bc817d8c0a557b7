"""Config diff for the compare view: flatten configs to dotted paths, then line them up side by side.

Pure logic (no Qt): the compare view only renders the rows computed here.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any


class _Missing:
    """A path that one config does not have (shown as an empty cell, and always a difference)."""

    def __repr__(self) -> str:
        return "MISSING"


MISSING: Any = _Missing()


def flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{dotted.path: leaf value}. Nested mappings are walked; lists and scalars are leaves (a list of hosts
    is one setting, and comparing it element by element would report shifted indices as differences).
    An empty mapping is kept as a leaf so that its presence still shows."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        path = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, Mapping) and value:
            out.update(flatten(value, path))
        else:
            out[path] = value
    return out


@dataclass(frozen=True)
class DiffRow:
    path: str
    values: tuple[Any, ...]  # one per config, MISSING where a config lacks the path
    differs: bool


def _canonical(value: Any) -> str:
    if value is MISSING:
        return "\0missing"
    return json.dumps(value, sort_keys=True, default=str)


def diff(configs: Sequence[Mapping[str, Any]], differences_only: bool = False) -> list[DiffRow]:
    """One row per dotted path present in any config, sorted by path; `differs` when the configs disagree
    (a missing path counts as a difference). With differences_only, only those rows."""
    flats = [flatten(c) for c in configs]
    paths = sorted(set().union(*flats)) if flats else []
    rows = []
    for path in paths:
        values = tuple(f.get(path, MISSING) for f in flats)
        differs = len({_canonical(v) for v in values}) > 1
        if differs or not differences_only:
            rows.append(DiffRow(path, values, differs))
    return rows


def format_value(value: Any) -> str:
    """A cell's text: '' for a missing path, JSON for lists and mappings, str for scalars."""
    if value is MISSING:
        return ""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(value, default=str)
    return str(value)
