"""Plumbing shared by the pretraining recipes: defaults, tokenizer, model, data loaders, a sample.

Each helper does one step of "config -> library calls" so that a recipe stays a short script.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from typing import Any

import datasets
import torch
from accelerate import Accelerator
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from hfssl.config import DataArguments, ModelArguments, TrainingArguments, with_defaults  # noqa: F401 (re-export)
from hfssl.errors import ConfigError, DataError, HfsslError
from hfssl.logging import get_logger
from hfssl.models.export import pad_vocab
from hfssl.models.presets import build_config
from hfssl.pretrained import check_pretrained_source

logger = get_logger(__name__)

TOKENIZER_SUBDIR = "tokenizer"


def resolve_tokenizer(model_args: ModelArguments, data_args: DataArguments, output_dir: str,
                      accelerator: Accelerator, *, tokenizer_type: str = "bpe",
                      max_documents: int | None = 20000) -> PreTrainedTokenizerBase:
    """``--tokenizer_name``, else the checkpoint's tokenizer, else one trained on the training corpus.

    A trained tokenizer is saved in ``output_dir/tokenizer`` by the main process (the other ranks
    load it) and reused by reruns with the same settings, so a resumed run tokenizes identically.
    """
    source = model_args.tokenizer_name or model_args.model_name_or_path
    if source:
        flag = "--tokenizer_name" if model_args.tokenizer_name else "--model_name_or_path"
        source = check_pretrained_source(source, flag)
        try:
            return AutoTokenizer.from_pretrained(source)
        except (OSError, ValueError) as exc:
            raise HfsslError(f"cannot load a tokenizer from {source!r}: {str(exc).splitlines()[0]}") from None
    saved = os.path.join(output_dir, TOKENIZER_SUBDIR)
    # What the tokenizer was trained with: a rerun with other settings retrains instead of reusing it.
    recipe = {"tokenizer_type": tokenizer_type, "vocab_size": model_args.vocab_size, "max_documents": max_documents,
              "train_file": data_args.train_file, "dataset_name": data_args.dataset_name,
              "dataset_config_name": data_args.dataset_config_name, "text_column": data_args.text_column,
              **holdout_fields(data_args)}
    recipe_file = os.path.join(saved, "hfssl_tokenizer_training.json")
    files: dict[str, bytes] | None = None
    if accelerator.is_main_process:
        if _read_json(recipe_file) != recipe:
            from hfssl.data.corpus import load_documents_from_args
            from hfssl.data.tokenizer_training import train_tokenizer

            docs = load_documents_from_args(data_args, "train")  # checks the files before saying anything
            logger.info("no --tokenizer_name: training a %s tokenizer (vocab %d) on the corpus",
                        tokenizer_type, model_args.vocab_size)
            if max_documents:
                docs = docs.take(max_documents)
            tokenizer = train_tokenizer((d["text"] for d in docs), tokenizer_type=tokenizer_type,
                                        vocab_size=model_args.vocab_size, model_max_length=data_args.max_seq_length)
            tokenizer.save_pretrained(saved)
            with open(recipe_file, "w", encoding="utf-8") as fh:
                json.dump(recipe, fh)
        files = {name: open(os.path.join(saved, name), "rb").read() for name in sorted(os.listdir(saved))
                 if os.path.isfile(os.path.join(saved, name))}
    if accelerator.num_processes > 1:
        # The files themselves go to every rank: nodes without a shared filesystem get the same tokenizer
        # (training one per node would not do: tokenizers orders tied merges differently in each process).
        from accelerate.utils import broadcast_object_list

        files = broadcast_object_list([files])[0]
        if accelerator.is_local_main_process and not accelerator.is_main_process:
            _write_if_changed(saved, files)
        accelerator.wait_for_everyone()
    return AutoTokenizer.from_pretrained(saved)


def _write_if_changed(folder: str, files: dict[str, bytes]) -> None:
    os.makedirs(folder, exist_ok=True)
    for name, content in files.items():
        path = os.path.join(folder, name)
        try:
            with open(path, "rb") as fh:
                if fh.read() == content:
                    continue
        except OSError:
            pass
        with open(path, "wb") as fh:
            fh.write(content)


def _read_json(path: str) -> Any:
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except (OSError, ValueError):
        return None


def build_model(model_args: ModelArguments, tokenizer: PreTrainedTokenizerBase, *, max_seq_length: int,
                default_model_type: str, auto_class: Any = AutoModelForCausalLM,
                config_kwargs: dict[str, Any] | None = None) -> PreTrainedModel:
    """A stock model: ``--model_name_or_path`` to continue pretraining, else a size preset from scratch.

    ``config_kwargs`` are further config fields of a model built from scratch (e.g. an encoder-decoder's
    ``decoder_start_token_id``, which the tokenizer decides).

    With ``--pad_vocab_size_to_multiple_of`` the embedding/LM head are padded for training
    (``hfssl.models.export.pad_vocab``); the export still has the true vocabulary.
    """
    if model_args.model_name_or_path:
        try:
            model = auto_class.from_pretrained(check_pretrained_source(model_args.model_name_or_path,
                                                                       "--model_name_or_path"))
        except (OSError, ValueError) as exc:
            raise HfsslError(f"cannot load --model_name_or_path {model_args.model_name_or_path!r}: "
                             f"{str(exc).splitlines()[0]}") from None
    else:
        special = {name: getattr(tokenizer, f"{name}_id", None) for name in ("bos_token", "eos_token", "pad_token")}
        config = build_config(model_args.model_type or default_model_type, model_args.model_size,
                              vocab_size=len(tokenizer), max_position_embeddings=max_seq_length,
                              config_overrides=model_args.config_overrides,
                              **{f"{k}_id": v for k, v in special.items() if v is not None},
                              **(config_kwargs or {}))
        try:
            model = auto_class.from_config(config)
        except ValueError:  # a preset of another family, e.g. --model_type t5 for a causal LM
            raise ConfigError(f"--model_type {config.model_type} cannot be trained by this recipe (it needs a model "
                              f"for {auto_class.__name__}); choose another --model_type") from None
    if len(tokenizer) > model.config.vocab_size:
        raise ConfigError(f"the tokenizer has {len(tokenizer)} tokens but the model's vocabulary only "
                          f"{model.config.vocab_size}; use the tokenizer the model was trained with")
    limit = getattr(model.config, "max_position_embeddings", None) or getattr(model.config, "n_positions", None)
    if limit is not None and max_seq_length > limit:
        raise ConfigError(f"--max_seq_length {max_seq_length} exceeds the model's {limit} positions")
    multiple = model_args.pad_vocab_size_to_multiple_of
    if multiple and multiple > 1:
        # Only the causal-LM objective masks padded logits; any other loss would train on them.
        if auto_class is not AutoModelForCausalLM:
            raise ConfigError("--pad_vocab_size_to_multiple_of is supported for causal LMs (recipes/gpt_clm.py) only")
        vocab = model.config.vocab_size
        padded = pad_vocab(model, multiple)
        if padded != vocab:
            logger.info("training with the vocabulary padded from %d to %d rows (the export keeps %d)",
                        vocab, padded, vocab)
    n_params = sum(getattr(p, "ds_numel", p.numel()) for p in model.parameters())  # ZeRO-3: full size
    logger.info("model %s: %.1fM parameters", type(model).__name__, n_params / 1e6)
    return model


def make_loader(dataset: Iterable[dict], *, batch_size: int, collate_fn: Callable, accelerator: Accelerator,
                seed: int, shuffle_buffer_size: int = 0, num_workers: int = 0, drop_last: bool = True,
                fingerprint: dict[str, Any] | None = None) -> Any:
    """A rank-sharded, exactly resumable ``StatefulLoader`` (never pass it to ``accelerator.prepare``)."""
    from hfssl.data.loader import StatefulLoader

    return StatefulLoader(dataset, batch_size=batch_size, collate_fn=collate_fn, rank=accelerator.process_index,
                          world_size=accelerator.num_processes, seed=seed, shuffle_buffer_size=shuffle_buffer_size,
                          num_workers=num_workers, drop_last=drop_last, fingerprint=fingerprint)


def tokenizer_fingerprint(tokenizer: PreTrainedTokenizerBase) -> str:
    """A short hash of what a tokenizer maps text to: its vocabulary and special tokens."""
    import hashlib

    content = {"vocab": sorted(tokenizer.get_vocab().items()), "special": tokenizer.all_special_tokens,
               "class": type(tokenizer).__name__}
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()[:16]


def data_fingerprint(data_args: Any, **extra: Any) -> dict[str, Any]:
    """What a training stream is made of, for the resume check of ``StatefulLoader``.

    Training files as (path, size) once globs are expanded (an edited or swapped file changes it), the
    Hub dataset, the flags that cut or select the stream, and ``extra`` (tokenizer hash, lengths...).
    """
    fields = ("dataset_name", "dataset_config_name", "text_column", "max_train_samples", "train_dir",
              "image_column_name", "validation_split_images")
    fingerprint: dict[str, Any] = {k: getattr(data_args, k) for k in fields if getattr(data_args, k, None) is not None}
    if isinstance(data_args, DataArguments):
        fingerprint.update(holdout_fields(data_args))
    if getattr(data_args, "train_file", None):
        from hfssl.data.corpus import expand_files

        fingerprint["train_file"] = [[os.path.abspath(p), os.path.getsize(p)] for p in expand_files(data_args.train_file)]
    if fingerprint.get("train_dir"):
        fingerprint["train_dir"] = os.path.abspath(fingerprint["train_dir"])
    fingerprint.update(extra)
    return fingerprint


def holdout_fields(data_args: DataArguments) -> dict[str, int]:
    """The hold-out flag that shapes the training stream (what a resume and a reused tokenizer must match)."""
    from hfssl.data.corpus import validation_holdout

    kind, amount = validation_holdout(data_args) or ("none", 0)
    # Same keys as before the percentage existed, so checkpoints and tokenizers from then still match.
    fields = {"validation_split_documents": amount if kind == "documents" else 0}
    if kind == "percentage":
        fields["validation_split_percentage"] = amount
    return fields


def has_validation(data_args: DataArguments) -> bool:
    from hfssl.data.corpus import validation_holdout

    return validation_holdout(data_args) is not None


def validation_loader_factory(data_args: DataArguments, to_examples: Callable[[datasets.IterableDataset], Any], *,
                              batch_size: int, collate_fn: Callable, accelerator: Accelerator,
                              ) -> Callable[[], Iterable[dict]] | None:
    """A factory of fresh validation loaders (same batches every call), or None without validation data."""
    if not has_validation(data_args):
        return None
    from hfssl.data.corpus import describe_holdout, load_documents_from_args, validation_holdout

    source = describe_holdout(validation_holdout(data_args))
    load_documents_from_args(data_args, "validation")  # a missing --validation_file fails now, not after training

    def factory() -> Iterable[dict]:
        examples = to_examples(load_documents_from_args(data_args, "validation"))
        return _NamedErrors(make_loader(examples, batch_size=batch_size, collate_fn=collate_fn,
                                        accelerator=accelerator, seed=0, drop_last=False),
                            f"while reading the validation data ({source})")

    return factory


class _NamedErrors:
    """Iterates ``loader``, prefixing its data errors with what it is, since the packers and pair makers
    that raise them cannot tell a training stream from a validation one."""

    def __init__(self, loader: Any, name: str) -> None:
        self.loader = loader
        self.name = name

    def __iter__(self) -> Any:
        try:
            yield from self.loader
        except DataError as exc:
            raise DataError(f"{self.name}: {exc}") from None


def build_loaders(data_args: DataArguments, args: TrainingArguments,
                  to_examples: Callable[[datasets.IterableDataset], Any], *, collate_fn: Callable,
                  accelerator: Accelerator, tokenizer: PreTrainedTokenizerBase | None = None,
                  ) -> tuple[Any, Callable[[], Iterable[dict]] | None]:
    """The training loader and the validation factory every pretraining recipe needs, from the same
    documents-to-examples function (packing, sentence pairs...). With ``tokenizer`` the loader's state
    records the data, tokenizer and length it was built from, and a resume on other ones is refused."""
    from hfssl.data.corpus import load_documents_from_args

    train_loader = make_loader(to_examples(load_documents_from_args(data_args, "train")),
                               batch_size=args.per_device_train_batch_size, collate_fn=collate_fn,
                               accelerator=accelerator, seed=args.seed,
                               shuffle_buffer_size=data_args.shuffle_buffer_size,
                               num_workers=data_args.preprocessing_num_workers,
                               fingerprint=data_fingerprint(data_args, max_seq_length=data_args.max_seq_length,
                                                            tokenizer=tokenizer_fingerprint(tokenizer))
                               if tokenizer is not None else None)
    eval_factory = validation_loader_factory(data_args, to_examples, batch_size=args.per_device_eval_batch_size,
                                             collate_fn=collate_fn, accelerator=accelerator)
    return train_loader, eval_factory


def build_image_loaders(data_args: Any, args: TrainingArguments, *, image_size: int, accelerator: Accelerator
                        ) -> tuple[Any, Callable[[], Iterable[dict]] | None]:
    """The training loader and validation factory of the vision recipes (``ImageDataArguments``).

    Images are decoded and resized in the data stream (``preprocessing_num_workers`` threads) and
    batched as uint8; every random augmentation happens later, on the device, inside the objective.
    A validation factory exists when there are validation images (``--validation_dir``,
    ``--validation_split_images``, the Hub dataset's validation split or the built-in set's).
    """
    from hfssl.data.images import (
        DecodedImageCache,
        ImageExamples,
        collate_images,
        has_validation_images,
        load_image_dataset_from_args,
    )

    # One cache for both splits: the validation loaders are rebuilt at every evaluation.
    cache = DecodedImageCache(data_args.image_cache_mb * 2**20)

    def examples(split: str) -> ImageExamples:
        # Folders list class after class: stream the training files in a seeded random order.
        return ImageExamples(load_image_dataset_from_args(data_args, split, file_order_seed=args.seed), image_size,
                             image_column_name=data_args.image_column_name,
                             label_column_name=data_args.label_column_name,
                             num_workers=data_args.preprocessing_num_workers, cache=cache)

    # With decoding threads, a background batch thread keeps a batch or two ready while the step runs.
    prefetch = min(2, data_args.preprocessing_num_workers)
    train_loader = make_loader(examples("train"), batch_size=args.per_device_train_batch_size,
                               collate_fn=collate_images, accelerator=accelerator, seed=args.seed,
                               shuffle_buffer_size=data_args.shuffle_buffer_size, num_workers=prefetch,
                               fingerprint=data_fingerprint(data_args, image_size=image_size))
    if not has_validation_images(data_args):
        return train_loader, None

    def factory() -> Iterable[dict]:
        return make_loader(examples("validation"), batch_size=args.per_device_eval_batch_size,
                           collate_fn=collate_images, accelerator=accelerator, seed=0, drop_last=False)

    return train_loader, factory


def generate_sample(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompt: str = "The",
                    max_new_tokens: int = 40, seed: int = 0) -> str:
    """A short sampled continuation of ``prompt`` (top-k), to eyeball what the model learned."""
    model.eval()
    device = next(model.parameters()).device
    inputs = tokenizer(prompt, return_tensors="pt").to(device)
    inputs.pop("token_type_ids", None)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    limit = getattr(model.config, "max_position_embeddings", None) or getattr(model.config, "n_positions", None)
    if limit:  # never run past the learned positions
        max_new_tokens = max(0, min(max_new_tokens, limit - inputs["input_ids"].shape[1]))
    torch.manual_seed(seed)
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=True, top_k=40, temperature=0.8,
                             pad_token_id=pad_id)
    return tokenizer.decode(out[0], skip_special_tokens=True)


__all__ = ["build_image_loaders", "build_model", "data_fingerprint", "tokenizer_fingerprint", "generate_sample", "has_validation", "make_loader",
           "resolve_tokenizer", "validation_loader_factory", "with_defaults"]
