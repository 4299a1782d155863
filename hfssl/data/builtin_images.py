"""Built-in image sets made from scikit-learn's bundled handwritten digits: no download, fixed by a seed.

``sklearn.datasets.load_digits`` ships with scikit-learn (a dependency), so every machine has 1,797 real
8x8 grayscale scans of the digits 0-9. Two sets are built from them, written once as RGB PNGs in the layout
``imagefolder`` reads (class folders ``0``..``9`` give labels 0..9; ``<i>`` is the index in ``load_digits``):

* ``digits``: the scans as they are, 32x32 (each pixel repeated 4x4, so nothing is invented; ink bright on
  black). The fast smoke set. Linearly separable in pixel space (logistic regression on the raw pixels: ~91%),
  so it cannot show what self-supervised pretraining is worth.
* ``cluttered_digits``: the Translated/Cluttered MNIST construction (Ba, Mnih & Kavukcuoglu 2014; Jaderberg
  et al. 2015) on these scans, ``RENDERINGS`` (4) seeded renderings of each scan (7,188 images). In each, the
  digit is resized (bilinear) to a random side of 18-26 px and placed at a random position on a black 32x32
  canvas, with 2 pieces of clutter: random 4x4 crops of other scans *of the same form* (see below), resized
  the same way and pasted anywhere (overlaps keep the brighter ink). A digit is no longer at a fixed place, so
  a linear model on the raw pixels is near chance (13.7% on the ``writers`` split; the majority class is
  10.6%) while the tiny ViT of ``recipes/vit_pretext.py`` (patch 4, 32 px) trained supervised from scratch
  reaches 43.9 +- 6.2% (``recipes/image_probe.py --mode finetune --init random``, 10 epochs, seeds 1-2; a
  plain 1,500-step supervised loop at batch 64 without augmentation ~55%): the shapes are there to be
  learnt, and a representation has room between the two. A random-init ViT's CLS features give 29.9% to a
  linear probe. kNN on the raw pixels is not weak (46.6%): with four renderings per scan, a training image
  of the same digit at a similar place and size is often there to match. (Measured 2026-12-03 on a shared
  2-core CPU, see ``benchmarks/vision_ssl_table.py``. Version 1 had one rendering and 12-20 px digits: with
  1,419 training images and digits that small, the same ViT reached ~27% supervised.) Fixed by
  ``CLUTTER_SEED``; the folder name carries the format version. Built in about 4 CPU seconds (7,188 PNG
  writes, hard links for the second split).

Splits (``<set>/<split>/{train,validation}/<digit>/<i>.png``; cluttered: ``<i>_<rendering>.png``). A split
holds out *scans*: every rendering of a scan is on its scan's side.

* ``first_1500`` (``digits`` only, its historical folder): images 0-1499 train, 1500-1796 validation.
* ``random``: a seeded random fifth of the scans held out (every writer on both sides).
* ``writers``: whole forms held out. scikit-learn's digits are the *test* part of UCI optdigits, written by 13
  people (its DESCR: 43 writers in all, 30 in the UCI training part); no writer ids ship. The label sequence
  shows how they were collected: preprinted forms, each starting with "0123456789" three times followed by
  the same fixed digit sequence. :func:`digit_forms` cuts the sequence at those starts into 14 forms of
  124-130 digits (13 writers, 14 forms: one writer's digits span two forms, or a form was split; which, the
  data does not say). The ``writers`` split holds out forms 2, 7 and 12 (378 scans; cluttered: 1,512 images
  held out, 5,676 train), so no hand seen in training appears in validation; the clutter of an image only
  comes from its own form, so nothing crosses.

Folders live in hfssl's cache dir (``$HFSSL_CACHE``, see :func:`hfssl.data.builtin_corpus.cache_dir`). Each is
built in a temporary sibling folder and renamed into place, so a killed run never leaves a partial folder and
concurrent builders (parallel test processes, ranks) all end up with the same complete one.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from hfssl.data.builtin_corpus import cache_dir as hfssl_cache_dir
from hfssl.data.image_args import BUILTIN_SETS, check_builtin
from hfssl.errors import ConfigError, DataError

NUM_TRAIN = 1500
UPSCALE = 4  # 8x8 -> 32x32
_FORMAT_VERSION = 1
_NAME = f"sklearn-digits-{8 * UPSCALE}px-v{_FORMAT_VERSION}"

CANVAS = 32
DIGIT_SIDES = (18, 26)      # inclusive range of the pasted digit's side, pixels
CLUTTER_PIECES = 2
CLUTTER_CROP = 4            # side of a clutter crop in source (8x8) pixels
CLUTTER_SEED = 0
SPLIT_SEED = 0
HELD_OUT_FORMS = (2, 7, 12)
RENDERINGS = 4            # seeded renderings of every scan
_CLUTTER_VERSION = 2
_SPLITS_VERSION = 1
# The first digits after a form's three "0123456789" rows; found once per form.
_FORM_ANCHOR = (0, 9, 5, 5, 6, 5, 0, 9, 8, 9)
_FORM_HEADER = 30


def digit_images() -> tuple[np.ndarray, np.ndarray]:
    """``(images uint8 (N, 32, 32, 3), labels int64 (N,))`` of scikit-learn's digits, as written to disk."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    gray = np.rint(digits.images * (255.0 / 16.0)).astype(np.uint8)  # values are 0..16
    big = gray.repeat(UPSCALE, axis=1).repeat(UPSCALE, axis=2)
    return np.repeat(big[..., None], 3, axis=-1), digits.target.astype(np.int64)


