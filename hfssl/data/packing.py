"""Pack a stream of documents into fixed-length training sequences.

``pack_clm``: GPT-style blocks. Every document is followed by EOS, the token stream is cut into blocks of
exactly ``max_seq_length``; no token is lost or duplicated except the final incomplete block (fewer than
``max_seq_length`` tokens at the very end of the stream), which is dropped as in ``run_clm.py``.
With ``document_boundaries=True`` each block also carries ``position_ids`` that restart at 0 at every
document start (and at the block start), which lets attention implementations that understand packed
sequences (flash-attention varlen, ``DataCollatorWithFlattening``-style) keep documents apart.

``pack_mlm_segments``: RoBERTa "full sentences" segments ``[CLS] tokens [SEP]`` of ``max_seq_length``,
crossing document boundaries with an extra ``[SEP]``; the last segment may be shorter (pad it in collate).
"""

from __future__ import annotations

from collections.abc import Iterator

import datasets

from hfssl.data.tokenization import iter_token_chunks, require_token_id
from hfssl.errors import ConfigError, DataError

_CLM_FEATURES = datasets.Features({"input_ids": datasets.Sequence(datasets.Value("int32"))})
_CLM_POS_FEATURES = datasets.Features(
    {
        "input_ids": datasets.Sequence(datasets.Value("int32")),
        "position_ids": datasets.Sequence(datasets.Value("int32")),
    }
)


def _texts(documents: datasets.IterableDataset) -> Iterator[str]:
    for example in documents:
        yield example["text"]


def _pack_clm_gen(
    documents: datasets.IterableDataset,
    tokenizer,
    max_seq_length: int,
    eos_id: int,
    document_boundaries: bool,
) -> Iterator[dict[str, list[int]]]:
    L = max_seq_length
    buf: list[int] = []
    # Offsets in buf where a document starts; only tracked when boundaries are wanted.
    starts: list[int] = []
    produced = False
    # Documents arrive in pieces of bounded size, so a 100 MB book never sits in memory as one token list.
    for ids, starts_doc, ends_doc in iter_token_chunks(_texts(documents), tokenizer):
        if document_boundaries and starts_doc:
            starts.append(len(buf))
        buf.extend(ids)
        if ends_doc:
            buf.append(eos_id)
        if len(buf) < L:
            continue
        n_blocks = len(buf) // L
        for b in range(n_blocks):
            block = buf[b * L : (b + 1) * L]
            if not document_boundaries:
                yield {"input_ids": block}
                continue
            yield {"input_ids": block, "position_ids": _positions(starts, b * L, L)}
        produced = True
        # Keep the incomplete tail (slice once per document, not per block: books are 100k+ tokens).
        consumed = n_blocks * L
        buf = buf[consumed:]
        if document_boundaries:
            starts = [s - consumed for s in starts if s >= consumed]
    if not produced:
        # An empty stream would otherwise surface much later as "no batches", far from its cause.
        raise DataError(
            f"the corpus has only {len(buf)} tokens, less than one block of --max_seq_length {L}: "
            "give more text or a smaller --max_seq_length"
        )


def _positions(starts: list[int], begin: int, length: int) -> list[int]:
    """Positions for buf[begin:begin+length]: 0 at the block start and at each document start inside it."""
    cuts = [s - begin for s in starts if begin < s < begin + length]
    positions: list[int] = []
    prev = 0
    for cut in cuts + [length]:
        positions.extend(range(cut - prev))
        prev = cut
    return positions


def pack_clm(
    documents: datasets.IterableDataset,
    tokenizer,
    max_seq_length: int,
    *,
    document_boundaries: bool = False,
) -> datasets.IterableDataset:
    """Stream ``{"input_ids": [max_seq_length ints]}`` blocks (+ ``position_ids`` with document_boundaries)."""
    if max_seq_length < 2:
        raise ConfigError(f"max_seq_length must be at least 2, got {max_seq_length}")
    eos_id = require_token_id(tokenizer, "eos_token", "sep_token")
    return datasets.IterableDataset.from_generator(
        _pack_clm_gen,
        features=_CLM_POS_FEATURES if document_boundaries else _CLM_FEATURES,
        gen_kwargs={
            "documents": documents,
            "tokenizer": tokenizer,
            "max_seq_length": max_seq_length,
            "eos_id": eos_id,
            "document_boundaries": document_boundaries,
        },
    )


def _pack_mlm_gen(
    documents: datasets.IterableDataset, tokenizer, max_seq_length: int, cls_id: int, sep_id: int
) -> Iterator[dict[str, list[int]]]:
    room = max_seq_length - 2
    buf: list[int] = []
    first = True
    for ids, starts_doc, _ in iter_token_chunks(_texts(documents), tokenizer):
        if starts_doc and not first:
            buf.append(sep_id)  # document separator, as RoBERTa's FULL-SENTENCES
        first = False
        buf.extend(ids)
        if len(buf) < room:
            continue
        n = len(buf) // room
        for b in range(n):
            yield {"input_ids": [cls_id, *buf[b * room : (b + 1) * room], sep_id]}
        buf = buf[n * room :]
    if buf:
        yield {"input_ids": [cls_id, *buf, sep_id]}


def pack_mlm_segments(
    documents: datasets.IterableDataset, tokenizer, max_seq_length: int
) -> datasets.IterableDataset:
    """Stream ``{"input_ids": [CLS] ... [SEP]}`` segments of ``max_seq_length`` (the last may be shorter)."""
    if max_seq_length < 3:
        raise ConfigError(f"max_seq_length must be at least 3 for [CLS] x [SEP], got {max_seq_length}")
    cls_id = require_token_id(tokenizer, "cls_token", "bos_token")
    sep_id = require_token_id(tokenizer, "sep_token", "eos_token")
    return datasets.IterableDataset.from_generator(
        _pack_mlm_gen,
        features=_CLM_FEATURES,
        gen_kwargs={
            "documents": documents,
            "tokenizer": tokenizer,
            "max_seq_length": max_seq_length,
            "cls_id": cls_id,
            "sep_id": sep_id,
        },
    )
