"""Streaming image sets: local image folders, Hub datasets and the built-in digits.

``load_image_dataset`` returns a ``datasets.IterableDataset`` whose image column is cast to
``datasets.Image(decode=False)``: a row carries the file's path (or its bytes), never a decoded image, so
skipping rows (resume, held-out validation images) costs no decoding. Local folders go through the
``imagefolder`` builder as in transformers' ``run_image_classification.py``: class sub-folders become a
``label`` ClassLabel column (names sorted, so the folders ``0``..``9`` are labels 0..9).

``ImageExamples`` does the only per-image work of the pipeline, all of it deterministic: decode with PIL,
convert to RGB, resize straight to ``(S, S)`` with bilinear filtering, and hand out uint8 ``(3, S, S)``
tensors. That is exactly what ``ViTImageProcessor(size={"height": S, "width": S}, do_convert_rgb=True)``
does before rescaling and normalising, so a model sees at inference what it saw in training. RGB
conversion follows transformers' ``convert_to_rgb``: transparent pixels are composited onto white (a bare
``convert("RGB")`` would keep whatever colour hides under alpha 0). Random augmentation is the objective's
job, on the device.
"""

from __future__ import annotations

import io
import os
import random
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from threading import Lock
from typing import Any

import datasets
import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from hfssl.data.image_args import ImageDataArguments
from hfssl.errors import ConfigError, DataError

_CURSOR_KIND = "images"


# --------------------------------------------------------------------------------------------- loading
def image_extensions() -> frozenset[str]:
    """The file extensions the ``imagefolder`` builder reads (lower case, with the dot)."""
    from datasets.packaged_modules.imagefolder.imagefolder import ImageFolder

    return frozenset(ext.lower() for ext in ImageFolder.EXTENSIONS)


def _check_image_dir(path: str, flag: str) -> str:
    """Fail now, not deep inside ``datasets``, on a missing folder or one without a single image file."""
    path = os.path.expanduser(path)
    if not os.path.isdir(path):
        raise DataError(f"{flag} {path} does not exist or is not a directory")
    extensions = image_extensions()
    for _, _, names in os.walk(path):
        if any(os.path.splitext(name)[1].lower() in extensions for name in names):
            return path
    raise DataError(
        f"{flag} {path} holds no image files (.png, .jpg, ...): put images in it, one sub-folder per class"
    )


def _image_files(folder: str) -> list[str]:
    """Every image file under ``folder``, in path order."""
    extensions = image_extensions()
    return sorted(os.path.join(root, name) for root, _, names in os.walk(folder) for name in names
                  if os.path.splitext(name)[1].lower() in extensions)


def _offline() -> bool:
    import huggingface_hub.constants

    return bool(datasets.config.HF_DATASETS_OFFLINE or huggingface_hub.constants.HF_HUB_OFFLINE)


def _load_hub(dataset_name: str, dataset_config_name: str | None, split: str) -> datasets.IterableDataset:
    try:
        return datasets.load_dataset(dataset_name, dataset_config_name, split=split, streaming=True)
    except Exception as exc:  # offline, unknown id, unknown split: all user-fixable
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if _offline() and isinstance(exc, (ConnectionError, OSError)):
            raise DataError(
                f"cannot load dataset {dataset_name!r}: offline mode is on (HF_HUB_OFFLINE / HF_DATASETS_OFFLINE) "
                "and it is not cached; unset them on a machine with network access, or pass --train_dir "
                "with a local image folder"
            ) from None
        raise DataError(f"cannot load dataset {dataset_name!r} (split {split!r}): {first}") from None


def load_image_dataset(
    *,
    train_dir: str | None = None,
    validation_dir: str | None = None,
    dataset_name: str | None = None,
    dataset_config_name: str | None = None,
    split: str = "train",
    image_column_name: str = "image",
    file_order_seed: int | None = None,
) -> datasets.IterableDataset:
    """Stream image rows (the image column undecoded) from a local folder or a Hub dataset.

    A local ``split`` reads ``train_dir`` (``"train"``) or ``validation_dir`` (``"validation"``); a Hub
    dataset reads its split of that name. Folders and columns are checked now.

    A folder is listed in path order, which for class sub-folders means class after class: a shuffle
    buffer smaller than a class would still feed whole batches of one class. ``file_order_seed`` streams
    the files in a random order fixed by the seed instead (the same every epoch, so a resume is exact;
    the loader's chunk shuffle varies it per epoch on top).
    """
    if (train_dir or validation_dir) and dataset_name:
        raise DataError("give either --train_dir/--validation_dir or --dataset_name, not both")
    if train_dir or validation_dir:
        if split not in ("train", "validation"):
            raise DataError(f"split must be 'train' or 'validation' for local folders, got {split!r}")
        folder = train_dir if split == "train" else validation_dir
        if not folder:
            raise DataError(f"no {split} images: pass --{split}_dir")
        folder = _check_image_dir(folder, f"--{split}_dir")
        # data_files (not data_dir): a class folder named "test" or "validation" must not become a split.
        files: str | list[str] = os.path.join(folder, "**")
        if file_order_seed is not None:
            files = _image_files(folder)
            random.Random(file_order_seed).shuffle(files)
        dataset = datasets.load_dataset("imagefolder", data_files={split: files}, split=split, streaming=True)
        source = f"--{split}_dir {folder}"
    elif dataset_name:
        dataset = _load_hub(dataset_name, dataset_config_name, split)
        source = f"dataset {dataset_name!r}"
    else:
        raise DataError("no images given: pass --train_dir or --dataset_name (or use builtin_image_dir())")
    return _undecoded(dataset, image_column_name, source)


