"""StatefulLoader: sharding exactly once, equal batch counts, shuffling per epoch, exact resume."""

from __future__ import annotations

import json

import datasets
import pytest
import torch

from hfssl.data import StatefulLoader, collate_fixed, load_documents, pack_clm
from hfssl.errors import ConfigError


def _gen(n: int):
    for i in range(n):
        yield {"idx": i, "input_ids": [i, i + 1, i + 2]}


def numbered(n: int) -> datasets.IterableDataset:
    return datasets.IterableDataset.from_generator(_gen, gen_kwargs={"n": n})


def ids_of(batches) -> list[int]:
    return [int(i) for b in batches for i in b["idx"]]


@pytest.mark.parametrize("shuffle", [0, 16])
def test_two_ranks_cover_every_example_once_with_equal_batch_counts(shuffle):
    ds = numbered(103)
    loaders = [
        StatefulLoader(
            ds, batch_size=4, collate_fn=collate_fixed, rank=r, world_size=2, shuffle_buffer_size=shuffle
        )
        for r in range(2)
    ]
    per_rank = [list(loader) for loader in loaders]
    assert [len(b) for b in per_rank] == [12, 12]  # floor(103 / 8): the short tail is dropped on both ranks
    seen = ids_of(per_rank[0]) + ids_of(per_rank[1])
    assert len(seen) == len(set(seen)) == 96
    assert set(seen) <= set(range(103))
    if shuffle:
        assert ids_of(per_rank[0]) != sorted(ids_of(per_rank[0]))
    else:
        assert set(seen) == set(range(96))


def test_drop_last_false_splits_the_tail_across_ranks():
    ds = numbered(21)
    per_rank = [
        list(
            StatefulLoader(ds, batch_size=4, collate_fn=collate_fixed, rank=r, world_size=2, drop_last=False)
        )
        for r in range(2)
    ]
    assert [len(b) for b in per_rank] == [3, 3]
    assert sorted(ids_of(per_rank[0]) + ids_of(per_rank[1])) == list(range(21))
    assert [len(b["idx"]) for b in per_rank[0]] == [4, 4, 3] and [len(b["idx"]) for b in per_rank[1]] == [
        4,
        4,
        2,
    ]


def test_set_epoch_reshuffles_but_keeps_the_examples():
    loader = StatefulLoader(
        numbered(64), batch_size=8, collate_fn=collate_fixed, shuffle_buffer_size=32, seed=7
    )
    epoch0 = ids_of(loader)
    assert ids_of(loader) == epoch0  # same epoch again: same order
    loader.set_epoch(1)
    epoch1 = ids_of(loader)
    assert epoch1 != epoch0 and sorted(epoch1) == sorted(epoch0) == list(range(64))


def _resume_matches(make_loader, k: int) -> None:
    full = list(make_loader())
    first = make_loader()
    it = iter(first)
    head = [next(it) for _ in range(k)]
    state = json.loads(json.dumps(first.state_dict()))  # must survive JSON (and torch.save)
    del it
    resumed = make_loader()
    resumed.load_state_dict(state)
    tail = list(resumed)
    assert len(head) + len(tail) == len(full)
    for got, want in zip(head + tail, full):
        assert got.keys() == want.keys()
        for key in want:
            assert torch.equal(got[key], want[key])


@pytest.mark.parametrize("shuffle", [0, 10])
@pytest.mark.parametrize("k", [0, 1, 5, 11])
def test_resume_continues_with_exactly_the_next_batches(shuffle, k):
    def make():
        loader = StatefulLoader(
            numbered(50), batch_size=4, collate_fn=collate_fixed, shuffle_buffer_size=shuffle, seed=3
        )
        loader.set_epoch(2)
        return loader

    _resume_matches(make, k)


def test_resume_on_a_real_packed_stream_with_prefetch_thread(corpus_files, bpe_tokenizer):
    blocks = pack_clm(load_documents(train_file=corpus_files).take(60), bpe_tokenizer, 64)

    def make():
        return StatefulLoader(
            blocks,
            batch_size=3,
            collate_fn=collate_fixed,
            rank=1,
            world_size=2,
            shuffle_buffer_size=25,
            num_workers=2,
            seed=11,
        )

    _resume_matches(make, 7)


