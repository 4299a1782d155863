"""The validation hold-out: a share of the text, in passages, so one big file or a few books still train.

Each .txt file is one document, so holding out whole documents (``--validation_split_documents``) empties
the training stream of a corpus of a few books; ``--validation_split_percentage`` cuts documents into
passages and holds out every (100/P)th one.
"""

from __future__ import annotations

import functools
import json

import pytest
import torch

from hfssl.config import DataArguments
from hfssl.data import StatefulLoader, collate_fixed, collate_padded, pack_clm, tokenization
from hfssl.data.corpus import (
    HOLDOUT_PASSAGE_CHARS,
    is_held_out,
    load_documents_from_args,
    passage_starts,
    validation_holdout,
)
from hfssl.data.sentence_pairs import nsp_pairs
from hfssl.errors import DataError


def _texts(args: DataArguments, split: str) -> list[str]:
    return [ex["text"] for ex in load_documents_from_args(args, split)]


@pytest.fixture(scope="module")
def book(corpus_texts, tmp_path_factory) -> str:
    """One ~300 kB plain-text file, as a Gutenberg book is: paragraphs between blank lines."""
    path = tmp_path_factory.mktemp("book") / "book.txt"
    text = "\n\n".join(corpus_texts[:150])
    assert len(text) > 100 * HOLDOUT_PASSAGE_CHARS
    path.write_text(text, encoding="utf-8")
    return str(path)


def test_passages_cover_the_text_and_end_at_paragraph_breaks(corpus_texts):
    text = "\n\n".join(corpus_texts[:40])
    starts = passage_starts(text)
    assert starts[0] == 0 and starts == sorted(set(starts))
    lengths = [b - a for a, b in zip(starts, starts[1:] + [len(text)])]
    assert min(lengths) >= HOLDOUT_PASSAGE_CHARS // 2 and len(starts) > len(text) // (3 * HOLDOUT_PASSAGE_CHARS)
    # Most cuts follow a blank line (a paragraph break); the rest a line break or a space.
    assert sum(text[s - 2 : s] == "\n\n" for s in starts[1:]) > 0.8 * (len(starts) - 1)
    assert all(text[s - 1].isspace() for s in starts[1:])
    # Short documents are one passage; a text without any whitespace is still cut, hard.
    assert passage_starts("short text") == [0]
    assert passage_starts("x" * (4 * HOLDOUT_PASSAGE_CHARS)) == [0, 2000, 4000, 6000]


@pytest.mark.parametrize("percentage", [1, 5, 10, 33])
def test_held_out_passages_are_the_exact_share_and_start_with_the_first(percentage):
    held = [i for i in range(1000) if is_held_out(i, percentage)]
    assert held[0] == 0 and len(held) == 10 * percentage
    gaps = {b - a for a, b in zip(held, held[1:])}
    assert max(gaps) - min(gaps) <= 1  # evenly spread


def test_one_big_file_splits_into_training_and_validation_text(book):
    args = DataArguments(train_file=[book], validation_split_percentage=5)
    assert validation_holdout(args) == ("percentage", 5)
    train, val = _texts(args, "train"), _texts(args, "validation")
    text = open(book, encoding="utf-8").read()
    n_passages = len(passage_starts(text))
    assert len(val) == len([i for i in range(n_passages) if is_held_out(i, 5)]) >= 5
    # Nothing lost, nothing shared: the two sides hold the book's words exactly once.
    assert sorted((" ".join(train) + " " + " ".join(val)).split()) == sorted(text.split())
    held_chars = sum(map(len, val))
    assert 0.03 < held_chars / len(text) < 0.07
    # The book is cut only where text was taken out: one training document per run between held-out passages.
    assert len(train) == len(val)  # held out: passages 0, 20, 40, ... (the last run follows the last one)


def test_many_small_documents_are_held_out_whole_and_max_train_samples_counts_after(tmp_path):
    path = tmp_path / "docs.jsonl"
    path.write_text("".join(json.dumps({"text": f"document {i}"}) + "\n" for i in range(100)))
    args = DataArguments(train_file=[str(path)], validation_split_percentage=10, max_train_samples=5)
    assert _texts(args, "validation") == [f"document {i}" for i in range(0, 100, 10)]
    assert _texts(args, "train") == ["document 1", "document 2", "document 3", "document 4", "document 5"]


