"""Clustering tasks: learn to predict cluster assignments of the images. SwAV and DeepCluster.

Random choices (k-means starts, re-initialised heads) come from generators seeded by the clustering round,
so a resumed run re-clusters exactly as the uninterrupted one; every rank clusters the same gathered data.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel, ViTConfig

from hfssl.errors import ConfigError, DataError
from hfssl.objectives.vision.base import (
    ObjectiveOutput,
    StepCounter,
    TensorState,
    VisionObjective,
    all_gather_rows,
    all_reduce_sum,
    count,
    scale_grad,
    world_size,
)
from hfssl.objectives.vision.corruptions import views
from hfssl.objectives.vision.distillation import default_local_crop_size, multi_crop_views
from hfssl.objectives.vision.heads import default_head_width, mlp

__all__ = ["DeepClusterObjective", "SwavObjective", "kmeans", "sinkhorn"]


@torch.no_grad()
def sinkhorn(scores: torch.Tensor, epsilon: float = 0.05, iterations: int = 3,
             shared: torch.Tensor | None = None) -> torch.Tensor:
    """SwAV's equipartitioned soft assignments of this rank's rows of ``scores`` (B, K), summed over ranks.

    Sinkhorn-Knopp on ``Q = exp(scores / epsilon)``: rows of the global batch each sum to 1/B_total, prototypes
    each to 1/K, alternately, then rows are rescaled to sum to 1. The sums over samples are all-reduced across
    ranks, so the result is that of the global batch. ``shared`` (Q_rows, K): rows every rank holds identically
    (SwAV's queue), which take part once, not once per rank. Returns (B, K), on float32.
    """
    q = torch.exp(scores.float() / epsilon).T                        # (K, B)
    q_shared = torch.exp(shared.float() / epsilon).T if shared is not None else None
    k = q.shape[0]
    total = q.shape[1] * world_size() + (q_shared.shape[1] if q_shared is not None else 0)

    def over_ranks(local: torch.Tensor, shared_part: torch.Tensor | None) -> torch.Tensor:
        local = all_reduce_sum(local)
        return local + shared_part if shared_part is not None else local

    norm = over_ranks(q.sum().reshape(1), q_shared.sum().reshape(1) if q_shared is not None else None)
    q = q / norm
    if q_shared is not None:
        q_shared = q_shared / norm
    for _ in range(iterations):
        rows = over_ranks(q.sum(dim=1, keepdim=True), q_shared.sum(dim=1, keepdim=True) if q_shared is not None
                          else None)
        q = q / rows / k
        q = q / q.sum(dim=0, keepdim=True) / total
        if q_shared is not None:
            q_shared = q_shared / rows / k
            q_shared = q_shared / q_shared.sum(dim=0, keepdim=True) / total
    return (q * total).T


class SwavObjective(VisionObjective):
    """SwAV (Caron et al., 2020): swapped prediction of online cluster codes over multi-crop views.

    Views as DINO's multi-crop (two global, ``num_local_crops`` local, batched on the device). Every view is
    projected (MLP with BatchNorm) and L2-normalised to ``z``; its scores are cosines to ``num_prototypes``
    prototypes (a bias-free linear layer whose rows are re-normalised before each step). Codes ``q`` come from
    the two global views only, by :func:`sinkhorn` over the global batch (``epsilon``, ``sinkhorn_iterations``;
    the sums span all ranks), without gradient. The loss predicts each global view's code from every other
    view: ``-sum q_a * log softmax(scores_v / temperature)``, averaged over the pairs (count ``B``).

    The prototypes are frozen (gradient scaled to 0) for the first ``freeze_prototypes_steps`` optimizer steps
    (default: the first 5% of the run), as SwAV freezes them for its first epoch. ``queue_size > 0`` keeps the
    last projected global views of the global batch in a queue that joins the Sinkhorn once full (SwAV's queue
    for small batches; identical on every rank).
    """

    primary_term = "swav"

    def __init__(self, config: ViTConfig, image_mean: Sequence[float] = (0.5, 0.5, 0.5),
                 image_std: Sequence[float] = (0.5, 0.5, 0.5), *, max_steps: int, gradient_accumulation_steps: int = 1,
                 num_local_crops: int = 6, local_crop_size: int | None = None,
                 global_crop_scale: tuple[float, float] = (0.4, 1.0),
                 local_crop_scale: tuple[float, float] = (0.05, 0.4), projection_dim: int = 128,
                 head_hidden_dim: int | None = None, num_prototypes: int = 300, temperature: float = 0.1,
                 epsilon: float = 0.05, sinkhorn_iterations: int = 3, freeze_prototypes_steps: int | None = None,
                 queue_size: int = 0) -> None:
        super().__init__(config, image_mean, image_std)
        if num_local_crops < 0 or num_prototypes < 2 or temperature <= 0 or epsilon <= 0 or queue_size < 0:
            raise ConfigError("swav needs num_local_crops >= 0, num_prototypes >= 2, temperature > 0, epsilon > 0 "
                              "and queue_size >= 0")
        self.local_size = local_crop_size or default_local_crop_size(self.image_size, self.patch_size)
        if self.local_size % self.patch_size or not 0 < self.local_size <= self.image_size:
            raise ConfigError(f"local_crop_size {self.local_size} must be a multiple of patch_size {self.patch_size} "
                              f"and at most image_size {self.image_size}")
        self.num_local_crops = num_local_crops
        self.global_scale, self.local_scale = tuple(global_crop_scale), tuple(local_crop_scale)
        self.temperature, self.epsilon, self.iterations = temperature, epsilon, sinkhorn_iterations
        self.freeze_steps = max(1, max_steps // 20) if freeze_prototypes_steps is None else freeze_prototypes_steps
        self.projector = mlp(self.hidden_size, head_hidden_dim or default_head_width(self.hidden_size),
                             projection_dim, 2)
        self.prototypes = nn.Linear(projection_dim, num_prototypes, bias=False)
        self.counter = StepCounter(gradient_accumulation_steps)
        self.queue_size = queue_size
        if queue_size:
            self.register_buffer("queue", torch.zeros(queue_size, projection_dim))

    def prepare_batch(self, batch: dict[str, torch.Tensor], generator: torch.Generator | None = None
                      ) -> dict[str, torch.Tensor]:
        if self.training:
            self.counter.tick()
            with torch.no_grad():  # the prototypes live on the unit sphere (SwAV normalises them every step)
                self.prototypes.weight.copy_(F.normalize(self.prototypes.weight, dim=1))
        return multi_crop_views(self, batch, generator)

    def target_counts(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {"swav": count(batch["pixel_values"], batch["pixel_values"].shape[0] // 2)}

    def forward(self, model: PreTrainedModel, batch: dict[str, torch.Tensor]) -> ObjectiveOutput:
        globals_ = batch["pixel_values"]
        b = globals_.shape[0] // 2
        features = [self.cls_features(model, globals_)]
        if "local_pixel_values" in batch:
            features.append(self.cls_features(model, batch["local_pixel_values"]))
        z = F.normalize(self.projector(torch.cat(features)).float(), dim=-1)
        frozen = self.training and self.counter.steps_done < self.freeze_steps
        weight = scale_grad(self.prototypes.weight, 0.0 if frozen else 1.0)
        scores = F.linear(z, weight.float())
        views_ = scores.chunk(2 + self.num_local_crops)
        shared = self._queue_scores(weight, b)
        loss = scores.new_zeros(())
        for a in range(2):
            codes = sinkhorn(views_[a].detach(), self.epsilon, self.iterations, shared)
            for v, view in enumerate(views_):
                if v != a:
                    loss = loss + torch.sum(-codes * F.log_softmax(view / self.temperature, dim=-1))
        loss = loss / (2 * (len(views_) - 1))
        if self.queue_size and self.training and torch.is_grad_enabled():
            self._enqueue(z[: 2 * b].detach())
        return ObjectiveOutput(loss_sums={"swav": loss})

    def _queue_scores(self, weight: torch.Tensor, b: int) -> torch.Tensor | None:
        """Scores of the queued embeddings once the queue is full (known from the step count: no device read)."""
        if not (self.queue_size and self.training):
            return None
        enqueued = (self.counter.seen - 1) * 2 * b * world_size()
        if enqueued < self.queue_size:
            return None
        return F.linear(self.queue, weight.detach().float())

    @torch.no_grad()
    def _enqueue(self, z: torch.Tensor) -> None:
        rows = all_gather_rows(z)[: self.queue_size]
        self.queue.copy_(torch.cat([rows, self.queue])[: self.queue_size])


def kmeans(points: torch.Tensor, k: int, iterations: int, generator: torch.Generator
           ) -> tuple[torch.Tensor, torch.Tensor]:
    """Spherical k-means (cosine) of L2-normalised ``points`` (N, D) on their device: ``(centroids (k, D),
    assignments (N,))``. Starts from ``k`` distinct points drawn with ``generator``; an empty cluster is restarted
    at a random point (DeepCluster's remedy), so every cluster ends up non-empty while N >= k."""
    n = points.shape[0]
    device = points.device
    draw = torch.randperm(n, generator=generator, device=generator.device).to(device)
    centroids = points[draw[:k]].clone()
    assignments = torch.zeros(n, dtype=torch.long, device=device)
    for _ in range(iterations):
        assignments = (points @ centroids.T).argmax(dim=1)
        sums = torch.zeros_like(centroids).index_add_(0, assignments, points)
        sizes = torch.bincount(assignments, minlength=k)
        empty = sizes == 0
        restart = points[torch.randint(0, n, (k,), generator=generator, device=generator.device).to(device)]
        centroids = torch.where(empty[:, None], restart, F.normalize(sums, dim=1))
    return centroids, (points @ centroids.T).argmax(dim=1)


class DeepClusterObjective(VisionObjective):
    """DeepCluster (Caron et al., 2018): k-means pseudo-labels of the CLS features, a classifier trained on them.

    A feature bank holds the latest CLS feature of every training image (from its augmented view in the step
    it was seen, gathered over ranks; :class:`TensorState`). Every ``cluster_every`` optimizer steps (and not
    before the first ``cluster_every``), the filled rows are clustered on the device by spherical k-means into
    ``num_clusters`` clusters (``kmeans_iterations``), every image gets its cluster as pseudo-label, and the
    classifier head is re-initialised (as DeepCluster re-initialises its top layer). Empty clusters are
    restarted at random points. DeepCluster samples uniformly over pseudo-classes to keep a large cluster from
    dominating; a stream cannot be re-sampled, so each image's cross-entropy is weighted by ``1 / (clusters x
    its cluster's share of images)`` instead (the same expectation). Images not clustered yet weigh 0.
    Batches carry ``image_index`` (``hfssl.data.images``); ``num_images`` is the bank size. In evaluation the
    pseudo-label of an image is its nearest centroid.
    """

    primary_term = "deepcluster"

    def __init__(self, config: ViTConfig, image_mean: Sequence[float] = (0.5, 0.5, 0.5),
                 image_std: Sequence[float] = (0.5, 0.5, 0.5), *, num_images: int, gradient_accumulation_steps: int = 1,
                 num_clusters: int = 100, cluster_every: int = 50, kmeans_iterations: int = 20,
                 crop_scale: tuple[float, float] = (0.2, 1.0), seed: int = 0) -> None:
        super().__init__(config, image_mean, image_std)
        if num_clusters < 2 or num_images < num_clusters:
            raise ConfigError(f"deepcluster needs 2 <= num_clusters <= the number of training images, got "
                              f"{num_clusters} clusters for {num_images} images")
        if cluster_every < 1 or kmeans_iterations < 1:
            raise ConfigError("deepcluster needs cluster_every >= 1 and kmeans_iterations >= 1")
        self.num_images, self.num_clusters = num_images, num_clusters
        self.cluster_every, self.iterations, self.seed = cluster_every, kmeans_iterations, seed
        self.crop_scale = tuple(crop_scale)
        self.head = nn.Linear(self.hidden_size, num_clusters)
        self.counter = StepCounter(gradient_accumulation_steps)
        self.bank = TensorState(torch.zeros(num_images, self.hidden_size))
        self.filled = TensorState(torch.zeros(num_images, dtype=torch.bool))
        self.assignments = TensorState(torch.full((num_images,), -1, dtype=torch.long))
        self.register_buffer("centroids", torch.zeros(num_clusters, self.hidden_size))
        self.register_buffer("class_weights", torch.zeros(num_clusters))

    @property
    def rounds(self) -> int:
        """Clusterings done so far."""
        return self.counter.steps_done // self.cluster_every

    def prepare_batch(self, batch: dict[str, torch.Tensor], generator: torch.Generator | None = None
                      ) -> dict[str, torch.Tensor]:
        images = self.to_unit(batch["pixel_values"])
        prepared = {"pixel_values": self.normalize(views(images, generator, 1, self.image_size, self.crop_scale))}
        if not self.training:
            return prepared
        if "image_index" not in batch:
            raise DataError("deepcluster needs each image's index in the training stream (batch key image_index); "
                            "hfssl.data.images.ImageExamples adds it")
        if self.counter.tick() and self.counter.steps_done % self.cluster_every == 0:
            self.recluster(self.rounds)
        prepared["image_index"] = batch["image_index"]
        return prepared

    @torch.no_grad()
    def recluster(self, round_: int) -> None:
        """Cluster the filled bank rows, relabel every image, re-initialise the head (round-seeded)."""
        device = self.bank.value.device
        generator = torch.Generator(device=device).manual_seed(self.seed * 1_000_003 + round_)
        filled = self.filled.value
        rows = filled.nonzero().squeeze(1)
        if rows.numel() < self.num_clusters:
            return  # too few images seen yet to cluster; tried again next round
        points = F.normalize(self.bank.value[rows], dim=1)
        centroids, labels = kmeans(points, self.num_clusters, self.iterations, generator)
        self.centroids.copy_(centroids)
        assignments = torch.full_like(self.assignments.value, -1)
        assignments[rows] = labels
        self.assignments.value = assignments
        sizes = torch.bincount(labels, minlength=self.num_clusters).float()
        self.class_weights.copy_(torch.where(sizes > 0, rows.numel() / (self.num_clusters * sizes.clamp(min=1)), 0.0))
        self.head.weight.copy_(torch.randn(self.head.weight.shape, generator=generator, device=device) * 0.01)
        self.head.bias.zero_()

    def target_counts(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {"deepcluster": count(batch["pixel_values"], batch["pixel_values"].shape[0])}

    def forward(self, model: PreTrainedModel, batch: dict[str, torch.Tensor]) -> ObjectiveOutput:
        features = self.cls_features(model, batch["pixel_values"])
        logits = self.head(features).float()
        if "image_index" in batch:
            index = batch["image_index"]
            labels = self.assignments.value[index]
        else:  # evaluation: the nearest centroid
            index = None
            labels = (F.normalize(features.detach().float(), dim=1) @ self.centroids.T).argmax(dim=1)
        weights = torch.where(labels >= 0, self.class_weights[labels.clamp(min=0)], 0.0)
        losses = F.cross_entropy(logits, labels.clamp(min=0), reduction="none")
        out = ObjectiveOutput(loss_sums={"deepcluster": (weights * losses).sum()},
                              metric_sums={"deepcluster/accuracy": ((logits.argmax(-1) == labels) & (labels >= 0)).sum()})
        if index is not None and self.training and torch.is_grad_enabled():
            self._remember(index, features.detach().float())
        return out

    @torch.no_grad()
    def _remember(self, index: torch.Tensor, features: torch.Tensor) -> None:
        index, features = all_gather_rows(index), all_gather_rows(features)
        self.bank.value.index_copy_(0, index, features.to(self.bank.value.dtype))
        self.filled.value.index_fill_(0, index, True)

