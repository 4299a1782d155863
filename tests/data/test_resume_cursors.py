"""Resume from packing cursors: bitwise the uninterrupted batches, without re-tokenizing the consumed stream."""

from __future__ import annotations

import functools
import json

import datasets
import pytest
import torch

from hfssl.data import (
    StatefulLoader,
    collate_fixed,
    collate_padded,
    pack_clm,
    pack_mlm_segments,
    tokenization,
)
from hfssl.errors import ConfigError, DataError
from tests.helpers.encoding import count_encoded_chars

PIECE_CHARS = 1_500  # shrunk limits: documents of the built-in corpus then span several pieces


@pytest.fixture(autouse=True)
def small_pieces(monkeypatch):
    monkeypatch.setattr(tokenization, "MAX_PIECE_CHARS", PIECE_CHARS)
    monkeypatch.setattr(tokenization, "MAX_BATCH_CHARS", 6_000)
    monkeypatch.setattr(tokenization, "DOC_BATCH_SIZE", 8)


@pytest.fixture(scope="module")
def documents(corpus_texts) -> datasets.IterableDataset:
    texts = corpus_texts[:70]
    assert sum(len(t) > PIECE_CHARS for t in texts) >= 10  # several multi-piece documents
    return datasets.Dataset.from_dict({"text": texts}).to_iterable_dataset()


@pytest.fixture
def encoded_chars(monkeypatch) -> list[int]:
    """Counts the characters handed to the tokenizer (a one-element list, reset it freely)."""
    return count_encoded_chars(monkeypatch, tokenization)


def _stream(kind: str, documents, bpe_tokenizer, wordpiece_tokenizer):
    if kind == "mlm":
        return pack_mlm_segments(documents, wordpiece_tokenizer, 48), functools.partial(
            collate_padded, pad_token_id=0
        )
    return pack_clm(documents, bpe_tokenizer, 48, document_boundaries=kind == "clm_boundaries"), collate_fixed


def _epochs(loader: StatefulLoader, start: int = 0, stop: int = 2):
    """What the training loop sees: set_epoch then iterate, epoch after epoch."""
    for epoch in range(start, stop):
        loader.set_epoch(epoch)
        yield from loader


def _assert_same(got: list[dict], want: list[dict]) -> None:
    assert len(got) == len(want)
    for a, b in zip(got, want):
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in b)


