"""BERT quality at equal wall-clock: the hfssl recipe against the HF ``Trainer`` path of ``run_mlm.py``.

Both sides get the same model size (a ``bert`` preset), the same text, the same WordPiece tokenizer
(trained once here and handed to both) and the same training-time budget:

* ``hfssl``: ``recipes/bert_mlm.py`` as a subprocess with its defaults (MLM 80/10/10 + NSP, lr 1e-3,
  cosine, batch 32). The recipe has no time-budget flag, so ``--max_steps`` is chosen from two short
  calibration runs of the recipe itself (seconds per step and fixed start-up cost at that batch size);
  the cosine schedule then ends at (about) the budget; the measured training time is reported. Checkpointing and in-loop evaluation are switched off (the Trainer side
  does neither), and the held-out documents are skipped with ``--validation_split_documents``.
* ``hf_trainer``: what ``run_mlm.py`` does with its defaults: ``BertForMaskedLM`` +
  ``DataCollatorForLanguageModeling`` (masking on the CPU) on packed full-length segments
  (pre-tokenized, as ``run_mlm.py``'s ``datasets.map``), ``Trainer`` with lr 5e-5 linear over 3 epochs,
  batch 8, no warm-up; a ``TrainerCallback`` stops it when the budget is spent.

Then both final models are scored on the same held-out text (the first documents of the corpus, which
neither side trains on) with the same fixed masking (``hfssl.objectives.mlm.mask_tokens`` with a seeded
generator, computed once): MLM loss and accuracy at the masked positions, through each model's own
``cls.predictions`` head. A random-init model is scored as the floor.

``--explore "name=flags;name=flags"`` adds more hfssl runs (recipe flags such as ``--learning_rate 2e-3``)
to see which defaults make a short budget count. The last stdout line is one JSON object.

    OMP_NUM_THREADS=1 nice -n 5 .venv/bin/python benchmarks/bert_quality.py --budget_seconds 180
"""

from __future__ import annotations

import os

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import shlex  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SHARED_TEXT = REPO.parent / "shared" / "data" / "text"
RECIPE = REPO / "recipes" / "bert_mlm.py"
RECIPE_BATCH_SIZE = 32  # recipes/bert_mlm.py's default --per_device_train_batch_size
RECIPE_SEED = 42  # its --seed default (nsp_pairs is seeded with it)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--train_file", nargs="+", default=None,
                   help="files/globs (default: the shared Gutenberg books, else hfssl's built-in corpus)")
    p.add_argument("--model_size", default="mini", help="bert preset of hfssl/models/presets.py")
    p.add_argument("--budget_seconds", type=float, default=180.0, help="training time per contender")
    p.add_argument("--seq_len", type=int, default=128)
    p.add_argument("--vocab_size", type=int, default=8000, help="WordPiece vocabulary (the recipe's default)")
    p.add_argument("--tokenizer_chars", type=int, default=8_000_000, help="characters to train the tokenizer on")
    p.add_argument("--eval_sequences", type=int, default=256, help="held-out sequences of --seq_len tokens")
    p.add_argument("--eval_batch_size", type=int, default=32)
    p.add_argument("--calibration_steps", type=int, default=10, help="calibration runs n and 3n steps")
    p.add_argument("--trainer_batch_size", type=int, default=8, help="run_mlm examples' batch size")
    p.add_argument("--trainer_learning_rate", type=float, default=5e-5)
    p.add_argument("--trainer_sequences_per_second", type=float, default=100.0,
                   help="pre-tokenize budget x this many blocks for the Trainer (more than it can eat)")
    p.add_argument("--contenders", default="hfssl,hf_trainer", help="comma list: hfssl, hf_trainer")
    p.add_argument("--hfssl_flags", default="", help="extra recipe flags for the main hfssl run")
    p.add_argument("--explore", default="", help='extra hfssl runs: "name=flags;name=flags"')
    p.add_argument("--explore_budget_seconds", type=float, default=None, help="default: --budget_seconds")
    p.add_argument("--workdir", default=None, help="keep outputs here (default: a temp dir)")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


