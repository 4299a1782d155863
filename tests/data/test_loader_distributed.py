"""Two real processes (torchrun + gloo) share one stream through StatefulLoader: every block exactly once."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter

import pytest

from hfssl.data import load_documents, pack_clm

pytestmark = pytest.mark.multiprocess


def test_two_ranks_in_lockstep_see_every_block_once(tmp_path, corpus_texts, bpe_tokenizer, repo_root):
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"text": t}) + "\n" for t in corpus_texts[:40]))
    bpe_tokenizer.save_pretrained(tmp_path / "tok")
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        str(repo_root / "tests" / "data" / "dist_loader_worker.py"), str(corpus), str(tmp_path / "tok"), str(tmp_path),
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(repo_root)}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert ranks[0]["steps"] == ranks[1]["steps"] > 0

    every = [b["input_ids"] for b in pack_clm(load_documents(train_file=[str(corpus)]), bpe_tokenizer, 32)]
    seen = Counter(tuple(b) for r in ranks for b in r["blocks"])
    # No block more often than the source has it, and all of them but the incomplete last global batch (2 x 3).
    assert seen <= Counter(map(tuple, every))
    assert sum(seen.values()) == len(every) // 6 * 6
