"""Tokenizer training: every family trains on real prose, saves, reloads with AutoTokenizer and works."""

from __future__ import annotations

import itertools

import pytest
from transformers import AutoTokenizer

from hfssl.data import train_tokenizer
from hfssl.errors import ConfigError, DataError

SAMPLE = "Naïve café owners in Zürich paid €12.50 — «très cher» — for 日本語 lessons.\n\tTabs  and  spaces!"


def _reload(tokenizer, tmp_path):
    tokenizer.save_pretrained(tmp_path)
    return AutoTokenizer.from_pretrained(tmp_path)


def test_byte_level_bpe_round_trips_exactly(bpe_tokenizer, corpus_texts, tmp_path):
    tok = _reload(bpe_tokenizer, tmp_path)
    assert len(tok) == 1000
    assert tok.eos_token == tok.bos_token == "<|endoftext|>"
    assert tok.pad_token is not None and tok.pad_token_id != tok.eos_token_id
    for text in [SAMPLE, corpus_texts[3], corpus_texts[-1]]:
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert tok.decode(ids) == text
    assert tok.unk_token_id not in tok(SAMPLE)["input_ids"]  # byte-level: nothing is unknown
    # Trained on English prose: text compresses well beyond one token per byte.
    prose = corpus_texts[10]
    assert len(tok(prose)["input_ids"]) < 0.5 * len(prose)
    assert tok.model_max_length == 1024


def test_wordpiece_is_bert_style_with_token_type_ids(wordpiece_tokenizer, tmp_path):
    tok = _reload(wordpiece_tokenizer, tmp_path)
    enc = tok("The first sentence.", "And the second one.")
    tokens = tok.convert_ids_to_tokens(enc["input_ids"])
    assert tokens[0] == "[CLS]" and tokens[-1] == "[SEP]" and tokens.count("[SEP]") == 2
    first_sep = tokens.index("[SEP]")
    assert enc["token_type_ids"] == [0] * (first_sep + 1) + [1] * (len(tokens) - first_sep - 1)
    assert enc["attention_mask"] == [1] * len(tokens)
    for name in ("pad", "unk", "cls", "sep", "mask"):
        assert getattr(tok, f"{name}_token") == f"[{name.upper()}]"
    assert tok.decode(tok("the module", add_special_tokens=False)["input_ids"]) == "the module"
    assert any(t.startswith("##") for t in tok.get_vocab())
    batch = tok(["short", "a much longer sentence here"], padding=True, return_tensors="pt")
    assert batch["input_ids"][0, -1].item() == tok.pad_token_id


def test_unigram_is_sentencepiece_style(corpus_texts, tmp_path):
    tok = train_tokenizer(
        itertools.islice(corpus_texts, 150), tokenizer_type="unigram", vocab_size=600, lowercase=True
    )
    tok = _reload(tok, tmp_path)
    enc = tok("Hello World of modules")
    tokens = tok.convert_ids_to_tokens(enc["input_ids"])
    assert tokens[0] == "<s>" and tokens[-1] == "</s>"
    assert any(t.startswith("▁") for t in tokens)
    assert tok.decode(enc["input_ids"], skip_special_tokens=True) == "hello world of modules"
    assert tok.mask_token == "<mask>" and tok.pad_token == "<pad>"


def test_training_streams_a_generator_once(corpus_texts):
    seen = []

    def stream():
        for text in corpus_texts[:50]:
            seen.append(1)
            yield text

    tok = train_tokenizer(stream(), tokenizer_type="wordpiece", vocab_size=300, min_frequency=1)
    assert len(seen) == 50 and len(tok) <= 300


def test_vocab_too_small_and_empty_corpus():
    with pytest.raises(
        DataError, match="vocab_size 200 is too small for a bpe tokenizer: it needs at least 258"
    ):
        train_tokenizer(["text"], vocab_size=200)
    with pytest.raises(
        DataError, match="vocab_size 5 is too small for a wordpiece tokenizer: it needs at least 6"
    ):
        train_tokenizer(["text"], tokenizer_type="wordpiece", vocab_size=5)
    with pytest.raises(ConfigError, match="tokenizer_type must be one of bpe, wordpiece, unigram"):
        train_tokenizer(["text"], tokenizer_type="sentencepiece")
    with pytest.raises(DataError, match="no text to train the tokenizer on"):
        train_tokenizer(iter(["", ""]), tokenizer_type="wordpiece", vocab_size=100)


def test_errors_inside_the_stream_surface_as_data_errors(tmp_path):
    from hfssl.data import load_documents

    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "fine"}\n{"text": 3}\n')
    texts = (ex["text"] for ex in load_documents(train_file=[str(path)]))
    with pytest.raises(DataError, match=r"bad\.jsonl line 2: field 'text' is int"):
        train_tokenizer(texts, tokenizer_type="wordpiece", vocab_size=100)
