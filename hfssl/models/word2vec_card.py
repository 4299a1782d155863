"""The model card (README.md) of a word2vec export.

A word2vec export is a sentence-transformers model plus word2vec files, not a transformers checkpoint, so its
card says how to load it with those (``SentenceTransformer(repo)``, gensim's ``KeyedVectors``), declares
``library_name: sentence-transformers`` (the Hub then shows the right snippet and widget), and puts the
intrinsic evaluation of ``results.json`` (WordSim-353 and SimLex-999 Spearman, Google analogy accuracy) in
the ``model-index``. Like ``hfssl.hub.card`` (whose table helpers it shares) it is rebuilt from what the run
wrote and never fails on a missing piece.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData

#: ``config.json`` of a word2vec export carries this pair (hfssl.models.word2vec writes it).
EXPORT_MARKER = ("export_format", "word2vec")
_EVAL_NAMES = {"wordsim353": ("WordSim-353", "spearman", "word-similarity", "Word similarity"),
               "simlex999": ("SimLex-999", "spearman", "word-similarity", "Word similarity"),
               "google_analogy": ("Google analogy test set", "accuracy", "word-analogy", "Word analogy")}


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def is_word2vec_export(output_dir: str | os.PathLike) -> bool:
    config = _read_json(Path(output_dir) / "config.json")
    return isinstance(config, dict) and config.get(EXPORT_MARKER[0]) == EXPORT_MARKER[1]


def _eval_results(evaluation: dict[str, Any]) -> list[EvalResult]:
    out = []
    for key, (dataset, metric, task_type, task_name) in _EVAL_NAMES.items():
        value = (evaluation.get(key) or {}).get(metric)
        if isinstance(value, (int, float)) and math.isfinite(value):
            out.append(EvalResult(task_type=task_type, task_name=task_name, dataset_type=key, dataset_name=dataset,
                                  metric_type=metric, metric_name=metric, metric_value=round(float(value), 4)))
    return out


def _results_table(evaluation: dict[str, Any]) -> str:
    rows = ["| Evaluation | Metric | Score | Coverage |", "|---|---|---|---|"]
    for key, (dataset, metric, _, _) in _EVAL_NAMES.items():
        result = evaluation.get(key) or {}
        value = result.get(metric)
        if not isinstance(value, (int, float)) or not math.isfinite(value):
            continue
        count = result.get("pairs", result.get("questions"))
        covered = f"{count} ({100 * (1 - result.get('oov_ratio', 0)):.1f}% in vocabulary)" if count is not None else ""
        rows.append(f"| {dataset} | {metric} | {value:.4f} | {covered} |")
    return "\n".join(rows) if len(rows) > 2 else ""


def _usage(repo: str, has_binary: bool) -> str:
    lines = ["from sentence_transformers import SentenceTransformer", "",
             f'model = SentenceTransformer("{repo}")  # a text embeds to the mean of its word vectors',
             'embeddings = model.encode(["The king rode to the castle.", "A queen in her palace."])',
             "print(model.similarity(embeddings[0], embeddings[1]))"]
    if has_binary:
        lines += ["", "# The word vectors themselves, with gensim:", "from gensim.models import KeyedVectors",
                  "from huggingface_hub import hf_hub_download", "",
                  f'vectors = KeyedVectors.load_word2vec_format(hf_hub_download("{repo}", "word2vec.bin"), binary=True)',
                  'print(vectors.most_similar("king"))']
    return "\n".join(lines)


def build_word2vec_card(output_dir: str | os.PathLike, *, repo_id: str | None = None, license: str | None = None,
                        language: str | list[str] | None = None, plot: bool = True,
                        plot_path: str | os.PathLike | None = None) -> ModelCard:
    """The card of the word2vec export in ``output_dir`` (same signature as ``hfssl.hub.card.build_model_card``)."""
    from hfssl.hub import card as base
    from hfssl.hub.plot import read_metrics, render_loss_curve
    from hfssl.run_info import redact

    out = Path(output_dir)
    config = _read_json(out / "config.json") or {}
    run_info = _read_json(out / "run_config.json") or {}
    flags = redact(run_info.get("config") or {}) if isinstance(run_info, dict) else {}
    results = _read_json(out / "results.json") or {}
    evaluation = results.get("evaluation") or {} if isinstance(results, dict) else {}
    name = (repo_id or out.resolve().name).split("/")[-1]
    repo = repo_id or f"path/to/{out.resolve().name}"
    architecture = config.get("architecture", "skipgram")
    dataset = flags.get("dataset_name") if base._is_hub_id(flags.get("dataset_name")) else None
    eval_results = _eval_results(evaluation)
    data = ModelCardData(
        library_name="sentence-transformers", license=license or flags.get("license") or base.DEFAULT_LICENSE,
        language=language or flags.get("language") or "en", pipeline_tag="sentence-similarity",
        tags=["hfssl", "self-supervised", "word2vec", "skip-gram" if architecture == "skipgram" else "cbow",
              "sentence-transformers", "static-embeddings", "feature-extraction"],
        datasets=[dataset] if dataset else None, model_name=name,
        eval_results=eval_results or None, metrics=sorted({r.metric_type for r in eval_results}) or None,
    )
    vocab, dim = config.get("vocab_size"), config.get("vector_size")
    how = "continuous bag of words (CBOW)" if architecture == "cbow" else "skip-gram"
    sections = [f"# {name}", "",
                f"word2vec {how} vectors with negative sampling trained from scratch with hfssl: "
                f"{f'{vocab:,}' if isinstance(vocab, int) else 'the'} words, {dim or '?'} dimensions. The repository holds "
                "a sentence-transformers model (one `StaticEmbedding` module over a word-level tokenizer: a text "
                "embeds to the mean of its word vectors, unknown words count as zeros) and the vectors in the "
                "word2vec text (`word2vec.txt`) and binary (`word2vec.bin`) formats. No custom code is needed to load it.",
                "", "## Usage", "", "```python", _usage(repo, (out / "word2vec.bin").is_file()), "```"]
    settings = [f"- {key}: `{config[key]}`" for key in ("architecture", "vector_size", "window", "negative", "sample",
                                                         "min_count", "ns_exponent", "cbow_mean", "lowercase",
                                                         "max_sentence_length") if key in config]
    if settings:
        sections += ["", "## word2vec settings", "", *settings]
    data_lines = []
    if flags.get("dataset_name"):
        data_lines.append(f"- Dataset: `{flags['dataset_name']}`")
    if flags.get("train_file"):
        files = flags["train_file"] if isinstance(flags["train_file"], list) else [flags["train_file"]]
        data_lines.append("- Local files: " + ", ".join(f"`{base._public(f)}`" for f in files))
    vocabulary = _read_json(out / "vocabulary" / "vocabulary.json")
    if isinstance(vocabulary, dict) and vocabulary.get("total_words"):
        data_lines.append(f"- {vocabulary['total_words']:,} words in {vocabulary.get('documents', '?'):,} documents, "
                          f"{vocabulary.get('distinct_words', 0):,} distinct")
    if data_lines:
        sections += ["", "## Training data", "", *data_lines]
    table = _results_table(evaluation)
    if table:
        sections += ["", "## Evaluation", "",
                     "Spearman correlation of cosine similarity with human judgements, and 3CosAdd analogy accuracy "
                     "(gensim's protocol: pairs or questions with a word outside the vocabulary are skipped).", "",
                     table]
    train, evals = read_metrics(out / "metrics.jsonl") if (out / "metrics.jsonl").is_file() else ([], [])
    if train:
        sections += ["", "## Training", "",
                     f"- Steps: {int(train[-1][0]):,}; final negative-sampling loss {train[-1][1]:.4f}"]
        if plot:
            render_loss_curve(train, evals, plot_path or out / base.LOSS_PLOT, title=f"{name}: loss")
            sections += ["", f"![Loss curve]({base.LOSS_PLOT})"]
    config_table = base._config_table(flags)
    if config_table:
        sections += ["", "## Training configuration", "", config_table]
    versions = run_info.get("versions") if isinstance(run_info, dict) else None
    if isinstance(versions, dict) and versions:
        sections += ["", "## Framework versions", "", *[f"- {k}: {v}" for k, v in sorted(versions.items())]]
    sections += ["", base.CARD_MARKER, ""]
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(sections))


__all__ = ["EXPORT_MARKER", "build_word2vec_card", "is_word2vec_export"]
