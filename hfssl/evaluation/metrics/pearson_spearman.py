"""Pearson and Spearman correlation of predicted and gold scores, GLUE's metrics for STS-B.

Loaded with ``evaluate.load(<path to this file>)`` so it works offline. evaluate parses this
file's imports line by line, so keep one plain import per line.
"""

import datasets
import evaluate
import numpy as np
from scipy.stats import pearsonr, spearmanr

_DESCRIPTION = "Pearson r and Spearman rho between predicted and gold similarity scores."
_KWARGS = "predictions: predicted scores (float). references: gold scores (float)."


class PearsonSpearman(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS,
            features=datasets.Features(
                {"predictions": datasets.Value("float64"), "references": datasets.Value("float64")}
            ),
        )

    def _compute(self, predictions, references):
        preds = np.asarray(predictions, dtype=np.float64)
        refs = np.asarray(references, dtype=np.float64)
        # A constant prediction has no defined correlation; report 0 (no signal) instead of NaN.
        if preds.std() == 0 or refs.std() == 0:
            return {"pearson": 0.0, "spearmanr": 0.0}
        return {"pearson": float(pearsonr(preds, refs)[0]), "spearmanr": float(spearmanr(preds, refs)[0])}
