"""GPT causal-LM pretraining throughput: hfssl's loop vs the Hugging Face ``Trainer`` path of ``run_clm.py``.

Contenders (each in its own fresh process, same model shape, same batches, same precision):

* ``hfssl``: ``GPT2LMHeadModel`` + ``CausalLMObjective`` (chunked LM-head loss) through
  ``StatefulLoader`` + the shared Accelerate loop, with ``recipes/gpt_clm.py``'s defaults: the
  vocabulary padded to a multiple of 64 for training, its ``--loss_chunk_size``, and
  ``--torch_compile_mode`` when given (the Trainer baseline keeps Trainer's default compile).
* ``hf_trainer``: what ``transformers/examples/pytorch/language-modeling/run_clm.py`` does:
  ``GPT2LMHeadModel`` with ``labels = input_ids`` (the model's own loss on full logits),
  ``default_data_collator`` and ``transformers.Trainer``.
* ``*_compile``: the same with ``torch_compile=True``.

Batches are packed blocks of random token ids (seeded): throughput does not depend on the text, and
no GPT-2 tokenizer is available offline. Every contender sees the same blocks in the same order
from the same initial weights with the same optimizer settings (Trainer's: AdamW betas 0.9/0.999,
no weight decay, linear schedule, clipping 1.0), and reports ``mean_loss`` over the timed steps, so
"equal loss per step" can be checked in the JSON (a padded vocabulary does not change the loss). Throughput is input tokens per second over ``--steps``
steady-state optimizer steps after ``--warmup_steps`` (compilation happens in the warm-up). MFU
is reported on CUDA. Defaults: GPT-2 124M, seq 1024, batch 32, bf16 on CUDA; the ``mini`` preset,
seq 128, batch 8, fp32 on CPU. The last stdout line is one JSON object with every figure.

    .venv/bin/python benchmarks/train_throughput.py --recipe gpt --steps 8
"""

from __future__ import annotations

import os

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import argparse  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (  # noqa: E402
    StepClock,
    TimedLoader,
    bench_main,
    device_name,
    finish_mfu,
    mfu_fields,
    ratios_to,
    record_losses,
    run_contenders,
)

CONTENDERS = ("hfssl", "hf_trainer", "hfssl_compile", "hf_trainer_compile")


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model_size", default=None, help="gpt2 preset (default: base on CUDA, mini on CPU)")
    p.add_argument("--vocab_size", type=int, default=None, help="default: 50257 on CUDA, 8192 on CPU")
    p.add_argument("--seq_len", type=int, default=None, help="default: 1024 on CUDA, 128 on CPU")
    p.add_argument("--batch_size", type=int, default=None, help="default: 32 on CUDA, 8 on CPU")
    p.add_argument("--warmup_steps", type=int, default=3)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--contenders", default=",".join(CONTENDERS))
    p.add_argument("--torch_compile_mode", default=None,
                   help="hfssl_compile only: e.g. reduce-overhead (CUDA graphs), max-autotune")
    p.add_argument("--pad_vocab_size_to_multiple_of", type=int, default=None,
                   help="hfssl only (default: the gpt_clm recipe's); 1 disables the padding")
    p.add_argument("--loss_chunk_size", type=int, default=None, help="hfssl only (default: the gpt_clm recipe's)")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    import torch

    cuda = torch.cuda.is_available()
    args.model_size = args.model_size or ("base" if cuda else "mini")
    args.vocab_size = args.vocab_size or (50257 if cuda else 8192)
    args.seq_len = args.seq_len or (1024 if cuda else 128)
    args.batch_size = args.batch_size or (32 if cuda else 8)
    recipe = recipe_defaults()
    if args.pad_vocab_size_to_multiple_of is None:
        args.pad_vocab_size_to_multiple_of = recipe["pad_vocab_size_to_multiple_of"]
    args.loss_chunk_size = args.loss_chunk_size or recipe["loss_chunk_size"]
    return args


