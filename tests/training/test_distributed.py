"""A real 2-process (torchrun, gloo) run equals a 1-process run with the same global batch."""

from __future__ import annotations

import json
import os
import subprocess

import pytest
import torch
from safetensors.torch import load_file

NO_DROPOUT = "resid_pdrop=0,embd_pdrop=0,attn_pdrop=0"


def run(command: list[str], timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stderr[-4000:]
    return result


@pytest.mark.multiprocess
def test_two_gloo_processes_match_one_process(python_exe, repo_root, tokenizer_dir, tmp_path):
    def args(output_dir, batch_size: int) -> list[str]:
        # Uneven label masking is not needed here: packed blocks, same global batch of 8 sequences.
        return [str(repo_root / "recipes" / "gpt_clm.py"), "--tokenizer_name", str(tokenizer_dir),
                "--model_size", "tiny", "--config_overrides", NO_DROPOUT, "--max_seq_length", "32",
                "--per_device_train_batch_size", str(batch_size), "--gradient_accumulation_steps", "2",
                "--max_steps", "4", "--logging_steps", "1", "--learning_rate", "0.5", "--adam_epsilon", "1.0",
                "--lr_scheduler_type", "linear", "--warmup_steps", "2", "--checkpointing_steps", "0",
                "--validation_split_documents", "8", "--eval_steps", "2", "--max_eval_batches", "0",
                "--output_dir", str(output_dir)]

    single, double = tmp_path / "one", tmp_path / "two"
    run([python_exe, *args(single, 4)])
    result = run([python_exe, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone",
                  *args(double, 2)])
    assert "2 processes" in result.stderr

    one, two = load_file(single / "model.safetensors"), load_file(double / "model.safetensors")
    for key in one:
        torch.testing.assert_close(two[key], one[key], rtol=1e-5, atol=1e-6)

    def metrics(path):
        return [json.loads(line) for line in open(path / "metrics.jsonl", encoding="utf-8")]

    m1, m2 = metrics(single), metrics(double)
    assert [r["step"] for r in m1] == [r["step"] for r in m2] == [1, 2, 2, 3, 4, 4]
    for a, b in zip(m1, m2):
        for key in ("loss", "eval_loss", "lr", "grad_norm", "accuracy", "eval_tokens"):
            if key in a:
                assert b[key] == pytest.approx(a[key], rel=1e-5), key
    # Sharding exactly once: the 2 ranks together evaluated the same tokens as the single process.
    assert m2[2]["eval_tokens"] == m1[2]["eval_tokens"] > 0
