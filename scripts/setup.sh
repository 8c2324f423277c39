#!/usr/bin/env bash
# Install leo-tutorial and its dev tools into ./.venv (created if missing, reused otherwise).
#
#   bash scripts/setup.sh            # from the repository root (or anywhere: it finds the root)
#   PYTHON=python3.12 bash scripts/setup.sh
#   TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu bash scripts/setup.sh
#
# Torch is installed first with an explicit "<2.14" bound so pip picks the CPU wheel it can find
# locally instead of downloading a multi-GB CUDA build; the package itself only sets lower bounds.
# On a Linux laptop without a GPU, PyPI's default torch wheel is the CUDA build (with its NVIDIA
# libraries, several GB): set TORCH_INDEX_URL to PyTorch's CPU wheel index (above, about 200 MB)
# to install torch from there instead. Unset (the default), pip uses its usual index.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON="${PYTHON:-python3}"
VENV=".venv"
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1

stage() {  # stage NAME COMMAND...: run a command and report how long it took
    local name="$1"; shift
    local t0=$SECONDS
    echo "==> ${name}"
    "$@"
    echo "==> ${name}: done in $((SECONDS - t0)) s"
}

if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 10))'; then
    echo "error: leo-tutorial needs Python >= 3.10; set PYTHON=/path/to/python3.10+" >&2
    exit 1
fi

if [ -x "$VENV/bin/python" ]; then
    echo "==> reusing existing $VENV"
else
    stage "create $VENV" "$PYTHON" -m venv "$VENV"
fi

stage "upgrade pip" "$VENV/bin/python" -m pip install --quiet --upgrade pip
TORCH_SPEC="torch>=2.2,<2.14"
if [ -n "${TORCH_INDEX_URL:-}" ]; then
    stage "install torch from $TORCH_INDEX_URL" \
        "$VENV/bin/python" -m pip install --quiet --index-url "$TORCH_INDEX_URL" "$TORCH_SPEC"
else
    stage "install torch (CPU)" "$VENV/bin/python" -m pip install --quiet "$TORCH_SPEC"
fi
stage "install leo-tutorial[dev]" "$VENV/bin/python" -m pip install --quiet -e ".[dev]"