def _undecoded(dataset: datasets.IterableDataset, column: str, source: str) -> datasets.IterableDataset:
    names = dataset.column_names
    if names is None:  # features unknown until the first row: ImageExamples checks the column then
        return dataset
    if column not in names:
        raise DataError(
            f"{source} has no image column {column!r} (columns: {', '.join(names)}); pass --image_column_name"
        )
    try:
        return dataset.cast_column(column, datasets.Image(decode=False))
    except Exception as exc:  # e.g. an int column named by mistake
        raise DataError(f"{source}: column {column!r} does not hold images ({exc}); pass --image_column_name") from None


# --------------------------------------------------------------------------------------------- decoding
def to_rgb(image: Image.Image) -> Image.Image:
    """RGB as transformers' ``convert_to_rgb`` makes it: transparency composited onto a white background."""
    if "A" in image.getbands() or image.info.get("transparency") is not None:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def _describe(value: Any, index: int) -> str:
    if isinstance(value, dict) and value.get("path"):
        return str(value["path"])
    return f"image {index} of the stream"


def decode_image(value: Any, image_size: int, index: int = 0) -> torch.Tensor:
    """An undecoded image cell (``{"path", "bytes"}``, a path, or a PIL image) -> uint8 ``(3, S, S)``."""
    name = _describe(value, index)
    try:
        if isinstance(value, Image.Image):
            image = value
        elif isinstance(value, dict) and value.get("bytes") is not None:
            image = Image.open(io.BytesIO(value["bytes"]))
        elif isinstance(value, dict) and value.get("path"):
            image = Image.open(value["path"])
        elif isinstance(value, str):
            image = Image.open(value)
        else:
            raise DataError(f"{name} is empty or not an image ({type(value).__name__})")
        with image:
            resized = to_rgb(image).resize((image_size, image_size), Image.BILINEAR)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        # PIL reports truncated/corrupt files as OSError, some plugins as SyntaxError/ValueError.
        raise DataError(f"cannot decode image {name}: {exc}; remove or replace the file") from None
    # HWC uint8 -> CHW; np.array copies, so the tensor owns its memory.
    return torch.from_numpy(np.array(resized, dtype=np.uint8)).permute(2, 0, 1).contiguous()


class DecodedImageCache:
    """Decoded, resized images of local files, kept in memory up to ``max_bytes``, so that later epochs skip
    decoding.

    Decoding costs ~80 us for a 32-px PNG of the cluttered digits (3% of a tiny-ViT BYOL step on one CPU
    thread: 47.1 s instead of 48.6 s for 300 steps, measured) and milliseconds for a photo-sized JPEG resized down,
    where a small set trained for many epochs spends much of its time. The key is the file's
    path (rows that carry bytes, e.g. Hub datasets, are not cached: nothing names them) and the image size;
    images are added until ``max_bytes`` is reached and then kept (no eviction: a stream visits every image once
    per epoch, so an LRU would throw each one away just before it comes round again). Entries are shared
    read-only tensors (``collate_images`` stacks copies). Decoding is deterministic, so a cached run is
    bit-identical to an uncached one.
    """

    def __init__(self, max_bytes: int) -> None:
        if max_bytes < 0:
            raise ConfigError(f"the decoded-image cache size must be >= 0, got {max_bytes}")
        self.max_bytes = max_bytes
        self.used_bytes = 0
        self._images: dict[tuple[str, int], torch.Tensor] = {}
        self._lock = Lock()  # decoding threads add entries concurrently

    def __len__(self) -> int:
        return len(self._images)

    @staticmethod
    def key(value: Any, image_size: int) -> tuple[str, int] | None:
        if isinstance(value, str):
            return value, image_size
        if isinstance(value, dict) and value.get("bytes") is None and value.get("path"):
            return str(value["path"]), image_size
        return None

    def decode(self, value: Any, image_size: int, index: int = 0) -> torch.Tensor:
        """:func:`decode_image`, served from memory for a file seen before."""
        key = self.key(value, image_size) if self.max_bytes else None
        if key is None:
            return decode_image(value, image_size, index)
        pixels = self._images.get(key)
        if pixels is None:
            pixels = decode_image(value, image_size, index)
            with self._lock:
                if self.used_bytes + pixels.nbytes <= self.max_bytes and key not in self._images:
                    self._images[key] = pixels
                    self.used_bytes += pixels.nbytes
        return pixels


