"""recipes/word2vec.py end to end as a user runs it: a corpus with known structure, the export, the errors,
kill -9 and exact resume, two processes."""

from __future__ import annotations

import gzip
import json
import os
import random
import signal
import subprocess
import time
from pathlib import Path

import pytest
from accelerate.state import AcceleratorState, GradientState

from tests.helpers.recipes import import_recipe, read_history

TOPICS = {t: [f"{t}{i}" for i in range(12)] for t in ("animal", "colour", "city", "tool")}
FUNCTION_WORDS = ["the", "a", "of", "and", "to", "in", "is", "was"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> list[str]:
    """300 documents, each about one topic: 60% of its words from the topic's 12 words, the rest function
    words. Skip-gram must put the words of a topic next to each other. Half gzipped text, half JSONL."""
    rng = random.Random(0)
    docs = []
    for _ in range(300):
        words = TOPICS[rng.choice(sorted(TOPICS))]
        docs.append(" ".join(rng.choice(words) if rng.random() < 0.6 else rng.choice(FUNCTION_WORDS)
                             for _ in range(60)) + ".")
    root = tmp_path_factory.mktemp("corpus")
    with gzip.open(root / "part1.txt.gz", "wt", encoding="utf-8") as fh:
        fh.write("\n\n".join(docs[:150]))  # one file, one document: windows run across the paragraphs
    with open(root / "part2.jsonl", "w", encoding="utf-8") as fh:
        for doc in docs[150:]:
            fh.write(json.dumps({"body": doc}) + "\n")
    return [str(root / "part1.txt.gz"), str(root / "part2.jsonl")]


def base_args(corpus: list[str], output_dir: Path, *extra: str) -> list[str]:
    return ["--train_file", *corpus, "--text_column", "body", "--vector_size", "16", "--min_count", "2",
            "--max_sentence_length", "200", "--per_device_train_batch_size", "2", "--logging_steps", "5",
            "--output_dir", str(output_dir), *extra]


@pytest.fixture
def w2v_main(repo_root):
    module = import_recipe(repo_root / "recipes" / "word2vec.py")
    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    yield module.main
    AcceleratorState._reset_state(True)
    GradientState._reset_state()


def one_line_exit(main, argv: list[str], capsys) -> tuple[int, str]:
    with pytest.raises(SystemExit) as info:
        main(argv)
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0, err
    return info.value.code, err


@pytest.mark.parametrize("architecture", ["skipgram", "cbow"])
def test_a_run_learns_the_topics_and_exports_vectors_that_reload(w2v_main, corpus, tmp_path, capsys, architecture):
    out = tmp_path / architecture
    w2v_main(base_args(corpus, out, "--architecture", architecture, "--num_train_epochs", "3",
                       "--probe_words", "animal1,city0"))
    printed = capsys.readouterr().out
    assert "done: step 135," in printed  # 18,000 words / (2 x 200 per step) = 45 steps per epoch, 3 epochs
    neighbours = {line.split("'")[1]: line for line in printed.splitlines() if line.startswith("nearest to")}
    assert set(neighbours) == {"animal1", "city0"}
    assert neighbours["animal1"].count("animal") >= 5 and neighbours["city0"].count("city") >= 5

    from gensim.models import KeyedVectors
    from sentence_transformers import SentenceTransformer

    kv = KeyedVectors.load_word2vec_format(str(out / "word2vec.bin"), binary=True)
    assert len(kv) == 56 and kv.vector_size == 16 and kv.index_to_key[0] in FUNCTION_WORDS
    # The topic structure in the exported vectors: a word's topic mates beat every other topic's words.
    for topic, words in TOPICS.items():
        mates = kv.n_similarity([words[0]], words[1:6])
        others = max(kv.n_similarity([words[0]], other[:5]) for name, other in TOPICS.items() if name != topic)
        assert mates > others, topic
    model = SentenceTransformer(str(out), device="cpu")
    animals, cities = model.encode(["The animal3 and the animal7.", "city2 is in city5"])
    assert float(model.similarity(animals, model.encode("a animal9 of animal4"))) > float(
        model.similarity(animals, cities))
    losses = [r["loss"] for r in read_history(out) if "loss" in r]
    assert losses[-1] < losses[0]
    results = json.loads((out / "results.json").read_text())
    assert set(results["evaluation"]) == {"wordsim353", "simlex999", "google_analogy"}  # gensim's files, all OOV here
    assert results["evaluation"]["wordsim353"]["oov_ratio"] == 1.0
    card = (out / "README.md").read_text()
    assert "library_name: sentence-transformers" in card and f"architecture: `{architecture}`" in card


def test_bad_input_is_one_line_each(w2v_main, corpus, tmp_path, capsys):
    code, err = one_line_exit(w2v_main, base_args(corpus, tmp_path / "a", "--min_count", "100000"), capsys)
    assert code == 1 and "vocabulary is empty: no word occurs --min_count 100000 times" in err
    tiny = tmp_path / "tiny.txt"
    tiny.write_text("one two three, two three!", encoding="utf-8")
    code, err = one_line_exit(w2v_main, ["--train_file", str(tiny), "--min_count", "1", "--output_dir",
                                         str(tmp_path / "b")], capsys)
    assert code == 1 and "the corpus is smaller than the window: 5 word(s)" in err
    out = tmp_path / "c"
    (out / "word2vec.txt").mkdir(parents=True)  # the vector file cannot be written
    code, err = one_line_exit(w2v_main, base_args(corpus, out, "--max_steps", "2"), capsys)
    assert code == 1 and f"cannot write the word vectors to {out / 'word2vec.txt'}" in err
    code, err = one_line_exit(w2v_main, base_args(corpus, tmp_path / "d", "--architecture", "glove"), capsys)
    assert code == 2 and "--architecture must be skipgram or cbow" in err
    code, err = one_line_exit(w2v_main, base_args(corpus, tmp_path / "e", "--window", "300"), capsys)
    assert code == 2 and "--max_sentence_length (200) must exceed --window (300)" in err


COMPARED = ("step", "loss", "lr", "epoch")


def logged(output_dir: Path) -> list[dict]:
    return [{k: r[k] for k in COMPARED if k in r} for r in read_history(output_dir)]


def test_sigkill_then_resume_reproduces_the_uninterrupted_run_bitwise(w2v_main, python_exe, repo_root, corpus,
                                                                      tmp_path, capsys):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}

    def args(out: Path, *extra: str) -> list[str]:
        # Into the second epoch, with a chunk-shuffled stream and sub-sampling: the data position, the epoch and
        # the corruption generator must all come back exactly.
        return base_args(corpus, out, "--max_steps", "60", "--checkpointing_steps", "7", "--shuffle_buffer_size", "8",
                         "--sample", "1e-2", "--logging_steps", "3", *extra)

    reference, interrupted = tmp_path / "reference", tmp_path / "interrupted"
    w2v_main(args(reference))
    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    proc = subprocess.Popen([python_exe, str(repo_root / "recipes" / "word2vec.py"), *args(interrupted)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    target = interrupted / "checkpoints" / "step_49"  # in the second epoch (45 steps each)
    deadline = time.monotonic() + 240
    while not target.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=30) == -signal.SIGKILL
    assert target.exists() and not (interrupted / "all_results.json").exists(), "killed too late to test resume"
    capsys.readouterr()
    w2v_main(args(interrupted, "--resume_from_checkpoint", "latest"))
    assert "resumed from" in capsys.readouterr().err
    assert (reference / "word2vec.bin").read_bytes() == (interrupted / "word2vec.bin").read_bytes()
    assert (reference / "model.safetensors").read_bytes() == (interrupted / "model.safetensors").read_bytes()
    assert logged(interrupted) == logged(reference) and len(logged(reference)) == 20
    assert logged(reference)[-1]["epoch"] == 1


@pytest.mark.slow
@pytest.mark.multiprocess
def test_two_gloo_processes_share_the_blocks_and_train(python_exe, repo_root, corpus, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    out = tmp_path / "two"
    result = subprocess.run([python_exe, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone",
                             str(repo_root / "recipes" / "word2vec.py"),
                             *base_args(corpus, out, "--num_train_epochs", "3", "--probe_words", "colour2")],
                            env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "2 processes" in result.stderr
    # 90 blocks of 200 words per epoch, 2 ranks x 2 blocks per step: 23 steps (the last one 2 blocks, 1 per rank).
    assert "done: step 69," in result.stdout
    line = next(line for line in result.stdout.splitlines() if line.startswith("nearest to 'colour2'"))
    assert line.count("colour") >= 5, line


def test_row_sparse_updates_train_as_dense_adamw(w2v_main, corpus, tmp_path, capsys):
    """--sparse_updates (auto: on for one CPU process) reads and writes only the touched rows, with the same
    updates as dense AdamW: the two runs differ by float rounding only."""
    import numpy as np

    from hfssl.models.word2vec import read_word2vec_format

    runs = {}
    for choice in ("auto", "false"):
        out = tmp_path / choice
        w2v_main(base_args(corpus, out, "--max_steps", "30", "--sparse_updates", choice))
        AcceleratorState._reset_state(True)
        GradientState._reset_state()
        runs[choice] = (read_word2vec_format(str(out / "word2vec.bin"), binary=True), logged(out))
    assert "row-sparse embedding updates (--sparse_updates auto)" in capsys.readouterr().err
    (words_a, vectors_a), history_a = runs["auto"]
    (words_b, vectors_b), history_b = runs["false"]
    assert words_a == words_b
    np.testing.assert_allclose(np.asarray(vectors_a), np.asarray(vectors_b), atol=2e-4)
    assert [r["loss"] for r in history_a] == pytest.approx([r["loss"] for r in history_b], rel=1e-4)
    code, err = one_line_exit(w2v_main, base_args(corpus, tmp_path / "c", "--sparse_updates", "true",
                                                  "--adam_beta1", "0.9", "--max_steps", "2"), capsys)
    assert code == 1 and "--sparse_updates true: they equal dense AdamW only with --adam_beta1 0" in err
