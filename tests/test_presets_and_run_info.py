import json

import pytest
from transformers import AutoModel, BertConfig, GPT2Config, LlamaConfig

from hfssl.errors import ConfigError
from hfssl.models import PRESETS, build_config
from hfssl.run_info import write_run_info


@pytest.mark.parametrize("family,cls", [("gpt2", GPT2Config), ("llama", LlamaConfig), ("bert", BertConfig)])
def test_every_preset_builds_a_stock_model(family, cls):
    for size in PRESETS[family]:
        config = build_config(family, size, vocab_size=128, max_position_embeddings=64)
        assert isinstance(config, cls)
    tiny = build_config(family, "tiny", vocab_size=128, max_position_embeddings=64)
    model = AutoModel.from_config(tiny)
    assert model.config.vocab_size == 128


def test_gpt2_presets_train_without_dropout_and_overrides_turn_it_back_on():
    for size in PRESETS["gpt2"]:
        config = build_config("gpt2", size, vocab_size=128)
        assert (config.resid_pdrop, config.embd_pdrop, config.attn_pdrop) == (0.0, 0.0, 0.0), size
    config = build_config("gpt2", "tiny", vocab_size=128, config_overrides="resid_pdrop=0.1,attn_pdrop=0.2")
    assert (config.resid_pdrop, config.embd_pdrop, config.attn_pdrop) == (0.1, 0.0, 0.2)
    model = AutoModel.from_config(config)
    assert model.h[0].mlp.dropout.p == 0.1


def test_overrides_are_typed():
    config = build_config("bert", "tiny", vocab_size=64,
                          config_overrides="num_hidden_layers=3,hidden_dropout_prob=0.0,hidden_act=relu")
    assert config.num_hidden_layers == 3 and config.hidden_dropout_prob == 0.0 and config.hidden_act == "relu"


@pytest.mark.parametrize("overrides,needle", [("nope=1", "no field 'nope'"), ("num_hidden_layers", "key=value"),
                                              ("num_hidden_layers=two", "num_hidden_layers")])
def test_bad_overrides(overrides, needle):
    with pytest.raises(ConfigError, match=needle):
        build_config("bert", "tiny", vocab_size=64, config_overrides=overrides)


def test_unknown_family_or_size():
    with pytest.raises(ConfigError, match="model_type"):
        build_config("resnet", "tiny", vocab_size=10)
    with pytest.raises(ConfigError, match="model_size"):
        build_config("gpt2", "huge", vocab_size=10)


def test_run_info_redacts_token(tmp_path):
    from hfssl.config import TrainingArguments

    args = TrainingArguments(output_dir=str(tmp_path), hub_token="hf_secret_value")
    path = write_run_info(str(tmp_path), args)
    text = open(path).read()
    assert "hf_secret_value" not in text
    info = json.loads(text)
    assert info["config"]["output_dir"] == str(tmp_path)
    assert info["versions"]["torch"] and info["versions"]["transformers"]
    assert "git_revision" in info
