"""hfssl.data.words: the word-level tokenizer, the one-pass vocabulary, word blocks with resume cursors, the sized loader."""

from __future__ import annotations

import gzip
import json
from types import SimpleNamespace

import numpy as np
import pytest

from hfssl.data.corpus import load_documents
from hfssl.data.words import (
    PAD_ID,
    UNK_TOKEN,
    SizedLoader,
    Vocabulary,
    WordBlocks,
    as_transformers_tokenizer,
    build_vocabulary,
    check_trainable,
    collate_word_blocks,
    split_words,
    word_tokenizer,
)
from hfssl.errors import DataError

TEXTS = ["The cat sat on the mat. The dog\u2019s bone!", "Don't stop: the CAT ran, 42 cats ran.", "zebra", "the end"]


def test_the_tokenizer_keeps_words_drops_punctuation_and_normalises_apostrophes_and_case():
    assert next(split_words(["Hello, World! It\u2019s the U.S.A. in 1999 -- don't;"], word_tokenizer())) == [
        "hello", "world", "it's", "the", "u", "s", "a", "in", "1999", "don't"]
    assert next(split_words(["Hello World"], word_tokenizer(lowercase=False))) == ["Hello", "World"]


def test_the_vocabulary_counts_every_word_once_orders_by_count_then_first_seen_and_applies_min_count():
    vocab = build_vocabulary(TEXTS, min_count=1)
    assert vocab.words[:3] == ["the", "cat", "ran"]
    assert dict(zip(vocab.words, vocab.counts.tolist()))["the"] == 5
    # Ties keep first-seen order (gensim's): sat, on, mat, dog's, bone, ... in text order.
    assert vocab.words[3:8] == ["sat", "on", "mat", "dog's", "bone"]
    assert vocab.total_words == sum(len(w) for w in split_words(TEXTS, word_tokenizer()))
    assert vocab.documents == 4 and vocab.distinct_words == len(vocab.words)
    frequent = build_vocabulary(TEXTS, min_count=2)
    assert frequent.words == ["the", "cat", "ran"] and frequent.retained_words == 9
    assert build_vocabulary(TEXTS, min_count=1, max_vocab_size=2).words == ["the", "cat"]


def test_an_empty_vocabulary_is_one_actionable_error():
    with pytest.raises(DataError, match=r"vocabulary is empty: no word occurs --min_count 50 times .*'the', occurs 5 "
                                        r"times.*lower --min_count"):
        build_vocabulary(TEXTS, min_count=50)
    with pytest.raises(DataError, match="no words"):
        build_vocabulary(["-- !!", "..."], min_count=1)


def test_the_tokenizer_maps_words_to_vocabulary_ranks_and_unknown_words_to_unk(tmp_path):
    vocab = build_vocabulary(TEXTS, min_count=2)
    tok = as_transformers_tokenizer(vocab.tokenizer())
    assert tok("THE cat, zebra")["input_ids"] == [0, 1, vocab.unk_id]
    assert tok.convert_ids_to_tokens([vocab.unk_id]) == [UNK_TOKEN]
    vocab.save(tmp_path)
    again = Vocabulary.load(tmp_path)
    assert again.words == vocab.words and np.array_equal(again.counts, vocab.counts)
    assert again.fingerprint() == vocab.fingerprint() != build_vocabulary(TEXTS, min_count=1).fingerprint()


def test_a_corpus_smaller_than_the_window_is_refused():
    vocab = build_vocabulary(["one two three"], min_count=1)
    with pytest.raises(DataError, match=r"smaller than the window: 3 word\(s\).*--window 5 needs at least 6"):
        check_trainable(vocab, window=5)
    check_trainable(vocab, window=2)


def _docs(texts):
    return [{"text": t} for t in texts]


def test_blocks_hold_the_in_vocabulary_words_in_order_with_document_starts_and_a_padded_tail():
    vocab = build_vocabulary(TEXTS, min_count=2)  # the, cat, ran
    tok = as_transformers_tokenizer(vocab.tokenizer())
    blocks = list(WordBlocks(_docs(TEXTS), tok, block_length=4, unk_id=vocab.unk_id,
                             expected_words=vocab.retained_words))
    assert len(blocks) == len(WordBlocks(_docs(TEXTS), tok, block_length=4, unk_id=vocab.unk_id,
                                         expected_words=vocab.retained_words)) == 3
    ids = np.concatenate([b["word_ids"] for b in blocks]).tolist()
    # doc 1: the cat the the | doc 2: the cat ran ran ("cats" is another word) | doc 3: (zebra: unknown) | doc 4: the
    assert ids == [0, 1, 0, 0, 0, 1, 2, 2, 0, PAD_ID, PAD_ID, PAD_ID]
    starts = np.concatenate([b["sentence_starts"] for b in blocks]).tolist()
    assert starts[:9] == [True, False, False, False, True, False, False, False, True]
    batch = collate_word_blocks(blocks[:2])
    assert batch["word_ids"].shape == (2, 4) and batch["num_words"] == 8


