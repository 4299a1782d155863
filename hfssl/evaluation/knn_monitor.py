"""A kNN monitor for image pretraining: top-1 of the backbone's frozen features on labelled images, and
collapse detection.

The pretext loss says how well a model solves its own puzzle, not how useful its features are; SSL
codebases (DINO, lightly) therefore watch a weighted kNN classifier during pretraining. Here: CLS
features of up to ``samples`` labelled training images form the bank, as many labelled validation images
are classified against it (cosine, ``k`` nearest, votes ``exp(sim / temperature)``: the same
``knn_predict`` as ``recipes/image_probe.py``). It runs at every evaluation of the training loop.

Every evaluation also measures the spread of the validation features (``feature_spread``: about 1 when
they fill the sphere, 0 when collapsed; ``rankme``: their effective rank, 1 when collapsed) and says in the
log when they collapse, labels or not (:func:`image_feature_monitor` for unlabelled images).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable
from typing import Any

import torch
from transformers import PreTrainedModel

from hfssl.evaluation.image_probe import knn_predict
from hfssl.logging import get_logger

logger = get_logger(__name__)

#: Below these the features are called collapsed. Measured on the cluttered digits (tiny ViT, CLS): random init
#: 0.049 spread / RankMe 2.0, SimCLR 0.38 / 6.0, rotation 0.32 / 8.5, a DINO run stuck at a uniform output 0.011 / 1.3.
COLLAPSE_SPREAD = 0.02
COLLAPSE_RANK = 1.5


def _cls(backbone: PreTrainedModel, pixel_values: torch.Tensor) -> torch.Tensor:
    # ViTForMaskedImageModeling -> its ViTModel; a ViTModel -> itself
    return backbone.base_model(pixel_values=pixel_values).last_hidden_state[:, 0]


def collapse_report(features: torch.Tensor, step_hint: str = "") -> dict[str, float]:
    """``{"feature_spread", "rankme"}`` of ``features``, with a warning in the log when they are collapsed."""
    from hfssl.objectives.vision.monitoring import feature_spread, rankme

    stats = {"feature_spread": float(feature_spread(features)), "rankme": rankme(features)}
    if stats["feature_spread"] < COLLAPSE_SPREAD or stats["rankme"] < COLLAPSE_RANK:
        logger.warning("representation collapse%s: the CLS features of %d validation images have spread %.3f "
                       "(about 1 when healthy) and effective rank %.2f of %d: the pretext loss can look fine "
                       "while the encoder maps every image to nearly the same vector; lower --learning_rate, "
                       "check the task's temperature/momentum, or use a larger batch", step_hint,
                       features.shape[0], stats["feature_spread"], stats["rankme"], features.shape[1])
    return stats


class KnnMonitor:
    """``monitor(backbone) -> {"knn_accuracy", "feature_spread", "rankme"}``; pixels go through ``prepare``
    (uint8 -> normalised), features through ``encode(backbone, pixels)`` (default: the backbone's CLS token;
    a task passes its own, e.g. DINO's teacher)."""

    def __init__(self, bank: Callable[[], Iterable[dict]], queries: Callable[[], Iterable[dict]],
                 prepare: Callable[[torch.Tensor], torch.Tensor], *, k: int = 20, temperature: float = 0.07,
                 encode: Callable[[PreTrainedModel, torch.Tensor], torch.Tensor] = _cls) -> None:
        self.bank = bank
        self.queries = queries
        self.prepare = prepare
        self.k = k
        self.temperature = temperature
        self.encode = encode

    def _features(self, backbone: PreTrainedModel, batches: Iterable[dict]) -> tuple[torch.Tensor, torch.Tensor]:
        device = next(backbone.parameters()).device
        features, labels = [], []
        for batch in batches:
            pixels = self.prepare(batch["pixel_values"].to(device))
            features.append(self.encode(backbone, pixels).float().cpu())
            if "labels" in batch:
                labels.append(batch["labels"])
        return torch.cat(features), (torch.cat(labels) if labels else torch.empty(0, dtype=torch.long))

    def __call__(self, backbone: PreTrainedModel) -> dict[str, float]:
        query_x, query_y = self._features(backbone, self.queries())
        stats = collapse_report(query_x)
        if self.bank is None:
            return stats
        bank_x, bank_y = self._features(backbone, self.bank())
        num_classes = int(max(bank_y.max(), query_y.max())) + 1
        predicted = knn_predict(bank_x, bank_y, query_x, num_classes, k=self.k, temperature=self.temperature,
                                device=next(backbone.parameters()).device)
        return {"knn_accuracy": (predicted == query_y).float().mean().item(), **stats}


def image_knn_monitor(data_args: Any, *, image_size: int, seed: int, samples: int,
                      prepare: Callable[[torch.Tensor], torch.Tensor], batch_size: int = 256,
                      encode: Callable[[PreTrainedModel, torch.Tensor], torch.Tensor] = _cls,
                      labels_required: bool = True) -> KnnMonitor | None:
    """A monitor over the recipe's images, or None (with a log line) when they carry no labels.

    The bank is the first ``samples`` images of the training stream in its seeded file order (a random
    sample of a class-sorted folder); the queries are the first ``samples`` validation images. With
    ``labels_required=False`` unlabelled images give a monitor of the collapse statistics alone (no kNN).
    """
    from hfssl.data.images import ImageExamples, collate_images, load_image_dataset_from_args
    from hfssl.errors import DataError

    def batches(split: str, limit: int | None) -> Callable[[], Iterable[dict]]:
        def make() -> Iterable[dict]:
            examples = ImageExamples(load_image_dataset_from_args(data_args, split, file_order_seed=seed), image_size,
                                     image_column_name=data_args.image_column_name,
                                     label_column_name=data_args.label_column_name)
            stream = iter(itertools.islice(examples, limit))
            while chunk := list(itertools.islice(stream, batch_size)):
                yield collate_images(chunk)
        return make

    try:
        first = {split: next(iter(batches(split, 1)()), None) for split in ("train", "validation")}
    except DataError as exc:  # e.g. no validation images at all: nothing to monitor
        logger.info("no kNN monitor: %s", exc)
        return None
    if first["validation"] is None:
        return None
    if any(batch is None or "labels" not in batch for batch in first.values()):
        if labels_required:
            logger.info("no kNN monitor: the training or validation images have no labels (class sub-folders)")
            return None
        logger.info("no kNN monitor (the images have no labels): watching the features' spread only")
        return KnnMonitor(None, batches("validation", samples), prepare, encode=encode)
    return KnnMonitor(batches("train", samples), batches("validation", samples), prepare, encode=encode)


__all__ = ["COLLAPSE_RANK", "COLLAPSE_SPREAD", "KnnMonitor", "collapse_report", "image_knn_monitor"]
