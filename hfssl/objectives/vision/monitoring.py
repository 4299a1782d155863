"""Watching representation quality while pretraining: an online linear probe and collapse statistics.

A pretext loss says how well a model solves its own puzzle, not how useful its features are, and a
collapsed model (every image mapped to the same point) can have a fine-looking loss. SSL codebases
(stable-pretraining's OnlineProbe, solo-learn) therefore train a linear classifier on the *detached*
features of labelled images alongside the pretext task, and watch the spread of the features.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel

from hfssl.objectives.base import Objective, ObjectiveOutput
from hfssl.objectives.vision.base import VisionObjective, count

__all__ = ["OnlineProbe", "feature_spread", "rankme"]


def feature_spread(features: torch.Tensor) -> torch.Tensor:
    """Per-dimension standard deviation of the L2-normalised features, averaged over dimensions and scaled by
    ``sqrt(dim)``: about 1 for features spread over the sphere, 0 when every image gets the same vector
    (the collapse measure of SimSiam/BYOL analyses)."""
    z = F.normalize(features.float(), dim=-1)
    return z.std(dim=0).mean() * math.sqrt(z.shape[-1])


def rankme(features: torch.Tensor, eps: float = 1e-7) -> float:
    """RankMe (Garrido et al., 2023): exp of the entropy of the normalised singular values of the features,
    a smooth effective rank between 1 (collapse to a line or a point) and min(images, dim)."""
    singular = torch.linalg.svdvals(features.float())
    p = singular / (singular.sum() + eps) + eps
    return float(torch.exp(-(p * p.log()).sum()))


class OnlineProbe(Objective):
    """A pretext objective plus a stop-gradient linear probe on the CLS features of labelled images.

    Batches with ``labels`` (image folders with class sub-folders) also get the clean images (resized and
    normalised, no augmentation); their CLS features from the encoder the task exports (``task.encode``: the
    teacher for DINO, MAE's encoder on whole images) are taken without gradient, standardised (a BatchNorm
    without affine parameters) and a linear layer learns the labels from them. Its cross-entropy is a separate loss term ``online_probe`` (it trains only the probe, not
    the backbone); its ``accuracy`` is logged with the training metrics and, on validation images, as
    ``eval_online_probe/accuracy``, a held-out linear-probe curve next to ``eval_knn_accuracy``.
    ``online_probe/feature_spread`` (see :func:`feature_spread`) falls to 0 when the features collapse.
    """

    def __init__(self, task: VisionObjective, num_classes: int) -> None:
        super().__init__()
        self.task = task
        # Standardised features, as the offline probe's: a ViT's CLS features start out nearly identical for
        # every image (tiny differences on a large shared offset), and a bare linear layer at the run's
        # learning rate stayed at chance for 80 steps on the digits where this one reached 29%.
        self.probe = nn.Sequential(nn.BatchNorm1d(task.hidden_size, affine=False),
                                   nn.Linear(task.hidden_size, num_classes))
        self.model_class = task.model_class
        self.primary_term = task.primary_term

    # The task's own interface, for the loop and the recipe.
    def input_tokens(self, batch: dict[str, torch.Tensor]) -> int:
        return self.task.input_tokens(batch)

    def export_backbone(self, backbone: PreTrainedModel) -> PreTrainedModel:
        return self.task.export_backbone(backbone)

    def before_export(self) -> None:
        self.task.before_export()

    def export_example_inputs(self, model: PreTrainedModel) -> Any:
        return self.task.export_example_inputs(model)

    def encode(self, backbone: PreTrainedModel, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.task.encode(backbone, pixel_values)

    def prepare_batch(self, batch: dict[str, torch.Tensor], generator: torch.Generator | None = None
                      ) -> dict[str, torch.Tensor]:
        prepared = self.task.prepare_batch(batch, generator)
        if "labels" in batch:
            prepared["probe_pixel_values"] = self.task.normalize(self.task.to_unit(batch["pixel_values"]))
            prepared["probe_labels"] = batch["labels"]
        return prepared

    def target_counts(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        counts = self.task.target_counts(_task_part(batch))
        if "probe_labels" in batch:
            counts["online_probe"] = count(batch["probe_labels"], batch["probe_labels"].shape[0])
        return counts

    def forward(self, model: PreTrainedModel, batch: dict[str, torch.Tensor]) -> ObjectiveOutput:
        out = self.task(model, _task_part(batch))
        if "probe_labels" not in batch:
            return out
        with torch.no_grad():
            features = self.task.encode(model, batch["probe_pixel_values"]).float()
        logits = self.probe(features)
        labels = batch["probe_labels"]
        n = labels.shape[0]
        return ObjectiveOutput(
            loss_sums={**out.loss_sums, "online_probe": F.cross_entropy(logits, labels, reduction="sum")},
            metric_sums={**out.metric_sums, "online_probe/accuracy": (logits.argmax(-1) == labels).sum(),
                         # Sums normalised by the term's count: n x the batch statistic averages to it.
                         "online_probe/feature_spread": feature_spread(features) * n})


def _task_part(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in batch.items() if not k.startswith("probe_")}
