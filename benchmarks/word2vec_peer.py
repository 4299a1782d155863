"""word2vec benchmark: recipes/word2vec.py against gensim.models.Word2Vec, same corpus, same settings, one run.

The corpus is a few tens of MB of the shared prose (Wikipedia shards by default, stubs dropped), read once by
hfssl's readers. gensim gets exactly hfssl's sentences: its vocabulary pass and tokenizer, out-of-vocabulary
words removed, cut at documents and every ``--max_sentence_length`` words, so both see the same windows.
Contenders, each timed on training alone (vocabulary building is reported apart):

* ``hfssl``: ``recipes/word2vec.py`` in a fresh process (the Accelerate loop, batched on the CPU/GPU);
* ``gensim``: ``gensim.models.Word2Vec`` (C/Cython, Hogwild threads) at its default worker count (3);
* ``gensim_1``: the same with one worker.

Words/s = corpus words in the vocabulary x epochs / training seconds (gensim's "raw words"; sub-sampled words
count, as gensim counts them). All three are evaluated by the same code (hfssl.evaluation.word_vectors, which
reproduces gensim's evaluate_word_pairs / evaluate_word_analogies): WordSim-353 and SimLex-999 Spearman,
Google analogy accuracy. The load average is recorded before and after: the machine may be shared. The last
stdout line is one JSON object with every figure and the ratios against the issue's targets.

    nice -n 5 .venv/bin/python benchmarks/word2vec_peer.py                    # ~30 MB of Wikipedia, skip-gram
    nice -n 5 .venv/bin/python benchmarks/word2vec_peer.py --architecture cbow --shards 10
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import argparse  # noqa: E402
import json  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SHARED_TEXT = REPO.parent / "shared" / "data" / "text"
# The targets at equal epochs: Spearman within 0.02 of gensim's, analogy within 2 points, CPU words/s >= 0.5x.
TARGETS = {"similarity_within": 0.02, "analogy_within_points": 2.0, "cpu_speed_ratio": 0.5}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--train_file", nargs="+", default=None,
                   help="Corpus files (default: the first --shards Wikipedia shards of ../shared/data/text).")
    p.add_argument("--shards", type=int, default=30, help="Wikipedia shards (~0.75 MB of article text each).")
    p.add_argument("--min_document_chars", type=int, default=50, help="Drop shorter documents (Wikipedia stubs).")
    p.add_argument("--architecture", default="skipgram", choices=("skipgram", "cbow"))
    p.add_argument("--vector_size", type=int, default=100)
    p.add_argument("--window", type=int, default=5)
    p.add_argument("--negative", type=int, default=5)
    p.add_argument("--min_count", type=int, default=5)
    p.add_argument("--sample", type=float, default=1e-3)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--max_sentence_length", type=int, default=1000)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--contenders", default="hfssl,gensim,gensim_1")
    p.add_argument("--hfssl_threads", type=int, default=None,
                   help="OMP_NUM_THREADS for the hfssl process (default: the recipe's: one thread on a CPU-only "
                        "machine, where busy cores make OpenMP threads spin).")
    p.add_argument("--hfssl_args", default="", help="Extra flags for recipes/word2vec.py (e.g. '--learning_rate 0.02').")
    p.add_argument("--output_dir", default=None, help="Keep the runs here (default: a temporary directory).")
    return p.parse_args()


def corpus_files(args: argparse.Namespace) -> list[str]:
    if args.train_file:
        return args.train_file
    shards = sorted((SHARED_TEXT / "wikipedia_en").glob("wiki_*.gz"))[: args.shards]
    if not shards:
        raise SystemExit(f"no corpus: {SHARED_TEXT} is missing; pass --train_file")
    return [str(p) for p in shards]


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def hfssl_sentences(files: list[str], args: argparse.Namespace, workdir: Path):
    """hfssl's vocabulary and the exact sentences its loop trains on (as lists of words, for gensim)."""
    from hfssl.data.corpus import load_documents
    from hfssl.data.words import WordBlocks, as_transformers_tokenizer, build_vocabulary

    def docs():
        return load_documents(train_file=files, min_document_chars=args.min_document_chars)

    started = time.perf_counter()
    vocab = build_vocabulary((d["text"] for d in docs()), min_count=args.min_count)
    vocab_seconds = time.perf_counter() - started
    tok = as_transformers_tokenizer(vocab.tokenizer())
    sentences = []
    for block in WordBlocks(docs(), tok, block_length=args.max_sentence_length, unk_id=vocab.unk_id):
        ids, starts = block["word_ids"].tolist(), block["sentence_starts"].tolist()
        current: list[str] = []
        for word, start in zip(ids, starts):
            if word < 0:
                break
            if start and current:
                sentences.append(current)
                current = []
            current.append(vocab.words[word])
        if current:
            sentences.append(current)
    return vocab, sentences, vocab_seconds


