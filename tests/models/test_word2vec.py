"""hfssl.models.word2vec(_card): the backbone, the word2vec formats, the sentence-transformers export, its card."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from hfssl.data.words import build_vocabulary
from hfssl.errors import HfsslError
from hfssl.models.word2vec import (
    BINARY_FILE,
    TEXT_FILE,
    Word2VecConfig,
    Word2VecModel,
    export_hooks,
    export_word2vec,
    read_word2vec_format,
    verify_word2vec_export,
    write_word2vec_format,
)
from hfssl.models.word2vec_card import build_word2vec_card, is_word2vec_export

TEXTS = ["the king and the queen rode to the castle", "the queen spoke to the king", "a café’s naïve owner"]


def test_initialisation_is_word2vecs():
    model = Word2VecModel(Word2VecConfig(vocab_size=50, vector_size=8), generator=torch.Generator().manual_seed(0))
    weights = model.input_embeddings.weight
    assert weights.abs().max() <= 0.5 / 8 and weights.std() > 0.01
    assert (model.output_embeddings.weight == 0).all() and model.vectors is weights


@pytest.mark.parametrize("binary", [False, True])
def test_word2vec_files_round_trip_exactly_and_gensim_reads_them(tmp_path, binary):
    words = ["the", "naïve", "café's", "x" * 40]
    vectors = (np.random.default_rng(0).normal(size=(4, 7)) * 10.0 ** np.arange(-3, 4)).astype(np.float32)
    path = str(tmp_path / ("v.bin" if binary else "v.txt"))
    write_word2vec_format(path, words, vectors, binary=binary)
    got_words, got = read_word2vec_format(path, binary=binary)
    assert got_words == words and np.array_equal(got, vectors)
    gensim = pytest.importorskip("gensim")
    kv = gensim.models.KeyedVectors.load_word2vec_format(path, binary=binary)
    assert kv.index_to_key == words and np.array_equal(kv.vectors, vectors)


def test_an_unwritable_vector_file_is_one_clear_error(tmp_path):
    target = tmp_path / "word2vec.txt"
    target.mkdir()  # a directory where the file should go
    with pytest.raises(HfsslError, match=r"cannot write the word vectors to .*word2vec.txt"):
        write_word2vec_format(str(target), ["a"], np.zeros((1, 2), np.float32), binary=False)
    with pytest.raises(ValueError, match="whitespace"):
        write_word2vec_format(str(tmp_path / "v.txt"), ["a b"], np.zeros((1, 2), np.float32), binary=False)


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    vocab = build_vocabulary(TEXTS, min_count=1)
    config = Word2VecConfig(vocab_size=vocab.size, vector_size=12, window=3)
    model = Word2VecModel(config, generator=torch.Generator().manual_seed(1))
    out = tmp_path_factory.mktemp("w2v")
    export_word2vec(str(out), vocab.words, model.vectors, vocab.tokenizer(), config)
    return out, vocab, model


def test_the_export_reloads_with_gensim_sentence_transformers_and_autotokenizer(export):
    out, vocab, model = export
    messages = verify_word2vec_export(str(out), vocab.words, model.vectors)
    assert any("KeyedVectors" in m for m in messages) and any("SentenceTransformer" in m for m in messages)
    config = json.load(open(out / "config.json"))
    assert config["export_format"] == "word2vec" and "model_type" not in config and config["window"] == 3
    sentence_transformers = pytest.importorskip("sentence_transformers")
    st = sentence_transformers.SentenceTransformer(str(out), device="cpu")
    # A text embeds to the mean of its words' vectors; punctuation, case and unknown words as in training
    # (unknown words are zero rows: they shrink the mean, not its direction).
    got = st.encode(["The KING, the Queen!", "the king zzz"], convert_to_tensor=True)
    ids = {w: i for i, w in enumerate(vocab.words)}
    vectors = model.vectors.detach()
    expected = (2 * vectors[ids["the"]] + vectors[ids["king"]] + vectors[ids["queen"]]) / 4
    torch.testing.assert_close(got[0], expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got[1], (vectors[ids["the"]] + vectors[ids["king"]]) / 3, rtol=1e-5, atol=1e-6)


def test_a_corrupted_export_fails_the_reload_check(export, tmp_path):
    out, vocab, model = export
    broken = tmp_path / "broken"
    broken.mkdir()
    for name in os.listdir(out):
        if os.path.isfile(out / name):
            (broken / name).write_bytes((out / name).read_bytes())
    words, vectors = read_word2vec_format(str(out / TEXT_FILE), binary=False)
    vectors[1, 0] += 0.01
    write_word2vec_format(str(broken / TEXT_FILE), words, vectors, binary=False)
    with pytest.raises(HfsslError, match=r"word2vec.txt .* differs from the model \(max \|diff\| 0.01\)"):
        verify_word2vec_export(str(broken), vocab.words, model.vectors)
    write_word2vec_format(str(broken / TEXT_FILE), words[::-1], vectors, binary=False)
    with pytest.raises(HfsslError, match="other words than the model"):
        verify_word2vec_export(str(broken), vocab.words, model.vectors)


def test_export_hooks_write_the_evaluation_next_to_the_vectors(tmp_path):
    vocab = build_vocabulary(TEXTS, min_count=1)
    config = Word2VecConfig(vocab_size=vocab.size, vector_size=4)
    model = Word2VecModel(config)
    pairs = tmp_path / "pairs.tsv"
    pairs.write_text("king\tqueen\t9\nking\tcastle\t5\nthe\tto\t1\nqueen\towner\t2\n", encoding="utf-8")
    export_fn, verify_fn = export_hooks(vocab.words, vocab.tokenizer(), config,
                                        eval_files={"wordsim353": str(pairs), "simlex999": None, "google_analogy": None})
    out = tmp_path / "out"
    state = {"input_embeddings.weight": torch.ones(vocab.size, 4)}  # gathered weights (FSDP) win over the module's
    export_fn(model, str(out), state)
    assert read_word2vec_format(str(out / BINARY_FILE), binary=True)[1].tolist() == [[1.0] * 4] * vocab.size
    results = json.load(open(out / "results.json"))
    assert results["evaluation"]["wordsim353"]["pairs"] == 4 and results["skipped"] == ["google_analogy", "simlex999"]
    export_fn(model, str(out), None)
    assert any("SentenceTransformer" in m or "sentence-transformers" in m for m in verify_fn(str(out), model))


def test_the_card_is_a_sentence_transformers_card_with_the_scores(export, tmp_path):
    out, vocab, model = export
    (out / "results.json").write_text(json.dumps({"evaluation": {
        "wordsim353": {"spearman": 0.61, "oov_ratio": 0.05, "pairs": 336},
        "google_analogy": {"accuracy": 0.42, "oov_ratio": 0.1, "questions": 17000}}}), encoding="utf-8")
    (out / "metrics.jsonl").write_text('{"step": 10, "loss": 3.0}\n{"step": 20, "loss": 2.5}\n', encoding="utf-8")
    assert is_word2vec_export(out) and not is_word2vec_export(tmp_path)
    card = build_word2vec_card(out, repo_id="user/vectors", plot_path=tmp_path / "plot.png")
    text = str(card)
    assert card.data.library_name == "sentence-transformers" and card.data.pipeline_tag == "sentence-similarity"
    assert 'SentenceTransformer("user/vectors")' in text and 'hf_hub_download("user/vectors", "word2vec.bin")' in text
    assert "| WordSim-353 | spearman | 0.6100 | 336 (95.0% in vocabulary) |" in text
    assert {r.dataset_name: r.metric_value for r in card.data.eval_results} == {
        "WordSim-353": 0.61, "Google analogy test set": 0.42}
    assert (tmp_path / "plot.png").is_file() and "trust_remote_code" not in text
    # The generic card builder hands word2vec exports to this one.
    from hfssl.hub.card import build_model_card

    assert build_model_card(out, repo_id="user/vectors", plot=False).data.library_name == "sentence-transformers"


def test_a_push_uploads_the_vectors_and_the_sentence_transformers_files(export):
    from hfssl.hub.upload import plan_upload

    out, _, _ = export
    names = set(plan_upload(str(out)).repo_paths)
    assert {TEXT_FILE, BINARY_FILE, "modules.json", "config_sentence_transformers.json", "model.safetensors",
            "tokenizer.json", "config.json"} <= names
