"""Shared fixtures for the data tests: the built-in corpus and small tokenizers trained on it (once per session)."""

from __future__ import annotations

import itertools

import pytest

from hfssl.data import builtin_corpus_files, load_documents, train_tokenizer


@pytest.fixture(scope="session")
def corpus_files() -> list[str]:
    return builtin_corpus_files()


@pytest.fixture(scope="session")
def corpus_texts(corpus_files) -> list[str]:
    return [ex["text"] for ex in load_documents(train_file=corpus_files)]


def _train(texts, kind: str, vocab_size: int):
    return train_tokenizer(itertools.islice(texts, 400), tokenizer_type=kind, vocab_size=vocab_size)


@pytest.fixture(scope="session")
def bpe_tokenizer(corpus_texts):
    return _train(corpus_texts, "bpe", 1000)


@pytest.fixture(scope="session")
def wordpiece_tokenizer(corpus_texts):
    return _train(corpus_texts, "wordpiece", 1000)
