"""Linear probing: freeze the encoder, train only the classification head on cached features.

The features are whatever the model feeds its head (BERT: the pooled [CLS] vector), captured with a
forward pre-hook, so the probe trains exactly the module that fine-tuning would later continue from
(LP-FT). The encoder runs once per dataset in eval mode; its weights are never touched.

The head trains on *standardised* features (zero mean, unit variance per dimension, training statistics),
as probes usually do (scikit-learn's ``StandardScaler`` + logistic regression; hfssl's image probe). Raw
head inputs can share a large common vector with tiny between-example differences (a random-init
pooler; a barely pretrained BERT): a probe on them only ever found the majority class. After training,
the standardisation is folded exactly into the head's input layer (``W / sigma``, ``b - W mu / sigma``),
so the model's own head predicts from raw features what the probe predicted, and LP-FT continues from it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from accelerate import Accelerator
from torch import nn
from torch.utils.data import DataLoader
from transformers import PreTrainedModel, get_scheduler

from hfssl.errors import ConfigError
from hfssl.evaluation.finetune import find_head, param_groups
from hfssl.logging import get_logger, progress_bar

logger = get_logger(__name__)


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

    A head on a pooled vector (BERT) gets that vector. A head applied to the whole sequence keeps one token's
    vector: the first (RoBERTa) or the last non-padding one (GPT-2, Llama), whichever reproduces the model's
    own logits on the first batch. Every process computes all features (the probe itself is tiny, so each
    rank trains an identical copy of it instead of synchronising), hence ``loader`` must not be prepared/sharded.
    """
    head = find_head(model)
    captured: list[torch.Tensor] = []
    handle = head.register_forward_pre_hook(lambda _m, args: captured.append(args[0].detach()))
    model.to(accelerator.device)
    was_training = model.training
    model.eval()
    chunks, labels = [], []
    selection: str | None = None
    try:
        for batch in progress_bar(loader, desc=desc, disable=not accelerator.is_local_main_process, leave=False):
            batch = {k: v.to(accelerator.device) for k, v in batch.items()}
            with accelerator.autocast():
                logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
            x = captured.pop().float()
            if x.ndim == 3:
                if selection is None:
                    selection = _token_selection(model, head, x, logits.float(), batch)
                x = x[:, 0] if selection == "first" else x[torch.arange(x.shape[0]), _last_tokens(model, batch, x)]
            chunks.append(x.cpu())
            labels.append(batch["labels"].cpu())
    finally:
        handle.remove()
        model.train(was_training)
    return Features(torch.cat(chunks), torch.cat(labels), selection == "first")


