"""The image autoencoders (plain, denoising, sparse, VAE) on a tiny real ViT: corruption statistics, the code
being the CLS vector, the loss terms against direct formulas, gradients, determinism and learnability."""

from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import Normal, kl_divergence
from transformers import ViTModel

from hfssl.errors import ConfigError
from hfssl.objectives.vision import build_objective
from hfssl.objectives.vision.autoencoders import (
    corrupt,
    gaussian_kl,
    gaussian_noise,
    pixel_masking,
    random_pixel_mask,
    salt_and_pepper,
)
from tests.objectives.vision.test_objectives import gen, structured_images, tiny_config

B, S = 8, 32
PIXELS = B * 3 * S * S
TASKS = ["autoencoder", "denoising_autoencoder", "sparse_autoencoder", "vae"]
# Loss terms and their counts for a batch of B images (code: the 64-wide CLS vector).
COUNTS = {"autoencoder": {"autoencoder": PIXELS},
          "denoising_autoencoder": {"denoising_autoencoder": PIXELS},
          "sparse_autoencoder": {"sparse_autoencoder": PIXELS, "sparsity": B * 64},
          "vae": {"vae": PIXELS, "kl": PIXELS}}
METRICS = {"sparse_autoencoder": {"sparsity/zero_fraction"}, "vae": {"vae/kl", "vae/elbo"}}


def build(task: str, seed: int = 0, **options):
    torch.manual_seed(seed)
    model = ViTModel(tiny_config(), add_pooling_layer=False)
    return build_objective(task, model.config, **options), model


def batch_of(seed: int = 0) -> dict[str, torch.Tensor]:
    return {"pixel_values": structured_images(B, seed)}


def mid_grey_images(b: int = 64, size: int = 32, seed: int = 0) -> torch.Tensor:
    """[0, 1] images with every value in [0.3, 0.7]: no pixel equals a fill, black or white by chance."""
    return 0.3 + 0.4 * torch.rand(b, 3, size, size, generator=gen(seed))


def total_loss(objective, model, batch) -> torch.Tensor:
    counts = objective.target_counts(batch)
    out = objective(model, batch)
    return sum(out.loss_sums[t] / counts[t] for t in counts)


# -- corruptions -------------------------------------------------------------------------------------------
def test_random_pixel_mask_is_exact_per_image_and_uniform_over_pixels():
    mask = random_pixel_mask(4000, 4, 4, 5, gen(0))
    assert mask.shape == (4000, 1, 4, 4) and mask.dtype == torch.bool
    assert torch.equal(mask.sum((1, 2, 3)), torch.full((4000,), 5))
    # Each of the 16 pixels is chosen with probability 5/16; 4000 draws: std of the frequency ~0.007.
    frequency = mask.float().mean(0).flatten()
    assert (frequency - 5 / 16).abs().max() < 0.04, frequency
    with pytest.raises(ValueError, match="cannot choose"):
        random_pixel_mask(1, 2, 2, 5)


def test_pixel_masking_blanks_the_exact_share_with_the_fill_colour():
    images = mid_grey_images()
    fill = torch.tensor([0.1, 0.2, 0.9]).view(3, 1, 1)
    noisy = pixel_masking(images, 0.3, gen(1), fill=fill)
    changed = (noisy != images).any(1)                           # (B, H, W)
    assert torch.equal(changed.sum((1, 2)), torch.full((64,), round(0.3 * 32 * 32)))
    assert torch.equal(noisy.permute(0, 2, 3, 1)[changed], fill.view(1, 3).expand(int(changed.sum()), 3))
    assert torch.equal(noisy.permute(0, 2, 3, 1)[~changed], images.permute(0, 2, 3, 1)[~changed])


def test_salt_and_pepper_sets_the_exact_share_to_black_or_white_half_each():
    images = mid_grey_images()
    noisy = salt_and_pepper(images, 0.2, gen(2))
    changed = (noisy != images).any(1)
    assert torch.equal(changed.sum((1, 2)), torch.full((64,), round(0.2 * 32 * 32)))
    values = noisy.permute(0, 2, 3, 1)[changed]                 # (n, 3): whole pixels, every channel alike
    assert ((values == 0) | (values == 1)).all() and torch.equal(values.min(1).values, values.max(1).values)
    white = (values[:, 0] == 1).float().mean()
    assert abs(white - 0.5) < 0.02                                # 13,120 draws: std 0.004
    assert torch.equal(noisy.permute(0, 2, 3, 1)[~changed], images.permute(0, 2, 3, 1)[~changed])


