"""ViT backbones and their image processors for the vision recipes.

The backbone is a stock ``ViTModel`` (``ViTForMaskedImageModeling`` for SimMIM, ``ViTMAEForPreTraining`` for
MAE) and the image processor a stock ``ViTImageProcessor`` sized to the model, so the export reloads with
``AutoModel`` / ``AutoImageProcessor`` and preprocesses exactly as training did.

An MAE encoder (``ViTMAEModel``) masks 75% of the patches at random in every forward, which is right for
pretraining and wrong for evaluation. Its weights have exactly the names and shapes of a ``ViTModel``'s
(the fixed sin-cos position table included), so :func:`load_vit_encoder` and :func:`vit_config_from_mae`
turn it into the ViT that evaluation runs on every image: the same function, minus the masking.
"""

from __future__ import annotations

from typing import Any

import transformers
from transformers import (
    AutoImageProcessor,
    PreTrainedModel,
    ViTConfig,
    ViTForMaskedImageModeling,
    ViTMAEConfig,
    ViTMAEForPreTraining,
    ViTModel,
)

from hfssl.config import VisionModelArguments
from hfssl.errors import ConfigError, HfsslError
from hfssl.logging import get_logger
from hfssl.models.presets import build_vision_config, parse_config_overrides

logger = get_logger(__name__)


_TRAINABLE = (ViTModel, ViTForMaskedImageModeling, ViTMAEForPreTraining)
# Encoder fields a ViTMAEConfig shares with a ViTConfig.
_SHARED_FIELDS = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "hidden_act",
                  "hidden_dropout_prob", "attention_probs_dropout_prob", "initializer_range", "layer_norm_eps",
                  "image_size", "patch_size", "num_channels", "qkv_bias")


def mae_config_from_vit(config: ViTConfig, overrides: str | None = None) -> ViTMAEConfig:
    """A ``ViTMAEConfig`` with ``config``'s encoder and a light decoder: as wide as the encoder, 2 layers
    (MAE's decoder is deliberately small; ``--config_overrides decoder_num_hidden_layers=...`` changes it)."""
    mae = ViTMAEConfig(**{k: getattr(config, k) for k in _SHARED_FIELDS}, decoder_hidden_size=config.hidden_size,
                       decoder_num_hidden_layers=2, decoder_num_attention_heads=config.num_attention_heads,
                       decoder_intermediate_size=config.intermediate_size)
    for key, value in parse_config_overrides(overrides, mae).items():
        setattr(mae, key, value)
    return mae


def vit_config_from_mae(config: ViTMAEConfig, **extra: Any) -> ViTConfig:
    """The ``ViTConfig`` whose ``ViTModel`` computes an MAE encoder's function on whole (unmasked) images."""
    return ViTConfig(**{k: getattr(config, k) for k in _SHARED_FIELDS}, encoder_stride=config.patch_size, **extra)


def load_vit_encoder(model_name_or_path: str, init: str = "pretrained", **config_kwargs: Any) -> ViTModel:
    """The image encoder of a checkpoint as the model evaluation runs (``AutoModel``'s, except MAE's).

    A ViT (or SimMIM) checkpoint gives the ``ViTModel`` ``AutoModel`` loads (no pooler: nothing reads it); an
    MAE checkpoint gives a ``ViTModel`` holding its encoder weights, so every patch is seen (``ViTMAEModel``
    would mask 75% of them at random). ``init="random"``: the same architecture with fresh weights (seed
    first). Other model types load with ``AutoModel`` as they are.
    """
    from transformers import AutoConfig, AutoModel

    config = AutoConfig.from_pretrained(model_name_or_path, **config_kwargs)
    if config.model_type == "vit_mae":
        vit = ViTModel(vit_config_from_mae(config), add_pooling_layer=False)
        if init != "random":
            # The encoder alone: transformers would list the decoder's weights as unexpected, which they are not.
            verbosity = transformers.logging.get_verbosity()
            transformers.logging.set_verbosity_error()
            try:
                encoder = AutoModel.from_pretrained(model_name_or_path)
            finally:
                transformers.logging.set_verbosity(verbosity)
            vit.load_state_dict(encoder.state_dict(), strict=True)
        return vit
    kwargs = {"add_pooling_layer": False} if config.model_type == "vit" else {}
    if init == "random":
        return AutoModel.from_config(config, **kwargs)
    return AutoModel.from_pretrained(model_name_or_path, **kwargs)


