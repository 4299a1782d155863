"""hfssl.evaluation.word_vectors gives gensim's numbers (when gensim is installed) on the real evaluation files."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hfssl.errors import DataError
from hfssl.evaluation.word_vectors import (
    WordVectorIndex,
    default_eval_file,
    evaluate_analogies,
    evaluate_word_pairs,
    evaluate_word_vectors,
    read_analogies,
    read_word_pairs,
    summary_scores,
)


@pytest.fixture(scope="module")
def eval_files() -> dict[str, str]:
    pytest.importorskip("gensim")
    files = {name: default_eval_file(name) for name in ("wordsim353", "simlex999", "google_analogy")}
    assert all(files.values()), files
    return files


@pytest.fixture(scope="module")
def keyed_vectors(eval_files):
    """Vectors for the words of all three files (a sixth of them left out: out-of-vocabulary cases), with
    structure (an 'is-to' offset per analogy section) so that scores are neither 0 nor 1, in mixed case."""
    from gensim.models import KeyedVectors

    words: list[str] = []
    for name in ("wordsim353", "simlex999"):
        pairs = read_word_pairs(eval_files[name])
        words += pairs.first + pairs.second
    for _, questions in read_analogies(eval_files["google_analogy"]):
        for q in questions:
            words += list(q)
    words = list(dict.fromkeys(words))
    words = [w for i, w in enumerate(words) if i % 6 != 5]
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(len(words), 32)).astype(np.float32)
    index = {w.upper(): i for i, w in enumerate(words)}
    for _, questions in read_analogies(eval_files["google_analogy"])[:2]:
        offset = rng.normal(size=32).astype(np.float32)
        pairs = dict.fromkeys((x, y) for a, b, c, d in questions for x, y in ((a, b), (c, d)))
        for a, b in pairs:
            if a.upper() in index and b.upper() in index:
                vectors[index[b.upper()]] = vectors[index[a.upper()]] + offset + 0.5 * rng.normal(size=32)
    kv = KeyedVectors(32)
    kv.add_vectors([w.capitalize() if i % 7 == 0 else w for i, w in enumerate(words)], vectors)
    return kv


def test_word_similarity_matches_gensim(keyed_vectors, eval_files):
    index = WordVectorIndex(keyed_vectors.index_to_key, torch.from_numpy(keyed_vectors.vectors))
    for name in ("wordsim353", "simlex999"):
        ours = evaluate_word_pairs(index, read_word_pairs(eval_files[name]))
        pearson, spearman, oov_percent = keyed_vectors.evaluate_word_pairs(eval_files[name])
        assert ours["spearman"] == pytest.approx(spearman.statistic, abs=1e-6)
        assert ours["pearson"] == pytest.approx(pearson.statistic, abs=1e-6)
        assert ours["oov_ratio"] == pytest.approx(oov_percent / 100, abs=1e-4)


def test_analogy_accuracy_matches_gensim(keyed_vectors, eval_files):
    ours = evaluate_word_vectors(keyed_vectors.index_to_key, torch.from_numpy(keyed_vectors.vectors),
                                 analogy_file=eval_files["google_analogy"])["google_analogy"]
    accuracy, sections = keyed_vectors.evaluate_word_analogies(eval_files["google_analogy"])
    assert 0.01 < ours["accuracy"] < 0.99
    assert ours["accuracy"] == pytest.approx(accuracy, abs=1e-9)
    total = sections[-1]
    assert ours["questions"] == len(total["correct"]) + len(total["incorrect"])
    # A smaller search vocabulary, as gensim's restrict_vocab.
    small = evaluate_word_vectors(keyed_vectors.index_to_key, torch.from_numpy(keyed_vectors.vectors),
                                  analogy_file=eval_files["google_analogy"], restrict_vocab=2000)["google_analogy"]
    assert small["accuracy"] == pytest.approx(
        keyed_vectors.evaluate_word_analogies(eval_files["google_analogy"], restrict_vocab=2000)[0], abs=1e-9)
    assert set(summary_scores({"google_analogy": ours})) == {"google_analogy_accuracy", "google_analogy_oov_ratio"}


def test_nearest_neighbours_and_zero_vectors():
    words = ["king", "queen", "apple", "zero"]
    vectors = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.2, 1.0], [0.0, 0.0]])
    index = WordVectorIndex(words, vectors)
    assert [w for w, _ in index.nearest("KING", 2)] == ["queen", "apple"]
    assert index.nearest("missing") == []
    assert torch.isfinite(index.unit).all()


def test_malformed_evaluation_files_are_data_errors(tmp_path):
    bad = tmp_path / "pairs.tsv"
    bad.write_text("# comment\nking queen\n", encoding="utf-8")
    with pytest.raises(DataError, match="line 2: expected 'word1<TAB>word2<TAB>score'"):
        read_word_pairs(str(bad))
    bad.write_text("king\tqueen\thigh\n", encoding="utf-8")
    with pytest.raises(DataError, match="not a number"):
        read_word_pairs(str(bad))
    with pytest.raises(DataError, match="cannot read the evaluation file"):
        read_word_pairs(str(tmp_path / "missing.tsv"))
    questions = tmp_path / "q.txt"
    questions.write_text("a b c d\n", encoding="utf-8")
    with pytest.raises(DataError, match="': section' or four words"):
        read_analogies(str(questions))
    questions.write_text(": s\nA b c d\n", encoding="utf-8")
    result = evaluate_analogies(WordVectorIndex(["x"], torch.ones(1, 2)), read_analogies(str(questions)))
    assert result["questions"] == 0 and result["oov_ratio"] == 1.0 and np.isnan(result["accuracy"])
