"""Resume NSP/SOP pair streams from cursors: exactly the uninterrupted pairs, without re-tokenizing the epoch."""

from __future__ import annotations

import functools
import json

import datasets
import pytest
import torch

from hfssl.data import StatefulLoader, collate_padded, nsp_pairs, pack_clm, sentence_pairs
from hfssl.data.sentence_pairs import split_sentences
from hfssl.errors import ConfigError, DataError
from tests.helpers.encoding import count_encoded_chars

EMPTY = ["", "  \n\n  ", "\n"]  # documents without a single sentence: skipped, never pooled or pending


def _with_odd_documents(texts: list[str]) -> list[str]:
    """``texts`` with empty and tiny documents mixed in (a one-token document makes no pair but is pooled)."""
    out = []
    for i, text in enumerate(texts):
        out.append(text)
        if i % 23 == 5:
            out.append(EMPTY[i % len(EMPTY)])
        if i % 31 == 7:
            out.append("Yes.")
    return out


def _dataset(texts: list[str]) -> datasets.IterableDataset:
    return datasets.Dataset.from_dict({"text": texts}).to_iterable_dataset()


@pytest.fixture(scope="module")
def wide_texts(corpus_texts) -> list[str]:
    """More documents than the pool holds (256), some with more sentences than a pooled head (128)."""
    texts = _with_odd_documents(corpus_texts[:290])
    assert len(texts) > 300 and sum(len(split_sentences(t)) > 128 for t in texts) >= 3
    return texts


@pytest.fixture
def encoded_chars(monkeypatch) -> list[int]:
    """Counts the characters sentence_pairs hands to the tokenizer (a one-element list, reset it freely)."""
    return count_encoded_chars(monkeypatch, sentence_pairs)


