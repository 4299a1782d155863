"""Training through the loop with a padded vocabulary: same run as unpadded, stock export, exact resume."""

from __future__ import annotations

import json
import os

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoModelForPreTraining, AutoTokenizer

from hfssl.config import ModelArguments
from hfssl.errors import ConfigError
from hfssl.models.export import pad_vocab, true_vocab_size
from hfssl.objectives.clm import CausalLMObjective
from hfssl.training import train
from hfssl.training.recipe_utils import build_model

from .test_loop import read_metrics


def losses(output_dir: str) -> list[float]:
    return [r["loss"] for r in read_metrics(output_dir) if "loss" in r]


def test_padded_training_equals_unpadded_and_exports_the_true_vocabulary(blocks, tiny_gpt2, train_args, tokenizer,
                                                                         tmp_path):
    vocab = len(tokenizer)
    runs = {}
    for name, multiple in (("plain", None), ("padded", 64)):
        model = tiny_gpt2()
        if multiple:
            assert pad_vocab(model, multiple) > vocab
        args = train_args(output_dir=str(tmp_path / name), max_steps=5)
        train(objective=CausalLMObjective(), model=model, train_loader=blocks(4), args=args,
              processing_class=tokenizer)
        runs[name] = (model, args.output_dir)
    (plain, plain_dir), (padded, padded_dir) = runs["plain"], runs["padded"]
    assert losses(padded_dir) == pytest.approx(losses(plain_dir), rel=1e-5)
    head = padded.get_output_embeddings().weight
    assert head.shape[0] % 64 == 0 and not head[vocab:].any(), "padded rows must stay zero"
    torch.testing.assert_close(head[:vocab], plain.get_output_embeddings().weight, rtol=1e-4, atol=1e-6)

    assert json.load(open(os.path.join(padded_dir, "config.json")))["vocab_size"] == vocab
    assert len(AutoTokenizer.from_pretrained(padded_dir)) == vocab
    reloaded = AutoModelForCausalLM.from_pretrained(padded_dir)
    ids = tokenizer("Return the number of items in a container.", return_tensors="pt")["input_ids"]
    padded.eval()
    with torch.no_grad():
        assert torch.equal(reloaded(ids).logits, padded(ids).logits[..., :vocab])


def test_resume_uses_the_padded_shapes_and_continues_exactly(blocks, tiny_gpt2, train_args, tokenizer, tmp_path):
    def padded_model():
        model = tiny_gpt2()
        pad_vocab(model, 64)
        return model

    reference = padded_model()
    train(objective=CausalLMObjective(), model=reference, train_loader=blocks(4),
          args=train_args(output_dir=str(tmp_path / "ref"), max_steps=6))
    first = train_args(output_dir=str(tmp_path / "cut"), max_steps=3, checkpointing_steps=3)
    train(objective=CausalLMObjective(), model=padded_model(), train_loader=blocks(4), args=first)
    saved = load_file(os.path.join(first.output_dir, "checkpoints", "step_3", "model.safetensors"))
    assert saved["backbone.transformer.wte.weight"].shape[0] % 64 == 0  # checkpoints are the training shapes
    resumed = padded_model()
    train(objective=CausalLMObjective(), model=resumed, train_loader=blocks(4),
          args=train_args(output_dir=first.output_dir, max_steps=6, resume_from_checkpoint="latest"))
    assert losses(first.output_dir) == losses(str(tmp_path / "ref"))
    for key, value in reference.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[key]), key


def test_build_model_pads_causal_lms_only(tokenizer):
    args = ModelArguments(model_type="gpt2", model_size="tiny", pad_vocab_size_to_multiple_of=64)
    model = build_model(args, tokenizer, max_seq_length=32, default_model_type="gpt2")
    assert model.config.vocab_size % 64 == 0 and true_vocab_size(model) == len(tokenizer)
    with pytest.raises(ConfigError, match="causal LMs"):
        build_model(ModelArguments(model_type="bert", model_size="tiny", pad_vocab_size_to_multiple_of=64),
                    tokenizer, max_seq_length=32, default_model_type="bert", auto_class=AutoModelForPreTraining)
    with pytest.raises(ValueError, match="positive"):
        ModelArguments(pad_vocab_size_to_multiple_of=0)