# -- data -------------------------------------------------------------------------------------
def train_files(args: argparse.Namespace) -> tuple[list[str], str]:
    from hfssl.data.corpus import builtin_corpus_files, expand_files

    if args.train_file:
        return expand_files(args.train_file), "--train_file " + " ".join(args.train_file)
    books = sorted(str(p) for p in (SHARED_TEXT / "gutenberg").glob("*.txt.gz"))
    if books:
        return books, f"shared Gutenberg books ({len(books)} files)"
    return builtin_corpus_files(), "hfssl built-in corpus"


def data_args(files: list[str], held_out: int):
    from hfssl.config import DataArguments

    return DataArguments(train_file=files, validation_split_documents=held_out)


def held_out_documents(files: list[str], tokenizer_free_tokens: int) -> int:
    """How many leading documents hold at least ``tokenizer_free_tokens`` whitespace words (x1.3 ~ tokens)."""
    from hfssl.data.corpus import load_documents

    words, n = 0, 0
    for doc in load_documents(train_file=files):
        n += 1
        words += len(doc["text"].split())
        if words * 1.3 >= tokenizer_free_tokens:
            return n
    raise SystemExit(f"the corpus has only {n} documents: too little to hold out {tokenizer_free_tokens} tokens")


def train_shared_tokenizer(files: list[str], held_out: int, args: argparse.Namespace, out_dir: str) -> None:
    from hfssl.data.corpus import load_documents_from_args
    from hfssl.data.tokenizer_training import train_tokenizer

    def texts():
        seen = 0
        for doc in load_documents_from_args(data_args(files, held_out), "train"):
            yield doc["text"]
            seen += len(doc["text"])
            if seen >= args.tokenizer_chars:
                return

    tok = train_tokenizer(texts(), tokenizer_type="wordpiece", vocab_size=args.vocab_size,
                          model_max_length=args.seq_len)
    tok.save_pretrained(out_dir)


def eval_batches(files: list[str], held_out: int, tokenizer, args: argparse.Namespace) -> list[dict]:
    """The held-out sequences, masked once with a fixed generator: every model sees the same corruption."""
    import torch

    from hfssl.data.corpus import load_documents_from_args
    from hfssl.data.packing import pack_mlm_segments
    from hfssl.objectives.mlm import mask_tokens, random_token_candidates

    docs = load_documents_from_args(data_args(files, held_out), "validation")
    seqs = [ex["input_ids"] for ex in pack_mlm_segments(docs, tokenizer, args.seq_len)
            if len(ex["input_ids"]) == args.seq_len][: args.eval_sequences]
    if len(seqs) < args.eval_sequences:
        log(f"warning: only {len(seqs)} held-out sequences")
    ids = torch.tensor(seqs, dtype=torch.long)
    special = torch.isin(ids, torch.tensor(tokenizer.all_special_ids))
    generator = torch.Generator().manual_seed(1234)
    masked, labels = mask_tokens(ids, mask_token_id=tokenizer.mask_token_id,
                                 random_token_ids=random_token_candidates(len(tokenizer), tokenizer.all_special_ids),
                                 special_tokens_mask=special, mlm_probability=0.15, generator=generator)
    bs = args.eval_batch_size
    return [{"input_ids": masked[i:i + bs], "labels": labels[i:i + bs]} for i in range(0, len(seqs), bs)]


def score(model, batches: list[dict]) -> dict[str, float]:
    """MLM loss / accuracy at the masked positions, through the model's own ``cls.predictions`` head."""
    import torch
    import torch.nn.functional as F

    model.eval()
    loss, correct, n = 0.0, 0, 0
    with torch.no_grad():
        for b in batches:
            hidden = model.bert(input_ids=b["input_ids"], attention_mask=torch.ones_like(b["input_ids"]),
                                token_type_ids=torch.zeros_like(b["input_ids"])).last_hidden_state
            sel = b["labels"] != -100
            logits = model.cls.predictions(hidden[sel]).float()
            target = b["labels"][sel]
            loss += F.cross_entropy(logits, target, reduction="sum").item()
            correct += int((logits.argmax(-1) == target).sum())
            n += int(sel.sum())
    return {"eval_mlm_loss": round(loss / n, 4), "eval_mlm_accuracy": round(correct / n, 4), "eval_targets": n}


