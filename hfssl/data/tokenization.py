"""Fast streaming tokenization of documents: the shared first stage of packing and sentence pairs."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

from hfssl.errors import ConfigError, DataError

DOC_BATCH_SIZE = 64  # documents per encode_batch call: enough to amortise the Python <-> Rust crossing
MAX_BATCH_CHARS = (
    256_000  # ... but a bounded amount of text per call, so peak memory does not grow with documents
)
MAX_PIECE_CHARS = 100_000  # longer documents (whole books) are encoded in pieces of about this size


def backend_copy(tokenizer):
    """A private copy of a fast tokenizer's Rust backend with truncation and padding off.

    The transformers wrapper re-applies truncation/padding on every call, so the shared backend may carry
    whatever the last call left; a copy makes our encoding independent of it (and thread-safe).
    Returns ``None`` for slow (pure Python) tokenizers.
    """
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return None
    from tokenizers import Tokenizer

    copy = Tokenizer.from_str(backend.to_str())
    copy.no_truncation()
    copy.no_padding()
    return copy


def make_encoder(tokenizer) -> Callable[[list[str]], list[list[int]]]:
    """A function encoding a list of texts to token ids without special tokens, as fast as the tokenizer allows."""
    backend = backend_copy(tokenizer)
    if backend is None:

        def encode_slow(batch: list[str]) -> list[list[int]]:
            return tokenizer(batch, add_special_tokens=False)["input_ids"] if batch else []

        return encode_slow
    # encode_batch_fast skips offset tracking, which we never use.
    encode = getattr(backend, "encode_batch_fast", backend.encode_batch)

    def encode_fast(batch: list[str]) -> list[list[int]]:
        return [enc.ids for enc in encode(batch, add_special_tokens=False)]

    return encode_fast


def split_long_text(text: str, max_chars: int = MAX_PIECE_CHARS) -> list[str]:
    """Cut ``text`` into pieces of at most ~``max_chars`` characters, each cut just before a whitespace
    that follows a non-whitespace character.

    Byte-level BPE (GPT-2's pre-tokenizer regex) and BERT's pre-tokenizer never join a word with the
    whitespace after it, so encoding the pieces separately gives exactly the ids of the whole text.
    (SentencePiece-style Metaspace tokenizers add a leading "▁" to each piece: one extra token per cut.)
    Text without any such boundary in a window is cut hard at ``max_chars``.
    """
    if len(text) <= max_chars:
        return [text]
    pieces = []
    start = 0
    while len(text) - start > max_chars:
        end = start + max_chars
        cut = max(text.rfind(" ", start + 1, end), text.rfind("\n", start + 1, end))
        while cut > start + 1 and text[cut - 1].isspace():
            cut -= 1  # back up to the start of the whitespace run
        if cut <= start or text[cut - 1].isspace() or not text[cut].isspace():
            cut = end
        pieces.append(text[start:cut])
        start = cut
    pieces.append(text[start:])
    return pieces


def iter_token_chunks(
    texts: Iterable[str],
    tokenizer,
    batch_size: int | None = None,
    max_batch_chars: int | None = None,
    max_piece_chars: int | None = None,
) -> Iterator[tuple[list[int], bool, bool]]:
    """``(ids, starts_document, ends_document)`` for each text, in order, in pieces of bounded size.

    Memory stays bounded whatever the document sizes: the Rust ``Encoding`` objects cost a few hundred
    bytes per token while they exist, so calls end at ``batch_size`` pieces or ``max_batch_chars``
    characters, and documents longer than ``max_piece_chars`` are encoded in pieces (see
    :func:`split_long_text`). Empty documents yield one empty chunk that starts and ends them.
    """
    for _, piece, ids, last in iter_indexed_token_chunks(
        texts, tokenizer, batch_size=batch_size, max_batch_chars=max_batch_chars, max_piece_chars=max_piece_chars
    ):
        yield ids, piece == 0, last


def iter_indexed_token_chunks(
    texts: Iterable[str],
    tokenizer,
    *,
    start_document: int = 0,
    start_piece: int = 0,
    batch_size: int | None = None,
    max_batch_chars: int | None = None,
    max_piece_chars: int | None = None,
) -> Iterator[tuple[int, int, list[int], bool]]:
    """``(document index, piece index, ids, is_last_piece)``, as :func:`iter_token_chunks`, from piece
    ``start_piece`` of document ``start_document`` on.

    The documents before the start are read but never tokenized, so a resumed stream costs only reading the
    text up to the resume point. Pieces are a pure function of the text and each piece is encoded on its own
    (a batch only groups calls), so the ids are exactly those of an uninterrupted pass.
    """
    # None: the module's limits, read now (not at import) so tests can shrink them.
    batch_size = batch_size or DOC_BATCH_SIZE
    max_batch_chars = max_batch_chars or MAX_BATCH_CHARS
    max_piece_chars = max_piece_chars or MAX_PIECE_CHARS
    encode = make_encoder(tokenizer)
    batch: list[str] = []
    meta: list[tuple[int, int, bool]] = []
    chars = 0
    seen = 0
    for doc, text in enumerate(texts):
        seen = doc + 1
        if doc < start_document:
            continue  # skipped unread by the tokenizer: the point of resuming from a cursor
        pieces = split_long_text(text, max_piece_chars)
        first = 0
        if doc == start_document and start_piece:
            if start_piece >= len(pieces):
                raise DataError(_changed(f"document {doc} has {len(pieces)} pieces, not more than {start_piece}"))
            first = start_piece
        for i in range(first, len(pieces)):
            piece = pieces[i]
            batch.append(piece)
            meta.append((doc, i, i == len(pieces) - 1))
            chars += len(piece)
            if len(batch) >= batch_size or chars >= max_batch_chars:
                yield from ((d, i, ids, last) for ids, (d, i, last) in zip(encode(batch), meta))
                batch, meta, chars = [], [], 0
    if seen < start_document:
        raise DataError(_changed(f"it has {seen} documents, the resume point is at document {start_document}"))
    if batch:
        yield from ((d, i, ids, last) for ids, (d, i, last) in zip(encode(batch), meta))


def _changed(detail: str) -> str:
    return (
        f"cannot resume the data stream: the corpus changed since the checkpoint ({detail}); resume with the "
        "same data and tokenizer"
    )


def iter_token_ids(texts: Iterable[str], tokenizer, batch_size: int | None = None) -> Iterator[list[int]]:
    """Token ids (no special tokens) of each whole text, in order (see :func:`iter_token_chunks`)."""
    current: list[int] = []
    for ids, _, ends in iter_token_chunks(texts, tokenizer, batch_size):
        current.extend(ids)
        if ends:
            yield current
            current = []


def require_token_id(tokenizer, *names: str) -> int:
    """The id of the first of ``names`` (e.g. ``"eos_token"``) the tokenizer defines."""
    for name in names:
        token_id = getattr(tokenizer, f"{name}_id", None)
        if token_id is not None:
            return int(token_id)
    raise ConfigError(
        f"the tokenizer has no {' or '.join(names)}; train one with recipes/train_tokenizer.py or set it"
    )
