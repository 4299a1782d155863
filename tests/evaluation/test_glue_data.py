"""GLUE readers: every official TSV layout, the real files when present, custom CSV/JSONL tasks, errors."""

from __future__ import annotations

import json

import pytest

from hfssl.errors import ConfigError, DataError
from hfssl.evaluation.glue import (
    GLUE_TASKS,
    get_task,
    load_custom_task,
    load_glue_dir,
    load_glue_hub,
    read_glue_tsv,
)
from tests.evaluation.glue_fixtures import EXPECTED_TRAIN, write_glue_dir


def _rows(ds):
    b = ds["text_b"] if "text_b" in ds.column_names else [None] * len(ds)
    return list(zip(ds["text_a"], b, ds["label"]))


@pytest.mark.parametrize("task_name", sorted(GLUE_TASKS))
def test_reads_each_official_layout(tmp_path, task_name):
    write_glue_dir(tmp_path)
    task = GLUE_TASKS[task_name]
    data = load_glue_dir(task, str(tmp_path))
    assert _rows(data.train) == EXPECTED_TRAIN[task_name]
    assert set(data.evals) == set(task.eval_splits)
    for ds in data.evals.values():
        assert len(ds) >= 1 and set(ds.column_names) >= {"text_a", "label"}


def test_mnli_has_matched_and_mismatched_dev_sets(tmp_path):
    write_glue_dir(tmp_path, ["MNLI"])
    data = load_glue_dir(GLUE_TASKS["mnli"], str(tmp_path))
    # gold_label is the last column, after five annotator labels that sometimes disagree with it.
    assert data.evals["matched"]["label"] == [1]  # neutral
    assert data.evals["mismatched"]["label"] == [2]  # contradiction


def test_sst2_quotes_are_kept_verbatim(tmp_path):
    write_glue_dir(tmp_path, ["SST-2"])
    ds = read_glue_tsv(GLUE_TASKS["sst2"], str(tmp_path / "SST-2" / "dev.tsv"))
    assert '" often "' in ds["text_a"][0]


def test_unknown_label_string_names_file_and_line(tmp_path):
    write_glue_dir(tmp_path, ["RTE"])
    path = tmp_path / "RTE" / "train.tsv"
    path.write_text(path.read_text().replace("not_entailment", "maybe"), encoding="utf-8")
    with pytest.raises(DataError, match=r"train.tsv:2: unexpected label 'maybe'"):
        read_glue_tsv(GLUE_TASKS["rte"], str(path))


def test_missing_files_and_dirs_are_data_errors(tmp_path):
    write_glue_dir(tmp_path, ["QNLI"])
    (tmp_path / "QNLI" / "train.tsv").unlink()  # as in ../shared/data: QNLI has dev only
    with pytest.raises(DataError, match="QNLI/train.tsv does not exist"):
        load_glue_dir(GLUE_TASKS["qnli"], str(tmp_path))
    with pytest.raises(DataError, match="no CoLA/ folder"):
        load_glue_dir(GLUE_TASKS["cola"], str(tmp_path))
    with pytest.raises(DataError, match="is not a directory"):
        load_glue_dir(GLUE_TASKS["cola"], str(tmp_path / "nope"))


def test_hub_offline_suggests_glue_dir():
    # conftest sets HF_DATASETS_OFFLINE=1, so the Hub copy cannot be reached.
    with pytest.raises(DataError, match="--glue_dir"):
        load_glue_hub(GLUE_TASKS["rte"])


def test_task_names_are_forgiving_but_checked():
    assert get_task("SST-2").name == "sst2" and get_task("STSB").name == "stsb"
    with pytest.raises(ConfigError, match="unknown GLUE task 'sst5'"):
        get_task("sst5")


# Official row counts (SOURCES.md): the reader must see every row of the real files.
_REAL_COUNTS = {"cola": (8551, 1043), "sst2": (67349, 872), "mrpc": (3668, 408), "stsb": (5749, 1500),
                "rte": (2490, 277), "wnli": (635, 71)}


@pytest.mark.parametrize("task_name", sorted(_REAL_COUNTS))
def test_real_glue_files(shared_data, task_name):
    task = GLUE_TASKS[task_name]
    data = load_glue_dir(task, str(shared_data / "glue"))
    assert (len(data.train), len(data.evals["validation"])) == _REAL_COUNTS[task_name]
    labels = set(data.train["label"])
    if task.is_regression:
        assert min(labels) == 0.0 and max(labels) == 5.0
    else:
        assert labels == set(range(task.num_labels))


