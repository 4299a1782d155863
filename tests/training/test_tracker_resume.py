"""After a resume, TensorBoard shows each step once (the interrupted run's steps past the checkpoint are purged)."""

from __future__ import annotations

import os
import shutil

import pytest

from hfssl.objectives.clm import CausalLMObjective
from hfssl.training import train

pytest.importorskip("tensorboard")


def tensorboard_steps(logdir: str, tag: str) -> list[int]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(logdir)
    accumulator.Reload()
    return [event.step for event in accumulator.Scalars(tag)]


def test_resumed_run_logs_each_step_once_in_tensorboard(blocks, tiny_gpt2, train_args):
    args = train_args(max_steps=4, checkpointing_steps=2, save_total_limit=3, report_to="tensorboard")
    train(objective=CausalLMObjective(), model=tiny_gpt2(), train_loader=blocks(4), args=args)
    logdir = os.path.join(args.output_dir, "runs", "hfssl")
    assert tensorboard_steps(logdir, "loss") == [1, 2, 3, 4]
    # As if the run had been killed after logging step 4 but before checkpointing it.
    shutil.rmtree(os.path.join(args.output_dir, "checkpoints", "step_4"))
    train(objective=CausalLMObjective(), model=tiny_gpt2(), train_loader=blocks(4),
          args=train_args(max_steps=4, checkpointing_steps=2, report_to="tensorboard", resume_from_checkpoint="latest"))
    assert tensorboard_steps(logdir, "loss") == [1, 2, 3, 4]
