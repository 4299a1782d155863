"""Sentence-pair examples for BERT's next sentence prediction (NSP) and ALBERT's sentence order prediction (SOP).

Follows the construction of the original BERT data pipeline, adapted to a stream:

* A document is split into sentences; consecutive sentences are gathered into a chunk until it reaches a
  target length (``max_seq_length - 3``, or a random shorter one with probability ``short_seq_prob``, drawn
  per chunk: with whole books as documents a per-document draw would make a book all-short or all-full).
* The chunk is cut at a random sentence boundary into A and B (a one-sentence chunk is cut inside the
  sentence), so for ``next_sentence_label = 0`` B is the text that really follows A.
* NSP, label 1 (probability ``nsp_probability``): B is replaced by a random run of sentences from another
  document of a bounded pool (the stream is never held in memory); the unused sentences of the chunk are
  put back. The pool reads a few documents ahead, so the very first document already has others to draw
  from and the labels stay balanced from the first batch (a one-document corpus draws B from a random place
  of the same document, as the original code does when it finds no other). SOP, label 1: A and B swapped.
* Too-long pairs lose tokens at the *front* of A and the *end* of B, keeping the A|B junction intact.

Labels follow ``BertForPreTraining``: 0 = B continues A (correct order), 1 = random B (swapped).
Everything is seeded, so a stream replayed from the start yields the same examples. The returned dataset also
has ``iter_with_cursors(cursor=None)``, as the packers do: each pair with a JSON-able cursor that restarts the
stream right after it, tokenizing only the pooled documents' heads and the current document again (see the
cursor notes below); ``StatefulLoader`` resumes through it.
"""

from __future__ import annotations

import random
import re
from collections import deque
from collections.abc import Iterator
from typing import Any

import datasets

from hfssl.data.packing import _with_cursors
from hfssl.data.tokenization import _changed, make_encoder, require_token_id
from hfssl.errors import ConfigError, DataError

_FEATURES = datasets.Features(
    {
        "input_ids": datasets.Sequence(datasets.Value("int32")),
        "token_type_ids": datasets.Sequence(datasets.Value("int8")),
        "next_sentence_label": datasets.Value("int64"),
    }
)
# Sentence ends: . ! ? (optionally followed by a closing quote/bracket) before whitespace, or a blank line.
_SENTENCE_SPLIT = re.compile(r"(?<=[.!?])[\"')\]]?\s+|\n\s*\n")
_POOL_DOCUMENTS = 256  # documents kept for random B sentences
_POOL_SENTENCES = 128  # sentences kept per pooled document (books are huge)
_LOOKAHEAD_DOCUMENTS = 4  # documents read (as raw text) before the current one is turned into pairs


def split_sentences(text: str) -> list[str]:
    """Rough, fast sentence split; good enough for NSP, where a 'sentence' is just a text span."""
    return [s.strip() for s in _SENTENCE_SPLIT.split(text) if s and s.strip()]


def _random_b(pool: deque, current: int, own: list[list[int]], target: int, rng: random.Random) -> list[int]:
    others = [sents for doc_id, sents in pool if doc_id != current]
    doc = others[rng.randrange(len(others))] if others else own
    start = rng.randrange(len(doc))
    out: list[int] = []
    for sent in doc[start:]:
        out.extend(sent)
        if len(out) >= target:
            break
    return out


def _truncate(a: list[int], b: list[int], max_tokens: int) -> tuple[list[int], list[int]]:
    excess = len(a) + len(b) - max_tokens
    while excess > 0:
        if len(a) > len(b):
            cut = min(excess, len(a) - len(b), len(a) - 1) or 1
            a = a[cut:]
        else:
            cut = min(excess, len(b) - len(a), len(b) - 1) or 1
            b = b[: len(b) - cut]
        excess = len(a) + len(b) - max_tokens
    return a, b


# ------------------------------------------------------------------------------------------ resume cursors
# Every pair comes with a cursor from which the stream restarts right after it. Pairs of document d are all
# made when d leaves ``pending``, from three things: the RNG state at that moment, the pool then (the pooled
# heads of the <= 256 documents before and just after d that have any) and d's own sentences. The cursor
# keeps the RNG state, the first document of that pool and how many of d's pairs were handed out. A restart
# reads every document but splits and tokenizes only the pool's heads and d itself, so it costs reading the
# text, not tokenizing it. The RNG state (~7 kB of JSON) is saved once per document and shared by its pairs.


def _settings(max_seq_length: int, short_seq_prob: float, nsp_probability: float, sop: bool, seed: int) -> dict:
    """What makes the pair stream: a cursor saved under other settings cannot continue this one."""
    return {"pairs": "sop" if sop else "nsp", "max_seq_length": max_seq_length, "short_seq_prob": short_seq_prob,
            "nsp_probability": nsp_probability, "seed": seed}


