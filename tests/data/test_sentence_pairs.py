"""NSP/SOP pairs: labels as BertForPreTraining expects them, checked against the source text."""

from __future__ import annotations

import pytest
import torch
from transformers import BertConfig, BertForPreTraining

from hfssl.data import collate_padded, load_documents, nsp_pairs
from hfssl.data.sentence_pairs import split_sentences


@pytest.fixture(scope="module")
def documents(corpus_files):
    return load_documents(train_file=corpus_files).take(250)


@pytest.fixture(scope="module")
def doc_streams(documents, wordpiece_tokenizer):
    """Each document's token ids as the pipeline sees them (sentence by sentence), as a searchable string."""
    out = []
    for ex in documents:
        ids = [
            t
            for s in split_sentences(ex["text"])
            for t in wordpiece_tokenizer(s, add_special_tokens=False)["input_ids"]
        ]
        out.append(" " + " ".join(map(str, ids)) + " ")
    return out


def _split(example, tok):
    ids = example["input_ids"]
    sep = [i for i, t in enumerate(ids) if t == tok.sep_token_id]
    return ids[1 : sep[0]], ids[sep[0] + 1 : sep[1]]


def _contiguous(doc_streams, ids) -> bool:
    needle = " " + " ".join(map(str, ids)) + " "
    return any(needle in s for s in doc_streams)


def test_nsp_labels_balanced_and_b_really_follows_a(documents, doc_streams, wordpiece_tokenizer):
    tok = wordpiece_tokenizer
    L = 64
    pairs = list(nsp_pairs(documents, tok, L, seed=1))
    assert len(pairs) > 300
    labels = [p["next_sentence_label"] for p in pairs]
    assert 0.42 < sum(labels) / len(labels) < 0.58
    for p in pairs:
        ids, types = p["input_ids"], p["token_type_ids"]
        assert len(ids) <= L and ids[0] == tok.cls_token_id and ids[-1] == tok.sep_token_id
        a, b = _split(p, tok)
        assert a and b
        assert types == [0] * (len(a) + 2) + [1] * (len(b) + 1)
        assert _contiguous(doc_streams, a) and _contiguous(doc_streams, b)
        # Label 0: A then B is a span of one source document. Label 1: B comes from elsewhere.
        assert _contiguous(doc_streams, a + b) == (p["next_sentence_label"] == 0)


def test_sop_label_1_is_swapped_order(documents, doc_streams, wordpiece_tokenizer):
    tok = wordpiece_tokenizer
    pairs = list(nsp_pairs(documents, tok, 48, sop=True, seed=3))
    labels = [p["next_sentence_label"] for p in pairs]
    assert 0.42 < sum(labels) / len(labels) < 0.58
    for p in pairs:
        a, b = _split(p, tok)
        if p["next_sentence_label"] == 0:
            assert _contiguous(doc_streams, a + b)
        else:
            assert _contiguous(doc_streams, b + a)


def test_pairs_are_seeded_and_feed_bert_for_pretraining(documents, wordpiece_tokenizer):
    tok = wordpiece_tokenizer
    first = list(nsp_pairs(documents.take(40), tok, 64, seed=5))
    assert first == list(nsp_pairs(documents.take(40), tok, 64, seed=5))
    assert first != list(nsp_pairs(documents.take(40), tok, 64, seed=6))
    batch = collate_padded(first[:4], pad_token_id=tok.pad_token_id)
    config = BertConfig(
        vocab_size=len(tok),
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    model = BertForPreTraining(config)
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    out = model(**batch, labels=labels)
    assert out.seq_relationship_logits.shape == (4, 2) and torch.isfinite(out.loss)


def test_short_sequences_appear_with_short_seq_prob(documents, wordpiece_tokenizer):
    lengths = [
        len(p["input_ids"])
        for p in nsp_pairs(documents.take(80), wordpiece_tokenizer, 128, short_seq_prob=1.0)
    ]
    longer = [
        len(p["input_ids"])
        for p in nsp_pairs(documents.take(80), wordpiece_tokenizer, 128, short_seq_prob=0.0)
    ]
    assert sum(lengths) / len(lengths) < sum(longer) / len(longer)


def test_no_pair_at_all_is_an_error(tmp_path, wordpiece_tokenizer):
    from hfssl.errors import DataError

    path = tmp_path / "one_word.jsonl"
    path.write_text('{"text": "the"}\n')  # one single-token document: nothing to pair
    with pytest.raises(DataError, match=r"the text yields no sentence pair: its 1 document\(s\) have fewer than 2 tokens each"):
        list(nsp_pairs(load_documents(train_file=[str(path)]), wordpiece_tokenizer, 64))


def _book(title: str, n: int) -> str:
    return " ".join(f"In {title} chapter {i} the keeper counted {i * 7} lanterns by the river." for i in range(n))


def test_labels_are_balanced_from_the_first_long_document(tmp_path, wordpiece_tokenizer):
    # Whole books as documents: the first book alone fills many batches, so random B segments must be
    # available (from documents read ahead) before the first book is used up.
    books = [tmp_path / f"book{i}.txt" for i in range(3)]
    for i, path in enumerate(books):
        path.write_text(_book(f"book {i}", 400), encoding="utf-8")
    docs = load_documents(train_file=[str(p) for p in books])
    pairs = list(nsp_pairs(docs, wordpiece_tokenizer, 64, seed=3))
    first_book = pairs[: len(pairs) // 4]
    share = sum(p["next_sentence_label"] for p in first_book) / len(first_book)
    assert len(first_book) > 100 and 0.38 < share < 0.62


def test_one_document_corpus_still_gets_random_segments(tmp_path, wordpiece_tokenizer):
    path = tmp_path / "only.txt"
    path.write_text(_book("the only book", 300), encoding="utf-8")
    pairs = list(nsp_pairs(load_documents(train_file=[str(path)]), wordpiece_tokenizer, 64, seed=4))
    share = sum(p["next_sentence_label"] for p in pairs) / len(pairs)
    assert 0.38 < share < 0.62


def test_short_sequences_are_drawn_per_pair_not_per_document(tmp_path, wordpiece_tokenizer):
    path = tmp_path / "book.txt"
    path.write_text(_book("long", 400), encoding="utf-8")
    pairs = list(nsp_pairs(load_documents(train_file=[str(path)]), wordpiece_tokenizer, 64,
                           short_seq_prob=0.3, seed=5))
    # A per-document draw would make this single book all-short or all-full.
    short = sum(len(p["input_ids"]) < 40 for p in pairs) / len(pairs)
    full = sum(len(p["input_ids"]) >= 60 for p in pairs) / len(pairs)
    assert 0.02 < short < 0.3 and full > 0.5, (short, full)
