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
Everything is seeded, so a stream replayed from the start yields the same examples (exact resume).
"""

from __future__ import annotations

import random
import re
from collections import deque
from collections.abc import Iterator

import datasets

from hfssl.data.tokenization import make_encoder, require_token_id
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


def _pairs_gen(
    documents: datasets.IterableDataset,
    tokenizer,
    max_seq_length: int,
    short_seq_prob: float,
    nsp_probability: float,
    sop: bool,
    seed: int,
    cls_id: int,
    sep_id: int,
) -> Iterator[dict]:
    rng = random.Random(seed)
    encode = make_encoder(tokenizer)
    max_tokens = max_seq_length - 3  # [CLS] A [SEP] B [SEP]
    pool: deque = deque(maxlen=_POOL_DOCUMENTS)
    produced = 0

    def emit(a: list[int], b: list[int], label: int, swap: bool = False) -> dict:
        # Truncate in source order (front of A, end of B) so the real A|B junction survives; then swap.
        nonlocal produced
        produced += 1
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

    def pairs_of(doc_id: int, head: list[list[int]], rest: list[str]) -> Iterator[dict]:
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
                        yield emit(a, b, 1, swap=True) if flip else emit(a, b, 0)
                elif flip:
                    a = [t for s in chunk[:a_end] for t in s] if len(chunk) >= 2 else chunk[0]
                    b = _random_b(pool, doc_id, sentences, max(1, target - len(a)), rng)
                    # The sentences not used as A come back as the start of the next chunk.
                    i -= len(chunk) - a_end
                    if a and b:
                        yield emit(a, b, 1)
                elif a and b:
                    yield emit(a, b, 0)
                chunk, length = [], 0
                target = draw_target()
            i += 1

    pending: deque = deque()
    for doc_id, example in enumerate(documents):
        texts = split_sentences(example["text"])
        if not texts:
            continue
        head = [s for s in encode(texts[:_POOL_SENTENCES]) if s]
        if head:
            pool.append((doc_id, head))
        pending.append((doc_id, head, texts[_POOL_SENTENCES:]))
        if len(pending) > _LOOKAHEAD_DOCUMENTS:
            yield from pairs_of(*pending.popleft())
    while pending:
        yield from pairs_of(*pending.popleft())
    if produced == 0:
        raise DataError(
            "the corpus yields no sentence pair: its documents are too short to split into two segments"
        )


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
    return datasets.IterableDataset.from_generator(
        _pairs_gen,
        features=_FEATURES,
        gen_kwargs={
            "documents": documents,
            "tokenizer": tokenizer,
            "max_seq_length": max_seq_length,
            "short_seq_prob": short_seq_prob,
            "nsp_probability": nsp_probability,
            "sop": sop,
            "seed": seed,
            "cls_id": cls_id,
            "sep_id": sep_id,
        },
    )
