"""Train a tokenizer (byte-level BPE, WordPiece or Unigram) on a streamed corpus and save it.

    python recipes/train_tokenizer.py --train_file 'corpus/*.txt.gz' --tokenizer_type bpe \
        --vocab_size 16000 --output_dir tok-bpe
    python recipes/train_tokenizer.py --tokenizer_type t5 --extra_ids 100 --output_dir tok-t5   # BART: bart
    python recipes/train_tokenizer.py --output_dir tok   # built-in corpus (stdlib docstrings)

The result loads with ``AutoTokenizer.from_pretrained(output_dir)``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Optional

# Only light modules before the arguments are parsed: --help and flag errors answer at once.
from hfssl.cli import main_entry, parse_args
from hfssl.config import check_output_dir
from hfssl.data.tokenizer_training import DEFAULT_EXTRA_IDS, TOKENIZER_TYPES
from hfssl.logging import get_logger

logger = get_logger("train_tokenizer")


@dataclass
class TokenizerTrainingArguments:
    output_dir: str = field(metadata={"help": "Where the tokenizer is saved (save_pretrained)."})
    dataset_name: Optional[str] = field(default=None, metadata={"help": "Hub dataset id."})
    dataset_config_name: Optional[str] = field(default=None, metadata={"help": "Hub dataset config."})
    dataset_split: str = field(default="train", metadata={"help": "Hub dataset split."})
    train_file: Optional[list[str]] = field(
        default=None,
        metadata={
            "help": "Files or globs (.txt, .jsonl/.json, .parquet, .csv, optionally .gz); none: built-in corpus."
        },
    )
    text_column: str = field(
        default="text", metadata={"help": "Column holding the text (jsonl/csv/parquet/Hub)."}
    )
    tokenizer_type: str = field(default="bpe", metadata={
        "help": f"One of {', '.join(TOKENIZER_TYPES)} (bart: byte-level BPE with <mask>; t5: Unigram with "
                "<extra_id_N> sentinels)."})
    extra_ids: int = field(default=DEFAULT_EXTRA_IDS, metadata={
        "help": "t5 only: sentinel tokens <extra_id_0>... for span corruption, counted in --vocab_size."})
    vocab_size: int = field(default=8000, metadata={"help": "Vocabulary size, special tokens included."})
    min_frequency: int = field(default=2, metadata={"help": "Minimum pair/word frequency (bpe, wordpiece)."})
    lowercase: bool = field(
        default=False, metadata={"help": "Lowercase the text (wordpiece also strips accents)."}
    )
    model_max_length: int = field(default=1024, metadata={"help": "The tokenizer's model_max_length."})
    encoding_errors: str = field(
        default="strict", metadata={"help": "strict (fail on non-UTF-8) or replace."}
    )
    min_document_chars: int = field(default=1, metadata={"help": "Drop documents shorter than this."})
    strip_gutenberg: bool = field(
        default=True, metadata={"help": "Strip Project Gutenberg licence headers and footers."}
    )
    max_train_samples: Optional[int] = field(
        default=None, metadata={"help": "Use at most this many documents."}
    )

    def __post_init__(self) -> None:
        check_output_dir(self.output_dir)
        if self.tokenizer_type not in TOKENIZER_TYPES:
            raise ValueError(f"--tokenizer_type must be one of {', '.join(TOKENIZER_TYPES)}")
        if self.encoding_errors not in ("strict", "replace"):
            raise ValueError("--encoding_errors must be strict or replace")
        if self.dataset_name and self.train_file:
            raise ValueError("give either --dataset_name or --train_file, not both")
        if self.extra_ids < 1:
            raise ValueError(f"--extra_ids must be at least 1, got {self.extra_ids}")
        if self.vocab_size < 1 or self.min_frequency < 1:
            raise ValueError("--vocab_size and --min_frequency must be positive")


@main_entry
def main(argv: list[str] | None = None) -> None:
    (args,) = parse_args([TokenizerTrainingArguments], argv)
    import os

    from hfssl.data.corpus import builtin_corpus_files, load_documents
    from hfssl.data.tokenizer_training import train_tokenizer
    from hfssl.logging import progress_bar, setup_logging
    from hfssl.run_info import write_run_info

    setup_logging()
    # No data arguments: the built-in corpus (stdlib docstrings), so the recipe always has something to run on.
    files = None if args.dataset_name else list(args.train_file or builtin_corpus_files())
    source = args.dataset_name or files
    documents = load_documents(
        train_file=files,
        dataset_name=args.dataset_name,
        dataset_config_name=args.dataset_config_name,
        split=args.dataset_split,
        text_column=args.text_column,
        encoding_errors=args.encoding_errors,
        min_document_chars=args.min_document_chars,
        strip_gutenberg=args.strip_gutenberg,
    )
    if args.max_train_samples is not None:
        documents = documents.take(args.max_train_samples)
    stats = {"documents": 0, "chars": 0}

    def texts():
        # The progress bar counts documents; the total is unknown for a stream.
        for example in progress_bar(documents, desc="training tokenizer", unit=" docs", mininterval=2.0):
            stats["documents"] += 1
            stats["chars"] += len(example["text"])
            yield example["text"]

    logger.info("training a %s tokenizer (vocab %d) on %s", args.tokenizer_type, args.vocab_size, source)
    start = time.perf_counter()
    tokenizer = train_tokenizer(
        texts(),
        tokenizer_type=args.tokenizer_type,
        vocab_size=args.vocab_size,
        min_frequency=args.min_frequency,
        lowercase=args.lowercase,
        model_max_length=args.model_max_length,
        extra_ids=args.extra_ids,
    )
    elapsed = time.perf_counter() - start
    os.makedirs(args.output_dir, exist_ok=True)
    tokenizer.save_pretrained(args.output_dir)
    write_run_info(args.output_dir, args)
    sample = "The quick brown fox jumps over the lazy dog."
    logger.info(
        "trained on %d document%s (%.1f MB of text) in %.1f s: vocab %d, saved to %s",
        stats["documents"],
        "" if stats["documents"] == 1 else "s",
        stats["chars"] / 1e6,
        elapsed,
        len(tokenizer),
        args.output_dir,
    )
    logger.info("sample: %s", tokenizer.tokenize(sample))


if __name__ == "__main__":
    main()
