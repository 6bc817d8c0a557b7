"""The packaged app: PyInstaller builds the one-folder app from packaging/tunedeck.spec, the built binary passes
`gui --smoke`, and neither the bundle nor the running GUI holds the training stack."""

from __future__ import annotations

import configparser
import os
import shutil
import subprocess

import pytest

from app.gui.app import APP_NAME


@pytest.mark.slow
def test_built_app_starts_with_smoke_and_ships_no_training_stack(repo_root, tmp_path):
    pytest.importorskip("PyInstaller", reason="PyInstaller is not installed (the 'packaging' extra)")
    if shutil.which("bash") is None:
        pytest.skip("bash is needed for packaging/build.sh")
    env = dict(os.environ, TUNEDECK_DIST=str(tmp_path / "dist"), TUNEDECK_BUILD=str(tmp_path / "build"),
               QT_QPA_PLATFORM="offscreen")
    build = subprocess.run(["bash", "packaging/build.sh"], cwd=repo_root, env=env, capture_output=True, text=True,
                           timeout=900)
    assert build.returncode == 0, f"{build.stdout[-3000:]}\n{build.stderr[-3000:]}"
    app = tmp_path / "dist" / "tunedeck" / "tunedeck"
    internal = app.parent / "_internal"
    bundled = {p.name.split("-")[0] for p in internal.iterdir()}
    assert not bundled & {"torch", "transformers", "deepspeed"}, sorted(bundled & {"torch", "transformers", "deepspeed"})

    # the built binary, run again from inside: what its GUI process imported
    dump = tmp_path / "modules.txt"
    home = tmp_path / "home"
    run = subprocess.run([str(app), "gui", "--smoke"], env=dict(env, TUNEDECK_HOME=str(home),
                         TUNEDECK_DUMP_MODULES=str(dump)), capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-3000:]
    modules = dump.read_text().split()
    assert "PySide6.QtWidgets" in modules
    assert (internal / "pyqtgraph").is_dir()  # imported once a chart opens (not by the smoke's first window)
    assert [m for m in modules if m.split(".")[0] in ("torch", "transformers", "deepspeed")] == []
    # the CLI side of the same binary works too
    version = subprocess.run([str(app), "--version"], capture_output=True, text=True, timeout=60)
    assert version.returncode == 0 and version.stdout.strip()


def test_desktop_entry_matches_the_window_class_and_has_an_icon(repo_root):
    entry = configparser.ConfigParser(interpolation=None)
    entry.optionxform = str  # keys are case-sensitive in desktop entries
    entry.read(repo_root / "packaging" / "tunedeck.desktop")
    section = entry["Desktop Entry"]
    assert section["Type"] == "Application"
    # Qt's X11 WM_CLASS class is QCoreApplication.applicationName(), which create_app sets to APP_NAME
    assert section["StartupWMClass"] == APP_NAME
    assert section["Icon"] == "tunedeck"
    assert (repo_root / "resources" / "icons" / "tunedeck.svg").read_text().lstrip().startswith(("<svg", "<?xml"))
    assert section["Exec"].split()[-1] == "gui"
