"""Vision pretext objectives on stock ``ViTModel`` / ``ViTForMaskedImageModeling`` backbones.

Batches arrive as ``uint8`` ``pixel_values`` (B, 3, S, S) already on the device. ``prepare_batch``
draws every random choice from the loop's generator (so resume is bitwise exact), applies the
corruption and normalises with the image processor's mean/std; ``forward`` runs the backbone and
the objective's own head and returns loss *sums*. Counts are static per batch shape (filled on the
device), and nothing reads a device value back to the host, so the objectives are CUDA-graph and
``torch.compile`` friendly.

The heads are submodules of the objective: trained and checkpointed, never exported (the export is
the backbone alone). MIM is the exception by design: its decoder is part of the stock
``ViTForMaskedImageModeling`` and is exported with it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel, ViTConfig, ViTForMaskedImageModeling, ViTModel

from hfssl.errors import ConfigError, DataError
from hfssl.objectives.base import Objective, ObjectiveOutput
from hfssl.objectives.vision.corruptions import (
    block_mask,
    horizontal_flip,
    min_hamming_distance,
    neighbour_pairs,
    permutation_set,
    permute_tiles,
    quantize_ab,
    random_resized_crop,
    rectangle_mask,
    rgb_to_lab,
    rotate_batch,
    two_views,
)

__all__ = [
    "ColorizationObjective",
    "ContrastiveObjective",
    "InpaintingObjective",
    "JigsawObjective",
    "MaskedImageModelingObjective",
    "RelativePositionObjective",
    "RotationObjective",
    "VisionObjective",
    "nt_xent",
]


def _count(like: torch.Tensor, value: int) -> torch.Tensor:
    # A device fill, not torch.tensor(value, device=...): that is a host-to-device copy per step.
    return torch.full((), value, dtype=torch.long, device=like.device)


class _GatherRows(torch.autograd.Function):
    """All ranks' rows, concatenated in rank order, with the gradient flowing back to every rank.

    Backward all-reduces the gradient of the whole gathered tensor and keeps this rank's rows: each
    rank's loss reaches the features of every other rank. (All-reduce rather than reduce-scatter,
    which gloo lacks; the tensors are a few hundred rows of projections.)
    """

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        import torch.distributed as dist

        ctx.rank, ctx.rows = dist.get_rank(), tensor.shape[0]
        parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, tensor.contiguous())
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        import torch.distributed as dist

        grad = grad.contiguous()
        dist.all_reduce(grad)
        return grad[ctx.rank * ctx.rows:(ctx.rank + 1) * ctx.rows]


def _distributed() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


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
    if gather and _distributed():
        import torch.distributed as dist

        candidates = _GatherRows.apply(z)
        offset = dist.get_rank() * n
    rows = torch.arange(n, device=z.device)
    similarity = (z @ candidates.T) / temperature
    is_self = (rows + offset).unsqueeze(1) == torch.arange(candidates.shape[0], device=z.device)
    similarity = similarity.masked_fill(is_self, float("-inf"))
    positives = rows.roll(n // 2) + offset                                   # i <-> i + B
    return F.cross_entropy(similarity, positives, reduction="sum"), _correct(similarity, positives)


def _correct(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return (logits.argmax(-1) == labels).sum()


class VisionObjective(Objective):
    """Shared plumbing: normalisation, geometry checks, the CLS feature and ``input_tokens``.

    ``image_mean`` / ``image_std`` are the image processor's (3 values each), so training sees the
    exact normalisation inference will apply.
    """

    model_class: ClassVar[type[PreTrainedModel]] = ViTModel

    def __init__(self, config: ViTConfig, image_mean: Sequence[float] = (0.5, 0.5, 0.5),
                 image_std: Sequence[float] = (0.5, 0.5, 0.5)) -> None:
        super().__init__()
        if config.num_channels != 3:
            raise ConfigError(f"vision objectives expect RGB images (num_channels=3), got {config.num_channels}")
        if config.image_size % config.patch_size:
            raise ConfigError(f"patch_size {config.patch_size} must divide image_size {config.image_size}")
        if len(image_mean) != 3 or len(image_std) != 3:
            raise ConfigError("image_mean and image_std need one value per RGB channel")
        self.image_size = int(config.image_size)
        self.patch_size = int(config.patch_size)
        self.grid_size = self.image_size // self.patch_size
        self.hidden_size = int(config.hidden_size)
        # Not persistent: they come from the image processor, which is saved with the export.
        self.register_buffer("image_mean", torch.tensor(image_mean, dtype=torch.float32).view(3, 1, 1),
                             persistent=False)
        self.register_buffer("image_std", torch.tensor(image_std, dtype=torch.float32).view(3, 1, 1),
                             persistent=False)

    # -- helpers ---------------------------------------------------------------------------------
    def to_unit(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """uint8 (or already float in [0, 1]) pixels -> float32 in [0, 1], with a shape check."""
        if pixel_values.dim() != 4 or pixel_values.shape[1:] != (3, self.image_size, self.image_size):
            raise DataError(f"pixel_values must be (batch, 3, {self.image_size}, {self.image_size}) to match "
                            f"the model's image_size, got {tuple(pixel_values.shape)}")
        if pixel_values.dtype == torch.uint8:
            return pixel_values.float() / 255.0
        return pixel_values.float()

    def normalize(self, images01: torch.Tensor) -> torch.Tensor:
        if self.image_mean.device != images01.device:
            self.to(images01.device)      # the loop may not move the objective; cheap and idempotent
        return (images01 - self.image_mean) / self.image_std

    def input_tokens(self, batch: dict[str, torch.Tensor]) -> int:
        """Tokens the backbone processes: images in the prepared batch x (patches + CLS).

        From shapes only (no sync). Siamese/contrastive tasks encode 2B images, and count them.
        """
        return int(batch["pixel_values"].shape[0]) * (self.grid_size ** 2 + 1)

    @staticmethod
    def cls_features(model: PreTrainedModel, pixel_values: torch.Tensor) -> torch.Tensor:
        return model(pixel_values=pixel_values).last_hidden_state[:, 0]

    @staticmethod
    def patch_features(model: PreTrainedModel, pixel_values: torch.Tensor) -> torch.Tensor:
        return model(pixel_values=pixel_values).last_hidden_state[:, 1:]

    def patches_to_image(self, per_patch: torch.Tensor, channels: int) -> torch.Tensor:
        """(B, N, p*p*C) patch predictions -> (B, C, S, S), patch-major like the ViT patch embedding."""
        b, g, p = per_patch.shape[0], self.grid_size, self.patch_size
        x = per_patch.reshape(b, g, g, p, p, channels)
        return x.permute(0, 5, 1, 3, 2, 4).reshape(b, channels, g * p, g * p)


class _ClassificationObjective(VisionObjective):
    """CLS token -> linear head -> cross-entropy over ``batch[label_key]``; one label per image."""

    label_key: ClassVar[str]

    def __init__(self, config: ViTConfig, image_mean: Sequence[float], image_std: Sequence[float],
                 num_classes: int) -> None:
        super().__init__(config, image_mean, image_std)
        self.head = nn.Linear(self.hidden_size, num_classes)

    def target_counts(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        labels = batch[self.label_key]
        return {self.primary_term: _count(labels, labels.shape[0])}

    def forward(self, model: PreTrainedModel, batch: dict[str, torch.Tensor]) -> ObjectiveOutput:
        logits = self.head(self.cls_features(model, batch["pixel_values"])).float()
        labels = batch[self.label_key]
        term = self.primary_term
        return ObjectiveOutput(loss_sums={term: F.cross_entropy(logits, labels, reduction="sum")},
                               metric_sums={f"{term}/accuracy": _correct(logits, labels)})


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
        return {"relative_position": _count(labels, labels.shape[0])}

    def forward(self, model: PreTrainedModel, batch: dict[str, torch.Tensor]) -> ObjectiveOutput:
        features = self.cls_features(model, batch["pixel_values"])
        anchors, neighbours = features.chunk(2, dim=0)
        logits = self.head(torch.cat([anchors, neighbours], dim=-1)).float()
        labels = batch["relative_position_labels"]
        return ObjectiveOutput(
            loss_sums={"relative_position": F.cross_entropy(logits, labels, reduction="sum")},
            metric_sums={"relative_position/accuracy": _correct(logits, labels)})


class ColorizationObjective(VisionObjective):
    """Predict each pixel's quantised ab colour from its lightness (Zhang, Isola & Efros, 2016).

    The input is the L channel (L / 100, in [0, 1]) replicated to 3 channels, then normalised like
    any image, so the model never sees colour. The head maps every patch token to ``p*p`` pixel
    distributions over ``bins x bins`` ab classes (uniform over [-110, 110]); the loss is a
    cross-entropy summed over pixels (no class rebalancing: the plain, stable variant).
    """

    primary_term = "colorization"

    def __init__(self, config: ViTConfig, image_mean: Sequence[float] = (0.5, 0.5, 0.5),
                 image_std: Sequence[float] = (0.5, 0.5, 0.5), bins: int = 10) -> None:
        super().__init__(config, image_mean, image_std)
        if bins < 2:
            raise ConfigError(f"colorization needs at least 2 ab bins per axis, got {bins}")
        self.bins = bins
        self.num_classes = bins * bins
        self.head = nn.Linear(self.hidden_size, self.patch_size ** 2 * self.num_classes)

    def prepare_batch(self, batch: dict[str, torch.Tensor], generator: torch.Generator | None = None
                      ) -> dict[str, torch.Tensor]:
        lab = rgb_to_lab(self.to_unit(batch["pixel_values"]))
        lightness = (lab[:, :1] / 100.0).clamp(0.0, 1.0).expand(-1, 3, -1, -1)
        return {"pixel_values": self.normalize(lightness), "ab_classes": quantize_ab(lab[:, 1:], self.bins)}

    def target_counts(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        classes = batch["ab_classes"]
        return {"colorization": _count(classes, classes.numel())}

    def forward(self, model: PreTrainedModel, batch: dict[str, torch.Tensor]) -> ObjectiveOutput:
        logits = self.patches_to_image(self.head(self.patch_features(model, batch["pixel_values"])),
                                       self.num_classes).float()                      # (B, classes, S, S)
        targets = batch["ab_classes"]
        return ObjectiveOutput(loss_sums={"colorization": F.cross_entropy(logits, targets, reduction="sum")},
                               metric_sums={"colorization/accuracy": (logits.argmax(1) == targets).sum()})


class InpaintingObjective(VisionObjective):
    """Reconstruct a blanked rectangle of patches (context encoder, Pathak et al., 2016).

    One ``block x block`` rectangle of patches per image, about ``mask_area`` of the image, at a
    random patch-aligned position, is set to the mean colour (0 after normalisation). Patch tokens
    -> ``p*p*3`` pixels; the loss is the squared error summed over the blanked pixel values only.
    The block size is fixed by the config, so the count is static.
    """

    primary_term = "inpainting"

    def __init__(self, config: ViTConfig, image_mean: Sequence[float] = (0.5, 0.5, 0.5),
                 image_std: Sequence[float] = (0.5, 0.5, 0.5), mask_area: float = 0.25) -> None:
        super().__init__(config, image_mean, image_std)
        if not 0.0 < mask_area < 1.0:
            raise ConfigError(f"inpainting mask_area must be in (0, 1), got {mask_area}")
        self.block = min(self.grid_size, max(1, round(self.grid_size * math.sqrt(mask_area))))
        self.head = nn.Linear(self.hidden_size, self.patch_size ** 2 * 3)

    def prepare_batch(self, batch: dict[str, torch.Tensor], generator: torch.Generator | None = None
                      ) -> dict[str, torch.Tensor]:
        target = self.normalize(self.to_unit(batch["pixel_values"]))
        b, g = target.shape[0], self.grid_size
        patches = rectangle_mask(b, g, g, self.block, self.block, generator, device=target.device)
        pixels = patches.repeat_interleave(self.patch_size, 1).repeat_interleave(self.patch_size, 2)[:, None]
        return {"pixel_values": target.masked_fill(pixels, 0.0), "inpainting_target": target,
                "inpainting_mask": pixels}

    def target_counts(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        b = batch["pixel_values"].shape[0]
        return {"inpainting": _count(batch["pixel_values"], b * 3 * (self.block * self.patch_size) ** 2)}

    def forward(self, model: PreTrainedModel, batch: dict[str, torch.Tensor]) -> ObjectiveOutput:
        prediction = self.patches_to_image(self.head(self.patch_features(model, batch["pixel_values"])), 3).float()
        error = (prediction - batch["inpainting_target"]) ** 2
        return ObjectiveOutput(loss_sums={"inpainting": (error * batch["inpainting_mask"]).sum()})


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
        return {"contrastive": _count(batch["pixel_values"], batch["pixel_values"].shape[0])}

    def forward(self, model: PreTrainedModel, batch: dict[str, torch.Tensor]) -> ObjectiveOutput:
        gather = self.gather_negatives and self.training and torch.is_grad_enabled()
        loss, correct = nt_xent(self.projection(self.cls_features(model, batch["pixel_values"])), self.temperature,
                                gather=gather)
        return ObjectiveOutput(loss_sums={"contrastive": loss}, metric_sums={"contrastive/accuracy": correct})


class MaskedImageModelingObjective(VisionObjective):
    """SimMIM (Xie et al., 2022) on a stock ``ViTForMaskedImageModeling``.

    ``bool_masked_pos`` masks ``mask_ratio`` of the image in squares of ``mask_patch_size`` pixels
    (a multiple of ``patch_size``; default twice it when that divides the grid). The loss is the L1
    error summed over masked pixels of the model's ``reconstruction`` against the normalised input.
    No extra heads: the decoder belongs to the stock model and is exported with it.
    As SimMIM (and transformers' ``run_mim.py``), each image is first randomly resized-cropped
    (``crop_scale`` of its area, default 0.67-1; ``None`` turns it off) and flipped, on the device.
    """

    model_class = ViTForMaskedImageModeling
    primary_term = "mim"

    def __init__(self, config: ViTConfig, image_mean: Sequence[float] = (0.5, 0.5, 0.5),
                 image_std: Sequence[float] = (0.5, 0.5, 0.5), mask_ratio: float = 0.6,
                 mask_patch_size: int | None = None,
                 crop_scale: tuple[float, float] | None = (0.67, 1.0)) -> None:
        super().__init__(config, image_mean, image_std)
        if crop_scale is not None and not 0.0 < crop_scale[0] <= crop_scale[1] <= 1.0:
            raise ConfigError(f"crop_scale must satisfy 0 < low <= high <= 1, got {crop_scale}")
        self.crop_scale = crop_scale
        if config.encoder_stride != config.patch_size:
            raise ConfigError(f"mim needs encoder_stride == patch_size so the reconstruction has the image's "
                              f"size, got encoder_stride={config.encoder_stride}, patch_size={config.patch_size}")
        if not 0.0 < mask_ratio < 1.0:
            raise ConfigError(f"--mask_ratio must be in (0, 1), got {mask_ratio}")
        if mask_patch_size is None:
            mask_patch_size = self.patch_size * (2 if self.grid_size % 2 == 0 else 1)
        if mask_patch_size % self.patch_size or self.image_size % mask_patch_size:
            raise ConfigError(f"mask_patch_size {mask_patch_size} must be a multiple of patch_size "
                              f"{self.patch_size} and divide image_size {self.image_size}")
        self.mask_ratio = mask_ratio
        self.block = mask_patch_size // self.patch_size
        blocks = (self.grid_size // self.block) ** 2
        self.masked_patches = round(mask_ratio * blocks) * self.block ** 2
        if self.masked_patches == 0:
            raise ConfigError(f"mask_ratio {mask_ratio} masks nothing with {blocks} mask blocks per image")

    def prepare_batch(self, batch: dict[str, torch.Tensor], generator: torch.Generator | None = None
                      ) -> dict[str, torch.Tensor]:
        images = self.to_unit(batch["pixel_values"])
        if self.crop_scale is not None:
            images = random_resized_crop(images, self.image_size, generator, scale=self.crop_scale)
            images = horizontal_flip(images, generator)
        pixel_values = self.normalize(images)
        g = self.grid_size
        mask = block_mask(pixel_values.shape[0], g, g, self.mask_ratio, generator, block=self.block,
                          device=pixel_values.device)
        return {"pixel_values": pixel_values, "bool_masked_pos": mask}

    def target_counts(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        b = batch["pixel_values"].shape[0]
        return {"mim": _count(batch["pixel_values"], b * self.masked_patches * self.patch_size ** 2 * 3)}

    def pixel_mask(self, bool_masked_pos: torch.Tensor) -> torch.Tensor:
        """(B, N) patch mask -> (B, 1, S, S) pixel mask."""
        g, p = self.grid_size, self.patch_size
        mask = bool_masked_pos.view(-1, g, g)
        return mask.repeat_interleave(p, 1).repeat_interleave(p, 2)[:, None]

    def forward(self, model: PreTrainedModel, batch: dict[str, torch.Tensor]) -> ObjectiveOutput:
        pixel_values, mask = batch["pixel_values"], batch["bool_masked_pos"]
        reconstruction = model(pixel_values=pixel_values, bool_masked_pos=mask).reconstruction.float()
        error = (reconstruction - pixel_values).abs() * self.pixel_mask(mask)
        return ObjectiveOutput(loss_sums={"mim": error.sum()})
