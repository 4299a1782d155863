"""The training step never waits for the device, and the CUDA-only levers (pinned batches, TF32,
bf16 + torch.compile, padded vocabulary) work. GPU tests skip without CUDA."""

from __future__ import annotations

import json
import os
import traceback

import pytest
import torch
from transformers import AutoModelForCausalLM

import hfssl
from hfssl.errors import ConfigError
from hfssl.models.export import pad_vocab
from hfssl.objectives.clm import CausalLMObjective
from hfssl.training import make_accelerator, train
from hfssl.training.loop import TrainingRun

from .test_loop import read_metrics

_HOST_READS = ("item", "tolist", "__bool__", "__int__", "__float__", "cpu", "numpy")


def _caller() -> str:
    """File of the code that read a tensor value (skipping torch's own Tensor dunder wrappers)."""
    frames = traceback.extract_stack()[:-2]
    return next(f.filename for f in reversed(frames) if not f.filename.endswith(os.path.join("torch", "_tensor.py")))


def training_run(model, loader, args) -> TrainingRun:
    return TrainingRun(CausalLMObjective(), model, loader, args, None, None, (), make_accelerator(args))


def test_steps_between_log_events_read_nothing_back_from_the_device(blocks, tiny_gpt2, train_args, monkeypatch):
    """A read of a tensor value on the host (.item(), bool(t), .tolist()...) stalls the GPU every step.

    hfssl's own code must do none. Library reads known and tolerated here: torch.optim's host-side
    step counter (a CPU tensor by design; the fused CUDA AdamW the loop uses reads none) and the
    stock model's eager-only checks in transformers (padding warning, packed-sequence detection;
    both skipped under torch.compile)."""
    run = training_run(tiny_gpt2(), blocks(4), train_args(max_steps=10, logging_steps=100, max_grad_norm=1.0))
    run._train_step()  # first step: lazy set-up may look at values
    callers = []
    for name in _HOST_READS:
        original = getattr(torch.Tensor, name)

        def spy(self, *args, _original=original, **kwargs):
            callers.append(_caller())
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, spy)
    for _ in range(3):
        run._train_step()
    monkeypatch.undo()
    assert run.step == 4
    hfssl_dir = os.path.dirname(hfssl.__file__)
    assert [c for c in callers if c.startswith(hfssl_dir)] == []
    known = (os.path.join("torch", "optim", ""), os.path.join("site-packages", "transformers", ""))
    assert [c for c in callers if not any(k in c for k in known)] == []
    # The spy works: a log event does read values back, from hfssl's code.
    callers.clear()
    monkeypatch.setattr(torch.Tensor, "tolist", lambda self, _o=torch.Tensor.tolist: callers.append(_caller()) or _o(self))
    run._log_train()
    assert any(c.startswith(hfssl_dir) for c in callers)


def test_tf32_flag_needs_cuda_and_none_leaves_torch_alone(train_args):
    before = torch.backends.cuda.matmul.allow_tf32
    make_accelerator(train_args(tf32=None))
    assert torch.backends.cuda.matmul.allow_tf32 == before
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="--tf32 needs a CUDA GPU"):
            make_accelerator(train_args(tf32=True))


@pytest.mark.gpu
def test_cuda_compiled_steps_never_synchronize_and_batches_come_pinned(blocks, tiny_gpt2, train_args):
    # Compiled: in eager mode the stock GPT-2 itself syncs twice per forward (transformers' padding
    # warning and packed-sequence check read tensor values); under torch.compile both are skipped.
    args = train_args(max_steps=10, logging_steps=100, mixed_precision="bf16", torch_compile=True)
    run = training_run(tiny_gpt2(), blocks(4), args)
    run._train_step()
    run._train_step()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(3):
            run._train_step()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    cpu_batch = next(iter(blocks(4)))
    assert not cpu_batch["input_ids"].is_pinned() and run.stream._to_device(cpu_batch["input_ids"]).is_cuda


@pytest.mark.gpu
def test_tf32_flag_sets_cuda_matmul_precision(train_args):
    before = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    try:
        make_accelerator(train_args(tf32=True))
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


@pytest.mark.gpu
@pytest.mark.parametrize("mode", [None, "reduce-overhead"])
def test_cuda_bf16_compiled_padded_gpt2_trains_and_exports(blocks, tiny_gpt2, train_args, tokenizer, mode):
    model = tiny_gpt2()
    assert pad_vocab(model, 64) > len(tokenizer)
    args = train_args(max_steps=30, logging_steps=10, mixed_precision="bf16", torch_compile=True,
                      torch_compile_mode=mode, learning_rate=3e-3, tf32=True)
    train(objective=CausalLMObjective(), model=model, train_loader=blocks(8), args=args, processing_class=tokenizer)
    losses = [r["loss"] for r in read_metrics(args.output_dir) if "loss" in r]
    assert all(torch.isfinite(torch.tensor(losses))) and losses[-1] < losses[0] - 0.3, losses
    head = model.get_output_embeddings().weight
    assert not head[len(tokenizer):].any(), "padded rows must stay zero on the GPU too"
    assert json.load(open(os.path.join(args.output_dir, "config.json")))["vocab_size"] == len(tokenizer)
    reloaded = AutoModelForCausalLM.from_pretrained(args.output_dir).cuda().eval()
    ids = tokenizer("Return the number of items.", return_tensors="pt")["input_ids"].cuda()
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(ids).logits, model(ids).logits[..., :len(tokenizer)])
