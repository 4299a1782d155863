"""Configuration dataclasses shared by the recipes.

Field names follow the transformers example scripts (``run_clm.py``, ``run_mlm.py``) and
``transformers.TrainingArguments`` so the flags are familiar. Recipes add their own small
dataclass for objective-specific options.
"""

from __future__ import annotations

import dataclasses
import json
import os
import typing
from dataclasses import dataclass, field
from typing import Any, Optional

from hfssl.errors import ConfigError


def with_defaults(cls: type, **defaults: Any) -> type:
    """A subclass of dataclass ``cls`` with other default values (help texts kept).

    Lets a recipe choose defaults suited to it (e.g. a short CPU run) without touching the shared
    argument classes. Lives here, beside the dataclasses, so a recipe can define its arguments and
    answer ``--help`` without importing torch.
    """
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(defaults) - set(known)
    if unknown:
        raise TypeError(f"{cls.__name__} has no fields {sorted(unknown)}")
    fields = [(name, hints[name], dataclasses.field(default=value, metadata=known[name].metadata))
              for name, value in defaults.items()]
    return dataclasses.make_dataclass(cls.__name__, fields, bases=(cls,))


def check_output_dir(path: str, flag: str = "--output_dir") -> None:
    """Raise ValueError (one line, at parse time) when ``path`` cannot become a directory: it is an
    existing file, or one of its parents is."""
    if not path:
        raise ValueError(f"{flag} must not be empty")
    probe = os.path.abspath(os.path.expanduser(path))
    while not os.path.exists(probe):
        parent = os.path.dirname(probe)
        if parent == probe:
            return
        probe = parent
    if not os.path.isdir(probe):
        if probe == os.path.abspath(os.path.expanduser(path)):
            raise ValueError(f"{flag} {path} is a file, not a directory: give a directory (created if missing)")
        raise ValueError(f"{flag} {path} cannot be created: {probe} is a file, not a directory")


def require_max_steps(args: TrainingArguments) -> None:
    """The pretraining recipes stream their data, which has no length to count epochs in: they need --max_steps."""
    if args.max_steps <= 0:
        raise ConfigError(f"--max_steps {args.max_steps}: give a positive number of optimizer steps (the training "
                          "data is streamed, so there is no length to count --num_train_epochs in)")