def _picks(pairs: list[tuple[dict, dict]]) -> dict[str, int]:
    """Indices of cursors worth resuming from, by what makes them hard."""
    cursors = [c for _, c in pairs]
    n = len(cursors)
    last_of_doc = [i for i in range(n - 1) if cursors[i + 1]["document"] != cursors[i]["document"]]
    docs = sorted({c["document"] for c in cursors})
    picks = {
        "first pair": 0,
        "mid document": next(i for i in range(n - 1) if cursors[i]["skip"] >= 3 and i not in last_of_doc),
        "last pair of a document": last_of_doc[len(last_of_doc) // 3],
        # Documents popped while the lookahead still fills (the start) or only drains (the end).
        "inside the first lookahead": next(i for i, c in enumerate(cursors) if c["document"] == docs[2]),
        "in the drained lookahead": next(i for i, c in enumerate(cursors) if c["document"] == docs[-3]),
        "pool wrapped": next(i for i, c in enumerate(cursors) if c["pool_from"] > 20 and c["skip"] >= 2),
        "second to last": n - 2,
        "last": n - 1,
    }
    # A document past its pooled head (128 sentences), deep inside it.
    long_doc = max(docs, key=lambda d: sum(c["document"] == d for c in cursors))
    picks["deep in a long document"] = max(i for i, c in enumerate(cursors) if c["document"] == long_doc) - 2
    return picks


@pytest.mark.parametrize("sop", [False, True])
def test_cursors_restart_the_pair_stream_right_after_each_pair(wide_texts, wordpiece_tokenizer, sop):
    stream = nsp_pairs(_dataset(wide_texts), wordpiece_tokenizer, 48, sop=sop, seed=7)
    pairs = list(stream.iter_with_cursors())
    # The loader's path yields exactly the rows the datasets object yields.
    assert [ex for ex, _ in pairs] == list(stream)
    picks = _picks(pairs)
    assert pairs[picks["pool wrapped"]][1]["document"] > 256  # the pool really dropped its first documents
    for name, i in picks.items():
        cursor = json.loads(json.dumps(pairs[i][1]))  # what a checkpoint keeps
        # Same rows and the same cursors: a second resume from the resumed run is exact too.
        assert list(stream.iter_with_cursors(cursor)) == pairs[i + 1 :], name


def test_resume_inside_a_document_whose_head_encodes_to_nothing(wordpiece_tokenizer, corpus_texts):
    # 130 sentences of control characters (the normalizer drops them): the first document's head is empty, so
    # it is never pooled and the pool at its pairs starts after it.
    odd = "\n\n".join(["\x01"] * 130) + "\n\n" + corpus_texts[3]
    stream = nsp_pairs(_dataset([odd, *corpus_texts[4:12]]), wordpiece_tokenizer, 48, seed=2)
    pairs = list(stream.iter_with_cursors())
    first = pairs[1][1]
    assert first["document"] == 0 and first["pool_from"] > 0
    assert list(stream.iter_with_cursors(json.loads(json.dumps(first)))) == pairs[2:]


def test_head_sentences_match_split_sentences(corpus_texts):
    texts = corpus_texts[:200] + ["", "a", "One. Two!  Three?", "x.\n\n\ny. ", "\n\n".join(["s"] * 300)]
    for text in texts:
        assert sentence_pairs._head_sentences(text) == split_sentences(text)[:128]


def _epochs(loader: StatefulLoader, start: int = 0, stop: int = 2):
    for epoch in range(start, stop):
        loader.set_epoch(epoch)
        yield from loader


@pytest.mark.parametrize(("sop", "shuffle", "world"), [(False, 0, 1), (False, 24, 2), (True, 24, 1), (True, 0, 2)])
def test_loader_resume_from_a_pair_cursor_gives_exactly_the_uninterrupted_batches(
    corpus_texts, wordpiece_tokenizer, sop, shuffle, world
):
    stream = nsp_pairs(_dataset(_with_odd_documents(corpus_texts[:40])), wordpiece_tokenizer, 48, sop=sop, seed=3)
    collate = functools.partial(collate_padded, pad_token_id=wordpiece_tokenizer.pad_token_id)

    def loader():
        return StatefulLoader(stream, batch_size=3, collate_fn=collate, rank=world - 1, world_size=world,
                              shuffle_buffer_size=shuffle, seed=5)

    first = loader()
    full, states = [], []
    for batch in _epochs(first):
        full.append(batch)
        states.append(json.loads(json.dumps(first.state_dict())))
    per_epoch = len(full) // 2
    ks = [1, 5, per_epoch // 2, per_epoch - 1, per_epoch, per_epoch + 4]
    if shuffle:
        assert any(states[k - 1]["position"] % shuffle for k in ks)  # some resume lands mid-chunk
    # Past the first chunk every resume goes through a cursor, not a replay from the epoch start.
    assert all(states[k - 1]["resume_point"] for k in ks if states[k - 1]["position"] >= max(shuffle, 1))
    for k in ks:
        state = states[k - 1]
        resumed = loader()
        resumed.set_epoch(state["epoch"])
        resumed.load_state_dict(state)
        got = list(_epochs(resumed, start=state["epoch"]))
        assert len(got) == len(full) - k
        for a, b in zip(got, full[k:]):
            assert a.keys() == b.keys() and all(torch.equal(a[key], b[key]) for key in b), k


def test_deep_resume_tokenizes_only_the_pool_heads_and_the_current_document(
    corpus_texts, wordpiece_tokenizer, encoded_chars
):
    texts = corpus_texts  # ~1,000 documents: the pool is a quarter of them
    stream = nsp_pairs(_dataset(texts), wordpiece_tokenizer, 64, seed=1)
    encoded_chars[0] = 0
    pairs = list(stream.iter_with_cursors())
    whole_epoch = encoded_chars[0]
    i = len(pairs) * 9 // 10
    cursor = pairs[i][1]
    d = cursor["document"]
    encoded_chars[0] = 0
    assert next(stream.iter_with_cursors(json.loads(json.dumps(cursor)))) == pairs[i + 1]
    # Heads of the pooled documents (up to the lookahead), then all of d (and of the next if d was used up).
    heads = sum(len(s) for t in texts[cursor["pool_from"] : d + 6] for s in split_sentences(t)[:128])
    rest = sum(len(s) for t in texts[d : d + 2] for s in split_sentences(t)[128:])
    assert 0 < encoded_chars[0] <= heads + rest
    assert encoded_chars[0] * 3 < whole_epoch * 0.9


def test_a_cursor_from_other_settings_or_data_fails_clearly(corpus_texts, wordpiece_tokenizer, bpe_tokenizer):
    docs = _dataset(corpus_texts[:12])
    _, cursor = list(nsp_pairs(docs, wordpiece_tokenizer, 48, seed=1).iter_with_cursors())[-1]
    with pytest.raises(ConfigError, match="saved with pairs=nsp, this run uses pairs=sop"):
        next(nsp_pairs(docs, wordpiece_tokenizer, 48, sop=True, seed=1).iter_with_cursors(cursor))
    with pytest.raises(ConfigError, match="saved with max_seq_length=48, seed=1, this run uses max_seq_length=64, seed=2"):
        next(nsp_pairs(docs, wordpiece_tokenizer, 64, seed=2).iter_with_cursors(cursor))
    _, packed = next(pack_clm(docs, bpe_tokenizer, 48).iter_with_cursors())
    with pytest.raises(ConfigError, match="saved from clm packing, this run makes nsp sentence pairs"):
        next(nsp_pairs(docs, wordpiece_tokenizer, 48, seed=1).iter_with_cursors(packed))
    with pytest.raises(ConfigError, match="invalid sentence-pair cursor"):
        next(nsp_pairs(docs, wordpiece_tokenizer, 48, seed=1).iter_with_cursors({**cursor, "rng": None}))
    fewer = _dataset(corpus_texts[:3])  # the corpus shrank since the checkpoint
    with pytest.raises(DataError, match="corpus changed since the checkpoint"):
        list(nsp_pairs(fewer, wordpiece_tokenizer, 48, seed=1).iter_with_cursors(cursor))
    emptied = _dataset([*corpus_texts[: cursor["document"]], "", *corpus_texts[cursor["document"] + 1 : 12]])
    with pytest.raises(DataError, match="corpus changed since the checkpoint"):
        list(nsp_pairs(emptied, wordpiece_tokenizer, 48, seed=1).iter_with_cursors(cursor))