def test_gaussian_noise_has_the_requested_std_and_is_not_clipped():
    images = mid_grey_images()
    difference = gaussian_noise(images, 0.25, gen(3)) - images
    assert abs(difference.mean()) < 0.005 and abs(difference.std() - 0.25) < 0.005     # 196,608 draws
    assert difference.abs().max() > 0.7                           # beyond [0, 1] from mid-grey: not clipped
    assert torch.equal(gaussian_noise(images, 0.0, gen(3)), images)


@pytest.mark.parametrize("noise, level", [("masking", 0.5), ("salt_pepper", 0.25), ("gaussian", 0.3)])
def test_corruptions_come_from_the_generator_alone(noise, level):
    images = mid_grey_images(8)
    first, second = corrupt(images, noise, level, gen(4)), corrupt(images, noise, level, gen(4))
    assert torch.equal(first, second) and not torch.equal(first, corrupt(images, noise, level, gen(5)))
    assert torch.equal(images, mid_grey_images(8))               # pure: the input is untouched


def test_corruption_arguments_are_checked():
    images = mid_grey_images(2)
    with pytest.raises(ValueError, match="masking ratio"):
        pixel_masking(images, 1.5)
    with pytest.raises(ValueError, match="salt-and-pepper rate"):
        salt_and_pepper(images, -0.1)
    with pytest.raises(ValueError, match="std"):
        gaussian_noise(images, -1.0)
    with pytest.raises(ValueError, match="unknown noise"):
        corrupt(images, "speckle", 0.1)
    with pytest.raises(ValueError, match="B, C, H, W"):
        pixel_masking(images[0], 0.1)


# -- every autoencoder ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("task", TASKS)
def test_terms_counts_metrics_and_gradients(task):
    objective, model = build(task)
    assert objective.primary_term == task
    batch = objective.prepare_batch(batch_of(), gen(1))
    counts = objective.target_counts(batch)
    assert {k: v.item() for k, v in counts.items()} == COUNTS[task]
    assert all(v.dtype == torch.long for v in counts.values())
    out = objective(model, batch)
    assert set(out.loss_sums) == set(COUNTS[task]) and set(out.metric_sums) == METRICS.get(task, set())
    loss = sum(out.loss_sums[t] / counts[t] for t in counts)
    assert torch.isfinite(loss) and loss.item() > 0
    loss.backward()
    assert model.embeddings.patch_embeddings.projection.weight.grad.abs().sum() > 0
    missing = [n for n, p in objective.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert missing == [] and len(list(objective.parameters())) > 0
    assert objective.input_tokens(batch) == B * (8 * 8 + 1)


@pytest.mark.parametrize("task", TASKS)
def test_deterministic_given_the_generator(task):
    objective, model = build(task)
    first, second = (objective.prepare_batch(batch_of(), gen(5)) for _ in range(2))
    other = objective.prepare_batch(batch_of(), gen(6))
    assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)
    random = task in ("denoising_autoencoder", "vae")            # noise / the reparameterisation's eps
    assert any(not torch.equal(first[k], other[k]) for k in first) == random
    with torch.no_grad():
        assert torch.equal(total_loss(objective, model, first), total_loss(objective, model, second))


# Loss after 40 Adam steps on one batch, as a fraction of the first. Measured (2-core CPU): autoencoder 0.27,
# denoising 0.26, sparse 0.69 (the L1 term first silences most ReLU units, which then recover), vae 0.24.
LEARN_FRACTION = {"autoencoder": 0.45, "denoising_autoencoder": 0.45, "sparse_autoencoder": 0.85, "vae": 0.45}


