#!/usr/bin/env bash
# Download, on this (networked) machine, the wheels that the lent GPU machine lacks, into .whl/
# (git-ignored). The GPU image has torch, transformers, accelerate, tokenizers, pyarrow's
# neighbours and pytest, but no datasets/evaluate. benchmarks/gpu_suite.sh installs them there.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .whl
download() {
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .whl "$@"
}
# datasets 5.x needs pyarrow>=24 and fsspec<=2026.9; the image's versions are unknown, so carry both.
download datasets==5.2.0 evaluate==0.4.6 dill==0.4.1 multiprocess==0.70.19 'pyarrow>=24' 'fsspec<=2026.9.0'
# gpu_suite.sh word2vec: gensim (the peer); vit_ssl: lightly and the torchvision of the image's torch (2.11).
download gensim==4.4.0 smart_open==9.0.4 wrapt==2.5.2 sentence-transformers==6.2.0
download 'lightly==1.6.*' torchvision==0.26.0 lightly-utils hydra-core omegaconf antlr4-python3-runtime aenum \
  pytorch-lightning lightning-utilities torchmetrics || echo "lightly wheels incomplete: vit_ssl runs hfssl only" >&2
du -sh .whl
