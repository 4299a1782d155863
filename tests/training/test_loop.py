"""The training loop in-process on real packed text with a tiny real GPT-2 (CPU, seconds each)."""

from __future__ import annotations

import json
import os

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModel, AutoModelForCausalLM, GPT2LMHeadModel, GPT2Model

from hfssl.errors import HfsslError
from hfssl.objectives.clm import CausalLMObjective
from hfssl.training import TrainingDivergedError, train
from hfssl.training.checkpoint import latest_checkpoint, list_checkpoints


def read_metrics(output_dir: str) -> list[dict]:
    with open(os.path.join(output_dir, "metrics.jsonl"), encoding="utf-8") as fh:
        return [json.loads(line) for line in fh]


def test_loss_decreases_on_real_text_and_reports_eval(blocks, tiny_gpt2, train_args, tokenizer):
    args = train_args(max_steps=40, logging_steps=5, eval_steps=20, max_eval_batches=4)
    result = train(objective=CausalLMObjective(), model=tiny_gpt2(), train_loader=blocks(8, skip=20), args=args,
                   eval_loader_factory=lambda: blocks(8, documents=20), processing_class=tokenizer)
    records = read_metrics(args.output_dir)
    train_losses = [r["loss"] for r in records if "loss" in r]
    evals = [r for r in records if "eval_loss" in r]
    assert [r["step"] for r in records if "loss" in r] == list(range(5, 41, 5))
    assert train_losses[-1] < train_losses[0] - 0.5, train_losses
    assert [r["step"] for r in evals] == [20, 40]
    assert evals[1]["eval_loss"] < evals[0]["eval_loss"]
    assert evals[1]["eval_perplexity"] == pytest.approx(torch.tensor(evals[1]["eval_loss"]).exp().item())
    assert all(r["tokens_per_second"] > 0 and r["grad_norm"] > 0 for r in records if "loss" in r)
    # Every input token but the last of each block is a target: inputs/s is L/(L-1) times targets/s.
    assert all(1.0 < r["input_tokens_per_second"] / r["tokens_per_second"] < 1.2 for r in records if "loss" in r)
    assert result.global_step == 40
    saved = json.load(open(os.path.join(args.output_dir, "all_results.json")))
    assert saved["eval_loss"] == evals[-1]["eval_loss"] and saved["train_loss"] == train_losses[-1]
    run_config = json.load(open(os.path.join(args.output_dir, "run_config.json")))
    assert run_config["config"]["max_steps"] == 40


