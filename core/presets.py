"""Presets: complete run configs shipped in resources/presets/, one YAML file each."""

from __future__ import annotations

from pathlib import Path

import yaml

from core.config import RunConfig, load_config
from resources import PRESETS_DIR


class PresetError(LookupError):
    pass


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESETS_DIR.glob("*.yaml"))


def preset_path(name: str) -> Path:
    path = PRESETS_DIR / f"{name}.yaml"
    if not path.is_file():
        raise PresetError(f"unknown preset {name!r}; available: {', '.join(preset_names())}")
    return path


def load_preset(name: str) -> RunConfig:
    return load_config(preset_path(name))


def preset_summary(name: str) -> str:
    """The preset's one-line description (its first comment line), for `tunedeck presets` and the GUI."""
    text = preset_path(name).read_text(encoding="utf-8")
    first = text.splitlines()[0] if text else ""
    if first.startswith("#"):
        summary = first.lstrip("#").strip()
        prefix = f"Preset {name}:"
        if summary.startswith(prefix):
            summary = summary[len(prefix):].strip()
        if summary:
            return summary
    data = yaml.safe_load(text) or {}
    return str(data.get("name") or name)
