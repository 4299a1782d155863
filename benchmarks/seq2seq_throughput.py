"""Denoising seq2seq pretraining throughput: hfssl's loop vs transformers' ``Seq2SeqTrainer`` (BART and T5).

Contenders per model family (each in its own fresh process, same tokenizer, same text, same initial
weights, same optimizer settings: Trainer's defaults):

* ``hfssl``: what ``recipes/seq2seq_denoising.py`` runs: packed text through ``StatefulLoader`` + the
  shared loop, ``DenoisingObjective`` corrupting each batch on the device (BART: text infilling on
  ``<s> ... </s>`` segments padded to the full length; T5: span corruption of raw blocks) and its fused
  LM-head loss.
* ``hf_trainer``: the nearest Hugging Face path (the Flax-only ``run_bart_dlm_flax.py`` /
  ``run_t5_mlm_flax.py`` have no PyTorch version): the same model class with its own ``labels`` loss,
  ``DataCollatorForSeq2Seq`` (dynamic padding, decoder inputs from the labels) and ``Seq2SeqTrainer``, on
  the same text corrupted beforehand by the same functions (its corruption costs it nothing here).
* ``*_compile``: the same with ``torch_compile=True``.

Throughput counts source-text tokens (the uncorrupted rows: BART's segments, T5's raw blocks) per
second over ``--steps`` steady-state steps after ``--warmup_steps``; both contenders consume the same rows
per step, so the ratio is the ratio of step rates. Per CPU second too (process CPU time): on a shared
machine run with ``OMP_NUM_THREADS=1`` and read those ratios, which the neighbours' load does not move. Each reports its mean per-target loss over the timed
steps (different corruption draws, so close, not equal). The last stdout line is one JSON object.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/seq2seq_throughput.py                 # bart and t5, tiny
    .venv/bin/python benchmarks/seq2seq_throughput.py --model_type t5 --model_size mini --steps 8
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

from _common import StepClock, TimedLoader, bench_main, device_name, record_losses, run_contenders  # noqa: E402


class CpuStepClock(StepClock):
    """Also the process CPU time at each step start: on a shared CPU the wall clock mostly measures the
    neighbours, while a one-thread contender's CPU seconds measure its own work."""

    def __init__(self) -> None:
        super().__init__()
        self.cpu_times: list[float] = []

    def tick(self, tokens: int) -> None:
        import time

        self.cpu_times.append(time.process_time())
        super().tick(tokens)

    def throughput(self, warmup: int, steps: int) -> dict[str, float]:
        result = super().throughput(warmup, steps)
        cpu = self.cpu_times[warmup + steps] - self.cpu_times[warmup]
        tokens = sum(self.tokens[warmup:warmup + steps])
        return {**result, "tokens_per_cpu_second": tokens / cpu, "cpu_seconds_per_step": cpu / steps}

SHARED_TEXT = REPO.parent / "shared" / "data" / "text"
CONTENDERS = ("hfssl", "hf_trainer", "hfssl_compile", "hf_trainer_compile")
FAMILIES = ("bart", "t5")
# Trainer's optimizer and schedule defaults, used by every contender so the losses are comparable.
SHARED_OPTIM = {"learning_rate": 1e-4, "weight_decay": 0.0, "adam_beta1": 0.9, "adam_beta2": 0.999,
                "adam_epsilon": 1e-8, "lr_scheduler_type": "linear", "warmup_steps": 0, "max_grad_norm": 1.0}


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model_type", default="bart,t5", help="bart, t5 or both (comma-separated)")
    p.add_argument("--model_size", default=None, help="preset (default: base on CUDA, tiny on CPU)")
    p.add_argument("--seq_len", type=int, default=None,
                   help="BART segment / T5 encoder input length (default: 512 on CUDA, 128 on CPU)")
    p.add_argument("--batch_size", type=int, default=None, help="default: 32 on CUDA, 16 on CPU")
    p.add_argument("--vocab_size", type=int, default=8000, help="of the tokenizers trained on the text")
    p.add_argument("--warmup_steps", type=int, default=3)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--contenders", default="hfssl,hf_trainer", help=f"from {', '.join(CONTENDERS)}")
    p.add_argument("--threads", type=int, default=None, help="torch threads per contender (default: torch's)")
    p.add_argument("--tokenizer_dir", default=None, help=argparse.SUPPRESS)
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    import torch

    cuda = torch.cuda.is_available()
    args.model_size = args.model_size or ("base" if cuda else "tiny")
    args.seq_len = args.seq_len or (512 if cuda else 128)
    args.batch_size = args.batch_size or (32 if cuda else 16)
    families = [f.strip() for f in args.model_type.split(",") if f.strip()]
    if not families or any(f not in FAMILIES for f in families):
        p.error(f"--model_type: choose from {', '.join(FAMILIES)}")
    args.families = families
    return args


