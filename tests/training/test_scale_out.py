"""Accelerate's own engines on real gloo processes: FSDP2, DeepSpeed ZeRO-2, DDP, world-size changes.

The recipes run unchanged through ``accelerate launch --config_file configs/accelerate/<engine>.yaml``.
FSDP and DeepSpeed need an accelerator in Accelerate, so those runs put ``tests/helpers/fsdp_on_cpu`` on
the path (Accelerate's real FSDP/DeepSpeed code, switched on for CPU processes); the library never needs it.

One single-process GPT-2 run is the reference (AdamW with epsilon 1 behaves like SGD here, so summation-order
differences between engines are not amplified by Adam's normalisation of tiny gradients): the same global batch (4 sequences x 2 micro-batches) on
two processes under any engine must give the same losses and weights, and a resume on another number of
processes must continue with the same examples.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.helpers.launch import REPO_ROOT, accelerate_launch, error_lines, run

pytestmark = pytest.mark.multiprocess

NO_DROPOUT = "resid_pdrop=0,embd_pdrop=0,attn_pdrop=0"
STEPS = 4


def gpt_args(tokenizer_dir: Path, output_dir: Path, batch_size: int, *extra: str) -> list[str]:
    return ["--tokenizer_name", str(tokenizer_dir), "--model_size", "tiny", "--config_overrides", NO_DROPOUT,
            "--max_seq_length", "32", "--per_device_train_batch_size", str(batch_size),
            "--gradient_accumulation_steps", "2", "--max_steps", str(STEPS), "--logging_steps", "1",
            "--learning_rate", "0.5", "--adam_epsilon", "1.0", "--lr_scheduler_type", "constant",
            "--checkpointing_steps", "2",
            "--save_total_limit", "3", "--validation_split_documents", "8", "--max_eval_batches", "0",
            "--output_dir", str(output_dir), *extra]


def losses(output_dir: Path) -> dict[int, float]:
    records = [json.loads(line) for line in open(output_dir / "metrics.jsonl", encoding="utf-8")]
    return {r["step"]: r["loss"] for r in records if "loss" in r}


def assert_same_weights(a: Path, b: Path, exact: bool = False) -> None:
    one, two = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert one.keys() == two.keys()
    for key in one:
        if exact:
            assert torch.equal(one[key], two[key]), key
        else:
            torch.testing.assert_close(two[key], one[key], rtol=1e-5, atol=1e-6)


def continue_from(source: Path, step: int, target: Path) -> None:
    """A copy of ``source``'s checkpoint ``step`` (and nothing later) in a fresh output dir."""
    shutil.copytree(source / "checkpoints" / f"step_{step}", target / "checkpoints" / f"step_{step}")


@pytest.fixture(scope="module")
def reference(tokenizer_dir, tmp_path_factory) -> Path:
    """One process, batch 4, 2 micro-batches per step, checkpoints at steps 2 and 4."""
    out = tmp_path_factory.mktemp("single") / "out"
    run([sys.executable, str(REPO_ROOT / "recipes" / "gpt_clm.py"), *gpt_args(tokenizer_dir, out, 4)])
    return out


@pytest.fixture(scope="module")
def fsdp2_run(tokenizer_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("fsdp2") / "out"
    result = accelerate_launch("fsdp2", "gpt_clm.py", gpt_args(tokenizer_dir, out, 2), fsdp_on_cpu=True)
    assert "2 processes, FSDP2" in result.stderr
    return out


def test_fsdp2_trains_like_one_process_with_accumulation_and_exports_stock_weights(reference, fsdp2_run):
    ref, fsdp = losses(reference), losses(fsdp2_run)
    assert list(ref) == list(fsdp) == [1, 2, 3, 4]
    for step in ref:
        assert fsdp[step] == pytest.approx(ref[step], rel=1e-5)
    assert_same_weights(reference, fsdp2_run)
    # Sharded checkpoints (torch.distributed.checkpoint), verified like every other one.
    assert (fsdp2_run / "checkpoints" / "step_2" / "pytorch_model_fsdp_0").is_dir()
    results = json.load(open(fsdp2_run / "all_results.json"))
    assert results["global_step"] == STEPS and "eval_loss" in results


def test_fsdp2_resume_is_bitwise(fsdp2_run, tokenizer_dir, tmp_path):
    out = tmp_path / "out"
    continue_from(fsdp2_run, 2, out)
    accelerate_launch("fsdp2", "gpt_clm.py", gpt_args(tokenizer_dir, out, 2, "--resume_from_checkpoint", "latest"),
                      fsdp_on_cpu=True)
    assert_same_weights(fsdp2_run, out, exact=True)
    assert losses(out) == losses(fsdp2_run)


def test_fsdp2_resume_on_one_process_reshards_and_continues_with_the_same_examples(reference, fsdp2_run,
                                                                                   tokenizer_dir, tmp_path):
    out = tmp_path / "out"
    continue_from(fsdp2_run, 2, out)
    result = accelerate_launch("fsdp2", "gpt_clm.py",
                               gpt_args(tokenizer_dir, out, 4, "--resume_from_checkpoint", "latest"),
                               launcher_args=["--num_processes", "1", "--mixed_precision", "no"], fsdp_on_cpu=True)
    assert "saved by 2 processes, on 1" in result.stderr
    ref, resumed = losses(reference), losses(out)
    for step in (3, 4):  # the same global batches: the same examples, in the same steps
        assert resumed[step] == pytest.approx(ref[step], rel=1e-5)
    assert_same_weights(reference, out)


def test_ddp_resume_on_two_processes_from_a_one_process_checkpoint(reference, tokenizer_dir, tmp_path):
    out = tmp_path / "out"
    continue_from(reference, 2, out)
    # configs/accelerate/ddp.yaml as shipped for GPUs; without one its processes run DDP on gloo.
    result = accelerate_launch("ddp", "gpt_clm.py", gpt_args(tokenizer_dir, out, 2, "--resume_from_checkpoint", "latest"))
    assert "saved by 1 process, on 2" in result.stderr
    ref, resumed = losses(reference), losses(out)
    for step in (3, 4):
        assert resumed[step] == pytest.approx(ref[step], rel=1e-5)
    assert_same_weights(reference, out)


@pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None, reason="deepspeed is not installed")
def test_deepspeed_zero2_steps_once_per_accumulation_window(reference, tokenizer_dir, tmp_path):
    """The engine steps inside backward: without the loop telling it the window, it would take 2 optimizer
    steps per hfssl step (the loop also checks engine.global_steps against its own count)."""
    out = tmp_path / "out"
    result = accelerate_launch("deepspeed_zero2", "gpt_clm.py", gpt_args(tokenizer_dir, out, 2), deepspeed_on_cpu=True)
    assert "2 processes, DeepSpeed ZeRO-2" in result.stderr
    ref, ds = losses(reference), losses(out)
    for step in ref:
        assert ds[step] == pytest.approx(ref[step], rel=1e-5)
    assert_same_weights(reference, out)