def test_real_qnli_dev_reads_string_labels(shared_data):
    ds = read_glue_tsv(GLUE_TASKS["qnli"], str(shared_data / "glue" / "QNLI" / "dev.tsv"))
    assert len(ds) == 5463 and set(ds["label"]) == {0, 1}


def test_custom_csv_with_string_labels(tmp_path):
    (tmp_path / "train.csv").write_text('premise,hypothesis,y\n"a, b",c,yes\nd,e,no\nf,g,yes\n', encoding="utf-8")
    (tmp_path / "dev.csv").write_text("premise,hypothesis,y\nh,i,no\n", encoding="utf-8")
    task, data = load_custom_task(str(tmp_path / "train.csv"), str(tmp_path / "dev.csv"), ["premise", "hypothesis"],
                                  "y", "f1")
    assert task.label_names == ("no", "yes") and task.metrics == ("f1",)
    assert _rows(data.train) == [("a, b", "c", 1), ("d", "e", 0), ("f", "g", 1)]
    assert data.evals["validation"]["label"] == [0]


def test_custom_jsonl_regression(tmp_path):
    rows = [{"s": f"sentence {i}", "score": i / 2} for i in range(4)]
    for name in ("train", "dev"):
        (tmp_path / f"{name}.jsonl").write_text("\n".join(json.dumps(r) for r in rows), encoding="utf-8")
    task, data = load_custom_task(str(tmp_path / "train.jsonl"), str(tmp_path / "dev.jsonl"), ["s"], "score",
                                  "pearson_spearman")
    assert task.is_regression and task.num_labels == 1 and task.headline == "spearmanr"
    assert data.train["label"] == [0.0, 0.5, 1.0, 1.5]


def test_custom_task_errors(tmp_path):
    (tmp_path / "t.jsonl").write_text('{"text": "a", "label": 0}\n{"text": "b", "label": 1}\n', encoding="utf-8")
    (tmp_path / "d.jsonl").write_text('{"text": "a", "label": 2}\n', encoding="utf-8")
    t, d = str(tmp_path / "t.jsonl"), str(tmp_path / "d.jsonl")
    with pytest.raises(DataError, match=r"no column 'y' \(--label_column\); its columns are text, label"):
        load_custom_task(t, d, ["text"], "y", "accuracy")
    with pytest.raises(DataError, match="validation label 2 never occurs"):
        load_custom_task(t, d, ["text"], "label", "accuracy")
    with pytest.raises(DataError, match="does not exist"):
        load_custom_task(str(tmp_path / "missing.csv"), d, ["text"], "label", "accuracy")
    with pytest.raises(ConfigError, match="unknown --metric"):
        load_custom_task(t, d, ["text"], "label", "bleu")


def test_custom_tsv_keeps_quotes(tmp_path):
    (tmp_path / "train.tsv").write_text('text\tlabel\nsay "hi\t1\nno\t0\n', encoding="utf-8")
    task, data = load_custom_task(str(tmp_path / "train.tsv"), str(tmp_path / "train.tsv"), ["text"], "label",
                                  "accuracy")
    assert data.train["text_a"] == ['say "hi', "no"] and data.train["label"] == [1, 0]


@pytest.mark.parametrize("suffix", ["jsonl", "csv"])
def test_custom_rows_without_a_label_or_text_are_an_error_not_a_class(tmp_path, suffix):
    """A JSONL row without "label" (or a CSV row with an empty label cell) would otherwise become a class of its own."""
    import csv as csv_module

    def write(name, rows):
        path = tmp_path / f"{name}.{suffix}"
        if suffix == "jsonl":
            path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        else:
            with open(path, "w", newline="") as fh:
                writer = csv_module.writer(fh)
                writer.writerow(["sentence", "label"])
                writer.writerows([[r.get("sentence", ""), r.get("label", "")] for r in rows])
        return str(path)

    good = [{"sentence": "fine", "label": 1}, {"sentence": "bad", "label": 0}]
    no_label = write("train", [*good, {"sentence": "so so"}, *good])
    dev = write("dev", good)
    with pytest.raises(DataError, match=r"1 of 5 train rows have no value in column 'label' \(first: data row 3\)"):
        load_custom_task(no_label, dev, ["sentence"], "label", "accuracy")
    no_text = write("train2", [*good, {"label": 1}])
    with pytest.raises(DataError, match="no value in column 'sentence'"):
        load_custom_task(no_text, dev, ["sentence"], "label", "accuracy")
    task, data = load_custom_task(write("train3", good * 2), dev, ["sentence"], "label", "accuracy")
    assert task.label_names == ("0", "1") and data.train["label"] == [1, 0, 1, 0]
