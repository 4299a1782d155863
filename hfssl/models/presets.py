"""Size presets per model family, built as stock transformers configs.

``tiny`` exists so every recipe runs on a CPU in seconds; ``base`` matches the published
GPT-2 124M / BERT-base shapes.
"""

from __future__ import annotations

from typing import Any

from transformers import AutoConfig, PretrainedConfig

from hfssl.errors import ConfigError

# GPT-2 presets train without dropout (transformers' GPT2Config default is 0.1 everywhere):
# single-epoch pretraining sees every token about once, so there is nothing to overfit, and the
# runs we follow (nanoGPT, Pythia, llm.c) use 0. It is also faster (issue 4, H100: 332k vs 307k
# tokens/s). Floats, so ``--config_overrides resid_pdrop=0.1`` parses as a float.
_GPT2_NO_DROPOUT = {"resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0}
_BART_NO_DROPOUT = {"dropout": 0.0, "attention_dropout": 0.0, "activation_dropout": 0.0}

PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "gpt2": {
        "tiny": {"n_layer": 2, "n_embd": 64, "n_head": 2, **_GPT2_NO_DROPOUT},
        "mini": {"n_layer": 4, "n_embd": 256, "n_head": 4, **_GPT2_NO_DROPOUT},
        "small": {"n_layer": 6, "n_embd": 512, "n_head": 8, **_GPT2_NO_DROPOUT},
        "base": {"n_layer": 12, "n_embd": 768, "n_head": 12, **_GPT2_NO_DROPOUT},
    },
    "llama": {
        "tiny": {"num_hidden_layers": 2, "hidden_size": 64, "num_attention_heads": 2,
                 "num_key_value_heads": 2, "intermediate_size": 176},
        "mini": {"num_hidden_layers": 4, "hidden_size": 256, "num_attention_heads": 4,
                 "num_key_value_heads": 4, "intermediate_size": 688},
        "small": {"num_hidden_layers": 6, "hidden_size": 512, "num_attention_heads": 8,
                  "num_key_value_heads": 8, "intermediate_size": 1376},
        "base": {"num_hidden_layers": 12, "hidden_size": 768, "num_attention_heads": 12,
                 "num_key_value_heads": 12, "intermediate_size": 2048},
    },
    "bert": {
        "tiny": {"num_hidden_layers": 2, "hidden_size": 64, "num_attention_heads": 2, "intermediate_size": 256},
        "mini": {"num_hidden_layers": 4, "hidden_size": 256, "num_attention_heads": 4, "intermediate_size": 1024},
        "small": {"num_hidden_layers": 4, "hidden_size": 512, "num_attention_heads": 8, "intermediate_size": 2048},
        "base": {"num_hidden_layers": 12, "hidden_size": 768, "num_attention_heads": 12, "intermediate_size": 3072},
    },
    # Encoder-decoders for denoising pretraining (recipes/seq2seq_denoising.py). base = bart-base / t5-base,
    # T5's small = t5-small. No dropout, as the GPT-2 presets: single-epoch pretraining (T5.1.1 pretrained
    # without it); --config_overrides dropout=0.1 (BART) or dropout_rate=0.1 (T5) restores it.
    "bart": {
        "tiny": {"encoder_layers": 2, "decoder_layers": 2, "d_model": 64, "encoder_attention_heads": 2,
                 "decoder_attention_heads": 2, "encoder_ffn_dim": 256, "decoder_ffn_dim": 256, **_BART_NO_DROPOUT},
        "mini": {"encoder_layers": 4, "decoder_layers": 4, "d_model": 256, "encoder_attention_heads": 4,
                 "decoder_attention_heads": 4, "encoder_ffn_dim": 1024, "decoder_ffn_dim": 1024, **_BART_NO_DROPOUT},
        "small": {"encoder_layers": 6, "decoder_layers": 6, "d_model": 512, "encoder_attention_heads": 8,
                  "decoder_attention_heads": 8, "encoder_ffn_dim": 2048, "decoder_ffn_dim": 2048, **_BART_NO_DROPOUT},
        "base": {"encoder_layers": 6, "decoder_layers": 6, "d_model": 768, "encoder_attention_heads": 12,
                 "decoder_attention_heads": 12, "encoder_ffn_dim": 3072, "decoder_ffn_dim": 3072, **_BART_NO_DROPOUT},
    },
    "t5": {
        "tiny": {"num_layers": 2, "num_decoder_layers": 2, "d_model": 64, "d_kv": 32, "num_heads": 2, "d_ff": 256,
                 "dropout_rate": 0.0},
        "mini": {"num_layers": 4, "num_decoder_layers": 4, "d_model": 256, "d_kv": 64, "num_heads": 4, "d_ff": 1024,
                 "dropout_rate": 0.0},
        "small": {"num_layers": 6, "num_decoder_layers": 6, "d_model": 512, "d_kv": 64, "num_heads": 8, "d_ff": 2048,
                  "dropout_rate": 0.0},
        "base": {"num_layers": 12, "num_decoder_layers": 12, "d_model": 768, "d_kv": 64, "num_heads": 12,
                 "d_ff": 3072, "dropout_rate": 0.0},
    },
}

