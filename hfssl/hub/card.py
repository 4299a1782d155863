"""Model card (README.md) for a run's output directory.

Everything on the card is read back from what the run wrote (``config.json``, ``run_config.json``,
``metrics.jsonl``, ``all_results.json``, ``results.json``, tokenizer files), so a card can be
regenerated for any finished run. Missing pieces shrink the card; they never fail it (an export that is
not a transformers checkpoint, without ``config.json``, gets a card without the Auto-class snippet). The YAML
header is built with ``huggingface_hub.ModelCardData`` (which validates the ``model-index``), so
the Hub parses it the way it parses any transformers card.

The training loop writes the card at the end of every run (``write_run_card``), as transformers' ``Trainer``
does; ``python -m hfssl.push`` regenerates it with the Hub repo id. A README.md without hfssl's marker line
was written by hand and is never overwritten.
"""

from __future__ import annotations

import json
import math
import os
import re
import struct
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from hfssl.errors import HfsslError
from hfssl.hub.plot import read_metrics, render_loss_curve
from hfssl.logging import get_logger
from hfssl.run_info import SECRET_FIELDS, redact

logger = get_logger(__name__)

# Cards carrying this marker are hfssl's to regenerate; without it a README.md is the user's.
CARD_MARKER_PREFIX = "<!-- hfssl:model-card"
CARD_MARKER = (f"{CARD_MARKER_PREFIX} (regenerated after training and on push; delete this line to keep manual "
               "edits) -->")
LOSS_PLOT = "loss_curve.png"
DEFAULT_LICENSE = "apache-2.0"

# Objective names (as recipes record them in run_config.json) -> Hub tags.
_OBJECTIVE_TAGS = {
    "clm": "causal-lm", "causal_lm": "causal-lm", "gpt": "causal-lm",
    "mlm": "masked-lm", "masked_lm": "masked-lm", "wwm": "whole-word-masking",
    "nsp": "next-sentence-prediction", "sop": "sentence-order-prediction",
    "rotation": "rotation-prediction", "jigsaw": "jigsaw", "relative_position": "relative-position",
    "colorization": "colorization", "inpainting": "inpainting", "contrastive": "contrastive-learning",
    "mim": "masked-image-modeling",
}
_GLUE_NAMES = {"cola": "CoLA", "sst2": "SST-2", "mrpc": "MRPC", "stsb": "STS-B", "qqp": "QQP", "mnli": "MNLI",
               "mnli_matched": "MNLI-m", "mnli_mismatched": "MNLI-mm", "qnli": "QNLI", "rte": "RTE", "wnli": "WNLI"}
# Flags that say nothing about the model (or are secrets) stay off the card.
_HIDDEN_FLAGS = SECRET_FIELDS | {"output_dir", "overwrite_output_dir", "push_to_hub", "hub_model_id",
                                 "hub_private_repo", "hub_revision", "hub_strategy", "logging_dir", "report_to"}


def _read_json(path: Path) -> Any:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        logger.warning("ignoring unreadable %s on the model card: %s", path.name, exc)
        return None


def _public(value: Any) -> Any:
    """Local absolute paths become basenames: a card must not publish someone's home directory layout."""
    if isinstance(value, str) and os.path.isabs(value):
        return os.path.basename(value.rstrip("/")) or value
    if isinstance(value, list):
        return [_public(v) for v in value]
    return value


def _is_hub_id(value: Any) -> bool:
    return (isinstance(value, str) and re.fullmatch(r"[\w.-]+(/[\w.-]+)?", value) is not None
            and not os.path.exists(value))


def count_parameters(output_dir: Path) -> int | None:
    """Parameter count from the safetensors headers (no torch import, no weights read)."""
    total, found = 0, False
    for file in sorted(output_dir.glob("*.safetensors")):
        try:
            with open(file, "rb") as fh:
                (length,) = struct.unpack("<Q", fh.read(8))
                header = json.loads(fh.read(length))
        except (OSError, ValueError, struct.error):
            return None
        for name, meta in header.items():
            if name != "__metadata__":
                total += math.prod(meta.get("shape", []))
                found = True
    return total if found else None


def _human(n: int) -> str:
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f}{unit}"
    return str(n)


