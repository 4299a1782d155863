"""Run GLUE/custom-task evaluation end to end: data, seeds, modes, results.json and the table."""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict
from typing import Any

import datasets
import torch
import transformers
from accelerate import Accelerator
from accelerate.utils import is_mps_available, is_npu_available, is_xpu_available, set_seed

from hfssl.errors import ConfigError, DataError, HfsslError
from hfssl.evaluation.args import (
    FinetuneArguments,
    GlueDataArguments,
    check_model_path,
    check_task_selection,
    default_learning_rate,
)
from hfssl.evaluation.diagnostics import (
    COLLAPSED_FEATURE_SPREAD,
    collapse_warning,
    feature_spread,
    feature_warning,
    majority_baseline,
    prediction_check,
)
from hfssl.evaluation.finetune import (
    build_model,
    load_tokenizer,
    make_dataloader,
    predict,
    tokenize_dataset,
    train,
)
from hfssl.evaluation.glue import GLUE_TASKS, GlueTask, TaskData, get_task, load_custom_task, load_glue_task
from hfssl.evaluation.linear_probe import Features, extract_features, train_head
from hfssl.evaluation.lp_ft import lp_ft
from hfssl.evaluation.report import (
    BERT_BASE_PAPER_TEST,
    format_glue_table,
    format_task_lines,
    glue_average,
    glue_row,
    metric_key,
    summarise,
)
from hfssl.evaluation.scoring import compute_metrics
from hfssl.logging import get_logger, setup_logging
from hfssl.run_info import redact, write_json_atomic
from hfssl.training import engines

logger = get_logger(__name__)


def _has_accelerator() -> bool:
    return torch.cuda.is_available() or is_xpu_available() or is_mps_available() or is_npu_available()


def _limit(ds: datasets.Dataset, n: int | None) -> datasets.Dataset:
    return ds if n is None or n >= len(ds) else ds.select(range(n))


def resolve_tasks(data_args: GlueDataArguments) -> list[tuple[GlueTask | None, str]]:
    """[(task, name)] to run; ``None`` task means the custom task from local files."""
    if check_task_selection(data_args) == "custom":
        return [(None, "custom")]
    if data_args.task_name.lower() == "all":
        return [(t, t.name) for t in GLUE_TASKS.values()]
    task = get_task(data_args.task_name)
    return [(task, task.name)]


def load_data(task: GlueTask | None, data_args: GlueDataArguments) -> tuple[GlueTask, TaskData]:
    if task is None:
        columns = [c.strip() for c in (data_args.text_columns or "").split(",") if c.strip()]
        return load_custom_task(data_args.train_file, data_args.validation_file, columns, data_args.label_column,
                                data_args.metric)
    return task, load_glue_task(task, data_args.glue_dir, data_args.dataset_cache_dir)


class _TaskLog:
    """``output_dir/<task>/log.jsonl``: training losses and dev metrics per seed, one JSON object a line."""

    def __init__(self, path: str | None) -> None:
        self.path = path
        if path:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            open(path, "w").close()

    def write(self, **record: Any) -> None:
        if self.path:
            with open(self.path, "a", encoding="utf-8") as fh:
                fh.write(json.dumps(record) + "\n")


def _schedule_kwargs(fa: FinetuneArguments) -> dict[str, Any]:
    return {"warmup_ratio": fa.warmup_ratio, "lr_scheduler_type": fa.lr_scheduler_type,
            "max_grad_norm": fa.max_grad_norm, "logging_steps": fa.logging_steps}


