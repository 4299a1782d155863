"""A vocabulary padded for training (pad_vocab) is invisible: same loss, no gradient to the padding,
an export with the true vocabulary. Real GPT-2 and Llama classes, tied and untied LM heads."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from transformers import AutoModel, AutoModelForCausalLM

from hfssl.models.export import export_pretrained, pad_vocab, true_vocab_size, verify_reload
from hfssl.models.presets import build_config
from hfssl.objectives.clm import CausalLMObjective

VOCAB = 97  # padded to 128 with a multiple of 64

HEADS = [("gpt2", True), ("gpt2", False), ("llama", False), ("llama", True)]


def tiny(model_type: str, tied: bool):
    torch.manual_seed(0)
    config = build_config(model_type, "tiny", vocab_size=VOCAB, max_position_embeddings=64,
                          tie_word_embeddings=tied, bos_token_id=0, eos_token_id=0)
    model = AutoModelForCausalLM.from_config(config)
    assert (model.get_input_embeddings().weight is model.get_output_embeddings().weight) == tied
    return model


def vocab_params(model):
    params = {"embed": model.get_input_embeddings().weight, "head": model.get_output_embeddings().weight}
    return params


@pytest.mark.parametrize("model_type,tied", HEADS)
@pytest.mark.parametrize("chunk", [10_000, 7])
def test_padded_model_has_the_unpadded_loss_gradients_and_accuracy(model_type, tied, chunk):
    plain = tiny(model_type, tied)
    padded = copy.deepcopy(plain)
    assert pad_vocab(padded, 64) == 128 and padded.config.vocab_size == 128 and true_vocab_size(padded) == VOCAB
    for name, weight in vocab_params(padded).items():
        assert weight.shape[0] == 128, name
        assert torch.equal(weight[:VOCAB], vocab_params(plain)[name]), name
        assert not weight[VOCAB:].any(), name
    ids = torch.randint(0, VOCAB, (3, 20), generator=torch.Generator().manual_seed(1))
    objective = CausalLMObjective(loss_chunk_size=chunk)
    outs = {}
    for key, model in (("plain", plain), ("padded", padded)):
        out = objective(model, {"input_ids": ids})
        out.loss_sums["loss"].backward()
        outs[key] = out
    torch.testing.assert_close(outs["padded"].loss_sums["loss"], outs["plain"].loss_sums["loss"], rtol=1e-6, atol=1e-5)
    assert outs["padded"].metric_sums["loss/accuracy"] == outs["plain"].metric_sums["loss/accuracy"]
    grads = dict(padded.named_parameters())
    for name, param in plain.named_parameters():
        grad = grads[name].grad
        if grad.shape != param.grad.shape:  # embedding / LM head: padded rows get exactly nothing
            assert not grad[VOCAB:].any(), name
            grad = grad[:VOCAB]
        torch.testing.assert_close(grad, param.grad, rtol=1e-4, atol=2e-5, msg=lambda m, n=name: f"{n}: {m}")


def test_padding_is_a_no_op_when_the_size_already_divides():
    model = tiny("gpt2", True)
    assert pad_vocab(model, 97) == VOCAB and pad_vocab(model, 1) == VOCAB
    assert model.config.vocab_size == VOCAB and true_vocab_size(model) == VOCAB


@pytest.mark.parametrize("model_type,tied", HEADS)
def test_export_has_the_true_vocabulary_and_reproduces_the_first_columns(model_type, tied, tmp_path):
    model = tiny(model_type, tied)
    pad_vocab(model, 64)
    with torch.no_grad():  # trained weights, and padded rows that are not zero: they must not leak
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.02)
    export_pretrained(model, None, str(tmp_path))
    assert json.loads((tmp_path / "config.json").read_text())["vocab_size"] == VOCAB
    assert model.config.vocab_size == 128  # the training model keeps its padded config
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert type(reloaded) is type(model) and reloaded.config.vocab_size == VOCAB
    assert (reloaded.get_input_embeddings().weight is reloaded.get_output_embeddings().weight) == tied
    for name, weight in vocab_params(reloaded).items():
        assert torch.equal(weight, vocab_params(model)[name][:VOCAB]), name
    ids = torch.randint(0, VOCAB, (2, 10), generator=torch.Generator().manual_seed(3))
    model.eval()
    with torch.no_grad():
        assert torch.equal(reloaded(ids).logits, model(ids).logits[..., :VOCAB])
    assert verify_reload(str(tmp_path), model, auto_class=AutoModelForCausalLM) == 0.0
    assert verify_reload(str(tmp_path), model, auto_class=AutoModel) == 0.0
