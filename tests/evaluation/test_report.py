"""Seed summaries, the GLUE average and the BERT-paper table layout."""

from __future__ import annotations

import statistics

import pytest

from hfssl.evaluation.report import format_glue_table, glue_average, glue_row, summarise


def _m(*values: float) -> dict:
    return summarise({seed: v for seed, v in enumerate(values, start=1)})


def test_summarise_mean_sample_std_and_string_seeds():
    s = summarise({1: 0.8, 2: 0.9, 3: 0.7})
    assert s["mean"] == pytest.approx(0.8)
    assert s["std"] == pytest.approx(statistics.stdev([0.8, 0.9, 0.7]))
    assert s["per_seed"] == {"1": 0.8, "2": 0.9, "3": 0.7}
    assert summarise({7: 0.5})["std"] == 0.0


def test_average_uses_headline_metrics_and_skips_wnli():
    tasks = {
        "mrpc": {"metrics": {"f1": _m(0.9), "accuracy": _m(0.5)}},
        "stsb": {"metrics": {"pearson": _m(0.1), "spearmanr": _m(0.8)}},
        "mnli": {"metrics": {"accuracy_matched": _m(0.7), "accuracy_mismatched": _m(0.0)}},
        "wnli": {"metrics": {"accuracy": _m(0.0)}},
    }
    assert glue_average(tasks) == pytest.approx((0.9 + 0.8 + 0.7) / 3)
    assert glue_average({}) is None


def test_table_has_bert_layout_and_dashes_for_missing_tasks():
    tasks = {"sst2": {"metrics": {"accuracy": _m(0.91, 0.93)}},
             "mnli": {"metrics": {"accuracy_matched": _m(0.8), "accuracy_mismatched": _m(0.81)}}}
    table = format_glue_table([("mine", glue_row(tasks, glue_average(tasks)))])
    header, sep, row = table.splitlines()
    cols = [c.strip() for c in header.strip("|").split("|")]
    assert cols == ["System", "MNLI-(m/mm)", "QQP", "QNLI", "SST-2", "CoLA", "STS-B", "MRPC", "RTE", "Average"]
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[1] == "80.0/81.0"
    assert cells[4] == "92.0±1.4"  # mean ± sample std over two seeds, x100
    assert cells[2] == cells[3] == cells[5] == "-"
    assert cells[-1] == "86.0"  # (0.80 + 0.92) / 2
    assert set(sep) <= {"|", "-"}
