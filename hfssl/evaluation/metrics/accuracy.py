"""Accuracy: the fraction of predictions equal to the reference label (GLUE SST-2, QNLI, RTE, ...).

Loaded with ``evaluate.load(<path to this file>)`` so it works offline. evaluate parses this
file's imports line by line, so keep one plain import per line.
"""

import evaluate
from sklearn.metrics import accuracy_score

from hfssl.evaluation.metric_info import paired_metric_info

_DESCRIPTION = "Accuracy = (number of correct predictions) / (number of predictions)."
_KWARGS = "predictions: predicted label ids. references: gold label ids."


class Accuracy(evaluate.Metric):
    def _info(self):
        return paired_metric_info(_DESCRIPTION, _KWARGS, "int64")

    def _compute(self, predictions, references):
        return {"accuracy": float(accuracy_score(references, predictions))}