def evaluate(words, vectors) -> dict[str, float]:
    import torch

    from hfssl.evaluation.word_vectors import default_eval_file, evaluate_word_vectors, summary_scores

    files = {name: default_eval_file(name) for name in ("wordsim353", "simlex999", "google_analogy")}
    scores = evaluate_word_vectors(words, torch.as_tensor(vectors), wordsim_file=files["wordsim353"],
                                   simlex_file=files["simlex999"], analogy_file=files["google_analogy"])
    return {k: round(v, 4) for k, v in summary_scores(scores).items()}


def run_gensim(sentences, args: argparse.Namespace, workers: int | None) -> dict:
    from gensim.models import Word2Vec

    kwargs = {} if workers is None else {"workers": workers}
    model = Word2Vec(vector_size=args.vector_size, window=args.window, negative=args.negative, hs=0,
                     min_count=args.min_count, sample=args.sample, sg=int(args.architecture == "skipgram"),
                     seed=args.seed, max_vocab_size=None, **kwargs)
    started = time.perf_counter()
    model.build_vocab(sentences)
    vocab_seconds = time.perf_counter() - started
    words = sum(len(s) for s in sentences)
    load_before = load_average()
    started = time.perf_counter()
    model.train(sentences, total_examples=len(sentences), epochs=args.epochs)
    seconds = time.perf_counter() - started
    return {"workers": model.workers, "vocab_size": len(model.wv), "vocab_seconds": round(vocab_seconds, 2),
            "train_seconds": round(seconds, 2), "words_per_second": round(words * args.epochs / seconds),
            "load_before": load_before, "load_after": load_average(),
            **evaluate(model.wv.index_to_key, model.wv.vectors)}


def run_hfssl(files: list[str], args: argparse.Namespace, workdir: Path, retained_words: int) -> dict:
    out = workdir / "hfssl"
    command = [sys.executable, str(REPO / "recipes" / "word2vec.py"), "--train_file", *files,
               "--min_document_chars", str(args.min_document_chars), "--architecture", args.architecture,
               "--vector_size", str(args.vector_size), "--window", str(args.window), "--negative", str(args.negative),
               "--min_count", str(args.min_count), "--sample", str(args.sample), "--num_train_epochs", str(args.epochs),
               "--max_sentence_length", str(args.max_sentence_length), "--seed", str(args.seed),
               "--checkpointing_steps", "0", "--logging_steps", "200", "--output_dir", str(out),
               "--overwrite_output_dir", *args.hfssl_args.split()]
    load_before = load_average()
    started = time.perf_counter()
    env = {**os.environ, "TQDM_DISABLE": "1"}
    if args.hfssl_threads:
        env["OMP_NUM_THREADS"] = str(args.hfssl_threads)
    result = subprocess.run(command, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"hfssl run failed:\n{result.stderr[-3000:]}")
    metrics = json.loads((out / "all_results.json").read_text())
    seconds = metrics["train_runtime"]
    from hfssl.models.word2vec import read_word2vec_format

    words, vectors = read_word2vec_format(str(out / "word2vec.bin"), binary=True)
    return {"vocab_size": len(words), "train_seconds": round(seconds, 2), "process_seconds": round(wall, 2),
            "words_per_second": round(retained_words * args.epochs / seconds), "steps": metrics["global_step"],
            "final_loss": round(metrics.get("train_loss", float("nan")), 4), "load_before": load_before,
            "load_after": load_average(), **evaluate(words, vectors)}


