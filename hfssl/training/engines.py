"""What the loop must do differently under each of Accelerate's engines (DDP, FSDP2, FSDP1, DeepSpeed).

The loop itself stays engine-agnostic; everything that depends on how the parameters are held lives
here:

* **No silent downgrade.** Accelerate runs FSDP and DeepSpeed only on accelerators: on a CPU-only
  machine an FSDP/DeepSpeed config quietly becomes DDP, and a ``MULTI_CPU`` config with several
  processes quietly starts one. ``check_engine`` turns both into one line.
* **Wrap policy.** FSDP wraps the classes in the model's ``_no_split_modules``; transformers lists
  embedding modules there too (``BertEmbeddings``), whose word embeddings are tied to the MLM decoder
  outside them, which FSDP refuses. ``wrap_classes`` names only the repeated transformer blocks (of the
  backbone and of any objective head or teacher): the unit every FSDP recipe wraps.
* **Sharded parameters.** Under FSDP or DeepSpeed ZeRO-3 no rank holds the whole model, so anything
  that runs the bare backbone outside the training forward (the export's reload check, evaluation
  callbacks such as the kNN monitor, a recipe's own check after training) runs on ``plain_replica``:
  an ordinary copy of the backbone built on the main process from the gathered full state dict.
"""

from __future__ import annotations

import contextlib
import copy
import os
from collections.abc import Iterator
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType
from torch import nn

from hfssl.errors import ConfigError

CPU_MULTIPROCESS_CONFIG = "configs/accelerate/cpu_2proc.yaml"


def _env_true(name: str) -> bool:
    return os.environ.get(name, "").lower() in ("1", "true", "yes")


def requested_engine() -> str | None:
    """The sharded engine the launcher's environment asks for ("FSDP2", "FSDP1", "DeepSpeed"), or None."""
    if _env_true("ACCELERATE_USE_DEEPSPEED"):
        return "DeepSpeed"
    if _env_true("ACCELERATE_USE_FSDP"):
        return "FSDP2" if os.environ.get("FSDP_VERSION", "1") == "2" else "FSDP1"
    return None


def engine_name(accelerator: Accelerator) -> str:
    """A short name for logs: "single process", "DDP", "FSDP2", "FSDP1", "DeepSpeed ZeRO-3"..."""
    kind = accelerator.distributed_type
    if kind == DistributedType.FSDP:
        return "FSDP2" if accelerator.is_fsdp2 else "FSDP1"
    if kind == DistributedType.DEEPSPEED:
        return f"DeepSpeed ZeRO-{deepspeed_stage(accelerator)}"
    if accelerator.num_processes > 1:
        return "DDP"
    return "single process"


def deepspeed_stage(accelerator: Accelerator) -> int:
    plugin = accelerator.state.deepspeed_plugin
    return int(plugin.zero_stage) if plugin is not None else 0


