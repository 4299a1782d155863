"""Damaged checkpoints: verified before use, `latest` falls back to the newest intact one, one line otherwise."""

from __future__ import annotations

import json
import os

import pytest
from safetensors.torch import load_file

from hfssl.objectives.clm import CausalLMObjective
from hfssl.training import train
from hfssl.training.checkpoint import CheckpointError, list_checkpoints, verify_checkpoint


def _run(tiny_gpt2, blocks, args):
    return train(objective=CausalLMObjective(), model=tiny_gpt2(), train_loader=blocks(4), args=args)


@pytest.fixture
def two_checkpoints(blocks, tiny_gpt2, train_args):
    """A 4-step run with checkpoints at steps 2 and 4 (kept both)."""
    args = train_args(max_steps=4, checkpointing_steps=2, save_total_limit=3)
    _run(tiny_gpt2, blocks, args)
    assert [s for s, _ in list_checkpoints(args.output_dir)] == [2, 4]
    return args


def _truncate(path: str, keep: int = 100) -> None:
    with open(path, "r+b") as fh:
        fh.truncate(keep)


def _flip_a_byte(path: str) -> None:
    size = os.path.getsize(path)
    with open(path, "r+b") as fh:
        fh.seek(size // 2)
        byte = fh.read(1)
        fh.seek(size // 2)
        fh.write(bytes([byte[0] ^ 0xFF]))


def test_a_fresh_checkpoint_verifies_and_records_every_file(two_checkpoints):
    step_4 = os.path.join(two_checkpoints.output_dir, "checkpoints", "step_4")
    assert verify_checkpoint(step_4) is None
    manifest = json.load(open(os.path.join(step_4, "checkpoint_manifest.json")))["files"]
    assert {"model.safetensors", "optimizer.bin", "scheduler.pt", "rank_0.pt"} <= set(manifest)


@pytest.mark.parametrize("damage, file", [(_truncate, "model.safetensors"), (_flip_a_byte, "optimizer.bin"),
                                          (_truncate, "trainer_state.json"), (os.remove, "rank_0.pt")])
def test_latest_skips_a_damaged_checkpoint_with_one_warning(two_checkpoints, blocks, tiny_gpt2, train_args, capsys,
                                                           damage, file):
    root = os.path.join(two_checkpoints.output_dir, "checkpoints")
    damage(os.path.join(root, "step_4", file))
    assert file in verify_checkpoint(os.path.join(root, "step_4"))
    capsys.readouterr()
    result = _run(tiny_gpt2, blocks, train_args(max_steps=5, checkpointing_steps=0,
                                                resume_from_checkpoint="latest"))
    err = capsys.readouterr().err
    warnings = [line for line in err.splitlines() if "skipping damaged checkpoint" in line]
    assert len(warnings) == 1 and "step_4" in warnings[0] and file in warnings[0], err
    assert "resumed from" in err and "step_2 at step 2" in err
    assert result.global_step == 5
    history = [json.loads(line)["step"] for line in open(os.path.join(two_checkpoints.output_dir, "metrics.jsonl"))]
    assert history == [1, 2, 3, 4, 5]  # steps 3-4 retrained once, never logged twice


def test_resuming_a_damaged_checkpoint_by_path_names_the_file(two_checkpoints, blocks, tiny_gpt2, train_args):
    step_4 = os.path.join(two_checkpoints.output_dir, "checkpoints", "step_4")
    _truncate(os.path.join(step_4, "model.safetensors"))
    with pytest.raises(CheckpointError) as info:
        _run(tiny_gpt2, blocks, train_args(max_steps=5, resume_from_checkpoint=step_4))
    message = str(info.value)
    assert "\n" not in message and "model.safetensors" in message and "100 bytes" in message


def test_every_checkpoint_damaged_is_an_error_not_a_fresh_start(two_checkpoints, blocks, tiny_gpt2, train_args):
    root = os.path.join(two_checkpoints.output_dir, "checkpoints")
    for step in (2, 4):
        _truncate(os.path.join(root, f"step_{step}", "model.safetensors"))
    with pytest.raises(CheckpointError, match="every checkpoint .* is damaged.*--overwrite_output_dir"):
        _run(tiny_gpt2, blocks, train_args(max_steps=5, resume_from_checkpoint="latest"))


def test_latest_without_any_checkpoint_says_it_starts_from_scratch(blocks, tiny_gpt2, train_args, capsys):
    capsys.readouterr()
    result = _run(tiny_gpt2, blocks, train_args(max_steps=2, resume_from_checkpoint="latest"))
    assert result.global_step == 2
    err = capsys.readouterr().err
    assert "no checkpoint in" in err and "starting from scratch" in err


def test_a_killed_save_leaves_no_checkpoint_that_looks_complete(two_checkpoints, blocks, tiny_gpt2, train_args):
    """A temporary directory (the state a kill during a save leaves) is never chosen, and is swept next save."""
    root = os.path.join(two_checkpoints.output_dir, "checkpoints")
    os.rename(os.path.join(root, "step_4"), os.path.join(root, ".tmp-step_6"))
    result = _run(tiny_gpt2, blocks, train_args(max_steps=6, checkpointing_steps=3, resume_from_checkpoint="latest"))
    assert result.global_step == 6
    assert sorted(os.listdir(root)) == ["step_3", "step_6"]  # the temporary dir swept, two kept
    assert load_file(os.path.join(root, "step_6", "model.safetensors"))
