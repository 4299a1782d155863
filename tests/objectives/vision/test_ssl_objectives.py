"""The joint-embedding and clustering tasks piece by piece: the momentum teacher, DINO, MoCo v3, BYOL, SwAV's
Sinkhorn, DeepCluster's k-means, exemplar's memory bank, MAE on the stock model, the online probe."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from hfssl.errors import DataError
from hfssl.objectives.vision.clustering import kmeans, sinkhorn
from hfssl.objectives.vision.momentum import MomentumTeacher, cosine_momentum
from hfssl.objectives.vision.monitoring import OnlineProbe, feature_spread, rankme
from tests.objectives.vision.test_objectives import B, build, gen, images_batch, loss_of


# -- the momentum teacher -------------------------------------------------------------------------------------
def test_cosine_momentum_rises_from_base_to_one():
    assert cosine_momentum(0, 101, 0.996) == pytest.approx(0.996)
    assert cosine_momentum(50, 101, 0.996) == pytest.approx(0.998)
    assert cosine_momentum(100, 101, 0.996) == pytest.approx(1.0)
    values = [cosine_momentum(s, 101, 0.9) for s in range(101)]
    assert values == sorted(values)


def _teacher(accumulation: int = 1) -> tuple[MomentumTeacher, nn.Module]:
    torch.manual_seed(0)
    student = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    return MomentumTeacher({"net": student}, base_momentum=0.9, total_steps=10,
                           accumulation_steps=accumulation), student


def _nudge(student: nn.Module) -> None:
    """What an optimizer step does: change the student in place."""
    with torch.no_grad():
        for p in student.parameters():
            p.add_(0.5)
        student[1].running_mean.add_(1.0)


def test_teacher_is_a_frozen_copy_updated_once_per_optimizer_step_with_the_ema_formula():
    teacher, student = _teacher(accumulation=2)
    copy = teacher["net"]
    assert copy is not student and all(not p.requires_grad for p in copy.parameters())
    assert all(torch.equal(a, b) and a.data_ptr() != b.data_ptr()
               for a, b in zip(copy.parameters(), student.parameters()))
    # The student is referenced, never registered: its parameters are not the teacher module's.
    assert not any(p is q for p in teacher.parameters() for q in student.parameters())
    before = [p.clone() for p in copy.parameters()]
    teacher.step(), teacher.step()               # step 0's two micro-batches: nothing to apply yet
    assert all(torch.equal(a, b) for a, b in zip(before, copy.parameters()))
    _nudge(student)                              # optimizer step 0
    teacher.step()                               # first micro-batch of step 1: apply step 0's update
    m = cosine_momentum(0, 10, 0.9)
    for old, new, s in zip(before, copy.parameters(), student.parameters()):
        torch.testing.assert_close(new, m * old + (1 - m) * s, rtol=0, atol=1e-7)
    after = [p.clone() for p in copy.parameters()]
    teacher.step()                               # second micro-batch of step 1: nothing more
    assert all(torch.equal(a, b) for a, b in zip(after, copy.parameters()))
    assert torch.equal(copy[1].running_mean, student[1].running_mean)    # buffers copied
    assert teacher.steps_done == 1


def test_flush_applies_the_last_update_once_and_resume_continues_the_count():
    teacher, student = _teacher()
    for _ in range(3):
        teacher.step()
        _nudge(student)
    state = {k: v.clone() for k, v in teacher.state_dict().items()}
    teacher.flush()
    flushed = [p.clone() for p in teacher["net"].parameters()]
    teacher.flush()                             # idempotent
    assert all(torch.equal(a, b) for a, b in zip(flushed, teacher["net"].parameters()))
    teacher.step()                              # the update it would apply was flushed already
    assert all(torch.equal(a, b) for a, b in zip(flushed, teacher["net"].parameters()))
    # A new teacher loaded from the checkpoint taken before the flush applies that same update first.
    resumed, _ = _teacher()
    object.__setattr__(resumed, "_students", {"net": student})
    resumed.load_state_dict(state)
    resumed.step()
    assert all(torch.equal(a, b) for a, b in zip(flushed, resumed["net"].parameters()))
    assert resumed.counter.seen == 4


# -- DINO -----------------------------------------------------------------------------------------------------
def test_dino_views_centre_temperature_and_teacher_export():
    objective, model = build("dino", num_prototypes=32, num_local_crops=2, teacher_temperature_warmup_steps=4)
    batch = objective.prepare_batch(images_batch(), gen(0))
    assert batch["pixel_values"].shape == (2 * B, 3, 32, 32) and batch["local_pixel_values"].shape == (2 * B, 3, 12, 12)
    assert [objective.teacher_temperature_at(s) for s in (0, 2, 4, 9)] == pytest.approx([0.04, 0.055, 0.07, 0.07])
    with torch.no_grad():
        teacher_out = objective.momentum["head"](objective.cls_features(objective.teacher, batch["pixel_values"]))
    loss = loss_of(objective, model, batch)      # training mode: the centre moves towards the batch mean
    torch.testing.assert_close(objective.center, 0.1 * teacher_out.mean(0, keepdim=True), rtol=1e-5, atol=1e-6)
    # The loss: cross-entropy of the centred, sharpened teacher against every other student view, averaged.
    with torch.no_grad():
        center = torch.zeros_like(objective.center)
        targets = F.softmax((teacher_out - center) / 0.04, dim=-1).chunk(2)
        student = torch.cat([objective.head(objective.cls_features(model, batch["pixel_values"])),
                             objective.head(objective.cls_features(model, batch["local_pixel_values"]))]).chunk(4)
        expected = sum(torch.sum(-t * F.log_softmax(s / 0.1, dim=-1)) for i, t in enumerate(targets)
                       for j, s in enumerate(student) if i != j) / 6 / B
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-5)
    assert objective.export_backbone(model) is objective.teacher
    student_export, model2 = build("dino", num_prototypes=32, export_student=True)
    assert student_export.export_backbone(model2) is model2



def test_dino_head_learns_its_gains_only_without_norm_last_layer():
    objective, model = build("dino", num_prototypes=16, norm_last_layer=False)
    head = objective.head
    assert head.last_layer_gain is not None and head.last_layer_gain.shape == (16,)
    assert head.last_layer_gain.dim() == 1            # so the optimizer's no-decay group holds it
    features = torch.randn(B, objective.hidden_size)
    unit = head(features)
    with torch.no_grad():
        head.last_layer_gain.mul_(3.0)
    torch.testing.assert_close(head(features), 3.0 * unit)     # the gain scales each prototype's score
    head(features).logsumexp(-1).sum().backward()
    assert head.last_layer_gain.grad is not None and head.last_layer_gain.grad.abs().sum() > 0
    fixed, _ = build("dino", num_prototypes=16)
    assert fixed.head.last_layer_gain is None
    assert fixed.head(features).abs().max() <= 1.0 + 1e-5    # fixed gains: the scores are cosines

# -- MoCo v3 and BYOL -----------------------------------------------------------------------------------------
def test_moco_v3_is_symmetric_infonce_against_the_momentum_keys():
    objective, model = build("moco_v3")
    batch = objective.prepare_batch(images_batch(), gen(0))
    with torch.no_grad():
        out = objective(model, batch)
        x = batch["pixel_values"]
        q = F.normalize(objective.predictor(objective.projector(objective.cls_features(model, x))), dim=-1)
        k = F.normalize(objective.momentum["projector"](objective.cls_features(objective.momentum["backbone"], x)),
                        dim=-1)
    (q1, q2), (k1, k2) = q.chunk(2), k.chunk(2)
    labels = torch.arange(B)
    expected = sum(F.cross_entropy(a @ b.T / 0.2, labels, reduction="sum") for a, b in ((q1, k2), (q2, k1)))
    torch.testing.assert_close(out.loss_sums["moco_v3"], expected, rtol=1e-5, atol=1e-5)


def test_byol_is_the_normalised_mse_of_each_view_to_the_other_views_target():
    objective, model = build("byol")
    batch = objective.prepare_batch(images_batch(), gen(0))
    with torch.no_grad():
        out = objective(model, batch)
        x = batch["pixel_values"]
        p = objective.predictor(objective.projector(objective.cls_features(model, x)))
        z = objective.momentum["projector"](objective.cls_features(objective.momentum["backbone"], x))
    (p1, p2), (z1, z2) = p.chunk(2), z.chunk(2)
    expected = sum(((F.normalize(a, dim=-1) - F.normalize(b, dim=-1)) ** 2).sum() for a, b in ((p1, z2), (p2, z1)))
    torch.testing.assert_close(out.loss_sums["byol"], expected, rtol=1e-5, atol=1e-5)


# -- SwAV -----------------------------------------------------------------------------------------------------
def test_sinkhorn_equipartitions_and_counts_shared_rows_once():
    scores = F.normalize(torch.randn(12, 5, generator=gen(1)), dim=-1)
    codes = sinkhorn(scores, epsilon=0.05, iterations=50)
    torch.testing.assert_close(codes.sum(dim=1), torch.ones(12), rtol=1e-4, atol=1e-4)   # a distribution per row
    torch.testing.assert_close(codes.sum(dim=0), torch.full((5,), 12 / 5), rtol=0.05, atol=0.05)  # equipartition
    assert (codes.argmax(1) == scores.argmax(1)).float().mean() > 0.5                     # still follows the scores
    # Rows held by every rank alike (the queue) take part exactly like extra rows of one batch.
    joint = sinkhorn(torch.cat([scores[:8], scores[8:]]), iterations=3)
    torch.testing.assert_close(sinkhorn(scores[:8], iterations=3, shared=scores[8:]), joint[:8])


def test_swav_prototypes_stay_normalised_and_are_frozen_first():
    objective, model = build("swav", num_prototypes=16, num_local_crops=2, freeze_prototypes_steps=1)
    with torch.no_grad():
        objective.prototypes.weight.mul_(3.0)
    batch = objective.prepare_batch(images_batch(), gen(0))            # step 0: frozen
    torch.testing.assert_close(objective.prototypes.weight.norm(dim=1), torch.ones(16))
    loss_of(objective, model, batch).backward()
    assert objective.prototypes.weight.grad.abs().sum() == 0 and objective.projector[0].weight.grad.abs().sum() > 0
    objective.prototypes.weight.grad = None
    loss_of(objective, model, objective.prepare_batch(images_batch(), gen(1))).backward()  # step 1: trained
    assert objective.prototypes.weight.grad.abs().sum() > 0


# -- DeepCluster ----------------------------------------------------------------------------------------------
def test_kmeans_finds_separated_clusters_and_restarts_empty_ones():
    centres = torch.eye(4)
    points = F.normalize(centres.repeat_interleave(10, 0) + 0.05 * torch.randn(40, 4, generator=gen(0)), dim=1)
    _, labels = kmeans(points, 4, 10, gen(3))
    groups = labels.view(4, 10)
    assert all(len(set(g.tolist())) == 1 for g in groups) and len(set(labels.tolist())) == 4
    # Two distinct points, 3 clusters asked: no centroid is left without a point to restart from.
    few = F.normalize(torch.tensor([[1.0, 0.0]] * 5 + [[0.0, 1.0]] * 5), dim=1)
    centroids, _ = kmeans(few, 3, 5, gen(1))
    assert torch.isfinite(centroids).all()


def test_deepcluster_clusters_the_bank_weights_classes_and_reinitialises_the_head():
    objective, model = build("deepcluster")
    assert objective.prepare_batch(images_batch(), gen(0))["image_index"].tolist() == list(range(B))
    loss = loss_of(objective, model, objective.prepare_batch(images_batch(), gen(0)))
    assert loss.item() == 0.0                      # nothing clustered yet: no pseudo-label, weight 0
    assert objective.filled.value[:B].all() and not objective.filled.value[B:].any()
    objective.recluster(1)
    labels = objective.assignments.value
    assert (labels[:B] >= 0).all() and (labels[B:] == -1).all()
    sizes = torch.bincount(labels[:B], minlength=4).float()
    expected = torch.where(sizes > 0, B / (4 * sizes.clamp(min=1)), torch.zeros(4))
    torch.testing.assert_close(objective.class_weights, expected)
    head = objective.head.weight.clone()
    objective.recluster(1)                          # same round: same start, same head
    assert torch.equal(objective.head.weight, head) and torch.equal(objective.assignments.value, labels)
    objective.recluster(2)
    assert not torch.equal(objective.head.weight, head)
    with pytest.raises(DataError, match="image_index"):
        objective.prepare_batch({"pixel_values": images_batch()["pixel_values"]}, gen(0))


# -- exemplar -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("negatives", [0, 5])
def test_exemplar_memory_bank_update_and_loss(negatives: int):
    objective, model = build("exemplar", num_negatives=negatives)
    bank = objective.bank.value.clone()
    torch.testing.assert_close(bank.norm(dim=1), torch.ones(len(bank)))
    batch = objective.prepare_batch(images_batch(), gen(0))
    assert ("negative_index" in batch) == bool(negatives)
    with torch.no_grad():
        v = F.normalize(objective.projection(objective.cls_features(model, batch["pixel_values"])), dim=-1)
    out = objective(model, batch)
    if negatives:
        logits = torch.cat([(bank[:B] * v).sum(1, keepdim=True), v @ bank[batch["negative_index"]].T], 1) / 0.07
        expected = F.cross_entropy(logits, torch.zeros(B, dtype=torch.long), reduction="sum")
    else:
        expected = F.cross_entropy(v @ bank.T / 0.07, torch.arange(B), reduction="sum")
    torch.testing.assert_close(out.loss_sums["exemplar"], expected, rtol=1e-5, atol=1e-4)
    updated = objective.bank.value
    torch.testing.assert_close(updated[:B], F.normalize(0.5 * bank[:B] + 0.5 * v, dim=1), rtol=1e-5, atol=1e-6)
    assert torch.equal(updated[B:], bank[B:])


# -- MAE ------------------------------------------------------------------------------------------------------
def test_mae_loss_is_the_stock_models_and_encode_sees_whole_images():
    objective, model = build("mae")
    assert model.config.mask_ratio == 0.75
    batch = objective.prepare_batch(images_batch(), gen(0))
    with torch.no_grad():
        out = objective(model, batch)
        stock = model(pixel_values=batch["pixel_values"], noise=batch["noise"])
    count = objective.target_counts(batch)["mae"]
    torch.testing.assert_close(out.loss_sums["mae"] / count, stock.loss, rtol=1e-5, atol=1e-6)
    assert count.item() == int(stock.mask.sum())
    from transformers import ViTModel

    from hfssl.models.vision import vit_config_from_mae

    vit = ViTModel(vit_config_from_mae(model.config), add_pooling_layer=False)
    vit.load_state_dict(model.vit.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(objective.encode(model, batch["pixel_values"]),
                                   vit(pixel_values=batch["pixel_values"]).last_hidden_state[:, 0], rtol=1e-5, atol=1e-5)
    assert model.config.mask_ratio == 0.75          # restored after encoding


# -- monitoring -----------------------------------------------------------------------------------------------
def test_collapse_statistics():
    spread = torch.randn(200, 32, generator=gen(0))
    collapsed = torch.ones(200, 32) + 1e-4 * torch.randn(200, 32, generator=gen(1))
    assert feature_spread(spread) > 0.8 and feature_spread(collapsed) < 0.01
    assert rankme(spread) > 20 and rankme(collapsed) < 1.5
    line = torch.randn(200, 1, generator=gen(2)) * torch.randn(1, 32, generator=gen(3))
    assert rankme(line) < 1.5                       # a dimensional collapse onto one direction


def test_online_probe_trains_only_its_head_on_the_exported_encoders_features():
    task, model = build("dino", num_prototypes=32, num_local_crops=0)
    probed = OnlineProbe(task, num_classes=3)
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    batch = probed.prepare_batch({**images_batch(), "labels": labels}, gen(0))
    counts = probed.target_counts(batch)
    assert set(counts) == {"dino", "online_probe"} and counts["online_probe"].item() == B
    out = probed(model, batch)
    out.loss_sums["online_probe"].backward()
    assert probed.probe[1].weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.parameters())          # the probe's loss stops at the features
    with torch.no_grad():
        features = task.teacher(pixel_values=batch["probe_pixel_values"]).last_hidden_state[:, 0]
        # The probe standardises with the batch's statistics in training (BatchNorm without affine parameters).
        standardised = (features - features.mean(0)) / (features.var(0, unbiased=False) + 1e-5).sqrt()
        expected = F.cross_entropy(probed.probe[1](standardised), labels, reduction="sum")
    torch.testing.assert_close(out.loss_sums["online_probe"], expected)     # the teacher's features (DINO's export)
    assert 0 < out.metric_sums["online_probe/feature_spread"].item() / B < math.sqrt(64)
    unlabelled = probed.prepare_batch({"pixel_values": images_batch()["pixel_values"]}, gen(0))
    assert set(probed.target_counts(unlabelled)) == {"dino"}
