"""Generative pretext tasks: predict the missing part of an image.

Colorization (colour from lightness), inpainting (a blanked block), SimMIM (masked patches, on the stock
``ViTForMaskedImageModeling``) and MAE (masked autoencoder, on the stock ``ViTMAEForPreTraining``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from transformers import (
    PreTrainedModel,
    ViTConfig,
    ViTForMaskedImageModeling,
    ViTMAEConfig,
    ViTMAEForPreTraining,
)

from hfssl.errors import ConfigError
from hfssl.objectives.vision.base import ObjectiveOutput, VisionObjective, count
from hfssl.objectives.vision.corruptions import (
    block_mask,
    horizontal_flip,
    masking_noise,
    quantize_ab,
    random_resized_crop,
    rectangle_mask,
    rgb_to_lab,
)

__all__ = ["ColorizationObjective", "InpaintingObjective", "MaskedAutoencoderObjective",
           "MaskedImageModelingObjective"]


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
        return {"colorization": count(classes, classes.numel())}

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
        return {"inpainting": count(batch["pixel_values"], b * 3 * (self.block * self.patch_size) ** 2)}

    def forward(self, model: PreTrainedModel, batch: dict[str, torch.Tensor]) -> ObjectiveOutput:
        prediction = self.patches_to_image(self.head(self.patch_features(model, batch["pixel_values"])), 3).float()
        error = (prediction - batch["inpainting_target"]) ** 2
        return ObjectiveOutput(loss_sums={"inpainting": (error * batch["inpainting_mask"]).sum()})


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
        return {"mim": count(batch["pixel_values"], b * self.masked_patches * self.patch_size ** 2 * 3)}

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


class MaskedAutoencoderObjective(VisionObjective):
    """MAE (He et al., 2022) on the stock ``ViTMAEForPreTraining``: reconstruct the pixels of masked patches
    from the visible quarter.

    Each image is randomly resized-cropped (``crop_scale``, MAE's 0.2-1) and flipped on the device; the masking
    noise ``(B, patches)`` is drawn from the loop's generator and handed to the model (``noise``), so the
    ``mask_ratio`` of patches it drops is reproducible. The loss is the model's own: squared error averaged over
    a patch's pixels (per-patch normalised targets with ``norm_pix_loss``), summed over masked patches, which
    are the count. ``mask_ratio`` and ``norm_pix_loss`` are written into the model's config (the export keeps
    them). The encoder serves evaluation on whole images (``hfssl.models.vision.load_vit_encoder``).
    """

    model_class = ViTMAEForPreTraining
    primary_term = "mae"

    def __init__(self, config: ViTMAEConfig, image_mean: Sequence[float] = (0.5, 0.5, 0.5),
                 image_std: Sequence[float] = (0.5, 0.5, 0.5), mask_ratio: float = 0.75, norm_pix_loss: bool = False,
                 crop_scale: tuple[float, float] | None = (0.2, 1.0)) -> None:
        super().__init__(config, image_mean, image_std)
        if not 0.0 < mask_ratio < 1.0:
            raise ConfigError(f"--mask_ratio must be in (0, 1), got {mask_ratio}")
        if crop_scale is not None and not 0.0 < crop_scale[0] <= crop_scale[1] <= 1.0:
            raise ConfigError(f"crop_scale must satisfy 0 < low <= high <= 1, got {crop_scale}")
        self.num_patches = self.grid_size ** 2
        self.visible = int(self.num_patches * (1 - mask_ratio))   # as ViTMAEEmbeddings.random_masking rounds
        if not 0 < self.visible < self.num_patches:
            raise ConfigError(f"mask_ratio {mask_ratio} leaves {self.visible} of {self.num_patches} patches visible")
        self.crop_scale = crop_scale
        # The model reads both from its config at every forward; setting them here keeps flag and export in step.
        config.mask_ratio, config.norm_pix_loss = mask_ratio, norm_pix_loss

    def prepare_batch(self, batch: dict[str, torch.Tensor], generator: torch.Generator | None = None
                      ) -> dict[str, torch.Tensor]:
        images = self.to_unit(batch["pixel_values"])
        if self.crop_scale is not None:
            images = random_resized_crop(images, self.image_size, generator, scale=self.crop_scale)
            images = horizontal_flip(images, generator)
        noise = masking_noise(images.shape[0], self.num_patches, generator, images.device)
        return {"pixel_values": self.normalize(images), "noise": noise}

    def target_counts(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        b = batch["pixel_values"].shape[0]
        return {"mae": count(batch["pixel_values"], b * (self.num_patches - self.visible))}

    def forward(self, model: PreTrainedModel, batch: dict[str, torch.Tensor]) -> ObjectiveOutput:
        pixel_values = batch["pixel_values"]
        out = model(pixel_values=pixel_values, noise=batch["noise"])
        target = model.patchify(pixel_values)
        if model.config.norm_pix_loss:
            mean, var = target.mean(dim=-1, keepdim=True), target.var(dim=-1, keepdim=True)
            target = (target - mean) / (var + 1.0e-6) ** 0.5
        per_patch = ((out.logits.float() - target.float()) ** 2).mean(dim=-1)
        return ObjectiveOutput(loss_sums={"mae": (per_patch * out.mask).sum()})

    def export_example_inputs(self, model: PreTrainedModel) -> dict[str, torch.Tensor]:
        """Fixed pixels and masking noise: the reload check compares two deterministic forwards."""
        generator = torch.Generator().manual_seed(0)
        device = next(model.parameters()).device
        pixels = torch.randn(2, 3, self.image_size, self.image_size, generator=generator)
        noise = torch.rand(2, self.num_patches, generator=generator)
        return {"pixel_values": pixels.to(device), "noise": noise.to(device)}

    def encode(self, backbone: PreTrainedModel, pixel_values: torch.Tensor) -> torch.Tensor:
        """CLS features of whole images: the encoder with nothing masked and the patches in order (what
        evaluation loads), not the 25% a pretraining forward sees."""
        encoder = backbone.base_model
        ratio = encoder.config.mask_ratio
        order = torch.arange(self.num_patches, device=pixel_values.device, dtype=torch.float32)
        encoder.config.mask_ratio = 0.0
        try:
            hidden = encoder(pixel_values=pixel_values, noise=order.expand(pixel_values.shape[0], -1))
        finally:
            encoder.config.mask_ratio = ratio
        return hidden.last_hidden_state[:, 0]
