"""The shipped evaluate metric modules agree with scikit-learn / scipy and load offline."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

from hfssl.errors import ConfigError
from hfssl.evaluation.scoring import compute_metrics, load_metric


@pytest.fixture
def labels() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    refs = rng.integers(0, 2, size=300)
    # Correlated but imperfect predictions, so every metric is strictly between its extremes.
    preds = np.where(rng.random(300) < 0.75, refs, 1 - refs)
    return preds, refs


def test_accuracy_matches_sklearn(labels):
    preds, refs = labels
    got = load_metric("accuracy").compute(predictions=preds, references=refs)["accuracy"]
    assert got == pytest.approx(accuracy_score(refs, preds), abs=1e-12)
    assert 0.6 < got < 0.9


def test_f1_matches_sklearn(labels):
    preds, refs = labels
    got = load_metric("f1").compute(predictions=preds, references=refs)["f1"]
    assert got == pytest.approx(f1_score(refs, preds), abs=1e-12)
    # Binary F1 of class 1 differs from class 0's: check we score the positive class.
    assert got != pytest.approx(f1_score(refs, preds, pos_label=0), abs=1e-6)


def test_mcc_matches_sklearn(labels):
    preds, refs = labels
    got = load_metric("mcc").compute(predictions=preds, references=refs)["matthews_correlation"]
    assert got == pytest.approx(matthews_corrcoef(refs, preds), abs=1e-12)
    constant = load_metric("mcc").compute(predictions=np.ones_like(refs), references=refs)
    assert constant["matthews_correlation"] == 0.0


def test_pearson_spearman_match_scipy():
    rng = np.random.default_rng(1)
    refs = rng.uniform(0, 5, size=200)
    preds = refs + rng.normal(0, 1.5, size=200) ** 3  # monotone-ish noise: pearson != spearman
    got = load_metric("pearson_spearman").compute(predictions=preds, references=refs)
    assert got["pearson"] == pytest.approx(pearsonr(preds, refs)[0], abs=1e-12)
    assert got["spearmanr"] == pytest.approx(spearmanr(preds, refs)[0], abs=1e-12)
    assert got["pearson"] != pytest.approx(got["spearmanr"], abs=1e-3)


def test_compute_metrics_combines_glue_pairs(labels):
    preds, refs = labels
    out = compute_metrics(("f1", "accuracy"), preds, refs)
    assert set(out) == {"f1", "accuracy"}
    assert out["accuracy"] == pytest.approx(accuracy_score(refs, preds))


def test_unknown_metric_is_a_config_error():
    with pytest.raises(ConfigError, match="unknown metric 'bleu'"):
        load_metric("bleu")
