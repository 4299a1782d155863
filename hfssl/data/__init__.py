"""Data pipeline: corpora, tokenizer training, packing, sentence pairs, collation and the stateful loader.

The names below are loaded on first use (PEP 562), so importing one light submodule (e.g. for a
recipe's ``--help``) does not pull in torch and datasets.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "collate_fixed": "hfssl.data.collate",
    "collate_padded": "hfssl.data.collate",
    "builtin_corpus_files": "hfssl.data.corpus",
    "load_documents": "hfssl.data.corpus",
    "load_documents_from_args": "hfssl.data.corpus",
    "StatefulLoader": "hfssl.data.loader",
    "pack_clm": "hfssl.data.packing",
    "pack_mlm_segments": "hfssl.data.packing",
    "nsp_pairs": "hfssl.data.sentence_pairs",
    "train_tokenizer": "hfssl.data.tokenizer_training",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'hfssl.data' has no attribute {name!r}")
