"""The pure image corruptions: each proven against the ground truth it claims to encode."""

from __future__ import annotations

import math

import pytest
import torch

from hfssl.objectives.vision.corruptions import (
    NEIGHBOUR_OFFSETS,
    block_mask,
    colour_jitter,
    dequantize_ab,
    horizontal_flip,
    lab_to_rgb,
    min_hamming_distance,
    neighbour_pairs,
    permutation_set,
    permute_tiles,
    quantize_ab,
    random_grayscale,
    random_resized_crop,
    rectangle_mask,
    rgb_to_lab,
    rotate_batch,
    two_views,
)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def random_images(b: int = 16, size: int = 12, seed: int = 0) -> torch.Tensor:
    return torch.rand(b, 3, size, size, generator=gen(seed))


def test_rotate_batch_labels_undo_the_rotation():
    images = random_images(32)
    rotated, labels = rotate_batch(images, gen(1))
    assert labels.dtype == torch.long and set(labels.tolist()) == {0, 1, 2, 3}
    for img, rot, k in zip(images, rotated, labels.tolist()):
        assert torch.equal(torch.rot90(rot, -k, dims=(1, 2)), img)
        if k:   # a rotated random image is never equal to its original
            assert not torch.equal(rot, img)
    again, labels_again = rotate_batch(images, gen(1))
    assert torch.equal(again, rotated) and torch.equal(labels_again, labels)


def untile_with(shuffled: torch.Tensor, grid: int, order: torch.Tensor) -> torch.Tensor:
    """Test-side inverse: put shuffled tile i back at position order[i]."""
    c, h, w = shuffled.shape
    th, tw = h // grid, w // grid
    out = torch.empty_like(shuffled)
    for i, src in enumerate(order.tolist()):
        r, q = divmod(i, grid)
        sr, sq = divmod(src, grid)
        out[:, sr * th:(sr + 1) * th, sq * tw:(sq + 1) * tw] = shuffled[:, r * th:(r + 1) * th, q * tw:(q + 1) * tw]
    return out


@pytest.mark.parametrize("grid", [2, 3])
def test_permute_tiles_is_inverted_by_its_labels_permutation(grid):
    perms = permutation_set(grid * grid, 24, seed=3)
    images = random_images(16, size=12)
    shuffled, labels = permute_tiles(images, grid, perms, gen(2))
    assert shuffled.shape == images.shape and labels.max() < len(perms)
    assert len(set(labels.tolist())) > 4
    for img, shuf, label in zip(images, shuffled, labels):
        assert torch.equal(untile_with(shuf, grid, perms[label]), img)
    # Tile position i holds original tile perms[label, i]: check on an image whose tile t is filled with t.
    tile_ids = torch.arange(grid * grid, dtype=torch.float).view(1, 1, grid, grid)
    marked = tile_ids.repeat_interleave(4, 2).repeat_interleave(4, 3).expand(8, 3, -1, -1)
    shuffled, labels = permute_tiles(marked.contiguous(), grid, perms, gen(5))
    seen = shuffled[:, 0, ::4, ::4].reshape(8, -1)
    assert torch.equal(seen.long(), perms[labels])


def test_permute_tiles_rejects_a_grid_that_does_not_divide():
    with pytest.raises(ValueError, match="does not divide"):
        permute_tiles(random_images(2, size=10), 3, permutation_set(9, 5), gen())


def test_permutation_set_all_when_size_reaches_factorial():
    perms = permutation_set(4, 100)
    assert perms.shape == (24, 4)
    assert len({tuple(p) for p in perms.tolist()}) == 24
    assert min_hamming_distance(perms) == 2


def test_permutation_set_greedy_is_spread_out_and_seeded():
    perms = permutation_set(9, 50, seed=0)
    assert perms.shape == (50, 9) and perms.dtype == torch.long
    assert all(sorted(p) == list(range(9)) for p in perms.tolist())
    assert len({tuple(p) for p in perms.tolist()}) == 50
    # Random permutation pairs of 9 are often 2-4 apart; the greedy max-min set keeps every pair >= 6.
    assert min_hamming_distance(perms) >= 6
    assert torch.equal(permutation_set(9, 50, seed=0), perms)
    assert not torch.equal(permutation_set(9, 50, seed=1), perms)


def coordinate_image(b: int, size: int) -> torch.Tensor:
    """Channel 0 = row index, channel 1 = column index, channel 2 = image index."""
    rows = torch.arange(size, dtype=torch.float).view(1, size, 1).expand(b, size, size)
    cols = torch.arange(size, dtype=torch.float).view(1, 1, size).expand(b, size, size)
    index = torch.arange(b, dtype=torch.float).view(b, 1, 1).expand(b, size, size)
    return torch.stack([rows, cols, index], dim=1)


