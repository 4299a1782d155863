#!/usr/bin/env bash
# The environment of benchmarks/vision_peer.py's peer: lightly 1.6 in its own virtualenv, .venv-peer (git-ignored).
#
# lightly needs torchvision; torchvision from PyPI would make transformers switch its image processors to a
# torchvision backend inside hfssl's own .venv, so it never goes there. lightly 1.6 installs beside torch 2.13.0
# with torchvision pinned to 0.28.0 (an unpinned torchvision pulls another torch). hfssl is installed too
# (editable, with .venv's pins from constraints.txt): the peer trains the same transformers ViT on the same
# image stream. Idempotent: a second run only checks.
set -euo pipefail
cd "$(dirname "$0")/.."
PEER=.venv-peer
if [ ! -x "$PEER/bin/python" ]; then
    # The interpreter .venv was made from, so both environments run the same Python.
    BASE=$(.venv/bin/python -c 'import sys; print(sys.base_prefix)')/bin/python3
    "$BASE" -m venv "$PEER"
fi
if ! "$PEER/bin/python" -c 'import lightly, torchvision, hfssl' 2>/dev/null; then
    "$PEER/bin/pip" install --quiet "torch==2.13.0" "torchvision==0.28.0" "lightly==1.6.*"
    grep -v -i -E '^(torch|torchvision)==' constraints.txt > "$PEER/constraints.txt"
    "$PEER/bin/pip" install --quiet -e . -c "$PEER/constraints.txt"
fi
if ! "$PEER/bin/python" -c 'import torchvision' 2>/dev/null; then
    # torchvision's wheel on PyPI is linked against PyPI's (CUDA) torch build; a local CPU-only torch wheel, which
    # pip prefers when a wheel cache offers "torch 2.13.0+cpu", cannot load its operators ("torchvision::nms does
    # not exist"). Take torch from PyPI itself, ignoring local pip configuration (the peer's env only).
    PIP_CONFIG_FILE=/dev/null "$PEER/bin/pip" install --isolated --quiet --index-url https://pypi.org/simple \
        --force-reinstall "torch==2.13.0" "torchvision==0.28.0"
fi
"$PEER/bin/python" -c 'import lightly, torch, torchvision, transformers; print(f"{sys.argv[0] if False else \".venv-peer\"}: lightly {lightly.__version__}, torch {torch.__version__}, torchvision {torchvision.__version__}, transformers {transformers.__version__}")' 2>/dev/null \
    || "$PEER/bin/python" -c 'import lightly, torch, torchvision, transformers; print("lightly", lightly.__version__, "torch", torch.__version__, "torchvision", torchvision.__version__, "transformers", transformers.__version__)'