def _label(value: Any, index: int, column: str) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise DataError(
            f"label of image {index} in column {column!r} is {value!r}, not a class index: use a ClassLabel "
            "column (an image folder's class sub-folders give one) or pass --label_column_name"
        )
    return int(value)


class ImageExamples:
    """Decoded examples ``{"pixel_values": uint8 (3, S, S), "labels": int, "image_index": int}`` of an undecoded
    image stream.

    ``labels`` is there when the dataset has ``label_column_name``; ``image_index`` is the row's position in
    the stream (memory banks and clustering key their per-image state on it). ``iter_with_cursors(cursor)`` yields
    ``(example, cursor after it)``: the cursor is the number of rows consumed, and restarting from it skips
    those rows without opening them (rows carry paths or bytes only), which makes StatefulLoader's resume
    cost reading the stream, not decoding it.

    ``num_workers > 0`` decodes that many images at once in threads (PIL releases the GIL while decoding
    and resizing), at most ``2 * num_workers`` ahead of the consumer; the order and the cursors are those
    of the sequential stream. ``cache`` (a :class:`DecodedImageCache`) keeps decoded local files for the
    next epoch.
    """

    def __init__(
        self,
        dataset: Iterable[dict],
        image_size: int,
        image_column_name: str = "image",
        label_column_name: str = "label",
        num_workers: int = 0,
        cache: DecodedImageCache | None = None,
    ) -> None:
        if image_size < 1:
            raise DataError(f"image_size must be >= 1, got {image_size}")
        if num_workers < 0:
            raise DataError(f"num_workers must be >= 0, got {num_workers}")
        self.num_workers = num_workers
        self.cache = cache
        self.dataset = dataset
        self.image_size = image_size
        self.image_column_name = image_column_name
        self.label_column_name = label_column_name

    def set_epoch(self, epoch: int) -> None:
        """Forwarded to the stream: it only matters if a ``datasets`` shuffle was added to it."""
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for example, _ in self.iter_with_cursors():
            yield example

    def iter_with_cursors(self, cursor: dict | None = None) -> Iterator[tuple[dict[str, Any], dict]]:
        skip = _restore(cursor)
        index = 0
        rows = iter(self.dataset)
        for _ in range(skip):  # rows before the checkpoint: read, never decoded
            if next(rows, None) is None:
                raise DataError(
                    f"cannot resume the data stream: the image set changed since the checkpoint (it has "
                    f"{index} images, the checkpoint was taken after {skip}); resume with the same data"
                )
            index += 1
        for i, example in self._decoded(enumerate(rows, start=index)):
            yield example, {"kind": _CURSOR_KIND, "consumed": i + 1}

    def _decoded(self, rows: Iterator[tuple[int, dict]]) -> Iterator[tuple[int, dict[str, Any]]]:
        if self.num_workers == 0:
            for i, row in rows:
                yield i, self._example(row, i)
            return
        with ThreadPoolExecutor(self.num_workers, thread_name_prefix="hfssl-decode") as pool:
            pending: deque = deque()
            for i, row in rows:
                pending.append((i, pool.submit(self._example, row, i)))
                if len(pending) >= 2 * self.num_workers:
                    j, future = pending.popleft()
                    yield j, future.result()
            while pending:
                j, future = pending.popleft()
                yield j, future.result()

    def _example(self, row: dict, index: int) -> dict[str, Any]:
        if self.image_column_name not in row:
            raise DataError(
                f"the image stream has no column {self.image_column_name!r} (columns: {', '.join(row)}); "
                "pass --image_column_name"
            )
        # image_index: the row's position in the stream, a stable id of the image for the whole run (the file
        # order is fixed by the seed; the loader's shuffle comes after), for objectives with per-image state.
        value = row[self.image_column_name]
        pixels = (self.cache.decode(value, self.image_size, index) if self.cache is not None
                  else decode_image(value, self.image_size, index))
        example: dict[str, Any] = {"pixel_values": pixels, "image_index": index}
        if self.label_column_name in row:
            example["labels"] = _label(row[self.label_column_name], index, self.label_column_name)
        return example


def _restore(cursor: dict | None) -> int:
    if cursor is None:
        return 0
    if cursor.get("kind") != _CURSOR_KIND or not isinstance(cursor.get("consumed"), int) or cursor["consumed"] < 0:
        raise DataError(
            f"cannot resume the data stream: {cursor} is not an image stream position; resume with the "
            "recipe and data that wrote the checkpoint"
        )
    return cursor["consumed"]


