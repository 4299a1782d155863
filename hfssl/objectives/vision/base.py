"""Shared plumbing of the vision objectives: the base class, counts, and collectives across ranks.

Batches arrive as ``uint8`` ``pixel_values`` (B, 3, S, S) already on the device. ``prepare_batch`` draws every
random choice from the loop's generator (so resume is bitwise exact), applies the corruption and normalises
with the image processor's mean/std; ``forward`` runs the backbone and the objective's own heads and returns
loss *sums*. Counts are static per batch shape (filled on the device), and nothing reads a device value back
to the host, so the objectives are CUDA-graph and ``torch.compile`` friendly.

State that must be the same on every rank (a momentum teacher, DINO's centre, SwAV's queue, a memory bank)
is only ever changed from values all ranks agree on (gathered or all-reduced): DDP broadcasts module buffers
from rank 0 before each forward, which is then harmless. Large per-image state (memory banks) is kept out of
that broadcast (:class:`TensorState`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from torch import nn
from transformers import PreTrainedModel, ViTConfig, ViTModel

from hfssl.errors import ConfigError, DataError
from hfssl.objectives.base import Objective, ObjectiveOutput

__all__ = ["GatherRows", "ObjectiveOutput", "StepCounter", "TensorState", "VisionObjective", "all_gather_rows", "all_reduce_sum",
           "count", "correct", "is_distributed", "scale_grad", "world_size"]


def count(like: torch.Tensor, value: int) -> torch.Tensor:
    """A target count on ``like``'s device."""
    # A device fill, not torch.tensor(value, device=...): that is a host-to-device copy per step.
    return torch.full((), value, dtype=torch.long, device=like.device)


