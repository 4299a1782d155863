"""Train word2vec (skip-gram or CBOW with negative sampling) on a streamed corpus.

    python recipes/word2vec.py --train_file 'corpus/*.txt.gz' --architecture skipgram --vector_size 100 \
        --window 5 --negative 5 --min_count 5 --sample 1e-3 --num_train_epochs 5 --output_dir out/w2v

The vocabulary is counted in one streaming pass over the same readers and cleaning as the other recipes
(local files, globs, gzip, JSONL/Parquet/CSV columns, Hub datasets), with a word-level ``tokenizers``
tokenizer that is saved with the export. Training runs batched through the shared Accelerate loop (mixed
precision, accumulation, checkpoints with exact resume, trackers, several processes). The export holds
``word2vec.txt``/``word2vec.bin`` (``gensim.models.KeyedVectors.load_word2vec_format``) and a
sentence-transformers model (``SentenceTransformer(output_dir)``), and ``results.json`` the WordSim-353 /
SimLex-999 Spearman and Google-analogy accuracy. With no data flags it trains on the built-in corpus.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

# Only light modules before the arguments are parsed: --help and flag errors answer without loading torch.
from hfssl.cli import main_entry, parse_args
from hfssl.config import DataArguments, TrainingArguments, with_defaults


@dataclass
class Word2VecArguments:
    """word2vec's own flags, named and defaulted as gensim.models.Word2Vec."""

    architecture: str = field(default="skipgram", metadata={"help": "skipgram or cbow."})
    vector_size: int = field(default=100, metadata={"help": "Dimension of the word vectors."})
    window: int = field(default=5, metadata={"help": "Maximum distance between a word and its context words "
                                                     "(each word draws its own window in 1..window)."})
    negative: int = field(default=5, metadata={"help": "Negative samples per positive (from unigram^ns_exponent)."})
    ns_exponent: float = field(default=0.75, metadata={"help": "Exponent of the negative-sampling distribution."})
    sample: float = field(default=1e-3, metadata={"help": "Sub-sampling threshold of frequent words; 0 disables."})
    min_count: int = field(default=5, metadata={"help": "Ignore words seen fewer times than this."})
    max_vocab_size: Optional[int] = field(default=None, metadata={
        "help": "Keep at most this many of the most frequent words (after --min_count)."})
    cbow_mean: bool = field(default=True, metadata={"help": "CBOW: mean (true) or sum (false) of the context vectors."})
    lowercase: bool = field(default=True, metadata={"help": "Lowercase the text (the evaluation sets are lowercase)."})
    max_sentence_length: int = field(default=1000, metadata={
        "help": "Words per training block (as word2vec.c's sentences); windows never cross a block or a document."})
    sparse_updates: str = field(default="auto", metadata={
        "help": "auto, true or false. Row-sparse embedding gradients and an AdamW that reads and writes only the "
                "rows a step touches (the same updates as dense AdamW with --adam_beta1 0 and --weight_decay 0): "
                "the step's cost no longer grows with the vocabulary (same speed at 20-40k words, 2.2x faster "
                "steps at 200k). auto: on for one CPU process with those settings and no clipping."})

    def __post_init__(self) -> None:
        if self.architecture not in ("skipgram", "cbow"):
            raise ValueError(f"--architecture must be skipgram or cbow, got {self.architecture!r}")
        for name in ("vector_size", "window", "negative", "min_count"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name} must be at least 1, got {getattr(self, name)}")
        if self.sample < 0:
            raise ValueError(f"--sample must be >= 0 (0 disables sub-sampling), got {self.sample}")
        if self.max_vocab_size is not None and self.max_vocab_size < 1:
            raise ValueError(f"--max_vocab_size must be at least 1, got {self.max_vocab_size}")
        if self.sparse_updates not in ("auto", "true", "false"):
            raise ValueError(f"--sparse_updates must be auto, true or false, got {self.sparse_updates!r}")
        if self.max_sentence_length <= self.window:
            raise ValueError(f"--max_sentence_length ({self.max_sentence_length}) must exceed --window ({self.window})")


@dataclass
class WordEvalArguments:
    wordsim_file: Optional[str] = field(default=None, metadata={
        "help": "WordSim-353 (word1<TAB>word2<TAB>score); default: gensim's test data when gensim is installed."})
    simlex_file: Optional[str] = field(default=None, metadata={"help": "SimLex-999, same format and default."})
    analogy_file: Optional[str] = field(default=None, metadata={
        "help": "Google analogy questions (': section' headers, 'a b c d' lines); same default."})
    analogy_restrict_vocab: int = field(default=300_000, metadata={
        "help": "Analogy answers are searched among this many most frequent words (gensim's default)."})
    probe_words: str = field(default="king,france,water,good,computer,october", metadata={
        "help": "Comma-separated words whose nearest neighbours are printed at the end."})


