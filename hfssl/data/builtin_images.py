"""The built-in default image set: scikit-learn's bundled handwritten digits as an image folder.

``sklearn.datasets.load_digits`` ships with scikit-learn (a dependency), so every machine has 1,797 real
8x8 grayscale scans of the digits 0-9 without a download. They are written once as 32x32 RGB PNGs (each
pixel repeated 4x4, so nothing is invented; ink is bright on black, intensity 0..16 scaled to 0..255) in
the layout ``imagefolder`` reads, with the class folders ``0``..``9`` giving labels 0..9::

    <dir>/train/<digit>/<i>.png        the first 1,500 images (i: index in load_digits)
    <dir>/validation/<digit>/<i>.png   the other 297

``<dir>`` lives in hfssl's cache dir (``$HFSSL_CACHE``, see :func:`hfssl.data.builtin_corpus.cache_dir`).
It is built in a temporary sibling folder and renamed into place, so a killed run never leaves a partial
folder and concurrent builders (parallel test processes, ranks) all end up with the same complete one.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from hfssl.data.builtin_corpus import cache_dir as hfssl_cache_dir

NUM_TRAIN = 1500
UPSCALE = 4  # 8x8 -> 32x32
_FORMAT_VERSION = 1
_NAME = f"sklearn-digits-{8 * UPSCALE}px-v{_FORMAT_VERSION}"


def digit_images() -> tuple[np.ndarray, np.ndarray]:
    """``(images uint8 (N, 32, 32, 3), labels int64 (N,))`` of scikit-learn's digits, as written to disk."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    gray = np.rint(digits.images * (255.0 / 16.0)).astype(np.uint8)  # values are 0..16
    big = gray.repeat(UPSCALE, axis=1).repeat(UPSCALE, axis=2)
    return np.repeat(big[..., None], 3, axis=-1), digits.target.astype(np.int64)


def _write(root: Path) -> None:
    images, labels = digit_images()
    for i, (image, label) in enumerate(zip(images, labels)):
        split = "train" if i < NUM_TRAIN else "validation"
        folder = root / split / str(int(label))
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image, "RGB").save(folder / f"{i}.png")
    (root / "SOURCE.txt").write_text(
        "sklearn.datasets.load_digits (UCI optical recognition of handwritten digits), 8x8 upscaled "
        f"{UPSCALE}x by pixel repetition; train: images 0-{NUM_TRAIN - 1}, validation: the rest.\n"
    )


def builtin_image_dir(cache_dir: str | os.PathLike | None = None) -> str:
    """The built-in digits image folder (``train/`` and ``validation/`` inside), built on first use."""
    parent = Path(cache_dir) if cache_dir is not None else hfssl_cache_dir()
    final = parent / _NAME
    if final.is_dir():  # only a finished build is ever renamed to this name
        return str(final)
    parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=parent, prefix=f".{_NAME}.tmp-"))
    try:
        _write(tmp)
        try:
            os.rename(tmp, final)
        except OSError:
            if not final.is_dir():  # not "another builder won the race": a real error
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return str(final)
