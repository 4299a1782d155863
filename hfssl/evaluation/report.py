"""Summaries over seeds, the GLUE average and the BERT-paper style results table.

results.json keeps raw metric values (0-1 for accuracy/F1, -1..1 for correlations); the printed
table shows them x100 with one decimal, as in the BERT paper.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from typing import Any

from hfssl.evaluation.glue import GLUE_TASKS, TABLE_HEADERS, TABLE_ORDER

# BERT-base GLUE *test* scores from Devlin et al. 2019, Table 1 (for orientation, not a dev comparison).
BERT_BASE_PAPER_TEST = {"mnli": "84.6/83.4", "qqp": "71.2", "qnli": "90.5", "sst2": "93.5", "cola": "52.1",
                        "stsb": "85.8", "mrpc": "88.9", "rte": "66.4", "average": "79.6"}


def summarise(per_seed: Mapping[int, float]) -> dict[str, Any]:
    """Mean, sample standard deviation (0 for one seed) and the per-seed values (keys as strings for JSON)."""
    values = list(per_seed.values())
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return {"mean": float(statistics.fmean(values)), "std": float(std),
            "per_seed": {str(seed): float(v) for seed, v in per_seed.items()}}


def metric_key(metric: str, split: str, num_splits: int) -> str:
    """``accuracy`` for a single dev set; ``accuracy_matched`` / ``accuracy_mismatched`` for MNLI."""
    return metric if num_splits == 1 else f"{metric}_{split}"


def headline_keys(task_name: str, metrics: Mapping[str, Any]) -> list[str]:
    """The metric keys shown in the task's table column (two for MNLI: matched/mismatched)."""
    task = GLUE_TASKS.get(task_name)
    if task is None:
        return [k for k in metrics][:1]
    if len(task.eval_splits) == 1:
        return [task.headline]
    return [metric_key(task.headline, split, len(task.eval_splits)) for split in task.eval_splits]


def task_score(task_name: str, metrics: Mapping[str, Any]) -> float | None:
    """The one number a task contributes to the average: its headline metric (MNLI: matched accuracy)."""
    keys = headline_keys(task_name, metrics)
    return float(metrics[keys[0]]["mean"]) if keys and keys[0] in metrics else None


def glue_average(tasks: Mapping[str, Mapping[str, Any]]) -> float | None:
    """Mean headline score over the BERT-table tasks that ran (WNLI is left out, as in the BERT paper)."""
    scores = [task_score(name, tasks[name]["metrics"]) for name in TABLE_ORDER if name in tasks]
    scores = [s for s in scores if s is not None]
    return float(statistics.fmean(scores)) if scores else None


def _cell(metrics: Mapping[str, Any], keys: Sequence[str]) -> str:
    parts = []
    for key in keys:
        if key not in metrics:
            return "-"
        m = metrics[key]
        text = f"{100 * m['mean']:.1f}"
        if len(m["per_seed"]) > 1:
            text += f"±{100 * m['std']:.1f}"
        parts.append(text)
    return "/".join(parts)


def glue_row(tasks: Mapping[str, Mapping[str, Any]], average: float | None) -> dict[str, str]:
    row = {name: (_cell(tasks[name]["metrics"], headline_keys(name, tasks[name]["metrics"]))
                  if name in tasks else "-") for name in TABLE_ORDER}
    row["average"] = "-" if average is None else f"{100 * average:.1f}"
    return row


def format_glue_table(rows: Sequence[tuple[str, Mapping[str, str]]]) -> str:
    """A markdown table in the BERT paper's GLUE layout; ``rows`` are (system name, {task: cell})."""
    columns = [*TABLE_ORDER, "average"]
    header = ["System", *[TABLE_HEADERS.get(c, "Average") for c in columns]]
    body = [[label, *[cells.get(c, "-") for c in columns]] for label, cells in rows]
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"

    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(header), sep, *[line(r) for r in body]])


def format_task_lines(tasks: Mapping[str, Mapping[str, Any]]) -> str:
    """Every metric of every task, x100, one task per line (for custom tasks and WNLI)."""
    lines = []
    for name, result in tasks.items():
        shown = ", ".join(f"{k} {100 * v['mean']:.2f}" + (f"±{100 * v['std']:.2f}" if len(v["per_seed"]) > 1 else "")
                          for k, v in result["metrics"].items())
        lines.append(f"{name}: {shown} (train {result['num_train']}, dev {result['num_eval']})")
    return "\n".join(lines)
