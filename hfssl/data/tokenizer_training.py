"""Train a tokenizer from a stream of texts with the ``tokenizers`` library.

Five families, each wrapped as a ``transformers.PreTrainedTokenizerFast`` that round-trips through
``save_pretrained`` / ``AutoTokenizer.from_pretrained``:

* ``bpe``: byte-level BPE as GPT-2 (no unknown tokens, exact round trip of any text when not lowercased);
  ``<|endoftext|>`` is bos/eos/unk, ``<|pad|>`` pads.
* ``wordpiece``: BERT style (``[PAD] [UNK] [CLS] [SEP] [MASK]``, ``[CLS] A [SEP] B [SEP]`` with token_type_ids).
* ``unigram``: SentencePiece style (NFKC, Metaspace ``▁``), ``<pad> <unk> <s> </s> <mask>``, ``<s> A </s>``.
* ``bart``: byte-level BPE with BART's ``<s> <pad> </s> <unk> <mask>`` (``<s> A </s>``, pairs ``<s> A </s></s> B </s>``);
  ``<mask>`` swallows the space before it, so ``"The <mask> of"`` encodes as a masked span does in training.
* ``t5``: Unigram as T5 (``<pad>`` 0, ``</s>`` 1, ``<unk>`` 2, ``A </s>``) plus ``extra_ids`` sentinels
  ``<extra_id_0>``... at the end of the vocabulary, ``<extra_id_0>`` last, as T5's own vocabulary.

The texts are consumed as a stream in batches; the corpus is never held in memory.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from tokenizers import (
    AddedToken,
    Tokenizer,
    decoders,
    models,
    normalizers,
    pre_tokenizers,
    processors,
    trainers,
)

from hfssl.errors import ConfigError, DataError

if TYPE_CHECKING:  # pragma: no cover
    from transformers import PreTrainedTokenizerFast

TOKENIZER_TYPES = ("bpe", "wordpiece", "unigram", "bart", "t5")
#: T5's number of sentinel tokens (``T5Tokenizer(extra_ids=100)``).
DEFAULT_EXTRA_IDS = 100
_BYTE_ALPHABET = len(pre_tokenizers.ByteLevel.alphabet())  # 256


@dataclass(frozen=True)
class _Specials:
    tokens: tuple[str, ...]
    roles: dict  # transformers attribute name -> token


_SPECIALS = {
    "bpe": _Specials(
        ("<|endoftext|>", "<|pad|>"),
        {
            "bos_token": "<|endoftext|>",
            "eos_token": "<|endoftext|>",
            "unk_token": "<|endoftext|>",
            "pad_token": "<|pad|>",
        },
    ),
    "wordpiece": _Specials(
        ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"),
        {
            "pad_token": "[PAD]",
            "unk_token": "[UNK]",
            "cls_token": "[CLS]",
            "sep_token": "[SEP]",
            "mask_token": "[MASK]",
        },
    ),
    "unigram": _Specials(
        ("<pad>", "<unk>", "<s>", "</s>", "<mask>"),
        {
            "pad_token": "<pad>",
            "unk_token": "<unk>",
            "bos_token": "<s>",
            "eos_token": "</s>",
            "mask_token": "<mask>",
        },
    ),
    # BART's order and roles (facebook/bart-base: <s> 0, <pad> 1, </s> 2, <unk> 3); <mask> right after them.
    "bart": _Specials(
        ("<s>", "<pad>", "</s>", "<unk>", "<mask>"),
        {
            "bos_token": "<s>",
            "eos_token": "</s>",
            "sep_token": "</s>",
            "cls_token": "<s>",
            "unk_token": "<unk>",
            "pad_token": "<pad>",
            "mask_token": "<mask>",
        },
    ),
    # T5's ids: <pad> 0 (also the decoder start), </s> 1, <unk> 2; the sentinels are added after training.
    "t5": _Specials(("<pad>", "</s>", "<unk>"), {"pad_token": "<pad>", "eos_token": "</s>", "unk_token": "<unk>"}),
}


def sentinel_tokens(extra_ids: int) -> list[str]:
    """T5's sentinel tokens ``<extra_id_0>`` ... ``<extra_id_{extra_ids - 1}>``, in span order."""
    return [f"<extra_id_{i}>" for i in range(extra_ids)]


