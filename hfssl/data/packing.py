"""Pack a stream of documents into fixed-length training sequences.

``pack_clm``: GPT-style blocks. Every document is followed by EOS, the token stream is cut into blocks of
exactly ``max_seq_length``; no token is lost or duplicated except the final incomplete block (fewer than
``max_seq_length`` tokens at the very end of the stream), which is dropped as in ``run_clm.py``.
With ``document_boundaries=True`` each block also carries ``position_ids`` that restart at 0 at every
document start (and at the block start), which lets attention implementations that understand packed
sequences (flash-attention varlen, ``DataCollatorWithFlattening``-style) keep documents apart.

``pack_mlm_segments``: RoBERTa "full sentences" segments ``[CLS] tokens [SEP]`` of ``max_seq_length``,
crossing document boundaries with an extra ``[SEP]``; the last segment may be shorter (pad it in collate).

Both return a ``datasets.IterableDataset`` that also has ``iter_with_cursors(cursor=None)``: the same rows,
each paired with a small JSON-able cursor that restarts the stream right after it without tokenizing what
came before. ``StatefulLoader`` saves one in its state, so resuming costs reading the text, not tokenizing it.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import datasets

from hfssl.data.tokenization import iter_indexed_token_chunks, require_token_id
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


# ------------------------------------------------------------------------------------------ resume cursors
# Every block comes with a cursor: a tiny JSON-able dict from which the packer restarts right after that
# block without tokenizing anything before it. It names the piece (document index, piece index) whose
# tokens completed the block, how many ids were buffered before that piece, and how many blocks that
# piece had completed so far (``skip``, always >= 1). Restarting reads the documents before the piece
# (reading, not tokenizing), tokenizes that one piece again and drops the ``skip`` blocks handed out.
# The buffered ids themselves need not be saved: fewer than one block was buffered, so they all fall in
# the piece's first block, which a restart always drops; only their count shifts the later blocks. A
# filler of -1 stands in for them, so a bug that ever emitted one would show as an invalid token id.
_FILLER = -1


def _cursor(packer: str, length: int, doc: int, piece: int, buffered: int, skip: int) -> dict[str, Any]:
    return {"packer": packer, "max_seq_length": length, "document": doc, "piece": piece, "buffered": buffered,
            "skip": skip}


def _restore(cursor: dict[str, Any], packer: str, length: int) -> tuple[int, int, int, list[int]]:
    """(document, piece, blocks to skip, buffer) of a cursor saved by the same packer and length."""
    if cursor.get("packer") != packer or cursor.get("max_seq_length") != length:
        raise ConfigError(
            f"cannot resume the data stream: it was saved from "
            f"{cursor.get('packer') or cursor.get('pairs', 'another') + ' sentence-pair'} packing with "
            f"--max_seq_length {cursor.get('max_seq_length')}, this run uses {packer} with {length}; use the same"
        )
    if not (cursor["skip"] >= 1 and 0 <= cursor["buffered"] < length):
        raise ConfigError(f"cannot resume the data stream: invalid packing cursor {cursor}")
    return cursor["document"], cursor["piece"], cursor["skip"], [_FILLER] * cursor["buffered"]


def _clm_blocks(
    documents: datasets.IterableDataset,
    tokenizer,
    max_seq_length: int,
    eos_id: int,
    document_boundaries: bool,
    cursor: dict | None = None,
) -> Iterator[tuple[dict[str, list[int]], dict]]:
    """``(block, cursor after it)``; from ``cursor`` when given (see the cursor notes above)."""
    L = max_seq_length
    buf: list[int] = []
    # Offsets in buf where a document starts; only tracked when boundaries are wanted.
    starts: list[int] = []
    produced = False
    start_doc = start_piece = to_skip = 0
    if cursor is not None:
        start_doc, start_piece, to_skip, buf = _restore(cursor, "clm", L)
        produced = True  # the checkpoint was taken after at least one block
    chunks = iter_indexed_token_chunks(
        _texts(documents), tokenizer, start_document=start_doc, start_piece=start_piece
    )
    doc = -1
    # Documents arrive in pieces of bounded size, so a 100 MB book never sits in memory as one token list.
    for doc, piece, ids, ends_doc in chunks:
        buffered = len(buf)
        if document_boundaries and piece == 0:
            starts.append(len(buf))
        buf.extend(ids)
        if ends_doc:
            buf.append(eos_id)
        if len(buf) < L:
            continue
        n_blocks = len(buf) // L
        for b in range(n_blocks):
            if to_skip:
                to_skip -= 1  # handed out before the checkpoint
                continue
            after = _cursor("clm", L, doc, piece, buffered, b + 1)
            block = buf[b * L : (b + 1) * L]
            if not document_boundaries:
                yield {"input_ids": block}, after
                continue
            yield {"input_ids": block, "position_ids": _positions(starts, b * L, L)}, after
        produced = True
        # Keep the incomplete tail (slice once per piece, not per block: books are 100k+ tokens).
        consumed = n_blocks * L
        buf = buf[consumed:]
        if document_boundaries:
            starts = [s - consumed for s in starts if s >= consumed]
    if not produced:
        # An empty stream would otherwise surface much later as "no batches", far from its cause.
        raise DataError(
            f"the text has only {len(buf)} tokens in {doc + 1} document(s), less than one block of "
            f"--max_seq_length {L}: give more text or a smaller --max_seq_length"
        )


def _pack_clm_gen(
    documents: datasets.IterableDataset,
    tokenizer,
    max_seq_length: int,
    eos_id: int,
    document_boundaries: bool,
) -> Iterator[dict[str, list[int]]]:
    for block, _ in _clm_blocks(documents, tokenizer, max_seq_length, eos_id, document_boundaries):
        yield block


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
    kwargs = {
        "documents": documents,
        "tokenizer": tokenizer,
        "max_seq_length": max_seq_length,
        "eos_id": eos_id,
        "document_boundaries": document_boundaries,
    }
    blocks = datasets.IterableDataset.from_generator(
        _pack_clm_gen, features=_CLM_POS_FEATURES if document_boundaries else _CLM_FEATURES, gen_kwargs=kwargs
    )
    return _with_cursors(blocks, _clm_blocks, kwargs)


def _with_cursors(dataset: datasets.IterableDataset, blocks_fn, kwargs: dict) -> datasets.IterableDataset:
    """Give ``dataset`` the ``iter_with_cursors(cursor=None)`` method StatefulLoader resumes through.

    Only this object has it: a ``.map()``/``.take()``/``.shuffle()`` of it is a new dataset without the
    method, which StatefulLoader then resumes by replaying (still exact, just slower).
    """

    def iter_with_cursors(cursor: dict | None = None) -> Iterator[tuple[dict[str, list[int]], dict]]:
        return blocks_fn(**kwargs, cursor=cursor)

    dataset.iter_with_cursors = iter_with_cursors
    return dataset


def _mlm_segments(
    documents: datasets.IterableDataset,
    tokenizer,
    max_seq_length: int,
    cls_id: int,
    sep_id: int,
    cursor: dict | None = None,
) -> Iterator[tuple[dict[str, list[int]], dict]]:
    """``(segment, cursor after it)``; from ``cursor`` when given (see the cursor notes above)."""
    room = max_seq_length - 2
    buf: list[int] = []
    start_doc = start_piece = to_skip = 0
    if cursor is not None:
        start_doc, start_piece, to_skip, buf = _restore(cursor, "mlm", max_seq_length)
    chunks = iter_indexed_token_chunks(
        _texts(documents), tokenizer, start_document=start_doc, start_piece=start_piece
    )
    doc = -1
    for doc, piece, ids, _ in chunks:
        buffered = len(buf)
        if piece == 0 and doc > 0:
            buf.append(sep_id)  # document separator, as RoBERTa's FULL-SENTENCES
        buf.extend(ids)
        if len(buf) < room:
            continue
        n = len(buf) // room
        for b in range(n):
            if to_skip:
                to_skip -= 1  # handed out before the checkpoint
                continue
            segment = {"input_ids": [cls_id, *buf[b * room : (b + 1) * room], sep_id]}
            yield segment, _cursor("mlm", max_seq_length, doc, piece, buffered, b + 1)
        buf = buf[n * room :]
    if buf and not to_skip:
        # The short last segment; its cursor points past the last document.
        tail = _cursor("mlm", max_seq_length, max(doc + 1, start_doc), 0, len(buf), 1)
        yield {"input_ids": [cls_id, *buf, sep_id]}, tail


def _pack_mlm_gen(
    documents: datasets.IterableDataset, tokenizer, max_seq_length: int, cls_id: int, sep_id: int
) -> Iterator[dict[str, list[int]]]:
    for segment, _ in _mlm_segments(documents, tokenizer, max_seq_length, cls_id, sep_id):
        yield segment


def pack_mlm_segments(
    documents: datasets.IterableDataset, tokenizer, max_seq_length: int
) -> datasets.IterableDataset:
    """Stream ``{"input_ids": [CLS] ... [SEP]}`` segments of ``max_seq_length`` (the last may be shorter)."""
    if max_seq_length < 3:
        raise ConfigError(f"max_seq_length must be at least 3 for [CLS] x [SEP], got {max_seq_length}")
    cls_id = require_token_id(tokenizer, "cls_token", "bos_token")
    sep_id = require_token_id(tokenizer, "sep_token", "eos_token")
    kwargs = {
        "documents": documents,
        "tokenizer": tokenizer,
        "max_seq_length": max_seq_length,
        "cls_id": cls_id,
        "sep_id": sep_id,
    }
    segments = datasets.IterableDataset.from_generator(_pack_mlm_gen, features=_CLM_FEATURES, gen_kwargs=kwargs)
    return _with_cursors(segments, _mlm_segments, kwargs)