def test_export_reloads_with_identical_logits_and_generates(blocks, tiny_gpt2, train_args, tokenizer):
    model = tiny_gpt2()
    args = train_args(max_steps=3)
    result = train(objective=CausalLMObjective(), model=model, train_loader=blocks(4), args=args,
                   processing_class=tokenizer)
    assert os.path.isfile(os.path.join(result.export_dir, "model.safetensors"))
    reloaded = AutoModelForCausalLM.from_pretrained(result.export_dir)
    assert isinstance(reloaded, GPT2LMHeadModel)
    ids = tokenizer("Return the number of items in a container.", return_tensors="pt")["input_ids"]
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(ids).logits, reloaded(ids).logits)
    assert isinstance(AutoModel.from_pretrained(result.export_dir), GPT2Model)
    generated = reloaded.generate(ids, max_new_tokens=5, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    assert generated.shape[1] == ids.shape[1] + 5
    assert type(tokenizer).from_pretrained(result.export_dir)("abc")["input_ids"] == tokenizer("abc")["input_ids"]


class MaskedLabels:
    """Real packed blocks with a different number of target tokens per example (labels = -100 elsewhere)."""

    def __init__(self, loader):
        self.loader = loader

    def __iter__(self):
        for batch in self.loader:
            labels = batch["input_ids"].clone()
            for row in range(labels.shape[0]):
                # Depends on the example's content only, so both batchings mask identically.
                first, second = (int(t) for t in batch["input_ids"][row, :2])
                keep = 4 + (first * 7 + second * 3) % (labels.shape[1] - 4)
                labels[row, keep:] = -100
            yield {**batch, "labels": labels}


def test_gradient_accumulation_equals_one_large_batch(blocks, tiny_gpt2, train_args, tmp_path):
    """k micro-batches with uneven target counts == one k-times-larger batch (token-weighted, not averaged)."""
    results = {}
    for name, batch_size, accumulation in (("accumulated", 2, 4), ("large", 8, 1)):
        model = tiny_gpt2()
        # A huge Adam epsilon makes the update ~ lr * gradient (SGD-like): Adam's g/sqrt(v) would turn
        # float rounding noise on near-zero gradients into full-size steps and hide what we compare.
        args = train_args(output_dir=str(tmp_path / name), max_steps=3, per_device_train_batch_size=batch_size,
                          gradient_accumulation_steps=accumulation, adam_epsilon=1.0, learning_rate=0.5)
        train(objective=CausalLMObjective(), model=model, train_loader=MaskedLabels(blocks(batch_size)), args=args)
        results[name] = (model.state_dict(), [r["loss"] for r in read_metrics(args.output_dir)])
    (acc_state, acc_losses), (big_state, big_losses) = results["accumulated"], results["large"]
    assert acc_losses == pytest.approx(big_losses, rel=1e-5)
    initial = tiny_gpt2().state_dict()
    moved = max((big_state[k] - initial[k]).abs().max().item() for k in big_state)
    assert moved > 1e-3
    for key in big_state:
        torch.testing.assert_close(acc_state[key], big_state[key], rtol=1e-5, atol=1e-6)
    # Averaging per micro-batch instead would be visibly different: the test can tell them apart.
    naive = []
    for batch in MaskedLabels(blocks(2)):
        if len(naive) == 4:
            break
        targets = (batch["labels"][:, 1:] != -100).sum().item()
        naive.append(targets)
    assert len(set(naive)) > 1


class InfAfter(CausalLMObjective):
    """Real CLM loss that turns into inf from the ``bad_call``-th forward on (a divergence)."""

    def __init__(self, bad_call: int):
        super().__init__()
        self.bad_call = bad_call
        self.calls = 0

    def forward(self, model, batch):
        self.calls += 1
        out = super().forward(model, batch)
        if self.calls >= self.bad_call:
            out.loss_sums["loss"] = out.loss_sums["loss"] * float("inf")
        return out


def test_nan_or_inf_stops_with_clear_error_and_keeps_last_good_checkpoint(blocks, tiny_gpt2, train_args):
    args = train_args(max_steps=20, checkpointing_steps=2, logging_steps=3, save_total_limit=None)
    with pytest.raises(TrainingDivergedError, match="NaN/inf by step 6") as info:
        train(objective=InfAfter(bad_call=6), model=tiny_gpt2(), train_loader=blocks(4), args=args)
    message = str(info.value)
    assert "\n" not in message and "--resume_from_checkpoint latest" in message
    # Steps 2 and 4 were good; step 6 (diverged) must not have been saved.
    assert [step for step, _ in list_checkpoints(args.output_dir)] == [2, 4]
    latest = latest_checkpoint(args.output_dir)
    assert latest.endswith("step_4") and "step_4" in message
    weights = load_file(os.path.join(latest, "model.safetensors"))
    assert all(torch.isfinite(t).all() for t in weights.values())
    # The good checkpoint resumes (the healthy objective finishes the run).
    resume = train_args(max_steps=8, checkpointing_steps=2, logging_steps=3, resume_from_checkpoint="latest")
    assert train(objective=CausalLMObjective(), model=tiny_gpt2(), train_loader=blocks(4), args=resume
                 ).global_step == 8


def test_checkpoint_rotation_keeps_the_last_n_complete_dirs(blocks, tiny_gpt2, train_args):
    args = train_args(max_steps=9, checkpointing_steps=2, save_total_limit=2, logging_steps=4)
    train(objective=CausalLMObjective(), model=tiny_gpt2(), train_loader=blocks(4), args=args)
    root = os.path.join(args.output_dir, "checkpoints")
    # 2, 4, 6, 8 during training plus the final step 9; only the two newest survive, no temp dirs.
    assert sorted(os.listdir(root)) == ["step_8", "step_9"]
    state = json.load(open(os.path.join(root, "step_9", "trainer_state.json")))
    assert state["step"] == 9 and [r["step"] for r in state["history"]] == [4, 8, 9]


def test_existing_checkpoints_need_an_explicit_choice(blocks, tiny_gpt2, train_args):
    args = train_args(max_steps=2, checkpointing_steps=2)
    train(objective=CausalLMObjective(), model=tiny_gpt2(), train_loader=blocks(4), args=args)
    with pytest.raises(HfsslError) as info:
        train(objective=CausalLMObjective(), model=tiny_gpt2(), train_loader=blocks(4), args=train_args(max_steps=2))
    message = str(info.value)
    assert "\n" not in message and "--resume_from_checkpoint latest" in message and "--overwrite_output_dir" in message
    again = train(objective=CausalLMObjective(), model=tiny_gpt2(), train_loader=blocks(4),
                  args=train_args(max_steps=3, checkpointing_steps=3, overwrite_output_dir=True))
    assert again.global_step == 3
    assert [s for s, _ in list_checkpoints(args.output_dir)] == [3]
    assert [r["step"] for r in read_metrics(args.output_dir)] == [1, 2, 3]
    with pytest.raises(HfsslError, match="does not exist"):
        train(objective=CausalLMObjective(), model=tiny_gpt2(), train_loader=blocks(4),
              args=train_args(resume_from_checkpoint=args.output_dir + "/nowhere"))


def test_empty_training_data_is_a_clear_error(tiny_gpt2, train_args):
    with pytest.raises(HfsslError, match="yielded no batches"):
        train(objective=CausalLMObjective(), model=tiny_gpt2(), train_loader=[], args=train_args())


def test_bf16_autocast_on_cpu_trains_fp32_master_weights_and_logs_to_tensorboard(blocks, tiny_gpt2, train_args):
    pytest.importorskip("tensorboard")
    model = tiny_gpt2()
    args = train_args(max_steps=4, mixed_precision="bf16", report_to="tensorboard", logging_steps=2)
    train(objective=CausalLMObjective(), model=model, train_loader=blocks(4), args=args,
          eval_loader_factory=lambda: blocks(4, documents=10))
    records = read_metrics(args.output_dir)
    assert all(torch.isfinite(torch.tensor(r.get("loss", r.get("eval_loss")))) for r in records)
    assert all(p.dtype == torch.float32 for p in model.parameters())
    runs = os.path.join(args.output_dir, "runs")
    events = [f for _, _, files in os.walk(runs) for f in files if f.startswith("events.out.tfevents")]
    assert events, "no tensorboard event file written"


@pytest.mark.gpu
def test_cuda_bf16_run_logs_mfu(blocks, tiny_gpt2, train_args, monkeypatch):
    monkeypatch.setenv("HFSSL_PEAK_FLOPS", "1e12")  # MFU needs a peak; any GPU name then works
    args = train_args(max_steps=4, mixed_precision="bf16", logging_steps=2)
    train(objective=CausalLMObjective(), model=tiny_gpt2(), train_loader=blocks(4), args=args)
    records = [r for r in read_metrics(args.output_dir) if "loss" in r]
    assert all(0 < r["mfu"] < 1 for r in records)