def test_a_cursor_restarts_the_stream_right_after_its_block_without_tokenizing_what_came_before(monkeypatch):
    texts = [" ".join(f"w{(i * 7 + j) % 13}" for j in range(n)) for i, n in enumerate([3, 30, 1, 17, 0, 9, 25, 2])]
    texts = [t for t in texts if t]
    vocab = build_vocabulary(texts, min_count=2)
    tok = as_transformers_tokenizer(vocab.tokenizer())
    # Documents are cut into pieces of ~20 characters: cursors must also work inside a document.
    monkeypatch.setattr("hfssl.data.tokenization.MAX_PIECE_CHARS", 20)
    stream = WordBlocks(_docs(texts), tok, block_length=5, unk_id=vocab.unk_id)
    items = list(stream.iter_with_cursors())
    assert len(items) == -(-vocab.retained_words // 5)
    json.dumps([c for _, c in items])  # cursors are JSON-able (they go into checkpoints)
    for k, (_, cursor) in enumerate(items):
        rest = list(stream.iter_with_cursors(cursor))
        assert [b["word_ids"].tolist() for b, _ in rest] == [b["word_ids"].tolist() for b, _ in items[k + 1:]]
        assert [b["sentence_starts"].tolist() for b, _ in rest] == [
            b["sentence_starts"].tolist() for b, _ in items[k + 1:]]


def test_blocks_stream_from_gzipped_files_through_the_corpus_readers(tmp_path):
    path = tmp_path / "a.txt.gz"
    with gzip.open(path, "wt", encoding="utf-8") as fh:
        fh.write("The cat sat on the mat.\r\nThe cat ran.\r\n")
    docs = load_documents(train_file=[str(path)])
    vocab = build_vocabulary((d["text"] for d in docs), min_count=2)
    assert vocab.words == ["the", "cat"]
    blocks = list(WordBlocks(docs, as_transformers_tokenizer(vocab.tokenizer()), block_length=8,
                             unk_id=vocab.unk_id))
    assert blocks[0]["word_ids"].tolist() == [0, 1, 0, 0, 1, PAD_ID, PAD_ID, PAD_ID]


@pytest.mark.parametrize("world_size", [1, 2, 3])
@pytest.mark.parametrize("batch_size", [1, 2, 4])
def test_the_sized_loader_has_exactly_as_many_batches_as_it_yields(world_size, batch_size):
    texts = [" ".join(["a", "b", "c"] * n) for n in (5, 11, 2, 9)]
    vocab = build_vocabulary(texts, min_count=1)
    tok = as_transformers_tokenizer(vocab.tokenizer())
    lengths = set()
    for rank in range(world_size):
        blocks = WordBlocks(_docs(texts), tok, block_length=4, unk_id=vocab.unk_id, expected_words=vocab.retained_words)
        loader = SizedLoader(blocks, batch_size=batch_size, collate_fn=collate_word_blocks, rank=rank,
                             world_size=world_size, drop_last=False)
        assert len(list(loader)) == len(loader)
        lengths.add(len(loader))
    assert len(lengths) == 1  # every rank steps the same number of times


def test_resolve_vocabulary_counts_once_and_reuses_the_saved_vocabulary(tmp_path, monkeypatch):
    from contextlib import nullcontext

    from hfssl.config import DataArguments
    from hfssl.data import words

    corpus = tmp_path / "c.txt"
    corpus.write_text("the cat sat on the mat and the cat ran", encoding="utf-8")
    data_args = DataArguments(train_file=[str(corpus)])
    accelerator = SimpleNamespace(is_main_process=True, main_process_first=nullcontext)
    calls = []
    real = words.build_vocabulary
    monkeypatch.setattr(words, "build_vocabulary", lambda *a, **k: calls.append(1) or real(*a, **k))
    kwargs = dict(min_count=2, max_vocab_size=None, lowercase=True, output_dir=str(tmp_path / "out"),
                  accelerator=accelerator)
    first = words.resolve_vocabulary(data_args, **kwargs)
    again = words.resolve_vocabulary(data_args, **kwargs)
    assert first.words == again.words == ["the", "cat"] and len(calls) == 1
    corpus.write_text("dog dog dog", encoding="utf-8")  # other data (another size): counted again
    assert words.resolve_vocabulary(data_args, **kwargs).words == ["dog"] and len(calls) == 2