def main() -> None:
    args = parse_args()
    files = corpus_files(args)
    contenders = args.contenders.split(",")
    with tempfile.TemporaryDirectory(prefix="w2v-bench-") as tmp:
        workdir = Path(args.output_dir or tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        vocab, sentences, vocab_seconds = hfssl_sentences(files, args, workdir)
        words = sum(len(s) for s in sentences)
        assert words == vocab.retained_words, (words, vocab.retained_words)
        report: dict = {"corpus": {"files": len(files), "documents": vocab.documents, "words": vocab.total_words,
                                   "words_in_vocabulary": words, "vocab_size": vocab.size,
                                   "hfssl_vocab_seconds": round(vocab_seconds, 2)},
                        "settings": {k: getattr(args, k) for k in ("architecture", "vector_size", "window", "negative",
                                                                   "min_count", "sample", "epochs",
                                                                   "max_sentence_length", "seed", "hfssl_args",
                                                                   "hfssl_threads")},
                        "cpu_count": os.cpu_count()}
        for name in contenders:
            print(f"running {name} ...", file=sys.stderr, flush=True)
            if name == "hfssl":
                report[name] = run_hfssl(files, args, workdir, words)
            elif name in ("gensim", "gensim_1"):
                report[name] = run_gensim(sentences, args, None if name == "gensim" else 1)
            else:
                raise SystemExit(f"unknown contender {name!r}")
            print(f"{name:9s} {json.dumps(report[name])}", file=sys.stderr, flush=True)
    ratios, met = {}, {}
    if "hfssl" in report:
        h = report["hfssl"]
        for peer in ("gensim", "gensim_1"):
            if peer not in report:
                continue
            g = report[peer]
            ratios[f"speed_vs_{peer}"] = round(h["words_per_second"] / g["words_per_second"], 3)
            for key in ("wordsim353_spearman", "simlex999_spearman"):
                ratios[f"{key}_diff_vs_{peer}"] = round(h[key] - g[key], 4)
            ratios[f"analogy_points_diff_vs_{peer}"] = round(100 * (h["google_analogy_accuracy"] -
                                                                     g["google_analogy_accuracy"]), 2)
        if "gensim" in report:
            # Quality: not below gensim by more than the tolerance (scoring higher is no miss).
            met = {"wordsim353": ratios["wordsim353_spearman_diff_vs_gensim"] >= -TARGETS["similarity_within"],
                   "simlex999": ratios["simlex999_spearman_diff_vs_gensim"] >= -TARGETS["similarity_within"],
                   "analogy": ratios["analogy_points_diff_vs_gensim"] >= -TARGETS["analogy_within_points"],
                   "cpu_speed": ratios["speed_vs_gensim"] >= TARGETS["cpu_speed_ratio"]}
    report["ratios"] = ratios
    report["targets_met"] = met
    print(f"{'contender':9s} {'words/s':>9s} {'train s':>8s} {'WS353':>7s} {'SL999':>7s} {'analogy':>8s}")
    for name in contenders:
        r = report[name]
        print(f"{name:9s} {r['words_per_second']:9d} {r['train_seconds']:8.1f} {r['wordsim353_spearman']:7.4f} "
              f"{r['simlex999_spearman']:7.4f} {r['google_analogy_accuracy']:8.4f}")
    print(json.dumps(report))


if __name__ == "__main__":
    main()
