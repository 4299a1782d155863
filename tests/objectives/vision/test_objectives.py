"""Vision pretext objectives on a tiny real ViT: wiring, counts, determinism and learnability, every task."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from transformers import ViTConfig, ViTForMaskedImageModeling, ViTMAEForPreTraining, ViTModel

from hfssl.errors import ConfigError, DataError
from hfssl.models.vision import mae_config_from_vit
from hfssl.objectives.vision import PRETEXT_TASKS, build_objective
from hfssl.objectives.vision.corruptions import lab_to_rgb, rgb_to_lab
from hfssl.objectives.vision.objectives import nt_xent

B, S, P = 8, 32, 4
# The autoencoders have several loss terms and their own metrics: test_autoencoders.py runs these checks on them.
AUTOENCODERS = ("autoencoder", "denoising_autoencoder", "sparse_autoencoder", "vae")
TASKS = [task for task in PRETEXT_TASKS if task not in AUTOENCODERS]
NUM_IMAGES = 16         # memory banks (exemplar, deepcluster): the test batches use indices 0..B-1
# Per task: expected target count for a batch of B images of the tiny config.
EXPECTED_COUNTS = {
    "rotation": B,
    "jigsaw": B,
    "relative_position": B,
    "colorization": B * S * S,
    "inpainting": B * 3 * (S // 2) ** 2,             # a 4x4 block of the 8x8 patch grid = 25%
    "contrastive": 2 * B,
    "mim": B * 3 * P * P * round(0.6 * 16) * 4,      # 10 of the 16 2x2 mask squares
    "dino": B,                                       # one per image, averaged over its view pairs
    "moco_v3": 2 * B,                                # one query per view
    "byol": 2 * B,
    "swav": B,
    "deepcluster": B,
    "exemplar": B,
    "mae": B * (64 - 16),                            # masked patches: 64 minus the int(64 * 0.25) visible
}
TOKENS = B * ((S // P) ** 2 + 1)
LOCAL = B * ((12 // P) ** 2 + 1)                     # a 12 px local view (96/224 of 32 px, whole patches)
# Input tokens per batch, in units of TOKENS (plus local views for multi-crop).
INPUT_TOKENS = {"contrastive": 2 * TOKENS, "relative_position": 2 * TOKENS, "moco_v3": 2 * TOKENS,
                "byol": 2 * TOKENS, "dino": 2 * TOKENS + 6 * LOCAL, "swav": 2 * TOKENS + 6 * LOCAL}
# Options that keep the tests small: few clusters, clustering at every step.
SMALL = {"deepcluster": {"num_clusters": 4, "cluster_every": 1}, "dino": {"num_prototypes": 256}}


def tiny_config(**overrides) -> ViTConfig:
    values = dict(image_size=S, patch_size=P, encoder_stride=P, hidden_size=64, num_hidden_layers=2,
                  num_attention_heads=2, intermediate_size=128)
    values.update(overrides)
    return ViTConfig(**values)


def make_backbone(model_class, seed: int = 0, **overrides):
    torch.manual_seed(seed)
    if model_class is ViTForMaskedImageModeling:
        return ViTForMaskedImageModeling(tiny_config(**overrides))
    if model_class is ViTMAEForPreTraining:
        return ViTMAEForPreTraining(mae_config_from_vit(tiny_config(**overrides)))
    return ViTModel(tiny_config(**overrides), add_pooling_layer=False)


def structured_images(b: int = B, seed: int = 0) -> torch.Tensor:
    """Smooth random colour fields with an asymmetric bright marker (so rotations are visible), uint8."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(b, 3, 4, 4, generator=g)
    images = F.interpolate(coarse, size=(S, S), mode="bilinear", align_corners=False)
    images[:, :, 2:10, 2:6] = 1.0
    images[:, 0, 2:4, 2:14] = 0.0
    return (images * 255).round().to(torch.uint8)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def build(task: str, seed: int = 0, **options):
    """The objective and its backbone (the backbone first: momentum teachers copy it)."""
    model = make_backbone(PRETEXT_TASKS[task].model_class, seed)
    torch.manual_seed(seed)
    objective = build_objective(task, model.config, backbone=model, max_steps=10, num_images=NUM_IMAGES,
                                **{**SMALL.get(task, {}), **options})
    return objective, model


