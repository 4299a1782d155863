"""A kNN monitor for image pretraining: top-1 of the backbone's frozen features on labelled images, and
collapse detection.

The pretext loss says how well a model solves its own puzzle, not how useful its features are; SSL
codebases (DINO, lightly) therefore watch a weighted kNN classifier during pretraining. Here: CLS
features of up to ``samples`` labelled training images form the bank, as many labelled validation images
are classified against it (cosine, ``k`` nearest, votes ``exp(sim / temperature)``: the same
``knn_predict`` as ``recipes/image_probe.py``). It runs at every evaluation of the training loop.

Every evaluation also measures the spread of the validation features (``feature_spread``: about 1 when
they fill the sphere, 0 when collapsed; ``rankme``: their effective rank, 1 when collapsed) and says in the
log when they collapse, labels or not (unlabelled images get this check alone). Two rules: absolute
thresholds (:data:`COLLAPSE_SPREAD`, :data:`COLLAPSE_RANK`), and, when the recipe measured the features once
before training (:meth:`KnnMonitor.measure_start`), an effective rank below :data:`SHRINK_RATIO` of the one at the
start. The second is needed because a small randomly initialised ViT's CLS features are already nearly alike
(spread 0.07, RankMe 2.5 for the tiny preset on the cluttered digits), so an encoder that training makes *less*
diverse than its initialisation (MoCo v3 at 0.055 / 1.9 and BYOL at 0.060 / 1.6 after 150 CPU s) stays above
any absolute threshold that healthy runs clear.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Mapping
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
#: ... or an effective rank below this share of the one at the start of the run. Measured there (tiny ViT, cluttered
#: digits, 150 and 600 CPU s): the runs that collapsed (DINO, SwAV, BYOL, DeepCluster, exemplar, colorization, MoCo v3
#: at 150 s, one seed each of MAE and SimMIM) ended at 0.44-0.76x the RankMe of random init; every other task at
#: 1.8-12x (also those that probe below random init: the rule sees collapse, not usefulness), and MoCo v3 after 600 s
#: (6 points over random init) at 1.0. The spread is not used relatively: that MoCo v3 run ended at 0.79x it.
SHRINK_RATIO = 0.8


def _cls(backbone: PreTrainedModel, pixel_values: torch.Tensor) -> torch.Tensor:
    # ViTForMaskedImageModeling -> its ViTModel; a ViTModel -> itself
    return backbone.base_model(pixel_values=pixel_values).last_hidden_state[:, 0]


_ADVICE = ("the pretext loss can look fine while the encoder maps every image to nearly the same vector; lower "
           "--learning_rate, check the task's temperature/momentum, or use a larger batch")


def collapse_stats(features: torch.Tensor) -> dict[str, float]:
    """``{"feature_spread", "rankme"}`` of ``features`` (see :mod:`hfssl.objectives.vision.monitoring`)."""
    from hfssl.objectives.vision.monitoring import feature_spread, rankme

    return {"feature_spread": float(feature_spread(features)), "rankme": rankme(features)}


def collapse_verdict(stats: Mapping[str, float], start: Mapping[str, float] | None = None) -> str | None:
    """``"collapsed"`` below the absolute thresholds, ``"collapsing"`` when the effective rank fell below
    :data:`SHRINK_RATIO` of the ``start`` statistics, else None. ``stats`` as :func:`collapse_stats` gives."""
    if stats["feature_spread"] < COLLAPSE_SPREAD or stats["rankme"] < COLLAPSE_RANK:
        return "collapsed"
    if start and stats["rankme"] < SHRINK_RATIO * start["rankme"]:
        return "collapsing"
    return None


def collapse_report(features: torch.Tensor, step_hint: str = "", start: Mapping[str, float] | None = None
                    ) -> dict[str, float]:
    """``{"feature_spread", "rankme"}`` of ``features``, with a warning in the log when they are collapsed, or
    (given the ``start`` statistics of the same images) have lost diversity since the start of the run."""
    stats = collapse_stats(features)
    spread, rank = stats["feature_spread"], stats["rankme"]
    verdict = collapse_verdict(stats, start)
    if verdict == "collapsed":
        logger.warning("representation collapse%s: the CLS features of %d validation images have spread %.3f "
                       "(about 1 when healthy) and effective rank %.2f of %d: %s", step_hint,
                       features.shape[0], spread, rank, features.shape[1], _ADVICE)
    elif verdict == "collapsing":
        logger.warning("representation collapsing%s: the CLS features of %d validation images are less diverse "
                       "than at the start of the run (spread %.3f -> %.3f, effective rank %.2f -> %.2f of %d): "
                       "training is pulling images together, not apart; %s", step_hint, features.shape[0],
                       start["feature_spread"], spread, start["rankme"], rank, features.shape[1], _ADVICE)
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
        self.start: dict[str, float] | None = None

    def measure_start(self, backbone: PreTrainedModel) -> dict[str, float]:
        """Measure the query features once before training: later evaluations that fall below
        :data:`SHRINK_RATIO` of them are reported as collapsing."""
        was_training = backbone.training
        backbone.eval()
        try:
            with torch.no_grad():
                self.start = collapse_stats(self._features(backbone, self.queries())[0])
        finally:
            backbone.train(was_training)
        logger.info("CLS features of the validation images before training: spread %.3f, effective rank %.2f "
                    "(the collapse monitor compares every evaluation with these)", self.start["feature_spread"],
                    self.start["rankme"])
        return self.start

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
        stats = collapse_report(query_x, start=self.start)
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


__all__ = ["COLLAPSE_RANK", "COLLAPSE_SPREAD", "SHRINK_RATIO", "KnnMonitor", "collapse_report", "collapse_stats",
           "collapse_verdict", "image_knn_monitor"]
