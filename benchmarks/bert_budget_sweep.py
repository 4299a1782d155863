"""Which ``recipes/bert_mlm.py`` defaults make a short BERT budget count: a sweep at equal trained tokens.

Each configuration is the recipe itself (a subprocess, ``OMP_NUM_THREADS=1``) trained for a fixed number of
optimizer steps on the same token stream, then scored on the same held-out text masked once (15%,
80/10/10, fixed seed) by ``benchmarks/bert_quality.py``'s ``score`` — whatever masking rate the run trained
with. Loss against trained tokens does not depend on how busy the CPU is, so configurations are compared
at equal tokens; throughput differences are measured separately (``--throughput``).

``--curve_every N`` also scores the checkpoint every N steps (the learning curve, e.g. when the unigram
plateau is left). Runs go ``--parallel`` at a time (at most 2 on a shared 2-core machine).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bert_budget_sweep.py --workdir /tmp/bert_sweep \
        --base "--model_size tiny --max_steps 600" \
        --runs "lr1e-3=;lr3e-3=--learning_rate 3e-3;nodrop=--config_overrides hidden_dropout_prob=0"

Every result is appended to ``<workdir>/results.jsonl``; the last stdout line is a JSON list of this
invocation's results.
"""

from __future__ import annotations

import os

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import shlex  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bert_quality as bq  # noqa: E402


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workdir", required=True, help="tokenizer, eval set, runs and results.jsonl live here")
    p.add_argument("--train_file", nargs="+", default=None, help="default: the shared Gutenberg books")
    p.add_argument("--seq_len", type=int, default=128)
    p.add_argument("--vocab_size", type=int, default=8000)
    p.add_argument("--tokenizer_chars", type=int, default=8_000_000)
    p.add_argument("--eval_sequences", type=int, default=256)
    p.add_argument("--eval_batch_size", type=int, default=32)
    p.add_argument("--base", default="--model_size tiny --max_steps 600", help="recipe flags shared by all runs")
    p.add_argument("--runs", default="", help='"name=flags;name=flags" (flags override --base; '
                   "--config_overrides items are appended to the base ones)")
    p.add_argument("--curve_every", type=int, default=0, help="also score the checkpoint every N steps")
    p.add_argument("--parallel", type=int, default=2)
    p.add_argument("--throughput", type=float, default=0.0,
                   help="instead of scoring: seconds of training per run, report steady tokens/s only")
    return p.parse_args(argv)


# -- shared setup (tokenizer, eval set, floors), cached in the workdir ---------------------------
def setup(args: argparse.Namespace) -> dict[str, Any]:
    import torch
    from transformers import AutoTokenizer

    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    cache = work / "setup.json"
    if cache.exists():
        info = json.loads(cache.read_text())
        info["batches"] = torch.load(work / "eval_batches.pt")
        return info
    ns = argparse.Namespace(train_file=args.train_file, seq_len=args.seq_len, vocab_size=args.vocab_size,
                            tokenizer_chars=args.tokenizer_chars, eval_sequences=args.eval_sequences,
                            eval_batch_size=args.eval_batch_size)
    files, corpus = bq.train_files(ns)
    held_out = bq.held_out_documents(files, args.eval_sequences * args.seq_len * 2)
    tok_dir = str(work / "tokenizer")
    bq.train_shared_tokenizer(files, held_out, ns, tok_dir)
    tokenizer = AutoTokenizer.from_pretrained(tok_dir)
    batches = bq.eval_batches(files, held_out, tokenizer, ns)
    torch.save(batches, work / "eval_batches.pt")
    info = {"files": files, "corpus": corpus, "held_out": held_out, "tok_dir": tok_dir,
            "unigram": bq.unigram_floor(files, held_out, tokenizer, batches)}
    cache.write_text(json.dumps(info))
    info["batches"] = batches
    return info


# -- one run: command, scoring ------------------------------------------------------------------
def merged_flags(base: str, flags: str) -> list[str]:
    """Base flags, then the run's (argparse keeps the last value); config overrides are concatenated."""
    parts, overrides = [], []
    for chunk in (shlex.split(base), shlex.split(flags)):
        i = 0
        while i < len(chunk):
            if chunk[i] == "--config_overrides":
                overrides.append(chunk[i + 1])
                i += 2
                continue
            parts.append(chunk[i])
            i += 1
    return parts + (["--config_overrides", ",".join(overrides)] if overrides else [])


def command(info: dict[str, Any], args: argparse.Namespace, out: str, flags: list[str]) -> list[str]:
    return [sys.executable, str(bq.RECIPE), "--train_file", *info["files"], "--tokenizer_name", info["tok_dir"],
            "--max_seq_length", str(args.seq_len), "--output_dir", out, "--overwrite_output_dir",
            "--validation_split_documents", str(info["held_out"]), "--eval_steps", "0", "--max_eval_batches", "1",
            "--checkpointing_steps", str(args.curve_every), "--save_total_limit", "0", "--logging_steps", "25",
            "--report_to", "none", *flags]


