"""ViT backbones and their image processors for the vision recipes.

The backbone is a stock ``ViTModel`` (or ``ViTForMaskedImageModeling`` for SimMIM) and the image
processor a stock ``ViTImageProcessor`` sized to the model, so the export reloads with
``AutoModel`` / ``AutoImageProcessor`` and preprocesses exactly as training did.
"""

from __future__ import annotations

from typing import Any

import transformers
from transformers import AutoImageProcessor, PreTrainedModel, ViTForMaskedImageModeling, ViTModel

from hfssl.config import VisionModelArguments
from hfssl.errors import ConfigError, HfsslError
from hfssl.logging import get_logger
from hfssl.models.presets import build_vision_config

logger = get_logger(__name__)


def build_vision_model(model_args: VisionModelArguments, model_class: type[PreTrainedModel]) -> PreTrainedModel:
    """``model_class`` (ViTModel or ViTForMaskedImageModeling) from a checkpoint or a size preset.

    A ``ViTModel`` is built without its pooler: no pretext head reads it, and an unused parameter
    is an error under DDP. ``AutoModel`` still loads the export (with a fresh pooler, as it would
    for any ViT trained this way, e.g. ``ViTForImageClassification``).
    """
    if model_class not in (ViTModel, ViTForMaskedImageModeling):
        raise ConfigError(f"vision objectives train ViTModel or ViTForMaskedImageModeling, not {model_class.__name__}")
    kwargs: dict[str, Any] = {"add_pooling_layer": False} if model_class is ViTModel else {}
    if model_args.model_name_or_path:
        try:
            model = model_class.from_pretrained(model_args.model_name_or_path, **kwargs)
        except (OSError, ValueError) as exc:
            raise HfsslError(f"cannot load --model_name_or_path {model_args.model_name_or_path!r}: "
                             f"{str(exc).splitlines()[0]}") from None
        if model.config.model_type != "vit":
            raise ConfigError(f"--model_name_or_path is a {model.config.model_type!r} model; the vision "
                              "recipes train ViT backbones")
        if model_class is ViTForMaskedImageModeling and model.config.encoder_stride != model.config.patch_size:
            raise ConfigError(f"masked image modeling needs encoder_stride == patch_size; the checkpoint has "
                              f"{model.config.encoder_stride} and {model.config.patch_size}")
    else:
        config = build_vision_config(model_args.model_size, image_size=model_args.image_size,
                                     patch_size=model_args.patch_size, config_overrides=model_args.config_overrides)
        model = model_class(config, **kwargs)
    n_params = sum(p.numel() for p in model.parameters())
    logger.info("model %s: %.1fM parameters, %dx%d images in %d patches", type(model).__name__, n_params / 1e6,
                model.config.image_size, model.config.image_size,
                (model.config.image_size // model.config.patch_size) ** 2)
    return model


def resolve_image_processor(model_args: VisionModelArguments, image_size: int) -> Any:
    """``--image_processor_name``, else the checkpoint's, else a ``ViTImageProcessor`` for ``image_size``.

    Training resizes straight to ``image_size`` x ``image_size`` with bilinear filtering and normalises
    with the processor's mean/std, so the processor must resize the same way: one that resizes
    elsewhere (shortest edge, centre crop) or to another size is refused rather than silently
    mismatching training and inference.
    """
    source = model_args.image_processor_name or model_args.model_name_or_path
    if source:
        try:
            processor = AutoImageProcessor.from_pretrained(source)
        except (OSError, ValueError) as exc:
            raise HfsslError(f"cannot load an image processor from {source!r}: {str(exc).splitlines()[0]}") from None
    else:
        # The PIL backend resizes exactly as the training stream does (transformers >= 5 saves it as a plain
        # ViTImageProcessor, so the export loads anywhere); do_convert_rgb: grey, palette and RGBA files
        # then go through as the training stream takes them.
        processor_class = getattr(transformers, "ViTImageProcessorPil", None) or transformers.ViTImageProcessor
        processor = processor_class(size={"height": image_size, "width": image_size}, do_convert_rgb=True)
    size = getattr(processor, "size", None) or {}
    if dict(size) != {"height": image_size, "width": image_size} or getattr(processor, "do_center_crop", False):
        raise ConfigError(f"the image processor resizes to {dict(size)}, but the model takes {image_size}x{image_size} "
                          "images resized directly; pass a matching --image_processor_name or none")
    if not getattr(processor, "do_normalize", True) or not getattr(processor, "do_rescale", True):
        raise ConfigError("the image processor must rescale and normalise (do_rescale/do_normalize true)")
    return processor


def image_statistics(processor: Any) -> tuple[list[float], list[float]]:
    """The processor's per-channel mean and std (what the objective normalises with)."""
    mean, std = processor.image_mean, processor.image_std
    if isinstance(mean, (int, float)):
        mean = [float(mean)] * 3
    if isinstance(std, (int, float)):
        std = [float(std)] * 3
    return [float(m) for m in mean], [float(s) for s in std]


__all__ = ["build_vision_model", "image_statistics", "resolve_image_processor"]