def build_vision_model(model_args: VisionModelArguments, model_class: type[PreTrainedModel]) -> PreTrainedModel:
    """``model_class`` (ViTModel, ViTForMaskedImageModeling or ViTMAEForPreTraining) from a checkpoint or a preset.

    A ``ViTModel`` is built without its pooler: no pretext head reads it, and an unused parameter
    is an error under DDP. ``AutoModel`` still loads the export (with a fresh pooler, as it would
    for any ViT trained this way, e.g. ``ViTForImageClassification``).
    """
    if model_class not in _TRAINABLE:
        raise ConfigError(f"vision objectives train {', '.join(c.__name__ for c in _TRAINABLE)}, not "
                          f"{model_class.__name__}")
    kwargs: dict[str, Any] = {"add_pooling_layer": False} if model_class is ViTModel else {}
    expected_type = "vit_mae" if model_class is ViTMAEForPreTraining else "vit"
    if model_args.model_name_or_path:
        try:
            model = model_class.from_pretrained(model_args.model_name_or_path, **kwargs)
        except (OSError, ValueError) as exc:
            raise HfsslError(f"cannot load --model_name_or_path {model_args.model_name_or_path!r}: "
                             f"{str(exc).splitlines()[0]}") from None
        if model.config.model_type != expected_type:
            raise ConfigError(f"--model_name_or_path is a {model.config.model_type!r} model; this pretext task "
                              f"trains {expected_type!r} backbones")
        if model_class is ViTForMaskedImageModeling and model.config.encoder_stride != model.config.patch_size:
            raise ConfigError(f"masked image modeling needs encoder_stride == patch_size; the checkpoint has "
                              f"{model.config.encoder_stride} and {model.config.patch_size}")
    elif model_class is ViTMAEForPreTraining:
        config = build_vision_config(model_args.model_size, image_size=model_args.image_size,
                                     patch_size=model_args.patch_size)
        model = model_class(mae_config_from_vit(config, model_args.config_overrides))
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


def export_hooks(objective: Any, processor: Any) -> tuple[Any, Any]:
    """``(export_fn, verify_fn)`` for ``train``: export what the objective says (``objective.export_backbone``:
    DINO's teacher, else the backbone) with the image processor, and check it reloads with the Auto classes
    (with the objective's fixed inputs where a forward is random, as MAE's masking)."""
    from hfssl.models.export import auto_classes_for, export_pretrained, verify_reload

    def export_fn(backbone: PreTrainedModel, output_dir: str, state_dict: Any) -> None:
        objective.before_export()
        model = objective.export_backbone(backbone)
        if model is not backbone and state_dict is not None:
            raise ConfigError("sharded training (FSDP/DeepSpeed) gathers the trained backbone only: export it "
                              "(e.g. --export_student for DINO)")
        export_pretrained(model, processor, output_dir, state_dict=state_dict)

    def verify_fn(output_dir: str, backbone: PreTrainedModel) -> list[str]:
        model = objective.export_backbone(backbone)
        inputs = objective.export_example_inputs(model)
        messages = []
        for auto_class in auto_classes_for(model):
            diff = verify_reload(output_dir, model, auto_class=auto_class, example_inputs=inputs)
            messages.append(f"reloads with {auto_class.__name__} (max |diff| {diff:.2g})")
        return messages

    return export_fn, verify_fn


def image_statistics(processor: Any) -> tuple[list[float], list[float]]:
    """The processor's per-channel mean and std (what the objective normalises with)."""
    mean, std = processor.image_mean, processor.image_std
    if isinstance(mean, (int, float)):
        mean = [float(mean)] * 3
    if isinstance(std, (int, float)):
        std = [float(std)] * 3
    return [float(m) for m in mean], [float(s) for s in std]


__all__ = ["build_vision_model", "export_hooks", "image_statistics", "load_vit_encoder", "mae_config_from_vit", "resolve_image_processor",
           "vit_config_from_mae"]
