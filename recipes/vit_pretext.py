"""Pretrain a ViT with a self-supervised image task; the export is a stock ``ViTModel`` (SimMIM: a
``ViTForMaskedImageModeling``, MAE: a ``ViTMAEForPreTraining``) that the Auto classes load.

    accelerate launch recipes/vit_pretext.py --pretext_task dino --train_dir images/ \
        --model_size small --image_size 224 --patch_size 16 --output_dir out

Tasks: dino, moco_v3, byol, swav, deepcluster, exemplar, mae, the classic rotation, jigsaw,
relative_position, colorization, inpainting, contrastive (SimCLR) and mim (SimMIM), and the autoencoders
(autoencoder, denoising_autoencoder, sparse_autoencoder, vae: the CLS vector is the code, a small pixel
decoder belongs to the objective and is not exported). ``--train_dir`` is an
image folder (class sub-folders are fine; labels are only used for monitoring), or ``--dataset_name`` a Hub
dataset with an image column. With no data flags it trains on a built-in set made from scikit-learn's
1,797 real 8x8 digit scans: ``digits`` (default, the fast smoke set) or ``--builtin_images cluttered_digits``
(digits at a random place and scale among clutter, where raw pixels are a poor representation), split
``--builtin_split first_1500|random|writers``. Every random choice (views, crops, masks, negatives) is made
on the device inside the objective from the checkpointed generator, so a resumed run is exact.

Task flags reach every task that takes them (``--temperature``, ``--num_local_crops``...); a flag the task
does not take is an error; ``--pretext_options key=value,...`` sets any other option of the task's objective.
While training, every evaluation logs ``eval_knn_accuracy`` (labelled images), the spread and effective rank
of the features (and says so in the log if they collapse), and an online linear probe trained beside the task.
The export (``--output_dir``) loads with ``AutoModel`` and ``AutoImageProcessor``; evaluate it with
``recipes/image_probe.py`` (linear probe, kNN, fine-tuning, LP-FT).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, Optional

from hfssl.cli import main_entry, parse_args
from hfssl.config import TrainingArguments, VisionModelArguments, with_defaults
from hfssl.data.image_args import ImageDataArguments
from hfssl.objectives.vision import TASK_NAMES

# Flags whose objective argument has another name; every other task flag is the argument's own name.
_FLAG_TO_OPTION = {"jigsaw_grid": "grid"}
_NOT_TASK_FLAGS = ("pretext_task", "pretext_options", "knn_monitor_samples", "online_probe")
_NOISES = ("masking", "salt_pepper", "gaussian")  # denoising_autoencoder's --noise (checked before torch loads)


@dataclass
class PretextArguments:
    pretext_task: str = field(default="rotation", metadata={"help": f"One of: {', '.join(TASK_NAMES)}."})
    mask_ratio: Optional[float] = field(
        default=None, metadata={"help": "mim, mae: share of patches masked (default: SimMIM 0.6, MAE 0.75)."})
    mask_patch_size: Optional[int] = field(
        default=None, metadata={"help": "mim: side of the square mask blocks in pixels (default: 2 patches)."})
    norm_pix_loss: bool = field(default=False, metadata={
        "help": "mae: reconstruct each patch's pixels normalised by their mean and std (MAE's better variant)."})
    jigsaw_grid: Optional[int] = field(
        default=None, metadata={"help": "jigsaw: tiles per side (default 2; must divide the patch grid)."})
    num_permutations: Optional[int] = field(
        default=None, metadata={"help": "jigsaw: size of the permutation set (default: all, up to 100)."})
    temperature: Optional[float] = field(default=None, metadata={
        "help": "contrastive (0.1), moco_v3 (0.2), swav (0.1), exemplar (0.07): softmax temperature."})
    gather_negatives: bool = field(default=True, metadata={
        "help": "contrastive, moco_v3: contrast with the views of every process (the global batch), not only "
                "this process's; --no_gather_negatives turns it off."})
    projection_dim: Optional[int] = field(default=None, metadata={
        "help": "contrastive, moco_v3, byol, swav, exemplar: size of the projected embedding."})
    num_local_crops: Optional[int] = field(default=None, metadata={
        "help": "dino, swav: local views per image besides the two global ones (default 6)."})
    local_crop_size: Optional[int] = field(default=None, metadata={
        "help": "dino, swav: side of the local views in pixels (default: 96/224 of --image_size, whole patches)."})
    num_prototypes: Optional[int] = field(default=None, metadata={
        "help": "dino (head outputs, default 4096), swav (prototypes, default 300)."})
    teacher_momentum: Optional[float] = field(default=None, metadata={
        "help": "dino (0.996), moco_v3 (0.99), byol (0.99): the EMA teacher's first momentum, cosine to 1."})
    teacher_temperature: Optional[float] = field(default=None, metadata={
        "help": "dino: teacher temperature after its warm-up from 0.04 (default 0.07)."})
    export_student: bool = field(default=False, metadata={
        "help": "dino: export the student backbone instead of the teacher (DINO evaluates the teacher)."})
    queue_size: Optional[int] = field(default=None, metadata={
        "help": "swav: embeddings kept from past batches for the Sinkhorn codes (default 0: no queue)."})
    num_clusters: Optional[int] = field(default=None, metadata={"help": "deepcluster: k of k-means (default 100)."})
    cluster_every: Optional[int] = field(default=None, metadata={
        "help": "deepcluster: optimizer steps between two clusterings (default 50)."})
    code_dim: Optional[int] = field(default=None, metadata={
        "help": "autoencoder, denoising_autoencoder: project the CLS vector (the code) to this size; "
                "sparse_autoencoder, vae: size of the ReLU code / latent Gaussian (default: the CLS width)."})
    noise: Optional[str] = field(default=None, metadata={
        "help": f"denoising_autoencoder: the corruption, one of {', '.join(_NOISES)} (default masking)."})
    noise_level: Optional[float] = field(default=None, metadata={
        "help": "denoising_autoencoder: share of pixels blanked (masking, default 0.5) or set to black/white "
                "(salt_pepper, 0.25), or the std in [0, 1] pixel units (gaussian, 0.3)."})
    sparsity_weight: Optional[float] = field(default=None, metadata={
        "help": "sparse_autoencoder: weight of the L1 penalty on the ReLU code's mean activation (default 0.01)."})
    beta: Optional[float] = field(default=None, metadata={
        "help": "vae: weight of the KL term (default 1: the ELBO; beta-VAE above 1)."})
    pretext_options: Optional[str] = field(default=None, metadata={
        "help": "Any other option of the task's objective, e.g. 'num_negatives=1024,bank_momentum=0.5' (exemplar) "
                "or 'crop_scale=0.3:1.0'; tuples as a:b."})
    knn_monitor_samples: int = field(default=1000, metadata={
        "help": "At every evaluation, kNN top-1 of the CLS features (bank: this many labelled training images, "
                "queries: as many validation images) and the features' spread and effective rank (collapse "
                "detection); 0 turns it off."})
    online_probe: bool = field(default=True, metadata={
        "help": "Train a linear probe on the detached CLS features of labelled training images alongside the "
                "task (logged as online_probe/accuracy; --no_online_probe turns it off)."})

    def __post_init__(self) -> None:
        if self.pretext_task not in TASK_NAMES:
            raise ValueError(f"--pretext_task must be one of {', '.join(TASK_NAMES)}, got {self.pretext_task!r}")
        if self.mask_ratio is not None and not 0.0 < self.mask_ratio < 1.0:
            raise ValueError(f"--mask_ratio must be in (0, 1), got {self.mask_ratio}")
        if self.temperature is not None and self.temperature <= 0:
            raise ValueError("--temperature must be positive")
        if self.teacher_momentum is not None and not 0.0 <= self.teacher_momentum <= 1.0:
            raise ValueError(f"--teacher_momentum must be in [0, 1], got {self.teacher_momentum}")
        if self.knn_monitor_samples < 0:
            raise ValueError("--knn_monitor_samples must be >= 0")
        if self.noise is not None and self.noise not in _NOISES:
            raise ValueError(f"--noise must be one of {', '.join(_NOISES)}, got {self.noise!r}")
        for name in ("noise_level", "sparsity_weight", "beta"):
            if getattr(self, name) is not None and getattr(self, name) < 0:
                raise ValueError(f"--{name} must be >= 0, got {getattr(self, name)}")
        if self.code_dim is not None and self.code_dim < 1:
            raise ValueError(f"--code_dim must be >= 1, got {self.code_dim}")

    def objective_options(self) -> dict[str, Any]:
        """The options given for the chosen task, under the objective's own argument names.

        A flag left at its default is not passed (the task's own default applies); one given that the task
        does not take is an error, so a typo or a flag meant for another task never passes silently."""
        from hfssl.errors import ConfigError
        from hfssl.objectives.vision import task_defaults, task_options

        task = self.pretext_task
        accepted = task_options(task)
        options: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in _NOT_TASK_FLAGS or value == f.default:
                continue
            name = _FLAG_TO_OPTION.get(f.name, f.name)
            if name not in accepted:
                flag = f"--{f.name}" if not isinstance(value, bool) or value else f"--no_{f.name}"
                raise ConfigError(f"{flag} does not apply to --pretext_task {task} (its options: "
                                  f"{', '.join(accepted) or 'none'})")
            options[name] = value
        options.update(_parse_options(self.pretext_options, task, task_defaults(task), accepted))
        return options


def _parse_options(text: Optional[str], task: str, defaults: dict[str, Any], accepted: list[str]) -> dict[str, Any]:
    """``"a=1,b=0.5:1.0"`` -> ``{"a": 1, "b": (0.5, 1.0)}``, typed like the objective's defaults."""
    from hfssl.errors import ConfigError

    options: dict[str, Any] = {}
    for item in (text or "").split(","):
        if not item.strip():
            continue
        key, sep, raw = (part.strip() for part in item.partition("="))
        if not sep or key not in accepted:
            raise ConfigError(f"--pretext_options {item.strip()!r}: {task} takes key=value with key one of "
                              f"{', '.join(accepted)}")
        default = defaults.get(key)
        try:
            if isinstance(default, bool):
                if raw.lower() not in ("true", "false", "1", "0"):
                    raise ValueError(raw)
                value: Any = raw.lower() in ("true", "1")
            elif isinstance(default, (tuple, list)) or ":" in raw:
                value = tuple(float(x) for x in raw.split(":"))
            elif isinstance(default, int):
                value = int(raw)
            elif isinstance(default, float):
                value = float(raw)
            elif raw.lower() == "none":
                value = None
            else:
                value = int(raw) if raw.lstrip("-").isdigit() else float(raw)
        except ValueError:
            raise ConfigError(f"--pretext_options {key}={raw}: not a valid value for {task}'s {key} "
                              f"(default {default!r})") from None
        options[key] = value
    return options


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
    options = task_args.objective_options()  # a flag for another task fails before anything loads

    from accelerate.utils import DistributedType

    from hfssl.errors import ConfigError
    from hfssl.evaluation.knn_monitor import image_knn_monitor
    from hfssl.models.vision import (
        build_vision_model,
        export_hooks,
        image_statistics,
        resolve_image_processor,
    )
    from hfssl.objectives.vision import PRETEXT_TASKS, build_objective, task_context
    from hfssl.objectives.vision.monitoring import OnlineProbe
    from hfssl.training import make_accelerator, train
    from hfssl.training.recipe_utils import build_image_loaders

    task = task_args.pretext_task
    if args.max_steps <= 0 and {"max_steps"} & set(task_context(task)):
        raise ConfigError(f"--pretext_task {task} schedules its teacher over the run: set --max_steps")
    accelerator = make_accelerator(args)
    model = build_vision_model(model_args, PRETEXT_TASKS[task].model_class)
    image_size = model.config.image_size
    processor = resolve_image_processor(model_args, image_size)
    mean, std = image_statistics(processor)
    num_images = None
    if "num_images" in task_context(task):
        from hfssl.data.images import count_training_images

        num_images = count_training_images(data_args)
    objective = build_objective(task, model.config, mean, std, backbone=model, max_steps=args.max_steps,
                                gradient_accumulation_steps=args.gradient_accumulation_steps,
                                num_images=num_images, **options)
    sharded = accelerator.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED)
    if sharded and objective.export_backbone(model) is not model:
        raise ConfigError(f"under FSDP/DeepSpeed only the trained backbone is gathered for export: pass "
                          f"--export_student with --pretext_task {task}")
    train_loader, eval_factory = build_image_loaders(data_args, args, image_size=image_size, accelerator=accelerator)
    monitors = []
    if eval_factory is not None and task_args.knn_monitor_samples > 0:
        monitor = image_knn_monitor(data_args, image_size=image_size, seed=args.seed,
                                    samples=task_args.knn_monitor_samples,
                                    prepare=lambda pixels: objective.normalize(objective.to_unit(pixels)),
                                    encode=objective.encode, labels_required=False)
        monitors = [monitor] if monitor is not None else []
        # The collapse check also compares every evaluation with the features before training (a tiny ViT starts
        # out nearly collapsed). Sharded engines hold no whole model here: they keep the absolute thresholds.
        if monitors and accelerator.is_main_process and not sharded:
            objective.to(accelerator.device)  # DINO's encode reads its teacher
            monitor.measure_start(model.to(accelerator.device))
    num_classes = _num_classes(data_args) if task_args.online_probe else None
    trained = OnlineProbe(objective, num_classes) if num_classes else objective
    export_fn, verify_fn = export_hooks(trained, processor)
    result = train(objective=trained, model=model, train_loader=train_loader, args=args,
                   eval_loader_factory=eval_factory, processing_class=processor,
                   configs_to_record=(model_args, data_args, args, task_args), accelerator=accelerator,
                   eval_callbacks=monitors, export_fn=export_fn, verify_fn=verify_fn)
    if accelerator.is_main_process:
        shown = ("loss", "accuracy", "vae/", "zero_fraction")  # the autoencoders' KL, ELBO and code sparsity too
        summary = {k: round(v, 4) for k, v in result.metrics.items() if any(s in k for s in shown)}
        print(f"done: step {result.global_step}, {summary}, export in {result.export_dir}")
        print(f"evaluate it: python recipes/image_probe.py --model_name_or_path {result.export_dir}")


def _num_classes(data_args: Any) -> Optional[int]:
    """Classes of the training images' label column (a folder's class sub-folders), or None without labels."""
    import datasets

    from hfssl.data.images import load_image_dataset_from_args

    features = load_image_dataset_from_args(data_args, "train").features or {}
    label = features.get(data_args.label_column_name)
    return label.num_classes if isinstance(label, datasets.ClassLabel) and label.num_classes > 1 else None


if __name__ == "__main__":
    main()
