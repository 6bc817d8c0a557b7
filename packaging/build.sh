#!/usr/bin/env bash
# Build the one-folder desktop app into dist/tunedeck/ and check that it starts.
#
#   bash packaging/build.sh            # uses .venv (or $TUNEDECK_VENV), installs PyInstaller if missing
#
# After the build the packaged binary runs `gui --smoke` offscreen (window shown, then exit 0) and the
# bundle is checked for the training stack (torch/transformers/deepspeed must not be inside).
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
venv=${TUNEDECK_VENV:-$repo/.venv}
py="$venv/bin/python"
[ -x "$py" ] || { echo "build.sh: no Python at $py (run packaging/bootstrap.sh app first)" >&2; exit 2; }

if ! "$py" -c "import PyInstaller" 2>/dev/null; then
    echo "[build] installing PyInstaller (the 'packaging' extra)"
    "$py" -m pip install --quiet -e ".[packaging]"
fi

dist=${TUNEDECK_DIST:-$repo/dist}
work=${TUNEDECK_BUILD:-$repo/build/pyinstaller}
echo "[build] pyinstaller -> $dist/tunedeck"
"$py" -m PyInstaller --noconfirm --log-level WARN --distpath "$dist" --workpath "$work" packaging/tunedeck.spec

app="$dist/tunedeck/tunedeck"
[ -x "$app" ] || { echo "build.sh: the build produced no $app" >&2; exit 1; }

internal="$dist/tunedeck/_internal"
for pkg in torch transformers deepspeed; do
    if [ -e "$internal/$pkg" ]; then
        echo "build.sh: $pkg was bundled ($internal/$pkg): the GUI must not ship the training stack" >&2
        exit 1
    fi
done

echo "[build] smoke run: $app gui --smoke (offscreen)"
smoke_home=$(mktemp -d)
trap 'rm -rf "$smoke_home"' EXIT
if ! QT_QPA_PLATFORM=offscreen TUNEDECK_HOME="$smoke_home" timeout 120 "$app" gui --smoke; then
    echo "build.sh: the built app failed its --smoke run" >&2
    exit 1
fi
du -sh "$dist/tunedeck" | sed 's/^/[build] size: /'
echo "[build] ok: $dist/tunedeck (desktop entry: packaging/tunedeck.desktop, icon: resources/icons/tunedeck.svg)"
