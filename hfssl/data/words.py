"""Word-level text for word2vec: the tokenizer, the vocabulary (one streaming pass) and blocks of word ids.

* **Tokenizer.** A ``tokenizers`` pipeline saved with the export, so the words seen at inference are those
  of training: NFKC normalisation (typographic apostrophes become ``'``), optional lowercasing, a
  pre-tokenizer keeping runs of letters/digits (with inner apostrophes: ``don't``) and dropping punctuation,
  and a ``WordLevel`` model whose ids are the vocabulary ranks (0 = most frequent word, as gensim's
  ``index_to_key``). ``[UNK]`` comes last; training drops unknown words before windows are built, as
  word2vec and gensim do.
* **Vocabulary.** :func:`build_vocabulary` counts every word of the training documents in one pass with the
  tokenizer's own normaliser and pre-tokenizer, then keeps words seen at least ``min_count`` times (and at
  most the ``max_vocab_size`` most frequent). Counts are kept: sub-sampling and the negative-sampling
  distribution are computed from them.
* **Blocks.** :func:`word_blocks` streams ``{"word_ids", "sentence_starts"}`` blocks of ``block_length``
  in-vocabulary word ids (word2vec.c cuts its stream into 1,000-word sentences the same way). Documents are
  the sentences: a context window never crosses a ``sentence_starts`` flag nor a block end. The last block
  is padded with -1. Each block comes with a cursor that restarts the stream right after it without
  tokenizing what came before (see ``StatefulLoader``), and the number of blocks is known from the counts,
  so the loader has a length and ``--num_train_epochs`` works.
"""

from __future__ import annotations

import json
import math
import os
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from hfssl.data.loader import StatefulLoader
from hfssl.errors import ConfigError, DataError

UNK_TOKEN = "[UNK]"
#: A word: letters/digits/underscore, with inner apostrophes ("don't", "o'clock"); everything else separates.
WORD_PATTERN = r"\w+(?:'\w+)*"
VOCABULARY_FILE = "word_counts.tsv"
PAD_ID = -1


def word_tokenizer(words: list[str] | None = None, *, lowercase: bool = True):
    """A ``tokenizers.Tokenizer`` (WordLevel) over ``words`` (ids = positions; ``[UNK]`` after them)."""
    from tokenizers import Regex, Tokenizer, normalizers, pre_tokenizers
    from tokenizers.models import WordLevel

    vocab = {word: i for i, word in enumerate(words or [])}
    vocab[UNK_TOKEN] = len(vocab)
    tokenizer = Tokenizer(WordLevel(vocab, unk_token=UNK_TOKEN))
    steps = [normalizers.NFKC(), normalizers.Replace("\u2019", "'")]
    if lowercase:
        steps.append(normalizers.Lowercase())
    tokenizer.normalizer = normalizers.Sequence(steps)
    tokenizer.pre_tokenizer = pre_tokenizers.Split(Regex(WORD_PATTERN), behavior="removed", invert=True)
    tokenizer.add_special_tokens([UNK_TOKEN])
    return tokenizer


def as_transformers_tokenizer(tokenizer):
    """The same tokenizer as a ``PreTrainedTokenizerFast`` (what ``AutoTokenizer`` loads from the export)."""
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token=UNK_TOKEN, model_max_length=1_000_000_000)


def split_words(texts: Iterable[str], tokenizer) -> Iterator[list[str]]:
    """The words of each text as the tokenizer sees them (normalised, pre-tokenized), before the vocabulary."""
    normalize = tokenizer.normalizer.normalize_str
    pre_tokenize = tokenizer.pre_tokenizer.pre_tokenize_str
    for text in texts:
        yield [word for word, _ in pre_tokenize(normalize(text))]


