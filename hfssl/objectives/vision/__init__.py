"""Vision pretext tasks: the registry from task name to objective class, and its builder.

One file per family: ``pretext.py`` (rotation, jigsaw, relative position), ``generative.py`` (colorization,
inpainting, SimMIM, MAE), ``contrastive.py`` (SimCLR, MoCo v3, exemplar), ``distillation.py`` (DINO, BYOL),
``clustering.py`` (SwAV, DeepCluster), ``autoencoders.py`` (plain, denoising, sparse, variational); shared
pieces in ``base.py``, ``corruptions.py``, ``heads.py`` and ``momentum.py`` (the one EMA teacher of DINO,
MoCo v3 and BYOL).

Adding a task: write its objective in the family's file, add one line to ``_TASKS`` below, add its test. The
recipe's flags reach any objective argument of the same name, and ``--pretext_options key=value,...`` the rest.

This module imports no torch: the recipe lists the tasks in ``--help`` without loading them; a class is
imported when it is first looked up.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from hfssl.errors import ConfigError

if TYPE_CHECKING:
    from hfssl.objectives.vision.base import VisionObjective

#: Task name (the recipe's ``--pretext_task``) -> "family_module:ObjectiveClass". Adding a task = one line here.
_TASKS: dict[str, str] = {
    "rotation": "pretext:RotationObjective",
    "jigsaw": "pretext:JigsawObjective",
    "relative_position": "pretext:RelativePositionObjective",
    "colorization": "generative:ColorizationObjective",
    "inpainting": "generative:InpaintingObjective",
    "contrastive": "contrastive:ContrastiveObjective",
    "mim": "generative:MaskedImageModelingObjective",
    "dino": "distillation:DinoObjective",
    "moco_v3": "contrastive:MocoV3Objective",
    "byol": "distillation:ByolObjective",
    "swav": "clustering:SwavObjective",
    "deepcluster": "clustering:DeepClusterObjective",
    "exemplar": "contrastive:ExemplarObjective",
    "mae": "generative:MaskedAutoencoderObjective",
    "autoencoder": "autoencoders:AutoencoderObjective",
    "denoising_autoencoder": "autoencoders:DenoisingAutoencoderObjective",
    "sparse_autoencoder": "autoencoders:SparseAutoencoderObjective",
    "vae": "autoencoders:VariationalAutoencoderObjective",
}

#: Arguments the builder fills from the run, not from task flags: the student backbone (momentum teachers
#: copy it), the run's optimizer steps and accumulation (schedules), the number of training images (banks).
CONTEXT_ARGUMENTS = ("backbone", "max_steps", "gradient_accumulation_steps", "num_images")
_NOT_OPTIONS = ("self", "config", "image_mean", "image_std", *CONTEXT_ARGUMENTS)


def _load(spec: str) -> type[VisionObjective]:
    module, name = spec.split(":")
    return getattr(importlib.import_module(f"hfssl.objectives.vision.{module}"), name)


class _Registry(Mapping):
    """``{task: objective class}``, importing a family's module on first lookup."""

    def __init__(self, specs: dict[str, str]) -> None:
        self._specs = specs

    def __getitem__(self, task: str) -> type[VisionObjective]:
        return _load(self._specs[task])

    def __iter__(self) -> Iterator[str]:
        return iter(self._specs)

    def __len__(self) -> int:
        return len(self._specs)


PRETEXT_TASKS: Mapping[str, type[VisionObjective]] = _Registry(_TASKS)
TASK_NAMES: tuple[str, ...] = tuple(_TASKS)


def _parameters(task: str) -> Mapping[str, inspect.Parameter]:
    return inspect.signature(PRETEXT_TASKS[task].__init__).parameters


def task_options(task: str) -> list[str]:
    """The keyword options ``build_objective`` accepts for ``task`` (beyond config, statistics and context)."""
    return [name for name in _parameters(task) if name not in _NOT_OPTIONS]


def task_defaults(task: str) -> dict[str, Any]:
    """``{option: default}`` of ``task`` (options without a default are left out)."""
    return {name: p.default for name, p in _parameters(task).items()
            if name not in _NOT_OPTIONS and p.default is not inspect.Parameter.empty}


def task_context(task: str) -> list[str]:
    """Which of :data:`CONTEXT_ARGUMENTS` the task's objective takes."""
    return [name for name in _parameters(task) if name in CONTEXT_ARGUMENTS]


def build_objective(task: str, config: Any, image_mean: Sequence[float] = (0.5, 0.5, 0.5),
                    image_std: Sequence[float] = (0.5, 0.5, 0.5), *, backbone: Any = None,
                    max_steps: int | None = None, gradient_accumulation_steps: int = 1, num_images: int | None = None,
                    **options: Any) -> VisionObjective:
    """Instantiate the objective for ``task``; its ``model_class`` says which backbone to build.

    The context arguments are passed to the objectives that take them (a momentum teacher needs
    ``backbone`` and ``max_steps``, a memory bank ``num_images``). Raises ``ConfigError`` for an unknown task,
    an option the task does not take, or missing context.
    """
    if task not in _TASKS:
        raise ConfigError(f"unknown pretext task {task!r}; choose one of: {', '.join(_TASKS)}")
    accepted = task_options(task)
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ConfigError(f"pretext task {task!r} does not take {', '.join(unknown)}; its options are: "
                          f"{', '.join(accepted) or 'none'}")
    context = {"backbone": backbone, "max_steps": max_steps, "gradient_accumulation_steps": gradient_accumulation_steps,
               "num_images": num_images}
    wanted = {name: context[name] for name in task_context(task)}
    missing = [name for name, value in wanted.items() if value is None]
    if missing:
        raise ConfigError(f"pretext task {task!r} needs {', '.join(missing)} (the number of training images for "
                          "a memory bank, the run's max_steps for a schedule, the backbone for a teacher)")
    return PRETEXT_TASKS[task](config, image_mean=image_mean, image_std=image_std, **wanted, **options)


_CLASSES = {spec.split(":")[1]: spec for spec in _TASKS.values()}
_CLASSES.update({"VisionObjective": "base:VisionObjective", "nt_xent": "contrastive:nt_xent"})


def __getattr__(name: str) -> Any:
    """``from hfssl.objectives.vision import DinoObjective`` (or any class of the registry), imported lazily."""
    if name in _CLASSES:
        return _load(_CLASSES[name])
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["CONTEXT_ARGUMENTS", "PRETEXT_TASKS", "TASK_NAMES", "build_objective", "task_context", "task_defaults",
           "task_options", *sorted(_CLASSES)]