def _fit(model: Any, task: GlueTask, train_ds: datasets.Dataset, tokenizer: Any, accelerator: Accelerator,
         fa: FinetuneArguments, seed: int, cached: Features | None, log: _TaskLog) -> Features | None:
    """Train ``model`` for one seed in the requested mode; returns the (possibly new) feature cache."""
    train_loader = make_dataloader(train_ds, tokenizer, fa.per_device_train_batch_size, shuffle=True, seed=seed)
    if fa.mode == "finetune":
        stats = train(model, train_loader, accelerator, learning_rate=fa.learning_rate, num_epochs=fa.num_train_epochs,
                      weight_decay=fa.weight_decay, desc=f"{task.name} seed {seed}", **_schedule_kwargs(fa))
    else:
        # A pretrained encoder is the same for every seed: extract once. Random encoders differ per seed.
        if cached is None or fa.init == "random":
            plain = make_dataloader(train_ds, tokenizer, fa.per_device_eval_batch_size, shuffle=False)
            cached = extract_features(model, plain, accelerator, desc=f"{task.name} features")
        if fa.mode == "linear_probe":
            stats = None
            losses = train_head(model, cached, regression=task.is_regression, epochs=fa.lp_epochs,
                                learning_rate=fa.lp_learning_rate, batch_size=fa.per_device_train_batch_size,
                                weight_decay=fa.weight_decay, seed=seed, device=accelerator.device,
                                show_progress=accelerator.is_local_main_process, desc=f"{task.name} seed {seed} probe")
        else:
            result = lp_ft(model, cached, train_loader, accelerator, regression=task.is_regression,
                           lp_epochs=fa.lp_epochs, lp_learning_rate=fa.lp_learning_rate,
                           ft_learning_rate=fa.effective_ft_learning_rate, num_epochs=fa.num_train_epochs,
                           lp_batch_size=fa.per_device_train_batch_size, seed=seed, weight_decay=fa.weight_decay,
                           **_schedule_kwargs(fa))
            losses, stats = result.probe_losses, result.ft_stats
        log.write(seed=seed, event="probe", epoch_losses=losses)
    if stats is not None:
        for step, loss in stats.losses:
            log.write(seed=seed, event="train", step=step, loss=loss)
    return cached


# Examples whose head inputs are checked for collapse before fine-tuning (one forward pass, a few seconds).
_SPREAD_SAMPLE = 256


def _encoder_spread(model: Any, train_ds: datasets.Dataset, tokenizer: Any, accelerator: Accelerator,
                    fa: FinetuneArguments, cached: Features | None) -> float | None:
    """``feature_spread`` of the untrained head's inputs (the cached probe features when there are some)."""
    if cached is not None:
        return _finite(feature_spread(cached.inputs))
    sample = _limit(train_ds, _SPREAD_SAMPLE)
    try:
        features = extract_features(model, make_dataloader(sample, tokenizer, fa.per_device_eval_batch_size,
                                                           shuffle=False), accelerator, desc="feature check")
    except ConfigError:  # a head that combines several tokens: no single vector to check
        return None
    return _finite(feature_spread(features.inputs))


def _finite(value: float) -> float | None:
    # results.json stays strict JSON: an undefined spread (one example, all-zero mean) is null, not Infinity.
    return value if math.isfinite(value) else None


