"""SimCLR's global negatives across real processes (torchrun + gloo) equal the full-batch NT-Xent."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

pytestmark = pytest.mark.multiprocess

REPO = Path(__file__).resolve().parents[3]


def global_nt_xent(features: torch.Tensor, world: int, temperature: float) -> tuple[torch.Tensor, int]:
    """The reference: one process holding every rank's views; positives stay within each rank's block."""
    z = F.normalize(features, dim=-1)
    n = z.shape[0] // world
    similarity = (z @ z.T / temperature).masked_fill(torch.eye(z.shape[0], dtype=torch.bool), float("-inf"))
    within = torch.arange(n).roll(n // 2)
    positives = torch.cat([within + r * n for r in range(world)])
    loss = F.cross_entropy(similarity, positives, reduction="sum")
    return loss, int((similarity.argmax(-1) == positives).sum())


def test_gathered_loss_and_gradients_equal_the_global_batch(tmp_path: Path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone", str(REPO / "tests" / "helpers" / "contrastive_gather_worker.py"), str(tmp_path)],
                          capture_output=True, text=True, timeout=300, env=env, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    features = torch.randn(12, 5, generator=torch.Generator().manual_seed(0)).requires_grad_()
    loss, correct = global_nt_xent(features, world=2, temperature=0.2)
    loss.backward()
    assert sum(r["loss"] for r in ranks) == pytest.approx(loss.item(), rel=1e-5)
    assert sum(r["correct"] for r in ranks) == correct
    for rank, result in enumerate(ranks):
        torch.testing.assert_close(torch.tensor(result["grad"]), features.grad[rank * 6:(rank + 1) * 6],
                                   rtol=1e-4, atol=1e-6)
        # More negatives than a rank holds alone: the gathered loss differs from the local one.
        assert result["local_loss"] != pytest.approx(result["loss"], rel=1e-3)
