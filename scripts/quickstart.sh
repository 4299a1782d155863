#!/usr/bin/env bash
# Set up (if needed), then pretrain a small GPT-2 on the built-in corpus (a tokenizer is
# trained first) and print a sample. A few minutes on a 2-core CPU. Extra arguments go to
# the recipe, e.g. `scripts/quickstart.sh --max_steps 50`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export TOKENIZERS_PARALLELISM=false
exec .venv/bin/accelerate launch --num_processes 1 --num_machines 1 --mixed_precision no --dynamo_backend no \
    recipes/gpt_clm.py --output_dir runs/quickstart --overwrite_output_dir "$@"
