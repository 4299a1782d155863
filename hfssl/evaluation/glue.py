"""The GLUE task table, readers for the official TSV files and the Hub copy, and custom tasks.

Every reader returns ``datasets.Dataset`` objects with the same columns: ``text_a``, optionally
``text_b``, and ``label`` (int class id, or float score for regression), so the training code
never needs to know which task it is running.
"""

from __future__ import annotations

import csv
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Union

import datasets

from hfssl.errors import ConfigError, DataError
from hfssl.evaluation.args import HUB_GLUE
from hfssl.evaluation.scoring import METRIC_MODULES, REGRESSION_METRICS
from hfssl.logging import get_logger

logger = get_logger(__name__)

HUB_DATASET = HUB_GLUE
LAST = -1  # label column index meaning "the last column of the row" (STS-B, MNLI)
ColumnRef = Union[str, int]


@dataclass(frozen=True)
class GlueTask:
    """One classification/regression task: where its data lives and how it is scored."""

    name: str
    metrics: tuple[str, ...]  # keys of scoring.METRIC_MODULES
    headline: str  # the metric shown in the BERT-paper table column
    label_names: tuple[str, ...] | None  # None = regression (num_labels=1)
    dir_name: str = ""
    hub_text_columns: tuple[str, ...] = ()
    tsv_text_columns: tuple[ColumnRef, ...] = ()
    tsv_label_column: ColumnRef = "label"
    tsv_header: bool = True
    tsv_encoding: str = "utf-8"
    # Label strings in the TSV (RTE "entailment") -> class id; None when the TSV holds ids already.
    tsv_label_map: dict[str, int] | None = None
    # eval split name -> (Hub split, TSV file)
    eval_splits: dict[str, tuple[str, str]] = field(
        default_factory=lambda: {"validation": ("validation", "dev.tsv")}
    )

    @property
    def is_regression(self) -> bool:
        return self.label_names is None

    @property
    def num_labels(self) -> int:
        return 1 if self.label_names is None else len(self.label_names)


_NLI3 = {"entailment": 0, "neutral": 1, "contradiction": 2}
_NLI2 = {"entailment": 0, "not_entailment": 1}

GLUE_TASKS: dict[str, GlueTask] = {
    t.name: t
    for t in (
        GlueTask("cola", ("mcc",), "matthews_correlation", ("unacceptable", "acceptable"), "CoLA",
                 ("sentence",), (3,), 1, tsv_header=False),
        GlueTask("sst2", ("accuracy",), "accuracy", ("negative", "positive"), "SST-2", ("sentence",),
                 ("sentence",), "label"),
        GlueTask("mrpc", ("f1", "accuracy"), "f1", ("not_equivalent", "equivalent"), "MRPC",
                 ("sentence1", "sentence2"), ("#1 String", "#2 String"), "Quality", tsv_encoding="utf-8-sig"),
        GlueTask("stsb", ("pearson_spearman",), "spearmanr", None, "STS-B", ("sentence1", "sentence2"),
                 ("sentence1", "sentence2"), LAST),
        GlueTask("qqp", ("f1", "accuracy"), "f1", ("not_duplicate", "duplicate"), "QQP",
                 ("question1", "question2"), ("question1", "question2"), "is_duplicate"),
        GlueTask("mnli", ("accuracy",), "accuracy", ("entailment", "neutral", "contradiction"), "MNLI",
                 ("premise", "hypothesis"), ("sentence1", "sentence2"), LAST, tsv_label_map=_NLI3,
                 eval_splits={"matched": ("validation_matched", "dev_matched.tsv"),
                              "mismatched": ("validation_mismatched", "dev_mismatched.tsv")}),
        GlueTask("qnli", ("accuracy",), "accuracy", ("entailment", "not_entailment"), "QNLI",
                 ("question", "sentence"), ("question", "sentence"), "label", tsv_label_map=_NLI2),
        GlueTask("rte", ("accuracy",), "accuracy", ("entailment", "not_entailment"), "RTE",
                 ("sentence1", "sentence2"), ("sentence1", "sentence2"), "label", tsv_label_map=_NLI2),
        GlueTask("wnli", ("accuracy",), "accuracy", ("not_entailment", "entailment"), "WNLI",
                 ("sentence1", "sentence2"), ("sentence1", "sentence2"), "label"),
    )
}
# The BERT paper's GLUE table order (Devlin et al. 2019, Table 1); WNLI is left out there.
TABLE_ORDER = ("mnli", "qqp", "qnli", "sst2", "cola", "stsb", "mrpc", "rte")
TABLE_HEADERS = {"mnli": "MNLI-(m/mm)", "qqp": "QQP", "qnli": "QNLI", "sst2": "SST-2", "cola": "CoLA",
                 "stsb": "STS-B", "mrpc": "MRPC", "rte": "RTE", "wnli": "WNLI"}


