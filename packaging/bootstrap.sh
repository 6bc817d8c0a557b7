#!/usr/bin/env bash
# Set up TuneDeck on a fresh Debian/Ubuntu machine and either start the app or run the tests.
#
#   bash packaging/bootstrap.sh app    # venv + training stack (CPU) + Qt libs, then the app with the demo
#   bash packaging/bootstrap.sh test   # the same + test tools and the test daemons' packages, then pytest
#
# Idempotent: a second run reuses .venv and installs only what is missing. Python >= 3.11 is required.
set -euo pipefail

mode=${1:-}
shift || true
case "$mode" in app|test) ;; *) echo "usage: bash packaging/bootstrap.sh app|test [pytest args...]" >&2; exit 2 ;; esac

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
venv=${TUNEDECK_VENV:-$repo/.venv}
python=${PYTHON:-python3}

say() { printf '\033[1m[tunedeck]\033[0m %s\n' "$*"; }

# --- Debian packages -------------------------------------------------------------------------------
# Qt needs these shared libraries even offscreen; a real window under X also needs the xcb set.
qt_libs="libgl1 libegl1 libxkbcommon0 libfontconfig1 libdbus-1-3 libglib2.0-0 libx11-xcb1 libxkbcommon-x11-0
 libxcb-cursor0 libxcb-glx0 libxcb-icccm4 libxcb-image0 libxcb-keysyms1 libxcb-randr0 libxcb-render-util0
 libxcb-render0 libxcb-shape0 libxcb-shm0 libxcb-sync1 libxcb-util1 libxcb-xfixes0 libxcb-xkb1"
# g++ and the Python headers: DeepSpeed compiles a small CPU op just in time on first use.
# bubblewrap: the evaluation sandbox's isolation for an ordinary user (without it, TuneDeck uses its own
# user namespaces where the kernel allows them, and refuses to run model code where it does not).
base_pkgs="python3-venv python3-dev g++ git procps bubblewrap $qt_libs"
# Test-only: real sshd + single-node Slurm on loopback, shellcheck for the rendered scripts, Xvfb for screenshots,
# bubblewrap for the sandbox's ordinary-user path (the suite also covers the path without it); iproute2 and pdsh
# for the several-node cluster in network namespaces (DeepSpeed's multi-node launcher uses pdsh).
test_pkgs="openssh-server openssh-client slurm-wlm slurm-client munge shellcheck xvfb xauth iproute2 pdsh"

pkgs=$base_pkgs
[ "$mode" = test ] && pkgs="$pkgs $test_pkgs"
missing=()
for p in $pkgs; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  if command -v apt-get >/dev/null; then
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    say "installing Debian packages: ${missing[*]}"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  else
    say "warning: not a Debian/Ubuntu system; make sure these are installed: ${missing[*]}"
  fi
fi

# --- Python environment ----------------------------------------------------------------------------
if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
  echo "TuneDeck needs Python >= 3.11 (found $("$python" --version 2>&1)); set PYTHON=/path/to/python3.11" >&2
  exit 1
fi
if [ ! -x "$venv/bin/python" ]; then
  say "creating $venv"
  "$python" -m venv "$venv"
fi
pip=("$venv/bin/python" -m pip --disable-pip-version-check -q)
extras="train"
[ "$mode" = test ] && extras="train,test"
stamp="$venv/.tunedeck-installed-$mode"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  say "installing TuneDeck [$extras] into $venv"
  "${pip[@]}" install --upgrade pip
  # torch pinned in the same command: an unpinned torch (also when deepspeed or accelerate ask for it)
  # pulls a multi-GB CUDA build. 2.13.0 resolves to the CPU build here.
  "${pip[@]}" install "torch==2.13.0" -e ".[$extras]"
  touch "$stamp"
fi
export PATH="$venv/bin:$PATH"

if [ "$mode" = app ]; then
  if [ -z "${DISPLAY:-}" ] && [ -z "${WAYLAND_DISPLAY:-}" ]; then
    say "no display found: checking that the app starts (offscreen), then running the demo on the command line"
    QT_QPA_PLATFORM=offscreen tunedeck gui --smoke
    exec tunedeck demo "$@"
  fi
  exec tunedeck gui --demo "$@"
fi

# --- tests -----------------------------------------------------------------------------------------
# Benchmark data (MBPP, MBPP+, HumanEval+) is read from ../shared/data when present; tests that need it
# skip, saying why, where it is absent. `tunedeck data download` fetches it for users.
if [ -z "${TUNEDECK_BENCH_DATA:-}" ] && [ -d "$repo/../shared/data" ]; then
  export TUNEDECK_BENCH_DATA="$repo/../shared/data"
fi
export TORCH_EXTENSIONS_DIR=${TORCH_EXTENSIONS_DIR:-$repo/.cache/torch_extensions}
export PYTHONWARNINGS=${PYTHONWARNINGS:-ignore::FutureWarning}
say "running the tests"
exec "$venv/bin/python" -m pytest tests -p no:cacheprovider --timeout=900 "$@"