@dataclass
class Vocabulary:
    """Words by decreasing count (ties in first-seen order, as gensim) and what the counting pass saw."""

    words: list[str]
    counts: np.ndarray  # int64, aligned with words
    lowercase: bool
    total_words: int  # every word of the corpus, out-of-vocabulary ones included
    distinct_words: int
    documents: int

    @property
    def size(self) -> int:
        return len(self.words)

    @property
    def unk_id(self) -> int:
        return len(self.words)

    @property
    def retained_words(self) -> int:
        """Words of the corpus that are in the vocabulary (what one epoch trains on)."""
        return int(self.counts.sum())

    def tokenizer(self):
        return word_tokenizer(self.words, lowercase=self.lowercase)

    def fingerprint(self) -> str:
        import hashlib

        digest = hashlib.sha256()
        for word, count in zip(self.words, self.counts.tolist()):
            digest.update(f"{word}\t{count}\n".encode())
        return digest.hexdigest()[:16]

    def save(self, directory: str) -> None:
        """``word_counts.tsv`` (word, count; vocabulary order) and ``vocabulary.json`` (totals, settings)."""
        os.makedirs(directory, exist_ok=True)
        tmp = os.path.join(directory, VOCABULARY_FILE + ".tmp")
        with open(tmp, "w", encoding="utf-8") as fh:
            for word, count in zip(self.words, self.counts.tolist()):
                fh.write(f"{word}\t{count}\n")
        os.replace(tmp, os.path.join(directory, VOCABULARY_FILE))
        meta = {"lowercase": self.lowercase, "total_words": self.total_words, "distinct_words": self.distinct_words,
                "documents": self.documents, "size": self.size}
        with open(os.path.join(directory, "vocabulary.json"), "w", encoding="utf-8") as fh:
            json.dump(meta, fh, indent=1)

    @classmethod
    def load(cls, directory: str) -> Vocabulary:
        try:
            with open(os.path.join(directory, "vocabulary.json"), encoding="utf-8") as fh:
                meta = json.load(fh)
            words, counts = [], []
            with open(os.path.join(directory, VOCABULARY_FILE), encoding="utf-8") as fh:
                for line in fh:
                    word, count = line.rstrip("\n").split("\t")
                    words.append(word)
                    counts.append(int(count))
        except (OSError, ValueError, KeyError) as exc:
            raise DataError(f"cannot read the vocabulary in {directory}: {exc}") from None
        return cls(words, np.asarray(counts, dtype=np.int64), meta["lowercase"], meta["total_words"],
                   meta["distinct_words"], meta["documents"])


def build_vocabulary(texts: Iterable[str], *, min_count: int = 5, max_vocab_size: int | None = None,
                     lowercase: bool = True) -> Vocabulary:
    """Count the words of ``texts`` in one pass and keep those seen at least ``min_count`` times.

    Raises DataError when no word is left (an empty corpus, or ``min_count`` above every count).
    """
    if min_count < 1:
        raise ConfigError(f"--min_count must be at least 1, got {min_count}")
    counter: Counter[str] = Counter()
    documents = 0
    for words in split_words(texts, word_tokenizer(lowercase=lowercase)):
        counter.update(words)
        documents += 1
    total = sum(counter.values())
    # most_common sorts by count only and is stable: equal counts keep first-seen order (gensim's order).
    kept = [(w, c) for w, c in counter.most_common() if c >= min_count and w != UNK_TOKEN]
    if max_vocab_size is not None:
        kept = kept[:max_vocab_size]
    if not kept:
        if not counter:
            raise DataError(f"the corpus has no words ({documents} document(s) without a single letter or digit)")
        top, top_count = counter.most_common(1)[0]
        raise DataError(f"the vocabulary is empty: no word occurs --min_count {min_count} times (the corpus has "
                        f"{total} words, {len(counter)} distinct; the most frequent, {top!r}, occurs {top_count} "
                        f"times); lower --min_count or give more text")
    return Vocabulary([w for w, _ in kept], np.asarray([c for _, c in kept], dtype=np.int64), lowercase, total,
                      len(counter), documents)


# ------------------------------------------------------------------------------------------ word blocks
# A cursor names the piece (document, piece index) whose words completed a block, how many words were
# buffered before that piece, how many blocks that piece had completed (``skip`` >= 1), and whether the
# document's first word was still to come. Restarting reads the documents before the piece without
# tokenizing them, tokenizes that piece again with ``buffered`` placeholder words in front and drops the
# ``skip`` blocks already handed out; the placeholders all fall in the first of those (fewer than one block
# was buffered), so they never come out.
_PLACEHOLDER = -2


def _block_cursor(length: int, doc: int, piece: int, buffered: int, skip: int, pending_start: bool) -> dict[str, Any]:
    return {"blocks": "word2vec", "block_length": length, "document": doc, "piece": piece, "buffered": buffered,
            "skip": skip, "pending_start": pending_start}


