"""Streaming tokenization: long documents are encoded in pieces with exactly the ids of the whole text."""

from __future__ import annotations

import pytest

from hfssl.data.tokenization import iter_token_chunks, iter_token_ids, split_long_text


@pytest.fixture(scope="module")
def long_text(corpus_texts) -> str:
    # A "book": 120 real documents joined by blank lines, well over the 100k-character piece size.
    text = "\n\n".join(corpus_texts[:120])
    assert len(text) > 150_000
    return text


@pytest.mark.parametrize("name", ["bpe_tokenizer", "wordpiece_tokenizer"])
def test_pieces_encode_exactly_like_the_whole_text(request, long_text, name):
    tok = request.getfixturevalue(name)
    whole = tok(long_text, add_special_tokens=False)["input_ids"]
    pieces = split_long_text(long_text, 2_000)
    assert len(pieces) > 50 and "".join(pieces) == long_text
    assert max(map(len, pieces)) <= 2_000
    assert [t for p in pieces for t in tok(p, add_special_tokens=False)["input_ids"]] == whole
    # The streaming path (default piece size) agrees too, and flags the document's first and last chunk.
    docs = ["short one", long_text, "", "last"]
    assert list(iter_token_ids(docs, tok)) == [tok(d, add_special_tokens=False)["input_ids"] for d in docs]
    flags = [(s, e) for _, s, e in iter_token_chunks(docs, tok)]
    assert (
        flags[0] == (True, True) and flags[1] == (True, False) and flags[-2:] == [(True, True), (True, True)]
    )


def test_text_without_spaces_is_cut_hard_but_kept_whole():
    text = "x" * 2_500
    pieces = split_long_text(text, 1_000)
    assert [len(p) for p in pieces] == [1_000, 1_000, 500] and "".join(pieces) == text
    assert split_long_text("a b", 1_000) == ["a b"]
