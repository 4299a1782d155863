"""Checks that say when an evaluation score means nothing, so a user can tell "learned" from "did not".

A classifier that predicts one class for every dev example scores exactly the majority-class baseline
(MRPC: F1 81.2 / accuracy 68.4, SST-2: accuracy 50.9), a number that looks like a result. Three checks:

* ``prediction_check``: did the predictions collapse to one class (regression: to a near-constant score)?
* ``majority_baseline``: what predicting the most frequent training label scores on each dev set.
* ``feature_spread``: how much the encoder's head inputs differ between examples, relative to the part they
  share. An under-trained checkpoint (a BERT still at the unigram stage of pretraining) maps every input to
  nearly the same vector; no head on top of it can do better than the majority class until fine-tuning has
  rebuilt the features.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

# Regression predictions whose spread is below this share of the gold scores' spread are "near-constant".
NEAR_CONSTANT_RATIO = 0.01
# Head inputs whose between-example spread is below this share of their common part are "collapsed".
# Measured (docs/glue_results.md): a 250-step BERT-mini 0.0013, random-init BERTs 0.003-0.04, a 1200-step
# L2/H128 BERT 0.11-0.16, all-MiniLM-L6-v2 0.67.
COLLAPSED_FEATURE_SPREAD = 0.01


def prediction_check(predictions: np.ndarray, labels: np.ndarray, *, regression: bool,
                     label_names: Sequence[str] | None = None) -> dict[str, Any]:
    """Summary of one dev set's predictions; ``collapsed`` is True when they carry no information.

    Classification: ``distinct`` classes predicted, the most frequent one (``top_class``) and its share.
    Regression: standard deviation of the predictions and of the gold scores.
    """
    preds = np.asarray(predictions)
    if preds.size == 0:
        return {"collapsed": False}
    if regression:
        pred_std = float(np.std(preds.astype(np.float64)))
        label_std = float(np.std(np.asarray(labels, dtype=np.float64)))
        collapsed = pred_std <= NEAR_CONSTANT_RATIO * label_std if label_std > 0 else pred_std == 0
        return {"collapsed": bool(collapsed), "prediction_std": pred_std, "label_std": label_std}
    values, counts = np.unique(preds.astype(np.int64), return_counts=True)
    top = int(values[counts.argmax()])
    name = label_names[top] if label_names is not None and 0 <= top < len(label_names) else str(top)
    return {"collapsed": len(values) == 1, "distinct": int(len(values)), "top_class": name,
            "top_share": float(counts.max() / preds.size)}


def majority_baseline(task: Any, train_labels: Sequence[Any],
                      eval_labels: Mapping[str, Sequence[Any]]) -> dict[str, float] | None:
    """Each dev metric when every example gets the most frequent TRAINING label; None for regression.

    Keys are those of the task's results (``accuracy``, ``f1``, ``accuracy_matched`` ...).
    """
    from hfssl.evaluation.report import metric_key
    from hfssl.evaluation.scoring import compute_metrics

    if task.is_regression or len(train_labels) == 0:
        return None
    values, counts = np.unique(np.asarray(train_labels, dtype=np.int64), return_counts=True)
    majority = int(values[counts.argmax()])
    out: dict[str, float] = {}
    for split, labels in eval_labels.items():
        refs = np.asarray(labels, dtype=np.int64)
        for name, value in compute_metrics(task.metrics, np.full_like(refs, majority), refs).items():
            out[metric_key(name, split, len(eval_labels))] = value
    return out


def feature_spread(features: torch.Tensor) -> float:
    """Between-example spread of ``features`` (N, dim) relative to their mean vector's norm.

    ``||std over examples|| / ||mean||``: about 1 for features that differ as much as they agree, near 0 when
    every example maps to the same vector (a collapsed or barely trained encoder).
    """
    x = features.detach().double().reshape(features.shape[0], -1)
    if x.shape[0] < 2:
        return float("inf")
    common = x.mean(dim=0).norm().item()
    spread = x.std(dim=0).norm().item()
    if common == 0:  # centred features: any variation is all there is; none at all is a collapse
        return 0.0 if spread == 0 else float("inf")
    return spread / common


def collapse_warning(task_name: str, seed: int, split: str, check: Mapping[str, Any], num_eval: int,
                     baseline: Mapping[str, float] | None) -> str:
    """The one-line warning for a collapsed dev set, with the baseline the score equals and what to try.

    ``baseline``: the majority-class scores of this dev set (``split``) only.
    """
    where = f"{task_name} seed {seed}" + ("" if split == "validation" else f" ({split})")
    advice = ("nothing was learned: raise --learning_rate or --num_train_epochs, use more --max_train_samples, "
              "or check the checkpoint (see feature_spread in results.json)")
    if "top_class" in check:
        same = f"all {num_eval} dev predictions are {check['top_class']!r}"
        if baseline:
            scores = ", ".join(f"{k} {100 * v:.2f}" for k, v in baseline.items())
            same += f" (predicting the majority class scores {scores})"
        return f"{where}: {same}; {advice}"
    return (f"{where}: the {num_eval} dev predictions are nearly constant (std {check['prediction_std']:.3g} vs "
            f"{check['label_std']:.3g} for the gold scores); {advice}")


def feature_warning(task_name: str, spread: float) -> str:
    return (f"{task_name}: the encoder gives nearly the same head input for every example (feature spread "
            f"{spread:.3g}, below {COLLAPSED_FEATURE_SPREAD}): the checkpoint has not learned input-dependent "
            "features yet (pretraining too short?), so a probe can hardly beat the majority class and "
            "fine-tuning has to build the features first; compare with --init random")