def _objective_tags(objective: Any, architectures: list[str], flags: dict | None = None) -> list[str]:
    flags = flags or {}
    tags: list[str] = []
    if isinstance(objective, str) and objective:
        for part in re.split(r"[+,\s]|(?<=mlm)_(?=nsp|sop)", objective.lower()):
            if part:
                tags.append(_OBJECTIVE_TAGS.get(part, part.replace("_", "-")))
    if not tags:  # fall back on the head the checkpoint carries
        arch = " ".join(architectures)
        if "CausalLM" in arch or "LMHeadModel" in arch:
            tags.append("causal-lm")
        elif "ForPreTraining" in arch:
            # bert_mlm.py records its objective as flags: --no_nsp (MLM only) or --sop instead of NSP.
            tags.append("masked-lm")
            if flags.get("sop"):
                tags.append("sentence-order-prediction")
            elif not flags.get("no_nsp"):
                tags.append("next-sentence-prediction")
        elif "MaskedLM" in arch:
            tags.append("masked-lm")
    return tags


def _pipeline_tag(architectures: list[str], is_vision: bool) -> str:
    arch = " ".join(architectures)
    if "CausalLM" in arch or "LMHeadModel" in arch:
        return "text-generation"
    if ("MaskedLM" in arch or "ForPreTraining" in arch) and not is_vision:
        return "fill-mask"
    return "image-feature-extraction" if is_vision else "feature-extraction"


def _glue_eval_results(results: dict) -> list[EvalResult]:
    out = []
    for task, info in sorted((results.get("tasks") or {}).items()):
        for metric, stats in sorted((info.get("metrics") or {}).items()):
            mean = stats.get("mean") if isinstance(stats, dict) else stats
            if not isinstance(mean, (int, float)) or not math.isfinite(mean):
                continue
            out.append(EvalResult(
                task_type="text-classification", task_name="Text Classification",
                dataset_type="nyu-mll/glue", dataset_name=f"GLUE {_GLUE_NAMES.get(task, task.upper())}",
                dataset_config=task, dataset_split="validation",
                metric_type=metric, metric_name=metric, metric_value=round(100 * float(mean), 2),
            ))
    return out


def _lm_eval_results(all_results: dict, pipeline_tag: str, dataset: str | None, is_vision: bool = False
                     ) -> list[EvalResult]:
    out = []
    kind, held_out = ("image", "held-out images") if is_vision else ("text", "held-out text")
    for key, metric in (("eval_perplexity", "perplexity"), ("eval_loss", "loss")):
        value = all_results.get(key)
        if isinstance(value, (int, float)) and math.isfinite(value):
            out.append(EvalResult(
                task_type=pipeline_tag, dataset_type=dataset or kind, dataset_name=dataset or held_out,
                dataset_split="validation", metric_type=metric, metric_name=f"eval {metric}",
                metric_value=round(float(value), 4),
            ))
    return out


def _glue_table(results: dict) -> str:
    rows = ["| Task | Metric | Score (×100) | Seeds | Train / eval examples |", "|---|---|---|---|---|"]
    for task, info in sorted((results.get("tasks") or {}).items()):
        for metric, stats in sorted((info.get("metrics") or {}).items()):
            if not isinstance(stats, dict) or not isinstance(stats.get("mean"), (int, float)):
                continue
            std = stats.get("std")
            score = f"{100 * stats['mean']:.2f}" + (f" ± {100 * std:.2f}" if isinstance(std, (int, float)) else "")
            seeds = len(stats.get("per_seed") or {}) or ""
            rows.append(f"| {_GLUE_NAMES.get(task, task)} | {metric} | {score} | {seeds} | "
                        f"{info.get('num_train', '')} / {info.get('num_eval', '')} |")
    average = results.get("average")
    if isinstance(average, (int, float)):
        rows.append(f"| **Average** | | **{100 * average:.2f}** | | |")
    return "\n".join(rows) if len(rows) > 2 else ""


def _collapsed_notes(results: dict) -> list[str]:
    """Tasks whose dev predictions collapsed to one class (results.json ``collapsed_seeds``): not results."""
    notes = []
    for task, info in sorted((results.get("tasks") or {}).items()):
        seeds = info.get("collapsed_seeds") if isinstance(info, dict) else None
        if seeds:
            notes.append(f"- **{_GLUE_NAMES.get(task, task)}**: the dev predictions collapsed to a single class (or a "
                         f"constant score) for seed(s) {', '.join(str(s) for s in seeds)}; that score is the "
                         "majority-class baseline, not something the model learned.")
    return notes


