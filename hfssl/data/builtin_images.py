"""Built-in image sets made from scikit-learn's bundled handwritten digits: no download, fixed by a seed.

``sklearn.datasets.load_digits`` ships with scikit-learn (a dependency), so every machine has 1,797 real
8x8 grayscale scans of the digits 0-9. Two sets are built from them, written once as RGB PNGs in the layout
``imagefolder`` reads (class folders ``0``..``9`` give labels 0..9; ``<i>`` is the index in ``load_digits``):

* ``digits``: the scans as they are, 32x32 (each pixel repeated 4x4, so nothing is invented; ink bright on
  black). The fast smoke set. Linearly separable in pixel space (logistic regression on the raw pixels: ~91%),
  so it cannot show what self-supervised pretraining is worth.
* ``cluttered_digits``: the Translated/Cluttered MNIST construction (Ba, Mnih & Kavukcuoglu 2014; Jaderberg
  et al. 2015) on these scans. Each digit is resized (bilinear) to a random side of 12-20 px and placed at a
  random position on a black 32x32 canvas, with 2 pieces of clutter: random 4x4 crops of other scans *of the
  same form* (see below), resized the same way and pasted anywhere (overlaps keep the brighter ink). A digit
  is no longer at a fixed place, so a linear model on the pixels is near chance (~13% on the ``writers``
  split) while a small supervised CNN reaches ~78%: the shapes are all there to be learnt. Fixed by
  ``CLUTTER_SEED``; the folder name carries the format version.

Splits (``<set>/<split>/{train,validation}/<digit>/<i>.png``):

* ``first_1500`` (``digits`` only, its historical folder): images 0-1499 train, 1500-1796 validation.
* ``random``: a seeded random fifth of the images held out (every writer on both sides).
* ``writers``: whole forms held out. scikit-learn's digits are the *test* part of UCI optdigits, written by 13
  people (its DESCR: 43 writers in all, 30 in the UCI training part); no writer ids ship. The label sequence
  shows how they were collected: preprinted forms, each starting with "0123456789" three times followed by
  the same fixed digit sequence. :func:`digit_forms` cuts the sequence at those starts into 14 forms of
  124-130 digits (13 writers, 14 forms: one writer's digits span two forms, or a form was split; which, the
  data does not say). The ``writers`` split holds out forms 2, 7 and 12 (378 images), so no hand seen in
  training appears in validation; the clutter of an image only comes from its own form, so nothing crosses.

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
DIGIT_SIDES = (12, 20)      # inclusive range of the pasted digit's side, pixels
CLUTTER_PIECES = 2
CLUTTER_CROP = 4            # side of a clutter crop in source (8x8) pixels
CLUTTER_SEED = 0
SPLIT_SEED = 0
HELD_OUT_FORMS = (2, 7, 12)
_CLUTTER_VERSION = 1
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


def cluttered_digit_images(seed: int = CLUTTER_SEED) -> tuple[np.ndarray, np.ndarray]:
    """``(images uint8 (N, 32, 32, 3), labels int64 (N,))``: the cluttered digits, deterministic in ``seed``."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    scans = digits.images.astype(np.float32) / 16.0
    labels = digits.target.astype(np.int64)
    forms = digit_forms(labels)
    members = {int(f): np.flatnonzero(forms == f) for f in np.unique(forms)}
    rng = np.random.default_rng(seed)
    out = np.zeros((len(scans), CANVAS, CANVAS), dtype=np.float32)
    low, high = DIGIT_SIDES
    for i, scan in enumerate(scans):
        canvas = out[i]
        for _ in range(CLUTTER_PIECES):
            # Clutter first, from other digits of the same form; the digit goes on top of it.
            j = int(rng.choice(members[int(forms[i])]))
            while j == i:
                j = int(rng.choice(members[int(forms[i])]))
            y, x = rng.integers(0, 8 - CLUTTER_CROP + 1, size=2)
            crop = scans[j, y:y + CLUTTER_CROP, x:x + CLUTTER_CROP]
            side = int(round(CLUTTER_CROP * rng.integers(low, high + 1) / 8))
            top, left = rng.integers(0, CANVAS - side + 1, size=2)
            _paste_max(canvas, _resize(crop, side), int(top), int(left))
        side = int(rng.integers(low, high + 1))
        top, left = rng.integers(0, CANVAS - side + 1, size=2)
        _paste_max(canvas, _resize(scan, side), int(top), int(left))
    gray = np.rint(np.clip(out, 0.0, 1.0) * 255.0).astype(np.uint8)
    return np.repeat(gray[..., None], 3, axis=-1), labels


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


def _write_split(root: Path, images: np.ndarray, labels: np.ndarray, held_out: np.ndarray) -> None:
    for i, (image, label) in enumerate(zip(images, labels)):
        folder = root / ("validation" if held_out[i] else "train") / str(int(label))
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image, "RGB").save(folder / f"{i}.png")


def _write(root: Path) -> None:
    """The historical ``digits`` folder (``first_1500`` split, directly under ``root``)."""
    images, labels = digit_images()
    _write_split(root, images, labels, split_indices("first_1500", labels))
    (root / "SOURCE.txt").write_text(
        "sklearn.datasets.load_digits (UCI optical recognition of handwritten digits), 8x8 upscaled "
        f"{UPSCALE}x by pixel repetition; train: images 0-{NUM_TRAIN - 1}, validation: the rest.\n"
    )


def _images_of(name: str) -> tuple[np.ndarray, np.ndarray]:
    return digit_images() if name == "digits" else cluttered_digit_images()


def _write_all_splits(name: str) -> Callable[[Path], None]:
    def write(root: Path) -> None:
        images, labels = _images_of(name)
        for split in BUILTIN_SETS[name]:
            if split != "first_1500":
                _write_split(root / split, images, labels, split_indices(split, labels))
        how = ("8x8 upscaled 4x by pixel repetition" if name == "digits" else
               f"each digit resized to {DIGIT_SIDES[0]}-{DIGIT_SIDES[1]} px at a random place on a {CANVAS}x{CANVAS} "
               f"canvas with {CLUTTER_PIECES} {CLUTTER_CROP}x{CLUTTER_CROP}-pixel crops of other digits of its form "
               f"as clutter (seed {CLUTTER_SEED})")
        (root / "SOURCE.txt").write_text(
            f"sklearn.datasets.load_digits (UCI optdigits test part, 13 writers, 14 forms); {how}.\n"
            f"random/: a seeded fifth held out (seed {SPLIT_SEED}); writers/: forms {HELD_OUT_FORMS} held out.\n")
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