def images_batch(seed: int = 0) -> dict[str, torch.Tensor]:
    return {"pixel_values": structured_images(seed=seed), "labels": torch.zeros(B, dtype=torch.long),
            "image_index": torch.arange(B)}


def trainable(objective) -> list[torch.nn.Parameter]:
    """The objective's own trained parameters (a momentum teacher's are not)."""
    return [p for p in objective.parameters() if p.requires_grad]


def loss_of(objective, model, batch) -> torch.Tensor:
    counts = objective.target_counts(batch)
    out = objective(model, batch)
    return sum(out.loss_sums[t] / counts[t] for t in counts)


@pytest.mark.parametrize("task", TASKS)
def test_forward_backward_counts_and_gradients(task):
    objective, model = build(task)
    assert objective.primary_term == task
    if task == "deepcluster":  # pseudo-labels exist once the bank has features and a clustering ran
        objective(model, objective.prepare_batch(images_batch(), gen(0)))
        objective.recluster(1)
    batch = objective.prepare_batch(images_batch(), gen(1))
    counts = objective.target_counts(batch)
    assert set(counts) == {task} and counts[task].item() == EXPECTED_COUNTS[task]
    assert counts[task].dtype == torch.long
    out = objective(model, batch)
    assert set(out.loss_sums) == {task}
    for name, value in out.metric_sums.items():
        assert name == f"{task}/accuracy" and 0 <= value.item() <= counts[task].item()
    loss = out.loss_sums[task] / counts[task]
    assert torch.isfinite(loss) and loss.item() > 0
    loss.backward()
    embedding = model.base_model.embeddings.patch_embeddings.projection.weight
    assert embedding.grad is not None and embedding.grad.abs().sum() > 0
    head = trainable(objective)
    if task in ("mim", "mae"):
        assert head == []                                        # the decoder is the stock model's
        decoder = model.decoder[0] if task == "mim" else model.decoder.decoder_pred
        assert decoder.weight.grad.abs().sum() > 0
    else:
        missing = [n for n, p in objective.named_parameters() if p.requires_grad and
                   (p.grad is None or p.grad.abs().sum() == 0)]
        # SwAV's prototypes are frozen for its first steps (gradient scaled to 0, on purpose).
        assert head and missing == (["prototypes.weight"] if task == "swav" else []), missing
    teacher = [p for p in objective.parameters() if not p.requires_grad]
    assert all(p.grad is None for p in teacher)                  # momentum teachers are never trained
    assert objective.input_tokens(batch) == INPUT_TOKENS.get(task, TOKENS)


@pytest.mark.parametrize("task", TASKS)
def test_deterministic_given_the_generator(task):
    objective, model = build(task)
    objective.eval()  # in training, prepare_batch also advances step counters (tested in test_momentum.py)
    images = images_batch()
    first, second = (objective.prepare_batch(images, gen(5)) for _ in range(2))
    other = objective.prepare_batch(images, gen(6))
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)
    if task != "colorization":          # the only task without random draws
        assert any(not torch.equal(first[k], other[k]) for k in first)
    with torch.no_grad():
        assert torch.equal(loss_of(objective, model, first), loss_of(objective, model, second))


# Loss after 40 Adam steps on one fixed corrupted batch must fall below this fraction of the first.
# Measured (2-core CPU): rotation 0.02, jigsaw 0.02, relative_position 0.01, colorization 0.64 (its floor
# is the colour entropy given lightness), inpainting 0.08, contrastive 0.37, mim 0.54; dino 0.93 and swav 0.90
# (their floor is the entropy of the teacher's distribution / the Sinkhorn codes, far above 0), moco_v3 0.06,
# byol 0.07, deepcluster 0.11, exemplar 0.002, mae 0.80.
LEARN_FRACTION = {"rotation": 0.2, "jigsaw": 0.2, "relative_position": 0.2, "colorization": 0.8,
                  "inpainting": 0.3, "contrastive": 0.6, "mim": 0.75,
                  # The teacher stays fixed here (no optimizer steps through the loop), so these fit a target.
                  "dino": 0.96, "moco_v3": 0.3, "byol": 0.3, "swav": 0.96, "deepcluster": 0.4, "exemplar": 0.2,
                  "mae": 0.9}


