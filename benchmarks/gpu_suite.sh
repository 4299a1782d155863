#!/usr/bin/env bash
# The GPU checks of issues 4 and 5 in as few device calls as possible (each stage fits one
# 10-minute call of the device tool; the session has 30 minutes of device time in all).
#
# Here, once:   bash scripts/device_wheels.sh            # datasets/evaluate/pyarrow wheels -> .whl/
# Then, per device call (carry [".whl"]):
#               bash benchmarks/gpu_suite.sh tests        # GPU tests: bf16 + torch.compile correctness
#               bash benchmarks/gpu_suite.sh gpt          # issue 4: GPT-2 124M seq 1024 batch 32 bf16
#               bash benchmarks/gpu_suite.sh gpt_levers   # issue 4: one-chunk loss, CUDA graphs, autotune
#               bash benchmarks/gpu_suite.sh bert         # issue 5: BERT-base seq 128, every contender
#               bash benchmarks/gpu_suite.sh bert512      # issue 5: BERT-base seq 512
#               bash benchmarks/gpu_suite.sh vit          # ViT-B/16 224px SimMIM vs the run_mim.py Trainer path
#               bash benchmarks/gpu_suite.sh fsdp         # issue 12: bf16 FSDP2 vs DDP on every GPU (memory, tokens/s)
#               bash benchmarks/gpu_suite.sh vit_ssl      # issue 13: ViT-S/16 224 px DINO vs lightly, MAE, bf16
#               bash benchmarks/gpu_suite.sh word2vec     # issue 14: word2vec on the GPU vs gensim on the CPUs
# vit_ssl needs lightly + torchvision wheels and word2vec gensim wheels in .whl/ (scripts/device_wheels.sh).
# Every stage writes its log and JSON lines under $OUT (or ./gpu_out without the device tool).
set -uo pipefail
cd "$(dirname "$0")/.."
stage="${1:-tests}"
out="${OUT:-gpu_out}"
mkdir -p "$out"
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TQDM_DISABLE=1
if [ -d .whl ] && ! python3 -c "import datasets" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { echo "wheel install failed" >&2; exit 1; }
  export PYTHONPATH="/tmp/site:$PWD"
else
  export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  python3 -c "import torch, transformers, accelerate, datasets; print('torch', torch.__version__, '| transformers', transformers.__version__, '| accelerate', accelerate.__version__, '| datasets', datasets.__version__)"
} 2>&1 | tee "$out/versions.txt"

bench() {  # name, then train_throughput.py flags; keeps the last (JSON) line in $out/name.json
  local name="$1"; shift
  python3 benchmarks/train_throughput.py "$@" 2>&1 | tee "$out/$name.log" | tail -n 1 > "$out/$name.json"
}

case "$stage" in
  tests)
    python3 -m pytest -q -m gpu -p no:cacheprovider tests 2>&1 | tee "$out/gpu_tests.log" ;;
  gpt)
    bench gpt_124m_seq1024 --recipe gpt --steps 20 --warmup_steps 5 ;;
  gpt_levers)  # which of the levers pays; the winner becomes the recipe default
    bench gpt_one_chunk --recipe gpt --steps 20 --warmup_steps 5 --contenders hfssl_compile --loss_chunk_size 65536
    bench gpt_cudagraphs --recipe gpt --steps 20 --warmup_steps 5 --contenders hfssl_compile \
      --torch_compile_mode reduce-overhead
    bench gpt_autotune --recipe gpt --steps 20 --warmup_steps 5 --contenders hfssl_compile \
      --torch_compile_mode max-autotune-no-cudagraphs ;;
  bert)
    bench bert_base_seq128 --recipe bert --seq_len 128 --steps 20 --warmup_steps 5 ;;
  bert512)
    bench bert_base_seq512 --recipe bert --seq_len 512 --steps 10 --warmup_steps 5 \
      --contenders hfssl_nsp_compile,hfssl_mlm_compile,hf_trainer_compile ;;
  vit)  # 8 decoding workers each side: at 224 px one process decodes only a few hundred images/s
    bench vit_base_224 --recipe vit --steps 20 --warmup_steps 5 --dataloader_num_workers 8 ;;
  fsdp)  # every GPU of the machine: per-rank memory and throughput, then a real recipe run through fsdp2.yaml
    ngpu=$(nvidia-smi -L | wc -l)
    python3 benchmarks/scale_out.py --world_sizes "$ngpu" --steps 10 --batch_size 8 --mixed_precision bf16 2>&1 | tee "$out/scale_out.log" \
      | tail -n 1 > "$out/scale_out.json"
    python3 -m accelerate.commands.launch --config_file configs/accelerate/fsdp2.yaml --num_processes "$ngpu" \
      recipes/gpt_clm.py --model_size base --max_seq_length 1024 --per_device_train_batch_size 16 --max_steps 60 \
      --logging_steps 10 --checkpointing_steps 30 --output_dir /tmp/fsdp_gpt 2>&1 | tee "$out/fsdp_gpt_recipe.log" ;;
  vit_ssl)  # ViT-S/16 224 px bf16, batch 128, 30 timed steps after 5: hfssl vs lightly (DINO), hfssl MAE
    python3 - <<'PY'
import numpy as np, os
from PIL import Image
rng = np.random.default_rng(0)                       # throughput does not depend on content (no sklearn here)
os.makedirs("/tmp/vit_ssl/train/0", exist_ok=True)
for i in range(4096):
    Image.fromarray(rng.integers(0, 256, (224, 224, 3), dtype=np.uint8)).save(f"/tmp/vit_ssl/train/0/{i}.png")
PY
    common="--train_dir /tmp/vit_ssl/train --budget_cpu_s 0 --steps 30 --warmup_steps 5 --model_size small --image_size 224 --patch_size 16 --batch_size 128 --bf16 --num_workers 8"
    for run in "hfssl dino" "lightly dino" "hfssl mae"; do
      set -- $run
      python3 benchmarks/_vision_peer_worker.py --side "$1" --method "$2" --output_dir "$out/vit_ssl_$1_$2" $common \
        2>&1 | tee "$out/vit_ssl_$1_$2.log" | tail -n 1 > "$out/vit_ssl_$1_$2.json"
    done ;;
  word2vec)  # skip-gram on the GPU vs gensim on this box's CPUs; carry 30 Wikipedia shards in .w2v_corpus/
    python3 benchmarks/word2vec_peer.py --train_file .w2v_corpus/wiki_*.gz --contenders hfssl,gensim \
      --hfssl_args "--per_device_train_batch_size 100 --mixed_precision bf16" 2>&1 \
      | tee "$out/word2vec.log" | tail -n 1 > "$out/word2vec.json" ;;
  *)
    echo "unknown stage $stage: tests, gpt, gpt_levers, bert, bert512, vit, fsdp, vit_ssl or word2vec" >&2; exit 2 ;;
esac
