"""Does denoising pretraining learn more than token frequencies? Held-out loss of BART/T5 vs the unigram floor.

For each family the real recipe runs as a user would (``recipes/seq2seq_denoising.py`` in a subprocess, 5% of
the text held out in passages), then its export is scored on the held-out passages, corrupted as in training:

* ``eval_loss``: the recipe's own held-out loss per target token.
* ``hidden_loss``: the same, on the tokens the model cannot see: BART's masked tokens (its other targets are
  copies of visible input), T5's span tokens (its sentinels and ``</s>`` are predictable by position).
* the **unigram floor** of each: the cross-entropy of those held-out target tokens under the target-token
  frequencies of the training stream (add-one smoothed), i.e. what a model that ignores its input scores.

The last stdout line is one JSON object. Run on the shared prose (Gutenberg books and Wikipedia shards of
``../shared/data/text``) or any ``--train_file``:

    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python benchmarks/seq2seq_quality.py --max_steps 600
"""

from __future__ import annotations

import os

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
SHARED_TEXT = REPO.parent / "shared" / "data" / "text"


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model_type", default="bart,t5")
    p.add_argument("--model_size", default="tiny")
    p.add_argument("--train_file", nargs="*", default=None,
                   help="default: 12 Gutenberg books + 8 Wikipedia shards of ../shared/data/text")
    p.add_argument("--max_seq_length", type=int, default=128)
    p.add_argument("--batch_size", type=int, default=16)
    p.add_argument("--max_steps", type=int, default=600)
    p.add_argument("--learning_rate", type=float, default=2e-3)
    p.add_argument("--vocab_size", type=int, default=8000)
    p.add_argument("--tokenizer_chars", type=float, default=3e6, help="text the tokenizers are trained on")
    p.add_argument("--eval_batches", type=int, default=40)
    p.add_argument("--shuffle_buffer_size", type=int, default=10000,
                   help="rows; the files are read one after the other, so mix them (1,500 steps read ~24,000 rows)")
    p.add_argument("--count_rows", type=int, default=4000, help="training rows counted for the unigram floor")
    p.add_argument("--output_dir", default="out/seq2seq_quality")
    return p.parse_args(argv)


def default_files() -> list[str]:
    if not SHARED_TEXT.is_dir():
        raise SystemExit("../shared/data/text is not here: pass --train_file")
    books = sorted(str(p) for p in (SHARED_TEXT / "gutenberg").glob("*.txt.gz"))[:12]
    wiki = sorted(str(p) for p in (SHARED_TEXT / "wikipedia_en").glob("wiki_*.gz"))[:8]
    return books + wiki


def train_tokenizer_on(files: list[str], family: str, vocab_size: int, chars: float, out: Path) -> None:
    from hfssl.data.corpus import load_documents
    from hfssl.data.tokenizer_training import train_tokenizer

    def texts():
        seen = 0
        for doc in load_documents(train_file=files):
            yield doc["text"][:200_000]  # whole books would be all of the budget
            seen += min(len(doc["text"]), 200_000)
            if seen >= chars:
                return

    train_tokenizer(texts(), tokenizer_type=family, vocab_size=vocab_size).save_pretrained(out)


