"""The image data flags of the vision recipes, and the built-in sets' names: light (no torch, no datasets), so
a recipe answers ``--help`` and rejects a bad flag before the heavy imports."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from hfssl.errors import ConfigError

#: Built-in set -> its splits (the first is the default); see hfssl.data.builtin_images.
BUILTIN_SETS: dict[str, tuple[str, ...]] = {
    "digits": ("first_1500", "random", "writers"),
    "cluttered_digits": ("writers", "random"),
}


def check_builtin(name: Optional[str], split: Optional[str]) -> tuple[str, str]:
    """``(name, split)`` with the defaults filled in; ConfigError for an unknown set or split."""
    name = name or "digits"
    if name not in BUILTIN_SETS:
        raise ConfigError(f"unknown built-in image set {name!r}; choose one of: {', '.join(BUILTIN_SETS)}")
    split = split or BUILTIN_SETS[name][0]
    if split not in BUILTIN_SETS[name]:
        raise ConfigError(f"the built-in set {name!r} has no split {split!r}; its splits: "
                          f"{', '.join(BUILTIN_SETS[name])}")
    return name, split


@dataclass
class ImageDataArguments:
    """Image data flags, named as in transformers' ``run_mim.py`` / ``run_image_classification.py``."""

    dataset_name: Optional[str] = field(default=None, metadata={"help": "Hub dataset id."})
    dataset_config_name: Optional[str] = field(default=None, metadata={"help": "Hub dataset config."})
    train_dir: Optional[str] = field(
        default=None, metadata={"help": "Folder of training images, one sub-folder per class (optional)."}
    )
    validation_dir: Optional[str] = field(default=None, metadata={"help": "Folder of validation images."})
    image_column_name: str = field(default="image", metadata={"help": "Column holding the images."})
    label_column_name: str = field(default="label", metadata={"help": "Column holding class indices."})
    validation_split_images: int = field(
        default=0, metadata={"help": "Hold out this many leading images of the training stream for validation."}
    )
    max_train_samples: Optional[int] = field(default=None, metadata={"help": "Truncate the training stream."})
    shuffle_buffer_size: int = field(
        default=0, metadata={"help": "Shuffle chunk (images); 0 keeps the stream order."}
    )
    preprocessing_num_workers: int = field(
        default=0, metadata={"help": "Image decoding threads per process (ImageExamples num_workers); 0: inline."}
    )
    image_cache_mb: int = field(default=512, metadata={
        "help": "Keep up to this many MB of decoded, resized local images in memory (per process), so later "
                "epochs skip decoding: what small sets of large JPEGs spend most on; 0 turns it off."})
    builtin_images: Optional[str] = field(default=None, metadata={
        "help": "Without --train_dir/--dataset_name: the built-in set, digits (default: the fast smoke set) or "
                "cluttered_digits (digits at a random place and scale among clutter: pixels are a poor linear "
                "representation there)."})
    builtin_split: Optional[str] = field(default=None, metadata={
        "help": "Split of the built-in set: first_1500 (digits' default), random (a seeded fifth held out) or "
                "writers (whole collection forms held out; cluttered_digits' default)."})

    def __post_init__(self) -> None:
        if self.dataset_name and (self.train_dir or self.validation_dir):
            raise ValueError("give either --dataset_name or --train_dir/--validation_dir, not both")
        if (self.builtin_images or self.builtin_split) and (self.dataset_name or self.train_dir):
            raise ValueError("--builtin_images/--builtin_split choose the built-in data: drop them with --train_dir "
                             "or --dataset_name")
        try:
            check_builtin(self.builtin_images, self.builtin_split)
        except ConfigError as exc:
            raise ValueError(str(exc)) from None
        if self.validation_dir and self.validation_split_images > 0:
            raise ValueError("give either --validation_dir or --validation_split_images, not both")
        for name in ("validation_split_images", "shuffle_buffer_size", "preprocessing_num_workers", "image_cache_mb"):
            if getattr(self, name) < 0:
                raise ValueError(f"--{name} must be >= 0, got {getattr(self, name)}")
        if self.max_train_samples is not None and self.max_train_samples < 1:
            raise ValueError(f"--max_train_samples must be >= 1, got {self.max_train_samples}")


__all__ = ["BUILTIN_SETS", "ImageDataArguments", "check_builtin"]