def score_checkpoints(out: str, batches: list[dict]) -> list[dict[str, Any]]:
    """The learning curve: each ``checkpoints/step_N/model.safetensors`` loaded into the exported config."""
    import transformers
    from safetensors.torch import load_file
    from transformers import BertForPreTraining

    from hfssl.training.checkpoint import list_checkpoints

    transformers.utils.logging.disable_progress_bar()  # one "Loading weights" bar per checkpoint otherwise
    curve = []
    for step, path in list_checkpoints(out):
        model = BertForPreTraining.from_pretrained(out)
        # The loop saves the objective wrapper's state ("backbone." prefix); tied decoder weights are absent.
        state = {k.removeprefix("backbone."): v for k, v in load_file(os.path.join(path, "model.safetensors")).items()}
        if model.load_state_dict(state, strict=False).unexpected_keys:
            raise SystemExit(f"{path}: checkpoint keys do not match BertForPreTraining")
        curve.append({"step": step, **bq.score(model, batches)})
    return curve


def finish(name: str, flags: list[str], out: str, info: dict[str, Any], args: argparse.Namespace,
           proc: subprocess.CompletedProcess | None, wall: float) -> dict[str, Any]:
    from transformers import AutoTokenizer, BertForPreTraining

    if proc is not None and proc.returncode != 0:
        return {"name": name, "error": proc.stderr.strip()[-1500:]}
    res = json.loads((Path(out) / "all_results.json").read_text())
    shown = shlex.join(f for f in flags)
    tokenizer = AutoTokenizer.from_pretrained(info["tok_dir"])
    seen = bq.hfssl_tokens_seen(info["files"], info["held_out"], tokenizer, shown, res["global_step"])
    result = {"name": name, "flags": shown, "steps": res["global_step"], **seen,
              "train_seconds": round(res["train_runtime"], 1), "wall_seconds": round(wall, 1),
              "train_loss_last": round(res.get("train_loss", float("nan")), 4),
              **bq.score(BertForPreTraining.from_pretrained(out), info["batches"])}
    if args.curve_every:
        result["curve"] = score_checkpoints(out, info["batches"])
    return result


def steady_throughput(out: str, skip: int = 1) -> dict[str, float]:
    """Mean input tokens/s over the logged windows after the first ``skip`` (start-up) ones."""
    rows = [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if "input_tokens_per_second" in r][skip:]
    if not rows:
        return {"input_tokens_per_second": float("nan")}
    return {"input_tokens_per_second": round(sum(r["input_tokens_per_second"] for r in rows) / len(rows), 1),
            "windows": len(rows)}


def run_all(args: argparse.Namespace, info: dict[str, Any]) -> list[dict[str, Any]]:
    runs = bq.parse_explore(args.runs)
    pending = list(runs)
    active: list[tuple[str, list[str], str, subprocess.Popen, float]] = []
    results = []
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    while pending or active:
        while pending and len(active) < args.parallel:
            name, flags = pending.pop(0)
            out = str(Path(args.workdir) / "runs" / name)
            merged = merged_flags(args.base, flags)
            if args.throughput:
                merged = [*merged, "--logging_steps", "5"]
            bq.log(f"start {name}: {shlex.join(merged)}")
            proc = subprocess.Popen(command(info, args, out, merged), stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True, env=env)
            active.append((name, merged, out, proc, time.perf_counter()))
        time.sleep(1.0)
        for item in list(active):
            name, merged, out, proc, started = item
            if args.throughput and time.perf_counter() - started > args.throughput + 15 and proc.poll() is None:
                proc.terminate()  # enough windows logged; the run itself is not needed
            if proc.poll() is None:
                continue
            active.remove(item)
            _, stderr = proc.communicate()
            if args.throughput:
                result = {"name": name, "flags": shlex.join(merged), **steady_throughput(out)}
            else:
                done = subprocess.CompletedProcess(proc.args, proc.returncode, "", stderr)
                result = finish(name, merged, out, info, args, done, time.perf_counter() - started)
            bq.log(f"done {name}: {json.dumps({k: v for k, v in result.items() if k != 'curve'})}")
            with open(Path(args.workdir) / "results.jsonl", "a", encoding="utf-8") as fh:
                fh.write(json.dumps(result) + "\n")
            results.append(result)
    return results


def print_table(results: list[dict[str, Any]], unigram: dict[str, Any]) -> None:
    print(f"unigram floor: loss {unigram['eval_mlm_loss']} acc {unigram['eval_mlm_accuracy']}")
    print(f"{'run':<22}{'steps':>7}{'tokens':>11}{'train s':>9}{'eval loss':>11}{'eval acc':>10}  curve (step:loss)")
    for r in results:
        if "error" in r or "eval_mlm_loss" not in r:
            print(f"{r['name']:<22} {r.get('error', r)}")
            continue
        curve = " ".join(f"{c['step']}:{c['eval_mlm_loss']:.3f}" for c in r.get("curve", []))
        print(f"{r['name']:<22}{r['steps']:>7}{r['tokens_seen']:>11}{r['train_seconds']:>9}"
              f"{r['eval_mlm_loss']:>11.4f}{r['eval_mlm_accuracy']:>10.4f}  {curve}")


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    info = setup(args)
    bq.log(f"setup: {info['corpus']}, {info['held_out']} held-out documents, unigram {info['unigram']}")
    results = run_all(args, info)
    if not args.throughput:
        print_table(results, info["unigram"])
    print(json.dumps(results))


if __name__ == "__main__":
    main()
