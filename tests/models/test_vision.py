"""ViT presets, backbone/processor resolution and the export + reload check for vision models."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import (
    AutoImageProcessor,
    AutoModel,
    AutoModelForMaskedImageModeling,
    ViTForMaskedImageModeling,
    ViTImageProcessor,
    ViTModel,
)

from hfssl.config import VisionModelArguments
from hfssl.errors import ConfigError, HfsslError
from hfssl.models.export import auto_classes_for, export_pretrained, verify_reload
from hfssl.models.presets import VISION_PRESETS, build_vision_config
from hfssl.models.vision import build_vision_model, image_statistics, resolve_image_processor


def test_presets_have_the_published_widths_and_consistent_heads():
    assert VISION_PRESETS["small"]["hidden_size"] == 384 and VISION_PRESETS["base"]["hidden_size"] == 768
    for size in VISION_PRESETS:
        config = build_vision_config(size, image_size=224, patch_size=16)
        assert config.hidden_size % config.num_attention_heads == 0, size
        assert config.encoder_stride == config.patch_size == 16


def test_overrides_and_bad_sizes():
    config = build_vision_config("tiny", image_size=32, patch_size=4, config_overrides="num_hidden_layers=3")
    assert config.num_hidden_layers == 3 and config.image_size == 32
    with pytest.raises(ConfigError, match="multiple of --patch_size"):
        build_vision_config("tiny", image_size=30, patch_size=4)
    with pytest.raises(ConfigError, match="unknown --model_size"):
        build_vision_config("huge", image_size=32, patch_size=4)
    with pytest.raises(ValueError, match="multiple of --patch_size"):
        VisionModelArguments(image_size=30, patch_size=4)


@pytest.mark.parametrize("model_class", [ViTModel, ViTForMaskedImageModeling])
def test_export_reloads_with_auto_classes_and_same_outputs(model_class, tmp_path: Path):
    model = build_vision_model(VisionModelArguments(model_size="tiny"), model_class)
    if model_class is ViTModel:
        assert model.pooler is None  # no unused parameters under DDP
    processor = resolve_image_processor(VisionModelArguments(), model.config.image_size)
    export_pretrained(model, processor, str(tmp_path))
    classes = auto_classes_for(model)
    expected = [AutoModel] + ([AutoModelForMaskedImageModeling] if model_class is ViTForMaskedImageModeling else [])
    assert classes == expected
    for auto_class in classes:
        assert verify_reload(str(tmp_path), model, auto_class=auto_class) < 1e-5
    # A changed weight must be caught by the reload check (not a constant shift: LayerNorm removes those).
    with torch.no_grad():
        model.get_input_embeddings().projection.weight.mul_(2.0)
    with pytest.raises(HfsslError, match="does not reproduce"):
        verify_reload(str(tmp_path), model)
    loaded = AutoImageProcessor.from_pretrained(tmp_path)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (45, 60, 3), dtype=np.uint8))
    assert loaded(image, return_tensors="pt")["pixel_values"].shape == (1, 3, 32, 32)


def test_continue_from_checkpoint_and_processor_checks(tmp_path: Path):
    model = build_vision_model(VisionModelArguments(model_size="tiny", image_size=16, patch_size=4), ViTModel)
    model.save_pretrained(tmp_path / "ckpt")
    ViTImageProcessor(size={"height": 16, "width": 16}, image_mean=[0.4, 0.5, 0.6]).save_pretrained(tmp_path / "ckpt")
    args = VisionModelArguments(model_name_or_path=str(tmp_path / "ckpt"))
    again = build_vision_model(args, ViTForMaskedImageModeling)
    assert torch.equal(again.vit.embeddings.patch_embeddings.projection.weight,
                       model.embeddings.patch_embeddings.projection.weight)
    processor = resolve_image_processor(args, 16)
    assert image_statistics(processor) == ([0.4, 0.5, 0.6], [0.5, 0.5, 0.5])
    with pytest.raises(ConfigError, match="resizes to"):
        resolve_image_processor(args, 32)
    with pytest.raises(HfsslError, match="cannot load --model_name_or_path"):
        build_vision_model(VisionModelArguments(model_name_or_path=str(tmp_path / "missing")), ViTModel)
