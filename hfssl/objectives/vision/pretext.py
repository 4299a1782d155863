"""Classic pretext tasks that classify a transformation: rotation, jigsaw, relative patch position."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel, ViTConfig

from hfssl.errors import ConfigError
from hfssl.objectives.vision.base import ObjectiveOutput, VisionObjective, correct, count
from hfssl.objectives.vision.corruptions import (
    min_hamming_distance,
    neighbour_pairs,
    permutation_set,
    permute_tiles,
    rotate_batch,
)

__all__ = ["JigsawObjective", "RelativePositionObjective", "RotationObjective"]


class _ClassificationObjective(VisionObjective):
    """CLS token -> linear head -> cross-entropy over ``batch[label_key]``; one label per image."""

    label_key: ClassVar[str]

    def __init__(self, config: ViTConfig, image_mean: Sequence[float], image_std: Sequence[float],
                 num_classes: int) -> None:
        super().__init__(config, image_mean, image_std)
        self.head = nn.Linear(self.hidden_size, num_classes)

    def target_counts(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        labels = batch[self.label_key]
        return {self.primary_term: count(labels, labels.shape[0])}

    def forward(self, model: PreTrainedModel, batch: dict[str, torch.Tensor]) -> ObjectiveOutput:
        logits = self.head(self.cls_features(model, batch["pixel_values"])).float()
        labels = batch[self.label_key]
        term = self.primary_term
        return ObjectiveOutput(loss_sums={term: F.cross_entropy(logits, labels, reduction="sum")},
                               metric_sums={f"{term}/accuracy": correct(logits, labels)})


class RotationObjective(_ClassificationObjective):
    """Predict which of 0/90/180/270 degrees each image was rotated by (Gidaris et al., 2018)."""

    primary_term = "rotation"
    label_key = "rotation_labels"

    def __init__(self, config: ViTConfig, image_mean: Sequence[float] = (0.5, 0.5, 0.5),
                 image_std: Sequence[float] = (0.5, 0.5, 0.5)) -> None:
        super().__init__(config, image_mean, image_std, num_classes=4)

    def prepare_batch(self, batch: dict[str, torch.Tensor], generator: torch.Generator | None = None
                      ) -> dict[str, torch.Tensor]:
        rotated, labels = rotate_batch(self.to_unit(batch["pixel_values"]), generator)
        return {"pixel_values": self.normalize(rotated), self.label_key: labels}


class JigsawObjective(_ClassificationObjective):
    """Recognise which permutation shuffled the ``grid x grid`` tiles (Noroozi & Favaro, 2016).

    Tiles are aligned to the patch grid, so every ViT patch lies inside one tile. The permutation set
    is all ``(grid*grid)!`` permutations when ``num_permutations`` is None and that is at most 24
    (grid 2), otherwise a greedy maximal-Hamming-distance set of ``num_permutations`` (default 100).
    """

    primary_term = "jigsaw"
    label_key = "jigsaw_labels"

    def __init__(self, config: ViTConfig, image_mean: Sequence[float] = (0.5, 0.5, 0.5),
                 image_std: Sequence[float] = (0.5, 0.5, 0.5), grid: int = 2,
                 num_permutations: int | None = None, permutation_seed: int = 0) -> None:
        grid_patches = config.image_size // config.patch_size
        if grid < 2 or grid_patches % grid:
            raise ConfigError(f"jigsaw grid {grid} must be >= 2 and divide the {grid_patches}x{grid_patches} "
                              f"patch grid (image_size {config.image_size} // patch_size {config.patch_size})")
        tiles = grid * grid
        if num_permutations is None:
            num_permutations = math.factorial(tiles) if tiles <= 4 else 100
        if num_permutations < 2:
            raise ConfigError(f"jigsaw needs at least 2 permutations, got {num_permutations}")
        permutations = permutation_set(tiles, num_permutations, seed=permutation_seed)
        super().__init__(config, image_mean, image_std, num_classes=permutations.shape[0])
        self.grid = grid
        self.register_buffer("permutations", permutations, persistent=False)
        #: Smallest Hamming distance between two classes (reported once, for the run log).
        self.min_hamming_distance = min_hamming_distance(permutations)

    def prepare_batch(self, batch: dict[str, torch.Tensor], generator: torch.Generator | None = None
                      ) -> dict[str, torch.Tensor]:
        images = self.to_unit(batch["pixel_values"])
        if self.permutations.device != images.device:
            self.to(images.device)
        shuffled, labels = permute_tiles(images, self.grid, self.permutations, generator)
        return {"pixel_values": self.normalize(shuffled), self.label_key: labels}


class RelativePositionObjective(VisionObjective):
    """Where is the second tile relative to the first? 8-way (Doersch, Gupta & Efros, 2015).

    Both tiles are resized to ``image_size`` and encoded by the same backbone in one call on 2B
    images (siamese); their CLS features are concatenated and an MLP predicts the neighbour index.
    ``gap`` defaults to a quarter of a cell.
    """

    primary_term = "relative_position"

    def __init__(self, config: ViTConfig, image_mean: Sequence[float] = (0.5, 0.5, 0.5),
                 image_std: Sequence[float] = (0.5, 0.5, 0.5), grid: int = 3, gap: int | None = None) -> None:
        super().__init__(config, image_mean, image_std)
        cell = self.image_size // max(grid, 1)
        self.gap = cell // 4 if gap is None else gap
        if grid < 3 or not 0 <= self.gap < cell:
            raise ConfigError(f"relative_position needs grid >= 3 and 0 <= gap < cell ({cell} px), "
                              f"got grid={grid}, gap={self.gap}")
        self.grid = grid
        self.head = nn.Sequential(nn.Linear(2 * self.hidden_size, self.hidden_size), nn.GELU(),
                                  nn.Linear(self.hidden_size, 8))

    def prepare_batch(self, batch: dict[str, torch.Tensor], generator: torch.Generator | None = None
                      ) -> dict[str, torch.Tensor]:
        anchors, neighbours, labels = neighbour_pairs(self.to_unit(batch["pixel_values"]), self.grid, self.gap,
                                                      generator)
        tiles = torch.cat([anchors, neighbours], dim=0)
        tiles = F.interpolate(tiles, size=(self.image_size, self.image_size), mode="bilinear",
                              align_corners=False)
        # Rows i and i + B are the pair of image i.
        return {"pixel_values": self.normalize(tiles), "relative_position_labels": labels}

    def target_counts(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        labels = batch["relative_position_labels"]
        return {"relative_position": count(labels, labels.shape[0])}

    def forward(self, model: PreTrainedModel, batch: dict[str, torch.Tensor]) -> ObjectiveOutput:
        features = self.cls_features(model, batch["pixel_values"])
        anchors, neighbours = features.chunk(2, dim=0)
        logits = self.head(torch.cat([anchors, neighbours], dim=-1)).float()
        labels = batch["relative_position_labels"]
        return ObjectiveOutput(
            loss_sums={"relative_position": F.cross_entropy(logits, labels, reduction="sum")},
            metric_sums={"relative_position/accuracy": correct(logits, labels)})
