"""Data pipeline: corpora, tokenizer training, packing, sentence pairs, collation and the stateful loader."""

from hfssl.data.collate import collate_fixed, collate_padded
from hfssl.data.corpus import builtin_corpus_files, load_documents, load_documents_from_args
from hfssl.data.loader import StatefulLoader
from hfssl.data.packing import pack_clm, pack_mlm_segments
from hfssl.data.sentence_pairs import nsp_pairs
from hfssl.data.tokenizer_training import train_tokenizer

__all__ = [
    "StatefulLoader",
    "builtin_corpus_files",
    "collate_fixed",
    "collate_padded",
    "load_documents",
    "load_documents_from_args",
    "nsp_pairs",
    "pack_clm",
    "pack_mlm_segments",
    "train_tokenizer",
]
