"""Frozen-feature evaluation of a pretrained image encoder: linear probe and kNN on a labelled image set.

This is what a user runs after pretraining a ViT: reload the export with ``AutoModel`` and
``AutoImageProcessor`` (a ``ViTForMaskedImageModeling`` checkpoint loads too: ``AutoModel`` takes the
``ViTModel`` inside it), preprocess with that image processor exactly as at inference, extract one vector
per image (``cls`` token or ``mean`` of the patch tokens) with the encoder frozen, then

* linear probe: standardised features, multinomial logistic regression trained full batch with L-BFGS;
* kNN: cosine similarity to every training feature, the ``k`` nearest vote with weight ``exp(sim / T)``
  (the weighted kNN of DINO's evaluation).

Every table carries the two baselines every SSL paper reports, computed in the same run with the same probe
and kNN: the raw pixels (the processor's normalised pixel values, flattened) and the same architecture with
random weights (``--seeds 1,2,3``: one random init per seed, mean ± std). ``--baselines none`` skips them;
``--init random`` makes the random init the evaluated model. An MAE checkpoint is evaluated through its
encoder on whole images (``hfssl.models.vision.load_vit_encoder``), not the randomly masking ``ViTMAEModel``.
``--mode finetune`` / ``--mode lp_ft`` train the whole encoder instead (hfssl/evaluation/image_finetune.py).
The mode names are the GLUE recipe's (``linear_probe``, ``finetune``, ``lp_ft``); ``probe`` still works.

Only the dataclass and the cheap checks live at module level; torch, datasets and transformers are
imported inside the functions that need them, so a wrong flag is reported before they load.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Optional

from hfssl.errors import ConfigError, DataError
from hfssl.evaluation.args import FinetuneArguments

if TYPE_CHECKING:
    import datasets
    import torch
    from transformers import PreTrainedModel

FEATURES = ("cls", "mean")
INITS = ("pretrained", "random")
MODES = ("linear_probe", "finetune", "lp_ft")
#: Older names that still work (``recipes/glue_finetune.py`` and this recipe share one vocabulary).
MODE_ALIASES = {"probe": "linear_probe"}
BASELINES = ("pixels", "random")


@dataclass
class ImageProbeArguments:
    """Flags of ``recipes/image_probe.py``; data flags are named as in transformers' ``run_image_classification.py``."""

    model_name_or_path: Optional[str] = field(
        default=None, metadata={"help": "Checkpoint dir (save_pretrained model + image processor) or Hub id."}
    )
    train_dir: Optional[str] = field(
        default=None, metadata={"help": "Training images, one sub-folder per class: train_dir/<class>/<image>."}
    )
    validation_dir: Optional[str] = field(
        default=None, metadata={"help": "Validation images, laid out as --train_dir."}
    )
    dataset_name: Optional[str] = field(
        default=None, metadata={"help": "Hub dataset id (instead of folders); uses its train and validation "
                                        "(else test) splits."}
    )
    dataset_config_name: Optional[str] = field(default=None, metadata={"help": "Hub dataset config."})
    image_column_name: str = field(default="image", metadata={"help": "Column holding the images."})
    label_column_name: str = field(default="label", metadata={"help": "Column holding the labels."})
    output_dir: str = field(default="out/image_probe", metadata={"help": "Where results.json goes."})
    per_device_eval_batch_size: int = field(default=64, metadata={"help": "Images per feature-extraction batch."})
    dataloader_num_workers: int = field(default=0, metadata={"help": "Worker processes decoding images."})
    feature: str = field(
        default="cls", metadata={"help": "cls (last_hidden_state[:, 0]) or mean (mean of the patch tokens)."}
    )
    knn_k: int = field(default=20, metadata={"help": "kNN: number of neighbours that vote."})
    knn_temperature: float = field(default=0.07, metadata={"help": "kNN: vote weight exp(cosine / T)."})
    probe_steps: int = field(default=300, metadata={"help": "Linear probe: L-BFGS iterations (full batch)."})
    probe_weight_decay: float = field(
        default=1e-4, metadata={"help": "Linear probe: L2 penalty on the weights (0.5 * wd * ||W||^2)."}
    )
    init: str = field(
        default="pretrained", metadata={"help": "pretrained, or random: same architecture, random weights."}
    )
    mode: str = field(
        default="linear_probe", metadata={
            "help": "linear_probe (frozen features: linear probe + kNN; 'probe' is an alias), finetune (train the "
                    "whole encoder with a new head) or lp_ft (linear probe, then fine-tune from it)."}
    )
    seed: int = field(default=42, metadata={"help": "Seed of the random init and of --max_train_samples."})
    seeds: Optional[str] = field(
        default=None, metadata={"help": "Repeat with these seeds, e.g. '1,2,3' (mean ± std): fine-tuning runs in "
                                        "finetune/lp_ft; the random inits in linear_probe."}
    )
    max_train_samples: Optional[int] = field(
        default=None, metadata={"help": "Use a random subset of N training images (seeded)."}
    )
    baselines: str = field(
        default="pixels,random", metadata={"help": "linear_probe: baselines computed beside the model, comma-separated: "
                                                   "pixels (raw pixels), random (random init); 'none' for neither."}
    )
    builtin_images: Optional[str] = field(default=None, metadata={
        "help": "Without data flags: the built-in set, digits (default) or cluttered_digits (see recipes/vit_pretext.py)."})
    builtin_split: Optional[str] = field(default=None, metadata={
        "help": "Split of the built-in set: first_1500, random or writers (whole collection forms held out)."})

    def __post_init__(self) -> None:
        self.mode = MODE_ALIASES.get(self.mode, self.mode)
        if self.feature not in FEATURES:
            raise ValueError(f"--feature must be one of {', '.join(FEATURES)}, got {self.feature!r}")
        if self.init not in INITS:
            raise ValueError(f"--init must be one of {', '.join(INITS)}, got {self.init!r}")
        if self.mode not in MODES:
            raise ValueError(f"--mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if self.mode != "linear_probe" and self.feature != "cls":
            # ViTForImageClassification's head reads the CLS token; a mean-pooled head is another model.
            raise ValueError(f"--mode {self.mode} trains the checkpoint's own classification head, which reads "
                             "the CLS token: use --feature cls")
        if self.per_device_eval_batch_size < 1:
            raise ValueError("--per_device_eval_batch_size must be >= 1")
        if self.dataloader_num_workers < 0:
            raise ValueError("--dataloader_num_workers must be >= 0")
        if self.knn_k < 1:
            raise ValueError(f"--knn_k must be >= 1, got {self.knn_k}")
        if self.knn_temperature <= 0:
            raise ValueError(f"--knn_temperature must be > 0, got {self.knn_temperature}")
        if self.probe_steps < 1:
            raise ValueError(f"--probe_steps must be >= 1, got {self.probe_steps}")
        if self.probe_weight_decay < 0:
            raise ValueError(f"--probe_weight_decay must be >= 0, got {self.probe_weight_decay}")
        if self.max_train_samples is not None and self.max_train_samples < 1:
            raise ValueError("--max_train_samples must be >= 1")
        self.seed_list()  # validate early
        self.baseline_list()
        if (self.builtin_images or self.builtin_split) and (self.train_dir or self.validation_dir or self.dataset_name):
            raise ValueError("--builtin_images/--builtin_split choose the built-in data: drop them with --train_dir "
                             "or --dataset_name")

    def baseline_list(self) -> list[str]:
        if self.baselines.strip().lower() in ("", "none"):
            return []
        names = [b.strip() for b in self.baselines.split(",") if b.strip()]
        unknown = [b for b in names if b not in BASELINES]
        if unknown:
            raise ValueError(f"--baselines takes {', '.join(BASELINES)} or none, got {', '.join(unknown)}")
        return names

    # The GLUE runner's parsing of --seed/--seeds (duplicates, non-integers), shared rather than copied.
    seed_list = FinetuneArguments.seed_list


# ---------------------------------------------------------------------------------------------------------
# Cheap checks (no torch / datasets): run by the recipe before the heavy imports.


def check_data_selection(args: ImageProbeArguments) -> str:
    """``"folder"`` or ``"hub"``; raises ConfigError for an inconsistent choice of data flags."""
    folders = args.train_dir or args.validation_dir
    if folders and args.dataset_name:
        raise ConfigError("give either --dataset_name or --train_dir/--validation_dir, not both")
    if not folders and not args.dataset_name:
        raise ConfigError("give --train_dir and --validation_dir (class sub-folders) or --dataset_name")
    if folders and not (args.train_dir and args.validation_dir):
        missing = "--validation_dir" if args.train_dir else "--train_dir"
        raise ConfigError(f"{missing} is required too: a probe trains on one split and reports on the other")
    for flag in ("train_dir", "validation_dir"):
        path = getattr(args, flag)
        if path and not os.path.isdir(path):
            raise ConfigError(f"--{flag} {path} is not a directory")
    return "folder" if folders else "hub"


def scan_image_folder(path: str, flag: str = "train_dir") -> dict[str, list[str]]:
    """``{class name: [image paths]}`` of a ``path/<class>/<image>`` folder; DataError when it is not one.

    Image files are those the ``imagefolder`` builder reads, the same set pretraining streams."""
    from hfssl.data.images import image_extensions

    extensions = image_extensions()

    def _is_image(name: str) -> bool:
        return os.path.splitext(name)[1].lower() in extensions

    entries = sorted(os.listdir(path))
    loose = [e for e in entries if os.path.isfile(os.path.join(path, e)) and _is_image(e)]
    classes: dict[str, list[str]] = {}
    for entry in entries:
        sub = os.path.join(path, entry)
        if os.path.isdir(sub) and not entry.startswith("."):
            images = [os.path.join(sub, f) for f in sorted(os.listdir(sub)) if _is_image(f)]
            if images:
                classes[entry] = images
    if loose and not classes:
        raise DataError(f"--{flag} {path} holds {len(loose)} images but no class sub-folders; a probe needs "
                        f"labels: put each class in its own folder ({path}/<class>/<image>)")
    if loose:
        raise DataError(f"--{flag} {path} mixes {len(loose)} loose images (e.g. {loose[0]}) with class "
                        "sub-folders; move them into a class folder")
    if not classes:
        raise DataError(f"--{flag} {path} has no class sub-folders with images "
                        f"(.png, .jpg, ...); expected {path}/<class>/<image>")
    return classes


# ---------------------------------------------------------------------------------------------------------
# Data


@dataclass
class ImageSplits:
    """Train and validation sets with integer labels in ``label_column`` (0..num_classes-1)."""

    train: datasets.Dataset
    validation: datasets.Dataset
    class_names: list[str]
    image_column: str
    label_column: str
    label_to_id: Optional[dict[Any, int]] = None  # raw label value -> id, when the column is not a ClassLabel


def _load_folders(args: ImageProbeArguments) -> ImageSplits:
    import datasets

    train = scan_image_folder(args.train_dir, "train_dir")
    validation = scan_image_folder(args.validation_dir, "validation_dir")
    if len(set(train) | set(validation)) < 2:
        raise DataError(f"--train_dir {args.train_dir} has a single class ({next(iter(train))}); "
                        "a probe needs at least two class sub-folders")
    # Explicit file lists and drop_labels=False: the builder then labels every file by its parent folder.
    # Left to infer, it silently drops the labels when the two folders sit at different depths.
    files = {"train": [f for fs in train.values() for f in fs],
             "validation": [f for fs in validation.values() for f in fs]}
    with quiet_datasets():  # local files: no "Downloading data" / "Generating split" bars
        dsd = datasets.load_dataset("imagefolder", data_files=files, drop_labels=False)
    names = dsd["train"].features["label"].names
    return ImageSplits(dsd["train"], dsd["validation"], list(names), "image", "label")


def _load_hub(args: ImageProbeArguments) -> ImageSplits:
    import datasets

    try:
        dsd = datasets.load_dataset(args.dataset_name, args.dataset_config_name)
    except (FileNotFoundError, ConnectionError, ValueError, datasets.exceptions.DatasetNotFoundError) as exc:
        raise DataError(f"--dataset_name {args.dataset_name}: cannot load it "
                        f"({str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__})") from None
    if "train" not in dsd:
        raise DataError(f"--dataset_name {args.dataset_name} has no train split (splits: {', '.join(dsd)})")
    val_split = next((s for s in ("validation", "test") if s in dsd), None)
    if val_split is None:
        raise DataError(f"--dataset_name {args.dataset_name} has no validation or test split "
                        f"(splits: {', '.join(dsd)})")
    if val_split != "validation":
        _logger().info("%s has no validation split: reporting on its %s split", args.dataset_name, val_split)
    train, validation = dsd["train"], dsd[val_split]
    for column in (args.image_column_name, args.label_column_name):
        if column not in train.column_names:
            flag = "--image_column_name" if column == args.image_column_name else "--label_column_name"
            raise DataError(f"--dataset_name {args.dataset_name} has no column {column!r} "
                            f"(columns: {', '.join(train.column_names)}); set {flag}")
    label_feature = train.features[args.label_column_name]
    label_to_id = None
    if isinstance(label_feature, datasets.ClassLabel):
        names = list(label_feature.names)
    else:
        # Plain ints or strings: one id per distinct value over both splits, so the ids agree. The mapping
        # is applied when the label column is read (a .map() here would decode and rewrite every image).
        values = sorted((set(train[args.label_column_name]) | set(validation[args.label_column_name])) - {None}, key=str)
        names = [str(v) for v in values]
        label_to_id = {v: i for i, v in enumerate(values)}
    if len(names) < 2:
        raise DataError(f"--dataset_name {args.dataset_name}: column {args.label_column_name!r} has a single "
                        "class; a probe needs at least two")
    return ImageSplits(train, validation, names, args.image_column_name, args.label_column_name, label_to_id)


def load_image_splits(args: ImageProbeArguments) -> ImageSplits:
    """Read the labelled train/validation images (folders or a Hub dataset), non-streaming."""
    splits = _load_folders(args) if check_data_selection(args) == "folder" else _load_hub(args)
    if len(splits.train) == 0 or len(splits.validation) == 0:
        raise DataError("the training or validation set is empty")
    if args.max_train_samples is not None and args.max_train_samples < len(splits.train):
        # A random subset: image folders come sorted by class, so the first N would be one or two classes.
        splits.train = splits.train.shuffle(seed=args.seed).select(range(args.max_train_samples))
    return splits


# ---------------------------------------------------------------------------------------------------------
# Model and features


def _logger() -> Any:
    from hfssl.logging import get_logger

    return get_logger(__name__)


def load_image_processor(model_name_or_path: str) -> Any:
    """The checkpoint's own image processor; ConfigError when it was saved without one."""
    from transformers import AutoImageProcessor

    try:
        return AutoImageProcessor.from_pretrained(model_name_or_path)
    except (OSError, ValueError):
        raise ConfigError(f"--model_name_or_path {model_name_or_path} has no image processor "
                          "(preprocessor_config.json); save one with the model, e.g. "
                          "ViTImageProcessor(size=...).save_pretrained(dir)") from None


def load_backbone(model_name_or_path: str, init: str = "pretrained", seed: int = 42) -> tuple[PreTrainedModel, Any]:
    """The checkpoint's encoder (random weights for ``init="random"``) and its processor.

    The encoder is what ``AutoModel`` gives (no pooler for a ViT: the probe never reads it), except for an MAE
    export, whose encoder comes as a ``ViTModel`` that sees every patch (see ``load_vit_encoder``).
    """
    from transformers import set_seed

    from hfssl.models.vision import load_vit_encoder

    processor = load_image_processor(model_name_or_path)
    if init == "random":
        set_seed(seed)
    model = load_vit_encoder(model_name_or_path, init)
    model.eval()
    return model, processor


def pool_features(last_hidden_state: torch.Tensor, feature: str, num_prefix_tokens: int = 1) -> torch.Tensor:
    """``cls``: the first token; ``mean``: the mean of the patch tokens (after the CLS/register tokens)."""
    if feature == "cls":
        return last_hidden_state[:, 0]
    return last_hidden_state[:, num_prefix_tokens:].mean(dim=1)


class _Preprocess:
    """DataLoader collate: PIL images -> the processor's ``pixel_values`` (picklable for worker processes)."""

    def __init__(self, processor: Any, image_column: str) -> None:
        self.processor = processor
        self.image_column = image_column

    def __call__(self, examples: list[dict[str, Any]]) -> torch.Tensor:
        from hfssl.data.images import to_rgb  # transparency onto white, as training and the processor do

        return self.processor(images=[to_rgb(ex[self.image_column]) for ex in examples],
                              return_tensors="pt")["pixel_values"]


def extract_image_features(model: Optional[PreTrainedModel], processor: Any, dataset: datasets.Dataset,
                           image_column: str, feature: str = "cls", batch_size: int = 64,
                           device: torch.device | str = "cpu", num_workers: int = 0,
                           desc: str = "features") -> torch.Tensor:
    """One float32 vector per image of ``dataset`` (in order), from the frozen encoder; returned on the CPU.

    ``model=None``: the processor's pixel values themselves, flattened (the raw-pixels baseline)."""
    import torch
    from torch.utils.data import DataLoader

    from hfssl.logging import progress_bar

    if image_column not in dataset.column_names:
        raise DataError(f"no image column {image_column!r} (columns: {', '.join(dataset.column_names)}); "
                        "set --image_column_name")
    # Only the image column is decoded; labels are read as a column elsewhere.
    images = dataset.select_columns([image_column])
    loader = DataLoader(images, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                        collate_fn=_Preprocess(processor, image_column),
                        pin_memory=torch.device(device).type == "cuda")
    prefix = 1 + int(getattr(getattr(model, "config", None), "num_register_tokens", 0) or 0)
    if model is not None:
        model.to(device)
    chunks = []
    with torch.no_grad():
        for pixel_values in progress_bar(loader, desc=desc, leave=False):
            if model is None:  # the raw-pixels baseline
                chunks.append(pixel_values.flatten(1).float())
                continue
            pixel_values = pixel_values.to(device, non_blocking=True)
            hidden = model(pixel_values=pixel_values).last_hidden_state
            chunks.append(pool_features(hidden, feature, prefix).float().cpu())
    return torch.cat(chunks)


# ---------------------------------------------------------------------------------------------------------
# Linear probe and kNN on fixed features


@dataclass
class ProbeResult:
    accuracy: float
    train_accuracy: float
    train_loss: float


@dataclass
class LinearHead:
    """The probe as an ``nn.Linear`` on RAW features: the standardisation folded into weight and bias."""

    weight: torch.Tensor  # (num_classes, dim), nn.Linear layout
    bias: torch.Tensor    # (num_classes,)


def standardise(train: torch.Tensor, *others: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Zero mean, unit variance per dimension with the TRAINING statistics (applied to every set)."""
    mean, std = _feature_stats(train)
    return tuple((x - mean) / std for x in (train, *others))


def _feature_stats(train: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    import torch

    std = train.std(dim=0)
    # A constant dimension carries nothing; dividing by ~0 would blow up its validation values.
    return train.mean(dim=0), torch.where(std > 1e-6, std, torch.ones_like(std))


def linear_probe(train_x: torch.Tensor, train_y: torch.Tensor, val_x: torch.Tensor, val_y: torch.Tensor,
                 num_classes: int, steps: int = 300, weight_decay: float = 1e-4,
                 device: torch.device | str = "cpu") -> ProbeResult:
    """Multinomial logistic regression on standardised features, full batch L-BFGS; top-1 accuracy.

    Loss: mean cross-entropy + 0.5 * weight_decay * ||W||^2 (the bias is not penalised). The problem is
    convex and starts from zero weights, so the result depends on no seed.
    """
    return linear_probe_head(train_x, train_y, val_x, val_y, num_classes, steps, weight_decay, device)[0]


def linear_probe_head(train_x: torch.Tensor, train_y: torch.Tensor, val_x: torch.Tensor, val_y: torch.Tensor,
                      num_classes: int, steps: int = 300, weight_decay: float = 1e-4,
                      device: torch.device | str = "cpu") -> tuple[ProbeResult, LinearHead]:
    """:func:`linear_probe`, plus the trained probe as a :class:`LinearHead` on raw features (for LP-FT).

    Folding ``((x - mu) / sigma) @ W + b`` into ``x @ (W / sigma) + (b - (mu / sigma) @ W)`` is exact, so a
    classification head loaded with it predicts what the probe predicts, and the probe itself keeps
    training on well-conditioned standardised features.
    """
    import torch
    import torch.nn.functional as F

    train_x, val_x = train_x.float(), val_x.float()
    mean, std = _feature_stats(train_x)
    train_x, val_x = standardise(train_x, val_x)
    train_x, val_x = train_x.to(device), val_x.to(device)
    train_y, val_y = train_y.long().to(device), val_y.long().to(device)
    weight = torch.zeros(train_x.shape[1], num_classes, device=device, requires_grad=True)
    bias = torch.zeros(num_classes, device=device, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], lr=1.0, max_iter=steps, history_size=20,
                                  tolerance_grad=1e-9, tolerance_change=1e-12, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(train_x @ weight + bias, train_y) + 0.5 * weight_decay * weight.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    with torch.no_grad():
        train_logits = train_x @ weight + bias
        train_loss = F.cross_entropy(train_logits, train_y).item()
        train_acc = (train_logits.argmax(1) == train_y).float().mean().item()
        val_acc = ((val_x @ weight + bias).argmax(1) == val_y).float().mean().item()
        scaled = weight / std.to(device)[:, None]
        head = LinearHead(weight=scaled.T.contiguous().cpu(), bias=(bias - mean.to(device) @ scaled).cpu())
    return ProbeResult(accuracy=val_acc, train_accuracy=train_acc, train_loss=train_loss), head


def knn_predict(train_x: torch.Tensor, train_y: torch.Tensor, query_x: torch.Tensor, num_classes: int,
                k: int = 20, temperature: float = 0.07, device: torch.device | str = "cpu") -> torch.Tensor:
    """Weighted kNN (DINO): cosine similarity, the ``k`` nearest vote with weight ``exp(sim / temperature)``."""
    import torch
    import torch.nn.functional as F

    bank = F.normalize(train_x.float().to(device), dim=1)
    labels = train_y.long().to(device)
    k = min(k, bank.shape[0])
    # Bound the (chunk, N) similarity matrix to ~64M floats whatever the training-set size.
    chunk = max(1, (1 << 26) // bank.shape[0])
    preds = []
    for start in range(0, query_x.shape[0], chunk):
        q = F.normalize(query_x[start:start + chunk].float().to(device), dim=1)
        sims, idx = (q @ bank.T).topk(k, dim=1)
        votes = torch.zeros(q.shape[0], num_classes, device=device)
        votes.scatter_add_(1, labels[idx], (sims / temperature).exp())
        preds.append(votes.argmax(1).cpu())
    return torch.cat(preds)


# ---------------------------------------------------------------------------------------------------------
# End to end


def _device() -> torch.device:
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _labels(dataset: datasets.Dataset, column: str, num_classes: int,
            label_to_id: Optional[dict[Any, int]] = None) -> torch.Tensor:
    import torch

    if column not in dataset.column_names:
        raise DataError(f"no label column {column!r} (columns: {', '.join(dataset.column_names)}); "
                        "set --label_column_name")
    values = dataset[column]
    if label_to_id is not None:
        values = [label_to_id.get(v) for v in values]
    if any(v is None for v in values):
        raise DataError(f"label column {column!r} has empty values; every image needs a label")
    labels = torch.tensor(values, dtype=torch.long)
    if labels.numel() and (labels.min() < 0 or labels.max() >= num_classes):
        raise DataError(f"label column {column!r} has values outside 0..{num_classes - 1} (unlabelled rows?)")
    return labels


@dataclass
class _Row:
    """One line of the table: an encoder (or the pixels) probed once per seed."""

    name: str
    init: str
    feature_dim: int = 0
    probe: dict[int, ProbeResult] = field(default_factory=dict)
    knn: dict[int, float] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        from hfssl.evaluation.report import summarise

        return {"name": self.name, "init": self.init, "feature_dim": self.feature_dim,
                "linear_probe": summarise({s: r.accuracy for s, r in self.probe.items()}),
                "knn": summarise(self.knn)}


def run(args: ImageProbeArguments) -> dict[str, Any]:
    """Features, linear probe and kNN of the model and the baselines; writes ``output_dir/results.json``
    and prints the table."""
    import torch

    from hfssl.evaluation.args import check_model_path
    from hfssl.logging import setup_logging
    from hfssl.run_info import redact, write_json_atomic

    setup_logging(True)
    logger = _logger()
    model_path = check_model_path(args.model_name_or_path)
    check_data_selection(args)
    started = time.time()
    splits = load_image_splits(args)
    num_classes = len(splits.class_names)
    train_y = _labels(splits.train, splits.label_column, num_classes, splits.label_to_id)
    val_y = _labels(splits.validation, splits.label_column, num_classes, splits.label_to_id)
    unseen = sorted(set(val_y.tolist()) - set(train_y.tolist()))
    if unseen:
        logger.warning("%d validation classes have no training image (e.g. %s): they count as errors",
                       len(unseen), splits.class_names[unseen[0]])
    device = _device()
    seeds = args.seed_list()
    baselines = args.baseline_list()
    logger.info("%s (%s, %s features): %d train / %d validation images, %d classes, on %s; baselines: %s", model_path,
                args.init, args.feature, len(train_y), len(val_y), num_classes, device, ", ".join(baselines) or "none")
    timings: dict[str, float] = {"features": 0.0, "linear_probe": 0.0, "knn": 0.0}
    processor = load_image_processor(model_path)

    def evaluate(row: _Row, seed: int, model: Optional[PreTrainedModel]) -> None:
        tick = time.time()
        feats = {name: extract_image_features(model, processor, ds, splits.image_column, args.feature,
                                              args.per_device_eval_batch_size, device, args.dataloader_num_workers,
                                              desc=f"{row.name} {name} features")
                 for name, ds in (("train", splits.train), ("validation", splits.validation))}
        timings["features"] += time.time() - tick
        tick = time.time()
        row.probe[seed] = linear_probe(feats["train"], train_y, feats["validation"], val_y, num_classes,
                                       args.probe_steps, args.probe_weight_decay, device)
        timings["linear_probe"] += time.time() - tick
        tick = time.time()
        predicted = knn_predict(feats["train"], train_y, feats["validation"], num_classes, args.knn_k,
                                args.knn_temperature, device)
        row.knn[seed] = (predicted == val_y).float().mean().item()
        timings["knn"] += time.time() - tick
        row.feature_dim = int(feats["train"].shape[1])

    name = os.path.basename(str(model_path).rstrip("/"))
    rows = [_Row(name, args.init)]
    # A pretrained encoder's features depend on no seed: probed once. Random inits are drawn per seed.
    for seed in seeds if args.init == "random" else [args.seed]:
        model, _ = load_backbone(model_path, args.init, seed)
        evaluate(rows[0], seed, model)
        del model
    if "random" in baselines and args.init != "random":
        rows.append(_Row("random init (same architecture)", "random"))
        for seed in seeds:
            model, _ = load_backbone(model_path, "random", seed)
            evaluate(rows[-1], seed, model)
            del model
    if "pixels" in baselines:
        rows.append(_Row("raw pixels", "-"))
        evaluate(rows[-1], args.seed, None)
    timings = {k: round(v, 2) for k, v in timings.items()}
    timings["total"] = round(time.time() - started, 2)
    main_probe = next(iter(rows[0].probe.values()))
    summaries = [row.summary() for row in rows]
    results = {
        "model_name_or_path": model_path,
        "mode": "linear_probe",
        "init": args.init,
        "feature": args.feature,
        "feature_dim": rows[0].feature_dim,
        "num_train": len(train_y),
        "num_validation": len(val_y),
        "num_classes": num_classes,
        "class_names": splits.class_names,
        # The evaluated model (the mean over seeds for --init random): kept flat for scripts that read it.
        "linear_probe": {**asdict(main_probe), "accuracy": summaries[0]["linear_probe"]["mean"],
                         "steps": args.probe_steps, "weight_decay": args.probe_weight_decay},
        "knn": {"accuracy": summaries[0]["knn"]["mean"], "k": min(args.knn_k, len(train_y)),
                "temperature": args.knn_temperature},
        # Every row of the table (the model first, then the baselines), mean ± std over their seeds.
        "rows": summaries,
        # The accuracy of always answering the most frequent validation class: what "chance" means here.
        "majority_accuracy": torch.bincount(val_y, minlength=num_classes).max().item() / len(val_y),
        "seconds": timings,
        "config": redact(asdict(args)),
    }
    path = write_json_atomic(os.path.join(args.output_dir, "results.json"), results)
    print(render(results), flush=True)
    logger.info("wrote %s", path)
    return results


def _cell(summary: dict[str, Any]) -> str:
    text = f"{100 * summary['mean']:.2f}"
    return text + (f" ± {100 * summary['std']:.2f}" if len(summary["per_seed"]) > 1 else "")


def render(results: dict[str, Any]) -> str:
    """A small markdown table: top-1 accuracies x100 (mean ± std over seeds), baselines under the model."""
    header = ["Model", "Init", "Feature", "Linear probe top-1", f"kNN top-1 (k={results['knn']['k']})", "Dim"]
    rows = results.get("rows") or []
    body = [[row["name"], row["init"], results["feature"] if row["init"] != "-" else "pixels",
             _cell(row["linear_probe"]), _cell(row["knn"]), str(row["feature_dim"])] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in body)) for i, h in enumerate(header)]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |" for cells in (header, *body)]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    seeds = results["config"].get("seeds")
    lines.append(f"{results['num_train']} train / {results['num_validation']} validation images, "
                 f"{results['num_classes']} classes; majority class {100 * results['majority_accuracy']:.2f}"
                 + (f"; random inits: seeds {seeds}" if seeds else "") + ".")
    return "\n".join(lines)


def quiet_datasets() -> Any:
    """A context in which ``datasets`` draws no progress bars (restored after): reading local image folders
    is not a download, and its "Downloading data" / "Generating split" bars only clutter the output."""
    import contextlib

    import datasets

    @contextlib.contextmanager
    def quiet() -> Any:
        was_enabled = datasets.is_progress_bar_enabled()
        datasets.disable_progress_bars()
        try:
            yield
        finally:
            if was_enabled:
                datasets.enable_progress_bars()

    return quiet()


__all__ = [
    "ImageProbeArguments",
    "ImageSplits",
    "LinearHead",
    "ProbeResult",
    "check_data_selection",
    "extract_image_features",
    "knn_predict",
    "linear_probe",
    "linear_probe_head",
    "load_backbone",
    "load_image_processor",
    "load_image_splits",
    "pool_features",
    "quiet_datasets",
    "render",
    "run",
    "scan_image_folder",
    "standardise",
]
