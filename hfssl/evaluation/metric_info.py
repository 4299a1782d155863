"""Shared ``MetricInfo`` for the metric modules in ``metrics/`` (each compares predictions with references)."""

import datasets
import evaluate


def paired_metric_info(description: str, inputs_description: str, dtype: str) -> evaluate.MetricInfo:
    """Info of a metric over ``predictions`` and ``references`` columns of ``dtype`` (int64 labels, float64 scores)."""
    return evaluate.MetricInfo(
        description=description,
        citation="",
        inputs_description=inputs_description,
        features=datasets.Features({"predictions": datasets.Value(dtype), "references": datasets.Value(dtype)}),
    )
