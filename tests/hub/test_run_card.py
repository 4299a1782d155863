"""The training loop writes output_dir/README.md at the end of every run (as transformers' Trainer does):
for text and vision backbones, for an export that is not a transformers checkpoint, never with the token."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from accelerate.state import AcceleratorState, GradientState
from huggingface_hub import ModelCard, metadata_load
from torch import nn

from hfssl.config import TrainingArguments
from hfssl.errors import HfsslError
from hfssl.hub.card import CARD_MARKER, is_generated_card, write_model_card, write_run_card
from hfssl.objectives.base import Objective, ObjectiveOutput
from hfssl.training import train

TOKEN = "hf_runcard_secret_0123456789"


@pytest.fixture(autouse=True)
def fresh_accelerate_state():
    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    yield
    AcceleratorState._reset_state(True)
    GradientState._reset_state()


def _args(out: Path, **overrides) -> TrainingArguments:
    values = dict(output_dir=str(out), max_steps=3, per_device_train_batch_size=2, learning_rate=1e-3,
                  warmup_steps=0, logging_steps=1, checkpointing_steps=0, report_to="none", seed=0,
                  hub_model_id="alice/run-card", hub_token=TOKEN)
    values.update(overrides)
    return TrainingArguments(**values)


def _gpt2_run(out: Path):
    from transformers import AutoModelForCausalLM

    from hfssl.data.tokenizer_training import train_tokenizer
    from hfssl.models.presets import build_config
    from hfssl.objectives.clm import CausalLMObjective

    words = "the cat sat on a mat while one dog ran to the old red barn".split()
    text = [" ".join(words[(i + j) % len(words)] for j in range(12)) for i in range(40)]
    tokenizer = train_tokenizer(iter(text), tokenizer_type="bpe", vocab_size=300, model_max_length=16)
    config = build_config("gpt2", "tiny", vocab_size=len(tokenizer), max_position_embeddings=16,
                          eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.bos_token_id)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    ids = torch.tensor([tokenizer(t)["input_ids"][:16] for t in text[:6]])
    batches = [{"input_ids": ids[i:i + 2]} for i in range(0, 6, 2)]
    return train(objective=CausalLMObjective(), model=model, train_loader=batches, args=_args(out),
                 processing_class=tokenizer, configs_to_record=(_args(out), {"objective": "clm"}))


def test_text_run_ends_with_a_card_that_loads_and_has_no_token(tmp_path: Path) -> None:
    out = tmp_path / "gpt"
    _gpt2_run(out)
    readme = out / "README.md"
    assert readme.is_file() and is_generated_card(readme)
    raw = readme.read_text()
    assert TOKEN not in raw and "<redacted>" not in raw and "hub_token" not in raw
    meta = metadata_load(readme)
    assert meta["library_name"] == "transformers" and meta["pipeline_tag"] == "text-generation"
    assert {"causal-lm", "gpt2"} <= set(meta["tags"])
    card = ModelCard.load(readme)
    assert 'AutoModelForCausalLM.from_pretrained("alice/run-card")' in card.text
    assert "![Loss curve](loss_curve.png)" in card.text and (out / "loss_curve.png").is_file()
    assert "Steps logged: 3" in card.text
    assert CARD_MARKER in raw


class _PixelMean(Objective):
    """Predict each image's mean pixel value from the CLS feature (a real, if easy, regression pretext)."""

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.head = nn.Linear(hidden, 1)

    def target_counts(self, batch):
        return {"loss": torch.tensor(batch["pixel_values"].shape[0])}

    def input_tokens(self, batch):
        return batch["pixel_values"].shape[0]

    def forward(self, model, batch):
        cls = model(pixel_values=batch["pixel_values"]).last_hidden_state[:, 0]
        target = batch["pixel_values"].mean(dim=(1, 2, 3))
        return ObjectiveOutput(loss_sums={"loss": ((self.head(cls).squeeze(-1) - target) ** 2).sum()})


def test_vision_run_card(tmp_path: Path) -> None:
    from transformers import ViTConfig, ViTImageProcessor, ViTModel

    config = ViTConfig(image_size=8, patch_size=4, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                       intermediate_size=32)
    torch.manual_seed(0)
    model = ViTModel(config, add_pooling_layer=False)
    batches = [{"pixel_values": torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(i))} for i in range(3)]
    out = tmp_path / "vit"
    train(objective=_PixelMean(16), model=model, train_loader=batches, args=_args(out),
          processing_class=ViTImageProcessor(size={"height": 8, "width": 8}),
          configs_to_record=(_args(out), {"pretext_task": "pixel_mean"}))
    card = ModelCard.load(out / "README.md")
    assert card.data.pipeline_tag == "image-feature-extraction" and card.data.language is None
    assert "AutoImageProcessor.from_pretrained" in card.text and "perplexity" not in card.text
    assert TOKEN not in (out / "README.md").read_text()


