"""The learning-rate schedule: transformers' schedules, with their own arguments through --lr_scheduler_kwargs."""

from __future__ import annotations

import pytest
import torch

from hfssl.config import TrainingArguments
from hfssl.errors import ConfigError
from hfssl.training.optim import build_scheduler


def lrs(args: TrainingArguments, total: int) -> list[float]:
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=args.learning_rate)
    scheduler = build_scheduler(optimizer, args, total)
    out = []
    for _ in range(total):
        out.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return out


def test_warmup_stable_decay_takes_its_arguments_from_the_flag():
    args = TrainingArguments(learning_rate=1.0, warmup_steps=2, lr_scheduler_type="warmup_stable_decay",
                             lr_scheduler_kwargs='{"num_decay_steps": 4, "min_lr_ratio": 0.1}', max_steps=10)
    values = lrs(args, 10)
    assert values[:2] == pytest.approx([0.1, 0.55])   # linear warm-up, from min_lr_ratio
    assert values[2:7] == [1.0] * 5              # the plateau (10 - 2 - 4 steps) and the decay's start
    decay = values[7:]
    assert decay == sorted(decay, reverse=True) and 0.1 < decay[-1] < 1.0   # cosine decay towards min_lr_ratio


def test_cosine_takes_num_cycles():
    base = TrainingArguments(learning_rate=1.0, lr_scheduler_type="cosine", max_steps=8)
    full = TrainingArguments(learning_rate=1.0, lr_scheduler_type="cosine", max_steps=8,
                             lr_scheduler_kwargs='{"num_cycles": 1.0}')
    assert lrs(base, 8) != lrs(full, 8)
    assert lrs(full, 8)[4] == pytest.approx(0.0, abs=1e-9)   # one whole cosine period: zero half-way


@pytest.mark.parametrize("value, message", [("{num_decay_steps: 4}", "must be a JSON object"),
                                            ("[1, 2]", "must be a JSON object")])
def test_malformed_kwargs_are_flag_errors(value: str, message: str):
    with pytest.raises(ValueError, match=message):
        TrainingArguments(lr_scheduler_kwargs=value, max_steps=1)


def test_an_argument_the_schedule_does_not_take_is_a_config_error():
    args = TrainingArguments(lr_scheduler_type="linear", lr_scheduler_kwargs='{"num_decay_steps": 4}', max_steps=5)
    with pytest.raises(ConfigError, match="--lr_scheduler_type 'linear'"):
        lrs(args, 5)