def test_neighbour_pairs_labels_match_where_the_tile_came_from():
    b, size, grid, gap = 64, 33, 3, 4            # cells of 11 px, tiles of 7 px, jitter 0..2
    anchors, neighbours, labels = neighbour_pairs(coordinate_image(b, size), grid, gap, gen(3))
    assert anchors.shape == neighbours.shape == (b, 3, 7, 7)
    assert set(labels.tolist()) == set(range(8))
    cell = size // grid
    steps = torch.arange(7, dtype=torch.float)
    shifts = set()
    for a, n, label in zip(anchors, neighbours, labels.tolist()):
        for tile in (a, n):      # each tile is a contiguous crop of its own image
            assert torch.equal(tile[0], (tile[0, 0, 0] + steps).view(7, 1).expand(7, 7))
            assert torch.equal(tile[1], (tile[1, 0, 0] + steps).view(1, 7).expand(7, 7))
        assert torch.equal(a[2], n[2])
        a_cell = (int(a[0, 0, 0]) // cell, int(a[1, 0, 0]) // cell)
        n_cell = (int(n[0, 0, 0]) // cell, int(n[1, 0, 0]) // cell)
        assert a_cell == (1, 1)
        assert (n_cell[0] - a_cell[0], n_cell[1] - a_cell[1]) == NEIGHBOUR_OFFSETS[label]
        # Never touching: at least gap - jitter = 2 px between tiles along each separated axis.
        dy, dx = NEIGHBOUR_OFFSETS[label]
        if dy:
            top, bottom = sorted([a[0, 0, 0], n[0, 0, 0]])
            assert bottom - (top + 7) >= 2
        if dx:
            left, right = sorted([a[1, 0, 0], n[1, 0, 0]])
            assert right - (left + 7) >= 2
        shifts.add(int(a[0, 0, 0]) % cell)
    assert len(shifts) == 3          # jitter 0..2 is used, so the spacing varies


def test_neighbour_pairs_validates_geometry():
    with pytest.raises(ValueError, match="grid >= 3"):
        neighbour_pairs(random_images(2), grid=2)
    with pytest.raises(ValueError, match="gap"):
        neighbour_pairs(random_images(2, size=12), grid=3, gap=4)


def test_lab_round_trip_and_known_values():
    images = torch.rand(4, 3, 16, 16, generator=gen(4))
    assert (lab_to_rgb(rgb_to_lab(images)) - images).abs().max() < 1e-4
    white = rgb_to_lab(torch.ones(1, 3, 1, 1)).flatten()
    assert torch.allclose(white, torch.tensor([100.0, 0.0, 0.0]), atol=1e-2)
    gray = rgb_to_lab(torch.full((1, 3, 1, 1), 0.5)).flatten()
    assert abs(gray[0] - 53.389) < 0.01 and gray[1:].abs().max() < 1e-2
    assert lab_to_rgb(torch.tensor([50.0, 100.0, -100.0]).view(1, 3, 1, 1), clip=True).max() <= 1.0


def test_lab_agrees_with_kornia():
    kornia = pytest.importorskip("kornia")
    images = torch.rand(4, 3, 16, 16, generator=gen(5))
    images[0, :, :2] = 0.0          # exercise the linear toes of both curves
    ours, theirs = rgb_to_lab(images), kornia.color.rgb_to_lab(images)
    assert (ours - theirs).abs().max() < 1e-3
    assert (lab_to_rgb(ours) - kornia.color.lab_to_rgb(theirs, clip=False)).abs().max() < 1e-3


def test_quantize_ab_bins_and_centres():
    ab = torch.tensor([-110.0, -89.0, 0.0, 21.9, 109.9, 500.0])
    grid_ab = torch.stack(torch.meshgrid(ab, ab, indexing="ij")).unsqueeze(0)       # (1, 2, 6, 6)
    classes = quantize_ab(grid_ab, bins=10)
    per_axis = torch.tensor([0, 0, 5, 5, 9, 9])
    assert torch.equal(classes[0], per_axis[:, None] * 10 + per_axis[None, :])
    inside = torch.rand(1, 2, 8, 8, generator=gen(6)) * 219.0 - 109.5
    centres = dequantize_ab(quantize_ab(inside, 10), 10)
    assert (centres - inside).abs().max() <= 11.0 + 1e-4


@pytest.mark.parametrize("ratio", [0.25, 0.6, 0.75])
def test_block_mask_exact_count_and_seeded(ratio):
    mask = block_mask(32, 6, 8, ratio, gen(7))
    assert mask.shape == (32, 48) and mask.dtype == torch.bool
    assert torch.equal(mask.sum(1), torch.full((32,), round(ratio * 48)))
    assert torch.equal(block_mask(32, 6, 8, ratio, gen(7)), mask)
    assert len({tuple(row) for row in mask.tolist()}) > 16


def test_block_mask_in_squares():
    mask = block_mask(16, 8, 8, 0.6, gen(8), block=2).view(16, 8, 8)
    coarse = mask[:, ::2, ::2]
    assert torch.equal(mask, coarse.repeat_interleave(2, 1).repeat_interleave(2, 2))
    assert torch.equal(coarse.sum((1, 2)), torch.full((16,), round(0.6 * 16)))
    with pytest.raises(ValueError, match="does not divide"):
        block_mask(2, 6, 6, 0.5, gen(), block=4)


def test_rectangle_mask_is_one_block_per_image():
    mask = rectangle_mask(64, 8, 8, 4, 3, gen(9))
    assert torch.equal(mask.sum((1, 2)), torch.full((64,), 12))
    for m in mask:
        rows, cols = m.nonzero().unbind(1)
        assert rows.max() - rows.min() == 3 and cols.max() - cols.min() == 2
    tops = {int(m.nonzero()[0, 0]) for m in mask}
    assert tops == set(range(5))


def test_crop_identity_and_flip():
    images = random_images(4, size=10)
    whole = random_resized_crop(images, 10, gen(), scale=(1.0, 1.0), ratio=(1.0, 1.0))
    assert torch.allclose(whole, images, atol=1e-5)
    flipped = random_resized_crop(images, 10, gen(), scale=(1.0, 1.0), ratio=(1.0, 1.0),
                                  flip=torch.tensor([True, False, True, False]))
    assert torch.allclose(flipped[0], images[0].flip(-1), atol=1e-5)
    assert torch.allclose(flipped[1], images[1], atol=1e-5)
    small = random_resized_crop(images, 6, gen(1), scale=(0.1, 0.2))
    assert small.shape == (4, 3, 6, 6)
    always = horizontal_flip(images, gen(), p=1.0)
    assert torch.equal(always, images.flip(-1))


def test_colour_jitter_and_grayscale():
    images = random_images(8)
    assert torch.equal(colour_jitter(images, gen(), p=0.0), images)
    jittered = colour_jitter(images, gen(), p=1.0)
    assert jittered.min() >= 0 and jittered.max() <= 1 and not torch.allclose(jittered, images)
    gray = random_grayscale(images, gen(), p=1.0)
    assert torch.equal(gray[:, 0], gray[:, 1]) and torch.equal(gray[:, 1], gray[:, 2])
    assert torch.equal(random_grayscale(images, gen(), p=0.0), images)


def test_two_views_differ_and_are_seeded():
    images = random_images(8, size=16)
    views = two_views(images, gen(11), out_size=16)
    assert views.shape == (16, 3, 16, 16)
    assert views.min() >= 0.0 and views.max() <= 1.0
    first, second = views.chunk(2)
    assert all(not torch.allclose(a, b, atol=1e-3) for a, b in zip(first, second))
    assert torch.equal(two_views(images, gen(11), out_size=16), views)
    assert two_views(images, gen(11), out_size=8).shape == (16, 3, 8, 8)


def test_functions_are_device_agnostic_about_the_generator():
    # Draws happen on the generator's device and land on the images' device; with no generator,
    # on the images' device (here both CPU: the same code path the GPU takes).
    images = random_images(4)
    rotated, labels = rotate_batch(images, None)
    assert rotated.device == labels.device == images.device
    assert math.isclose(block_mask(4, 4, 4, 0.5).float().mean().item(), 0.5)


def test_multi_crop_views_are_batched_seeded_and_solarised_as_asked():
    from hfssl.objectives.vision.corruptions import masking_noise, multi_crop, solarize, views

    images = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    globals_, locals_ = multi_crop(images, torch.Generator().manual_seed(1), 32, 12, 3)
    assert globals_.shape == (8, 3, 32, 32) and locals_.shape == (12, 3, 12, 12)
    again, _ = multi_crop(images, torch.Generator().manual_seed(1), 32, 12, 3)
    assert torch.equal(globals_, again)
    assert 0.0 <= float(locals_.min()) and float(locals_.max()) <= 1.0
    assert multi_crop(images, torch.Generator().manual_seed(1), 32, 12, 0)[1] is None
    ramp = torch.linspace(0, 1, 16).view(1, 1, 4, 4).expand(2, 3, 4, 4)
    flipped = solarize(ramp, torch.Generator().manual_seed(0), p=1.0)
    assert torch.equal(flipped, torch.where(ramp >= 0.5, 1 - ramp, ramp))
    assert torch.equal(solarize(ramp, torch.Generator().manual_seed(0), p=0.0), ramp)
    with pytest.raises(ValueError, match="one probability per view"):
        views(images, None, 2, 32, (0.5, 1.0), solarize_p=(0.1,))
    noise = masking_noise(3, 16, torch.Generator().manual_seed(0))
    assert noise.shape == (3, 16) and torch.equal(noise, masking_noise(3, 16, torch.Generator().manual_seed(0)))