def digit_forms(labels: np.ndarray) -> np.ndarray:
    """Form index (0..13) of every digit, from the label sequence alone (see the module docstring).

    A form starts 30 digits (its three 0-9 rows) before each occurrence of the fixed sequence that follows
    them. Raises DataError if the sequence does not have the expected 14 forms (another scikit-learn copy).
    """
    labels = np.asarray(labels)
    anchor = np.asarray(_FORM_ANCHOR)
    windows = np.lib.stride_tricks.sliding_window_view(labels, len(anchor))
    hits = np.flatnonzero((windows == anchor).all(axis=1))
    starts = [max(0, int(h) - _FORM_HEADER) for h in hits]
    if len(starts) != 14 or starts[0] != 0 or min(np.diff(starts)) < 100:
        raise DataError(f"scikit-learn's digits do not have the expected 14 collection forms (found form starts "
                        f"{starts}); the 'writers' split needs the standard load_digits data")
    forms = np.zeros(len(labels), dtype=np.int64)
    for start in starts[1:]:
        forms[start:] += 1
    return forms


def _resize(gray01: np.ndarray, side: int) -> np.ndarray:
    """Bilinear resize of a float [0, 1] image to ``side x side`` (PIL's float mode: no 8-bit rounding)."""
    return np.asarray(Image.fromarray(gray01.astype(np.float32), "F").resize((side, side), Image.BILINEAR))


def _paste_max(canvas: np.ndarray, piece: np.ndarray, top: int, left: int) -> None:
    h, w = piece.shape
    region = canvas[top:top + h, left:left + w]
    np.maximum(region, piece[:region.shape[0], :region.shape[1]], out=region)