def check_engine(accelerator: Accelerator, *, save_on_each_node: bool = False) -> None:
    """Refuse a launch that would silently run something other than what its config asks for."""
    wanted = requested_engine()
    got = accelerator.distributed_type
    downgraded = ((wanted in ("FSDP1", "FSDP2") and got != DistributedType.FSDP)
                  or (wanted == "DeepSpeed" and got != DistributedType.DEEPSPEED))
    if downgraded:
        raise ConfigError(
            f"the accelerate config asks for {wanted}, but Accelerate runs it only on GPUs (or other accelerators) "
            f"and would fall back to {engine_name(accelerator)} here; run it on GPUs, or use a DDP config on CPUs "
            f"(e.g. accelerate launch --config_file {CPU_MULTIPROCESS_CONFIG})")
    if save_on_each_node and gathers_state(accelerator):
        raise ConfigError(f"--save_on_each_node works with DDP only: {engine_name(accelerator)} checkpoints are "
                          "sharded across ranks and must be written to a filesystem every node shares")
    launched_alone = (_env_true("ACCELERATE_USE_CPU") and os.environ.get("MASTER_ADDR")
                      and not any(os.environ.get(k) for k in ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE")))
    if launched_alone and accelerator.num_processes == 1:
        raise ConfigError(
            "the accelerate config asks for several CPU processes, but `accelerate launch` started only one "
            "(with distributed_type MULTI_CPU it needs mpirun); use distributed_type MULTI_GPU with use_cpu: true "
            f"(e.g. --config_file {CPU_MULTIPROCESS_CONFIG}) or torchrun --nproc_per_node N")


def check_objective(accelerator: Accelerator, objective: nn.Module) -> None:
    """Refuse, in one line, an objective the engine cannot run: a module of the objective may name what it needs
    in a ``fsdp1_unsupported`` attribute (why FSDP1's flattened parameters cannot serve it)."""
    if engine_name(accelerator) != "FSDP1":
        return
    for module in objective.modules():
        reason = getattr(module, "fsdp1_unsupported", None)
        if reason:
            raise ConfigError(f"{reason}, which FSDP1's flattened parameters cannot serve: use fsdp_version: 2 "
                              "(configs/accelerate/fsdp2.yaml) or DDP")


def shards_parameters(accelerator: Accelerator) -> bool:
    """True when no rank holds the whole model (FSDP, DeepSpeed ZeRO-3)."""
    if accelerator.distributed_type == DistributedType.FSDP:
        return True
    return accelerator.distributed_type == DistributedType.DEEPSPEED and deepspeed_stage(accelerator) == 3


def gathers_state(accelerator: Accelerator) -> bool:
    """True when a full state dict must be gathered collectively (FSDP, any DeepSpeed stage)."""
    return accelerator.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED)


def repeated_block_classes(module: nn.Module) -> list[str]:
    """Class names of the repeated layer stacks in ``module`` (``nn.ModuleList`` of one class), in order."""
    names: list[str] = []
    for child in module.modules():
        if isinstance(child, nn.ModuleList) and len(child) > 0 and all(type(m) is type(child[0]) for m in child):
            name = type(child[0]).__name__
            if name not in names:
                names.append(name)
    return names


def wrap_classes(module: nn.Module) -> list[str]:
    """The FSDP wrap units for ``module``: its repeated transformer blocks (never an embedding module)."""
    return repeated_block_classes(module)


def set_wrap_units(model: nn.Module) -> nn.Module:
    """Make ``model`` (a stock transformers model prepared by Accelerate directly, as in fine-tuning) wrap like
    the pretraining loop's modules: by its repeated blocks only (see ``wrap_classes``); returns ``model``."""
    model._no_split_modules = wrap_classes(model)
    return model


def local_norm(value: torch.Tensor | float | None) -> torch.Tensor | float | None:
    """A gradient norm as a plain tensor (FSDP2 returns a replicated DTensor)."""
    full_tensor = getattr(value, "full_tensor", None)
    return full_tensor() if callable(full_tensor) else value


@contextlib.contextmanager
def gradient_sync(accelerator: Accelerator, module: nn.Module, enabled: bool) -> Iterator[None]:
    """Skip the gradient all-reduce of a micro-batch that is not the last of its accumulation window.

    DDP and FSDP1: ``no_sync``. FSDP2: ``set_requires_gradient_sync`` (its reduce-scatter waits for the last
    micro-batch). DeepSpeed: Accelerate's ``sync_gradients`` flag, which decides whether
    ``accelerator.backward`` also steps the engine; the engine itself is built with the window's length as
    its ``gradient_accumulation_steps`` (``make_accelerator``), so it steps once per window.
    """
    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        accelerator.gradient_state._set_sync_gradients(enabled)
        yield
        return
    if enabled or accelerator.num_processes == 1:
        yield
        return
    if accelerator.is_fsdp2 and hasattr(module, "set_requires_gradient_sync"):
        module.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            module.set_requires_gradient_sync(True)
        return
    with accelerator.no_sync(module):
        yield


def backward_kwargs(accelerator: Accelerator) -> dict[str, Any]:
    """DeepSpeed divides each micro-batch's loss by its accumulation steps; the loop's loss is already the
    window's exact share, so that scaling is turned off."""
    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        return {"scale_wrt_gas": False}
    return {}


def configure_deepspeed(accelerator: Accelerator, *, micro_batch_size: int, max_grad_norm: float) -> None:
    """Fill the DeepSpeed config values Accelerate would otherwise take from a dataloader or default.

    The loop never passes its loader through ``accelerator.prepare`` (it shards the stream itself), so the
    micro-batch size comes from ``--per_device_train_batch_size``; clipping from ``--max_grad_norm`` (the
    engine clips inside its step); ZeRO-3 gathers 16-bit weights on save so the export can be written.
    Values the user's DeepSpeed config sets explicitly are kept.
    """
    if accelerator.distributed_type != DistributedType.DEEPSPEED:
        return
    plugin = accelerator.state.deepspeed_plugin
    config = plugin.deepspeed_config
    wanted = {"train_micro_batch_size_per_gpu": micro_batch_size,
              "gradient_clipping": max_grad_norm if max_grad_norm > 0 else 0.0}
    for key, value in wanted.items():
        if config.get(key, "auto") == "auto":
            config[key] = value
    zero = config.setdefault("zero_optimization", {})
    if int(zero.get("stage", 0)) == 3 and zero.get("stage3_gather_16bit_weights_on_model_save", "auto") == "auto":
        zero["stage3_gather_16bit_weights_on_model_save"] = True


def check_optimizer_steps(accelerator: Accelerator, module: nn.Module, expected: int) -> None:
    """DeepSpeed steps its optimizer inside ``backward``: verify it stepped exactly once per hfssl step."""
    if accelerator.distributed_type != DistributedType.DEEPSPEED:
        return
    taken = getattr(module, "global_steps", expected)
    if taken != expected:
        raise ConfigError(f"the DeepSpeed engine took {taken} optimizer steps in {expected} hfssl steps; its "
                          "gradient_accumulation_steps must equal --gradient_accumulation_steps (leave it 'auto')")


def end_partitioned_init() -> None:
    """After a ZeRO-3 run, let transformers build models normally again.

    Under ZeRO-3 Accelerate registers its DeepSpeed config with transformers, whose ``from_pretrained`` then
    partitions every new model with collectives; the reload check and a recipe's own checks after training
    load models on the main process alone, which would wait forever for the other ranks.
    """
    try:
        from transformers.integrations.deepspeed import unset_hf_deepspeed_config
    except ImportError:  # pragma: no cover - transformers without the DeepSpeed integration
        return
    unset_hf_deepspeed_config()


def full_state_dict(accelerator: Accelerator, wrapped: nn.Module, prefix: str = "backbone.") -> dict[str, torch.Tensor] | None:
    """The full (unsharded) state dict of ``wrapped``'s sub-module ``prefix`` on the main process.

    Collective under FSDP/DeepSpeed: every rank must call it. Other ranks get None; without sharding it
    returns None too (the module's own weights are complete).
    """
    if not gathers_state(accelerator):
        return None
    if (accelerator.distributed_type == DistributedType.FSDP and not accelerator.is_fsdp2
            and accelerator.device.type == "cpu"):
        # Accelerate gathers FSDP1 weights with offload_to_cpu, which segfaults when they already are on the
        # CPU (torch 2.13, gloo); offloading is moot there, so gather without it.
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        full = get_model_state_dict(wrapped, options=StateDictOptions(full_state_dict=True, cpu_offload=False))
    else:
        full = accelerator.get_state_dict(wrapped)
    if not accelerator.is_main_process:
        return None
    return {k[len(prefix):]: v for k, v in full.items() if k.startswith(prefix)}


def drop_tied_copies(state_dict: dict[str, torch.Tensor], module: nn.Module) -> dict[str, torch.Tensor]:
    """``state_dict`` without the second name of each tied parameter (GPT-2's ``lm_head.weight``).

    A gathered state dict holds a separate copy under every name, so ``save_pretrained`` cannot see the
    tie and would store the weight twice; the stock layout stores it once under its first name.
    """
    seen: dict[int, str] = {}
    for name, param in module.named_parameters(remove_duplicate=False):
        if id(param) in seen:
            state_dict.pop(name, None)
        else:
            seen[id(param)] = name
    return state_dict


def meta_skeleton(module: nn.Module) -> nn.Module:
    """A copy of ``module`` with every parameter on the meta device (no memory) and its buffers kept.

    Taken before Accelerate wraps the model (FSDP changes modules in place), it records the exact
    structure - class, submodules, tying, instance attributes such as a padded vocabulary's true size -
    that ``plain_replica`` later fills with gathered weights.
    """
    memo: dict[int, Any] = {}
    for param in module.parameters():
        # DeepSpeed ZeRO-3 may build the model already partitioned: the full shape is then in ds_shape.
        shape = getattr(param, "ds_shape", param.shape)
        memo[id(param)] = nn.Parameter(torch.empty(shape, dtype=param.dtype, device="meta"),
                                       requires_grad=param.requires_grad)
    return copy.deepcopy(module, memo)


def plain_replica(skeleton: nn.Module, state_dict: dict[str, torch.Tensor], device: torch.device) -> nn.Module:
    """An ordinary (unsharded) copy of the backbone holding ``state_dict``, for work outside the training forward.

    ``skeleton`` comes from ``meta_skeleton``; it is copied, not consumed, so it serves every evaluation.
    """
    replica = copy.deepcopy(skeleton)
    replica.load_state_dict(state_dict, strict=False, assign=True)
    # Tied weights (GPT-2's lm_head, BERT's decoder) may be stored once; tying again shares the loaded tensor.
    if hasattr(replica, "tie_weights"):
        replica.tie_weights()
    still_meta = [n for n, p in list(replica.named_parameters()) + list(replica.named_buffers()) if p.is_meta]
    if still_meta:
        raise ConfigError(f"the gathered state dict of {type(replica).__name__} lacks {', '.join(still_meta[:3])}")
    return replica.to(device)


__all__ = ["backward_kwargs", "check_engine", "check_optimizer_steps", "configure_deepspeed", "drop_tied_copies", "end_partitioned_init", "engine_name", "full_state_dict", "gathers_state", "gradient_sync",
           "local_norm", "meta_skeleton", "plain_replica", "repeated_block_classes", "requested_engine", "set_wrap_units", "shards_parameters",
           "wrap_classes"]
