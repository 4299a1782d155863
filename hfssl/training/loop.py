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
from accelerate.utils import ProjectConfiguration, set_seed
from torch import nn
from transformers import PreTrainedModel

from hfssl.config import TrainingArguments
from hfssl.errors import ConfigError, DataError, HfsslError
from hfssl.logging import get_logger, progress_bar, setup_logging
from hfssl.models.attention import is_generative, use_causal_sdpa_shortcut, use_stock_sdpa
from hfssl.models.export import auto_classes_for, export_pretrained, verify_reload
from hfssl.objectives.base import Objective, ObjectiveOutput
from hfssl.run_info import config_dict, write_run_info
from hfssl.training import checkpoint as ckpt
from hfssl.training import engines, run_guard
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
    #: The trained backbone as an ordinary module with all its weights, on the main process (None on the
    #: others): the model itself, or under FSDP/ZeRO-3 a copy of the gathered weights.
    model: nn.Module | None = None


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
        # FSDP's transformer auto-wrap policy reads this from the module it wraps: the repeated blocks of the
        # backbone and of any objective head or teacher, never an embedding module whose weights are tied to
        # a head outside it (transformers lists BertEmbeddings; FSDP then refuses the tied decoder).
        self._no_split_modules = engines.wrap_classes(self)

    def forward(self, batch: dict[str, torch.Tensor]) -> ObjectiveOutput:
        return self.objective(self.backbone, batch)


def make_accelerator(args: TrainingArguments) -> Accelerator:
    """The Accelerator for ``args`` (call it first: it fixes rank/world size for the data loader).

    Seeds every RNG with ``args.seed`` so model initialisation is identical on every rank, fails early
    when ``output_dir`` holds checkpoints the user did not say what to do with, refuses an engine or a
    process count other than the launcher's config asks for (``engines.check_engine``), takes the
    one-writer lock of ``output_dir`` and makes a launched process stop when its launcher dies
    (``hfssl.training.run_guard``).
    """
    if os.path.isfile(args.output_dir):
        raise ConfigError(f"--output_dir {args.output_dir} is a file; give a directory (it is created if needed)")
    ckpt.check_output_dir(args.output_dir, args.resume_from_checkpoint, args.overwrite_output_dir)
    set_tf32(args.tf32)
    log_with = None if args.report_to == "none" else args.report_to
    # DeepSpeed steps its engine from inside backward: it must know the accumulation window to step once per
    # window. Every other engine leaves accumulation to the loop (Accelerate would divide the loss again).
    accumulation = args.gradient_accumulation_steps if engines.requested_engine() == "DeepSpeed" else 1
    try:
        accelerator = Accelerator(
            mixed_precision=args.mixed_precision,
            log_with=log_with,
            project_config=ProjectConfiguration(project_dir=args.output_dir,
                                                logging_dir=os.path.join(args.output_dir, "runs"),
                                                save_on_each_node=args.save_on_each_node),
            step_scheduler_with_optimizer=False,
            gradient_accumulation_steps=accumulation,
            # Without a GPU, torchrun's WORLD_SIZE only becomes a gloo process group with cpu=True.
            cpu=not torch.cuda.is_available(),
        )
    except (ValueError, ImportError) as exc:
        raise ConfigError(f"cannot set up Accelerate (--mixed_precision {args.mixed_precision}, --report_to "
                          f"{args.report_to}): {str(exc).splitlines()[0]}") from None
    setup_logging(accelerator.is_main_process)
    engines.check_engine(accelerator, save_on_each_node=args.save_on_each_node)
    run_guard.check_output_dir_sharing(accelerator, args.output_dir, args.save_on_each_node)
    run_guard.watch_launcher()
    if accelerator.is_local_main_process if args.save_on_each_node else accelerator.is_main_process:
        run_guard.acquire_output_dir(args.output_dir)
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


def _processes(accelerator: Accelerator) -> str:
    n = accelerator.num_processes
    engine = engines.engine_name(accelerator)
    return f"{n} process{'' if n == 1 else 'es'}" + ("" if engine == "single process" else f", {engine}")


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


