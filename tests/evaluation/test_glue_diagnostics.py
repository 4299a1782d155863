"""Evaluation says when a score means nothing: collapsed predictions, the majority baseline, collapsed features."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from accelerate.state import AcceleratorState, GradientState

from hfssl.evaluation.diagnostics import (
    COLLAPSED_FEATURE_SPREAD,
    feature_spread,
    majority_baseline,
    prediction_check,
)
from hfssl.evaluation.glue import GLUE_TASKS
from hfssl.evaluation.scoring import compute_metrics
from tests.evaluation.glue_fixtures import write_sentiment_task


@pytest.fixture(autouse=True)
def fresh_accelerate_state():
    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    yield
    AcceleratorState._reset_state(True)
    GradientState._reset_state()


def test_prediction_check_classification_and_regression():
    names = ("not_equivalent", "equivalent")
    labels = np.array([1, 0, 1, 1])
    check = prediction_check(np.array([1, 1, 1, 1]), labels, regression=False, label_names=names)
    assert check == {"collapsed": True, "distinct": 1, "top_class": "equivalent", "top_share": 1.0}
    check = prediction_check(np.array([1, 0, 1, 1]), labels, regression=False, label_names=names)
    assert not check["collapsed"] and check["distinct"] == 2 and check["top_share"] == 0.75
    gold = np.array([0.0, 1.5, 3.0, 4.5, 5.0])
    assert prediction_check(np.full(5, 2.5) + 1e-4 * np.arange(5), gold, regression=True)["collapsed"]
    assert not prediction_check(gold * 0.5 + 1.0, gold, regression=True)["collapsed"]


def test_majority_baseline_is_what_a_constant_prediction_scores():
    mrpc = GLUE_TASKS["mrpc"]
    train, dev = [1, 1, 0, 1, 0], [1, 0, 1, 1, 1, 0]
    baseline = majority_baseline(mrpc, train, {"validation": dev})
    assert baseline == pytest.approx(compute_metrics(mrpc.metrics, [1] * 6, dev))
    assert baseline == pytest.approx({"f1": 0.8, "accuracy": 4 / 6})
    mnli = GLUE_TASKS["mnli"]
    assert set(majority_baseline(mnli, [0, 2, 2], {"matched": [2, 0], "mismatched": [1, 1]})) == {
        "accuracy_matched", "accuracy_mismatched"}
    assert majority_baseline(GLUE_TASKS["stsb"], [1.0, 2.0], {"validation": [3.0]}) is None


def test_feature_spread_separates_collapsed_from_varied_features():
    generator = torch.Generator().manual_seed(0)
    common = torch.randn(64, generator=generator)
    varied = torch.randn(100, 64, generator=generator)
    collapsed = common + 1e-4 * torch.randn(100, 64, generator=generator)
    assert feature_spread(varied) > 1.0
    assert feature_spread(collapsed) < COLLAPSED_FEATURE_SPREAD


def _dead_pooler_bert(path: Path, tiny_bert: Path) -> Path:
    """A real BERT checkpoint whose pooler maps every input to the same vector (weights zeroed)."""
    from transformers import AutoTokenizer, BertModel

    model = BertModel.from_pretrained(tiny_bert)
    with torch.no_grad():
        model.pooler.dense.weight.zero_()
    model.save_pretrained(path)
    AutoTokenizer.from_pretrained(tiny_bert).save_pretrained(path)
    return path


def test_collapsed_run_warns_and_records_it(tiny_bert, tmp_path, capsys):
    """A checkpoint with constant features: every dev prediction is one class, and the run says so
    (log warnings, results.json fields, a WARNING line under the table) instead of just printing a score."""
    from tests.recipes.test_glue_finetune import _recipe_main  # the recipe's own argument parsing

    model = _dead_pooler_bert(tmp_path / "dead", tiny_bert)
    train_file, dev_file = write_sentiment_task(tmp_path, n_train=24, n_dev=12)
    out = tmp_path / "out"
    _recipe_main()(["--model_name_or_path", str(model), "--train_file", str(train_file), "--validation_file",
                    str(dev_file), "--text_columns", "sentence", "--num_train_epochs", "1",
                    "--per_device_train_batch_size", "8", "--learning_rate", "1e-5", "--seeds", "1,2",
                    "--output_dir", str(out)])
    task = json.loads((out / "results.json").read_text())["tasks"]["custom"]
    assert task["collapsed_seeds"] == [1, 2]
    for seed in ("1", "2"):
        check = task["prediction_check"][seed]["validation"]
        assert check["collapsed"] and check["distinct"] == 1 and check["top_share"] == 1.0
    assert task["feature_spread"] == 0.0
    assert set(task["majority_baseline"]) == {"accuracy"}
    captured = capsys.readouterr()
    warnings = [line for line in captured.err.splitlines() if " WARNING hfssl." in line]
    assert sum("all 12 dev predictions are" in w and "--learning_rate" in w for w in warnings) == 2
    assert sum("nearly the same head input" in w for w in warnings) == 1
    printed = captured.out
    assert "WARNING custom: dev predictions collapsed to one class for 2 of 2 seeds (1, 2)" in printed
    assert "feature_spread 0" in printed


def test_default_learning_rate_follows_the_width():
    from hfssl.evaluation.args import FinetuneArguments, default_learning_rate

    assert [default_learning_rate(h) for h in (64, 128, 256, 384, 512, 768, 1024, None)] == [
        3e-4, 3e-4, 3e-4, 1e-4, 5e-5, 2e-5, 2e-5, 2e-5]
    assert FinetuneArguments().learning_rate is None  # resolved by the runner from the checkpoint's config
    assert FinetuneArguments(learning_rate=4e-5, mode="lp_ft").effective_ft_learning_rate == 2e-5
    with pytest.raises(ValueError, match="learning_rate"):
        FinetuneArguments(learning_rate=0.0)