def run_recipe(args: argparse.Namespace, files: list[str], family: str, tok_dir: Path, out: Path) -> float:
    command = [sys.executable, str(REPO / "recipes" / "seq2seq_denoising.py"), "--train_file", *files,
               "--tokenizer_name", str(tok_dir), "--model_type", family, "--model_size", args.model_size,
               "--max_seq_length", str(args.max_seq_length), "--per_device_train_batch_size", str(args.batch_size),
               "--max_steps", str(args.max_steps), "--learning_rate", str(args.learning_rate),
               "--warmup_steps", str(max(1, args.max_steps // 10)), "--eval_steps", str(max(1, args.max_steps // 3)),
               "--max_eval_batches", str(args.eval_batches), "--checkpointing_steps", "0", "--logging_steps", "50",
               "--shuffle_buffer_size", str(args.shuffle_buffer_size),
               "--overwrite_output_dir", "--output_dir", str(out)]
    started = time.perf_counter()
    proc = subprocess.run(command, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"the recipe failed for {family}: {proc.stderr.strip().splitlines()[-1]}")
    print(proc.stdout.strip(), file=sys.stderr)
    return time.perf_counter() - started


def score(args: argparse.Namespace, files: list[str], family: str, out: Path) -> dict[str, Any]:
    """Held-out losses (all targets, hidden targets) of the export and the unigram floor of both."""
    import torch
    import torch.nn.functional as F
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    from hfssl.config import DataArguments
    from hfssl.data.corpus import load_documents_from_args
    from hfssl.objectives.denoising import IGNORE_INDEX, noise_region, shift_right, text_infilling
    from hfssl.objectives.seq2seq import DenoisingObjective, decoder_hidden_and_head

    tokenizer = AutoTokenizer.from_pretrained(out)
    model = AutoModelForSeq2SeqLM.from_pretrained(out).eval()
    objective = DenoisingObjective.from_tokenizer(tokenizer, model)
    to_examples, collate, _ = objective.data_pipeline(tokenizer, args.max_seq_length)
    data_args = DataArguments(train_file=files, max_seq_length=args.max_seq_length, validation_split_percentage=5)

    def batches(split: str, count: int):
        rows = []
        for example in to_examples(load_documents_from_args(data_args, split)):
            rows.append(example)
            if len(rows) == args.batch_size:
                yield collate(rows)
                rows, count = [], count - 1
                if count == 0:
                    return

    def corrupt(batch, generator):
        """The objective's corruption, plus which targets are hidden from the encoder."""
        if family == "t5":
            prepared = objective.prepare_batch(batch, generator)
            labels = prepared["labels"]
            hidden = ~torch.isin(labels, torch.cat([objective.sentinel_ids, torch.tensor([objective.eos_token_id])]))
            return prepared, hidden
        ids, mask = batch["input_ids"], batch["attention_mask"]
        out = text_infilling(ids, region=noise_region(mask), mask_token_id=tokenizer.mask_token_id,
                             pad_token_id=tokenizer.pad_token_id, attention_mask=mask, generator=generator)
        labels = ids.masked_fill(mask == 0, IGNORE_INDEX)
        hidden = torch.zeros_like(ids, dtype=torch.bool)
        for row in range(ids.shape[0]):     # walk each row: a mask token hides its span's original tokens
            source, spans = 0, iter(out.span_lengths[row].tolist())
            for token in out.input_ids[row, : int(out.attention_mask[row].sum())].tolist():
                if token == tokenizer.mask_token_id:
                    n = next(spans)
                    hidden[row, source:source + n] = True
                    source += n
                else:
                    source += 1
        prepared = {"input_ids": out.input_ids, "attention_mask": out.attention_mask, "labels": labels,
                    "decoder_input_ids": shift_right(labels, objective.decoder_start_token_id, objective.pad_token_id)}
        return prepared, hidden

    generator = torch.Generator().manual_seed(0)
    counts = torch.ones(model.config.vocab_size, dtype=torch.float64)
    hidden_counts = torch.ones(model.config.vocab_size, dtype=torch.float64)
    for batch in batches("train", max(1, args.count_rows // args.batch_size)):
        prepared, hidden = corrupt(batch, generator)
        labels = prepared["labels"]
        counts += torch.bincount(labels[labels != IGNORE_INDEX], minlength=counts.numel()).double()
        hidden_counts += torch.bincount(labels[hidden], minlength=counts.numel()).double()
    logp, hidden_logp = (counts / counts.sum()).log(), (hidden_counts / hidden_counts.sum()).log()

    sums = {"loss": 0.0, "hidden_loss": 0.0, "floor": 0.0, "hidden_floor": 0.0, "targets": 0, "hidden": 0,
            "hidden_correct": 0}
    with torch.no_grad():
        for batch in batches("validation", args.eval_batches):
            prepared, hidden = corrupt(batch, generator)
            states, weight, bias = decoder_hidden_and_head(model, prepared)
            logits = states @ weight.t() + (bias if bias is not None else 0)
            labels = prepared["labels"]
            valid = labels != IGNORE_INDEX
            losses = F.cross_entropy(logits.transpose(1, 2), labels, ignore_index=IGNORE_INDEX, reduction="none")
            sums["loss"] += losses[valid].sum().item()
            sums["hidden_loss"] += losses[hidden].sum().item()
            sums["hidden_correct"] += (logits.argmax(-1) == labels)[hidden].sum().item()
            sums["floor"] -= logp[labels[valid]].sum().item()
            sums["hidden_floor"] -= hidden_logp[labels[hidden]].sum().item()
            sums["targets"] += int(valid.sum())
            sums["hidden"] += int(hidden.sum())
    fill_text = ("The history of the <mask> is long." if family == "bart"
                 else "The history of the <extra_id_0> is long.")
    from hfssl.objectives.seq2seq import fill_masked_spans

    return {"eval_loss": round(sums["loss"] / sums["targets"], 4),
            "unigram_floor": round(sums["floor"] / sums["targets"], 4),
            "hidden_loss": round(sums["hidden_loss"] / sums["hidden"], 4),
            "hidden_unigram_floor": round(sums["hidden_floor"] / sums["hidden"], 4),
            "hidden_accuracy": round(sums["hidden_correct"] / sums["hidden"], 4),
            "eval_targets": sums["targets"], "eval_hidden_targets": sums["hidden"],
            "fill": {fill_text: fill_masked_spans(model, tokenizer, fill_text, max_new_tokens=20)[0]}}


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    files = args.train_file or default_files()
    root = Path(args.output_dir)
    results: dict[str, Any] = {}
    load_before = os.getloadavg()
    for family in [f.strip() for f in args.model_type.split(",") if f.strip()]:
        tok_dir = root / f"{family}-tokenizer"
        train_tokenizer_on(files, family, args.vocab_size, args.tokenizer_chars, tok_dir)
        seconds = run_recipe(args, files, family, tok_dir, root / family)
        history = [json.loads(line) for line in (root / family / "metrics.jsonl").read_text().splitlines()]
        results[family] = {"train_seconds": round(seconds, 1),
                           "eval_loss_by_step": {r["step"]: round(r["eval_loss"], 4) for r in history
                                                 if "eval_loss" in r},
                           **score(args, files, family, root / family)}
        print(f"{family}: {results[family]}", file=sys.stderr, flush=True)
    print(json.dumps({"benchmark": "seq2seq_denoising_quality", "model_size": args.model_size,
                      "max_seq_length": args.max_seq_length, "batch_size": args.batch_size,
                      "max_steps": args.max_steps, "vocab_size": args.vocab_size, "files": len(files),
                      "load_average": [round(x, 1) for x in (*load_before, *os.getloadavg())],
                      "results": results}))


if __name__ == "__main__":
    main()
