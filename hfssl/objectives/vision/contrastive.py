"""Contrastive tasks: tell the views of one image apart from those of others.

* SimCLR (``contrastive``): two augmented views, NT-Xent on projected CLS features, negatives from every rank.
* MoCo v3 (``moco_v3``): queries against the keys of a momentum encoder, symmetric InfoNCE.
* Exemplar (``exemplar``): every image its own class, against a memory bank of all images (Wu et al.).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel, ViTConfig

from hfssl.errors import ConfigError, DataError
from hfssl.objectives.vision.base import (
    GatherRows,
    ObjectiveOutput,
    TensorState,
    VisionObjective,
    all_gather_rows,
    correct,
    count,
    is_distributed,
)
from hfssl.objectives.vision.corruptions import two_views, views
from hfssl.objectives.vision.distillation import MomentumPairObjective, check_crop_scale
from hfssl.objectives.vision.heads import default_head_width, mlp

__all__ = ["ContrastiveObjective", "ExemplarObjective", "MocoV3Objective", "nt_xent"]


def nt_xent(features: torch.Tensor, temperature: float, gather: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """SimCLR's NT-Xent over ``2B`` features whose rows ``i`` and ``i + B`` are positives.

    Each row is classified among the other candidates by cosine similarity / ``temperature``: the
    other ``2B - 1`` rows, or with ``gather`` in a multi-process run the ``2B x world - 1`` rows of every
    rank (SimCLR's global batch; every rank must pass the same number of rows). Returns the
    cross-entropy summed over this rank's ``2B`` rows and the number of rows whose nearest candidate is
    their positive. Summed over ranks, the loss is exactly the full global batch's.
    """
    z = F.normalize(features.float(), dim=-1)
    n = z.shape[0]
    offset = 0
    candidates = z
    if gather and is_distributed():
        import torch.distributed as dist

        candidates = GatherRows.apply(z)
        offset = dist.get_rank() * n
    rows = torch.arange(n, device=z.device)
    similarity = (z @ candidates.T) / temperature
    is_self = (rows + offset).unsqueeze(1) == torch.arange(candidates.shape[0], device=z.device)
    similarity = similarity.masked_fill(is_self, float("-inf"))
    positives = rows.roll(n // 2) + offset                                   # i <-> i + B
    return F.cross_entropy(similarity, positives, reduction="sum"), correct(similarity, positives)


class ContrastiveObjective(VisionObjective):
    """SimCLR (Chen et al., 2020): two augmented views per image, NT-Xent on projected CLS features.

    Views are made on the device from the loop's generator. With ``gather_negatives`` (the default)
    a multi-process run gathers every rank's projections while training, so each view is contrasted
    with the ``2B x world - 2`` other views of the global micro-batch, as SimCLR does; otherwise (and
    during evaluation, where ranks may hold different batch sizes) negatives are this rank's own
    ``2B - 2`` views. The metric ``accuracy`` is the fraction of views whose nearest candidate
    (cosine) is their positive.
    """

    primary_term = "contrastive"

    def __init__(self, config: ViTConfig, image_mean: Sequence[float] = (0.5, 0.5, 0.5),
                 image_std: Sequence[float] = (0.5, 0.5, 0.5), temperature: float = 0.1,
                 projection_dim: int = 128, crop_scale: tuple[float, float] = (0.2, 1.0),
                 gather_negatives: bool = True) -> None:
        super().__init__(config, image_mean, image_std)
        self.gather_negatives = gather_negatives
        if temperature <= 0:
            raise ConfigError(f"contrastive temperature must be > 0, got {temperature}")
        if not 0.0 < crop_scale[0] <= crop_scale[1] <= 1.0:
            raise ConfigError(f"crop_scale must satisfy 0 < min <= max <= 1, got {crop_scale}")
        self.temperature = temperature
        self.crop_scale = tuple(crop_scale)
        # SimCLR's head: the batch norm matters here. Without it a ViT's CLS features start out nearly
        # identical for every image and NT-Xent sat at chance for ~600 steps on the built-in digits; with
        # it the loss falls from the first hundred (4.74 vs 3.91 after 400 steps, batch 64). Statistics
        # are per process (no SyncBatchNorm), as in most SimCLR reimplementations.
        self.projection = nn.Sequential(nn.Linear(self.hidden_size, self.hidden_size),
                                        nn.BatchNorm1d(self.hidden_size), nn.ReLU(),
                                        nn.Linear(self.hidden_size, projection_dim))

    def prepare_batch(self, batch: dict[str, torch.Tensor], generator: torch.Generator | None = None
                      ) -> dict[str, torch.Tensor]:
        views = two_views(self.to_unit(batch["pixel_values"]), generator, self.image_size, scale=self.crop_scale)
        return {"pixel_values": self.normalize(views)}

    def target_counts(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {"contrastive": count(batch["pixel_values"], batch["pixel_values"].shape[0])}

    def forward(self, model: PreTrainedModel, batch: dict[str, torch.Tensor]) -> ObjectiveOutput:
        gather = self.gather_negatives and self.training and torch.is_grad_enabled()
        loss, correct = nt_xent(self.projection(self.cls_features(model, batch["pixel_values"])), self.temperature,
                                gather=gather)
        return ObjectiveOutput(loss_sums={"contrastive": loss}, metric_sums={"contrastive/accuracy": correct})


class MocoV3Objective(MomentumPairObjective):
    """MoCo v3 (Chen, Xie & He, 2021): a query encoder against its momentum key encoder, symmetric InfoNCE.

    Two views per image (crop, flip, colour jitter, grayscale; solarisation on the second). Query: backbone ->
    projector (3 layers, BatchNorm, affine-free BatchNorm on the output) -> predictor (2 layers); key: the
    momentum copy of backbone + projector (cosine momentum from ``teacher_momentum`` to 1). Each query of view 1 is
    classified among the keys of view 2 by cosine / ``temperature`` (its own image's key is the positive), and
    the other way round. With ``gather_negatives`` the keys come from every rank (the global batch, as MoCo
    v3 does); otherwise (and in evaluation) from this rank's batch. ``accuracy``: queries whose nearest key is
    their positive. (MoCo v3 scales its loss by ``2 * temperature``; here it is the plain cross-entropy.)
    """

    primary_term = "moco_v3"

    def __init__(self, config: ViTConfig, image_mean: Sequence[float] = (0.5, 0.5, 0.5),
                 image_std: Sequence[float] = (0.5, 0.5, 0.5), *, backbone: PreTrainedModel, max_steps: int,
                 gradient_accumulation_steps: int = 1, temperature: float = 0.2, teacher_momentum: float = 0.99,
                 projection_dim: int = 256, head_hidden_dim: int | None = None,
                 crop_scale: tuple[float, float] = (0.2, 1.0), gather_negatives: bool = True) -> None:
        super().__init__(config, image_mean, image_std)
        if temperature <= 0:
            raise ConfigError(f"moco_v3 temperature must be > 0, got {temperature}")
        hidden = head_hidden_dim or default_head_width(self.hidden_size)
        self.temperature, self.gather_negatives = temperature, gather_negatives
        self.crop_scale = check_crop_scale("crop_scale", crop_scale)
        self.projector = mlp(self.hidden_size, hidden, projection_dim, 3, last_batch_norm=True)
        self.predictor = mlp(projection_dim, hidden, projection_dim, 2)
        self._attach_teacher(backbone, teacher_momentum=teacher_momentum, max_steps=max_steps,
                             gradient_accumulation_steps=gradient_accumulation_steps)

    def forward(self, model: PreTrainedModel, batch: dict[str, torch.Tensor]) -> ObjectiveOutput:
        queries, keys = self.online_and_target(model, batch["pixel_values"])
        gather = self.gather_negatives and self.training and torch.is_grad_enabled()
        q1, q2 = queries.chunk(2)
        k1, k2 = keys.chunk(2)
        loss, right = zip(*(self._info_nce(q, k, gather) for q, k in ((q1, k2), (q2, k1))))
        return ObjectiveOutput(loss_sums={"moco_v3": loss[0] + loss[1]},
                               metric_sums={"moco_v3/accuracy": right[0] + right[1]})

    def _info_nce(self, queries: torch.Tensor, keys: torch.Tensor, gather: bool) -> tuple[torch.Tensor, torch.Tensor]:
        offset = 0
        if gather and is_distributed():
            import torch.distributed as dist

            offset = dist.get_rank() * keys.shape[0]
            keys = all_gather_rows(keys)
        logits = queries @ keys.T / self.temperature
        labels = torch.arange(queries.shape[0], device=queries.device) + offset
        return F.cross_entropy(logits, labels, reduction="sum"), correct(logits, labels)


class ExemplarObjective(VisionObjective):
    """Exemplar networks / instance discrimination: every image is its own class under heavy augmentation.

    The non-parametric form of Wu et al. (2018), which scales to any number of images: a memory bank holds one
    L2-normalised ``projection_dim`` vector per training image (:class:`TensorState`, in checkpoints, not
    broadcast by DDP). A view of image ``i`` (crop of ``crop_scale``, flip, colour jitter, grayscale) is
    projected and normalised to ``v``; the loss is the cross-entropy of classifying ``v`` as bank row ``i``
    against ``num_negatives`` rows drawn uniformly from the loop's generator (the whole bank when
    ``num_negatives`` is 0 or covers it), by cosine / ``temperature``. Then row ``i`` becomes
    ``normalise(bank_momentum * row + (1 - bank_momentum) * v)``, with the rows and vectors of every rank (so
    all ranks keep the same bank). Batches carry ``image_index`` (the image's position in the training stream,
    added by ``hfssl.data.images``); ``num_images`` is the bank size.

    Evaluation images have no bank row: their loss is instance discrimination between two views of each
    validation image within the batch (NT-Xent at ``temperature``), which tracks the same invariance.
    """

    primary_term = "exemplar"

    def __init__(self, config: ViTConfig, image_mean: Sequence[float] = (0.5, 0.5, 0.5),
                 image_std: Sequence[float] = (0.5, 0.5, 0.5), *, num_images: int, projection_dim: int = 128,
                 temperature: float = 0.07, num_negatives: int = 4096, bank_momentum: float = 0.5,
                 crop_scale: tuple[float, float] = (0.2, 1.0)) -> None:
        super().__init__(config, image_mean, image_std)
        if num_images < 2:
            raise ConfigError(f"exemplar needs the number of training images (>= 2) for its memory bank, got "
                              f"{num_images}")
        if temperature <= 0 or not 0.0 <= bank_momentum < 1.0 or num_negatives < 0:
            raise ConfigError("exemplar needs temperature > 0, 0 <= bank_momentum < 1 and num_negatives >= 0")
        self.num_images, self.temperature, self.bank_momentum = num_images, temperature, bank_momentum
        self.num_negatives = 0 if num_negatives >= num_images else num_negatives
        self.crop_scale = tuple(crop_scale)
        self.projection = nn.Linear(self.hidden_size, projection_dim)
        start = torch.randn(num_images, projection_dim, generator=torch.Generator().manual_seed(0))
        self.bank = TensorState(F.normalize(start, dim=-1))

    def prepare_batch(self, batch: dict[str, torch.Tensor], generator: torch.Generator | None = None
                      ) -> dict[str, torch.Tensor]:
        images = self.to_unit(batch["pixel_values"])
        if not self.training:
            return {"pixel_values": self.normalize(views(images, generator, 2, self.image_size, self.crop_scale))}
        if "image_index" not in batch:
            raise DataError("exemplar needs each image's index in the training stream (batch key image_index); "
                            "hfssl.data.images.ImageExamples adds it")
        prepared = {"pixel_values": self.normalize(views(images, generator, 1, self.image_size, self.crop_scale)),
                    "image_index": batch["image_index"]}
        if self.num_negatives:
            prepared["negative_index"] = torch.randint(
                0, self.num_images, (self.num_negatives,), generator=generator,
                device=generator.device if generator is not None else images.device).to(images.device)
        return prepared

    def target_counts(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {"exemplar": count(batch["pixel_values"], batch["pixel_values"].shape[0])}

    def forward(self, model: PreTrainedModel, batch: dict[str, torch.Tensor]) -> ObjectiveOutput:
        v = F.normalize(self.projection(self.cls_features(model, batch["pixel_values"])).float(), dim=-1)
        if "image_index" not in batch:  # evaluation: two views per image, within the batch
            loss, right = nt_xent(v, self.temperature)
            return ObjectiveOutput(loss_sums={"exemplar": loss}, metric_sums={"exemplar/accuracy": right})
        index = batch["image_index"]
        bank = self.bank.value
        positive = (bank[index] * v).sum(dim=-1, keepdim=True)
        if "negative_index" in batch:
            logits = torch.cat([positive, v @ bank[batch["negative_index"]].T], dim=1) / self.temperature
            labels = torch.zeros_like(index)
        else:
            logits, labels = v @ bank.T / self.temperature, index
        out = ObjectiveOutput(loss_sums={"exemplar": F.cross_entropy(logits, labels, reduction="sum")},
                              metric_sums={"exemplar/accuracy": correct(logits, labels)})
        if self.training and torch.is_grad_enabled():
            self._update_bank(index, v.detach())
        return out

    @torch.no_grad()
    def _update_bank(self, index: torch.Tensor, v: torch.Tensor) -> None:
        index, v = all_gather_rows(index), all_gather_rows(v)
        bank = self.bank.value
        rows = F.normalize(bank[index] * self.bank_momentum + v.to(bank.dtype) * (1.0 - self.bank_momentum), dim=-1)
        if self.num_negatives:
            bank.index_copy_(0, index, rows)  # the loss only holds gathered copies of the bank
        else:
            # The full-bank logits keep the bank itself for their backward: replace it rather than write into it.
            self.bank.value = bank.index_copy(0, index, rows)
