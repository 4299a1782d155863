"""The objective contract every pretraining task implements.

An objective owns the corruption (``prepare_batch``, on the device) and the loss, never the
backbone: the backbone is a stock transformers class, so the export is a plain
``save_pretrained`` that ``AutoModel`` loads.

Losses are returned as *sums* with the number of targets known up front
(``target_counts``), so the loop can divide by the global count of an accumulation window
across all ranks: accumulating k micro-batches is then exactly one k-times-larger batch.
An objective may have several loss terms (MLM + NSP); each is normalised by its own count
and the terms are added.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import nn
from transformers import PreTrainedModel


@dataclass
class ObjectiveOutput:
    """Per-micro-batch results.

    ``loss_sums[name]`` is the un-normalised sum of the per-target losses of term ``name``
    (float32 scalar). ``metric_sums["<term>/<metric>"]`` are sums normalised later by the
    global count of ``<term>`` (e.g. ``"mlm/accuracy"`` = number of correct predictions).
    """

    loss_sums: dict[str, torch.Tensor]
    metric_sums: dict[str, torch.Tensor] = field(default_factory=dict)


class Objective(nn.Module):
    """Base class. Subclasses set ``model_class`` and implement the three methods."""

    model_class: ClassVar[type[PreTrainedModel]]
    #: Name of the loss term whose count is "tokens" for throughput / perplexity reporting.
    primary_term: ClassVar[str] = "loss"

    def prepare_batch(self, batch: dict[str, torch.Tensor], generator: torch.Generator | None = None
                      ) -> dict[str, torch.Tensor]:
        """Corrupt a collated batch already on the device (masking, rotations...)."""
        return batch

    def target_counts(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Number of loss targets per term in this prepared micro-batch."""
        raise NotImplementedError

    def forward(self, model: PreTrainedModel, batch: dict[str, torch.Tensor]) -> ObjectiveOutput:
        raise NotImplementedError

    def input_tokens(self, batch: dict[str, torch.Tensor]) -> int:
        """Input positions the backbone processes in this batch (throughput across objectives):
        tokens for text; vision objectives count patches."""
        return batch["input_ids"].numel() if "input_ids" in batch else 0