# The word-level tokenization of the next blocks runs in the loader's background thread (tokenizers release the
# GIL), beside the training step: 95k -> 128k words/s on 2 cores, same batches (measured, load ~4).
Word2VecDataArguments = with_defaults(DataArguments, preprocessing_num_workers=1)

# Defaults as gensim's Word2Vec where they exist: 5 epochs, linear decay to 0, batches of 10,000 words
# (gensim's batch_words). The optimizer is the loop's AdamW, set up for embeddings: no weight decay (it would
# pull every row towards zero at every step), no momentum (beta1 = 0: a row absent from a batch has a zero
# gradient and then does not move at all, as in word2vec's sparse updates; on a CPU --sparse_updates then reads and
# writes only those rows, with the same result), no clipping. Word2vec's plain SGD
# cannot take batches this large (summed updates of frequent words diverge). Learning rate 0.015 measured
# best against gensim on 4.2M words of Wikipedia (0.03: +WordSim/analogy, -SimLex; see the README).
Word2VecTrainingArguments = with_defaults(
    TrainingArguments, num_train_epochs=5.0, per_device_train_batch_size=10, learning_rate=0.015, weight_decay=0.0,
    adam_beta1=0.0, adam_beta2=0.999, lr_scheduler_type="linear", max_grad_norm=0.0, logging_steps=50,
    checkpointing_steps=1000, output_dir="out/word2vec")


def use_sparse_updates(choice: str, args: TrainingArguments, accelerator) -> bool:
    """Whether to train with row-sparse gradients and updates (``--sparse_updates``); ``true`` where they do not
    apply is one clear error."""
    if choice == "false":
        return False
    blockers = []
    if args.adam_beta1 != 0 or args.weight_decay != 0:
        blockers.append("they equal dense AdamW only with --adam_beta1 0 and --weight_decay 0")
    if args.max_grad_norm > 0:
        blockers.append("gradient clipping (--max_grad_norm) needs dense gradients")
    from accelerate.utils import DistributedType

    if accelerator.num_processes > 1 or accelerator.distributed_type != DistributedType.NO:
        blockers.append("they are implemented for one process (several processes sync dense gradients)")
    if args.mixed_precision == "fp16":
        blockers.append("fp16's gradient scaler needs dense gradients")
    if choice == "true" and blockers:
        from hfssl.errors import ConfigError

        raise ConfigError("--sparse_updates true: " + "; ".join(blockers))
    # auto: where they pay, on a CPU (a GPU's dense embedding backward and fused AdamW are already fast).
    return not blockers and (choice == "true" or accelerator.device.type == "cpu")