@dataclass
class TaskData:
    train: datasets.Dataset
    evals: dict[str, datasets.Dataset]  # eval split name -> dataset


def get_task(name: str) -> GlueTask:
    key = name.lower().replace("-", "")
    if key not in GLUE_TASKS:
        raise ConfigError(f"unknown GLUE task {name!r}; choose one of {', '.join(GLUE_TASKS)}, or 'all'")
    return GLUE_TASKS[key]


def _text_columns(n: int) -> list[str]:
    return ["text_a", "text_b"][:n]


def _resolve_column(ref: ColumnRef, header: list[str] | None, path: str) -> int:
    if isinstance(ref, int):
        return ref
    if header is None or ref not in header:
        raise DataError(f"{path} has no column {ref!r} in its header; is it the official GLUE TSV?")
    return header.index(ref)


def read_glue_tsv(task: GlueTask, path: str) -> datasets.Dataset:
    """Read one official GLUE TSV file (download_glue_data.py layout) for ``task``.

    Quoting is off: SST-2 and MRPC sentences contain quote characters that are part of the text.
    Rows with too few fields (a handful of broken lines in QQP) are skipped with a warning.
    """
    if not os.path.isfile(path):
        raise DataError(f"GLUE file {path} does not exist")
    csv.field_size_limit(sys.maxsize)
    with open(path, encoding=task.tsv_encoding, newline="") as fh:
        rows = list(csv.reader(fh, delimiter="\t", quoting=csv.QUOTE_NONE))
    header = None
    if task.tsv_header:
        if not rows:
            raise DataError(f"GLUE file {path} is empty")
        header = [h.strip() for h in rows[0]]
        rows = rows[1:]
    text_idx = [_resolve_column(c, header, path) for c in task.tsv_text_columns]
    label_idx = _resolve_column(task.tsv_label_column, header, path)
    needed = max([*text_idx, label_idx, 0]) + 1
    columns: dict[str, list[Any]] = {c: [] for c in (*_text_columns(len(text_idx)), "label")}
    skipped = 0
    first_line = 2 if task.tsv_header else 1
    for lineno, row in enumerate(rows, start=first_line):
        if not row or len(row) < needed or (header is not None and len(row) < len(header)):
            skipped += 1
            continue
        for name, i in zip(_text_columns(len(text_idx)), text_idx):
            columns[name].append(row[i])
        columns["label"].append(_parse_label(task, row[label_idx].strip(), path, lineno))
    if skipped:
        logger.warning("%s: skipped %d malformed rows", path, skipped)
    if not columns["label"]:
        raise DataError(f"GLUE file {path} has no usable rows")
    return datasets.Dataset.from_dict(columns)


def _parse_label(task: GlueTask, value: str, path: str, lineno: int) -> int | float:
    try:
        if task.is_regression:
            return float(value)
        if task.tsv_label_map is not None:
            return task.tsv_label_map[value]
        label = int(value)
    except (KeyError, ValueError):
        raise DataError(f"{path}:{lineno}: unexpected label {value!r} for task {task.name}") from None
    if not 0 <= label < task.num_labels:
        raise DataError(f"{path}:{lineno}: label {label} is out of range for task {task.name}")
    return label


def load_glue_dir(task: GlueTask, glue_dir: str) -> TaskData:
    """Train and dev sets of ``task`` from ``glue_dir/<Task>/`` (official TSV layout)."""
    if not os.path.isdir(glue_dir):
        raise DataError(f"--glue_dir {glue_dir} is not a directory")
    task_dir = os.path.join(glue_dir, task.dir_name)
    if not os.path.isdir(task_dir):
        raise DataError(f"no {task.dir_name}/ folder in --glue_dir {glue_dir}")
    train = read_glue_tsv(task, os.path.join(task_dir, "train.tsv"))
    evals = {split: read_glue_tsv(task, os.path.join(task_dir, fname))
             for split, (_, fname) in task.eval_splits.items()}
    return TaskData(train, evals)


def load_glue_hub(task: GlueTask, cache_dir: str | None = None) -> TaskData:
    """Train and dev sets of ``task`` from the Hub dataset ``nyu-mll/glue``."""
    try:
        raw = datasets.load_dataset(HUB_DATASET, task.name, cache_dir=cache_dir)
    except Exception as exc:  # offline, no such config, auth: all end in the same advice
        reason = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise DataError(f"could not load {HUB_DATASET}/{task.name} from the Hub ({reason}); "
                        "offline, pass --glue_dir DIR with the official GLUE TSV files") from None

    def standardise(ds: datasets.Dataset) -> datasets.Dataset:
        rename = dict(zip(task.hub_text_columns, _text_columns(len(task.hub_text_columns))))
        keep = [*task.hub_text_columns, "label"]
        ds = ds.remove_columns([c for c in ds.column_names if c not in keep]).rename_columns(rename)
        return ds.cast_column("label", datasets.Value("float32" if task.is_regression else "int64"))

    return TaskData(standardise(raw["train"]),
                    {split: standardise(raw[hub_split]) for split, (hub_split, _) in task.eval_splits.items()})


