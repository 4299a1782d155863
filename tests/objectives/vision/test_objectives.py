"""Vision pretext objectives on a tiny real ViT: wiring, counts, determinism and learnability."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from transformers import ViTConfig, ViTForMaskedImageModeling, ViTModel

from hfssl.errors import ConfigError, DataError
from hfssl.objectives.vision import PRETEXT_TASKS, build_objective
from hfssl.objectives.vision.corruptions import lab_to_rgb, rgb_to_lab
from hfssl.objectives.vision.objectives import nt_xent

B, S, P = 8, 32, 4
TASKS = list(PRETEXT_TASKS)
# Per task: expected target count for a batch of B images of the tiny config.
EXPECTED_COUNTS = {
    "rotation": B,
    "jigsaw": B,
    "relative_position": B,
    "colorization": B * S * S,
    "inpainting": B * 3 * (S // 2) ** 2,             # a 4x4 block of the 8x8 patch grid = 25%
    "contrastive": 2 * B,
    "mim": B * 3 * P * P * round(0.6 * 16) * 4,      # 10 of the 16 2x2 mask squares
}
TOKENS = B * ((S // P) ** 2 + 1)


def tiny_config(**overrides) -> ViTConfig:
    values = dict(image_size=S, patch_size=P, encoder_stride=P, hidden_size=64, num_hidden_layers=2,
                  num_attention_heads=2, intermediate_size=128)
    values.update(overrides)
    return ViTConfig(**values)


def make_backbone(objective, seed: int = 0):
    torch.manual_seed(seed)
    if objective.model_class is ViTForMaskedImageModeling:
        return ViTForMaskedImageModeling(objective_config(objective))
    return ViTModel(objective_config(objective), add_pooling_layer=False)


def objective_config(objective) -> ViTConfig:
    return tiny_config(image_size=objective.image_size, patch_size=objective.patch_size)


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
    torch.manual_seed(seed)
    objective = build_objective(task, tiny_config(), **options)
    return objective, make_backbone(objective, seed)


def loss_of(objective, model, batch) -> torch.Tensor:
    counts = objective.target_counts(batch)
    out = objective(model, batch)
    return sum(out.loss_sums[t] / counts[t] for t in counts)


@pytest.mark.parametrize("task", TASKS)
def test_forward_backward_counts_and_gradients(task):
    objective, model = build(task)
    assert objective.primary_term == task
    batch = objective.prepare_batch({"pixel_values": structured_images(), "labels": torch.zeros(B)}, gen(1))
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
    embedding = model.embeddings.patch_embeddings.projection.weight if task != "mim" else \
        model.vit.embeddings.patch_embeddings.projection.weight
    assert embedding.grad is not None and embedding.grad.abs().sum() > 0
    head = list(objective.parameters())
    if task == "mim":
        assert head == []                                        # the decoder is the stock model's
        assert model.decoder[0].weight.grad.abs().sum() > 0
    else:
        assert head and all(p.grad is not None and p.grad.abs().sum() > 0 for p in head)
    doubled = 2 if task in ("contrastive", "relative_position") else 1
    assert objective.input_tokens(batch) == doubled * TOKENS


@pytest.mark.parametrize("task", TASKS)
def test_deterministic_given_the_generator(task):
    objective, model = build(task)
    images = {"pixel_values": structured_images()}
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
# is the colour entropy given lightness), inpainting 0.08, contrastive 0.37, mim 0.54.
LEARN_FRACTION = {"rotation": 0.2, "jigsaw": 0.2, "relative_position": 0.2, "colorization": 0.8,
                  "inpainting": 0.3, "contrastive": 0.6, "mim": 0.75}


@pytest.mark.parametrize("task", TASKS)
def test_each_task_is_learnable(task):
    objective, model = build(task)
    batch = objective.prepare_batch({"pixel_values": structured_images()}, gen(2))
    params = list(model.parameters()) + list(objective.parameters())
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
