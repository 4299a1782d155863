"""Binary F1 of the positive class (label 1), as GLUE reports it for MRPC and QQP.

Loaded with ``evaluate.load(<path to this file>)`` so it works offline. evaluate parses this
file's imports line by line, so keep one plain import per line.
"""

import evaluate
from sklearn.metrics import f1_score

from hfssl.evaluation.metric_info import paired_metric_info

_DESCRIPTION = "F1 = 2 * precision * recall / (precision + recall) for the positive class (label 1)."
_KWARGS = "predictions: predicted label ids (0/1). references: gold label ids (0/1)."


class F1(evaluate.Metric):
    def _info(self):
        return paired_metric_info(_DESCRIPTION, _KWARGS, "int64")

    def _compute(self, predictions, references, average="binary"):
        # zero_division=0: a model that never predicts the positive class scores 0, not a warning.
        return {"f1": float(f1_score(references, predictions, average=average, zero_division=0))}