@pytest.mark.parametrize("task", TASKS)
def test_each_autoencoder_learns_to_reconstruct(task):
    objective, model = build(task)
    batch = objective.prepare_batch(batch_of(), gen(2))
    optimizer = torch.optim.Adam([*model.parameters(), *objective.parameters()], lr=1e-3)
    losses = []
    for _ in range(40):
        loss = total_loss(objective, model, batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < LEARN_FRACTION[task] * losses[0], (task, losses[0], losses[-1])


def _decoder_input(objective, model, batch) -> tuple[torch.Tensor, object]:
    seen = []
    handle = objective.decoder.register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    try:
        out = objective(model, batch)
    finally:
        handle.remove()
    return seen[0], out


def test_the_code_is_the_cls_vector_and_the_target_the_clean_image():
    objective, model = build("autoencoder")
    batch = objective.prepare_batch(batch_of(), gen(0))
    assert batch.keys() == {"pixel_values"}                      # the target is the input itself
    with torch.no_grad():
        code, out = _decoder_input(objective, model, batch)
        cls = model(pixel_values=batch["pixel_values"]).last_hidden_state[:, 0]
        torch.testing.assert_close(code, cls)
        direct = (objective.decoder(cls) - batch["pixel_values"]).square().sum()
    torch.testing.assert_close(out.loss_sums["autoencoder"], direct, rtol=1e-5, atol=1e-3)
    projected = build_objective("autoencoder", tiny_config(), code_dim=16)
    assert projected.projection.out_features == 16 and projected.decoder.expand.in_features == 16
    # The decoder is the objective's: none of its weights live in (or would be exported with) the backbone.
    assert not set(map(id, objective.parameters())) & set(map(id, model.parameters()))


def test_denoising_input_is_the_corrupted_image_and_the_target_the_clean_one():
    mean, std = (0.2, 0.4, 0.6), (0.3, 0.3, 0.3)
    objective = build_objective("denoising_autoencoder", tiny_config(), mean, std, noise="masking", noise_level=0.25)
    images = structured_images(B)
    batch = objective.prepare_batch({"pixel_values": images}, gen(7))
    images01 = images.float() / 255
    fill = torch.tensor(mean).view(3, 1, 1)
    expected = pixel_masking(images01, 0.25, gen(7), fill=fill)
    torch.testing.assert_close(batch["pixel_values"], (expected - fill) / torch.tensor(std).view(3, 1, 1))
    torch.testing.assert_close(batch["reconstruction_target"], objective.normalize(images01))
    blanked = (batch["pixel_values"] == 0).all(1)                 # the mean colour is 0 once normalised
    assert torch.equal(blanked.sum((1, 2)), torch.full((B,), 256))
    for noise, level in (("gaussian", 0.3), ("salt_pepper", 0.25)):
        noisy = build_objective("denoising_autoencoder", tiny_config(), noise=noise)
        assert noisy.noise_level == level
        out = noisy.prepare_batch({"pixel_values": images}, gen(7))["pixel_values"]
        torch.testing.assert_close(out, noisy.normalize(corrupt(images01, noise, level, gen(7))))


def test_sparse_l1_gradient_and_measured_sparsity():
    objective, model = build("sparse_autoencoder", sparsity_weight=0.5, code_dim=32)
    batch = objective.prepare_batch(batch_of(), gen(0))
    pre = []

    def keep(module, args, output) -> None:
        output.retain_grad()
        pre.append(output)

    handle = objective.projection.register_forward_hook(keep)
    try:
        out = objective(model, batch)
    finally:
        handle.remove()
    counts = objective.target_counts(batch)
    activation = pre[0]
    (out.loss_sums["sparsity"] / counts["sparsity"]).backward()
    # d/da [w * sum relu(a) / n] = w / n where a > 0, else 0.
    expected = (activation > 0).float() * 0.5 / (B * 32)
    torch.testing.assert_close(activation.grad, expected)
    torch.testing.assert_close(out.loss_sums["sparsity"], 0.5 * activation.clamp(min=0).sum())
    assert out.metric_sums["sparsity/zero_fraction"].item() == (activation <= 0).sum().item()
    assert 0 < (activation <= 0).float().mean() < 1


def test_sparsity_weight_drives_the_code_to_zero():
    """Same data and steps: a strong L1 weight leaves far more code units at exactly 0 than none."""
    zero_share = {}
    for weight in (0.0, 2.0):
        objective, model = build("sparse_autoencoder", sparsity_weight=weight)
        batch = objective.prepare_batch(batch_of(), gen(0))
        optimizer = torch.optim.Adam([*model.parameters(), *objective.parameters()], lr=1e-3)
        for _ in range(15):
            loss = total_loss(objective, model, batch)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        with torch.no_grad():
            out = objective(model, batch)
        zero_share[weight] = out.metric_sums["sparsity/zero_fraction"].item() / (B * 64)
    assert zero_share[2.0] > zero_share[0.0] + 0.2, zero_share


def test_vae_kl_against_torch_distributions_and_the_elbo():
    mean, log_variance = torch.randn(5, 7, generator=gen(0)), torch.randn(5, 7, generator=gen(1))
    direct = kl_divergence(Normal(mean, (0.5 * log_variance).exp()), Normal(0.0, 1.0))
    torch.testing.assert_close(gaussian_kl(mean, log_variance), direct)

    objective, model = build("vae", beta=3.0, code_dim=16)
    batch = objective.prepare_batch(batch_of(), gen(2))
    assert batch["vae_eps"].shape == (B, 16)
    with torch.no_grad():
        z, out = _decoder_input(objective, model, batch)
        cls = model(pixel_values=batch["pixel_values"]).last_hidden_state[:, 0]
        mu, log_var = objective.projection(cls).chunk(2, dim=-1)
        # The reparameterised sample of the batch's eps.
        torch.testing.assert_close(z, mu + (0.5 * log_var).exp() * batch["vae_eps"])
        kl = kl_divergence(Normal(mu, (0.5 * log_var).exp()), Normal(0.0, 1.0)).sum()
        squared_error = (objective.decoder(z) - batch["pixel_values"]).square().sum()
    counts = objective.target_counts(batch)
    torch.testing.assert_close(out.loss_sums["kl"], 3.0 * kl)
    torch.testing.assert_close(out.loss_sums["vae"], squared_error, rtol=1e-5, atol=1e-3)
    # Logged per image (metric sums are divided by the pixel count): KL, and the ELBO of N(x_hat, I/2), beta = 1.
    pixels_per_image = 3 * S * S
    torch.testing.assert_close(out.metric_sums["vae/kl"] / counts["vae"], kl / B)
    log_likelihood = Normal(objective.decoder(z), math.sqrt(0.5)).log_prob(batch["pixel_values"]).sum() / B
    torch.testing.assert_close(out.metric_sums["vae/elbo"] / counts["vae"], log_likelihood - kl / B,
                               rtol=1e-5, atol=0.05)
    # beta = 1: reconstruction + kl terms = the negative ELBO per pixel value, minus the Gaussian's constant.
    elbo_objective = build_objective("vae", tiny_config(), code_dim=16)
    elbo_objective.load_state_dict(objective.state_dict())
    with torch.no_grad():
        loss = total_loss(elbo_objective, model, batch)
        elbo = elbo_objective(model, batch).metric_sums["vae/elbo"] / counts["vae"]
    torch.testing.assert_close(loss, -elbo / pixels_per_image - 0.5 * math.log(math.pi), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("task, options, message", [
    ("denoising_autoencoder", {"noise": "speckle"}, "--noise must be one of"),
    ("denoising_autoencoder", {"noise": "masking", "noise_level": 1.5}, "in (0, 1]"),
    ("denoising_autoencoder", {"noise": "gaussian", "noise_level": 0.0}, "> 0"),
    ("sparse_autoencoder", {"sparsity_weight": -1.0}, "--sparsity_weight"),
    ("vae", {"beta": -0.5}, "--beta"),
    ("autoencoder", {"code_dim": 0}, "--code_dim"),
    ("autoencoder", {"noise": "masking"}, "does not take noise"),
])
def test_bad_options_are_config_errors(task, options, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        build_objective(task, tiny_config(), **options)


@pytest.mark.gpu
@pytest.mark.parametrize("task", TASKS)
def test_step_never_waits_for_the_device(task):
    """Corruption, reparameterisation, loss and backward on CUDA with sync debugging set to error."""
    device = torch.device("cuda")
    objective, model = build(task)
    objective, model = objective.to(device), model.to(device)
    images = {"pixel_values": structured_images(B).to(device)}
    generator = torch.Generator(device=device).manual_seed(0)
    total_loss(objective, model, objective.prepare_batch(images, generator)).backward()   # warm-up
    model.zero_grad(set_to_none=True)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        loss = total_loss(objective, model, objective.prepare_batch(images, generator))
        loss.backward()
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert torch.isfinite(loss).item()