def documents(n_docs: int = 300):
    """Prose: the shared Gutenberg books when present, else the built-in corpus."""
    from hfssl.data import load_documents

    if SHARED_TEXT.is_dir():
        files = sorted(str(p) for p in (SHARED_TEXT / "gutenberg").glob("*.txt.gz"))[:8]
        if files:
            return load_documents(train_file=files, min_document_chars=200).take(n_docs), "shared Gutenberg books"
    from hfssl.data.corpus import builtin_corpus_files

    return load_documents(train_file=builtin_corpus_files(), min_document_chars=200).take(n_docs), "built-in corpus"


def rows(family: str, tokenizer, seq_len: int, count: int) -> list[list[int]]:
    """``count`` full-length source rows, as the recipe packs them."""
    from hfssl.data.packing import pack_clm, pack_mlm_segments
    from hfssl.objectives.denoising import span_corruption_lengths

    docs, _ = documents()
    if family == "t5":
        stream = pack_clm(docs, tokenizer, span_corruption_lengths(seq_len)[0])
    else:
        stream = pack_mlm_segments(docs, tokenizer, seq_len)
    out = []
    for example in stream:
        if family == "t5" or len(example["input_ids"]) == seq_len:  # BART: the short last segment is left out
            out.append(example["input_ids"])
        if len(out) == count:
            return out
    raise SystemExit(f"the text yielded only {len(out)} rows, {count} needed")


def build(family: str, args: argparse.Namespace):
    import torch
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    from hfssl.models.presets import build_config

    tokenizer = AutoTokenizer.from_pretrained(os.path.join(args.tokenizer_dir, family))
    start = tokenizer.eos_token_id if family == "bart" else tokenizer.pad_token_id
    extra = {"bos_token_id": tokenizer.bos_token_id} if family == "bart" else {}
    config = build_config(family, args.model_size, vocab_size=len(tokenizer), max_position_embeddings=args.seq_len,
                          pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                          decoder_start_token_id=start, **extra)
    torch.manual_seed(0)
    return tokenizer, AutoModelForSeq2SeqLM.from_config(config)


def mean_loss(losses: list[Any], warmup: int, steps: int) -> dict[str, float]:
    timed = [float(x) for x in losses[warmup:warmup + steps]]
    return {"mean_loss": sum(timed) / len(timed), "first_loss": float(losses[0])}


def run_hfssl(family: str, args: argparse.Namespace, compile_: bool, out_dir: str) -> dict[str, Any]:
    import functools

    import datasets
    import torch

    from hfssl.config import TrainingArguments
    from hfssl.data.collate import collate_fixed, collate_padded
    from hfssl.objectives.seq2seq import DenoisingObjective, verify_seq2seq_export
    from hfssl.training import make_accelerator, train
    from hfssl.training.recipe_utils import make_loader

    total = args.warmup_steps + args.steps + 1
    targs = TrainingArguments(output_dir=out_dir, max_steps=total, per_device_train_batch_size=args.batch_size,
                              logging_steps=total, checkpointing_steps=0, torch_compile=compile_,
                              mixed_precision="bf16" if torch.cuda.is_available() else "no", **SHARED_OPTIM)
    accelerator = make_accelerator(targs)
    tokenizer, model = build(family, args)
    data = rows(family, tokenizer, args.seq_len, total * args.batch_size)
    collate = (collate_fixed if family == "t5" else
               functools.partial(collate_padded, pad_token_id=tokenizer.pad_token_id, pad_to_multiple_of=args.seq_len))
    loader = make_loader(datasets.Dataset.from_dict({"input_ids": data}).to_iterable_dataset(),
                         batch_size=args.batch_size, collate_fn=collate, accelerator=accelerator, seed=0)
    clock = CpuStepClock()
    losses = record_losses(accelerator)
    train(objective=DenoisingObjective.from_tokenizer(tokenizer, model), model=model,
          train_loader=TimedLoader(loader, clock), args=targs, accelerator=accelerator,
          verify_fn=verify_seq2seq_export)
    return {**clock.throughput(args.warmup_steps, args.steps), **mean_loss(losses, args.warmup_steps, args.steps)}


def pre_corrupted(family: str, tokenizer, data: list[list[int]], batch_size: int) -> dict[str, list[list[int]]]:
    """The rows corrupted once, batch by batch, by the same functions the objective uses (seeded)."""
    import torch

    from hfssl.objectives.denoising import noise_region, span_corruption, text_infilling
    from hfssl.objectives.seq2seq import sentinel_token_ids

    generator = torch.Generator().manual_seed(1)
    inputs: list[list[int]] = []
    labels: list[list[int]] = []
    for start in range(0, len(data), batch_size):
        ids = torch.tensor(data[start:start + batch_size])
        if family == "t5":
            corrupted, targets = span_corruption(ids, sentinel_ids=torch.tensor(sentinel_token_ids(tokenizer)),
                                                 eos_token_id=tokenizer.eos_token_id, generator=generator)
            inputs += corrupted.tolist()
            labels += targets.tolist()
            continue
        mask = torch.ones_like(ids)
        out = text_infilling(ids, region=noise_region(mask), mask_token_id=tokenizer.mask_token_id,
                             pad_token_id=tokenizer.pad_token_id, attention_mask=mask, generator=generator)
        inputs += [row[:n] for row, n in zip(out.input_ids.tolist(), out.attention_mask.sum(1).tolist())]
        labels += ids.tolist()
    return {"input_ids": inputs, "labels": labels}