def _restore(cursor: dict[str, Any], length: int) -> tuple[int, int, int, int, bool]:
    if cursor.get("blocks") != "word2vec" or cursor.get("block_length") != length:
        raise ConfigError(f"cannot resume the data stream: it was saved from {cursor.get('blocks', 'another')} blocks "
                          f"of {cursor.get('block_length')} words, this run uses word2vec blocks of {length}; use the "
                          "same --max_sentence_length")
    if not (cursor["skip"] >= 1 and 0 <= cursor["buffered"] < length):
        raise ConfigError(f"cannot resume the data stream: invalid word-block cursor {cursor}")
    return cursor["document"], cursor["piece"], cursor["skip"], cursor["buffered"], bool(cursor["pending_start"])


def _blocks(documents: Iterable[dict], tokenizer, block_length: int, unk_id: int, cursor: dict | None = None
            ) -> Iterator[tuple[dict[str, np.ndarray], dict]]:
    from hfssl.data.tokenization import iter_indexed_token_chunks

    L = block_length
    ids = np.empty(0, dtype=np.int64)
    starts = np.empty(0, dtype=bool)
    start_doc = start_piece = to_skip = 0
    pending_start = True  # the current document's first in-vocabulary word is still to come
    if cursor is not None:
        start_doc, start_piece, to_skip, buffered, pending_start = _restore(cursor, L)
        ids = np.full(buffered, _PLACEHOLDER, dtype=np.int64)
        starts = np.zeros(buffered, dtype=bool)
    chunks = iter_indexed_token_chunks((d["text"] for d in documents), tokenizer,
                                       start_document=start_doc, start_piece=start_piece)
    doc = start_doc - 1
    for doc, piece, piece_ids, _ in chunks:
        if piece == 0:
            pending_start = True
        words = np.asarray(piece_ids, dtype=np.int64)
        words = words[words != unk_id]  # out-of-vocabulary words are removed before windows, as gensim does
        buffered, was_pending = len(ids), pending_start
        if len(words):
            flags = np.zeros(len(words), dtype=bool)
            flags[0] = pending_start
            pending_start = False
            ids = np.concatenate([ids, words])
            starts = np.concatenate([starts, flags])
        n_blocks = len(ids) // L
        for b in range(n_blocks):
            if to_skip:
                to_skip -= 1  # handed out before the checkpoint
                continue
            block = {"word_ids": ids[b * L:(b + 1) * L], "sentence_starts": starts[b * L:(b + 1) * L]}
            yield block, _block_cursor(L, doc, piece, buffered, b + 1, was_pending)
        if n_blocks:
            ids, starts = ids[n_blocks * L:], starts[n_blocks * L:]
    if len(ids) and not to_skip:
        # The last, partial block (padded); its cursor points past the last document.
        pad = L - len(ids)
        block = {"word_ids": np.concatenate([ids, np.full(pad, PAD_ID, dtype=np.int64)]),
                 "sentence_starts": np.concatenate([starts, np.ones(pad, dtype=bool)])}
        yield block, _block_cursor(L, max(doc + 1, start_doc), 0, len(ids), 1, True)


class WordBlocks:
    """The block stream of a document stream (iterable, with ``iter_with_cursors`` for ``StatefulLoader``).

    ``expected_words`` (the vocabulary's retained count) gives the number of blocks, ``len(self)``.
    """

    def __init__(self, documents: Iterable[dict], tokenizer, *, block_length: int, unk_id: int,
                 expected_words: int | None = None):
        if block_length < 2:
            raise ConfigError(f"--max_sentence_length must be at least 2, got {block_length}")
        self.documents = documents
        self.tokenizer = tokenizer
        self.block_length = block_length
        self.unk_id = unk_id
        self.expected_words = expected_words

    def __len__(self) -> int:
        if self.expected_words is None:
            raise TypeError("WordBlocks without expected_words has no known length")
        return math.ceil(self.expected_words / self.block_length)

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        for block, _ in self.iter_with_cursors():
            yield block

    def iter_with_cursors(self, cursor: dict | None = None) -> Iterator[tuple[dict[str, np.ndarray], dict]]:
        return _blocks(self.documents, self.tokenizer, self.block_length, self.unk_id, cursor)


def collate_word_blocks(examples: list[dict[str, np.ndarray]]) -> dict[str, Any]:
    """Stack blocks into ``word_ids`` (long, -1 = padding) and ``sentence_starts`` (bool), ``[blocks, length]``."""
    if not examples:
        raise DataError("cannot collate an empty batch")
    word_ids = torch.from_numpy(np.stack([ex["word_ids"] for ex in examples]))
    starts = torch.from_numpy(np.stack([ex["sentence_starts"] for ex in examples]))
    return {"word_ids": word_ids, "sentence_starts": starts, "num_words": int((word_ids >= 0).sum())}