def test_the_training_side_is_never_silently_empty(tmp_path, book):
    small = tmp_path / "note.txt"
    small.write_text("A single short note, one passage long.")
    one_passage = DataArguments(train_file=[str(small)], validation_split_percentage=5)
    assert _texts(one_passage, "validation") == ["A single short note, one passage long."]
    with pytest.raises(DataError, match=r"--validation_split_percentage 5 leaves nothing to train on: the whole "
                                        r"corpus \(38 characters\) is one passage.*--validation_split_percentage 0"):
        _texts(one_passage, "train")
    # Five books with the old default of 64 documents held out: the error says so and names the way out.
    books = DataArguments(train_file=[book, str(small)], validation_split_documents=64)
    with pytest.raises(DataError, match=r"--validation_split_documents 64 holds out all 2 documents of the corpus "
                                        r"\(each .txt file is one document\), leaving nothing to train on: use "
                                        r"--validation_split_percentage 5"):
        _texts(books, "train")


def test_which_hold_out_applies(tmp_path, book):
    # A validation file: nothing is taken out of the training text.
    with_file = DataArguments(train_file=[book], validation_file=[book], validation_split_percentage=5)
    assert validation_holdout(with_file) == ("file", 0)
    assert _texts(with_file, "train") == [open(book, encoding="utf-8").read().strip()]
    # --validation_split_documents replaces the percentage (a recipe default) when set.
    other = tmp_path / "other.txt"
    other.write_text("Another document.")
    both = DataArguments(train_file=[book, str(other)], validation_split_percentage=5, validation_split_documents=1)
    assert validation_holdout(both) == ("documents", 1) and len(_texts(both, "train")) == 1
    assert validation_holdout(DataArguments(train_file=[book])) is None
    # A local dataset directory with its own validation split uses it, as run_clm.py does.
    (tmp_path / "ds").mkdir()
    for split in ("train", "validation"):
        (tmp_path / "ds" / f"{split}.jsonl").write_text(json.dumps({"text": f"a {split} row."}) + "\n")
    hub = DataArguments(dataset_name=str(tmp_path / "ds"), validation_split_percentage=5)
    assert validation_holdout(hub) == ("hub_split", 0)
    assert _texts(hub, "validation") == ["a validation row."] and _texts(hub, "train") == ["a train row."]


@pytest.mark.parametrize("kind", ["clm", "nsp"])
def test_resume_inside_a_held_out_book_is_exact(book, bpe_tokenizer, wordpiece_tokenizer, monkeypatch, kind):
    """Packing cursors index the training side's documents: a fresh stream must give the same ones."""
    monkeypatch.setattr(tokenization, "MAX_PIECE_CHARS", 3_000)  # several pieces per training document
    args = DataArguments(train_file=[book], validation_split_percentage=5)

    def loader() -> StatefulLoader:
        docs = load_documents_from_args(args, "train")
        if kind == "clm":
            examples, collate = pack_clm(docs, bpe_tokenizer, 128), collate_fixed
        else:
            examples = nsp_pairs(docs, wordpiece_tokenizer, 128, seed=3)
            collate = functools.partial(collate_padded, pad_token_id=wordpiece_tokenizer.pad_token_id)
        return StatefulLoader(examples, batch_size=8, collate_fn=collate, shuffle_buffer_size=16, seed=1)

    first = loader()
    full, states = [], []
    for batch in first:
        full.append(batch)
        states.append(json.loads(json.dumps(first.state_dict())))
        if _document(states[-1]) >= 3:
            break
    for k in (len(full) // 3, len(full) - 4):
        resumed = loader()
        resumed.load_state_dict(states[k - 1])
        for want, got in zip(full[k:], resumed):
            assert all(torch.equal(want[key], got[key]) for key in want)
    # The second resume lies beyond a held-out passage: it restarts in a later training document.
    assert _document(states[len(full) - 5]) >= 2


def _document(state: dict) -> int:
    """The training document a loader state resumes in (0 while still inside the first shuffle chunk)."""
    return (state["resume_point"] or {"cursor": {"document": 0}})["cursor"]["document"]


def test_a_resume_with_another_hold_out_is_refused(book):
    from hfssl.errors import ConfigError
    from hfssl.training.recipe_utils import data_fingerprint

    def loader(**holdout) -> StatefulLoader:
        args = DataArguments(train_file=[book], **holdout)
        return StatefulLoader([], batch_size=1, collate_fn=list, fingerprint=data_fingerprint(args))

    state = loader(validation_split_percentage=5).state_dict()
    loader(validation_split_percentage=5).load_state_dict(state)
    with pytest.raises(ConfigError, match=r"validation_split_percentage 5 -> 10"):
        loader(validation_split_percentage=10).load_state_dict(state)
    # Flags that do not change the training text do not block a resume: documents win over the percentage.
    documents = loader(validation_split_documents=2).state_dict()
    loader(validation_split_documents=2, validation_split_percentage=7).load_state_dict(documents)
