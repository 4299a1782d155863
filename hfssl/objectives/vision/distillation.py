"""Self-distillation: a student matches a momentum teacher, no negatives. DINO and BYOL.

Both keep an EMA teacher (:class:`~hfssl.objectives.vision.momentum.MomentumTeacher`, updated once per
optimizer step from ``prepare_batch``) of the backbone and the projection head, as a submodule of the
objective: DDP/FSDP see it, checkpoints hold it, the optimizer never does (``requires_grad`` off).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from transformers import PreTrainedModel, ViTConfig

from hfssl.errors import ConfigError
from hfssl.objectives.vision.base import ObjectiveOutput, VisionObjective, all_reduce_sum, count, world_size
from hfssl.objectives.vision.corruptions import multi_crop, views
from hfssl.objectives.vision.heads import DinoHead, default_head_width, mlp
from hfssl.objectives.vision.momentum import MomentumTeacher

__all__ = ["ByolObjective", "DinoObjective", "MomentumPairObjective", "check_crop_scale", "default_local_crop_size",
           "multi_crop_views"]


def default_local_crop_size(image_size: int, patch_size: int) -> int:
    """DINO's 96 px local crops for 224 px images, scaled to ``image_size`` and rounded to whole patches
    (at least two patches a side)."""
    return max(2 * patch_size, round(image_size * 96 / 224 / patch_size) * patch_size)


def check_crop_scale(name: str, scale: Sequence[float]) -> tuple[float, float]:
    """``scale`` as a ``(low, high)`` float pair of image-area shares, or a one-line ConfigError."""
    if len(scale) != 2 or not 0.0 < scale[0] <= scale[1] <= 1.0:
        raise ConfigError(f"{name} must be (low, high) with 0 < low <= high <= 1, got {tuple(scale)}")
    return float(scale[0]), float(scale[1])


def multi_crop_views(objective: VisionObjective, batch: dict[str, torch.Tensor], generator: torch.Generator | None
                     ) -> dict[str, torch.Tensor]:
    """DINO's and SwAV's input: 2 global views per image as ``pixel_values`` and ``num_local_crops`` local ones as
    ``local_pixel_values`` (absent without local crops), normalised. ``objective`` holds the crop settings
    (``image_size``, ``local_size``, ``num_local_crops``, ``global_scale``, ``local_scale``)."""
    globals_, locals_ = multi_crop(objective.to_unit(batch["pixel_values"]), generator, objective.image_size,
                                   objective.local_size, objective.num_local_crops, objective.global_scale,
                                   objective.local_scale)
    prepared = {"pixel_values": objective.normalize(globals_)}
    if locals_ is not None:
        prepared["local_pixel_values"] = objective.normalize(locals_)
    return prepared


class DinoObjective(VisionObjective):
    """DINO (Caron et al., 2021): self-distillation with no labels.

    Multi-crop: two global views at the model's size and ``num_local_crops`` local views at ``local_crop_size``
    (interpolated position embeddings), all made batched on the device from the loop's generator (crop, flip,
    colour jitter, grayscale; solarisation on the second global view). The student (backbone + :class:`DinoHead`)
    sees every view, the EMA teacher only the global ones. The head scores ``num_prototypes`` outputs (DINO's
    ``out_dim``: 65536 in the paper, 4096 by default here for small runs). For every teacher view and every
    *other* student view, the loss is the cross-entropy between the teacher's centred, sharpened distribution
    ``softmax((t - center) / teacher_temperature)`` and the student's ``softmax(s / student_temperature)``,
    averaged over the pairs. The center is an EMA (``center_momentum``) of the teacher's mean output over the
    global batch (all-reduced across ranks). The teacher temperature warms up linearly from
    ``warmup_teacher_temperature`` over ``teacher_temperature_warmup_steps`` (default: the first 10% of the
    run); the teacher momentum follows the cosine schedule from ``teacher_momentum`` to 1.

    The teacher is what DINO evaluates and what is exported by default (``export_student`` for the student).
    ``head_batch_norm`` puts BatchNorm in the head's MLP (DINO's ``use_bn_in_head``): a small ViT's CLS features
    start out nearly identical for every image, and without it the centred teacher output can stay uniform (the
    loss then sits at ln(num_prototypes); the collapse monitor reports it).
    """

    primary_term = "dino"

    def __init__(self, config: ViTConfig, image_mean: Sequence[float] = (0.5, 0.5, 0.5),
                 image_std: Sequence[float] = (0.5, 0.5, 0.5), *, backbone: PreTrainedModel, max_steps: int,
                 gradient_accumulation_steps: int = 1, num_local_crops: int = 6, local_crop_size: int | None = None,
                 global_crop_scale: tuple[float, float] = (0.4, 1.0),
                 local_crop_scale: tuple[float, float] = (0.05, 0.4), num_prototypes: int = 4096,
                 head_hidden_dim: int | None = None, bottleneck_dim: int = 256, teacher_momentum: float = 0.996,
                 teacher_temperature: float = 0.07, warmup_teacher_temperature: float = 0.04,
                 teacher_temperature_warmup_steps: int | None = None, student_temperature: float = 0.1,
                 center_momentum: float = 0.9, export_student: bool = False, head_batch_norm: bool = False,
                 norm_last_layer: bool = True) -> None:
        super().__init__(config, image_mean, image_std)
        if num_local_crops < 0:
            raise ConfigError(f"num_local_crops must be >= 0, got {num_local_crops}")
        self.local_size = local_crop_size or default_local_crop_size(self.image_size, self.patch_size)
        if self.local_size % self.patch_size or not 0 < self.local_size <= self.image_size:
            raise ConfigError(f"local_crop_size {self.local_size} must be a multiple of patch_size {self.patch_size} "
                              f"and at most image_size {self.image_size}")
        if min(teacher_temperature, warmup_teacher_temperature, student_temperature) <= 0:
            raise ConfigError("DINO's temperatures must be > 0")
        if not 0.0 <= center_momentum < 1.0:
            raise ConfigError(f"center_momentum must be in [0, 1), got {center_momentum}")
        self.num_local_crops = num_local_crops
        self.global_scale = check_crop_scale("global_crop_scale", global_crop_scale)
        self.local_scale = check_crop_scale("local_crop_scale", local_crop_scale)
        self.teacher_temperature, self.warmup_teacher_temperature = teacher_temperature, warmup_teacher_temperature
        self.warmup_steps = (max(1, max_steps // 10) if teacher_temperature_warmup_steps is None
                             else teacher_temperature_warmup_steps)
        self.student_temperature, self.center_momentum = student_temperature, center_momentum
        self.export_student = export_student
        self.head = DinoHead(self.hidden_size, num_prototypes,
                             head_hidden_dim or default_head_width(self.hidden_size), bottleneck_dim,
                             batch_norm=head_batch_norm, norm_last_layer=norm_last_layer)
        self.momentum = MomentumTeacher({"backbone": backbone, "head": self.head}, base_momentum=teacher_momentum,
                                        total_steps=max_steps, accumulation_steps=gradient_accumulation_steps)
        self.register_buffer("center", torch.zeros(1, num_prototypes))

    @property
    def teacher(self) -> PreTrainedModel:
        return self.momentum["backbone"]

    def teacher_temperature_at(self, step: int) -> float:
        if step >= self.warmup_steps:
            return self.teacher_temperature
        return self.warmup_teacher_temperature + (self.teacher_temperature - self.warmup_teacher_temperature) * (
            step / self.warmup_steps)

    def prepare_batch(self, batch: dict[str, torch.Tensor], generator: torch.Generator | None = None
                      ) -> dict[str, torch.Tensor]:
        if self.training:
            self.momentum.step()
        return multi_crop_views(self, batch, generator)

    def target_counts(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {"dino": count(batch["pixel_values"], batch["pixel_values"].shape[0] // 2)}

    def forward(self, model: PreTrainedModel, batch: dict[str, torch.Tensor]) -> ObjectiveOutput:
        globals_ = batch["pixel_values"]
        b = globals_.shape[0] // 2
        student = [self.head(self.cls_features(model, globals_)).float()]
        if "local_pixel_values" in batch:
            student.append(self.head(self.cls_features(model, batch["local_pixel_values"])).float())
        student_views = torch.cat(student).chunk(2 + self.num_local_crops)
        with torch.no_grad():
            teacher_out = self.momentum["head"](self.cls_features(self.teacher, globals_)).float()
            temperature = self.teacher_temperature_at(self.momentum.steps_done)
            targets = F.softmax((teacher_out - self.center) / temperature, dim=-1).chunk(2)
        loss = globals_.new_zeros((), dtype=torch.float32)
        pairs = 0
        for t, target in enumerate(targets):
            for v, view in enumerate(student_views):
                if v != t:
                    loss = loss + torch.sum(-target * F.log_softmax(view / self.student_temperature, dim=-1))
                    pairs += 1
        if self.training and torch.is_grad_enabled():
            self._update_center(teacher_out, b)
        return ObjectiveOutput(loss_sums={"dino": loss / pairs})

    @torch.no_grad()
    def _update_center(self, teacher_out: torch.Tensor, b: int) -> None:
        batch_sum = all_reduce_sum(teacher_out.sum(dim=0, keepdim=True))
        batch_center = batch_sum / (teacher_out.shape[0] * world_size())
        self.center.mul_(self.center_momentum).add_(batch_center, alpha=1.0 - self.center_momentum)

    def export_backbone(self, backbone: PreTrainedModel) -> PreTrainedModel:
        return backbone if self.export_student else self.teacher

    def before_export(self) -> None:
        self.momentum.flush()


class MomentumPairObjective(VisionObjective):
    """What BYOL and MoCo v3 share: two augmented views per image (crop, flip, colour jitter, grayscale;
    solarisation on the second), an online network backbone -> ``projector`` -> ``predictor``, and a target that is
    the momentum copy of backbone + projector (cosine momentum from ``teacher_momentum`` to 1). Subclasses build the
    two MLPs, call :meth:`_attach_teacher`, and turn :meth:`online_and_target` into their loss."""

    def _attach_teacher(self, backbone: PreTrainedModel, *, teacher_momentum: float, max_steps: int,
                        gradient_accumulation_steps: int) -> None:
        self.momentum = MomentumTeacher({"backbone": backbone, "projector": self.projector}, base_momentum=teacher_momentum,
                                        total_steps=max_steps, accumulation_steps=gradient_accumulation_steps)

    def prepare_batch(self, batch: dict[str, torch.Tensor], generator: torch.Generator | None = None
                      ) -> dict[str, torch.Tensor]:
        if self.training:
            self.momentum.step()
        pair = views(self.to_unit(batch["pixel_values"]), generator, 2, self.image_size, self.crop_scale,
                     solarize_p=(0.0, 0.2))
        return {"pixel_values": self.normalize(pair)}

    def target_counts(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {self.primary_term: count(batch["pixel_values"], batch["pixel_values"].shape[0])}

    def online_and_target(self, model: PreTrainedModel, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """L2-normalised online predictions and (no-grad) momentum targets of the views ``x``, in float32."""
        online = F.normalize(self.predictor(self.projector(self.cls_features(model, x))).float(), dim=-1)
        with torch.no_grad():
            target = F.normalize(self.momentum["projector"](self.cls_features(self.momentum["backbone"], x)).float(),
                                 dim=-1)
        return online, target

    def before_export(self) -> None:
        self.momentum.flush()


class ByolObjective(MomentumPairObjective):
    """BYOL (Grill et al., 2020): predict the EMA target's projection of one view from the other.

    Two views per image (crop, flip, colour jitter, grayscale; solarisation on the second). Online network:
    backbone -> projector -> predictor (MLPs with BatchNorm); target: the EMA copy of backbone + projector
    (cosine momentum from ``teacher_momentum`` to 1). Loss, symmetric: ``2 - 2 cos(p(v1), z'(v2))`` plus the same with
    the views swapped, one term per view (count ``2B``).
    """

    primary_term = "byol"

    def __init__(self, config: ViTConfig, image_mean: Sequence[float] = (0.5, 0.5, 0.5),
                 image_std: Sequence[float] = (0.5, 0.5, 0.5), *, backbone: PreTrainedModel, max_steps: int,
                 gradient_accumulation_steps: int = 1, teacher_momentum: float = 0.99, projection_dim: int = 256,
                 head_hidden_dim: int | None = None, crop_scale: tuple[float, float] = (0.2, 1.0)) -> None:
        super().__init__(config, image_mean, image_std)
        hidden = head_hidden_dim or default_head_width(self.hidden_size)
        self.crop_scale = check_crop_scale("crop_scale", crop_scale)
        self.projector = mlp(self.hidden_size, hidden, projection_dim, 2)
        self.predictor = mlp(projection_dim, hidden, projection_dim, 2)
        self._attach_teacher(backbone, teacher_momentum=teacher_momentum, max_steps=max_steps,
                             gradient_accumulation_steps=gradient_accumulation_steps)

    def forward(self, model: PreTrainedModel, batch: dict[str, torch.Tensor]) -> ObjectiveOutput:
        prediction, target = self.online_and_target(model, batch["pixel_values"])
        swapped = torch.cat(target.chunk(2)[::-1])                    # view 1 predicts view 2's target and back
        loss = (2.0 - 2.0 * (prediction * swapped).sum(dim=-1)).sum()
        return ObjectiveOutput(loss_sums={"byol": loss})
