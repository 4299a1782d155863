#!/usr/bin/env bash
# Set up (if needed) and run the default test suite plus the linter.
# Extra arguments go to pytest, e.g. `scripts/test.sh -m slow` or `scripts/test.sh tests/data`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
.venv/bin/ruff check hfssl recipes tests benchmarks
.venv/bin/python -m pytest "$@"
