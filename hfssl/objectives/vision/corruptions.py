"""Image corruptions for the vision pretext tasks: pure, batched, generator-driven functions.

Every function takes a batch ``(B, C, H, W)`` already on the device and draws its randomness only
from the passed ``torch.Generator`` (drawn on the generator's device, then moved next to the
images), so a checkpointed generator replays the exact same corruption. Shapes depend only on the
input shapes and the arguments, never on random values, and nothing reads a value back to the
host: the functions are safe inside CUDA graphs and ``torch.compile``.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

__all__ = [
    "NEIGHBOUR_OFFSETS",
    "block_mask",
    "colour_jitter",
    "dequantize_ab",
    "horizontal_flip",
    "lab_to_rgb",
    "masking_noise",
    "multi_crop",
    "min_hamming_distance",
    "neighbour_pairs",
    "permutation_set",
    "permute_tiles",
    "quantize_ab",
    "random_grayscale",
    "random_resized_crop",
    "rectangle_mask",
    "rgb_to_grayscale",
    "rgb_to_lab",
    "rotate_batch",
    "solarize",
    "two_views",
    "views",
]

#: (row, column) offsets of the 8 neighbours of a tile, in reading order: label ``i`` of
#: :func:`neighbour_pairs` means the neighbour sits at ``NEIGHBOUR_OFFSETS[i]`` from the anchor.
NEIGHBOUR_OFFSETS: tuple[tuple[int, int], ...] = (
    (-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1),
)


# -- random draws ------------------------------------------------------------------------------
def _device_of(generator: torch.Generator | None, fallback: torch.device) -> torch.device:
    return generator.device if generator is not None else fallback


def _rand(shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    """Uniform [0, 1) floats drawn on the generator's device, returned on ``device``."""
    return torch.rand(shape, generator=generator, device=_device_of(generator, device)).to(device)


def _randint(high: int, shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device
             ) -> torch.Tensor:
    return torch.randint(0, high, shape, generator=generator, device=_device_of(generator, device)).to(device)


def _uniform(low: float, high: float, shape: tuple[int, ...], generator: torch.Generator | None,
             device: torch.device) -> torch.Tensor:
    return low + (high - low) * _rand(shape, generator, device)


def _check_images(images: torch.Tensor) -> None:
    if images.dim() != 4:
        raise ValueError(f"expected images of shape (B, C, H, W), got {tuple(images.shape)}")


