"""Packing: no token lost or duplicated, EOS between documents, position_ids at document boundaries."""

from __future__ import annotations

import datasets
import pytest

from hfssl.data import load_documents, pack_clm, pack_mlm_segments
from hfssl.errors import ConfigError


@pytest.fixture(scope="module")
def documents(corpus_files):
    # A real stream (the built-in corpus) limited to a few hundred documents of very different lengths.
    return load_documents(train_file=corpus_files).take(300)


def _reference_stream(documents, tokenizer, sep_id):
    """The token stream packing must reproduce: each document's ids followed by the separator."""
    stream, starts = [], []
    for ex in documents:
        starts.append(len(stream))
        stream.extend(tokenizer(ex["text"], add_special_tokens=False)["input_ids"])
        stream.append(sep_id)
    return stream, starts


@pytest.mark.parametrize("max_seq_length", [64, 257])
def test_pack_clm_loses_and_duplicates_nothing(documents, bpe_tokenizer, max_seq_length):
    stream, _ = _reference_stream(documents, bpe_tokenizer, bpe_tokenizer.eos_token_id)
    blocks = list(pack_clm(documents, bpe_tokenizer, max_seq_length))
    assert isinstance(pack_clm(documents, bpe_tokenizer, max_seq_length), datasets.IterableDataset)
    assert all(len(b["input_ids"]) == max_seq_length for b in blocks)
    flat = [t for b in blocks for t in b["input_ids"]]
    # Exactly the reference stream, minus only the final incomplete block.
    assert len(flat) == len(stream) // max_seq_length * max_seq_length
    assert flat == stream[: len(flat)]


def test_pack_clm_position_ids_restart_at_every_document(documents, bpe_tokenizer):
    L = 128
    stream, starts = _reference_stream(documents, bpe_tokenizer, bpe_tokenizer.eos_token_id)
    blocks = list(pack_clm(documents, bpe_tokenizer, L, document_boundaries=True))
    plain = list(pack_clm(documents, bpe_tokenizer, L))
    assert [b["input_ids"] for b in blocks] == [b["input_ids"] for b in plain]
    start_set = set(starts)
    for k, block in enumerate(blocks):
        pos = block["position_ids"]
        assert len(pos) == L and pos[0] == 0
        for i in range(1, L):
            g = k * L + i
            # A position resets exactly where a document starts; otherwise it counts on, so attention
            # that follows position_ids never mixes two documents.
            assert pos[i] == (0 if g in start_set else pos[i - 1] + 1)
        eos_at = [i for i, t in enumerate(block["input_ids"]) if t == bpe_tokenizer.eos_token_id]
        for i in eos_at:
            if i + 1 < L:
                assert pos[i + 1] == 0


def test_pack_mlm_segments_are_full_and_cover_the_stream(documents, wordpiece_tokenizer):
    tok = wordpiece_tokenizer
    L = 96
    segments = list(pack_mlm_segments(documents, tok, L))
    assert all(
        s["input_ids"][0] == tok.cls_token_id and s["input_ids"][-1] == tok.sep_token_id for s in segments
    )
    assert all(len(s["input_ids"]) == L for s in segments[:-1]) and 3 <= len(segments[-1]["input_ids"]) <= L
    inner = [t for s in segments for t in s["input_ids"][1:-1]]
    stream, _ = _reference_stream(documents, tok, tok.sep_token_id)
    assert inner == stream[:-1]  # documents joined by [SEP]; nothing lost, nothing repeated


def test_packing_validates_arguments(documents, bpe_tokenizer, wordpiece_tokenizer):
    with pytest.raises(ConfigError, match="max_seq_length must be at least 2"):
        pack_clm(documents, bpe_tokenizer, 1)
    with pytest.raises(ConfigError, match="max_seq_length must be at least 3"):
        pack_mlm_segments(documents, wordpiece_tokenizer, 2)


def test_a_corpus_shorter_than_one_block_is_an_error_not_an_empty_stream(tmp_path, bpe_tokenizer):
    from hfssl.errors import DataError

    path = tmp_path / "tiny.txt"
    path.write_text("Just a few words.")
    with pytest.raises(
        DataError, match=r"the text has only \d+ tokens in 1 document\(s\), less than one block of --max_seq_length 512"
    ):
        list(pack_clm(load_documents(train_file=[str(path)]), bpe_tokenizer, 512))