def min_vocab_size(tokenizer_type: str, extra_ids: int = DEFAULT_EXTRA_IDS) -> int:
    """Smallest vocab_size that holds the special tokens (and, for byte-level BPE, all 256 bytes)."""
    specials = len(_SPECIALS[tokenizer_type].tokens)
    if tokenizer_type in ("bpe", "bart"):
        return specials + _BYTE_ALPHABET
    if tokenizer_type == "t5":
        return specials + extra_ids + 1
    return specials + 1


def _build(tokenizer_type: str, vocab_size: int, min_frequency: int, lowercase: bool):
    specials = list(_SPECIALS[tokenizer_type].tokens)
    if tokenizer_type in ("bpe", "bart"):
        tok = Tokenizer(models.BPE())
        if lowercase:
            tok.normalizer = normalizers.Lowercase()
        # No other normalizer: byte-level BPE must reproduce the input text exactly.
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            min_frequency=min_frequency,
            special_tokens=specials,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
    elif tokenizer_type == "wordpiece":
        tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
        tok.normalizer = normalizers.BertNormalizer(
            clean_text=True, handle_chinese_chars=True, strip_accents=lowercase, lowercase=lowercase
        )
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tok.decoder = decoders.WordPiece(prefix="##")
        trainer = trainers.WordPieceTrainer(
            vocab_size=vocab_size,
            min_frequency=min_frequency,
            special_tokens=specials,
            continuing_subword_prefix="##",
            show_progress=False,
        )
    else:
        steps = [normalizers.NFKC()] + ([normalizers.Lowercase()] if lowercase else [])
        tok = Tokenizer(models.Unigram())
        tok.normalizer = normalizers.Sequence(steps)
        tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
        tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
        # Unigram has no min_frequency; it prunes by likelihood down to vocab_size.
        trainer = trainers.UnigramTrainer(
            vocab_size=vocab_size, special_tokens=specials, unk_token="<unk>", show_progress=False
        )
    return tok, trainer


def _add_denoising_tokens(tokenizer_type: str, tok: Tokenizer, extra_ids: int) -> list[str]:
    """BART's ``<mask>`` and T5's sentinels strip the space before them (as in their original tokenizers):
    a span masked in training starts at a token that carries its own leading space, so ``"a <mask> b"``
    must not leave a lone space token in front of the mask. Returns T5's sentinel tokens."""
    if tokenizer_type == "bart":
        tok.add_special_tokens([AddedToken("<mask>", lstrip=True, special=True, normalized=False)])
        return []
    if tokenizer_type == "t5":
        sentinels = sentinel_tokens(extra_ids)
        # Appended in reverse, so <extra_id_0> gets the last id as in T5's vocabulary.
        tok.add_special_tokens([AddedToken(t, lstrip=True, special=True, normalized=False)
                                for t in reversed(sentinels)])
        return sentinels
    return []