def _tokenizer_section(output_dir: Path) -> str:
    tok = _read_json(output_dir / "tokenizer.json")
    tok_cfg = _read_json(output_dir / "tokenizer_config.json") or {}
    if tok is None and not tok_cfg:
        return ""
    lines = []
    if isinstance(tok, dict):
        model = tok.get("model") or {}
        vocab = model.get("vocab")
        size = len(vocab) if isinstance(vocab, (dict, list)) else None
        added = [t for t in tok.get("added_tokens") or [] if isinstance(t, dict)]
        if size is not None:
            size += sum(1 for t in added if t.get("id", 0) >= size)
        lines.append(f"- Algorithm: **{model.get('type', 'unknown')}**" + (f", vocabulary of {size:,} tokens" if size else ""))
        for part in ("normalizer", "pre_tokenizer"):
            if isinstance(tok.get(part), dict):
                lines.append(f"- {part.replace('_', '-').capitalize()}: `{tok[part].get('type')}`")
        specials = [t.get("content") for t in added if t.get("special")]
        if specials:
            lines.append("- Special tokens: " + ", ".join(f"`{s}`" for s in specials))
    if tok_cfg.get("tokenizer_class"):
        lines.append(f"- Class: `{tok_cfg['tokenizer_class']}`")
    return "\n".join(lines)


def _export_files(out: Path) -> str:
    """The top-level files of an export, for a card that cannot show an Auto-class snippet."""
    skip = {"README.md", LOSS_PLOT, "run_config.json", "metrics.jsonl", "all_results.json", "results.json"}
    names = sorted(p.name for p in out.iterdir() if p.is_file() and not p.name.startswith(".") and p.name not in skip)
    return ", ".join(f"`{n}`" for n in names[:20]) + (", ..." if len(names) > 20 else "")


def _config_table(flags: dict) -> str:
    rows = ["| Flag | Value |", "|---|---|"]
    for key in sorted(flags):
        value = flags[key]
        if key in _HIDDEN_FLAGS or value is None or value == [] or value == "":
            continue
        text = json.dumps(_public(value)) if isinstance(value, (list, dict)) else str(_public(value))
        rows.append(f"| `{key}` | `{text.replace('|', '/')}` |")
    return "\n".join(rows) if len(rows) > 2 else ""


def _results_table(all_results: dict) -> str:
    rows = ["| Metric | Value |", "|---|---|"]
    for key in sorted(all_results):
        value = all_results[key]
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            rows.append(f"| {key} | {value:.4g} |" if isinstance(value, float) else f"| {key} | {value} |")
    return "\n".join(rows) if len(rows) > 2 else ""


def _usage(repo: str, pipeline_tag: str, has_tokenizer: bool, is_vision: bool) -> str:
    if is_vision:
        return (f'from transformers import AutoImageProcessor, AutoModel\n\n'
                f'processor = AutoImageProcessor.from_pretrained("{repo}")\n'
                f'model = AutoModel.from_pretrained("{repo}")\n'
                f'features = model(**processor(images=image, return_tensors="pt")).last_hidden_state')
    head = {"text-generation": "AutoModelForCausalLM", "fill-mask": "AutoModelForMaskedLM"}.get(pipeline_tag)
    lines = [f"from transformers import AutoModel, AutoTokenizer{', ' + head if head else ''}", ""]
    if has_tokenizer:
        lines.append(f'tokenizer = AutoTokenizer.from_pretrained("{repo}")')
    if pipeline_tag == "fill-mask":
        lines.append("# transformers lists the pretraining-head weights a class does not use as UNEXPECTED: expected")
    lines.append(f'backbone = AutoModel.from_pretrained("{repo}")  # encoder/decoder without the pretraining head')
    if head:
        lines.append(f'model = {head}.from_pretrained("{repo}")')
    if has_tokenizer and pipeline_tag == "text-generation":
        lines += ['inputs = tokenizer("The history of", return_tensors="pt")',
                  "print(tokenizer.decode(model.generate(**inputs, max_new_tokens=20)[0]))"]
    elif has_tokenizer and pipeline_tag == "fill-mask":
        lines += ["from transformers import pipeline", "",
                  'fill = pipeline("fill-mask", model=model, tokenizer=tokenizer)',
                  'print(fill(f"Paris is the {tokenizer.mask_token} of France."))']
    elif has_tokenizer:
        lines.append('hidden = backbone(**tokenizer("Hello world", return_tensors="pt")).last_hidden_state')
    return "\n".join(lines)