def test_bert_fsdp2_wraps_layers_not_the_tied_embeddings(tmp_path):
    """BertForPreTraining's decoder is tied to its word embeddings; transformers' _no_split_modules lists
    BertEmbeddings, which FSDP cannot wrap apart from the decoder. The library wraps the layers itself."""
    out = tmp_path / "out"
    result = accelerate_launch("fsdp2", "bert_mlm.py",
                               ["--model_size", "tiny", "--max_steps", "3", "--eval_steps", "2", "--max_eval_batches", "2",
                                "--checkpointing_steps", "2", "--per_device_train_batch_size", "8",
                                "--output_dir", str(out)], fsdp_on_cpu=True)
    assert "reloads with AutoModelForPreTraining" in result.stderr and "fill-mask:" in result.stdout
    from transformers import AutoModelForPreTraining

    model = AutoModelForPreTraining.from_pretrained(out)
    assert model.cls.predictions.decoder.weight.data_ptr() == model.bert.embeddings.word_embeddings.weight.data_ptr()
    assert (out / "checkpoints" / "step_2" / "pytorch_model_fsdp_0").is_dir()


def test_vit_fsdp2_evaluates_and_runs_the_knn_monitor(tmp_path):
    """The kNN monitor runs the bare backbone outside the training forward: under FSDP on a plain copy of the
    gathered weights (before, rank 0 waited in all_gather while rank 1 waited in all_reduce)."""
    out = tmp_path / "out"
    accelerate_launch("fsdp2", "vit_pretext.py",
                      ["--max_steps", "2", "--eval_steps", "1", "--max_eval_batches", "2", "--knn_monitor_samples", "64",
                       "--checkpointing_steps", "0", "--per_device_train_batch_size", "16", "--output_dir", str(out)],
                      fsdp_on_cpu=True)
    evals = [json.loads(line) for line in open(out / "metrics.jsonl") if "eval_loss" in line]
    assert [r["step"] for r in evals] == [1, 2]
    assert all(0.0 <= r["eval_knn_accuracy"] <= 1.0 for r in evals)


def test_an_fsdp_config_on_a_cpu_only_machine_is_refused_not_downgraded(tmp_path):
    result = accelerate_launch("fsdp2", "gpt_clm.py", ["--max_steps", "2", "--output_dir", str(tmp_path / "out")],
                               check=False)
    assert result.returncode != 0
    lines = set(error_lines(result.stderr))  # each rank says the same line
    assert len(lines) == 1, result.stderr
    lines = sorted(lines)
    assert "asks for FSDP2" in lines[0] and "fall back to DDP" in lines[0] and "cpu_2proc.yaml" in lines[0]
    assert not (tmp_path / "out" / "checkpoints").exists()


def test_a_multi_cpu_config_that_starts_one_process_is_reported(tmp_path):
    config = tmp_path / "multi_cpu.yaml"
    config.write_text("compute_environment: LOCAL_MACHINE\ndistributed_type: MULTI_CPU\nnum_machines: 1\n"
                      "num_processes: 2\nmachine_rank: 0\nmixed_precision: 'no'\nuse_cpu: true\n")
    from tests.helpers.launch import ACCELERATE, launch_env

    result = run([ACCELERATE, "launch", "--config_file", str(config), str(REPO_ROOT / "recipes" / "gpt_clm.py"),
                  "--max_steps", "2", "--output_dir", str(tmp_path / "out")], env=launch_env(), check=False)
    assert result.returncode != 0
    lines = error_lines(result.stderr)
    assert len(lines) == 1 and "started only one" in lines[0] and "MULTI_GPU with use_cpu" in lines[0], result.stderr
