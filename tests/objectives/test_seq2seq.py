"""The denoising objective on stock BART/T5: its loss is the model's own, its batches have static shapes,
its fused head gives autograd's gradients, and a tokenizer or model that cannot do the corruption is refused."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForSeq2SeqLM, AutoTokenizer, BertConfig, BertForPreTraining

from hfssl.errors import ConfigError
from hfssl.objectives.denoising import text_infilling_width
from hfssl.objectives.linear_cross_entropy import linear_cross_entropy
from hfssl.objectives.seq2seq import (
    DenoisingObjective,
    fill_masked_spans,
    parse_noise,
    sentinel_token_ids,
    verify_seq2seq_export,
)
from tests.helpers import denoising


@pytest.mark.parametrize("bias", [False, True])
def test_fused_head_loss_accuracy_and_gradients_equal_autograd_through_the_plain_head(bias):
    gen = torch.Generator().manual_seed(0)
    hidden = torch.randn(3, 41, 16, generator=gen, requires_grad=True)
    weight = torch.randn(300, 16, generator=gen).requires_grad_()
    b = torch.randn(300, generator=gen).requires_grad_() if bias else None
    targets = torch.randint(0, 300, (3, 41), generator=gen)
    targets[:, ::4] = -100
    targets[0, 1] = (hidden[0, 1] @ weight.t() + (b if bias else 0)).argmax()   # at least one right guess
    loss, correct = linear_cross_entropy(hidden, weight, targets, bias=b, chunk_rows=10)
    (0.3 * loss).backward()
    fused = [t.grad.clone() for t in (hidden, weight, b) if t is not None]
    for t in (hidden, weight, b):
        if t is not None:
            t.grad = None
    logits = hidden @ weight.t() + (b if bias else 0)
    reference = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="sum")
    (0.3 * reference).backward()
    assert torch.allclose(loss, reference, rtol=1e-5)
    assert correct == ((logits.argmax(-1) == targets) & (targets != -100)).sum() >= 1
    for mine, theirs in zip(fused, [t.grad for t in (hidden, weight, b) if t is not None]):
        assert torch.allclose(mine, theirs, atol=1e-5, rtol=1e-4)
    with torch.no_grad():
        assert torch.allclose(linear_cross_entropy(hidden, weight, targets, bias=b)[0], reference, rtol=1e-5)


@pytest.mark.parametrize("family,noise", [("bart", "text_infilling"), ("bart", "text_infilling,sentence_permutation"),
                                          ("bart", "sentence_permutation"), ("t5", None)])
def test_objective_loss_is_the_models_own_loss_on_static_shapes(family, noise):
    tok = denoising.tokenizer(family)
    model = denoising.tiny_model(family)
    objective = DenoisingObjective.from_tokenizer(tok, model, noise, loss_chunk_size=50)
    gen = torch.Generator().manual_seed(0)
    if family == "bart":
        texts = list(denoising.corpus_texts()[:6])
        enc = tok(texts, truncation=True, max_length=64, padding="max_length", return_tensors="pt")
        batch = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}
    else:
        batch = {"input_ids": torch.randint(3, len(tok) - 100, (6, 141), generator=gen)}
    shapes = None
    for _ in range(3):
        prepared = objective.prepare_batch(batch, generator=gen)
        now = {k: tuple(v.shape) for k, v in prepared.items()}
        assert shapes in (None, now)  # the same shapes every draw: no recompilation
        shapes = now
    if family == "t5":
        assert shapes["input_ids"] == (6, 128) and shapes["labels"] == (6, 29) and "attention_mask" not in prepared
    else:
        width = text_infilling_width(64) if "text_infilling" in objective.noise else 64   # 60: no dead padding
        assert shapes["input_ids"] == (6, width) and shapes["labels"] == (6, 64)
        assert torch.equal(prepared["labels"][batch["attention_mask"] == 1],
                           batch["input_ids"][batch["attention_mask"] == 1])
    out = objective(model, prepared)
    count = objective.target_counts(prepared)["loss"]
    reference = model(input_ids=prepared["input_ids"], attention_mask=prepared.get("attention_mask"),
                      labels=prepared["labels"])
    assert torch.allclose(out.loss_sums["loss"] / count, reference.loss, rtol=1e-5)
    hits = ((reference.logits.argmax(-1) == prepared["labels"]) & (prepared["labels"] != -100)).sum()
    assert out.metric_sums["loss/accuracy"] == hits


def test_sentence_permutation_alone_keeps_every_token():
    tok = denoising.tokenizer("bart")
    objective = DenoisingObjective.from_tokenizer(tok, denoising.tiny_model("bart"), "sentence_permutation")
    enc = tok(["First one. Second one! Third one? Tail"], return_tensors="pt")
    prepared = objective.prepare_batch(dict(enc), generator=torch.Generator().manual_seed(2))
    assert sorted(prepared["input_ids"][0].tolist()) == sorted(enc["input_ids"][0].tolist())
    assert prepared["input_ids"][0, 0] == tok.bos_token_id and prepared["input_ids"][0, -1] == tok.eos_token_id


def test_bad_noise_tokenizer_or_model_is_a_one_line_config_error():
    bart, t5 = denoising.tiny_model("bart"), denoising.tiny_model("t5")
    bart_tok, t5_tok = denoising.tokenizer("bart"), denoising.tokenizer("t5")
    cases = [
        (lambda: parse_noise("masking"), "choose from text_infilling"),
        (lambda: parse_noise("span_corruption,text_infilling"), "does not combine"),
        (lambda: DenoisingObjective.from_tokenizer(t5_tok, t5, "text_infilling"), "is BART's corruption but the model"),
        (lambda: DenoisingObjective.from_tokenizer(bart_tok, bart, "span_corruption"), "is T5's corruption"),
        # A T5 model with a tokenizer that has no sentinels; a BART model with one that has no <mask>.
        (lambda: DenoisingObjective.from_tokenizer(bart_tok, t5), "needs sentinel tokens <extra_id_0>"),
        (lambda: DenoisingObjective.from_tokenizer(denoising.tokenizer("bpe"), bart), "has none: give a BART"),
        (lambda: DenoisingObjective.from_tokenizer(bart_tok, BertForPreTraining(BertConfig(
            vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32))),
         "trains bart or t5 models; this checkpoint is 'bert'"),
        (lambda: DenoisingObjective.from_tokenizer(bart_tok, bart, mask_ratio=1.5), "--mask_ratio"),
    ]
    for make, message in cases:
        with pytest.raises(ConfigError, match=None) as info:
            make()
        assert message in str(info.value) and "\n" not in str(info.value), str(info.value)


def test_sentinels_are_read_in_span_order_from_the_vocabulary():
    tok = denoising.tokenizer("t5")
    ids = sentinel_token_ids(tok)
    assert len(ids) == 100 and ids[0] == len(tok) - 1 and ids == sorted(ids, reverse=True)
    assert tok.convert_ids_to_tokens(ids[:2]) == ["<extra_id_0>", "<extra_id_1>"]
    assert sentinel_token_ids(denoising.tokenizer("bart")) == []


@pytest.mark.parametrize("family", ["bart", "t5"])
def test_export_check_and_span_filling_on_a_reloaded_model(family, tmp_path):
    tok, model = denoising.tokenizer(family), denoising.tiny_model(family)
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    messages = verify_seq2seq_export(str(tmp_path), model)
    assert [m.split(" (")[0] for m in messages] == ["reloads with AutoModelForSeq2SeqLM", "reloads with AutoModel"]
    reloaded, tok = AutoModelForSeq2SeqLM.from_pretrained(tmp_path), AutoTokenizer.from_pretrained(tmp_path)
    hole = "<mask>" if family == "bart" else "<extra_id_0>"
    filled = fill_masked_spans(reloaded, tok, [f"The {hole} of the module.", f"A {hole}."], max_new_tokens=6)
    assert len(filled) == 2 and all(isinstance(f, str) for f in filled)
    if family == "t5":  # the holes are replaced by what the model wrote behind each sentinel
        assert all("<extra_id" not in f and f.startswith(("The", "A")) for f in filled)
    # The export's own weights: a broken copy is caught.
    model.lm_head.weight.data[5] += torch.randn(model.lm_head.weight.shape[1])
    with pytest.raises(Exception, match="does not reproduce"):
        verify_seq2seq_export(str(tmp_path), model)


@pytest.mark.gpu
@pytest.mark.parametrize("family", ["bart", "t5"])
def test_corruption_and_fused_loss_run_on_the_gpu(family):
    device = torch.device("cuda")
    tok, model = denoising.tokenizer(family), denoising.tiny_model(family).to(device)
    objective = DenoisingObjective.from_tokenizer(tok, model, "text_infilling,sentence_permutation"
                                                  if family == "bart" else None)
    gen = torch.Generator(device=device).manual_seed(0)
    if family == "bart":
        enc = tok(list(denoising.corpus_texts()[:4]), truncation=True, max_length=64, padding="max_length",
                  return_tensors="pt")
        batch = {k: enc[k].to(device) for k in ("input_ids", "attention_mask")}
    else:
        batch = {"input_ids": torch.randint(3, len(tok) - 100, (4, 141), device=device)}
    prepared = objective.prepare_batch(batch, generator=gen)
    assert all(v.device.type == "cuda" for v in prepared.values())
    out = objective(model, prepared)
    reference = model(input_ids=prepared["input_ids"], attention_mask=prepared.get("attention_mask"),
                      labels=prepared["labels"]).loss
    assert torch.allclose(out.loss_sums["loss"] / objective.target_counts(prepared)["loss"], reference, rtol=1e-4)