def unigram_floor(files: list[str], held_out: int, tokenizer, batches: list[dict], sequences: int = 2000
                  ) -> dict[str, float]:
    """What a model that ignores the context scores: training-token frequencies (add-one smoothed).

    A BERT that has only learned token frequencies sits here; beating it means it uses the context.
    """
    import torch

    from hfssl.data.corpus import load_documents_from_args
    from hfssl.data.packing import pack_mlm_segments

    counts = torch.ones(len(tokenizer), dtype=torch.float64)
    docs = load_documents_from_args(data_args(files, held_out), "train")
    for i, ex in enumerate(pack_mlm_segments(docs, tokenizer, batches[0]["input_ids"].shape[1])):
        counts += torch.bincount(torch.tensor(ex["input_ids"]), minlength=len(tokenizer))
        if i + 1 >= sequences:
            break
    counts[torch.tensor(tokenizer.all_special_ids)] = 1.0
    logp = (counts / counts.sum()).log()
    targets = torch.cat([b["labels"][b["labels"] != -100] for b in batches])
    return {"eval_mlm_loss": round(-logp[targets].mean().item(), 4),
            "eval_mlm_accuracy": round((targets == logp.argmax()).double().mean().item(), 4),
            "eval_targets": int(targets.numel())}


# -- hfssl: the recipe as a subprocess --------------------------------------------------------------
def recipe_command(files: list[str], held_out: int, tok_dir: str, out_dir: str, args: argparse.Namespace,
                   max_steps: int, flags: str) -> list[str]:
    return [sys.executable, str(RECIPE), "--train_file", *files, "--tokenizer_name", tok_dir,
            "--model_size", args.model_size, "--max_seq_length", str(args.seq_len), "--output_dir", out_dir,
            "--overwrite_output_dir", "--max_steps", str(max_steps),
            # Held-out documents: skipped by training; the recipe's own end-of-run eval kept to 1 batch.
            "--validation_split_documents", str(held_out), "--eval_steps", "0", "--max_eval_batches", "1",
            # The Trainer side neither checkpoints nor evaluates during its budget; neither does this side.
            "--checkpointing_steps", "0", "--logging_steps", "10", *shlex.split(flags)]


def shown_command(cmd: list[str], files: list[str]) -> str:
    """The recipe command with the long file list folded to its count (work dirs stay as they were)."""
    args = [c for c in cmd[2:] if c not in files]
    at = args.index("--train_file") + 1
    args.insert(at, f"<{len(files)} files>")
    return "python recipes/bert_mlm.py " + " ".join(shlex.quote(a) if not a.startswith("<") else a for a in args)


def run_recipe(cmd: list[str], out_dir: str) -> dict[str, Any]:
    started = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "TQDM_DISABLE": "1"})
    if proc.returncode != 0:
        raise SystemExit(f"recipe failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}")
    with open(os.path.join(out_dir, "all_results.json"), encoding="utf-8") as fh:
        results = json.load(fh)
    results["process_seconds"] = time.perf_counter() - started
    return results


def flag_value(flags: list[str], name: str, default: Any) -> Any:
    return flags[flags.index(name) + 1] if name in flags else default