class SizedLoader(StatefulLoader):
    """A ``StatefulLoader`` that knows how many batches an epoch has (the loop then counts epochs)."""

    def __init__(self, dataset: Any, **kwargs: Any) -> None:
        super().__init__(dataset, **kwargs)
        self._examples = len(dataset)

    def __len__(self) -> int:
        group = self.batch_size * self.world_size
        full, tail = divmod(self._examples, group)
        # StatefulLoader keeps a short last group only with drop_last=False and one example per rank.
        return full + int(bool(tail) and not self.drop_last and tail >= self.world_size)




# ------------------------------------------------------------------------------------------ recipe plumbing
VOCABULARY_SUBDIR = "vocabulary"


def resolve_vocabulary(data_args: Any, *, min_count: int, max_vocab_size: int | None, lowercase: bool,
                       output_dir: str, accelerator: Any) -> Vocabulary:
    """The training corpus' vocabulary: counted in one streaming pass by the main process and saved in
    ``output_dir/vocabulary`` (the other ranks load it), or reused from there when a rerun or resume asks for
    the same corpus and settings (so a resumed run trains on exactly the same word ids)."""
    from hfssl.data.corpus import load_documents_from_args
    from hfssl.training.recipe_utils import data_fingerprint

    saved = os.path.join(output_dir, VOCABULARY_SUBDIR)
    recipe = {"min_count": min_count, "max_vocab_size": max_vocab_size, "lowercase": lowercase,
              "min_document_chars": data_args.min_document_chars, "strip_gutenberg": data_args.strip_gutenberg,
              "encoding_errors": data_args.encoding_errors, **data_fingerprint(data_args)}
    recipe_file = os.path.join(saved, "hfssl_vocabulary.json")
    with accelerator.main_process_first():
        if accelerator.is_main_process and _read_json(recipe_file) != recipe:
            documents = load_documents_from_args(data_args, "train")
            vocabulary = build_vocabulary((d["text"] for d in documents), min_count=min_count,
                                          max_vocab_size=max_vocab_size, lowercase=lowercase)
            vocabulary.save(saved)
            with open(recipe_file, "w", encoding="utf-8") as fh:
                json.dump(recipe, fh, indent=1)
        vocabulary = Vocabulary.load(saved)
    return vocabulary


def _read_json(path: str) -> Any:
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except (OSError, ValueError):
        return None


def check_trainable(vocabulary: Vocabulary, window: int) -> None:
    """Refuse a corpus too small for one context window (nothing would train)."""
    if vocabulary.retained_words <= window:
        raise DataError(f"the corpus is smaller than the window: {vocabulary.retained_words} word(s) in the "
                        f"vocabulary ({vocabulary.total_words} in all), and --window {window} needs at least "
                        f"{window + 1}; give more text, or lower --window or --min_count")


def word_block_loader(documents: Iterable[dict], vocabulary: Vocabulary, tokenizer, *, block_length: int,
                      batch_size: int, accelerator: Any, seed: int, shuffle_buffer_size: int = 0,
                      num_workers: int = 0, fingerprint: dict[str, Any] | None = None,
                      expected_words: int | None = None) -> StatefulLoader:
    """A rank-sharded, exactly resumable loader of word blocks; sized when ``expected_words`` is known."""
    blocks = WordBlocks(documents, tokenizer, block_length=block_length, unk_id=vocabulary.unk_id,
                        expected_words=expected_words)
    cls = SizedLoader if expected_words is not None else StatefulLoader
    return cls(blocks, batch_size=batch_size, collate_fn=collate_word_blocks, rank=accelerator.process_index,
               world_size=accelerator.num_processes, seed=seed, shuffle_buffer_size=shuffle_buffer_size,
               num_workers=num_workers, drop_last=False, fingerprint=fingerprint)


__all__ = ["PAD_ID", "UNK_TOKEN", "SizedLoader", "Vocabulary", "WordBlocks", "as_transformers_tokenizer",
           "build_vocabulary", "check_trainable", "collate_word_blocks", "resolve_vocabulary", "split_words",
           "word_block_loader", "word_tokenizer"]
