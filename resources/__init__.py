"""Presets, icons and stylesheets shipped with TuneDeck (data files, read through importlib.resources)."""

from pathlib import Path

RESOURCES_DIR = Path(__file__).resolve().parent
PRESETS_DIR = RESOURCES_DIR / "presets"
