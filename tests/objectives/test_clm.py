"""CausalLMObjective against the stock transformers LM loss (GPT-2 and Llama, real classes)."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from hfssl.models.presets import build_config
from hfssl.objectives.clm import CausalLMObjective, shifted_targets

VOCAB = 97


def tiny(model_type: str):
    torch.manual_seed(0)
    config = build_config(model_type, "tiny", vocab_size=VOCAB, max_position_embeddings=64)
    return AutoModelForCausalLM.from_config(config).eval()


@pytest.mark.parametrize("model_type", ["gpt2", "llama"])
@pytest.mark.parametrize("chunk", [10_000, 7])
def test_loss_sum_matches_the_stock_model_loss_and_its_gradients(model_type, chunk):
    model = tiny(model_type)
    ids = torch.randint(0, VOCAB, (3, 20), generator=torch.Generator().manual_seed(1))
    objective = CausalLMObjective(loss_chunk_size=chunk)
    batch = {"input_ids": ids}
    count = objective.target_counts(batch)["loss"]
    assert count.item() == 3 * 19
    out = objective(model, batch)
    (out.loss_sums["loss"] / count).backward()
    ours = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    reference = model(input_ids=ids, labels=ids).loss
    reference.backward()
    torch.testing.assert_close(out.loss_sums["loss"] / count, reference, rtol=1e-5, atol=1e-6)
    for name, param in model.named_parameters():
        torch.testing.assert_close(ours[name], param.grad, rtol=1e-4, atol=1e-6, msg=name)
    logits = model(input_ids=ids).logits[:, :-1]
    assert out.metric_sums["loss/accuracy"].item() == (logits.argmax(-1) == ids[:, 1:]).sum().item()


def test_targets_skip_padding_ignored_labels_and_document_starts():
    ids = torch.arange(1, 9).unsqueeze(0)
    batch = {"input_ids": ids, "attention_mask": torch.tensor([[1, 1, 1, 1, 1, 1, 0, 0]]),
             "position_ids": torch.tensor([[0, 1, 2, 0, 1, 2, 3, 4]]),
             "labels": torch.tensor([[1, 2, -100, 4, 5, 6, 7, 8]])}
    # Position t predicts token t+1: token 3 is ignored by labels, token 4 starts a document,
    # tokens 7 and 8 are padding.
    assert shifted_targets(batch).tolist() == [[2, -100, -100, 5, 6, -100, -100]]
    assert CausalLMObjective().target_counts(batch)["loss"].item() == 3


def test_packed_position_ids_keep_documents_apart_and_masked_targets_add_no_loss():
    """transformers builds a block-diagonal causal mask from restarting position_ids (no KV cache):
    the second packed document is computed exactly as if it were alone."""
    model = tiny("gpt2")
    ids = torch.randint(0, VOCAB, (2, 16), generator=torch.Generator().manual_seed(2))
    restart = torch.cat([torch.arange(8), torch.arange(8)]).repeat(2, 1)
    objective = CausalLMObjective()
    with torch.no_grad():
        plain = objective(model, {"input_ids": ids}).loss_sums["loss"]
        packed = objective(model, {"input_ids": ids, "position_ids": restart}).loss_sums["loss"]
        second_alone = objective(model, {"input_ids": ids[:, 8:]}).loss_sums["loss"]
        first_alone = objective(model, {"input_ids": ids[:, :8]}).loss_sums["loss"]
    # Targets: 7 per document; the boundary token (first of document 2) is not predicted.
    assert objective.target_counts({"input_ids": ids, "position_ids": restart})["loss"].item() == 2 * 14
    torch.testing.assert_close(packed, first_alone + second_alone, rtol=1e-5, atol=1e-4)
    assert not torch.isclose(plain, packed)