def hfssl_tokens_seen(files: list[str], held_out: int, tokenizer, flags: str, steps: int) -> dict[str, int]:
    """Replays the recipe's (deterministic, unshuffled) data stream to count the tokens its steps consumed."""
    from hfssl.data.corpus import load_documents_from_args
    from hfssl.data.packing import pack_mlm_segments
    from hfssl.data.sentence_pairs import nsp_pairs

    parts = shlex.split(flags)
    bs = int(flag_value(parts, "--per_device_train_batch_size", RECIPE_BATCH_SIZE))
    seq_len = int(flag_value(parts, "--max_seq_length", 128))
    docs = load_documents_from_args(data_args(files, held_out), "train")
    if "--no_nsp" in parts:
        stream = pack_mlm_segments(docs, tokenizer, seq_len)
    else:
        stream = nsp_pairs(docs, tokenizer, seq_len, short_seq_prob=float(flag_value(parts, "--short_seq_prob", 0.1)),
                           sop="--sop" in parts, seed=int(flag_value(parts, "--seed", RECIPE_SEED)))
    real, padded, batch = 0, 0, []
    for ex in stream:
        batch.append(len(ex["input_ids"]))
        if len(batch) == bs:
            real += sum(batch)
            padded += math.ceil(max(batch) / 8) * 8 * bs  # collate_padded pads to a multiple of 8
            batch = []
            steps -= 1
            if steps == 0:
                break
    return {"tokens_seen": real, "padded_tokens_seen": padded}


class Calibrator:
    """Steps of the recipe that fit a time budget, measured once per (batch size, NSP or not, ...).

    Two short runs (n and 3n steps) give the steady seconds per step (the slope) and the fixed cost of
    the first steps (warm-up of the data stream and allocator, the intercept), both inside the recipe's
    ``train_runtime``; one run alone would count that fixed cost n times over.
    """

    def __init__(self, files: list[str], held_out: int, tok_dir: str, work: Path, args: argparse.Namespace):
        self.files, self.held_out, self.tok_dir, self.work, self.args = files, held_out, tok_dir, work, args
        self.cache: dict[tuple, tuple[float, float]] = {}

    def _runtime(self, flags: str, steps: int) -> float:
        out = str(self.work / f"calibration_{len(self.cache)}_{steps}")
        res = run_recipe(recipe_command(self.files, self.held_out, self.tok_dir, out, self.args, steps, flags), out)
        return res["train_runtime"]

    def steps_for(self, flags: str, budget: float) -> int:
        parts = shlex.split(flags)
        key = (flag_value(parts, "--per_device_train_batch_size", RECIPE_BATCH_SIZE), "--no_nsp" in parts,
               flag_value(parts, "--max_seq_length", None), flag_value(parts, "--model_size", None))
        if key not in self.cache:
            n = self.args.calibration_steps
            short, long = self._runtime(flags, n), self._runtime(flags, 3 * n)
            per_step = max((long - short) / (2 * n), 1e-6)
            self.cache[key] = (max(short - n * per_step, 0.0), per_step)
            log(f"calibration {key}: {per_step:.3f} s/step + {self.cache[key][0]:.1f} s fixed")
        fixed, per_step = self.cache[key]
        return max(1, int((budget - fixed) / per_step))


def run_hfssl(name: str, flags: str, budget: float, calib: Calibrator, batches: list[dict], tokenizer,
              ) -> dict[str, Any]:
    from transformers import BertForPreTraining

    a = calib.args
    max_steps = calib.steps_for(flags, budget)
    out = str(calib.work / name)
    cmd = recipe_command(calib.files, calib.held_out, calib.tok_dir, out, a, max_steps, flags)
    log(f"{name}: recipe with --max_steps {max_steps} {flags}")
    res = run_recipe(cmd, out)
    seen = hfssl_tokens_seen(calib.files, calib.held_out, tokenizer, flags, res["global_step"])
    model = BertForPreTraining.from_pretrained(out)
    result = {"flags": flags, "steps": res["global_step"], "train_seconds": round(res["train_runtime"], 1),
              **seen, "tokens_per_second": round(seen["tokens_seen"] / res["train_runtime"], 1),
              "train_loss_last": round(res.get("train_loss", float("nan")), 4), **score(model, batches),
              "command": shown_command(cmd, calib.files)}
    log(f"{name}: {result}")
    return result