def collate_images(examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    """Stack examples into ``{"pixel_values": uint8 (B, 3, S, S), "labels": int64 (B,), "image_index": int64
    (B,)}`` (labels and indices if present)."""
    if not examples:
        raise DataError("cannot collate an empty batch of images")
    batch = {"pixel_values": torch.stack([ex["pixel_values"] for ex in examples])}
    for key in ("labels", "image_index"):
        if key in examples[0]:
            batch[key] = torch.tensor([ex[key] for ex in examples], dtype=torch.int64)
    return batch


def has_validation_images(data_args: ImageDataArguments) -> bool:
    """Whether ``load_image_dataset_from_args(data_args, "validation")`` has images to give: a
    ``--validation_dir``, held-out images, the built-in digits' folder, or a Hub dataset's ``validation``
    split (an unreachable or unknown dataset counts as none: the training stream reports the real error)."""
    if data_args.validation_dir or data_args.validation_split_images > 0:
        return True
    if not data_args.dataset_name:
        return not data_args.train_dir  # the built-in digits come with a validation folder
    try:
        names = datasets.get_dataset_split_names(data_args.dataset_name, data_args.dataset_config_name)
    except Exception:
        return False
    return "validation" in names


def load_image_dataset_from_args(data_args: ImageDataArguments, split: str = "train",
                                 file_order_seed: int | None = None) -> datasets.IterableDataset:
    """Image rows for a recipe's ``ImageDataArguments``.

    ``file_order_seed`` shuffles the files of a local training folder (see :func:`load_image_dataset`); the
    held-out ``--validation_split_images`` are then a random sample, taken from the same shuffled order.

    * No ``--train_dir``/``--dataset_name``: the built-in set ``--builtin_images`` (default: the digits), split
      ``--builtin_split`` (:func:`builtin_image_dir`).
    * ``split="validation"``: ``--validation_dir`` if given; else the first ``--validation_split_images``
      images of the training stream (``split="train"`` then skips exactly those); else the built-in
      digits' or the Hub dataset's ``validation`` split. Otherwise a DataError says what to pass.
    * ``--max_train_samples`` caps the number of training images.
    """
    if split not in ("train", "validation"):
        raise DataError(f"split must be 'train' or 'validation', got {split!r}")
    column = data_args.image_column_name
    held_out = data_args.validation_split_images
    train_dir, validation_dir = data_args.train_dir, data_args.validation_dir
    if not train_dir and not data_args.dataset_name:
        from hfssl.data.builtin_images import builtin_image_dir

        root = builtin_image_dir(name=data_args.builtin_images, split=data_args.builtin_split)
        train_dir = os.path.join(root, "train")
        if held_out == 0:
            validation_dir = validation_dir or os.path.join(root, "validation")

    def load(which: str, hub_split: str = "train") -> datasets.IterableDataset:
        if data_args.dataset_name:
            return load_image_dataset(
                dataset_name=data_args.dataset_name,
                dataset_config_name=data_args.dataset_config_name,
                split=hub_split,
                image_column_name=column,
            )
        return load_image_dataset(
            train_dir=train_dir, validation_dir=validation_dir, split=which, image_column_name=column,
            file_order_seed=file_order_seed if which == "train" else None,
        )

    if split == "validation":
        if validation_dir:
            return load("validation")
        if held_out > 0:
            return load("train").take(held_out)
        if data_args.dataset_name:
            return load("validation", hub_split="validation")
        raise DataError(
            "no validation images: pass --validation_dir or --validation_split_images N to hold out the first "
            "N training images"
        )
    train = load("train")
    if held_out > 0:
        train = train.skip(held_out)
    if data_args.max_train_samples is not None:
        train = train.take(data_args.max_train_samples)
    return train


def count_training_images(data_args: ImageDataArguments) -> int:
    """How many images the training stream of ``data_args`` holds (after held-out images and
    ``--max_train_samples``): what a per-image memory bank needs to know before training.

    Local folders (and the built-in sets) are counted by listing their rows, never decoding them; a Hub
    dataset by its published split size. ConfigError when that is unknown.
    """
    if data_args.dataset_name:
        try:
            builder = datasets.load_dataset_builder(data_args.dataset_name, data_args.dataset_config_name)
            total = builder.info.splits["train"].num_examples
        except Exception:
            total = None
        if not total:
            if data_args.max_train_samples:
                return data_args.max_train_samples
            raise ConfigError(f"the size of {data_args.dataset_name!r} is not published; pass --max_train_samples "
                              "so a memory bank can be sized")
        total -= data_args.validation_split_images
        return min(total, data_args.max_train_samples or total)
    return sum(1 for _ in load_image_dataset_from_args(data_args, "train"))
