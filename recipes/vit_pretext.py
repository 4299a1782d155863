"""Pretrain a ViT with an image pretext task, as a stock ``ViTModel`` (``ViTForMaskedImageModeling`` for mim).

    accelerate launch recipes/vit_pretext.py --pretext_task rotation --train_dir images/ \
        --model_size small --image_size 224 --patch_size 16 --output_dir out

Tasks: rotation, jigsaw, relative_position, colorization, inpainting, contrastive (SimCLR) and mim
(SimMIM). ``--train_dir`` is an image folder (class sub-folders are fine; labels are not used), or
``--dataset_name`` a Hub dataset with an image column. With no data flags it trains on the built-in
handwritten digits (scikit-learn's 1,797 real 8x8 scans, upscaled to 32x32). All random corruptions run
on the device inside the objective, from the checkpointed generator, so a resumed run is exact.
The export (``--output_dir``) loads with ``AutoModel`` and ``AutoImageProcessor``; evaluate it with
``recipes/image_probe.py`` (linear probe and kNN).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from hfssl.cli import main_entry, parse_args
from hfssl.config import TrainingArguments, VisionModelArguments
from hfssl.data.images import ImageDataArguments
from hfssl.evaluation.knn_monitor import image_knn_monitor
from hfssl.models.vision import build_vision_model, image_statistics, resolve_image_processor
from hfssl.objectives.vision import PRETEXT_TASKS, build_objective
from hfssl.training import make_accelerator, train
from hfssl.training.recipe_utils import build_image_loaders, with_defaults


@dataclass
class PretextArguments:
    pretext_task: str = field(default="rotation", metadata={"help": f"One of: {', '.join(PRETEXT_TASKS)}."})
    mask_ratio: float = field(default=0.6, metadata={"help": "mim: share of patches masked (SimMIM: 0.6)."})
    mask_patch_size: Optional[int] = field(
        default=None, metadata={"help": "mim: side of the square mask blocks in pixels (default: 2 patches)."})
    jigsaw_grid: int = field(default=2, metadata={"help": "jigsaw: tiles per side (must divide the patch grid)."})
    num_permutations: Optional[int] = field(
        default=None, metadata={"help": "jigsaw: size of the permutation set (default: all, up to 100)."})
    temperature: float = field(default=0.1, metadata={"help": "contrastive: NT-Xent temperature."})
    knn_monitor_samples: int = field(default=1000, metadata={
        "help": "At every evaluation, kNN top-1 of the CLS features (bank: this many labelled training images, "
                "queries: as many validation images); needs labels (class sub-folders); 0 turns it off."})
    gather_negatives: bool = field(default=True, metadata={
        "help": "contrastive: contrast with the views of every process (SimCLR's global batch), not only "
                "this process's; --no_gather_negatives turns it off."})

    def __post_init__(self) -> None:
        if self.pretext_task not in PRETEXT_TASKS:
            raise ValueError(f"--pretext_task must be one of {', '.join(PRETEXT_TASKS)}, got {self.pretext_task!r}")
        if not 0.0 < self.mask_ratio < 1.0:
            raise ValueError(f"--mask_ratio must be in (0, 1), got {self.mask_ratio}")
        if self.temperature <= 0:
            raise ValueError("--temperature must be positive")
        if self.knn_monitor_samples < 0:
            raise ValueError("--knn_monitor_samples must be >= 0")

    def objective_options(self) -> dict:
        """The options of the chosen task only, under the objective's own argument names."""
        return {
            "mim": {"mask_ratio": self.mask_ratio, "mask_patch_size": self.mask_patch_size},
            "jigsaw": {"grid": self.jigsaw_grid, "num_permutations": self.num_permutations},
            "contrastive": {"temperature": self.temperature, "gather_negatives": self.gather_negatives},
        }.get(self.pretext_task, {})


# On top of the seeded file order of local folders, reshuffle every epoch in chunks of 2,048 images.
VitDataArguments = with_defaults(ImageDataArguments, shuffle_buffer_size=2048)
# Defaults: a real pretraining run on the built-in digits in about a minute on 2 CPU cores.
VitTrainingArguments = with_defaults(TrainingArguments, max_steps=200, learning_rate=1e-3, warmup_steps=20,
                                     per_device_train_batch_size=64, per_device_eval_batch_size=64,
                                     weight_decay=0.05, adam_beta2=0.999, logging_steps=20, eval_steps=100,
                                     checkpointing_steps=100, max_eval_batches=10, output_dir="out/vit_pretext")


@main_entry
def main(argv: list[str] | None = None) -> None:
    model_args, data_args, args, task_args = parse_args(
        [VisionModelArguments, VitDataArguments, VitTrainingArguments, PretextArguments], argv)
    accelerator = make_accelerator(args)
    objective_class = PRETEXT_TASKS[task_args.pretext_task]
    model = build_vision_model(model_args, objective_class.model_class)
    image_size = model.config.image_size
    processor = resolve_image_processor(model_args, image_size)
    mean, std = image_statistics(processor)
    objective = build_objective(task_args.pretext_task, model.config, mean, std, **task_args.objective_options())
    train_loader, eval_factory = build_image_loaders(data_args, args, image_size=image_size, accelerator=accelerator)
    monitors = []
    if eval_factory is not None and task_args.knn_monitor_samples > 0:
        monitor = image_knn_monitor(data_args, image_size=image_size, seed=args.seed,
                                    samples=task_args.knn_monitor_samples,
                                    prepare=lambda pixels: objective.normalize(objective.to_unit(pixels)))
        monitors = [monitor] if monitor is not None else []
    result = train(objective=objective, model=model, train_loader=train_loader, args=args,
                   eval_loader_factory=eval_factory, processing_class=processor,
                   configs_to_record=(model_args, data_args, args, task_args), accelerator=accelerator,
                   eval_callbacks=monitors)
    if accelerator.is_main_process:
        summary = {k: round(v, 4) for k, v in result.metrics.items() if "loss" in k or "accuracy" in k}
        print(f"done: step {result.global_step}, {summary}, export in {result.export_dir}")
        print(f"evaluate it: python recipes/image_probe.py --model_name_or_path {result.export_dir}")


if __name__ == "__main__":
    main()