def evaluate_task(task: GlueTask, data: TaskData, model_args: FinetuneArguments, data_args: GlueDataArguments,
                  accelerator: Accelerator, tokenizer: Any, log_path: str | None = None) -> dict[str, Any]:
    """Train and evaluate ``task`` once per seed; returns its results.json entry.

    Besides the metrics, the entry says whether each seed's predictions collapsed to one class
    (``prediction_check``, ``collapsed_seeds``), what the majority class scores (``majority_baseline``) and
    how much the encoder's head inputs vary between examples before training (``feature_spread``).
    """
    train_ds = tokenize_dataset(_limit(data.train, data_args.max_train_samples), tokenizer, data_args.max_seq_length)
    evals = {split: tokenize_dataset(_limit(ds, data_args.max_eval_samples), tokenizer, data_args.max_seq_length)
             for split, ds in data.evals.items()}
    baseline = majority_baseline(task, train_ds["labels"], {split: ds["labels"] for split, ds in evals.items()})
    log = _TaskLog(log_path if accelerator.is_main_process else None)
    fa = model_args
    per_metric: dict[str, dict[int, float]] = {}
    checks: dict[str, dict[str, Any]] = {}
    collapsed_seeds: list[int] = []
    spread: float | None = None
    cached: Features | None = None
    started = time.time()
    for i, seed in enumerate(fa.seed_list()):
        set_seed(seed)
        model = build_model(fa.model_name_or_path, task, fa.init, pad_token_id=tokenizer.pad_token_id)
        if i == 0 and fa.mode == "finetune":
            # Eval mode and an unshuffled loader: the check draws no random numbers, so training is unchanged.
            spread = _encoder_spread(model, train_ds, tokenizer, accelerator, fa, None)
        cached = _fit(model, task, train_ds, tokenizer, accelerator, fa, seed, cached, log)
        if i == 0 and fa.mode != "finetune":
            spread = _encoder_spread(model, train_ds, tokenizer, accelerator, fa, cached)
        # Random weights give near-constant pooled features too (spread 0.003-0.04): expected of the baseline.
        warn = accelerator.is_main_process  # every rank has the same numbers; one warning is enough
        if warn and i == 0 and fa.init == "pretrained" and spread is not None and spread < COLLAPSED_FEATURE_SPREAD:
            logger.warning(feature_warning(task.name, spread))
        seed_metrics: dict[str, float] = {}
        seed_checks: dict[str, Any] = {}
        for split, ds in evals.items():
            loader = make_dataloader(ds, tokenizer, fa.per_device_eval_batch_size, shuffle=False)
            preds, labels = predict(model, loader, accelerator, task.is_regression)
            split_keys = []
            for name, value in compute_metrics(task.metrics, preds, labels).items():
                key = metric_key(name, split, len(evals))
                seed_metrics[key] = value
                split_keys.append(key)
            check = seed_checks[split] = prediction_check(preds, labels, regression=task.is_regression,
                                                          label_names=task.label_names)
            if warn and check["collapsed"]:
                split_baseline = {k: baseline[k] for k in split_keys if k in baseline} if baseline else None
                logger.warning(collapse_warning(task.name, seed, split, check, len(preds), split_baseline))
        if any(c["collapsed"] for c in seed_checks.values()):
            collapsed_seeds.append(seed)
        checks[str(seed)] = seed_checks
        log.write(seed=seed, event="eval", metrics=seed_metrics, prediction_check=seed_checks)
        logger.info("%s seed %d: %s", task.name, seed,
                    ", ".join(f"{k}={100 * v:.2f}" for k, v in seed_metrics.items()))
        for key, value in seed_metrics.items():
            per_metric.setdefault(key, {})[seed] = value
        del model
    return {"metrics": {k: summarise(v) for k, v in per_metric.items()}, "num_train": len(train_ds),
            "num_eval": sum(len(ds) for ds in evals.values()), "seconds": round(time.time() - started, 1),
            "majority_baseline": baseline, "feature_spread": spread, "collapsed_seeds": collapsed_seeds,
            "prediction_check": checks}


def resolve_learning_rate(model_args: FinetuneArguments) -> None:
    """Fill in the width-dependent default ``--learning_rate`` (fine-tuning modes) and say which it is."""
    if model_args.learning_rate is not None or model_args.mode == "linear_probe":
        return
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(model_args.model_name_or_path)
    hidden = getattr(config.get_text_config(), "hidden_size", None)
    model_args.learning_rate = default_learning_rate(hidden)
    logger.info("learning rate %g: the default for hidden size %s (--learning_rate sets another)",
                model_args.learning_rate, hidden)


