"""BART and T5 size presets build stock encoder-decoders, without dropout unless asked."""

from __future__ import annotations

import pytest
from transformers import AutoModelForSeq2SeqLM, BartConfig, T5Config

from hfssl.models import PRESETS, build_config


@pytest.mark.parametrize("family,cls", [("bart", BartConfig), ("t5", T5Config)])
def test_every_preset_builds_and_tiny_instantiates(family, cls):
    widths = []
    for size in ("tiny", "mini", "small", "base"):
        config = build_config(family, size, vocab_size=128, max_position_embeddings=64)
        assert isinstance(config, cls) and config.is_encoder_decoder
        widths.append(config.d_model)
        assert (config.dropout if family == "bart" else config.dropout_rate) == 0.0
    assert set(PRESETS[family]) == {"tiny", "mini", "small", "base"} and widths == sorted(widths)
    model = AutoModelForSeq2SeqLM.from_config(build_config(family, "tiny", vocab_size=128, max_position_embeddings=64))
    assert model.config.vocab_size == 128


def test_base_presets_are_bart_base_and_t5_base_and_dropout_comes_back_with_overrides():
    bart = build_config("bart", "base", vocab_size=50265, max_position_embeddings=1024)
    assert (bart.encoder_layers, bart.decoder_layers, bart.d_model, bart.encoder_ffn_dim) == (6, 6, 768, 3072)
    t5 = build_config("t5", "base", vocab_size=32128, max_position_embeddings=512)  # relative positions: ignored
    assert (t5.num_layers, t5.d_model, t5.d_ff, t5.num_heads) == (12, 768, 3072, 12)
    assert build_config("t5", "tiny", vocab_size=64, config_overrides="dropout_rate=0.1").dropout_rate == 0.1