# -- HF Trainer path (in its own process) ---------------------------------------------------------
def trainer_worker(spec: dict[str, Any]) -> dict[str, Any]:
    import datasets
    import torch
    from transformers import (
        AutoTokenizer,
        BertForMaskedLM,
        DataCollatorForLanguageModeling,
        Trainer,
        TrainerCallback,
        TrainingArguments,
    )

    from hfssl.data.corpus import load_documents_from_args
    from hfssl.data.packing import pack_mlm_segments
    from hfssl.models.presets import build_config

    tokenizer = AutoTokenizer.from_pretrained(spec["tok_dir"])
    seq_len, budget, bs = spec["seq_len"], spec["budget_seconds"], spec["batch_size"]
    docs = load_documents_from_args(data_args(spec["files"], spec["held_out"]), "train")
    # run_mlm.py tokenizes and groups texts into full blocks up front (group_texts drops the remainder);
    # enough blocks for the budget at a generous speed, so the run is stopped by time, not by data.
    want = int(budget * spec["max_sequences_per_second"]) + 4 * bs
    data = []
    for ex in pack_mlm_segments(docs, tokenizer, seq_len):
        if len(ex["input_ids"]) == seq_len:
            data.append(ex)
            if len(data) >= want:
                break
    train_set = datasets.Dataset.from_list(data)

    clock: dict[str, float] = {}

    class Budget(TrainerCallback):
        def on_train_begin(self, targs, state, control, **kwargs):
            clock["start"] = time.perf_counter()

        def on_step_end(self, targs, state, control, **kwargs):
            clock["end"] = time.perf_counter()
            if clock["end"] - clock["start"] >= budget:
                control.should_training_stop = True

    torch.manual_seed(42)
    config = build_config("bert", spec["model_size"], vocab_size=len(tokenizer), max_position_embeddings=seq_len)
    model = BertForMaskedLM(config)
    targs = TrainingArguments(output_dir=spec["out_dir"], per_device_train_batch_size=bs, learning_rate=spec["lr"],
                              num_train_epochs=3, lr_scheduler_type="linear", report_to="none", save_strategy="no",
                              logging_steps=50, use_cpu=True, disable_tqdm=True, seed=42)
    trainer = Trainer(model=model, args=targs, train_dataset=train_set, processing_class=tokenizer,
                      data_collator=DataCollatorForLanguageModeling(tokenizer, mlm_probability=0.15),
                      callbacks=[Budget()])
    out = trainer.train()
    trainer.save_model(spec["out_dir"])
    steps = out.global_step
    seconds = clock["end"] - clock["start"]
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return {"steps": steps, "train_seconds": round(seconds, 1), "tokens_seen": steps * bs * seq_len,
            "padded_tokens_seen": steps * bs * seq_len, "tokens_per_second": round(steps * bs * seq_len / seconds, 1),
            "epochs": round(trainer.state.epoch or 0.0, 3), "train_loss_last": losses[-1] if losses else None,
            "lr_at_stop": trainer.lr_scheduler.get_last_lr()[0], "dataset_sequences": len(data)}


