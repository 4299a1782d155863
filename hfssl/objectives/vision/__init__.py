"""Vision pretext tasks: a registry from task name to objective class, and its builder."""

from __future__ import annotations

import inspect
from collections.abc import Sequence

from transformers import ViTConfig

from hfssl.errors import ConfigError
from hfssl.objectives.vision.objectives import (
    ColorizationObjective,
    ContrastiveObjective,
    InpaintingObjective,
    JigsawObjective,
    MaskedImageModelingObjective,
    RelativePositionObjective,
    RotationObjective,
    VisionObjective,
)

#: Task name (the recipe's ``--pretext_task``) -> objective class. Adding a task = one line here.
PRETEXT_TASKS: dict[str, type[VisionObjective]] = {
    "rotation": RotationObjective,
    "jigsaw": JigsawObjective,
    "relative_position": RelativePositionObjective,
    "colorization": ColorizationObjective,
    "inpainting": InpaintingObjective,
    "contrastive": ContrastiveObjective,
    "mim": MaskedImageModelingObjective,
}


def task_options(task: str) -> list[str]:
    """The keyword options ``build_objective`` accepts for ``task`` (beyond config/mean/std)."""
    params = inspect.signature(PRETEXT_TASKS[task].__init__).parameters
    return [name for name in params if name not in ("self", "config", "image_mean", "image_std")]


def build_objective(task: str, config: ViTConfig, image_mean: Sequence[float] = (0.5, 0.5, 0.5),
                    image_std: Sequence[float] = (0.5, 0.5, 0.5), **options) -> VisionObjective:
    """Instantiate the objective for ``task``; its ``model_class`` says which backbone to build.

    Raises ``ConfigError`` for an unknown task or an option the task does not take.
    """
    if task not in PRETEXT_TASKS:
        raise ConfigError(f"unknown pretext task {task!r}; choose one of: {', '.join(PRETEXT_TASKS)}")
    accepted = task_options(task)
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ConfigError(f"pretext task {task!r} does not take {', '.join(unknown)}; its options are: "
                          f"{', '.join(accepted) or 'none'}")
    return PRETEXT_TASKS[task](config, image_mean=image_mean, image_std=image_std, **options)


__all__ = [
    "PRETEXT_TASKS",
    "ColorizationObjective",
    "ContrastiveObjective",
    "InpaintingObjective",
    "JigsawObjective",
    "MaskedImageModelingObjective",
    "RelativePositionObjective",
    "RotationObjective",
    "VisionObjective",
    "build_objective",
    "task_options",
]