_MIXED_PRECISION = ("no", "fp16", "bf16")
_HUB_STRATEGIES = ("end", "every_save", "checkpoint")
_REPORT_TO = ("none", "tensorboard", "wandb", "all")
_COMPILE_MODES = (None, "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


@dataclass
class ModelArguments:
    model_name_or_path: Optional[str] = field(
        default=None, metadata={"help": "Continue pretraining from this checkpoint (dir or Hub id)."}
    )
    model_type: Optional[str] = field(
        default=None, metadata={"help": "Architecture when training from scratch, e.g. gpt2, llama, bert."}
    )
    model_size: str = field(default="tiny", metadata={"help": "Size preset: tiny, mini, small or base."})
    config_overrides: Optional[str] = field(
        default=None,
        metadata={"help": 'Override preset fields, e.g. "num_hidden_layers=2,hidden_size=64".'},
    )
    tokenizer_name: Optional[str] = field(
        default=None,
        metadata={"help": "Tokenizer dir or Hub id (default: the model's, or one trained on the corpus)."},
    )
    vocab_size: int = field(
        default=8000, metadata={"help": "Vocabulary size of the tokenizer trained when no --tokenizer_name is given."}
    )
    pad_vocab_size_to_multiple_of: Optional[int] = field(
        default=None,
        metadata={"help": "Train with the embedding/LM head padded to a multiple of this (e.g. 64: faster "
                          "matmuls on GPUs); the loss ignores the extra rows and the export keeps the true "
                          "vocabulary. Causal LM only."},
    )

    def __post_init__(self) -> None:
        if self.pad_vocab_size_to_multiple_of is not None and self.pad_vocab_size_to_multiple_of < 1:
            raise ValueError("--pad_vocab_size_to_multiple_of must be a positive integer")


@dataclass
class VisionModelArguments:
    """ViT backbone flags (names as transformers' run_mim.py)."""

    model_name_or_path: Optional[str] = field(
        default=None, metadata={"help": "Continue pretraining from this ViT checkpoint (dir or Hub id)."}
    )
    model_size: str = field(default="tiny", metadata={"help": "Size preset: tiny, mini, small (ViT-S) or base (ViT-B)."})
    config_overrides: Optional[str] = field(
        default=None, metadata={"help": 'Override preset fields, e.g. "num_hidden_layers=6,hidden_size=256".'}
    )
    image_size: int = field(default=32, metadata={"help": "Square input resolution (pixels) when training from scratch."})
    patch_size: int = field(default=4, metadata={"help": "Patch size (pixels) when training from scratch."})
    image_processor_name: Optional[str] = field(
        default=None, metadata={"help": "Image processor dir or Hub id (default: the checkpoint's, or a new one)."}
    )

    def __post_init__(self) -> None:
        if self.image_size < 1 or self.patch_size < 1 or self.image_size % self.patch_size:
            raise ValueError(f"--image_size ({self.image_size}) must be a positive multiple of --patch_size "
                             f"({self.patch_size})")


@dataclass
class DataArguments:
    dataset_name: Optional[str] = field(default=None, metadata={"help": "Hub dataset id."})
    dataset_config_name: Optional[str] = field(default=None, metadata={"help": "Hub dataset config."})
    train_file: Optional[list[str]] = field(
        default=None,
        metadata={"help": "Local files or globs (.txt, .jsonl/.json, .parquet, .csv, optionally .gz)."},
    )
    validation_file: Optional[list[str]] = field(default=None, metadata={"help": "Validation files or globs."})
    validation_split_percentage: int = field(
        default=0,
        metadata={"help": "Hold out this percentage of the training text for validation when there is no "
                          "--validation_file (as run_clm.py): documents are cut into passages of about 2,000 "
                          "characters at paragraph breaks and every (100/P)th passage is held out, so even one "
                          "big file splits. 0: no hold-out."},
    )
    validation_split_documents: int = field(
        default=0,
        metadata={"help": "Hold out this many leading documents of the training stream for validation instead "
                          "(each .txt file is one document); replaces --validation_split_percentage."},
    )
    text_column: str = field(default="text", metadata={"help": "Column holding the text (jsonl/csv/parquet/Hub)."})
    max_seq_length: int = field(default=128, metadata={"help": "Tokens per training sequence."})
    document_boundaries: bool = field(
        default=False,
        metadata={"help": "CLM packing: restart position_ids at each document so attention stays inside it."},
    )
    encoding_errors: str = field(
        default="strict", metadata={"help": "strict (fail on non-UTF-8 input) or replace."}
    )
    shuffle_buffer_size: int = field(
        default=0, metadata={"help": "Streaming shuffle buffer (examples); 0 keeps corpus order."}
    )
    min_document_chars: int = field(default=1, metadata={"help": "Drop documents shorter than this."})
    strip_gutenberg: bool = field(
        default=True, metadata={"help": "Strip Project Gutenberg licence headers and footers."}
    )
    max_train_samples: Optional[int] = field(
        default=None, metadata={"help": "Use at most this many training documents (after the validation hold-out)."}
    )
    preprocessing_num_workers: int = field(default=0, metadata={"help": "DataLoader workers per process."})

    def __post_init__(self) -> None:
        if self.encoding_errors not in ("strict", "replace"):
            raise ValueError(f"--encoding_errors must be strict or replace, got {self.encoding_errors!r}")
        if self.max_seq_length < 8:
            raise ValueError(f"--max_seq_length must be at least 8, got {self.max_seq_length}")
        if self.dataset_name and self.train_file:
            raise ValueError("give either --dataset_name or --train_file, not both")
        if not 0 <= self.validation_split_percentage < 100:
            raise ValueError(f"--validation_split_percentage must be in [0, 100), got {self.validation_split_percentage}")
        if self.max_train_samples is not None and self.max_train_samples < 1:
            raise ValueError(f"--max_train_samples must be at least 1, got {self.max_train_samples}")
        if self.validation_split_documents < 0:
            raise ValueError(f"--validation_split_documents must be >= 0, got {self.validation_split_documents}")


@dataclass
class HubArguments:
    push_to_hub: bool = field(default=False, metadata={"help": "Push the exported model to the Hub."})
    hub_model_id: Optional[str] = field(default=None, metadata={"help": "Repo id, e.g. user/my-model."})
    hub_token: Optional[str] = field(
        default=None, metadata={"help": "Hub token (default: HF_TOKEN or the saved login). Never saved."}
    )
    hub_private_repo: bool = field(default=False, metadata={"help": "Create the repo as private."})
    hub_revision: Optional[str] = field(default=None, metadata={"help": "Branch to push to."})
    hub_strategy: str = field(
        default="end", metadata={"help": "end, every_save or checkpoint (as transformers.Trainer)."}
    )

    def __post_init__(self) -> None:
        if self.hub_strategy not in _HUB_STRATEGIES:
            raise ValueError(f"--hub_strategy must be one of {', '.join(_HUB_STRATEGIES)}")


@dataclass
class TrainingArguments(HubArguments):
    output_dir: str = field(default="out", metadata={"help": "Where checkpoints, logs and the export go."})
    overwrite_output_dir: bool = field(
        default=False, metadata={"help": "Start afresh even if output_dir holds checkpoints."}
    )
    seed: int = field(default=42, metadata={"help": "Random seed."})
    max_steps: int = field(default=-1, metadata={"help": "Optimizer steps; overrides num_train_epochs if > 0."})
    num_train_epochs: float = field(default=1.0, metadata={"help": "Passes over the training stream."})
    per_device_train_batch_size: int = field(default=8, metadata={"help": "Sequences per device per micro-batch."})
    per_device_eval_batch_size: int = field(default=8, metadata={"help": "Sequences per device for evaluation."})
    gradient_accumulation_steps: int = field(default=1, metadata={"help": "Micro-batches per optimizer step."})
    learning_rate: float = field(default=5e-4, metadata={"help": "Peak learning rate."})
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW weight decay (not on biases/norms)."})
    adam_beta1: float = 0.9
    adam_beta2: float = 0.98
    adam_epsilon: float = 1e-8
    lr_scheduler_type: str = field(default="cosine", metadata={"help": "Any transformers.get_scheduler name."})
    lr_scheduler_kwargs: Optional[str] = field(
        default=None,
        metadata={"help": 'Extra scheduler arguments as JSON (as transformers\' flag), e.g. '
                          '\'{"num_decay_steps": 2000, "min_lr_ratio": 0.1}\' for warmup_stable_decay.'},
    )
    warmup_steps: int = field(default=0, metadata={"help": "Linear warmup steps (overrides warmup_ratio)."})
    warmup_ratio: float = field(default=0.0, metadata={"help": "Warmup as a fraction of max_steps."})
    max_grad_norm: float = field(default=1.0, metadata={"help": "Gradient clipping; 0 disables."})
    mixed_precision: str = field(default="no", metadata={"help": "no, fp16 or bf16."})
    torch_compile: bool = field(default=False, metadata={"help": "Compile the model with torch.compile."})
    torch_compile_backend: Optional[str] = field(
        default=None, metadata={"help": "torch.compile backend (default inductor); setting it implies --torch_compile."}
    )
    torch_compile_mode: Optional[str] = field(
        default=None,
        metadata={"help": "torch.compile mode: default, reduce-overhead (CUDA graphs), max-autotune, "
                          "max-autotune-no-cudagraphs; setting it implies --torch_compile."},
    )
    use_regional_compilation: Optional[bool] = field(
        default=None,
        metadata={"help": "Compile each repeated layer separately instead of the whole model. Default: per "
                          "layer for encoders (BERT, ViT), whole model for generative decoders (GPT-2, Llama)."},
    )
    tf32: Optional[bool] = field(
        default=None,
        metadata={"help": "Allow TF32 matmuls/convolutions on Ampere+ GPUs (as transformers' --tf32); "
                          "default: leave PyTorch's setting."},
    )
    checkpointing_steps: int = field(default=500, metadata={"help": "Save a checkpoint every N steps; 0 never."})
    save_total_limit: Optional[int] = field(default=2, metadata={"help": "Keep at most this many checkpoints."})
    save_on_each_node: bool = field(
        default=False,
        metadata={"help": "Several nodes without a shared filesystem (DDP): every node writes whole checkpoints "
                          "into its own output_dir (as transformers' flag). Leave it off when output_dir is shared."},
    )
    resume_from_checkpoint: Optional[str] = field(
        default=None, metadata={"help": "'latest' or a checkpoint directory."}
    )
    logging_steps: int = field(default=10, metadata={"help": "Log every N optimizer steps."})
    eval_steps: int = field(default=0, metadata={"help": "Evaluate every N steps; 0 only at the end."})
    max_eval_batches: int = field(
        default=50, metadata={"help": "Cap on validation batches per process per evaluation; 0 evaluates all."}
    )
    report_to: str = field(default="none", metadata={"help": "none, tensorboard, wandb or all."})
    dataloader_num_workers: int = field(default=0, metadata={"help": "DataLoader worker processes."})

    def __post_init__(self) -> None:
        super().__post_init__()
        check_output_dir(self.output_dir)
        # transformers' convention: -1 means "not set, count epochs"; 0 and other negatives are mistakes.
        if self.max_steps == 0 or self.max_steps < -1:
            raise ValueError(f"--max_steps must be a positive number of optimizer steps, got {self.max_steps}")
        if self.mixed_precision not in _MIXED_PRECISION:
            raise ValueError(f"--mixed_precision must be one of {', '.join(_MIXED_PRECISION)}")
        if self.report_to not in _REPORT_TO:
            raise ValueError(f"--report_to must be one of {', '.join(_REPORT_TO)}")
        if self.gradient_accumulation_steps < 1:
            raise ValueError("--gradient_accumulation_steps must be >= 1")
        if self.per_device_train_batch_size < 1:
            raise ValueError("--per_device_train_batch_size must be >= 1")
        if self.max_steps <= 0 and self.num_train_epochs <= 0:
            raise ValueError("set --max_steps > 0 or --num_train_epochs > 0")
        if self.push_to_hub and not self.hub_model_id:
            raise ValueError("--push_to_hub needs --hub_model_id (e.g. user/my-model)")
        if self.lr_scheduler_kwargs:
            try:
                kwargs = json.loads(self.lr_scheduler_kwargs)
            except ValueError as exc:
                raise ValueError(f"--lr_scheduler_kwargs must be a JSON object: {exc}") from None
            if not isinstance(kwargs, dict):
                raise ValueError("--lr_scheduler_kwargs must be a JSON object, e.g. '{\"num_decay_steps\": 100}'")
        if self.torch_compile_mode not in _COMPILE_MODES:
            raise ValueError(f"--torch_compile_mode must be one of {', '.join(m for m in _COMPILE_MODES if m)}")
        # As transformers.TrainingArguments: choosing a backend or a mode means compiling.
        if self.torch_compile_backend or self.torch_compile_mode:
            self.torch_compile = True
