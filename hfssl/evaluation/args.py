"""Flags of the GLUE fine-tuning recipe, named as in transformers' ``run_glue.py`` where they overlap.

Fine-tuning a small labelled set wants different defaults from pretraining (a linear schedule, a few
epochs, a peak LR that depends on the model's width), so these dataclasses stand apart from ``hfssl.config``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Optional

from hfssl.errors import ConfigError

MODES = ("finetune", "linear_probe", "lp_ft")
HUB_GLUE = "nyu-mll/glue"  # where the tasks come from without --glue_dir
INITS = ("pretrained", "random")


@dataclass
class GlueDataArguments:
    task_name: Optional[str] = field(
        default=None,
        metadata={"help": "GLUE task (cola, sst2, mrpc, stsb, qqp, mnli, qnli, rte, wnli) or 'all'. "
                          "Leave unset for a custom task (--train_file/--validation_file)."},
    )
    glue_dir: Optional[str] = field(
        default=None,
        metadata={"help": "Folder with the official GLUE TSVs (CoLA/, SST-2/, ...). Default: Hub nyu-mll/glue."},
    )
    train_file: Optional[str] = field(default=None, metadata={"help": "Custom task training file (.csv/.jsonl)."})
    validation_file: Optional[str] = field(default=None, metadata={"help": "Custom task validation file."})
    text_columns: Optional[str] = field(
        default=None, metadata={"help": "Custom task: one or two comma-separated text columns, e.g. 'a,b'."}
    )
    label_column: str = field(default="label", metadata={"help": "Custom task: the label column."})
    metric: str = field(default="accuracy", metadata={"help": "Custom task: accuracy, f1, mcc or pearson_spearman."})
    max_seq_length: int = field(default=128, metadata={"help": "Truncate inputs to this many tokens."})
    max_train_samples: Optional[int] = field(default=None, metadata={"help": "Use only the first N training rows."})
    max_eval_samples: Optional[int] = field(default=None, metadata={"help": "Use only the first N dev rows."})
    dataset_cache_dir: Optional[str] = field(default=None, metadata={"help": "datasets cache for the Hub copy."})

    # Which task to run (GLUE name vs custom files) is checked by the runner, after all flags parsed,
    # so that an unknown flag is reported as such rather than as a missing --task_name.
    def __post_init__(self) -> None:
        if self.max_seq_length < 8:
            raise ValueError(f"--max_seq_length must be at least 8, got {self.max_seq_length}")
        for name in ("max_train_samples", "max_eval_samples"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"--{name} must be >= 1")


@dataclass
class FinetuneArguments:
    model_name_or_path: Optional[str] = field(
        default=None, metadata={"help": "Checkpoint dir (any BERT-like encoder with a tokenizer) or Hub id."}
    )
    tokenizer_name: Optional[str] = field(default=None, metadata={"help": "Tokenizer (default: the model's)."})
    output_dir: str = field(default="out", metadata={"help": "Where results.json and per-task logs go."})
    mode: str = field(default="finetune", metadata={"help": "finetune, linear_probe or lp_ft."})
    init: str = field(
        default="pretrained", metadata={"help": "pretrained, or random: same architecture, random weights."}
    )
    seed: int = field(default=42, metadata={"help": "Random seed (used when --seeds is not given)."})
    seeds: Optional[str] = field(default=None, metadata={"help": "Repeat with these seeds, e.g. '1,2,3'."})
    num_train_epochs: float = field(default=3.0, metadata={"help": "Fine-tuning epochs."})
    per_device_train_batch_size: int = field(default=32, metadata={"help": "Training batch size per device."})
    per_device_eval_batch_size: int = field(default=64, metadata={"help": "Evaluation batch size per device."})
    learning_rate: Optional[float] = field(
        default=None,
        metadata={"help": "Peak fine-tuning learning rate. Default: by the model's hidden size, 2e-5 from 768 "
                          "(BERT-base, as run_glue.py), 5e-5 from 512, 1e-4 from 384, 3e-4 below; small models "
                          "do not learn in a few hundred steps at 2e-5 (docs/glue_results.md)."},
    )
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay (not on biases/norms)."})
    warmup_ratio: float = field(default=0.1, metadata={"help": "Linear warmup as a fraction of the steps."})
    lr_scheduler_type: str = field(default="linear", metadata={"help": "Any transformers.get_scheduler name."})
    max_grad_norm: float = field(default=1.0, metadata={"help": "Gradient clipping; 0 disables."})
    lp_epochs: float = field(default=10.0, metadata={"help": "Linear probe: epochs over the cached features."})
    lp_learning_rate: float = field(default=1e-2, metadata={"help": "Linear probe: head learning rate (AdamW)."})
    ft_learning_rate: Optional[float] = field(
        default=None, metadata={"help": "LP-FT: fine-tuning LR after the probe (default: learning_rate / 2)."}
    )
    mixed_precision: str = field(default="no", metadata={"help": "no, fp16 or bf16."})
    logging_steps: int = field(default=20, metadata={"help": "Log the training loss every N steps."})

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"--mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if self.init not in INITS:
            raise ValueError(f"--init must be one of {', '.join(INITS)}, got {self.init!r}")
        if self.mixed_precision not in ("no", "fp16", "bf16"):
            raise ValueError("--mixed_precision must be no, fp16 or bf16")
        if self.num_train_epochs <= 0 and self.mode != "linear_probe":
            raise ValueError("--num_train_epochs must be > 0")
        if self.per_device_train_batch_size < 1 or self.per_device_eval_batch_size < 1:
            raise ValueError("batch sizes must be >= 1")
        if not 0 <= self.warmup_ratio < 1:
            raise ValueError("--warmup_ratio must be in [0, 1)")
        for name in ("learning_rate", "ft_learning_rate", "lp_learning_rate"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"--{name} must be > 0, got {value}")
        self.seed_list()  # validate early

    def seed_list(self) -> list[int]:
        if not self.seeds:
            return [self.seed]
        try:
            seeds = [int(s) for s in self.seeds.split(",") if s.strip()]
        except ValueError:
            raise ValueError(f"--seeds must be comma-separated integers, got {self.seeds!r}") from None
        if not seeds:
            raise ValueError("--seeds is empty")
        if len(set(seeds)) != len(seeds):
            raise ValueError(f"--seeds has duplicates: {self.seeds!r}")
        return seeds

    @property
    def effective_ft_learning_rate(self) -> float:
        if self.ft_learning_rate is not None:
            return self.ft_learning_rate
        if self.learning_rate is None:
            raise ValueError("resolve --learning_rate first (default_learning_rate)")
        return self.learning_rate / 2


# Fine-tuning peak LR by hidden size: (smallest width, LR), widest first. BERT-base's 2e-5 (the paper's and
# run_glue.py's choice) is far too small for narrow models. SST-2, 2000 rows, 189 steps (docs/glue_results.md):
# L2/H128 and L4/H256 stay at (or near) the majority class at 2e-5 and 1e-4 and learn at 3e-4; all-MiniLM-L6-v2
# (H384) gets 78.4 at 2e-5 and 81.7 at 1e-4. The values are the BERT miniatures' grid (Turc et al. 2019).
DEFAULT_LEARNING_RATES = ((768, 2e-5), (512, 5e-5), (384, 1e-4), (0, 3e-4))


def default_learning_rate(hidden_size: int | None) -> float:
    """The fine-tuning LR used when --learning_rate is not given (2e-5 when the width is unknown)."""
    if not hidden_size:
        return DEFAULT_LEARNING_RATES[0][1]
    return next(lr for width, lr in DEFAULT_LEARNING_RATES if hidden_size >= width)


# The checks below need no torch/datasets import, so the recipe runs them before loading the heavy
# modules: a wrong path or flag combination is reported in about a second.


def check_task_selection(data_args: GlueDataArguments) -> str:
    """``"glue"`` or ``"custom"``; raises ConfigError for an inconsistent choice of task flags."""
    custom = data_args.train_file or data_args.validation_file
    if custom and data_args.task_name:
        raise ConfigError("give either --task_name or --train_file/--validation_file, not both")
    if not custom and not data_args.task_name:
        raise ConfigError("give --task_name (e.g. sst2 or all) or --train_file and --validation_file")
    if custom and not (data_args.train_file and data_args.validation_file and data_args.text_columns):
        raise ConfigError("a custom task needs --train_file, --validation_file and --text_columns")
    if data_args.glue_dir and not os.path.isdir(data_args.glue_dir):
        raise ConfigError(f"--glue_dir {data_args.glue_dir} is not a directory")
    if not custom and not data_args.glue_dir:
        _check_hub_glue(data_args.task_name)
    return "custom" if custom else "glue"


def _check_hub_glue(task_name: str) -> None:
    """Without --glue_dir the tasks come from the Hub: say at once when it cannot be reached (``datasets``
    would retry for ~25 s first). Offline mode passes: ``datasets`` then looks in its cache, and fails fast."""
    from hfssl.pretrained import check_dataset_source

    try:
        check_dataset_source(HUB_GLUE, "--task_name")
    except ConfigError:
        raise ConfigError(f"--task_name {task_name} reads {HUB_GLUE} from the Hub, which cannot be reached (no "
                          "network); pass --glue_dir DIR with the official GLUE TSVs, or set HF_DATASETS_OFFLINE=1 "
                          "to use a copy in the datasets cache") from None


def check_model_path(path: Optional[str], flag: str = "--model_name_or_path") -> str:
    """A checkpoint directory with config.json, or a Hub id that is cached or reachable.

    A missing directory, a Hub id while offline, or no network is one line at once (transformers itself
    would retry the Hub for ~30-50 s and never say that the directory is missing).
    """
    from hfssl.pretrained import check_pretrained_source

    if not path:
        raise ConfigError(f"{flag} is required (a checkpoint directory or Hub id)")
    resolved = check_pretrained_source(path, flag)
    if os.path.isdir(resolved):
        if not os.path.isfile(os.path.join(resolved, "config.json")):
            raise ConfigError(f"{flag} {path} has no config.json; is it a save_pretrained directory?")
        return resolved
    from transformers import AutoConfig

    try:
        AutoConfig.from_pretrained(resolved)
    except (OSError, ValueError) as exc:
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
        raise ConfigError(f"{flag} {path} is neither a local directory nor a loadable Hub model ({reason})") from None
    return resolved


def check_tokenizer_path(path: Optional[str]) -> None:
    """``--tokenizer_name``, when given: a directory or a cached/reachable Hub id (one line otherwise)."""
    if path:
        from hfssl.pretrained import check_pretrained_source

        check_pretrained_source(path, "--tokenizer_name")