def load_glue_task(task: GlueTask, glue_dir: str | None = None, cache_dir: str | None = None) -> TaskData:
    return load_glue_dir(task, glue_dir) if glue_dir else load_glue_hub(task, cache_dir)


def _read_table(path: str) -> datasets.Dataset:
    if not os.path.isfile(path):
        raise DataError(f"data file {path} does not exist")
    lower = path.lower()
    if lower.endswith((".csv", ".csv.gz")):
        builder = "csv"
    elif lower.endswith((".jsonl", ".json", ".jsonl.gz", ".json.gz")):
        builder = "json"
    elif lower.endswith((".tsv", ".tsv.gz")):
        return datasets.load_dataset("csv", data_files=path, delimiter="\t", quoting=csv.QUOTE_NONE,
                                     split="train")
    else:
        raise DataError(f"{path}: custom task files must be .csv, .tsv or .jsonl/.json")
    return datasets.load_dataset(builder, data_files=path, split="train")


def _is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and value != value)  # NaN: an empty CSV cell


def _check_no_missing(values: Sequence[Any], column: str, split: str, path: str) -> None:
    """A row without a label would silently become a class of its own (and one without text, an empty input)."""
    missing = [i for i, v in enumerate(values, start=1) if _is_missing(v)]
    if missing:
        raise DataError(f"{path}: {len(missing)} of {len(values)} {split} rows have no value in column {column!r} "
                        f"(first: data row {missing[0]}); fill them in or remove those rows")


def load_custom_task(train_file: str, validation_file: str, text_columns: Sequence[str], label_column: str,
                     metric: str) -> tuple[GlueTask, TaskData]:
    """A task from local CSV/JSONL files: ``text_columns`` (one or two) and ``label_column``.

    Class labels may be ints or strings; they are mapped to ids in sorted order of the training labels.
    ``metric=pearson_spearman`` makes it a regression task (float labels, num_labels=1).
    """
    if metric not in METRIC_MODULES:
        raise ConfigError(f"unknown --metric {metric!r}; choose one of accuracy, f1, mcc, pearson_spearman")
    if not 1 <= len(text_columns) <= 2:
        raise ConfigError("--text_columns takes one or two column names, e.g. 'sentence' or 'premise,hypothesis'")
    raw = {"train": _read_table(train_file), "validation": _read_table(validation_file)}
    for split, ds in raw.items():
        missing = [c for c in (*text_columns, label_column) if c not in ds.column_names]
        if missing:
            flag = "--label_column" if label_column in missing else "--text_columns"
            raise DataError(f"{split} file has no column {missing[0]!r} ({flag}); "
                            f"its columns are {', '.join(ds.column_names)}")
        if len(ds) == 0:
            raise DataError(f"{split} file is empty")
        for column in (label_column, *text_columns):
            _check_no_missing(ds[column], column, split, train_file if split == "train" else validation_file)
    regression = metric in REGRESSION_METRICS
    label_names: tuple[str, ...] | None = None
    convert: Callable[[Any], Any]
    if regression:
        convert = float
    else:
        values = sorted({v for v in raw["train"][label_column]}, key=lambda v: (str(type(v)), v))
        if len(values) < 2:
            raise DataError(f"training labels in {label_column!r} have a single value; need at least two classes")
        label_ids = {v: i for i, v in enumerate(values)}
        label_names = tuple(str(v) for v in values)

        def convert(v: Any) -> int:
            if v not in label_ids:
                raise DataError(f"validation label {v!r} never occurs in the training file")
            return label_ids[v]

    def standardise(ds: datasets.Dataset) -> datasets.Dataset:
        columns: dict[str, list[Any]] = {}
        for new, old in zip(_text_columns(len(text_columns)), text_columns):
            columns[new] = ["" if t is None else str(t) for t in ds[old]]
        columns["label"] = [convert(v) for v in ds[label_column]]
        return datasets.Dataset.from_dict(columns)

    headline = {"mcc": "matthews_correlation", "pearson_spearman": "spearmanr"}.get(metric, metric)
    task = GlueTask("custom", (metric,), headline, label_names)
    return task, TaskData(standardise(raw["train"]), {"validation": standardise(raw["validation"])})