def _last_tokens(model: PreTrainedModel, batch: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """Index of each row's last non-padding token, as transformers' decoder classifiers pick it."""
    pad = getattr(model.config, "pad_token_id", None)
    if pad is None or "input_ids" not in batch:
        return torch.full((x.shape[0],), x.shape[1] - 1, device=x.device)
    positions = torch.arange(x.shape[1], device=x.device)
    return (positions * (batch["input_ids"] != pad).to(torch.long)).argmax(-1)


def _token_selection(model: PreTrainedModel, head: nn.Module, x: torch.Tensor, logits: torch.Tensor,
                     batch: dict[str, torch.Tensor]) -> str:
    """``"first"`` (RoBERTa-style: the head reads token 0) or ``"last"`` (GPT-2-style: the model keeps the
    head's output at the last non-padding token), checked against the model's own logits."""
    def matches(output: torch.Tensor) -> bool:
        return output.shape == logits.shape and torch.allclose(output.float(), logits, atol=1e-4, rtol=1e-3)

    was_training = head.training
    head.eval()
    try:
        if matches(head(x[:, :1])):
            return "first"
        if matches(head(x[torch.arange(x.shape[0]), _last_tokens(model, batch, x)])):
            return "last"
    finally:
        head.train(was_training)
    raise ConfigError(f"the head of {type(model).__name__} combines several tokens of the sequence; linear probing "
                      "(and LP-FT) on cached features needs a head on a pooled vector, the first token or the last "
                      "token; use --mode finetune")


def feature_stats(inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-dimension mean and standard deviation of ``inputs`` (N, dim); constant dimensions get std 1."""
    x = inputs.float()
    std = x.std(dim=0) if x.shape[0] > 1 else torch.ones(x.shape[1])
    # A constant dimension carries nothing; dividing by ~0 would only amplify rounding noise.
    return x.mean(dim=0), torch.where(std > 1e-6, std, torch.ones_like(std))


def input_layer(head: nn.Module, example: torch.Tensor) -> nn.Linear | None:
    """The ``nn.Linear`` that reads the head's input unchanged (BERT: the head itself; RoBERTa: ``dense``).

    Found by running the head once (eval mode) and recording which Linear first sees exactly the input
    (or its first token); None when the head transforms its input before any Linear.
    """
    if isinstance(head, nn.Linear):
        return head
    seen: list[tuple[nn.Linear, torch.Tensor]] = []
    hooks = [m.register_forward_pre_hook(lambda mod, args: seen.append((mod, args[0])))
             for m in head.modules() if isinstance(m, nn.Linear)]
    was_training = head.training
    head.eval()
    try:
        with torch.no_grad():
            head(example)
    finally:
        for hook in hooks:
            hook.remove()
        head.train(was_training)
    if not seen:
        return None
    layer, received = seen[0]
    flat = example[:, 0] if example.ndim == 3 and received.ndim == 2 else example
    return layer if received.shape == flat.shape and torch.equal(received, flat) else None


@torch.no_grad()
def fold_standardisation(layer: nn.Linear, mean: torch.Tensor, std: torch.Tensor) -> None:
    """Make ``layer(x)`` equal what it computed on ``(x - mean) / std``: ``W' = W / std``, ``b' = b - W' mean``."""
    weight = layer.weight / std.to(layer.weight)
    layer.weight.copy_(weight)
    shift = weight @ mean.to(weight)
    if layer.bias is None:
        layer.bias = nn.Parameter(-shift)
    else:
        layer.bias.sub_(shift)


def train_head(model: PreTrainedModel, features: Features, *, regression: bool, epochs: float, learning_rate: float,
               batch_size: int, weight_decay: float = 0.0, seed: int = 0, device: torch.device | str = "cpu",
               show_progress: bool = True, desc: str = "linear probe", standardise: bool = True) -> list[float]:
    """Train ``model``'s head on cached ``features`` with AdamW and linear decay; returns per-epoch losses.

    Only head parameters get gradients; the encoder is not run at all, so it stays bit-for-bit unchanged.
    The head runs in eval mode (no dropout): with fixed features this is plain (logistic) regression.
    With ``standardise`` (the default) it trains on standardised features and the standardisation is then
    folded into the head's input layer, so afterwards the head takes raw features like before.
    """
    head = find_head(model).to(device)
    head.eval()
    inputs, labels = features.inputs.to(device).float(), features.labels.to(device)

    def shaped(x: torch.Tensor) -> torch.Tensor:
        return x.unsqueeze(1) if features.first_token else x

    layer = None
    mean = torch.zeros(inputs.shape[1], device=device)
    std = torch.ones(inputs.shape[1], device=device)
    if standardise:
        layer = input_layer(head, shaped(inputs[:2]))
        if layer is None:
            logger.warning("%s: no linear layer reads the head's input directly; probing on raw features",
                           type(head).__name__)
        else:
            mean, std = (t.to(device) for t in feature_stats(inputs))
    params = list(head.parameters())
    optimizer = torch.optim.AdamW(param_groups(head, weight_decay, only=params), lr=learning_rate)
    n = len(features)
    steps_per_epoch = math.ceil(n / batch_size)
    total_steps = max(1, math.ceil(epochs * steps_per_epoch))
    scheduler = get_scheduler("linear", optimizer, num_warmup_steps=0, num_training_steps=total_steps)
    generator = torch.Generator().manual_seed(seed)
    epoch_losses: list[float] = []
    step = 0
    bar = progress_bar(total=total_steps, desc=desc, disable=not show_progress, leave=False)
    while step < total_steps:
        order = torch.randperm(n, generator=generator).to(device)
        total, seen = 0.0, 0
        for start in range(0, n, batch_size):
            idx = order[start:start + batch_size]
            logits = head(shaped((inputs[idx] - mean) / std))
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
    if layer is not None:
        fold_standardisation(layer, mean, std)
    return epoch_losses