def _post_processor(tokenizer_type: str, tok: Tokenizer):
    if tokenizer_type == "wordpiece":
        cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
        return processors.TemplateProcessing(
            single="[CLS] $A [SEP]",
            pair="[CLS] $A [SEP] $B:1 [SEP]:1",
            special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
        )
    if tokenizer_type == "unigram":
        bos, eos = tok.token_to_id("<s>"), tok.token_to_id("</s>")
        return processors.TemplateProcessing(
            single="<s> $A </s>", pair="<s> $A </s> $B:1 </s>:1", special_tokens=[("<s>", bos), ("</s>", eos)]
        )
    if tokenizer_type == "bart":  # RoBERTa/BART layout: <s> A </s></s> B </s>
        bos, eos = tok.token_to_id("<s>"), tok.token_to_id("</s>")
        return processors.TemplateProcessing(
            single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>", special_tokens=[("<s>", bos), ("</s>", eos)]
        )
    if tokenizer_type == "t5":  # T5 appends </s> and adds no start token
        eos = tok.token_to_id("</s>")
        return processors.TemplateProcessing(single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", eos)])
    return tok.post_processor


def _batches(texts: Iterable[str], counter: list[int], batch_size: int = 256) -> Iterator[list[str]]:
    batch: list[str] = []
    for text in texts:
        if not isinstance(text, str):
            raise DataError(f"tokenizer training expects strings, got {type(text).__name__}")
        if text:
            counter[0] += 1
            batch.append(text)
            if len(batch) == batch_size:
                yield batch
                batch = []
    if batch:
        yield batch


def train_tokenizer(
    texts: Iterable[str],
    *,
    tokenizer_type: str = "bpe",
    vocab_size: int = 8000,
    min_frequency: int = 2,
    lowercase: bool = False,
    model_max_length: int = 1024,
    extra_ids: int = DEFAULT_EXTRA_IDS,
) -> PreTrainedTokenizerFast:
    """Train a ``bpe`` / ``wordpiece`` / ``unigram`` / ``bart`` / ``t5`` tokenizer on ``texts`` (any iterable,
    consumed once). ``extra_ids``: the number of T5 sentinels, counted in ``vocab_size``."""
    if tokenizer_type not in TOKENIZER_TYPES:
        raise ConfigError(
            f"tokenizer_type must be one of {', '.join(TOKENIZER_TYPES)}, got {tokenizer_type!r}"
        )
    if tokenizer_type == "t5" and extra_ids < 1:
        raise ConfigError(f"a t5 tokenizer needs sentinel tokens: --extra_ids must be at least 1, got {extra_ids}")
    needed = min_vocab_size(tokenizer_type, extra_ids)
    if vocab_size < needed:
        what = {"bpe": " + 256 bytes", "bart": " + 256 bytes", "t5": f" + {extra_ids} sentinels"}
        raise DataError(
            f"vocab_size {vocab_size} is too small for a {tokenizer_type} tokenizer: it needs at least {needed} "
            f"(special tokens{what.get(tokenizer_type, '')}); pass a larger --vocab_size"
        )
    if min_frequency < 1:
        raise ConfigError(f"min_frequency must be >= 1, got {min_frequency}")

    # T5's sentinels are added after training, on top of the trained vocabulary.
    trained_size = vocab_size - extra_ids if tokenizer_type == "t5" else vocab_size
    tok, trainer = _build(tokenizer_type, trained_size, min_frequency, lowercase)
    counter = [0]
    try:
        tok.train_from_iterator(_batches(texts, counter), trainer=trainer)
    except Exception as exc:
        # Our own DataErrors raised inside the iterator come back wrapped by the Rust side.
        cause = exc.__context__ if isinstance(exc.__context__, DataError) else None
        if isinstance(exc, DataError) or cause is not None:
            raise (cause or exc) from None
        raise DataError(
            f"tokenizer training failed: {str(exc).splitlines()[0] if str(exc) else exc!r}"
        ) from None
    if counter[0] == 0:
        raise DataError("no text to train the tokenizer on: the corpus yielded no non-empty document")
    tok.post_processor = _post_processor(tokenizer_type, tok)
    sentinels = _add_denoising_tokens(tokenizer_type, tok, extra_ids)

    specials = _SPECIALS[tokenizer_type]
    input_names = ["input_ids", "token_type_ids", "attention_mask"]
    if tokenizer_type != "wordpiece":
        input_names = ["input_ids", "attention_mask"]  # GPT-2/Llama-style models take no token types
    from transformers import PreTrainedTokenizerFast  # imported here: TOKENIZER_TYPES serves --help

    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        model_max_length=model_max_length,
        model_input_names=input_names,
        clean_up_tokenization_spaces=False,
        **specials.roles,
        **({"additional_special_tokens": sentinels} if sentinels else {}),
    )
    return fast