class _Vectors(nn.Module):
    """A backbone that is not a transformers model (word2vec-like embedding table)."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(20, 4)
        # Plain settings, not a transformers PretrainedConfig (the loop reads attributes off .config).
        self.config = SimpleNamespace(vector_size=4)


class _NextWord(Objective):
    def target_counts(self, batch):
        return {"loss": torch.tensor(batch["center"].numel())}

    def forward(self, model, batch):
        scores = model.embed(batch["center"]) @ model.embed.weight.T
        return ObjectiveOutput(loss_sums={"loss": nn.functional.cross_entropy(scores, batch["context"],
                                                                            reduction="sum")})


def _vectors_run(out: Path) -> None:
    def export(backbone, output_dir, state_dict):
        Path(output_dir).mkdir(parents=True, exist_ok=True)
        rows = backbone.embed.weight.detach().tolist()
        (Path(output_dir) / "vectors.txt").write_text("\n".join(" ".join(f"{v:.4f}" for v in r) for r in rows))

    batches = [{"center": torch.tensor([i, i + 1]), "context": torch.tensor([i + 1, i + 2])} for i in range(3)]
    train(objective=_NextWord(), model=_Vectors(), train_loader=batches, args=_args(out), export_fn=export,
          verify_fn=lambda output_dir, backbone: [], configs_to_record=(_args(out), {"objective": "word2vec"}))


def test_run_without_config_json_gets_a_plain_card(tmp_path: Path) -> None:
    out = tmp_path / "vectors"
    _vectors_run(out)
    assert not (out / "config.json").exists()
    meta = metadata_load(out / "README.md")
    assert "library_name" not in meta and "pipeline_tag" not in meta and "word2vec" in meta["tags"]
    text = (out / "README.md").read_text()
    assert "not a `transformers` checkpoint" in text and "`vectors.txt`" in text
    assert "from_pretrained" not in text and "perplexity" not in text and TOKEN not in text


def test_a_hand_written_readme_survives_the_run(tmp_path: Path) -> None:
    out = tmp_path / "vectors"
    out.mkdir()
    (out / "README.md").write_text("# My notes\n")
    _vectors_run(out)
    assert (out / "README.md").read_text() == "# My notes\n"
    with pytest.raises(HfsslError, match="written by hand"):
        write_model_card(str(out))


def test_run_card_failures_never_fail_the_run(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.json").write_text(json.dumps({"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]}))
    # A token that slipped into a flag value the card shows: no card, one warning naming the fix.
    (out / "run_config.json").write_text(json.dumps({"config": {"dataset_name": TOKEN}}))
    with caplog.at_level("WARNING"):
        assert write_run_card(str(out), secrets=(TOKEN,)) is None
    assert not (out / "README.md").exists()
    assert "--card_only" in caplog.text and TOKEN not in caplog.text


def test_card_flags_glue_tasks_whose_predictions_collapsed(tmp_path: Path) -> None:
    out = tmp_path / "bert"
    out.mkdir()
    (out / "config.json").write_text(json.dumps({"model_type": "bert", "architectures": ["BertForPreTraining"]}))
    (out / "results.json").write_text(json.dumps({"mode": "finetune", "tasks": {
        "mrpc": {"metrics": {"f1": {"mean": 0.8122, "std": 0.0, "per_seed": {"42": 0.8122}}}, "collapsed_seeds": [42]},
        "sst2": {"metrics": {"accuracy": {"mean": 0.8, "std": 0.0, "per_seed": {"42": 0.8}}}, "collapsed_seeds": []}}}))
    text = (Path(write_model_card(str(out)))).read_text()
    assert "**MRPC**: the dev predictions collapsed to a single class" in text and "seed(s) 42" in text
    assert "**SST-2**" not in text


@pytest.mark.parametrize(("flags", "objectives"), [
    ({}, ["masked-lm", "next-sentence-prediction"]),
    ({"no_nsp": True}, ["masked-lm"]),
    ({"sop": True, "whole_word_masking": True}, ["masked-lm", "sentence-order-prediction", "whole-word-masking"]),
])
def test_bert_card_names_the_objectives_the_run_used(tmp_path: Path, flags: dict, objectives: list) -> None:
    """bert_mlm.py records its objective as flags (--no_nsp, --sop, --whole_word_masking), not by name."""
    out = tmp_path / "bert"
    out.mkdir()
    (out / "config.json").write_text(json.dumps({"model_type": "bert", "architectures": ["BertForPreTraining"]}))
    (out / "run_config.json").write_text(json.dumps({"config": {"no_nsp": False, "sop": False, **flags}}))
    tags = metadata_load(write_model_card(str(out)))["tags"]
    assert [t for t in tags if t not in ("hfssl", "self-supervised", "bert")] == objectives