# ViT presets follow the DeiT/ViT widths (Ti 192, S 384, B 768); image and patch size are recipe flags,
# since the right patch grid depends on the images more than on the width.
VISION_PRESETS: dict[str, dict[str, Any]] = {
    "tiny": {"num_hidden_layers": 2, "hidden_size": 64, "num_attention_heads": 2, "intermediate_size": 256},
    "mini": {"num_hidden_layers": 4, "hidden_size": 192, "num_attention_heads": 3, "intermediate_size": 768},
    "small": {"num_hidden_layers": 12, "hidden_size": 384, "num_attention_heads": 6, "intermediate_size": 1536},
    "base": {"num_hidden_layers": 12, "hidden_size": 768, "num_attention_heads": 12, "intermediate_size": 3072},
}

# T5 has relative position buckets and no position table: any length runs, nothing to size.
_POSITION_FIELD = {"gpt2": "n_positions", "llama": "max_position_embeddings", "bert": "max_position_embeddings",
                   "bart": "max_position_embeddings", "t5": None}


def _coerce(value: str, current: Any) -> Any:
    if isinstance(current, bool):
        if value.lower() in ("true", "1", "yes"):
            return True
        if value.lower() in ("false", "0", "no"):
            return False
        raise ValueError(f"expected true/false, got {value!r}")
    if isinstance(current, int):
        return int(value)
    if isinstance(current, float):
        return float(value)
    if current is None:
        for cast in (int, float):
            try:
                return cast(value)
            except ValueError:
                pass
    return value


def parse_config_overrides(overrides: str | None, config: PretrainedConfig) -> dict[str, Any]:
    """Parse ``"num_hidden_layers=2,hidden_size=64"`` with types taken from ``config``."""
    result: dict[str, Any] = {}
    if not overrides:
        return result
    for item in overrides.split(","):
        item = item.strip()
        if not item:
            continue
        if "=" not in item:
            raise ConfigError(f"--config_overrides item {item!r} is not key=value")
        key, value = (s.strip() for s in item.split("=", 1))
        if not hasattr(config, key):
            raise ConfigError(f"--config_overrides: {type(config).__name__} has no field {key!r}")
        try:
            result[key] = _coerce(value, getattr(config, key))
        except ValueError as exc:
            raise ConfigError(f"--config_overrides {key}: {exc}") from None
    return result


def build_config(
    model_type: str,
    model_size: str = "tiny",
    *,
    vocab_size: int,
    max_position_embeddings: int | None = None,
    config_overrides: str | None = None,
    **extra: Any,
) -> PretrainedConfig:
    """Stock transformers config for ``model_type`` at ``model_size``, with overrides applied."""
    if model_type not in PRESETS:
        raise ConfigError(f"unknown --model_type {model_type!r}; choose from {', '.join(PRESETS)}")
    sizes = PRESETS[model_type]
    if model_size not in sizes:
        raise ConfigError(f"unknown --model_size {model_size!r}; choose from {', '.join(sizes)}")
    kwargs: dict[str, Any] = dict(sizes[model_size])
    kwargs["vocab_size"] = vocab_size
    if max_position_embeddings is not None and _POSITION_FIELD[model_type]:
        kwargs[_POSITION_FIELD[model_type]] = max_position_embeddings
    kwargs.update(extra)
    config = AutoConfig.for_model(model_type, **kwargs)
    for key, value in parse_config_overrides(config_overrides, config).items():
        setattr(config, key, value)
    return config


def build_vision_config(model_size: str = "tiny", *, image_size: int, patch_size: int,
                        config_overrides: str | None = None) -> PretrainedConfig:
    """Stock ``ViTConfig`` at ``model_size`` for ``image_size`` images cut in ``patch_size`` patches.

    ``encoder_stride`` equals the patch size so ``ViTForMaskedImageModeling`` (SimMIM) reconstructs
    the full image from the same config.
    """
    if model_size not in VISION_PRESETS:
        raise ConfigError(f"unknown --model_size {model_size!r}; choose from {', '.join(VISION_PRESETS)}")
    if patch_size < 1 or image_size % patch_size:
        raise ConfigError(f"--image_size {image_size} must be a multiple of --patch_size {patch_size}")
    config = AutoConfig.for_model("vit", image_size=image_size, patch_size=patch_size, encoder_stride=patch_size,
                                  **VISION_PRESETS[model_size])
    for key, value in parse_config_overrides(config_overrides, config).items():
        setattr(config, key, value)
    return config
