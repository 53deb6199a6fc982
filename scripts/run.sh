#!/usr/bin/env bash
# One entry point for people and CI: sets up everything on a fresh machine, then runs a job.
#   bash scripts/run.sh demo    # install, then run blast detection on the bundled sample
#                               # (opens napari when a display is available, else writes results/)
#   bash scripts/run.sh test    # install (incl. Xvfb + Mesa via apt when missing), then the whole test suite
#   bash scripts/run.sh setup   # only install
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}

setup_python() {
    if [ ! -x "$VENV/bin/python" ]; then
        "$PYTHON" -m venv "$VENV"
    fi
    "$VENV/bin/python" -m pip install --quiet --upgrade pip
    if ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
        echo "Installing napari-hematology downloads about 6 GB (torch with its CUDA libraries); on a machine" \
            "without a GPU, first run: $VENV/bin/pip install torch --index-url https://download.pytorch.org/whl/cpu"
    fi
    "$VENV/bin/python" -m pip install -e ".[testing]"
}

setup_display() {
    local missing=()
    command -v xvfb-run >/dev/null || missing+=(xvfb xauth)
    [ -e /usr/lib/x86_64-linux-gnu/dri/swrast_dri.so ] || [ -e /usr/lib/aarch64-linux-gnu/dri/swrast_dri.so ] \
        || missing+=(libgl1-mesa-dri)
    if [ ${#missing[@]} -eq 0 ] && ldconfig -p | grep -q libxcb-cursor.so.0 && ldconfig -p | grep -q libEGL.so.1; then
        return
    fi
    local sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq \
        xvfb xauth libgl1-mesa-dri libgl1 libegl1 libxkbcommon-x11-0 libxcb-cursor0 libxcb-icccm4 \
        libxcb-image0 libxcb-keysyms1 libxcb-randr0 libxcb-render-util0 libxcb-shape0 libxcb-xinerama0 \
        libxcb-xfixes0 libxcb-xkb1 libdbus-1-3 libfontconfig1 libxrender1 libxi6 >/dev/null
}

case "${1:-demo}" in
    setup)
        setup_python
        ;;
    demo)
        setup_python
        shift || true
        "$VENV/bin/napari-hematology" demo "$@"
        ;;
    test)
        setup_python
        setup_display
        shift || true
        xvfb-run -a -s "-screen 0 1280x1024x24" "$VENV/bin/python" -m pytest -p no:cacheprovider "$@"
        ;;
    *)
        echo "usage: bash scripts/run.sh [demo|test|setup] [extra arguments]" >&2
        exit 2
        ;;
esac
