"""Small BART and T5 tokenizers trained on the built-in corpus (once per test process), and tiny models."""

from __future__ import annotations

import functools
from pathlib import Path


@functools.cache
def corpus_texts(count: int = 300) -> tuple[str, ...]:
    from hfssl.data.corpus import builtin_corpus_files, load_documents

    return tuple(d["text"] for d in load_documents(train_file=builtin_corpus_files(), min_document_chars=200).take(count))


@functools.cache
def tokenizer(family: str, vocab_size: int = 600, extra_ids: int = 100):
    from hfssl.data.tokenizer_training import train_tokenizer

    # 100 documents: Unigram training grows fast with the text (300 documents take ~10 s).
    return train_tokenizer(corpus_texts()[:100], tokenizer_type=family, vocab_size=vocab_size, extra_ids=extra_ids,
                           model_max_length=512)


def save_tokenizer(family: str, directory: Path) -> Path:
    tokenizer(family).save_pretrained(directory)
    return directory


def tiny_model(family: str, seed: int = 0, **overrides):
    """A tiny stock BART/T5 for ``tokenizer(family)``, built as the recipe builds it."""
    import torch
    from transformers import AutoModelForSeq2SeqLM

    from hfssl.models.presets import build_config

    tok = tokenizer(family)
    start = tok.eos_token_id if family == "bart" else tok.pad_token_id
    extra = {"bos_token_id": tok.bos_token_id} if family == "bart" else {}
    config = build_config(family, "tiny", vocab_size=len(tok), max_position_embeddings=128,
                          pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, decoder_start_token_id=start,
                          **extra, **overrides)
    torch.manual_seed(seed)
    return AutoModelForSeq2SeqLM.from_config(config)
