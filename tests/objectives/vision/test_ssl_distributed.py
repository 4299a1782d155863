"""The cross-rank parts of the vision SSL tasks in real processes (torchrun + gloo): MoCo v3's gathered keys,
SwAV's distributed Sinkhorn, DINO's all-reduced centre, exemplar's shared bank, the EMA on FSDP2 shards."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.multiprocess

REPO = Path(__file__).resolve().parents[3]


def test_cross_rank_pieces_equal_their_global_batch_references(tmp_path: Path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone",
                           str(REPO / "tests" / "helpers" / "ssl_distributed_worker.py"), str(tmp_path)],
                          capture_output=True, text=True, timeout=300, env=env, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    # MoCo v3: each rank's loss covers its own queries against every rank's keys; summed, the global loss.
    assert sum(r["moco_loss"] for r in ranks) == pytest.approx(ranks[0]["moco_full"], rel=1e-5)
    for r in ranks:
        assert r["moco_grad"] < 1e-5
        assert r["sinkhorn"] < 1e-5                  # the codes of the whole batch, queue counted once
        assert r["center"] < 1e-6                    # the centre follows the global mean
        assert r["bank_agree"] == 0.0 and r["bank_rows_written"] == 6  # both ranks' rows, on both ranks
        assert r["sharded"] and r["fsdp_ema"] < 1e-6  # EMA on DTensor shards == the unsharded EMA
