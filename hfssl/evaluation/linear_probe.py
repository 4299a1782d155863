"""Linear probing: freeze the encoder, train only the classification head on cached features.

The features are whatever the model feeds its head (BERT: the pooled [CLS] vector), captured with a
forward pre-hook, so the probe trains exactly the module that fine-tuning would later continue from
(LP-FT). The encoder runs once per dataset in eval mode; its weights are never touched.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from accelerate import Accelerator
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import PreTrainedModel, get_scheduler

from hfssl.errors import ConfigError
from hfssl.evaluation.finetune import find_head, param_groups


@dataclass
class Features:
    """Head inputs for a dataset. ``first_token``: the head takes a sequence but reads only token 0."""

    inputs: torch.Tensor  # (N, hidden)
    labels: torch.Tensor  # (N,)
    first_token: bool = False

    def __len__(self) -> int:
        return self.labels.shape[0]


@torch.no_grad()
def extract_features(model: PreTrainedModel, loader: DataLoader, accelerator: Accelerator,
                     desc: str = "features") -> Features:
    """Run the frozen model over ``loader`` once and keep what enters its head.

    Every process computes all features (the probe itself is tiny, so each rank trains an identical
    copy of it instead of synchronising), hence ``loader`` must not be prepared/sharded.
    """
    head = find_head(model)
    captured: list[torch.Tensor] = []
    handle = head.register_forward_pre_hook(lambda _m, args: captured.append(args[0].detach()))
    model.to(accelerator.device)
    was_training = model.training
    model.eval()
    chunks, labels = [], []
    first_token: bool | None = None
    try:
        for batch in tqdm(loader, desc=desc, disable=not accelerator.is_local_main_process, leave=False):
            batch = {k: v.to(accelerator.device) for k, v in batch.items()}
            with accelerator.autocast():
                model(**{k: v for k, v in batch.items() if k != "labels"})
            x = captured.pop().float()
            if x.ndim == 3:
                if first_token is None:
                    first_token = _reads_only_first_token(head, x)
                x = x[:, 0]
            chunks.append(x.cpu())
            labels.append(batch["labels"].cpu())
    finally:
        handle.remove()
        model.train(was_training)
    return Features(torch.cat(chunks), torch.cat(labels), bool(first_token))


def _reads_only_first_token(head: torch.nn.Module, x: torch.Tensor) -> bool:
    """RoBERTa-style heads take the whole sequence but use only token 0; cache just that token then."""
    was_training = head.training
    head.eval()
    same = torch.allclose(head(x), head(x[:, :1]), atol=1e-5)
    head.train(was_training)
    if not same:
        raise ConfigError(f"{type(head).__name__} reads more than the first token of the sequence; linear "
                          "probing on cached features supports heads on a pooled vector or the first token")
    return True


def train_head(model: PreTrainedModel, features: Features, *, regression: bool, epochs: float, learning_rate: float,
               batch_size: int, weight_decay: float = 0.0, seed: int = 0, device: torch.device | str = "cpu",
               show_progress: bool = True, desc: str = "linear probe") -> list[float]:
    """Train ``model``'s head on cached ``features`` with AdamW and linear decay; returns per-epoch losses.

    Only head parameters get gradients; the encoder is not run at all, so it stays bit-for-bit unchanged.
    The head runs in eval mode (no dropout): with fixed features this is plain (logistic) regression.
    """
    head = find_head(model).to(device)
    head.eval()
    params = list(head.parameters())
    optimizer = torch.optim.AdamW(param_groups(head, weight_decay, only=params), lr=learning_rate)
    n = len(features)
    steps_per_epoch = math.ceil(n / batch_size)
    total_steps = max(1, math.ceil(epochs * steps_per_epoch))
    scheduler = get_scheduler("linear", optimizer, num_warmup_steps=0, num_training_steps=total_steps)
    generator = torch.Generator().manual_seed(seed)
    inputs, labels = features.inputs.to(device), features.labels.to(device)
    epoch_losses: list[float] = []
    step = 0
    bar = tqdm(total=total_steps, desc=desc, disable=not show_progress, leave=False)
    while step < total_steps:
        order = torch.randperm(n, generator=generator).to(device)
        total, seen = 0.0, 0
        for start in range(0, n, batch_size):
            idx = order[start:start + batch_size]
            x = inputs[idx].unsqueeze(1) if features.first_token else inputs[idx]
            logits = head(x)
            if regression:
                loss = torch.nn.functional.mse_loss(logits.squeeze(-1), labels[idx].float())
            else:
                loss = torch.nn.functional.cross_entropy(logits, labels[idx].long())
            loss.backward()
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            total += loss.item() * len(idx)
            seen += len(idx)
            step += 1
            bar.update(1)
            if step >= total_steps:
                break
        epoch_losses.append(total / seen)
        bar.set_postfix(loss=f"{epoch_losses[-1]:.4f}")
    bar.close()
    return epoch_losses
