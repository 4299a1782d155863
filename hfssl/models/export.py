"""Export a trained backbone as a stock transformers checkpoint and prove it reloads.

The export is what ``Trainer.save_model`` writes: ``config.json`` + ``model.safetensors`` (+ the
tokenizer or image processor) at the top of a directory. ``verify_reload`` loads it back with an
Auto class (no ``trust_remote_code``) and checks that it computes the same outputs as the model
still in memory.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import torch
from transformers import AutoModel, PreTrainedModel

from hfssl.errors import HfsslError


def export_pretrained(model: PreTrainedModel, processing_class: Any, output_dir: str,
                      state_dict: dict[str, torch.Tensor] | None = None) -> str:
    """``save_pretrained`` (safetensors) the model and its tokenizer/processor into ``output_dir``.

    ``state_dict`` is for sharded training (FSDP/DeepSpeed), where the full weights have to be
    gathered first; otherwise the model's own weights are written.
    """
    os.makedirs(output_dir, exist_ok=True)
    model.save_pretrained(output_dir, state_dict=state_dict)
    if processing_class is not None:
        processing_class.save_pretrained(output_dir)
    return output_dir


_HEAD_AUTO_CLASSES = ("AutoModelForCausalLM", "AutoModelForPreTraining", "AutoModelForMaskedLM",
                      "AutoModelForMaskedImageModeling", "AutoModelForImageClassification",
                      "AutoModelForSequenceClassification")


def auto_classes_for(model: PreTrainedModel) -> list[Any]:
    """``AutoModel`` plus the first Auto class whose mapping yields exactly ``type(model)``."""
    import transformers

    classes: list[Any] = [AutoModel]
    for name in _HEAD_AUTO_CLASSES:
        auto = getattr(transformers, name)
        try:
            if auto._model_mapping[type(model.config)] is type(model):
                classes.append(auto)
                break
        except KeyError:
            continue
    return classes


def _example_inputs(config: Any, device: torch.device) -> dict[str, torch.Tensor]:
    vocab = getattr(config, "vocab_size", None)
    if not vocab:
        raise ValueError("pass example_inputs for models without a vocabulary (e.g. vision backbones)")
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab, (2, 12), generator=generator)
    return {"input_ids": ids.to(device)}


def _first_tensor(output: Any) -> torch.Tensor:
    return output[0] if not isinstance(output, torch.Tensor) else output


def verify_reload(output_dir: str, model: PreTrainedModel, auto_class: Any = AutoModel,
                  example_inputs: dict[str, torch.Tensor] | None = None, atol: float = 1e-5,
                  reference_output: Callable[[dict[str, torch.Tensor]], torch.Tensor] | None = None) -> float:
    """Reload ``output_dir`` with ``auto_class`` and compare its outputs with ``model``'s.

    When ``auto_class`` yields the bare backbone (``AutoModel`` for a ``GPT2LMHeadModel``) the
    reference is ``model.base_model``. ``reference_output`` compares against another output of
    ``model`` instead (e.g. BertForPreTraining's ``prediction_logits`` for an
    ``AutoModelForMaskedLM`` reload). Returns the max absolute difference; raises if it exceeds
    ``atol`` or the reloaded class is not the expected one.
    """
    device = next(model.parameters()).device
    reloaded = auto_class.from_pretrained(output_dir).to(device)
    if reference_output is None:
        if type(reloaded) is type(model):
            reference_module = model
        elif type(reloaded) is type(model.base_model):
            reference_module = model.base_model
        else:
            raise HfsslError(f"{auto_class.__name__} loaded {type(reloaded).__name__} from {output_dir}, "
                             f"which matches neither {type(model).__name__} nor its base model")

        def reference_output(inputs: dict[str, torch.Tensor]) -> torch.Tensor:
            return _first_tensor(reference_module(**inputs))

    inputs = example_inputs if example_inputs is not None else _example_inputs(model.config, device)
    was_training = model.training
    model.eval()
    reloaded.eval()
    try:
        with torch.no_grad():
            expected = reference_output(inputs).float()
            actual = _first_tensor(reloaded(**inputs)).float()
    finally:
        model.train(was_training)
    diff = (expected - actual).abs().max().item()
    if not diff <= atol:
        raise HfsslError(f"the export in {output_dir} does not reproduce the trained model "
                         f"(max |diff| {diff:.3g} > {atol:g}) when reloaded with {auto_class.__name__}")
    return diff
