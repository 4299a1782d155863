"""A kNN monitor for image pretraining: top-1 of the backbone's frozen features on labelled images.

The pretext loss says how well a model solves its own puzzle, not how useful its features are; SSL
codebases (DINO, lightly) therefore watch a weighted kNN classifier during pretraining. Here: CLS
features of up to ``samples`` labelled training images form the bank, as many labelled validation images
are classified against it (cosine, ``k`` nearest, votes ``exp(sim / temperature)``: the same
``knn_predict`` as ``recipes/image_probe.py``). It runs at every evaluation of the training loop.
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


class KnnMonitor:
    """``monitor(backbone) -> {"knn_accuracy": top-1}``; pixels go through ``prepare`` (uint8 -> normalised)."""

    def __init__(self, bank: Callable[[], Iterable[dict]], queries: Callable[[], Iterable[dict]],
                 prepare: Callable[[torch.Tensor], torch.Tensor], *, k: int = 20, temperature: float = 0.07) -> None:
        self.bank = bank
        self.queries = queries
        self.prepare = prepare
        self.k = k
        self.temperature = temperature

    def _features(self, backbone: PreTrainedModel, batches: Iterable[dict]) -> tuple[torch.Tensor, torch.Tensor]:
        encoder = backbone.base_model  # ViTForMaskedImageModeling -> its ViTModel; a ViTModel -> itself
        device = next(encoder.parameters()).device
        features, labels = [], []
        for batch in batches:
            pixels = self.prepare(batch["pixel_values"].to(device))
            features.append(encoder(pixel_values=pixels).last_hidden_state[:, 0].float().cpu())
            labels.append(batch["labels"])
        return torch.cat(features), torch.cat(labels)

    def __call__(self, backbone: PreTrainedModel) -> dict[str, float]:
        bank_x, bank_y = self._features(backbone, self.bank())
        query_x, query_y = self._features(backbone, self.queries())
        num_classes = int(max(bank_y.max(), query_y.max())) + 1
        predicted = knn_predict(bank_x, bank_y, query_x, num_classes, k=self.k, temperature=self.temperature,
                                device=next(backbone.parameters()).device)
        return {"knn_accuracy": (predicted == query_y).float().mean().item()}


def image_knn_monitor(data_args: Any, *, image_size: int, seed: int, samples: int,
                      prepare: Callable[[torch.Tensor], torch.Tensor], batch_size: int = 256) -> KnnMonitor | None:
    """A monitor over the recipe's images, or None (with a log line) when they carry no labels.

    The bank is the first ``samples`` images of the training stream in its seeded file order (a random
    sample of a class-sorted folder); the queries are the first ``samples`` validation images.
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
    if any(batch is None or "labels" not in batch for batch in first.values()):
        logger.info("no kNN monitor: the training or validation images have no labels (class sub-folders)")
        return None
    return KnnMonitor(batches("train", samples), batches("validation", samples), prepare)


__all__ = ["KnnMonitor", "image_knn_monitor"]
