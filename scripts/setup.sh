#!/usr/bin/env bash
# Create (or reuse) .venv and install hfssl with pinned versions. A second run is a
# no-op when pyproject.toml and constraints.txt have not changed.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${HFSSL_VENV:-.venv}
if [ ! -x "$VENV/bin/python" ]; then
    echo "[setup] creating virtual environment in $VENV"
    "$PY" -m venv "$VENV"
fi
stamp="$VENV/.hfssl-installed"
want=$(cat pyproject.toml constraints.txt | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    exit 0
fi
echo "[setup] installing hfssl and its pinned dependencies into $VENV (first run takes ~2 minutes)"
log="$VENV/install.log"
install() {
    if ! "$VENV/bin/python" -m pip install "$@" >>"$log" 2>&1; then
        tail -n 30 "$log" >&2
        echo "[setup] pip install $* failed; full log in $log" >&2
        exit 1
    fi
}
: >"$log"
install --upgrade pip
# torch first and alone: with the exact pin pip picks the local CPU wheel on
# these machines instead of resolving a multi-GB CUDA build.
install "torch==$(grep -E '^torch==' constraints.txt | cut -d= -f3)"
install -c constraints.txt -e ".[dev]"
echo "$want" > "$stamp"
echo "[setup] done"