def _merged_windows(windows: list[dict[str, Any]]) -> dict[str, Any]:
    """One logging window holding the sums of several ranks' windows (a resume on fewer/more processes).

    Loss, target and metric sums and input tokens add up; the gradient norm is the same global value on
    every rank, so it is taken once."""
    merged = {"loss": {}, "count": {}, "metric": {}, "grad_norm": windows[0]["grad_norm"],
              "input_tokens": sum(w["input_tokens"] for w in windows), "steps": windows[0]["steps"]}
    for window in windows:
        for part in ("loss", "count", "metric"):
            for key, value in window[part].items():
                merged[part][key] = merged[part][key] + value if key in merged[part] else value.clone()
    return merged


def _empty_window(like: dict[str, Any]) -> dict[str, Any]:
    """A window with the same keys and step count as ``like`` and zero sums (the other ranks after a merge)."""
    def zeros(d: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {k: torch.zeros_like(v) for k, v in d.items()}

    return {"loss": zeros(like["loss"]), "count": zeros(like["count"]), "metric": zeros(like["metric"]),
            "grad_norm": like["grad_norm"].clone(), "input_tokens": torch.zeros_like(like["input_tokens"]),
            "steps": like["steps"]}


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
        self.resume_dir = self._choose_checkpoint()
        if args.overwrite_output_dir and not self.resume_dir and self._owns_output_dir():
            for _, path in ckpt.list_checkpoints(args.output_dir):
                ckpt.remove_checkpoint(path)
        accelerator.wait_for_everyone()

        self.backbone = model
        engines.check_objective(accelerator, objective)
        module = ObjectiveModule(model, objective).to(self.device)
        # Sharding engines change the modules in place: keep the backbone's structure to rebuild it whole later.
        self._skeleton = engines.meta_skeleton(model) if engines.shards_parameters(accelerator) else None
        self._cudagraphs = False
        if args.torch_compile:
            how = compile_module(module, args)
            self._cudagraphs = self.device.type == "cuda" and args.torch_compile_mode in _CUDAGRAPH_MODES
            logger.info("torch.compile (%s, mode %s, backend %s)", how, args.torch_compile_mode or "default",
                        args.torch_compile_backend or "inductor")
        optimizer = build_optimizer(module, args, self.device)
        engines.configure_deepspeed(accelerator, micro_batch_size=args.per_device_train_batch_size,
                                    max_grad_norm=args.max_grad_norm)
        self.scheduler = build_scheduler(optimizer, args, self.total_steps)
        self.module, self.optimizer = accelerator.prepare(module, optimizer)
        self._backward_kwargs = engines.backward_kwargs(accelerator)
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
            history = self._resume(self.resume_dir)
        self.metrics = MetricsLog(accelerator, args.output_dir, history)
        n_params = sum(getattr(p, "ds_numel", p.numel()) for p in model.parameters())  # ZeRO-3: full size
        self._flops_per_token = None
        self._peak = peak_flops(self.device)
        self._n_params = n_params
        if args.report_to != "none":
            hparams = {k: v for k, v in config_dict(*self.configs_to_record).items()
                       if isinstance(v, (int, float, str, bool))}
            # After a resume, TensorBoard hides the events a killed run logged past the checkpoint (they are
            # logged again), as metrics.jsonl drops them; otherwise every such step would show twice.
            init_kwargs = {"tensorboard": {"purge_step": self.step + 1}} if self.resume_dir else {}
            accelerator.init_trackers("hfssl", config=hparams, init_kwargs=init_kwargs)

    # -- checkpoints ----------------------------------------------------------------------
    def _owns_output_dir(self) -> bool:
        """The process that creates, renames and removes checkpoint directories on its filesystem."""
        acc = self.accelerator
        return acc.is_local_main_process if self.args.save_on_each_node else acc.is_main_process

    def _choose_checkpoint(self) -> str | None:
        """The verified checkpoint to resume from, chosen by the main process and agreed by every rank."""
        acc, args = self.accelerator, self.args
        choice: list[Any] = [None]
        if acc.is_main_process:
            try:
                choice = [ckpt.resolve_resume(args.output_dir, args.resume_from_checkpoint, args.overwrite_output_dir)]
            except HfsslError as exc:
                choice = [exc]
        if self.world > 1:
            from accelerate.utils import broadcast_object_list

            choice = broadcast_object_list(choice)
        if isinstance(choice[0], BaseException):
            raise choice[0]
        path = choice[0]
        if path and not os.path.isdir(path):
            raise ckpt.CheckpointError(f"checkpoint {path} is not visible from process {acc.process_index}: put "
                                       "output_dir on a filesystem every node shares, or use --save_on_each_node")
        return path

    def _resume(self, path: str) -> list[dict[str, Any]]:
        """Load checkpoint ``path`` into this run; returns the metrics history logged up to it.

        On the world size it was saved with, everything continues bitwise. On another one the model,
        optimizer and scheduler are restored (resharded under FSDP), the data stream continues at the same
        example of the global stream (no example lost or seen twice in the epoch), the metric sums of the
        unfinished logging window move to rank 0, and ranks that did not exist draw fresh random numbers.
        """
        acc, args = self.accelerator, self.args
        state, rank_state, saved_ranks = ckpt.load_checkpoint(acc, path, self.scheduler)
        self.step = state["step"]
        self.last_saved_step = self.step
        self.last_eval = state.get("last_eval", {})
        self.last_eval_step = state.get("last_eval_step", -1)
        saved_world = len(saved_ranks)
        self.stream.load_state_dict(rank_state["stream"])
        if saved_world == self.world:
            self.generator.set_state(rank_state["generator"])
            self.window.load_state_dict(rank_state["window"])
        else:
            logger.warning("resuming %s, saved by %d process%s, on %d: the data continues at the same example, but "
                           "corruption draws and summation order differ from an uninterrupted run", path, saved_world,
                           "" if saved_world == 1 else "es", self.world)
            rank = acc.process_index
            if rank < saved_world:
                self.generator.set_state(saved_ranks[rank]["generator"])
            else:
                self.generator.manual_seed(args.seed + 7919 * rank + 104729 * self.step)
                set_seed(args.seed + 7919 * rank + 104729 * self.step)
            self.window.load_state_dict(_merged_windows([r["window"] for r in saved_ranks]) if rank == 0
                                        else _empty_window(saved_ranks[0]["window"]))
        logger.info("resumed from %s at step %d", path, self.step)
        return state["history"]

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
            with engines.gradient_sync(self.accelerator, self.module, enabled=i == k - 1):
                self._mark_cudagraph_step()
                out = self.module(batch)
                loss = sum(out.loss_sums[t] / denom[j] for j, t in enumerate(terms)) * self.world
                self.accelerator.backward(loss, **self._backward_kwargs)
            step_loss += loss.detach() / self.world
            self.window.add(out, counts[i], self.objective.input_tokens(batch))
        # --max_grad_norm 0 turns clipping off and, as in transformers' Trainer, the norm pass with it (a
        # measurable cost for models made of embedding tables, such as word2vec); the norm is then not logged.
        grad_norm = None
        if self.args.max_grad_norm > 0:
            grad_norm = engines.local_norm(self.accelerator.clip_grad_norm_(self.module.parameters(),
                                                                            self.args.max_grad_norm))
        bad = ~torch.isfinite(step_loss)
        if grad_norm is not None:
            grad_norm = torch.as_tensor(grad_norm).detach().to(self.device, torch.float64)
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
        engines.check_optimizer_steps(self.accelerator, self.module, self.step)
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
        if w.steps and self.args.max_grad_norm > 0:
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
        # Sharded parameters exist whole only inside the wrapper's forward, which every rank runs in step
        # (the validation loader gives each rank the same number of batches). Unsharded engines run the
        # bare module: DDP's forward would broadcast buffers, a collective, on every batch.
        module = self.module if engines.shards_parameters(self.accelerator) else self.accelerator.unwrap_model(self.module)
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
        record.update(self._run_eval_callbacks())
        self.metrics.log({"step": self.step, **record})
        self.last_eval = record
        self.last_eval_step = self.step
        return record

    def _run_eval_callbacks(self) -> dict[str, float]:
        """Extra quality signals (e.g. a kNN monitor) computed by the main process on the bare backbone;
        they involve no collective, so the other ranks simply go on to the next one (under FSDP/ZeRO-3
        every rank first takes part in gathering the weights for the main process's plain copy)."""
        if not self.eval_callbacks:
            return {}
        backbone = self._plain_backbone()
        if backbone is None:
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

    def _plain_backbone(self, gathered: dict[str, torch.Tensor] | None = None, *, already_gathered: bool = False
                        ) -> nn.Module | None:
        """The backbone with all its weights, as an ordinary module, on the main process (None elsewhere).

        Unsharded engines: the trained module itself. FSDP/ZeRO-3: a copy built from the full state dict,
        gathered here (collectively: every rank calls this) unless ``already_gathered`` (then ``gathered``
        is the main process's copy)."""
        acc = self.accelerator
        if not engines.shards_parameters(acc):
            return acc.unwrap_model(self.module).backbone if acc.is_main_process else None
        state_dict = gathered if already_gathered else engines.full_state_dict(acc, self.module)
        if not acc.is_main_process:
            return None
        return engines.plain_replica(self._skeleton, state_dict, self.device)

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
                                    save_total_limit=self.args.save_total_limit,
                                    save_on_each_node=self.args.save_on_each_node)
        self.last_saved_step = self.step
        logger.info("saved checkpoint %s", path)
        if self.args.push_to_hub and self.args.hub_strategy in ("every_save", "checkpoint"):
            # hfssl.hub reads hub_strategy itself ("checkpoint" also uploads the newest step_N).
            self._export()
            self._push(f"Training in progress, step {self.step}")
        return path

    # -- end of training ------------------------------------------------------------------
    def _export(self) -> dict[str, torch.Tensor] | None:
        """Write the export (collective under FSDP/DeepSpeed, which gather the full weights first); returns
        the gathered state dict on the main process (None without sharding or on other ranks)."""
        acc = self.accelerator
        state_dict = engines.full_state_dict(acc, self.module)
        if acc.is_main_process:
            backbone = acc.unwrap_model(self.module).backbone
            if state_dict is not None:
                state_dict = engines.drop_tied_copies(state_dict, self._skeleton or backbone)
            # save_pretrained empties the dict it is given as it writes; the reload check needs it afterwards.
            self.export_fn(backbone, self.args.output_dir, dict(state_dict) if state_dict is not None else None)
        acc.wait_for_everyone()
        return state_dict

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
        logger.info("training %d steps (%s, %d micro-batch%s/step, %s precision) into %s",
                    self.total_steps, _processes(acc), args.gradient_accumulation_steps,
                    "" if args.gradient_accumulation_steps == 1 else "es", args.mixed_precision, args.output_dir)
        # A bar on a terminal, log lines at --logging_steps when stderr is a file (hfssl.logging.progress_bar).
        bar = progress_bar(total=self.total_steps, initial=self.step, desc="train", unit="step",
                           disable=not acc.is_local_main_process or _env_flag("TQDM_DISABLE"), dynamic_ncols=True)
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
        state_dict = self._export()
        engines.end_partitioned_init()
        results: dict[str, float] = {"global_step": self.step, "train_runtime": runtime,
                                     "train_steps_per_second": (self.step - start_step) / max(runtime, 1e-9)}
        if last_train:
            results["train_loss"] = last_train["loss"]
        results.update(self.last_eval)
        if acc.is_main_process:
            with open(os.path.join(args.output_dir, "all_results.json"), "w", encoding="utf-8") as fh:
                json.dump(results, fh, indent=2)
            write_run_info(args.output_dir, *self.configs_to_record)
            # output_dir/README.md after every run, as transformers' Trainer (imported here: only needed here).
            from hfssl.hub.card import write_run_card

            write_run_card(args.output_dir, repo_id=args.hub_model_id, secrets=(args.hub_token,))
        # The reload check runs under every engine: on FSDP/DeepSpeed against a plain copy of the gathered weights.
        final_model = self._plain_backbone(state_dict, already_gathered=engines.gathers_state(acc))
        if final_model is not None:
            for message in self.verify_fn(args.output_dir, final_model):
                logger.info("export in %s %s", args.output_dir, message)
        acc.wait_for_everyone()
        if args.push_to_hub:
            self._push("End of training")
        acc.end_training()
        return TrainResult(global_step=self.step, metrics=results, export_dir=args.output_dir, model=final_model)


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
    try:
        return TrainingRun(objective, model, train_loader, args, eval_loader_factory, processing_class,
                           configs_to_record, accelerator, eval_callbacks, export_fn, verify_fn).run()
    finally:
        # A process that trains again (a notebook, a test) or hands the directory to another program.
        run_guard.release_output_dir(args.output_dir)
