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


# Paths that are not settings to compare: the run's own label and free text.
NOT_HYPERPARAMETERS = frozenset({"name", "description", "schema_version"})


def differing_paths(configs: Sequence[Mapping[str, Any]], exclude: frozenset[str] = NOT_HYPERPARAMETERS,
                    limit: int | None = None) -> list[str]:
    """Dotted paths whose values differ between the configs (a path some lack counts), in path order, without
    `exclude`: the columns a run table adds so that runs can be told apart by what was changed. Configs that
    are empty (a run with no recorded config) are left out of the comparison."""
    present = [c for c in configs if c]
    if len(present) < 2:
        return []
    paths = [row.path for row in diff(present, differences_only=True) if row.path not in exclude]
    return paths[:limit] if limit is not None else paths


def short_labels(paths: Sequence[str]) -> dict[str, str]:
    """A column title per path: its last part, or as many trailing parts as make it unique among `paths`."""
    out: dict[str, str] = {}
    depth = {p: 1 for p in paths}
    while True:
        labels = {p: ".".join(p.split(".")[-depth[p]:]) for p in paths}
        counts: dict[str, int] = {}
        for label in labels.values():
            counts[label] = counts.get(label, 0) + 1
        clashing = [p for p in paths if counts[labels[p]] > 1 and depth[p] < len(p.split("."))]
        if not clashing:
            out.update(labels)
            return out
        for p in clashing:
            depth[p] += 1


def sort_key(value: Any) -> tuple[int, Any]:
    """Orders a column of config values: numbers by value, then booleans, then text; missing values last."""
    if value is MISSING or value is None:
        return (3, "")
    if isinstance(value, bool):
        return (1, int(value))
    if isinstance(value, (int, float)):
        return (0, float(value))
    return (2, format_value(value).lower())