def build_model_card(output_dir: str | os.PathLike, *, repo_id: str | None = None, license: str | None = None,
                     language: str | list[str] | None = None, plot: bool = True,
                     plot_path: str | os.PathLike | None = None) -> ModelCard:
    """Build the card for ``output_dir``.

    When the run logged losses, the loss curve is rendered to ``plot_path`` (default
    ``output_dir/loss_curve.png``); the card links it as ``loss_curve.png`` beside the README.
    """
    # word2vec exports (sentence-transformers model + word2vec files) have their own card (helper C, issue 14).
    from hfssl.models.word2vec_card import build_word2vec_card, is_word2vec_export

    if is_word2vec_export(output_dir):
        return build_word2vec_card(output_dir, repo_id=repo_id, license=license, language=language, plot=plot,
                                   plot_path=plot_path)
    out = Path(output_dir)
    # No config.json: the export is not a transformers checkpoint (e.g. word2vec vectors); no Auto-class claims.
    is_transformers = (out / "config.json").is_file()
    model_cfg = _read_json(out / "config.json") or {}
    run_info = _read_json(out / "run_config.json") or {}
    flags = redact(run_info.get("config") or {}) if isinstance(run_info, dict) else {}
    all_results = _read_json(out / "all_results.json") or {}
    glue = _read_json(out / "results.json") or {}
    architectures = list(model_cfg.get("architectures") or [])
    is_vision = (out / "preprocessor_config.json").is_file() and not (out / "tokenizer_config.json").is_file()
    has_tokenizer = (out / "tokenizer_config.json").is_file() or (out / "tokenizer.json").is_file()
    pipeline_tag = _pipeline_tag(architectures, is_vision) if is_transformers else None
    model_type = model_cfg.get("model_type") or flags.get("model_type")
    name = (repo_id or out.resolve().name).split("/")[-1]
    repo = repo_id or f"path/to/{out.resolve().name}"
    dataset = flags.get("dataset_name") if _is_hub_id(flags.get("dataset_name")) else None
    base_model = flags.get("model_name_or_path")
    base_model = base_model if _is_hub_id(base_model) and "/" in str(base_model) else None

    objective = flags.get("objective") or flags.get("pretext_task")
    tags = ["hfssl", "self-supervised", *_objective_tags(objective, architectures, flags)]
    if flags.get("whole_word_masking") and "whole-word-masking" not in tags:
        tags.append("whole-word-masking")
    if model_type:
        tags.append(str(model_type))
    eval_results = _glue_eval_results(glue) + (
        _lm_eval_results(all_results, pipeline_tag, dataset, is_vision) if pipeline_tag else [])
    data = ModelCardData(
        library_name="transformers" if is_transformers else None, license=license or flags.get("license") or DEFAULT_LICENSE,
        language=language or flags.get("language") or (None if is_vision else "en"), tags=tags, datasets=[dataset] if dataset else None,
        pipeline_tag=pipeline_tag, base_model=base_model, model_name=name,
        eval_results=eval_results or None, metrics=sorted({r.metric_type for r in eval_results}) or None,
    )

    sections = [f"# {name}", ""]
    params = count_parameters(out)
    what = f"a **{model_type}** model" if model_type else "a model"
    size = f" ({_human(params)} parameters)" if params else ""
    origin = (f"further pretrained from [`{base_model}`](https://huggingface.co/{base_model})" if base_model
              else "pretrained from scratch")
    objectives = [t for t in tags[2:] if t != model_type] or ["self-supervised"]
    noun = "objectives" if len(objectives) > 1 else "objective"
    intro = f"This is {what}{size} {origin} with hfssl using the {' + '.join(objectives)} {noun}."
    if is_transformers:
        sections.append(f"{intro} It is a stock `transformers` checkpoint "
                        f"({', '.join(f'`{a}`' for a in architectures) or 'see config.json'}): no `trust_remote_code`.")
        sections += ["", "## Usage", "", "```python", _usage(repo, pipeline_tag, has_tokenizer, is_vision), "```"]
    else:
        files = _export_files(out)
        sections.append(f"{intro} It is not a `transformers` checkpoint (there is no `config.json`); "
                        "load it with the code that wrote it." + (f" Files: {files}." if files else ""))

    data_lines = []
    if flags.get("dataset_name"):
        cfg = f" (config `{flags['dataset_config_name']}`)" if flags.get("dataset_config_name") else ""
        data_lines.append(f"- Dataset: `{flags['dataset_name']}`{cfg}")
    if flags.get("train_file"):
        files = flags["train_file"] if isinstance(flags["train_file"], list) else [flags["train_file"]]
        data_lines.append("- Local files: " + ", ".join(f"`{_public(f)}`" for f in files))
    for key, label in (("max_seq_length", "Sequence length"), ("text_column", "Text column"),
                       ("max_train_samples", "Training examples cap")):
        if flags.get(key) is not None:
            data_lines.append(f"- {label}: {flags[key]}")
    if data_lines:
        sections += ["", "## Training data", "", *data_lines]
    tok = _tokenizer_section(out)
    if tok:
        sections += ["", "## Tokenizer", "", tok]

    config_table = _config_table(flags)
    if config_table:
        sections += ["", "## Training configuration", "", config_table]

    train, evals = ([], [])
    if (out / "metrics.jsonl").is_file():
        train, evals = read_metrics(out / "metrics.jsonl")
    results_lines = []
    if train:
        results_lines.append(f"- Steps logged: {int(train[-1][0]):,}; final training loss {train[-1][1]:.4f}")
    if evals:
        best = min(evals, key=lambda p: p[1])
        # A perplexity only means something for a loss over a vocabulary alone (the run reports it then);
        # not for images, MLM+NSP sums or word2vec's negative sampling.
        reports_ppl = "eval_perplexity" in all_results
        ppl = f" (perplexity {math.exp(min(best[1], 50)):.2f})" if reports_ppl else ""
        results_lines.append(f"- Best eval loss {best[1]:.4f}{ppl} at step {int(best[0]):,}")
    table = _results_table(all_results)
    if plot and (train or evals):
        render_loss_curve(train, evals, plot_path or out / LOSS_PLOT, title=f"{name}: loss")
        results_lines += ["", f"![Loss curve]({LOSS_PLOT})"]
    if results_lines or table:
        sections += ["", "## Training results", "", *results_lines]
        if table:
            sections += ["", table]

    glue_table = _glue_table(glue) if isinstance(glue, dict) else ""
    if glue_table:
        mode = f" ({glue['mode']})" if glue.get("mode") else ""
        sections += ["", f"## Evaluation: GLUE{mode}", "",
                     "Validation-set scores; mean ± std over fine-tuning seeds.", "", glue_table]
        collapsed = _collapsed_notes(glue)
        if collapsed:
            sections += ["", *collapsed]

    versions = run_info.get("versions") if isinstance(run_info, dict) else None
    if isinstance(versions, dict) and versions:
        sections += ["", "## Framework versions", ""]
        sections += [f"- {k}: {v}" for k, v in sorted(versions.items())]
        if run_info.get("git_revision"):
            sections.append(f"- hfssl git revision: `{run_info['git_revision']}`")
    sections += ["", CARD_MARKER, ""]

    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(sections))


