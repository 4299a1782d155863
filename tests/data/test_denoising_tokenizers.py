"""The tokenizers BART and T5 pretraining need: byte-level BPE with <mask>, Unigram with <extra_id_N> sentinels."""

from __future__ import annotations

import pytest
from transformers import AutoTokenizer

from hfssl.data import train_tokenizer
from hfssl.errors import ConfigError, DataError
from tests.helpers import denoising
from tests.helpers.recipes import import_recipe


def test_bart_tokenizer_has_barts_special_tokens_and_layout(tmp_path):
    tok = AutoTokenizer.from_pretrained(denoising.save_tokenizer("bart", tmp_path))
    assert len(tok) == 600
    assert [tok.bos_token, tok.pad_token, tok.eos_token, tok.unk_token] == ["<s>", "<pad>", "</s>", "<unk>"]
    assert [tok.bos_token_id, tok.pad_token_id, tok.eos_token_id, tok.unk_token_id] == [0, 1, 2, 3]  # as bart-base
    assert tok.mask_token == "<mask>" and tok.cls_token == "<s>" and tok.sep_token == "</s>"
    tokens = tok.convert_ids_to_tokens(tok("The <mask> of it.")["input_ids"])
    # <mask> takes the space before it, as a masked span of "Ġword" tokens does in training.
    assert tokens[:3] == ["<s>", "The", "<mask>"] and tokens[-1] == "</s>" and "Ġ" not in tokens
    pair = tok.convert_ids_to_tokens(tok("A b.", "C d.")["input_ids"])
    assert pair.count("</s>") == 3 and pair[0] == "<s>" and "token_type_ids" not in tok("A", "B")
    text = denoising.corpus_texts()[7]
    assert tok.decode(tok(text, add_special_tokens=False)["input_ids"]) == text  # byte-level: exact round trip


def test_t5_tokenizer_has_sentinels_at_the_end_of_the_vocabulary(tmp_path):
    tok = AutoTokenizer.from_pretrained(denoising.save_tokenizer("t5", tmp_path))
    assert len(tok) == 600
    assert [tok.pad_token_id, tok.eos_token_id, tok.unk_token_id] == [0, 1, 2]  # T5's ids
    assert tok.bos_token is None and tok.mask_token is None
    assert tok.convert_tokens_to_ids(["<extra_id_0>", "<extra_id_99>"]) == [599, 500]
    tokens = tok.convert_ids_to_tokens(tok("The <extra_id_0> walks in <extra_id_1> park")["input_ids"])
    # The sentinel takes the space before it: no lone "▁" between "▁The" and the hole.
    assert tokens[:2] == ["▁The", "<extra_id_0>"] and tokens[-1] == "</s>"
    assert tok.decode(tok("Hello world", add_special_tokens=False)["input_ids"]) == "Hello world"


def test_too_small_vocabularies_and_no_sentinels_are_refused():
    texts = denoising.corpus_texts()[:20]
    with pytest.raises(DataError, match=r"at least 104 \(special tokens \+ 100 sentinels\)"):
        train_tokenizer(texts, tokenizer_type="t5", vocab_size=90)
    with pytest.raises(ConfigError, match="--extra_ids must be at least 1"):
        train_tokenizer(texts, tokenizer_type="t5", vocab_size=300, extra_ids=0)
    with pytest.raises(DataError, match=r"at least 261 \(special tokens \+ 256 bytes\)"):
        train_tokenizer(texts, tokenizer_type="bart", vocab_size=200)


def test_train_tokenizer_recipe_makes_a_t5_tokenizer_with_extra_ids(repo_root, tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n\n".join(denoising.corpus_texts()[:40]), encoding="utf-8")
    recipe = import_recipe(repo_root / "recipes" / "train_tokenizer.py")
    recipe.main(["--train_file", str(corpus), "--tokenizer_type", "t5", "--extra_ids", "10", "--vocab_size", "400",
                 "--output_dir", str(tmp_path / "tok")])
    tok = AutoTokenizer.from_pretrained(tmp_path / "tok")
    assert len(tok) == 400 and tok.convert_tokens_to_ids("<extra_id_9>") == 390
    with pytest.raises(SystemExit) as info:
        recipe.main(["--tokenizer_type", "t5", "--extra_ids", "0", "--output_dir", str(tmp_path / "bad")])
    assert info.value.code == 2
