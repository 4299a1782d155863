"""A compact Accelerate fine-tuning loop for sequence classification on small labelled sets.

Pretraining streams an endless corpus with checkpoints and exact resume; fine-tuning a GLUE task
is a few epochs over a map-style dataset, so this loop is deliberately small: AdamW (no decay on
biases and norms), a warmup + decay schedule, clipping, a progress bar, and evaluation at the end.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import datasets
import numpy as np
import torch
from accelerate import Accelerator
from torch.utils.data import DataLoader
from transformers import (
    AutoConfig,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    DataCollatorWithPadding,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    get_scheduler,
)
from transformers.utils import logging as hf_logging

from hfssl.errors import ConfigError
from hfssl.evaluation.glue import GlueTask
from hfssl.logging import get_logger, progress_bar
from hfssl.training import engines

logger = get_logger(__name__)

# Classification heads of the transformers *ForSequenceClassification classes, by attribute name.
HEAD_ATTRIBUTES = ("classifier", "score", "classification_head")


def load_tokenizer(model_name_or_path: str, tokenizer_name: str | None = None) -> PreTrainedTokenizerBase:
    """The tokenizer, with a padding token: batches of different lengths are padded.

    A GPT-2-style tokenizer without one pads with its end-of-text token, as transformers' examples do
    (the classifier then reads the last token that is not padding).
    """
    source = tokenizer_name or model_name_or_path
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"could not load a tokenizer from {source!r} ({str(exc).splitlines()[0][:160]}); "
                          "pass --tokenizer_name") from None
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ConfigError(f"the tokenizer from {source!r} has neither a padding nor an end-of-text token to "
                              "pad batches with; pass a --tokenizer_name that has one")
        logger.info("the tokenizer has no padding token: padding with its end-of-text token %r", tokenizer.eos_token)
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def build_model(model_name_or_path: str, task: GlueTask, init: str = "pretrained",
                pad_token_id: int | None = None) -> PreTrainedModel:
    """``AutoModelForSequenceClassification`` for ``task`` from a checkpoint, or randomly initialised.

    ``init="random"`` builds the same architecture from the checkpoint's config with fresh weights:
    the no-pretraining baseline. Call ``accelerate.utils.set_seed`` first for a reproducible head.
    ``pad_token_id`` (the tokenizer's) fills a config without one: decoder classifiers (GPT-2) need it to
    find each row's last real token in a padded batch.
    """
    labels = {}
    if task.label_names is not None:
        labels = {"id2label": dict(enumerate(task.label_names)),
                  "label2id": {n: i for i, n in enumerate(task.label_names)}}
    problem = "regression" if task.is_regression else "single_label_classification"
    try:
        config = AutoConfig.from_pretrained(model_name_or_path, num_labels=task.num_labels, problem_type=problem,
                                            **labels)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"--model_name_or_path {model_name_or_path!r} is not a model directory or a reachable "
                          f"Hub model ({str(exc).splitlines()[0][:160]})") from None
    if getattr(config, "pad_token_id", None) is None and pad_token_id is not None:
        config.pad_token_id = pad_token_id
    if init == "random":
        return AutoModelForSequenceClassification.from_config(config)
    # transformers' load report (a table per seed and task) lists what is expected here: a new classifier,
    # the pretraining heads left behind. It is summarised in one line; only surprises get a warning.
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        # ignore_mismatched_sizes: a checkpoint that is already a classifier with another label count.
        model, info = AutoModelForSequenceClassification.from_pretrained(
            model_name_or_path, config=config, ignore_mismatched_sizes=True, output_loading_info=True)
    finally:
        hf_logging.set_verbosity(verbosity)
    _report_loading(model, info, model_name_or_path)
    return model


def _report_loading(model: PreTrainedModel, info: dict[str, Any], source: str) -> None:
    """One line for what a classifier built from a pretraining checkpoint leaves out; a warning for weights
    of the encoder itself that start random (a checkpoint of another architecture, or a broken one)."""
    head_prefixes = tuple(f"{name}." for name in HEAD_ATTRIBUTES)
    missing = sorted(info.get("missing_keys") or [])
    # A masked-LM checkpoint has no pooler (BertForMaskedLM drops it): it starts random, as in run_glue.py.
    new_pooler = [k for k in missing if ".pooler." in k]
    new_encoder = [k for k in missing if not k.startswith(head_prefixes) and k not in new_pooler]
    unused = sorted(info.get("unexpected_keys") or [])
    resized = [k[0] if isinstance(k, tuple) else k for k in info.get("mismatched_keys") or []]
    groups = sorted({k.split(".")[0] for k in unused})
    logger.info("%s from %s: new classification head%s%s%s", type(model).__name__, source,
                " and pooler" if new_pooler else "",
                f"; re-initialised for another label count: {', '.join(resized)}" if resized else "",
                f"; unused checkpoint weights: {', '.join(g + '.*' for g in groups)} (pretraining heads)" if groups
                else "")
    if new_encoder:
        shown = ", ".join(new_encoder[:3]) + (", ..." if len(new_encoder) > 3 else "")
        logger.warning("%d weights of %s are not in %s and start random (%s)", len(new_encoder),
                       type(model).__name__, source, shown)


def find_head(model: PreTrainedModel) -> torch.nn.Module:
    """The task head (the part a linear probe trains): ``classifier`` for BERT, ``score`` for GPT-2, ..."""
    for name in HEAD_ATTRIBUTES:
        head = getattr(model, name, None)
        if isinstance(head, torch.nn.Module):
            return head
    raise ConfigError(f"{type(model).__name__} has no classification head attribute "
                      f"({', '.join(HEAD_ATTRIBUTES)}); linear probing needs one")


def tokenize_dataset(ds: datasets.Dataset, tokenizer: PreTrainedTokenizerBase, max_seq_length: int) -> datasets.Dataset:
    """Tokenise ``text_a`` (and ``text_b``) to model inputs, keeping ``labels``; padding happens per batch."""
    pair = "text_b" in ds.column_names

    def encode(batch: dict[str, list[Any]]) -> dict[str, Any]:
        texts = (batch["text_a"], batch["text_b"]) if pair else (batch["text_a"],)
        return tokenizer(*texts, truncation=True, max_length=max_seq_length)

    out = ds.map(encode, batched=True, remove_columns=[c for c in ds.column_names if c != "label"],
                 desc="tokenizing", load_from_cache_file=False)
    return out.rename_column("label", "labels")


def make_dataloader(ds: datasets.Dataset, tokenizer: PreTrainedTokenizerBase, batch_size: int, shuffle: bool,
                    seed: int = 0) -> DataLoader:
    generator = torch.Generator().manual_seed(seed) if shuffle else None
    return DataLoader(ds, batch_size=batch_size, shuffle=shuffle, generator=generator,
                      collate_fn=DataCollatorWithPadding(tokenizer))


def param_groups(model: torch.nn.Module, weight_decay: float,
                 only: Iterable[torch.nn.Parameter] | None = None) -> list[dict[str, Any]]:
    """AdamW groups: no weight decay on biases and normalisation weights (1-D tensors)."""
    allowed = None if only is None else {id(p) for p in only}
    decay, no_decay = [], []
    for p in model.parameters():
        if not p.requires_grad or (allowed is not None and id(p) not in allowed):
            continue
        (no_decay if p.ndim < 2 else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


@dataclass
class TrainStats:
    steps: int = 0
    losses: list[tuple[int, float]] = field(default_factory=list)  # (step, mean loss since last log)


def train(model: PreTrainedModel, train_loader: DataLoader, accelerator: Accelerator, *, learning_rate: float,
          num_epochs: float, weight_decay: float = 0.0, warmup_ratio: float = 0.0,
          lr_scheduler_type: str = "linear", max_grad_norm: float = 1.0, logging_steps: int = 20,
          desc: str = "train", on_train_begin: Callable[[PreTrainedModel], None] | None = None,
          prepare_batch: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]] | None = None) -> TrainStats:
    """Fine-tune every parameter of ``model`` in place for ``num_epochs`` (fractions allowed).

    ``on_train_begin`` sees the model after ``accelerator.prepare``, just
    before the first step (LP-FT uses it to show that fine-tuning starts from the probed head).
    ``prepare_batch`` transforms each batch once it is on the device (image fine-tuning: random crops/flips).
    """
    optimizer = torch.optim.AdamW(param_groups(model, weight_decay), lr=learning_rate)
    engines.set_wrap_units(model)  # FSDP: wrap the layers, never the embeddings module on its own
    model, optimizer, train_loader = accelerator.prepare(model, optimizer, train_loader)
    # Steps come from the prepared (per-process) loader; a prepared scheduler steps once per process
    # on every optimizer step, so its horizon is scaled by the process count.
    total_steps = max(1, math.ceil(num_epochs * len(train_loader)))
    n = accelerator.num_processes
    scheduler = get_scheduler(lr_scheduler_type, optimizer, num_warmup_steps=int(warmup_ratio * total_steps) * n,
                              num_training_steps=total_steps * n)
    scheduler = accelerator.prepare(scheduler)
    if on_train_begin is not None:
        on_train_begin(accelerator.unwrap_model(model))
    model.train()
    stats = TrainStats()
    running, count = 0.0, 0
    bar = progress_bar(total=total_steps, desc=desc, disable=not accelerator.is_local_main_process, leave=False)
    while stats.steps < total_steps:
        for batch in train_loader:
            if prepare_batch is not None:
                batch = prepare_batch(batch)
            loss = model(**batch).loss
            accelerator.backward(loss)
            if max_grad_norm > 0:
                accelerator.clip_grad_norm_(model.parameters(), max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            stats.steps += 1
            running += loss.item()
            count += 1
            bar.update(1)
            if stats.steps % logging_steps == 0 or stats.steps == total_steps:
                stats.losses.append((stats.steps, running / count))
                bar.set_postfix(loss=f"{running / count:.4f}")
                running, count = 0.0, 0
            if stats.steps >= total_steps:
                break
    bar.close()
    # Drop the prepared optimizer/scheduler references so the next seed starts clean; the caller's
    # model object holds the trained weights (prepare wraps it, it does not copy it).
    accelerator.free_memory()
    return stats


@torch.no_grad()
def predict(model: PreTrainedModel, eval_loader: DataLoader, accelerator: Accelerator,
            regression: bool) -> tuple[np.ndarray, np.ndarray]:
    """Predictions (class ids, or scores for regression) and labels over the whole eval set, all ranks gathered."""
    # Only the loader is prepared (sharded per process); evaluation needs no DDP wrapper around the model.
    eval_loader = accelerator.prepare(eval_loader)
    model.to(accelerator.device)
    model.eval()
    preds, labels = [], []
    for batch in eval_loader:
        with accelerator.autocast():
            logits = model(**batch).logits.float()
        out = logits.squeeze(-1) if regression else logits.argmax(dim=-1)
        out, ref = accelerator.gather_for_metrics((out, batch["labels"]))
        preds.append(out.cpu().numpy())
        labels.append(ref.cpu().numpy())
    accelerator.free_memory()
    return np.concatenate(preds), np.concatenate(labels)

