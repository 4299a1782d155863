"""Official GLUE metrics, computed with ``evaluate`` modules shipped inside hfssl.

``evaluate.load("accuracy")`` needs the Hub; loading the module by local path works offline.
Values are raw (0-1 for accuracy/F1, -1..1 for correlations); tables multiply by 100.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import evaluate
import numpy as np

from hfssl.errors import ConfigError

METRICS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "metrics")

# Flag value (--metric) -> metric module file name (without .py).
METRIC_MODULES = {
    "accuracy": "accuracy",
    "f1": "f1",
    "mcc": "matthews_correlation",
    "matthews_correlation": "matthews_correlation",
    "pearson_spearman": "pearson_spearman",
}
REGRESSION_METRICS = frozenset({"pearson_spearman"})

_loaded: dict[str, evaluate.EvaluationModule] = {}


def load_metric(name: str) -> evaluate.EvaluationModule:
    """The shipped metric module ``name`` (a key of ``METRIC_MODULES``), loaded once per process."""
    if name not in METRIC_MODULES:
        raise ConfigError(f"unknown metric {name!r}; choose one of {', '.join(sorted(METRIC_MODULES))}")
    module = METRIC_MODULES[name]
    if module not in _loaded:
        # keep_in_memory: no Arrow cache files, so ranks of a multi-process run never share a lock file.
        _loaded[module] = evaluate.load(os.path.join(METRICS_DIR, f"{module}.py"), keep_in_memory=True)
    return _loaded[module]


def compute_metrics(metric_names: Sequence[str], predictions: Any, references: Any) -> dict[str, float]:
    """Apply each named metric to the predictions; returns one flat dict of floats."""
    preds = np.asarray(predictions)
    refs = np.asarray(references)
    out: dict[str, float] = {}
    for name in metric_names:
        if name in REGRESSION_METRICS:
            result = load_metric(name).compute(predictions=preds.astype(np.float64).tolist(),
                                               references=refs.astype(np.float64).tolist())
        else:
            result = load_metric(name).compute(predictions=preds.astype(np.int64).tolist(),
                                               references=refs.astype(np.int64).tolist())
        out.update({k: float(v) for k, v in result.items()})
    return out
