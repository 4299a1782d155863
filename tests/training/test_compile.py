"""torch.compile in the loop: flags, regional vs whole-model choice, parameter names, and equal losses."""

from __future__ import annotations

import os

import datasets
import pytest
import torch
from accelerate.utils import compile_regions
from safetensors.torch import load_file
from transformers import AutoModelForPreTraining

from hfssl.config import TrainingArguments
from hfssl.data.collate import collate_fixed
from hfssl.data.loader import StatefulLoader
from hfssl.errors import ConfigError
from hfssl.models.presets import build_config
from hfssl.objectives.clm import CausalLMObjective
from hfssl.objectives.mlm import BertPretrainingObjective, sparse_mlm_loss
from hfssl.training import train
from hfssl.training.loop import ObjectiveModule, compile_module

from .test_loop import read_metrics

BERT_VOCAB = 120


def tiny_bert(seed: int = 0):
    config = build_config("bert", "tiny", vocab_size=BERT_VOCAB, max_position_embeddings=32,
                          config_overrides="hidden_dropout_prob=0,attention_probs_dropout_prob=0")
    torch.manual_seed(seed)
    return AutoModelForPreTraining.from_config(config)


def bert_objective() -> BertPretrainingObjective:
    return BertPretrainingObjective(mask_token_id=3, special_token_ids=[0, 1, 2, 3], vocab_size=BERT_VOCAB, nsp=False)


def bert_loader(batch_size: int = 4) -> StatefulLoader:
    """Seeded synthetic ids (the masking, not the text, is what an MLM step exercises)."""
    ids = torch.randint(4, BERT_VOCAB, (64, 16), generator=torch.Generator().manual_seed(0))
    data = datasets.Dataset.from_dict({"input_ids": ids.tolist(), "attention_mask": torch.ones_like(ids).tolist()})
    return StatefulLoader(data.to_iterable_dataset(), batch_size=batch_size, collate_fn=collate_fixed)


def test_compile_flags_follow_transformers():
    assert TrainingArguments(torch_compile_mode="reduce-overhead").torch_compile
    assert TrainingArguments(torch_compile_backend="aot_eager").torch_compile
    assert not TrainingArguments().torch_compile
    with pytest.raises(ValueError, match="--torch_compile_mode"):
        TrainingArguments(torch_compile_mode="fastest")


def test_automatic_choice_and_parameter_names_survive_compilation(tiny_gpt2):
    """Compilation is lazy, so this checks the wiring without compiling anything."""
    bert = ObjectiveModule(tiny_bert(), bert_objective())
    names = list(bert.state_dict())
    assert compile_module(bert, TrainingArguments(torch_compile=True)) == "regional"
    assert list(bert.state_dict()) == names
    layers = bert.backbone.bert.encoder.layer
    assert all(layer._compiled_call_impl is not None for layer in layers)
    assert bert._compiled_call_impl is None and bert.backbone.bert.embeddings._compiled_call_impl is None
    assert bert.objective._mlm_loss is not sparse_mlm_loss  # the sparse head is one more compiled region

    gpt = ObjectiveModule(tiny_gpt2(), CausalLMObjective())
    names = list(gpt.state_dict())
    assert compile_module(gpt, TrainingArguments(torch_compile=True)) == "whole model"
    assert gpt._compiled_call_impl is not None and list(gpt.state_dict()) == names
    forced = ObjectiveModule(tiny_gpt2(), CausalLMObjective())
    assert compile_module(forced, TrainingArguments(use_regional_compilation=True, torch_compile=True)) == "regional"
    assert all(block._compiled_call_impl is not None for block in forced.backbone.transformer.h)
    # Why hfssl does not call accelerate's compile_regions: it renames every parameter of the blocks.
    assert any("_orig_mod" in k for k in compile_regions(tiny_bert()).state_dict())


def test_regional_compilation_needs_repeated_layers():
    class Flat(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = torch.nn.Linear(2, 2)

    module = ObjectiveModule(Flat(), CausalLMObjective())
    with pytest.raises(ConfigError, match="--use_regional_compilation false"):
        compile_module(module, TrainingArguments(torch_compile=True, use_regional_compilation=True))


def _losses(output_dir: str) -> list[float]:
    return [r["loss"] for r in read_metrics(output_dir) if "loss" in r]


@pytest.mark.slow
def test_compiled_runs_match_eager_and_their_checkpoints_resume_eagerly(blocks, tiny_gpt2, train_args, tmp_path):
    """Regional BERT and whole-model GPT-2: same losses as eager, and a compiled run's checkpoint
    resumes in an eager run (same parameter names and shapes)."""
    cases = {"gpt2": (tiny_gpt2, CausalLMObjective, lambda: blocks(4)),
             "bert": (tiny_bert, bert_objective, bert_loader)}
    for name, (make_model, make_objective, make_loader) in cases.items():
        losses = {}
        for compiled in (False, True):
            out = str(tmp_path / f"{name}-{compiled}")
            args = train_args(output_dir=out, max_steps=4, checkpointing_steps=2, torch_compile=compiled)
            train(objective=make_objective(), model=make_model(), train_loader=make_loader(), args=args)
            losses[compiled] = _losses(out)
        assert losses[True] == pytest.approx(losses[False], rel=1e-4), name
        compiled_dir = str(tmp_path / f"{name}-True")
        eager_names = set(ObjectiveModule(make_model(), make_objective()).state_dict())
        saved = load_file(os.path.join(compiled_dir, "checkpoints", "step_2", "model.safetensors"))
        assert set(saved) <= eager_names and any(k.startswith("backbone.") for k in saved), name
        resume = train_args(output_dir=compiled_dir, max_steps=6, checkpointing_steps=2,
                            resume_from_checkpoint=os.path.join(compiled_dir, "checkpoints", "step_2"))
        train(objective=make_objective(), model=make_model(), train_loader=make_loader(), args=resume)
        resumed = _losses(compiled_dir)
        assert resumed[:2] == losses[True][:2] and len(resumed) == 6, name
        assert resumed[2:4] == pytest.approx(losses[False][2:4], rel=1e-4), name