def run(model_args: FinetuneArguments, data_args: GlueDataArguments) -> dict[str, Any]:
    """The whole evaluation: every requested task, every seed; writes ``results.json`` and prints the table."""
    requested = resolve_tasks(data_args)
    model_path = check_model_path(model_args.model_name_or_path)
    model_args.model_name_or_path = model_path
    # cpu=True without an accelerator: that is what makes Accelerate use gloo under torchrun on CPU
    # (otherwise every process silently runs alone on the whole dataset).
    accelerator = Accelerator(mixed_precision=model_args.mixed_precision, cpu=not _has_accelerator())
    setup_logging(accelerator.is_main_process)
    engines.check_engine(accelerator)  # an FSDP/DeepSpeed config never silently becomes DDP
    # A "Loading weights" bar per seed and task is noise here; the runner logs what it loads.
    transformers.utils.logging.disable_progress_bar()
    resolve_learning_rate(model_args)
    tokenizer = load_tokenizer(model_path, model_args.tokenizer_name)
    single = len(requested) == 1
    tasks: dict[str, Any] = {}
    skipped: dict[str, str] = {}
    for task, name in requested:
        try:
            task, data = load_data(task, data_args)
        except DataError as exc:
            if single:
                raise
            skipped[name] = str(exc)
            logger.warning("skipping %s: %s", name, exc)
            continue
        logger.info("%s: %d train / %s dev examples, mode=%s, init=%s, seeds=%s", name, len(data.train),
                    "+".join(str(len(d)) for d in data.evals.values()), model_args.mode, model_args.init,
                    model_args.seed_list())
        log_path = os.path.join(model_args.output_dir, name, "log.jsonl")
        tasks[name] = evaluate_task(task, data, model_args, data_args, accelerator, tokenizer, log_path)
    if not tasks:
        raise DataError("no GLUE task had data: " + "; ".join(f"{k}: {v}" for k, v in skipped.items()))
    results = {
        "model_name_or_path": model_path,
        "mode": model_args.mode,
        "init": model_args.init,
        "config": redact({**asdict(data_args), **asdict(model_args)}),
        "tasks": tasks,
        "average": glue_average(tasks),
        "skipped": skipped,
    }
    if accelerator.is_main_process:
        path = write_json_atomic(os.path.join(model_args.output_dir, "results.json"), results)
        print(render(results), flush=True)
        logger.info("wrote %s", path)
    # Tear the process group down here: left to interpreter exit, gloo's threads can abort a rank.
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return results


def render(results: dict[str, Any]) -> str:
    """The printed report: BERT-layout table for GLUE tasks, plus every metric per task."""
    tasks = results["tasks"]
    label = f"{os.path.basename(str(results['model_name_or_path']).rstrip('/'))} ({results['mode']}, {results['init']})"
    parts = []
    if any(name in GLUE_TASKS for name in tasks):
        rows = [(label, glue_row(tasks, results["average"])), ("BERT-base (paper, GLUE test)", BERT_BASE_PAPER_TEST)]
        parts.append(format_glue_table(rows))
        parts.append("Scores x100 (dev sets; std over seeds after ±). Average: mean over the shown tasks that ran, "
                     "WNLI excluded; MNLI counts matched accuracy.")
    parts.append(format_task_lines(tasks))
    parts += diagnostic_lines(tasks, results.get("init", "pretrained"))
    return "\n".join(parts)


def diagnostic_lines(tasks: dict[str, Any], init: str = "pretrained") -> list[str]:
    """Warnings under the table: collapsed predictions and collapsed encoder features, per task."""
    lines = []
    for name, result in tasks.items():
        collapsed = result.get("collapsed_seeds") or []
        if collapsed:
            total = len(result.get("prediction_check") or {}) or len(collapsed)
            baseline = result.get("majority_baseline")
            shown = ("; majority-class baseline " + ", ".join(f"{k} {100 * v:.2f}" for k, v in baseline.items())
                     if baseline else "")
            kind = "one class" if baseline else "a near-constant score"
            lines.append(f"WARNING {name}: dev predictions collapsed to {kind} for {len(collapsed)} of {total} seeds "
                         f"({', '.join(str(s) for s in collapsed)}){shown}: nothing was learned there")
        spread = result.get("feature_spread")
        if init == "pretrained" and spread is not None and spread < COLLAPSED_FEATURE_SPREAD:
            lines.append(f"WARNING {name}: the encoder's features are nearly identical for every input "
                         f"(feature_spread {spread:.3g}): the checkpoint looks under-trained")
    return lines


__all__ = ["run", "render", "evaluate_task", "resolve_tasks", "load_data", "HfsslError"]
