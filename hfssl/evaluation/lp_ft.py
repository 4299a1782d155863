"""LP-FT (Kumar et al., ICLR 2022): linear-probe the head first, then fine-tune everything from it.

Fine-tuning from a random head sends large, noisy gradients into the pretrained features early on
and distorts them; starting from a probed head (and a lower learning rate) keeps them closer.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from accelerate import Accelerator
from torch.utils.data import DataLoader
from transformers import PreTrainedModel

from hfssl.evaluation.finetune import TrainStats, find_head, train
from hfssl.evaluation.linear_probe import Features, train_head


@dataclass
class LpFtResult:
    probe_losses: list[float]
    probe_head_state: dict[str, torch.Tensor]  # head weights at the end of the probe (CPU copies)
    ft_stats: TrainStats


def head_state(model: PreTrainedModel) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in find_head(model).state_dict().items()}


def lp_ft(model: PreTrainedModel, features: Features, train_loader: DataLoader, accelerator: Accelerator, *,
          regression: bool, lp_epochs: float, lp_learning_rate: float, ft_learning_rate: float,
          num_epochs: float, lp_batch_size: int, seed: int, weight_decay: float = 0.0,
          on_ft_begin: Callable[[PreTrainedModel], None] | None = None, **train_kwargs: Any) -> LpFtResult:
    """Probe ``model``'s head on cached ``features``, then fine-tune all weights at ``ft_learning_rate``.

    ``on_ft_begin`` sees the (unwrapped) model right before the first fine-tuning step.
    """
    losses = train_head(model, features, regression=regression, epochs=lp_epochs, learning_rate=lp_learning_rate,
                        batch_size=lp_batch_size, weight_decay=weight_decay, seed=seed, device=accelerator.device,
                        show_progress=accelerator.is_local_main_process)
    probed = head_state(model)
    stats = train(model, train_loader, accelerator, learning_rate=ft_learning_rate, num_epochs=num_epochs,
                  weight_decay=weight_decay, on_train_begin=on_ft_begin, desc="fine-tune (LP-FT)", **train_kwargs)
    return LpFtResult(losses, probed, stats)
