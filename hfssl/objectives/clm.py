"""Causal language modelling: predict token t+1 from tokens <= t.

The loss is computed from the backbone's final hidden states in row chunks, each under
activation checkpointing, so at most one chunk of float32 logits (``loss_chunk_size`` x vocab)
is alive at a time instead of the full ``batch x seq x vocab`` tensor a stock
``GPT2LMHeadModel.forward`` would build. With a single chunk no checkpointing is done (nothing
to save, and the LM head is not recomputed).

Packed blocks with ``position_ids`` that restart at each document (``pack_clm(...,
document_boundaries=True)``) keep documents apart: without a KV cache, transformers turns restarting
position ids into a block-diagonal causal mask, and the first token of a document is not a target.

A backbone trained with a padded vocabulary (``hfssl.models.export.pad_vocab``) is handled here:
logits past ``true_vocab_size(model)`` are masked out, so the loss is the unpadded model's.
The objective never makes the host wait for the device (no ``.item()``, no boolean indexing).
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint
from transformers import GPT2LMHeadModel, PreTrainedModel

from hfssl.models.attention import declare_plain_causal
from hfssl.models.export import true_vocab_size
from hfssl.objectives.base import Objective, ObjectiveOutput

IGNORE_INDEX = -100


def shifted_targets(batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Next-token targets for positions ``0..T-2`` with ``-100`` where there is nothing to predict.

    Targets come from ``labels`` when the batch has them (already ``-100``-masked), else from
    ``input_ids``. Padding (``attention_mask == 0``) is never a target, and neither is the first
    token of a packed document (``position_ids == 0``): it has no context from its own document.
    """
    labels = batch["labels"] if "labels" in batch else batch["input_ids"]
    targets = labels[:, 1:]
    invalid = torch.zeros_like(targets, dtype=torch.bool)
    if "attention_mask" in batch:
        invalid |= batch["attention_mask"][:, 1:] == 0
    if "position_ids" in batch:
        invalid |= batch["position_ids"][:, 1:] == 0
    return targets.masked_fill(invalid, IGNORE_INDEX)


def _padded_columns(logits: torch.Tensor, vocab_size: int) -> torch.Tensor:
    return torch.arange(logits.shape[-1], device=logits.device) >= vocab_size


def _chunk_loss(head: torch.nn.Module, hidden: torch.Tensor, targets: torch.Tensor, vocab_size: int | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
    logits = head(hidden).float()
    if vocab_size is not None and logits.shape[-1] > vocab_size:
        # A padded LM head (pad_vocab): -inf gives the extra columns zero probability, so the loss,
        # the argmax and every gradient are the unpadded model's, and the padded rows get no gradient.
        # Masking keeps the fast padded matmul; slicing would hand cross-entropy a strided copy.
        logits = logits.masked_fill(_padded_columns(logits, vocab_size), float("-inf"))
    loss = F.cross_entropy(logits, targets, ignore_index=IGNORE_INDEX, reduction="sum")
    correct = ((logits.argmax(dim=-1) == targets) & (targets != IGNORE_INDEX)).sum()
    return loss, correct


def chunked_lm_loss(head: torch.nn.Module, hidden: torch.Tensor, targets: torch.Tensor, chunk_size: int,
                    vocab_size: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed cross-entropy and number of correct argmax predictions over rows of ``hidden``.

    ``vocab_size`` below the head's output width means the head is padded: only the first
    ``vocab_size`` logits take part.
    """
    rows = hidden.shape[0]
    if rows <= chunk_size:
        return _chunk_loss(head, hidden, targets, vocab_size)
    loss = hidden.new_zeros((), dtype=torch.float32)
    correct = torch.zeros((), dtype=torch.long, device=hidden.device)
    for start in range(0, rows, chunk_size):
        part_loss, part_correct = checkpoint(
            _chunk_loss, head, hidden[start:start + chunk_size], targets[start:start + chunk_size], vocab_size,
            use_reentrant=False,
        )
        loss = loss + part_loss
        correct = correct + part_correct
    return loss, correct


class CausalLMObjective(Objective):
    """Next-token prediction for any ``AutoModelForCausalLM`` backbone (GPT-2, Llama, ...)."""

    model_class: ClassVar[type[PreTrainedModel]] = GPT2LMHeadModel
    primary_term: ClassVar[str] = "loss"
    #: The loop reports ``eval_perplexity = exp(eval_loss)`` for objectives that set this.
    reports_perplexity: ClassVar[bool] = True

    def __init__(self, loss_chunk_size: int = 2048) -> None:
        super().__init__()
        if loss_chunk_size < 1:
            raise ValueError("loss_chunk_size must be positive")
        self.loss_chunk_size = loss_chunk_size

    def target_counts(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {"loss": (shifted_targets(batch) != IGNORE_INDEX).sum()}

    def forward(self, model: PreTrainedModel, batch: dict[str, torch.Tensor]) -> ObjectiveOutput:
        inputs = {k: batch[k] for k in ("attention_mask", "position_ids") if k in batch}
        # The base model (GPT2Model / LlamaModel) returns the final-norm hidden states; the LM
        # head is applied chunk by chunk below instead of on the whole sequence.
        declare_plain_causal("attention_mask" not in batch and "position_ids" not in batch)
        hidden = model.base_model(input_ids=batch["input_ids"], use_cache=False, **inputs).last_hidden_state
        targets = shifted_targets(batch).reshape(-1)
        hidden = hidden[:, :-1].reshape(-1, hidden.shape[-1])
        loss, correct = chunked_lm_loss(model.get_output_embeddings(), hidden, targets, self.loss_chunk_size,
                                        true_vocab_size(model))
        return ObjectiveOutput(loss_sums={"loss": loss}, metric_sums={"loss/accuracy": correct.float()})