def recipe_defaults() -> dict[str, Any]:
    """The gpt_clm recipe's speed-relevant defaults, read from its argument classes (one source of truth)."""
    sys.path.insert(0, str(REPO / "recipes"))
    import gpt_clm

    return {"pad_vocab_size_to_multiple_of": gpt_clm.GPTModelArguments().pad_vocab_size_to_multiple_of,
            "loss_chunk_size": gpt_clm.CLMArguments().loss_chunk_size}


# Trainer's optimizer and schedule defaults, used by every contender so the losses are comparable.
SHARED_OPTIM = {"learning_rate": 1e-4, "weight_decay": 0.0, "adam_beta1": 0.9, "adam_beta2": 0.999,
                "adam_epsilon": 1e-8, "lr_scheduler_type": "linear", "warmup_steps": 0, "max_grad_norm": 1.0}


def mean_loss(losses: list[Any], warmup: int, steps: int) -> dict[str, float]:
    """Mean training loss over the timed steps (read back once, after the run)."""
    timed = [float(x) for x in losses[warmup:warmup + steps]]
    return {"mean_loss": sum(timed) / len(timed), "first_loss": float(losses[0])}


def blocks(args: argparse.Namespace, count: int) -> list[list[int]]:
    import torch

    generator = torch.Generator().manual_seed(0)
    return torch.randint(0, args.vocab_size, (count, args.seq_len), generator=generator).tolist()


def model(args: argparse.Namespace):
    import torch
    from transformers import GPT2LMHeadModel

    from hfssl.models.presets import build_config

    torch.manual_seed(0)
    config = build_config("gpt2", args.model_size, vocab_size=args.vocab_size, max_position_embeddings=args.seq_len)
    return GPT2LMHeadModel(config)


def run_hfssl(args: argparse.Namespace, compile_: bool, out_dir: str) -> dict[str, Any]:
    import datasets
    import torch

    from hfssl.config import TrainingArguments
    from hfssl.data.collate import collate_fixed
    from hfssl.models.export import pad_vocab
    from hfssl.objectives.clm import CausalLMObjective
    from hfssl.training import make_accelerator, train
    from hfssl.training.recipe_utils import make_loader

    total = args.warmup_steps + args.steps + 1
    targs = TrainingArguments(output_dir=out_dir, max_steps=total, per_device_train_batch_size=args.batch_size,
                              logging_steps=total, checkpointing_steps=0, torch_compile=compile_,
                              torch_compile_mode=args.torch_compile_mode if compile_ else None,
                              mixed_precision="bf16" if torch.cuda.is_available() else "no", **SHARED_OPTIM)
    accelerator = make_accelerator(targs)
    net = model(args)
    padded = pad_vocab(net, args.pad_vocab_size_to_multiple_of or 1)
    data = datasets.Dataset.from_dict({"input_ids": blocks(args, total * args.batch_size)})
    loader = make_loader(data.to_iterable_dataset(), batch_size=args.batch_size, collate_fn=collate_fixed,
                         accelerator=accelerator, seed=0)
    clock = StepClock()
    losses = record_losses(accelerator)
    train(objective=CausalLMObjective(loss_chunk_size=args.loss_chunk_size), model=net,
          train_loader=TimedLoader(loader, clock), args=targs, accelerator=accelerator)
    return {**clock.throughput(args.warmup_steps, args.steps), **mean_loss(losses, args.warmup_steps, args.steps),
            "padded_vocab_size": padded, "loss_chunk_size": args.loss_chunk_size,
            "torch_compile_mode": targs.torch_compile_mode, **mfu_fields(net, args.seq_len)}