def cluttered_digit_images(seed: int = CLUTTER_SEED, renderings: int = RENDERINGS, *,
                           digit_sides: tuple[int, int] = DIGIT_SIDES, clutter_pieces: int = CLUTTER_PIECES,
                           clutter_crop: int = CLUTTER_CROP) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(images uint8 (N*R, 32, 32, 3), labels int64 (N*R,), scans int64 (N*R,))``: the cluttered digits.

    ``renderings`` (R) seeded renderings of each of the N scans, rendering ``r`` of scan ``i`` at row
    ``r * N + i`` (``scans`` gives ``i``). Deterministic in ``seed``; the keyword arguments exist to measure
    other settings (the built set uses the module's constants).
    """
    from sklearn.datasets import load_digits

    digits = load_digits()
    scans = digits.images.astype(np.float32) / 16.0
    labels = digits.target.astype(np.int64)
    forms = digit_forms(labels)
    members = {int(f): np.flatnonzero(forms == f) for f in np.unique(forms)}
    rng = np.random.default_rng(seed)
    n = len(scans)
    out = np.zeros((renderings * n, CANVAS, CANVAS), dtype=np.float32)
    low, high = digit_sides
    for r in range(renderings):
        for i, scan in enumerate(scans):
            canvas = out[r * n + i]
            for _ in range(clutter_pieces):
                # Clutter first, from other digits of the same form; the digit goes on top of it.
                j = int(rng.choice(members[int(forms[i])]))
                while j == i:
                    j = int(rng.choice(members[int(forms[i])]))
                y, x = rng.integers(0, 8 - clutter_crop + 1, size=2)
                crop = scans[j, y:y + clutter_crop, x:x + clutter_crop]
                side = max(1, int(round(clutter_crop * rng.integers(low, high + 1) / 8)))
                top, left = rng.integers(0, CANVAS - side + 1, size=2)
                _paste_max(canvas, _resize(crop, side), int(top), int(left))
            side = int(rng.integers(low, high + 1))
            top, left = rng.integers(0, CANVAS - side + 1, size=2)
            _paste_max(canvas, _resize(scan, side), int(top), int(left))
    gray = np.rint(np.clip(out, 0.0, 1.0) * 255.0).astype(np.uint8)
    return (np.repeat(gray[..., None], 3, axis=-1), np.tile(labels, renderings),
            np.tile(np.arange(n, dtype=np.int64), renderings))


def split_indices(split: str, labels: np.ndarray) -> np.ndarray:
    """Boolean mask of the validation images of ``split`` (``first_1500``, ``random`` or ``writers``)."""
    n = len(labels)
    if split == "first_1500":
        return np.arange(n) >= NUM_TRAIN
    if split == "random":
        order = np.random.default_rng(SPLIT_SEED).permutation(n)
        held = np.zeros(n, dtype=bool)
        held[order[: n // 5]] = True
        return held
    if split == "writers":
        return np.isin(digit_forms(labels), HELD_OUT_FORMS)
    raise ConfigError(f"unknown built-in split {split!r}; choose one of: first_1500, random, writers")


def _write_split(root: Path, images: np.ndarray, labels: np.ndarray, held_out: np.ndarray, names: list[str],
                 same_as: list[Path] | None = None) -> list[Path]:
    """Write ``root/{train,validation}/<label>/<name>``; the paths written, in image order.

    ``same_as``: the same images already written elsewhere (another split): hard-linked (copied where links
    are not possible) instead of encoded again."""
    paths, made = [], set()
    for k, (image, label) in enumerate(zip(images, labels)):
        folder = root / ("validation" if held_out[k] else "train") / str(int(label))
        if folder not in made:
            folder.mkdir(parents=True, exist_ok=True)
            made.add(folder)
        path = folder / names[k]
        if same_as is None:
            Image.fromarray(image, "RGB").save(path)
        else:
            try:
                os.link(same_as[k], path)
            except OSError:
                shutil.copyfile(same_as[k], path)
        paths.append(path)
    return paths


def _write(root: Path) -> None:
    """The historical ``digits`` folder (``first_1500`` split, directly under ``root``)."""
    images, labels = digit_images()
    _write_split(root, images, labels, split_indices("first_1500", labels), [f"{i}.png" for i in range(len(labels))])
    (root / "SOURCE.txt").write_text(
        "sklearn.datasets.load_digits (UCI optical recognition of handwritten digits), 8x8 upscaled "
        f"{UPSCALE}x by pixel repetition; train: images 0-{NUM_TRAIN - 1}, validation: the rest.\n"
    )


def _write_all_splits(name: str) -> Callable[[Path], None]:
    def write(root: Path) -> None:
        if name == "digits":
            images, labels = digit_images()
            scans, names = np.arange(len(labels)), [f"{i}.png" for i in range(len(labels))]
            scan_labels = labels
        else:
            images, labels, scans = cluttered_digit_images()
            scan_labels = labels[:len(labels) // RENDERINGS]   # rendering 0 holds every scan once, in order
            names = [f"{i}_{k // len(scan_labels)}.png" for k, i in enumerate(scans)]
        written = None
        for split in BUILTIN_SETS[name]:
            if split != "first_1500":  # a split holds out scans; every rendering of a scan follows it
                held_out = split_indices(split, scan_labels)
                written = _write_split(root / split, images, labels, held_out[scans], names, same_as=written)
        how = ("8x8 upscaled 4x by pixel repetition" if name == "digits" else
               f"{RENDERINGS} renderings of each scan: the digit resized to {DIGIT_SIDES[0]}-{DIGIT_SIDES[1]} px at "
               f"a random place on a {CANVAS}x{CANVAS} canvas with {CLUTTER_PIECES} {CLUTTER_CROP}x{CLUTTER_CROP}-"
               f"pixel crops of other digits of its form as clutter (seed {CLUTTER_SEED}); <scan>_<rendering>.png")
        (root / "SOURCE.txt").write_text(
            f"sklearn.datasets.load_digits (UCI optdigits test part, 13 writers, 14 forms); {how}.\n"
            f"random/: a seeded fifth of the scans held out (seed {SPLIT_SEED}); writers/: forms {HELD_OUT_FORMS} "
            "held out.\n")
    return write


def _build_once(final: Path, write: Callable[[Path], None]) -> str:
    if final.is_dir():  # only a finished build is ever renamed to this name
        return str(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.tmp-"))
    try:
        write(tmp)
        try:
            os.rename(tmp, final)
        except OSError:
            if not final.is_dir():  # not "another builder won the race": a real error
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return str(final)


def builtin_image_dir(cache_dir: str | os.PathLike | None = None, *, name: str | None = None,
                      split: str | None = None) -> str:
    """A built-in image folder (``train/`` and ``validation/`` inside), built on first use.

    ``name``: ``digits`` (default) or ``cluttered_digits``; ``split``: see :data:`BUILTIN_SETS` (default: the
    set's first). The ``digits``/``first_1500`` folder is the historical one, unchanged.
    """
    name, split = check_builtin(name, split)
    parent = Path(cache_dir) if cache_dir is not None else hfssl_cache_dir()
    if name == "digits" and split == "first_1500":
        return _build_once(parent / _NAME, _write)
    if name == "digits":
        folder = f"sklearn-digits-{8 * UPSCALE}px-splits-v{_SPLITS_VERSION}"
    else:
        folder = f"cluttered-digits-{CANVAS}px-seed{CLUTTER_SEED}-v{_CLUTTER_VERSION}"
    root = _build_once(parent / folder, _write_all_splits(name))
    return os.path.join(root, split)


__all__ = ["BUILTIN_SETS", "builtin_image_dir", "check_builtin", "cluttered_digit_images", "digit_forms",
           "digit_images", "split_indices"]
