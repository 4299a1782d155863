"""The one training loop every recipe uses (Accelerate: CPU, one GPU, DDP, FSDP/DeepSpeed via config).

Exact loss under accumulation and data parallelism: for each optimizer step the loop collects
the window's micro-batches, corrupts them (``objective.prepare_batch``), sums the objective's
target counts over the window and all-reduces them. Each micro-batch then back-propagates
``sum_term loss_sum[term] / global_count[term] * world_size``; DDP averages gradients over
ranks, so the update equals that of one batch holding every target of the window on every rank.

Exact resume: checkpoints carry model, optimizer, scheduler, grad scaler, every rank's RNG
states, every rank's data position and corruption generator, the metrics logged so far and the
partial sums of the current logging window. On CPU, a run killed at any moment and resumed
reproduces the uninterrupted run bit for bit.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import math
import os
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import transformers
from accelerate import Accelerator
from accelerate.utils import DistributedType, ProjectConfiguration, set_seed
from torch import nn
from tqdm.auto import tqdm
from transformers import PreTrainedModel

from hfssl.config import TrainingArguments
from hfssl.errors import ConfigError, DataError, HfsslError
from hfssl.logging import get_logger, setup_logging
from hfssl.models.attention import is_generative, use_causal_sdpa_shortcut, use_stock_sdpa
from hfssl.models.export import auto_classes_for, export_pretrained, verify_reload
from hfssl.objectives.base import Objective, ObjectiveOutput
from hfssl.run_info import config_dict, write_run_info
from hfssl.training import checkpoint as ckpt
from hfssl.training.metrics import MetricsLog, flops_per_token, peak_flops
from hfssl.training.optim import build_optimizer, build_scheduler

logger = get_logger(__name__)


class TrainingDivergedError(HfsslError):
    """The loss or gradient norm became NaN/inf."""


@dataclass
class TrainResult:
    global_step: int
    metrics: dict[str, float] = field(default_factory=dict)
    export_dir: str = ""


# How a run's backbone is written to output_dir and proven to reload. The defaults serve every stock
# transformers backbone; a family without a transformers class (word2vec) brings its own pair.
#: ``export_fn(backbone, output_dir, state_dict)``: write the export (``state_dict``: gathered full weights
#: under FSDP/DeepSpeed, else None and the backbone's own weights are written).
ExportFn = Callable[[nn.Module, str, "dict[str, torch.Tensor] | None"], None]
#: ``verify_fn(output_dir, backbone)``: reload the export and compare with ``backbone``; raise HfsslError on a
#: mismatch; returns one message per check, e.g. "reloads with AutoModel (max |diff| 0)".
VerifyFn = Callable[[str, nn.Module], "list[str]"]


def _export_stock(backbone: PreTrainedModel, output_dir: str, state_dict: dict[str, torch.Tensor] | None, *,
                  processing_class: Any) -> None:
    export_pretrained(backbone, processing_class, output_dir, state_dict=state_dict)


def _verify_stock(output_dir: str, backbone: PreTrainedModel) -> list[str]:
    messages = []
    for auto_class in auto_classes_for(backbone):
        diff = verify_reload(output_dir, backbone, auto_class=auto_class)
        messages.append(f"reloads with {auto_class.__name__} (max |diff| {diff:.2g})")
    return messages


class ObjectiveModule(nn.Module):
    """Backbone + objective as one module, so DDP/FSDP see (and sync) the objective's own heads too
    and autocast covers the whole loss computation."""

    def __init__(self, backbone: PreTrainedModel, objective: Objective):
        super().__init__()
        self.backbone = backbone
        self.objective = objective
        # FSDP's transformer auto-wrap policy reads this from the module it wraps.
        self._no_split_modules = getattr(backbone, "_no_split_modules", None)

    def forward(self, batch: dict[str, torch.Tensor]) -> ObjectiveOutput:
        return self.objective(self.backbone, batch)


def make_accelerator(args: TrainingArguments) -> Accelerator:
    """The Accelerator for ``args`` (call it first: it fixes rank/world size for the data loader).

    Seeds every RNG with ``args.seed`` so model initialisation is identical on every rank, and
    fails early when ``output_dir`` holds checkpoints the user did not say what to do with.
    """
    ckpt.resolve_resume(args.output_dir, args.resume_from_checkpoint, args.overwrite_output_dir)
    set_tf32(args.tf32)
    log_with = None if args.report_to == "none" else args.report_to
    try:
        accelerator = Accelerator(
            mixed_precision=args.mixed_precision,
            log_with=log_with,
            project_config=ProjectConfiguration(project_dir=args.output_dir,
                                                logging_dir=os.path.join(args.output_dir, "runs")),
            step_scheduler_with_optimizer=False,
            # Without a GPU, torchrun's WORLD_SIZE only becomes a gloo process group with cpu=True.
            cpu=not torch.cuda.is_available(),
        )
    except (ValueError, ImportError) as exc:
        raise ConfigError(f"cannot set up Accelerate (--mixed_precision {args.mixed_precision}, --report_to "
                          f"{args.report_to}): {str(exc).splitlines()[0]}") from None
    setup_logging(accelerator.is_main_process)
    # Accelerate warns on every checkpoint that GPT-2's tied lm_head is stored once (expected), and
    # transformers draws its own bars for each save/load; the loop's progress bar is enough.
    logging.getLogger("accelerate.utils.other").setLevel(logging.ERROR)
    transformers.utils.logging.disable_progress_bar()
    set_seed(args.seed)
    return accelerator


def set_tf32(enabled: bool | None) -> None:
    """``--tf32`` as in transformers: True/False set TF32 for CUDA matmuls and cuDNN, None leaves PyTorch's default.

    TF32 only changes float32 matmuls; under bf16/fp16 autocast it touches the few ops kept in float32.
    """
    if enabled is None:
        return
    if enabled and not torch.cuda.is_available():
        raise ConfigError("--tf32 needs a CUDA GPU (Ampere or newer); drop the flag on this machine")
    torch.backends.cuda.matmul.allow_tf32 = enabled
    torch.backends.cudnn.allow_tf32 = enabled


# torch.compile modes that capture CUDA graphs (their outputs are overwritten by the next replay).
_CUDAGRAPH_MODES = ("reduce-overhead", "max-autotune")


def _is_repeated_blocks(module: nn.Module) -> bool:
    # The test accelerate.utils.compile_regions uses: a non-empty ModuleList of one class.
    return isinstance(module, nn.ModuleList) and len(module) > 0 and all(type(m) is type(module[0]) for m in module)


def compile_repeated_blocks(module: nn.Module, **compile_kwargs: Any) -> int:
    """Regional compilation: ``torch.compile`` each block of the model's repeated layer stacks, in place.

    Unlike ``accelerate.utils.compile_regions``, which wraps each block in an ``OptimizedModule`` (so
    ``h.0.attn.c_attn.weight`` becomes ``h.0._orig_mod.attn.c_attn.weight``), ``Module.compile()``
    keeps every parameter name: checkpoints load into eager runs and the export is unchanged. Only
    the blocks are compiled (identical blocks share one compiled graph); embeddings and heads stay
    eager unless the objective compiles its own head (``compile_module``). Returns the number of
    blocks compiled.
    """
    if _is_repeated_blocks(module):
        for block in module:
            block.compile(**compile_kwargs)
        return len(module)
    return sum(compile_repeated_blocks(child, **compile_kwargs) for child in module.children())


def use_regional_compilation(args: TrainingArguments, backbone: PreTrainedModel) -> bool:
    """``--use_regional_compilation``, or by default: whole-model for generative decoders, per layer otherwise.

    Measured on an H100: for GPT-2 one graph for model + loss is faster than per-layer graphs
    (issue 4); for BERT a whole-model graph hands SDPA an all-ones mask tensor and loses the flash
    kernel, per-layer graphs keep it (issue 5).
    """
    if args.use_regional_compilation is not None:
        return args.use_regional_compilation
    return not is_generative(backbone)


def compile_module(module: ObjectiveModule, args: TrainingArguments) -> str:
    """Compile ``module`` in place as ``args`` asks; returns "regional" or "whole model"."""
    kwargs = {k: v for k, v in (("mode", args.torch_compile_mode), ("backend", args.torch_compile_backend)) if v}
    if use_regional_compilation(args, module.backbone):
        if compile_repeated_blocks(module.backbone, **kwargs) == 0:
            raise ConfigError(f"--use_regional_compilation: {type(module.backbone).__name__} has no stack of "
                              "identical layers to compile; use --use_regional_compilation false")
        # The objective's own head/loss (e.g. the sparse MLM head, static shapes) as one more region.
        if hasattr(module.objective, "compile_regions"):
            module.objective.compile_regions(**kwargs)
        return "regional"
    # Inside one graph transformers would build an explicit causal mask for every batch (no flash kernel).
    use_causal_sdpa_shortcut(module.backbone)
    module.compile(**kwargs)  # in place: parameter names (and so checkpoints) are unchanged
    return "whole model"


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").lower() in ("1", "true", "yes")


def _total_steps(args: TrainingArguments, train_loader: Any) -> int:
    if args.max_steps > 0:
        return args.max_steps
    try:
        batches = len(train_loader)
    except TypeError:
        raise ConfigError("the training stream has no known length; set --max_steps") from None
    steps = math.ceil(args.num_train_epochs * batches / args.gradient_accumulation_steps)
    if steps <= 0:
        raise DataError("the training data yields no batches; check --train_file and --max_seq_length")
    return steps


class _BatchStream:
    """Endless micro-batches across epochs, with the position needed to resume exactly."""

    def __init__(self, loader: Any, device: torch.device):
        self.loader = loader
        self.device = device
        # A copy from pageable memory blocks the host; from pinned memory it is queued and the host
        # goes on launching kernels. On CPU there is nothing to copy.
        self._pin = device.type == "cuda"
        self.epoch = 0
        self._iterator: Iterator | None = None
        self._yielded_this_epoch = 0
        self._resumed = False

    def _start_epoch(self) -> None:
        if hasattr(self.loader, "set_epoch"):
            self.loader.set_epoch(self.epoch)
        self._iterator = iter(self.loader)
        self._yielded_this_epoch = 0

    def state_dict(self) -> dict[str, Any]:
        state = {"epoch": self.epoch}
        if hasattr(self.loader, "state_dict"):
            state["loader"] = self.loader.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch = state["epoch"]
        if hasattr(self.loader, "set_epoch"):
            self.loader.set_epoch(self.epoch)
        if "loader" not in state or not hasattr(self.loader, "load_state_dict"):
            raise HfsslError("the checkpoint has no data position for this loader; cannot resume exactly")
        self.loader.load_state_dict(state["loader"])
        self._iterator = iter(self.loader)
        self._resumed = True

    def next(self) -> dict[str, torch.Tensor]:
        if self._iterator is None:
            self._start_epoch()
        while True:
            try:
                batch = next(self._iterator)
            except StopIteration:
                if self._yielded_this_epoch == 0 and not self._resumed:
                    raise DataError("the training data yielded no batches; check the input files, "
                                    "--max_seq_length and --per_device_train_batch_size") from None
                self._resumed = False
                self.epoch += 1
                self._start_epoch()
                continue
            self._yielded_this_epoch += 1
            self._resumed = False
            return {k: self._to_device(v) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}

    def _to_device(self, tensor: torch.Tensor) -> torch.Tensor:
        if self._pin and tensor.device.type == "cpu":
            tensor = tensor.pin_memory()
        return tensor.to(self.device, non_blocking=True)


class _Window:
    """Per-rank sums since the last log event (kept on the device: no sync per step)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.reset()

    def reset(self) -> None:
        self.loss: dict[str, torch.Tensor] = {}
        self.count: dict[str, torch.Tensor] = {}
        self.metric: dict[str, torch.Tensor] = {}
        self.grad_norm = torch.zeros((), dtype=torch.float64, device=self.device)
        self.input_tokens = torch.zeros((), dtype=torch.float64, device=self.device)
        self.steps = 0
        self.start = time.perf_counter()

    def _add(self, store: dict[str, torch.Tensor], key: str, value: torch.Tensor) -> None:
        value = value.detach().to(torch.float64)
        store[key] = store[key] + value if key in store else value

    def add(self, out: ObjectiveOutput, counts: dict[str, torch.Tensor], input_tokens: int) -> None:
        for key, value in out.loss_sums.items():
            self._add(self.loss, key, value)
        for key, value in counts.items():
            self._add(self.count, key, value)
        for key, value in out.metric_sums.items():
            self._add(self.metric, key, value)
        self.input_tokens += input_tokens

    def state_dict(self) -> dict[str, Any]:
        def cpu(d: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
            return {k: v.cpu() for k, v in d.items()}

        return {"loss": cpu(self.loss), "count": cpu(self.count), "metric": cpu(self.metric),
                "grad_norm": self.grad_norm.cpu(), "input_tokens": self.input_tokens.cpu(), "steps": self.steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        def dev(d: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
            return {k: v.to(self.device) for k, v in d.items()}

        self.loss, self.count, self.metric = dev(state["loss"]), dev(state["count"]), dev(state["metric"])
        self.grad_norm = state["grad_norm"].to(self.device)
        self.input_tokens = state["input_tokens"].to(self.device)
        self.steps = state["steps"]


def _reduce_sums(accelerator: Accelerator, sums: dict[str, torch.Tensor], keys: Sequence[str]) -> dict[str, float]:
    """All-reduce (sum) a dict of scalars in one collective; returns Python floats."""
    if not keys:
        return {}
    stacked = torch.stack([sums[k].to(torch.float64) for k in keys])
    if accelerator.num_processes > 1:
        stacked = accelerator.reduce(stacked, reduction="sum")
    return dict(zip(keys, stacked.tolist()))


def _combine(loss: dict[str, float], count: dict[str, float], metric: dict[str, float], prefix: str = ""
             ) -> dict[str, float]:
    """Token-weighted means: total loss = sum of per-term means; metrics divided by their term's count."""
    record: dict[str, float] = {}
    per_term = {t: loss[t] / max(count.get(t, 0.0), 1.0) for t in loss}
    record[f"{prefix}loss"] = sum(per_term.values())
    if len(per_term) > 1:
        record.update({f"{prefix}loss/{t}": v for t, v in per_term.items()})
    for key, value in metric.items():
        term, _, name = key.partition("/")
        record[f"{prefix}{name or term}" if len(loss) == 1 else f"{prefix}{key}"] = value / max(count.get(term, 0), 1)
    return record


class TrainingRun:
    """State and steps of one training run; ``train()`` is the public entry point."""

    def __init__(self, objective: Objective, model: PreTrainedModel, train_loader: Any, args: TrainingArguments,
                 eval_loader_factory: Callable[[], Iterable[dict]] | None, processing_class: Any,
                 configs_to_record: Sequence[Any], accelerator: Accelerator,
                 eval_callbacks: Sequence[Callable[[PreTrainedModel], dict[str, float]]] = (),
                 export_fn: ExportFn | None = None, verify_fn: VerifyFn | None = None):
        self.args = args
        self.export_fn = export_fn or functools.partial(_export_stock, processing_class=processing_class)
        self.verify_fn = verify_fn or _verify_stock
        self.eval_callbacks = tuple(eval_callbacks)
        self.accelerator = accelerator
        self.objective = objective
        self.eval_loader_factory = eval_loader_factory
        self.processing_class = processing_class
        self.configs_to_record = tuple(configs_to_record) or (args,)
        self.device = accelerator.device
        self.world = accelerator.num_processes
        self.total_steps = _total_steps(args, train_loader)
        self.resume_dir = ckpt.resolve_resume(args.output_dir, args.resume_from_checkpoint,
                                              args.overwrite_output_dir)
        if args.overwrite_output_dir and not self.resume_dir and accelerator.is_main_process:
            for _, path in ckpt.list_checkpoints(args.output_dir):
                ckpt.remove_checkpoint(path)
        accelerator.wait_for_everyone()

        self.backbone = model
        module = ObjectiveModule(model, objective).to(self.device)
        self._cudagraphs = False
        if args.torch_compile:
            how = compile_module(module, args)
            self._cudagraphs = self.device.type == "cuda" and args.torch_compile_mode in _CUDAGRAPH_MODES
            logger.info("torch.compile (%s, mode %s, backend %s)", how, args.torch_compile_mode or "default",
                        args.torch_compile_backend or "inductor")
        optimizer = build_optimizer(module, args, self.device)
        self.scheduler = build_scheduler(optimizer, args, self.total_steps)
        self.module, self.optimizer = accelerator.prepare(module, optimizer)
        self.stream = _BatchStream(train_loader, self.device)
        self.window = _Window(self.device)
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(args.seed + 7919 * accelerator.process_index)
        self.diverged = torch.zeros((), dtype=torch.bool, device=self.device)
        self.step = 0
        self.last_saved_step = -1
        self.last_eval: dict[str, float] = {}
        self.last_eval_step = -1
        history: list[dict[str, Any]] = []
        if self.resume_dir:
            state, rank_state = ckpt.load_checkpoint(accelerator, self.resume_dir, self.scheduler)
            self.step = state["step"]
            self.last_saved_step = self.step
            history = state["history"]
            self.last_eval = state.get("last_eval", {})
            self.last_eval_step = state.get("last_eval_step", -1)
            self.stream.load_state_dict(rank_state["stream"])
            self.generator.set_state(rank_state["generator"])
            self.window.load_state_dict(rank_state["window"])
            logger.info("resumed from %s at step %d", self.resume_dir, self.step)
        self.metrics = MetricsLog(accelerator, args.output_dir, history)
        n_params = sum(p.numel() for p in model.parameters())
        self._flops_per_token = None
        self._peak = peak_flops(self.device)
        self._n_params = n_params
        if args.report_to != "none":
            hparams = {k: v for k, v in config_dict(*self.configs_to_record).items()
                       if isinstance(v, (int, float, str, bool))}
            accelerator.init_trackers("hfssl", config=hparams)

    # -- one optimizer step ---------------------------------------------------------------
    def _train_step(self) -> None:
        k = self.args.gradient_accumulation_steps
        window = [self.objective.prepare_batch(self.stream.next(), generator=self.generator) for _ in range(k)]
        counts = [self.objective.target_counts(b) for b in window]
        terms = sorted(counts[0])
        local = torch.stack([sum(c[t] for c in counts) for t in terms]).to(torch.long)
        total = self.accelerator.reduce(local, reduction="sum") if self.world > 1 else local
        denom = total.clamp(min=1).to(torch.float32)
        self.module.train()
        step_loss = torch.zeros((), dtype=torch.float32, device=self.device)
        for i, batch in enumerate(window):
            sync = i == k - 1
            with contextlib.nullcontext() if sync else self.accelerator.no_sync(self.module):
                self._mark_cudagraph_step()
                out = self.module(batch)
                loss = sum(out.loss_sums[t] / denom[j] for j, t in enumerate(terms)) * self.world
                self.accelerator.backward(loss)
            step_loss += loss.detach() / self.world
            self.window.add(out, counts[i], self.objective.input_tokens(batch))
        max_norm = self.args.max_grad_norm if self.args.max_grad_norm > 0 else float("inf")
        grad_norm = self.accelerator.clip_grad_norm_(self.module.parameters(), max_norm)
        bad = ~torch.isfinite(step_loss)
        if grad_norm is not None:
            grad_norm = grad_norm.detach().to(self.device, torch.float64)
            self.window.grad_norm += grad_norm
            # fp16's grad scaler produces inf norms on purpose and skips those steps.
            if self.args.mixed_precision != "fp16":
                bad |= ~torch.isfinite(grad_norm)
        self.diverged |= bad
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.window.steps += 1
        self.step += 1
        if self._flops_per_token is None and "input_ids" in window[0]:
            self._flops_per_token = flops_per_token(self.backbone.config, window[0]["input_ids"].shape[-1],
                                                    self._n_params)

    def _mark_cudagraph_step(self) -> None:
        # CUDA-graph modes: each forward starts a new replay (its outputs may overwrite the last
        # ones; the loop only keeps copies: float64 sums and the detached loss).
        if self._cudagraphs:
            torch.compiler.cudagraph_mark_step_begin()

    def _check_finite(self) -> None:
        if bool(self.accelerator.reduce(self.diverged.to(torch.long), reduction="sum").item()
                if self.world > 1 else self.diverged.item()):
            latest = ckpt.latest_checkpoint(self.args.output_dir)
            where = f"the last good checkpoint is {latest}" if latest else "no checkpoint was saved"
            raise TrainingDivergedError(
                f"the loss or gradient norm became NaN/inf by step {self.step}; {where} - lower --learning_rate, "
                "raise --warmup_steps or use --mixed_precision bf16, then resume with --resume_from_checkpoint latest")

    # -- logging / eval / checkpoint ---------------------------------------------------------
    def _log_train(self) -> dict[str, Any]:
        w = self.window
        loss_keys, count_keys, metric_keys = sorted(w.loss), sorted(w.count), sorted(w.metric)
        merged = {**{f"l:{k}": w.loss[k] for k in loss_keys}, **{f"c:{k}": w.count[k] for k in count_keys},
                  **{f"m:{k}": w.metric[k] for k in metric_keys}, "input_tokens": w.input_tokens}
        reduced = _reduce_sums(self.accelerator, merged, sorted(merged))
        self._check_finite()
        elapsed = max(time.perf_counter() - w.start, 1e-9)
        record: dict[str, Any] = {"step": self.step}
        record.update(_combine({k: reduced[f"l:{k}"] for k in loss_keys}, {k: reduced[f"c:{k}"] for k in count_keys},
                               {k: reduced[f"m:{k}"] for k in metric_keys}))
        record["lr"] = self.scheduler.get_last_lr()[0]
        if w.steps:
            record["grad_norm"] = float(w.grad_norm.item()) / w.steps
        primary = getattr(self.objective, "primary_term", "loss")
        # Targets/s (next tokens for CLM, masked tokens for MLM) and, comparable across objectives, inputs/s.
        record["tokens_per_second"] = reduced.get(f"c:{primary}", 0.0) / elapsed
        record["input_tokens_per_second"] = reduced["input_tokens"] / elapsed
        record["epoch"] = self.stream.epoch
        if self._peak and self._flops_per_token:
            per_device = reduced["input_tokens"] / elapsed / self.world
            record["mfu"] = per_device * self._flops_per_token / self._peak
        self.metrics.log(record)
        w.reset()
        return record

    def evaluate(self) -> dict[str, float]:
        """Exact token-weighted validation loss over at most ``--max_eval_batches`` batches per rank."""
        if self.eval_loader_factory is None:
            return {}
        module = self.accelerator.unwrap_model(self.module)
        module.eval()
        sums: dict[str, torch.Tensor] = {}
        # A fixed generator: every evaluation sees the same corruption; training RNG is untouched.
        generator = torch.Generator(device=self.device)
        generator.manual_seed(self.args.seed + 104729 * (1 + self.accelerator.process_index))
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices), torch.no_grad(), self.accelerator.autocast():
            for i, batch in enumerate(self.eval_loader_factory()):
                if self.args.max_eval_batches > 0 and i >= self.args.max_eval_batches:
                    break
                batch = {k: v.to(self.device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
                batch = self.objective.prepare_batch(batch, generator=generator)
                counts = self.objective.target_counts(batch)
                self._mark_cudagraph_step()
                out = module(batch)
                for prefix, values in (("l:", out.loss_sums), ("c:", counts), ("m:", out.metric_sums)):
                    for key, value in values.items():
                        value = value.detach().to(torch.float64)
                        sums[prefix + key] = sums[prefix + key] + value if prefix + key in sums else value
        module.train()
        # Ranks may hold different numbers of batches (or none): agree on the key set first.
        keys = self._agreed_keys(sorted(sums))
        reduced = _reduce_sums(self.accelerator, {k: sums.get(k, torch.zeros((), dtype=torch.float64,
                                                                               device=self.device)) for k in keys},
                               keys)
        loss = {k[2:]: v for k, v in reduced.items() if k.startswith("l:")}
        count = {k[2:]: v for k, v in reduced.items() if k.startswith("c:")}
        if not loss or sum(count.values()) == 0:
            raise DataError("the validation data yielded no batches; check --validation_file / "
                            "--validation_split_documents")
        metric = {k[2:]: v for k, v in reduced.items() if k.startswith("m:")}
        record = _combine(loss, count, metric, prefix="eval_")
        primary = getattr(self.objective, "primary_term", "loss")
        record["eval_tokens"] = count.get(primary, 0.0)
        if getattr(self.objective, "reports_perplexity", False):
            record["eval_perplexity"] = math.exp(min(record["eval_loss"], 700.0))
        record.update(self._run_eval_callbacks(module.backbone))
        self.metrics.log({"step": self.step, **record})
        self.last_eval = record
        self.last_eval_step = self.step
        return record

    def _run_eval_callbacks(self, backbone: PreTrainedModel) -> dict[str, float]:
        """Extra quality signals (e.g. a kNN monitor) computed by the main process on the bare backbone;
        they involve no collective, so the other ranks simply go on to the next one."""
        if not self.eval_callbacks or not self.accelerator.is_main_process:
            return {}
        extra: dict[str, float] = {}
        backbone.eval()
        try:
            with torch.no_grad(), self.accelerator.autocast():
                for callback in self.eval_callbacks:
                    extra.update({f"eval_{k}": float(v) for k, v in callback(backbone).items()})
        finally:
            backbone.train()
        return extra

    def _agreed_keys(self, keys: list[str]) -> list[str]:
        if self.world == 1:
            return keys
        from accelerate.utils import gather_object

        return sorted(set().union(*gather_object([keys])))

    def save(self) -> str:
        self._check_finite()  # never write a diverged state over the last good one
        trainer_state = {"step": self.step, "history": self.metrics.history, "last_eval": self.last_eval,
                         "last_eval_step": self.last_eval_step,
                         "total_steps": self.total_steps, "world_size": self.world}
        rank_state = {"stream": self.stream.state_dict(), "generator": self.generator.get_state(),
                      "window": self.window.state_dict()}
        path = ckpt.save_checkpoint(self.accelerator, self.args.output_dir, self.step, trainer_state=trainer_state,
                                    scheduler=self.scheduler, rank_state=rank_state,
                                    save_total_limit=self.args.save_total_limit)
        self.last_saved_step = self.step
        logger.info("saved checkpoint %s", path)
        if self.args.push_to_hub and self.args.hub_strategy in ("every_save", "checkpoint"):
            # hfssl.hub reads hub_strategy itself ("checkpoint" also uploads the newest step_N).
            self._export()
            self._push(f"Training in progress, step {self.step}")
        return path

    # -- end of training ------------------------------------------------------------------
    def _export(self) -> None:
        acc = self.accelerator
        sharded = acc.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED)
        state_dict = None
        if sharded:  # gathering the full weights is collective
            full = acc.get_state_dict(self.module)
            state_dict = {k[len("backbone."):]: v for k, v in full.items() if k.startswith("backbone.")}
        if acc.is_main_process:
            backbone = acc.unwrap_model(self.module).backbone
            self.export_fn(backbone, self.args.output_dir, state_dict)
        acc.wait_for_everyone()

    def _push(self, message: str) -> None:
        if not self.accelerator.is_main_process:
            return
        try:
            from hfssl.hub import push_output_dir
        except ImportError:
            raise HfsslError("--push_to_hub needs hfssl.hub.push_output_dir, which this install lacks") from None
        url = push_output_dir(self.args.output_dir, self.args, commit_message=message)
        logger.info("pushed %s to %s", self.args.output_dir, url)

    def run(self) -> TrainResult:
        args, acc = self.args, self.accelerator
        logger.info("training %d steps (%d processes, %d micro-batches/step, %s precision) into %s",
                    self.total_steps, self.world, args.gradient_accumulation_steps, args.mixed_precision,
                    args.output_dir)
        bar = tqdm(total=self.total_steps, initial=self.step, disable=not acc.is_local_main_process or _env_flag("TQDM_DISABLE"),
                   desc="train", dynamic_ncols=True)
        started = time.perf_counter()
        start_step = self.step
        last_train: dict[str, Any] = next((r for r in reversed(self.metrics.history) if "loss" in r), {})
        with bar:
            while self.step < self.total_steps:
                self._train_step()
                bar.update(1)
                if self.step % max(args.logging_steps, 1) == 0 or self.step == self.total_steps:
                    last_train = self._log_train()
                    bar.set_postfix(loss=f"{last_train['loss']:.4f}", lr=f"{last_train['lr']:.2e}")
                paused = time.perf_counter()
                if args.eval_steps > 0 and self.step % args.eval_steps == 0:
                    self.evaluate()
                if args.checkpointing_steps > 0 and self.step % args.checkpointing_steps == 0:
                    self.save()
                self.window.start += time.perf_counter() - paused  # throughput counts training time only
        self._check_finite()
        runtime = time.perf_counter() - started
        use_stock_sdpa(self.backbone)
        if self.eval_loader_factory is not None and self.last_eval_step != self.step:
            self.evaluate()
        if args.checkpointing_steps > 0 and self.last_saved_step != self.step:
            self.save()
        self._export()
        results: dict[str, float] = {"global_step": self.step, "train_runtime": runtime,
                                     "train_steps_per_second": (self.step - start_step) / max(runtime, 1e-9)}
        if last_train:
            results["train_loss"] = last_train["loss"]
        results.update(self.last_eval)
        if acc.is_main_process:
            with open(os.path.join(args.output_dir, "all_results.json"), "w", encoding="utf-8") as fh:
                json.dump(results, fh, indent=2)
            write_run_info(args.output_dir, *self.configs_to_record)
            if acc.distributed_type not in (DistributedType.FSDP, DistributedType.DEEPSPEED):
                backbone = acc.unwrap_model(self.module).backbone
                for message in self.verify_fn(args.output_dir, backbone):
                    logger.info("export in %s %s", args.output_dir, message)
        acc.wait_for_everyone()
        if args.push_to_hub:
            self._push("End of training")
        acc.end_training()
        return TrainResult(global_step=self.step, metrics=results, export_dir=args.output_dir)


def train(
    *,
    objective: Objective,
    model: PreTrainedModel,
    train_loader: Any,
    args: TrainingArguments,
    eval_loader_factory: Callable[[], Iterable[dict]] | None = None,
    processing_class: Any = None,
    configs_to_record: Sequence[Any] = (),
    accelerator: Accelerator | None = None,
    eval_callbacks: Sequence[Callable[[PreTrainedModel], dict[str, float]]] = (),
    export_fn: ExportFn | None = None,
    verify_fn: VerifyFn | None = None,
) -> TrainResult:
    """Train ``model`` with ``objective`` on ``train_loader`` and export it into ``args.output_dir``.

    ``train_loader`` yields CPU batches already sharded for this rank (it is never passed through
    ``accelerator.prepare``); if it has ``state_dict``/``load_state_dict``/``set_epoch`` the run
    resumes at the exact data position. ``eval_callbacks`` add metrics to every evaluation (each gets
    the bare backbone in eval mode, returns ``{name: value}``, logged as ``eval_<name>``).
    ``export_fn``/``verify_fn`` replace the stock ``save_pretrained`` export and its Auto-class reload
    check, for a backbone that is not a transformers model (see ``ExportFn``/``VerifyFn``).
    """
    accelerator = accelerator or make_accelerator(args)
    return TrainingRun(objective, model, train_loader, args, eval_loader_factory, processing_class,
                       configs_to_record, accelerator, eval_callbacks, export_fn, verify_fn).run()