# -- rotation ----------------------------------------------------------------------------------
def rotate_batch(images: torch.Tensor, generator: torch.Generator | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotate each (square) image by ``k * 90`` degrees counter-clockwise, ``k`` uniform in 0..3.

    Returns ``(rotated, k)``; ``torch.rot90(rotated[i], -k[i], (1, 2))`` gives back ``images[i]``.
    One gather with a per-image pixel map (the four maps are ``rot90`` of an index grid): static
    shapes, no per-image Python loop on ``k`` (which would read ``k`` back to the host), and no
    copy of all four rotations.
    """
    _check_images(images)
    if images.shape[-1] != images.shape[-2]:
        raise ValueError(f"rotate_batch needs square images, got {tuple(images.shape[-2:])}")
    b, c, size = images.shape[0], images.shape[1], images.shape[-1]
    labels = _randint(4, (b,), generator, images.device)
    grid = torch.arange(size * size, device=images.device).view(size, size)
    maps = torch.stack([torch.rot90(grid, k).reshape(-1) for k in range(4)])       # (4, S*S) source pixels
    index = maps[labels].unsqueeze(1).expand(b, c, size * size)
    return images.reshape(b, c, size * size).gather(2, index).view_as(images), labels


# -- jigsaw ------------------------------------------------------------------------------------
def min_hamming_distance(permutations: torch.Tensor) -> int:
    """Smallest Hamming distance between two distinct rows (a set-up-time statistic, not a hot path)."""
    if permutations.shape[0] < 2:
        return int(permutations.shape[1])
    distance = (permutations[:, None, :] != permutations[None, :, :]).sum(-1)
    distance.fill_diagonal_(permutations.shape[1] + 1)
    return int(distance.min())


@functools.lru_cache(maxsize=4)
def _all_permutations(num_tiles: int) -> torch.Tensor:
    """Every permutation in lexicographic order (cached: 9! rows take a second to build). Read-only."""
    return torch.tensor(list(itertools.permutations(range(num_tiles))), dtype=torch.long)


def permutation_set(num_tiles: int, size: int, seed: int = 0, max_candidates: int = 400_000) -> torch.Tensor:
    """A set of ``size`` tile permutations far apart in Hamming distance (Noroozi & Favaro, 2016).

    Greedy: start from a random permutation, then repeatedly add the candidate whose *minimum*
    distance to the chosen set is largest (ties broken at random), so no two classes are nearly the
    same puzzle. When ``size >= num_tiles!`` every permutation is returned, in lexicographic order.
    Beyond ``max_candidates`` permutations (more than 9 tiles) the candidates are a random sample.
    Deterministic in ``seed``. Returns a LongTensor ``(size, num_tiles)``.
    """
    if num_tiles < 2 or size < 1:
        raise ValueError(f"need num_tiles >= 2 and size >= 1, got {num_tiles} and {size}")
    rng = torch.Generator().manual_seed(seed)
    total = math.factorial(num_tiles)
    if size >= total:
        return _all_permutations(num_tiles).clone()
    if total <= max_candidates:
        candidates = _all_permutations(num_tiles)
    else:
        candidates = torch.stack([torch.randperm(num_tiles, generator=rng) for _ in range(max_candidates)])
        candidates = torch.unique(candidates, dim=0)
    chosen = [int(torch.randint(len(candidates), (1,), generator=rng))]
    nearest = (candidates != candidates[chosen[0]]).sum(1)
    for _ in range(size - 1):
        # Random tie-breaking: a tiny random fraction never outweighs a whole unit of distance.
        score = nearest.float() + 0.5 * torch.rand(len(candidates), generator=rng)
        pick = int(score.argmax())
        chosen.append(pick)
        nearest = torch.minimum(nearest, (candidates != candidates[pick]).sum(1))
    return candidates[chosen].clone()


def _tiles(images: torch.Tensor, grid: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, grid*grid, C, H/grid, W/grid), tiles in reading order."""
    b, c, h, w = images.shape
    if h % grid or w % grid:
        raise ValueError(f"a {grid}x{grid} grid does not divide images of size {h}x{w}")
    th, tw = h // grid, w // grid
    return images.reshape(b, c, grid, th, grid, tw).permute(0, 2, 4, 1, 3, 5).reshape(b, grid * grid, c, th, tw)


def _untile(tiles: torch.Tensor, grid: int) -> torch.Tensor:
    b, _, c, th, tw = tiles.shape
    return tiles.reshape(b, grid, grid, c, th, tw).permute(0, 3, 1, 4, 2, 5).reshape(b, c, grid * th, grid * tw)


def permute_tiles(images: torch.Tensor, grid: int, permutations: torch.Tensor,
                  generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Cut each image into ``grid x grid`` tiles and shuffle them with a permutation from the set.

    Returns ``(shuffled, labels)``: tile position ``i`` (reading order) of ``shuffled[b]`` holds the
    original tile ``permutations[labels[b], i]``, so scattering the tiles back with that row
    restores the image.
    """
    _check_images(images)
    if permutations.dim() != 2 or permutations.shape[1] != grid * grid:
        raise ValueError(f"permutations must be (n, {grid * grid}) for a {grid}x{grid} grid, "
                         f"got {tuple(permutations.shape)}")
    labels = _randint(permutations.shape[0], (images.shape[0],), generator, images.device)
    order = permutations.to(images.device)[labels]                      # (B, T)
    tiles = _tiles(images, grid)
    index = order[:, :, None, None, None].expand_as(tiles)
    return _untile(tiles.gather(1, index), grid), labels


# -- relative patch position -------------------------------------------------------------------
def _crop(images: torch.Tensor, top: torch.Tensor, left: torch.Tensor, size: int) -> torch.Tensor:
    """Per-image ``size x size`` crops at tensor offsets, as one gather (no per-image loop)."""
    steps = torch.arange(size, device=images.device)
    rows = (top[:, None] + steps)[:, :, None]                            # (B, size, 1)
    cols = (left[:, None] + steps)[:, None, :]                           # (B, 1, size)
    batch = torch.arange(images.shape[0], device=images.device)[:, None, None]
    # Advanced indices split by a slice move to the front: (B, size, size, C).
    return images[batch, :, rows, cols].permute(0, 3, 1, 2)


def neighbour_pairs(images: torch.Tensor, grid: int = 3, gap: int = 2, generator: torch.Generator | None = None,
                    jitter: int | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Anchor tile and one of its 8 neighbours per image (Doersch, Gupta & Efros, 2015).

    The centred square of side ``grid * cell`` (``cell = min(H, W) // grid``) is cut into cells; the
    anchor is an interior cell (uniform; the centre for ``grid = 3``), the neighbour one of its 8
    neighbours (label = index into :data:`NEIGHBOUR_OFFSETS`). Each tile has side ``cell - gap`` and
    is shifted inside its cell by an independent random ``0..jitter`` pixels per axis (default
    ``gap // 2``), so two adjacent tiles are always at least ``gap - jitter`` pixels apart and their
    spacing varies: neither continuing edges nor exact spacing give the answer away.
    Returns ``(anchors, neighbours, labels)`` with tiles of shape ``(B, C, cell - gap, cell - gap)``.
    """
    _check_images(images)
    if grid < 3:
        raise ValueError(f"neighbour_pairs needs grid >= 3 (a cell with 8 neighbours), got {grid}")
    b, _, h, w = images.shape
    cell = min(h, w) // grid
    if not 0 <= gap < cell:
        raise ValueError(f"gap must be in [0, {cell}) for {grid}x{grid} cells of {cell} px, got {gap}")
    jitter = gap // 2 if jitter is None else jitter
    if not 0 <= jitter <= gap:
        raise ValueError(f"jitter must be in [0, gap={gap}], got {jitter}")
    size = cell - gap
    device = images.device
    labels = _randint(8, (b,), generator, device)
    anchor_cell = 1 + _randint(grid - 2, (b, 2), generator, device)     # interior (row, col)
    # Label -> (row, col) offset by arithmetic (no host table copied to the device): skip the centre.
    ring = labels + (labels >= 4).long()                               # 0..8 without 4
    offsets = torch.stack([ring // 3 - 1, ring % 3 - 1], dim=1)        # == NEIGHBOUR_OFFSETS[labels]
    shift = _randint(jitter + 1, (2, b, 2), generator, device)         # per tile, per axis
    # Origin of the cell grid, plus centring of the tile's jitter range inside its cell.
    origin_y, origin_x = (h - grid * cell) // 2 + (gap - jitter) // 2, (w - grid * cell) // 2 + (gap - jitter) // 2
    anchor_yx = anchor_cell * cell + shift[0]
    neighbour_yx = (anchor_cell + offsets) * cell + shift[1]
    anchors = _crop(images, origin_y + anchor_yx[:, 0], origin_x + anchor_yx[:, 1], size)
    neighbours = _crop(images, origin_y + neighbour_yx[:, 0], origin_x + neighbour_yx[:, 1], size)
    return anchors, neighbours, labels


# -- colour: CIE Lab -----------------------------------------------------------------------------
# sRGB (linear) -> XYZ, D65 white, and the white point itself (the usual 4-decimal values).
# Kept as Python floats: the colour maths is per-channel arithmetic, so no constant tensor is copied
# from the host to the device on each call (a pageable copy that would stall the host).
_RGB_TO_XYZ = (
    (0.412453, 0.357580, 0.180423),
    (0.212671, 0.715160, 0.072169),
    (0.019334, 0.119193, 0.950227),
)
_D65_WHITE = (0.95047, 1.0, 1.08883)
# White-relative XYZ -> linear sRGB: the inverse matrix with the white point folded into its columns.
_WHITE_XYZ_TO_RGB = tuple(
    tuple(m * w for m, w in zip(row, _D65_WHITE))
    for row in torch.linalg.inv(torch.tensor(_RGB_TO_XYZ, dtype=torch.float64)).tolist()
)
_LAB_EPSILON = (6.0 / 29.0) ** 3          # 0.008856: where the cube root meets the linear toe
_LAB_KAPPA = 1.0 / (3.0 * (6.0 / 29.0) ** 2)  # 7.787: slope of the linear toe


def _apply_matrix(rows: tuple[tuple[float, ...], ...], images: torch.Tensor,
                  scale: tuple[float, ...] = (1.0, 1.0, 1.0)) -> torch.Tensor:
    """``out[i] = scale[i] * sum_j rows[i][j] * images[j]`` over the channel axis -3."""
    channels = images.unbind(-3)
    return torch.stack([sum(w * c for w, c in zip(row, channels)) * k for row, k in zip(rows, scale)], dim=-3)


def rgb_to_lab(images01: torch.Tensor) -> torch.Tensor:
    """sRGB in [0, 1], shape (..., 3, H, W) -> CIE L*a*b* (D65): L in [0, 100], a/b about [-110, 110]."""
    images = images01.float()
    linear = torch.where(images > 0.04045, ((images.clamp(min=0.04045) + 0.055) / 1.055) ** 2.4, images / 12.92)
    xyz = _apply_matrix(_RGB_TO_XYZ, linear, scale=tuple(1.0 / w for w in _D65_WHITE))
    # clamp inside the cube root: its gradient at 0 is infinite even where torch.where discards it.
    f = torch.where(xyz > _LAB_EPSILON, xyz.clamp(min=_LAB_EPSILON) ** (1.0 / 3.0),
                    _LAB_KAPPA * xyz + 4.0 / 29.0)
    fx, fy, fz = f.unbind(-3)
    return torch.stack([116.0 * fy - 16.0, 500.0 * (fx - fy), 200.0 * (fy - fz)], dim=-3)


def lab_to_rgb(lab: torch.Tensor, clip: bool = False) -> torch.Tensor:
    """Inverse of :func:`rgb_to_lab`. Colours outside the sRGB gamut fall outside [0, 1] unless ``clip``."""
    lab = lab.float()
    lightness, a, b = lab.unbind(-3)
    fy = (lightness + 16.0) / 116.0
    f = torch.stack([fy + a / 500.0, fy, fy - b / 200.0], dim=-3)
    xyz = torch.where(f > 6.0 / 29.0, f ** 3, (f - 4.0 / 29.0) / _LAB_KAPPA)
    linear = _apply_matrix(_WHITE_XYZ_TO_RGB, xyz)
    rgb = torch.where(linear > 0.0031308, 1.055 * linear.clamp(min=0.0031308) ** (1.0 / 2.4) - 0.055,
                      12.92 * linear)
    return rgb.clamp(0.0, 1.0) if clip else rgb


def quantize_ab(ab: torch.Tensor, bins: int = 10, low: float = -110.0, high: float = 110.0) -> torch.Tensor:
    """Class index ``qa * bins + qb`` per pixel of an ``(..., 2, H, W)`` ab map (``bins`` per axis,
    uniform over ``[low, high]``, values outside clamped into the edge bins). Returns (..., H, W) int64."""
    scaled = ((ab - low) / (high - low) * bins).floor().long().clamp(0, bins - 1)
    return scaled[..., 0, :, :] * bins + scaled[..., 1, :, :]


def dequantize_ab(classes: torch.Tensor, bins: int = 10, low: float = -110.0, high: float = 110.0
                  ) -> torch.Tensor:
    """Bin centres of :func:`quantize_ab` classes: (..., H, W) -> (..., 2, H, W) float."""
    width = (high - low) / bins
    qa, qb = classes // bins, classes % bins
    return torch.stack([qa, qb], dim=-3).float() * width + low + width / 2


# -- masks -------------------------------------------------------------------------------------
def block_mask(batch: int, grid_h: int, grid_w: int, mask_ratio: float, generator: torch.Generator | None = None,
               block: int = 1, device: torch.device | str | None = None) -> torch.Tensor:
    """Random patch mask ``(batch, grid_h * grid_w)`` with a fixed number of masked patches per row.

    With ``block = 1`` exactly ``round(mask_ratio * grid_h * grid_w)`` patches are masked per row.
    With ``block > 1`` (SimMIM's ``mask_patch_size / patch_size``) the grid is masked in
    ``block x block`` squares: exactly ``round(mask_ratio * n_blocks)`` squares, i.e. that many times
    ``block**2`` patches. The count is static, so the mask needs no host sync and no boolean indexing.
    """
    if not 0.0 < mask_ratio < 1.0:
        raise ValueError(f"mask_ratio must be in (0, 1), got {mask_ratio}")
    if grid_h % block or grid_w % block:
        raise ValueError(f"block {block} does not divide the {grid_h}x{grid_w} patch grid")
    device = torch.device(device) if device is not None else _device_of(generator, torch.device("cpu"))
    coarse_h, coarse_w = grid_h // block, grid_w // block
    n = coarse_h * coarse_w
    k = round(mask_ratio * n)
    # The k smallest of n uniform draws are a uniformly random k-subset.
    chosen = _rand((batch, n), generator, device).argsort(dim=1)[:, :k]
    mask = torch.zeros(batch, n, dtype=torch.bool, device=device).scatter_(1, chosen, True)
    mask = mask.view(batch, coarse_h, 1, coarse_w, 1).expand(batch, coarse_h, block, coarse_w, block)
    return mask.reshape(batch, grid_h * grid_w)


def masking_noise(batch: int, num_patches: int, generator: torch.Generator | None = None,
                  device: torch.device | str | None = None) -> torch.Tensor:
    """Uniform [0, 1) noise per patch, ``(batch, num_patches)``: MAE's random masking keeps the patches with the
    lowest noise, so this fixes which patches a ``ViTMAEForPreTraining`` forward drops."""
    device = torch.device(device) if device is not None else _device_of(generator, torch.device("cpu"))
    return _rand((batch, num_patches), generator, device)


def rectangle_mask(batch: int, grid_h: int, grid_w: int, block_h: int, block_w: int,
                   generator: torch.Generator | None = None, device: torch.device | str | None = None
                   ) -> torch.Tensor:
    """One ``block_h x block_w`` rectangle of patches per image at a uniform random position.

    Returns a bool ``(batch, grid_h, grid_w)`` mask; every row has exactly ``block_h * block_w`` True.
    """
    if not (0 < block_h <= grid_h and 0 < block_w <= grid_w):
        raise ValueError(f"a {block_h}x{block_w} block does not fit a {grid_h}x{grid_w} grid")
    device = torch.device(device) if device is not None else _device_of(generator, torch.device("cpu"))
    top = _randint(grid_h - block_h + 1, (batch, 1, 1), generator, device)
    left = _randint(grid_w - block_w + 1, (batch, 1, 1), generator, device)
    rows = torch.arange(grid_h, device=device)[None, :, None]
    cols = torch.arange(grid_w, device=device)[None, None, :]
    return (rows >= top) & (rows < top + block_h) & (cols >= left) & (cols < left + block_w)


# -- augmentations for contrastive views -----------------------------------------------------------
def rgb_to_grayscale(images01: torch.Tensor) -> torch.Tensor:
    """ITU-R 601 luma, (B, 3, H, W) -> (B, 1, H, W)."""
    red, green, blue = images01.unbind(-3)
    return (0.299 * red + 0.587 * green + 0.114 * blue).unsqueeze(-3)


def random_resized_crop(images: torch.Tensor, out_size: int, generator: torch.Generator | None = None,
                        scale: tuple[float, float] = (0.2, 1.0), ratio: tuple[float, float] = (3 / 4, 4 / 3),
                        flip: torch.Tensor | None = None) -> torch.Tensor:
    """Crop a random area fraction in ``scale`` with aspect ratio in ``ratio`` (log-uniform) from each
    image and resize it to ``out_size`` (bilinear), as one ``affine_grid`` + ``grid_sample``.

    Unlike the rejection loop of torchvision's version, a crop side that would exceed the image is
    clamped to it (static shapes, no retries); for the default ranges that only trims the largest
    crops. ``flip`` (bool per image) mirrors the crop horizontally for free.
    """
    _check_images(images)
    b, device = images.shape[0], images.device
    area = _uniform(scale[0], scale[1], (b,), generator, device)
    log_ratio = _uniform(math.log(ratio[0]), math.log(ratio[1]), (b,), generator, device)
    width = torch.sqrt(area * log_ratio.exp()).clamp(max=1.0)          # fractions of the image side
    height = torch.sqrt(area / log_ratio.exp()).clamp(max=1.0)
    centre = _uniform(-1.0, 1.0, (b, 2), generator, device)
    theta = torch.zeros(b, 2, 3, dtype=images.dtype, device=device)
    sign_x = 1.0 - 2.0 * flip.to(images.dtype) if flip is not None else 1.0
    theta[:, 0, 0] = width * sign_x
    theta[:, 1, 1] = height
    theta[:, 0, 2] = centre[:, 0] * (1.0 - width)                      # keeps the crop inside
    theta[:, 1, 2] = centre[:, 1] * (1.0 - height)
    grid = F.affine_grid(theta, [b, images.shape[1], out_size, out_size], align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)


def horizontal_flip(images: torch.Tensor, generator: torch.Generator | None = None, p: float = 0.5
                    ) -> torch.Tensor:
    """Mirror each image left-right with probability ``p``."""
    flip = _rand((images.shape[0], 1, 1, 1), generator, images.device) < p
    return torch.where(flip, images.flip(-1), images)


def colour_jitter(images01: torch.Tensor, generator: torch.Generator | None = None, brightness: float = 0.4,
                  contrast: float = 0.4, saturation: float = 0.4, p: float = 0.8) -> torch.Tensor:
    """With probability ``p`` per image, scale brightness, contrast and saturation by factors uniform in
    ``[1 - s, 1 + s]`` (in that fixed order; torchvision shuffles it), clamping to [0, 1] after each."""
    b, device = images01.shape[0], images01.device
    apply = _rand((b, 1, 1, 1), generator, device) < p
    factors = [_uniform(1.0 - s, 1.0 + s, (b, 1, 1, 1), generator, device) for s in (brightness, contrast, saturation)]
    out = (images01 * factors[0]).clamp(0.0, 1.0)
    mean = rgb_to_grayscale(out).mean(dim=(-2, -1), keepdim=True)
    out = ((out - mean) * factors[1] + mean).clamp(0.0, 1.0)
    gray = rgb_to_grayscale(out)
    out = ((out - gray) * factors[2] + gray).clamp(0.0, 1.0)
    return torch.where(apply, out, images01)


def random_grayscale(images01: torch.Tensor, generator: torch.Generator | None = None, p: float = 0.2
                     ) -> torch.Tensor:
    """Replace each image by its luma (replicated to 3 channels) with probability ``p``."""
    gray = _rand((images01.shape[0], 1, 1, 1), generator, images01.device) < p
    return torch.where(gray, rgb_to_grayscale(images01).expand_as(images01), images01)


def solarize(images01: torch.Tensor, generator: torch.Generator | None = None, p: float = 0.2,
             threshold: float = 0.5) -> torch.Tensor:
    """With probability ``p`` per image, invert every value at or above ``threshold`` (BYOL/DINO's solarisation)."""
    apply = _rand((images01.shape[0], 1, 1, 1), generator, images01.device) < p
    return torch.where(apply & (images01 >= threshold), 1.0 - images01, images01)


def _one_view(images01: torch.Tensor, generator: torch.Generator | None, out_size: int,
              scale: tuple[float, float], solarize_p: float = 0.0) -> torch.Tensor:
    flip = _rand((images01.shape[0],), generator, images01.device) < 0.5
    view = random_resized_crop(images01, out_size, generator, scale=scale, flip=flip)
    view = colour_jitter(view, generator)
    view = random_grayscale(view, generator)
    return solarize(view, generator, p=solarize_p) if solarize_p > 0 else view


def views(images01: torch.Tensor, generator: torch.Generator | None, count: int, out_size: int,
          scale: tuple[float, float], solarize_p: Sequence[float] | None = None) -> torch.Tensor:
    """``count`` independent augmented views of every image, ``(count * B, 3, out_size, out_size)`` in [0, 1]:
    rows ``v * B + i`` are view ``v`` of image ``i``. Each view: random resized crop (area ``scale``) with a
    horizontal flip, colour jitter, random grayscale, then solarisation with probability ``solarize_p[v]``."""
    _check_images(images01)
    probabilities = list(solarize_p) if solarize_p is not None else [0.0] * count
    if len(probabilities) != count:
        raise ValueError(f"solarize_p needs one probability per view ({count}), got {len(probabilities)}")
    return torch.cat([_one_view(images01, generator, out_size, scale, p) for p in probabilities], dim=0)


def multi_crop(images01: torch.Tensor, generator: torch.Generator | None, global_size: int, local_size: int,
               num_local: int, global_scale: tuple[float, float] = (0.4, 1.0),
               local_scale: tuple[float, float] = (0.05, 0.4)) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Multi-crop (SwAV, DINO): two global views at ``global_size`` and ``num_local`` small local views at
    ``local_size``, all batched on the device. Returns ``(globals (2B, ...), locals (num_local * B, ...) or
    None)``; row ``v * B + i`` is view ``v`` of image ``i``. The second global view is solarised with
    probability 0.2, as in BYOL and DINO."""
    globals_ = views(images01, generator, 2, global_size, global_scale, solarize_p=(0.0, 0.2))
    if num_local == 0:
        return globals_, None
    return globals_, views(images01, generator, num_local, local_size, local_scale)


def two_views(images01: torch.Tensor, generator: torch.Generator | None = None, out_size: int | None = None,
              scale: tuple[float, float] = (0.2, 1.0)) -> torch.Tensor:
    """SimCLR's augmentation twice: crop + resize, horizontal flip, colour jitter, random grayscale.

    ``images01`` is float in [0, 1]. Returns ``(2B, 3, out_size, out_size)`` in [0, 1]: rows ``i`` and
    ``i + B`` are two independent views of image ``i``. (No Gaussian blur: on the small images this
    suite trains on it mostly erases content.)
    """
    _check_images(images01)
    out_size = out_size or images01.shape[-1]
    return torch.cat([_one_view(images01, generator, out_size, scale) for _ in range(2)], dim=0)
