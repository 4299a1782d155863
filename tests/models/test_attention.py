"""hfssl_sdpa: no explicit mask for declared plain causal batches (also under torch.compile), same numbers."""

from __future__ import annotations

import pytest
import torch
from transformers import AttentionInterface, AutoModelForCausalLM, AutoModelForMaskedLM
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from hfssl.models.attention import HFSSL_SDPA, declare_plain_causal, use_causal_sdpa_shortcut, use_stock_sdpa
from hfssl.models.presets import build_config

VOCAB = 97


def tiny(model_type: str = "gpt2"):
    torch.manual_seed(0)
    config = build_config(model_type, "tiny", vocab_size=VOCAB, max_position_embeddings=32)
    return AutoModelForCausalLM.from_config(config).eval()


@pytest.fixture
def masks():
    """Per attention call: did SDPA get an explicit mask? (A spy registered under both names.)"""
    seen: list[bool] = []

    def spy(module, query, key, value, attention_mask, **kwargs):
        seen.append(attention_mask is not None)
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)

    yield seen, spy
    declare_plain_causal(False)
    AttentionInterface.register(HFSSL_SDPA, sdpa_attention_forward)
    AttentionInterface.register("sdpa", sdpa_attention_forward)


def ids(seed: int) -> torch.Tensor:
    return torch.randint(0, VOCAB, (2, 16), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("model_type", ["gpt2", "llama"])
def test_same_logits_and_masks_only_where_needed(model_type, masks):
    seen, spy = masks
    model, x = tiny(model_type), ids(1)
    restart = torch.tensor([[0, 1, 2, 3, 4, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10]] * 2)
    padding = torch.ones_like(x)
    padding[1, -3:] = 0
    with torch.no_grad():
        ref_plain = model(x, use_cache=False).logits
        ref_packed = model(x, position_ids=restart, use_cache=False).logits
        ref_padded = model(x, attention_mask=padding, use_cache=False).logits
        assert use_causal_sdpa_shortcut(model) and model.config._attn_implementation == HFSSL_SDPA
        AttentionInterface.register(HFSSL_SDPA, spy)
        declare_plain_causal(True)
        plain = model(x, use_cache=False).logits
        assert seen and not any(seen)  # is_causal=True: the flash kernel stays available
        declare_plain_causal(False)
        seen.clear()
        packed = model(x, position_ids=restart, use_cache=False).logits
        assert seen and all(seen)  # packed documents keep their block-diagonal mask
        seen.clear()
        declare_plain_causal(True)  # a padding mask always wins over the declaration
        padded = model(x, attention_mask=padding, use_cache=False).logits
        assert seen and all(seen)
    torch.testing.assert_close(plain, ref_plain)
    torch.testing.assert_close(packed, ref_packed)
    torch.testing.assert_close(padded[padding.bool()], ref_padded[padding.bool()])


def test_under_compile_declared_batches_get_no_mask_and_stock_ones_do(masks, tmp_path):
    seen, spy = masks
    model, x = tiny(), ids(2)
    with torch.no_grad():
        reference = model(x, use_cache=False).logits
    AttentionInterface.register("sdpa", spy)
    torch._dynamo.reset()
    with torch.no_grad():
        torch.compile(model)(x, use_cache=False)
    stock_masked = any(seen)
    seen.clear()
    use_causal_sdpa_shortcut(model)
    AttentionInterface.register(HFSSL_SDPA, spy)
    declare_plain_causal(True)
    torch._dynamo.reset()
    with torch.no_grad():
        compiled = torch.compile(model)(x, use_cache=False).logits
    assert seen and not any(seen)
    torch.testing.assert_close(compiled, reference, rtol=1e-4, atol=1e-4)
    if torch.__version__ < "2.14":  # what the shortcut exists for; newer torch may skip the mask itself
        assert stock_masked
    use_stock_sdpa(model)
    assert model.config._attn_implementation == "sdpa"
    model.save_pretrained(tmp_path)
    assert HFSSL_SDPA not in (tmp_path / "config.json").read_text()


def test_encoders_and_other_attention_types_are_left_alone():
    bert = AutoModelForMaskedLM.from_config(build_config("bert", "tiny", vocab_size=VOCAB))
    assert not use_causal_sdpa_shortcut(bert)
    eager = tiny()
    eager.set_attn_implementation("eager")
    assert not use_causal_sdpa_shortcut(eager)
    assert eager.config._attn_implementation == "eager"


def test_the_loops_whole_model_compile_of_a_clm_objective_gets_no_mask(masks):
    from hfssl.config import TrainingArguments
    from hfssl.objectives.clm import CausalLMObjective
    from hfssl.training.loop import ObjectiveModule, compile_module

    seen, spy = masks
    model = tiny()
    module = ObjectiveModule(model, CausalLMObjective())
    x = {"input_ids": ids(3)}
    with torch.no_grad():
        reference = module(x).loss_sums["loss"]
    torch._dynamo.reset()
    assert compile_module(module, TrainingArguments(output_dir="unused", torch_compile=True)) == "whole model"
    AttentionInterface.register(HFSSL_SDPA, spy)
    with torch.no_grad():
        compiled = module(x).loss_sums["loss"]
    assert seen and not any(seen)
    torch.testing.assert_close(compiled, reference, rtol=1e-4, atol=1e-3)