def test_cursors_restart_the_packed_stream_right_after_each_example(documents, bpe_tokenizer, wordpiece_tokenizer):
    for kind in ("clm", "clm_boundaries", "mlm"):
        blocks, _ = _stream(kind, documents, bpe_tokenizer, wordpiece_tokenizer)
        pairs = list(blocks.iter_with_cursors())
        # The loader's path yields exactly the rows the datasets object yields.
        assert [ex for ex, _ in pairs] == list(blocks)
        mid_piece = next(i for i, (_, c) in enumerate(pairs) if c["piece"] >= 1 and c["skip"] >= 2)
        for i in (0, mid_piece, len(pairs) // 2, len(pairs) - 2, len(pairs) - 1):
            cursor = json.loads(json.dumps(pairs[i][1]))
            assert set(cursor) == {"packer", "max_seq_length", "document", "piece", "buffered", "skip"}
            assert [ex for ex, _ in blocks.iter_with_cursors(cursor)] == [ex for ex, _ in pairs[i + 1 :]], (kind, i)


def _loader(blocks, collate, *, shuffle: int, world: int, rank: int = 0, batch_size: int = 3, drop_last=False):
    return StatefulLoader(blocks, batch_size=batch_size, collate_fn=collate, rank=rank, world_size=world,
                          shuffle_buffer_size=shuffle, seed=5, drop_last=drop_last)


@pytest.mark.parametrize("world", [1, 2])
@pytest.mark.parametrize("shuffle", [0, 24])
@pytest.mark.parametrize("kind", ["clm", "clm_boundaries", "mlm"])
def test_resume_from_a_cursor_gives_exactly_the_uninterrupted_batches(
    documents, bpe_tokenizer, wordpiece_tokenizer, kind, shuffle, world
):
    blocks, collate = _stream(kind, documents, bpe_tokenizer, wordpiece_tokenizer)
    rank = world - 1
    first = _loader(blocks, collate, shuffle=shuffle, world=world, rank=rank)
    full, states = [], []
    for batch in _epochs(first):
        full.append(batch)
        states.append(json.loads(json.dumps(first.state_dict())))  # what a checkpoint keeps
    per_epoch = len(full) // 2
    assert states[per_epoch - 1]["epoch"] == 0 and states[per_epoch]["epoch"] == 1

    def cursor_of(k: int) -> dict:
        return (states[k - 1]["resume_point"] or {}).get("cursor") or {}

    # Resume points: after 1 batch, mid-document (inside a piece that already gave a block), mid-chunk,
    # at a chunk boundary, at the last batch of epoch 0, and inside epoch 1 (the next epoch's order).
    mid_doc = next(k for k in range(2, per_epoch) if cursor_of(k).get("piece", 0) >= 1 and cursor_of(k)["skip"] >= 2)
    ks = {1, mid_doc, per_epoch // 2, per_epoch, per_epoch + 3}
    if shuffle:
        ks.add(next(k for k in range(2, per_epoch) if states[k - 1]["position"] % shuffle == 0))
        assert any(states[k - 1]["position"] % shuffle for k in ks)  # some resume lands mid-chunk
    # Past the first chunk every resume goes through a cursor, not a replay from the epoch start.
    assert all(states[k - 1]["resume_point"] for k in ks if states[k - 1]["position"] >= max(shuffle, 1))
    for k in sorted(ks):
        state = states[k - 1]
        resumed = _loader(blocks, collate, shuffle=shuffle, world=world, rank=rank)
        resumed.set_epoch(state["epoch"])
        resumed.load_state_dict(state)
        _assert_same(list(_epochs(resumed, start=state["epoch"])), full[k:])


def test_resume_with_a_different_world_size_from_a_cursor(documents, bpe_tokenizer, wordpiece_tokenizer):
    blocks, collate = _stream("clm", documents, bpe_tokenizer, wordpiece_tokenizer)
    one = _loader(blocks, collate, shuffle=24, world=1, batch_size=4, drop_last=True)
    full = list(one)
    source = _loader(blocks, collate, shuffle=24, world=1, batch_size=4, drop_last=True)
    it = iter(source)
    for _ in range(7):
        next(it)
    state = json.loads(json.dumps(source.state_dict()))
    assert state["resume_point"] is not None and state["position"] % 24
    tails = []
    for rank in range(2):
        two = _loader(blocks, collate, shuffle=24, world=2, rank=rank, batch_size=2, drop_last=True)
        two.load_state_dict(state)
        tails.append(list(two))
    for want, r0, r1 in zip(full[7:], *tails, strict=True):
        # A global batch of 4 is split round-robin: rank 0 takes rows 0 and 2, rank 1 rows 1 and 3.
        rows = torch.stack([r0["input_ids"][0], r1["input_ids"][0], r0["input_ids"][1], r1["input_ids"][1]])
        assert torch.equal(rows, want["input_ids"])


@pytest.mark.parametrize("shuffle", [0, 16])
def test_deep_resume_does_not_tokenize_the_consumed_stream(documents, bpe_tokenizer, encoded_chars, shuffle):
    blocks = pack_clm(documents, bpe_tokenizer, 48)
    total_blocks = sum(1 for _ in blocks)
    encoded_chars[0] = 0
    loader = _loader(blocks, collate_fixed, shuffle=shuffle, world=2, batch_size=2)
    it = iter(loader)
    for _ in range(total_blocks // 4 * 3 // 4):  # three quarters of the epoch
        next(it)
    consumed = encoded_chars[0]
    state = json.loads(json.dumps(loader.state_dict()))
    chars_per_block = consumed / loader.position
    next(it)
    want_next = loader.state_dict()["resume_point"]  # the uninterrupted run's, one batch later

    def chars_to_first_batch(state: dict) -> int:
        resumed = _loader(blocks, collate_fixed, shuffle=shuffle, world=2, batch_size=2)
        resumed.load_state_dict(state)
        encoded_chars[0] = 0
        next(iter(resumed))
        # Whichever way it resumed, its next checkpoint has a cursor again.
        assert want_next is not None and resumed.state_dict()["resume_point"] == want_next
        return encoded_chars[0]

    # At most the current shuffle chunk (and the tokenizer's read-ahead of one call) is tokenized again.
    bound = (shuffle + 4) * chars_per_block * 2 + tokenization.MAX_BATCH_CHARS + PIECE_CHARS
    fast = chars_to_first_batch(state)
    assert fast <= bound and fast * 5 < consumed
    # A checkpoint from before cursors existed still resumes, by replaying: the cost the cursor saves.
    old = {k: v for k, v in state.items() if k != "resume_point"}
    assert chars_to_first_batch(old) >= consumed * 0.9


def test_a_cursor_from_other_data_or_settings_fails_clearly(documents, bpe_tokenizer, wordpiece_tokenizer):
    clm = pack_clm(documents, bpe_tokenizer, 48)
    _, cursor = list(clm.iter_with_cursors())[-1]
    with pytest.raises(ConfigError, match="saved from clm packing with --max_seq_length 48, this run uses mlm"):
        next(pack_mlm_segments(documents, wordpiece_tokenizer, 48).iter_with_cursors(cursor))
    fewer = datasets.Dataset.from_dict({"text": ["a b c"] * 5})  # the corpus shrank since the checkpoint
    with pytest.raises(DataError, match="corpus changed since the checkpoint"):
        list(pack_clm(fewer.to_iterable_dataset(), bpe_tokenizer, 48).iter_with_cursors(cursor))