def _restore(cursor: dict[str, Any], settings: dict[str, Any]) -> tuple[int, int, int, tuple]:
    """(document, first pooled document, pairs to skip, RNG state) of a cursor saved with ``settings``."""
    if "pairs" not in cursor:
        raise ConfigError(
            f"cannot resume the data stream: it was saved from {cursor.get('packer', 'another')} packing, this "
            f"run makes {settings['pairs']} sentence pairs; resume with the same objective flags"
        )
    diff = [k for k in settings if cursor.get(k) != settings[k]]
    if diff:
        saved = ", ".join(f"{k}={cursor.get(k)}" for k in diff)
        now = ", ".join(f"{k}={settings[k]}" for k in diff)
        raise ConfigError(f"cannot resume the data stream: it was saved with {saved}, this run uses {now}; "
                          "use the same values to continue the same pairs")
    try:
        version, internal, gauss = cursor["rng"]
        state = (version, tuple(internal), gauss)
        random.Random().setstate(state)  # a damaged state fails here, not deep in the stream
        document, pool_from, skip = int(cursor["document"]), int(cursor["pool_from"]), int(cursor["skip"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ConfigError(f"cannot resume the data stream: invalid sentence-pair cursor ({exc!r})") from None
    if skip < 1 or pool_from < 0 or document < 0:
        raise ConfigError("cannot resume the data stream: invalid sentence-pair cursor (negative position)")
    return document, pool_from, skip, state


def _head_sentences(text: str) -> list[str]:
    """``split_sentences(text)[:_POOL_SENTENCES]`` without splitting the rest of a (book-sized) text.

    The pattern has no groups and never matches empty, so ``re.split`` cuts exactly between its matches.
    """
    out: list[str] = []
    begin = 0
    for match in _SENTENCE_SPLIT.finditer(text):
        piece = text[begin : match.start()].strip()
        begin = match.end()
        if piece:
            out.append(piece)
            if len(out) == _POOL_SENTENCES:
                return out
    last = text[begin:].strip()
    return out + [last] if last else out


def _pairs(
    documents: datasets.IterableDataset,
    tokenizer,
    max_seq_length: int,
    short_seq_prob: float,
    nsp_probability: float,
    sop: bool,
    seed: int,
    cls_id: int,
    sep_id: int,
    cursor: dict | None = None,
) -> Iterator[tuple[dict, dict]]:
    """``(pair, cursor after it)``; from ``cursor`` when given (see the cursor notes above)."""
    settings = _settings(max_seq_length, short_seq_prob, nsp_probability, sop, seed)
    rng = random.Random(seed)
    encode = make_encoder(tokenizer)
    max_tokens = max_seq_length - 3  # [CLS] A [SEP] B [SEP]
    pool: deque = deque(maxlen=_POOL_DOCUMENTS)
    resume_doc, skip, resume_rng, first_read = -1, 0, None, 0
    if cursor is not None:
        resume_doc, pool_from, skip, resume_rng = _restore(cursor, settings)
        # Before the pool's first document nothing is needed; d itself may come before it (its head empty).
        first_read = min(pool_from, resume_doc)
    produced = cursor is not None  # a checkpoint is taken after at least one pair

    def emit(a: list[int], b: list[int], label: int, swap: bool) -> dict:
        # Truncate in source order (front of A, end of B) so the real A|B junction survives; then swap.
        a, b = _truncate(a, b, max_tokens)
        if swap:
            a, b = b, a
        return {
            "input_ids": [cls_id, *a, sep_id, *b, sep_id],
            "token_type_ids": [0] * (len(a) + 2) + [1] * (len(b) + 1),
            "next_sentence_label": label,
        }

    def draw_target() -> int:
        return rng.randint(2, max_tokens) if rng.random() < short_seq_prob else max_tokens

    def pairs_of(doc_id: int, head: list[list[int]], rest: list[str]) -> Iterator[tuple]:
        """``(a, b, label, swap)`` of one document; ``emit`` makes the row (skipped pairs are never built)."""
        # Encode in slices: a whole book in one call would hold all its Rust Encodings at once.
        sentences = head + [s for i in range(0, len(rest), 1024) for s in encode(rest[i : i + 1024]) if s]
        if not sentences:
            return
        target = draw_target()
        chunk: list[list[int]] = []
        length = 0
        i = 0
        while i < len(sentences):
            chunk.append(sentences[i])
            length += len(sentences[i])
            if i == len(sentences) - 1 or length >= target:
                flip = rng.random() < nsp_probability
                if len(chunk) >= 2:
                    a_end = rng.randint(1, len(chunk) - 1)
                    a = [t for s in chunk[:a_end] for t in s]
                    b = [t for s in chunk[a_end:] for t in s]
                else:
                    a_end = 1
                    tokens = chunk[0]
                    cut = rng.randint(1, len(tokens) - 1) if len(tokens) >= 2 else 0
                    a, b = tokens[:cut], tokens[cut:]
                if sop:
                    if a and b:
                        yield (a, b, 1, True) if flip else (a, b, 0, False)
                elif flip:
                    a = [t for s in chunk[:a_end] for t in s] if len(chunk) >= 2 else chunk[0]
                    b = _random_b(pool, doc_id, sentences, max(1, target - len(a)), rng)
                    # The sentences not used as A come back as the start of the next chunk.
                    i -= len(chunk) - a_end
                    if a and b:
                        yield a, b, 1, False
                elif a and b:
                    yield a, b, 0, False
                chunk, length = [], 0
                target = draw_target()
            i += 1

    def with_cursors(doc_id: int, head: list[list[int]], rest: list[str]) -> Iterator[tuple[dict, dict]]:
        nonlocal produced
        to_skip = 0
        if doc_id == resume_doc:
            rng.setstate(resume_rng)
            to_skip = skip
        version, internal, gauss = rng.getstate()
        base = {**settings, "document": doc_id, "rng": [version, list(internal), gauss],
                "pool_from": pool[0][0] if pool else doc_id}
        k = 0
        for a, b, label, swap in pairs_of(doc_id, head, rest):
            k += 1
            if k > to_skip:
                produced = True
                yield emit(a, b, label, swap), {**base, "skip": k}
        if k < to_skip:
            raise DataError(_changed(f"document {doc_id} makes {k} pairs, not more than {to_skip}"))

    pending: deque = deque()
    seen = 0
    for doc_id, example in enumerate(documents):
        seen = doc_id + 1
        if doc_id < first_read:
            continue  # read, never split or tokenized: what a cursor saves
        if doc_id < resume_doc:
            # Its pairs were handed out before the checkpoint: only its head matters, for the pool.
            head = [s for s in encode(_head_sentences(example["text"])) if s]
            if head:
                pool.append((doc_id, head))
            continue
        texts = split_sentences(example["text"])
        if not texts:
            if doc_id == resume_doc:
                raise DataError(_changed(f"document {doc_id} has no sentence"))
            continue
        head = [s for s in encode(texts[:_POOL_SENTENCES]) if s]
        if head:
            pool.append((doc_id, head))
        pending.append((doc_id, head, texts[_POOL_SENTENCES:]))
        if len(pending) > _LOOKAHEAD_DOCUMENTS:
            yield from with_cursors(*pending.popleft())
    if seen <= resume_doc:
        raise DataError(_changed(f"it has {seen} documents, the resume point is at document {resume_doc}"))
    while pending:
        yield from with_cursors(*pending.popleft())
    if not produced:
        # Any document of two tokens or more makes a pair (a one-sentence chunk is cut inside the sentence).
        raise DataError(
            f"the text yields no sentence pair: its {seen} document(s) have fewer than 2 tokens each"
            if seen else "the text stream has no documents"
        )


def _pairs_gen(**kwargs) -> Iterator[dict]:
    for pair, _ in _pairs(**kwargs):
        yield pair


def nsp_pairs(
    documents: datasets.IterableDataset,
    tokenizer,
    max_seq_length: int,
    *,
    short_seq_prob: float = 0.1,
    nsp_probability: float = 0.5,
    sop: bool = False,
    seed: int = 0,
) -> datasets.IterableDataset:
    """Stream ``{"input_ids", "token_type_ids", "next_sentence_label"}`` pairs (unpadded, <= max_seq_length)."""
    if max_seq_length < 5:
        raise ConfigError(
            f"max_seq_length must be at least 5 for [CLS] A [SEP] B [SEP], got {max_seq_length}"
        )
    if not 0.0 <= nsp_probability <= 1.0 or not 0.0 <= short_seq_prob <= 1.0:
        raise ConfigError("nsp_probability and short_seq_prob must be in [0, 1]")
    cls_id = require_token_id(tokenizer, "cls_token", "bos_token")
    sep_id = require_token_id(tokenizer, "sep_token", "eos_token")
    kwargs = {
        "documents": documents,
        "tokenizer": tokenizer,
        "max_seq_length": max_seq_length,
        "short_seq_prob": short_seq_prob,
        "nsp_probability": nsp_probability,
        "sop": sop,
        "seed": seed,
        "cls_id": cls_id,
        "sep_id": sep_id,
    }
    pairs = datasets.IterableDataset.from_generator(_pairs_gen, features=_FEATURES, gen_kwargs=kwargs)
    return _with_cursors(pairs, _pairs, kwargs)