class ManualCardError(HfsslError):
    """output_dir/README.md was written by hand (no hfssl marker line): hfssl does not overwrite it."""


def write_model_card(output_dir: str, *, repo_id: str | None = None, license: str | None = None,
                     language: str | list[str] | None = None, secrets: Sequence[str | None] = ()) -> str:
    """Write ``output_dir/README.md`` (and ``loss_curve.png``) for a run; returns the README path.

    Raises ``ManualCardError`` when README.md exists without hfssl's marker (a hand-written card), and
    ``HfsslError`` when the card would contain one of ``secrets`` (a token that slipped into a flag value).
    """
    if not os.path.isdir(output_dir):
        raise HfsslError(f"output directory {output_dir} does not exist (pass the --output_dir of a finished run)")
    path = os.path.join(output_dir, "README.md")
    if os.path.exists(path) and not is_generated_card(path):
        raise ManualCardError(f"{path} was written by hand (it has no hfssl marker line); hfssl keeps it. Move it "
                              "away to get a generated card")
    text = str(build_model_card(output_dir, repo_id=repo_id, license=license, language=language))
    for secret in secrets:
        if secret and len(secret) >= 8 and secret in text:
            raise HfsslError(f"not writing {path}: the card would contain your Hub token (check the run's flags)")
    tmp = os.path.join(output_dir, ".README.md.tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
    os.replace(tmp, path)
    return path


def write_run_card(output_dir: str, *, repo_id: str | None = None, secrets: Sequence[str | None] = ()) -> str | None:
    """The card at the end of a training run: ``write_model_card`` that never fails the finished run.

    A hand-written README.md is kept (info line); any other problem is one warning line with the command that
    writes the card later. The Hub token (``secrets``, plus ``HF_TOKEN``) never reaches the file.
    """
    try:
        return write_model_card(output_dir, repo_id=repo_id, secrets=(*secrets, os.environ.get("HF_TOKEN")))
    except ManualCardError as exc:
        logger.info("%s", exc)
    except Exception as exc:  # the model is exported already: a card problem must not fail the run
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        logger.warning("could not write the model card in %s (%s); write it later with "
                       "`python -m hfssl.push %s --card_only`", output_dir, reason, output_dir)
    return None


def is_generated_card(path: str | os.PathLike) -> bool:
    """True when ``path`` is a card hfssl wrote (and may therefore regenerate)."""
    try:
        return CARD_MARKER_PREFIX in Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return False
