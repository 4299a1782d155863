"""Matthews correlation coefficient, GLUE's metric for CoLA (robust to CoLA's label imbalance).

Loaded with ``evaluate.load(<path to this file>)`` so it works offline. evaluate parses this
file's imports line by line, so keep one plain import per line.
"""

import evaluate
from sklearn.metrics import matthews_corrcoef

from hfssl.evaluation.metric_info import paired_metric_info

_DESCRIPTION = "Matthews correlation between predicted and gold labels, in [-1, 1]; 0 for a constant predictor."
_KWARGS = "predictions: predicted label ids. references: gold label ids."


class MatthewsCorrelation(evaluate.Metric):
    def _info(self):
        return paired_metric_info(_DESCRIPTION, _KWARGS, "int64")

    def _compute(self, predictions, references):
        return {"matthews_correlation": float(matthews_corrcoef(references, predictions))}
