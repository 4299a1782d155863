"""Pearson and Spearman correlation of predicted and gold scores, GLUE's metrics for STS-B.

Loaded with ``evaluate.load(<path to this file>)`` so it works offline. evaluate parses this
file's imports line by line, so keep one plain import per line.
"""

import evaluate
import numpy as np
from scipy.stats import pearsonr, spearmanr

from hfssl.evaluation.metric_info import paired_metric_info

_DESCRIPTION = "Pearson r and Spearman rho between predicted and gold similarity scores."
_KWARGS = "predictions: predicted scores (float). references: gold scores (float)."


class PearsonSpearman(evaluate.Metric):
    def _info(self):
        return paired_metric_info(_DESCRIPTION, _KWARGS, "float64")

    def _compute(self, predictions, references):
        preds = np.asarray(predictions, dtype=np.float64)
        refs = np.asarray(references, dtype=np.float64)
        # A constant prediction has no defined correlation; report 0 (no signal) instead of NaN.
        if preds.std() == 0 or refs.std() == 0:
            return {"pearson": 0.0, "spearmanr": 0.0}
        return {"pearson": float(pearsonr(preds, refs)[0]), "spearmanr": float(spearmanr(preds, refs)[0])}