def test_resume_with_a_different_world_size_still_sees_each_example_once():
    ds = numbered(96)
    one = StatefulLoader(ds, batch_size=4, collate_fn=collate_fixed, shuffle_buffer_size=12)
    it = iter(one)
    before = ids_of([next(it) for _ in range(5)])
    state = one.state_dict()
    after = []
    for r in range(2):
        loader = StatefulLoader(
            ds, batch_size=2, collate_fn=collate_fixed, rank=r, world_size=2, shuffle_buffer_size=12
        )
        loader.load_state_dict(state)
        after += ids_of(loader)
    assert sorted(before + after) == list(range(96))


def test_resume_on_fewer_processes_still_sees_each_example_once():
    """2 -> 1: every rank saved the same global position; one process continues from it."""
    ds = numbered(96)
    before, states = [], []
    for r in range(2):
        loader = StatefulLoader(ds, batch_size=3, collate_fn=collate_fixed, rank=r, world_size=2,
                                shuffle_buffer_size=12)
        it = iter(loader)
        before += ids_of([next(it) for _ in range(5)])
        states.append(loader.state_dict())
    assert states[0]["position"] == states[1]["position"] == 30
    one = StatefulLoader(ds, batch_size=6, collate_fn=collate_fixed, shuffle_buffer_size=12)
    one.load_state_dict(states[0])
    assert sorted(before + ids_of(one)) == list(range(96))


def test_state_mismatch_and_bad_arguments_fail_clearly():
    loader = StatefulLoader(numbered(8), batch_size=2, collate_fn=collate_fixed, shuffle_buffer_size=4)
    state = loader.state_dict()
    other = StatefulLoader(numbered(8), batch_size=2, collate_fn=collate_fixed, shuffle_buffer_size=8)
    with pytest.raises(ConfigError, match="saved with shuffle_buffer_size=4 but this run uses 8"):
        other.load_state_dict(state)
    with pytest.raises(ConfigError, match="rank must be in"):
        StatefulLoader(numbered(8), batch_size=2, collate_fn=collate_fixed, rank=2, world_size=2)


def test_a_resume_on_other_data_is_refused_and_names_what_changed():
    def loader(fingerprint):
        return StatefulLoader(numbered(8), batch_size=2, collate_fn=collate_fixed, fingerprint=fingerprint)

    saved = loader({"train_file": [["/data/a.txt", 100]], "tokenizer": "abc", "max_seq_length": 128})
    next(iter(saved))
    state = json.loads(json.dumps(saved.state_dict()))  # checkpoints store it as JSON
    same = loader({"train_file": [["/data/a.txt", 100]], "tokenizer": "abc", "max_seq_length": 128})
    same.load_state_dict(state)
    assert ids_of([next(iter(same))]) == [2, 3]
    grown = loader({"train_file": [["/data/a.txt", 250]], "tokenizer": "abc", "max_seq_length": 128})
    with pytest.raises(ConfigError, match=r"other data \(train_file item 0: .*100\] -> .*250\]\).*--overwrite_output_dir"):
        grown.load_state_dict(state)
    with pytest.raises(ConfigError, match="max_seq_length 128 -> 256; tokenizer 'abc' -> 'xyz'"):
        loader({"train_file": [["/data/a.txt", 100]], "tokenizer": "xyz", "max_seq_length": 256}).load_state_dict(state)
    # States written before fingerprints existed (or loaders without one) still resume.
    loader(None).load_state_dict(state)
    legacy = dict(state)
    del legacy["fingerprint"]
    loader({"tokenizer": "xyz"}).load_state_dict(legacy)


def test_errors_in_the_stream_reach_the_consumer_through_the_prefetch_thread(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "a"}\n{"text": "b"}\nnot json\n')
    docs = load_documents(train_file=[str(path)])
    loader = StatefulLoader(docs, batch_size=1, collate_fn=lambda ex: ex, num_workers=1)
    from hfssl.errors import DataError

    with pytest.raises(DataError, match="line 3 is not valid JSON"):
        list(loader)