@pytest.mark.parametrize("task", TASKS)
def test_each_task_is_learnable(task):
    objective, model = build(task)
    if task == "deepcluster":
        objective(model, objective.prepare_batch(images_batch(), gen(0)))
        objective.recluster(1)
    batch = objective.prepare_batch(images_batch(), gen(2))
    if task == "dino":
        objective.eval()  # hold the centre still: the student then fits a fixed target
    params = list(model.parameters()) + trainable(objective)
    optimizer = torch.optim.Adam(params, lr=1e-3)
    losses = []
    for _ in range(40):
        loss = loss_of(objective, model, batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < LEARN_FRACTION[task] * losses[0], (task, losses[0], losses[-1])


def test_rotation_labels_are_the_rotation_applied():
    objective, _ = build("rotation")
    images = structured_images()
    batch = objective.prepare_batch({"pixel_values": images}, gen(3))
    expected = objective.normalize(images.float() / 255)
    for img, rotated, k in zip(expected, batch["pixel_values"], batch["rotation_labels"].tolist()):
        assert torch.equal(torch.rot90(rotated, -k, dims=(1, 2)), img)


def test_jigsaw_defaults_and_grid_check():
    objective, _ = build("jigsaw")
    assert objective.permutations.shape == (24, 4) and objective.head.out_features == 24
    assert objective.min_hamming_distance == 2
    nine = build_objective("jigsaw", tiny_config(image_size=48), grid=3, num_permutations=30)
    assert nine.head.out_features == 30 and nine.min_hamming_distance >= 6
    with pytest.raises(ConfigError, match="divide the 8x8 patch grid"):
        build_objective("jigsaw", tiny_config(), grid=3)


def test_colorization_input_carries_no_colour():
    objective, _ = build("colorization")
    images = structured_images()
    lab = rgb_to_lab(images.float() / 255)
    # Same lightness, different colour: swap a and b (halved to stay inside the sRGB gamut).
    recoloured_lab = torch.cat([lab[:, :1], lab[:, 2:] * 0.5, lab[:, 1:2] * 0.5], dim=1)
    recoloured = (lab_to_rgb(recoloured_lab, clip=True) * 255).round().to(torch.uint8)
    assert (recoloured.float() - images.float()).abs().mean() > 10       # clearly another colour
    plain = objective.prepare_batch({"pixel_values": images}, gen())
    other = objective.prepare_batch({"pixel_values": recoloured}, gen())
    x = plain["pixel_values"]
    # Exactly the normalised lightness, in all three channels.
    lightness = (lab[:, :1] / 100 - 0.5) / 0.5
    assert torch.equal(x[:, 0], x[:, 1]) and torch.equal(x[:, 1], x[:, 2])
    torch.testing.assert_close(x, lightness.expand(-1, 3, -1, -1), rtol=0, atol=1e-5)
    # Left over: uint8 rounding and gamut clipping of the recoloured image, far below the colour change.
    assert (x - other["pixel_values"]).abs().mean() < 0.01
    assert not torch.equal(plain["ab_classes"], other["ab_classes"])


def test_inpainting_blanks_one_block_and_scores_only_it():
    objective, model = build("inpainting")
    batch = objective.prepare_batch({"pixel_values": structured_images()}, gen(4))
    mask = batch["inpainting_mask"]
    assert torch.equal(mask.sum((1, 2, 3)), torch.full((B,), (S // 2) ** 2))
    assert torch.equal(batch["pixel_values"].masked_select(mask.expand(-1, 3, -1, -1)).abs().sum(), torch.tensor(0.0))
    assert torch.equal(batch["pixel_values"][~mask.expand(-1, 3, -1, -1)],
                       batch["inpainting_target"][~mask.expand(-1, 3, -1, -1)])
    with torch.no_grad():
        out = objective(model, batch)
        prediction = objective.patches_to_image(objective.head(model(batch["pixel_values"]).last_hidden_state[:, 1:]), 3)
    direct = ((prediction - batch["inpainting_target"]) ** 2)[mask.expand(-1, 3, -1, -1)].sum()
    torch.testing.assert_close(out.loss_sums["inpainting"], direct, rtol=1e-5, atol=1e-3)


def test_mim_loss_is_the_masked_l1_and_matches_transformers():
    objective, model = build("mim")
    assert list(objective.parameters()) == []
    batch = objective.prepare_batch({"pixel_values": structured_images()}, gen(5))
    mask = batch["bool_masked_pos"]
    assert torch.equal(mask.sum(1), torch.full((B,), 40))
    with torch.no_grad():
        out = objective(model, batch)
        stock = model(pixel_values=batch["pixel_values"], bool_masked_pos=mask)
    pixel_mask = mask.view(B, 8, 8).repeat_interleave(P, 1).repeat_interleave(P, 2)
    direct = sum((stock.reconstruction[b] - batch["pixel_values"][b]).abs()[:, pixel_mask[b]].sum() for b in range(B))
    torch.testing.assert_close(out.loss_sums["mim"], direct, rtol=1e-5, atol=1e-3)
    # transformers' own SimMIM loss is the same sum divided by masked pixels x channels.
    count = objective.target_counts(batch)["mim"]
    torch.testing.assert_close(out.loss_sums["mim"] / count, stock.loss, rtol=1e-4, atol=1e-6)


def test_mim_crops_and_flips_like_simmim_unless_turned_off():
    images = {"pixel_values": structured_images()}
    plain = build_objective("mim", tiny_config(), crop_scale=None).prepare_batch(images, gen(3))["pixel_values"]
    expected = (images["pixel_values"].float() / 255 - 0.5) / 0.5
    torch.testing.assert_close(plain, expected)
    cropped = build_objective("mim", tiny_config()).prepare_batch(images, gen(3))["pixel_values"]
    assert cropped.shape == plain.shape and not torch.allclose(cropped, plain)
    assert cropped.min() >= -1.0 - 1e-6 and cropped.max() <= 1.0 + 1e-6   # bilinear resampling stays in range
    with pytest.raises(ConfigError, match="crop_scale"):
        build_objective("mim", tiny_config(), crop_scale=(0.0, 1.0))


def test_mim_geometry_errors():
    with pytest.raises(ConfigError, match="encoder_stride"):
        build_objective("mim", tiny_config(encoder_stride=8))
    with pytest.raises(ConfigError, match="multiple of patch_size"):
        build_objective("mim", tiny_config(), mask_patch_size=6)
    assert build_objective("mim", tiny_config(image_size=28)).block == 1      # 7x7 grid: no 2x2 squares


def test_nt_xent_against_a_direct_formula():
    g = gen(7)
    z = torch.randn(6, 5, generator=g)
    loss, correct = nt_xent(z, temperature=0.5)
    zn = F.normalize(z, dim=-1)
    expected = 0.0
    for i in range(6):
        positive = (i + 3) % 6
        logits = torch.stack([zn[i] @ zn[j] / 0.5 for j in range(6) if j != i])
        expected += -(zn[i] @ zn[positive] / 0.5 - torch.logsumexp(logits, 0))
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-5)
    pairs = torch.cat([torch.eye(3), torch.eye(3)]) + 0.01 * torch.randn(6, 3, generator=g)
    assert nt_xent(pairs, 0.1)[1].item() == 6


def test_builder_errors_and_bad_batches():
    with pytest.raises(ConfigError, match="rotation, jigsaw, relative_position"):
        build_objective("sudoku", tiny_config())
    with pytest.raises(ConfigError, match="does not take grid"):
        build_objective("rotation", tiny_config(), grid=2)
    objective, _ = build("rotation")
    with pytest.raises(DataError, match="image_size"):
        objective.prepare_batch({"pixel_values": torch.zeros(2, 3, 16, 16, dtype=torch.uint8)}, gen())


def test_normalisation_uses_the_processor_statistics():
    objective = build_objective("rotation", tiny_config(), image_mean=[0.2, 0.4, 0.6], image_std=[0.1, 0.2, 0.3])
    white = torch.full((1, 3, S, S), 255, dtype=torch.uint8)
    x = objective.prepare_batch({"pixel_values": white}, gen())["pixel_values"]
    torch.testing.assert_close(x[0, :, 0, 0], torch.tensor([8.0, 3.0, 4 / 3]))


@pytest.mark.slow      # a cold inductor cache takes ~25 s for rotation on a 2-core CPU
@pytest.mark.parametrize("task", ["rotation", "mim"])
def test_compiled_objective_matches_eager(task):
    objective, model = build(task)
    batch = objective.prepare_batch({"pixel_values": structured_images()}, gen(8))
    model.eval()
    with torch.no_grad():
        eager = objective(model, batch).loss_sums[task]
        compiled = torch.compile(objective, fullgraph=False)(model, batch).loss_sums[task]
    torch.testing.assert_close(compiled, eager, rtol=1e-4, atol=1e-4)
