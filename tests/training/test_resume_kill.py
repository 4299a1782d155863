"""Exact resume: SIGKILL a real training process mid-run, resume it, compare with an uninterrupted run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

STEPS = 150
COMPARED = ("step", "loss", "accuracy", "lr", "grad_norm", "epoch", "eval_loss", "eval_perplexity", "eval_accuracy")


def recipe_command(python_exe: str, repo_root: Path, tokenizer_dir: Path, output_dir: Path, *extra: str) -> list[str]:
    # Dropout switched on (the presets have none) so the RNG states must be restored exactly too; the
    # chunk-shuffled stream makes the data position matter. The recipe pads the vocabulary (400 -> 448).
    return [python_exe, str(repo_root / "recipes" / "gpt_clm.py"), "--tokenizer_name", str(tokenizer_dir),
            "--model_size", "tiny", "--max_seq_length", "32", "--per_device_train_batch_size", "4",
            "--max_steps", str(STEPS), "--checkpointing_steps", "10", "--logging_steps", "3",
            "--eval_steps", "50", "--max_eval_batches", "2", "--validation_split_documents", "8",
            "--learning_rate", "1e-3", "--warmup_steps", "10", "--lr_scheduler_type", "cosine",
            "--save_total_limit", "3", "--shuffle_buffer_size", "64", "--output_dir", str(output_dir),
            "--config_overrides", "resid_pdrop=0.1,embd_pdrop=0.1,attn_pdrop=0.1", *extra]


def env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}


def logged(output_dir: Path) -> list[dict]:
    with open(output_dir / "metrics.jsonl", encoding="utf-8") as fh:
        return [{k: r[k] for k in COMPARED if k in r} for r in map(json.loads, fh)]


def test_sigkill_then_resume_reproduces_the_uninterrupted_run_bitwise(python_exe, repo_root, tokenizer_dir,
                                                                      tmp_path):
    reference, interrupted = tmp_path / "reference", tmp_path / "interrupted"
    subprocess.run(recipe_command(python_exe, repo_root, tokenizer_dir, reference), env=env(), check=True,
                   capture_output=True, timeout=300)

    proc = subprocess.Popen(recipe_command(python_exe, repo_root, tokenizer_dir, interrupted), env=env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    first = interrupted / "checkpoints" / "step_10"
    deadline = time.monotonic() + 240
    while not first.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=30) == -signal.SIGKILL
    assert first.exists() and not (interrupted / "all_results.json").exists(), "killed too late to test resume"

    resumed = subprocess.run(recipe_command(python_exe, repo_root, tokenizer_dir, interrupted,
                                            "--resume_from_checkpoint", "latest"),
                             env=env(), capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in resumed.stderr

    expected, actual = load_file(reference / "model.safetensors"), load_file(interrupted / "model.safetensors")
    assert expected.keys() == actual.keys()
    for key in expected:
        assert torch.equal(expected[key], actual[key]), key
    assert logged(interrupted) == logged(reference)
    assert sum("loss" in r for r in logged(reference)) == STEPS // 3