def run_hf_trainer(family: str, args: argparse.Namespace, compile_: bool, out_dir: str) -> dict[str, Any]:
    import datasets
    import torch
    from transformers import DataCollatorForSeq2Seq, Seq2SeqTrainer, Seq2SeqTrainingArguments, TrainerCallback

    total = args.warmup_steps + args.steps + 1
    clock = CpuStepClock()
    tokenizer, model = build(family, args)
    data = rows(family, tokenizer, args.seq_len, total * args.batch_size)
    tokens_per_step = args.batch_size * len(data[0])

    class Timer(TrainerCallback):
        def on_step_begin(self, targs, state, control, **kwargs):
            clock.tick(tokens_per_step)

    losses: list[Any] = []

    class RecordingTrainer(Seq2SeqTrainer):
        def training_step(self, model, inputs, num_items_in_batch=None):
            loss = super().training_step(model, inputs, num_items_in_batch)
            losses.append(loss.detach())  # the model's mean over labels != -100: per target, as hfssl's
            return loss

    cuda = torch.cuda.is_available()
    targs = Seq2SeqTrainingArguments(output_dir=out_dir, max_steps=total, per_device_train_batch_size=args.batch_size,
                                     report_to="none", save_strategy="no", logging_steps=10**6,
                                     torch_compile=compile_, bf16=cuda, use_cpu=not cuda, disable_tqdm=True, seed=0,
                                     **SHARED_OPTIM)
    # Streamed so the Trainer reads the rows in the same order as the hfssl loader.
    train_data = datasets.Dataset.from_dict(pre_corrupted(family, tokenizer, data, args.batch_size))
    collator = DataCollatorForSeq2Seq(tokenizer, model=model, label_pad_token_id=-100)
    RecordingTrainer(model=model, args=targs, train_dataset=train_data.to_iterable_dataset(), data_collator=collator,
                     processing_class=tokenizer, callbacks=[Timer()]).train()
    return {**clock.throughput(args.warmup_steps, args.steps), **mean_loss(losses, args.warmup_steps, args.steps)}


def worker(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    family, name = args.worker.split(":")
    compile_ = name.endswith("_compile")
    with tempfile.TemporaryDirectory() as out_dir:
        run_one = run_hfssl if name.startswith("hfssl") else run_hf_trainer
        return {**run_one(family, args, compile_, out_dir), "torch_threads": torch.get_num_threads()}


def train_tokenizers(args: argparse.Namespace, out_dir: str) -> None:
    from hfssl.data.tokenizer_training import train_tokenizer

    for family in args.families:
        docs, _ = documents()
        tokenizer = train_tokenizer((d["text"] for d in docs), tokenizer_type=family, vocab_size=args.vocab_size)
        tokenizer.save_pretrained(os.path.join(out_dir, family))


def run(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse(argv)
    names = [c for c in args.contenders.split(",") if c]
    worker_args = ["--model_size", args.model_size, "--seq_len", str(args.seq_len), "--batch_size",
                   str(args.batch_size), "--warmup_steps", str(args.warmup_steps), "--steps", str(args.steps)]
    if args.threads:
        worker_args += ["--threads", str(args.threads)]
    results: dict[str, Any] = {}
    ratios: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tokenizer_dir:
        train_tokenizers(args, tokenizer_dir)
        for family in args.families:
            known = tuple(f"{family}:{c}" for c in CONTENDERS)
            found = run_contenders(__file__, [f"{family}:{n}" for n in names],
                                   [*worker_args, "--tokenizer_dir", tokenizer_dir], known)
            results[family] = {name.split(":")[1]: res for name, res in found.items()}
            for eager in ("", "_compile"):
                mine, peer = results[family].get(f"hfssl{eager}", {}), results[family].get(f"hf_trainer{eager}", {})
                for measure, suffix in (("tokens_per_second", ""), ("tokens_per_cpu_second", " (cpu time)")):
                    if mine.get(measure) and peer.get(measure):
                        ratios[f"{family}: hfssl{eager}/hf_trainer{eager}{suffix}"] = round(
                            mine[measure] / peer[measure], 3)
    _, corpus = documents()
    return {"benchmark": "seq2seq_denoising", "device": device_name(), "model_size": args.model_size,
            "seq_len": args.seq_len, "batch_size": args.batch_size, "vocab_size": args.vocab_size,
            "steps": args.steps, "warmup_steps": args.warmup_steps, "corpus": corpus,
            "noise": {"bart": "text_infilling", "t5": "span_corruption"}, "results": results, "ratios": ratios}


def main(argv: list[str] | None = None) -> None:
    bench_main(argv, parse, worker, run)


if __name__ == "__main__":
    main()