@main_entry
def main(argv: list[str] | None = None) -> None:
    w2v_args, data_args, args, eval_args = parse_args(
        [Word2VecArguments, Word2VecDataArguments, Word2VecTrainingArguments, WordEvalArguments], argv)
    import json
    import os
    from pathlib import Path

    import torch

    from hfssl.data.corpus import load_documents_from_args
    from hfssl.data.words import (
        as_transformers_tokenizer,
        check_trainable,
        resolve_vocabulary,
        word_block_loader,
    )
    from hfssl.evaluation.word_vectors import (
        evaluate_word_vectors,
        neighbour_lines,
        resolve_eval_files,
        summary_scores,
    )
    from hfssl.logging import get_logger
    from hfssl.models.word2vec import Word2VecConfig, Word2VecModel, check_export_writable, export_hooks
    from hfssl.objectives.word2vec import Word2VecObjective
    from hfssl.training import make_accelerator, train
    from hfssl.training.recipe_utils import data_fingerprint, has_validation

    logger = get_logger("word2vec")
    if not torch.cuda.is_available() and "OMP_NUM_THREADS" not in os.environ:
        # word2vec's CPU ops are small and memory-bound: a second OpenMP thread gains little, and on a machine
        # whose cores are busy the threads spin at every barrier (measured 4.7x slower, same result). One
        # thread unless OMP_NUM_THREADS says otherwise.
        torch.set_num_threads(1)
    accelerator = make_accelerator(args)
    sparse_updates = use_sparse_updates(w2v_args.sparse_updates, args, accelerator)  # before the vocabulary pass
    if accelerator.is_main_process:
        check_export_writable(args.output_dir)
    vocabulary = resolve_vocabulary(data_args, min_count=w2v_args.min_count, max_vocab_size=w2v_args.max_vocab_size,
                                    lowercase=w2v_args.lowercase, output_dir=args.output_dir, accelerator=accelerator)
    check_trainable(vocabulary, w2v_args.window)
    logger.info("vocabulary: %d words seen >= %d times (%d distinct, %d words in %d documents; %d kept)",
                vocabulary.size, w2v_args.min_count, vocabulary.distinct_words, vocabulary.total_words,
                vocabulary.documents, vocabulary.retained_words)
    tokenizer = vocabulary.tokenizer()
    encoder = as_transformers_tokenizer(tokenizer)

    def loader(split: str, **kwargs):
        return word_block_loader(load_documents_from_args(data_args, split), vocabulary, encoder,
                                 block_length=w2v_args.max_sentence_length, accelerator=accelerator, **kwargs)

    train_loader = loader("train", batch_size=args.per_device_train_batch_size, seed=args.seed,
                          shuffle_buffer_size=data_args.shuffle_buffer_size,
                          num_workers=data_args.preprocessing_num_workers,
                          expected_words=vocabulary.retained_words,
                          fingerprint=data_fingerprint(data_args, vocabulary=vocabulary.fingerprint(),
                                                       max_sentence_length=w2v_args.max_sentence_length))
    eval_factory = None
    if has_validation(data_args):
        def eval_factory():
            return loader("validation", batch_size=args.per_device_eval_batch_size, seed=0)

    config = Word2VecConfig(vocab_size=vocabulary.size, vector_size=w2v_args.vector_size,
                            architecture=w2v_args.architecture, window=w2v_args.window, negative=w2v_args.negative,
                            sample=w2v_args.sample, min_count=w2v_args.min_count, ns_exponent=w2v_args.ns_exponent,
                            cbow_mean=w2v_args.cbow_mean, lowercase=w2v_args.lowercase,
                            max_sentence_length=w2v_args.max_sentence_length)
    model = Word2VecModel(config)
    if sparse_updates:
        # The objective's lookups then give row-sparse gradients, and the loop's optimizer is the row-sparse AdamW.
        model.input_embeddings.sparse = model.output_embeddings.sparse = True
        logger.info("row-sparse embedding updates (--sparse_updates %s)", w2v_args.sparse_updates)
    objective = Word2VecObjective(vocabulary.counts, architecture=w2v_args.architecture, window=w2v_args.window,
                                  negative=w2v_args.negative, sample=w2v_args.sample,
                                  ns_exponent=w2v_args.ns_exponent, cbow_mean=w2v_args.cbow_mean)
    eval_files = resolve_eval_files({"wordsim353": eval_args.wordsim_file, "simlex999": eval_args.simlex_file,
                                     "google_analogy": eval_args.analogy_file})
    missing = [name for name, path in eval_files.items() if not path]
    if missing:
        logger.warning("no file for %s (install gensim, whose test data has them, or pass --wordsim_file/"
                       "--simlex_file/--analogy_file): not evaluated", ", ".join(missing))

    def intrinsic(backbone) -> dict[str, float]:  # logged at every evaluation when there is validation text
        scores = evaluate_word_vectors(vocabulary.words, backbone.input_embeddings.weight.detach().float().cpu(),
                                       wordsim_file=eval_files["wordsim353"], simlex_file=eval_files["simlex999"],
                                       analogy_file=eval_files["google_analogy"],
                                       restrict_vocab=eval_args.analogy_restrict_vocab)
        return {k: v for k, v in summary_scores(scores).items() if not k.endswith("oov_ratio") and v == v}

    export_fn, verify_fn = export_hooks(vocabulary.words, tokenizer, config, eval_files=eval_files,
                                        restrict_vocab=eval_args.analogy_restrict_vocab)
    result = train(objective=objective, model=model, train_loader=train_loader, args=args,
                   eval_loader_factory=eval_factory, processing_class=encoder,
                   configs_to_record=(w2v_args, data_args, args, eval_args), accelerator=accelerator,
                   eval_callbacks=[intrinsic] if eval_factory and any(eval_files.values()) else (),
                   export_fn=export_fn, verify_fn=verify_fn)
    if accelerator.is_main_process:
        scores = json.loads(Path(result.export_dir, "results.json").read_text(encoding="utf-8"))["evaluation"]
        # None: no pair or question of that set had all its words in the vocabulary.
        summary = {f"{name} {key}": None if scores[name][key] is None else round(scores[name][key], 4)
                   for name, key in (("wordsim353", "spearman"), ("simlex999", "spearman"),
                                     ("google_analogy", "accuracy")) if name in scores}
        print(f"done: step {result.global_step}, loss {result.metrics.get('train_loss', float('nan')):.4f}, "
              f"{summary}, export in {result.export_dir}")
        vectors = result.model.input_embeddings.weight.detach().float().cpu()
        print("\n".join(neighbour_lines(vocabulary.words, vectors, eval_args.probe_words.split(","))))


if __name__ == "__main__":
    main()