def run_hf_trainer(args: argparse.Namespace, compile_: bool, out_dir: str) -> dict[str, Any]:
    import datasets
    import torch
    from transformers import Trainer, TrainerCallback, default_data_collator
    from transformers import TrainingArguments as HFTrainingArguments

    total = args.warmup_steps + args.steps + 1
    clock = StepClock()
    tokens_per_step = args.batch_size * args.seq_len

    class Timer(TrainerCallback):
        def on_step_begin(self, targs, state, control, **kwargs):
            clock.tick(tokens_per_step)

    cuda = torch.cuda.is_available()
    targs = HFTrainingArguments(output_dir=out_dir, max_steps=total, per_device_train_batch_size=args.batch_size,
                                report_to="none", save_strategy="no", logging_steps=10**6, torch_compile=compile_,
                                bf16=cuda, use_cpu=not cuda, disable_tqdm=True, seed=0, **SHARED_OPTIM)
    ids = blocks(args, total * args.batch_size)
    # run_clm.py's group_texts: labels are a copy of input_ids, the model shifts them. Streamed (an
    # IterableDataset) so the Trainer reads the blocks in the same order as the hfssl loader.
    data = datasets.Dataset.from_dict({"input_ids": ids, "labels": ids}).to_iterable_dataset()
    net = model(args)
    losses: list[Any] = []

    class RecordingTrainer(Trainer):
        def training_step(self, model, inputs, num_items_in_batch=None):
            loss = super().training_step(model, inputs, num_items_in_batch)
            # Trainer may divide the loss sum by num_items_in_batch, which (transformers 5.23, GPT-2)
            # counts all B*T labels, not the B*(T-1) shifted targets: rescale to the per-target mean
            # hfssl reports. Tensor maths on the device: no sync.
            per_target = loss.detach()
            if self.model_accepts_loss_kwargs and num_items_in_batch is not None:
                per_target = per_target * num_items_in_batch / inputs["labels"][:, 1:].ne(-100).sum()
            losses.append(per_target)
            return loss

    RecordingTrainer(model=net, args=targs, train_dataset=data, data_collator=default_data_collator,
                     callbacks=[Timer()]).train()
    return {**clock.throughput(args.warmup_steps, args.steps), **mean_loss(losses, args.warmup_steps, args.steps),
            **mfu_fields(net, args.seq_len)}


def worker(args: argparse.Namespace) -> dict[str, Any]:
    compile_ = args.worker.endswith("_compile")
    with tempfile.TemporaryDirectory() as out_dir:
        if args.worker.startswith("hfssl"):
            return finish_mfu(run_hfssl(args, compile_, out_dir))
        return finish_mfu(run_hf_trainer(args, compile_, out_dir))


def run(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse(argv)
    import torch

    worker_args = ["--model_size", args.model_size, "--vocab_size", str(args.vocab_size), "--seq_len",
                   str(args.seq_len), "--batch_size", str(args.batch_size), "--warmup_steps", str(args.warmup_steps),
                   "--steps", str(args.steps), "--pad_vocab_size_to_multiple_of",
                   str(args.pad_vocab_size_to_multiple_of or 1), "--loss_chunk_size", str(args.loss_chunk_size)]
    if args.torch_compile_mode:
        worker_args += ["--torch_compile_mode", args.torch_compile_mode]
    names = [c for c in args.contenders.split(",") if c]
    results = run_contenders(__file__, names, worker_args, CONTENDERS)
    ratios = ratios_to(results, "hf_trainer")
    compiled = results.get("hf_trainer_compile", {}).get("tokens_per_second")
    if compiled and "tokens_per_second" in results.get("hfssl_compile", {}):
        ratios["hfssl_compile/hf_trainer_compile"] = round(results["hfssl_compile"]["tokens_per_second"] / compiled, 3)
    return {"benchmark": "gpt", "device": device_name(), "torch_threads": torch.get_num_threads(),
            "model_size": args.model_size, "vocab_size": args.vocab_size, "seq_len": args.seq_len,
            "batch_size": args.batch_size, "steps": args.steps, "warmup_steps": args.warmup_steps,
            "precision": "bf16" if torch.cuda.is_available() else "fp32",
            "hfssl_settings": {"pad_vocab_size_to_multiple_of": args.pad_vocab_size_to_multiple_of,
                               "loss_chunk_size": args.loss_chunk_size, "torch_compile_mode": args.torch_compile_mode},
            "mean_loss": {name: round(res["mean_loss"], 4) for name, res in results.items() if "mean_loss" in res},
            "results": results, "ratios": ratios}


def main(argv: list[str] | None = None) -> None:
    bench_main(argv, parse, worker, run)


if __name__ == "__main__":
    main()
