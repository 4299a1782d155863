"""Autoencoders on a ViT: reconstruct the image from its CLS vector, L(x, g(f(x))).

The code is the CLS token of the last layer (optionally projected to ``code_dim``): one vector per image, a
real bottleneck. The patch tokens are not used, since they would let the decoder copy the input patch by
patch. The pixel decoder belongs to the objective: it is trained with the backbone and not exported, so the
export is the stock ``ViTModel`` every other task gives.

Four tasks share this file:

- ``autoencoder``: reconstruct the image.
- ``denoising_autoencoder`` (Vincent et al., 2008/2010): reconstruct the clean image from a corrupted one
  (``noise``: ``masking`` blanks a share of the pixels, ``salt_pepper`` sets a share to black or white,
  ``gaussian`` adds isotropic noise). The corruption is drawn on the device from the loop's generator.
- ``sparse_autoencoder``: the code is ``ReLU(W cls + b)`` and an L1 penalty, weighted by ``sparsity_weight``,
  pushes most units to exactly 0 (logged: ``sparsity/zero_fraction``).
- ``vae`` (Kingma & Welling, 2014): the CLS vector parameterises a diagonal Gaussian q(z|x), the decoder reads
  a reparameterised sample, and ``beta`` times KL(q(z|x) || N(0, I)) is its own loss term (beta-VAE,
  Higgins et al., 2017, for beta != 1). The ELBO (beta = 1) is logged per image.

Losses follow the objective contract: the reconstruction term is the squared error summed over pixel values
(normalised pixels, as the backbone sees them) with the number of pixel values as its count, i.e. a mean
squared error per pixel value. The sparsity term is ``sparsity_weight`` times the summed code activations
over the number of code units (a mean activation), and the KL term is ``beta`` times the summed KL with the
*same* count as the reconstruction, so that the two add up to the negative ELBO per pixel value of a
Gaussian decoder with variance 1/2 (up to its constant): ``beta`` then has its textbook meaning.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel, ViTConfig

from hfssl.errors import ConfigError
from hfssl.objectives.vision.base import ObjectiveOutput, VisionObjective, count

__all__ = ["NOISE_LEVELS", "AutoencoderObjective", "DenoisingAutoencoderObjective", "PixelDecoder",
           "SparseAutoencoderObjective", "VariationalAutoencoderObjective", "corrupt", "gaussian_kl",
           "gaussian_noise", "pixel_masking", "random_pixel_mask", "salt_and_pepper"]

#: Default strength per noise: the share of pixels blanked (masking) or set to black/white (salt_pepper),
#: the standard deviation in [0, 1] pixel units (gaussian).
NOISE_LEVELS: dict[str, float] = {"masking": 0.5, "salt_pepper": 0.25, "gaussian": 0.3}


# -- corruptions: pure, batched, drawn from the generator ------------------------------------------
def _device_of(generator: torch.Generator | None, fallback: torch.device) -> torch.device:
    return generator.device if generator is not None else fallback


def random_pixel_mask(batch: int, height: int, width: int, num_pixels: int,
                      generator: torch.Generator | None = None, device: torch.device | str = "cpu") -> torch.Tensor:
    """``(batch, 1, height, width)`` boolean mask with exactly ``num_pixels`` True pixels per image, chosen
    uniformly without replacement (the smallest random scores: a static shape, no host sync)."""
    if not 0 <= num_pixels <= height * width:
        raise ValueError(f"cannot choose {num_pixels} of {height * width} pixels")
    device = torch.device(device)
    scores = torch.rand(batch, height * width, generator=generator, device=_device_of(generator, device)).to(device)
    chosen = scores.topk(num_pixels, dim=1, largest=False).indices
    mask = torch.zeros(batch, height * width, dtype=torch.bool, device=device)
    mask.scatter_(1, chosen, True)
    return mask.view(batch, 1, height, width)


def _pixel_count(images: torch.Tensor, share: float, what: str) -> int:
    if images.dim() != 4:
        raise ValueError(f"expected images of shape (B, C, H, W), got {tuple(images.shape)}")
    if not 0.0 <= share <= 1.0:
        raise ValueError(f"{what} must be in [0, 1], got {share}")
    return round(share * images.shape[-2] * images.shape[-1])


def pixel_masking(images01: torch.Tensor, ratio: float, generator: torch.Generator | None = None,
                  fill: torch.Tensor | float = 0.0) -> torch.Tensor:
    """Masking noise: ``round(ratio * H * W)`` pixels of each image, chosen at random, are set to ``fill``
    in every channel (the objective passes the processor's mean colour: 0 once normalised, "no signal")."""
    mask = random_pixel_mask(images01.shape[0], images01.shape[-2], images01.shape[-1],
                             _pixel_count(images01, ratio, "the masking ratio"), generator, images01.device)
    fill = torch.as_tensor(fill, dtype=images01.dtype, device=images01.device)
    return torch.where(mask, fill, images01)


def salt_and_pepper(images01: torch.Tensor, rate: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Salt-and-pepper noise: ``round(rate * H * W)`` pixels of each image, chosen at random, are set to white
    (1) or black (0) in every channel, each with probability 1/2. Images are in [0, 1]."""
    num_pixels = _pixel_count(images01, rate, "the salt-and-pepper rate")
    b, _, h, w = images01.shape
    mask = random_pixel_mask(b, h, w, num_pixels, generator, images01.device)
    salt = torch.rand(b, 1, h, w, generator=generator, device=_device_of(generator, images01.device))
    white = salt.to(images01.device) < 0.5
    return torch.where(mask, white.to(images01.dtype), images01)


def gaussian_noise(images01: torch.Tensor, std: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Additive isotropic Gaussian noise of standard deviation ``std`` (in [0, 1] pixel units), not clipped:
    the result is a network input, not an image to save."""
    if std < 0:
        raise ValueError(f"the Gaussian noise std must be >= 0, got {std}")
    noise = torch.randn(images01.shape, generator=generator, device=_device_of(generator, images01.device))
    return images01 + std * noise.to(device=images01.device, dtype=images01.dtype)


def corrupt(images01: torch.Tensor, noise: str, level: float, generator: torch.Generator | None = None,
            fill: torch.Tensor | float = 0.0) -> torch.Tensor:
    """``images01`` corrupted by ``noise`` (one of :data:`NOISE_LEVELS`) of strength ``level``."""
    if noise == "masking":
        return pixel_masking(images01, level, generator, fill)
    if noise == "salt_pepper":
        return salt_and_pepper(images01, level, generator)
    if noise == "gaussian":
        return gaussian_noise(images01, level, generator)
    raise ValueError(f"unknown noise {noise!r}; choose one of: {', '.join(NOISE_LEVELS)}")


def gaussian_kl(mean: torch.Tensor, log_variance: torch.Tensor) -> torch.Tensor:
    """KL(N(mean, exp(log_variance)) || N(0, I)) per element (sum it over the code for one image's KL)."""
    return 0.5 * (mean.square() + log_variance.exp() - 1.0 - log_variance)


# -- the decoder -----------------------------------------------------------------------------------------------
class PixelDecoder(nn.Module):
    """Code vector -> image: a linear map onto the patch grid (``width`` channels per patch position), one
    3x3 convolution across neighbouring patches, and a transposed convolution that paints each patch's
    ``patch_size x patch_size`` pixels, the ViT patch embedding in reverse. Small on purpose (for the tiny
    ViT at 32 px: 0.14M parameters, about the encoder's 0.11M): what the image needs must be in the code,
    not in the decoder."""

    def __init__(self, code_dim: int, image_size: int, patch_size: int, width: int = 32, channels: int = 3) -> None:
        super().__init__()
        if width < 1:
            raise ConfigError(f"decoder_width must be >= 1, got {width}")
        self.grid, self.width = image_size // patch_size, width
        self.expand = nn.Linear(code_dim, width * self.grid ** 2)
        self.mix = nn.Conv2d(width, width, kernel_size=3, padding=1)
        self.to_pixels = nn.ConvTranspose2d(width, channels, kernel_size=patch_size, stride=patch_size)

    def forward(self, code: torch.Tensor) -> torch.Tensor:
        x = F.gelu(self.expand(code)).view(code.shape[0], self.width, self.grid, self.grid)
        return self.to_pixels(F.gelu(self.mix(x)))


# -- the objectives ----------------------------------------------------------------------------------------------
class AutoencoderObjective(VisionObjective):
    """Reconstruct the image from its CLS vector (``code_dim``: project it to that size first; default: the
    CLS vector itself). Loss: squared error summed over the normalised pixel values, counted per value.

    Subclasses change the input (:meth:`corrupt_images`) or the code (:meth:`bottleneck`)."""

    primary_term: ClassVar[str] = "autoencoder"

    def __init__(self, config: ViTConfig, image_mean: Sequence[float] = (0.5, 0.5, 0.5),
                 image_std: Sequence[float] = (0.5, 0.5, 0.5), code_dim: int | None = None,
                 decoder_width: int = 32) -> None:
        super().__init__(config, image_mean, image_std)
        if code_dim is not None and code_dim < 1:
            raise ConfigError(f"--code_dim must be >= 1, got {code_dim}")
        self.code_dim = code_dim or self.hidden_size
        self.projection = self._projection(code_dim)
        self.decoder = PixelDecoder(self.code_dim, self.image_size, self.patch_size, decoder_width)
        self.pixels_per_image = 3 * self.image_size ** 2

    def _projection(self, code_dim: int | None) -> nn.Module:
        """CLS vector -> code input; the plain autoencoder reads the CLS vector itself unless ``code_dim``."""
        return nn.Identity() if code_dim is None else nn.Linear(self.hidden_size, code_dim)

    # -- input
    def corrupt_images(self, images01: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor | None:
        """The encoder's input in [0, 1] pixels, or None for the clean image."""
        return None

    def prepare_batch(self, batch: dict[str, torch.Tensor], generator: torch.Generator | None = None
                      ) -> dict[str, torch.Tensor]:
        images = self.to_unit(batch["pixel_values"])
        clean = self.normalize(images)
        corrupted = self.corrupt_images(images, generator)
        if corrupted is None:   # the target is the input itself: one tensor, not two
            return {"pixel_values": clean}
        return {"pixel_values": self.normalize(corrupted), "reconstruction_target": clean}

    def target_counts(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        pixels = batch["pixel_values"]
        return {self.primary_term: count(pixels, pixels.shape[0] * self.pixels_per_image)}

    # -- code and loss
    def bottleneck(self, cls: torch.Tensor, batch: dict[str, torch.Tensor]
                   ) -> tuple[torch.Tensor, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """CLS vectors -> (codes for the decoder, extra loss sums, extra metric sums)."""
        return self.projection(cls), {}, {}

    def forward(self, model: PreTrainedModel, batch: dict[str, torch.Tensor]) -> ObjectiveOutput:
        pixels = batch["pixel_values"]
        target = batch.get("reconstruction_target", pixels)
        code, losses, metrics = self.bottleneck(self.cls_features(model, pixels), batch)
        reconstruction = self.decoder(code).float()
        squared_error = (reconstruction - target.float()).square().sum()
        return ObjectiveOutput(loss_sums={self.primary_term: squared_error, **losses},
                               metric_sums=self._metrics(squared_error, metrics, pixels.shape[0]))

    def _metrics(self, squared_error: torch.Tensor, extra: dict[str, torch.Tensor], images: int
                 ) -> dict[str, torch.Tensor]:
        return extra


class DenoisingAutoencoderObjective(AutoencoderObjective):
    """Reconstruct the clean image from a corrupted one (Vincent et al., 2008). ``noise``: ``masking`` (default;
    ``noise_level`` = share of pixels set to the mean colour), ``salt_pepper`` (share set to black or white),
    ``gaussian`` (``noise_level`` = std in [0, 1] pixel units); default levels in :data:`NOISE_LEVELS`."""

    primary_term = "denoising_autoencoder"

    def __init__(self, config: ViTConfig, image_mean: Sequence[float] = (0.5, 0.5, 0.5),
                 image_std: Sequence[float] = (0.5, 0.5, 0.5), code_dim: int | None = None,
                 decoder_width: int = 32, noise: str = "masking", noise_level: float | None = None) -> None:
        super().__init__(config, image_mean, image_std, code_dim, decoder_width)
        if noise not in NOISE_LEVELS:
            raise ConfigError(f"--noise must be one of {', '.join(NOISE_LEVELS)}, got {noise!r}")
        level = NOISE_LEVELS[noise] if noise_level is None else float(noise_level)
        if noise == "gaussian" and level <= 0 or noise != "gaussian" and not 0.0 < level <= 1.0:
            raise ConfigError(f"--noise_level for {noise} noise must be "
                              f"{'> 0 (a std)' if noise == 'gaussian' else 'in (0, 1] (a share of pixels)'}, "
                              f"got {level}")
        self.noise, self.noise_level = noise, level

    def corrupt_images(self, images01: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        if self.image_mean.device != images01.device:
            self.to(images01.device)
        return corrupt(images01, self.noise, self.noise_level, generator, fill=self.image_mean)


class SparseAutoencoderObjective(AutoencoderObjective):
    """The code is ``ReLU(W cls + b)`` (``code_dim`` units, default the CLS width) and ``sparsity_weight``
    times its L1 norm is a second loss term, ``sparsity`` (count: code units, so it is the weight times the mean
    activation). Logged: ``sparsity/zero_fraction``, the share of code units exactly 0 (about half at
    initialisation, a ReLU's share). A ReLU unit at 0 gets no gradient from the reconstruction, so too strong a
    weight kills the whole code early (Adam moves every bias by about the learning rate whatever the L1
    gradient's scale): on the 32 px digits 0.1 left 91-97% of the units at 0 and 0.1 on a single batch 100%,
    while 0.01 (the default) settled near 75% there and at 43-46% on the cluttered digits (1,800 steps, two
    seeds). A ``zero_fraction`` of 1.0 means a dead code: lower the weight."""

    primary_term = "sparse_autoencoder"

    def __init__(self, config: ViTConfig, image_mean: Sequence[float] = (0.5, 0.5, 0.5),
                 image_std: Sequence[float] = (0.5, 0.5, 0.5), code_dim: int | None = None,
                 decoder_width: int = 32, sparsity_weight: float = 0.01) -> None:
        if sparsity_weight < 0:
            raise ConfigError(f"--sparsity_weight must be >= 0, got {sparsity_weight}")
        self.sparsity_weight = float(sparsity_weight)
        super().__init__(config, image_mean, image_std, code_dim, decoder_width)

    def _projection(self, code_dim: int | None) -> nn.Module:
        return nn.Linear(self.hidden_size, code_dim or self.hidden_size)

    def target_counts(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        counts = super().target_counts(batch)
        counts["sparsity"] = count(batch["pixel_values"], batch["pixel_values"].shape[0] * self.code_dim)
        return counts

    def bottleneck(self, cls: torch.Tensor, batch: dict[str, torch.Tensor]
                   ) -> tuple[torch.Tensor, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        code = F.relu(self.projection(cls))
        l1 = code.float().sum()    # |code| = code after a ReLU
        return code, {"sparsity": self.sparsity_weight * l1}, {"sparsity/zero_fraction": (code == 0).sum()}


class VariationalAutoencoderObjective(AutoencoderObjective):
    """A VAE on the CLS vector: a linear layer gives the mean and log-variance of q(z|x) (``code_dim`` each,
    default the CLS width), the decoder reads ``z = mean + exp(log_variance / 2) * eps`` with ``eps ~ N(0, I)``
    drawn in ``prepare_batch`` from the loop's generator, and ``beta`` x KL(q(z|x) || N(0, I)) is the loss term
    ``kl``, counted like the reconstruction (per pixel value) so that reconstruction + kl is the negative ELBO
    per pixel value of the Gaussian decoder N(x_hat, I/2) minus its constant, for beta = 1.

    Logged per image, in nats: ``vae/kl`` and ``vae/elbo`` (with the decoder's constant and beta = 1, whatever
    ``beta`` trains with), both on the normalised pixels the backbone sees."""

    primary_term = "vae"
    #: -log N(x; x_hat, 1/2) = (x - x_hat)^2 + log(pi) / 2 per pixel value.
    _NLL_CONSTANT = 0.5 * math.log(math.pi)

    def __init__(self, config: ViTConfig, image_mean: Sequence[float] = (0.5, 0.5, 0.5),
                 image_std: Sequence[float] = (0.5, 0.5, 0.5), code_dim: int | None = None,
                 decoder_width: int = 32, beta: float = 1.0) -> None:
        if beta < 0:
            raise ConfigError(f"--beta must be >= 0, got {beta}")
        self.beta = float(beta)
        super().__init__(config, image_mean, image_std, code_dim, decoder_width)

    def _projection(self, code_dim: int | None) -> nn.Module:
        return nn.Linear(self.hidden_size, 2 * (code_dim or self.hidden_size))

    def prepare_batch(self, batch: dict[str, torch.Tensor], generator: torch.Generator | None = None
                      ) -> dict[str, torch.Tensor]:
        prepared = super().prepare_batch(batch, generator)
        pixels = prepared["pixel_values"]
        eps = torch.randn(pixels.shape[0], self.code_dim, generator=generator,
                          device=_device_of(generator, pixels.device))
        prepared["vae_eps"] = eps.to(pixels.device)
        return prepared

    def target_counts(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        counts = super().target_counts(batch)
        counts["kl"] = counts[self.primary_term].clone()
        return counts

    def posterior(self, cls: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and log-variance of q(z|x) from CLS vectors (the log-variance clamped to [-10, 10] so a large
        early step cannot overflow ``exp``)."""
        mean, log_variance = self.projection(cls).float().chunk(2, dim=-1)
        return mean, log_variance.clamp(-10.0, 10.0)

    def bottleneck(self, cls: torch.Tensor, batch: dict[str, torch.Tensor]
                   ) -> tuple[torch.Tensor, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        mean, log_variance = self.posterior(cls)
        z = mean + (0.5 * log_variance).exp() * batch["vae_eps"].float()
        kl = gaussian_kl(mean, log_variance).sum()
        return z, {"kl": self.beta * kl}, {"kl_sum": kl}

    def _metrics(self, squared_error: torch.Tensor, extra: dict[str, torch.Tensor], images: int
                 ) -> dict[str, torch.Tensor]:
        # Metric sums are divided by the term's count (pixel values): scaling by the pixels per image turns
        # the sums into per-image means.
        kl, d = extra["kl_sum"].detach(), self.pixels_per_image
        negative_elbo = squared_error.detach() + kl + images * d * self._NLL_CONSTANT
        return {"vae/kl": kl * d, "vae/elbo": -negative_elbo * d}
