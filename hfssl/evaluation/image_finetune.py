"""Fine-tuning and LP-FT of a pretrained image encoder on a labelled image set (``--mode finetune|lp_ft``).

The frozen-feature probe (hfssl/evaluation/image_probe.py) says how linearly separable the features are;
these modes say how good a starting point the encoder is, as SSL papers report both:

* ``finetune``: ``AutoModelForImageClassification`` (ViT: ``ViTForImageClassification``, CLS token ->
  ``classifier``) with the checkpoint's encoder (a ``ViTForMaskedImageModeling`` export gives its ``vit.``
  weights) and a new head, every weight trained with AdamW through the GLUE evaluation's loop
  (hfssl/evaluation/finetune.py ``train``/``predict``, Accelerate: 1 CPU, 1 GPU or many).
* ``lp_ft`` (Kumar et al. 2022): the L-BFGS linear probe of ``--mode probe`` on the classifier's own head
  inputs, folded into ``classifier`` exactly (the probe's standardisation goes into weight and bias), then
  every weight fine-tuned from there at ``--ft_learning_rate``.

Training images get light augmentation on the device, after the image processor (resize + normalise):
a random resized crop and a horizontal flip, drawn from a seeded ``torch.Generator``. Both are linear
resampling, so applying them to normalised pixels equals applying them to uint8 pixels then normalising.
Validation images see exactly the inference preprocessing.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Optional

from hfssl.errors import ConfigError

if TYPE_CHECKING:
    import datasets
    import torch
    from accelerate import Accelerator
    from torch.utils.data import DataLoader
    from transformers import PreTrainedModel

    from hfssl.evaluation.image_probe import ImageProbeArguments, ImageSplits, LinearHead

AUGMENTATIONS = ("crop_flip", "crop", "none")


@dataclass
class ImageFinetuneArguments:
    """Training flags of ``--mode finetune|lp_ft`` (named as in transformers' ``run_image_classification.py``)."""

    num_train_epochs: float = field(default=5.0, metadata={"help": "Fine-tuning epochs."})
    per_device_train_batch_size: int = field(default=32, metadata={"help": "Training batch size per device."})
    learning_rate: float = field(default=1e-3, metadata={"help": "Peak fine-tuning learning rate (AdamW)."})
    ft_learning_rate: Optional[float] = field(
        default=None, metadata={"help": "LP-FT: fine-tuning LR after the probe (default: learning_rate / 2)."}
    )
    weight_decay: float = field(default=0.05, metadata={"help": "AdamW weight decay (not on biases/norms)."})
    warmup_ratio: float = field(default=0.1, metadata={"help": "Linear warmup as a fraction of the steps."})
    lr_scheduler_type: str = field(default="cosine", metadata={"help": "Any transformers.get_scheduler name."})
    max_grad_norm: float = field(default=1.0, metadata={"help": "Gradient clipping; 0 disables."})
    augmentation: str = field(
        default="crop_flip", metadata={"help": "Training augmentation: crop_flip (random resized crop + horizontal "
                                                "flip), crop, or none."}
    )
    min_crop_scale: float = field(
        default=0.5, metadata={"help": "Random resized crop: smallest crop area, as a fraction of the image."}
    )
    mixed_precision: str = field(default="no", metadata={"help": "no, fp16 or bf16."})
    logging_steps: int = field(default=20, metadata={"help": "Record the training loss every N steps."})

    def __post_init__(self) -> None:
        if self.num_train_epochs <= 0:
            raise ValueError(f"--num_train_epochs must be > 0, got {self.num_train_epochs}")
        if self.per_device_train_batch_size < 1:
            raise ValueError("--per_device_train_batch_size must be >= 1")
        for name in ("learning_rate", "ft_learning_rate"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"--{name} must be > 0, got {value}")
        if self.weight_decay < 0:
            raise ValueError(f"--weight_decay must be >= 0, got {self.weight_decay}")
        if not 0 <= self.warmup_ratio < 1:
            raise ValueError(f"--warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        if self.augmentation not in AUGMENTATIONS:
            raise ValueError(f"--augmentation must be one of {', '.join(AUGMENTATIONS)}, got {self.augmentation!r}")
        if not 0 < self.min_crop_scale <= 1:
            raise ValueError(f"--min_crop_scale must be in (0, 1], got {self.min_crop_scale}")
        if self.mixed_precision not in ("no", "fp16", "bf16"):
            raise ValueError("--mixed_precision must be no, fp16 or bf16")
        if self.logging_steps < 1:
            raise ValueError("--logging_steps must be >= 1")

    @property
    def effective_ft_learning_rate(self) -> float:
        return self.ft_learning_rate if self.ft_learning_rate is not None else self.learning_rate / 2


# ---------------------------------------------------------------------------------------------------------
# Model, data, augmentation


def build_classifier(model_name_or_path: str, class_names: list[str], init: str = "pretrained") -> PreTrainedModel:
    """``AutoModelForImageClassification`` with the checkpoint's encoder and a new ``len(class_names)``-way head.

    ``init="random"``: the same architecture with fresh weights. Seed first (``set_seed``): the head (and a
    random encoder) are drawn from the global RNG. Raises ConfigError when no encoder weight loads.
    """
    from transformers import AutoConfig, AutoModelForImageClassification

    labels = {"num_labels": len(class_names), "id2label": dict(enumerate(class_names)),
              "label2id": {n: i for i, n in enumerate(class_names)}}
    config = AutoConfig.from_pretrained(model_name_or_path, **labels)
    if config.model_type == "vit_mae":
        return _mae_classifier(model_name_or_path, config, labels, init)
    try:
        if init == "random":
            return AutoModelForImageClassification.from_config(config)
        # ignore_mismatched_sizes: a checkpoint that is already a classifier with another label count.
        model, info = AutoModelForImageClassification.from_pretrained(
            model_name_or_path, config=config, ignore_mismatched_sizes=True, output_loading_info=True)
    except ValueError as exc:
        raise ConfigError(f"--model_name_or_path {model_name_or_path}: no image-classification model for "
                          f"model_type {config.model_type!r} ({str(exc).splitlines()[0][:120]})") from None
    head_names = {name for name, _ in _head(model).named_parameters(prefix=_head_prefix(model))}
    encoder_missing = [k for k in info["missing_keys"] if k not in head_names]
    if encoder_missing and len(encoder_missing) >= len(model.state_dict()) - len(head_names):
        raise ConfigError(f"--model_name_or_path {model_name_or_path}: none of the encoder weights loaded into "
                          f"{type(model).__name__} (e.g. {encoder_missing[0]}); is it an image encoder export?")
    if encoder_missing:
        _logger().warning("%d encoder weights not in the checkpoint, left random (e.g. %s)",
                          len(encoder_missing), encoder_missing[0])
    return model


def _mae_classifier(model_name_or_path: str, config: Any, labels: dict[str, Any], init: str) -> PreTrainedModel:
    """An MAE export has no classification class in transformers: a ``ViTForImageClassification`` with the
    MAE encoder's weights (same names and shapes; the fixed sin-cos positions become its starting point)."""
    from transformers import ViTForImageClassification

    from hfssl.models.vision import load_vit_encoder, vit_config_from_mae

    model = ViTForImageClassification(vit_config_from_mae(config, **labels))
    if init != "random":
        model.vit.load_state_dict(load_vit_encoder(model_name_or_path).state_dict(), strict=True)
    return model


def _head(model: PreTrainedModel) -> torch.nn.Module:
    from hfssl.evaluation.finetune import find_head

    return find_head(model)


def _head_prefix(model: PreTrainedModel) -> str:
    head = _head(model)
    return next(name for name, module in model.named_modules() if module is head)


class ImageBatches:
    """DataLoader collate: examples -> ``{"pixel_values": processor output, "labels": int64}`` (picklable)."""

    def __init__(self, processor: Any, image_column: str, label_column: str,
                 label_to_id: Optional[dict[Any, int]] = None) -> None:
        self.processor = processor
        self.image_column = image_column
        self.label_column = label_column
        self.label_to_id = label_to_id

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        import torch

        from hfssl.evaluation.image_probe import _Preprocess

        labels = [ex[self.label_column] for ex in examples]
        if self.label_to_id is not None:
            labels = [self.label_to_id[v] for v in labels]
        return {"pixel_values": _Preprocess(self.processor, self.image_column)(examples),
                "labels": torch.tensor(labels, dtype=torch.long)}


def image_loader(splits: ImageSplits, dataset: datasets.Dataset, processor: Any, batch_size: int, shuffle: bool,
                 seed: int = 0, num_workers: int = 0) -> DataLoader:
    """Labelled batches of ``dataset`` (only the image and label columns are decoded)."""
    import torch
    from torch.utils.data import DataLoader

    columns = dataset.select_columns([splits.image_column, splits.label_column])
    generator = torch.Generator().manual_seed(seed) if shuffle else None
    return DataLoader(columns, batch_size=batch_size, shuffle=shuffle, generator=generator, num_workers=num_workers,
                      collate_fn=ImageBatches(processor, splits.image_column, splits.label_column, splits.label_to_id))


class CropFlip:
    """Training augmentation on the device: random resized crop (and horizontal flip) of ``pixel_values``.

    Uses the batched corruptions the pretext objectives use, drawing only from its own generator, so a
    seed fixes every crop.
    """

    def __init__(self, generator: torch.Generator, min_scale: float = 0.5, flip: bool = True) -> None:
        self.generator = generator
        self.scale = (min_scale, 1.0)
        self.flip = flip

    def __call__(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        from hfssl.objectives.vision.corruptions import horizontal_flip, random_resized_crop

        x = batch["pixel_values"]
        x = random_resized_crop(x, x.shape[-1], self.generator, scale=self.scale)
        if self.flip:
            x = horizontal_flip(x, self.generator)
        return {**batch, "pixel_values": x}


def augmentation(ft: ImageFinetuneArguments, seed: int, device: torch.device
                 ) -> Optional[Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]]]:
    import torch

    if ft.augmentation == "none":
        return None
    generator = torch.Generator(device=device).manual_seed(seed)
    return CropFlip(generator, ft.min_crop_scale, flip=ft.augmentation == "crop_flip")


def load_linear_head(model: PreTrainedModel, head: LinearHead) -> None:
    """Copy a probe (on raw head inputs) into the model's ``nn.Linear`` classification head."""
    import torch

    layer = _head(model)
    if not isinstance(layer, torch.nn.Linear) or tuple(layer.weight.shape) != tuple(head.weight.shape):
        raise ConfigError(f"LP-FT needs a linear classification head of shape {tuple(head.weight.shape)}; "
                          f"{type(model).__name__} has {layer}")
    with torch.no_grad():
        layer.weight.copy_(head.weight.to(layer.weight))
        layer.bias.copy_(head.bias.to(layer.bias))


# ---------------------------------------------------------------------------------------------------------
# One seed, then the whole run


@dataclass
class SeedResult:
    accuracy: float
    probe_accuracy: Optional[float]  # lp_ft: the probe stage's validation top-1
    losses: list[tuple[int, float]]


def fit_seed(args: ImageProbeArguments, ft: ImageFinetuneArguments, splits: ImageSplits, processor: Any,
             accelerator: Accelerator, seed: int, probe_cache: Optional[tuple[Any, LinearHead]] = None,
             on_train_begin: Optional[Callable[[PreTrainedModel], None]] = None
             ) -> tuple[SeedResult, Optional[tuple[Any, LinearHead]]]:
    """Build, (probe,) fine-tune and evaluate one seed; returns its result and the probe for the next seed.

    The probe of a pretrained encoder is deterministic, so it is computed once and reused across seeds;
    a random encoder differs per seed and is probed again.
    """
    from accelerate.utils import set_seed

    from hfssl.evaluation.finetune import predict, train
    from hfssl.evaluation.image_probe import linear_probe_head
    from hfssl.evaluation.linear_probe import extract_features

    set_seed(seed)
    model = build_classifier(args.model_name_or_path, splits.class_names, args.init)
    lr = ft.learning_rate
    probe_accuracy = None
    if args.mode == "lp_ft":
        if probe_cache is None or args.init == "random":
            feats = [extract_features(model, image_loader(splits, ds, processor, args.per_device_eval_batch_size,
                                                          shuffle=False, num_workers=args.dataloader_num_workers),
                                      accelerator, desc=f"{name} features")
                     for name, ds in (("train", splits.train), ("validation", splits.validation))]
            probe_cache = linear_probe_head(feats[0].inputs, feats[0].labels, feats[1].inputs, feats[1].labels,
                                            len(splits.class_names), args.probe_steps, args.probe_weight_decay,
                                            accelerator.device)
        probe, head = probe_cache
        load_linear_head(model, head)
        probe_accuracy, lr = probe.accuracy, ft.effective_ft_learning_rate
    train_loader = image_loader(splits, splits.train, processor, ft.per_device_train_batch_size, shuffle=True,
                                seed=seed, num_workers=args.dataloader_num_workers)
    stats = train(model, train_loader, accelerator, learning_rate=lr, num_epochs=ft.num_train_epochs,
                  weight_decay=ft.weight_decay, warmup_ratio=ft.warmup_ratio, lr_scheduler_type=ft.lr_scheduler_type,
                  max_grad_norm=ft.max_grad_norm, logging_steps=ft.logging_steps, desc=f"{args.mode} seed {seed}",
                  on_train_begin=on_train_begin,
                  prepare_batch=augmentation(ft, seed + accelerator.process_index, accelerator.device))
    eval_loader = image_loader(splits, splits.validation, processor, args.per_device_eval_batch_size, shuffle=False,
                               num_workers=args.dataloader_num_workers)
    preds, labels = predict(model, eval_loader, accelerator, regression=False)
    return SeedResult(float((preds == labels).mean()), probe_accuracy, stats.losses), probe_cache


def run_finetune(args: ImageProbeArguments, ft: ImageFinetuneArguments,
                 on_train_begin: Optional[Callable[[PreTrainedModel], None]] = None) -> dict[str, Any]:
    """Every seed of ``--mode finetune|lp_ft``; writes ``output_dir/results.json`` and prints the table."""
    import torch
    from accelerate import Accelerator

    from hfssl.evaluation.args import check_model_path
    from hfssl.evaluation.image_probe import (
        _labels,
        check_data_selection,
        load_image_processor,
        load_image_splits,
    )
    from hfssl.evaluation.report import summarise
    from hfssl.evaluation.runner import _has_accelerator
    from hfssl.logging import setup_logging
    from hfssl.run_info import redact, write_json_atomic

    if args.mode == "linear_probe":
        raise ConfigError("run_finetune runs --mode finetune or lp_ft; --mode linear_probe is image_probe.run")
    model_path = check_model_path(args.model_name_or_path)
    args.model_name_or_path = model_path
    check_data_selection(args)
    # cpu=True without an accelerator: what makes Accelerate use gloo under torchrun on CPU (as runner.py).
    accelerator = Accelerator(mixed_precision=ft.mixed_precision, cpu=not _has_accelerator())
    setup_logging(accelerator.is_main_process)
    from hfssl.training import engines

    engines.check_engine(accelerator)  # an FSDP/DeepSpeed config never silently becomes DDP
    started = time.time()
    processor = load_image_processor(model_path)
    splits = load_image_splits(args)
    num_classes = len(splits.class_names)
    # Validates every label up front (empty / out of range), so the collate can map them blindly.
    _labels(splits.train, splits.label_column, num_classes, splits.label_to_id)
    val_y = _labels(splits.validation, splits.label_column, num_classes, splits.label_to_id)
    seeds = args.seed_list()
    _logger().info("%s (%s, %s): %d train / %d validation images, %d classes, seeds %s, on %s", model_path,
                   args.init, args.mode, len(splits.train), len(val_y), num_classes, seeds, accelerator.device)
    per_seed: dict[int, SeedResult] = {}
    cache = None
    for seed in seeds:
        per_seed[seed], cache = fit_seed(args, ft, splits, processor, accelerator, seed, cache, on_train_begin)
        _logger().info("seed %d: top-1 %.2f", seed, 100 * per_seed[seed].accuracy)
    results: dict[str, Any] = {
        "model_name_or_path": model_path,
        "mode": args.mode,
        "init": args.init,
        "feature": args.feature,
        "num_train": len(splits.train),
        "num_validation": len(val_y),
        "num_classes": num_classes,
        "class_names": splits.class_names,
        "accuracy": summarise({s: r.accuracy for s, r in per_seed.items()}),
        "train_losses": {str(s): r.losses for s, r in per_seed.items()},
        "majority_accuracy": torch.bincount(val_y, minlength=num_classes).max().item() / len(val_y),
        "seconds": {"total": round(time.time() - started, 2)},
        "config": redact({**asdict(args), **asdict(ft)}),
    }
    if args.mode == "lp_ft":
        results["linear_probe"] = summarise({s: r.probe_accuracy for s, r in per_seed.items()})
    if accelerator.is_main_process:
        path = write_json_atomic(os.path.join(args.output_dir, "results.json"), results)
        print(render_finetune(results), flush=True)
        _logger().info("wrote %s", path)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return results


def _cell(summary: dict[str, Any]) -> str:
    text = f"{100 * summary['mean']:.2f}"
    return text + (f" ± {100 * summary['std']:.2f}" if len(summary["per_seed"]) > 1 else "")


def render_finetune(results: dict[str, Any]) -> str:
    """A small markdown table: validation top-1 x100 (mean ± std over seeds), with the majority baseline."""
    name = os.path.basename(str(results["model_name_or_path"]).rstrip("/"))
    header = ["Model", "Init", "Mode", "Fine-tuned top-1"]
    row = [name, results["init"], results["mode"], _cell(results["accuracy"])]
    if "linear_probe" in results:
        header.append("Linear probe top-1 (LP stage)")
        row.append(_cell(results["linear_probe"]))
    header.append("Majority")
    row.append(f"{100 * results['majority_accuracy']:.2f}")
    widths = [max(len(h), len(c)) for h, c in zip(header, row)]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |" for cells in (header, row)]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    config = results["config"]
    lines.append(f"{results['num_train']} train / {results['num_validation']} validation images, "
                 f"{results['num_classes']} classes; seeds {', '.join(results['accuracy']['per_seed'])}, "
                 f"{config['num_train_epochs']:g} epochs, augmentation {config['augmentation']}.")
    return "\n".join(lines)


def _logger() -> Any:
    from hfssl.logging import get_logger

    return get_logger(__name__)


__all__ = [
    "CropFlip",
    "ImageBatches",
    "ImageFinetuneArguments",
    "SeedResult",
    "build_classifier",
    "fit_seed",
    "image_loader",
    "load_linear_head",
    "render_finetune",
    "run_finetune",
]
