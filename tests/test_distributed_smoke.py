"""A real 2-process CPU run (torchrun + gloo) through Accelerate."""

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.multiprocess


def test_two_process_gloo_run(tmp_path, repo_root):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(repo_root / "tests" / "helpers" / "dist_smoke.py"), str(tmp_path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**_env(), "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    for r, res in enumerate(results):
        assert res["rank"] == r
        assert res["world_size"] == 2
        assert "MULTI_CPU" in res["distributed_type"]
        assert res["sum"] == 1.0
        assert res["gathered"] == [0.0, 1.0]
    # Inputs were 1s on rank 0 and 2s on rank 1: the averaged gradient is 1.5 on both ranks.
    assert results[0]["grad"] == results[1]["grad"] == [[1.5, 1.5]]


def _env():
    import os

    return dict(os.environ)