def run_trainer(spec: dict[str, Any], batches: list[dict]) -> dict[str, Any]:
    from transformers import BertForMaskedLM

    spec_file = Path(spec["out_dir"] + ".json")
    spec_file.write_text(json.dumps(spec))
    log(f"hf_trainer: budget {spec['budget_seconds']} s, batch {spec['batch_size']}, lr {spec['lr']}")
    proc = subprocess.run([sys.executable, __file__, "--worker", str(spec_file)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"hf_trainer failed: {proc.stderr.strip()[-2000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result.update(score(BertForMaskedLM.from_pretrained(spec["out_dir"]), batches))
    log(f"hf_trainer: {result}")
    return result


def parse_explore(text: str) -> list[tuple[str, str]]:
    out = []
    for item in filter(None, (s.strip() for s in text.split(";"))):
        name, _, flags = item.partition("=")
        out.append((name.strip(), flags.strip()))
    return out


def run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    import torch
    from transformers import AutoTokenizer, BertForMaskedLM

    from hfssl.models.presets import build_config

    t0 = time.perf_counter()
    files, corpus = train_files(args)
    held_out = held_out_documents(files, args.eval_sequences * args.seq_len * 2)
    tok_dir = str(work / "tokenizer")
    train_shared_tokenizer(files, held_out, args, tok_dir)
    tokenizer = AutoTokenizer.from_pretrained(tok_dir)
    batches = eval_batches(files, held_out, tokenizer, args)
    log(f"corpus: {corpus}; {held_out} held-out documents; tokenizer {len(tokenizer)}; setup "
        f"{time.perf_counter() - t0:.0f} s")
    torch.manual_seed(0)
    floor = score(BertForMaskedLM(build_config("bert", args.model_size, vocab_size=len(tokenizer),
                                               max_position_embeddings=args.seq_len)), batches)
    results: dict[str, Any] = {"random_init": floor,
                               "unigram": unigram_floor(files, held_out, tokenizer, batches)}
    calib = Calibrator(files, held_out, tok_dir, work, args)
    names = [c for c in args.contenders.split(",") if c]
    if "hfssl" in names:
        results["hfssl"] = run_hfssl("hfssl", args.hfssl_flags, args.budget_seconds, calib, batches, tokenizer)
    if "hf_trainer" in names:
        spec = {"tok_dir": tok_dir, "files": files, "held_out": held_out, "seq_len": args.seq_len,
                "budget_seconds": args.budget_seconds, "batch_size": args.trainer_batch_size,
                "lr": args.trainer_learning_rate, "model_size": args.model_size, "out_dir": str(work / "hf_trainer"),
                "max_sequences_per_second": args.trainer_sequences_per_second}
        results["hf_trainer"] = run_trainer(spec, batches)
    explore_budget = args.explore_budget_seconds or args.budget_seconds
    for name, flags in parse_explore(args.explore):
        results[f"explore:{name}"] = run_hfssl(f"explore_{name}", flags, explore_budget, calib, batches, tokenizer)
    summary: dict[str, Any] = {"benchmark": "bert_quality", "device": "cpu", "torch_threads": torch.get_num_threads(),
                               "model_size": args.model_size, "seq_len": args.seq_len, "corpus": corpus,
                               "budget_seconds": args.budget_seconds, "explore_budget_seconds": explore_budget,
                               "eval_sequences": sum(len(b["input_ids"]) for b in batches),
                               "calibration_fixed_s_and_s_per_step": {str(k): [round(x, 4) for x in v]
                                                                       for k, v in calib.cache.items()},
                               "results": results, "wall_seconds": round(time.perf_counter() - t0, 1)}
    if "hfssl" in results and "hf_trainer" in results:
        h, t = results["hfssl"], results["hf_trainer"]
        summary["hfssl_minus_trainer_loss"] = round(h["eval_mlm_loss"] - t["eval_mlm_loss"], 4)
        summary["hfssl_at_least_as_low"] = h["eval_mlm_loss"] <= t["eval_mlm_loss"]
    return summary


def print_table(summary: dict[str, Any]) -> None:
    print(f"{'contender':<24}{'steps':>7}{'train s':>9}{'tokens':>11}{'tok/s':>9}{'eval loss':>11}{'eval acc':>10}")
    for name, r in summary["results"].items():
        print(f"{name:<24}{r.get('steps', '-'):>7}{r.get('train_seconds', '-'):>9}{r.get('tokens_seen', '-'):>11}"
              f"{r.get('tokens_per_second', '-'):>9}{r['eval_mlm_loss']:>11.4f}{r['eval_mlm_accuracy']:>10.4f}")


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    if args.worker:
        print(json.dumps(trainer_worker(json.loads(Path(args.worker).read_text()))))
        return
    if args.workdir:
        Path(args.workdir).mkdir(parents=True, exist_ok=True)
        summary = run(args, Path(args.workdir))
    else:
        with tempfile.TemporaryDirectory(prefix="bert_quality_") as tmp:
            summary = run(args, Path(tmp))
    print_table(summary)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