def correct(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Number of rows whose arg-max is their label."""
    return (logits.argmax(-1) == labels).sum()


def is_distributed() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    import torch.distributed as dist

    return dist.get_world_size() if is_distributed() else 1


class GatherRows(torch.autograd.Function):
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



@torch.no_grad()
def all_gather_rows(tensor: torch.Tensor) -> torch.Tensor:
    """Every rank's rows, concatenated in rank order, without gradient (momentum keys, bank updates).
    Every rank must pass the same number of rows. A single process gets ``tensor`` back."""
    if not is_distributed():
        return tensor
    import torch.distributed as dist

    parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts)


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """The sum of ``tensor`` over ranks (in place when distributed; a no-op in one process)."""
    if is_distributed():
        import torch.distributed as dist

        dist.all_reduce(tensor)
    return tensor


def scale_grad(tensor: torch.Tensor, factor: torch.Tensor | float) -> torch.Tensor:
    """``tensor`` in the forward pass, ``factor`` times its gradient in the backward pass.

    ``factor = 0`` freezes a parameter (SwAV's prototypes early on) while keeping it in the graph, so DDP
    still sees a gradient for it and no host-side branch is needed."""
    return tensor.detach() + (tensor - tensor.detach()) * factor


class StepCounter(nn.Module):
    """Counts training micro-batches so an objective knows the optimizer step without seeing the optimizer.

    The loop prepares every micro-batch of a step (``prepare_batch``) before any forward, right after the
    previous step's update: call :meth:`tick` there, in training mode only. The count is a buffer, so it is in
    checkpoints and a resumed run continues the count exactly; a Python mirror avoids reading the device each
    step (refreshed once after ``load_state_dict``).
    """

    def __init__(self, accumulation_steps: int = 1) -> None:
        super().__init__()
        if accumulation_steps < 1:
            raise ValueError(f"accumulation_steps must be >= 1, got {accumulation_steps}")
        self.accumulation_steps = accumulation_steps
        self.register_buffer("micro_batches", torch.zeros((), dtype=torch.long))
        self._mirror: int | None = 0

    def _load_from_state_dict(self, *args: Any, **kwargs: Any) -> None:
        super()._load_from_state_dict(*args, **kwargs)
        self._mirror = None

    @property
    def seen(self) -> int:
        """Training micro-batches prepared so far."""
        if self._mirror is None:
            self._mirror = int(self.micro_batches.item())
        return self._mirror

    @property
    def steps_done(self) -> int:
        """Optimizer steps completed before the current one (= the current step's 0-based index, once its
        micro-batches have ticked)."""
        return max(self.seen - 1, 0) // self.accumulation_steps

    def tick(self) -> bool:
        """Count one micro-batch; True when it is the first of an optimizer step after at least one step
        (the moment to apply what the previous step's update calls for)."""
        seen = self.seen
        first = seen > 0 and seen % self.accumulation_steps == 0
        self._mirror = seen + 1
        self.micro_batches.fill_(self._mirror)
        return first


class TensorState(nn.Module):
    """One tensor of per-image state (a memory bank) saved in the checkpoint but not a module buffer.

    DDP broadcasts every buffer from rank 0 before each forward: for a bank of N images x 128 floats that is
    N x 512 bytes per step for nothing (the ranks keep it identical themselves). Kept as the module's *extra
    state* it is still in ``state_dict`` (hence in checkpoints, as one tensor) and moves with ``.to()``.
    """

    def __init__(self, value: torch.Tensor) -> None:
        super().__init__()
        self.value = value

    def get_extra_state(self) -> torch.Tensor:
        return self.value

    def set_extra_state(self, state: Any) -> None:
        if not isinstance(state, torch.Tensor) or state.shape != self.value.shape:
            raise DataError(f"cannot resume: the checkpoint's memory bank has shape "
                            f"{tuple(getattr(state, 'shape', ()))}, this run's {tuple(self.value.shape)} "
                            "(another dataset size or feature size?)")
        self.value = state.to(device=self.value.device, dtype=self.value.dtype).clone()

    def _apply(self, fn: Any, recurse: bool = True) -> TensorState:  # .to(), .cuda(), .half()...
        self.value = fn(self.value)
        return super()._apply(fn, recurse)


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

        From shapes only (no sync). Siamese/contrastive tasks encode 2B images, and count them; multi-crop's
        smaller local views (``local_pixel_values``) count their own patches.
        """
        tokens = int(batch["pixel_values"].shape[0]) * (self.grid_size ** 2 + 1)
        local = batch.get("local_pixel_values")
        if local is not None:
            tokens += int(local.shape[0]) * ((local.shape[-1] // self.patch_size) ** 2 + 1)
        return tokens

    # -- what is exported and evaluated ------------------------------------------------------------
    def export_backbone(self, backbone: PreTrainedModel) -> PreTrainedModel:
        """The model this task exports and evaluates: the trained backbone, except where a task says
        otherwise (DINO: its teacher)."""
        return backbone

    def before_export(self) -> None:
        """Bring the exported model up to date (a momentum teacher's last update); called by the export."""

    def export_example_inputs(self, model: PreTrainedModel) -> dict[str, torch.Tensor] | None:
        """Inputs for the export's reload check, where the model's default ones are not deterministic."""
        return None

    def encode(self, backbone: PreTrainedModel, pixel_values: torch.Tensor) -> torch.Tensor:
        """CLS features of whole, normalised images by the exported encoder, as the probes will see them
        (the kNN monitor and the online probe read these)."""
        encoder = self.export_backbone(backbone).base_model
        return encoder(pixel_values=pixel_values).last_hidden_state[:, 0]

    @staticmethod
    def cls_features(model: PreTrainedModel, pixel_values: torch.Tensor) -> torch.Tensor:
        """CLS token of ``pixel_values``; images smaller than the model's (multi-crop's local views) get
        interpolated position embeddings, as DINO and SwAV do."""
        smaller = pixel_values.shape[-1] != model.config.image_size
        return model(pixel_values=pixel_values, interpolate_pos_encoding=smaller).last_hidden_state[:, 0]

    @staticmethod
    def patch_features(model: PreTrainedModel, pixel_values: torch.Tensor) -> torch.Tensor:
        return model(pixel_values=pixel_values).last_hidden_state[:, 1:]

    def patches_to_image(self, per_patch: torch.Tensor, channels: int) -> torch.Tensor:
        """(B, N, p*p*C) patch predictions -> (B, C, S, S), patch-major like the ViT patch embedding."""
        b, g, p = per_patch.shape[0], self.grid_size, self.patch_size
        x = per_patch.reshape(b, g, g, p, p, channels)
        return x.permute(0, 5, 1, 3, 2, 4).reshape(b, channels, g * p, g * p)


